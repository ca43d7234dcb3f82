//! The state dir checks: writable, not open to other users, the lock, the backlog. Nothing
//! in the dir is changed: the write probe is a file of our own, removed at once, and the
//! outbox is read with its own loader without the rewrite the daemon does at start.

use std::fs;
use std::path::Path;

use super::Check;
use crate::bitrix::outbox::{Outbox, OUTBOX_FILE};
use crate::config::Config;

pub(super) fn check(cfg: &Config, out: &mut dyn FnMut(Check)) {
    let dir = &cfg.state.dir;
    let shown = dir.display();
    let create = format!(
        "install -d -o callme -g callme -m 0750 {shown} (or set [state] dir in {} to a directory \
         the callme user owns)",
        cfg.source.display()
    );
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            out(Check::fail(
                "state dir",
                format!("{shown} is not a directory"),
                create,
            ));
            return;
        }
        Err(e) => {
            out(Check::fail("state dir", format!("{shown}: {e}"), create));
            return;
        }
    }
    out(writable(dir));
    out(permissions(dir));
    out(lock(dir));
    out(backlog(cfg));
}

/// Create and remove a file of our own: the only sure test (permissions, ACLs, a read-only
/// mount and a full disk all show).
fn writable(dir: &Path) -> Check {
    let probe = dir.join(format!(".callme-doctor-{}", std::process::id()));
    let shown = dir.display();
    match fs::write(&probe, b"probe\n") {
        Ok(()) => {
            let _ = fs::remove_file(&probe);
            Check::ok(
                "state dir",
                format!("{shown} is writable (as the user running doctor)"),
            )
        }
        Err(e) => Check::fail(
            "state dir",
            format!("{shown} is not writable: {e}"),
            format!(
                "chown -R callme:callme {shown} && chmod 0750 {shown} (run doctor as the callme \
                 user: sudo -u callme callme doctor)"
            ),
        ),
    }
}

/// The dir and the files in it must not be open to every user: the outbox and journal hold
/// phone numbers, and in app mode the token file holds the portal's OAuth tokens.
#[cfg(unix)]
fn permissions(dir: &Path) -> Check {
    use std::os::unix::fs::PermissionsExt;
    const NAME: &str = "state permissions";
    let shown = dir.display();
    let mode = |p: &Path| {
        fs::symlink_metadata(p)
            .ok()
            .map(|m| m.permissions().mode() & 0o777)
    };
    if let Some(m) = mode(dir).filter(|m| m & 0o007 != 0) {
        return Check::fail(
            NAME,
            format!("{shown} is open to every user ({m:04o})"),
            format!("chmod -R o-rwx {shown} (the unit sets StateDirectoryMode=0750, UMask=0027)"),
        );
    }
    // Behind a closed directory a file's own bits do not matter yet; they would once the
    // directory is opened, so they are worth a word.
    let mut open = Vec::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_file()) {
                if let Some(m) = mode(&p).filter(|m| m & 0o007 != 0) {
                    open.push(format!("{} ({m:04o})", p.display()));
                }
            }
        }
    }
    if open.is_empty() {
        Check::ok(NAME, "no access for other users")
    } else {
        Check::warn(
            NAME,
            format!(
                "the directory is closed, but these files are open to every user: {} (created \
                 outside the service's UMask=0027?); chmod -R o-rwx {shown}",
                open.join(", ")
            ),
        )
    }
}

#[cfg(not(unix))]
fn permissions(_dir: &Path) -> Check {
    Check::warn("state permissions", "not checked on this platform")
}

/// The lock file `callme run` holds for its lifetime (flock on it, its PID inside).
use crate::statelock::LOCK_FILE;

/// Who holds the state dir. Read from the kernel's table of flocks (`/proc/locks`) and the PID
/// in the lock file, never by taking the lock: a doctor holding it for a moment could make a
/// daemon starting at that moment refuse to run.
fn lock(dir: &Path) -> Check {
    const NAME: &str = "state lock";
    let path = dir.join(LOCK_FILE);
    let meta = match fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Check::ok(
                NAME,
                format!(
                    "free: no {LOCK_FILE} in {} yet (no daemon has run on this dir)",
                    dir.display()
                ),
            )
        }
        Err(e) => {
            return Check::warn(NAME, format!("cannot read {}: {e}", path.display()));
        }
    };
    let written: Option<u32> = fs::read_to_string(&path)
        .ok()
        .and_then(|t| t.trim().parse().ok());
    let comm = |pid: u32| {
        let c = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        c.trim().chars().take(32).collect::<String>()
    };
    let holder = match flock_holder(&meta) {
        Some(holder) => holder,
        // No /proc/locks (not Linux, or a restricted /proc): the PID inside, if a callme
        // still runs under it.
        None => written.filter(|&pid| comm(pid) == "callme"),
    };
    match (holder, written) {
        (Some(pid), _) => Check::ok(
            NAME,
            format!(
                "held by {} PID {pid}: the daemon on this dir is running",
                comm(pid)
            ),
        ),
        (None, Some(pid)) => Check::ok(
            NAME,
            format!("free: no daemon holds it (PID {pid} in {LOCK_FILE} is from an earlier run)"),
        ),
        (None, None) => Check::ok(NAME, format!("free ({} holds no PID)", path.display())),
    }
}

/// The PID holding a flock on the file `meta` describes, from `/proc/locks`: `None` if that
/// table cannot be read, `Some(None)` if nobody holds one.
#[cfg(target_os = "linux")]
fn flock_holder(meta: &fs::Metadata) -> Option<Option<u32>> {
    let table = fs::read_to_string("/proc/locks").ok()?;
    Some(flock_in_table(&table, meta_dev_ino(meta)))
}

#[cfg(not(target_os = "linux"))]
fn flock_holder(_meta: &fs::Metadata) -> Option<Option<u32>> {
    None
}

#[cfg(target_os = "linux")]
fn meta_dev_ino(meta: &fs::Metadata) -> (u64, u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let dev = meta.dev();
    // glibc's gnu_dev_major / gnu_dev_minor.
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major, minor, meta.ino())
}

/// Find a FLOCK on (major, minor, inode) in `/proc/locks` text, whose lines read
/// `1: FLOCK  ADVISORY  WRITE 3568 fd:00:2531452 0 EOF` (device numbers in hex).
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn flock_in_table(table: &str, (major, minor, ino): (u64, u64, u64)) -> Option<u32> {
    table.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // A blocked waiter's line starts with "->" and shifts the fields by one.
        if f.len() < 6 || f[1] != "FLOCK" {
            return None;
        }
        let mut id = f[5].split(':');
        let (ma, mi, i) = (id.next()?, id.next()?, id.next()?);
        let hit = u64::from_str_radix(ma, 16).ok()? == major
            && u64::from_str_radix(mi, 16).ok()? == minor
            && i.parse::<u64>().ok()? == ino;
        if hit {
            f[4].parse().ok()
        } else {
            None
        }
    })
}

/// Steps waiting in the outbox, counted by the outbox's own loader, read-only.
fn backlog(cfg: &Config) -> Check {
    const NAME: &str = "state backlog";
    let path = cfg.state.dir.join(OUTBOX_FILE);
    match Outbox::read(&path) {
        Ok(ob) => {
            let pending = ob.pending();
            let age = ob
                .oldest_pending_age()
                .map(|a| format!(", the oldest queued {} s ago", a.as_secs()))
                .unwrap_or_default();
            let detail = format!(
                "{pending} Bitrix24 step(s) waiting in {}{age}",
                path.display()
            );
            if pending >= cfg.state.outbox_warn {
                Check::warn(
                    NAME,
                    format!(
                        "{detail}: over [state] outbox_warn = {}; see /status for why they wait",
                        cfg.state.outbox_warn
                    ),
                )
            } else {
                Check::ok(NAME, detail)
            }
        }
        Err(e) => Check::fail(
            NAME,
            e,
            format!(
                "make {} readable by the callme user (chown callme:callme)",
                path.display()
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::flock_in_table;

    #[test]
    fn proc_locks_lines_are_matched_by_device_and_inode() {
        let table = "1: POSIX  ADVISORY  WRITE 900 fd:00:77 0 EOF\n\
                     2: FLOCK  ADVISORY  WRITE 3568 fd:00:2531452 0 EOF\n\
                     2: -> FLOCK  ADVISORY  WRITE 3570 fd:00:2531452 0 EOF\n\
                     3: FLOCK  ADVISORY  WRITE 41 08:01:2531452 0 EOF\n";
        assert_eq!(flock_in_table(table, (0xfd, 0, 2531452)), Some(3568));
        assert_eq!(flock_in_table(table, (8, 1, 2531452)), Some(41));
        assert_eq!(
            flock_in_table(table, (0xfd, 0, 77)),
            None,
            "POSIX locks are not ours"
        );
        assert_eq!(flock_in_table(table, (0xfd, 1, 2531452)), None);
        assert_eq!(flock_in_table("garbage\n\n1:", (0, 0, 0)), None);
    }
}
