//! Load benchmark: the real daemon threads against a fake AMI that streams renumbered real
//! captures at a given call rate, and a fake portal that enforces Bitrix24's bucket (2 req/s,
//! burst 50). Prints, per rate, what users feel (card latency: DialBegin to a phone → the
//! portal putting the card up) and what it costs (REST operations and HTTP requests per call,
//! the backlog, memory). `docs/performance.md` keeps the figures.
//!
//! `cargo bench --bench load` runs 1, 10, 50 and 100 calls/s, each for a few seconds of
//! arrivals (about 3 minutes in all). Longer or other runs:
//!
//! - `CALLME_LOAD_RATES=1,10` — the call rates (calls per second);
//! - `CALLME_LOAD_SECS=30` — seconds of arrivals per rate (default: 45 s at 1 call/s, 20 s
//!   at 10, 10 s above);
//! - `CALLME_LOAD_DRAIN=60` — how long to wait, after the last call ended, for the backlog to
//!   drain (default 20 s);
//! - `CALLME_LOAD_CALLERS=known` — the caller is a CRM contact whose responsible is the
//!   employee at 219, the phone the captures ring (default `unknown`: no CRM match, every
//!   call registered under the default user);
//! - `CALLME_LOAD_DETAIL=1` — also the rings of 3 s or more by the second they started in:
//!   where in the run cards came late.
//!
//! Under `cargo test --all-targets` (no `--bench` argument) one short run checks that the
//! benchmark still works: every ring got a card.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use callme::ami::Message;
use callme::daemon::Daemon;
use support::captures::renumber;
use support::daemon::TempDir;
use support::fake_ami::FakeAmi;
use support::fake_bitrix::FakeBitrix;

/// The call mix: answered, no answer, busy, queue (ring-all), chan_sip and PJSIP in turn.
const MIX: [&str; 8] = [
    "a_inbound_answered.ami",
    "pjsip/b_inbound_noanswer.ami",
    "c_inbound_busy.ami",
    "pjsip/k_inbound_queue_ringall.ami",
    "pjsip/a_inbound_answered.ami",
    "b_inbound_noanswer.ami",
    "pjsip/c_inbound_busy.ami",
    "k_inbound_queue_ringall.ami",
];

/// One message of the stream: when to send it (from the start of the run) and its bytes.
struct Timed {
    at: Duration,
    msg: Message,
}

/// A capture's events after `FullyBooted`, with their offsets from the first one.
fn template(name: &str) -> Vec<(Duration, Message)> {
    let cap = callme::replay::load(&support::fixture_path(name)).expect("capture loads");
    let booted = cap
        .messages
        .iter()
        .position(|t| t.msg.event() == Some("FullyBooted"))
        .expect("capture has FullyBooted");
    let events: Vec<_> = cap.messages[booted + 1..]
        .iter()
        .filter(|t| t.msg.event().is_some())
        .collect();
    let first = events.first().map_or(0, |t| t.at_ms);
    events
        .into_iter()
        .map(|t| (Duration::from_millis(t.at_ms - first), t.msg.clone()))
        .collect()
}

fn wire(msg: &Message) -> Vec<u8> {
    let mut b = Vec::new();
    for (k, v) in msg.iter() {
        b.extend_from_slice(k.as_bytes());
        b.extend_from_slice(b": ");
        b.extend_from_slice(v.as_bytes());
        b.extend_from_slice(b"\r\n");
    }
    b.extend_from_slice(b"\r\n");
    b
}

/// The internal number of a phone channel (`SIP/219-0000001a` → `219`), not of a trunk.
fn phone_ext(channel: &str) -> Option<&str> {
    let (_, rest) = channel.split_once('/')?;
    let (ext, _) = rest.split_once('-')?;
    (!ext.is_empty() && ext.bytes().all(|b| b.is_ascii_digit())).then_some(ext)
}

/// A phone ringing: from its DialBegin to its DialEnd (or Hangup), as sent.
struct Ring {
    call: String,
    user: u64,
    start: Instant,
    end: Option<Instant>,
}

struct Figures {
    rate: f64,
    calls: usize,
    events: usize,
    stream_secs: f64,
    rings: usize,
    carded: usize,
    lat: Vec<Duration>,
    long_rings: usize,
    long_in_time: usize,
    long_p95: Option<Duration>,
    ops: usize,
    http: usize,
    backlog_steps: usize,
    backlog_age: Option<Duration>,
    unfinished_at_end: usize,
    drain_secs: f64,
    drain_ops_per_s: Option<f64>,
    left: usize,
    rss_peak_kib: u64,
    rss_base_kib: u64,
}

fn pct(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn user_gets(reqs: &[support::fake_bitrix::Recorded]) -> usize {
    reqs.iter().filter(|r| r.method == "user.get").count()
}

fn run(
    rate: f64,
    secs: f64,
    drain_cap: Duration,
    templates: &[Vec<(Duration, Message)>],
) -> Figures {
    // The peak RSS of this run only (Linux: 5 resets VmHWM to the current RSS).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    // The stream: call n starts at n / rate, its events on the capture's own clock.
    let calls = ((rate * secs).round() as usize).max(1);
    let mut stream = Vec::new();
    for n in 0..calls {
        let start = Duration::from_secs_f64(n as f64 / rate);
        for (off, msg) in &templates[n % templates.len()] {
            stream.push(Timed {
                at: start + *off,
                msg: renumber(msg, n),
            });
        }
    }
    stream.sort_by_key(|t| t.at);
    let events = stream.len();
    // What the bench holds before the daemon starts: mostly that stream.
    let rss_base_kib = status_kib("VmRSS:");

    let ami = FakeAmi::start("callme", "secret");
    let portal = FakeBitrix::start();
    portal.set_rate_limit(2.0, 50);
    if known_callers() {
        // Every capture's caller; user 19 is the employee at 219 in the fake directory.
        portal.add_contact("79991234567", 1, 19);
    }
    let dir = TempDir::new("callme-load");
    let text = support::configs::webhook(ami.port(), "secret", &portal.webhook_url())
        .replace("{state}", &dir.path().display().to_string());
    let cfg = support::configs::parse(&text);
    let system = cfg.calls.system_name.clone();
    let daemon = Daemon::start(&cfg).expect("daemon starts");
    assert!(ami.wait_accepted(1, Duration::from_secs(10)), "AMI login");
    let loaded = support::wait::wait_until(Duration::from_secs(20), || {
        daemon.health.delivery.lock().is_ok_and(|v| v.users > 0)
    });
    assert!(loaded, "user directory loaded");
    // The employees go to the state thread right after the load; give it a moment to
    // take them (it serves controls before AMI events).
    std::thread::sleep(Duration::from_millis(300));
    let base_http = portal.requests().len();
    let base_ops = portal.commands().len();

    let mut rings: Vec<Ring> = Vec::new();
    let mut open: HashMap<String, usize> = HashMap::new();
    let t0 = Instant::now() + Duration::from_millis(50);
    let mut i = 0;
    while i < stream.len() {
        let due = t0 + stream[i].at;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let now = Instant::now();
        let mut bytes = Vec::new();
        let mut sent = Vec::new();
        while i < stream.len() && t0 + stream[i].at <= now {
            bytes.extend_from_slice(&wire(&stream[i].msg));
            sent.push(i);
            i += 1;
        }
        assert!(ami.push(&bytes), "AMI connection lost");
        let at = Instant::now();
        for j in sent {
            let m = &stream[j].msg;
            match m.event() {
                Some("DialBegin") => {
                    let dest = m.get("DestChannel").unwrap_or_default();
                    if let (Some(ext), Some(linked), Some(uid)) =
                        (phone_ext(dest), m.get("Linkedid"), m.get("DestUniqueid"))
                    {
                        let user = ext.parse::<u64>().unwrap_or(0).saturating_sub(200);
                        open.insert(uid.to_string(), rings.len());
                        rings.push(Ring {
                            call: format!("{system}-{linked}"),
                            user,
                            start: at,
                            end: None,
                        });
                    }
                }
                Some("DialEnd") => {
                    if let Some(r) = m.get("DestUniqueid").and_then(|u| open.remove(u)) {
                        rings[r].end = Some(at);
                    }
                }
                Some("Hangup") => {
                    if let Some(r) = m.get("Uniqueid").and_then(|u| open.remove(u)) {
                        rings[r].end = Some(at);
                    }
                }
                _ => {}
            }
        }
    }
    let stream_end = Instant::now();
    let stream_secs = stream_end.duration_since(t0).as_secs_f64();

    // The backlog when the last event was sent, seen from both ends: the daemon's own view
    // (refreshed when its delivery pass returns) and the calls the portal has not seen finish.
    let at_end = daemon
        .health
        .delivery
        .lock()
        .map(|v| v.clone())
        .unwrap_or_default();
    let unfinished_at_end = calls.saturating_sub(portal.finished_calls().len());
    let ops_at_end = portal.commands().len();
    let drained = support::wait::wait_until(drain_cap, || portal.finished_calls().len() >= calls);
    let drain_secs = stream_end.elapsed().as_secs_f64();
    let ops_after = portal.commands().len();
    let drain_ops_per_s = (unfinished_at_end > 0 && drain_secs > 1.0)
        .then(|| (ops_after - ops_at_end) as f64 / drain_secs);
    let left = if drained {
        0
    } else {
        calls.saturating_sub(portal.finished_calls().len())
    };

    let requests = portal.requests();
    let commands = portal.commands();
    let http =
        requests.len() - base_http - (user_gets(&requests) - user_gets(&requests[..base_http]));
    let ops = commands.len() - base_ops - (user_gets(&commands) - user_gets(&commands[..base_ops]));

    let mut first_card: HashMap<(String, u64), Vec<Instant>> = HashMap::new();
    for c in portal.cards_shown() {
        first_card
            .entry((c.external_call_id, c.user_id))
            .or_default()
            .push(c.at);
    }
    let mut lat = Vec::new();
    let mut long = Vec::new();
    let mut long_in_time = 0;
    let never = Duration::from_secs(24 * 3600);
    for r in &rings {
        let card = first_card
            .get(&(r.call.clone(), r.user))
            .and_then(|v| v.iter().find(|t| **t >= r.start).copied());
        let l = card.map(|t| t.duration_since(r.start));
        if let Some(l) = l {
            lat.push(l);
        }
        let end = r.end.unwrap_or(stream_end);
        if end.duration_since(r.start) >= Duration::from_secs(3) {
            if card.is_some_and(|t| t <= end) {
                long_in_time += 1;
            }
            long.push(l.unwrap_or(never));
        }
    }
    if std::env::var_os("CALLME_LOAD_DETAIL").is_some() {
        detail(&rings, &first_card, t0);
        let mut by_method: std::collections::BTreeMap<&str, usize> = Default::default();
        for c in &commands[base_ops..] {
            *by_method.entry(c.method.as_str()).or_default() += 1;
        }
        println!("    commands by method: {by_method:?}");
    }
    lat.sort();
    long.sort();
    let fig = Figures {
        rate,
        calls,
        events,
        stream_secs,
        rings: rings.len(),
        carded: lat.len(),
        lat,
        long_rings: long.len(),
        long_in_time,
        long_p95: pct(&long, 95.0),
        ops,
        http,
        backlog_steps: at_end.pending,
        backlog_age: at_end.oldest_pending_age,
        unfinished_at_end,
        drain_secs,
        drain_ops_per_s,
        left,
        rss_peak_kib: status_kib("VmHWM:"),
        rss_base_kib,
    };
    daemon.shutdown();
    fig
}

/// `CALLME_LOAD_CALLERS=known`: the caller is in the CRM, owned by the employee rung.
fn known_callers() -> bool {
    std::env::var("CALLME_LOAD_CALLERS").is_ok_and(|v| v == "known")
}

/// `CALLME_LOAD_DETAIL=1`: the rings of 3 s or more by the second they started in, with how
/// many got their card while ringing and the slowest card: where in the run cards were late.
fn detail(rings: &[Ring], cards: &HashMap<(String, u64), Vec<Instant>>, t0: Instant) {
    let mut by_sec: std::collections::BTreeMap<u64, (usize, usize, Duration)> =
        std::collections::BTreeMap::new();
    for r in rings {
        let Some(end) = r.end else { continue };
        if end.duration_since(r.start) < Duration::from_secs(3) {
            continue;
        }
        let card = cards
            .get(&(r.call.clone(), r.user))
            .and_then(|v| v.iter().find(|t| **t >= r.start).copied());
        let e = by_sec
            .entry(r.start.saturating_duration_since(t0).as_secs())
            .or_default();
        e.0 += 1;
        if card.is_some_and(|t| t <= end) {
            e.1 += 1;
        }
        let l = card.map_or(Duration::from_secs(99), |t| t.duration_since(r.start));
        e.2 = e.2.max(l);
    }
    for (sec, (n, in_time, worst)) in by_sec {
        println!(
            "    second {sec:>3}: {n:>4} long rings, {in_time:>4} carded while ringing, slowest {:.2} s",
            worst.as_secs_f64()
        );
    }
}

fn secs(d: Option<Duration>) -> String {
    match d {
        Some(d) if d >= Duration::from_secs(3600) => "never".into(),
        Some(d) => format!("{:.2}", d.as_secs_f64()),
        None => "-".into(),
    }
}

fn print(f: &Figures) {
    println!(
        "rate {:>5.0} calls/s: {} calls, {} events in {:.1} s ({:.0} events/s)",
        f.rate,
        f.calls,
        f.events,
        f.stream_secs,
        f.events as f64 / f.stream_secs
    );
    println!(
        "  card latency (ring → card up at the portal), {} of {} rings got a card: p50 {} s, p95 {} s, max {} s",
        f.carded,
        f.rings,
        secs(pct(&f.lat, 50.0)),
        secs(pct(&f.lat, 95.0)),
        secs(f.lat.last().copied()),
    );
    println!(
        "  rings ≥ 3 s: {}, card while still ringing: {}, p95 (no card = never): {} s",
        f.long_rings,
        f.long_in_time,
        secs(f.long_p95)
    );
    println!(
        "  REST operations/call {:.2}, HTTP requests/call {:.2}",
        f.ops as f64 / f.calls as f64,
        f.http as f64 / f.calls as f64
    );
    println!(
        "  when the last event was sent: {} call(s) not finished at the portal; the daemon's view: {} step(s) pending, oldest {} s",
        f.unfinished_at_end,
        f.backlog_steps,
        secs(f.backlog_age),
    );
    println!(
        "  every call finished at the portal {:.1} s after the last event{}{}",
        f.drain_secs,
        f.drain_ops_per_s.map_or(String::new(), |r| format!(
            ", backlog drained at {r:.0} operations/s"
        )),
        if f.left > 0 {
            format!(
                " — NOT drained within the cap, {} call(s) not finished",
                f.left
            )
        } else {
            String::new()
        }
    );
    println!(
        "  RSS peak of the whole bench process: {} MiB, of which {} MiB before the daemon started \
         (the bench's own event stream); the rest is the daemon, both fakes and their records",
        f.rss_peak_kib / 1024,
        f.rss_base_kib / 1024
    );
}

fn env_or<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn main() {
    // `RUST_LOG=debug` shows what the daemon does under load.
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("off"))
        .try_init();
    let bench = std::env::args().any(|a| a == "--bench");
    let templates: Vec<_> = MIX.iter().map(|n| template(n)).collect();
    if !bench {
        // A smoke run under `cargo test --all-targets`: a few calls on an idle portal, and
        // every ring must have got its card.
        let f = run(4.0, 2.0, Duration::from_secs(30), &templates);
        print(&f);
        assert!(f.rings > 0, "the stream rang no phone");
        assert_eq!(f.carded, f.rings, "a ring without a card on an idle portal");
        assert_eq!(f.left, 0, "calls not finished on an idle portal");
        return;
    }
    let rates: Vec<f64> = std::env::var("CALLME_LOAD_RATES")
        .ok()
        .map(|v| v.split(',').filter_map(|r| r.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1.0, 10.0, 50.0, 100.0]);
    let drain = Duration::from_secs(env_or("CALLME_LOAD_DRAIN").unwrap_or(20));
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "load bench: callers {}, {} CPU(s), load average at start {}",
        if known_callers() {
            "known (CRM contact owned by 219)"
        } else {
            "unknown (no CRM match)"
        },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    for rate in rates {
        // At 1 call/s the first ~20 s ride on the bucket's burst: run long enough to see the
        // steady state.
        let default = match rate {
            r if r <= 1.0 => 45.0,
            r if r <= 10.0 => 20.0,
            _ => 10.0,
        };
        let secs = env_or("CALLME_LOAD_SECS").unwrap_or(default);
        let f = run(rate, secs, drain, &templates);
        print(&f);
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "load average at the end {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
}
