//! Adopting channels the tracker never saw: after a restart (or an AMI outage), the calls
//! that began while we were away are still up on the PBX, and `CoreShowChannels` lists their
//! channels. This module turns such a listing into the events the tracker would have seen had
//! it been watching (`Newchannel`, `DialBegin`, `DialEnd`, `BridgeEnter`), so those calls are
//! registered, shown and finished like any other. Pure: listing + time in, events out.
//!
//! Fields of a `CoreShowChannel` item relied on (ami.md §4.3: the snapshot block plus
//! `Application`, `ApplicationData`, `Duration`, `BridgeId`):
//! - `Uniqueid`, `Linkedid`: identity and grouping into calls (the channel whose Uniqueid is
//!   the Linkedid is the call's first channel: the client's trunk leg of an inbound call, the
//!   employee's phone of an outbound one). Without `Linkedid` (before 13.5) every channel is
//!   its own group and nothing ties the legs together.
//! - `Channel`: the name, hence the peer (trunk or employee).
//! - `Context`, `Exten`: the first channel's place in the dialplan. In an inbound context the
//!   `Exten` is the DID; elsewhere the DID is unknown (see [`adopt`]).
//! - `CallerIDNum`: the client's number of an inbound call.
//! - `ChannelState`: 6 (Up) means a dialled leg was answered.
//! - `BridgeId`: who talks to whom now (a bridge shared with the client's channel).
//! - `Application`/`ApplicationData`: the dial string of an outbound call (`Dial`).
//! - `Duration` (`hh:mm:ss`, or seconds): when the first channel was created, which is when
//!   the call started.
//!
//! What cannot be rebuilt: events of the gap itself (who rang and stopped ringing, transfers
//! in between); a call answered in the gap counts its talk time from the adoption; a call
//! that began and ended entirely in the gap is not listed at all.

use std::collections::HashMap;

use crate::ami::Message;

use super::channel;

/// The synthetic events for the listed channels that `known` does not know, in the order the
/// tracker must see them, each with the time to give it (ms on the clock the tracker uses).
///
/// - `known(uniqueid)`: the tracker tracks this channel already.
/// - `is_employee(name)`: this channel is an employee's phone (the tracker's own test).
/// - `inbound_contexts`: where trunk calls enter the dialplan (`[calls] inbound_contexts`).
/// - `now_ms`: the time of the listing.
///
/// A first channel that is not an employee's but sits outside every inbound context (FreePBX
/// moves the trunk leg on to ring groups and queues) is presented in the first inbound context
/// with `Exten: s`: the tracker then treats it as an inbound call whose DID is unknown, which
/// is monitored only when `[calls] lines` is empty.
///
/// Listed channels the tracker knows get only a `BridgeEnter` (if bridged), so an answer that
/// happened while we were away is seen.
pub fn adopt(
    listed: &[Message],
    known: &dyn Fn(&str) -> bool,
    is_employee: &dyn Fn(&str) -> bool,
    inbound_contexts: &[String],
    now_ms: u64,
) -> Vec<(Message, u64)> {
    // Group by Linkedid, keeping the order of first appearance.
    let mut groups: Vec<(String, Vec<&Message>)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for m in listed {
        let (Some(uid), Some(_)) = (field(m, "Uniqueid"), field(m, "Channel")) else {
            continue;
        };
        let linked = field(m, "Linkedid").unwrap_or(uid).to_string();
        let i = *index.entry(linked.clone()).or_insert_with(|| {
            groups.push((linked, Vec::new()));
            groups.len() - 1
        });
        groups[i].1.push(m);
    }
    let mut out = Vec::new();
    for (linked, mut chans) in groups {
        // The first channel first, then by creation (Uniqueid is `<epoch>.<seq>`).
        chans.sort_by_key(|m| {
            let uid = field(m, "Uniqueid").unwrap_or("");
            (uid != linked, seq_of(uid))
        });
        let first = chans
            .iter()
            .find(|m| field(m, "Uniqueid") == Some(linked.as_str()))
            .copied();
        for m in &chans {
            let uid = field(m, "Uniqueid").unwrap_or("");
            if known(uid) {
                continue;
            }
            let is_first = first.is_some_and(|f| std::ptr::eq(*m, f));
            let started = now_ms.saturating_sub(duration_ms(m));
            out.push((
                newchannel(m, is_first, is_employee, inbound_contexts),
                started,
            ));
        }
        for m in &chans {
            let uid = field(m, "Uniqueid").unwrap_or("");
            if known(uid) || first.is_some_and(|f| std::ptr::eq(*m, f)) {
                continue;
            }
            out.push((dial_begin(first, m), now_ms));
            if field(m, "ChannelState") == Some("6") {
                out.push((dial_end_answered(m), now_ms));
            }
        }
        for m in &chans {
            if let Some(bridge) = field(m, "BridgeId").filter(|b| !b.is_empty()) {
                let mut e = Message::from_pairs(&[("Event", "BridgeEnter")]);
                e.push("BridgeUniqueid", bridge);
                block(&mut e, m, "");
                out.push((e, now_ms));
            }
        }
    }
    out
}

fn field<'a>(m: &'a Message, k: &str) -> Option<&'a str> {
    m.get(k)
}

/// The sequence part of a Uniqueid, for ordering channels by creation.
fn seq_of(uid: &str) -> (u64, u64) {
    let tail = uid.rsplit('-').next().unwrap_or(uid);
    let (a, b) = tail.split_once('.').unwrap_or((tail, "0"));
    (a.parse().unwrap_or(0), b.parse().unwrap_or(0))
}

/// `Duration` as `hh:mm:ss` (or plain seconds), in ms; 0 if absent or garbled.
fn duration_ms(m: &Message) -> u64 {
    let Some(d) = field(m, "Duration") else {
        return 0;
    };
    let mut secs: u64 = 0;
    for part in d.trim().split(':') {
        let Ok(n) = part.trim().parse::<u64>() else {
            return 0;
        };
        secs = secs.saturating_mul(60).saturating_add(n);
    }
    secs.saturating_mul(1000)
}

/// The channel block of `m` under `prefix` (`""` or `Dest`), with the snapshot fields.
fn block(out: &mut Message, m: &Message, prefix: &str) {
    for k in [
        "Channel",
        "ChannelState",
        "ChannelStateDesc",
        "CallerIDNum",
        "CallerIDName",
        "ConnectedLineNum",
        "ConnectedLineName",
        "Context",
        "Exten",
        "Uniqueid",
        "Linkedid",
    ] {
        if let Some(v) = field(m, k) {
            out.push(&format!("{prefix}{k}"), v);
        }
    }
}

fn newchannel(
    m: &Message,
    is_first: bool,
    is_employee: &dyn Fn(&str) -> bool,
    inbound_contexts: &[String],
) -> Message {
    let mut e = Message::from_pairs(&[("Event", "Newchannel")]);
    let context = field(m, "Context").unwrap_or("");
    let name = field(m, "Channel").unwrap_or("");
    let in_inbound = inbound_contexts.iter().any(|c| c == context);
    let trunk_first = is_first && !in_inbound && !is_employee(name) && !is_local(name);
    match inbound_contexts.first().filter(|_| trunk_first) {
        Some(inbound) => {
            // A trunk leg moved on past the inbound route: its DID is no longer listed.
            for (k, v) in m.iter() {
                match k {
                    "Context" => e.push(k, inbound),
                    "Exten" => e.push(k, "s"),
                    _ if is_block_field(k) => e.push(k, v),
                    _ => {}
                }
            }
        }
        None => block(&mut e, m, ""),
    }
    e
}

fn is_block_field(k: &str) -> bool {
    matches!(
        k,
        "Channel"
            | "ChannelState"
            | "ChannelStateDesc"
            | "CallerIDNum"
            | "CallerIDName"
            | "ConnectedLineNum"
            | "ConnectedLineName"
            | "Uniqueid"
            | "Linkedid"
    )
}

fn is_local(name: &str) -> bool {
    name.split('/')
        .next()
        .is_some_and(|t| t.eq_ignore_ascii_case("Local"))
}

/// The call's first channel dialling `dest`. The dial string is the first target of the
/// caller's `Dial` (what an outbound call dialled), else the dest's technology and peer.
fn dial_begin(first: Option<&Message>, dest: &Message) -> Message {
    let mut e = Message::from_pairs(&[("Event", "DialBegin")]);
    if let Some(src) = first {
        block(&mut e, src, "");
    }
    block(&mut e, dest, "Dest");
    let from_app = first
        .filter(|src| field(src, "Application").is_some_and(|a| a.eq_ignore_ascii_case("Dial")))
        .and_then(|src| field(src, "ApplicationData"))
        .and_then(|data| data.split([',', '&']).next())
        .map(|t| t.split('@').next().unwrap_or(t).to_string())
        .filter(|t| !t.is_empty());
    let dial = from_app.unwrap_or_else(|| {
        let name = field(dest, "Channel").unwrap_or("");
        let tech = name.split('/').next().unwrap_or("");
        format!("{tech}/{}", channel::peer(name).unwrap_or(""))
    });
    e.push("DialString", &dial);
    e
}

/// A dialled leg that is up was answered; who it talks to is said by `BridgeEnter`.
fn dial_end_answered(dest: &Message) -> Message {
    let mut e = Message::from_pairs(&[("Event", "DialEnd")]);
    block(&mut e, dest, "Dest");
    e.push("DialStatus", "ANSWER");
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calls::{Action, Direction, FinishUser, Status, Tracker, TrackerConfig};

    /// A `CoreShowChannel` item as Asterisk 16 lists it (ami.md §4.3), fields in wire order.
    #[allow(clippy::too_many_arguments)]
    fn item(
        name: &str,
        state: &str,
        cid: &str,
        context: &str,
        exten: &str,
        uid: &str,
        linked: &str,
        app: &str,
        data: &str,
        duration: &str,
        bridge: &str,
    ) -> Message {
        let desc = match state {
            "6" => "Up",
            "5" => "Ringing",
            "4" => "Ring",
            _ => "Down",
        };
        Message::from_pairs(&[
            ("Event", "CoreShowChannel"),
            ("ActionID", "recon-1"),
            ("Channel", name),
            ("ChannelState", state),
            ("ChannelStateDesc", desc),
            ("CallerIDNum", cid),
            ("CallerIDName", "<unknown>"),
            ("ConnectedLineNum", "<unknown>"),
            ("ConnectedLineName", "<unknown>"),
            ("Language", "en"),
            ("AccountCode", ""),
            ("Context", context),
            ("Exten", exten),
            ("Priority", "1"),
            ("Uniqueid", uid),
            ("Linkedid", linked),
            ("Application", app),
            ("ApplicationData", data),
            ("Duration", duration),
            ("BridgeId", bridge),
        ])
    }

    fn employees(name: &str) -> bool {
        channel::peer(name).is_some_and(|p| ["219", "220", "221"].contains(&p))
    }

    fn contexts() -> Vec<String> {
        vec!["from-trunk".into(), "from-pstn".into()]
    }

    fn tracker() -> Tracker {
        let mut t = Tracker::new(TrackerConfig::default());
        t.set_employees(["219".to_string(), "220".to_string(), "221".to_string()]);
        t
    }

    const NOW: u64 = 1_795_668_400_000;

    fn run(t: &mut Tracker, listed: &[Message]) -> Vec<crate::calls::Intent> {
        let ids: std::collections::HashSet<String> = t.channel_ids().into_iter().collect();
        let events = adopt(listed, &|u| ids.contains(u), &employees, &contexts(), NOW);
        let mut out = Vec::new();
        for (e, at) in events {
            t.handle(&e, at, &mut out);
        }
        out
    }

    fn hangup(name: &str, uid: &str, linked: &str) -> Message {
        Message::from_pairs(&[
            ("Event", "Hangup"),
            ("Channel", name),
            ("Uniqueid", uid),
            ("Linkedid", linked),
            ("Cause", "16"),
        ])
    }

    /// Capture a's call listed while 219 talks to the client: registered with the DID from the
    /// trunk leg's Exten and the start from its Duration, 219's card shown as the talker, and
    /// finished under 219 when the channels hang up.
    #[test]
    fn an_answered_inbound_call_is_registered_shown_and_finished() {
        let listed = [
            item(
                "SIP/trunk-00000000",
                "6",
                "79991234567",
                "from-trunk",
                "8001231231",
                "1795668285.0",
                "1795668285.0",
                "Dial",
                "SIP/219,,tT",
                "00:01:05",
                "0860fab9-904a-4346-8954-9fbf9832601a",
            ),
            item(
                "SIP/219-00000001",
                "6",
                "219",
                "from-internal",
                "",
                "1795668285.1",
                "1795668285.0",
                "AppDial",
                "(Outgoing Line)",
                "00:01:04",
                "0860fab9-904a-4346-8954-9fbf9832601a",
            ),
        ];
        let mut t = tracker();
        let out = run(&mut t, &listed);
        let actions: Vec<&Action> = out.iter().map(|i| &i.action).collect();
        assert_eq!(
            actions,
            [
                &Action::Register {
                    direction: Direction::Inbound,
                    phone: "79991234567".into(),
                    line: "8001231231".into(),
                    started_ms: NOW - 65_000,
                    employee: None,
                },
                &Action::Show { ext: "219".into() },
            ]
        );
        assert!(out.iter().all(|i| i.call == "callme-1795668285.0"));
        assert_eq!(t.active_calls()[0].employee.as_deref(), Some("219"));
        let mut out = Vec::new();
        t.handle(
            &hangup("SIP/trunk-00000000", "1795668285.0", "1795668285.0"),
            NOW + 10_000,
            &mut out,
        );
        t.handle(
            &hangup("SIP/219-00000001", "1795668285.1", "1795668285.0"),
            NOW + 10_100,
            &mut out,
        );
        assert_eq!(
            out.last().map(|i| &i.action),
            Some(&Action::Finish {
                user: FinishUser::Employee("219".into()),
                duration: 10,
                status: Status::ANSWERED,
            })
        );
        assert!(t.is_empty());
    }

    /// A ring-all queue (capture k) listed while 220 and 221 ring: both cards shown; the
    /// trunk leg moved on to the queue's context, so the DID is unknown and the call is
    /// registered with an empty line (every line is monitored by default).
    #[test]
    fn ringing_legs_get_their_cards_and_a_moved_trunk_leg_is_still_inbound() {
        let listed = [
            item(
                "SIP/trunk-00000020",
                "6",
                "79991234568",
                "ext-queues",
                "600",
                "1795668502.34",
                "1795668502.34",
                "Queue",
                "600,t",
                "00:00:07",
                "",
            ),
            item(
                "SIP/220-00000021",
                "5",
                "220",
                "from-internal",
                "s",
                "1795668502.35",
                "1795668502.34",
                "AppQueue",
                "(Outgoing Line)",
                "00:00:05",
                "",
            ),
            item(
                "SIP/221-00000022",
                "5",
                "221",
                "from-internal",
                "s",
                "1795668502.36",
                "1795668502.34",
                "AppQueue",
                "(Outgoing Line)",
                "00:00:05",
                "",
            ),
        ];
        let mut t = tracker();
        let out = run(&mut t, &listed);
        let actions: Vec<&Action> = out.iter().map(|i| &i.action).collect();
        assert_eq!(
            actions,
            [
                &Action::Register {
                    direction: Direction::Inbound,
                    phone: "79991234568".into(),
                    line: String::new(),
                    started_ms: NOW - 7_000,
                    employee: None,
                },
                &Action::Show { ext: "220".into() },
                &Action::Show { ext: "221".into() },
            ]
        );
    }

    /// An outbound call from a desk phone, listed while the client's phone rings: the
    /// employee's channel is first, the trunk leg is found through the caller's `Dial` data.
    #[test]
    fn an_outbound_call_from_a_desk_phone_is_registered_to_the_caller() {
        let listed = [
            item(
                "PJSIP/219-0000000a",
                "6",
                "219",
                "from-internal",
                "89991234567",
                "1795669000.10",
                "1795669000.10",
                "Dial",
                "PJSIP/89991234567@trunk,300,Tt",
                "00:00:12",
                "",
            ),
            item(
                "PJSIP/trunk-0000000b",
                "5",
                "219",
                "from-trunk",
                "89991234567",
                "1795669000.11",
                "1795669000.10",
                "AppDial",
                "(Outgoing Line)",
                "00:00:11",
                "",
            ),
        ];
        let mut t = tracker();
        let out = run(&mut t, &listed);
        let actions: Vec<&Action> = out.iter().map(|i| &i.action).collect();
        assert_eq!(
            actions,
            [
                &Action::Register {
                    direction: Direction::Outbound,
                    phone: "89991234567".into(),
                    line: String::new(),
                    started_ms: NOW - 12_000,
                    employee: Some("219".into()),
                },
                &Action::Show { ext: "219".into() },
            ]
        );
    }

    /// Channels the tracker knows are not created again; a known call answered in the gap
    /// learns its talker from the listed bridge; an internal call stays unregistered.
    #[test]
    fn known_channels_get_only_their_bridge_and_internal_calls_stay_ignored() {
        let mut t = tracker();
        let mut out = Vec::new();
        for (e, at) in [
            (
                item(
                    "SIP/trunk-00000000",
                    "4",
                    "79991234567",
                    "from-trunk",
                    "8001231231",
                    "1.0",
                    "1.0",
                    "",
                    "",
                    "0",
                    "",
                ),
                "Newchannel",
            ),
            (
                item(
                    "SIP/219-00000001",
                    "5",
                    "219",
                    "from-internal",
                    "s",
                    "1.1",
                    "1.0",
                    "",
                    "",
                    "0",
                    "",
                ),
                "Newchannel",
            ),
        ]
        .into_iter()
        .map(|(m, ev)| {
            let mut e = Message::from_pairs(&[("Event", ev)]);
            block(&mut e, &m, "");
            (e, NOW - 5_000)
        }) {
            t.handle(&e, at, &mut out);
        }
        assert_eq!(out.len(), 1, "registered: {out:?}");
        let listed = [
            item(
                "SIP/trunk-00000000",
                "6",
                "79991234567",
                "from-trunk",
                "8001231231",
                "1.0",
                "1.0",
                "Dial",
                "SIP/219",
                "00:00:05",
                "b-1",
            ),
            item(
                "SIP/219-00000001",
                "6",
                "219",
                "from-internal",
                "",
                "1.1",
                "1.0",
                "AppDial",
                "",
                "00:00:05",
                "b-1",
            ),
            item(
                "SIP/219-00000002",
                "6",
                "219",
                "from-internal",
                "220",
                "2.0",
                "2.0",
                "Dial",
                "SIP/220",
                "00:00:02",
                "b-2",
            ),
            item(
                "SIP/220-00000003",
                "6",
                "220",
                "from-internal",
                "",
                "2.1",
                "2.0",
                "AppDial",
                "",
                "00:00:02",
                "b-2",
            ),
        ];
        let ids: std::collections::HashSet<String> = t.channel_ids().into_iter().collect();
        let events = adopt(&listed, &|u| ids.contains(u), &employees, &contexts(), NOW);
        let names: Vec<String> = events
            .iter()
            .map(|(e, _)| {
                format!(
                    "{} {}",
                    e.get("Event").unwrap_or(""),
                    e.get("Uniqueid").or(e.get("DestUniqueid")).unwrap_or("")
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                "BridgeEnter 1.0",
                "BridgeEnter 1.1",
                "Newchannel 2.0",
                "Newchannel 2.1",
                "DialBegin 2.0",
                "DialEnd 2.1",
                "BridgeEnter 2.0",
                "BridgeEnter 2.1",
            ]
        );
        let mut out = Vec::new();
        for (e, at) in events {
            t.handle(&e, at, &mut out);
        }
        assert_eq!(
            out.iter().map(|i| &i.action).collect::<Vec<_>>(),
            [&Action::Show { ext: "219".into() }],
            "219 answered in the gap; the internal 219→220 call is not registered"
        );
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn garbled_items_are_skipped_and_durations_parsed() {
        let junk = Message::from_pairs(&[("Event", "CoreShowChannel"), ("Channel", "x")]);
        assert!(adopt(&[junk], &|_| false, &employees, &contexts(), NOW).is_empty());
        let m = |d: &str| Message::from_pairs(&[("Duration", d)]);
        assert_eq!(duration_ms(&m("01:02:03")), 3_723_000);
        assert_eq!(duration_ms(&m("42")), 42_000);
        assert_eq!(duration_ms(&m("bad")), 0);
        assert_eq!(seq_of("pbx-1795668285.12"), (1_795_668_285, 12));
    }
}
