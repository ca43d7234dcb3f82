//! One owner of `[state] dir`: an exclusive lock on `callme.lock` inside it, held for the
//! process lifetime.
//!
//! Why: two daemons on one state dir (a `callme run` by hand next to the service) would both
//! rewrite `outbox.jsonl` and `events.jsonl` and send every step twice. The lock is `flock(2)`
//! through std's [`File::try_lock`] (no libc crate), so the kernel drops it when the process
//! dies, `kill -9` included: a stale lock file never blocks a restart. The holder writes its
//! PID into the file, so a second instance can say whom it met.

use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub const LOCK_FILE: &str = "callme.lock";

/// Why the state dir could not be locked.
#[derive(Debug)]
pub enum Error {
    /// Another process holds the lock; its PID as it wrote it, if readable.
    Held { path: PathBuf, pid: Option<u32> },
    /// The lock file could not be created or locked (the state dir is unusable).
    Io {
        path: PathBuf,
        what: &'static str,
        source: io::Error,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Held { path, pid } => {
                let who = pid.map_or("another callme (PID unknown)".to_string(), |p| {
                    format!("another callme (PID {p})")
                });
                write!(
                    f,
                    "{who} already uses this [state] dir (it holds {}); \
                     two daemons on one state dir would send every call twice. \
                     Stop the other one, or give this one its own [state] dir",
                    path.display()
                )
            }
            Error::Io { path, what, source } => {
                write!(f, "{what} {}: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for Error {}

/// The held lock. Dropping it (or the process ending, however it ends) releases it.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
    path: PathBuf,
}

impl StateLock {
    /// Lock `dir/callme.lock` (creating `dir` if needed) without waiting, and write our PID
    /// into it.
    pub fn acquire(dir: &Path) -> Result<StateLock, Error> {
        let io_err = |path: &Path, what| {
            let path = path.to_path_buf();
            move |source| Error::Io { path, what, source }
        };
        fs::create_dir_all(dir).map_err(io_err(dir, "cannot create"))?;
        let path = dir.join(LOCK_FILE);
        // Not truncated on open: the file holds the owner's PID until we own it.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o640)
            .open(&path)
            .map_err(io_err(&path, "cannot open"))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let pid = file
                    .read_to_string(&mut text)
                    .ok()
                    .and_then(|_| text.trim().parse().ok());
                return Err(Error::Held { path, pid });
            }
            Err(TryLockError::Error(e)) => return Err(io_err(&path, "cannot lock")(e)),
        }
        let pid = format!("{}\n", std::process::id());
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)).map(|_| ()))
            .and_then(|()| file.write_all(pid.as_bytes()))
            .map_err(io_err(&path, "cannot write"))?;
        Ok(StateLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_first_owner_and_a_released_one_is_free() {
        let dir = std::env::temp_dir().join(format!("callme-lock-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let first = StateLock::acquire(&dir).unwrap();
        let text = fs::read_to_string(first.path()).unwrap();
        assert_eq!(text.trim(), std::process::id().to_string());
        // flock is per open file: a second open in the same process conflicts too.
        match StateLock::acquire(&dir) {
            Err(Error::Held { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("second lock: {other:?}"),
        }
        drop(first);
        let again = StateLock::acquire(&dir);
        assert!(again.is_ok(), "{again:?}");
        drop(again);
        let _ = fs::remove_dir_all(&dir);
    }
}
