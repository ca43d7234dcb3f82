//! Every real capture replayed through the codec and the pure tracker, with the exact intents
//! expected from what happened on the PBX (see the `.md` beside each capture). Each test runs
//! on both drivers (`<test>::chan_sip` on `tests/fixtures/`, Asterisk 20.20.1, and
//! `<test>::pjsip` on its twin in `tests/fixtures/pjsip/`, Asterisk 22.10.1). Only a
//! capture's own identities differ between the twins (Linkedids, start times, recording
//! names): those branch on the driver; the intents, cards, durations and statuses are the same.

#[macro_use]
mod support;

use callme::calls::{Action, Direction, Intent, MissedUser, Status, Tracker, TrackerConfig};
use support::configs;
use support::drivers::{load, run_all, Driver};
use support::events::{actions, finish, finish_responsible, hide, show, tracker, tracker_with};

/// Replay a whole capture (nothing may be left in the tracker), returning each intent with the
/// capture-relative time (ms) it was produced at.
fn replay_with(t: &mut Tracker, d: Driver, name: &str) -> Vec<(u64, Intent)> {
    run_all(t, &load(d, name))
}

fn replay(d: Driver, name: &str) -> Vec<(u64, Intent)> {
    replay_with(&mut tracker(), d, name)
}

/// Check a register, return its start time.
fn assert_register(a: &Action, line: &str) -> u64 {
    match a {
        Action::Register {
            direction,
            phone,
            line: l,
            started_ms,
            employee,
        } => {
            assert_eq!(
                *employee, None,
                "inbound calls go to the CRM-responsible user"
            );
            assert_eq!(*direction, Direction::Inbound);
            assert_eq!(phone, "79991234567");
            assert_eq!(l, line);
            *started_ms
        }
        other => panic!("expected register, got {other:?}"),
    }
}

fn all_same_call(v: &[(u64, Intent)], key: &str) {
    for (_, i) in v {
        assert_eq!(i.call, key);
    }
}

/// The a capture's call: its Linkedid (the call key after the prefix) and its start, the
/// trunk channel's Newchannel per the timing sidecar. Each recording has its own.
fn a_call(d: Driver) -> (&'static str, u64) {
    match d {
        Driver::ChanSip => ("1795668285.0", 1_795_668_285_289),
        Driver::Pjsip => ("1796236398.0", 1_796_236_398_925),
    }
}

/// The h capture's recording name (`CallMeFULLFNAME`): it carries the recording's own date
/// and Uniqueid.
fn h_recording(d: Driver) -> &'static str {
    match d {
        Driver::ChanSip => "2026/11/26/in-79991234567-8001231232-20261126-044735-1795668455.26.wav",
        Driver::Pjsip => "2026/12/02/in-79991234567-8001231232-20261202-182616-1796235976.31.wav",
    }
}

on_both_drivers!(
    a_inbound_answered,
    b_inbound_noanswer,
    c_inbound_busy,
    k_queue_ringall_one_register_cards_for_all_hide_for_loser,
    l_internal_call_produces_nothing,
    d_blind_transfer_moves_the_card_and_last_one_wins,
    e_attended_transfer_consultation_is_not_a_transfer_until_it_completes,
    h_recording_is_attached_after_finish,
    unmonitored_line_is_ignored,
    show_cards_to_limits_cards_but_not_the_finish_user,
    missed_user_last_rang,
    system_name_prefixes_external_call_id,
    peers_outside_the_directory_get_no_card,
    h_source_freepbx_attaches_mixmonitor_filename_after_finish,
);

fn a_inbound_answered(d: Driver) {
    let v = replay(d, "a_inbound_answered");
    let a = actions(&v);
    assert_eq!(a.len(), 3, "{a:?}");
    let (linkedid, start) = a_call(d);
    let started = assert_register(&a[0], "8001231231");
    assert_eq!(started, start, "start = the trunk channel's Newchannel");
    assert_eq!(a[1], show("219"));
    // 219 answered at +2.51 s (PJSIP +2.52 s), the caller hung up at +7.51 s (+7.52 s): 5 s
    // of talk.
    assert_eq!(a[2], finish("219", 5, Status::ANSWERED));
    all_same_call(&v, &format!("callme-{linkedid}"));
    // The card opens while 219 rings, right at the call start (+0.50 s), not at the answer.
    assert!(
        v[1].0 - v[0].0 < 100,
        "show {} ms after register",
        v[1].0 - v[0].0
    );
}

fn b_inbound_noanswer(d: Driver) {
    // PJSIP: the callee leg of a Dial timeout hangs up with cause 0 (chan_sip: 16); the
    // status comes from DialStatus NOANSWER on both.
    let v = replay(d, "b_inbound_noanswer");
    let a = actions(&v);
    assert_register(&a[0], "8001231231");
    assert_eq!(a[1], show("219"));
    assert_eq!(a[2], hide("219"), "the phone stopped ringing unanswered");
    assert_eq!(a[3], finish_responsible(0, Status::MISSED));
    assert_eq!(a.len(), 4);
}

fn c_inbound_busy(d: Driver) {
    let v = replay(d, "c_inbound_busy");
    let a = actions(&v);
    assert_register(&a[0], "8001231231");
    assert_eq!(a[1], show("219"));
    assert_eq!(a[2], hide("219"));
    assert_eq!(a[3], finish_responsible(0, Status::BUSY));
    assert_eq!(a.len(), 4);
}

fn k_queue_ringall_one_register_cards_for_all_hide_for_loser(d: Driver) {
    let v = replay(d, "k_inbound_queue_ringall");
    let a = actions(&v);
    assert_register(&a[0], "8001231234");
    assert_eq!(&a[1..4], &[show("220"), show("221"), hide("220")]);
    // 221 answered at +3.51 s, caller hung up at +7.71 s (AgentComplete TalkTime=4).
    assert_eq!(a[4], finish("221", 4, Status::ANSWERED));
    assert_eq!(a.len(), 5, "{a:?}");
    assert_eq!(
        a.iter()
            .filter(|x| matches!(x, Action::Register { .. }))
            .count(),
        1
    );
}

fn l_internal_call_produces_nothing(d: Driver) {
    assert!(replay(d, "l_internal_219_to_220").is_empty());
}

fn d_blind_transfer_moves_the_card_and_last_one_wins(d: Driver) {
    let a = actions(&replay(d, "d_inbound_blind_transfer_ami"));
    assert_register(&a[0], "8001231231");
    assert_eq!(a[1], show("219"));
    // At the transfer: 219 is out, 220 rings.
    let mut at_transfer = a[2..4].to_vec();
    at_transfer.sort_by_key(|x| format!("{x:?}"));
    assert_eq!(at_transfer, vec![hide("219"), show("220")]);
    // First answer +2.51 s to the end +12.52 s.
    assert_eq!(a[4], finish("220", 10, Status::ANSWERED));
    assert_eq!(a.len(), 5, "no show or hide after the finish: {a:?}");
}

fn e_attended_transfer_consultation_is_not_a_transfer_until_it_completes(d: Driver) {
    let v = replay(d, "e_inbound_attended_transfer_ami");
    let a = actions(&v);
    assert_register(&a[0], "8001231231");
    assert_eq!(a[1], show("219"));
    assert_eq!(a[2], show("220"), "220's phone rings for the consultation");
    assert_eq!(a[3], hide("219"), "219 is out once the transfer completes");
    // 219 hung up at +10.90 s (PJSIP +10.91 s): the hide comes then, not when 220 answered
    // the consultation.
    assert!(v[3].0 >= 10_000, "hide at {} ms", v[3].0);
    // 219 answered at +2.51 s (the first answer counts), the caller hung up at +15.90 s.
    assert_eq!(a[4], finish("220", 13, Status::ANSWERED));
    assert_eq!(a.len(), 5, "{a:?}");
}

fn h_recording_is_attached_after_finish(d: Driver) {
    let a = actions(&replay(d, "h_inbound_recorded_mixmonitor"));
    assert_register(&a[0], "8001231232");
    assert_eq!(a[1], show("219"));
    // 219 answered at +2.51 s, the caller hung up at +7.51 s.
    assert_eq!(a[2], finish("219", 5, Status::ANSWERED));
    assert_eq!(
        a[3],
        Action::Attach {
            path: h_recording(d).into()
        },
        "CallMeFULLFNAME wins over MIXMONITOR_FILENAME"
    );
    assert_eq!(a.len(), 4);
}

fn unmonitored_line_is_ignored(d: Driver) {
    let mut t = tracker_with(TrackerConfig {
        lines: vec!["8009999999".into()],
        ..TrackerConfig::default()
    });
    assert!(replay_with(&mut t, d, "a_inbound_answered").is_empty());
    let mut t = tracker_with(TrackerConfig {
        lines: vec!["8001231234".into()],
        ..TrackerConfig::default()
    });
    assert_eq!(replay_with(&mut t, d, "k_inbound_queue_ringall").len(), 5);
}

fn show_cards_to_limits_cards_but_not_the_finish_user(d: Driver) {
    let mut t = tracker_with(TrackerConfig {
        show_cards_to: vec!["221".into()],
        ..TrackerConfig::default()
    });
    let a = actions(&replay_with(&mut t, d, "k_inbound_queue_ringall"));
    assert_register(&a[0], "8001231234");
    assert_eq!(a[1], show("221"));
    assert_eq!(a[2], finish("221", 4, Status::ANSWERED));
    assert_eq!(a.len(), 3, "{a:?}");
}

fn missed_user_last_rang(d: Driver) {
    let mut t = tracker_with(TrackerConfig {
        missed_user: MissedUser::LastRang,
        ..TrackerConfig::default()
    });
    let a = actions(&replay_with(&mut t, d, "b_inbound_noanswer"));
    assert_eq!(a[3], finish("219", 0, Status::MISSED));
}

fn system_name_prefixes_external_call_id(d: Driver) {
    let mut t = tracker_with(TrackerConfig {
        system_name: "pbx2".into(),
        ..TrackerConfig::default()
    });
    let v = replay_with(&mut t, d, "a_inbound_answered");
    all_same_call(&v, &format!("pbx2-{}", a_call(d).0));
}

fn peers_outside_the_directory_get_no_card(d: Driver) {
    let mut t = Tracker::new(TrackerConfig::default());
    t.set_employees(["220".to_string()]);
    let a = actions(&replay_with(&mut t, d, "k_inbound_queue_ringall"));
    // 221 is not a Bitrix24 user: no card, and its answer is not an employee's answer.
    assert_eq!(a[1], show("220"));
    assert_eq!(a[2], hide("220"));
    assert!(matches!(a[3], Action::Finish { .. }));
}

fn h_source_freepbx_attaches_mixmonitor_filename_after_finish(d: Driver) {
    // `[recording] source = freepbx` maps to MIXMONITOR_FILENAME only, so CallMeFULLFNAME
    // (set earlier in the capture) is ignored. The two PBXs keep their spool under different
    // roots (astdata, astdata22).
    let text = configs::offline("https://p.bitrix24.ru/rest/1/c/");
    let cfg = configs::parse(&configs::set(&text, "recording", "source", "freepbx"));
    let mut t = tracker_with(TrackerConfig::from_config(&cfg));
    let a = actions(&replay_with(&mut t, d, "h_inbound_recorded_mixmonitor"));
    let finish = a
        .iter()
        .position(|x| matches!(x, Action::Finish { .. }))
        .expect("a finish");
    let root = match d {
        Driver::ChanSip => "/srv/pbx/astdata",
        Driver::Pjsip => "/srv/pbx/astdata22",
    };
    assert_eq!(
        a[finish + 1..],
        [Action::Attach {
            path: format!("{root}/var/spool/asterisk/monitor/{}", h_recording(d))
        }]
    );
    assert!(a[..finish]
        .iter()
        .all(|x| !matches!(x, Action::Attach { .. })));
}
