//! Outbound calls in the tracker: click-to-call (our Originate) and calls dialled from a desk
//! phone, plus the ways a click-to-call can fail. The tests built on the f capture run on both
//! drivers (`<test>::chan_sip`, `<test>::pjsip`: Originate `SIP/219` on Asterisk 20, `PJSIP/219`
//! on Asterisk 22).

#[macro_use]
mod support;

use callme::ami::Message;
use callme::calls::tracker::Originate;
use callme::calls::{Action, Direction, Status};
use support::drivers::{load, run_all, Driver};
use support::events::{actions, ev, finish, run, show, tracker, Chan};

fn c2c(call_id: &str, channel_id: &str, action_id: &str) -> Originate {
    Originate {
        call_id: call_id.into(),
        channel_id: channel_id.into(),
        action_id: action_id.into(),
        ext: "219".into(),
        phone: "79991234567".into(),
        callback_line: None,
    }
}

on_both_drivers!(
    f_click_to_call_answered,
    someone_elses_click_to_call_is_left_alone,
    desk_phone_outbound_registers_type_1_under_the_caller,
    callback_form_registers_type_4_when_the_employee_answers,
);

/// The f capture's PHP-style Originate carried no ChannelId, so the call is matched by its
/// `CallMeCALL_ID` variable (the documented backup).
fn f_click_to_call_answered(d: Driver) {
    let msgs = load(d, "f_click2call_answered");
    let mut t = tracker();
    t.expect_originate(
        c2c("externalCall.test123", "not-in-this-capture", "x"),
        u64::MAX,
    );
    let v = run_all(&mut t, &msgs);
    let a = actions(&v);
    assert_eq!(
        a[0],
        Action::Adopt {
            call_id: "externalCall.test123".into(),
            ext: "219".into()
        }
    );
    assert_eq!(a[1], show("219"));
    // 219 answered the Originate at +2.51 s: that is when the card opens.
    assert!((2_400..2_700).contains(&v[1].0), "show at {}", v[1].0);
    // The client answered at +5.51 s (PJSIP +5.52 s), 219 hung up at +10.51 s (+10.52 s).
    assert_eq!(a[2], finish("219", 5, Status::ANSWERED));
    assert_eq!(a.len(), 3, "no register: Bitrix24 registered it: {a:?}");
}

fn someone_elses_click_to_call_is_left_alone(d: Driver) {
    // Same capture, but no Originate of ours is pending: the CallMe variables mark it as an
    // originate (from another tool), so it is not mistaken for a desk-phone outbound call.
    let msgs = load(d, "f_click2call_answered");
    assert!(run_all(&mut tracker(), &msgs).is_empty());
}

/// A desk-phone outbound call, built from the f capture: once the Originate-only parts are
/// removed (the caller-less DialBegin/DialEnd of the originated leg, the CallMe variables and
/// OriginateResponse), what is left is exactly SIP/219 (PJSIP/219) in from-internal dialling
/// 79991234567 through SIP/trunk with `trunk/79991234567` (PJSIP/trunk with
/// `79991234567@trunk`): the event shapes of a call dialled on the phone itself.
fn desk_phone_call(d: Driver) -> Vec<(Message, u64)> {
    load(d, "f_click2call_answered")
        .into_iter()
        .filter(|(m, _)| {
            let originate_leg =
                matches!(m.event(), Some("DialBegin" | "DialEnd")) && m.get("Channel").is_none();
            let callme_var = m.event() == Some("VarSet")
                && matches!(
                    m.get("Variable"),
                    Some("CallMeCALL_ID" | "IS_CALLME_ORIGINATE")
                );
            !originate_leg && !callme_var && m.event() != Some("OriginateResponse")
        })
        .collect()
}

fn desk_phone_outbound_registers_type_1_under_the_caller(d: Driver) {
    let v = run(&mut tracker(), &desk_phone_call(d));
    let a = actions(&v);
    match &a[0] {
        Action::Register {
            direction,
            phone,
            line,
            employee,
            ..
        } => {
            assert_eq!(*direction, Direction::Outbound);
            assert_eq!(direction.bitrix_type(), 1);
            assert_eq!(phone, "79991234567");
            assert_eq!(line, "");
            assert_eq!(employee.as_deref(), Some("219"));
        }
        other => panic!("expected register, got {other:?}"),
    }
    assert_eq!(a[1], show("219"));
    assert_eq!(a[2], finish("219", 5, Status::ANSWERED));
    assert_eq!(a.len(), 3, "{a:?}");
}

/// A busy carrier: every event within milliseconds, no ringing, no bridge, cause 17 on both
/// channels (the shape described in the captures' README, "Desk-phone outbound").
#[test]
fn desk_phone_outbound_busy() {
    let caller = Chan {
        name: "SIP/219-00000100",
        uid: "1800000000.100",
        linked: "1800000000.100",
        context: "from-internal",
        exten: "89991234567",
        cid: "219",
    };
    let trunk = Chan {
        name: "SIP/trunk-00000101",
        uid: "1800000000.101",
        linked: "1800000000.100",
        context: "from-trunk",
        exten: "s",
        cid: "<unknown>",
    };
    let msgs = vec![
        (caller.ev("Newchannel", &[]), 1_000),
        (trunk.ev("Newchannel", &[]), 1_001),
        (
            caller.dial("DialBegin", &trunk, &[("DialString", "trunk/89991234567")]),
            1_001,
        ),
        (
            caller.dial("DialEnd", &trunk, &[("DialStatus", "BUSY")]),
            1_002,
        ),
        (trunk.ev("Hangup", &[("Cause", "17")]), 1_002),
        (caller.ev("Hangup", &[("Cause", "17")]), 1_003),
    ];
    let a = actions(&run(&mut tracker(), &msgs));
    assert!(matches!(
        &a[0],
        Action::Register { direction: Direction::Outbound, phone, .. } if phone == "89991234567"
    ));
    assert_eq!(a[1], show("219"));
    assert_eq!(a[2], finish("219", 0, Status::BUSY));
}

#[test]
fn refused_originate_is_finished() {
    let mut t = tracker();
    t.expect_originate(c2c("externalCall.r1", "c2c-1", "a-1"), u64::MAX);
    let mut out = Vec::new();
    t.originate_failed("externalCall.r1", &mut out);
    let a: Vec<Action> = out.into_iter().map(|i| i.action).collect();
    assert_eq!(
        a,
        vec![
            Action::Adopt {
                call_id: "externalCall.r1".into(),
                ext: "219".into()
            },
            finish("219", 0, Status::OTHER)
        ]
    );
    // Once only.
    let mut out = Vec::new();
    t.originate_failed("externalCall.r1", &mut out);
    assert!(out.is_empty());
}

#[test]
fn failing_originate_response_without_channels_maps_the_reason() {
    let mut t = tracker();
    t.expect_originate(c2c("externalCall.r2", "c2c-2", "a-2"), u64::MAX);
    let resp = ev(&[
        ("Event", "OriginateResponse"),
        ("ActionID", "a-2"),
        ("Response", "Failure"),
        ("Channel", "SIP/219"),
        ("Reason", "5"),
        ("Uniqueid", "<unknown>"),
    ]);
    let a: Vec<Action> = t
        .handle_vec(&resp, 9_000)
        .into_iter()
        .map(|i| i.action)
        .collect();
    assert_eq!(a[1], finish("219", 0, Status::BUSY));
}

/// The employee never answers: the originated channel (Uniqueid = our ChannelId) rings and
/// hangs up with cause 19, and OriginateResponse fails with Reason 3 (captures' README).
#[test]
fn employee_never_answers_click_to_call() {
    let mut t = tracker();
    t.expect_originate(c2c("externalCall.r3", "c2c-3", "a-3"), u64::MAX);
    // The originated channel has no caller ID of its own yet.
    let chan = Chan {
        name: "SIP/219-00000200",
        uid: "c2c-3",
        linked: "c2c-3",
        context: "from-internal",
        exten: "s",
        cid: "",
    };
    let dial = ev(&[
        ("Event", "DialBegin"),
        ("DestChannel", "SIP/219-00000200"),
        ("DestUniqueid", "c2c-3"),
        ("DestLinkedid", "c2c-3"),
    ]);
    let resp = ev(&[
        ("Event", "OriginateResponse"),
        ("ActionID", "a-3"),
        ("Response", "Failure"),
        ("Reason", "3"),
        ("Uniqueid", "<unknown>"),
    ]);
    let msgs = vec![
        (chan.ev("Newchannel", &[]), 1_000),
        (dial, 1_001),
        (chan.ev("Hangup", &[("Cause", "19")]), 31_000),
        (resp, 31_001),
    ];
    let v = run(&mut t, &msgs);
    let a = actions(&v);
    assert_eq!(
        a,
        vec![
            Action::Adopt {
                call_id: "externalCall.r3".into(),
                ext: "219".into()
            },
            finish("219", 0, Status::MISSED)
        ],
        "no card: the employee never answered"
    );
    assert!(v.iter().all(|(_, i)| i.call == "callme-c2c-3"));
    assert!(t.is_empty());
}

#[test]
fn click_to_call_that_never_shows_up_expires() {
    let mut t = tracker();
    t.expect_originate(c2c("externalCall.r4", "c2c-4", "a-4"), 60_000);
    let mut out = Vec::new();
    t.tick(59_999, &mut out);
    assert!(out.is_empty());
    t.tick(60_000, &mut out);
    assert_eq!(out.len(), 2);
    assert!(matches!(
        out[1].action,
        Action::Finish {
            status: Status::OTHER,
            ..
        }
    ));
}

/// A callback form (ONEXTERNALCALLBACKSTART): the same Originate flow as the f capture, but
/// Bitrix24 has no call yet. It is registered as TYPE=4 under the employee once they answer,
/// then shown and finished as usual.
fn callback_form_registers_type_4_when_the_employee_answers(d: Driver) {
    let msgs = load(d, "f_click2call_answered");
    let mut t = tracker();
    t.expect_originate(
        Originate {
            callback_line: Some("8001231231".into()),
            ..c2c("externalCall.test123", "not-in-this-capture", "x")
        },
        u64::MAX,
    );
    let v = run_all(&mut t, &msgs);
    let a = actions(&v);
    match &a[0] {
        Action::Register {
            direction,
            phone,
            line,
            employee,
            started_ms,
        } => {
            assert_eq!(*direction, Direction::Callback);
            assert_eq!(direction.bitrix_type(), 4);
            assert_eq!(phone, "79991234567");
            assert_eq!(line, "8001231231");
            assert_eq!(employee.as_deref(), Some("219"));
            assert_eq!(*started_ms, msgs[0].1 + v[0].0, "started when 219 answered");
        }
        other => panic!("expected register, got {other:?}"),
    }
    assert!(v[0].0 >= 2_400, "registered only once 219 answered");
    assert_eq!(a[1], show("219"));
    assert_eq!(a[2], finish("219", 5, Status::ANSWERED));
    assert_eq!(
        a.len(),
        3,
        "no Adopt: there was no Bitrix24 call to adopt: {a:?}"
    );
}

#[test]
fn callback_nobody_answers_leaves_nothing_to_close() {
    let mut t = tracker();
    t.expect_originate(
        Originate {
            callback_line: Some("8001231231".into()),
            ..c2c("cb-1", "cb-chan-1", "a-cb")
        },
        u64::MAX,
    );
    let mut out = Vec::new();
    t.originate_failed("cb-1", &mut out);
    assert!(out.is_empty(), "{out:?}");
}
