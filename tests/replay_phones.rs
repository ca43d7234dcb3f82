//! What Bitrix24 receives for the real-phone captures (issue #15): `callme replay --dry-run`
//! (the real binary) on v, w, x and pk, on chan_sip and on PJSIP, gives these exact requests.
//! The dry-run portal's employees are 219, 220, 221 (users 19, 20, 21) and 100 (user 1); its
//! CRM has the contact 79991234567 (owner: user 1) and the lead 79997654321 (owner: user 19).
//!
//! Also the delivery side of desk-phone outbound: who a TYPE=1 register goes under when the
//! dialling phone is not a Bitrix24 user.

#[macro_use]
mod support;

use std::io::Write;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use callme::bitrix::deliver::{DeliverConfig, Deliverer};
use callme::bitrix::{Directory, User};
use callme::calls::{Action, Direction, Intent};
use callme::dryrun::{DryRun, Format};
use serde_json::{json, Value};
use support::drivers::Driver;

fn callme(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_callme"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RUST_LOG")
        .output()
        .expect("run callme")
}

/// The requests `callme replay --dry-run` prints for a capture, the user load left out.
fn dry_run(d: Driver, capture: &str) -> Vec<Value> {
    let path = format!("{}/{capture}.ami", d.dir());
    let out = callme(&["replay", "--dry-run", &path]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains("ERROR") && !stderr.contains("WARN"),
        "{path}: {stderr}"
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines[0]["method"], "user.get");
    lines[1..].to_vec()
}

/// `(EXTERNAL_CALL_ID, CALL_START_DATE)` of each capture's call.
fn call(d: Driver, capture: &str) -> (&'static str, &'static str) {
    match (d, &capture[..2]) {
        (Driver::ChanSip, "v_") => ("callme-1796235975.76", "2026-12-02T18:26:15+00:00"),
        (Driver::ChanSip, "w_") => ("callme-1796236002.80", "2026-12-02T18:26:42+00:00"),
        (Driver::ChanSip, "x_") => ("callme-1796236014.82", "2026-12-02T18:26:54+00:00"),
        (Driver::ChanSip, "pk") => ("callme-1796237651.102", "2026-12-02T18:54:11+00:00"),
        (Driver::Pjsip, "v_") => ("callme-1796236411.2", "2026-12-02T18:33:31+00:00"),
        (Driver::Pjsip, "w_") => ("callme-1796236438.6", "2026-12-02T18:33:58+00:00"),
        (Driver::Pjsip, "x_") => ("callme-1796236450.8", "2026-12-02T18:34:10+00:00"),
        (Driver::Pjsip, "pk") => ("callme-1796237666.100", "2026-12-02T18:54:26+00:00"),
        _ => panic!("no call for {capture}"),
    }
}

const CALL_ID: &str = "externalCall.dryrun0001.1";

fn search(number: &str) -> Value {
    json!({"method": "telephony.externalCall.searchCrmEntities",
           "params": {"PHONE_NUMBER": number}})
}

fn register(d: Driver, capture: &str, kind: u8, number: &str, line: &str, user: u64) -> Value {
    let (key, start) = call(d, capture);
    let mut p = json!({"CALL_START_DATE": start, "CRM_CREATE": 0, "EXTERNAL_CALL_ID": key,
                       "PHONE_NUMBER": number, "SHOW": 0, "TYPE": kind, "USER_ID": user});
    if !line.is_empty() {
        p["LINE_NUMBER"] = json!(line);
    }
    json!({"method": "telephony.externalcall.register", "params": p})
}

fn card(method: &str, user: u64) -> Value {
    json!({"method": format!("telephony.externalcall.{method}"),
           "params": {"CALL_ID": CALL_ID, "USER_ID": [user]}})
}

fn finish(user: u64, status: &str, duration: u64) -> Value {
    json!({"method": "telephony.externalcall.finish",
           "params": {"ADD_TO_CHAT": 1, "CALL_ID": CALL_ID, "DURATION": duration,
                      "STATUS_CODE": status, "USER_ID": user}})
}

/// v: inbound from the lead 79997654321, registered under its owner (user 19); 220 (user 20)
/// answers and transfers with REFER/Replaces to 221 (user 21): 220's card hidden and 221's
/// shown at the transfer, finished under 221, 200, 19 s from 220's answer.
fn replay_v_refer_transfer(d: Driver) {
    let c = "v_inbound_attended_transfer_refer_220_to_221";
    assert_eq!(
        dry_run(d, c),
        vec![
            search("79997654321"),
            register(d, c, 2, "79997654321", "8001231233", 19),
            card("show", 20),
            card("hide", 20),
            card("show", 21),
            finish(21, "200", 19),
        ]
    );
}

/// w: 220 dials 79997654321 (a lead owned by user 19): TYPE=1 under 220 (user 20) with no CRM
/// look-up at all, card to 220, finished under 220, 200, 4 s.
fn replay_w_desk_outbound(d: Driver) {
    let c = "w_outbound_desk_220_answered_carrier_hangs_up";
    assert_eq!(
        dry_run(d, c),
        vec![
            register(d, c, 1, "79997654321", "", 20),
            card("show", 20),
            finish(20, "200", 4),
        ]
    );
}

/// x: 221 dials the contact 79991234567 (owned by user 1): TYPE=1 under 221 (user 21), card to
/// 221, nobody answers: finished under 221, 304, 0 s.
fn replay_x_desk_outbound_noanswer(d: Driver) {
    let c = "x_outbound_desk_221_noanswer";
    assert_eq!(
        dry_run(d, c),
        vec![
            register(d, c, 1, "79991234567", "", 21),
            card("show", 21),
            finish(21, "304", 0),
        ]
    );
}

/// pk: inbound from the contact 79991234567 under its owner (user 1); 220 rings (card), 221
/// picks up with `**220`: 220's card hidden, 221's shown, finished under 221, 200, 6 s.
fn replay_pk_pickup(d: Driver) {
    let c = "pk_inbound_directed_pickup_221_from_220";
    assert_eq!(
        dry_run(d, c),
        vec![
            search("79991234567"),
            register(d, c, 2, "79991234567", "8001231233", 1),
            card("show", 20),
            card("hide", 20),
            card("show", 21),
            finish(21, "200", 6),
        ]
    );
}

on_both_drivers!(
    replay_v_refer_transfer,
    replay_w_desk_outbound,
    replay_x_desk_outbound_noanswer,
    replay_pk_pickup,
);

/// The PJSIP twin of cli.rs's `replay_dry_run_prints_one_json_request_per_line`.
#[test]
fn replay_dry_run_of_pjsip_a_prints_the_chan_sip_requests() {
    let lines = dry_run(Driver::Pjsip, "a_inbound_answered");
    assert_eq!(
        lines,
        vec![
            search("79991234567"),
            json!({"method": "telephony.externalcall.register", "params": {
                "CALL_START_DATE": "2026-12-02T18:33:18+00:00", "CRM_CREATE": 0,
                "EXTERNAL_CALL_ID": "callme-1796236398.0", "LINE_NUMBER": "8001231231",
                "PHONE_NUMBER": "79991234567", "SHOW": 0, "TYPE": 2, "USER_ID": 1}}),
            card("show", 19),
            finish(19, "200", 5),
        ]
    );
}

/// The PJSIP twin of cli.rs's `replay_dry_run_of_an_internal_call_sends_nothing_but_the_user_load`.
#[test]
fn replay_dry_run_of_pjsip_l_sends_nothing() {
    assert!(dry_run(Driver::Pjsip, "l_internal_219_to_220").is_empty());
}

/// The PJSIP twin of cli.rs's `replay_without_dry_run_needs_a_config`.
#[test]
fn replay_of_a_pjsip_capture_without_dry_run_needs_a_config() {
    let out = callme(&["replay", "tests/fixtures/pjsip/a_inbound_answered.ami"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--dry-run"));
}

// ---------------------------------------------------------------------------------------------
// Delivery: whom a desk-phone outbound call is registered under

#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Lines {
    fn values(&self) -> Vec<Value> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect()
    }
}

/// Deliver one outbound register by `ext` to the dry-run portal, whose directory here lacks
/// 221 (a phone that is no Bitrix24 user, or whose user the directory has not seen yet).
fn deliver_outbound(ext: &str, number: &str, default_user: Option<&str>) -> (Vec<Value>, u64) {
    let users = [(1, "100"), (19, "219"), (20, "220")]
        .map(|(id, inner)| User {
            id,
            inner: Some(inner.into()),
            active: true,
            name: format!("user {id}"),
        })
        .to_vec();
    let mut cfg = DeliverConfig::from_config(&callme::config::Config::demo());
    cfg.default_user = default_user.map(String::from);
    let lines = Lines::default();
    let portal = DryRun::new(Box::new(lines.clone()), Format::JsonLines);
    let mut d = Deliverer::new(
        cfg,
        Box::new(portal),
        Directory::from_users(users, Instant::now()),
    );
    d.push(Intent {
        call: "callme-1.1".into(),
        action: Action::Register {
            direction: Direction::Outbound,
            phone: number.into(),
            line: String::new(),
            started_ms: 1_796_236_002_500,
            employee: Some(ext.into()),
        },
    });
    d.run_due(Instant::now());
    (lines.values(), d.stats().permanent_failures)
}

fn registered_under(v: &[Value]) -> Option<u64> {
    v.iter()
        .find(|l| l["method"] == "telephony.externalcall.register")
        .and_then(|l| l["params"]["USER_ID"].as_u64())
}

#[test]
fn outbound_from_a_bitrix_user_needs_no_crm_owner_or_default_user() {
    let (v, failed) = deliver_outbound("220", "79991234567", None);
    assert_eq!(failed, 0);
    assert_eq!(v.len(), 1, "the register alone, no CRM look-up: {v:?}");
    assert_eq!(registered_under(&v), Some(20));
    assert_eq!(v[0]["params"]["TYPE"], 1);
    assert_eq!(v[0]["params"]["PHONE_NUMBER"], "79991234567");
}

#[test]
fn outbound_from_a_phone_that_is_no_bitrix_user_falls_back_to_the_crm_owner() {
    let (v, _) = deliver_outbound("221", "79997654321", None);
    assert_eq!(v[0], search("79997654321"));
    assert_eq!(registered_under(&v), Some(19), "the lead's owner");
}

#[test]
fn outbound_from_a_phone_that_is_no_bitrix_user_then_the_default_user() {
    let (v, _) = deliver_outbound("221", "74950000000", Some("100"));
    assert_eq!(registered_under(&v), Some(1));
    let (v, failed) = deliver_outbound("221", "74950000000", None);
    assert_eq!(registered_under(&v), None);
    assert_eq!(failed, 1, "nobody to register it under");
}
