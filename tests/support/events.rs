//! Builders for the tracker tests: captures as timed messages, channel events in the
//! Asterisk 20 shapes of the captures, the usual tracker, and the actions the tests expect.

use callme::ami::Message;
use callme::calls::{Action, FinishUser, Intent, Status, Tracker, TrackerConfig};

/// The internal numbers of the Bitrix24 users who take calls in the captures.
pub const EMPLOYEES: [&str; 3] = ["219", "220", "221"];

/// A tracker with the default config that knows [`EMPLOYEES`].
pub fn tracker() -> Tracker {
    tracker_with(TrackerConfig::default())
}

/// A tracker with `cfg` that knows [`EMPLOYEES`].
pub fn tracker_with(cfg: TrackerConfig) -> Tracker {
    let mut t = Tracker::new(cfg);
    t.set_employees(EMPLOYEES.map(String::from));
    t
}

/// A capture under `tests/fixtures/` (e.g. `a_inbound_answered.ami` or
/// `legacy/ast11_answered.ami`), loaded with its clock. A capture the codec had to cut is a
/// broken fixture, so a dropped message fails the test here.
pub fn load_capture(name: &str) -> callme::replay::Capture {
    let cap = callme::replay::load(&super::fixture_path(name))
        .unwrap_or_else(|e| panic!("capture {name}: {e}"));
    assert_eq!(cap.dropped, 0, "{name}: messages dropped by the codec");
    cap
}

/// A capture's messages with the capture-clock time (ms) of each.
pub fn capture(name: &str) -> Vec<(Message, u64)> {
    load_capture(name)
        .messages
        .into_iter()
        .map(|t| (t.msg, t.at_ms))
        .collect()
}

/// Feed `msgs` to `t`; each intent comes with the time of the message that produced it.
pub fn run(t: &mut Tracker, msgs: &[(Message, u64)]) -> Vec<(u64, Intent)> {
    let mut out = Vec::new();
    for (m, at) in msgs {
        for i in t.handle_vec(m, *at) {
            out.push((*at, i));
        }
    }
    out
}

/// The actions of timed intents, in order.
pub fn actions(v: &[(u64, Intent)]) -> Vec<Action> {
    v.iter().map(|(_, i)| i.action.clone()).collect()
}

pub fn show(ext: &str) -> Action {
    Action::Show { ext: ext.into() }
}

pub fn hide(ext: &str) -> Action {
    Action::Hide { ext: ext.into() }
}

/// The finish of a call that ends under employee `ext`.
pub fn finish(ext: &str, duration: u64, status: Status) -> Action {
    Action::Finish {
        user: FinishUser::Employee(ext.into()),
        duration,
        status,
    }
}

/// The finish of a call that ends under the CRM-responsible user.
pub fn finish_responsible(duration: u64, status: Status) -> Action {
    Action::Finish {
        user: FinishUser::Responsible,
        duration,
        status,
    }
}

/// An AMI message from its fields, in order.
pub fn ev(fields: &[(&str, &str)]) -> Message {
    Message::from_pairs(fields)
}

/// One channel, to build its events in the Asterisk 20 shapes of the captures (the channel
/// block `Channel`, `Uniqueid`, `Linkedid`, `Context`, `Exten`, `CallerIDNum`; a field left
/// empty here is left out of the events).
pub struct Chan {
    pub name: &'static str,
    pub uid: &'static str,
    pub linked: &'static str,
    pub context: &'static str,
    pub exten: &'static str,
    pub cid: &'static str,
}

impl Chan {
    /// The channel block with every key prefixed (`""` or `"Dest"`) and Linkedid `linked`.
    fn block(&self, prefix: &str, linked: &str) -> Vec<(String, String)> {
        [
            ("Channel", self.name),
            ("Uniqueid", self.uid),
            ("Linkedid", linked),
            ("Context", self.context),
            ("Exten", self.exten),
            ("CallerIDNum", self.cid),
        ]
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (format!("{prefix}{k}"), v.to_string()))
        .collect()
    }

    /// `event` on this channel, then the `extra` fields.
    pub fn ev(&self, event: &str, extra: &[(&str, &str)]) -> Message {
        self.ev_linked(event, self.linked, extra)
    }

    /// [`Chan::ev`] with the channel re-linked to `linked` (after a transfer or a merge).
    pub fn ev_linked(&self, event: &str, linked: &str, extra: &[(&str, &str)]) -> Message {
        let mut m = Message::new();
        m.push("Event", event);
        for (k, v) in self.block("", linked) {
            m.push(&k, &v);
        }
        for (k, v) in extra {
            m.push(k, v);
        }
        m
    }

    /// A `DialBegin`/`DialEnd` from this channel to `dest` (its block as `Dest…`), then the
    /// `extra` fields.
    pub fn dial(&self, event: &str, dest: &Chan, extra: &[(&str, &str)]) -> Message {
        let mut m = self.ev(event, &[]);
        for (k, v) in dest.block("Dest", dest.linked) {
            m.push(&k, &v);
        }
        for (k, v) in extra {
            m.push(k, v);
        }
        m
    }
}
