//! Real phones on real PBXs (issue #15), each on Asterisk 20 with chan_sip and on its Asterisk 22
//! PJSIP twin: desk-phone outbound (w, x), the phone's own attended transfer (v, REFER with
//! Replaces), call pickup (pk), and variants of them built by editing those captures. Each
//! variant says which real behaviour it models and where that is documented.

#[macro_use]
mod support;

use callme::ami::Message;
use callme::calls::{Action, Direction, Status, TrackerConfig};
use support::drivers::{channels, is, load, rename, run, run_all, set, time_of, Driver};
use support::events::{actions, finish, hide, show, tracker, tracker_with};

const V: &str = "v_inbound_attended_transfer_refer_220_to_221";
const W: &str = "w_outbound_desk_220_answered_carrier_hangs_up";
const X: &str = "x_outbound_desk_221_noanswer";
const PK: &str = "pk_inbound_directed_pickup_221_from_220";
const K: &str = "k_inbound_queue_ringall";

/// `EXTERNAL_CALL_ID` of each capture's call: the system name and the first channel's Linkedid.
fn key(d: Driver, capture: &str) -> &'static str {
    match (d, capture) {
        (Driver::ChanSip, V) => "callme-1796235975.76",
        (Driver::ChanSip, W) => "callme-1796236002.80",
        (Driver::ChanSip, X) => "callme-1796236014.82",
        (Driver::ChanSip, PK) => "callme-1796237651.102",
        (Driver::Pjsip, V) => "callme-1796236411.2",
        (Driver::Pjsip, W) => "callme-1796236438.6",
        (Driver::Pjsip, X) => "callme-1796236450.8",
        (Driver::Pjsip, PK) => "callme-1796237666.100",
        _ => panic!("no key for {capture}"),
    }
}

/// The call starts with its first channel.
fn started(msgs: &[(Message, u64)]) -> u64 {
    msgs.iter()
        .find(|(m, _)| m.event() == Some("Newchannel"))
        .expect("a channel")
        .1
}

fn inbound(msgs: &[(Message, u64)], phone: &str, line: &str) -> Action {
    Action::Register {
        direction: Direction::Inbound,
        phone: phone.into(),
        line: line.into(),
        started_ms: started(msgs),
        employee: None,
    }
}

fn outbound(msgs: &[(Message, u64)], phone: &str, employee: &str) -> Action {
    Action::Register {
        direction: Direction::Outbound,
        phone: phone.into(),
        line: String::new(),
        started_ms: started(msgs),
        employee: Some(employee.into()),
    }
}

fn near(at: u64, want: u64) -> bool {
    at.abs_diff(want) <= 50
}

// ---------------------------------------------------------------------------------------------
// w, x: desk-phone outbound

/// 220 dials 79997654321 from the desk phone; answered after 3 s, the called party hangs up
/// 4 s later. Registered (TYPE=1) under 220 itself, not under the CRM owner of the number.
fn w_desk_outbound_answered(d: Driver) {
    let msgs = load(d, W);
    let v = run_all(&mut tracker(), &msgs);
    assert_eq!(
        actions(&v),
        vec![
            outbound(&msgs, "79997654321", "220"),
            show("220"),
            finish("220", 4, Status::ANSWERED),
        ]
    );
    assert!(v.iter().all(|(_, i)| i.call == key(d, W)));
    assert!(
        v[1].0 < 1_000,
        "the card opens when 220 dials: {} ms",
        v[1].0
    );
}

/// 221 dials 79991234567 (a CRM contact owned by someone else), nobody answers, 221 gives up
/// after 8 s: registered and finished under 221, 304. On PJSIP both legs hang up with cause
/// 127; the status comes from `DialStatus: CANCEL`.
fn x_desk_outbound_not_answered(d: Driver) {
    let msgs = load(d, X);
    let v = run_all(&mut tracker(), &msgs);
    assert_eq!(
        actions(&v),
        vec![
            outbound(&msgs, "79991234567", "221"),
            show("221"),
            finish("221", 0, Status::MISSED),
        ]
    );
    assert!(v.iter().all(|(_, i)| i.call == key(d, X)));
}

/// A desk-phone call from a phone outside `show_cards_to` is still registered and finished
/// under that employee; only the card is left out.
fn w_desk_outbound_without_card(d: Driver) {
    let msgs = load(d, W);
    let mut t = tracker_with(TrackerConfig {
        show_cards_to: vec!["221".into()],
        ..TrackerConfig::default()
    });
    assert_eq!(
        actions(&run_all(&mut t, &msgs)),
        vec![
            outbound(&msgs, "79997654321", "220"),
            finish("220", 4, Status::ANSWERED),
        ]
    );
}

on_both_drivers!(
    w_desk_outbound_answered,
    x_desk_outbound_not_answered,
    w_desk_outbound_without_card,
);

// ---------------------------------------------------------------------------------------------
// v: the phone's own attended transfer

/// The v capture's channels, by their part in the call (names differ per driver).
struct VChans {
    trunk: String,
    /// The transferer's leg that answered the client.
    answered: String,
    /// The transferer's new call to the target (the consultation; its own Linkedid).
    consult: String,
    consult_uid: String,
    consult_linkedid: String,
    target: String,
}

fn v_chans(msgs: &[(Message, u64)]) -> VChans {
    let ch = channels(msgs);
    assert_eq!(ch.len(), 4, "{ch:?}");
    assert!(ch[0].0.contains("/trunk-"), "{ch:?}");
    assert_ne!(ch[2].2, ch[0].2, "the consultation has its own Linkedid");
    VChans {
        trunk: ch[0].0.clone(),
        answered: ch[1].0.clone(),
        consult: ch[2].0.clone(),
        consult_uid: ch[2].1.clone(),
        consult_linkedid: ch[2].2.clone(),
        target: ch[3].0.clone(),
    }
}

/// 220 answers, holds, calls 221, 221 answers, 220 presses Transfer (REFER with Replaces).
/// 220's card goes and 221's comes at the transfer, not before (the consultation is a call of
/// its own until then); the call finishes under 221 with the talk time from 220's answer.
fn v_refer_transfer_moves_the_call(d: Driver) {
    let msgs = load(d, V);
    let v = run_all(&mut tracker(), &msgs);
    assert_eq!(
        actions(&v),
        vec![
            inbound(&msgs, "79997654321", "8001231233"),
            show("220"),
            hide("220"),
            show("221"),
            finish("221", 19, Status::ANSWERED),
        ]
    );
    assert!(v.iter().all(|(_, i)| i.call == key(d, V)));
    let transfer = time_of(&msgs, |m| m.event() == Some("AttendedTransfer"));
    assert!(v[1].0 < 1_000, "220 rings at the start: {} ms", v[1].0);
    assert!(near(v[2].0, transfer) && near(v[3].0, transfer), "{v:?}");
}

/// While the call is up after the transfer, `/status` shows 221 talking and the hand-over.
fn v_transfer_history(d: Driver) {
    let msgs = load(d, V);
    let c = v_chans(&msgs);
    let end = msgs
        .iter()
        .position(|(m, _)| is(m, "HangupRequest", &c.target))
        .expect("target hangs up");
    let mut t = tracker();
    run(&mut t, &msgs[..end]);
    let calls = t.active_calls();
    assert_eq!(
        calls.len(),
        1,
        "the consultation is part of the client's call"
    );
    assert_eq!(calls[0].call, key(d, V));
    assert_eq!(calls[0].employee.as_deref(), Some("221"));
    let hist: Vec<(&str, &str)> = calls[0]
        .transfers
        .iter()
        .map(|x| (x.from.as_str(), x.to.as_str()))
        .collect();
    assert_eq!(hist, vec![("220", "221")]);
}

/// Edit of v: after the transfer the *client* hangs up first, 3 s earlier than 221 did.
/// Models a caller's BYE as in a_inbound_answered (a_inbound_answered.md: the trunk's
/// HangupRequest, BridgeLeave and Hangup come first, then the phone's leg goes): from 221's
/// HangupRequest on, the trunk's messages are moved before 221's.
fn v_client_hangs_up_after_transfer(d: Driver) {
    let msgs = load(d, V);
    let c = v_chans(&msgs);
    let cut = msgs
        .iter()
        .position(|(m, _)| is(m, "HangupRequest", &c.target))
        .expect("target hangs up");
    let (head, tail) = msgs.split_at(cut);
    let (client, rest): (Vec<_>, Vec<_>) = tail
        .iter()
        .map(|(m, at)| (m.clone(), at - 3_000))
        .partition(|(m, _)| m.get("Channel") == Some(c.trunk.as_str()));
    let edited: Vec<(Message, u64)> = head.iter().cloned().chain(client).chain(rest).collect();
    assert_eq!(
        actions(&run_all(&mut tracker(), &edited)),
        vec![
            inbound(&msgs, "79997654321", "8001231233"),
            show("220"),
            hide("220"),
            show("221"),
            finish("221", 16, Status::ANSWERED),
        ]
    );
}

/// The client's hang-up at the end of an abandoned consultation: 220 takes the client off
/// hold (its real `Unhold`) 2 s after `at`, and the client hangs up 5 s after `at` (the
/// trunk's and 220's real BridgeLeave and Hangup of the original bridge).
fn resume_and_hang_up(msgs: &[(Message, u64)], c: &VChans, at: u64) -> Vec<(Message, u64)> {
    let find = |pred: &dyn Fn(&Message) -> bool| {
        msgs.iter()
            .find(|(m, _)| pred(m))
            .map(|(m, _)| m.clone())
            .expect("message in v")
    };
    let first_bridge = find(&|m| is(m, "BridgeEnter", &c.answered))
        .get("BridgeUniqueid")
        .expect("bridge")
        .to_string();
    let leave = |ch: &str| {
        find(&|m| is(m, "BridgeLeave", ch) && m.get("BridgeUniqueid") == Some(&first_bridge))
    };
    vec![
        (find(&|m| is(m, "Unhold", &c.answered)), at + 2_000),
        (leave(&c.trunk), at + 5_000),
        (find(&|m| is(m, "Hangup", &c.trunk)), at + 5_000),
        (leave(&c.answered), at + 5_000),
        (find(&|m| is(m, "Hangup", &c.answered)), at + 5_000),
    ]
}

/// The consultation's own channels hanging up at `at`, with the Linkedid they had before any
/// transfer (the consultation's).
fn consultation_ends(msgs: &[(Message, u64)], c: &VChans, at: u64) -> Vec<(Message, u64)> {
    let relinked = |m: &Message| set(m, &[("Linkedid", &c.consult_linkedid)]);
    msgs.iter()
        .filter(|(m, _)| is(m, "Hangup", &c.target) || is(m, "Hangup", &c.consult))
        .map(|(m, _)| (relinked(m), at))
        .collect()
}

/// Edit of v: 220 cancels the consultation while 221 still rings, and resumes the client.
/// Models the lab's "abandoned consultation (hold, call 220, cancel, resume)": a separate
/// internal call with its own Linkedid and no transfer events (CAPTURES.md, "More behaviours
/// seen on the lab PBX"). The call stays with 220; 221 never gets a card.
fn v_consultation_cancelled(d: Driver) {
    let msgs = load(d, V);
    let c = v_chans(&msgs);
    let answer = msgs
        .iter()
        .position(|(m, _)| {
            m.event() == Some("DialEnd") && m.get("DestChannel") == Some(c.target.as_str())
        })
        .expect("the consultation's DialEnd");
    let at = msgs[answer].1;
    let mut edited: Vec<(Message, u64)> = msgs[..answer].to_vec();
    edited.push((set(&msgs[answer].0, &[("DialStatus", "CANCEL")]), at));
    edited.extend(consultation_ends(&msgs, &c, at));
    edited.extend(resume_and_hang_up(&msgs, &c, at));
    let t0 = msgs[0].1;
    let answered_220 = time_of(&msgs, |m| {
        m.event() == Some("DialEnd") && m.get("DestChannel") == Some(c.answered.as_str())
    });
    let talk = (at - t0 + 5_000 - answered_220 + 500) / 1_000;
    assert_eq!(
        talk, 13,
        "220 answered at ~3.5 s, the client hangs up at ~16.5 s"
    );
    assert_eq!(
        actions(&run_all(&mut tracker(), &edited)),
        vec![
            inbound(&msgs, "79997654321", "8001231233"),
            show("220"),
            finish("220", talk, Status::ANSWERED),
        ]
    );
}

/// Edit of v: 221 answers the consultation, then 220 hangs it up instead of transferring
/// (the consultation's real hangups, moved to where the REFER was) and resumes the client.
/// The "consultation abandoned" case: the call stays with 220 and 221 gets no card.
fn v_consultation_answered_then_abandoned(d: Driver) {
    let msgs = load(d, V);
    let c = v_chans(&msgs);
    let bridged = msgs
        .iter()
        .position(|(m, _)| is(m, "BridgeEnter", &c.target))
        .expect("consultation bridge");
    // The transfer starts with the first thing that happens to the client or the held leg.
    let cut = bridged
        + msgs[bridged..]
            .iter()
            .position(|(m, _)| {
                let ch = m.get("Channel").unwrap_or("");
                (ch == c.trunk || ch == c.answered) && !m.event().unwrap_or("").starts_with("RTCP")
            })
            .expect("the transfer");
    let at = msgs[cut].1;
    let mut edited: Vec<(Message, u64)> = msgs[..cut].to_vec();
    edited.extend(consultation_ends(&msgs, &c, at));
    edited.extend(resume_and_hang_up(&msgs, &c, at));
    let v = run_all(&mut tracker(), &edited);
    let a = actions(&v);
    assert_eq!(a.len(), 3, "{a:?}");
    assert_eq!(a[0], inbound(&msgs, "79997654321", "8001231233"));
    assert_eq!(a[1], show("220"));
    // 220 answered at ~3.5 s, the REFER point is ~15.5 s, the client hangs up 5 s later.
    assert_eq!(a[2], finish("220", 17, Status::ANSWERED));
}

/// Edit of v with other phones: 219 answers and transfers to 220 (every `…/220-…` channel
/// renamed `…/219-…` and `…/221-…` renamed `…/220-…`, caller IDs and extensions with them).
/// Nothing in the tracker knows the lab's numbers.
fn v_transfer_between_other_phones(d: Driver) {
    let msgs: Vec<(Message, u64)> = load(d, V)
        .iter()
        .map(|(m, at)| (rename(m, &[("220", "219"), ("221", "220")]), *at))
        .collect();
    assert_eq!(
        actions(&run_all(&mut tracker(), &msgs)),
        vec![
            inbound(&msgs, "79997654321", "8001231233"),
            show("219"),
            hide("219"),
            show("220"),
            finish("220", 19, Status::ANSWERED),
        ]
    );
}

/// `base` (a call whose client, on `trunk`, talks to the employee on `agent`) up to the
/// client's hang-up, then v's hold, consultation and REFER re-cast onto it: the agent is the
/// transferer and `target` the phone it hands the client to. v's trunk, its 220 leg and its
/// first bridge become `base`'s trunk, agent and bridge (its Linkedid `base`'s); v's
/// consultation gets fresh channels; v's part starts 1 s after the last event kept.
fn transfer_spliced(
    d: Driver,
    base: &[(Message, u64)],
    trunk: &(String, String, String),
    agent: &(String, String, String),
    target: &str,
) -> Vec<(Message, u64)> {
    let v = load(d, V);
    let vc = v_chans(&v);
    let vch = channels(&v);
    let agent_ext = callme::calls::channel::peer(&agent.0).expect("agent's number");
    let end = base
        .iter()
        .position(|(m, _)| is(m, "HangupRequest", &trunk.0))
        .expect("the client hangs up");
    let bridge_of = |msgs: &[(Message, u64)], ch: &str| {
        msgs.iter()
            .find(|(m, _)| is(m, "BridgeEnter", ch))
            .and_then(|(m, _)| m.get("BridgeUniqueid"))
            .expect("bridged")
            .to_string()
    };
    let (base_bridge, v_bridge) = (bridge_of(base, &trunk.0), bridge_of(&v, &vc.answered));
    let tech = d.tech();
    let consult = format!("{tech}/{agent_ext}-000000f0");
    let target_chan = format!("{tech}/{target}-000000f1");
    let pairs: Vec<(&str, &str)> = vec![
        (&vch[0].0, &trunk.0),
        (&vch[0].1, &trunk.1),
        (&vch[1].0, &agent.0),
        (&vch[1].1, &agent.1),
        (&vc.consult, &consult),
        (&vc.consult_uid, "1800000000.240"),
        (&vch[3].0, &target_chan),
        (&vch[3].1, "1800000000.241"),
        (&v_bridge, &base_bridge),
        ("220", agent_ext),
        ("221", target),
    ];
    // v's client Linkedid is its trunk's Uniqueid; `base`'s need not be (w: the phone's).
    let relink = |m: &Message| {
        let mut out = Message::new();
        for (k, val) in m.iter() {
            let linked = k.ends_with("Linkedid") && val == trunk.1;
            out.push(k, if linked { &trunk.2 } else { val });
        }
        out
    };
    let hold = v
        .iter()
        .position(|(m, _)| is(m, "Hold", &vc.answered))
        .expect("220 holds");
    let shift = base[end - 1].1 + 1_000;
    let mut edited: Vec<(Message, u64)> = base[..end].to_vec();
    edited.extend(
        v[hold..]
            .iter()
            .map(|(m, at)| (relink(&rename(m, &pairs)), at - v[hold].1 + shift)),
    );
    edited
}

/// Talk seconds of a spliced call: from the client's answered dial to the client's hang-up.
fn talk(edited: &[(Message, u64)], trunk: &str) -> u64 {
    let answered = time_of(edited, |m| {
        m.event() == Some("DialEnd") && m.get("DialStatus") == Some("ANSWER")
    });
    let gone = time_of(edited, |m| is(m, "Hangup", trunk));
    (gone - answered + 500) / 1_000
}

/// A queue call handed on by its agent to another queue member: k (the ring-all queue 220+221,
/// 221 answers, 220's card hidden), then 221 transfers to 220, the member whose ring was
/// cancelled ([`transfer_spliced`]). Models a queue agent's Transfer key: the REFER/Replaces
/// events of v (v_inbound_attended_transfer_refer_220_to_221.md) on a call that came through
/// a queue (k_inbound_queue_ringall.md).
fn queue_call_transferred_to_another_member(d: Driver) {
    let k = load(d, K);
    let kc = channels(&k);
    let (trunk, agent) = (&kc[0], &kc[2]);
    assert!(agent.0.contains("/221-"), "{kc:?}");
    let edited = transfer_spliced(d, &k, trunk, agent, "220");
    let out = run_all(&mut tracker(), &edited);
    let a = actions(&out);
    assert!(matches!(&a[0], Action::Register { line, .. } if line == "8001231234"));
    assert_eq!(
        a[1..],
        [
            show("220"),
            show("221"),
            hide("220"),
            hide("221"),
            show("220"),
            finish("220", talk(&edited, &trunk.0), Status::ANSWERED),
        ]
    );
    assert!(out.iter().all(|(_, i)| i.call == out[0].1.call));
}

/// A desk-phone outbound call handed on: w (220 dials out, the carrier answers), then 220
/// transfers the called party to 221 ([`transfer_spliced`]). Models the Transfer key on an
/// outbound call: v's REFER/Replaces events on w's call. Registered under 220 who dialled,
/// finished under 221 who talked last.
fn outbound_call_transferred(d: Driver) {
    let w = load(d, W);
    let wc = channels(&w);
    let (agent, trunk) = (&wc[0], &wc[1]);
    assert!(trunk.0.contains("/trunk-"), "{wc:?}");
    let edited = transfer_spliced(d, &w, trunk, agent, "221");
    let out = run_all(&mut tracker(), &edited);
    assert_eq!(
        actions(&out),
        vec![
            outbound(&w, "79997654321", "220"),
            show("220"),
            hide("220"),
            show("221"),
            finish("221", talk(&edited, &trunk.0), Status::ANSWERED),
        ]
    );
    assert!(out.iter().all(|(_, i)| i.call == key(d, W)));
}

on_both_drivers!(
    v_refer_transfer_moves_the_call,
    v_transfer_history,
    v_client_hangs_up_after_transfer,
    v_consultation_cancelled,
    v_consultation_answered_then_abandoned,
    v_transfer_between_other_phones,
    queue_call_transferred_to_another_member,
    outbound_call_transferred,
);

// ---------------------------------------------------------------------------------------------
// pk: call pickup

/// 220 rings; 221 dials `**220` (directed pickup) after 4 s and talks ~6 s. 220's card goes
/// when its phone stops ringing, 221's comes at the pickup, and the call ends under 221 with
/// 200 and the talk time from the pickup.
fn pk_directed_pickup(d: Driver) {
    let msgs = load(d, PK);
    let v = run_all(&mut tracker(), &msgs);
    assert_eq!(
        actions(&v),
        vec![
            inbound(&msgs, "79991234567", "8001231233"),
            show("220"),
            hide("220"),
            show("221"),
            finish("221", 6, Status::ANSWERED),
        ]
    );
    assert!(v.iter().all(|(_, i)| i.call == key(d, PK)));
    let pickup = time_of(&msgs, |m| m.event() == Some("Pickup"));
    assert!(near(v[2].0, pickup) && near(v[3].0, pickup), "{v:?}");
}

/// The picker's channel, found by its Pickup event.
fn picker(msgs: &[(Message, u64)]) -> String {
    msgs.iter()
        .find(|(m, _)| m.event() == Some("Pickup"))
        .and_then(|(m, _)| m.get("Channel"))
        .expect("Pickup")
        .to_string()
}

/// Edit of pk: the caller hangs up first, 2 s earlier than 221 did (the trunk's messages moved
/// before 221's, as in a caller's BYE in a_inbound_answered.md).
fn pk_client_hangs_up(d: Driver) {
    let msgs = load(d, PK);
    let who = picker(&msgs);
    let trunk = channels(&msgs)[0].0.clone();
    let cut = msgs
        .iter()
        .position(|(m, _)| is(m, "HangupRequest", &who))
        .expect("picker hangs up");
    let (head, tail) = msgs.split_at(cut);
    let (client, rest): (Vec<_>, Vec<_>) = tail
        .iter()
        .map(|(m, at)| (m.clone(), at - 2_000))
        .partition(|(m, _)| m.get("Channel") == Some(trunk.as_str()));
    let edited: Vec<(Message, u64)> = head.iter().cloned().chain(client).chain(rest).collect();
    assert_eq!(
        actions(&run_all(&mut tracker(), &edited))[4],
        finish("221", 4, Status::ANSWERED)
    );
}

/// Edit of pk: group pickup. FreePBX's `*8` runs `Pickup()` instead of `PickupChan()`; both
/// end in Asterisk's `ast_do_pickup`, which raises the same `Pickup` event (issue #15: "group
/// pickup `*8` is the same kind of event"). The picker's extension and application are
/// rewritten; nothing else differs.
fn pk_group_pickup(d: Driver) {
    let msgs = load(d, PK);
    let who = picker(&msgs);
    let edited: Vec<(Message, u64)> = msgs
        .iter()
        .map(|(m, at)| {
            let m = if m.get("Channel") == Some(who.as_str()) {
                let m = rename(m, &[("**220", "*8"), ("PickupChan", "Pickup")]);
                match m.get("Application") {
                    Some("Pickup") => set(&m, &[("AppData", "")]),
                    _ => m,
                }
            } else {
                m.clone()
            };
            (m, *at)
        })
        .collect();
    assert!(edited.iter().any(|(m, _)| m.get("Exten") == Some("*8")));
    assert_eq!(
        actions(&run_all(&mut tracker(), &edited)),
        vec![
            inbound(&msgs, "79991234567", "8001231233"),
            show("220"),
            hide("220"),
            show("221"),
            finish("221", 6, Status::ANSWERED),
        ]
    );
}

/// Edit of pk: 219 picks up instead of 221 (its channel and caller ID renamed).
fn pk_pickup_by_another_phone(d: Driver) {
    let msgs: Vec<(Message, u64)> = load(d, PK)
        .iter()
        .map(|(m, at)| (rename(m, &[("221", "219")]), *at))
        .collect();
    assert_eq!(
        actions(&run_all(&mut tracker(), &msgs))[1..],
        [
            show("220"),
            hide("220"),
            show("219"),
            finish("219", 6, Status::ANSWERED),
        ]
    );
}

/// `show_cards_to` still decides who gets a card: the picker outside it gets none but the
/// call is still finished under them; the ringing phone's card still goes.
fn pk_pickup_respects_show_cards_to(d: Driver) {
    let msgs = load(d, PK);
    let only = |ext: &str| {
        tracker_with(TrackerConfig {
            show_cards_to: vec![ext.into()],
            ..TrackerConfig::default()
        })
    };
    assert_eq!(
        actions(&run_all(&mut only("220"), &msgs))[1..],
        [show("220"), hide("220"), finish("221", 6, Status::ANSWERED)]
    );
    assert_eq!(
        actions(&run_all(&mut only("221"), &msgs))[1..],
        [show("221"), finish("221", 6, Status::ANSWERED)]
    );
}

/// The `Pickup` event alone ties the picker to the ringing call: the client's `DialEnd ANSWER`
/// (which names the picker's channel, still under its own Linkedid) already makes the picker
/// the one talking, before any bridge. With a Local channel between the queue or ring group
/// and the phone, the bridge with the client can come later than the answer; talk time counts
/// from the answer.
fn pk_picker_talks_from_the_answer(d: Driver) {
    let msgs = load(d, PK);
    let who = picker(&msgs);
    let answer = msgs
        .iter()
        .position(|(m, _)| {
            m.event() == Some("DialEnd") && m.get("DestChannel") == Some(who.as_str())
        })
        .expect("the client's DialEnd names the picker");
    assert!(
        msgs[..answer]
            .iter()
            .all(|(m, _)| m.event() != Some("BridgeEnter")),
        "no bridge before the answer"
    );
    let mut t = tracker();
    let v = run(&mut t, &msgs[..=answer]);
    assert_eq!(actions(&v)[3], show("221"));
    assert_eq!(t.active_calls()[0].employee.as_deref(), Some("221"));
}

on_both_drivers!(
    pk_picker_talks_from_the_answer,
    pk_directed_pickup,
    pk_client_hangs_up,
    pk_group_pickup,
    pk_pickup_by_another_phone,
    pk_pickup_respects_show_cards_to,
);
