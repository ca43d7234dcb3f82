//! The events journal, `events.jsonl` under `[state] dir`: the AMI events the tracker
//! consumed, with their time, so a restarted daemon can rebuild the tracker's state (replaying
//! them through a fresh tracker and discarding its intents, which the outbox already has).
//!
//! Written with plain `write(2)` (a `kill -9` keeps them; the kernel has them) and fsync'd
//! about once a second (only a power loss can cost that last second). Cleared whenever no
//! call is in progress. A torn last line is logged and skipped. `docs/outbox.md` documents
//! the format.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::ami::Message;
use crate::statefile::{append, err, line, read_lines, rewrite, DiskStatus, Error};

pub const EVENTS_FILE: &str = "events.jsonl";
/// The name the journal reports under in [`DiskStatus`].
const DISK_NAME: &str = "events journal";

/// One line of `events.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum EventRecord {
    /// An AMI event the tracker consumed, at `at` ms since the epoch, fields in wire order.
    Event { at: u64, f: Vec<(String, String)> },
    /// The employees' internal numbers the tracker was given.
    Employees { list: Vec<String> },
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
}

/// The AMI events behind the calls in progress, so a restarted daemon can rebuild the
/// tracker's state (replaying them through a fresh tracker and discarding its intents, which
/// are in the outbox already).
pub struct EventJournal {
    path: PathBuf,
    file: Option<File>,
    /// Bytes of whole records in `file`: where a failed append is cut back to.
    len: u64,
    /// Where write failures are reported (once per change, `/healthz`).
    disk: Option<Arc<DiskStatus>>,
    lines: usize,
    employees: Option<Vec<String>>,
    dirty: bool,
    last_sync: Instant,
}

impl EventJournal {
    /// Load `dir/events.jsonl` and rewrite it without a torn tail. Returns the records to
    /// replay.
    pub fn open(dir: &Path) -> Result<(EventJournal, Vec<EventRecord>), Error> {
        fs::create_dir_all(dir).map_err(err(dir, "cannot create"))?;
        let path = dir.join(EVENTS_FILE);
        let records: Vec<EventRecord> = read_lines(&path)?;
        let mut text = String::new();
        let mut employees = None;
        for r in &records {
            line(r, &mut text);
            if let EventRecord::Employees { list } = r {
                employees = Some(list.clone());
            }
        }
        let file = rewrite(&path, &text)?;
        Ok((
            EventJournal {
                path,
                file: Some(file),
                len: text.len() as u64,
                disk: None,
                lines: records.len(),
                employees,
                dirty: false,
                last_sync: Instant::now(),
            },
            records,
        ))
    }

    fn write(&mut self, rec: &EventRecord) {
        let mut text = String::new();
        line(rec, &mut text);
        if let Some(f) = self.file.as_mut() {
            // A failed append is cut back, so the next record does not glue onto a torn one;
            // the event is lost to the journal (reconciliation makes up for it).
            match append(f, &mut self.len, text.as_bytes(), false) {
                Ok(()) => {
                    if let Some(d) = &self.disk {
                        d.ok(DISK_NAME);
                    }
                }
                Err(e) => {
                    let why = format!("cannot write {}: {e}", self.path.display());
                    match &self.disk {
                        Some(d) => d.failed(DISK_NAME, &why),
                        None => log::error!("{why}"),
                    }
                }
            }
        }
        self.lines += 1;
        self.dirty = true;
    }

    /// Report write failures to `disk` (logged once per change) rather than per write.
    pub fn report_to(&mut self, disk: Arc<DiskStatus>) {
        self.disk = Some(disk);
    }

    pub fn append(&mut self, msg: &Message, at: u64) {
        self.write(&EventRecord::event(msg, at));
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

    /// fsync if something was written and a second has passed (or `force`).
    pub fn sync(&mut self, force: bool) {
        if self.dirty && (force || self.last_sync.elapsed() >= Duration::from_secs(1)) {
            if let Some(f) = self.file.as_ref() {
                if let Err(e) = f.sync_data() {
                    log::error!("cannot fsync {}: {e}", self.path.display());
                }
            }
            self.dirty = false;
            self.last_sync = Instant::now();
        }
    }

    /// Events in the journal (employees records included).
    pub fn len(&self) -> usize {
        self.lines
    }

    pub fn is_empty(&self) -> bool {
        self.lines == 0
    }

    /// No call is in progress: the events so far are not needed any more. Keeps only the
    /// latest employee list.
    pub fn clear(&mut self) {
        let emp_lines = usize::from(self.employees.is_some());
        if self.lines <= emp_lines {
            return;
        }
        let mut text = String::new();
        if let Some(list) = &self.employees {
            line(&EventRecord::Employees { list: list.clone() }, &mut text);
        }
        self.file = None;
        match rewrite(&self.path, &text) {
            Ok(f) => {
                self.file = Some(f);
                self.len = text.len() as u64;
                self.lines = emp_lines;
                self.dirty = false;
                // Whatever failed to be written before is not needed any more.
                if let Some(d) = &self.disk {
                    d.ok(DISK_NAME);
                }
            }
            Err(e) => {
                match &self.disk {
                    Some(d) => d.failed(DISK_NAME, &e.to_string()),
                    None => log::error!("events journal: {e}"),
                }
                self.file = OpenOptions::new().append(true).open(&self.path).ok();
                self.len = self
                    .file
                    .as_ref()
                    .and_then(|f| f.metadata().ok())
                    .map_or(0, |m| m.len());
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
        j.clear();
        drop(j);
        let (_, recs) = EventJournal::open(&dir).unwrap();
        assert_eq!(recs.len(), 1, "only the employee list is kept");
        let _ = fs::remove_dir_all(&dir);
    }
}
