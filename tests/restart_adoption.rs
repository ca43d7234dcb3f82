//! A restart while calls are up: the real `callme run` is killed with SIGKILL mid-call, a new
//! call begins while it is down, and after the restart `CoreShowChannels` lists both. The
//! call it had seen is carried on from the events journal; the call that began in the gap is
//! adopted from the listing. Both are registered once, shown, and finished once, against the
//! fake AMI and the fake portal on loopback.
mod support;

use std::fs;
use std::path::Path;
use std::time::Duration;

use callme::ami::event::Event;
use support::configs;
use support::daemon::{Running, TempDir};
use support::fake_ami::FakeAmi;
use support::fake_bitrix::{FakeBitrix, Recorded};

const WAIT: Duration = Duration::from_secs(15);
const SECRET: &str = "amisecret-adopt";

fn config(ami: &FakeAmi, portal: &FakeBitrix, state: &Path) -> String {
    let text = configs::webhook(ami.port(), SECRET, &portal.webhook_url());
    configs::set(&text, "state", "dir", &state.display().to_string())
}

fn count(cmds: &[Recorded], method: &str) -> usize {
    cmds.iter()
        .filter(|r| r.method == method && r.status == 200)
        .count()
}

fn registers(cmds: &[Recorded]) -> Vec<&Recorded> {
    cmds.iter()
        .filter(|r| r.method == "telephony.externalcall.register" && r.status == 200)
        .collect()
}

/// The answered inbound capture cut before its first Hangup: (first half, rest).
fn halves() -> (Vec<u8>, Vec<u8>) {
    let tail = support::capture_tail("a_inbound_answered.ami");
    let cut = tail
        .windows(b"Event: Hangup\r\n".len())
        .position(|w| w == b"Event: Hangup\r\n")
        .expect("capture has a Hangup");
    (tail[..cut].to_vec(), tail[cut..].to_vec())
}

/// How many tracker events the bytes hold.
fn tracker_events(bytes: &[u8]) -> usize {
    callme::replay::parse_bytes(bytes)
        .messages
        .iter()
        .filter(|t| !matches!(Event::parse(&t.msg), Event::Other))
        .count()
}

fn journal_events(state: &Path) -> usize {
    fs::read_to_string(state.join("events.jsonl"))
        .map(|t| t.lines().filter(|l| l.contains("\"t\":\"event\"")).count())
        .unwrap_or(0)
}

/// A `CoreShowChannel` item with the fields Asterisk 16 lists (ami.md §4.3), in wire order.
#[allow(clippy::too_many_arguments)]
fn item(
    name: &str,
    state: &str,
    cid: &str,
    context: &str,
    exten: &str,
    uid: &str,
    linked: &str,
    app: &str,
    data: &str,
    duration: &str,
    bridge: &str,
) -> Vec<(String, String)> {
    let desc = if state == "6" { "Up" } else { "Ringing" };
    [
        ("Channel", name),
        ("ChannelState", state),
        ("ChannelStateDesc", desc),
        ("CallerIDNum", cid),
        ("CallerIDName", "<unknown>"),
        ("ConnectedLineNum", "<unknown>"),
        ("ConnectedLineName", "<unknown>"),
        ("Language", "en"),
        ("AccountCode", ""),
        ("Context", context),
        ("Exten", exten),
        ("Priority", "1"),
        ("Uniqueid", uid),
        ("Linkedid", linked),
        ("Application", app),
        ("ApplicationData", data),
        ("Duration", duration),
        ("BridgeId", bridge),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn hangup(name: &str, uid: &str, linked: &str) -> String {
    format!(
        "Event: Hangup\r\nPrivilege: call,all\r\nChannel: {name}\r\nUniqueid: {uid}\r\n\
         Linkedid: {linked}\r\nCause: 16\r\nCause-txt: Normal Clearing\r\n\r\n"
    )
}

#[test]
fn a_call_that_began_while_callme_was_down_is_registered_shown_and_finished() {
    let portal = FakeBitrix::start();
    let ami = FakeAmi::start("callme", SECRET);
    let dir = TempDir::new("callme-adopt");
    let state = dir.path().join("state");

    // Call A (capture a): 219 answers; callme sees it, then is killed.
    let (first, rest) = halves();
    let first_events = tracker_events(&first);
    ami.set_stream(first);
    let mut daemon = Running::start(&config(&ami, &portal, &state), &["--debug"]);
    assert!(
        portal.wait_for_commands(|c| count(c, "telephony.externalcall.show") >= 1, WAIT),
        "no show for the first call; log:\n{}",
        daemon.log()
    );
    assert!(
        support::fake_ami::wait_until(WAIT, || journal_events(&state) >= first_events),
        "events not journaled; log:\n{}",
        daemon.log()
    );
    daemon.kill();
    let log1 = daemon.log();
    assert_eq!(
        count(&portal.commands(), "telephony.externalcall.register"),
        1
    );

    // While callme is down, call B comes in on another line and 220 answers it. After the
    // restart Asterisk lists A's channels and B's, and says nothing else until the hangups.
    let bridge_a = "0860fab9-904a-4346-8954-9fbf9832601a";
    let bridge_b = "5d1e7c2a-0b44-4f0e-9a51-3c6f2b7d9e10";
    ami.set_stream(Vec::new());
    ami.set_core_show_channels(vec![
        item(
            "SIP/trunk-00000000",
            "6",
            "79991234567",
            "from-trunk",
            "8001231231",
            "1795668285.0",
            "1795668285.0",
            "Dial",
            "SIP/219,,tT",
            "00:00:09",
            bridge_a,
        ),
        item(
            "SIP/219-00000001",
            "6",
            "219",
            "from-internal",
            "",
            "1795668285.1",
            "1795668285.0",
            "AppDial",
            "(Outgoing Line)",
            "00:00:08",
            bridge_a,
        ),
        item(
            "SIP/trunk-000000b0",
            "6",
            "79997654321",
            "from-trunk",
            "8001231234",
            "1795668999.50",
            "1795668999.50",
            "Dial",
            "SIP/220,,tT",
            "00:00:03",
            bridge_b,
        ),
        item(
            "SIP/220-000000b1",
            "6",
            "220",
            "from-internal",
            "",
            "1795668999.51",
            "1795668999.50",
            "AppDial",
            "(Outgoing Line)",
            "00:00:02",
            bridge_b,
        ),
    ]);
    let mut daemon = Running::start(&config(&ami, &portal, &state), &["--debug"]);
    assert!(
        portal.wait_for_commands(|c| count(c, "telephony.externalcall.register") >= 2, WAIT),
        "the call that began in the gap was not registered; log:\n{log1}\n---\n{}",
        daemon.log()
    );
    assert!(
        portal.wait_for_commands(|c| count(c, "telephony.externalcall.show") >= 2, WAIT),
        "no card for the adopted call; log:\n{}",
        daemon.log()
    );
    let cmds = portal.commands();
    let regs = registers(&cmds);
    let b = regs
        .iter()
        .find(|r| r.params["EXTERNAL_CALL_ID"] == "callme-1795668999.50")
        .unwrap_or_else(|| panic!("B's register: {regs:?}"));
    assert_eq!(b.params["LINE_NUMBER"], "8001231234", "{:?}", b.params);
    // As a number alone, as text inside a batch (its show rides with it).
    assert_eq!(b.num("TYPE"), 2, "inbound: {:?}", b.params);
    assert_eq!(b.params["PHONE_NUMBER"], "79997654321", "{:?}", b.params);

    // Both calls end.
    assert!(ami.push(&rest), "A's hangups");
    let hangups = hangup("SIP/trunk-000000b0", "1795668999.50", "1795668999.50")
        + &hangup("SIP/220-000000b1", "1795668999.51", "1795668999.50");
    assert!(ami.push(hangups.as_bytes()), "B's hangups");
    assert!(
        portal.wait_for_commands(|c| count(c, "telephony.externalcall.finish") >= 2, WAIT),
        "not both finished; log:\n{}",
        daemon.log()
    );
    let cmds = portal.commands();
    // Two calls in Bitrix24, each registered once. A's show rode in its register's batch,
    // so the kill may have come before A's CALL_ID reached the disk: then A's register is
    // sent again after the restart and answered with the same CALL_ID (an open call with
    // the same key, bitrix24-api.md §2.1), which is not a second call.
    let regs = portal.registrations();
    assert_eq!(regs.iter().filter(|r| r.new).count(), 2, "{regs:?}");
    let ids: std::collections::BTreeSet<&str> = regs.iter().map(|r| r.call_id.as_str()).collect();
    assert_eq!(ids.len(), 2, "{regs:?}");
    assert_eq!(count(&cmds, "telephony.externalcall.finish"), 2);
    let fin = portal.finished_calls();
    let users: Vec<u64> = {
        let mut v: Vec<u64> = fin
            .iter()
            .map(|f| f["PORTAL_USER_ID"].as_u64().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(users, [19, 20], "A under 219, B under 220: {fin:?}");
    assert!(
        fin.iter().all(|f| f["CALL_FAILED_CODE"] == "200"),
        "{fin:?}"
    );
    assert!(portal.active_calls().is_empty());
    assert!(portal.open_cards().is_empty(), "{:?}", portal.open_cards());
    let log = daemon.log();
    assert!(log.contains("restored 1 call(s) in progress"), "{log}");
    assert!(log.contains("reconcile: adopted 2 channel(s)"), "{log}");
    assert!(daemon.alive());
}
