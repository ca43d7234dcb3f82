//! The events journal, `events.jsonl` under `[state] dir`: the AMI events the tracker
//! consumed, with their time, and the click-to-call Originates it was told to expect, so a
//! restarted daemon can rebuild the tracker's state (replaying them through a fresh tracker
//! and discarding its intents, which the outbox already has).
//!
//! Records are staged in memory and written by [`EventJournal::commit`] with one plain
//! `write(2)` per pass of the state thread (group commit: after the outbox's fsync of the
//! pass's intents, so an event is never in the journal before its steps are in the outbox).
//! What is written survives a `kill -9` (the kernel has it); it is fsync'd about once a second
//! (only a power loss can cost that last second). A torn last line is logged and skipped.
//! `docs/outbox.md` documents the format.
//!
//! **Bounded by what is active, not by history**: the journal is compacted per call. Every
//! record carries the keys that tie it to a call (Uniqueids, Linkedids, the Originate's
//! CALL_ID and ActionID); [`EventJournal::compact`] keeps the records that share a key with
//! what the tracker still holds (see [`crate::calls::Tracker::live_keys`]), so a finished
//! call's records go. It runs when the file has grown to twice what the last compaction kept
//! plus [`COMPACT_SLACK`] lines, and whenever no call is left. The rewrite is atomic (temp
//! file, fsync, rename, fsync the directory), so a `kill -9` at any point leaves either the
//! old or the new file. A failed append (disk full) leaves the file torn or short; the records
//! are whole in memory, so the file is rewritten from them (at most once a second) until the
//! disk takes it.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::ami::Message;
use crate::statefile::{err, line, read_lines, rewrite, DiskStatus, Error};

pub const EVENTS_FILE: &str = "events.jsonl";
/// The name the journal reports (and is counted) under in [`DiskStatus`].
pub const DISK_NAME: &str = "events journal";

/// Lines the journal may grow by beyond twice what the last compaction kept.
pub const COMPACT_SLACK: usize = 1000;

/// One line of `events.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum EventRecord {
    /// An AMI event the tracker consumed, at `at` ms since the epoch, fields in wire order.
    Event { at: u64, f: Vec<(String, String)> },
    /// The employees' internal numbers the tracker was given.
    Employees { list: Vec<String> },
    /// A click-to-call Originate the tracker was told to expect (`Control::Originate`).
    Originate(OriginateRecord),
    /// That Originate was refused (`Control::OriginateFailed`).
    OriginateFailed { call_id: String },
}

/// A journaled click-to-call expectation: the fields of [`crate::calls::tracker::Originate`]
/// and its expiry (ms since the epoch, local clock).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OriginateRecord {
    pub call_id: String,
    pub channel_id: String,
    pub action_id: String,
    pub ext: String,
    pub phone: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_line: Option<String>,
    pub expires_ms: u64,
}

impl EventRecord {
    pub fn event(msg: &Message, at: u64) -> EventRecord {
        EventRecord::Event {
            at,
            f: msg
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    pub fn message(f: &[(String, String)]) -> Message {
        let mut m = Message::new();
        for (k, v) in f {
            m.push(k, v);
        }
        m
    }

    /// The keys that tie this record to a call: `(channel ids, other keys)`. A kept record's
    /// channel ids keep every other record of those channels (so a channel's Hangup is never
    /// dropped while its Newchannel stays); the other keys (Linkedids, CALL_IDs, ActionIDs)
    /// only keep the record itself.
    fn keys(&self) -> (Vec<String>, Vec<String>) {
        let mut ids = Vec::new();
        let mut other = Vec::new();
        match self {
            EventRecord::Event { f, .. } => {
                for (k, v) in f {
                    let k = k.to_ascii_lowercase();
                    if v.is_empty() || v == "<null>" || v == "none" {
                        continue;
                    }
                    if k.contains("uniqueid") && !k.contains("bridge") {
                        ids.push(v.clone());
                    } else if k.contains("linkedid") || k == "actionid" {
                        other.push(v.clone());
                    }
                }
            }
            EventRecord::Originate(o) => {
                other.extend([o.call_id.clone(), o.channel_id.clone(), o.action_id.clone()]);
            }
            EventRecord::OriginateFailed { call_id } => other.push(call_id.clone()),
            EventRecord::Employees { .. } => {}
        }
        (ids, other)
    }
}

/// A record held for the next compaction: its line and its keys.
struct Entry {
    text: String,
    ids: Vec<String>,
    other: Vec<String>,
}

/// The AMI events behind the calls in progress, so a restarted daemon can rebuild the
/// tracker's state (replaying them through a fresh tracker and discarding its intents, which
/// are in the outbox already).
///
/// Memory: the records of the file (the same bound as the file), plus the latest employee list.
pub struct EventJournal {
    path: PathBuf,
    file: Option<File>,
    entries: Vec<Entry>,
    /// Entries the last compaction kept: the file is compacted again at twice that plus
    /// [`COMPACT_SLACK`].
    base: usize,
    employees: Option<Vec<String>>,
    /// Records staged since the last [`EventJournal::commit`] (held in `entries` already):
    /// one pass's worth, bounded by the state thread's pass.
    staged: String,
    staged_records: u64,
    dirty: bool,
    last_sync: Instant,
    /// A write failed (disk full, `EFBIG`) at this time, or the last rewrite to repair it did:
    /// the file may hold a torn record or miss some. The records are whole in memory, so the
    /// file is rewritten from them, at most once a second, until that works.
    broken: Option<Instant>,
    /// Where write failures are reported (once per change, `/healthz`).
    disk: Option<Arc<DiskStatus>>,
    /// Why the rewrite at open failed, until [`EventJournal::report_to`] reports it.
    unreported: Option<String>,
}

impl EventJournal {
    /// Report write failures to `disk` (logged once per change) rather than per write.
    pub fn report_to(&mut self, disk: Arc<DiskStatus>) {
        if let Some(why) = self.unreported.take() {
            disk.failed(DISK_NAME, &why);
        }
        self.disk = Some(disk);
    }

    /// Load `dir/events.jsonl` and rewrite it without a torn tail. Returns the records to
    /// replay. Fails only if the directory cannot be created or the file read: a file we could
    /// read but not rewrite (a read-only state dir) is rewritten from memory once it can be,
    /// as after a failed write.
    pub fn open(dir: &Path) -> Result<(EventJournal, Vec<EventRecord>), Error> {
        fs::create_dir_all(dir).map_err(err(dir, "cannot create"))?;
        let path = dir.join(EVENTS_FILE);
        let records: Vec<EventRecord> = read_lines(&path)?;
        let mut j = EventJournal {
            path,
            file: None,
            entries: Vec::new(),
            base: 0,
            employees: None,
            staged: String::new(),
            staged_records: 0,
            dirty: false,
            last_sync: Instant::now(),
            broken: None,
            disk: None,
            unreported: None,
        };
        for r in &records {
            match r {
                EventRecord::Employees { list } => j.employees = Some(list.clone()),
                other => {
                    j.hold(other);
                }
            }
        }
        j.base = j.entries.len();
        match rewrite(&j.path, &j.text()) {
            Ok(f) => j.file = Some(f),
            Err(e) => {
                log::debug!("events journal: {e}; rewriting it once the state dir allows");
                j.unreported = Some(e.to_string());
                j.file = OpenOptions::new().append(true).open(&j.path).ok();
                j.broken = Some(Instant::now());
            }
        }
        Ok((j, records))
    }

    fn hold(&mut self, rec: &EventRecord) -> String {
        let mut text = String::new();
        line(rec, &mut text);
        let (ids, other) = rec.keys();
        self.entries.push(Entry {
            text: text.clone(),
            ids,
            other,
        });
        text
    }

    /// The whole file: the latest employee list, then the held records.
    fn text(&self) -> String {
        let mut text = String::new();
        if let Some(list) = &self.employees {
            line(&EventRecord::Employees { list: list.clone() }, &mut text);
        }
        for e in &self.entries {
            text.push_str(&e.text);
        }
        text
    }

    fn write_text(&mut self, text: &str) {
        self.staged.push_str(text);
        self.staged_records += 1;
    }

    /// Write what was staged since the last commit, in one `write(2)`. The state thread calls
    /// it once per pass, after the outbox has the pass's intents on disk.
    pub fn commit(&mut self) {
        if self.staged.is_empty() {
            return;
        }
        let text = std::mem::take(&mut self.staged);
        let records = std::mem::take(&mut self.staged_records);
        if let Some(d) = &self.disk {
            d.count(DISK_NAME, records, u64::from(self.file.is_some()), 0);
        }
        if let Some(f) = self.file.as_mut() {
            if let Err(e) = f.write_all(text.as_bytes()) {
                // The records are whole in memory: the file is rewritten from them (`broken`).
                let why = format!("cannot write {}: {e}", self.path.display());
                match &self.disk {
                    Some(d) => d.failed(DISK_NAME, &why),
                    None => log::error!("{why}"),
                }
                self.broken.get_or_insert_with(Instant::now);
            }
        }
        self.dirty = true;
    }

    fn write(&mut self, rec: &EventRecord) {
        let text = match rec {
            EventRecord::Employees { .. } => {
                let mut t = String::new();
                line(rec, &mut t);
                t
            }
            _ => self.hold(rec),
        };
        self.write_text(&text);
    }

    /// Stage an AMI event (written by the next [`EventJournal::commit`]).
    pub fn append(&mut self, msg: &Message, at: u64) {
        self.write(&EventRecord::event(msg, at));
    }

    /// A click-to-call expectation, so a restart before its first AMI event still finishes it.
    pub fn originate(&mut self, o: OriginateRecord) {
        self.write(&EventRecord::Originate(o));
    }

    pub fn originate_failed(&mut self, call_id: &str) {
        self.write(&EventRecord::OriginateFailed {
            call_id: call_id.to_string(),
        });
    }

    pub fn employees(&mut self, list: &[String]) {
        if self.employees.as_deref() == Some(list) {
            return;
        }
        self.employees = Some(list.to_vec());
        self.write(&EventRecord::Employees {
            list: list.to_vec(),
        });
    }

    /// Records staged and not yet committed.
    pub fn staged(&self) -> u64 {
        self.staged_records
    }

    /// fsync if something was written and a second has passed (or `force`). Staged records
    /// are not written by it: [`EventJournal::commit`] first.
    pub fn sync(&mut self, force: bool) {
        if self.dirty && (force || self.last_sync.elapsed() >= Duration::from_secs(1)) {
            if let Some(f) = self.file.as_ref() {
                if let Some(d) = &self.disk {
                    d.count(DISK_NAME, 0, 0, 1);
                }
                if let Err(e) = f.sync_data() {
                    log::error!("cannot fsync {}: {e}", self.path.display());
                }
            }
            self.dirty = false;
            self.last_sync = Instant::now();
        }
    }

    /// Records in the journal besides the employee list.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether [`EventJournal::compact`] is due: the journal has grown to twice what the last
    /// compaction kept plus [`COMPACT_SLACK`] records, or `idle` (the tracker holds nothing)
    /// and anything is held.
    pub fn compaction_due(&self, idle: bool) -> bool {
        if self
            .broken
            .is_some_and(|t| t.elapsed() >= Duration::from_secs(1))
        {
            return true;
        }
        if idle {
            return !self.entries.is_empty();
        }
        self.entries.len() >= self.base.saturating_mul(2).saturating_add(COMPACT_SLACK)
    }

    /// Keep only the records of what is still live: a record stays if one of its keys is in
    /// `live` or is a channel id of another kept record. Rewrites the file atomically; on an
    /// error the old file (a superset) stays and appending goes on. Staged records are part of
    /// the rewrite (so, like [`EventJournal::commit`], call it only once the outbox has their
    /// intents).
    pub fn compact(&mut self, live: &HashSet<String>) {
        self.staged.clear();
        self.staged_records = 0;
        let mut live = live.clone();
        let mut keep = vec![false; self.entries.len()];
        // A channel's records are linked by its Uniqueid; a later record can pull in an
        // earlier one, hence the passes (two suffice in practice; bounded anyway).
        for _ in 0..8 {
            let mut grew = false;
            for (i, e) in self.entries.iter().enumerate() {
                if keep[i] || !e.ids.iter().chain(&e.other).any(|k| live.contains(k)) {
                    continue;
                }
                keep[i] = true;
                for id in &e.ids {
                    grew |= live.insert(id.clone());
                }
            }
            if !grew {
                break;
            }
        }
        let before = self.entries.len();
        let mut i = 0;
        self.entries.retain(|_| {
            i += 1;
            keep[i - 1]
        });
        self.base = self.entries.len();
        let text = self.text();
        self.file = None;
        if let Some(d) = &self.disk {
            d.count(DISK_NAME, 0, 0, 2);
        }
        match rewrite(&self.path, &text) {
            Ok(f) => {
                self.file = Some(f);
                self.dirty = false;
                if self.broken.take().is_some() {
                    log::info!("events journal: rewritten whole after a failed write");
                }
                if let Some(d) = &self.disk {
                    d.ok(DISK_NAME);
                }
                log::debug!(
                    "events journal compacted: {before} record(s) → {}",
                    self.entries.len()
                );
            }
            Err(e) => {
                match &self.disk {
                    Some(d) => d.failed(DISK_NAME, &e.to_string()),
                    None => log::error!("events journal: {e}"),
                }
                self.file = OpenOptions::new().append(true).open(&self.path).ok();
                self.broken = Some(Instant::now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("callme-journal-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn events_journal_round_trip_and_clear() {
        let dir = tmp("events");
        {
            let (mut j, recs) = EventJournal::open(&dir).unwrap();
            assert!(recs.is_empty());
            j.employees(&["219".to_string()]);
            let m = Message::from_pairs(&[("Event", "Newchannel"), ("Uniqueid", "1.1")]);
            j.append(&m, 5);
            j.commit();
            j.sync(true);
        }
        let (mut j, recs) = EventJournal::open(&dir).unwrap();
        assert_eq!(recs.len(), 2);
        match &recs[1] {
            EventRecord::Event { at, f } => {
                assert_eq!(*at, 5);
                assert_eq!(EventRecord::message(f).get("uniqueid"), Some("1.1"));
            }
            other => panic!("{other:?}"),
        }
        j.compact(&HashSet::new());
        drop(j);
        let (_, recs) = EventJournal::open(&dir).unwrap();
        assert_eq!(recs.len(), 1, "only the employee list is kept");
        let _ = fs::remove_dir_all(&dir);
    }

    /// Records are staged and written together: nothing reaches the file before the commit,
    /// and one commit is one append however many records it carries; a journal dropped before
    /// its commit (a crash mid-pass) loses the staged records, never a written one.
    #[test]
    fn staged_records_are_written_by_one_commit() {
        let dir = tmp("commit");
        let disk = Arc::new(DiskStatus::default());
        let path = dir.join(EVENTS_FILE);
        {
            let (mut j, _) = EventJournal::open(&dir).unwrap();
            j.report_to(disk.clone());
            for i in 0..10 {
                let id = format!("1.{i}");
                j.append(
                    &Message::from_pairs(&[("Event", "Newchannel"), ("Uniqueid", &id)]),
                    i,
                );
            }
            assert_eq!(j.staged(), 10);
            assert_eq!(
                fs::read_to_string(&path).unwrap(),
                "",
                "nothing written before the commit"
            );
            j.commit();
            assert_eq!(j.staged(), 0);
            let c = disk.counts(DISK_NAME);
            assert_eq!((c.records, c.appends, c.syncs), (10, 1, 0));
            j.append(
                &Message::from_pairs(&[("Event", "Hangup"), ("Uniqueid", "1.0")]),
                11,
            );
            // Dropped here without a commit, as a kill -9 mid-pass would.
        }
        let (_, recs) = EventJournal::open(&dir).unwrap();
        assert_eq!(recs.len(), 10, "the committed records, not the staged one");
        let _ = fs::remove_dir_all(&dir);
    }

    /// A write that fails (here: a read-only handle, as a full disk would) leaves the record
    /// out of the file; the next compaction rewrites the file whole from memory.
    #[test]
    fn a_failed_write_is_repaired_by_a_rewrite() {
        let dir = tmp("repair");
        let (mut j, _) = EventJournal::open(&dir).unwrap();
        let path = dir.join(EVENTS_FILE);
        j.file = Some(File::open(&path).unwrap());
        let m = Message::from_pairs(&[("Event", "Newchannel"), ("Uniqueid", "1.1")]);
        j.append(&m, 5);
        assert!(j.broken.is_none(), "staged, not written yet");
        j.commit();
        assert!(j.broken.is_some());
        assert_eq!(fs::read_to_string(&path).unwrap(), "", "the write failed");
        // A second later (as the state thread's tick would find it):
        j.broken = Some(Instant::now() - Duration::from_secs(2));
        assert!(j.compaction_due(false));
        j.compact(&HashSet::from(["1.1".to_string()]));
        assert!(j.broken.is_none());
        drop(j);
        let (_, recs) = EventJournal::open(&dir).unwrap();
        assert_eq!(recs.len(), 1, "the record is back on disk");
        let _ = fs::remove_dir_all(&dir);
    }
}
