//! The state thread's throughput with real fsync: how many intents a second it can make
//! durable (outbox appended and fsync'd, then the events journaled) on this machine's disk.
//!
//! The real daemon (`callme::daemon::Daemon`, every thread) runs in-process against the fake
//! AMI and the fake portal of `tests/support`, with its `[state] dir` in a temporary directory
//! on the disk under test (`CALLME_BENCH_DIR`, default the system temp dir; the bench prints
//! what `findmnt` and `df` say it is, since a tmpfs would measure memory, not the disk). Once
//! the daemon is logged in and has its user directory, a burst of calls renumbered from the
//! real captures (answered, no answer, busy, ring-all queue; `CALLME_BENCH_CALLS`, default
//! 1000) is written to the AMI socket at once, and the bench waits until the state thread has
//! journaled every event of it. The calls start 100 ms apart on the capture clock, so a few
//! hundred overlap. Delivery runs as in production: our own rate limit (2 req/s,
//! burst 50) lets it drain a little, so the outbox's fsyncs include its `done` records.
//!
//! Prints intents/s, events/s and fsyncs/s (outbox, journal), from the counts the daemon keeps
//! in `Health::disk`. Run with `cargo bench --bench intents`; under `cargo test --all-targets`
//! a few calls check that the bench still runs. `CALLME_BENCH_KEEP=1` keeps the state dir.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use callme::ami::event::Event;
use callme::ami::Message;
use callme::daemon::Daemon;
use callme::statefile::Counts;

use support::configs;
use support::fake_ami::FakeAmi;
use support::fake_bitrix::FakeBitrix;
use support::wait::wait_until;

const SECRET: &str = "bench-secret";
/// One capture per outcome, taken in turn.
const CAPTURES: [&str; 4] = [
    "a_inbound_answered.ami",
    "b_inbound_noanswer.ami",
    "c_inbound_busy.ami",
    "k_inbound_queue_ringall.ami",
];

fn calls() -> usize {
    if let Some(n) = std::env::var("CALLME_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return n;
    }
    if std::env::args().any(|a| a == "--bench") {
        1000
    } else {
        8
    }
}

/// Calls started per second of capture time: with calls of 10 to 30 s, a few hundred are up at
/// once, their events interleaved as a busy PBX sends them.
const RATE: u64 = 10;

/// A channel name's `-XXXXXXXX` suffix moved on by call `n`, so copies of a capture are
/// independent calls whose phones are still recognised (`SIP/219-…` stays 219's).
fn renumber_channel(v: &str, n: usize) -> Option<String> {
    let i = v.rfind('-')?;
    let (hex, rest) = v[i + 1..].split_at(v[i + 1..].find(';').unwrap_or(v.len() - i - 1));
    let h = u32::from_str_radix(hex, 16)
        .ok()
        .filter(|_| hex.len() == 8)?;
    let moved = h.wrapping_add((n as u32).wrapping_mul(0x1000));
    Some(format!("{}-{moved:08x}{rest}", &v[..i]))
}

/// The stream of `calls` calls on the wire, call `n` made from capture `n % 4` with its
/// identities renumbered and its start moved on by `n / RATE` s, every event stamped
/// (`Timestamp:`, as Asterisk sends them with `timestampevents = yes`); and how many of its
/// events the tracker takes (the journal records each of them).
fn stream(calls: usize) -> (Vec<u8>, usize) {
    let mut events = Vec::new();
    for n in 0..calls {
        let path = support::fixture_path(CAPTURES[n % CAPTURES.len()]);
        let cap = callme::replay::load(&path).expect("capture");
        for (i, t) in cap.messages.iter().enumerate() {
            // The capture session's own login is not part of the call.
            let own = matches!(t.msg.event(), Some("FullyBooted"))
                || (t.msg.event() == Some("SuccessfulAuth") && t.msg.get("Service") == Some("AMI"));
            if t.msg.event().is_none() || own {
                continue;
            }
            let mut m = Message::new();
            for (k, v) in t.msg.iter() {
                let key = k.to_ascii_lowercase();
                if key.ends_with("uniqueid") || key.ends_with("linkedid") {
                    m.push(k, &format!("{v}x{n}"));
                } else if key.ends_with("channel") {
                    m.push(k, &renumber_channel(v, n).unwrap_or_else(|| v.to_string()));
                } else {
                    m.push(k, v);
                }
            }
            let at = t.at_ms + n as u64 * 1000 / RATE;
            events.push((at, n, i, m));
        }
    }
    events.sort_by_key(|(at, n, i, _)| (*at, *n, *i));
    let mut bytes = Vec::new();
    let mut tracked = 0;
    for (at, _, _, m) in &events {
        if !matches!(Event::parse(m), Event::Other) {
            tracked += 1;
        }
        for (k, v) in m.iter() {
            bytes.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        let stamp = format!("Timestamp: {}.{:03}000\r\n\r\n", at / 1000, at % 1000);
        bytes.extend_from_slice(stamp.as_bytes());
    }
    (bytes, tracked)
}

fn run(cmd: &str, args: &[&str], dir: &Path) -> String {
    Command::new(cmd)
        .args(args)
        .arg(dir)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|e| format!("({cmd}: {e})"))
}

fn diff(a: Counts, b: Counts) -> Counts {
    Counts {
        records: b.records - a.records,
        appends: b.appends - a.appends,
        syncs: b.syncs - a.syncs,
    }
}

fn main() {
    let base = std::env::var_os("CALLME_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("callme-bench-intents-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the state dir");
    println!("intents bench: state dir {}", dir.display());
    println!("{}", run("findmnt", &["-T"], &dir));
    println!("{}", run("df", &["-h"], &dir));
    println!(
        "nproc {}, load average {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );

    let calls = calls();
    let (mut bytes, events) = stream(calls);

    let portal = FakeBitrix::start();
    let ami = FakeAmi::start("callme", SECRET);
    let text = configs::webhook(ami.port(), SECRET, &portal.webhook_url())
        .replace("{state}", &dir.display().to_string());
    let cfg = configs::parse(&text);
    let daemon = Daemon::start(&cfg).expect("start the daemon");
    let health = daemon.health.clone();
    // Logged in, reconciled, and the employee list journaled: the start's own writes are
    // over before counting begins.
    let ready = wait_until(Duration::from_secs(30), || {
        health.disk.counts(callme::journal::DISK_NAME).records > 0
            && ami
                .wait_action("CoreShowChannels", Duration::ZERO)
                .is_some()
    });
    assert!(ready, "the daemon did not log in and load its users");

    let outbox0 = health.disk.counts(callme::bitrix::outbox::DISK_NAME);
    let journal0 = health.disk.counts(callme::journal::DISK_NAME);
    let start = Instant::now();
    let pusher = std::thread::spawn({
        let bytes = std::mem::take(&mut bytes);
        move || {
            assert!(ami.push(&bytes), "the fake AMI has no client");
            ami
        }
    });
    let done = wait_until(Duration::from_secs(1800), || {
        health.disk.counts(callme::journal::DISK_NAME).records - journal0.records >= events as u64
    });
    let elapsed = start.elapsed();
    let outbox = diff(
        outbox0,
        health.disk.counts(callme::bitrix::outbox::DISK_NAME),
    );
    let journal = diff(journal0, health.disk.counts(callme::journal::DISK_NAME));
    assert!(
        done,
        "the state thread did not journal all {events} events: {journal:?}"
    );
    let ami = pusher.join().expect("pusher");
    daemon.shutdown();
    drop(ami);
    drop(portal);
    if std::env::var_os("CALLME_BENCH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }

    let secs = elapsed.as_secs_f64();
    println!(
        "{calls} calls, {events} events, {} intents in {secs:.2} s",
        outbox.records
    );
    println!(
        "  {:.0} intents/s, {:.0} events/s",
        outbox.records as f64 / secs,
        events as f64 / secs
    );
    println!(
        "  outbox: {} appends, {} fsyncs ({:.0}/s, {:.1} intents per fsync); journal: {} appends, {} fsyncs ({:.1}/s)",
        outbox.appends,
        outbox.syncs,
        outbox.syncs as f64 / secs,
        outbox.records as f64 / outbox.syncs.max(1) as f64,
        journal.appends,
        journal.syncs,
        journal.syncs as f64 / secs
    );
}
