//! `callme run`: the threads and the channels between them.
//!
//! ```text
//! AMI socket ─► reader thread (ami::client) ─► state thread (Tracker) ─► delivery thread (Deliverer) ─► Bitrix24
//!                                                   ▲                          │
//!                                                   └── employee numbers ◄─────┘ (user directory refresh)
//! ```
//!
//! The AMI reader never waits on HTTP: Asterisk drops readers that fall 100 ms behind
//! (ami.md §2.6). All Bitrix24 traffic happens on the delivery thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{after, bounded, select, unbounded, Receiver, Sender};

use crate::ami::client::{self, ClientConfig, Incoming};
use crate::ami::event::timestamp_ms;
use crate::bitrix::deliver::{DeliverConfig, Deliverer, Stats};
use crate::bitrix::{api, Directory, Transport, WebhookClient};
use crate::calls::tracker::Originate;
use crate::calls::{CallSummary, Intent, Tracker, TrackerConfig};
use crate::config::Config;
use crate::http;

/// Shared, read-mostly view of the daemon for the ops endpoints and the watchdog.
#[derive(Debug, Default)]
pub struct Health {
    pub ami_logged_in: AtomicBool,
    pub state_alive_ms: std::sync::atomic::AtomicU64,
    pub active_calls: Mutex<Vec<CallSummary>>,
    pub delivery: Mutex<DeliveryView>,
}

#[derive(Clone, Debug, Default)]
pub struct DeliveryView {
    pub pending: usize,
    /// How long the oldest undelivered Bitrix24 step has been waiting.
    pub oldest_pending_age: Option<Duration>,
    pub stats: Stats,
    pub users: usize,
    pub users_loaded: Option<Instant>,
}

/// Messages to the state thread besides AMI traffic. The state thread owns the tracker, so
/// anything that changes call state (the HTTP webhook included) goes through here.
#[derive(Debug)]
pub enum Control {
    /// The internal numbers of active Bitrix24 users (after each directory load).
    Employees(Vec<String>),
    /// A click-to-call Originate was sent; expect its channels until `expires_ms`.
    Originate {
        originate: Originate,
        expires_ms: u64,
    },
    /// The Originate for this CALL_ID was refused (`Response: Error`) or could not be sent.
    OriginateFailed { call_id: String },
}

/// What other parts of the daemon (the HTTP server) share with it.
#[derive(Clone)]
pub struct Shared {
    pub config: Arc<Config>,
    pub health: Arc<Health>,
    /// The mutex-guarded AMI writer (Originate, requests).
    pub ami: client::Handle,
    /// Into the state thread.
    pub control: Sender<Control>,
    /// The latest Bitrix24 user directory, published by the delivery thread.
    pub directory: Arc<RwLock<Arc<Directory>>>,
    /// The Bitrix24 transport, for the rare request outside the delivery queue (a user
    /// directory refresh when a click-to-call names an unknown user).
    pub transport: Arc<dyn Transport>,
}

pub fn ami_config(cfg: &Config) -> ClientConfig {
    let a = &cfg.asterisk;
    ClientConfig {
        host: a.host.clone(),
        port: a.port,
        username: a.username.clone(),
        secret: a.secret.expose().to_string(),
        ping_interval: a.ping_interval,
        ping_timeout: a.ping_timeout,
        connect_timeout: a.connect_timeout,
        reconnect_min: a.reconnect_min,
        reconnect_max: a.reconnect_max,
        fully_booted_timeout: Duration::from_secs(5),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A running daemon. Dropping it does not stop it; call [`Daemon::shutdown`].
pub struct Daemon {
    pub health: Arc<Health>,
    pub ami: client::Handle,
    pub shared: Shared,
    stop: Sender<()>,
    threads: Vec<thread::JoinHandle<()>>,
    http: http::Server,
}

impl Daemon {
    /// Start every thread. Returns once they run; AMI login and the user directory load happen
    /// in the background (and are retried), so a PBX or portal that is down does not stop us.
    /// Fails only if the HTTP listener cannot be bound (checked before any thread starts).
    pub fn start(cfg: &Config) -> Result<Daemon, http::Error> {
        let transport = WebhookClient::new(cfg.bitrix24.webhook_url.expose(), cfg.bitrix24.timeout);
        Self::start_with(cfg, Arc::new(transport))
    }

    pub fn start_with(cfg: &Config, transport: Arc<dyn Transport>) -> Result<Daemon, http::Error> {
        let listener = http::bind(cfg.http.listen)?;
        let health = Arc::new(Health::default());
        let (ami_tx, ami_rx) = unbounded();
        let (intent_tx, intent_rx) = unbounded::<Intent>();
        let (ctl_tx, ctl_rx) = unbounded::<Control>();
        let (stop_tx, stop_rx) = bounded::<()>(0);

        let (ami, ami_thread) = client::start(ami_config(cfg), ami_tx);

        let directory = Arc::new(RwLock::new(Arc::new(Directory::from_users(
            Vec::new(),
            Instant::now(),
        ))));
        let shared = Shared {
            config: Arc::new(cfg.clone()),
            health: health.clone(),
            ami: ami.clone(),
            control: ctl_tx.clone(),
            directory: directory.clone(),
            transport: transport.clone(),
        };

        let tracker = Tracker::new(TrackerConfig::from_config(&cfg.calls));
        let h = health.clone();
        let ami_for_state = ami.clone();
        let stop_state = stop_rx.clone();
        let state = thread::Builder::new()
            .name("state".into())
            .spawn(move || {
                state_loop(
                    tracker,
                    ami_rx,
                    ctl_rx,
                    intent_tx,
                    stop_state,
                    h,
                    ami_for_state,
                )
            })
            .expect("spawn state thread");

        let deliverer = Deliverer::new(
            DeliverConfig::from_config(cfg),
            Box::new(transport),
            Directory::from_users(Vec::new(), Instant::now()),
        );
        let refresh = cfg.bitrix24.users_refresh;
        let h = health.clone();
        let delivery = thread::Builder::new()
            .name("delivery".into())
            .spawn(move || {
                delivery_loop(deliverer, intent_rx, ctl_tx, stop_rx, refresh, h, directory)
            })
            .expect("spawn delivery thread");

        let http = listener.serve(shared.clone(), cfg.http.threads);

        Ok(Daemon {
            health,
            ami,
            shared,
            stop: stop_tx,
            threads: vec![ami_thread, state, delivery],
            http,
        })
    }

    /// The address the HTTP server listens on (the real port when `listen` used port 0).
    pub fn http_addr(&self) -> std::net::SocketAddr {
        self.http.addr()
    }

    /// Block until the daemon's threads end (they run until [`Daemon::shutdown`]).
    pub fn wait(self) {
        let _http = self.http;
        for t in self.threads {
            let _ = t.join();
        }
    }

    /// Stop the threads: AMI first (no new events), then the state thread drains what it
    /// has, then delivery sends what it can without waiting for retries.
    /// The HTTP server is told to stop first (no new click-to-calls) and joined last, so a
    /// worker in the middle of an Originate sees AMI gone and ends quickly.
    pub fn shutdown(self) {
        self.http.stop();
        self.ami.shutdown();
        drop(self.stop);
        for t in self.threads {
            let _ = t.join();
        }
        self.http.shutdown();
    }
}

fn state_loop(
    mut tracker: Tracker,
    ami_rx: Receiver<Incoming>,
    ctl_rx: Receiver<Control>,
    intents: Sender<Intent>,
    stop: Receiver<()>,
    health: Arc<Health>,
    ami: client::Handle,
) {
    let mut out = Vec::new();
    loop {
        // Controls first: a click-to-call must be known before its own AMI events are seen.
        while let Ok(ctl) = ctl_rx.try_recv() {
            apply_control(&mut tracker, ctl, &mut out);
        }
        select! {
            recv(ami_rx) -> msg => {
                let Ok(msg) = msg else { break };
                match msg {
                    Incoming::Event { msg, at } => {
                        if log::log_enabled!(log::Level::Trace) {
                            log::trace!("AMI event: {msg:?}");
                        }
                        let at_ms = timestamp_ms(&msg).unwrap_or_else(|| {
                            at.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
                        });
                        tracker.handle(&msg, at_ms, &mut out);
                        for intent in out.drain(..) {
                            log::debug!("intent: {intent}");
                            if intents.send(intent).is_err() {
                                return;
                            }
                        }
                    }
                    Incoming::Connected { banner } => {
                        log::info!("AMI connected and logged in ({banner})");
                    }
                    Incoming::Disconnected { reason } => {
                        log::warn!("AMI connection lost: {reason}");
                    }
                }
            }
            recv(ctl_rx) -> ctl => {
                if let Ok(ctl) = ctl {
                    apply_control(&mut tracker, ctl, &mut out);
                }
            }
            recv(stop) -> _ => break,
            default(Duration::from_secs(1)) => {}
        }
        tracker.tick(now_ms(), &mut out);
        for intent in out.drain(..) {
            log::debug!("intent: {intent}");
            if intents.send(intent).is_err() {
                return;
            }
        }
        health
            .ami_logged_in
            .store(ami.is_logged_in(), Ordering::Relaxed);
        health.state_alive_ms.store(now_ms(), Ordering::Relaxed);
        if let Ok(mut calls) = health.active_calls.lock() {
            *calls = tracker.active_calls();
        }
    }
    log::debug!("state thread stopped");
}

fn apply_control(tracker: &mut Tracker, ctl: Control, out: &mut Vec<Intent>) {
    match ctl {
        Control::Employees(list) => {
            log::debug!("tracker: {} employee numbers", list.len());
            tracker.set_employees(list);
        }
        Control::Originate {
            originate,
            expires_ms,
        } => {
            log::debug!(
                "expecting click-to-call {} ({})",
                originate.call_id,
                originate.channel_id
            );
            tracker.expect_originate(originate, expires_ms);
        }
        Control::OriginateFailed { call_id } => {
            tracker.originate_failed(&call_id, now_ms(), out);
        }
    }
}

fn delivery_loop(
    mut d: Deliverer,
    intents: Receiver<Intent>,
    ctl: Sender<Control>,
    stop: Receiver<()>,
    refresh: Duration,
    health: Arc<Health>,
    published: Arc<RwLock<Arc<Directory>>>,
) {
    // Until the first successful load, retry every 30 s (or sooner if refresh is shorter).
    let retry_load = refresh.min(Duration::from_secs(30));
    let mut next_load = Instant::now();
    let mut next_due: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now >= next_load {
            match api::users_all(d.transport()) {
                Ok(users) => {
                    let dir = Directory::from_users(users, now);
                    log::info!(
                        "loaded {} Bitrix24 employees with internal numbers",
                        dir.len()
                    );
                    let _ = ctl.send(Control::Employees(dir.inners().map(String::from).collect()));
                    if let Ok(mut p) = published.write() {
                        *p = Arc::new(dir.clone());
                    }
                    d.set_directory(dir);
                    next_load = now + refresh;
                }
                Err(e) => {
                    log::warn!("could not load Bitrix24 users (user.get), retrying: {e}");
                    next_load = now + retry_load;
                }
            }
        }
        let wake = next_due.map_or(next_load, |t| t.min(next_load));
        let timeout = wake.saturating_duration_since(Instant::now());
        let mut stopping = false;
        select! {
            recv(intents) -> i => match i {
                Ok(i) => d.push(i),
                Err(_) => stopping = true,
            },
            recv(stop) -> _ => stopping = true,
            recv(after(timeout)) -> _ => {},
        }
        // Take everything that is already queued before sending.
        while let Ok(i) = intents.try_recv() {
            d.push(i);
        }
        next_due = d.run_due(Instant::now());
        if let Ok(mut v) = health.delivery.lock() {
            *v = DeliveryView {
                pending: d.pending(),
                oldest_pending_age: d.oldest_pending_age(Instant::now()),
                stats: d.stats().clone(),
                users: d.directory().len(),
                users_loaded: Some(d.directory().loaded_at()),
            };
        }
        if stopping {
            if d.pending() > 0 {
                log::warn!(
                    "stopping with {} Bitrix24 step(s) not delivered (the queue is in memory)",
                    d.pending()
                );
            }
            break;
        }
    }
    log::debug!("delivery thread stopped");
}
