//! A restart can come at any moment of a call. For every real capture (both drivers) and every
//! point in it, the call is cut there: what Asterisk would list at that moment
//! (`CoreShowChannels`, built by the fake PBX's own channel table from the events so far) is
//! adopted by a fresh tracker, and the rest of the events follow. Whenever the caller's channel
//! (Uniqueid = Linkedid) was alive at the cut, the call must be registered (or adopted) once
//! and finished once: the promise of issue #16, checked at every cut instead of at the few
//! moments a timed test happens to hit. After it is gone only an employee's leg is left, for
//! the milliseconds of its teardown: there is no caller and no line to register the call
//! under, so nothing at all may be sent (docs/outbox.md, "What adoption cannot do").
mod support;

use callme::ami::Message;
use callme::calls::adopt::adopt;
use callme::calls::{Action, Intent, TrackerConfig};
use std::time::Instant;
use support::events::{load_capture, tracker};
use support::traffic::Pbx;

/// The captures of calls that belong in Bitrix24 and that the PBX alone starts (click-to-call
/// needs its Originate; the internal call never reaches the portal).
const CAPTURES: [&str; 7] = [
    "a_inbound_answered.ami",
    "b_inbound_noanswer.ami",
    "c_inbound_busy.ami",
    "d_inbound_blind_transfer_ami.ami",
    "e_inbound_attended_transfer_ami.ami",
    "h_inbound_recorded_mixmonitor.ami",
    "k_inbound_queue_ringall.ami",
];

fn fields(m: &Message) -> Vec<(String, String)> {
    m.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The intents of a restart at cut `k`: adopt what is listed after `events[..k]`, then feed
/// `events[k..]`, and whether the caller's channel was listed. `None` if nothing of the call
/// was alive at the cut.
fn restart_at(events: &[(Message, u64)], k: usize) -> Option<(Vec<Intent>, bool)> {
    let mut pbx = Pbx::default();
    let now = Instant::now();
    for (m, _) in &events[..k] {
        pbx.apply(0, &fields(m), now);
    }
    let listed: Vec<Message> = pbx
        .list()
        .into_iter()
        .map(|item| {
            let mut m = Message::new();
            m.push("Event", "CoreShowChannel");
            for (k, v) in &item {
                m.push(k, v);
            }
            m
        })
        .collect();
    if listed.is_empty() {
        return None;
    }
    let origin = listed
        .iter()
        .any(|m| m.get("Uniqueid").is_some() && m.get("Uniqueid") == m.get("Linkedid"));
    let mut t = tracker();
    let at = events[k.saturating_sub(1)].1;
    let contexts = TrackerConfig::default().inbound_contexts;
    let adopted = adopt(
        &listed,
        &|u| t.has_channel(u),
        &|name| t.is_employee_channel(name),
        &contexts,
        at,
    );
    let mut out = Vec::new();
    for (m, ms) in adopted.iter().chain(events[k..].iter()) {
        t.handle(m, *ms, &mut out);
    }
    Some((out, origin))
}

/// Every cut of capture `name` that breaks the rule.
fn check(name: &str) -> Vec<String> {
    let cap = load_capture(name);
    let events: Vec<(Message, u64)> = cap
        .messages
        .iter()
        .filter(|t| t.msg.event().is_some())
        .map(|t| (t.msg.clone(), t.at_ms))
        .collect();
    let mut bad = Vec::new();
    let mut checked = 0;
    for k in 1..events.len() {
        let Some((out, origin)) = restart_at(&events, k) else {
            continue;
        };
        let before = events[k - 1].0.event().unwrap_or_default().to_string();
        if !origin {
            if !out.is_empty() {
                bad.push(format!(
                    "{name}: cut after event {k} ({before}), only employee legs listed, yet sent {:?}",
                    out.iter().map(|i| i.to_string()).collect::<Vec<_>>()
                ));
            }
            continue;
        }
        checked += 1;
        let registers = out
            .iter()
            .filter(|i| matches!(i.action, Action::Register { .. } | Action::Adopt { .. }))
            .count();
        let finishes = out
            .iter()
            .filter(|i| matches!(i.action, Action::Finish { .. }))
            .count();
        if registers != 1 || finishes != 1 {
            bad.push(format!(
                "{name}: cut after event {k} ({before}): {registers} register(s), {finishes} finish(es): {:?}",
                out.iter().map(|i| i.to_string()).collect::<Vec<_>>()
            ));
        }
    }
    // Not vacuous: most of a call's events come while the caller's channel is up.
    if checked * 2 < events.len() {
        bad.push(format!(
            "{name}: only {checked} of {} cuts had the caller listed",
            events.len()
        ));
    }
    bad
}

#[test]
fn a_restart_at_any_point_of_a_chan_sip_call_registers_and_finishes_it_once() {
    let bad: Vec<String> = CAPTURES.iter().flat_map(|c| check(c)).collect();
    assert!(bad.is_empty(), "{} cut(s):\n{}", bad.len(), bad.join("\n"));
}

#[test]
fn a_restart_at_any_point_of_a_pjsip_call_registers_and_finishes_it_once() {
    let bad: Vec<String> = CAPTURES
        .iter()
        .flat_map(|c| check(&format!("pjsip/{c}")))
        .collect();
    assert!(bad.is_empty(), "{} cut(s):\n{}", bad.len(), bad.join("\n"));
}
