//! The PJSIP twins of the capture tests that are not yet folded into the chan_sip files, and
//! the tests that exist only for PJSIP (`every_pjsip_twin_gives_the_chan_sip_intents`). The
//! twins of `tracker_captures.rs` and of the capture tests of `tracker_outbound.rs` run there,
//! on both drivers (`<test>::pjsip`).
//!
//! The new captures (v, w, x, pk) run on both drivers in `tracker_phones.rs`.

mod support;

use std::collections::BTreeMap;

use callme::ami::Message;
use callme::calls::{Action, Intent, MissedUser, TrackerConfig};
use support::drivers::{load, run, run_all, Driver};
use support::events::{tracker, tracker_with};

const PJSIP: Driver = Driver::Pjsip;

// ---------------------------------------------------------------------------------------------
// Twins of tracker_transfers.rs

/// Both channels of the PJSIP a capture re-linked to an older, unknown Linkedid once they are
/// bridged: still one call under the same key.
#[test]
fn linkedid_change_mid_call_keeps_one_call() {
    let msgs = load(PJSIP, "a_inbound_answered");
    let bridged = msgs
        .iter()
        .position(|(m, _)| m.event() == Some("BridgeEnter"))
        .expect("bridge");
    let changed: Vec<(Message, u64)> = msgs
        .iter()
        .enumerate()
        .map(|(i, (m, at))| {
            if i <= bridged {
                return (m.clone(), *at);
            }
            let mut out = Message::new();
            for (k, v) in m.iter() {
                out.push(
                    k,
                    if k.ends_with("Linkedid") {
                        "1796230000.99"
                    } else {
                        v
                    },
                );
            }
            (out, *at)
        })
        .collect();
    let v = run_all(&mut tracker(), &changed);
    assert_eq!(v, run_all(&mut tracker(), &msgs), "same intents");
    assert_eq!(v.len(), 3);
    assert!(v.iter().all(|(_, i)| i.call == "callme-1796236398.0"));
}

const ALL: &[&str] = &[
    "a_inbound_answered",
    "b_inbound_noanswer",
    "c_inbound_busy",
    "d_inbound_blind_transfer_ami",
    "e_inbound_attended_transfer_ami",
    "f_click2call_answered",
    "h_inbound_recorded_mixmonitor",
    "k_inbound_queue_ringall",
    "l_internal_219_to_220",
    "pk_inbound_directed_pickup_221_from_220",
    "v_inbound_attended_transfer_refer_220_to_221",
    "w_outbound_desk_220_answered_carrier_hangs_up",
    "x_outbound_desk_221_noanswer",
];

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

fn solo_runs() -> BTreeMap<String, Vec<Action>> {
    let mut all = BTreeMap::new();
    for name in ALL {
        all.extend(by_call(&run(&mut tracker(), &load(PJSIP, name))));
    }
    all
}

#[test]
fn concatenated_captures_give_the_same_per_call_sequences() {
    let solo = solo_runs();
    assert_eq!(solo.len(), 11, "all but f and l are monitored calls");
    let joined: Vec<(Message, u64)> = ALL.iter().flat_map(|n| load(PJSIP, n)).collect();
    let mut t = tracker();
    assert_eq!(by_call(&run(&mut t, &joined)), solo);
    assert!(t.is_empty());
}

/// All thirteen PJSIP calls at once, each shifted to start 0.7 s after the previous one.
#[test]
fn interleaved_captures_do_not_cross_talk() {
    let solo = solo_runs();
    let mut merged: Vec<(u64, usize, usize, Message)> = Vec::new();
    for (ci, name) in ALL.iter().enumerate() {
        let msgs = load(PJSIP, name);
        let t0 = msgs[0].1;
        for (mi, (m, at)) in msgs.into_iter().enumerate() {
            merged.push((2_000_000_000_000 + (at - t0) + ci as u64 * 700, ci, mi, m));
        }
    }
    merged.sort_by_key(|(at, ci, mi, _)| (*at, *ci, *mi));
    let first_other = merged.iter().position(|(_, ci, _, _)| *ci != 0).unwrap();
    let last_zero = merged.iter().rposition(|(_, ci, _, _)| *ci == 0).unwrap();
    assert!(first_other < last_zero, "captures must interleave");
    let msgs: Vec<(Message, u64)> = merged.into_iter().map(|(at, _, _, m)| (m, at)).collect();
    let mut t = tracker();
    assert_eq!(by_call(&run(&mut t, &msgs)), solo);
    assert!(t.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Both drivers, call for call

/// Every capture and its twin give the same intents (call keys and start times aside), under
/// each configuration the capture tests use. The chan_sip side is pinned exactly by
/// tracker_captures.rs and tracker_phones.rs, so this pins the PJSIP side to the same answers.
#[test]
fn every_pjsip_twin_gives_the_chan_sip_intents() {
    let configs: Vec<(&str, TrackerConfig)> = vec![
        ("default", TrackerConfig::default()),
        (
            "show_cards_to 221",
            TrackerConfig {
                show_cards_to: vec!["221".into()],
                ..TrackerConfig::default()
            },
        ),
        (
            "missed_user last_rang",
            TrackerConfig {
                missed_user: MissedUser::LastRang,
                ..TrackerConfig::default()
            },
        ),
        (
            "lines 8001231233",
            TrackerConfig {
                lines: vec!["8001231233".into()],
                ..TrackerConfig::default()
            },
        ),
    ];
    let plain =
        |v: Vec<(u64, Intent)>| -> Vec<Action> { by_call(&v).into_values().flatten().collect() };
    for (what, cfg) in configs {
        for name in ALL {
            let sip = plain(run_all(
                &mut tracker_with(cfg.clone()),
                &load(Driver::ChanSip, name),
            ));
            let pj = plain(run_all(&mut tracker_with(cfg.clone()), &load(PJSIP, name)));
            let strip = |a: &[Action]| -> Vec<Action> {
                a.iter()
                    .cloned()
                    .map(|x| match x {
                        // The recording's name carries the capture's own date and Uniqueid.
                        Action::Attach { .. } => Action::Attach {
                            path: String::new(),
                        },
                        x => x,
                    })
                    .collect()
            };
            assert_eq!(strip(&pj), strip(&sip), "{name} ({what})");
        }
    }
}
