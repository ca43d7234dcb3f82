//! The durable outbox: every Bitrix24 step is on disk before it is sent, so neither a
//! portal outage nor a daemon crash loses a call. Its sibling, the events journal that lets
//! the tracker pick up calls in progress after a restart, is [`crate::journal`].
//!
//! Both are JSON lines under `[state] dir` ([`crate::statefile`]); `docs/outbox.md` documents
//! the formats, the compaction and the delivery guarantees.
//!
//! - `outbox.jsonl`: `step` records (appended and fsync'd before the step is attempted),
//!   `done` records (after success, a permanent failure or a skip) and `call` records (the
//!   facts later steps need: CALL_ID, responsible user, direction, and whether register and
//!   finish were already queued, which is what stops a call from being registered or
//!   finished twice).
//!
//! A torn last line (crash mid-write) is logged and skipped; everything before it is kept.
//! Both files are rewritten (temp file, fsync, rename, fsync the directory) at start, so a
//! torn tail never glues onto the next record.
//!
//! Disk trouble (full, read-only, gone): a failed append is cut back to the last whole record
//! and the file is marked stale; delivery goes on from memory, and the whole outbox is
//! rewritten from memory (at most once a second) until that works. The state is reported to
//! a shared [`DiskStatus`] (`/healthz` 503 while it fails), logged once per change.

use std::collections::{HashMap, HashSet, VecDeque};

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::calls::{Action, Direction, Intent};
use crate::clock::now_ms;
use crate::statefile::{append, err, line, read_lines, rewrite, DiskStatus};

pub use crate::statefile::Error;

pub const OUTBOX_FILE: &str = "outbox.jsonl";

/// A finished call is remembered this long after its last step, so that a late duplicate
/// Register or Finish for it is still recognised and dropped. The latest a duplicate can come
/// is a click-to-call expectation replayed after a restart and expiring (`[originate]
/// timeout`, 30 s by default) for a call that had finished; ten minutes covers that with
/// room, and keeps the outbox of a busy PBX at ten minutes' worth of calls.
const KEEP_FINISHED_MS: u64 = 600_000;
/// A call with nothing queued and no finish is forgotten after this long without a step
/// (the tracker lost it; nothing more will come).
const KEEP_IDLE_MS: u64 = 48 * 3_600_000;
/// Compact once at least this many journal lines are no longer needed…
const COMPACT_MIN_GARBAGE: usize = 1000;
/// While the file cannot be written, a full rewrite from memory is tried this often.
const REWRITE_RETRY: Duration = Duration::from_secs(1);
/// The name the outbox reports (and is counted) under in [`DiskStatus`].
pub const DISK_NAME: &str = "outbox";

/// One line of `outbox.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Record {
    Step {
        seq: u64,
        call: String,
        /// When it was queued, ms since the epoch.
        at: u64,
        action: Action,
    },
    Done {
        seq: u64,
    },
    Call {
        call: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        call_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<u64>,
        #[serde(default)]
        dir: Direction,
        #[serde(default)]
        registered: bool,
        #[serde(default)]
        finishing: bool,
        #[serde(default)]
        finished: bool,
        #[serde(default)]
        dead: bool,
        /// Failed attempts of the call's current step (persisted so that a finish re-sent
        /// after a restart knows an earlier attempt may have gone through).
        #[serde(default, skip_serializing_if = "is_zero")]
        tries: u32,
        at: u64,
    },
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

// ---------------------------------------------------------------------------------------------
// Outbox

/// One queued step.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub seq: u64,
    pub action: Action,
    /// When it was queued, ms since the epoch.
    pub queued_ms: u64,
}

/// What the outbox knows about one call.
#[derive(Debug, Default)]
pub struct CallEntry {
    pub call_id: Option<String>,
    pub responsible: Option<u64>,
    pub direction: Direction,
    /// A Register or Adopt was queued (and maybe sent): another one is a duplicate.
    pub registered: bool,
    /// A Finish was queued: another one is a duplicate.
    pub finishing: bool,
    /// The finish went through (or was given up).
    pub finished: bool,
    /// Register failed for good: later steps have no CALL_ID to go to.
    pub dead: bool,
    pub steps: VecDeque<Step>,
    /// Failed attempts of the current step. Persisted in the `call` record when a retry is
    /// scheduled; a Finish left over from the last run counts at least one (it may have been
    /// sent before the crash), so "Call is not found" for it means it went through.
    pub attempts: u32,
    pub not_before: Option<Instant>,
    /// The highest seq of this call that may have reached Bitrix24 (see [`Outbox::begin`]): a
    /// show at or below it can no longer be taken back, its hide must follow. Not persisted:
    /// after a restart, [`Outbox::read`] counts what the last run may have sent.
    maybe_sent: Option<u64>,
    last_ms: u64,
}

impl CallEntry {
    fn record(&self, call: &str) -> Record {
        Record::Call {
            call: call.to_string(),
            call_id: self.call_id.clone(),
            user: self.responsible,
            dir: self.direction,
            registered: self.registered,
            finishing: self.finishing,
            finished: self.finished,
            dead: self.dead,
            tries: self.attempts,
            at: self.last_ms,
        }
    }
}

/// The queue of Bitrix24 steps, per call, backed by `outbox.jsonl` (or memory only, for
/// replay and the demo). Shared between the state thread (which queues) and the delivery
/// thread (which sends); neither holds the lock during I/O with Bitrix24.
pub struct Outbox {
    path: Option<PathBuf>,
    file: Option<File>,
    /// Bytes of whole records in `file`: where a failed append is cut back to.
    len: u64,
    /// A write failed: appending is off until a full rewrite from memory succeeds (tried at
    /// `retry_at`, then every [`REWRITE_RETRY`]).
    stale: bool,
    retry_at: Option<Instant>,
    disk: Arc<DiskStatus>,
    /// Records not yet written (done/call records are written at the end of a delivery round).
    buf: String,
    calls: HashMap<String, CallEntry>,
    /// Calls in arrival order, so older calls are served first.
    order: VecDeque<String>,
    next_seq: u64,
    /// Lines in the file that a compaction would drop.
    garbage: usize,
    warn_at: usize,
    warned: bool,
    /// When finished calls were last forgotten ([`Outbox::maybe_compact`] does it once a
    /// minute, so their memory goes even while the file is too small to compact).
    last_purge: Instant,
}

impl Outbox {
    /// Nothing on disk: for `callme replay` and the demo.
    pub fn in_memory() -> Outbox {
        Outbox {
            path: None,
            file: None,
            len: 0,
            stale: false,
            retry_at: None,
            disk: Arc::new(DiskStatus::default()),
            buf: String::new(),
            calls: HashMap::new(),
            order: VecDeque::new(),
            next_seq: 1,
            garbage: 0,
            warn_at: usize::MAX,
            warned: false,
            last_purge: Instant::now(),
        }
    }

    /// Load `dir/outbox.jsonl` (if any) and rewrite it compacted. Steps not yet done are
    /// queued again; calls' facts (CALL_ID, responsible, direction) come back with them. Fails
    /// only if the directory cannot be created or the file read; a rewrite that fails is
    /// retried later (see [`Outbox::flush`]).
    pub fn open(dir: &Path, warn_at: usize) -> Result<Outbox, Error> {
        Self::open_reporting(dir, warn_at, Arc::new(DiskStatus::default()))
    }

    /// [`Outbox::open`], reporting whether the file can be written to `disk`. A state dir
    /// that cannot be created or read at start gives an outbox in memory, reported to `disk`
    /// until the process ends: rewriting a file we could not read would throw away the steps
    /// in it, so only a restart tries again. One we could read but not rewrite is rewritten
    /// from memory once it can be.
    pub fn open_or_memory(dir: &Path, warn_at: usize, disk: Arc<DiskStatus>) -> Outbox {
        match Self::open_reporting(dir, warn_at, disk.clone()) {
            Ok(o) => o,
            Err(e) => {
                disk.failed(
                    DISK_NAME,
                    &format!("{e}; steps are kept in memory only until a restart"),
                );
                let mut o = Outbox::in_memory();
                o.warn_at = warn_at;
                o.disk = disk;
                o
            }
        }
    }

    fn open_reporting(dir: &Path, warn_at: usize, disk: Arc<DiskStatus>) -> Result<Outbox, Error> {
        fs::create_dir_all(dir).map_err(err(dir, "cannot create"))?;
        let path = dir.join(OUTBOX_FILE);
        let mut ob = Outbox::read(&path)?;
        ob.warn_at = warn_at;
        ob.disk = disk;
        let pending = ob.pending();
        if pending > 0 {
            log::info!(
                "outbox: {pending} Bitrix24 step(s) of {} call(s) left from the last run, continuing",
                ob.calls.values().filter(|c| !c.steps.is_empty()).count()
            );
        }
        ob.purge(now_ms());
        ob.path = Some(path);
        if let Err(e) = ob.compact() {
            // We could read the file, so rewriting it from memory later is safe.
            ob.disk.failed(DISK_NAME, &e.to_string());
            ob.stale = true;
            ob.retry_at = Some(Instant::now() + REWRITE_RETRY);
        }
        Ok(ob)
    }

    /// Load `path` (an `outbox.jsonl`; missing = empty) into memory without writing anything:
    /// the loader [`Outbox::open`] uses, and what `callme doctor` counts the backlog with
    /// next to a running daemon. The result is not backed by a file.
    pub fn read(path: &Path) -> Result<Outbox, Error> {
        let records: Vec<Record> = read_lines(path)?;
        let mut ob = Outbox::in_memory();
        let mut done = HashSet::new();
        for r in &records {
            if let Record::Done { seq } = r {
                done.insert(*seq);
            }
        }
        for r in records {
            match r {
                Record::Step {
                    seq,
                    call,
                    at,
                    action,
                } => {
                    ob.next_seq = ob.next_seq.max(seq + 1);
                    let e = ob.entry(&call);
                    e.last_ms = e.last_ms.max(at);
                    mark_queued(e, &action);
                    if !done.contains(&seq) {
                        e.steps.push_back(Step {
                            seq,
                            action,
                            queued_ms: at,
                        });
                    }
                }
                Record::Done { .. } => {}
                Record::Call {
                    call,
                    call_id,
                    user,
                    dir,
                    registered,
                    finishing,
                    finished,
                    dead,
                    tries,
                    at,
                } => {
                    let e = ob.entry(&call);
                    e.attempts = tries;
                    e.call_id = call_id.or(e.call_id.take());
                    e.responsible = user.or(e.responsible);
                    e.direction = dir;
                    e.registered |= registered;
                    e.finishing |= finishing;
                    e.finished |= finished;
                    e.dead |= dead;
                    e.last_ms = e.last_ms.max(at);
                }
            }
        }
        for c in ob.calls.values_mut() {
            // A finish left from the last run may have reached Bitrix24 before the crash.
            if c.steps
                .front()
                .is_some_and(|s| matches!(s.action, Action::Finish { .. }))
            {
                c.attempts = c.attempts.max(1);
            }
            // So may any step left from the last run: a batch carries many, and the shows
            // of phones ringing together go as one command. None may be dropped as "never
            // sent" (a card it showed would stay open); a hide of a card never shown is
            // harmless.
            c.maybe_sent = c.steps.back().map(|s| s.seq);
        }
        Ok(ob)
    }

    fn entry(&mut self, call: &str) -> &mut CallEntry {
        if !self.calls.contains_key(call) {
            self.order.push_back(call.to_string());
        }
        self.calls.entry(call.to_string()).or_default()
    }

    /// Queue a step and make it durable before returning. A second Register/Adopt or Finish
    /// for the same call is dropped (false): a call is registered once and finished once.
    pub fn enqueue(&mut self, intent: Intent) -> bool {
        self.enqueue_all(std::iter::once(intent)) == 1
    }

    /// Queue `intents` in order and make them durable together, before returning: one append
    /// and one fsync for all of them (group commit: the state thread hands over what one pass
    /// decided, so a burst of events costs one fsync, not one per step). Duplicates are dropped
    /// as by [`Outbox::enqueue`], within the batch too. Returns how many were queued.
    ///
    /// Nothing queued here can be sent before it is on disk: the outbox is shared behind a
    /// lock that the caller holds throughout, and delivery sees steps only through it.
    pub fn enqueue_all(&mut self, intents: impl IntoIterator<Item = Intent>) -> usize {
        let mut queued = 0;
        for intent in intents {
            if self.queue(intent) {
                queued += 1;
            }
        }
        if queued > 0 {
            self.disk.count(DISK_NAME, queued as u64, 0, 0);
        }
        // Also when only a dropped show's done record is buffered (`cancel_unsent_show`).
        if queued > 0 || !self.buf.is_empty() {
            self.flush();
            self.check_bound();
        }
        queued
    }

    /// Queue one step in memory and its record in the buffer; the caller flushes.
    fn queue(&mut self, intent: Intent) -> bool {
        if self.cancel_unsent_show(&intent) {
            return false;
        }
        let now = now_ms();
        let e = self.entry(&intent.call);
        let dup = match intent.action {
            Action::Register { .. } | Action::Adopt { .. } => e.registered,
            // A card step after the finish can only come from a call rebuilt after a restart
            // (a journal that missed its end); Bitrix24 closed the cards with the finish.
            Action::Finish { .. } | Action::Show { .. } | Action::Hide { .. } => e.finishing,
            _ => false,
        };
        if dup {
            log::debug!("outbox: dropping a duplicate step: {intent}");
            return false;
        }
        mark_queued(e, &intent.action);
        e.last_ms = now;
        let seq = self.next_seq;
        self.next_seq += 1;
        let rec = Record::Step {
            seq,
            call: intent.call.clone(),
            at: now,
            action: intent.action.clone(),
        };
        self.calls
            .get_mut(&intent.call)
            .expect("entry just made")
            .steps
            .push_back(Step {
                seq,
                action: intent.action,
                queued_ms: now,
            });
        line(&rec, &mut self.buf);
        true
    }

    fn check_bound(&mut self) {
        let pending = self.pending();
        if pending > self.warn_at && !self.warned {
            self.warned = true;
            log::error!(
                "outbox: {pending} Bitrix24 steps waiting, more than [state] outbox_warn = {}; \
                 Bitrix24 is down or too slow. Still accepting calls (they wait on disk)",
                self.warn_at
            );
        } else if pending <= self.warn_at / 2 && self.warned {
            self.warned = false;
            log::warn!("outbox: back to {pending} waiting step(s)");
        }
    }

    /// A Hide whose Show was never sent: the phone stopped ringing before its card went up.
    /// Sending both now would only flash a card for a call that moved on (issue #20), so the
    /// Show is marked done (dropped) and the Hide is not queued. True if that happened.
    fn cancel_unsent_show(&mut self, intent: &Intent) -> bool {
        let Action::Hide { ext } = &intent.action else {
            return false;
        };
        let Some(c) = self.calls.get_mut(&intent.call) else {
            return false;
        };
        let sent = c.maybe_sent;
        let unsent = c.steps.iter().position(|s| {
            matches!(&s.action, Action::Show { ext: e } if e == ext)
                && sent.is_none_or(|m| s.seq > m)
        });
        let Some(i) = unsent else {
            return false;
        };
        let seq = c.steps[i].seq;
        c.steps.remove(i);
        log::debug!(
            "outbox: {} stopped ringing before its card was shown: show and hide dropped",
            intent.call
        );
        // Durable with the rest of the pass: the caller flushes.
        line(&Record::Done { seq }, &mut self.buf);
        self.garbage += 2;
        true
    }

    /// Delivery is about to send a request for step `seq` of `key`: from now on it cannot be
    /// taken back (a Hide must follow its Show). False if the step is no longer queued (it
    /// was dropped meanwhile): then it must not be sent.
    pub fn begin(&mut self, key: &str, seq: u64) -> bool {
        let Some(c) = self.calls.get_mut(key) else {
            return false;
        };
        if !c.steps.iter().any(|s| s.seq == seq) {
            return false;
        }
        c.maybe_sent = c.maybe_sent.max(Some(seq));
        true
    }

    /// Write and fsync what is buffered. A write error is not fatal: the steps are in memory
    /// and delivery goes on. The file is cut back to its last whole record and marked stale,
    /// and from then on the whole outbox is rewritten from memory (at most once every
    /// [`REWRITE_RETRY`]) until that works: the retry carries what failed, and no torn record
    /// is ever glued onto the next one.
    pub fn flush(&mut self) {
        if self.stale {
            self.buf.clear();
            if self.retry_at.is_none_or(|t| Instant::now() >= t) {
                self.retry_at = Some(Instant::now() + REWRITE_RETRY);
                self.rewrite_all();
            }
            return;
        }
        if self.buf.is_empty() {
            return;
        }
        let Some(f) = self.file.as_mut() else {
            // In memory only.
            self.buf.clear();
            return;
        };
        let r = append(f, &mut self.len, self.buf.as_bytes(), true);
        self.buf.clear();
        self.disk.count(DISK_NAME, 0, 1, 1);
        match r {
            Ok(()) => self.disk.ok(DISK_NAME),
            Err(e) => {
                let path = self.path.as_deref().unwrap_or(Path::new("?"));
                self.disk
                    .failed(DISK_NAME, &format!("cannot write {}: {e}", path.display()));
                self.stale = true;
                // Try once straight away: a passing error need not wait a second.
                self.rewrite_all();
                self.retry_at = Some(Instant::now() + REWRITE_RETRY);
            }
        }
    }

    pub fn call(&self, key: &str) -> Option<&CallEntry> {
        self.calls.get(key)
    }

    /// The first step of every call that is due at `now`, oldest call first.
    pub fn due(&self, now: Instant) -> Vec<(String, Step)> {
        self.order
            .iter()
            .filter_map(|k| {
                let c = self.calls.get(k)?;
                if c.not_before.is_some_and(|t| t > now) {
                    return None;
                }
                Some((k.clone(), c.steps.front()?.clone()))
            })
            .collect()
    }

    /// When the next step on hold becomes due.
    pub fn next_due(&self) -> Option<Instant> {
        self.calls
            .values()
            .filter(|c| !c.steps.is_empty())
            .filter_map(|c| c.not_before)
            .min()
    }

    /// Step `seq` of `key` is over (sent, given up or skipped): it will not be sent again.
    pub fn complete(&mut self, key: &str, seq: u64) {
        let Some(c) = self.calls.get_mut(key) else {
            return;
        };
        if let Some(i) = c.steps.iter().position(|s| s.seq == seq) {
            let step = c.steps.remove(i).expect("index in range");
            if matches!(step.action, Action::Finish { .. }) {
                c.finished = true;
            }
        }
        c.attempts = 0;
        c.not_before = None;
        c.last_ms = now_ms();
        line(&Record::Done { seq }, &mut self.buf);
        // The step line and this one.
        self.garbage += 2;
        self.check_bound();
    }

    /// Record the facts later steps of `key` need (after register or adopt).
    pub fn set_facts(
        &mut self,
        key: &str,
        call_id: String,
        responsible: Option<u64>,
        direction: Direction,
    ) {
        let c = self.entry(key);
        c.call_id = Some(call_id);
        c.responsible = responsible;
        c.direction = direction;
        let rec = c.record(key);
        line(&rec, &mut self.buf);
        self.garbage += 1;
    }

    /// Register failed for good: drop the call's later steps (returns how many).
    pub fn kill(&mut self, key: &str) -> usize {
        let Some(c) = self.calls.get_mut(key) else {
            return 0;
        };
        c.dead = true;
        let seqs: Vec<u64> = c.steps.iter().map(|s| s.seq).collect();
        for &seq in &seqs {
            self.complete(key, seq);
        }
        let rec = self.calls.get(key).map(|c| c.record(key));
        if let Some(rec) = rec {
            line(&rec, &mut self.buf);
            self.garbage += 1;
        }
        seqs.len()
    }

    /// Put `key` on hold until `until`; `failed` counts a retry.
    pub fn hold(&mut self, key: &str, until: Instant, failed: bool) -> u32 {
        let Some(c) = self.calls.get_mut(key) else {
            return 0;
        };
        c.not_before = Some(until);
        if failed {
            c.attempts += 1;
            let (n, rec) = (c.attempts, c.record(key));
            line(&rec, &mut self.buf);
            self.garbage += 1;
            return n;
        }
        c.attempts
    }

    /// Steps waiting to be sent, all calls together.
    pub fn pending(&self) -> usize {
        self.calls.values().map(|c| c.steps.len()).sum()
    }

    /// How long the oldest undelivered step has been waiting.
    pub fn oldest_pending_age(&self) -> Option<Duration> {
        let oldest = self
            .calls
            .values()
            .filter_map(|c| c.steps.front())
            .map(|s| s.queued_ms)
            .min()?;
        Some(Duration::from_millis(now_ms().saturating_sub(oldest)))
    }

    /// Forget calls that are over, keeping finished ones a while to catch late duplicates.
    fn purge(&mut self, now: u64) {
        self.calls.retain(|_, c| {
            if !c.steps.is_empty() {
                return true;
            }
            let idle = now.saturating_sub(c.last_ms);
            if c.finished || c.dead {
                idle < KEEP_FINISHED_MS
            } else {
                idle < KEEP_IDLE_MS
            }
        });
        let calls = &self.calls;
        self.order.retain(|k| calls.contains_key(k));
    }

    /// Forget the oldest calls that are over (finished or given up, nothing queued) until at
    /// most `keep` of them are left, without waiting [`KEEP_FINISHED_MS`]. For a replay: its
    /// calls go by on the capture's clock, hundreds a second of wall clock, so that wait would
    /// keep every call of a long capture in memory (issue #20); the `keep` most recent still
    /// catch a late duplicate. Returns how many were forgotten.
    pub fn forget_finished_beyond(&mut self, keep: usize) -> usize {
        let over = |c: &CallEntry| c.steps.is_empty() && (c.finished || c.dead);
        let finished = self.calls.values().filter(|c| over(c)).count();
        let excess = finished.saturating_sub(keep);
        if excess == 0 {
            return 0;
        }
        // `order` is oldest first.
        let (calls, mut forgotten) = (&mut self.calls, 0);
        self.order.retain(|k| {
            if forgotten < excess && calls.get(k).is_some_and(over) {
                calls.remove(k);
                forgotten += 1;
                false
            } else {
                true
            }
        });
        // Their lines in the file are garbage now.
        self.garbage += forgotten;
        forgotten
    }

    /// Compact when enough lines are garbage (at least [`COMPACT_MIN_GARBAGE`] and more than
    /// the live ones), after writing what is buffered.
    pub fn maybe_compact(&mut self) {
        self.flush();
        if self.last_purge.elapsed() >= Duration::from_secs(60) {
            self.last_purge = Instant::now();
            let before = self.calls.len();
            self.purge(now_ms());
            // Forgotten calls' lines are garbage now.
            self.garbage += before - self.calls.len();
        }
        let live = self.calls.len() + self.pending();
        if !self.stale && self.garbage >= COMPACT_MIN_GARBAGE && self.garbage > live {
            self.purge(now_ms());
            if let Err(e) = self.compact() {
                // The old file is gone or was replaced under our handle: rewrite from memory
                // until it works, like after a failed append.
                self.disk
                    .failed(DISK_NAME, &format!("compaction failed: {e}"));
                self.stale = true;
                self.retry_at = Some(Instant::now() + REWRITE_RETRY);
            }
        }
    }

    /// The rewrite that ends a stale spell: everything in memory, then appending again.
    fn rewrite_all(&mut self) {
        self.purge(now_ms());
        match self.compact() {
            Ok(()) => {
                self.stale = false;
                self.retry_at = None;
                self.disk.ok(DISK_NAME);
            }
            Err(e) => self.disk.failed(DISK_NAME, &e.to_string()),
        }
    }

    /// Rewrite the journal with only what is still needed: one `call` record per call we
    /// remember, then its pending steps. Memory is the whole truth: what is buffered is part
    /// of the rewrite (and dropped from the buffer). On failure the file handle is dropped
    /// (it may point at a replaced file): the caller marks the outbox stale.
    fn compact(&mut self) -> Result<(), Error> {
        let Some(path) = self.path.clone() else {
            self.buf.clear();
            return Ok(());
        };
        self.buf.clear();
        let mut text = String::new();
        for key in &self.order {
            let Some(c) = self.calls.get(key) else {
                continue;
            };
            line(&c.record(key), &mut text);
            for s in &c.steps {
                line(
                    &Record::Step {
                        seq: s.seq,
                        call: key.clone(),
                        at: s.queued_ms,
                        action: s.action.clone(),
                    },
                    &mut text,
                );
            }
        }
        self.file = None;
        // The temp file's fsync and the directory's.
        self.disk.count(DISK_NAME, 0, 0, 2);
        self.file = Some(rewrite(&path, &text)?);
        self.len = text.len() as u64;
        self.garbage = 0;
        Ok(())
    }
}

fn mark_queued(e: &mut CallEntry, action: &Action) {
    match action {
        Action::Register { direction, .. } => {
            e.registered = true;
            e.direction = *direction;
        }
        Action::Adopt { .. } => {
            e.registered = true;
            e.direction = Direction::Outbound;
        }
        Action::Finish { .. } => e.finishing = true,
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calls::{FinishUser, Status};

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("callme-outbox-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn register(call: &str) -> Intent {
        Intent {
            call: call.into(),
            action: Action::Register {
                direction: Direction::Inbound,
                phone: "+79991234567".into(),
                line: "8001".into(),
                started_ms: 1,
                employee: None,
            },
        }
    }

    fn finish(call: &str) -> Intent {
        Intent {
            call: call.into(),
            action: Action::Finish {
                user: FinishUser::Employee("219".into()),
                duration: 5,
                status: Status::ANSWERED,
            },
        }
    }

    #[test]
    fn steps_survive_a_restart_with_facts_and_dedupe() {
        let dir = tmp("restart");
        {
            let mut ob = Outbox::open(&dir, 1000).unwrap();
            assert!(ob.enqueue(register("a")));
            assert!(!ob.enqueue(register("a")), "a second register is dropped");
            assert!(ob.enqueue(finish("a")));
            let (_, s) = ob.due(Instant::now()).remove(0);
            ob.set_facts("a", "externalCall.1".into(), Some(7), Direction::Inbound);
            ob.complete("a", s.seq);
            ob.flush();
        }
        let mut ob = Outbox::open(&dir, 1000).unwrap();
        let c = ob.call("a").unwrap();
        assert_eq!(c.call_id.as_deref(), Some("externalCall.1"));
        assert_eq!(c.responsible, Some(7));
        assert_eq!(c.steps.len(), 1);
        assert!(matches!(c.steps[0].action, Action::Finish { .. }));
        assert!(!ob.enqueue(register("a")));
        assert!(!ob.enqueue(finish("a")));
        let hide = Intent {
            call: "a".into(),
            action: Action::Hide { ext: "219".into() },
        };
        assert!(!ob.enqueue(hide), "no card step after the finish");
        let _ = fs::remove_dir_all(&dir);
    }

    fn card(call: &str, hide: bool, ext: &str) -> Intent {
        let ext = ext.to_string();
        Intent {
            call: call.into(),
            action: if hide {
                Action::Hide { ext }
            } else {
                Action::Show { ext }
            },
        }
    }

    /// A crash can come after a show's request left and before its done record: after the
    /// restart that show may be on the portal, so its hide must follow rather than both be
    /// dropped as "never sent" (a card left open). Every step left from the last run counts as
    /// possibly sent: a batch carries many, and one show command names every phone ringing
    /// together. A step queued after the restart and not yet begun still can be dropped.
    #[test]
    fn a_show_left_from_the_last_run_is_not_dropped_with_its_hide() {
        let dir = tmp("maybe-sent");
        {
            let mut ob = Outbox::open(&dir, 1000).unwrap();
            // a: register, show 219 (may have ridden with the register), show 220.
            assert!(ob.enqueue(register("a")));
            assert!(ob.enqueue(card("a", false, "219")));
            assert!(ob.enqueue(card("a", false, "220")));
            // b: registered, its show first in line.
            assert!(ob.enqueue(register("b")));
            let (_, reg) = ob.due(Instant::now()).remove(1);
            ob.set_facts("b", "externalCall.b".into(), Some(7), Direction::Inbound);
            ob.complete("b", reg.seq);
            assert!(ob.enqueue(card("b", false, "219")));
            ob.flush();
        }
        let mut ob = Outbox::open(&dir, 1000).unwrap();
        assert!(ob.enqueue(card("a", true, "219")), "may have been sent");
        // A batch carries many steps, and the shows of phones ringing together go as one
        // command: this one may have gone with the first (soak seed 612 left its card open
        // when it was dropped).
        assert!(
            ob.enqueue(card("a", true, "220")),
            "may have been sent with it"
        );
        // One queued after the restart and never begun can still be dropped with its hide.
        assert!(ob.enqueue(card("a", false, "221")));
        assert!(!ob.enqueue(card("a", true, "221")), "never sent");
        assert!(
            ob.enqueue(card("b", true, "219")),
            "first in line: may have been sent"
        );
        let steps = |k: &str| -> Vec<Action> {
            ob.call(k)
                .unwrap()
                .steps
                .iter()
                .map(|s| s.action.clone())
                .collect()
        };
        assert_eq!(steps("a").len(), 5, "{:?}", steps("a"));
        assert_eq!(steps("b").len(), 2, "{:?}", steps("b"));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn torn_last_line_is_skipped() {
        let dir = tmp("torn");
        {
            let mut ob = Outbox::open(&dir, 1000).unwrap();
            ob.enqueue(register("a"));
            ob.enqueue(register("b"));
        }
        let path = dir.join(OUTBOX_FILE);
        let text = fs::read_to_string(&path).unwrap();
        let cut = &text[..text.len() - 20];
        fs::write(&path, cut).unwrap();
        let mut ob = Outbox::open(&dir, 1000).unwrap();
        assert_eq!(ob.pending(), 1);
        assert!(ob.call("a").is_some());
        // The file was rewritten: a new record does not glue onto the torn one.
        ob.enqueue(register("c"));
        drop(ob);
        let ob = Outbox::open(&dir, 1000).unwrap();
        assert_eq!(ob.pending(), 2);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn compaction_keeps_pending_and_facts() {
        let dir = tmp("compact");
        let mut ob = Outbox::open(&dir, 100_000).unwrap();
        for i in 0..700 {
            let k = format!("c{i}");
            ob.enqueue(register(&k));
            let (_, s) = ob.due(Instant::now()).pop().unwrap();
            ob.set_facts(&k, format!("id{i}"), Some(1), Direction::Inbound);
            ob.complete(&k, s.seq);
            ob.maybe_compact();
        }
        ob.enqueue(finish("c699"));
        ob.maybe_compact();
        let lines = fs::read_to_string(dir.join(OUTBOX_FILE))
            .unwrap()
            .lines()
            .count();
        assert!(lines < 1400, "{lines} lines: compaction did not run");
        drop(ob);
        let ob = Outbox::open(&dir, 100_000).unwrap();
        assert_eq!(ob.pending(), 1);
        assert_eq!(ob.call("c699").unwrap().call_id.as_deref(), Some("id699"));
        assert!(ob.call("c3").unwrap().registered);
        let _ = fs::remove_dir_all(&dir);
    }

    /// A finish that failed before a restart, or was still queued at the crash, may have gone
    /// through: after the restart its call counts at least one attempt, so "Call is not
    /// found" for it means done.
    #[test]
    fn attempts_survive_a_restart_and_a_leftover_finish_counts_one() {
        let dir = tmp("attempts");
        {
            let mut ob = Outbox::open(&dir, 1000).unwrap();
            ob.enqueue(register("a"));
            ob.enqueue(register("b"));
            ob.enqueue(finish("b"));
            for (k, s) in ob.due(Instant::now()) {
                ob.set_facts(&k, format!("id-{k}"), Some(1), Direction::Inbound);
                ob.complete(&k, s.seq);
            }
            ob.enqueue(finish("a"));
            assert_eq!(ob.hold("a", Instant::now(), true), 1);
            assert_eq!(ob.hold("a", Instant::now(), true), 2);
            ob.flush();
        }
        let ob = Outbox::open(&dir, 1000).unwrap();
        assert_eq!(ob.call("a").unwrap().attempts, 2);
        assert_eq!(
            ob.call("b").unwrap().attempts,
            1,
            "a finish left from the last run may have been sent"
        );
        let _ = fs::remove_dir_all(&dir);
    }
}
