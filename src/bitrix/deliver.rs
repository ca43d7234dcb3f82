//! Delivery: tracker intents → Bitrix24 requests, in order per call, with retries.
//!
//! The tracker speaks in internal numbers; this is where they become Bitrix24 user IDs, where
//! the responsible employee is found **before** the call is registered (registering first and
//! looking up afterwards was a bug of the PHP predecessors), and where each call's `CALL_ID`
//! is kept so later steps can use it.
//!
//! Steps of one call run strictly in order. A retryable failure (network, 5xx,
//! `QUERY_LIMIT_EXCEEDED`, `OPERATION_TIME_LIMIT`) puts only that call on hold with a capped
//! exponential backoff; other calls go on. A permanent failure is logged once with the full
//! Bitrix24 error and the call moves on.
//!
//! A step that needs an internal number → user mapping while the user directory has not loaded
//! yet is neither: it waits (held with the same backoff, released at once when a directory is
//! published, no attempt counted), because "not loaded" is not "nobody" (issue #16). The only
//! permanent "nobody to register the call under" is a loaded directory without the employee and
//! no usable `[calls] default_user`.
//!
//! The queue is the [`Outbox`]: with the daemon's durable outbox every step is on disk
//! before it is tried, and a restart continues where it stopped (`docs/outbox.md`). When
//! several calls have a step due at once (a backlog after an outage, a burst of calls), their
//! requests are packed into `batch` requests of up to 50 commands, each command's result
//! handled on its own (bitrix24-api.md §8).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::api::{self, FinishParams, RegisterParams};
use super::attach_worker::{AttachWorker, Job};
use super::client::{Reply, Transport};
use super::limiter::Limiter;
use super::outbox::{Outbox, Step};
use super::priority::{self, Priority};
use super::users::{Directory, SharedDirectory};
use super::Error;
use crate::calls::{Action, Direction, FinishUser, Intent};
use crate::config::{Config, PhoneConfig, RecordingConfig, Responsible};
use crate::histogram::Histogram;
use crate::{isotime, phone};

/// What delivery needs from the configuration.
#[derive(Clone, Debug)]
pub struct DeliverConfig {
    pub responsible: Responsible,
    /// `(line, internal number)` pairs used when `responsible = static`.
    pub static_responsible: Vec<(String, String)>,
    pub default_user: Option<String>,
    pub crm_create: bool,
    pub add_to_chat: bool,
    pub phone: PhoneConfig,
    /// First retry delay; doubles up to `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// `[recording]`: how `Action::Attach` is delivered.
    pub recording: RecordingConfig,
}

impl DeliverConfig {
    pub fn from_config(cfg: &Config) -> DeliverConfig {
        DeliverConfig {
            responsible: cfg.calls.responsible,
            static_responsible: cfg.calls.static_responsible.clone(),
            default_user: cfg.calls.default_user.clone(),
            crm_create: cfg.calls.crm_create,
            add_to_chat: cfg.calls.add_to_chat,
            phone: cfg.phone.clone(),
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            recording: cfg.recording.clone(),
        }
    }
}

/// Counters for `/status`, `/metrics` and the demo's summary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeliveryStats {
    pub sent: u64,
    pub retries: u64,
    pub permanent_failures: u64,
    pub skipped: u64,
    pub last_error: Option<String>,
    /// Steps by (step name: register/show/hide/finish/attachRecord/adopt, outcome:
    /// ok/retry/failed/skipped).
    pub steps: BTreeMap<(String, String), u64>,
    /// Finished calls by (direction: inbound/outbound, STATUS_CODE).
    pub finished: BTreeMap<(String, String), u64>,
    /// Calls whose next step waits for the first load of the user directory (now).
    pub waiting_for_directory: usize,
    /// Card latency: from the moment the tracker decided a Show (the phone started ringing;
    /// the step's `queued_ms`, stamped when the state thread queued it) to the moment the
    /// portal accepted the show. Includes the register before it and any retries, which is
    /// what the employee waits for.
    pub card_latency: Histogram,
}

impl DeliveryStats {
    fn count(&mut self, step: &str, outcome: &str) {
        *self
            .steps
            .entry((step.to_string(), outcome.to_string()))
            .or_insert(0) += 1;
    }
}

/// Outcome of one step.
pub(crate) enum Done {
    Ok,
    /// Nothing to send (no Bitrix24 user for that internal number, or nothing to do yet).
    Skipped(String),
    /// Not yet: run this step again after the delay. Not a failure and not a retry (the
    /// attempt count stays), e.g. a recording still being converted.
    Later(Duration),
    /// The step needs an internal number → user mapping and the user directory has not
    /// loaded yet: wait for it (never a reason to give up, issue #16). Says what it needs.
    NoDirectory(String),
}

/// The answer of a look-up that may need the user directory.
enum Lookup {
    User(u64),
    /// The directory is loaded and has nobody for it (and no fallback applies).
    Nobody,
    /// Only the directory can say, and it has not loaded yet.
    NotLoaded,
}

impl Lookup {
    fn from_dir(dir: Option<&Directory>, f: impl FnOnce(&Directory) -> Option<u64>) -> Lookup {
        match dir {
            None => Lookup::NotLoaded,
            Some(d) => f(d).map_or(Lookup::Nobody, Lookup::User),
        }
    }

    fn or_else(self, f: impl FnOnce() -> Lookup) -> Lookup {
        match self {
            Lookup::Nobody => f(),
            other => other,
        }
    }
}

/// A [`Transport`] for one step inside a batch round: it answers the step's requests from
/// the batch results gathered so far, and records the first request it cannot answer yet
/// (which then goes into the next batch). Running [`Deliverer::step`] against it keeps one
/// code path for single and batched delivery.
struct Scripted {
    answers: Vec<Result<Value, Error>>,
    next: Mutex<usize>,
    wanted: Mutex<Option<(String, Value)>>,
}

impl Scripted {
    fn new(answers: Vec<Result<Value, Error>>) -> Scripted {
        Scripted {
            answers,
            next: Mutex::new(0),
            wanted: Mutex::new(None),
        }
    }

    /// The answers it was given and the request it could not answer, if any.
    fn into_parts(self) -> (Answers, Option<(String, Value)>) {
        let wanted = self.wanted.into_inner().unwrap_or_else(|e| e.into_inner());
        (self.answers, wanted)
    }
}

impl Transport for Scripted {
    fn call(&self, method: &str, params: &Value) -> Result<Reply, Error> {
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let i = *next;
        *next += 1;
        match self.answers.get(i) {
            Some(Ok(result)) => Ok(Reply {
                result: result.clone(),
                next: None,
                total: None,
            }),
            Some(Err(e)) => Err(e.clone()),
            None => {
                *self.wanted.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((method.to_string(), params.clone()));
                Err(Error::Transport("deferred to the next batch".into()))
            }
        }
    }
}

/// Request slots in use (of the bucket's burst) up to which the bucket counts as idle: every
/// step goes the moment it is due. Above it, steps that can wait ([`Priority::urgent`] false)
/// ride along in the next urgent request, so at about one call a second a call costs about
/// two requests (CRM look-up; register with its card) and the bucket stays nearly full.
const IDLE_USED: u32 = 2;

/// Request slots in use above which urgent steps wait for company during a spike
/// ([`Deliverer::hold_urgent`]); the hold grows by a tenth of a slot's time with each slot
/// more in use, to a whole slot at [`CARD_HOLD_FROM`] + [`CARD_HOLD_SPAN`].
const CARD_HOLD_FROM: u32 = 4;
const CARD_HOLD_SPAN: u32 = 10;

/// The longest a step that can wait is held for a ride: a finish, a hide, a register nobody
/// rings for yet. After that it goes on its own (with others that wait, up to a full batch).
const WAIT_MAX: Duration = Duration::from_secs(2);

/// How long a hide of the responsible's card waits for a finish that may close it instead
/// ([`Deliverer::round`]): the card stays up this much longer when the call goes on.
const FINISH_GRACE: Duration = Duration::from_millis(300);

/// How long one [`Deliverer::run_due`] goes on before it returns to the delivery loop.
const PASS_MAX: Duration = Duration::from_secs(1);

/// Steps whose answers are kept between passes; more (steps given up, cancelled) and the
/// answers are dropped, which costs only a repeated CRM look-up.
const ANSWERS_MAX: usize = 10_000;

/// The answers one step got so far, in the order it asked.
type Answers = Vec<Result<Value, Error>>;

/// The key of the `i`-th command of a batch: zero-padded, so that the keys sort in the
/// order the commands were packed (`c02` before `c10`) whatever keeps the `cmd` object, and
/// a `$result[c02]…` reference always points at a command that ran before.
fn cmd_key(i: usize) -> String {
    format!("c{i:02}")
}

/// A request a due step wants next.
struct Want {
    prio: Priority,
    /// Since when this request could have gone (see `Deliverer::ready_at`).
    ready: Instant,
    key: String,
    step: Step,
    method: String,
    params: Value,
}

/// A later step of a call that a command of this request carries, so that it settles
/// without a request of its own: a show that rides in its register's batch (its `CALL_ID`
/// from `$result[cNN][CALL_ID]`), a show put up by the register itself (`SHOW=1`), or a show
/// or hide merged into the one before it (`USER_ID` lists both users).
struct Carried {
    seq: u64,
    /// The command whose success settles it.
    cmd: usize,
    /// A command that must have succeeded too (the register a `$result` refers to).
    after: Option<usize>,
    /// Its answer, if not the command's own result (a register's is not a show's).
    answer: Option<Value>,
}

/// Which card step a command carries more of.
#[derive(Clone, Copy)]
enum CardKind {
    Show,
    Hide,
}

/// What one [`Deliverer::round`] did.
enum Round {
    /// A request went out.
    Sent,
    /// Steps were settled without a request (skipped, answered already, a recording sent).
    Settled,
    /// Nothing is due.
    Idle,
    /// Holding: only steps that can wait, the bucket is not full and they have not waited
    /// long; or urgent ones during a spike, too few for a full batch, that have not waited
    /// their hold ([`Deliverer::hold_urgent`]). Look again at this time, or when a new step
    /// comes.
    Saving(Instant),
}

pub struct Deliverer {
    cfg: DeliverConfig,
    transport: Arc<dyn Transport>,
    /// The daemon's one published directory (see [`SharedDirectory`]).
    directory: SharedDirectory,
    outbox: Arc<Mutex<Outbox>>,
    /// Pack due steps of different calls into `batch` requests when several are due.
    batching: bool,
    /// The rate limiter the transport waits on, when delivery should wait for a free slot
    /// before it packs a request (the daemon); `None` packs what is due at once.
    pacing: Option<Arc<Limiter>>,
    /// Answers gathered so far per step (by seq): a register takes two requests (CRM
    /// look-up, then register), and its second one may ride in a later request than the
    /// first. Bounded by [`ANSWERS_MAX`].
    answers: HashMap<u64, Vec<Result<Value, Error>>>,
    /// Since when each step's next request could have gone (by seq): when it was queued, or
    /// when its last answer came. The spike rule ([`Deliverer::hold_urgent`]) counts its
    /// wait from there. Bounded by [`ANSWERS_MAX`], like `answers`.
    ready_at: HashMap<u64, Instant>,
    stats: DeliveryStats,
    /// When each call's recording attach first ran, for `[recording] wait`. In memory: after a
    /// restart the wait starts again, which only delays giving up.
    attach_since: HashMap<String, Instant>,
    /// Calls held because their next step needs the directory, with how many times in a row
    /// (for the backoff). Bounded by the calls in the outbox: an entry goes when its call's
    /// step runs with the directory loaded.
    waiting: HashMap<String, u32>,
    /// Where attaches run when set (the daemon): off this thread, so that cards never wait
    /// behind an upload. `None`: inline (replay, the demo, tests of the step logic).
    attach_worker: Option<AttachWorker>,
}

/// A due attach waiting for the busy attach worker looks again this soon.
const ATTACH_QUEUED: Duration = Duration::from_millis(250);
/// An attach in flight holds its call this long at most; its result (or the worker's death)
/// settles it long before.
const ATTACH_IN_FLIGHT: Duration = Duration::from_secs(24 * 3600);

impl Deliverer {
    /// A deliverer with an in-memory outbox that sends one request at a time: for
    /// `callme replay` and the demo, whose dry-run transport knows no `batch`.
    /// `directory` is taken as loaded (the caller loaded `user.get` first).
    pub fn new(cfg: DeliverConfig, transport: Box<dyn Transport>, directory: Directory) -> Self {
        let mut d = Self::with_outbox(
            cfg,
            transport,
            SharedDirectory::loaded(directory),
            Arc::new(Mutex::new(Outbox::in_memory())),
        );
        d.batching = false;
        d
    }

    /// A deliverer over a shared (usually durable) outbox and the shared user directory,
    /// batching when a backlog forms.
    pub fn with_outbox(
        cfg: DeliverConfig,
        transport: Box<dyn Transport>,
        directory: SharedDirectory,
        outbox: Arc<Mutex<Outbox>>,
    ) -> Self {
        Deliverer {
            cfg,
            transport: Arc::from(transport),
            directory,
            outbox,
            batching: true,
            pacing: None,
            answers: HashMap::new(),
            ready_at: HashMap::new(),
            attach_since: HashMap::new(),
            waiting: HashMap::new(),
            attach_worker: None,
            stats: DeliveryStats::default(),
        }
    }

    /// Wait for `limiter` (the one the transport paces on) before packing each request, and
    /// keep its last slots for ringing phones.
    pub fn set_pacing(&mut self, limiter: Arc<Limiter>) {
        self.pacing = Some(limiter);
    }

    /// Run recording attaches on a worker thread of their own (see [`AttachWorker`]), with
    /// `transport` (not this deliverer's, whose requests stamp the delivery thread's
    /// liveness); `wake` is signalled when one finishes. If the thread cannot be started,
    /// attaches stay inline.
    pub fn with_attach_worker(
        mut self,
        transport: Arc<dyn Transport>,
        wake: Option<crossbeam_channel::Sender<()>>,
    ) -> Self {
        match AttachWorker::spawn(self.cfg.recording.clone(), transport, wake) {
            Ok(w) => self.attach_worker = Some(w),
            Err(e) => {
                log::error!("cannot start the recording attach thread ({e}); attaching inline")
            }
        }
        self
    }

    /// Publish a freshly loaded directory (to everyone sharing it) and let the steps that
    /// waited for it go at once.
    pub fn set_directory(&mut self, directory: Directory) {
        self.directory.publish(directory);
        self.directory_arrived(Instant::now());
    }

    /// The shared directory this deliverer reads.
    pub fn directory(&self) -> &SharedDirectory {
        &self.directory
    }

    /// A directory was published (here or by another thread): the calls held for it are due
    /// now instead of at the end of their backoff.
    pub fn directory_arrived(&mut self, now: Instant) {
        if !self.directory.is_loaded() || self.waiting.is_empty() {
            return;
        }
        log::info!(
            "user directory loaded: {} call(s) that waited for it go on",
            self.waiting.len()
        );
        let mut ob = self.ob();
        for key in self.waiting.keys() {
            ob.hold(key, now, false);
        }
    }

    pub fn transport(&self) -> &dyn Transport {
        self.transport.as_ref()
    }

    pub fn stats(&self) -> &DeliveryStats {
        &self.stats
    }

    pub fn outbox(&self) -> &Arc<Mutex<Outbox>> {
        &self.outbox
    }

    fn ob(&self) -> MutexGuard<'_, Outbox> {
        self.outbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Steps waiting to be sent, all calls together.
    pub fn pending(&self) -> usize {
        self.ob().pending()
    }

    /// How long the oldest undelivered step has been waiting (wall clock, so steps left from
    /// before a restart count from when they were first queued).
    pub fn oldest_pending_age(&self) -> Option<Duration> {
        self.ob().oldest_pending_age()
    }

    /// Queue an intent behind the earlier steps of the same call (durably, with a durable
    /// outbox). Duplicate registers and finishes are dropped.
    pub fn push(&mut self, intent: Intent) {
        self.ob().enqueue(intent);
    }

    /// Send every step that is due at `now`. Returns when the next retry is due, if any step
    /// is waiting for one.
    pub fn run_due(&mut self, now: Instant) -> Option<Instant> {
        if !self.batching {
            return self.run_due_one_by_one(now);
        }
        let mut answers = std::mem::take(&mut self.answers);
        let started = Instant::now();
        let mut next = None;
        let mut wait = true;
        for _ in 0..100_000 {
            // Under a standing backlog, come back to the loop now and then: it publishes
            // progress to /status and /metrics, refreshes the directory and sees a stop.
            if started.elapsed() >= PASS_MAX {
                next = Some(Instant::now());
                break;
            }
            // Wait for a request slot *before* choosing what goes into it: whatever became due
            // meanwhile rides in the same request. With budget to spare nothing waits; batches
            // form only while the bucket is short. No fixed batching window.
            if let Some(l) = self.pacing.as_ref().filter(|_| wait) {
                l.wait_ready();
            }
            self.collect_attaches();
            let now = now.max(Instant::now());
            let round = self.round(now, &mut answers);
            // After a round that only settled steps (e.g. a show answered in its register's
            // batch), the next round may well send nothing: no need to wait for a slot.
            wait = matches!(round, Round::Sent);
            match round {
                Round::Sent | Round::Settled => {}
                Round::Idle => {
                    // Nothing due: answers left belong to steps that are gone or on hold.
                    answers.clear();
                    self.ready_at.clear();
                    break;
                }
                Round::Saving(at) => {
                    next = Some(at);
                    break;
                }
            }
            self.ob().flush();
        }
        if answers.len() > ANSWERS_MAX {
            answers.clear();
        }
        if self.ready_at.len() > ANSWERS_MAX {
            self.ready_at.clear();
        }
        self.answers = answers;
        let mut ob = self.ob();
        ob.maybe_compact();
        let due = ob.next_due();
        drop(ob);
        match (due, next) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// One request's worth of progress: run every due step against the answers it has; steps
    /// that are done are settled, and the requests the others want next go out together: one
    /// request alone, or a `batch` of up to [`api::BATCH_MAX`] commands.
    ///
    /// What goes, in this order ([`priority`]): every urgent request (cards, then CRM
    /// look-ups; oldest first); the later steps they carry ([`Deliverer::carry`]); then, up to
    /// a full batch, the steps that can wait (oldest first). Steps that can wait alone are
    /// held (`Saving`) while more than [`IDLE_USED`] slots are in use and none of them has waited
    /// [`WAIT_MAX`]: they ride with the next urgent request instead of spending a slot.
    ///
    /// A recording goes alone: its body can be megabytes of base64, and Bitrix24 does not
    /// allow uploads inside `batch` (bitrix24-api.md §4.2, §8).
    fn round(
        &mut self,
        now: Instant,
        answers: &mut HashMap<u64, Vec<Result<Value, Error>>>,
    ) -> Round {
        let due = self.ob().due(now);
        if due.is_empty() {
            return Round::Idle;
        }
        let mut wants: Vec<Want> = Vec::new();
        let mut settled = false;
        for (key, step) in due {
            if matches!(step.action, Action::Attach { .. }) {
                if self.attach_worker.as_ref().is_some_and(|w| !w.is_dead()) {
                    self.start_attach(&key, &step, now);
                    settled = true;
                    continue;
                }
                let t = Arc::clone(&self.transport);
                let result = self.step(&key, &step.action, t.as_ref());
                self.settle(&key, &step, result, now);
                settled = true;
                continue;
            }
            let s = Scripted::new(answers.remove(&step.seq).unwrap_or_default());
            let result = self.step(&key, &step.action, &s);
            let (got, wanted) = s.into_parts();
            match wanted {
                Some((method, params)) => {
                    let prio = priority::of(&step, self.ob().call(&key), &method);
                    answers.insert(step.seq, got);
                    // First seen now: ready since it was queued (wall clock, so a step left
                    // from before a restart counts as long ready).
                    let ready = *self.ready_at.entry(step.seq).or_insert_with(|| {
                        let queued = crate::clock::now_ms().saturating_sub(step.queued_ms);
                        now.checked_sub(Duration::from_millis(queued))
                            .unwrap_or(now)
                    });
                    wants.push(Want {
                        prio,
                        ready,
                        key,
                        step,
                        method,
                        params,
                    });
                }
                None => {
                    self.ready_at.remove(&step.seq);
                    self.settle(&key, &step, result, now);
                    settled = true;
                }
            }
        }
        if wants.is_empty() {
            return if settled { Round::Settled } else { Round::Idle };
        }
        wants.sort_by_key(|w| priority::order(w.prio, w.step.queued_ms));
        // A hide of the responsible's card while the call is not over yet may well be closed
        // by the finish (a missed call is finished under the responsible, and the finish
        // closes the finishing user's card, `finish_closes`): it waits [`FINISH_GRACE`] for
        // that finish, even with budget to spare. The race it saves: a phone's DialEnd and
        // the call's Hangups come in one burst (a millisecond apart in the captures b and c)
        // but can fall into two passes of the state thread, and the hide would go in between.
        if self.pacing.is_some() {
            let mut until: Option<Instant> = None;
            wants.retain(|w| {
                let at = w.ready + FINISH_GRACE;
                let defer = now < at && self.finish_may_close(w);
                if defer {
                    until = Some(until.map_or(at, |u| u.min(at)));
                }
                !defer
            });
            if let (true, Some(at)) = (wants.is_empty(), until) {
                return if settled {
                    Round::Settled
                } else {
                    Round::Saving(at)
                };
            }
        }
        if wants[0].prio.urgent() {
            if let Some(at) = self.hold_urgent(&wants, now) {
                return if settled {
                    Round::Settled
                } else {
                    Round::Saving(at)
                };
            }
        } else {
            if let Some(l) = &self.pacing {
                let oldest = wants.iter().map(|w| w.step.queued_ms).min().unwrap_or(0);
                let waited = Duration::from_millis(crate::clock::now_ms().saturating_sub(oldest));
                if l.used() > IDLE_USED && waited < WAIT_MAX {
                    return if settled {
                        Round::Settled
                    } else {
                        Round::Saving(now + (WAIT_MAX - waited).min(l.slot()))
                    };
                }
            }
        }
        // Urgent first, each with what it carries; then, up to a full batch, what waits (it
        // costs no extra request). A step is marked as being sent (`begin`) only once it is
        // packed: from then on an unsent Show can no longer be dropped. One that was dropped
        // since it was picked (its phone stopped ringing) stays unsent.
        let mut cmds: Vec<(String, Value)> = Vec::with_capacity(api::BATCH_MAX);
        let mut carried = Vec::new();
        let mut packed = Vec::with_capacity(api::BATCH_MAX);
        for w in wants {
            if cmds.len() >= api::BATCH_MAX {
                break;
            }
            if !self.ob().begin(&w.key, w.step.seq) {
                continue;
            }
            let i = cmds.len();
            cmds.push((w.method.clone(), w.params.clone()));
            self.carry(&w, i, &mut cmds, &mut carried);
            packed.push((w, i));
        }
        if cmds.is_empty() {
            return Round::Settled;
        }
        // `carry` may have changed a want's params (SHOW=1, more users): send those.
        let results: Vec<Result<Value, Error>> = if cmds.len() == 1 {
            let (method, params) = &cmds[0];
            vec![self.transport.call(method, params).map(|r| r.result)]
        } else {
            let keyed: Vec<(String, &str, Value)> = cmds
                .iter()
                .enumerate()
                .map(|(i, (m, p))| (cmd_key(i), m.as_str(), p.clone()))
                .collect();
            log::debug!(
                "bitrix24: batch of {} commands ({} urgent)",
                keyed.len(),
                packed.iter().filter(|(w, _)| w.prio.urgent()).count()
            );
            match api::batch(self.transport.as_ref(), &keyed) {
                Ok(r) => r.into_iter().map(|(_, r)| r).collect(),
                Err(e) => vec![Err(e); keyed.len()],
            }
        };
        let answer = |i: usize| {
            results
                .get(i)
                .cloned()
                .unwrap_or_else(|| Err(Error::Decode("no answer in the batch".into())))
        };
        let answered = Instant::now();
        for (w, i) in &packed {
            answers.entry(w.step.seq).or_default().push(answer(*i));
            self.ready_at.insert(w.step.seq, answered);
        }
        // A carried step is answered already: it settles when its turn comes, without a
        // request. If its command (or the register it refers to) failed, it is sent on its
        // own later.
        for c in carried {
            let ok = |i: usize| results.get(i).is_some_and(Result::is_ok);
            if ok(c.cmd) && c.after.is_none_or(ok) {
                let r = c.answer.map_or_else(|| answer(c.cmd), Ok);
                answers.insert(c.seq, vec![r]);
            }
        }
        Round::Sent
    }

    /// Under a spike, when to send the urgent requests in `wants` (sorted, urgent first):
    /// `None` for now, or the time to look again.
    ///
    /// The bucket's burst (50 requests of up to 50 commands) is what keeps cards on time
    /// through a spike; sending every urgent step the moment it is due spends it on requests
    /// of one or two commands within a second, and from then on 2 requests a second carry at
    /// most ~33 cards a second (each needs a look-up, a register and a show). So with more
    /// than [`CARD_HOLD_FROM`] slots in use, urgent steps wait for company: a request goes
    /// when they fill a batch, or when the oldest has been ready for a hold that grows as
    /// the bucket empties, to one slot's time (0.5 s) at [`CARD_HOLD_FROM`] +
    /// [`CARD_HOLD_SPAN`] slots in use. At a call a second the bucket stays nearly full and
    /// nothing waits; at a sustained load the hold settles where requests go at the bucket's
    /// rate, which is what waiting for a slot did anyway; through a spike of 100 calls a
    /// second, full batches at ~6 requests a second make the burst last ~10 s instead of ~1 s.
    fn hold_urgent(&self, wants: &[Want], now: Instant) -> Option<Instant> {
        let l = self.pacing.as_ref()?;
        let used = l.used();
        if used <= CARD_HOLD_FROM {
            return None;
        }
        let mut cmds = 0;
        let mut oldest = now;
        for w in wants.iter().take_while(|w| w.prio.urgent()) {
            // A register that puts a card up carries its show in the same batch.
            let card = w.prio == Priority::Card && matches!(w.step.action, Action::Register { .. });
            cmds += if card { 2 } else { 1 };
            oldest = oldest.min(w.ready);
        }
        if cmds >= api::BATCH_MAX {
            return None;
        }
        let over = (used - CARD_HOLD_FROM).min(CARD_HOLD_SPAN);
        let hold = l
            .slot()
            .mul_f64(f64::from(over) / f64::from(CARD_HOLD_SPAN));
        let at = oldest + hold;
        (at > now).then_some(at)
    }

    /// The later steps of `w`'s call that the command at `cmds[i]` (`w`'s own) can carry,
    /// noted in `carried` (and marked as being sent, [`Outbox::begin`]):
    ///
    /// - after a register, the shows right behind it (the phones ringing now): with exactly
    ///   one, for the very user the call is registered under, `SHOW=1` on the register puts
    ///   the card up (bitrix24-api.md §2.1); otherwise one `show` for all of them rides in the
    ///   same batch, its `CALL_ID` taken from the register's result (`$result[cNN][CALL_ID]`,
    ///   §8). Either way the card opens in the register's request, not one later;
    /// - after a show or a hide, the shows (hides) right behind it: one command for all their
    ///   users (`USER_ID` is a list, §4.1).
    ///
    /// Only users the directory knows: a step for anyone else is left to run (and be skipped)
    /// on its own.
    fn carry(&self, w: &Want, i: usize, cmds: &mut Vec<(String, Value)>, out: &mut Vec<Carried>) {
        let register = w
            .method
            .eq_ignore_ascii_case("telephony.externalcall.register");
        let card = match w.step.action {
            Action::Register { .. } if register => CardKind::Show,
            Action::Show { .. } => CardKind::Show,
            Action::Hide { .. } => CardKind::Hide,
            _ => return,
        };
        let Some(dir) = self.directory.get() else {
            return;
        };
        // A hide the finish closes anyway runs on its own, to be left out there.
        let closed = match card {
            CardKind::Hide => self.finish_closes(&w.key),
            CardKind::Show => None,
        };
        let mut ob = self.ob();
        let Some(call) = ob.call(&w.key) else {
            return;
        };
        // The steps behind this one, while they are of the kind this command can carry.
        let mut behind: Vec<(u64, u64)> = Vec::new();
        for s in call.steps.iter().skip(1) {
            let ext = match (&s.action, card) {
                (Action::Show { ext }, CardKind::Show) | (Action::Hide { ext }, CardKind::Hide) => {
                    ext
                }
                _ => break,
            };
            let Some(user) = dir.user_for(ext) else { break };
            if Some(user) == closed {
                break;
            }
            behind.push((s.seq, user));
        }
        if behind.is_empty() {
            return;
        }
        if register {
            let registered_under = w.params.get("USER_ID").and_then(Value::as_u64);
            if behind.len() == 1 && registered_under == Some(behind[0].1) {
                if ob.begin(&w.key, behind[0].0) {
                    cmds[i].1["SHOW"] = Value::from(1);
                    out.push(Carried {
                        seq: behind[0].0,
                        cmd: i,
                        after: None,
                        answer: Some(Value::Bool(true)),
                    });
                }
                return;
            }
            if cmds.len() >= api::BATCH_MAX {
                return;
            }
            behind.retain(|(seq, _)| ob.begin(&w.key, *seq));
            if behind.is_empty() {
                return;
            }
            let users: Vec<u64> = behind.iter().map(|(_, u)| *u).collect();
            let call_id = format!("$result[{}][CALL_ID]", cmd_key(i));
            cmds.push((
                "telephony.externalcall.show".to_string(),
                api::card_params(&call_id, &users),
            ));
            let cmd = cmds.len() - 1;
            out.extend(behind.iter().map(|(seq, _)| Carried {
                seq: *seq,
                cmd,
                after: Some(i),
                answer: None,
            }));
            return;
        }
        behind.retain(|(seq, _)| ob.begin(&w.key, *seq));
        let Some(Value::Array(users)) = cmds[i].1.get_mut("USER_ID") else {
            return;
        };
        users.extend(behind.iter().map(|(_, u)| Value::from(*u)));
        out.extend(behind.iter().map(|(seq, _)| Carried {
            seq: *seq,
            cmd: i,
            after: None,
            answer: None,
        }));
    }

    /// Without batching (`callme replay`, the demo): each due step straight to the transport.
    fn run_due_one_by_one(&mut self, now: Instant) -> Option<Instant> {
        for _ in 0..100_000 {
            self.collect_attaches();
            let due = self.ob().due(now);
            if due.is_empty() {
                break;
            }
            for (key, step) in due {
                if matches!(step.action, Action::Attach { .. })
                    && self.attach_worker.as_ref().is_some_and(|w| !w.is_dead())
                {
                    self.start_attach(&key, &step, now);
                    continue;
                }
                let t = Arc::clone(&self.transport);
                let result = self.step(&key, &step.action, t.as_ref());
                self.settle(&key, &step, result, now);
            }
            self.ob().flush();
        }
        let mut ob = self.ob();
        ob.maybe_compact();
        ob.next_due()
    }

    /// Hand a due attach to the worker, holding its call while it runs (or, with the worker
    /// busy, for a moment before looking again).
    fn start_attach(&mut self, key: &str, step: &Step, now: Instant) {
        let Action::Attach { path } = &step.action else {
            return;
        };
        let Some(call_id) = self.call_id(key) else {
            let skipped = Ok(Done::Skipped("call is not registered".into()));
            self.settle(key, step, skipped, now);
            return;
        };
        let since = *self
            .attach_since
            .entry(key.to_string())
            .or_insert_with(Instant::now);
        let job = Job {
            key: key.to_string(),
            seq: step.seq,
            call_id,
            path: path.clone(),
            waited: since.elapsed(),
        };
        let submitted = self.attach_worker.as_mut().is_some_and(|w| w.submit(job));
        let hold = if submitted {
            ATTACH_IN_FLIGHT
        } else {
            ATTACH_QUEUED
        };
        self.ob().hold(key, now + hold, false);
    }

    /// Settle the attach the worker finished, if any.
    fn collect_attaches(&mut self) {
        while let Some(f) = self.attach_worker.as_mut().and_then(AttachWorker::poll) {
            let step = self
                .ob()
                .call(&f.key)
                .and_then(|c| c.steps.iter().find(|s| s.seq == f.seq).cloned());
            let Some(step) = step else {
                continue;
            };
            let call_id = self.call_id(&f.key).unwrap_or_default();
            let result = self.attach_outcome(&f.key, &call_id, f.result);
            self.settle(&f.key, &step, result, Instant::now());
        }
    }

    /// Record the outcome of one step in the outbox and the stats.
    fn settle(&mut self, key: &str, step: &Step, result: Result<Done, Error>, now: Instant) {
        let name = step_name(&step.action);
        let again = match &result {
            Ok(Done::Later(_) | Done::NoDirectory(_)) => true,
            Err(e) => e.is_retryable(),
            Ok(_) => false,
        };
        if !again && matches!(step.action, Action::Attach { .. }) {
            // The attach is over, whatever its end: its wait clock goes with it.
            self.attach_since.remove(key);
        }
        if !matches!(result, Ok(Done::NoDirectory(_))) && self.waiting.remove(key).is_some() {
            self.stats.waiting_for_directory = self.waiting.len();
        }
        match result {
            Ok(Done::Ok) => {
                self.stats.sent += 1;
                self.stats.count(name, "ok");
                if matches!(step.action, Action::Show { .. }) {
                    let waited = crate::clock::now_ms().saturating_sub(step.queued_ms);
                    self.stats.card_latency.observe_ms(waited);
                }
                self.ob().complete(key, step.seq);
            }
            Ok(Done::Skipped(why)) => {
                log::debug!("{key}: skipped {name}: {why}");
                self.stats.skipped += 1;
                self.stats.count(name, "skipped");
                self.ob().complete(key, step.seq);
            }
            Ok(Done::Later(delay)) => {
                log::debug!("{key}: {name} not possible yet, again in {delay:?}");
                self.ob().hold(key, now + delay, false);
            }
            Ok(Done::NoDirectory(what)) => {
                self.stats.count(name, "wait");
                let waits = self.waiting.entry(key.to_string()).or_insert(0);
                *waits += 1;
                let delay = backoff(self.cfg.retry_min, self.cfg.retry_max, *waits, key);
                if *waits == 1 {
                    log::info!(
                        "{key}: {name} waits for the Bitrix24 user directory (not loaded yet) \
                         to map {what}"
                    );
                } else {
                    log::debug!("{key}: {name} still waits for the user directory ({what})");
                }
                self.stats.waiting_for_directory = self.waiting.len();
                // Not a retry and not an attempt: nothing was sent. The directory's arrival
                // releases the call early (`directory_arrived`).
                self.ob().hold(key, now + delay, false);
            }
            Err(e) if e.is_retryable() => {
                let attempts = self.ob().call(key).map_or(0, |c| c.attempts) + 1;
                let mut delay = backoff(self.cfg.retry_min, self.cfg.retry_max, attempts, key);
                // The per-method cost limit lasts until its 10-minute window moves on
                // (bitrix24-api.md §9.4): no point in knocking soon.
                if matches!(&e, Error::Api { code, .. } if code == "OPERATION_TIME_LIMIT") {
                    delay = delay.max(self.cfg.retry_max);
                }
                self.ob().hold(key, now + delay, true);
                self.stats.retries += 1;
                self.stats.count(name, "retry");
                // The first failure is worth a warning; the rest would flood the log
                // during an outage.
                if attempts == 1 {
                    log::warn!("{key}: {name} failed, will retry: {e}");
                } else {
                    log::debug!(
                        "{key}: {name} failed (attempt {attempts}), retry in {delay:?}: {e}"
                    );
                }
                self.stats.last_error = Some(e.to_string());
            }
            Err(e) => {
                log::error!("{key}: {name} failed permanently, moving on: {e}");
                self.stats.permanent_failures += 1;
                self.stats.count(name, "failed");
                self.stats.last_error = Some(e.to_string());
                let mut ob = self.ob();
                ob.complete(key, step.seq);
                if matches!(step.action, Action::Register { .. }) {
                    let dropped = ob.kill(key);
                    if dropped > 0 {
                        log::error!("{key}: not registered, dropping {dropped} later step(s)");
                    }
                }
            }
        }
    }

    /// Do one step against `t` (the portal, or a batch round's [`Scripted`] answers). Facts
    /// are recorded only on success, so a step run again with more answers is harmless.
    fn step(&mut self, key: &str, action: &Action, t: &dyn Transport) -> Result<Done, Error> {
        match action {
            Action::Register {
                direction,
                phone: raw,
                line,
                started_ms,
                employee,
            } => {
                if let Some(id) = self.call_id(key) {
                    // Registered before a restart; the done record was not written.
                    return Ok(Done::Skipped(format!("already registered as {id}")));
                }
                let number = phone::normalize(raw, &self.cfg.phone).unwrap_or_else(|| {
                    // Anonymous or garbled caller ID. Bitrix24 refuses an empty PHONE_NUMBER
                    // ("Unsupported phone number format"), and the call must still be logged.
                    let digits: String = raw.chars().filter(char::is_ascii_digit).collect();
                    if digits.is_empty() {
                        "0".to_string()
                    } else {
                        digits
                    }
                });
                // A callback belongs to the employee who called back, and a desk-phone
                // outbound call to the employee who dialled; otherwise the CRM decides before
                // the card opens. An outbound call from a phone that is not a Bitrix24 user
                // falls back to the inbound rules (CRM owner, line map, default user).
                let dir = self.directory.get();
                let dir = dir.as_deref();
                let chosen = match (employee, direction) {
                    (Some(ext), Direction::Outbound) => {
                        match Lookup::from_dir(dir, |d| d.user_for(ext)) {
                            Lookup::Nobody => self.responsible_for(t, &number, line, dir)?,
                            other => other,
                        }
                    }
                    (Some(ext), _) => Lookup::from_dir(dir, |d| d.user_for(ext))
                        .or_else(|| self.default_user(dir)),
                    (None, _) => self.responsible_for(t, &number, line, dir)?,
                };
                let user_id = match chosen {
                    Lookup::User(id) => id,
                    Lookup::NotLoaded => {
                        let who = employee.as_deref().map_or_else(
                            || "the line or default user".to_string(),
                            |e| format!("internal number {e}"),
                        );
                        return Ok(Done::NoDirectory(who));
                    }
                    // The only permanent "nobody": a loaded directory without the employee
                    // and no usable default user.
                    Lookup::Nobody => {
                        return Err(Error::Decode(
                            "nobody to register the call under: the CRM has no responsible \
                             employee for this number and [calls] default_user is not set or \
                             is not a Bitrix24 user"
                                .into(),
                        ))
                    }
                };
                let reg = api::register(
                    t,
                    &RegisterParams {
                        user_id,
                        phone_number: number,
                        call_type: direction.bitrix_type(),
                        call_start_date: isotime::utc(*started_ms),
                        line_number: (!line.is_empty()).then(|| line.clone()),
                        crm_create: self.cfg.crm_create,
                        external_call_id: key.to_string(),
                        show: false,
                    },
                )?;
                log::info!("{key}: registered as {} under user {user_id}", reg.call_id);
                self.ob()
                    .set_facts(key, reg.call_id, Some(user_id), *direction);
                Ok(Done::Ok)
            }
            Action::Adopt { call_id, ext } => {
                let Some(dir) = self.directory.get() else {
                    return Ok(Done::NoDirectory(format!("internal number {ext}")));
                };
                let user = dir.user_for(ext);
                self.ob()
                    .set_facts(key, call_id.clone(), user, Direction::Outbound);
                log::info!("{key}: click-to-call {call_id} by {ext}");
                Ok(Done::Ok)
            }
            Action::Show { ext } | Action::Hide { ext } => {
                let Some(call_id) = self.call_id(key) else {
                    return Ok(Done::Skipped("call is not registered".into()));
                };
                let Some(dir) = self.directory.get() else {
                    return Ok(Done::NoDirectory(format!("internal number {ext}")));
                };
                let Some(user) = dir.user_for(ext) else {
                    return Ok(Done::Skipped(format!("{ext} is not a Bitrix24 user")));
                };
                if matches!(action, Action::Hide { .. }) && self.finish_closes(key) == Some(user) {
                    return Ok(Done::Skipped("the finish closes this card".into()));
                }
                if matches!(action, Action::Show { .. }) {
                    api::show(t, &call_id, &[user])?;
                } else {
                    api::hide(t, &call_id, &[user])?;
                }
                Ok(Done::Ok)
            }
            Action::Finish {
                user,
                duration,
                status,
            } => {
                let Some(call_id) = self.call_id(key) else {
                    return Ok(Done::Skipped("call is not registered".into()));
                };
                let user_id = match self.finish_user(key, user) {
                    Lookup::User(id) => id,
                    Lookup::NotLoaded => {
                        return Ok(Done::NoDirectory(match user {
                            FinishUser::Employee(ext) => format!("internal number {ext}"),
                            _ => "the default user".to_string(),
                        }))
                    }
                    Lookup::Nobody => {
                        return Err(Error::Decode(
                            "nobody to finish the call under (set [calls] default_user)".into(),
                        ))
                    }
                };
                let attempts = self.ob().call(key).map_or(0, |c| c.attempts);
                let res = api::finish(
                    t,
                    &FinishParams {
                        call_id: call_id.clone(),
                        user_id,
                        duration: *duration,
                        status_code: status.code().to_string(),
                        add_to_chat: self.cfg.add_to_chat,
                        failed_reason: None,
                    },
                );
                match res {
                    // An earlier attempt timed out after Bitrix24 had already finished the
                    // call: "not found" now means it is done.
                    Err(e) if e.is_call_not_found() && attempts > 0 => {
                        log::info!("{key}: finish already applied by an earlier attempt");
                    }
                    other => other?,
                }
                log::info!(
                    "{key}: finished {call_id} under user {user_id}, status {status}, {duration} s"
                );
                let direction = self
                    .ob()
                    .call(key)
                    .map_or("inbound", |c| c.direction.as_str());
                *self
                    .stats
                    .finished
                    .entry((direction.to_string(), status.code().to_string()))
                    .or_insert(0) += 1;
                Ok(Done::Ok)
            }
            Action::Attach { path } => {
                let Some(call_id) = self.call_id(key) else {
                    return Ok(Done::Skipped("call is not registered".into()));
                };
                let since = *self
                    .attach_since
                    .entry(key.to_string())
                    .or_insert_with(Instant::now);
                let r =
                    super::record::attach(&self.cfg.recording, t, &call_id, path, since.elapsed());
                self.attach_outcome(key, &call_id, r)
            }
        }
    }

    /// An attach's [`Progress`] as a step outcome (inline or from the worker).
    fn attach_outcome(
        &mut self,
        key: &str,
        call_id: &str,
        r: Result<super::record::Progress, Error>,
    ) -> Result<Done, Error> {
        let step = r?;
        if !matches!(step, super::record::Progress::Later(_)) {
            self.attach_since.remove(key);
        }
        match step {
            super::record::Progress::Attached(how) => {
                log::info!("{key}: recording attached to {call_id}: {how}");
                Ok(Done::Ok)
            }
            super::record::Progress::Later(d) => Ok(Done::Later(d)),
            super::record::Progress::Skipped { why, outcome } => {
                // Why nothing was sent, beside the general "skipped" count.
                self.stats.count("attachRecord", outcome);
                Ok(Done::Skipped(why))
            }
        }
    }

    fn call_id(&self, key: &str) -> Option<String> {
        self.ob().call(key).and_then(|c| c.call_id.clone())
    }

    /// CRM responsible (contact → company → lead), else the static line map, else the default
    /// user. A CRM lookup that fails with a retryable error is retried: registering under a
    /// fallback user because Bitrix24 hiccuped would put the card in front of the wrong person.
    /// The CRM needs no directory; the line map and the default user do, so without one they
    /// answer [`Lookup::NotLoaded`].
    fn responsible_for(
        &self,
        t: &dyn Transport,
        number: &str,
        line: &str,
        dir: Option<&Directory>,
    ) -> Result<Lookup, Error> {
        if self.cfg.responsible == Responsible::Crm {
            match api::responsible_for(t, number) {
                Ok(Some(id)) => return Ok(Lookup::User(id)),
                Ok(None) => {}
                Err(e) if e.is_retryable() => return Err(e),
                Err(e) => log::warn!("CRM lookup for {number} failed, using fallbacks: {e}"),
            }
        }
        let by_line = match self.cfg.static_responsible.iter().find(|(l, _)| l == line) {
            Some((_, ext)) => Lookup::from_dir(dir, |d| d.user_for(ext)),
            None => Lookup::Nobody,
        };
        Ok(by_line.or_else(|| self.default_user(dir)))
    }

    /// `[calls] default_user` as a Bitrix24 user. Without one configured nothing can come of
    /// waiting, so that is `Nobody` whether or not the directory has loaded.
    fn default_user(&self, dir: Option<&Directory>) -> Lookup {
        match self.cfg.default_user.as_deref() {
            None => Lookup::Nobody,
            Some(ext) => Lookup::from_dir(dir, |d| d.user_for(ext)),
        }
    }

    /// Whether `w` is a hide of the card of the call's responsible while the call goes on:
    /// the finish may close that card itself (see [`Deliverer::round`]).
    fn finish_may_close(&self, w: &Want) -> bool {
        let Action::Hide { ext } = &w.step.action else {
            return false;
        };
        let Some(user) = self.directory.get().and_then(|d| d.user_for(ext)) else {
            return false;
        };
        self.ob().call(&w.key).is_some_and(|c| {
            !c.finishing && c.direction == Direction::Inbound && c.responsible == Some(user)
        })
    }

    /// The user whose card the finish right behind the call's first step (past other hides
    /// only) closes: Bitrix24's finish closes the finishing user's card itself (bitrix24-api.md
    /// §3, step 3), so a hide for that user would spend a command on nothing. The tracker
    /// already leaves out such a hide when it names the finishing employee; this catches a
    /// missed call finished under the responsible (or default) user who was also rung.
    fn finish_closes(&self, key: &str) -> Option<u64> {
        let finish = {
            let ob = self.ob();
            let call = ob.call(key)?;
            let Action::Finish { user, .. } = &call
                .steps
                .iter()
                .skip(1)
                .find(|s| !matches!(s.action, Action::Hide { .. }))?
                .action
            else {
                return None;
            };
            user.clone()
        };
        match self.finish_user(key, &finish) {
            Lookup::User(u) => Some(u),
            _ => None,
        }
    }

    fn finish_user(&self, key: &str, user: &FinishUser) -> Lookup {
        let responsible = self.ob().call(key).and_then(|c| c.responsible);
        let responsible = || responsible.map_or(Lookup::Nobody, Lookup::User);
        let dir = self.directory.get();
        let dir = dir.as_deref();
        match user {
            FinishUser::Employee(ext) => Lookup::from_dir(dir, |d| d.user_for(ext))
                .or_else(responsible)
                .or_else(|| self.default_user(dir)),
            FinishUser::Responsible => responsible().or_else(|| self.default_user(dir)),
            FinishUser::Default => self.default_user(dir).or_else(responsible),
        }
    }
}

fn step_name(a: &Action) -> &'static str {
    match a {
        Action::Register { .. } => "register",
        Action::Adopt { .. } => "adopt",
        Action::Show { .. } => "show",
        Action::Hide { .. } => "hide",
        Action::Finish { .. } => "finish",
        Action::Attach { .. } => "attachRecord",
    }
}

/// `min · 2^(attempt-1)`, capped at `max`, with ±20 % jitter derived from the call key and the
/// attempt so that calls failing together do not retry in lockstep.
fn backoff(min: Duration, max: Duration, attempt: u32, key: &str) -> Duration {
    let exp = min.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let base = exp.min(max);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes().chain(attempt.to_le_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let permille = 800 + (h % 401); // 0.8 ..= 1.2
    base.mul_f64(permille as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bitrix::api::User;
    use crate::calls::Status;
    use crate::config::RecordingMode;
    use serde_json::json;

    /// A portal in memory: records every request; the CRM knows `crm_owner` (if any) as the
    /// responsible user of every number.
    #[derive(Default)]
    struct Portal {
        crm_owner: Option<u64>,
        sent: Mutex<Vec<(String, Value)>>,
    }

    impl Portal {
        /// The methods sent, in order (a batch, then its commands).
        fn methods(&self) -> Vec<String> {
            let sent = self.sent.lock().unwrap();
            sent.iter().map(|(m, _)| m.clone()).collect()
        }

        fn sent(&self, method: &str) -> Vec<Value> {
            let sent = self.sent.lock().unwrap();
            sent.iter()
                .filter(|(m, _)| m == method)
                .map(|(_, p)| p.clone())
                .collect()
        }
    }

    /// One `method?query` command of a batch as the method's name and params: numbers as
    /// numbers, `KEY[]` pairs as a list, `$result[cNN][FIELD]` taken from `done`.
    fn batch_command(cmd: &str, done: &serde_json::Map<String, Value>) -> (String, Value) {
        let (method, query) = cmd.split_once('?').unwrap_or((cmd, ""));
        // Percent-decoding, enough for what `api::batch_command` writes.
        let unescape = |t: &str| -> String {
            let b = t.as_bytes();
            let mut out = Vec::new();
            let mut i = 0;
            while i < b.len() {
                match b[i] {
                    b'%' if i + 2 < b.len() => {
                        let hex = std::str::from_utf8(&b[i + 1..i + 3]).expect("ascii");
                        out.push(u8::from_str_radix(hex, 16).expect("a %XX escape"));
                        i += 3;
                    }
                    b'+' => {
                        out.push(b' ');
                        i += 1;
                    }
                    c => {
                        out.push(c);
                        i += 1;
                    }
                }
            }
            String::from_utf8(out).expect("UTF-8")
        };
        let mut params = serde_json::Map::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let (k, v) = (unescape(k), unescape(v));
            let (k, v) = (k.as_str(), v.as_str());
            let v = match v
                .strip_prefix("$result[")
                .and_then(|r| r.strip_suffix(']'))
                .and_then(|r| r.split_once("]["))
            {
                Some((key, field)) => done[key][field].clone(),
                None => v.parse::<u64>().map_or_else(|_| json!(v), Value::from),
            };
            match k.strip_suffix("[]") {
                Some(list) => params
                    .entry(list)
                    .or_insert_with(|| json!([]))
                    .as_array_mut()
                    .expect("a list")
                    .push(v),
                None => {
                    params.insert(k.to_string(), v);
                }
            }
        }
        (method.to_string(), Value::Object(params))
    }

    impl Transport for Portal {
        fn call(&self, method: &str, params: &Value) -> Result<Reply, Error> {
            if method == "batch" {
                self.sent
                    .lock()
                    .unwrap()
                    .push((method.to_string(), params.clone()));
                let mut done = serde_json::Map::new();
                let mut failed = serde_json::Map::new();
                for (key, cmd) in params["cmd"].as_object().expect("cmd") {
                    let (m, p) = batch_command(cmd.as_str().expect("a command"), &done);
                    match self.call(&m, &p) {
                        Ok(r) => done.insert(key.clone(), r.result),
                        Err(e) => failed.insert(
                            key.clone(),
                            json!({"error": "ERR", "error_description": e.to_string()}),
                        ),
                    };
                }
                return Ok(Reply {
                    result: json!({ "result": done, "result_error": failed }),
                    next: None,
                    total: None,
                });
            }
            self.sent
                .lock()
                .unwrap()
                .push((method.to_string(), params.clone()));
            let result = match method {
                "telephony.externalCall.searchCrmEntities" => match self.crm_owner {
                    Some(id) => json!([{
                        "CRM_ENTITY_TYPE": "CONTACT", "CRM_ENTITY_ID": 5, "ASSIGNED_BY_ID": id
                    }]),
                    None => json!([]),
                },
                "telephony.externalcall.register" => json!({ "CALL_ID": "CID-1" }),
                "telephony.externalcall.show" | "telephony.externalcall.hide" => json!(true),
                "telephony.externalcall.finish" => json!({}),
                other => return Err(Error::Decode(format!("unexpected {other}"))),
            };
            Ok(Reply {
                result,
                next: None,
                total: None,
            })
        }
    }

    fn config(default_user: Option<&str>) -> DeliverConfig {
        DeliverConfig {
            responsible: Responsible::Crm,
            static_responsible: Vec::new(),
            default_user: default_user.map(str::to_string),
            crm_create: false,
            add_to_chat: false,
            phone: PhoneConfig::default(),
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            recording: RecordingConfig::default(),
        }
    }

    /// 201 → user 1 (the default user), 219 → user 19.
    fn directory() -> Directory {
        let user = |id: u64, inner: &str| User {
            id,
            inner: Some(inner.to_string()),
            active: true,
            name: String::new(),
        };
        Directory::from_users(vec![user(1, "201"), user(19, "219")], Instant::now())
    }

    fn deliverer(portal: &Arc<Portal>, dir: SharedDirectory, default: Option<&str>) -> Deliverer {
        Deliverer::with_outbox(
            config(default),
            Box::new(portal.clone()),
            dir,
            Arc::new(Mutex::new(Outbox::in_memory())),
        )
    }

    fn intent(action: Action) -> Intent {
        Intent {
            call: "k1".to_string(),
            action,
        }
    }

    fn register(direction: Direction, employee: Option<&str>) -> Action {
        Action::Register {
            direction,
            phone: "79991234567".to_string(),
            line: String::new(),
            started_ms: 1_700_000_000_000,
            employee: employee.map(str::to_string),
        }
    }

    fn push_call(d: &mut Deliverer, reg: Action) {
        d.push(intent(reg));
        d.push(intent(Action::Show {
            ext: "219".to_string(),
        }));
        d.push(intent(Action::Finish {
            user: FinishUser::Employee("219".to_string()),
            duration: 5,
            status: Status::ANSWERED,
        }));
    }

    fn outcome(d: &Deliverer, step: &str, outcome: &str) -> u64 {
        let key = (step.to_string(), outcome.to_string());
        d.stats().steps.get(&key).copied().unwrap_or(0)
    }

    #[test]
    fn before_the_directory_loads_a_register_waits_then_goes_under_the_default_user() {
        let portal = Arc::new(Portal::default());
        let mut d = deliverer(&portal, SharedDirectory::not_loaded(), Some("201"));
        push_call(&mut d, register(Direction::Inbound, None));
        let now = Instant::now();
        let next = d.run_due(now);
        assert!(portal.sent("telephony.externalcall.register").is_empty());
        assert_eq!(outcome(&d, "register", "wait"), 1);
        assert_eq!(
            d.stats().permanent_failures,
            0,
            "{:?}",
            d.stats().last_error
        );
        assert_eq!(d.stats().waiting_for_directory, 1);
        assert_eq!(d.pending(), 3, "nothing dropped");
        let next = next.expect("held with a backoff");
        assert!(next > now, "not due again at once");
        // Still waiting when the backoff runs out without a directory, and the backoff grows.
        let again = d.run_due(next).expect("held again");
        assert!(
            again - next > next - now,
            "{:?} then {:?}",
            next - now,
            again - next
        );
        assert_eq!(outcome(&d, "register", "wait"), 2);

        // The directory arrives: the call goes at once, not at the end of its backoff.
        d.set_directory(directory());
        let released = Instant::now();
        assert!(released < again, "the test ran past the backoff");
        assert_eq!(d.run_due(released), None);
        let reg = portal.sent("telephony.externalcall.register");
        assert_eq!(reg.len(), 1);
        assert_eq!(reg[0]["USER_ID"], 1, "the default user");
        let show = portal.sent("telephony.externalcall.show");
        assert_eq!(show.len(), 1);
        assert_eq!(show[0]["USER_ID"], json!([19]));
        let fin = portal.sent("telephony.externalcall.finish");
        assert_eq!(fin.len(), 1);
        assert_eq!(fin[0]["USER_ID"], 19);
        assert_eq!(d.pending(), 0);
        assert_eq!(d.stats().waiting_for_directory, 0);
        assert_eq!(d.stats().skipped, 0);
    }

    #[test]
    fn a_crm_owner_registers_without_the_directory_but_the_card_waits_for_it() {
        let portal = Arc::new(Portal {
            crm_owner: Some(7),
            ..Portal::default()
        });
        let mut d = deliverer(&portal, SharedDirectory::not_loaded(), Some("201"));
        push_call(&mut d, register(Direction::Inbound, None));
        d.run_due(Instant::now());
        let reg = portal.sent("telephony.externalcall.register");
        assert_eq!(reg.len(), 1, "the CRM owner needs no directory");
        assert_eq!(reg[0]["USER_ID"], 7);
        // The show for 219 needs 219's user: it waits, it is not skipped.
        assert!(portal.sent("telephony.externalcall.show").is_empty());
        assert_eq!(outcome(&d, "show", "wait"), 1);
        assert_eq!(d.stats().skipped, 0);
        assert_eq!(d.pending(), 2);

        d.set_directory(directory());
        d.run_due(Instant::now());
        assert_eq!(portal.sent("telephony.externalcall.show").len(), 1);
        assert_eq!(
            portal.sent("telephony.externalcall.finish")[0]["USER_ID"],
            19
        );
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn an_outbound_call_waits_for_its_employee_rather_than_going_to_the_crm_owner() {
        let portal = Arc::new(Portal {
            crm_owner: Some(7),
            ..Portal::default()
        });
        let mut d = deliverer(&portal, SharedDirectory::not_loaded(), None);
        d.push(intent(register(Direction::Outbound, Some("219"))));
        d.run_due(Instant::now());
        assert!(portal.sent("telephony.externalcall.register").is_empty());
        assert!(
            portal
                .sent("telephony.externalCall.searchCrmEntities")
                .is_empty(),
            "no CRM fallback while the employee may still be in the directory"
        );
        assert_eq!(outcome(&d, "register", "wait"), 1);
        d.set_directory(directory());
        d.run_due(Instant::now());
        assert_eq!(
            portal.sent("telephony.externalcall.register")[0]["USER_ID"],
            19
        );
    }

    #[test]
    fn only_a_loaded_directory_without_the_employee_and_no_default_user_is_permanent() {
        // Not loaded, no default user: waits (the directory may hold the line's employee).
        let portal = Arc::new(Portal::default());
        let mut d = deliverer(&portal, SharedDirectory::not_loaded(), None);
        d.push(intent(register(Direction::Callback, Some("230"))));
        d.run_due(Instant::now());
        assert_eq!(d.stats().permanent_failures, 0);
        assert_eq!(d.pending(), 1);

        // Loaded, 230 is nobody and there is no default user: given up, once, loudly.
        d.set_directory(directory());
        d.run_due(Instant::now());
        assert_eq!(d.stats().permanent_failures, 1);
        assert!(d
            .stats()
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("nobody to register")));
        assert_eq!(d.pending(), 0);
        assert!(portal.sent("telephony.externalcall.register").is_empty());

        // Loaded with a default user that is in it: the same call goes under that user.
        let portal = Arc::new(Portal::default());
        let mut d = deliverer(&portal, SharedDirectory::loaded(directory()), Some("201"));
        push_call(&mut d, register(Direction::Callback, Some("230")));
        d.run_due(Instant::now());
        assert_eq!(d.stats().permanent_failures, 0);
        assert_eq!(
            portal.sent("telephony.externalcall.register")[0]["USER_ID"],
            1
        );
    }

    #[test]
    fn with_a_loaded_directory_a_card_for_a_stranger_is_skipped_not_held() {
        let portal = Arc::new(Portal::default());
        let mut d = deliverer(&portal, SharedDirectory::loaded(directory()), Some("201"));
        d.push(intent(register(Direction::Inbound, None)));
        d.push(intent(Action::Show {
            ext: "230".to_string(),
        }));
        d.run_due(Instant::now());
        assert_eq!(outcome(&d, "show", "skipped"), 1);
        assert_eq!(outcome(&d, "show", "wait"), 0);
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn a_directory_published_elsewhere_releases_the_waiting_calls() {
        let portal = Arc::new(Portal::default());
        let shared = SharedDirectory::not_loaded();
        let mut d = deliverer(&portal, shared.clone(), Some("201"));
        push_call(&mut d, register(Direction::Inbound, None));
        let now = Instant::now();
        assert!(d.run_due(now).is_some());
        // Click-to-call loaded it on an HTTP thread: the delivery loop hears of it.
        shared.publish(directory());
        assert!(shared.publications().try_recv().is_ok());
        d.directory_arrived(now);
        assert_eq!(d.run_due(now), None);
        assert_eq!(portal.sent("telephony.externalcall.finish").len(), 1);
    }

    #[test]
    fn backoff_doubles_caps_and_jitters() {
        let min = Duration::from_secs(1);
        let max = Duration::from_secs(60);
        let b1 = backoff(min, max, 1, "k");
        assert!(b1 >= Duration::from_millis(800) && b1 <= Duration::from_millis(1200));
        let b3 = backoff(min, max, 3, "k");
        assert!(b3 >= Duration::from_millis(3200) && b3 <= Duration::from_millis(4800));
        let b30 = backoff(min, max, 30, "k");
        assert!(b30 <= Duration::from_secs(72) && b30 >= Duration::from_secs(48));
        assert_ne!(backoff(min, max, 5, "a"), backoff(min, max, 5, "b"));
    }

    /// A portal that answers every command with `true` and records each request's commands
    /// in the order they were packed.
    #[derive(Default)]
    struct Recording {
        requests: Mutex<Vec<Vec<String>>>,
    }

    impl Transport for Recording {
        fn call(&self, method: &str, params: &Value) -> Result<Reply, Error> {
            let cmds: Vec<(String, String)> = match params.get("cmd").and_then(Value::as_object) {
                Some(cmd) if method == "batch" => cmd
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                    .collect(),
                _ => vec![(String::new(), format!("{method}?{params}"))],
            };
            let result = if method == "batch" {
                let ok: serde_json::Map<String, Value> = cmds
                    .iter()
                    .map(|(k, _)| (k.clone(), Value::Bool(true)))
                    .collect();
                serde_json::json!({ "result": ok, "result_error": [] })
            } else {
                Value::Bool(true)
            };
            self.requests
                .lock()
                .unwrap()
                .push(cmds.into_iter().map(|(_, c)| c).collect());
            Ok(Reply {
                result,
                next: None,
                total: None,
            })
        }
    }

    fn intent_of(call: &str, action: Action) -> Intent {
        Intent {
            call: call.into(),
            action,
        }
    }

    /// The rule of issue #20: with a backlog, the show of a phone ringing now goes before the
    /// finishes of calls already over, even when those were queued first and are more than
    /// one batch can carry.
    #[test]
    fn with_a_backlog_a_ringing_show_goes_before_ended_finishes() {
        let portal = Arc::new(Recording::default());
        let directory = Directory::from_users(
            vec![crate::bitrix::User {
                id: 19,
                inner: Some("219".into()),
                active: true,
                name: "U 219".into(),
            }],
            Instant::now(),
        );
        let cfg = DeliverConfig::from_config(
            &crate::config::parse_str(
                "[asterisk]\nusername = u\nsecret = s\n[bitrix24]\nwebhook_url = http://127.0.0.1:9/rest/1/x/\n[calls]\ndefault_user = 219\n",
                "test.conf",
            )
            .unwrap(),
        );
        let outbox = Arc::new(Mutex::new(Outbox::in_memory()));
        let mut d = Deliverer::with_outbox(
            cfg,
            Box::new(portal.clone()),
            SharedDirectory::loaded(directory),
            outbox.clone(),
        );
        {
            let mut ob = outbox.lock().unwrap();
            // 60 calls already over, registered before the outage, their finishes waiting…
            for n in 0..60 {
                let key = format!("ended-{n}");
                ob.set_facts(&key, format!("id-ended-{n}"), Some(19), Direction::Inbound);
                ob.enqueue(intent_of(
                    &key,
                    Action::Finish {
                        user: FinishUser::Employee("219".into()),
                        duration: 5,
                        status: crate::calls::Status::ANSWERED,
                    },
                ));
            }
            // …then a call whose phone is ringing now.
            ob.set_facts("ringing", "id-ringing".into(), Some(19), Direction::Inbound);
            ob.enqueue(intent_of("ringing", Action::Show { ext: "219".into() }));
        }
        d.run_due(Instant::now());
        assert_eq!(d.pending(), 0);
        let requests = portal.requests.lock().unwrap().clone();
        assert_eq!(requests.len(), 2, "61 commands: two batches");
        assert_eq!(requests[0].len(), api::BATCH_MAX);
        assert!(
            requests[0][0].starts_with("telephony.externalcall.show?CALL_ID=id-ringing"),
            "the ringing call's show leads the first batch: {:?}",
            &requests[0][..2]
        );
        let finishes: usize = requests
            .iter()
            .flatten()
            .filter(|c| c.starts_with("telephony.externalcall.finish"))
            .count();
        assert_eq!(finishes, 60);
    }

    /// A phone that stopped ringing before its card went up: the show and its hide are both
    /// dropped; a show already being sent is not, and its hide follows.
    #[test]
    fn an_unsent_show_and_its_hide_are_dropped() {
        let mut ob = Outbox::in_memory();
        ob.set_facts("a", "id-a".into(), Some(19), Direction::Inbound);
        assert!(ob.enqueue(intent_of("a", Action::Show { ext: "219".into() })));
        assert!(!ob.enqueue(intent_of("a", Action::Hide { ext: "219".into() })));
        assert_eq!(ob.pending(), 0, "neither is sent");

        assert!(ob.enqueue(intent_of("a", Action::Show { ext: "220".into() })));
        let (_, show) = ob.due(Instant::now()).remove(0);
        assert!(ob.begin("a", show.seq), "delivery starts sending it");
        assert!(ob.enqueue(intent_of("a", Action::Hide { ext: "220".into() })));
        assert_eq!(
            ob.pending(),
            2,
            "the show is on its way, so the hide must follow"
        );
    }

    /// An attach that fails for good (here: an answer we cannot read) must not leave its wait
    /// clock behind: one entry per failed attach would grow for the daemon's lifetime.
    #[test]
    fn a_permanently_failed_attach_leaves_no_timer_behind() {
        let dir = std::env::temp_dir().join(format!("callme-attach-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("monitor")).unwrap();
        std::fs::write(dir.join("monitor/a.mp3"), b"ID3 not really").unwrap();
        let portal = Arc::new(Portal::default());
        let mut cfg = config(Some("201"));
        cfg.recording = RecordingConfig {
            mode: RecordingMode::Upload,
            pbx_root: dir.clone(),
            path_base: dir.clone(),
            ..RecordingConfig::default()
        };
        let mut d = Deliverer::with_outbox(
            cfg,
            Box::new(portal.clone()),
            SharedDirectory::loaded(directory()),
            Arc::new(Mutex::new(Outbox::in_memory())),
        );
        push_call(&mut d, register(Direction::Inbound, None));
        d.push(intent(Action::Attach {
            path: dir.join("monitor/a.mp3").display().to_string(),
        }));
        for _ in 0..10 {
            d.run_due(Instant::now() + Duration::from_secs(3600));
        }
        // The fake portal answers attachRecord with an error that is not retryable.
        assert_eq!(portal.sent("telephony.externalCall.attachRecord").len(), 1);
        assert_eq!(d.pending(), 0, "the attach is settled");
        assert!(d.attach_since.is_empty(), "{:?}", d.attach_since);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// 201 → 1, 219 → 19, 220 → 20.
    fn three_users() -> SharedDirectory {
        let user = |id: u64, inner: &str| User {
            id,
            inner: Some(inner.to_string()),
            active: true,
            name: String::new(),
        };
        SharedDirectory::loaded(Directory::from_users(
            vec![user(1, "201"), user(19, "219"), user(20, "220")],
            Instant::now(),
        ))
    }

    fn card(hide: bool, ext: &str) -> Intent {
        let ext = ext.to_string();
        intent(if hide {
            Action::Hide { ext }
        } else {
            Action::Show { ext }
        })
    }

    /// Issue #20: a register for the very user whose phone alone rings puts the card up
    /// itself (`SHOW=1`): no show of its own, one request for the card.
    #[test]
    fn a_register_for_the_one_ringing_user_shows_the_card_itself() {
        let portal = Arc::new(Portal::default());
        let mut d = deliverer(&portal, SharedDirectory::loaded(directory()), Some("201"));
        // An outbound call from 219: registered under 219's user, 219's card.
        push_call(&mut d, register(Direction::Outbound, Some("219")));
        assert_eq!(d.run_due(Instant::now()), None);
        let reg = portal.sent("telephony.externalcall.register");
        assert_eq!(reg.len(), 1);
        assert_eq!(reg[0]["USER_ID"], 19);
        assert_eq!(reg[0]["SHOW"], 1);
        assert!(portal.sent("telephony.externalcall.show").is_empty());
        assert!(portal.sent("batch").is_empty(), "the register alone");
        assert_eq!(outcome(&d, "show", "ok"), 1, "the show step is done");
        assert_eq!(d.stats().card_latency.count(), 1);
        assert_eq!(d.pending(), 0);

        // Registered under the default user while 219 rings: SHOW=0 and a show for 219,
        // riding in the register's batch with the register's CALL_ID.
        let portal = Arc::new(Portal::default());
        let mut d = deliverer(&portal, SharedDirectory::loaded(directory()), Some("201"));
        push_call(&mut d, register(Direction::Inbound, None));
        assert_eq!(d.run_due(Instant::now()), None);
        let reg = portal.sent("telephony.externalcall.register");
        assert_eq!(reg[0]["USER_ID"], 1);
        assert_eq!(reg[0]["SHOW"], 0);
        let show = portal.sent("telephony.externalcall.show");
        assert_eq!(show, vec![json!({"CALL_ID": "CID-1", "USER_ID": [19]})]);
        let batches = portal.sent("batch");
        assert_eq!(batches.len(), 1, "register and show in one request");
        let cmd = batches[0]["cmd"].as_object().unwrap();
        // Encoded once inside the command, as in the documented example (§8).
        assert!(cmd["c01"]
            .as_str()
            .unwrap()
            .starts_with("telephony.externalcall.show?CALL_ID=%24result%5Bc00%5D%5BCALL_ID%5D"));
    }

    /// Issue #20: the phones of a ring-all queue get their cards in one command, riding with
    /// the register; the hides of the phones that stopped ringing go as one command too.
    #[test]
    fn cards_of_phones_ringing_together_go_as_one_command() {
        let portal = Arc::new(Portal::default());
        let mut d = deliverer(&portal, three_users(), Some("201"));
        d.push(intent(register(Direction::Inbound, None)));
        d.push(card(false, "219"));
        d.push(card(false, "220"));
        assert_eq!(d.run_due(Instant::now()), None);
        assert_eq!(
            portal.sent("telephony.externalcall.show"),
            vec![json!({"CALL_ID": "CID-1", "USER_ID": [19, 20]})]
        );
        assert_eq!(outcome(&d, "show", "ok"), 2);
        d.push(card(true, "219"));
        d.push(card(true, "220"));
        assert_eq!(d.run_due(Instant::now()), None);
        assert_eq!(
            portal.sent("telephony.externalcall.hide"),
            vec![json!({"CALL_ID": "CID-1", "USER_ID": [19, 20]})]
        );
        assert_eq!(outcome(&d, "hide", "ok"), 2);
        assert_eq!(d.pending(), 0);
        assert_eq!(portal.sent("batch").len(), 1, "only the register's");
    }

    /// Issue #20: with the bucket below its high-water mark, a finish does not spend a
    /// request of its own: it waits (a bounded time) and rides in the next card's batch. With
    /// the bucket nearly full it goes at once.
    #[test]
    fn with_the_bucket_low_a_finish_rides_with_the_next_card() {
        let limiter = crate::bitrix::limiter::Limiter::new(2.0, 50);
        let (portal, mut d, outbox) = recorded(Some(limiter.clone()));
        let finish = |call: &str| Intent {
            call: call.into(),
            action: Action::Finish {
                user: FinishUser::Employee("219".into()),
                duration: 5,
                status: Status::ANSWERED,
            },
        };
        {
            let mut ob = outbox.lock().unwrap();
            ob.set_facts("over", "id-over".into(), Some(19), Direction::Inbound);
            ob.set_facts("ringing", "id-ringing".into(), Some(19), Direction::Inbound);
        }
        for _ in 0..20 {
            limiter.acquire();
        }
        assert!(limiter.used() > IDLE_USED);
        d.push(finish("over"));
        let now = Instant::now();
        let next = d.run_due(now).expect("the finish waits");
        assert!(next > now && next <= now + WAIT_MAX, "{:?}", next - now);
        assert!(portal.sent.lock().unwrap().is_empty(), "nothing sent");
        assert_eq!(d.pending(), 1);
        // A card: it goes within its hold (the bucket is short, `hold_urgent`), and the
        // finish rides in its batch.
        d.push(Intent {
            call: "ringing".into(),
            action: Action::Show { ext: "219".into() },
        });
        let mut next = d.run_due(Instant::now());
        while let Some(at) = next {
            assert!(at <= Instant::now() + limiter.slot(), "held at most a slot");
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            next = d.run_due(Instant::now());
        }
        assert_eq!(
            portal.methods(),
            vec![
                "batch",
                "telephony.externalcall.show",
                "telephony.externalcall.finish"
            ]
        );
        assert_eq!(d.pending(), 0);

        // With the bucket nearly full, nothing waits.
        let (portal, mut d, outbox) = recorded(Some(crate::bitrix::limiter::Limiter::new(2.0, 50)));
        outbox
            .lock()
            .unwrap()
            .set_facts("over", "id-over".into(), Some(19), Direction::Inbound);
        d.push(finish("over"));
        assert_eq!(d.run_due(Instant::now()), None);
        assert_eq!(portal.sent("telephony.externalcall.finish").len(), 1);
    }

    /// Issue #20, a spike: with the bucket short, urgent steps wait for company (up to a
    /// hold that grows as the bucket empties) instead of spending a request each, and a
    /// full batch of them goes at once. With the bucket nearly full nothing waits (the
    /// finish test above).
    #[test]
    fn in_a_spike_cards_wait_for_company_until_their_hold_or_a_full_batch() {
        let limiter = crate::bitrix::limiter::Limiter::new(2.0, 50);
        let (portal, mut d, outbox) = recorded(Some(limiter.clone()));
        {
            let mut ob = outbox.lock().unwrap();
            for n in 0..60 {
                ob.set_facts(
                    &format!("c{n}"),
                    format!("id-{n}"),
                    Some(19),
                    Direction::Inbound,
                );
            }
        }
        for _ in 0..(CARD_HOLD_FROM + CARD_HOLD_SPAN / 2) {
            limiter.acquire();
        }
        // Half the span in use: a hold of half a slot (0.25 s).
        let show = |n: usize| Intent {
            call: format!("c{n}"),
            action: Action::Show { ext: "219".into() },
        };
        let t0 = Instant::now();
        d.push(show(0));
        let at = d
            .run_due(Instant::now())
            .expect("the card waits for company");
        // (queued_ms is wall-clock milliseconds: a millisecond either way.)
        let hold = limiter.slot() / 2;
        assert!(
            at > t0 + hold - Duration::from_millis(5) && at <= t0 + hold + Duration::from_millis(5),
            "{:?}",
            at - t0
        );
        d.push(show(1));
        let again = d.run_due(Instant::now()).expect("still waiting");
        assert!(again <= at, "the oldest card sets the time");
        assert!(portal.sent.lock().unwrap().is_empty(), "nothing sent yet");
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        assert_eq!(d.run_due(Instant::now()), None);
        assert_eq!(
            portal.methods(),
            vec![
                "batch",
                "telephony.externalcall.show",
                "telephony.externalcall.show"
            ],
            "both cards in one request"
        );
        // A full batch of cards does not wait.
        portal.sent.lock().unwrap().clear();
        for n in 2..(2 + api::BATCH_MAX) {
            d.push(show(n));
        }
        assert_eq!(d.run_due(Instant::now()), None);
        assert_eq!(portal.sent("batch").len(), 1);
        assert_eq!(
            portal.sent("telephony.externalcall.show").len(),
            api::BATCH_MAX
        );
        assert_eq!(d.pending(), 0);
        assert!(
            d.ready_at.is_empty(),
            "nothing kept for steps that are gone"
        );
    }

    /// A deliverer over an in-memory outbox, against a portal that records what it is sent,
    /// paced by `limiter` when given (as in the daemon).
    fn recorded(limiter: Option<Arc<Limiter>>) -> (Arc<Portal>, Deliverer, Arc<Mutex<Outbox>>) {
        let portal = Arc::new(Portal::default());
        let outbox = Arc::new(Mutex::new(Outbox::in_memory()));
        let mut d = Deliverer::with_outbox(
            config(Some("201")),
            Box::new(portal.clone()),
            SharedDirectory::loaded(directory()),
            outbox.clone(),
        );
        if let Some(l) = limiter {
            d.set_pacing(l);
        }
        (portal, d, outbox)
    }

    /// A deliverer over an in-memory outbox holding one registered inbound call `key`
    /// (responsible: user 19, the phone at 219), paced by an idle bucket when `paced`.
    fn one_registered_call(key: &str, paced: bool) -> (Arc<Portal>, Deliverer) {
        let limiter = paced.then(|| crate::bitrix::limiter::Limiter::new(2.0, 50));
        let (portal, d, outbox) = recorded(limiter);
        outbox
            .lock()
            .unwrap()
            .set_facts(key, format!("id-{key}"), Some(19), Direction::Inbound);
        (portal, d)
    }

    /// A step of the call `key`.
    fn step_of(key: &str, action: Action) -> Intent {
        Intent {
            call: key.into(),
            action,
        }
    }

    /// The finish of a missed call, under its responsible.
    fn missed_finish(key: &str) -> Intent {
        step_of(
            key,
            Action::Finish {
                user: FinishUser::Responsible,
                duration: 0,
                status: Status::from_cause(19),
            },
        )
    }

    /// Issue #20, fewer commands a call: a missed call finished under its responsible, who
    /// was rung too, needs no hide for them (the finish closes the finishing user's card,
    /// bitrix24-api.md §3); the hide of anyone else still goes, before the finish.
    #[test]
    fn a_hide_the_finish_closes_anyway_is_left_out() {
        let (portal, mut d) = one_registered_call("missed", false);
        d.push(step_of("missed", Action::Hide { ext: "201".into() }));
        d.push(step_of("missed", Action::Hide { ext: "219".into() }));
        d.push(missed_finish("missed"));
        assert_eq!(d.run_due(Instant::now()), None);
        assert_eq!(d.pending(), 0);
        assert_eq!(
            portal.sent("telephony.externalcall.hide"),
            vec![json!({"CALL_ID": "id-missed", "USER_ID": [1]})],
            "only the other user's card is hidden"
        );
        let finishes = portal.sent("telephony.externalcall.finish");
        assert_eq!(finishes.len(), 1);
        assert_eq!(finishes[0]["USER_ID"], json!(19));
        assert_eq!(outcome(&d, "hide", "skipped"), 1);

        // A hide followed by something other than the finish still goes.
        let (portal, mut d) = one_registered_call("moved", false);
        d.push(step_of("moved", Action::Hide { ext: "219".into() }));
        d.push(step_of("moved", Action::Show { ext: "201".into() }));
        d.push(missed_finish("moved"));
        assert_eq!(d.run_due(Instant::now()), None);
        assert_eq!(portal.sent("telephony.externalcall.hide").len(), 1);
    }

    /// The race behind the test above: a phone's DialEnd (its hide) and the call's Hangups
    /// (the finish) can reach delivery a pass apart. The hide of the responsible's card waits
    /// [`FINISH_GRACE`] for that finish, even on an idle bucket; without a finish it goes
    /// when the grace is over. Anyone else's hide goes at once.
    #[test]
    fn a_hide_of_the_responsible_waits_briefly_for_a_finish_that_closes_it() {
        let hide = |ext: &str| step_of("missed", Action::Hide { ext: ext.into() });

        // The finish comes within the grace: no hide at all.
        let (portal, mut d) = one_registered_call("missed", true);
        let t0 = Instant::now();
        d.push(hide("219"));
        let at = d.run_due(Instant::now()).expect("the hide waits");
        // (Ready since its wall-clock queued_ms: a millisecond either way.)
        assert!(
            at <= t0 + FINISH_GRACE + Duration::from_millis(5),
            "{:?}",
            at - t0
        );
        assert!(portal.sent.lock().unwrap().is_empty());
        d.push(missed_finish("missed"));
        assert_eq!(d.run_due(Instant::now()), None);
        assert!(portal.sent("telephony.externalcall.hide").is_empty());
        assert_eq!(portal.sent("telephony.externalcall.finish").len(), 1);

        // No finish: the hide goes once the grace is over.
        let (portal, mut d) = one_registered_call("missed", true);
        d.push(hide("219"));
        let at = d.run_due(Instant::now()).expect("the hide waits");
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        assert_eq!(d.run_due(Instant::now()), None);
        assert_eq!(
            portal.sent("telephony.externalcall.hide"),
            vec![json!({"CALL_ID": "id-missed", "USER_ID": [19]})]
        );

        // Someone else's card: at once.
        let (portal, mut d) = one_registered_call("missed", true);
        d.push(hide("201"));
        assert_eq!(d.run_due(Instant::now()), None);
        assert_eq!(portal.sent("telephony.externalcall.hide").len(), 1);
    }
}
