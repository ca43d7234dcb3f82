//! The real `callme run` binary surviving `kill -9` and an AMI reconnect mid-call, against
//! the fake AMI and the fake portal on loopback.
mod support;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use callme::ami::event::Event;
use support::configs;
use support::daemon::{Running, TempDir};
use support::fake_ami::FakeAmi;
use support::fake_bitrix::{FakeBitrix, Recorded};

const WAIT: Duration = Duration::from_secs(15);
const SECRET: &str = "amisecret-outbox";

fn config(ami: &FakeAmi, portal: &FakeBitrix, state: &Path) -> String {
    let text = configs::webhook(ami.port(), SECRET, &portal.webhook_url());
    configs::set(&text, "state", "dir", &state.display().to_string())
}

/// An answered inbound capture cut before its first Hangup: (first half, rest).
fn halves(capture: &str) -> (Vec<u8>, Vec<u8>) {
    let tail = support::capture_tail(capture);
    let cut = tail
        .windows(b"Event: Hangup\r\n".len())
        .position(|w| w == b"Event: Hangup\r\n")
        .expect("capture has a Hangup");
    (tail[..cut].to_vec(), tail[cut..].to_vec())
}

/// `CoreShowChannel` items for the channels the bytes create, and how many tracker events
/// they hold.
fn channels_and_events(bytes: &[u8]) -> (Vec<Vec<(String, String)>>, usize) {
    let cap = callme::replay::parse_bytes(bytes);
    let mut items = Vec::new();
    let mut events = 0;
    for t in &cap.messages {
        match Event::parse(&t.msg) {
            Event::Other => {}
            Event::Newchannel(c) => {
                events += 1;
                items.push(vec![
                    ("Channel".to_string(), c.name.to_string()),
                    ("Uniqueid".to_string(), c.uniqueid.to_string()),
                    ("Linkedid".to_string(), c.linkedid.to_string()),
                ]);
            }
            _ => events += 1,
        }
    }
    (items, events)
}

fn count(cmds: &[Recorded], method: &str) -> usize {
    cmds.iter()
        .filter(|r| r.method == method && r.status == 200)
        .count()
}

fn journal_lines(state: &Path) -> usize {
    fs::read_to_string(state.join("events.jsonl"))
        .map(|t| t.lines().filter(|l| l.contains("\"t\":\"event\"")).count())
        .unwrap_or(0)
}

#[test]
fn kill_9_mid_call_then_restart_finishes_it_once() {
    kill_9_mid_call_then_restart("a_inbound_answered.ami");
}

/// The same on the PJSIP twin (`tests/fixtures/pjsip/`, Asterisk 22).
#[test]
fn kill_9_mid_call_then_restart_finishes_it_once_pjsip() {
    kill_9_mid_call_then_restart("pjsip/a_inbound_answered.ami");
}

fn kill_9_mid_call_then_restart(capture: &str) {
    let portal = FakeBitrix::start();
    let ami = FakeAmi::start("callme", SECRET);
    let dir = TempDir::new("callme-crash");
    let state = dir.path().join("state");
    let (first, rest) = halves(capture);
    let (alive, first_events) = channels_and_events(&first);
    ami.set_stream(first);
    ami.set_core_show_channels(alive);

    let mut daemon = Running::start(&config(&ami, &portal, &state), &["--debug"]);
    assert!(
        portal.wait_for_commands(|c| count(c, "telephony.externalcall.show") >= 1, WAIT),
        "no show before the crash; log:\n{}",
        daemon.log()
    );
    let answered = Instant::now();
    assert!(
        support::fake_ami::wait_until(WAIT, || journal_lines(&state) >= first_events),
        "events not journaled"
    );
    daemon.kill(); // SIGKILL
    let log1 = daemon.log();

    // Let the call go on for a while, as it would during a restart.
    let talk = Duration::from_secs(2);
    std::thread::sleep(talk.saturating_sub(answered.elapsed()));
    ami.set_stream(rest);
    let mut daemon = Running::start(&config(&ami, &portal, &state), &["--debug"]);
    assert!(
        portal.wait_for_commands(|c| count(c, "telephony.externalcall.finish") >= 1, WAIT),
        "no finish after the restart; log:\n{log1}\n---\n{}",
        daemon.log()
    );
    let hung_up = answered.elapsed();
    let cmds = portal.commands();
    // Registered once: one call in Bitrix24. The show rides in its register's batch, so the
    // kill can come after both reached the portal and before the register's CALL_ID was on
    // disk; the register is then sent again after the restart, and the portal answers it
    // with the same CALL_ID (an open call with the same key, bitrix24-api.md §2.1). A second
    // call would be a second new registration.
    let regs = portal.registrations();
    assert_eq!(
        regs.iter().filter(|r| r.new).count(),
        1,
        "registered once: {regs:?}"
    );
    assert!(
        regs.iter().all(|r| r.call_id == regs[0].call_id),
        "one CALL_ID: {regs:?}"
    );
    assert_eq!(
        count(&cmds, "telephony.externalcall.finish"),
        1,
        "finished once"
    );
    let fin = portal.finished_calls();
    assert_eq!(fin.len(), 1);
    assert_eq!(fin[0]["PORTAL_USER_ID"], 19, "finished under 219's user");
    assert_eq!(fin[0]["CALL_FAILED_CODE"], "200");
    let duration = fin[0]["CALL_DURATION"].as_u64().unwrap();
    assert!(
        duration >= talk.as_secs() - 1 && duration <= hung_up.as_secs() + 1,
        "duration {duration} s, talked {hung_up:?}"
    );
    assert!(portal.active_calls().is_empty());
    assert!(
        daemon.log().contains("restored 1 call(s) in progress"),
        "{}",
        daemon.log()
    );
    assert!(daemon.alive());
}

#[test]
fn a_call_that_ends_during_an_ami_outage_is_finished_after_the_reconnect() {
    call_ends_during_an_ami_outage("a_inbound_answered.ami");
}

/// The same on the PJSIP twin (`tests/fixtures/pjsip/`, Asterisk 22).
#[test]
fn a_call_that_ends_during_an_ami_outage_is_finished_after_the_reconnect_pjsip() {
    call_ends_during_an_ami_outage("pjsip/a_inbound_answered.ami");
}

fn call_ends_during_an_ami_outage(capture: &str) {
    let portal = FakeBitrix::start();
    let ami = FakeAmi::start("callme", SECRET);
    let dir = TempDir::new("callme-reconnect");
    let state = dir.path().join("state");
    let (first, _rest) = halves(capture);
    let (alive, _) = channels_and_events(&first);
    ami.set_stream(first);
    ami.set_core_show_channels(alive);

    let daemon = Running::start(&config(&ami, &portal, &state), &["--debug"]);
    assert!(
        portal.wait_for_commands(|c| count(c, "telephony.externalcall.show") >= 1, WAIT),
        "no show; log:\n{}",
        daemon.log()
    );
    // The link drops; meanwhile the call ends, so Asterisk no longer lists its channels.
    ami.set_stream(Vec::new());
    ami.set_core_show_channels(Vec::new());
    ami.drop_connection();
    assert!(
        portal.wait_for_commands(|c| count(c, "telephony.externalcall.finish") >= 1, WAIT),
        "the call was left open; log:\n{}",
        daemon.log()
    );
    assert!(ami.accepted_logins() >= 2, "reconnected");
    let fin = portal.finished_calls();
    assert_eq!(fin.len(), 1);
    assert_eq!(fin[0]["PORTAL_USER_ID"], 19);
    assert_eq!(fin[0]["CALL_FAILED_CODE"], "200", "it was answered");
    assert!(portal.active_calls().is_empty());
    assert!(portal.open_cards().is_empty(), "{:?}", portal.open_cards());
    assert!(daemon.log().contains("reconcile:"), "{}", daemon.log());
}

/// SIGTERM while the portal is down and the outbox holds a whole call's steps: the daemon
/// exits 0 within the unit's stop timeout, the journal is intact (every line parses), and a
/// restart delivers the call exactly once.
#[test]
fn sigterm_with_pending_steps_exits_0_and_the_journal_carries_on() {
    sigterm_with_pending_steps("a_inbound_answered.ami");
}

/// The same on the PJSIP twin (`tests/fixtures/pjsip/`, Asterisk 22).
#[test]
fn sigterm_with_pending_steps_exits_0_and_the_journal_carries_on_pjsip() {
    sigterm_with_pending_steps("pjsip/a_inbound_answered.ami");
}

fn sigterm_with_pending_steps(capture: &str) {
    let portal = FakeBitrix::start();
    portal.set_down(true);
    let ami = FakeAmi::start("callme", SECRET);
    let dir = TempDir::new("callme-sigterm");
    let state = dir.path().join("state");
    ami.set_stream(support::capture_tail(capture));

    let mut daemon = Running::start(&config(&ami, &portal, &state), &["--debug"]);
    let outbox = state.join("outbox.jsonl");
    let queued = |what: &str| {
        fs::read_to_string(&outbox)
            .map(|t| {
                t.lines()
                    .any(|l| l.contains("\"t\":\"step\"") && l.contains(what))
            })
            .unwrap_or(false)
    };
    assert!(
        support::fake_ami::wait_until(WAIT, || queued("\"finish\"")),
        "the call's steps never reached the outbox; log:\n{}",
        daemon.log()
    );
    daemon.terminate();
    let status = daemon
        .wait_exit(Duration::from_secs(10))
        .expect("stopped in time");
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        daemon.log()
    );
    let journal = fs::read_to_string(&outbox).unwrap();
    for line in journal.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("torn journal line {line:?}: {e}"));
    }
    assert_eq!(
        count(&portal.commands(), "telephony.externalcall.register"),
        0
    );

    // The portal is back; the PBX has nothing more to say about that call.
    portal.set_down(false);
    ami.set_stream(Vec::new());
    let daemon = Running::start(&config(&ami, &portal, &state), &["--debug"]);
    assert!(
        portal.wait_for_commands(|c| count(c, "telephony.externalcall.finish") >= 1, WAIT),
        "pending steps not delivered after the restart; log:\n{}",
        daemon.log()
    );
    let cmds = portal.commands();
    assert_eq!(count(&cmds, "telephony.externalcall.register"), 1);
    assert_eq!(count(&cmds, "telephony.externalcall.finish"), 1);
    let fin = portal.finished_calls();
    assert_eq!(fin[0]["PORTAL_USER_ID"], 19);
    assert_eq!(fin[0]["CALL_FAILED_CODE"], "200");
    assert!(portal.open_cards().is_empty());
}
