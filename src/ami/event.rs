//! Typed views of the AMI events the call tracker consumes.
//!
//! The tracker never looks at raw field names: this module is the one place that knows how
//! Asterisk spells them (and how that changed between versions), so the tracker stays a small
//! state machine over a handful of well-typed facts.

use super::Message;

/// The channel block of an Asterisk 12+ event (ami.md §5.1), with an optional prefix such as
/// `Dest` or `Transferee`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chan<'a> {
    pub name: &'a str,
    pub uniqueid: &'a str,
    /// Absent before Asterisk 13.5 (ami.md §5.1); then the call is keyed by the Uniqueid.
    pub linkedid: &'a str,
    pub context: &'a str,
    pub exten: &'a str,
    pub caller_num: &'a str,
}

impl<'a> Chan<'a> {
    /// Read the channel block whose keys start with `prefix` (`""` for the plain block).
    pub fn read(msg: &'a Message, prefix: &str) -> Option<Chan<'a>> {
        let get = |key: &str| -> Option<&'a str> {
            if prefix.is_empty() {
                msg.get(key)
            } else {
                msg.get(&format!("{prefix}{key}"))
            }
        };
        let name = get("Channel")?;
        let uniqueid = get("Uniqueid")?;
        Some(Chan {
            name,
            uniqueid,
            linkedid: get("Linkedid").unwrap_or(uniqueid),
            context: get("Context").unwrap_or(""),
            exten: get("Exten").unwrap_or(""),
            caller_num: get("CallerIDNum").unwrap_or(""),
        })
    }
}

/// The events that matter for call tracking. Everything else is `Other` and ignored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event<'a> {
    Newchannel(Chan<'a>),
    /// Dialplan step; FreePBX inbound routes reveal the DID here when the trunk channel said `s`.
    Newexten {
        chan: Chan<'a>,
    },
    VarSet {
        chan: Chan<'a>,
        variable: &'a str,
        value: &'a str,
    },
    /// The caller block is absent for Originate (ami.md §4.2), hence the `Option`.
    DialBegin {
        src: Option<Chan<'a>>,
        dest: Chan<'a>,
        dial_string: &'a str,
    },
    DialEnd {
        src: Option<Chan<'a>>,
        dest: Chan<'a>,
        status: &'a str,
    },
    BridgeEnter {
        chan: Chan<'a>,
        bridge: &'a str,
    },
    BridgeLeave {
        chan: Chan<'a>,
        bridge: &'a str,
    },
    Hangup {
        chan: Chan<'a>,
        cause: u32,
    },
    /// Asterisk 1.8/11 `Dial` with `SubEvent: End`: it does not say which destination ended
    /// (ami.md §6), only the dialling channel.
    LegacyDialEnd {
        src: Chan<'a>,
        status: &'a str,
    },
    /// Asterisk 1.8/11 `Bridge` (`Bridgestate: Link|Unlink`) and 1.4 `Link`/`Unlink`: two
    /// channels joined or parted.
    LegacyBridge {
        one: Chan<'a>,
        two: Chan<'a>,
        link: bool,
    },
    /// A phone answered a call ringing elsewhere (directed pickup `PickupChan`, FreePBX
    /// `**<ext>`; group pickup `Pickup`, FreePBX `*8`): `picker` takes over `target`, the
    /// channel that was ringing. The picker's channel started as a call of its own, with its own
    /// Linkedid; this event is the first to tie the two together.
    Pickup {
        picker: Chan<'a>,
        target: Chan<'a>,
    },
    /// The outcome of an `Async` Originate (ami.md §4.2). An event, although it carries a
    /// `Response:` field. Matched to our Originate by its ActionID.
    OriginateResponse {
        action_id: &'a str,
        success: bool,
        /// `pbx_dial_reason`: 4 answered, 5 busy, 3 no answer, 8 congestion, 1 hung up, 0 other.
        reason: u32,
    },
    Other,
}

impl<'a> Event<'a> {
    /// Classify a message. Messages that are not events, and events with missing mandatory
    /// fields, become `Other`: a malformed event must never stop the tracker.
    pub fn parse(msg: &'a Message) -> Event<'a> {
        let Some(name) = msg.event() else {
            return Event::Other;
        };
        let plain = || Chan::read(msg, "");
        let parsed = match name {
            "Newchannel" => plain().map(Event::Newchannel),
            "Newexten" => plain().map(|chan| Event::Newexten { chan }),
            "VarSet" => plain().map(|chan| Event::VarSet {
                chan,
                variable: msg.get("Variable").unwrap_or(""),
                value: msg.get("Value").unwrap_or(""),
            }),
            "DialBegin" => Chan::read(msg, "Dest").map(|dest| Event::DialBegin {
                src: plain(),
                dest,
                dial_string: msg.get("DialString").unwrap_or(""),
            }),
            "DialEnd" => Chan::read(msg, "Dest").map(|dest| Event::DialEnd {
                src: plain(),
                dest,
                status: msg.get("DialStatus").unwrap_or(""),
            }),
            "BridgeEnter" => plain().map(|chan| Event::BridgeEnter {
                chan,
                bridge: msg.get("BridgeUniqueid").unwrap_or(""),
            }),
            "BridgeLeave" => plain().map(|chan| Event::BridgeLeave {
                chan,
                bridge: msg.get("BridgeUniqueid").unwrap_or(""),
            }),
            "Hangup" => plain().map(|chan| Event::Hangup {
                chan,
                cause: msg
                    .get("Cause")
                    .and_then(|c| c.trim().parse().ok())
                    .unwrap_or(0),
            }),
            "Pickup" => Chan::read(msg, "Target")
                .and_then(|target| plain().map(|picker| Event::Pickup { picker, target })),
            "Dial" => legacy_dial(msg),
            "Bridge" => legacy_bridge(
                msg,
                msg.get("Bridgestate")
                    .is_some_and(|s| s.eq_ignore_ascii_case("Link")),
            ),
            "Link" => legacy_bridge(msg, true),
            "Unlink" => legacy_bridge(msg, false),
            "OriginateResponse" => Some(Event::OriginateResponse {
                action_id: msg.get("ActionID").unwrap_or(""),
                success: msg
                    .get("Response")
                    .is_some_and(|r| r.eq_ignore_ascii_case("Success")),
                reason: msg
                    .get("Reason")
                    .and_then(|r| r.trim().parse().ok())
                    .unwrap_or(0),
            }),
            _ => None,
        };
        parsed.unwrap_or(Event::Other)
    }
}

/// A channel named by legacy fields, which carry no Linkedid (ami.md §6): the Uniqueid stands
/// in for it until a dial or bridge ties the channels together.
fn legacy_chan<'a>(msg: &'a Message, name: &[&str], uid: &[&str]) -> Option<Chan<'a>> {
    let name = name.iter().find_map(|k| msg.get(k))?;
    let uniqueid = uid.iter().find_map(|k| msg.get(k))?;
    Some(Chan {
        name,
        uniqueid,
        linkedid: uniqueid,
        context: "",
        exten: "",
        caller_num: msg.get("CallerIDNum").unwrap_or(""),
    })
}

/// 1.8/11 `Dial` (`SubEvent: Begin|End`; 1.4 has no SubEvent and means Begin).
fn legacy_dial(msg: &Message) -> Option<Event<'_>> {
    // 1.4 names the caller `Source` / `SrcUniqueID`.
    let src = legacy_chan(msg, &["Channel", "Source"], &["UniqueID", "SrcUniqueID"])?;
    match msg.get("SubEvent").unwrap_or("Begin") {
        s if s.eq_ignore_ascii_case("End") => Some(Event::LegacyDialEnd {
            src,
            status: msg.get("DialStatus").unwrap_or(""),
        }),
        _ => Some(Event::DialBegin {
            dest: legacy_chan(msg, &["Destination"], &["DestUniqueID"])?,
            src: Some(src),
            dial_string: msg.get("Dialstring").unwrap_or(""),
        }),
    }
}

fn legacy_bridge(msg: &Message, link: bool) -> Option<Event<'_>> {
    Some(Event::LegacyBridge {
        one: legacy_chan(msg, &["Channel1"], &["Uniqueid1"])?,
        two: legacy_chan(msg, &["Channel2"], &["Uniqueid2"])?,
        link,
    })
}

/// The `Timestamp:` header (manager.conf `timestampevents = yes`) in milliseconds since the epoch.
pub fn timestamp_ms(msg: &Message) -> Option<u64> {
    let ts: f64 = msg.get("Timestamp")?.trim().parse().ok()?;
    if ts.is_finite() && ts > 0.0 {
        Some((ts * 1000.0).round() as u64)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dial_begin_without_caller_block() {
        let msg = Message::from_pairs(&[
            ("Event", "DialBegin"),
            ("DestChannel", "SIP/219-00000001"),
            ("DestUniqueid", "1.1"),
            ("DestLinkedid", "1.0"),
            ("DialString", "219"),
        ]);
        match Event::parse(&msg) {
            Event::DialBegin { src, dest, .. } => {
                assert!(src.is_none());
                assert_eq!(dest.name, "SIP/219-00000001");
                assert_eq!(dest.linkedid, "1.0");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    /// The fields of the `Pickup` event in pk_inbound_directed_pickup_221_from_220.ami.
    #[test]
    fn pickup_names_picker_and_target() {
        let msg = Message::from_pairs(&[
            ("Event", "Pickup"),
            ("Channel", "SIP/221-0000005c"),
            ("Uniqueid", "1796237655.104"),
            ("Linkedid", "1796237655.104"),
            ("Exten", "**220"),
            ("TargetChannel", "SIP/220-0000005b"),
            ("TargetUniqueid", "1796237651.103"),
            ("TargetLinkedid", "1796237651.102"),
        ]);
        match Event::parse(&msg) {
            Event::Pickup { picker, target } => {
                assert_eq!(picker.uniqueid, "1796237655.104");
                assert_eq!(target.name, "SIP/220-0000005b");
                assert_eq!(target.linkedid, "1796237651.102");
            }
            other => panic!("unexpected {other:?}"),
        }
        // Without a target it says nothing the tracker could use.
        let msg = Message::from_pairs(&[
            ("Event", "Pickup"),
            ("Channel", "SIP/221-0000005c"),
            ("Uniqueid", "1796237655.104"),
        ]);
        assert_eq!(Event::parse(&msg), Event::Other);
    }

    #[test]
    fn missing_fields_are_other_not_panic() {
        let msg = Message::from_pairs(&[("Event", "Hangup"), ("Cause", "16")]);
        assert_eq!(Event::parse(&msg), Event::Other);
        let msg = Message::from_pairs(&[("Response", "Success")]);
        assert_eq!(Event::parse(&msg), Event::Other);
    }

    #[test]
    fn linkedid_defaults_to_uniqueid_before_13_5() {
        let msg = Message::from_pairs(&[
            ("Event", "Newchannel"),
            ("Channel", "SIP/trunk-1"),
            ("Uniqueid", "5.5"),
        ]);
        let Event::Newchannel(c) = Event::parse(&msg) else {
            panic!()
        };
        assert_eq!(c.linkedid, "5.5");
    }

    #[test]
    fn legacy_dial_and_bridge() {
        let begin = Message::from_pairs(&[
            ("Event", "Dial"),
            ("SubEvent", "Begin"),
            ("Channel", "SIP/trunk-00000001"),
            ("Destination", "SIP/219-00000002"),
            ("UniqueID", "1.1"),
            ("DestUniqueID", "1.2"),
            ("Dialstring", "219"),
        ]);
        let Event::DialBegin { src, dest, .. } = Event::parse(&begin) else {
            panic!()
        };
        assert_eq!(src.unwrap().uniqueid, "1.1");
        assert_eq!((dest.name, dest.linkedid), ("SIP/219-00000002", "1.2"));
        let end = Message::from_pairs(&[
            ("Event", "Dial"),
            ("SubEvent", "End"),
            ("Channel", "SIP/trunk-00000001"),
            ("UniqueID", "1.1"),
            ("DialStatus", "ANSWER"),
        ]);
        assert!(matches!(
            Event::parse(&end),
            Event::LegacyDialEnd {
                status: "ANSWER",
                ..
            }
        ));
        let link = Message::from_pairs(&[
            ("Event", "Bridge"),
            ("Bridgestate", "Unlink"),
            ("Channel1", "SIP/trunk-00000001"),
            ("Channel2", "SIP/219-00000002"),
            ("Uniqueid1", "1.1"),
            ("Uniqueid2", "1.2"),
        ]);
        assert!(matches!(
            Event::parse(&link),
            Event::LegacyBridge { link: false, .. }
        ));
    }

    #[test]
    fn timestamp_header() {
        let msg = Message::from_pairs(&[("Event", "X"), ("Timestamp", "1795668285.289052")]);
        assert_eq!(timestamp_ms(&msg), Some(1_795_668_285_289));
        let msg = Message::from_pairs(&[("Event", "X"), ("Timestamp", "nan")]);
        assert_eq!(timestamp_ms(&msg), None);
    }

    #[test]
    fn hangup_requests_are_not_for_the_tracker() {
        // The tracker acts on `Hangup`; a (Soft)HangupRequest before it carries nothing it
        // needs, and `Other` keeps it out of the events journal too.
        for name in ["HangupRequest", "SoftHangupRequest"] {
            let msg = Message::from_pairs(&[
                ("Event", name),
                ("Channel", "SIP/219-00000023"),
                ("Uniqueid", "1.1"),
                ("Linkedid", "1.1"),
                ("Cause", "16"),
            ]);
            assert!(matches!(Event::parse(&msg), Event::Other), "{name}");
        }
    }
}
