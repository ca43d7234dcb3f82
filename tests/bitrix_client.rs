//! The Bitrix24 client against the fake portal: real HTTP on 127.0.0.1.

mod support;

use std::net::TcpListener;
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use callme::bitrix::api::{self, FinishParams, RegisterParams, CALL_INCOMING};
use callme::bitrix::{Directory, Error, Transport, WebhookClient};
use serde_json::json;
use support::fake_bitrix::{closed_port_url, FakeBitrix, WEBHOOK_CODE};

const TIMEOUT: Duration = Duration::from_secs(5);

fn client(fake: &FakeBitrix) -> WebhookClient {
    WebhookClient::new(&fake.webhook_url(), TIMEOUT)
}

fn incoming(user_id: u64, phone: &str, external_call_id: &str) -> RegisterParams {
    RegisterParams {
        user_id,
        phone_number: phone.into(),
        call_type: CALL_INCOMING,
        call_start_date: "2026-03-07T10:20:30+03:00".into(),
        line_number: Some("8001231231".into()),
        crm_create: false,
        external_call_id: external_call_id.into(),
        show: true,
    }
}

fn finish_params(call_id: &str, user_id: u64) -> FinishParams {
    FinishParams {
        call_id: call_id.into(),
        user_id,
        duration: 5,
        status_code: "200".into(),
        add_to_chat: false,
        failed_reason: None,
    }
}

#[test]
fn users_all_pages_past_50_and_returns_exactly_the_active_users() {
    let fake = FakeBitrix::start();
    let users = api::users_all(&client(&fake)).unwrap();

    assert_eq!(users.len(), 119, "120 users, one inactive");
    assert!(users.iter().all(|u| u.active));
    assert!(!users.iter().any(|u| u.id == 13), "user 13 is inactive");
    assert_eq!(users.last().unwrap().id, 120);

    let pages = fake.requests_for("user.get");
    let starts: Vec<_> = pages.iter().map(|r| r.params["start"].clone()).collect();
    assert_eq!(starts, vec![json!(0), json!(50), json!(100)]);
    assert_eq!(pages[0].params["FILTER"], json!({"ACTIVE": true}));

    let dir = Directory::from_users(users, Instant::now());
    assert_eq!(
        dir.len(),
        117,
        "users 7 (null) and 8 (\"\") have no inner number"
    );
    assert_eq!(dir.user_for("219"), Some(19));
    assert_eq!(dir.user_for("220"), Some(20));
    assert_eq!(dir.user_for("221"), Some(21));
    assert_eq!(dir.inner_for(120), Some("320"));
    assert_eq!(dir.user_for("213"), None);
}

#[test]
fn users_all_with_an_empty_portal() {
    let fake = FakeBitrix::start();
    fake.set_users(vec![(1, Some("101"), false)]);
    // `{"result":[]}` without `total` or `next` (§6.2).
    assert_eq!(api::users_all(&client(&fake)).unwrap(), vec![]);
}

#[test]
fn add_users_extends_the_portal() {
    let fake = FakeBitrix::start();
    fake.add_users(32); // ids 121..=152, inner numbers 321..=352: 151 active, a fourth page
    let users = api::users_all(&client(&fake)).unwrap();
    assert_eq!(users.len(), 151);
    assert_eq!(fake.requests_for("USER.GET").len(), 4);
    let dir = Directory::from_users(users, Instant::now());
    assert_eq!(dir.user_for("352"), Some(152));
}

#[test]
fn wait_for_sees_requests_from_other_threads() {
    let fake = FakeBitrix::start();
    let c = client(&fake);
    let worker = std::thread::spawn(move || api::show(&c, "externalCall.x.1", &[19]));
    assert!(fake.wait_for(
        |r| r.iter().any(|r| r.method == "telephony.externalcall.show"),
        TIMEOUT
    ));
    assert!(!worker.join().unwrap().unwrap());
    assert!(!fake.wait_for(|r| r.len() > 1, Duration::from_millis(50)));
}

#[test]
fn register_show_hide_finish_round_trip() {
    let fake = FakeBitrix::start();
    let c = client(&fake);

    let reg = api::register(&c, &incoming(19, "+79991234567", "pbx-1795668285.0")).unwrap();
    assert!(reg.call_id.starts_with("externalCall."), "{}", reg.call_id);
    assert_eq!(reg.crm_entity_type, None);
    assert_eq!(fake.open_cards(), vec![(reg.call_id.clone(), 19)]);

    assert!(api::show(&c, &reg.call_id, &[20, 21]).unwrap());
    assert_eq!(fake.open_cards().len(), 3);
    assert!(api::hide(&c, &reg.call_id, &[20, 21]).unwrap());
    api::finish(&c, &finish_params(&reg.call_id, 19)).unwrap();

    assert!(fake.open_cards().is_empty(), "{:?}", fake.open_cards());
    assert!(fake.active_calls().is_empty());
    let row = &fake.finished_calls()[0];
    assert_eq!(row["PORTAL_USER_ID"], json!(19));
    assert_eq!(row["PHONE_NUMBER"], json!("+79991234567"));
    assert_eq!(row["CALL_FAILED_CODE"], json!("200"));

    // What went on the wire, with the types Bitrix24 expects.
    let sent = fake.requests();
    let methods: Vec<_> = sent.iter().map(|r| r.method.as_str()).collect();
    assert_eq!(
        methods,
        [
            "telephony.externalcall.register",
            "telephony.externalcall.show",
            "telephony.externalcall.hide",
            "telephony.externalcall.finish"
        ]
    );
    assert!(sent.iter().all(|r| r.status == 200));
    let reg_params = &sent[0].params;
    assert_eq!(reg_params["TYPE"], json!(2));
    assert_eq!(reg_params["SHOW"], json!(1));
    assert_eq!(reg_params["CRM_CREATE"], json!(0));
    assert_eq!(reg_params["EXTERNAL_CALL_ID"], json!("pbx-1795668285.0"));
    assert_eq!(sent[1].params["USER_ID"], json!([20, 21]));
    assert_eq!(sent[3].params["ADD_TO_CHAT"], json!(0));
}

#[test]
fn second_finish_is_call_not_found_with_an_empty_code() {
    let fake = FakeBitrix::start();
    let c = client(&fake);
    let reg = api::register(&c, &incoming(20, "79991234567", "pbx-2")).unwrap();
    api::finish(&c, &finish_params(&reg.call_id, 20)).unwrap();

    let err = api::finish(&c, &finish_params(&reg.call_id, 20)).unwrap_err();
    match &err {
        Error::Api { status, code, .. } => assert_eq!((*status, code.as_str()), (400, "")),
        other => panic!("expected an API error, got {other:?}"),
    }
    assert!(err.is_call_not_found());
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("Call is not found"), "{err}");

    // After finish show/hide answer false, not an error (§4.1).
    assert!(!api::show(&c, &reg.call_id, &[21]).unwrap());
    assert!(!api::hide(&c, &reg.call_id, &[21]).unwrap());
}

#[test]
fn finish_hides_only_the_finishing_users_card() {
    // The quirk that leaves cards open (§4.1, §11 item 2), visible through open_cards().
    let fake = FakeBitrix::start();
    let c = client(&fake);
    let reg = api::register(&c, &incoming(20, "79991234567", "pbx-3")).unwrap();
    assert!(api::show(&c, &reg.call_id, &[21]).unwrap());
    api::finish(&c, &finish_params(&reg.call_id, 20)).unwrap();
    assert_eq!(fake.open_cards(), vec![(reg.call_id.clone(), 21)]);
}

#[test]
fn call_id_is_unique_per_external_call_id() {
    let fake = FakeBitrix::start();
    let c = client(&fake);
    let a = api::register(&c, &incoming(19, "79991234567", "pbx-a")).unwrap();
    let again = api::register(&c, &incoming(19, "79991234567", "pbx-a")).unwrap();
    let b = api::register(&c, &incoming(19, "79991234567", "pbx-b")).unwrap();
    assert_eq!(
        a.call_id, again.call_id,
        "re-registration of an open call (§2.1)"
    );
    assert_ne!(a.call_id, b.call_id);
}

#[test]
fn register_validates_like_the_portal() {
    let fake = FakeBitrix::start();
    let c = client(&fake);
    let description = |e: Error| match e {
        Error::Api { description, .. } => description,
        other => panic!("{other:?}"),
    };
    let inactive = api::register(&c, &incoming(13, "79991234567", "x")).unwrap_err();
    assert_eq!(description(inactive), "User is not found or is not active");
    let mut p = incoming(19, "abc", "x");
    let bad_phone = api::register(&c, &p).unwrap_err();
    assert_eq!(description(bad_phone), "Unsupported phone number format");
    p.phone_number = "79991234567".into();
    p.call_type = 9;
    assert_eq!(
        description(api::register(&c, &p).unwrap_err()),
        "Unknown TYPE"
    );
}

#[test]
fn register_binds_the_crm_contact() {
    let fake = FakeBitrix::start();
    fake.add_contact("79991234567", 651, 20);
    let reg = api::register(&client(&fake), &incoming(20, "+7 999 123-45-67", "pbx-4")).unwrap();
    assert_eq!(reg.crm_entity_type.as_deref(), Some("CONTACT"));
    assert_eq!(reg.crm_entity_id, Some(651));
}

#[test]
fn crm_create_makes_a_lead_owned_by_the_finishing_user() {
    let fake = FakeBitrix::start();
    let c = client(&fake);
    let mut p = incoming(19, "79997654321", "pbx-5");
    p.crm_create = true;
    let reg = api::register(&c, &p).unwrap();
    assert_eq!(reg.crm_entity_type.as_deref(), Some("LEAD"));
    api::finish(&c, &finish_params(&reg.call_id, 21)).unwrap();
    let lead = &fake.crm_items()[0];
    assert_eq!(
        (lead.entity_type.as_str(), lead.assigned_by),
        ("LEAD", Some(21))
    );
}

#[test]
fn responsible_for_parses_string_ids_and_prefers_company_over_lead() {
    let fake = FakeBitrix::start();
    let c = client(&fake);
    fake.add_contact("79991234567", 651, 20);
    let found = api::search_crm_entities(&c, "+79991234567").unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(
        (found[0].entity_id, found[0].assigned_by_id),
        (651, Some(20))
    );
    // The fake sends ASSIGNED_BY_ID as a numeric string, like the DB does (§4.3).
    let raw = c
        .call(
            "telephony.externalCall.searchCrmEntities",
            &json!({"PHONE_NUMBER": "79991234567"}),
        )
        .unwrap();
    assert_eq!(raw.result[0]["ASSIGNED_BY_ID"], json!("20"));
    assert_eq!(api::responsible_for(&c, "79991234567").unwrap(), Some(20));

    // Bitrix24 lists leads before companies; our priority is company first.
    fake.add_crm("LEAD", "79990000001", 7, Some(3));
    fake.add_crm("COMPANY", "79990000001", 9, Some(4));
    assert_eq!(api::responsible_for(&c, "79990000001").unwrap(), Some(4));
}

#[test]
fn unknown_number_has_no_responsible() {
    let fake = FakeBitrix::start();
    let c = client(&fake);
    assert_eq!(api::search_crm_entities(&c, "79990000000").unwrap(), vec![]);
    assert_eq!(api::responsible_for(&c, "79990000000").unwrap(), None);
}

#[test]
fn query_limit_exceeded_is_retryable_and_then_clears() {
    let fake = FakeBitrix::start();
    let c = client(&fake);
    fake.fail_next(
        1,
        503,
        r#"{"error":"QUERY_LIMIT_EXCEEDED","error_description":"Too many requests"}"#,
    );
    let err = api::responsible_for(&c, "79991234567").unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(matches!(&err, Error::Api { status: 503, code, .. } if code == "QUERY_LIMIT_EXCEEDED"));
    assert_eq!(api::responsible_for(&c, "79991234567").unwrap(), None);
    let statuses: Vec<_> = fake.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [503, 200]);
}

#[test]
fn a_portal_that_is_down_is_retryable() {
    let fake = FakeBitrix::start();
    let c = client(&fake);
    fake.set_down(true);
    let err = api::show(&c, "externalCall.x.1", &[19]).unwrap_err();
    assert!(matches!(err, Error::Http { status: 503, .. }), "{err:?}");
    assert!(err.is_retryable());
    fake.set_down(false);
    assert!(!api::show(&c, "externalCall.x.1", &[19]).unwrap());
}

#[test]
fn connection_refused_is_a_retryable_transport_error() {
    let c = WebhookClient::new(&closed_port_url(), TIMEOUT);
    let err = api::users_all(&c).unwrap_err();
    assert!(matches!(err, Error::Transport(_)), "{err:?}");
    assert!(err.is_retryable());
    assert!(!err.to_string().contains(WEBHOOK_CODE), "{err}");
}

#[test]
fn a_silent_server_times_out_as_a_transport_error() {
    // Accepts the TCP connection (backlog) but never answers.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://{}/rest/1/{WEBHOOK_CODE}/",
        listener.local_addr().unwrap()
    );
    let c = WebhookClient::new(&url, Duration::from_millis(300));
    let started = Instant::now();
    let err = api::show(&c, "externalCall.x.1", &[19]).unwrap_err();
    assert!(matches!(err, Error::Transport(_)), "{err:?}");
    assert!(err.is_retryable());
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(!err.to_string().contains(WEBHOOK_CODE), "{err}");
}

#[test]
fn wrong_webhook_code_is_permanent() {
    let fake = FakeBitrix::start();
    let url = fake.webhook_url().replace(WEBHOOK_CODE, "wrongcode");
    let c = WebhookClient::new(&url, TIMEOUT);
    let err = api::users_all(&c).unwrap_err();
    assert!(
        matches!(&err, Error::Api { status: 401, code, .. } if code == "INVALID_CREDENTIALS"),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    assert!(err.is_auth_failure());
    assert!(!err.to_string().contains("wrongcode"), "{err}");
}

#[test]
fn unknown_method_and_bad_call_id_are_permanent() {
    let fake = FakeBitrix::start();
    let c = client(&fake);
    let err = c.call("telephony.nosuch", &json!({})).unwrap_err();
    assert!(
        matches!(&err, Error::Api { status: 404, code, .. } if code == "ERROR_METHOD_NOT_FOUND")
    );
    assert!(!err.is_retryable());
    let err = c
        .call(
            "telephony.externalcall.finish",
            &json!({"CALL_ID": 5, "USER_ID": 19}),
        )
        .unwrap_err();
    assert!(matches!(&err, Error::Api { code, .. } if code == "INVALID_ARGUMENT"));
    assert!(!err.is_call_not_found());
}

#[test]
fn fake_accepts_form_encoding_any_case_and_a_trailing_slash() {
    // Not our client's way of calling, but the fake must be faithful (§1.1, §1.2).
    let fake = FakeBitrix::start();
    let url = format!(
        "{}USER.Get/?FILTER[ACTIVE]=true&start=100",
        fake.webhook_url()
    );
    let mut resp = ureq::get(&url).call().unwrap();
    let body: serde_json::Value =
        serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(body["result"].as_array().unwrap().len(), 19);
    assert_eq!(body["total"], json!(119));
    assert!(body.get("next").is_none());
    assert!(body["time"]["date_start"].is_string());
    let r = &fake.requests()[0];
    assert_eq!(r.method, "user.get");
    assert_eq!(
        r.params,
        json!({"FILTER": {"ACTIVE": "true"}, "start": "100"})
    );

    let form = "CALL_ID=externalCall.x.1&USER_ID[]=19&USER_ID[]=20";
    let mut resp = ureq::post(format!(
        "{}telephony.externalCall.hide.json",
        fake.webhook_url()
    ))
    .header("Content-Type", "application/x-www-form-urlencoded")
    .send(form)
    .unwrap();
    let body: serde_json::Value =
        serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(body["result"], json!(false));
    assert_eq!(
        fake.requests()[1].params,
        json!({"CALL_ID": "externalCall.x.1", "USER_ID": ["19", "20"]})
    );
}

/// Captures every log record of this test binary, whatever the thread, at every level
/// except TRACE for ureq. ureq prints the full request path (the secret code included)
/// whenever its TRACE level is enabled, even inside DEBUG records, so the daemon's logger
/// must cap the `ureq` target at DEBUG; this logger is configured the same way.
struct Capture;
static LINES: Mutex<Vec<(log::Level, String, String)>> = Mutex::new(Vec::new());
static CAPTURE: Capture = Capture;

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata) -> bool {
        !(m.target().starts_with("ureq") && m.level() == log::Level::Trace)
    }
    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        LINES
            .lock()
            .unwrap()
            .push((r.level(), r.target().to_string(), r.args().to_string()));
    }
    fn flush(&self) {}
}

#[test]
fn the_webhook_code_never_reaches_the_log() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        log::set_logger(&CAPTURE).unwrap();
        log::set_max_level(log::LevelFilter::Trace);
    });
    let fake = FakeBitrix::start();
    let c = client(&fake);
    let reg = api::register(&c, &incoming(19, "79991234567", "pbx-log")).unwrap();
    api::finish(&c, &finish_params(&reg.call_id, 19)).unwrap();
    let _ = api::finish(&c, &finish_params(&reg.call_id, 19));
    let _ = api::users_all(&WebhookClient::new(&closed_port_url(), TIMEOUT));

    let lines = LINES.lock().unwrap().clone();
    let ours: Vec<_> = lines.iter().filter(|l| l.1.starts_with("callme")).collect();
    assert!(
        ours.iter().any(|l| l
            .2
            .contains("/rest/1/***/telephony.externalcall.register.json")),
        "requests are logged with the redacted URL: {ours:#?}"
    );
    assert!(ours.iter().any(|l| l.2.contains("Call is not found")));
    assert!(lines.iter().any(|l| l.1.starts_with("ureq")));
    for (_, target, line) in &lines {
        assert!(!line.contains(WEBHOOK_CODE), "{target}: {line}");
        assert!(!line.contains("wrongcode"), "{target}: {line}");
    }
}
