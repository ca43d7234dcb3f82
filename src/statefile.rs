//! The JSON-lines files under `[state] dir` (the outbox and the events journal): reading that
//! survives a torn last line, and atomic rewrites. Shared by [`crate::bitrix::outbox`] and
//! [`crate::journal`], which are siblings and do not import each other.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Why the state directory could not be used.
#[derive(Debug)]
pub struct Error {
    pub path: PathBuf,
    pub what: &'static str,
    pub source: io::Error,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {} (check [state] dir: it must exist and be writable by the daemon)",
            self.what,
            self.path.display(),
            self.source
        )
    }
}

impl std::error::Error for Error {}

pub fn err<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error {
        path: path.to_path_buf(),
        what,
        source,
    }
}

/// Read JSON lines, skipping (and logging) the ones that do not parse: a torn last line
/// after a crash mid-write, or a line damaged by hand.
pub fn read_lines<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>, Error> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(err(path, "cannot read")(e)),
    };
    let mut out = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<T>(line) {
            Ok(v) => out.push(v),
            Err(e) => log::warn!(
                "{}:{}: skipping a damaged line ({e}); a crash mid-write leaves one at the end: {}",
                path.display(),
                i + 1,
                String::from_utf8_lossy(&line[..line.len().min(120)])
            ),
        }
    }
    Ok(out)
}

/// Replace `path` with `lines` atomically: temp file, fsync, rename, fsync the directory.
/// A temp file that could not be written whole is removed (it would only take space).
/// The file is made 0640 whatever the umask: it holds callers' numbers, and a `callme run`
/// by hand does not get the unit's `UMask=0027`.
pub fn rewrite(path: &Path, text: &str) -> Result<File, Error> {
    let tmp = path.with_extension("jsonl.tmp");
    {
        let mut f = private_file(&tmp, 0o640).map_err(err(&tmp, "cannot create"))?;
        let written = f.write_all(text.as_bytes()).and_then(|()| f.sync_all());
        if let Err(e) = written {
            drop(f);
            let _ = fs::remove_file(&tmp);
            return Err(err(&tmp, "cannot write")(e));
        }
    }
    fs::rename(&tmp, path).map_err(err(path, "cannot replace"))?;
    if let Some(dir) = path.parent() {
        // The rename is durable only once the directory is.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err(dir, "cannot fsync"))?;
    }
    OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(err(path, "cannot open"))
}

/// Create (or truncate) `path` for writing with permissions `mode` (0640 for state files,
/// 0600 for tokens) whatever the umask.
pub fn private_file(path: &Path, mode: u32) -> std::io::Result<File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)?;
    // `mode` applies only when the file is created; a leftover may be wider.
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    Ok(f)
}

pub fn line<T: Serialize>(rec: &T, out: &mut String) {
    // Serialising our own plain types cannot fail.
    if let Ok(s) = serde_json::to_string(rec) {
        out.push_str(&s);
        out.push('\n');
    }
}

/// Append `bytes` to `file` (opened for appending, `len` bytes of whole records long) and,
/// with `sync`, fsync. On failure the file is cut back to `len`, so a record torn by a full
/// disk is not left for the next one to be glued onto; the caller decides how to retry.
/// On success `len` grows by what was written.
pub fn append(file: &mut File, len: &mut u64, bytes: &[u8], sync: bool) -> io::Result<()> {
    let r = file
        .write_all(bytes)
        .and_then(|()| if sync { file.sync_data() } else { Ok(()) });
    match r {
        Ok(()) => {
            *len += bytes.len() as u64;
            Ok(())
        }
        Err(e) => {
            if let Err(cut) = file.set_len(*len) {
                log::debug!("cannot cut a failed append back to {len} bytes: {cut}");
            }
            Err(e)
        }
    }
}

/// Whether the files under `[state] dir` can be written, per file (`outbox`, `events
/// journal`): written by their owners, read by `/healthz` and `/status`. A change is logged
/// once (an error when a file stops being writable, a warning when it is writable again),
/// never once per failed write.
///
/// Also counts what reached each file ([`Counts`]): how many fsyncs group commit costs is a
/// figure `benches/intents.rs` prints and the state thread's tests pin, per daemon (not a
/// global, so tests running side by side do not see each other's writes).
#[derive(Debug, Default)]
pub struct DiskStatus {
    problems: Mutex<BTreeMap<&'static str, String>>,
    counts: Mutex<BTreeMap<&'static str, Counts>>,
}

/// What was written to one file under `[state] dir` since the start. Three integers per file:
/// bounded.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Records handed to the file: in the outbox the steps (intents) queued, in the events
    /// journal every record (AMI events, Originates, employee lists).
    pub records: u64,
    /// Appends: `write(2)` calls that added records at the end (whole rewrites not counted).
    pub appends: u64,
    /// fsyncs (`fdatasync` of an append; a rewrite's file and directory count one each).
    pub syncs: u64,
}

impl DiskStatus {
    /// `what` cannot be written: `why` (kept as the current reason).
    pub fn failed(&self, what: &'static str, why: &str) {
        let mut p = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        if p.insert(what, why.to_string()).is_none() {
            log::error!(
                "{what}: {why}; calls still go through from memory, but what is not on disk \
                 would not survive a restart"
            );
        }
    }

    /// `what` was written fine.
    pub fn ok(&self, what: &'static str) {
        let mut p = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        if p.remove(what).is_some() {
            log::warn!("{what}: the state dir can be written again");
        }
    }

    /// Count `records` handed to `what`, `appends` appends and `syncs` fsyncs of it.
    pub fn count(&self, what: &'static str, records: u64, appends: u64, syncs: u64) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let c = c.entry(what).or_default();
        c.records += records;
        c.appends += appends;
        c.syncs += syncs;
    }

    /// What was written to `what` so far.
    pub fn counts(&self, what: &str) -> Counts {
        let c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.get(what).copied().unwrap_or_default()
    }

    /// What is wrong, `None` when every file is writable.
    pub fn problem(&self) -> Option<String> {
        let p = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        if p.is_empty() {
            return None;
        }
        Some(
            p.iter()
                .map(|(what, why)| format!("{what}: {why}"))
                .collect::<Vec<_>>()
                .join("; "),
        )
    }
}
