//! What exists only for PJSIP: every capture of `tests/fixtures/pjsip/` (the same calls on
//! Asterisk 22.10.1 with chan_pjsip; see its README for what differs) against its chan_sip
//! twin, call for call. The expectations themselves are written once and run on both drivers
//! (`<test>::chan_sip`, `<test>::pjsip`) in `tracker_captures.rs`, `tracker_outbound.rs`,
//! `tracker_transfers.rs` and `tracker_phones.rs`.

mod support;

use std::collections::BTreeMap;

use callme::calls::{Action, Intent, MissedUser, TrackerConfig};
use support::drivers::{load, run_all, Driver};
use support::events::tracker_with;

const PJSIP: Driver = Driver::Pjsip;

/// The thirteen calls recorded on both drivers.
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

/// Intents grouped per call, register start times left out: each recording has its own.
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
