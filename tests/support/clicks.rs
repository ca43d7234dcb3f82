//! What Bitrix24 does for a click-to-call, against the fake portal and the daemon: register
//! the call (the portal hands out the CALL_ID), then post ONEXTERNALCALLSTART.

use serde_json::{json, Value};

use super::fake_bitrix::FakeBitrix;
use super::http;

/// Register an outgoing call for user 19 at the fake portal, as Bitrix24 does before it sends
/// ONEXTERNALCALLSTART; returns its CALL_ID.
pub fn register(portal: &FakeBitrix, phone: &str) -> String {
    let url = portal.webhook_url();
    let addr = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let body = json!({"USER_ID": 19, "PHONE_NUMBER": phone, "TYPE": 1}).to_string();
    let r = http::request(
        &addr,
        "POST",
        "/rest/1/testcode/telephony.externalcall.register.json",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    v["result"]["CALL_ID"].as_str().unwrap().to_string()
}

/// A body shaped like the one in bitrix24-api.md §5.3 (outgoing-webhook `auth` block).
pub fn event_body(
    call_id: &str,
    user_id: &str,
    phone: &str,
    intl: Option<&str>,
    token: &str,
) -> String {
    let mut pairs = vec![
        ("event", "ONEXTERNALCALLSTART"),
        ("event_handler_id", "1055"),
        ("data[PHONE_NUMBER]", phone),
    ];
    if let Some(intl) = intl {
        pairs.push(("data[PHONE_NUMBER_INTERNATIONAL]", intl));
    }
    pairs.extend([
        ("data[EXTENSION]", ""),
        ("data[USER_ID]", user_id),
        ("data[CALL_LIST_ID]", "0"),
        ("data[LINE_NUMBER]", "7"),
        ("data[IS_MOBILE]", "0"),
        ("data[CALL_ID]", call_id),
        ("data[CRM_ENTITY_TYPE]", "CONTACT"),
        ("data[CRM_ENTITY_ID]", "797"),
        ("ts", "1773236988"),
        ("auth[domain]", "some-domain.bitrix24.com"),
        (
            "auth[client_endpoint]",
            "https://some-domain.bitrix24.com/rest/",
        ),
        ("auth[server_endpoint]", "https://oauth.bitrix.info/rest/"),
        ("auth[member_id]", "a223c6b9410f85df78e9377d6c4f7213"),
        ("auth[application_token]", token),
    ]);
    http::form(&pairs)
}
