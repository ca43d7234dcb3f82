//! Linkedid changes and merges, concatenated and interleaved replays, and the Asterisk
//! 1.4/1.8/11 legacy event set. The tests on the real captures run on both drivers
//! (`<test>::chan_sip` on `tests/fixtures/`, `<test>::pjsip` on `tests/fixtures/pjsip/`).

#[macro_use]
mod support;

use std::collections::BTreeMap;

use callme::ami::Message;
use callme::calls::{Action, Intent, Status};
use support::drivers::{load, run_all, Driver};
use support::events::{
    actions, capture, finish, finish_responsible, hide, run, show, tracker, Chan,
};

/// Copy of `m` with every `…Linkedid` field rewritten by `f`.
fn relink(m: &Message, f: impl Fn(&str) -> String) -> Message {
    let mut out = Message::new();
    for (k, v) in m.iter() {
        if k.ends_with("Linkedid") {
            out.push(k, &f(v));
        } else {
            out.push(k, v);
        }
    }
    out
}

on_both_drivers!(
    linkedid_change_mid_call_keeps_one_call,
    concatenated_captures_give_the_same_per_call_sequences,
    interleaved_captures_do_not_cross_talk,
);

/// Asterisk re-links both channels of capture a to an older, unknown Linkedid once they are
/// bridged (what `ast_bridge_channel_update_linkedids` does when a bridge joins an older
/// call, ami.md §7). Still one call, one register, one finish, under the same key.
fn linkedid_change_mid_call_keeps_one_call(d: Driver) {
    // Each recording has its own Linkedids; the replacement is a little older than the call.
    let (linkedid, older) = match d {
        Driver::ChanSip => ("1795668285.0", "1795660000.99"),
        Driver::Pjsip => ("1796236398.0", "1796230000.99"),
    };
    let msgs = load(d, "a_inbound_answered");
    let bridged = msgs
        .iter()
        .position(|(m, _)| m.event() == Some("BridgeEnter"))
        .expect("bridge");
    let changed: Vec<(Message, u64)> = msgs
        .iter()
        .enumerate()
        .map(|(i, (m, at))| {
            if i > bridged {
                (relink(m, |_| older.into()), *at)
            } else {
                (m.clone(), *at)
            }
        })
        .collect();
    // run_all: nothing orphaned.
    let v = run_all(&mut tracker(), &changed);
    assert_eq!(
        v,
        run_all(&mut tracker(), &msgs),
        "same intents as the original"
    );
    assert_eq!(v.len(), 3);
    assert!(v
        .iter()
        .all(|(_, i)| i.call == format!("callme-{linkedid}")));
}

/// A transfer done on the phone itself: 219 holds the client, places a *separate* call to
/// 220 (its own Linkedid: the captures' README says a phone's consultation starts with its
/// own Linkedid), and completes the transfer; 220's channel then carries the client call's
/// Linkedid. The consultation folds into the client call: no second register, the card moves.
#[test]
fn consultation_call_merges_into_the_client_call() {
    let client = Chan {
        name: "SIP/trunk-00000100",
        uid: "1800000100.1",
        linked: "1800000100.1",
        context: "from-trunk",
        exten: "8001231231",
        cid: "79991234567",
    };
    let p219 = Chan {
        name: "SIP/219-00000101",
        uid: "1800000100.2",
        linked: "1800000100.1",
        context: "from-internal",
        exten: "s",
        cid: "219",
    };
    let consult = Chan {
        name: "SIP/219-00000102",
        uid: "1800000110.3",
        linked: "1800000110.3",
        context: "from-internal",
        exten: "220",
        cid: "219",
    };
    let p220 = Chan {
        name: "SIP/220-00000103",
        uid: "1800000110.4",
        linked: "1800000110.3",
        context: "from-internal",
        exten: "s",
        cid: "220",
    };
    let s = 1_800_000_100_000u64;
    let b1 = [("BridgeUniqueid", "b1")];
    let b2 = [("BridgeUniqueid", "b2")];
    let msgs = vec![
        (client.ev("Newchannel", &[]), s),
        (p219.ev("Newchannel", &[]), s + 10),
        (
            client.dial("DialBegin", &p219, &[("DialString", "219")]),
            s + 10,
        ),
        (
            client.dial("DialEnd", &p219, &[("DialStatus", "ANSWER")]),
            s + 2_000,
        ),
        (p219.ev("BridgeEnter", &b1), s + 2_001),
        (client.ev("BridgeEnter", &b1), s + 2_001),
        // 219 puts the client on hold and calls 220 on a second line.
        (consult.ev("Newchannel", &[]), s + 10_000),
        (p220.ev("Newchannel", &[]), s + 10_010),
        (
            consult.dial("DialBegin", &p220, &[("DialString", "220")]),
            s + 10_010,
        ),
        (
            consult.dial("DialEnd", &p220, &[("DialStatus", "ANSWER")]),
            s + 12_000,
        ),
        (p220.ev("BridgeEnter", &b2), s + 12_001),
        (consult.ev("BridgeEnter", &b2), s + 12_001),
        // The transfer: 220 moves into the client's bridge with the client's Linkedid.
        (
            p220.ev_linked("BridgeLeave", client.linked, &b2),
            s + 15_000,
        ),
        (consult.ev("BridgeLeave", &b2), s + 15_000),
        (consult.ev("Hangup", &[("Cause", "16")]), s + 15_001),
        (p219.ev("BridgeLeave", &b1), s + 15_001),
        (p219.ev("Hangup", &[("Cause", "16")]), s + 15_002),
        (
            p220.ev_linked("BridgeEnter", client.linked, &b1),
            s + 15_003,
        ),
        (client.ev("BridgeLeave", &b1), s + 25_000),
        (client.ev("Hangup", &[("Cause", "16")]), s + 25_000),
        (
            p220.ev_linked("BridgeLeave", client.linked, &b1),
            s + 25_001,
        ),
        (
            p220.ev_linked("Hangup", client.linked, &[("Cause", "16")]),
            s + 25_002,
        ),
    ];
    let mut t = tracker();
    // Up to just after the transfer: the history is visible on the live call.
    let cut = msgs.len() - 4;
    let mut v = run(&mut t, &msgs[..cut]);
    let calls = t.active_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].employee.as_deref(), Some("220"));
    assert_eq!(
        calls[0].transfers,
        vec![callme::calls::Transfer {
            from: "219".into(),
            to: "220".into(),
            at_ms: s + 15_003
        }]
    );
    v.extend(run(&mut t, &msgs[cut..]));
    let a = actions(&v);
    assert!(matches!(a[0], Action::Register { .. }));
    assert_eq!(a[1], show("219"));
    let mut moved = a[2..4].to_vec();
    moved.sort_by_key(|x| format!("{x:?}"));
    assert_eq!(moved, vec![hide("219"), show("220")]);
    assert_eq!(a[4], finish("220", 23, Status::ANSWERED));
    assert_eq!(a.len(), 5, "{a:?}");
    assert!(v.iter().all(|(_, i)| i.call == "callme-1800000100.1"));
    assert!(t.is_empty(), "the consultation call was not orphaned");
}

/// Every capture of the driver's folder, by name: the thirteen calls.
fn all_captures(d: Driver) -> Vec<(String, Vec<(Message, u64)>)> {
    let mut names: Vec<String> = std::fs::read_dir(support::fixture_path(d.prefix()))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "ami"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 13, "{names:?}");
    names
        .into_iter()
        .map(|name| {
            let msgs = load(d, &name);
            (name, msgs)
        })
        .collect()
}

/// Intents grouped per call. Register start times are left out: the interleaving test shifts
/// the clock on purpose (durations, which are differences, must still match).
fn by_call(v: &[(u64, Intent)]) -> BTreeMap<String, Vec<Action>> {
    let mut m: BTreeMap<String, Vec<Action>> = BTreeMap::new();
    for (_, i) in v {
        let mut a = i.action.clone();
        if let Action::Register { started_ms, .. } = &mut a {
            *started_ms = 0;
        }
        m.entry(i.call.clone()).or_default().push(a);
    }
    m
}

fn solo_runs(caps: &[(String, Vec<(Message, u64)>)]) -> BTreeMap<String, Vec<Action>> {
    let mut all = BTreeMap::new();
    for (_, msgs) in caps {
        all.extend(by_call(&run(&mut tracker(), msgs)));
    }
    all
}

fn concatenated_captures_give_the_same_per_call_sequences(d: Driver) {
    let caps = all_captures(d);
    let solo = solo_runs(&caps);
    assert_eq!(
        solo.len(),
        11,
        "a b c d e h k pk v w x are monitored calls (f, l are not)"
    );
    let joined: Vec<(Message, u64)> = caps.iter().flat_map(|(_, m)| m.clone()).collect();
    let mut t = tracker();
    assert_eq!(by_call(&run(&mut t, &joined)), solo);
    assert!(t.is_empty());
}

/// All thirteen calls at once: each capture shifted to start 0.7 s after the previous one and the
/// events merged by time, so calls overlap and their events interleave. Each call still gets
/// exactly the steps (and durations) it gets alone.
fn interleaved_captures_do_not_cross_talk(d: Driver) {
    let caps = all_captures(d);
    let solo = solo_runs(&caps);
    let mut merged: Vec<(u64, usize, usize, Message)> = Vec::new();
    for (ci, (_, msgs)) in caps.iter().enumerate() {
        let t0 = msgs[0].1;
        for (mi, (m, at)) in msgs.iter().enumerate() {
            let shifted = 2_000_000_000_000 + (at - t0) + ci as u64 * 700;
            merged.push((shifted, ci, mi, m.clone()));
        }
    }
    merged.sort_by_key(|(at, ci, mi, _)| (*at, *ci, *mi));
    // Sanity: the calls really overlap.
    let first_other = merged.iter().position(|(_, ci, _, _)| *ci != 0).unwrap();
    let last_zero = merged.iter().rposition(|(_, ci, _, _)| *ci == 0).unwrap();
    assert!(first_other < last_zero, "captures must interleave");
    let msgs: Vec<(Message, u64)> = merged.into_iter().map(|(at, _, _, m)| (m, at)).collect();
    let mut t = tracker();
    let got = by_call(&run(&mut t, &msgs));
    assert_eq!(got, solo);
    assert!(t.is_empty());
}

fn legacy(name: &str) -> Vec<Action> {
    let msgs = capture(&format!("legacy/{name}"));
    let mut t = tracker();
    let v = run(&mut t, &msgs);
    assert!(t.is_empty(), "{name}: purged");
    assert!(
        v.iter().all(|(_, i)| i.call == "callme-1800000000.1"),
        "{name}: {v:?}"
    );
    actions(&v)
}

fn answered_219(a: &[Action]) {
    assert!(
        matches!(&a[0], Action::Register { line, .. } if line == "8001231231"),
        "{a:?}"
    );
    assert_eq!(a[1], show("219"));
    assert_eq!(a[2], finish("219", 5, Status::ANSWERED));
    assert_eq!(a.len(), 3, "{a:?}");
}

#[test]
fn asterisk_11_dial_and_bridge() {
    answered_219(&legacy("ast11_answered.ami"));
}

#[test]
fn asterisk_11_bridgepeer_only() {
    answered_219(&legacy("ast11_bridgepeer.ami"));
}

#[test]
fn asterisk_14_dial_and_link() {
    // 1.4 has no Dial End: the answer is known from Link.
    answered_219(&legacy("ast14_link.ami"));
}

#[test]
fn asterisk_11_no_answer() {
    let a = legacy("ast11_noanswer.ami");
    assert_eq!(a[1], show("219"));
    assert_eq!(a[2], hide("219"));
    assert_eq!(a[3], finish_responsible(0, Status::MISSED));
}
