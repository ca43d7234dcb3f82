//! Nothing lost, proven under faults (issue #16): the real `callme run` against a live stream
//! of overlapping calls (the real captures, renumbered per call) and the fake portal, with
//! faults at random moments: the portal refusing connections, 5xx bursts,
//! `QUERY_LIMIT_EXCEEDED`, slow answers, the AMI link cut, `kill -9` and SIGTERM with a
//! restart, writes failing with `EFBIG`. After each run the invariants of
//! `support/invariants.rs` are checked: every call registered once and finished once, its
//! steps in order, the right user, the right status, no card left open.
//!
//! Every schedule comes from a seed. A failure prints the seed and the offending calls'
//! timelines; replay one with `FAULT_SEED=n cargo test --test faults replay_seed -- --ignored
//! --nocapture` (`FAULT_KINDS=portal` for portal faults only). The soak runs many seeds:
//! `SOAK_SEEDS=1..300 cargo test --release --test faults soak -- --ignored --nocapture`.
//!
//! The acceptance tests of #16 are the three named tests at the end.
mod support;

use std::time::{Duration, Instant};

use support::chaos::{self, Fault, Kinds, Schedule};
use support::traffic::TrafficSpec;

/// Run one schedule; panic with the full explanation if an invariant broke.
fn check(s: &Schedule) {
    let (report, rig) = chaos::run(s);
    println!("{}", report.summary);
    if !report.ok() {
        panic!("{}", chaos::explain(s, &report, &rig));
    }
}

fn seed_env(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn kinds_env() -> Kinds {
    match std::env::var("FAULT_KINDS").as_deref() {
        Ok("portal") => Kinds::Portal,
        _ => Kinds::All,
    }
}

// ---------------------------------------------------------------------------------------
// Seeded random faults: a handful in `cargo test`
// ---------------------------------------------------------------------------------------

#[test]
fn portal_faults_seed_1() {
    check(&Schedule::random(1, Kinds::Portal));
}

#[test]
fn portal_faults_seed_2() {
    check(&Schedule::random(2, Kinds::Portal));
}

#[test]
fn portal_faults_seed_5() {
    check(&Schedule::random(5, Kinds::Portal));
}

#[test]
fn portal_faults_seed_6() {
    check(&Schedule::random(6, Kinds::Portal));
}

#[test]
fn all_faults_seed_3() {
    check(&Schedule::random(3, Kinds::All));
}

#[test]
fn all_faults_seed_4() {
    check(&Schedule::random(4, Kinds::All));
}

/// The state dir's files cannot grow past 8 KiB (`RLIMIT_FSIZE`: writes fail with `EFBIG`,
/// like a full disk) for the first 4 s of a stream of calls, then the limit is lifted: every
/// call still arrives once, and the daemon said so loudly.
#[test]
fn a_full_disk_for_4_s_loses_no_call() {
    let mut traffic = TrafficSpec::new(16_004, 24, 5.0);
    traffic.speed = 3.0;
    let s = Schedule {
        seed: 16_004,
        traffic,
        portal_down_at_start: None,
        slow_at_start: None,
        disk_full_at_start: Some(4.0),
        faults: Vec::new(),
        bitrix_extra: "rate = 20\nusers_refresh = 2\n".into(),
        settle: Duration::from_secs(45),
    };
    let (report, rig) = chaos::run(&s);
    println!("{}", report.summary);
    let log = rig.logs().join("\n");
    assert!(
        log.contains("File too large"),
        "the limit never hit a write, so this tested nothing; log:\n{log}"
    );
    for l in log.lines().filter(|l| l.contains("File too large")).take(5) {
        println!("daemon: {l}");
    }
    if !report.ok() {
        panic!("{}", chaos::explain(&s, &report, &rig));
    }
}

/// The first call begins right after the AMI login, while the user directory is still
/// loading (every portal answer takes 300 ms for the first 2 s): it is registered like the
/// others.
#[test]
fn the_first_calls_after_a_start_are_registered_while_the_directory_loads() {
    let mut traffic = TrafficSpec::new(16_006, 12, 6.0);
    traffic.speed = 3.0;
    traffic.mix = [40, 15, 10, 15, 10, 10, 0];
    check(&Schedule {
        seed: 16_006,
        traffic,
        portal_down_at_start: None,
        slow_at_start: Some((2.0, 300)),
        disk_full_at_start: None,
        faults: Vec::new(),
        bitrix_extra: "rate = 20\nusers_refresh = 2\n".into(),
        settle: Duration::from_secs(45),
    });
}

/// While the state dir's files cannot grow (`EFBIG`), `/healthz` says 503 with the reason;
/// once the disk has room again it says 200.
#[test]
fn a_full_disk_turns_healthz_503_until_it_has_room_again() {
    let mut rig = chaos::Rig::new(true, "rate = 20\nusers_refresh = 2\n");
    rig.start_limited(chaos::FULL_DISK_BLOCKS);
    assert!(rig.ami.wait_accepted(1, Duration::from_secs(20)));
    let mut spec = TrafficSpec::new(16_005, 20, 5.0);
    spec.speed = 3.0;
    let traffic = support::traffic::Traffic::start(spec, rig.ami.clone(), rig.portal.clone());
    let mut last = None;
    let failing = support::fake_ami::wait_until(Duration::from_secs(20), || {
        last = rig.healthz();
        last.as_ref().is_some_and(|(s, _)| *s == 503)
    });
    assert!(
        rig.logs().join("\n").contains("File too large"),
        "no write failed, so this tested nothing"
    );
    assert!(failing, "/healthz while writes fail: {last:?}");
    assert!(rig.daemon.as_ref().is_some_and(|d| d.lift_file_limit()));
    let back = support::fake_ami::wait_until(Duration::from_secs(20), || {
        last = rig.healthz();
        last.as_ref().is_some_and(|(s, _)| *s == 200)
    });
    assert!(back, "/healthz once the disk has room: {last:?}");
    drop(traffic);
}

/// `FAULT_SEED=n`: replay one seed (with `FAULT_KINDS=portal`, portal faults only).
#[test]
#[ignore = "replays FAULT_SEED; run by hand"]
fn replay_seed() {
    let seed = seed_env("FAULT_SEED").expect("set FAULT_SEED=n");
    check(&Schedule::random(seed, kinds_env()));
}

/// Many seeds: `SOAK_SEEDS=a..b` (default 1..100), `FAULT_KINDS` as for `replay_seed`.
/// Prints one line per seed, then every failing seed with its explanation.
#[test]
#[ignore = "a soak of hundreds of seeds; run by hand"]
fn soak() {
    let range = std::env::var("SOAK_SEEDS").unwrap_or_else(|_| "1..100".into());
    let (a, b) = range.split_once("..").expect("SOAK_SEEDS=a..b");
    let (a, b): (u64, u64) = (a.trim().parse().unwrap(), b.trim().parse().unwrap());
    let kinds = kinds_env();
    let mut failed = Vec::new();
    for seed in a..b {
        let s = Schedule::random(seed, kinds);
        let started = Instant::now();
        let (report, rig) = chaos::run(&s);
        println!(
            "{} [{:.1} s] {}",
            report.summary,
            started.elapsed().as_secs_f64(),
            if report.ok() { "ok" } else { "FAILED" }
        );
        if !report.ok() {
            failed.push((seed, chaos::explain(&s, &report, &rig)));
        }
    }
    println!("soak: {} seed(s), {} failed", b - a, failed.len());
    for (seed, why) in &failed {
        println!("=== seed {seed}\n{why}");
    }
    assert!(
        failed.is_empty(),
        "failing seeds: {:?}",
        failed.iter().map(|f| f.0).collect::<Vec<_>>()
    );
}

// ---------------------------------------------------------------------------------------
// The acceptance tests of #16
// ---------------------------------------------------------------------------------------

/// `kill -9` in the middle of a stream of overlapping calls (100 calls at 10 calls/s),
/// restarted 2 s later: every call whose channels were alive while callme was up is
/// registered once and finished once. Calls that began in the gap are alive at the restart,
/// so `CoreShowChannels` lists them.
#[test]
fn kill_9_mid_stream_every_call_alive_while_up_is_registered_once_and_finished_once() {
    let mut traffic = TrafficSpec::new(16_001, 100, 10.0);
    traffic.mix = [40, 15, 10, 15, 10, 10, 0];
    check(&Schedule {
        seed: 16_001,
        traffic,
        portal_down_at_start: None,
        slow_at_start: None,
        disk_full_at_start: None,
        faults: vec![(4.0, Fault::Kill9 { down: 2.0 })],
        bitrix_extra: String::new(),
        settle: Duration::from_secs(150),
    });
}

/// 100 calls with the portal refusing connections for the first 20 s after start (set
/// `NOTHING_LOST_OUTAGE_SECS` to shorten it for a quick local run; CI runs 20 s): all 100
/// registered once and finished once.
#[test]
fn portal_refusing_at_start_all_100_calls_registered_once_and_finished_once() {
    let outage = std::env::var("NOTHING_LOST_OUTAGE_SECS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(20.0);
    let mut traffic = TrafficSpec::new(16_002, 100, 100.0 / outage.max(1.0));
    traffic.mix = [40, 15, 10, 15, 10, 10, 0];
    let s = Schedule {
        seed: 16_002,
        traffic,
        portal_down_at_start: Some(outage),
        slow_at_start: None,
        disk_full_at_start: None,
        faults: Vec::new(),
        bitrix_extra: String::new(),
        settle: Duration::from_secs(240),
    };
    let (report, rig) = chaos::run(&s);
    println!("{}", report.summary);
    assert_eq!(
        report.in_reach, 100,
        "every call was seen live: {}",
        report.summary
    );
    if !report.ok() {
        panic!("{}", chaos::explain(&s, &report, &rig));
    }
}

/// Ten minutes of overlapping traffic (`SOAK_MINUTES`, `SOAK_RATE` calls/s, default 5) with one
/// call that stays up the whole time: prints the state dir size and the daemon's RSS every
/// 30 s. A measurement: the figures are printed, not asserted (the calls still must all
/// arrive, which is asserted).
#[test]
#[ignore = "a 10-minute measurement; run by hand with --nocapture"]
fn ten_minutes_of_overlapping_traffic_with_an_endless_call_state_dir_and_rss() {
    let minutes: f64 = std::env::var("SOAK_MINUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10.0);
    let rate: f64 = std::env::var("SOAK_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5.0);
    let calls = (minutes * 60.0 * rate) as usize;
    let mut spec = TrafficSpec::new(16_003, calls, rate);
    spec.endless = 1;
    spec.mix = [40, 15, 10, 15, 10, 10, 0];
    let mut rig = chaos::Rig::new(true, "rate = 20\n");
    rig.start();
    assert!(rig.ami.wait_accepted(1, Duration::from_secs(20)));
    let mut traffic =
        support::traffic::Traffic::start(spec.clone(), rig.ami.clone(), rig.portal.clone());
    let t0 = Instant::now();
    println!(
        "t_s\tcalls_started\tchannels_alive\tstate_dir_bytes\tevents_jsonl\toutbox_jsonl\trss_kib"
    );
    let mut samples = Vec::new();
    let every = Duration::from_secs(30);
    let mut next = t0;
    while !traffic.is_done() {
        if Instant::now() >= next {
            let file = |n: &str| std::fs::metadata(rig.state_dir().join(n)).map_or(0, |m| m.len());
            let row = (
                t0.elapsed().as_secs(),
                traffic.calls().len(),
                traffic.alive_channels(),
                rig.state_bytes(),
                file("events.jsonl"),
                file("outbox.jsonl"),
                rig.daemon.as_ref().and_then(|d| d.rss_kib()).unwrap_or(0),
            );
            println!(
                "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                row.0, row.1, row.2, row.3, row.4, row.5, row.6
            );
            samples.push(row);
            next += every;
        }
        // Sampling period, not synchronisation.
        std::thread::sleep(Duration::from_millis(200));
    }
    traffic.release_held();
    assert!(traffic.wait_finished(Duration::from_secs(60)));
    if samples.len() >= 4 {
        let q = samples.len() / 4;
        let (early, late) = (&samples[q], &samples[samples.len() - 1]);
        println!(
            "state dir: {} B at {} s, {} B at {} s; RSS: {} KiB at {} s, {} KiB at {} s",
            early.3, early.0, late.3, late.0, early.6, early.0, late.6, late.0
        );
    }
    let settle = Duration::from_secs(300);
    let ok = support::fake_ami::wait_until(settle, || {
        rig.portal.active_calls().is_empty()
            && rig.portal.finished_calls().len()
                >= traffic
                    .calls()
                    .iter()
                    .filter(|c| c.expected().is_some())
                    .count()
    });
    let report = support::invariants::check(
        spec.seed,
        rig.t0,
        &traffic.calls(),
        &rig.portal,
        &rig.volatile,
        &rig.ami.connection_log(),
    );
    println!("{} (settled: {ok})", report.summary);
    assert!(
        report.ok(),
        "{:#?}",
        &report.violations[..report.violations.len().min(20)]
    );
}
