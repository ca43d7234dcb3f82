//! Issue #16 point 1, end to end: the real `callme run` against the fake AMI and the fake
//! portal, started while the Bitrix24 user directory (`user.get`) cannot be loaded. A missing
//! directory is a reason to wait, never a reason to give up: no call is dropped, no card is
//! skipped, no call is finished under the wrong user. (The 100-call acceptance test with the
//! portal refusing for 20 s is `tests/faults.rs`.)
mod support;

use std::time::Duration;

use serde_json::json;
use support::daemon::Running;
use support::fake_ami::FakeAmi;
use support::fake_bitrix::{FakeBitrix, Recorded};

const SECRET: &str = "amisecret-directory";

fn config(ami: &FakeAmi, portal: &FakeBitrix) -> String {
    support::configs::webhook(ami.port(), SECRET, &portal.webhook_url())
}

fn ok_commands(portal: &FakeBitrix, method: &str) -> Vec<Recorded> {
    portal
        .commands()
        .into_iter()
        .filter(|r| r.method == method && r.status == 200)
        .collect()
}

/// The first call begins right after the AMI login, while the directory cannot load yet (its
/// first two `user.get` answers are lost; it loads about 3 s after the start). The caller is
/// a CRM contact of user 7, so the call can be registered at once; the card for 219 and the
/// finish under 219's user need the directory and wait for it. Before #16 the card was
/// skipped without a word (`219 is not a Bitrix24 user`, at debug level) and the call was
/// finished under user 7.
#[test]
fn the_first_call_after_a_start_waits_for_the_directory_and_loses_nothing() {
    let portal = FakeBitrix::start();
    portal.add_contact("79991234567", 500, 7);
    portal.lose_next_response("user.get");
    portal.lose_next_response("user.get");
    let ami = FakeAmi::start("callme", SECRET);
    ami.set_stream(support::captures::timestamped_tail(
        "a_inbound_answered.ami",
    ));
    let daemon = Running::start(&config(&ami, &portal), &["--debug"]);

    assert!(
        portal.wait_for_commands(
            |c| c
                .iter()
                .any(|r| r.method == "telephony.externalcall.finish" && r.status == 200),
            Duration::from_secs(30)
        ),
        "never finished; log:\n{}",
        daemon.log()
    );
    let log = daemon.log();

    let reg = ok_commands(&portal, "telephony.externalcall.register");
    assert_eq!(reg.len(), 1, "registered once");
    assert_eq!(reg[0].params["USER_ID"], 7, "under the CRM owner");
    let show = ok_commands(&portal, "telephony.externalcall.show");
    assert_eq!(
        show.len(),
        1,
        "the card was shown, not skipped; log:\n{log}"
    );
    assert_eq!(show[0].params["USER_ID"], json!([19]), "to 219's user");
    let fin = ok_commands(&portal, "telephony.externalcall.finish");
    assert_eq!(fin.len(), 1, "finished once");
    assert_eq!(fin[0].params["USER_ID"], 19, "under 219, who talked");
    assert_eq!(fin[0].params["STATUS_CODE"], "200");
    assert!(portal.active_calls().is_empty());
    assert!(portal.open_cards().is_empty(), "{:?}", portal.open_cards());
    assert!(
        !log.contains("failed permanently"),
        "nothing given up; log:\n{log}"
    );
    let user_gets = portal
        .requests()
        .iter()
        .filter(|r| r.method == "user.get")
        .count();
    assert!(user_gets >= 3, "two lost loads and a good one: {user_gets}");
    assert!(
        log.contains("waits for the Bitrix24 user directory"),
        "the call never waited, so the directory loaded first and this tested nothing; \
         log:\n{log}"
    );
}
