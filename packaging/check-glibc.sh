#!/usr/bin/env bash
# Does the release binary run on EL9? EL9 ships glibc 2.34, so the binary must need no
# versioned glibc symbol newer than GLIBC_2.34 (mission.md, Design). A build machine with a
# newer glibc (Debian 12 has 2.36) links against the newest version of a symbol it finds, so
# this is checked on the binary itself, with `objdump -T` (dynamic symbol table).
#
#   packaging/check-glibc.sh [BINARY]      # default target/release/callme ($CARGO_TARGET_DIR)
#
# Exit 0 if every GLIBC_2.x version is <= 2.34 (or the binary is static), 1 with the list of
# offending symbols otherwise, 2 if it cannot check. If it fails, the fix the mission allows
# is a static build: in .cargo/config.toml,
#   [target.x86_64-unknown-linux-gnu]
#   rustflags = ["-C", "target-feature=+crt-static"]
set -euo pipefail

cd "$(dirname "$0")/.."
bin=${1:-${CARGO_TARGET_DIR:-target}/release/callme}
max_minor=34 # GLIBC_2.34

if ! command -v objdump >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        if [ -z "${CALLME_APT_UPDATED:-}" ]; then
            apt-get update -qq
            export CALLME_APT_UPDATED=1
        fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq binutils >/dev/null
    fi
    command -v objdump >/dev/null 2>&1 || { echo "error: objdump not found; install binutils" >&2; exit 2; }
fi
if [ ! -f "$bin" ]; then
    echo "error: $bin not found; run cargo build --release first" >&2
    exit 2
fi

if ! objdump -p "$bin" | grep -q 'NEEDED.*libc\.so'; then
    echo "glibc check: $bin does not link libc.so dynamically (static build): ok"
    exit 0
fi

# Lines of `objdump -T` look like:
#   0000000000000000      DF *UND*  0000000000000000 (GLIBC_2.34) __libc_start_main
# The version may be printed with or without parentheses depending on binutils.
offenders=$(objdump -T "$bin" | awk -v max="$max_minor" '
    match($0, /GLIBC_2\.[0-9]+(\.[0-9]+)?/) {
        ver = substr($0, RSTART, RLENGTH)
        split(ver, p, ".")
        if (p[2] + 0 > max) print ver "  " $NF
    }' | sort -u)
newest=$(objdump -T "$bin" | grep -o 'GLIBC_2\.[0-9]*\(\.[0-9]*\)\?' | sort -u -V | tail -1)

if [ -n "$offenders" ]; then
    echo "glibc check FAILED: $bin needs symbols newer than GLIBC_2.$max_minor (EL9):" >&2
    echo "$offenders" >&2
    echo "fix: build with crt-static (see the header of $0)" >&2
    exit 1
fi
echo "glibc check: $bin needs at most $newest (EL9 has GLIBC_2.$max_minor): ok"
