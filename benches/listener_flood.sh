#!/bin/sh
# Idle-connection flood against a callme binary, for the figures in docs/security.md
# ("Connection limits"). Not a test: it prints what it measures.
#
#   benches/listener_flood.sh target/release/callme 1220 [PORT]
#
# The flood goes to the public listener on PORT; /metrics is read from the ops listener on
# PORT+1, which has connection slots of its own.
#
# Starts `callme run` with soft RLIMIT_NOFILE 1024 (as systemd gives a unit without
# LimitNOFILE) and no PBX or portal (so /healthz answers 503 "AMI is not logged in", which is
# an answer all the same), opens N idle connections with python3 (every other one sends half
# a request), holds them 8 s after the last one is open, then closes them. Prints threads and RSS before and during the
# flood, /metrics and the time /healthz took during it, and how long after the flood the
# thread count is back to where it was.
set -eu
BIN=$1
N=$2
PORT=${3:-18931}
OPS_PORT=$((PORT + 1))
dir=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$dir"' EXIT
mkdir "$dir/state"
cat >"$dir/callme.conf" <<CONF
[asterisk]
host = 127.0.0.1
port = 1
username = callme
secret = flood-bench-secret
[bitrix24]
webhook_url = http://127.0.0.1:1/rest/1/flood/
[http]
listen = 127.0.0.1:$PORT
ops_listen = 127.0.0.1:$OPS_PORT
idle_timeout = 60
request_timeout = 60
[state]
dir = $dir/state
CONF
chmod 600 "$dir/callme.conf"
sh -c 'ulimit -Sn 1024 && exec "$0" run -c "$1"' "$BIN" "$dir/callme.conf" >"$dir/log" 2>&1 &
pid=$!
field() { awk -v f="$1:" '$1 == f { print $2 }' "/proc/$pid/status"; }
until grep -q "HTTP listening" "$dir/log"; do
    kill -0 "$pid" 2>/dev/null || { cat "$dir/log"; exit 1; }
    sleep 0.1
done
sleep 1
base_threads=$(field Threads)
base_rss=$(field VmRSS)
python3 - "$N" "$PORT" "$dir/opened" <<'PY' &
import socket, sys, time
n, port = int(sys.argv[1]), int(sys.argv[2])
socks = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    if i % 2 == 0:
        try:
            s.send(b"POST /bitrix24/event HTTP/1.1\r\nHost: x\r\nContent-Ty")
        except OSError:
            pass  # over the cap: closed by callme at once
    socks.append(s)
open(sys.argv[3], "w").close()
time.sleep(8)
PY
flood=$!
# all opened (a burst over the kernel's accept queue of 128 waits for SYN-ACK retries)
until [ -e "$dir/opened" ]; do sleep 0.1; done
sleep 2
peak_threads=$(field Threads)
peak_rss=$(field VmRSS)
metrics=$(curl -s --max-time 5 "http://127.0.0.1:$OPS_PORT/metrics" | grep -E '^callme_http_' | tr '\n' ' ' || true)
healthz=$(curl -s -o /dev/null -w '%{http_code} in %{time_total} s' --max-time 10 "http://127.0.0.1:$PORT/healthz" || true)
wait "$flood" || true
t0=$(date +%s%N)
while [ "$(field Threads)" -gt "$base_threads" ]; do sleep 0.1; done
t1=$(date +%s%N)
grep -m1 "open files limit" "$dir/log" || true
echo "N=$N: threads $base_threads -> $peak_threads; RSS $base_rss kB -> $peak_rss kB"
echo "  during the flood: /healthz $healthz; /metrics (ops listener): ${metrics:-(no answer)}"
echo "  threads back to $base_threads $(( (t1 - t0) / 1000000 )) ms after the flood closed"
