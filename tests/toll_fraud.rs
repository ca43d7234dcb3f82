//! Toll-fraud guard end to end (issue #13 point 2): the real binary, the fake AMI and the fake
//! Bitrix24 portal. A click-to-call to a denied number, one past the rate limit, a callback
//! form to a premium number and `callme originate` to one: no Originate reaches AMI, Bitrix24
//! gets the call finished with the documented status, and `/metrics` counts the refusal.
mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use support::configs;
use support::daemon::{Running, TempDir};
use support::fake_ami::FakeAmi;
use support::fake_bitrix::FakeBitrix;
use support::http;
use support::wait::wait_until;

const WAIT: Duration = Duration::from_secs(20);
const SECRET: &str = "amisecret-toll";
const TOKEN: &str = "51610fefc120afg4b628cc82d6298cce";
const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");

/// The shared webhook-mode config with an app token and extra `[originate]` keys.
fn config(ami: &FakeAmi, portal: &FakeBitrix, originate: &[(&str, &str)]) -> String {
    let base = configs::webhook(ami.port(), SECRET, &portal.webhook_url());
    let mut text = configs::set(&base, "bitrix24", "app_token", TOKEN);
    for (k, v) in originate {
        text = configs::set(&text, "originate", k, v);
    }
    text
}

fn start(ami: &FakeAmi, portal: &FakeBitrix, originate: &[(&str, &str)]) -> (Running, String) {
    let daemon = Running::start(&config(ami, portal, originate), &[]);
    let addr = daemon
        .http_addr(WAIT)
        .unwrap_or_else(|| panic!("no HTTP listening line; log:\n{}", daemon.log()));
    assert!(ami.wait_accepted(1, WAIT), "no AMI login");
    // A refused click-to-call is finished under the employee only if the user directory
    // knows them (a refusal does no Bitrix24 look-up of its own).
    assert!(
        wait_until(WAIT, || daemon
            .log()
            .contains("Bitrix24 employees with internal numbers")),
        "no user directory; log:\n{}",
        daemon.log()
    );
    (daemon, addr)
}

fn portal_addr(portal: &FakeBitrix) -> String {
    format!("127.0.0.1:{}", portal.port())
}

/// Register an outgoing call at the fake portal, as Bitrix24 does before ONEXTERNALCALLSTART.
fn register(portal: &FakeBitrix, user: u64, phone: &str) -> String {
    let body = json!({"USER_ID": user, "PHONE_NUMBER": phone, "TYPE": 1}).to_string();
    let r = http::request(
        &portal_addr(portal),
        "POST",
        "/rest/1/testcode/telephony.externalcall.register.json",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    v["result"]["CALL_ID"].as_str().unwrap().to_string()
}

fn click(addr: &str, call_id: &str, user: u64, phone: &str) -> http::Reply {
    let user = user.to_string();
    let body = http::form(&[
        ("event", "ONEXTERNALCALLSTART"),
        ("data[PHONE_NUMBER]", phone),
        ("data[USER_ID]", &user),
        ("data[CALL_ID]", call_id),
        ("data[LINE_NUMBER]", "7"),
        ("auth[domain]", "some-domain.bitrix24.com"),
        ("auth[application_token]", TOKEN),
    ]);
    http::request(addr, "POST", "/bitrix24/event", &[FORM], body.as_bytes())
}

/// Wait for the finish of `call_id` (sent alone or inside a `batch`) and return its params.
fn finish_of(portal: &FakeBitrix, daemon: &Running, call_id: &str) -> Value {
    let is_it = |r: &support::fake_bitrix::Recorded| {
        r.method == "telephony.externalcall.finish" && r.params["CALL_ID"] == call_id
    };
    let done = portal.wait_for_commands(|c| c.iter().any(is_it), WAIT);
    assert!(done, "no finish of {call_id}; log:\n{}", daemon.log());
    portal
        .commands()
        .into_iter()
        .find(is_it)
        .map(|r| r.params)
        .unwrap()
}

/// A finish parameter as text: sent alone it is JSON (`19`), inside a `batch` it is
/// form-encoded (`"19"`); Bitrix24 casts both the same way.
fn param(params: &Value, key: &str) -> String {
    match &params[key] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `callme_originate_refused_total{reason}` from `/metrics` on the ops listener.
fn metric(daemon: &Running, reason: &str) -> u64 {
    let ops = daemon.ops_addr(WAIT).expect("ops listener");
    let r = http::request(&ops, "GET", "/metrics", &[], b"");
    assert_eq!(r.status, 200);
    let name = format!("callme_originate_refused_total{{reason=\"{reason}\"}} ");
    r.body
        .lines()
        .find_map(|l| l.strip_prefix(name.as_str()))
        .unwrap_or_else(|| panic!("{name} missing:\n{}", r.body))
        .parse()
        .unwrap()
}

/// Every action so far has been read by the fake AMI: a Ping round trip after them.
fn settle(ami: &FakeAmi) {
    let pings = ami.actions_named("Ping").len();
    assert!(wait_until(WAIT, || ami.actions_named("Ping").len() > pings + 1));
}

#[test]
fn denied_and_not_allowed_numbers_are_finished_403_and_never_dialled() {
    let portal = FakeBitrix::start();
    let ami = FakeAmi::start("callme", SECRET);
    let (daemon, addr) = start(&ami, &portal, &[]);

    // RU premium range 809: inside the national format, so only the deny list stops it.
    let premium = register(&portal, 19, "+78091234567");
    let r = click(&addr, &premium, 19, "+78091234567");
    assert_eq!(r.status, 403, "{}", r.body);
    let fin = finish_of(&portal, &daemon, &premium);
    assert_eq!(param(&fin, "STATUS_CODE"), "403", "{fin}");
    assert_eq!(
        param(&fin, "USER_ID"),
        "19",
        "finished under the clicking employee"
    );
    assert_eq!(param(&fin, "DURATION"), "0", "{fin}");

    // International through 8-10 and a foreign number in + form.
    let intl = register(&portal, 19, "81049301234567");
    assert_eq!(click(&addr, &intl, 19, "81049301234567").status, 403);
    assert_eq!(finish_of(&portal, &daemon, &intl)["STATUS_CODE"], "403");
    let foreign = register(&portal, 19, "+493012345678");
    assert_eq!(click(&addr, &foreign, 19, "+493012345678").status, 403);
    assert_eq!(finish_of(&portal, &daemon, &foreign)["STATUS_CODE"], "403");

    // The same refused event again is a duplicate: not finished twice.
    assert_eq!(click(&addr, &premium, 19, "+78091234567").status, 200);

    // An ordinary national number still goes through.
    let ok = register(&portal, 19, "+79991234567");
    assert_eq!(click(&addr, &ok, 19, "+79991234567").status, 200);
    let o = ami.wait_action("Originate", WAIT).expect("Originate");
    assert_eq!(o.get("Exten"), Some("89991234567"));

    settle(&ami);
    assert_eq!(
        ami.actions_named("Originate").len(),
        1,
        "only the allowed one"
    );
    assert_eq!(metric(&daemon, "deny"), 2);
    assert_eq!(metric(&daemon, "not_allowed"), 1);
    assert_eq!(metric(&daemon, "rate"), 0);
    let premium_finishes = portal
        .commands()
        .iter()
        .filter(|r| r.method == "telephony.externalcall.finish")
        .filter(|r| r.params["CALL_ID"] == premium.as_str())
        .count();
    assert_eq!(premium_finishes, 1);
    assert!(wait_until(WAIT, || portal.active_calls().len() == 1));
    let log = daemon.log();
    assert!(
        log.contains("88091234567 for Bitrix24 user 19 not dialled: the number matches [originate] deny pattern _8809!"),
        "{log}"
    );
    assert!(
        log.contains("matches no [originate] allow pattern"),
        "{log}"
    );
    assert!(!log.contains(TOKEN) && !log.contains(SECRET) && !log.contains("testcode"));
}

#[test]
fn rate_limits_per_employee_and_overall_finish_423() {
    let portal = FakeBitrix::start();
    let ami = FakeAmi::start("callme", SECRET);
    let (daemon, addr) = start(
        &ami,
        &portal,
        &[("max_per_user_per_minute", "2"), ("max_per_minute", "3")],
    );
    let mut dialled = 0;
    let mut refused = Vec::new();
    // User 19 (phone 219): two go through, the third is over the per-employee limit.
    // User 20 (phone 220): one goes through (3 overall), the next is over the overall limit.
    let attempts = [(19, true), (19, true), (19, false), (20, true), (20, false)];
    for (i, (user, expect_ok)) in attempts.into_iter().enumerate() {
        // A different number each time: the fake portal, like Bitrix24, gives the same
        // CALL_ID to the same registration within a second.
        let phone = format!("+7999123456{i}");
        let id = register(&portal, user, &phone);
        let r = click(&addr, &id, user, &phone);
        if expect_ok {
            assert_eq!(r.status, 200, "{}", r.body);
            dialled += 1;
            assert!(
                wait_until(WAIT, || ami.actions_named("Originate").len() == dialled),
                "user {user}: no Originate; log:\n{}",
                daemon.log()
            );
        } else {
            assert_eq!(r.status, 429, "{}", r.body);
            refused.push((user, id));
        }
    }
    for (user, id) in &refused {
        let fin = finish_of(&portal, &daemon, id);
        assert_eq!(param(&fin, "STATUS_CODE"), "423", "{fin}");
        assert_eq!(param(&fin, "USER_ID"), user.to_string(), "{fin}");
    }
    settle(&ami);
    assert_eq!(ami.actions_named("Originate").len(), 3);
    assert_eq!(metric(&daemon, "rate"), 2);
    let log = daemon.log();
    assert!(log.contains("max_per_user_per_minute"), "{log}");
    assert!(log.contains("max_per_minute)"), "{log}");
}

#[test]
fn callback_form_to_a_denied_number_is_not_dialled() {
    let portal = FakeBitrix::start();
    let ami = FakeAmi::start("callme", SECRET);
    let (daemon, addr) = start(&ami, &portal, &[("callback_targets", "7:219")]);
    let body = http::form(&[
        ("event", "ONEXTERNALCALLBACKSTART"),
        ("data[PHONE_NUMBER]", "+78091234567"),
        ("data[LINE_NUMBER]", "7"),
        ("auth[domain]", "some-domain.bitrix24.com"),
        ("auth[application_token]", TOKEN),
    ]);
    let r = http::request(&addr, "POST", "/bitrix24/event", &[FORM], body.as_bytes());
    assert_eq!(r.status, 403, "{}", r.body);
    settle(&ami);
    assert!(ami.actions_named("Originate").is_empty());
    assert_eq!(metric(&daemon, "deny"), 1);
    // Nothing was registered for a callback, so nothing is finished either.
    assert!(!portal
        .requests()
        .iter()
        .any(|r| r.method.starts_with("telephony.")));
    assert!(daemon.log().contains("ONEXTERNALCALLBACKSTART"));
}

#[test]
fn originate_subcommand_refuses_denied_numbers() {
    let portal = FakeBitrix::start();
    let ami = FakeAmi::start("callme", SECRET);
    let dir = TempDir::new("callme-toll-cli");
    let conf = dir.path().join("callme.conf");
    std::fs::write(&conf, config(&ami, &portal, &[]).replace("{state}", "/tmp")).unwrap();
    let run = |to: &str| {
        Command::new(env!("CARGO_BIN_EXE_callme"))
            .args(["originate", "-c"])
            .arg(&conf)
            .args(["--from", "219", "--to", to])
            .env_remove("RUST_LOG")
            .output()
            .expect("run callme originate")
    };
    for (to, why) in [
        ("+78091234567", "deny pattern _8809!"),
        ("0049301234567", "deny pattern _00."),
        ("+493012345678", "matches no [originate] allow pattern"),
    ] {
        let out = run(to);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{to}: {stderr}");
        assert!(stderr.contains(why), "{to}: {stderr}");
    }
    // Refused before connecting: AMI never saw a login, let alone an Originate.
    assert_eq!(ami.logins(), 0);
    assert!(ami.actions_named("Originate").is_empty());
    // An allowed number goes out.
    let out = run("+79991234567");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        ami.actions_named("Originate").pop().unwrap().get("Exten"),
        Some("89991234567")
    );
}
