//! `callme run` end to end: the real binary against the fake AMI server and the fake Bitrix24
//! portal, both on loopback. Asserts the HTTP requests the portal received.
mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use callme::isotime;
use callme::replay::Timed;

use serde_json::{json, Value};
use support::daemon::Running;
use support::fake_ami::FakeAmi;
use support::fake_bitrix::{FakeBitrix, Recorded};

const WAIT: Duration = Duration::from_secs(20);
const SECRET: &str = "amisecret-e2e";

fn config(ami: &FakeAmi, portal: &FakeBitrix) -> String {
    support::daemon::e2e_config(ami.port(), SECRET, &portal.webhook_url())
}

fn methods(reqs: &[Recorded]) -> Vec<&str> {
    reqs.iter().map(|r| r.method.as_str()).collect()
}

fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// The capture-clock time of the first message that `pred` picks.
fn time_of(msgs: &[Timed], what: &str, pred: impl Fn(&Timed) -> bool) -> u64 {
    msgs.iter()
        .find(|t| pred(t))
        .unwrap_or_else(|| panic!("the capture has no {what}"))
        .at_ms
}

/// Wait until the portal has run `n` finishes (alone or in a batch), whatever it answered.
fn finish_requests(portal: &FakeBitrix, n: usize) -> bool {
    portal.wait_for_commands(
        |reqs| {
            reqs.iter()
                .filter(|r| r.method == "telephony.externalcall.finish")
                .count()
                >= n
        },
        WAIT,
    )
}

#[test]
fn inbound_calls_reach_the_portal_in_order() {
    inbound_calls_in_order(
        "",
        ("callme-1795668285.0", "2026-11-26T04:44:45+00:00"),
        "callme-1795668297.2",
    );
}

/// The same on the PJSIP twins (`tests/fixtures/pjsip/`, Asterisk 22).
#[test]
fn inbound_calls_reach_the_portal_in_order_pjsip() {
    inbound_calls_in_order(
        "pjsip/",
        ("callme-1796236398.0", "2026-12-02T18:33:18+00:00"),
        "callme-1796235756.2",
    );
}

/// The captures a and b from the folder `dir` of `tests/fixtures/`: a's key and start date,
/// and b's key.
fn inbound_calls_in_order(dir: &str, (key_a, date_a): (&str, &str), key_b: &str) {
    let portal = FakeBitrix::start();
    // The caller is a CRM contact whose responsible employee is user 7 (internal 207).
    portal.add_contact("79991234567", 500, 7);
    // The first finish is applied but its response is lost: the daemon's retry must take the
    // portal's `{"error":""}` "Call is not found" as "already done".
    portal.lose_next_response("telephony.externalcall.finish");
    let ami = FakeAmi::start("callme", SECRET);
    // The first call comes with Asterisk's `Timestamp:` headers, so the daemon times it on
    // the capture's clock; what it must send follows from those times.
    let first = support::captures::timestamped_tail(&format!("{dir}a_inbound_answered.ami"));
    let cap = callme::replay::parse_bytes(&first);
    assert_eq!(cap.clock, "Timestamp headers");
    let call_start = time_of(&cap.messages, "Newchannel", |t| {
        t.msg.event() == Some("Newchannel")
    });
    let answered = time_of(&cap.messages, "answer", |t| {
        t.msg.event() == Some("DialEnd") && t.msg.get("DialStatus") == Some("ANSWER")
    });
    let hung_up = time_of(&cap.messages, "Hangup", |t| t.msg.event() == Some("Hangup"));
    // a_inbound_answered.md: 219 answered at +2.51 s, the caller hung up at +7.51 s (the
    // PJSIP twin: +2.52 s, +7.52 s). Bitrix24
    // takes whole seconds; the daemon rounds to the nearest.
    let talk_s = (hung_up - answered + 500) / 1000;
    assert_eq!(talk_s, 5, "the capture's 5 s of talk");
    ami.set_stream(first);

    let mut daemon = Running::start(&config(&ami, &portal), &["--debug"]);
    // The lost one and its retry.
    assert!(
        finish_requests(&portal, 2),
        "no finish; log:\n{}",
        daemon.log()
    );

    let reqs = portal.requests();
    let m = methods(&reqs);
    // user.get pages past 50: 119 active users → start 0, 50, 100.
    let user_pages: Vec<&Value> = reqs
        .iter()
        .filter(|r| r.method == "user.get")
        .map(|r| &r.params["start"])
        .collect();
    assert_eq!(
        user_pages,
        vec![&json!(0), &json!(50), &json!(100)],
        "{m:?}"
    );
    // Commands, alone or in a batch: the show rides in its register's batch when it is
    // queued by the time the register goes (deliver.rs's unit tests pin that packing).
    let cmds = portal.commands();
    let call: Vec<&Recorded> = cmds.iter().filter(|r| r.method != "user.get").collect();
    assert_eq!(
        methods(&call.iter().map(|r| (*r).clone()).collect::<Vec<_>>()),
        vec![
            "telephony.externalcall.searchcrmentities",
            "telephony.externalcall.register",
            "telephony.externalcall.show",
            "telephony.externalcall.finish",
            "telephony.externalcall.finish",
        ]
    );
    assert_eq!(call[0].params["PHONE_NUMBER"], "79991234567");
    let reg = call[1];
    assert_eq!(
        reg.num("USER_ID"),
        7,
        "registered under the CRM-responsible user"
    );
    assert_eq!(reg.num("TYPE"), 2);
    assert_eq!(reg.params["PHONE_NUMBER"], "79991234567");
    assert_eq!(reg.params["LINE_NUMBER"], "8001231231");
    assert_eq!(reg.params["EXTERNAL_CALL_ID"], key_a);
    // The call starts with the trunk channel's Newchannel, on the capture's clock.
    assert_eq!(reg.params["CALL_START_DATE"], isotime::utc(call_start));
    assert_eq!(reg.params["CALL_START_DATE"], date_a);
    // 219 rings, the call is registered under user 7: the card is a show of its own.
    assert_eq!(reg.num("SHOW"), 0);
    assert_eq!(reg.num("CRM_CREATE"), 0);
    assert_eq!(call[2].num("USER_ID"), json!([19]), "card for 219's user");
    assert_eq!(
        call[2].params["CALL_ID"],
        portal.registrations()[0].call_id.as_str()
    );
    let fin = &call[3].params;
    assert_eq!(fin["USER_ID"], 19);
    assert_eq!(fin["STATUS_CODE"], "200");
    assert_eq!(fin["ADD_TO_CHAT"], 1);
    assert_eq!(fin["DURATION"], talk_s, "talk time on the capture's clock");
    // Both finishes (the lost one and its retry) say the same.
    assert_eq!(call[4].params["DURATION"], talk_s);
    // What the HTTP requests got back (the portal ran the first one; its answer was lost).
    let fins = portal.requests_for("telephony.externalcall.finish");
    assert_eq!(fins[0].status, 504, "the lost response");
    assert_eq!(
        fins[1].status, 400,
        "the repeated finish: Call is not found"
    );
    assert_eq!(portal.finished_calls().len(), 1, "finished once");
    assert!(portal.active_calls().is_empty());

    // A second call (no answer) on the same connection: the daemon was not wedged. This one
    // has no `Timestamp:` headers, as with `timestampevents = no`: the daemon's own clock
    // times it, from when its first event arrives.
    // Live, 219 rings for seconds; pushed in one write it would ring for microseconds, and a
    // card whose phone stopped ringing before it could be sent is dropped with its hide (issue
    // #20). So the ring ends only once its card is up: with the portal idle, the
    // card must go out while the phone rings, and every step is then sent.
    let (ringing, rest) = support::captures::split_before(
        &support::capture_tail(&format!("{dir}b_inbound_noanswer.ami")),
        support::captures::RING_ENDS,
    );
    assert!(!rest.is_empty(), "the ring ends in the capture");
    let pushed_ms = wall_clock_ms();
    assert!(ami.push(&ringing));
    assert!(
        portal.wait_for_commands(
            |r| r
                .iter()
                .filter(|x| x.method == "telephony.externalcall.show")
                .count()
                >= 2,
            WAIT
        ),
        "no card while 219 rings; log:\n{}",
        daemon.log()
    );
    assert!(ami.push(&rest));
    assert!(
        finish_requests(&portal, 3),
        "no second finish; log:\n{}",
        daemon.log()
    );
    let finished_ms = wall_clock_ms();
    let cmds = portal.commands();
    let tail: Vec<&Recorded> = cmds
        .iter()
        .skip_while(|r| r.params["EXTERNAL_CALL_ID"] != key_b)
        .collect();
    assert_eq!(
        tail.iter().map(|r| r.method.as_str()).collect::<Vec<_>>(),
        vec![
            "telephony.externalcall.register",
            "telephony.externalcall.show",
            "telephony.externalcall.hide",
            "telephony.externalcall.finish",
        ]
    );
    // Between the push and the finish, by the wall clock. The ISO dates sort as the times
    // do, so this holds across midnight too.
    let start = tail[0].params["CALL_START_DATE"].as_str().unwrap();
    let (earliest, latest) = (isotime::utc(pushed_ms), isotime::utc(finished_ms));
    assert!(
        earliest.as_str() <= start && start <= latest.as_str(),
        "{start} not within {earliest} ..= {latest}"
    );
    let fin = tail[3];
    assert_eq!(
        fin.num("USER_ID"),
        7,
        "missed call goes to the responsible user"
    );
    assert_eq!(fin.params["STATUS_CODE"], "304");
    assert_eq!(fin.num("DURATION"), 0);
    assert!(
        portal.open_cards().is_empty(),
        "cards left: {:?}",
        portal.open_cards()
    );

    assert!(daemon.alive());
    let log = daemon.log();
    assert!(!log.contains(SECRET), "AMI secret in the log");
    assert!(!log.contains("testcode"), "webhook code in the log");
    assert!(log.contains("finish already applied"), "{log}");
}
