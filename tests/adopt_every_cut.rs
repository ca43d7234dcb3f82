//! A restart can come at any moment of a call. For every real capture (both drivers), every
//! point in it as the login, and each of the next [`LAG`] events as the end of the login's
//! `CoreShowChannels` listing: the events between the two reach a fresh tracker first (they
//! come before the listing's end in the stream), then what the fake PBX's own channel table
//! lists at that moment is adopted, then the rest of the events follow. The lag is what made
//! calls vanish: their rings came before the listing named their caller. Whenever the caller's channel
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

/// How many events may come between the login and the listing's end.
const LAG: usize = 12;

fn fields(m: &Message) -> Vec<(String, String)> {
    m.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The intents of a login at cut `k` whose listing completes after event `j` (`j >= k`):
/// the daemon takes `events[k..j]` first (they come before the listing's end in the stream),
/// then adopts the listing of the PBX as it is after `events[..j]`, then takes the rest; and
/// whether the caller's channel was listed. `None` if nothing of the call was alive then.
fn restart_listing_at(
    events: &[(Message, u64)],
    k: usize,
    j: usize,
) -> Option<(Vec<Intent>, bool)> {
    let mut pbx = Pbx::default();
    let now = Instant::now();
    for (m, _) in &events[..j] {
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
    let mut out = Vec::new();
    for (m, ms) in &events[k..j] {
        t.handle(m, *ms, &mut out);
    }
    let at = events[j.saturating_sub(1)].1;
    let contexts = TrackerConfig::default().inbound_contexts;
    let adopted = adopt(
        &listed,
        &|u| t.has_channel(u),
        &|name| t.is_employee_channel(name),
        &contexts,
        at,
    );
    for (m, ms) in adopted.iter().chain(events[j..].iter()) {
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
    for (k, j) in
        (1..events.len()).flat_map(|k| (k..events.len().min(k + LAG)).map(move |j| (k, j)))
    {
        let Some((out, origin)) = restart_listing_at(&events, k, j) else {
            continue;
        };
        let before = events[k - 1].0.event().unwrap_or_default().to_string();
        if !origin {
            if !out.is_empty() {
                bad.push(format!(
                    "{name}: login after event {k} ({before}), listing after {j}, only employee legs listed, yet sent {:?}",
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
                "{name}: login after event {k} ({before}), listing after {j}: {registers} register(s), {finishes} finish(es): {:?}",
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
