//! Captures by channel driver, for the tests that run the same expectations on Asterisk 20
//! with chan_sip (`tests/fixtures/`) and on Asterisk 22 with chan_pjsip (`tests/fixtures/pjsip/`),
//! and small tools to edit a real capture into a variant of it (rename a phone, move a hangup).
//! The tracker and the expected actions come from [`super::events`].

use callme::ami::Message;
use callme::calls::{Intent, Tracker};

/// The channel driver a capture was recorded with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    /// Asterisk 20.20.1, chan_sip: `tests/fixtures/*.ami`.
    ChanSip,
    /// Asterisk 22.10.1, chan_pjsip: `tests/fixtures/pjsip/*.ami`.
    Pjsip,
}

impl Driver {
    pub fn dir(self) -> &'static str {
        match self {
            Driver::ChanSip => "tests/fixtures",
            Driver::Pjsip => "tests/fixtures/pjsip",
        }
    }

    /// The folder under `tests/fixtures/`, as a prefix of a capture's name.
    pub fn prefix(self) -> &'static str {
        match self {
            Driver::ChanSip => "",
            Driver::Pjsip => "pjsip/",
        }
    }

    /// The technology prefix of channel names.
    pub fn tech(self) -> &'static str {
        match self {
            Driver::ChanSip => "SIP",
            Driver::Pjsip => "PJSIP",
        }
    }
}

/// Defines `mod $name { chan_sip, pjsip }`: the test function `$name(Driver)` once per driver,
/// so a test's two runs are named `$name::chan_sip` and `$name::pjsip`. Needs `#[macro_use] mod
/// support;` at the test crate's root.
#[allow(unused_macros)]
macro_rules! on_both_drivers {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn chan_sip() {
                super::$name(crate::support::drivers::Driver::ChanSip)
            }
            #[test]
            fn pjsip() {
                super::$name(crate::support::drivers::Driver::Pjsip)
            }
        }
    )*};
}

/// A capture's messages with their times (from the timing sidecar: the captures carry no
/// `Timestamp:` header).
pub fn load(d: Driver, name: &str) -> Vec<(Message, u64)> {
    let name = format!("{}{name}.ami", d.prefix());
    let cap = super::events::load_capture(&name);
    assert_eq!(cap.clock, "timing sidecar", "{name}");
    cap.messages.into_iter().map(|t| (t.msg, t.at_ms)).collect()
}

/// Every intent, with the time (ms after the capture's first message) it came at.
pub fn run(t: &mut Tracker, msgs: &[(Message, u64)]) -> Vec<(u64, Intent)> {
    let t0 = msgs.first().map_or(0, |(_, at)| *at);
    let mut out = Vec::new();
    for (m, at) in msgs {
        for i in t.handle_vec(m, *at) {
            out.push((at.saturating_sub(t0), i));
        }
    }
    out
}

/// Run a whole call: the tracker must end with nothing left (no orphaned call or channel).
pub fn run_all(t: &mut Tracker, msgs: &[(Message, u64)]) -> Vec<(u64, Intent)> {
    let v = run(t, msgs);
    assert!(t.is_empty(), "finished calls must be purged");
    assert_eq!(t.channel_count(), 0, "channels must be purged");
    v
}

/// The time (ms after the first message) of the first message matching `pred`.
pub fn time_of(msgs: &[(Message, u64)], pred: impl Fn(&Message) -> bool) -> u64 {
    let t0 = msgs[0].1;
    let (_, at) = msgs.iter().find(|(m, _)| pred(m)).expect("message found");
    at - t0
}

/// `(Channel, Uniqueid, Linkedid)` of each Newchannel, in order.
pub fn channels(msgs: &[(Message, u64)]) -> Vec<(String, String, String)> {
    msgs.iter()
        .filter(|(m, _)| m.event() == Some("Newchannel"))
        .map(|(m, _)| {
            let get = |k: &str| m.get(k).unwrap_or("").to_string();
            (get("Channel"), get("Uniqueid"), get("Linkedid"))
        })
        .collect()
}

pub fn is(m: &Message, event: &str, channel: &str) -> bool {
    m.event() == Some(event) && m.get("Channel") == Some(channel)
}

/// Copy of `m` with every field whose value is exactly `from` set to `to` (for each pair, all
/// at once, so a swap works), and every channel name `TECH/from-…` renamed `TECH/to-…`.
pub fn rename(m: &Message, pairs: &[(&str, &str)]) -> Message {
    let mut out = Message::new();
    for (k, v) in m.iter() {
        let mut new = v.to_string();
        for (from, to) in pairs {
            if v == *from {
                new = to.to_string();
                break;
            }
            if let Some((tech, rest)) = v.split_once('/') {
                if let Some(seq) = rest.strip_prefix(from).and_then(|r| r.strip_prefix('-')) {
                    new = format!("{tech}/{to}-{seq}");
                    break;
                }
            }
        }
        out.push(k, &new);
    }
    out
}

/// Copy of `m` with the given fields replaced (fields not present are left alone).
pub fn set(m: &Message, fields: &[(&str, &str)]) -> Message {
    let mut out = Message::new();
    for (k, v) in m.iter() {
        let new = fields
            .iter()
            .find(|(f, _)| f.eq_ignore_ascii_case(k))
            .map_or(v, |(_, nv)| nv);
        out.push(k, new);
    }
    out
}
