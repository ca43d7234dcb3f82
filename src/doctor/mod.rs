//! `callme doctor`: online checks of everything callme depends on, for the question admins ask
//! most ("why doesn't the card show?"). `check-config` proves the file parses; the doctor
//! proves that what the file points at works: the AMI account and its classes, the portal and
//! its scopes, the employees' internal numbers, the click-to-call address, the state dir.
//!
//! Every check gives one line, `OK|WARN|FAIL  <check>: <detail>`, and every FAIL ends with
//! the exact fix. Nothing is sent that changes anything: no Originate, no REST write, no
//! token refresh (that would rotate the pair under a running daemon). No line ever holds a
//! secret: the AMI secret is only written to the socket, the webhook URL is shown redacted
//! and the REST client scrubs its code out of every error.
//!
//! - [`ami`]: the manager session (connect, banner, login, classes, timestamps, version,
//!   channel driver, the contrib dialplan);
//! - [`portal`]: Bitrix24 (credentials, scopes, users, the `[calls]` numbers) and
//!   click-to-call (`public_url`, bound events);
//! - [`state`]: the state dir (writable, permissions, lock, backlog).

mod ami;
mod portal;
mod state;

use std::fmt;
use std::time::Duration;

use crate::config::{AuthMode, Config};

/// How bad a check's finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Ok,
    /// Works, but something is missing or could not be confirmed.
    Warn,
    /// callme will not work as configured; the line says how to fix it.
    Fail,
}

impl Level {
    fn label(self) -> &'static str {
        match self {
            Level::Ok => "OK",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub level: Level,
    /// What was checked, e.g. `ami login`.
    pub name: &'static str,
    /// What was found; for a FAIL it ends with `; fix: …`.
    pub detail: String,
}

impl Check {
    pub fn ok(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            level: Level::Ok,
            name,
            detail: detail.into(),
        }
    }

    pub fn warn(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            level: Level::Warn,
            name,
            detail: detail.into(),
        }
    }

    /// A failure and the exact change that fixes it.
    pub fn fail(name: &'static str, detail: impl fmt::Display, fix: impl fmt::Display) -> Check {
        Check {
            level: Level::Fail,
            name,
            detail: format!("{detail}; fix: {fix}"),
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<6}{}: {}", self.level.label(), self.name, self.detail)
    }
}

/// Knobs of a doctor run.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long to listen for AMI events after the login when the classes cannot be read
    /// otherwise (events are the only evidence of the read classes without `command`). The
    /// wait ends early once everything it could tell is known.
    pub events_wait: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            events_wait: Duration::from_secs(5),
        }
    }
}

/// Whether Bitrix24 can ask callme to dial: app mode binds the click-to-call events itself,
/// and in webhook mode an `app_token` means an outbound webhook was set up for them. Then the
/// AMI account needs the `originate` class.
pub fn click_to_call_configured(cfg: &Config) -> bool {
    cfg.bitrix24.auth == AuthMode::App
        || cfg.bitrix24.app_token.is_some()
        || cfg.http.public_url.is_some()
}

/// Run every check in order, handing each line to `emit` as soon as it is known (a slow
/// check shows where it is). Returns all of them.
pub fn run(cfg: &Config, opts: &Options, emit: &mut dyn FnMut(&Check)) -> Vec<Check> {
    let mut all = Vec::new();
    let mut out = |c: Check| {
        emit(&c);
        all.push(c);
    };
    ami::check(cfg, opts, &mut out);
    portal::check(cfg, &mut out);
    state::check(cfg, &mut out);
    all
}

/// True if any check failed: the exit status of `callme doctor` is non-zero then.
pub fn any_failed(checks: &[Check]) -> bool {
    checks.iter().any(|c| c.level == Level::Fail)
}

/// The last line: how many of each.
pub fn summary(checks: &[Check]) -> String {
    let count = |l: Level| checks.iter().filter(|c| c.level == l).count();
    format!(
        "{} checks: {} OK, {} WARN, {} FAIL",
        checks.len(),
        count(Level::Ok),
        count(Level::Warn),
        count(Level::Fail)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_have_the_documented_shape() {
        assert_eq!(
            Check::ok("ami login", "user callme accepted").to_string(),
            "OK    ami login: user callme accepted"
        );
        assert_eq!(
            Check::warn("ami timestamps", "off").to_string(),
            "WARN  ami timestamps: off"
        );
        assert_eq!(
            Check::fail("state dir", "not writable", "chown callme /var/lib/callme").to_string(),
            "FAIL  state dir: not writable; fix: chown callme /var/lib/callme"
        );
    }

    #[test]
    fn summary_and_exit() {
        let checks = vec![
            Check::ok("a", "x"),
            Check::warn("b", "y"),
            Check::fail("c", "z", "w"),
        ];
        assert!(any_failed(&checks));
        assert!(!any_failed(&checks[..2]));
        assert_eq!(summary(&checks), "3 checks: 1 OK, 1 WARN, 1 FAIL");
    }
}
