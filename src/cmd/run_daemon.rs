//! `callme run`: start the daemon, then supervise it from the main thread until SIGTERM.

use std::path::Path;
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use super::load_or_report;
use crate::clock::now_ms;
use crate::daemon::Daemon;
use crate::notify;
use crate::statelock::{self, StateLock};
use crate::supervisor::{shutdown_within, Supervisor};

/// The binary's signal flags. The handlers need `unsafe` and so live in the binary
/// (`src/signals.rs`); the library only polls them. Install the handlers before calling
/// [`run`], so a signal during startup is not fatal.
#[derive(Clone, Copy, Debug)]
pub struct Signals {
    /// SIGTERM or SIGINT arrived.
    pub terminate_requested: fn() -> bool,
    /// SIGHUP arrived since the last call (the flag is cleared).
    pub take_hangup: fn() -> bool,
}

/// How often `run_daemon` looks at signals and health: SIGTERM is acted on within this, and it
/// is well under half of any sane `WatchdogSec=` (the test uses 400 ms).
const TICK: Duration = Duration::from_millis(200);

/// The unit's `TimeoutStopSec=20` is when systemd sends SIGKILL. A thread stuck in a Bitrix24
/// request (timeout up to `[bitrix24] timeout` per page) must not make us miss it, so after
/// this long we exit without waiting for it.
const SHUTDOWN_BUDGET: Duration = Duration::from_secs(15);

pub fn run(path: &Path, signals: Signals) -> ExitCode {
    let Some(cfg) = load_or_report(path) else {
        return ExitCode::FAILURE;
    };
    log::info!(
        "callme {} starting: AMI {}:{}, Bitrix24 {}",
        env!("CARGO_PKG_VERSION"),
        cfg.asterisk.host,
        cfg.asterisk.port,
        match (&cfg.bitrix24.app, &cfg.bitrix24.webhook_url) {
            (Some(app), _) => format!("app on {}", app.portal),
            (None, Some(url)) => url.redacted(),
            (None, None) => String::new(),
        }
    );
    crate::http::listener::raise_fd_limit(cfg.http.max_connections);
    // One owner of the state dir for the whole process; held until `run` returns.
    let _lock = match StateLock::acquire(&cfg.state.dir) {
        Ok(l) => Some(l),
        Err(e @ statelock::Error::Held { .. }) => {
            log::error!("{e}");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            // The state dir is unusable: the outbox reports it (`/healthz` 503) and calls
            // still flow from memory; nothing of ours on that disk can be harmed.
            log::error!("state dir lock: {e}; running without it");
            None
        }
    };
    let daemon = match Daemon::start(&cfg) {
        Ok(d) => d,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let mut sup = Supervisor::new(
        std::env::var_os("NOTIFY_SOCKET"),
        notify::watchdog_interval(),
        format!("{}:{}", cfg.asterisk.host, cfg.asterisk.port),
    );
    if let Some(iv) = sup.watchdog() {
        log::debug!("systemd watchdog: {iv:?}, keepalive every {:?}", iv / 2);
    }
    loop {
        if (signals.terminate_requested)() {
            break;
        }
        if (signals.take_hangup)() {
            log::warn!(
                "SIGHUP received: reloading the configuration is not supported; \
                 use `systemctl restart callme` to apply changes"
            );
        }
        sup.tick(&daemon.health, Instant::now(), now_ms());
        thread::sleep(TICK);
    }
    log::info!("stop requested (SIGTERM/SIGINT), shutting down");
    sup.send("STOPPING=1\nSTATUS=Stopping");
    shutdown_within(daemon, SHUTDOWN_BUDGET);
    ExitCode::SUCCESS
}
