//! `callme run` end to end: the real binary against the fake AMI server and the fake Bitrix24
//! portal, both on loopback. Asserts the HTTP requests the portal received.
mod support;

use std::time::Duration;

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

/// Wait until the portal has seen `n` finish requests, whatever it answered.
fn finish_requests(portal: &FakeBitrix, n: usize) -> bool {
    portal.wait_for(
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
    let portal = FakeBitrix::start();
    // The caller is a CRM contact whose responsible employee is user 7 (internal 207).
    portal.add_contact("79991234567", 500, 7);
    // The first finish is applied but its response is lost: the daemon's retry must take the
    // portal's `{"error":""}` "Call is not found" as "already done".
    portal.lose_next_response("telephony.externalcall.finish");
    let ami = FakeAmi::start("callme", SECRET);
    ami.set_stream(support::capture_tail("a_inbound_answered.ami"));

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
    let call: Vec<&Recorded> = reqs.iter().filter(|r| r.method != "user.get").collect();
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
    let reg = &call[1].params;
    assert_eq!(
        reg["USER_ID"], 7,
        "registered under the CRM-responsible user"
    );
    assert_eq!(reg["TYPE"], 2);
    assert_eq!(reg["PHONE_NUMBER"], "79991234567");
    assert_eq!(reg["LINE_NUMBER"], "8001231231");
    assert_eq!(reg["EXTERNAL_CALL_ID"], "callme-1795668285.0");
    // Live, with no `Timestamp:` headers, the call starts when its first event arrives.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let start = reg["CALL_START_DATE"].as_str().unwrap();
    assert_eq!(start.len(), "2026-11-26T04:44:45+00:00".len(), "{start}");
    assert!(start.ends_with("+00:00"), "{start}");
    let today = &callme::isotime::utc(now_ms)[..10];
    assert!(start.starts_with(today), "{start} vs {today}");
    assert_eq!(reg["SHOW"], 0);
    assert_eq!(reg["CRM_CREATE"], 0);
    assert_eq!(
        call[2].params["USER_ID"],
        json!([19]),
        "card for 219's user"
    );
    let fin = &call[3].params;
    assert_eq!(fin["USER_ID"], 19);
    assert_eq!(fin["STATUS_CODE"], "200");
    assert_eq!(fin["ADD_TO_CHAT"], 1);
    // Live timing: the events arrive within milliseconds, so the talk time measured from the
    // arrival clock is 0 s (the capture's own clock gives 5 s; see tracker tests and replay).
    assert!(fin["DURATION"].as_u64().is_some());
    assert_eq!(call[3].status, 504, "the lost response");
    assert_eq!(
        call[4].status, 400,
        "the repeated finish: Call is not found"
    );
    assert_eq!(portal.finished_calls().len(), 1, "finished once");
    assert!(portal.active_calls().is_empty());

    // A second call (no answer) on the same connection: the daemon was not wedged.
    ami.push(&support::capture_tail("b_inbound_noanswer.ami"));
    assert!(
        finish_requests(&portal, 3),
        "no second finish; log:\n{}",
        daemon.log()
    );
    let reqs = portal.requests();
    let tail: Vec<&Recorded> = reqs
        .iter()
        .skip_while(|r| r.params["EXTERNAL_CALL_ID"] != "callme-1795668297.2")
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
    let fin = &tail[3].params;
    assert_eq!(
        fin["USER_ID"], 7,
        "missed call goes to the responsible user"
    );
    assert_eq!(fin["STATUS_CODE"], "304");
    assert_eq!(fin["DURATION"], 0);
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
