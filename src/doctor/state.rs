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

/// The lock file a daemon keeps in the state dir (flock on it, its PID inside), where callme
/// has one.
const LOCK_FILE: &str = "callme.lock";

/// Who holds the state dir. Read from the PID in the lock file and `/proc`, never by taking
/// the lock: a doctor holding it for a moment could make a daemon starting at that moment
/// refuse to run.
fn lock(dir: &Path) -> Check {
    const NAME: &str = "state lock";
    let path = dir.join(LOCK_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Check::warn(
                NAME,
                format!(
                    "not checked: no {LOCK_FILE} in {} (this callme keeps none, or no daemon \
                     ran here yet), so a second daemon on this dir is not detected; make sure \
                     only one runs (systemctl status callme)",
                    dir.display()
                ),
            )
        }
        Err(e) => {
            return Check::warn(NAME, format!("cannot read {}: {e}", path.display()));
        }
    };
    let Ok(pid) = text.trim().parse::<u32>() else {
        return Check::ok(NAME, format!("free ({} holds no PID)", path.display()));
    };
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() == "callme" {
        Check::ok(
            NAME,
            format!("held by callme PID {pid}: the daemon on this dir is running"),
        )
    } else {
        Check::ok(
            NAME,
            format!("free: no daemon runs on this dir (PID {pid} of {LOCK_FILE} has ended)"),
        )
    }
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
