//! Tracker throughput and memory: every capture replayed 1,000 times through the pure tracker.
//!
//! Prints events/s and the process RSS before and after; RSS must stay flat because finished
//! calls are purged. Run with `cargo bench --bench tracker`.

use std::path::Path;
use std::time::Instant;

use callme::calls::{Tracker, TrackerConfig};

const ROUNDS: usize = 1_000;

/// `cargo bench` passes `--bench`; under `cargo test --all-targets` a few rounds check that the
/// benchmark still runs.
fn rounds() -> usize {
    if std::env::args().any(|a| a == "--bench") {
        ROUNDS
    } else {
        5
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixtures")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "ami"))
        .collect();
    names.sort();
    let mut messages = Vec::new();
    for p in &names {
        let cap = callme::replay::load(p).expect("capture");
        messages.extend(cap.messages.into_iter().map(|t| (t.msg, t.at_ms)));
    }
    let events = messages.iter().filter(|(m, _)| m.event().is_some()).count();
    println!(
        "tracker bench: {} captures, {} messages ({} events) per round, {} rounds",
        names.len(),
        messages.len(),
        events,
        rounds()
    );

    let mut tracker = Tracker::new(TrackerConfig::default());
    tracker.set_employees(["219", "220", "221"].map(String::from));
    let mut out = Vec::new();
    let mut intents = 0usize;
    // Warm-up round, then measure RSS.
    for (m, at) in &messages {
        tracker.handle(m, *at, &mut out);
    }
    out.clear();
    let rss_before = rss_kib();
    let start = Instant::now();
    for round in 0..rounds() {
        let shift = round as u64 * 60_000;
        for (m, at) in &messages {
            tracker.handle(m, at + shift, &mut out);
            intents += out.len();
            out.clear();
        }
    }
    let elapsed = start.elapsed();
    let rss_after = rss_kib();
    let total = (messages.len() * rounds()) as f64;
    println!(
        "  {:.0} messages/s ({:.0} events/s), {intents} intents, {:.2} s",
        total / elapsed.as_secs_f64(),
        (events * rounds()) as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    println!(
        "  RSS before {rss_before} KiB, after {rss_after} KiB; calls still tracked: {}",
        tracker.len()
    );
}
