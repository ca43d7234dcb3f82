//! Every real capture replayed through the codec and the pure tracker, with the exact intents
//! expected from what happened on the PBX (see the `.md` beside each capture).

mod support;

use callme::calls::{Action, Direction, Intent, Status, Tracker, TrackerConfig};
use support::configs;
use support::events::{actions, finish, finish_responsible, hide, show, tracker, tracker_with};

fn fixture(name: &str) -> callme::replay::Capture {
    let cap = support::events::load_capture(&format!("{name}.ami"));
    assert_eq!(cap.clock, "timing sidecar");
    cap
}

/// Replay, returning each intent with the capture-relative time (ms) it was produced at.
fn replay_with(t: &mut Tracker, name: &str) -> Vec<(u64, Intent)> {
    let cap = fixture(name);
    let t0 = cap.messages[0].at_ms;
    let mut out = Vec::new();
    for m in &cap.messages {
        for i in t.handle_vec(&m.msg, m.at_ms) {
            out.push((m.at_ms - t0, i));
        }
    }
    assert!(t.is_empty(), "{name}: finished calls must be purged");
    assert_eq!(t.channel_count(), 0, "{name}: channels must be purged");
    out
}

fn replay(name: &str) -> Vec<(u64, Intent)> {
    replay_with(&mut tracker(), name)
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

#[test]
fn a_inbound_answered() {
    let v = replay("a_inbound_answered");
    let a = actions(&v);
    assert_eq!(a.len(), 3, "{a:?}");
    let started = assert_register(&a[0], "8001231231");
    assert_eq!(
        started, 1_795_668_285_289,
        "start = the trunk channel's Newchannel"
    );
    assert_eq!(a[1], show("219"));
    // 219 answered at +2.51 s, the caller hung up at +7.51 s: 5 s of talk.
    assert_eq!(a[2], finish("219", 5, Status::ANSWERED));
    all_same_call(&v, "callme-1795668285.0");
    // The card opens while 219 rings, right at the call start (+0.50 s), not at the answer.
    assert!(
        v[1].0 - v[0].0 < 100,
        "show {} ms after register",
        v[1].0 - v[0].0
    );
}

#[test]
fn b_inbound_noanswer() {
    let v = replay("b_inbound_noanswer");
    let a = actions(&v);
    assert_register(&a[0], "8001231231");
    assert_eq!(a[1], show("219"));
    assert_eq!(a[2], hide("219"), "the phone stopped ringing unanswered");
    assert_eq!(a[3], finish_responsible(0, Status::MISSED));
    assert_eq!(a.len(), 4);
}

#[test]
fn c_inbound_busy() {
    let v = replay("c_inbound_busy");
    let a = actions(&v);
    assert_register(&a[0], "8001231231");
    assert_eq!(a[1], show("219"));
    assert_eq!(a[2], hide("219"));
    assert_eq!(a[3], finish_responsible(0, Status::BUSY));
    assert_eq!(a.len(), 4);
}

#[test]
fn k_queue_ringall_one_register_cards_for_all_hide_for_loser() {
    let v = replay("k_inbound_queue_ringall");
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

#[test]
fn l_internal_call_produces_nothing() {
    assert!(replay("l_internal_219_to_220").is_empty());
}

#[test]
fn d_blind_transfer_moves_the_card_and_last_one_wins() {
    let a = actions(&replay("d_inbound_blind_transfer_ami"));
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

#[test]
fn e_attended_transfer_consultation_is_not_a_transfer_until_it_completes() {
    let v = replay("e_inbound_attended_transfer_ami");
    let a = actions(&v);
    assert_register(&a[0], "8001231231");
    assert_eq!(a[1], show("219"));
    assert_eq!(a[2], show("220"), "220's phone rings for the consultation");
    assert_eq!(a[3], hide("219"), "219 is out once the transfer completes");
    // 219 hung up at +10.90 s: the hide comes then, not when 220 answered the consultation.
    assert!(v[3].0 >= 10_000, "hide at {} ms", v[3].0);
    // 219 answered at +2.51 s (the first answer counts), the caller hung up at +15.90 s.
    assert_eq!(a[4], finish("220", 13, Status::ANSWERED));
    assert_eq!(a.len(), 5, "{a:?}");
}

#[test]
fn h_recording_is_attached_after_finish() {
    let a = actions(&replay("h_inbound_recorded_mixmonitor"));
    assert_register(&a[0], "8001231232");
    assert_eq!(a[1], show("219"));
    // 219 answered at +2.51 s, the caller hung up at +7.51 s.
    assert_eq!(a[2], finish("219", 5, Status::ANSWERED));
    assert_eq!(
        a[3],
        Action::Attach {
            path: "2026/11/26/in-79991234567-8001231232-20261126-044735-1795668455.26.wav".into()
        },
        "CallMeFULLFNAME wins over MIXMONITOR_FILENAME"
    );
    assert_eq!(a.len(), 4);
}

#[test]
fn unmonitored_line_is_ignored() {
    let mut t = Tracker::new(TrackerConfig {
        lines: vec!["8009999999".into()],
        ..TrackerConfig::default()
    });
    assert!(replay_with(&mut t, "a_inbound_answered").is_empty());
    let mut t = Tracker::new(TrackerConfig {
        lines: vec!["8001231234".into()],
        ..TrackerConfig::default()
    });
    assert_eq!(replay_with(&mut t, "k_inbound_queue_ringall").len(), 5);
}

#[test]
fn show_cards_to_limits_cards_but_not_the_finish_user() {
    let mut t = Tracker::new(TrackerConfig {
        show_cards_to: vec!["221".into()],
        ..TrackerConfig::default()
    });
    let a = actions(&replay_with(&mut t, "k_inbound_queue_ringall"));
    assert_register(&a[0], "8001231234");
    assert_eq!(a[1], show("221"));
    assert_eq!(a[2], finish("221", 4, Status::ANSWERED));
    assert_eq!(a.len(), 3, "{a:?}");
}

#[test]
fn missed_user_last_rang() {
    let mut t = Tracker::new(TrackerConfig {
        missed_user: callme::calls::MissedUser::LastRang,
        ..TrackerConfig::default()
    });
    let a = actions(&replay_with(&mut t, "b_inbound_noanswer"));
    assert_eq!(a[3], finish("219", 0, Status::MISSED));
}

#[test]
fn system_name_prefixes_external_call_id() {
    let mut t = Tracker::new(TrackerConfig {
        system_name: "pbx2".into(),
        ..TrackerConfig::default()
    });
    let v = replay_with(&mut t, "a_inbound_answered");
    all_same_call(&v, "pbx2-1795668285.0");
}

#[test]
fn peers_outside_the_directory_get_no_card() {
    let mut t = Tracker::new(TrackerConfig::default());
    t.set_employees(["220".to_string()]);
    let a = actions(&replay_with(&mut t, "k_inbound_queue_ringall"));
    // 221 is not a Bitrix24 user: no card, and its answer is not an employee's answer.
    assert_eq!(a[1], show("220"));
    assert_eq!(a[2], hide("220"));
    assert!(matches!(a[3], Action::Finish { .. }));
}

#[test]
fn h_source_freepbx_attaches_mixmonitor_filename_after_finish() {
    // `[recording] source = freepbx` maps to MIXMONITOR_FILENAME only, so CallMeFULLFNAME
    // (set earlier in the capture) is ignored.
    let text = configs::offline("https://p.bitrix24.ru/rest/1/c/");
    let cfg = configs::parse(&configs::set(&text, "recording", "source", "freepbx"));
    let mut t = tracker_with(TrackerConfig::from_config(&cfg));
    let a = actions(&replay_with(&mut t, "h_inbound_recorded_mixmonitor"));
    let finish = a
        .iter()
        .position(|x| matches!(x, Action::Finish { .. }))
        .expect("a finish");
    assert_eq!(
        a[finish + 1..],
        [Action::Attach {
            path: "/srv/pbx/astdata/var/spool/asterisk/monitor/2026/11/26/\
                   in-79991234567-8001231232-20261126-044735-1795668455.26.wav"
                .into()
        }]
    );
    assert!(a[..finish]
        .iter()
        .all(|x| !matches!(x, Action::Attach { .. })));
}
