//! Supervising `callme run` from the main thread: systemd notifications (READY, STATUS,
//! WATCHDOG) from the daemon's [`Health`], and a shutdown that cannot outlast the unit's stop
//! timeout. The signal handlers stay in the binary (they need `unsafe`); the loop that
//! polls them is [`crate::cmd::run_daemon`].

use std::ffi::OsString;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use crate::clock::now_ms;
use crate::context::Health;
use crate::daemon::Daemon;
use crate::notify;

/// Tells systemd how the daemon is doing (sd_notify): READY once AMI is logged in, WATCHDOG
/// while the state and delivery threads are alive and the HTTP listener accepts connections,
/// STATUS when the summary line changes.
pub struct Supervisor {
    /// `$NOTIFY_SOCKET`, read once; `None` when not started by systemd.
    socket: Option<OsString>,
    watchdog: Option<Duration>,
    ami: String,
    started_ms: u64,
    ready: bool,
    last_status: String,
    last_watchdog: Option<Instant>,
    /// The state or delivery thread missed its deadline; logged once per episode.
    stalled: bool,
    /// The HTTP listener has been unable to accept for too long; logged once per episode.
    listener_down: bool,
    /// A notify error was logged; not repeated every tick.
    notify_failed: bool,
}

impl Supervisor {
    pub fn new(socket: Option<OsString>, watchdog: Option<Duration>, ami: String) -> Supervisor {
        Supervisor {
            socket,
            watchdog,
            ami,
            started_ms: now_ms(),
            ready: false,
            last_status: String::new(),
            last_watchdog: None,
            stalled: false,
            listener_down: false,
            notify_failed: false,
        }
    }

    pub fn tick(&mut self, health: &Health, now: Instant, now_ms: u64) {
        let logged_in = health.ami_logged_in.load(Ordering::Relaxed);
        let status = self.status_line(health, logged_in);
        if !self.ready && logged_in {
            // READY waits for AMI: before that we see no calls, so "started" would be a lie
            // and `systemctl start` would return on a daemon that cannot work yet.
            self.ready = true;
            log::info!("ready: {status}");
            self.send(&format!("READY=1\nSTATUS={status}"));
            self.last_status = status;
        } else if status != self.last_status {
            self.send(&format!("STATUS={status}"));
            self.last_status = status;
        }

        // A listener that cannot accept (out of descriptors, or its thread gone) means no
        // webhook and no click-to-call while AMI looks fine: /healthz says 503 and the
        // keepalive below stops, so systemd restarts us.
        let listener_down = health.listener.down_for();
        match (listener_down, self.listener_down) {
            (Some(d), false) => log::error!(
                "HTTP listener cannot accept connections for {} s; /healthz answers 503 and \
                 the watchdog keepalive (under systemd) stops so that callme is restarted",
                d.as_secs()
            ),
            (None, true) => log::warn!("HTTP listener accepts connections again"),
            _ => {}
        }
        self.listener_down = listener_down.is_some();

        let Some(interval) = self.watchdog else {
            return;
        };
        if self.last_watchdog.is_some_and(|t| now - t < interval / 2) {
            return;
        }
        // The state thread stamps `state_alive_ms` at least every second, the delivery thread
        // `delivery_alive_ms` around every request and every second when idle. If either
        // stops (a panic, a deadlock, a request that never ends), we stop the keepalive so
        // systemd kills and restarts us; a watchdog fed by this loop alone would only prove
        // that this loop runs.
        match stuck_thread(health, interval, self.started_ms, now_ms) {
            _ if self.listener_down => {
                // withheld; said above
            }
            None => {
                if self.stalled {
                    log::warn!("daemon threads are responsive again; watchdog keepalive resumed");
                    self.stalled = false;
                }
                self.send("WATCHDOG=1");
                self.last_watchdog = Some(now);
            }
            Some(why) if !self.stalled => {
                log::error!("{why}; withholding the watchdog keepalive so systemd restarts callme");
                self.stalled = true;
            }
            Some(_) => {}
        }
    }

    /// The watchdog interval systemd asked for (`WatchdogSec=`), if any.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// When this supervisor was made (Unix ms): the state thread counts as alive until
    /// `started_ms` + the watchdog limit even before its first stamp.
    pub fn started_ms(&self) -> u64 {
        self.started_ms
    }

    /// Whether the keepalive is being withheld because the state thread is silent.
    pub fn is_stalled(&self) -> bool {
        self.stalled
    }

    fn status_line(&self, health: &Health, logged_in: bool) -> String {
        let calls = health.active_calls.lock().map_or(0, |c| c.len());
        let pending = health.delivery.lock().map_or(0, |d| d.pending);
        let link = match (logged_in, self.ready) {
            (true, _) => "AMI connected".to_string(),
            (false, false) => format!("connecting to AMI at {}", self.ami),
            (false, true) => format!("AMI link to {} lost, reconnecting", self.ami),
        };
        format!("{link}; {calls} active call(s); {pending} Bitrix24 step(s) pending")
    }

    pub fn send(&mut self, state: &str) {
        match notify::notify_socket(self.socket.as_deref(), state) {
            Ok(_) => self.notify_failed = false,
            Err(e) if !self.notify_failed => {
                log::warn!("sd_notify failed: {e}");
                self.notify_failed = true;
            }
            Err(_) => {}
        }
    }
}

/// Which watched thread has been silent too long, if one has: the state thread (limit: the
/// watchdog interval, at least 5 s) or the delivery thread (`Health::delivery_limit_ms`, when
/// set). Both count as alive from `started_ms` until their first stamp.
fn stuck_thread(
    health: &Health,
    interval: Duration,
    started_ms: u64,
    now_ms: u64,
) -> Option<String> {
    let silent = |stamp: &std::sync::atomic::AtomicU64| {
        now_ms.saturating_sub(stamp.load(Ordering::Relaxed).max(started_ms))
    };
    let limit = interval.max(Duration::from_secs(5)).as_millis() as u64;
    let state = silent(&health.state_alive_ms);
    if state > limit {
        return Some(format!("state thread silent for {state} ms"));
    }
    let limit = health.delivery_limit_ms.load(Ordering::Relaxed);
    let delivery = silent(&health.delivery_alive_ms);
    if limit > 0 && delivery > limit {
        return Some(format!("delivery thread silent for {delivery} ms"));
    }
    None
}

/// [`Daemon::shutdown`](crate::daemon::Daemon::shutdown), but give up waiting after
/// `budget`: exiting with a request in flight beats being SIGKILLed by systemd.
pub fn shutdown_within(daemon: Daemon, budget: Duration) {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let spawned = thread::Builder::new()
        .name("shutdown".into())
        .spawn(move || {
            daemon.shutdown();
            let _ = tx.send(());
        });
    if let Err(e) = spawned {
        log::warn!("could not start the shutdown thread ({e}); exiting without it");
        return;
    }
    match rx.recv_timeout(budget) {
        Ok(()) => log::info!("stopped"),
        Err(_) => log::warn!(
            "threads did not stop within {budget:?} (a Bitrix24 request in flight?); exiting anyway"
        ),
    }
}
