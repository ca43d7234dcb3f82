//! Load generator: many overlapping calls streamed live into the fake AMI, made from the real
//! captures in `tests/fixtures/` by renumbering them per call.
//!
//! Each generated call is one capture (see [`Scenario`]) with its identity rewritten: every
//! Uniqueid and Linkedid, every channel name's `-XXXXXXXX` suffix, every bridge id and the
//! caller's number, wherever they appear (Dest*/Transferer*/… snapshots, `BRIDGEPEER` and
//! `DIALEDPEERNAME` values, SIP URIs). Events keep the capture's relative timing (optionally
//! played faster, [`TrafficSpec::speed`]) and get a `Timestamp:` header with the moment they
//! are sent, as Asterisk does with `timestampevents = yes`.
//!
//! The stream is live, like a PBX: an event goes to whichever client is logged in at that
//! moment, or nowhere. A client that reconnects (a restarted daemon, a cut AMI link) continues
//! from "now" and learns what is already up only from `CoreShowChannels`, which the fake AMI
//! answers from the channels alive at that moment ([`FakeAmi::set_channel_source`]), with the
//! fields Asterisk lists (ami.md §4.3).
//!
//! For every call the generator records what must come out of it ([`CallRecord::expected`],
//! from the capture's `.md`: who is registered, which phones ring, who finishes it, the status)
//! and how much of it a client could have seen ([`CallRecord::events`], [`CallRecord::listed_at`]).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::fake_ami::FakeAmi;
use super::fake_bitrix::FakeBitrix;
use super::gen::Gen;
use super::template::{Identity, Template, Token};

/// `[calls] default_user = 201` in [`super::daemon::e2e_config`]: Bitrix24 user 1.
pub const DEFAULT_USER: u64 = 1;

/// The Bitrix24 user of an internal number in the fake portal (`200 + id`).
pub fn user_of(ext: &str) -> u64 {
    ext.parse::<u64>().expect("numeric extension") - 200
}

/// The captures a call can be made from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scenario {
    /// `a`: 219 answers, talk, the caller hangs up.
    Answered,
    /// `b`: 219 rings, nobody answers.
    NoAnswer,
    /// `c`: 219 is busy.
    Busy,
    /// `d`: 219 answers, blind transfer to 220, who talks last.
    BlindTransfer,
    /// `e`: 219 answers, attended transfer to 220, who talks last.
    AttendedTransfer,
    /// `k`: a ring-all queue, 220 and 221 ring, 221 answers.
    QueueRingAll,
    /// `l`: 219 calls 220; internal, never reaches Bitrix24.
    Internal,
}

/// Who must finish a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishBy {
    /// The employee who talked last (Bitrix24 user id).
    Employee(u64),
    /// The user it was registered under (nobody answered).
    Registered,
}

/// What Bitrix24 must end up with for a call, from what happened on the PBX.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Users whose phones rang: their cards may be shown (and must be hidden again).
    pub rings: Vec<u64>,
    pub finish: FinishBy,
    /// `STATUS_CODE` of the finish.
    pub status: &'static str,
}

impl Scenario {
    pub const ALL: [Scenario; 7] = [
        Scenario::Answered,
        Scenario::NoAnswer,
        Scenario::Busy,
        Scenario::BlindTransfer,
        Scenario::AttendedTransfer,
        Scenario::QueueRingAll,
        Scenario::Internal,
    ];

    pub fn capture(self) -> &'static str {
        match self {
            Scenario::Answered => "a_inbound_answered",
            Scenario::NoAnswer => "b_inbound_noanswer",
            Scenario::Busy => "c_inbound_busy",
            Scenario::BlindTransfer => "d_inbound_blind_transfer_ami",
            Scenario::AttendedTransfer => "e_inbound_attended_transfer_ami",
            Scenario::QueueRingAll => "k_inbound_queue_ringall",
            Scenario::Internal => "l_internal_219_to_220",
        }
    }

    /// The capture's letter, for timelines.
    pub fn letter(self) -> char {
        self.capture().chars().next().unwrap_or('?')
    }

    /// What happened on the PBX (the capture's `.md`), in Bitrix24 terms. `None`: the call
    /// must never reach Bitrix24.
    pub fn outcome(self) -> Option<Outcome> {
        let (rings, finish, status) = match self {
            Scenario::Answered => (vec!["219"], FinishBy::Employee(user_of("219")), "200"),
            Scenario::NoAnswer => (vec!["219"], FinishBy::Registered, "304"),
            Scenario::Busy => (vec!["219"], FinishBy::Registered, "486"),
            Scenario::BlindTransfer | Scenario::AttendedTransfer => (
                vec!["219", "220"],
                FinishBy::Employee(user_of("220")),
                "200",
            ),
            Scenario::QueueRingAll => (
                vec!["220", "221"],
                FinishBy::Employee(user_of("221")),
                "200",
            ),
            Scenario::Internal => return None,
        };
        Some(Outcome {
            rings: rings.into_iter().map(user_of).collect(),
            finish,
            status,
        })
    }
}

/// What to generate. Every count and duration is bounded by the spec.
#[derive(Clone, Debug)]
pub struct TrafficSpec {
    pub seed: u64,
    /// Calls started, besides the endless ones.
    pub calls: usize,
    /// Mean calls started per second (inter-arrival times vary ±50 %).
    pub rate: f64,
    /// Time compression of the captures: 2.0 plays every call twice as fast.
    pub speed: f64,
    /// Weights of [`Scenario::ALL`], in that order.
    pub mix: [u32; 7],
    /// Share of callers with a CRM contact whose responsible user is not the default one.
    pub crm_share: f64,
    /// Answered calls that stay up, cut before their hangup, until
    /// [`Traffic::release_held`]: a parked call or a conference on a busy PBX.
    pub endless: usize,
}

impl TrafficSpec {
    pub fn new(seed: u64, calls: usize, rate: f64) -> TrafficSpec {
        TrafficSpec {
            seed,
            calls,
            rate,
            speed: 1.0,
            mix: [30, 12, 10, 14, 10, 16, 8],
            crm_share: 0.4,
            endless: 0,
        }
    }
}

/// One event of a call as it went out.
#[derive(Clone, Copy, Debug)]
pub struct Delivery {
    pub at: Instant,
    /// The fake AMI connection it was written to; `None` if no client was logged in.
    pub conn: Option<usize>,
}

/// Everything known about one generated call.
#[derive(Clone, Debug)]
pub struct CallRecord {
    pub index: usize,
    pub scenario: Scenario,
    /// The caller's number as the PBX reports it.
    pub caller: String,
    pub linkedid: String,
    /// `callme-<Linkedid>`: the EXTERNAL_CALL_ID the daemon registers it with.
    pub external_id: String,
    /// The CRM contact's responsible user, if the caller has a contact.
    pub responsible: Option<u64>,
    pub endless: bool,
    /// Name of each event sent, with its delivery, in order.
    pub events: Vec<(String, Delivery)>,
    /// Events the capture has (all of them sent once `events.len()` reaches it).
    pub total_events: usize,
    /// When `CoreShowChannels` answers listed one of its channels (at most 64 kept).
    pub listed_at: Vec<Instant>,
}

impl CallRecord {
    /// What Bitrix24 must end up with; `None` if the call must never reach it.
    pub fn expected(&self) -> Option<Expected> {
        let o = self.scenario.outcome()?;
        let register_user = self.responsible.unwrap_or(DEFAULT_USER);
        Some(Expected {
            register_user,
            rings: o.rings,
            finish_user: match o.finish {
                FinishBy::Employee(u) => u,
                FinishBy::Registered => register_user,
            },
            status: o.status,
        })
    }

    /// Every event was sent (the call is over on the PBX).
    pub fn ended(&self) -> bool {
        self.events.len() == self.total_events
    }

    /// The call's first `Newchannel`: from it on a tracker knows the call.
    pub fn first_event(&self) -> Option<Delivery> {
        self.events
            .iter()
            .find(|(name, _)| name == "Newchannel")
            .or(self.events.first())
            .map(|(_, d)| *d)
    }
}

/// [`CallRecord::expected`] in Bitrix24 user ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    pub register_user: u64,
    pub rings: Vec<u64>,
    pub finish_user: u64,
    pub status: &'static str,
}

/// The template of a scenario's capture, loaded once per process (`template.rs`).
fn template(scenario: Scenario) -> &'static Template {
    static CACHE: OnceLock<Vec<Template>> = OnceLock::new();
    let all = CACHE.get_or_init(|| {
        Scenario::ALL
            .iter()
            .map(|s| {
                Template::load(
                    &Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("tests/fixtures")
                        .join(format!("{}.ami", s.capture())),
                )
            })
            .collect()
    });
    let i = Scenario::ALL
        .iter()
        .position(|s| *s == scenario)
        .unwrap_or(0);
    &all[i]
}

/// Wire bytes of an event, with `Timestamp:` after `Privilege:` (ami.md §2.3).
fn wire(fields: &[(String, String)], now: SystemTime) -> Vec<u8> {
    let t = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let stamp = format!("Timestamp: {}.{:06}\r\n", t.as_secs(), t.subsec_micros());
    let mut out = String::with_capacity(fields.len() * 40 + 40);
    let after = fields
        .iter()
        .position(|(k, _)| k.eq_ignore_ascii_case("Privilege"))
        .unwrap_or(0);
    for (i, (k, v)) in fields.iter().enumerate() {
        out.push_str(k);
        out.push_str(": ");
        out.push_str(v);
        out.push_str("\r\n");
        if i == after {
            out.push_str(&stamp);
        }
    }
    out.push_str("\r\n");
    out.into_bytes()
}

// ---------------------------------------------------------------------------------------
// The live PBX: channels alive now, and the record of every call
// ---------------------------------------------------------------------------------------

/// Snapshot fields a `CoreShowChannel` item repeats (ami.md §4.3).
const SNAPSHOT: [&str; 14] = [
    "Channel",
    "ChannelState",
    "ChannelStateDesc",
    "CallerIDNum",
    "CallerIDName",
    "ConnectedLineNum",
    "ConnectedLineName",
    "Language",
    "AccountCode",
    "Context",
    "Exten",
    "Priority",
    "Uniqueid",
    "Linkedid",
];

struct Live {
    call: usize,
    created: Instant,
    fields: BTreeMap<&'static str, String>,
}

/// The fake PBX's channel table: what `CoreShowChannels` lists at any moment. Also used on
/// its own (`tests/adopt_every_cut.rs`).
#[derive(Default)]
pub struct Pbx {
    /// Uniqueid → channel, in creation order through `order`.
    channels: HashMap<String, Live>,
    order: Vec<String>,
    calls: Vec<CallRecord>,
}

impl Pbx {
    /// Apply one event to the channel table, before it is sent.
    pub fn apply(&mut self, call: usize, fields: &[(String, String)], now: Instant) {
        let get = |k: &str| {
            fields
                .iter()
                .find(|(f, _)| f.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.as_str())
        };
        let event = get("Event").unwrap_or("");
        for prefix in ["", "Dest"] {
            let Some(id) = get(&format!("{prefix}Uniqueid")) else {
                continue;
            };
            if prefix.is_empty() && event == "Hangup" {
                self.channels.remove(id);
                self.order.retain(|x| x != id);
                continue;
            }
            if !self.channels.contains_key(id) {
                if !(prefix.is_empty() && event == "Newchannel") {
                    continue; // an update for a channel already gone
                }
                self.channels.insert(
                    id.to_string(),
                    Live {
                        call,
                        created: now,
                        fields: BTreeMap::new(),
                    },
                );
                self.order.push(id.to_string());
            }
            let ch = self.channels.get_mut(id).expect("just inserted");
            for k in SNAPSHOT {
                if let Some(v) = get(&format!("{prefix}{k}")) {
                    ch.fields.insert(k, v.to_string());
                }
            }
            if prefix.is_empty() {
                match event {
                    "Newexten" => {
                        ch.fields
                            .insert("Application", get("Application").unwrap_or("").into());
                        ch.fields
                            .insert("ApplicationData", get("AppData").unwrap_or("").into());
                    }
                    "BridgeEnter" => {
                        ch.fields
                            .insert("BridgeId", get("BridgeUniqueid").unwrap_or("").into());
                    }
                    "BridgeLeave" => {
                        ch.fields.insert("BridgeId", String::new());
                    }
                    _ => {}
                }
            }
        }
    }

    /// The `CoreShowChannel` items of this moment; notes the moment in their calls.
    ///
    /// A call counts as listed only while its first channel (Uniqueid = Linkedid, the
    /// caller's) is alive: a listing of an employee's leg alone, in the moment of its
    /// teardown, has no caller to adopt the call under (docs/outbox.md, "What adoption cannot
    /// do"; `tests/adopt_every_cut.rs`).
    pub fn list(&mut self) -> Vec<Vec<(String, String)>> {
        let now = Instant::now();
        let mut items = Vec::new();
        for id in &self.order {
            let Some(ch) = self.channels.get(id) else {
                continue;
            };
            let origin = ch.fields.get("Linkedid").is_some_and(|l| l == id);
            if let Some(c) = self.calls.get_mut(ch.call).filter(|_| origin) {
                if c.listed_at.last() != Some(&now) && c.listed_at.len() < 64 {
                    c.listed_at.push(now);
                }
            }
            let f = |k: &str| ch.fields.get(k).cloned().unwrap_or_default();
            let mut item: Vec<(String, String)> =
                SNAPSHOT.iter().map(|k| (k.to_string(), f(k))).collect();
            let secs = now.duration_since(ch.created).as_secs();
            item.push(("Application".into(), f("Application")));
            item.push(("ApplicationData".into(), f("ApplicationData")));
            item.push((
                "Duration".into(),
                format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60),
            ));
            item.push(("BridgeId".into(), f("BridgeId")));
            items.push(item);
        }
        items
    }
}

fn lock(m: &Mutex<Pbx>) -> MutexGuard<'_, Pbx> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Responsible users for CRM contacts: active users with an internal number, not the default.
fn responsible_pool() -> Vec<u64> {
    (2..=120).filter(|id| ![7, 8, 13].contains(id)).collect()
}

/// A running stream of calls. Stops (and joins its thread) when dropped.
pub struct Traffic {
    pbx: Arc<Mutex<Pbx>>,
    stop: Arc<AtomicBool>,
    release: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub spec: TrafficSpec,
}

impl Traffic {
    /// Start streaming into `ami` now. CRM contacts for the callers are added to `portal`
    /// just before each call starts.
    pub fn start(spec: TrafficSpec, ami: Arc<FakeAmi>, portal: Arc<FakeBitrix>) -> Traffic {
        for s in Scenario::ALL {
            template(s); // load the captures before the clock starts
        }
        let pbx = Arc::new(Mutex::new(Pbx::default()));
        let source = Arc::clone(&pbx);
        ami.set_channel_source(Arc::new(move || lock(&source).list()));
        let stop = Arc::new(AtomicBool::new(false));
        let release = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let feeder = Feeder {
            spec: spec.clone(),
            ami,
            portal,
            pbx: Arc::clone(&pbx),
            stop: Arc::clone(&stop),
            release: Arc::clone(&release),
            done: Arc::clone(&done),
        };
        let thread = thread::Builder::new()
            .name("traffic".into())
            .spawn(move || feeder.run())
            .expect("spawn traffic");
        Traffic {
            pbx,
            stop,
            release,
            done,
            thread: Some(thread),
            spec,
        }
    }

    /// Every call started so far.
    pub fn calls(&self) -> Vec<CallRecord> {
        lock(&self.pbx).calls.clone()
    }

    /// Channels alive on the PBX now.
    pub fn alive_channels(&self) -> usize {
        lock(&self.pbx).channels.len()
    }

    /// Every call has started and every event but the held ones was sent.
    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::SeqCst)
    }

    /// Waits (with a deadline) until [`Traffic::is_done`].
    pub fn wait_done(&self, timeout: Duration) -> bool {
        super::fake_ami::wait_until(timeout, || self.is_done())
    }

    /// Let the endless calls hang up now (their held events go out at once, in order).
    pub fn release_held(&self) {
        self.release.store(true, Ordering::SeqCst);
    }

    /// Waits until every event, held ones included, was sent and the feeder stopped.
    pub fn wait_finished(&mut self, timeout: Duration) -> bool {
        let ok = super::fake_ami::wait_until(timeout, || {
            self.thread.as_ref().is_none_or(|t| t.is_finished())
        });
        if ok {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
        ok
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Feeder {
    spec: TrafficSpec,
    ami: Arc<FakeAmi>,
    portal: Arc<FakeBitrix>,
    pbx: Arc<Mutex<Pbx>>,
    stop: Arc<AtomicBool>,
    release: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
}

/// A call being played: its identity, template and events not sent yet.
struct Playing {
    id: Identity,
    template: &'static Template,
    left: usize,
}

impl Feeder {
    fn run(self) {
        let spec = &self.spec;
        let mut rng = Gen::unmixed(spec.seed ^ 0x7261_6666_6963); // "traffic"
        let pool = responsible_pool();
        let start = Instant::now();
        let total = spec.calls + spec.endless;
        let mut next_call = 0usize;
        let mut next_start_ms = 0.0f64;
        // (due ms since start, sequence) → (call, event index)
        let mut queue: BinaryHeap<Reverse<(u64, u64, usize, usize)>> = BinaryHeap::new();
        let mut seq = 0u64;
        let mut playing: HashMap<usize, Playing> = HashMap::new();
        let mut held: Vec<(usize, usize)> = Vec::new();

        while !self.stop.load(Ordering::SeqCst) {
            let now_ms = start.elapsed().as_millis() as u64;
            // Start the calls that are due.
            while next_call < total && next_start_ms as u64 <= now_ms {
                let index = next_call;
                let endless = index < spec.endless;
                let scenario = if endless {
                    Scenario::Answered
                } else {
                    Scenario::ALL[rng.weighted(&spec.mix)]
                };
                let caller = format!("7999{:07}", index % 10_000_000);
                let responsible = (scenario != Scenario::Internal
                    && rng.probability(spec.crm_share))
                .then(|| pool[rng.below(pool.len())]);
                if let Some(u) = responsible {
                    self.portal.add_contact(&caller, 100_000 + index as u64, u);
                }
                let template = template(scenario);
                let id = Identity {
                    index,
                    caller: caller.clone(),
                };
                let linkedid = id.value(Token::Uniqueid(template.linked));
                lock(&self.pbx).calls.push(CallRecord {
                    index,
                    scenario,
                    caller,
                    external_id: format!("callme-{linkedid}"),
                    linkedid,
                    responsible,
                    endless,
                    events: Vec::new(),
                    total_events: template.events.len(),
                    listed_at: Vec::new(),
                });
                let begin = next_start_ms as u64;
                for (k, e) in template.events.iter().enumerate() {
                    if endless && k >= template.end_at {
                        held.push((index, k));
                        continue;
                    }
                    let due = begin + (e.offset_ms as f64 / spec.speed) as u64;
                    queue.push(Reverse((due, seq, index, k)));
                    seq += 1;
                }
                playing.insert(
                    index,
                    Playing {
                        id,
                        template,
                        left: template.events.len(),
                    },
                );
                next_call += 1;
                if next_call > spec.endless {
                    next_start_ms += 1000.0 / spec.rate * rng.range_f64(0.5, 1.5);
                }
            }
            // Send what is due.
            while let Some(Reverse((due, _, call, k))) = queue.peek().copied() {
                if due > start.elapsed().as_millis() as u64 {
                    break;
                }
                queue.pop();
                self.send(&mut playing, call, k);
            }
            let all_started = next_call >= total;
            if all_started && queue.is_empty() {
                self.done.store(true, Ordering::SeqCst);
                if held.is_empty() {
                    break;
                }
                if self.release.load(Ordering::SeqCst) {
                    for (call, k) in std::mem::take(&mut held) {
                        self.send(&mut playing, call, k);
                    }
                    break;
                }
            }
            // Pace: sleep until the next event or call is due, at most 20 ms (to see `stop`).
            let now_ms = start.elapsed().as_millis() as u64;
            let next_event = queue.peek().map_or(u64::MAX, |Reverse((d, ..))| *d);
            let next_start = if all_started {
                u64::MAX
            } else {
                next_start_ms as u64
            };
            let wait = next_event.min(next_start).saturating_sub(now_ms).min(20);
            if wait > 0 {
                thread::sleep(Duration::from_millis(wait));
            }
        }
    }

    /// Send event `k` of `call`; a call whose last event went out is forgotten.
    fn send(&self, playing: &mut HashMap<usize, Playing>, call: usize, k: usize) {
        let Some(p) = playing.get_mut(&call) else {
            return;
        };
        p.left -= 1;
        let e = &p.template.events[k];
        let fields = p.id.render(e);
        let name = fields.first().map(|(_, v)| v.clone()).unwrap_or_default();
        let bytes = wire(&fields, SystemTime::now());
        if p.left == 0 {
            playing.remove(&call);
        }
        let mut at = Instant::now();
        let conn = self.ami.emit(&bytes, || {
            at = Instant::now();
            lock(&self.pbx).apply(call, &fields, at);
        });
        if let Some(c) = lock(&self.pbx).calls.get_mut(call) {
            c.events.push((name, Delivery { at, conn }));
        }
    }
}
