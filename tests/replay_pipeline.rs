//! `callme replay` without `--dry-run` goes through `callme run`'s pipeline (issue #16 point
//! 7): the real binary replays a capture of many calls into the fake portal that enforces the
//! cloud's 2 requests/s limit, and every call arrives without one `QUERY_LIMIT_EXCEEDED`.
mod support;

use std::fs;
use std::process::{Command, Stdio};

use support::configs;
use support::daemon::TempDir;
use support::fake_bitrix::FakeBitrix;

/// `n` copies of the answered inbound call, one second apart on the capture clock
/// (`Timestamp:` headers), each with its own Uniqueids, Linkedid and channel names, behind an
/// AMI banner: what `callme replay` reads.
fn capture(n: usize) -> Vec<u8> {
    support::captures::timestamped_calls(n, 1000)
}

#[test]
fn a_replay_of_100_calls_into_a_rate_limited_portal_gets_every_call_through_unrefused() {
    let calls = 100;
    let portal = FakeBitrix::start();
    portal.set_rate_limit(2.0, 50);
    let dir = TempDir::new("callme-replay-pipeline");
    let cap_path = dir.path().join("many.ami");
    fs::write(&cap_path, capture(calls)).unwrap();
    // No [state] dir: the outbox goes to a temporary directory.
    let conf = dir.path().join("callme.conf");
    let text = configs::webhook(1, "unused-secret", &portal.webhook_url());
    fs::write(&conf, text.replace("[state]\ndir = {state}\n", "")).unwrap();

    let out = Command::new(env!("CARGO_BIN_EXE_callme"))
        .arg("replay")
        .arg("-c")
        .arg(&conf)
        .arg(&cap_path)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run callme replay");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}\n{log}", out.status);

    let reqs = portal.requests();
    // The fake answers an overflow with HTTP 503 QUERY_LIMIT_EXCEEDED (a batch as a whole).
    let refused = reqs.iter().filter(|r| r.status == 503).count();
    let cmds = portal.commands();
    let ok = |m: &str| {
        cmds.iter()
            .filter(|r| r.method == m && r.status == 200)
            .count()
    };
    let batches = reqs.iter().filter(|r| r.method == "batch").count();
    println!(
        "{calls} calls: {} HTTP requests ({batches} batches) for {} commands, {refused} refused",
        reqs.len(),
        cmds.len()
    );
    assert_eq!(refused, 0, "QUERY_LIMIT_EXCEEDED answers");
    assert_eq!(ok("telephony.externalcall.register"), calls, "registered");
    assert_eq!(ok("telephony.externalcall.finish"), calls, "finished");
    assert!(portal.active_calls().is_empty());
    assert!(batches > 0, "a backlog of calls goes out batched");

    // The temporary outbox is gone afterwards.
    let outbox = log
        .lines()
        .find_map(|l| l.split_once("replay: outbox in ").map(|(_, d)| d.trim()))
        .unwrap_or_else(|| panic!("no outbox line in:\n{log}"));
    assert!(
        !std::path::Path::new(outbox).exists(),
        "{outbox} left behind"
    );
}

/// With a `[state] dir` in the config the replay's outbox lives there, under its lock: never
/// beside a daemon (or another replay) that owns it.
#[test]
fn a_replay_into_a_named_state_dir_keeps_its_outbox_there_and_respects_its_owner() {
    let portal = FakeBitrix::start();
    let dir = TempDir::new("callme-replay-state");
    let state = dir.path().join("state");
    let cap_path = dir.path().join("two.ami");
    fs::write(&cap_path, capture(2)).unwrap();
    let conf = dir.path().join("callme.conf");
    let text = configs::webhook(1, "unused-secret", &portal.webhook_url());
    fs::write(&conf, text.replace("{state}", &state.display().to_string())).unwrap();
    let replay = || {
        Command::new(env!("CARGO_BIN_EXE_callme"))
            .arg("replay")
            .arg("-c")
            .arg(&conf)
            .arg(&cap_path)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .output()
            .expect("run callme replay")
    };

    let owner = callme::statelock::StateLock::acquire(&state).unwrap();
    let out = replay();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("(PID {}) already uses", std::process::id())),
        "{err}"
    );
    assert!(portal.requests().is_empty(), "nothing sent while refused");
    drop(owner);

    let out = replay();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!("replay: outbox in {}", state.display())),
        "{err}"
    );
    assert!(state.join("outbox.jsonl").exists());
    let finished = portal
        .commands()
        .iter()
        .filter(|r| r.method == "telephony.externalcall.finish" && r.status == 200)
        .count();
    assert_eq!(finished, 2);
}
