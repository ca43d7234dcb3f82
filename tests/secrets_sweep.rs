//! The secrets sweep (issue #13 point 6): `callme run --debug`, the most talkative it gets,
//! through a whole inbound call, a click-to-call, an install, token refreshes (one refused)
//! and a reinstall, against the fake AMI, the fake portal and the fake OAuth server. Then no
//! secret may appear in any log line, in `/status` or in `/metrics`: not the AMI secret, the
//! webhook code, the webhook `app_token`, the app's `client_secret`, its application token, or
//! any access or refresh token the portal issued.
//!
//! Webhook mode and app mode have different secrets, so each runs once. Every secret is a
//! long value unlike any other text, and besides the whole value its first and last 16
//! characters are looked for too, so a value cut short by a log line's truncation is caught.
mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::configs;
use support::daemon::Running;
use support::fake_ami::FakeAmi;
use support::fake_bitrix::{FakeBitrix, WEBHOOK_CODE};
use support::fake_oauth::{FakeOAuth, CLIENT_SECRET};
use support::http::{self, form};
use support::wait::{wait_for, wait_until};

const WAIT: Duration = Duration::from_secs(20);
const AMI_SECRET: &str = "ami-secret-3f9c1d7e5b20a4c8";
const APP_TOKEN: &str = "webhook-app-token-8e2d4c6a1f9b";
const APPLICATION_TOKEN: &str = "application-token-b71e0c9a53d2";
const MEMBER: &str = "c0ffee0123456789abcdef0123456789";
const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");

/// What is looked for: each secret whole, and its first and last 16 characters.
fn needles(secrets: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for s in secrets {
        out.push(s.clone());
        if s.len() > 20 {
            out.push(s[..16].to_string());
            out.push(s[s.len() - 16..].to_string());
        }
    }
    out
}

fn assert_clean(what: &str, text: &str, secrets: &[String]) {
    for needle in needles(secrets) {
        if let Some(line) = text.lines().find(|l| l.contains(&needle)) {
            panic!("{needle:?} in {what}: {line}");
        }
    }
}

/// `/status` and `/metrics` from the ops listener, checked for secrets; `/status` parsed.
fn ops_pages(daemon: &Running, secrets: &[String]) -> Value {
    let ops = daemon.ops_addr(WAIT).expect("ops listener");
    let status = http::request(&ops, "GET", "/status", &[], b"");
    assert_eq!(status.status, 200);
    assert_clean("/status", &status.body, secrets);
    let metrics = http::request(&ops, "GET", "/metrics", &[], b"");
    assert_eq!(metrics.status, 200);
    assert_clean("/metrics", &metrics.body, secrets);
    serde_json::from_str(&status.body).expect("/status is JSON")
}

fn finishes(portal: &FakeBitrix) -> usize {
    portal
        .commands()
        .iter()
        .filter(|r| r.method == "telephony.externalcall.finish" && r.status == 200)
        .count()
}

/// ONEXTERNALCALLSTART for `call_id` by user 19, signed with `token` and `member`.
fn click_event(call_id: &str, token: &str, member: &str) -> String {
    form(&[
        ("event", "ONEXTERNALCALLSTART"),
        ("data[PHONE_NUMBER]", "+79991234567"),
        ("data[USER_ID]", "19"),
        ("data[LINE_NUMBER]", "7"),
        ("data[CALL_ID]", call_id),
        ("auth[domain]", "portal.example"),
        ("auth[member_id]", member),
        ("auth[application_token]", token),
    ])
}

/// The click-to-call after Bitrix24 registered `call_id`: the event, the Originate, then the
/// answered click-to-call capture on that Originate's channel, until the call is finished.
/// `/status` is read while the call is up.
fn click_to_call(
    daemon: &Running,
    ami: &FakeAmi,
    portal: &FakeBitrix,
    event: &str,
    call_id: &str,
    secrets: &[String],
) {
    let addr = daemon.http_addr(WAIT).expect("HTTP listener");
    let before = finishes(portal);
    let r = http::request(&addr, "POST", "/bitrix24/event", &[FORM], event.as_bytes());
    assert_eq!(r.status, 200, "{}\n{}", r.body, daemon.log());
    let o = ami.wait_action("Originate", WAIT).expect("Originate");
    let channel_id = o.get("ChannelId").unwrap().to_string();
    let capture = String::from_utf8(support::capture_tail("f_click2call_answered.ami")).unwrap();
    let capture = capture
        .replace("1795668405.23", &channel_id)
        .replace("externalCall.test123", call_id);
    assert!(ami.push(capture.as_bytes()));
    ops_pages(daemon, secrets);
    assert!(
        wait_until(WAIT, || finishes(portal) > before),
        "click-to-call not finished:\n{}",
        daemon.log()
    );
}

/// A whole inbound call from `capture` (each call of a test needs its own capture: the
/// same one twice is the same call to the tracker).
fn inbound_call(
    daemon: &Running,
    ami: &FakeAmi,
    portal: &FakeBitrix,
    capture: &str,
    secrets: &[String],
) {
    let before = finishes(portal);
    assert!(ami.push(&support::capture_tail(capture)));
    // While it is up, /status lists it (and must still show no secret).
    let _ = wait_for(WAIT, || {
        let s = ops_pages(daemon, secrets);
        (!s["active_calls"].as_array()?.is_empty()).then_some(())
    });
    assert!(
        wait_until(WAIT, || finishes(portal) > before),
        "inbound call not finished:\n{}",
        daemon.log()
    );
}

#[test]
fn webhook_mode_logs_no_secret() {
    let portal = FakeBitrix::start();
    let ami = FakeAmi::start("callme", AMI_SECRET);
    let text = configs::webhook(ami.port(), AMI_SECRET, &portal.webhook_url());
    let text = configs::set(&text, "bitrix24", "app_token", APP_TOKEN);
    let daemon = Running::start(&text, &["--debug"]);
    let secrets: Vec<String> = [AMI_SECRET, APP_TOKEN, WEBHOOK_CODE]
        .map(String::from)
        .to_vec();
    let addr = daemon.http_addr(WAIT).expect("HTTP listener");
    assert!(ami.wait_accepted(1, WAIT), "AMI login");
    assert!(wait_until(WAIT, || ops_pages(&daemon, &secrets)["users"]
        ["count"]
        .as_u64()
        .is_some_and(|n| n > 0)));

    inbound_call(&daemon, &ami, &portal, "a_inbound_answered.ami", &secrets);

    // Bitrix24 registers the click-to-call itself, then posts the event.
    let portal_addr = portal.webhook_url()[7..]
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let r = http::request(
        &portal_addr,
        "POST",
        &format!("/rest/1/{WEBHOOK_CODE}/telephony.externalcall.register.json"),
        &[("Content-Type", "application/json")],
        json!({"USER_ID": 19, "PHONE_NUMBER": "+79991234567", "TYPE": 1})
            .to_string()
            .as_bytes(),
    );
    let call_id = serde_json::from_str::<Value>(&r.body).unwrap()["result"]["CALL_ID"]
        .as_str()
        .unwrap()
        .to_string();
    let event = click_event(&call_id, APP_TOKEN, MEMBER);
    click_to_call(&daemon, &ami, &portal, &event, &call_id, &secrets);

    // Refusals are logged too: a forged event and a failing portal.
    let forged = click_event("externalCall.forged.1", "not-the-app-token-000000", MEMBER);
    let r = http::request(&addr, "POST", "/bitrix24/event", &[FORM], forged.as_bytes());
    assert_eq!(r.status, 403);
    portal.fail_next(
        2,
        500,
        r#"{"error":"ERROR_CORE","error_description":"internal"}"#,
    );
    inbound_call(
        &daemon,
        &ami,
        &portal,
        "pjsip/a_inbound_answered.ami",
        &secrets,
    );

    ops_pages(&daemon, &secrets);
    let log = daemon.log();
    assert!(log.contains("DEBUG"), "not a debug log:\n{log}");
    assert!(
        log.contains("bitrix24 -> POST"),
        "requests not logged:\n{log}"
    );
    assert_clean("the log", &log, &secrets);
}

#[test]
fn app_mode_logs_no_secret() {
    let portal = FakeBitrix::start();
    let first = portal.enable_app(1000);
    let oauth = FakeOAuth::start(portal.refresher(), portal.client_endpoint());
    let ami = FakeAmi::start("callme", AMI_SECRET);
    let bitrix24 = configs::app_bitrix24(&portal.host(), &oauth.url());
    let text = configs::daemon(ami.port(), AMI_SECRET, &bitrix24);
    let text = configs::set(
        &text,
        "http",
        "public_url",
        "https://pbx.example.com/callme/",
    );
    let daemon = Running::start(&text, &["--debug"]);
    let addr = daemon.http_addr(WAIT).expect("HTTP listener");
    assert!(ami.wait_accepted(1, WAIT), "AMI login");
    // Every token the portal ever issues is a secret; the list is read again at the end.
    let secrets = |portal: &FakeBitrix| -> Vec<String> {
        let mut s: Vec<String> = [AMI_SECRET, CLIENT_SECRET, APPLICATION_TOKEN]
            .map(String::from)
            .to_vec();
        for (a, r) in portal.issued_tokens() {
            s.extend([a, r]);
        }
        s
    };

    // The install.
    let install = |(access, refresh): &(String, String)| {
        form(&[
            ("event", "ONAPPINSTALL"),
            ("data[VERSION]", "1"),
            ("auth[access_token]", access),
            ("auth[refresh_token]", refresh),
            ("auth[expires_in]", "3600"),
            ("auth[client_endpoint]", &portal.client_endpoint()),
            ("auth[member_id]", MEMBER),
            ("auth[domain]", &portal.host()),
            ("auth[application_token]", APPLICATION_TOKEN),
        ])
    };
    let r = http::request(
        &addr,
        "POST",
        "/bitrix24/install",
        &[FORM],
        install(&first).as_bytes(),
    );
    assert_eq!(r.status, 200, "{}\n{}", r.body, daemon.log());
    assert!(wait_until(WAIT, || ops_pages(&daemon, &secrets(&portal))
        ["users"]["count"]
        .as_u64()
        .is_some_and(|n| n > 0)));

    inbound_call(
        &daemon,
        &ami,
        &portal,
        "a_inbound_answered.ami",
        &secrets(&portal),
    );

    // Bitrix24 registers the click-to-call with a token of its own, then posts the event.
    let (bitrix_token, _) = portal.issue_tokens();
    let r = http::request(
        &portal.host(),
        "POST",
        "/rest/telephony.externalcall.register.json",
        &[("Content-Type", "application/json")],
        json!({"USER_ID": 19, "PHONE_NUMBER": "+79991234567", "TYPE": 1, "auth": bitrix_token})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let call_id = serde_json::from_str::<Value>(&r.body).unwrap()["result"]["CALL_ID"]
        .as_str()
        .unwrap()
        .to_string();
    let event = click_event(&call_id, APPLICATION_TOKEN, MEMBER);
    click_to_call(&daemon, &ami, &portal, &event, &call_id, &secrets(&portal));

    // A refresh: the tokens die, the next request (the user directory, every second)
    // refreshes and goes on with the new pair.
    portal.expire_all();
    assert!(
        wait_until(WAIT, || oauth.refreshes() >= 1),
        "no refresh:\n{}",
        daemon.log()
    );
    assert!(wait_until(WAIT, || portal
        .token_log()
        .last()
        .is_some_and(|(_, st)| *st == 200)));
    inbound_call(
        &daemon,
        &ami,
        &portal,
        "pjsip/a_inbound_answered.ami",
        &secrets(&portal),
    );

    // A refused refresh (the app was removed), then a reinstall with a new pair.
    oauth.set_refuse(true);
    portal.expire_all();
    assert!(
        wait_until(WAIT, || daemon.log().contains("refused to refresh")),
        "{}",
        daemon.log()
    );
    let again = portal.issue_tokens();
    let r = http::request(
        &addr,
        "POST",
        "/bitrix24/install",
        &[FORM],
        install(&again).as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // A forged install: the token is unknown to the portal.
    let forged = install(&(
        "access-forged-7d1e5f3b9a2c4e60".into(),
        "refresh-forged-91b4c0e8d6f2a357".into(),
    ));
    let r = http::request(
        &addr,
        "POST",
        "/bitrix24/install",
        &[FORM],
        forged.as_bytes(),
    );
    assert_eq!(r.status, 403);
    inbound_call(
        &daemon,
        &ami,
        &portal,
        "b_inbound_noanswer.ami",
        &secrets(&portal),
    );

    let mut all = secrets(&portal);
    all.extend([
        "access-forged-7d1e5f3b9a2c4e60".into(),
        "refresh-forged-91b4c0e8d6f2a357".into(),
    ]);
    ops_pages(&daemon, &all);
    let log = daemon.log();
    assert!(log.contains("DEBUG"), "not a debug log:\n{log}");
    assert!(log.contains("access token refreshed"), "{log}");
    assert!(log.contains("tokens renewed by a new install"), "{log}");
    assert_clean("the log", &log, &all);
}
