//! Click-to-call end to end: the real binary, the fake AMI and the fake Bitrix24 portal.
//! Bitrix24 registers the call itself and then posts ONEXTERNALCALLSTART to us
//! (bitrix24-api.md §5.1), so each test registers the call at the fake portal first and
//! posts the CALL_ID it got back.
mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::json;
use support::clicks::{event_body, register};
use support::configs;
use support::daemon::{Running, TempDir};
use support::fake_ami::{wait_until, FakeAmi};
use support::fake_bitrix::FakeBitrix;
use support::http::{self, Reply};

const WAIT: Duration = Duration::from_secs(20);
const SECRET: &str = "amisecret-c2c";
const TOKEN: &str = "51610fefc120afg4b628cc82d6298cce";
const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");

fn config(ami: &FakeAmi, portal: &FakeBitrix, listen: &str) -> String {
    let text = configs::webhook(ami.port(), SECRET, &portal.webhook_url());
    let text = configs::set(&text, "bitrix24", "app_token", TOKEN);
    let text = configs::set(&text, "http", "listen", listen);
    configs::set(&text, "http", "threads", "2")
}

/// Start the daemon and wait until it serves HTTP and is logged in to AMI.
fn start(ami: &FakeAmi, portal: &FakeBitrix) -> (Running, String) {
    let daemon = Running::start(&config(ami, portal, "127.0.0.1:0"), &["--debug"]);
    let addr = daemon
        .http_addr(WAIT)
        .unwrap_or_else(|| panic!("no HTTP listening line; log:\n{}", daemon.log()));
    assert!(ami.wait_accepted(1, WAIT), "no AMI login");
    (daemon, addr)
}

/// What Bitrix24 does when user `user_id` clicks a number: register the call, then post
/// ONEXTERNALCALLSTART to the daemon at `addr` (answered 200). Returns the CALL_ID.
fn click(portal: &FakeBitrix, addr: &str, user_id: &str) -> String {
    let call_id = register(portal, "+79991234567");
    let r = post(
        addr,
        &event_body(&call_id, user_id, "+79991234567", None, TOKEN),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    call_id
}

/// Wait until the portal has seen a finish for `call_id`, whatever it answered.
fn finished(portal: &FakeBitrix, call_id: &str) -> bool {
    portal.wait_for(
        |reqs| {
            reqs.iter().any(|r| {
                r.method == "telephony.externalcall.finish" && r.params["CALL_ID"] == call_id
            })
        },
        WAIT,
    )
}

fn post(addr: &str, body: &str) -> Reply {
    http::request(
        addr,
        "POST",
        "/bitrix24/event",
        &[FORM, ("User-Agent", "Bitrix24 Webhook Engine")],
        body.as_bytes(),
    )
}

#[test]
fn click_to_call_dials_once_and_refuses_bad_requests() {
    let portal = FakeBitrix::start();
    let ami = FakeAmi::start("callme", SECRET);
    let (daemon, addr) = start(&ami, &portal);
    let call_id = register(&portal, "+79991234567");

    let body = event_body(
        &call_id,
        "19",
        "+7 999 123-45-67",
        Some("+79991234567"),
        TOKEN,
    );
    let r = post(&addr, &body);
    assert_eq!(r.status, 200, "{}; log:\n{}", r.body, daemon.log());
    let o = ami
        .wait_action("Originate", WAIT)
        .unwrap_or_else(|| panic!("no Originate; log:\n{}", daemon.log()));
    assert_eq!(o.get("Channel"), Some("Local/219@from-internal"));
    assert_eq!(o.get("Context"), Some("from-internal"));
    assert_eq!(
        o.get("Exten"),
        Some("89991234567"),
        "dialled in national form"
    );
    assert_eq!(o.get("Priority"), Some("1"));
    assert_eq!(o.get("Timeout"), Some("30000"));
    assert_eq!(o.get("CallerID"), Some("89991234567"));
    assert_eq!(o.get("Async"), Some("true"));
    let channel_id = o.get("ChannelId").unwrap();
    assert!(
        channel_id.starts_with("c2c-") && channel_id.len() <= 149,
        "{channel_id}"
    );
    assert!(o.get("ActionID").is_some_and(|a| !a.is_empty()));
    assert_eq!(
        o.get_all("Variable").collect::<Vec<_>>(),
        [
            format!("CallMeCALL_ID={call_id}").as_str(),
            "IS_CALLME_ORIGINATE=1"
        ]
    );

    // Bitrix24 delivering the same event again: answered, not dialled again. The decision
    // is made before the answer, so after the 200 nothing more can come.
    let r = post(&addr, &body);
    assert_eq!(r.status, 200);

    let forged = event_body(
        "externalCall.x.2",
        "19",
        "+79991234567",
        None,
        "not-the-token",
    );
    assert_eq!(post(&addr, &forged).status, 403);

    let big = format!("{body}&pad={}", "a".repeat(100 * 1024));
    assert_eq!(post(&addr, &big).status, 413);

    let injected = event_body(
        "externalCall.x.3",
        "19",
        "79991234567\r\nAction: Command\r\nCommand: core stop now",
        None,
        TOKEN,
    );
    let r = post(&addr, &injected);
    assert_eq!(r.status, 400, "{}", r.body);

    let r = http::request(&addr, "GET", "/bitrix24/event", &[], b"");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("Allow"), Some("POST"));
    assert_eq!(http::request(&addr, "GET", "/nope", &[], b"").status, 404);

    // An event we do not handle is acknowledged and ignored.
    let other = body.replace("ONEXTERNALCALLSTART", "ONAPPUNINSTALL");
    assert_eq!(post(&addr, &other).status, 200);

    // Let any stray work finish: a Ping round trip after everything above.
    let pings = ami.actions_named("Ping").len();
    assert!(wait_until(WAIT, || ami.actions_named("Ping").len() > pings + 1));
    assert_eq!(
        ami.actions_named("Originate").len(),
        1,
        "exactly one Originate"
    );
    assert!(ami.actions_named("Command").is_empty());
    let log = daemon.log();
    assert!(log.contains("duplicate"), "{log}");
    assert!(!log.contains(TOKEN), "app_token in the log");
    assert!(!log.contains(SECRET), "AMI secret in the log");
    assert!(!log.contains("testcode"), "webhook code in the log");
}

#[test]
fn refused_originate_finishes_the_call() {
    let portal = FakeBitrix::start();
    let ami = FakeAmi::start("callme", SECRET);
    ami.set_originate_response(false);
    let (daemon, addr) = start(&ami, &portal);
    let call_id = register(&portal, "+79991234567");
    assert!(!portal.open_cards().is_empty(), "register shows the card");

    let r = post(
        &addr,
        &event_body(&call_id, "19", "+79991234567", None, TOKEN),
    );
    assert_eq!(r.status, 200);
    assert!(
        finished(&portal, &call_id),
        "no finish; log:\n{}",
        daemon.log()
    );
    let fin = portal.requests_for("telephony.externalcall.finish");
    let fin = &fin.last().unwrap().params;
    assert_ne!(fin["STATUS_CODE"], "200", "{fin}");
    assert_eq!(fin["USER_ID"], 19, "finished under the clicking employee");
    assert!(
        wait_until(WAIT, || portal.open_cards().is_empty()),
        "cards left: {:?}",
        portal.open_cards()
    );
    assert!(portal.active_calls().is_empty());
    assert!(
        daemon.log().contains("Originate failed"),
        "{}",
        daemon.log()
    );
}

#[test]
fn user_without_internal_number_still_finishes_the_call() {
    let portal = FakeBitrix::start();
    let ami = FakeAmi::start("callme", SECRET);
    let (daemon, addr) = start(&ami, &portal);
    // User 7 has UF_PHONE_INNER = null in the fake portal.
    let call_id = click(&portal, &addr, "7");
    assert!(
        finished(&portal, &call_id),
        "no finish; log:\n{}",
        daemon.log()
    );
    assert!(ami.actions_named("Originate").is_empty());
    let log = daemon.log();
    assert!(
        log.contains("user 7 has no internal number (UF_PHONE_INNER)"),
        "{log}"
    );
}

#[test]
fn a_taken_listen_address_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let portal = FakeBitrix::start();
    let ami = FakeAmi::start("callme", SECRET);
    let mut daemon = Running::start(&config(&ami, &portal, &listen), &[]);
    let status = daemon.wait_exit(WAIT).expect("daemon exits");
    assert!(!status.success());
    assert!(
        daemon
            .log()
            .contains(&format!("cannot listen on {listen} for HTTP")),
        "{}",
        daemon.log()
    );
}

/// `callme originate`: the same Originate, no Bitrix24, exit status from OriginateResponse.
#[test]
fn originate_subcommand() {
    let portal = FakeBitrix::start();
    let ami = FakeAmi::start("callme", SECRET);
    let dir = TempDir::new("callme-originate");
    let conf = dir.path().join("callme.conf");
    std::fs::write(
        &conf,
        configs::set(
            &config(&ami, &portal, "127.0.0.1:0"),
            "state",
            "dir",
            &dir.path().display().to_string(),
        ),
    )
    .unwrap();
    let run = |to: &str| {
        Command::new(env!("CARGO_BIN_EXE_callme"))
            .args(["originate", "-c"])
            .arg(&conf)
            .args(["--from", "219", "--to", to])
            .env_remove("RUST_LOG")
            .output()
            .expect("run callme originate")
    };
    let out = run("+79991234567");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("OriginateResponse: Success (Reason 4)"),
        "{stdout}"
    );
    let o = ami.actions_named("Originate").pop().unwrap();
    assert_eq!(o.get("Channel"), Some("Local/219@from-internal"));
    assert_eq!(o.get("Exten"), Some("89991234567"));
    assert_eq!(
        o.get_all("Variable").collect::<Vec<_>>(),
        ["IS_CALLME_ORIGINATE=1"]
    );

    ami.set_originate_response(false);
    let out = run("+79991234567");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Response: Error (Originate failed)"));

    let out = run("123\r\nAction: Command");
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        ami.actions_named("Originate").len(),
        2,
        "the bad number never reached AMI"
    );
}

/// The whole way: our Originate, then the channels of a real click-to-call capture carrying
/// our ChannelId as Uniqueid/Linkedid → card for the employee when they answer, finish 200.
#[test]
fn answered_click_to_call_shows_the_card_and_finishes_200() {
    let portal = FakeBitrix::start();
    let ami = FakeAmi::start("callme", SECRET);
    let (daemon, addr) = start(&ami, &portal);
    let call_id = click(&portal, &addr, "19");
    let o = ami.wait_action("Originate", WAIT).expect("Originate");
    let channel_id = o.get("ChannelId").unwrap().to_string();

    let capture = String::from_utf8(support::capture_tail("f_click2call_answered.ami")).unwrap();
    let capture = capture
        .replace("1795668405.23", &channel_id)
        .replace("externalCall.test123", &call_id);
    assert!(ami.push(capture.as_bytes()));

    assert!(
        finished(&portal, &call_id),
        "no finish; log:\n{}",
        daemon.log()
    );
    let reqs = portal.requests();
    let show = reqs
        .iter()
        .find(|r| r.method == "telephony.externalcall.show")
        .unwrap_or_else(|| panic!("no show; log:\n{}", daemon.log()));
    assert_eq!(show.params["CALL_ID"], call_id.as_str());
    assert_eq!(show.params["USER_ID"], json!([19]));
    assert!(
        !reqs
            .iter()
            .any(|r| r.method == "telephony.externalcall.register" && r.params["TYPE"] != 1),
        "click-to-call is not registered again by us"
    );
    let fin = &portal.requests_for("telephony.externalcall.finish")[0].params;
    assert_eq!(fin["STATUS_CODE"], "200", "{fin}");
    assert_eq!(fin["USER_ID"], 19);
    assert!(
        wait_until(WAIT, || portal.open_cards().is_empty()),
        "cards left: {:?}",
        portal.open_cards()
    );
}

/// A callback form (ONEXTERNALCALLBACKSTART, bitrix24-api.md §5.3): no CALL_ID comes with it.
/// callme rings the line's target first (`callback_targets = 7:219`), then the client; once
/// 219 answers, the call is registered as TYPE 4 under 219's user, shown and finished. A
/// duplicate form within the window dials once.
#[test]
fn callback_form_rings_the_target_then_registers_type_4() {
    callback_form("f_click2call_answered.ami", "1795668405.23");
}

/// The same on the PJSIP twin (`tests/fixtures/pjsip/`, Asterisk 22).
#[test]
fn callback_form_rings_the_target_then_registers_type_4_pjsip() {
    callback_form("pjsip/f_click2call_answered.ami", "1796235925.28");
}

/// `capture`: an answered click-to-call whose first channel has the Uniqueid `first`.
fn callback_form(capture: &str, first: &str) {
    let portal = FakeBitrix::start();
    let ami = FakeAmi::start("callme", SECRET);
    let conf = configs::set(
        &config(&ami, &portal, "127.0.0.1:0"),
        "originate",
        "callback_targets",
        "7:219",
    );
    let daemon = Running::start(&conf, &["--debug"]);
    let addr = daemon
        .http_addr(WAIT)
        .unwrap_or_else(|| panic!("no HTTP listening line; log:\n{}", daemon.log()));
    assert!(ami.wait_accepted(1, WAIT), "no AMI login");

    let body = http::form(&[
        ("event", "ONEXTERNALCALLBACKSTART"),
        ("data[PHONE_NUMBER]", "+79991234567"),
        ("data[TEXT]", "A callback has been ordered from the website"),
        ("data[VOICE]", "ruinternalfemale"),
        ("data[CRM_ENTITY_TYPE]", "CONTACT"),
        ("data[CRM_ENTITY_ID]", "5785"),
        ("data[LINE_NUMBER]", "7"),
        ("auth[domain]", "some-domain.bitrix24.com"),
        ("auth[member_id]", "a223c6b9410f85df78e9377d6c4f7213"),
        ("auth[application_token]", TOKEN),
    ]);
    assert_eq!(post(&addr, &body).status, 200);
    assert_eq!(post(&addr, &body).status, 200, "duplicate answered too");
    let o = ami.wait_action("Originate", WAIT).expect("Originate");
    assert_eq!(
        o.get("Channel"),
        Some("Local/219@from-internal"),
        "the line's target first"
    );
    assert_eq!(o.get("Exten"), Some("89991234567"));
    let channel_id = o.get("ChannelId").unwrap().to_string();
    let cb_id = o
        .get_all("Variable")
        .find_map(|v| v.strip_prefix("CallMeCALL_ID="))
        .expect("CallMeCALL_ID")
        .to_string();
    assert!(
        !portal
            .requests()
            .iter()
            .any(|r| r.method.starts_with("telephony.")),
        "nothing is registered before the employee answers"
    );

    // The f capture's events with our ChannelId: 219 answers, then the client.
    let capture = String::from_utf8(support::capture_tail(capture)).unwrap();
    let capture = capture
        .replace(first, &channel_id)
        .replace("externalCall.test123", &cb_id);
    assert!(ami.push(capture.as_bytes()));
    let done = portal.wait_for_commands(
        |cmds| {
            cmds.iter()
                .any(|r| r.method == "telephony.externalcall.finish")
        },
        WAIT,
    );
    assert!(done, "no finish; log:\n{}", daemon.log());
    // Commands, not requests: a finish may ride in another request's batch, where params
    // arrive as strings.
    let calls: Vec<_> = portal
        .commands()
        .into_iter()
        .filter(|r| r.method.starts_with("telephony."))
        .collect();
    let methods: Vec<&str> = calls.iter().map(|r| r.method.as_str()).collect();
    // Registered under 219's user when 219 answered our Originate, with 219 the one phone
    // on the call: SHOW=1 puts the card up, no show of its own (issue #20).
    assert_eq!(
        methods,
        vec![
            "telephony.externalcall.register",
            "telephony.externalcall.finish"
        ]
    );
    assert_eq!(calls[0].num("TYPE"), 4);
    assert_eq!(calls[0].num("USER_ID"), 19);
    assert_eq!(calls[0].num("SHOW"), 1);
    assert_eq!(calls[0].params["PHONE_NUMBER"], "79991234567");
    assert_eq!(calls[0].params["LINE_NUMBER"], "7");
    assert_eq!(calls[1].params["STATUS_CODE"], "200");
    assert_eq!(calls[1].num("USER_ID"), 19);
    assert_eq!(
        portal
            .cards_shown()
            .iter()
            .map(|c| c.user_id)
            .collect::<Vec<_>>(),
        vec![19],
        "219's card, once"
    );
    assert_eq!(
        ami.actions_named("Originate").len(),
        1,
        "the duplicate did not dial"
    );
    assert!(wait_until(WAIT, || portal.open_cards().is_empty()));
}
