//! The pure call tracker: `(state, AMI event, now) → intents`.
//!
//! No sockets, files or clocks in here. The caller passes each event with the time it happened,
//! so a real capture replayed through [`Tracker::handle`] is an ordinary unit test, and the
//! durations it computes are exact.
//!
//! A call is the set of channels sharing a Linkedid (ami.md §7). The tracker follows:
//! - the **client** channel (the trunk leg of an inbound call);
//! - **employee** channels, recognised from the channel name (see [`super::channel`]);
//! - bridges, to see who actually talks to the client (transfers, pickups). A phone's own
//!   attended transfer (REFER with Replaces) and a call pickup bring in a channel that began
//!   as a call of its own, with its own Linkedid; sharing a bridge with the client (and, for a
//!   pickup, the `Pickup` event) makes it part of the client's call.
//!
//! and turns that into Bitrix24 steps: one register, a card per ringing employee, hides when
//! phones stop ringing or someone else answers, and one finish with "last one wins".

use std::collections::{HashMap, HashSet};

use crate::ami::event::{Chan, Event};
use crate::ami::Message;
pub use crate::config::MissedUser;

use super::channel;
use super::intent::{Action, Direction, FinishUser, Intent};
use super::status::Status;

/// The part of the configuration the tracker needs. Built from `[calls]`.
#[derive(Clone, Debug)]
pub struct TrackerConfig {
    /// Prefix of `EXTERNAL_CALL_ID`, so two PBXs on one portal never collide.
    pub system_name: String,
    /// Monitored DIDs; empty means every inbound call.
    pub lines: Vec<String>,
    /// Contexts where trunk calls enter the dialplan.
    pub inbound_contexts: Vec<String>,
    /// Internal numbers allowed to get cards; empty means every employee.
    pub show_cards_to: Vec<String>,
    pub missed_user: MissedUser,
    /// Channel variables that name the call's recording, best first. Our dialplan module sets
    /// `CallMeFULLFNAME`; FreePBX's own recording sets `MIXMONITOR_FILENAME`.
    pub recording_vars: Vec<String>,
}

/// The default [`TrackerConfig::recording_vars`].
pub fn default_recording_vars() -> Vec<String> {
    vec!["CallMeFULLFNAME".into(), "MIXMONITOR_FILENAME".into()]
}

impl TrackerConfig {
    /// From `[calls]`, and `[recording] source` for the recording variables.
    pub fn from_config(cfg: &crate::config::Config) -> TrackerConfig {
        let calls = &cfg.calls;
        TrackerConfig {
            system_name: calls.system_name.clone(),
            lines: calls.lines.clone(),
            inbound_contexts: calls.inbound_contexts.clone(),
            show_cards_to: calls.show_cards_to.clone(),
            missed_user: calls.missed_user,
            recording_vars: cfg.recording.source.vars(),
        }
    }
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            system_name: "callme".into(),
            lines: Vec::new(),
            inbound_contexts: vec!["from-trunk".into(), "from-pstn".into()],
            show_cards_to: Vec::new(),
            missed_user: MissedUser::Responsible,
            recording_vars: default_recording_vars(),
        }
    }
}

/// A short view of a tracked call, for `/status` and logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallSummary {
    pub call: String,
    pub direction: Direction,
    pub phone: String,
    pub line: String,
    pub employee: Option<String>,
    pub started_ms: u64,
    /// Who handed the client to whom, and when.
    pub transfers: Vec<Transfer>,
}

/// One hand-over of the client from an employee to another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transfer {
    pub from: String,
    pub to: String,
    /// When the new employee started talking to the client (ms since the epoch).
    pub at_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Not ours: internal-only, an unmonitored line, or started before we were watching.
    Ignored,
    /// Inbound, but the DID is not known yet (FreePBX trunks enter with `Exten: s`).
    PendingDid,
    /// Registered: every change is mirrored to Bitrix24.
    Active,
}

struct ChanState {
    call: u64,
    /// The channel's name (legacy events name channels, not Uniqueids, in BRIDGEPEER).
    name: String,
    /// The internal number behind an employee channel.
    ext: Option<String>,
}

/// How a call began; decides which channel is the client's and who the employee is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// From a trunk into an inbound context.
    Inbound,
    /// Dialled out from a desk phone through a trunk.
    Outbound,
    /// Our own Originate for a Bitrix24 click-to-call: Bitrix24 registered it already.
    ClickToCall,
}

/// A click-to-call Originate the daemon sent, waiting for its channels to show up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Originate {
    /// The Bitrix24 CALL_ID from ONEXTERNALCALLSTART.
    pub call_id: String,
    /// The `ChannelId` we gave the Originate: the Uniqueid (and Linkedid) of its first channel.
    pub channel_id: String,
    /// The Originate's ActionID; `OriginateResponse` carries it.
    pub action_id: String,
    /// The clicking employee's internal number.
    pub ext: String,
    /// The client's number as dialled.
    pub phone: String,
    /// A callback-form call (ONEXTERNALCALLBACKSTART) for this line: Bitrix24 has not
    /// registered it, so it is registered (TYPE=4) once the employee answers. `None` for a
    /// click-to-call, which Bitrix24 registered already.
    pub callback_line: Option<String>,
}

struct Call {
    key: String,
    /// Whether the call's first channel (Uniqueid = Linkedid) has been seen.
    has_client_channel: bool,
    mode: Mode,
    origin: Origin,
    phone: String,
    line: String,
    started_ms: u64,
    /// Uniqueid of the client's channel.
    client: Option<String>,
    /// Outbound and click-to-call: the employee placing the call (Uniqueid, internal number).
    caller: Option<(String, String)>,
    /// Click-to-call: the Bitrix24 CALL_ID and our Originate's ActionID.
    originate: Option<(String, String)>,
    /// `OriginateResponse` `Reason` of a failed Originate.
    originate_reason: Option<u32>,
    /// A callback not registered yet: its line.
    callback_line: Option<String>,
    /// Marked by our dialplan variables (IS_CALLME_ORIGINATE) but not matched to a request of
    /// ours: someone else's click-to-call. Excluded from desk-phone outbound detection.
    foreign_originate: bool,
    live_channels: usize,
    /// Cards currently shown, in the order they were shown.
    shown: Vec<String>,
    /// Ringing employee legs: dest Uniqueid → internal number.
    ringing: HashMap<String, String>,
    /// The employee talking to the client right now.
    talking: Option<String>,
    last_talker: Option<String>,
    last_rang: Option<String>,
    first_answer_ms: Option<u64>,
    /// The outcome of the last unanswered dial attempt.
    last_status: Option<Status>,
    client_cause: Option<u32>,
    /// Hangup cause of the most recent channel to go.
    last_cause: Option<u32>,
    client_gone_ms: Option<u64>,
    /// The recording's file name and the rank of the variable that named it.
    recording: Option<(usize, String)>,
    /// Dials in progress: (caller Uniqueid, destination Uniqueid). Asterisk 1.8/11's
    /// `Dial End` names only the caller, so this says which destinations it ended.
    dials: Vec<(String, String)>,
    /// Seen Asterisk 1.8/11 events: `BRIDGEPEER` then stands in for bridge events.
    legacy: bool,
    transfers: Vec<Transfer>,
}

impl Call {
    /// Undecided, and its first channel (Uniqueid = Linkedid) not seen yet: other channels
    /// of it came first, after a login mid-call.
    fn awaits_first(&self) -> bool {
        self.mode == Mode::Ignored && !self.has_client_channel
    }

    fn new(key: String, started_ms: u64) -> Call {
        Call {
            key,
            has_client_channel: false,
            mode: Mode::Ignored,
            origin: Origin::Inbound,
            phone: String::new(),
            line: String::new(),
            started_ms,
            client: None,
            caller: None,
            originate: None,
            originate_reason: None,
            callback_line: None,
            foreign_originate: false,
            live_channels: 0,
            shown: Vec::new(),
            ringing: HashMap::new(),
            talking: None,
            last_talker: None,
            last_rang: None,
            first_answer_ms: None,
            last_status: None,
            client_cause: None,
            last_cause: None,
            client_gone_ms: None,
            recording: None,
            dials: Vec::new(),
            legacy: false,
            transfers: Vec::new(),
        }
    }

    fn direction(&self) -> Direction {
        match self.origin {
            Origin::Inbound => Direction::Inbound,
            Origin::Outbound | Origin::ClickToCall if self.callback_line.is_some() => {
                Direction::Callback
            }
            Origin::Outbound | Origin::ClickToCall => Direction::Outbound,
        }
    }

    fn caller_ext(&self) -> Option<&str> {
        self.caller.as_ref().map(|(_, ext)| ext.as_str())
    }

    fn push(&self, action: Action, out: &mut Vec<Intent>) {
        out.push(Intent {
            call: self.key.clone(),
            action,
        });
    }
}

/// The call tracker. Feed it every AMI event in order with [`Tracker::handle`].
pub struct Tracker {
    cfg: TrackerConfig,
    /// Internal numbers of active Bitrix24 users. `None` until the directory is loaded; until
    /// then any 1–6 digit peer counts as internal.
    employees: Option<HashSet<String>>,
    calls: HashMap<u64, Call>,
    by_linkedid: HashMap<String, u64>,
    channels: HashMap<String, ChanState>,
    /// Bridge Uniqueid → Uniqueids of the channels in it.
    bridges: HashMap<String, Vec<String>>,
    /// Click-to-call Originates not yet seen on AMI, with the time they expire.
    pending: Vec<(Originate, u64)>,
    next_id: u64,
}

impl Tracker {
    pub fn new(cfg: TrackerConfig) -> Tracker {
        Tracker {
            cfg,
            employees: None,
            calls: HashMap::new(),
            by_linkedid: HashMap::new(),
            channels: HashMap::new(),
            bridges: HashMap::new(),
            pending: Vec::new(),
            next_id: 1,
        }
    }

    /// Replace the set of internal numbers that belong to active Bitrix24 users.
    pub fn set_employees<I: IntoIterator<Item = String>>(&mut self, inners: I) {
        self.employees = Some(inners.into_iter().collect());
    }

    /// Calls being tracked (monitored or not). Finished calls are purged, so this stays small.
    pub fn len(&self) -> usize {
        self.calls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// No call, no channel and no pending click-to-call: nothing the events journal holds is
    /// live any more (it may be compacted to nothing, and the state thread's channel names
    /// dropped).
    pub fn holds_nothing(&self) -> bool {
        self.calls.is_empty() && self.channels.is_empty() && self.pending.is_empty()
    }

    /// Channels being tracked.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Uniqueids of every channel being tracked, for reconciliation against
    /// `CoreShowChannels` after a reconnect or restart.
    pub fn channel_ids(&self) -> Vec<String> {
        let mut v: Vec<String> = self.channels.keys().cloned().collect();
        v.sort();
        v
    }

    /// Whether the channel with this Uniqueid is tracked.
    pub fn has_channel(&self, uniqueid: &str) -> bool {
        self.channels.contains_key(uniqueid)
    }

    /// The keys of everything still held: tracked channels' Uniqueids, every Linkedid of a
    /// call in progress, and the CALL_IDs, channel ids and ActionIDs of click-to-calls pending
    /// or in progress. The events journal keeps the records that carry one of them
    /// ([`crate::journal::EventJournal::compact`]); a finished call has none left.
    pub fn live_keys(&self) -> HashSet<String> {
        let mut keys: HashSet<String> = self.channels.keys().cloned().collect();
        keys.extend(self.by_linkedid.keys().cloned());
        for (o, _) in &self.pending {
            keys.extend([o.call_id.clone(), o.channel_id.clone(), o.action_id.clone()]);
        }
        for c in self.calls.values() {
            if let Some((call_id, action_id)) = &c.originate {
                keys.extend([call_id.clone(), action_id.clone()]);
            }
        }
        keys
    }

    /// Sizes of the tracker's maps (calls, Linkedid aliases, channels, bridges, pending
    /// click-to-calls), for the bounds stated in `docs/outbox.md` and the tests that check them.
    pub fn sizes(&self) -> [usize; 5] {
        [
            self.calls.len(),
            self.by_linkedid.len(),
            self.channels.len(),
            self.bridges.len(),
            self.pending.len(),
        ]
    }

    /// The monitored calls in progress.
    pub fn active_calls(&self) -> Vec<CallSummary> {
        let mut v: Vec<CallSummary> = self
            .calls
            .values()
            .filter(|c| c.mode == Mode::Active)
            .map(|c| CallSummary {
                call: c.key.clone(),
                direction: c.direction(),
                phone: c.phone.clone(),
                line: c.line.clone(),
                employee: c.talking.clone().or_else(|| c.last_talker.clone()),
                started_ms: c.started_ms,
                transfers: c.transfers.clone(),
            })
            .collect();
        v.sort_by_key(|c| c.started_ms);
        v
    }

    /// Process one AMI message that happened at `now_ms` (milliseconds since the Unix epoch)
    /// and append the resulting intents to `out`.
    pub fn handle(&mut self, msg: &Message, now_ms: u64, out: &mut Vec<Intent>) {
        match Event::parse(msg) {
            Event::Newchannel(c) => self.on_newchannel(&c, now_ms, out),
            Event::Newexten { chan } => self.on_newexten(&chan, out),
            Event::VarSet {
                chan,
                variable: "BRIDGEPEER",
                value,
            } => self.on_bridgepeer(&chan, value, now_ms, out),
            Event::VarSet {
                chan,
                variable,
                value,
            } => self.on_varset(&chan, variable, value, out),
            Event::DialBegin {
                src,
                dest,
                dial_string,
            } => self.on_dial_begin(src.as_ref(), &dest, dial_string, out),
            Event::DialEnd { src, dest, status } => {
                self.on_dial_end(src.as_ref(), &dest, status, now_ms, out)
            }
            Event::BridgeEnter { chan, bridge } => self.on_bridge_enter(&chan, bridge, now_ms, out),
            Event::BridgeLeave { chan, bridge } => self.on_bridge_leave(&chan, bridge),
            Event::Pickup { picker, target } => self.on_pickup(&picker, &target),
            Event::Hangup { chan, cause } => self.on_hangup(&chan, cause, now_ms, out),
            Event::LegacyDialEnd { src, status } => {
                self.on_legacy_dial_end(&src, status, now_ms, out)
            }
            Event::LegacyBridge { one, two, link } => {
                let bridge = format!("legacy:{}:{}", one.uniqueid, two.uniqueid);
                for chan in [&one, &two] {
                    if let Some(id) = self.call_of(chan) {
                        if let Some(call) = self.calls.get_mut(&id) {
                            call.legacy = true;
                        }
                    }
                }
                if link {
                    self.on_bridge_enter(&one, &bridge, now_ms, out);
                    self.on_bridge_enter(&two, &bridge, now_ms, out);
                } else {
                    self.on_bridge_leave(&one, &bridge);
                    self.on_bridge_leave(&two, &bridge);
                }
            }
            Event::OriginateResponse {
                action_id,
                success,
                reason,
                ..
            } => self.on_originate_response(action_id, success, reason, now_ms, out),
            Event::Other => {}
        }
    }

    /// Asterisk 1.8/11 `Dial End` names only the caller: end every destination it was dialling.
    /// With one destination an ANSWER is that destination's; with several (a ring group) the
    /// bridge that follows says who answered.
    fn on_legacy_dial_end(&mut self, src: &Chan, status: &str, now_ms: u64, out: &mut Vec<Intent>) {
        let Some(id) = self.call_of(src) else { return };
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        call.legacy = true;
        let dests: Vec<String> = call
            .dials
            .iter()
            .filter(|(s, _)| s == src.uniqueid)
            .map(|(_, d)| d.clone())
            .collect();
        if status.eq_ignore_ascii_case("ANSWER") && dests.len() != 1 {
            return;
        }
        for d in dests {
            let Some(st) = self.channels.get(&d) else {
                continue;
            };
            let name = st.name.clone();
            let dest = Chan {
                name: &name,
                uniqueid: &d,
                linkedid: &d,
                context: "",
                exten: "",
                caller_num: "",
            };
            self.on_dial_end(Some(src), &dest, status, now_ms, out);
        }
    }

    /// Asterisk 1.8/11 also says who a channel is bridged to with the `BRIDGEPEER` variable;
    /// used only for calls that speak the legacy event set, as a stand-in for bridge events.
    fn on_bridgepeer(&mut self, chan: &Chan, peer: &str, now_ms: u64, out: &mut Vec<Intent>) {
        let Some(id) = self.call_of(chan) else { return };
        if peer.is_empty() || !self.calls[&id].legacy {
            return;
        }
        let Some(peer_uid) = self
            .channels
            .iter()
            .find(|(_, st)| st.name == peer)
            .map(|(u, _)| u.clone())
        else {
            return;
        };
        let bridge = format!("bridgepeer:{}", chan.uniqueid.min(peer_uid.as_str()));
        let peer_name = peer.to_string();
        let peer_chan = Chan {
            name: &peer_name,
            uniqueid: &peer_uid,
            linkedid: &peer_uid,
            context: "",
            exten: "",
            caller_num: "",
        };
        self.on_bridge_enter(chan, &bridge, now_ms, out);
        self.on_bridge_enter(&peer_chan, &bridge, now_ms, out);
    }

    /// The daemon sent a click-to-call Originate. Its channels will be recognised by `ChannelId`
    /// (their Uniqueid/Linkedid), or by the `CallMeCALL_ID` variable, or its `OriginateResponse`
    /// by ActionID. If none of that shows up by `expires_ms`, the call is finished anyway: the
    /// call exists in Bitrix24 and must not stay open.
    pub fn expect_originate(&mut self, o: Originate, expires_ms: u64) {
        self.pending.push((o, expires_ms));
    }

    /// The Originate was refused outright (`Response: Error`): finish the Bitrix24 call.
    pub fn originate_failed(&mut self, call_id: &str, out: &mut Vec<Intent>) {
        self.originate_refused(call_id, Status::OTHER, out);
    }

    /// The click-to-call was not dialled at all (the toll-fraud guard refused it): finish the
    /// Bitrix24 call with `status`.
    pub fn originate_refused(&mut self, call_id: &str, status: Status, out: &mut Vec<Intent>) {
        if let Some(i) = self.pending.iter().position(|(o, _)| o.call_id == call_id) {
            let (o, _) = self.pending.remove(i);
            self.finish_unstarted(&o, status, out);
        }
    }

    /// Let time pass without an event: expires click-to-call requests that never showed up.
    pub fn tick(&mut self, now_ms: u64, out: &mut Vec<Intent>) {
        while let Some(i) = self.pending.iter().position(|(_, exp)| *exp <= now_ms) {
            let (o, _) = self.pending.remove(i);
            log::warn!(
                "click-to-call {} by {}: no channel appeared on AMI, finishing it",
                o.call_id,
                o.ext
            );
            self.finish_unstarted(&o, Status::OTHER, out);
        }
    }

    /// A click-to-call that never got a channel: adopt and finish it under the employee.
    /// Nobody talked, so the finish needs no time: duration 0, whenever it happens.
    fn finish_unstarted(&mut self, o: &Originate, status: Status, out: &mut Vec<Intent>) {
        if o.callback_line.is_some() {
            log::warn!(
                "callback to {} by {} failed before anyone answered",
                o.phone,
                o.ext
            );
            return; // never registered: nothing to close in Bitrix24
        }
        let key = format!("{}-{}", self.cfg.system_name, o.channel_id);
        for action in [
            Action::Adopt {
                call_id: o.call_id.clone(),
                ext: o.ext.clone(),
            },
            Action::Finish {
                user: FinishUser::Employee(o.ext.clone()),
                duration: 0,
                status,
            },
        ] {
            out.push(Intent {
                call: key.clone(),
                action,
            });
        }
    }

    fn take_pending(&mut self, pred: impl Fn(&Originate) -> bool) -> Option<Originate> {
        let i = self.pending.iter().position(|(o, _)| pred(o))?;
        Some(self.pending.remove(i).0)
    }

    /// Turn `id` into the click-to-call `o`, placed by the channel `uniqueid`.
    fn adopt(&mut self, id: u64, o: Originate, uniqueid: &str, out: &mut Vec<Intent>) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        call.mode = Mode::Active;
        call.origin = Origin::ClickToCall;
        call.phone = o.phone.clone();
        call.caller = Some((uniqueid.to_string(), o.ext.clone()));
        call.originate = Some((o.call_id.clone(), o.action_id.clone()));
        if o.callback_line.is_some() {
            // Registered when the employee answers; nothing exists in Bitrix24 yet.
            call.callback_line = o.callback_line;
            return;
        }
        call.push(
            Action::Adopt {
                call_id: o.call_id,
                ext: o.ext,
            },
            out,
        );
    }

    fn on_originate_response(
        &mut self,
        action_id: &str,
        success: bool,
        reason: u32,
        now_ms: u64,
        out: &mut Vec<Intent>,
    ) {
        if action_id.is_empty() {
            return;
        }
        let found = self.calls.iter().find_map(|(id, c)| {
            c.originate
                .as_ref()
                .is_some_and(|(_, a)| a == action_id)
                .then_some(*id)
        });
        if let Some(id) = found {
            if !success {
                let call = self.calls.get_mut(&id).expect("found");
                call.originate_reason = Some(reason);
                if call.live_channels == 0 {
                    self.finish(id, now_ms, out);
                }
            }
            return;
        }
        if success {
            return;
        }
        // Failed before any channel of it was seen (or seen by us): finish it now.
        if let Some(o) = self.take_pending(|o| o.action_id == action_id) {
            self.finish_unstarted(&o, Status::from_originate_reason(reason), out);
        }
    }

    /// Convenience wrapper around [`Tracker::handle`].
    pub fn handle_vec(&mut self, msg: &Message, now_ms: u64) -> Vec<Intent> {
        let mut out = Vec::new();
        self.handle(msg, now_ms, &mut out);
        out
    }

    /// Whether the channel `name` is an employee's phone (for [`super::adopt::adopt`]).
    pub fn is_employee_channel(&self, name: &str) -> bool {
        self.employee_ext(name).is_some()
    }

    fn employee_ext(&self, name: &str) -> Option<String> {
        let peer = channel::peer(name)?;
        let known = match &self.employees {
            Some(set) => set.contains(peer),
            None => channel::looks_internal(peer),
        };
        known.then(|| peer.to_string())
    }

    fn card_allowed(&self, ext: &str) -> bool {
        self.cfg.show_cards_to.is_empty() || self.cfg.show_cards_to.iter().any(|e| e == ext)
    }

    fn monitored(&self, line: &str) -> bool {
        self.cfg.lines.is_empty() || self.cfg.lines.iter().any(|l| l == line)
    }

    /// The call a channel belongs to, registering the channel if it is new but its Linkedid
    /// is known (a channel whose Newchannel we did not see).
    fn call_of(&mut self, chan: &Chan) -> Option<u64> {
        if let Some(st) = self.channels.get(chan.uniqueid) {
            let id = st.call;
            return Some(self.follow_linkedid(id, chan.linkedid));
        }
        let id = *self.by_linkedid.get(chan.linkedid)?;
        // A call's first channel enters only through its Newchannel (real, or adopted by
        // reconciliation): after a login mid-call its other events come first, and taking it
        // in through them would leave the call undecided for good.
        if chan.uniqueid == chan.linkedid && self.calls.get(&id).is_some_and(Call::awaits_first) {
            return None;
        }
        self.add_channel(id, chan);
        Some(id)
    }

    /// Asterisk 12+ gives every channel in a bridge the oldest Linkedid (ami.md §7), so a
    /// channel can show up with a Linkedid its call did not have. A new one becomes an alias;
    /// one that belongs to another tracked call means the two calls are now one.
    fn follow_linkedid(&mut self, id: u64, linkedid: &str) -> u64 {
        match self.by_linkedid.get(linkedid) {
            Some(&other) if other == id => id,
            Some(&other) => self.merge(id, other),
            None => {
                self.by_linkedid.insert(linkedid.to_string(), id);
                id
            }
        }
    }

    /// Merge calls `a` and `b`; returns the survivor. The call that is mirrored to Bitrix24
    /// survives (an internal consultation call folds into the client's call), so there is never
    /// a second register and no call is orphaned. Two registered calls are not merged: each
    /// already has its Bitrix24 call, and each finishes when its own channels are gone.
    fn merge(&mut self, a: u64, b: u64) -> u64 {
        let rank = |m: Mode| match m {
            Mode::Active => 2,
            Mode::PendingDid => 1,
            Mode::Ignored => 0,
        };
        let (ra, rb) = match (self.calls.get(&a), self.calls.get(&b)) {
            (Some(x), Some(y)) => ((rank(x.mode), x.started_ms), (rank(y.mode), y.started_ms)),
            _ => return a,
        };
        if ra.0 == 2 && rb.0 == 2 {
            log::debug!("two registered calls share a bridge; keeping them apart");
            return a;
        }
        // Higher mode wins; on a tie the older call (the one whose Linkedid Asterisk keeps).
        let (keep, gone) = if ra.0 > rb.0 || (ra.0 == rb.0 && ra.1 <= rb.1) {
            (a, b)
        } else {
            (b, a)
        };
        let Some(g) = self.calls.remove(&gone) else {
            return keep;
        };
        for st in self.channels.values_mut().filter(|st| st.call == gone) {
            st.call = keep;
        }
        for v in self.by_linkedid.values_mut().filter(|v| **v == gone) {
            *v = keep;
        }
        let call = self.calls.get_mut(&keep).expect("survivor");
        log::debug!("{}: merged {} into it", call.key, g.key);
        call.live_channels += g.live_channels;
        call.dials.extend(g.dials);
        call.legacy |= g.legacy;
        if call.recording.is_none() {
            call.recording = g.recording;
        }
        keep
    }

    fn add_channel(&mut self, id: u64, chan: &Chan) {
        let ext = self.employee_ext(chan.name);
        self.channels.insert(
            chan.uniqueid.to_string(),
            ChanState {
                call: id,
                name: chan.name.to_string(),
                ext,
            },
        );
        if let Some(call) = self.calls.get_mut(&id) {
            call.live_channels += 1;
        }
    }

    fn on_newchannel(&mut self, c: &Chan, now_ms: u64, out: &mut Vec<Intent>) {
        if self.channels.contains_key(c.uniqueid) {
            return;
        }
        let first = c.uniqueid == c.linkedid;
        let id = match self.by_linkedid.get(c.linkedid) {
            // The call's first channel after other channels of it: we logged in mid-call and
            // saw those before the listing that adopts this one (reconciliation). It decides
            // the call now, as it would have had it come first.
            Some(&id) if first && self.calls.get(&id).is_some_and(Call::awaits_first) => id,
            Some(&id) => {
                self.add_channel(id, c);
                return;
            }
            None => {
                let id = self.next_id;
                self.next_id += 1;
                let call = Call::new(format!("{}-{}", self.cfg.system_name, c.linkedid), now_ms);
                self.calls.insert(id, call);
                self.by_linkedid.insert(c.linkedid.to_string(), id);
                id
            }
        };
        // The first channel of a new call. A call whose first channel we did not see started
        // before we were watching: it stays ignored until reconciliation lists that channel.
        let ours = self.take_pending(|o| o.channel_id == c.uniqueid || o.channel_id == c.linkedid);
        if ours.is_none() && first && self.cfg.inbound_contexts.iter().any(|x| x == c.context) {
            if let Some(call) = self.calls.get_mut(&id) {
                call.mode = Mode::PendingDid;
                call.phone = c.caller_num.to_string();
                call.client = Some(c.uniqueid.to_string());
            }
        }
        if let Some(call) = self.calls.get_mut(&id) {
            call.has_client_channel |= first;
        }
        self.add_channel(id, c);
        if let Some(o) = ours {
            self.adopt(id, o, c.uniqueid, out);
        } else if !c.exten.is_empty() && c.exten != "s" {
            self.decide(id, Some(c.exten), out);
        }
    }

    /// FreePBX routes trunk calls through `Exten: s`; the DID shows up in a dialplan step
    /// of an inbound context.
    fn on_newexten(&mut self, chan: &Chan, out: &mut Vec<Intent>) {
        let Some(id) = self.call_of(chan) else { return };
        let call = &self.calls[&id];
        if call.mode == Mode::PendingDid
            && call.client.as_deref() == Some(chan.uniqueid)
            && self.cfg.inbound_contexts.iter().any(|x| x == chan.context)
            && is_number(chan.exten)
        {
            let did = chan.exten.to_string();
            self.decide(id, Some(&did), out);
        }
    }

    fn on_varset(&mut self, chan: &Chan, variable: &str, value: &str, out: &mut Vec<Intent>) {
        let Some(id) = self.call_of(chan) else { return };
        // Inherited variables keep their `_`/`__` prefix in VarSet (ami.md §5.3).
        match variable.trim_start_matches('_') {
            "FROM_DID" if is_number(value) && self.calls[&id].mode == Mode::PendingDid => {
                self.decide(id, Some(value), out);
            }
            // The Originate variables: a backup for matching our click-to-call when the
            // ChannelId did not come through (ami.md §4.2: ChannelId needs Asterisk 12.2+).
            "CallMeCALL_ID" if self.calls[&id].origin != Origin::ClickToCall => {
                if let Some(o) = self.take_pending(|o| o.call_id == value) {
                    self.adopt(id, o, chan.uniqueid, out);
                } else if let Some(call) = self.calls.get_mut(&id) {
                    call.foreign_originate = true;
                }
            }
            "IS_CALLME_ORIGINATE" if self.calls[&id].origin != Origin::ClickToCall => {
                if let Some(call) = self.calls.get_mut(&id) {
                    call.foreign_originate = true;
                }
            }
            // A recording's file name: the earlier a variable is in `recording_vars`, the
            // better; a later-listed one never replaces an earlier-listed one.
            name if !value.is_empty() => {
                let Some(rank) = self.cfg.recording_vars.iter().position(|v| v == name) else {
                    return;
                };
                if let Some(call) = self.calls.get_mut(&id) {
                    if call.recording.as_ref().is_none_or(|(r, _)| rank <= *r) {
                        call.recording = Some((rank, value.to_string()));
                    }
                }
            }
            _ => {}
        }
    }

    /// Settle whether a pending inbound call is monitored. `did = None` means "decide now with
    /// what we have": only an empty `lines` list accepts a call whose DID never showed.
    fn decide(&mut self, id: u64, did: Option<&str>, out: &mut Vec<Intent>) {
        let line = did.unwrap_or("").to_string();
        let monitored = self.monitored(&line) && (did.is_some() || self.cfg.lines.is_empty());
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if call.mode != Mode::PendingDid {
            return;
        }
        if !monitored {
            log::debug!("{}: line {line:?} is not monitored", call.key);
            call.mode = Mode::Ignored;
            return;
        }
        call.mode = Mode::Active;
        call.line = line.clone();
        out.push(Intent {
            call: call.key.clone(),
            action: Action::Register {
                direction: call.direction(),
                phone: call.phone.clone(),
                line,
                started_ms: call.started_ms,
                employee: None,
            },
        });
    }

    fn on_dial_begin(
        &mut self,
        src: Option<&Chan>,
        dest: &Chan,
        dial_string: &str,
        out: &mut Vec<Intent>,
    ) {
        let Some(mut id) = self.call_of(dest) else {
            return;
        };
        // Before 13.5 channel events carry no Linkedid: the dial is what ties the callee's
        // channel to the caller's call.
        if let Some(s) = src {
            if let Some(sid) = self.call_of(s) {
                if sid != id {
                    id = self.merge(sid, id);
                }
                if let Some(call) = self.calls.get_mut(&id) {
                    call.dials
                        .push((s.uniqueid.to_string(), dest.uniqueid.to_string()));
                }
            }
        }
        if self.calls[&id].mode == Mode::PendingDid {
            self.decide(id, None, out);
        }
        let dest_ext = self.channels.get(dest.uniqueid).and_then(|c| c.ext.clone());
        let src_ext = src
            .and_then(|s| self.channels.get(s.uniqueid))
            .and_then(|c| c.ext.clone());
        let call = &self.calls[&id];
        if call.mode == Mode::Ignored && !call.foreign_originate {
            if let (Some(src), Some(ext), None) = (src, src_ext.as_deref(), dest_ext.as_deref()) {
                self.maybe_outbound(id, src, ext, dest, dial_string, out);
            }
        }
        let call = self.calls.get_mut(&id).expect("call of a tracked channel");
        if call.mode != Mode::Active {
            return;
        }
        if call.origin != Origin::Inbound && call.client.is_none() && dest_ext.is_none() {
            // The employee's leg dialling out: that is the client.
            let from_caller = src.is_some_and(|s| {
                call.caller
                    .as_ref()
                    .is_some_and(|(uid, _)| uid == s.uniqueid)
            }) || (src_ext.is_some() && src_ext.as_deref() == call.caller_ext());
            if from_caller {
                call.client = Some(dest.uniqueid.to_string());
            }
            return;
        }
        let Some(ext) = dest_ext else {
            return;
        };
        if call.origin == Origin::ClickToCall && call.caller_ext() == Some(ext.as_str()) {
            // Our Originate ringing the clicking employee: the card opens when they answer.
            return;
        }
        let allowed = self.card_allowed(&ext);
        let call = self.calls.get_mut(&id).expect("call of a tracked channel");
        call.ringing.insert(dest.uniqueid.to_string(), ext.clone());
        call.last_rang = Some(ext.clone());
        announce(call, &ext, allowed, out);
    }

    /// An employee's channel dials something that is not an employee: a desk-phone outbound
    /// call when the target looks like a trunk and the number like a phone number.
    fn maybe_outbound(
        &mut self,
        id: u64,
        src: &Chan,
        ext: &str,
        dest: &Chan,
        dial_string: &str,
        out: &mut Vec<Intent>,
    ) {
        let trunk_like = channel::peer(dest.name).is_some_and(|p| !channel::looks_internal(p));
        // What the employee dialled is the caller's extension; FreePBX may rewrite it on the
        // way to the trunk, so the dial string is the fallback.
        let number = if is_number(src.exten) && src.exten.len() >= 3 {
            src.exten.to_string()
        } else {
            channel::dialled_number(dial_string).to_string()
        };
        if !trunk_like || !is_number(&number) || number.trim_start_matches('+').len() < 3 {
            return;
        }
        let allowed = self.card_allowed(ext);
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        call.mode = Mode::Active;
        call.origin = Origin::Outbound;
        call.phone = number.clone();
        call.caller = Some((src.uniqueid.to_string(), ext.to_string()));
        call.client = Some(dest.uniqueid.to_string());
        // An outbound call belongs to the employee who placed it, whoever owns the number
        // in the CRM (issue #15: registering it under the CRM owner split the call in two).
        call.push(
            Action::Register {
                direction: Direction::Outbound,
                phone: number,
                line: String::new(),
                started_ms: call.started_ms,
                employee: Some(ext.to_string()),
            },
            out,
        );
        announce(call, ext, allowed, out);
    }

    fn on_dial_end(
        &mut self,
        src: Option<&Chan>,
        dest: &Chan,
        status: &str,
        now_ms: u64,
        out: &mut Vec<Intent>,
    ) {
        let Some(id) = self.call_of(dest) else { return };
        let ext = self.channels.get(dest.uniqueid).and_then(|c| c.ext.clone());
        let allowed = ext.as_deref().is_some_and(|e| self.card_allowed(e));
        let caller_allowed = self.calls[&id]
            .caller_ext()
            .is_some_and(|e| self.card_allowed(e));
        let call = self.calls.get_mut(&id).expect("call of a tracked channel");
        call.dials.retain(|(_, d)| d != dest.uniqueid);
        if call.mode != Mode::Active {
            return;
        }
        call.ringing.remove(dest.uniqueid);
        let to_client = call.client.as_deref() == Some(dest.uniqueid);
        if call.origin != Origin::Inbound && to_client {
            // The client picked up (or did not) the employee's outbound leg.
            if status.eq_ignore_ascii_case("ANSWER") {
                if let Some(ext) = call.caller_ext().map(str::to_string) {
                    answered(call, &ext, caller_allowed, now_ms, out);
                }
            } else if let Some(s) = Status::from_dial_status(status) {
                call.last_status = Some(s);
            }
            return;
        }
        let Some(ext) = ext else {
            return;
        };
        if status.eq_ignore_ascii_case("ANSWER") {
            if call.origin == Origin::ClickToCall
                && src.is_none()
                && call.caller_ext() == Some(ext.as_str())
            {
                // The clicking employee answered our Originate: open their card (a callback is
                // registered first: it exists in Bitrix24 only from now on).
                if let Some(line) = call.callback_line.take() {
                    call.push(
                        Action::Register {
                            direction: Direction::Callback,
                            phone: call.phone.clone(),
                            line,
                            started_ms: now_ms,
                            employee: Some(ext.clone()),
                        },
                        out,
                    );
                }
                if allowed {
                    show(call, &ext, out);
                }
                return;
            }
            // Only the client's own dial connects the employee to the client. Any other
            // answered leg (an attended-transfer consultation, the ;2 half of a Local channel)
            // talks to the client only once a bridge says so.
            if src.is_some_and(|s| call.client.as_deref() == Some(s.uniqueid)) {
                answered(call, &ext, allowed, now_ms, out);
            }
            return;
        }
        if call.first_answer_ms.is_none() {
            if let Some(s) = Status::from_dial_status(status) {
                call.last_status = Some(s);
            }
        }
        stopped_ringing(call, &ext, out);
    }

    /// A phone picked up a call ringing on another phone (directed `PickupChan` or group
    /// `Pickup`). The picker's channel began as a call of its own, with its own Linkedid, and
    /// Asterisk re-links it only after the bridge (pk capture). From here on it belongs to the
    /// ringing call: the client's `DialEnd ANSWER` that follows names the picker's channel,
    /// which makes the picker the one talking, with talk time from the pickup.
    fn on_pickup(&mut self, picker: &Chan, target: &Chan) {
        let (Some(p), Some(t)) = (self.call_of(picker), self.call_of(target)) else {
            return;
        };
        if p != t {
            let id = self.merge(t, p);
            if let Some(call) = self.calls.get(&id) {
                log::debug!("{}: {} picked up {}", call.key, picker.name, target.name);
            }
        }
    }

    /// Channels in one bridge talk to each other, whatever their Linkedids say yet. After a
    /// phone's own attended transfer (REFER with Replaces) Asterisk moves the client into the
    /// consultation's bridge, whose channels still carry the consultation's Linkedid; after a
    /// pickup the picker's channel does too. Linkedids catch up a moment later (and flip back
    /// and forth on the way, v capture), so the bridge decides: a call that is not registered
    /// joins the registered call it shares a bridge with. Two registered calls stay apart
    /// ([`Tracker::merge`]); two unregistered ones (an internal call) are left alone.
    fn join_bridged(&mut self, id: u64, bridge: &str) -> u64 {
        let others: Vec<u64> = self
            .bridges
            .get(bridge)
            .into_iter()
            .flatten()
            .filter_map(|u| self.channels.get(u))
            .map(|st| st.call)
            .collect();
        let mut id = id;
        for other in others {
            let active = |c: u64| self.calls.get(&c).is_some_and(|c| c.mode == Mode::Active);
            if other != id && (active(id) || active(other)) {
                id = self.merge(id, other);
            }
        }
        id
    }

    fn on_bridge_enter(&mut self, chan: &Chan, bridge: &str, now_ms: u64, out: &mut Vec<Intent>) {
        // Only tracked channels are members: an untracked one's Hangup would never clear it.
        let Some(id) = self.call_of(chan) else { return };
        let members = self.bridges.entry(bridge.to_string()).or_default();
        if !members.iter().any(|u| u == chan.uniqueid) {
            members.push(chan.uniqueid.to_string());
        }
        let id = self.join_bridged(id, bridge);
        let call = &self.calls[&id];
        if call.mode != Mode::Active {
            return;
        }
        let Some(client) = call.client.as_deref() else {
            return;
        };
        let members = &self.bridges[bridge];
        if !members.iter().any(|u| u == client) {
            return;
        }
        // The client shares a bridge with an employee: that employee talks to the client now.
        let talkers: Vec<String> = members
            .iter()
            .filter_map(|u| self.channels.get(u))
            .filter(|st| st.call == id)
            .filter_map(|st| st.ext.clone())
            .collect();
        for ext in talkers {
            let allowed = self.card_allowed(&ext);
            let call = self.calls.get_mut(&id).expect("tracked call");
            if call.talking.as_deref() != Some(&ext) {
                answered(call, &ext, allowed, now_ms, out);
            }
        }
    }

    fn on_bridge_leave(&mut self, chan: &Chan, bridge: &str) {
        if let Some(members) = self.bridges.get_mut(bridge) {
            members.retain(|u| u != chan.uniqueid);
            if members.is_empty() {
                self.bridges.remove(bridge);
            }
        }
    }

    fn on_hangup(&mut self, chan: &Chan, cause: u32, now_ms: u64, out: &mut Vec<Intent>) {
        let Some(st) = self.channels.remove(chan.uniqueid) else {
            return;
        };
        self.bridges.retain(|_, members| {
            members.retain(|u| u != chan.uniqueid);
            !members.is_empty()
        });
        let id = st.call;
        let still_there = st.ext.as_deref().is_some_and(|ext| {
            self.channels
                .values()
                .any(|o| o.call == id && o.ext.as_deref() == Some(ext))
        });
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        call.live_channels = call.live_channels.saturating_sub(1);
        call.last_cause = Some(cause);
        if call.client.as_deref() == Some(chan.uniqueid) {
            call.client_cause = Some(cause);
            call.client_gone_ms = Some(now_ms);
        }
        if call.mode == Mode::Active {
            let was_ringing = call.ringing.remove(chan.uniqueid);
            if let Some(ext) = st.ext.as_deref().filter(|_| !still_there) {
                if was_ringing.is_some() {
                    // Hung up while ringing, without a DialEnd (e.g. a Local leg torn down).
                    stopped_ringing(call, ext, out);
                } else if call.talking.as_deref() == Some(ext) {
                    // The employee left. Their card stays until someone else takes over or the
                    // call finishes: they remain the "last one" until then.
                    call.talking = None;
                }
            }
        }
        if call.live_channels == 0 {
            self.finish(id, now_ms, out);
        }
    }

    fn finish(&mut self, id: u64, now_ms: u64, out: &mut Vec<Intent>) {
        let Some(mut call) = self.calls.remove(&id) else {
            return;
        };
        self.by_linkedid.retain(|_, v| *v != id);
        if call.mode == Mode::PendingDid {
            // The call ended before its DID showed: decide with what we have.
            let mut tmp = Vec::new();
            self.calls.insert(id, call);
            self.decide(id, None, &mut tmp);
            call = self.calls.remove(&id).expect("just inserted");
            out.append(&mut tmp);
        }
        if call.mode != Mode::Active {
            return;
        }
        let end_ms = call.client_gone_ms.unwrap_or(now_ms);
        let (user, duration, status) = match (call.first_answer_ms, call.last_talker.clone()) {
            (Some(answered_ms), Some(ext)) => {
                let ms = end_ms.saturating_sub(answered_ms);
                (
                    FinishUser::Employee(ext),
                    (ms + 500) / 1000,
                    Status::ANSWERED,
                )
            }
            _ => {
                let cause = call.client_cause.or(call.last_cause).unwrap_or(16);
                let status = call
                    .last_status
                    .or_else(|| call.originate_reason.map(Status::from_originate_reason))
                    .unwrap_or_else(|| Status::from_cause(cause));
                let user = match (call.origin, call.caller_ext()) {
                    // Outbound calls belong to whoever placed them.
                    (Origin::Outbound | Origin::ClickToCall, Some(ext)) => {
                        FinishUser::Employee(ext.to_string())
                    }
                    _ => match (self.cfg.missed_user, call.last_rang.clone()) {
                        (MissedUser::Responsible, _) => FinishUser::Responsible,
                        (MissedUser::LastRang, Some(ext)) => FinishUser::Employee(ext),
                        (MissedUser::LastRang, None) => FinishUser::Responsible,
                        (MissedUser::Default, _) => FinishUser::Default,
                    },
                };
                (user, 0, status)
            }
        };
        if !call.transfers.is_empty() {
            let hist: Vec<String> = call
                .transfers
                .iter()
                .map(|t| format!("{}→{}", t.from, t.to))
                .collect();
            log::debug!("{}: transfer history {}", call.key, hist.join(", "));
        }
        // Bitrix24 hides only the finishing user's card, and `hide` stops working after
        // `finish` (bitrix24-api.md §4.1): hide everyone else first.
        for ext in std::mem::take(&mut call.shown) {
            if user != FinishUser::Employee(ext.clone()) {
                out.push(Intent {
                    call: call.key.clone(),
                    action: Action::Hide { ext },
                });
            }
        }
        out.push(Intent {
            call: call.key.clone(),
            action: Action::Finish {
                user,
                duration,
                status,
            },
        });
        if let Some((_, path)) = call.recording.take() {
            out.push(Intent {
                call: call.key.clone(),
                action: Action::Attach { path },
            });
        }
    }
}

/// `ext` starts ringing (or talking) in `call`: show its card, and hide the cards of employees
/// who are no longer involved (a transferer who already hung up).
fn announce(call: &mut Call, ext: &str, allowed: bool, out: &mut Vec<Intent>) {
    let stale: Vec<String> = call
        .shown
        .iter()
        .filter(|e| e.as_str() != ext)
        .filter(|e| call.talking.as_deref() != Some(e.as_str()))
        .filter(|e| !call.ringing.values().any(|r| r == *e))
        .cloned()
        .collect();
    for e in stale {
        hide(call, &e, out);
    }
    if allowed {
        show(call, ext, out);
    }
}

/// `ext` answered the client: it is now the one talking, and nobody else keeps a card.
fn answered(call: &mut Call, ext: &str, allowed: bool, now_ms: u64, out: &mut Vec<Intent>) {
    if let Some(prev) = call.last_talker.as_deref().filter(|p| *p != ext) {
        let t = Transfer {
            from: prev.to_string(),
            to: ext.to_string(),
            at_ms: now_ms,
        };
        log::debug!("{}: transferred from {} to {}", call.key, t.from, t.to);
        call.transfers.push(t);
    }
    call.talking = Some(ext.to_string());
    call.last_talker = Some(ext.to_string());
    call.first_answer_ms.get_or_insert(now_ms);
    let others: Vec<String> = call.shown.iter().filter(|e| *e != ext).cloned().collect();
    for e in others {
        hide(call, &e, out);
    }
    if allowed {
        show(call, ext, out);
    }
}

/// Open `ext`'s card unless it is open already.
fn show(call: &mut Call, ext: &str, out: &mut Vec<Intent>) {
    if !call.shown.iter().any(|e| e == ext) {
        call.shown.push(ext.to_string());
        call.push(
            Action::Show {
                ext: ext.to_string(),
            },
            out,
        );
    }
}

/// A phone of `ext` stopped ringing without answering.
fn stopped_ringing(call: &mut Call, ext: &str, out: &mut Vec<Intent>) {
    let rings_elsewhere = call.ringing.values().any(|r| r == ext);
    let involved = call.talking.as_deref() == Some(ext) || call.last_talker.as_deref() == Some(ext);
    if !rings_elsewhere && !involved {
        hide(call, ext, out);
    }
}

fn hide(call: &mut Call, ext: &str, out: &mut Vec<Intent>) {
    if let Some(pos) = call.shown.iter().position(|e| e == ext) {
        call.shown.remove(pos);
        out.push(Intent {
            call: call.key.clone(),
            action: Action::Hide {
                ext: ext.to_string(),
            },
        });
    }
}

fn is_number(s: &str) -> bool {
    let digits = s.strip_prefix('+').unwrap_or(s);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}
