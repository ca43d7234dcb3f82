//! `callme run` end to end on PJSIP captures (Asterisk 22, `tests/fixtures/pjsip/`): the real
//! binary, the fake AMI server streaming the captures and the fake Bitrix24 portal, as in
//! `daemon_run.rs` and `click_to_call.rs` with chan_sip. Live, the events arrive within
//! milliseconds, so talk times are not asserted here (the replay tests run on the capture's
//! clock); who gets the register, the cards and the finish, and the statuses, are.
mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::configs;
use support::daemon::Running;
use support::fake_ami::FakeAmi;
use support::fake_bitrix::{FakeBitrix, Recorded};
use support::http;
use support::wait::wait_until;

const WAIT: Duration = Duration::from_secs(20);
const SECRET: &str = "amisecret-pjsip";
const TOKEN: &str = "51610fefc120afg4b628cc82d6298cce";

fn finishes(reqs: &[Recorded]) -> usize {
    reqs.iter()
        .filter(|r| r.method == "telephony.externalcall.finish")
        .count()
}

/// A step as `(method without the telephony.externalcall. prefix, the params that matter)`.
fn step(r: &Recorded) -> (String, Value) {
    let m = r.method.trim_start_matches("telephony.externalcall.");
    let v = match m {
        "searchcrmentities" => r.params["PHONE_NUMBER"].clone(),
        "register" => json!([
            r.num("TYPE"),
            r.params["PHONE_NUMBER"],
            r.num("USER_ID"),
            r.num("SHOW")
        ]),
        "show" | "hide" => r.num("USER_ID"),
        "finish" => json!([r.num("USER_ID"), r.params["STATUS_CODE"]]),
        _ => Value::Null,
    };
    (m.to_string(), v)
}

fn s(m: &str, v: Value) -> (String, Value) {
    (m.to_string(), v)
}

/// Six PJSIP calls one after the other on one AMI connection. Portal users: 219/220/221 are
/// users 19/20/21, `default_user = 201` is user 1, and the caller 79991234567 is a CRM
/// contact of user 7; 79997654321 is unknown to the CRM.
#[test]
fn pjsip_calls_reach_the_portal_as_on_chan_sip() {
    let portal = FakeBitrix::start();
    portal.add_contact("79991234567", 500, 7);
    let ami = FakeAmi::start("callme", SECRET);
    let conf = configs::webhook(ami.port(), SECRET, &portal.webhook_url());
    let mut daemon = Running::start(&conf, &["--debug"]);
    assert!(
        ami.wait_accepted(1, WAIT),
        "no AMI login; log:\n{}",
        daemon.log()
    );
    assert!(
        portal.wait_for(|r| r.iter().any(|x| x.method == "user.get"), WAIT),
        "no user load"
    );

    let calls: Vec<(&str, Vec<(String, Value)>)> = vec![
        (
            "a_inbound_answered",
            vec![
                s("searchcrmentities", json!("79991234567")),
                s("register", json!([2, "79991234567", 7, 0])),
                s("show", json!([19])),
                s("finish", json!([19, "200"])),
            ],
        ),
        (
            "b_inbound_noanswer",
            vec![
                s("searchcrmentities", json!("79991234567")),
                s("register", json!([2, "79991234567", 7, 0])),
                s("show", json!([19])),
                s("hide", json!([19])),
                s("finish", json!([7, "304"])),
            ],
        ),
        (
            "v_inbound_attended_transfer_refer_220_to_221",
            vec![
                s("searchcrmentities", json!("79997654321")),
                s("register", json!([2, "79997654321", 1, 0])),
                s("show", json!([20])),
                s("hide", json!([20])),
                s("show", json!([21])),
                s("finish", json!([21, "200"])),
            ],
        ),
        (
            "w_outbound_desk_220_answered_carrier_hangs_up",
            // Registered under 220's user, the one phone ringing: SHOW=1 puts the card up.
            vec![
                s("register", json!([1, "79997654321", 20, 1])),
                s("finish", json!([20, "200"])),
            ],
        ),
        (
            "x_outbound_desk_221_noanswer",
            vec![
                s("register", json!([1, "79991234567", 21, 1])),
                s("finish", json!([21, "304"])),
            ],
        ),
        (
            "pk_inbound_directed_pickup_221_from_220",
            vec![
                s("searchcrmentities", json!("79991234567")),
                s("register", json!([2, "79991234567", 7, 0])),
                s("show", json!([20])),
                s("hide", json!([20])),
                s("show", json!([21])),
                s("finish", json!([21, "200"])),
            ],
        ),
    ];
    // Commands, not HTTP requests: once the bucket runs short, a show rides in its register's
    // batch.
    let mut seen = portal.commands().len();
    for (n, (capture, want)) in calls.iter().enumerate() {
        // Live, a phone rings for seconds; pushed in one write it would ring for microseconds,
        // and a card whose phone stopped ringing before it could be sent is dropped with its
        // hide (issue #20). So the first ring ends only once the cards decided so
        // far are up: with the portal idle they go out at once, and every step is sent.
        let (ringing, rest) = support::captures::split_before(
            &support::capture_tail(&format!("pjsip/{capture}.ami")),
            support::captures::RING_ENDS,
        );
        // Cards: shows, and registers that put the card up themselves (SHOW=1).
        let card = |(m, v): &(String, Value)| m == "show" || (m == "register" && v[3] == 1);
        let first_shows = want
            .iter()
            .take_while(|(m, _)| m != "hide" && m != "finish")
            .filter(|x| card(x))
            .count();
        let shows = |r: &[Recorded]| r[seen..].iter().map(step).filter(|x| card(x)).count();
        assert!(ami.push(&ringing));
        assert!(
            portal.wait_for_commands(|r| shows(r) >= first_shows, WAIT),
            "{capture}: no card while the phone rings; log:\n{}",
            daemon.log()
        );
        assert!(ami.push(&rest));
        assert!(
            portal.wait_for_commands(|r| finishes(r) > n, WAIT),
            "{capture}: no finish; log:\n{}",
            daemon.log()
        );
        let reqs = portal.commands();
        let got: Vec<(String, Value)> = reqs[seen..]
            .iter()
            .filter(|r| r.method != "user.get")
            .map(step)
            .collect();
        assert_eq!(&got, want, "{capture}");
        seen = reqs.len();
    }
    assert!(
        wait_until(WAIT, || portal.open_cards().is_empty()),
        "cards left: {:?}",
        portal.open_cards()
    );
    assert!(daemon.alive());
}

/// Click-to-call rings the employee's PJSIP endpoint directly, as the f capture's Originate
/// (`PJSIP/219`) did.
fn c2c_config(ami: &FakeAmi, portal: &FakeBitrix) -> String {
    let text = configs::webhook(ami.port(), SECRET, &portal.webhook_url());
    let text = configs::set(&text, "bitrix24", "app_token", TOKEN);
    configs::set(&text, "originate", "channel", "PJSIP/{inner}")
}

/// The PJSIP twin of click_to_call.rs's `answered_click_to_call_shows_the_card_and_finishes_200`:
/// `[originate] channel = PJSIP/{inner}` (what the f capture's Originate used), then the PJSIP
/// f capture's channels carrying our ChannelId.
#[test]
fn answered_pjsip_click_to_call_shows_the_card_and_finishes_200() {
    let portal = FakeBitrix::start();
    let ami = FakeAmi::start("callme", SECRET);
    let daemon = Running::start(&c2c_config(&ami, &portal), &["--debug"]);
    let addr = daemon
        .http_addr(WAIT)
        .unwrap_or_else(|| panic!("no HTTP listening line; log:\n{}", daemon.log()));
    assert!(ami.wait_accepted(1, WAIT), "no AMI login");

    // Bitrix24 registers the call itself before it posts ONEXTERNALCALLSTART.
    let portal_addr = portal
        .webhook_url()
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let r = http::request(
        &portal_addr,
        "POST",
        "/rest/1/testcode/telephony.externalcall.register.json",
        &[("Content-Type", "application/json")],
        json!({"USER_ID": 19, "PHONE_NUMBER": "+79991234567", "TYPE": 1})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let call_id = serde_json::from_str::<Value>(&r.body).unwrap()["result"]["CALL_ID"]
        .as_str()
        .unwrap()
        .to_string();
    let body = http::form(&[
        ("event", "ONEXTERNALCALLSTART"),
        ("data[PHONE_NUMBER]", "+79991234567"),
        ("data[USER_ID]", "19"),
        ("data[LINE_NUMBER]", "7"),
        ("data[CALL_ID]", &call_id),
        ("auth[domain]", "some-domain.bitrix24.com"),
        ("auth[member_id]", "a223c6b9410f85df78e9377d6c4f7213"),
        ("auth[application_token]", TOKEN),
    ]);
    let r = http::request(
        &addr,
        "POST",
        "/bitrix24/event",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let o = ami.wait_action("Originate", WAIT).expect("Originate");
    assert_eq!(o.get("Channel"), Some("PJSIP/219"));
    let channel_id = o.get("ChannelId").unwrap().to_string();

    let capture =
        String::from_utf8(support::capture_tail("pjsip/f_click2call_answered.ami")).unwrap();
    let capture = capture
        .replace("1796235925.28", &channel_id)
        .replace("externalCall.test123", &call_id);
    assert!(ami.push(capture.as_bytes()));
    assert!(
        portal.wait_for(|r| finishes(r) > 0, WAIT),
        "no finish; log:\n{}",
        daemon.log()
    );
    let steps: Vec<(String, Value)> = portal
        .requests()
        .iter()
        .filter(|r| {
            r.method.starts_with("telephony.externalcall.")
                && r.method != "telephony.externalcall.register"
        })
        .map(step)
        .collect();
    assert_eq!(
        steps,
        vec![s("show", json!([19])), s("finish", json!([19, "200"]))],
        "no register of ours: Bitrix24 registered the call"
    );
    assert_eq!(
        portal.requests_for("telephony.externalcall.finish")[0].params["CALL_ID"],
        call_id.as_str()
    );
    assert!(wait_until(WAIT, || portal.open_cards().is_empty()));
}
