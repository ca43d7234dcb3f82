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
//!
//! Durability (`docs/outbox.md`): the state thread puts each intent in the on-disk outbox
//! (fsync'd) *before* it journals the AMI event behind it, so a crash in between can lose the
//! event (which reconciliation makes up for) but never a step. On start the events journal is
//! replayed through a fresh tracker (its intents are dropped: they are in the outbox), and
//! after every AMI login the tracked channels are reconciled with `CoreShowChannels`.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{after, bounded, select, unbounded, Receiver, Sender};

use std::collections::{HashMap, HashSet};

use crate::ami::client::{self, ClientConfig, Incoming};
use crate::ami::event::{timestamp_ms, Event};
use crate::ami::Message;
use crate::bitrix::counted::Counted;
use crate::bitrix::deliver::{DeliverConfig, Deliverer};
use crate::bitrix::heartbeat::Heartbeat;
use crate::bitrix::limiter::{Limited, Limiter};
use crate::bitrix::outbox::Outbox;
use crate::bitrix::{api, AppClient, AuthStatus, Directory, Transport, WebhookClient};
use crate::calls::{Intent, Tracker, TrackerConfig};
use crate::clock::{ms_of, now_ms};
use crate::config::AuthMode;
use crate::config::Config;
use crate::context::{Context, Control, DeliveryView, Health};
use crate::http;
use crate::journal::{EventJournal, EventRecord};
use crate::statefile::DiskStatus;

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

/// A running daemon. Dropping it does not stop it; call [`Daemon::shutdown`].
pub struct Daemon {
    pub health: Arc<Health>,
    pub ami: client::Handle,
    pub context: Context,
    stop: Sender<()>,
    threads: Vec<thread::JoinHandle<()>>,
    http: http::Server,
}

impl Daemon {
    /// Start every thread. Returns once they run; AMI login and the user directory load happen
    /// in the background (and are retried), so a PBX or portal that is down does not stop us.
    /// Fails only if an HTTP listener cannot be bound (checked before any thread starts).
    pub fn start(cfg: &Config) -> Result<Daemon, http::Error> {
        let status = AuthStatus::default();
        let b = &cfg.bitrix24;
        match (b.auth, &b.app, &b.webhook_url) {
            (AuthMode::App, Some(app), _) => {
                let client = Arc::new(AppClient::new(
                    app,
                    &cfg.state.dir,
                    b.timeout,
                    status.clone(),
                ));
                Self::start_inner(cfg, client.clone(), Some(client), status)
            }
            (_, _, Some(url)) => {
                let client =
                    WebhookClient::new(url.expose(), b.timeout).with_status(status.clone());
                Self::start_inner(cfg, Arc::new(client), None, status)
            }
            // The config validator guarantees one of the two.
            _ => unreachable!("[bitrix24] has neither webhook_url nor app settings"),
        }
    }

    pub fn start_with(cfg: &Config, transport: Arc<dyn Transport>) -> Result<Daemon, http::Error> {
        Self::start_inner(cfg, transport, None, AuthStatus::default())
    }

    fn start_inner(
        cfg: &Config,
        transport: Arc<dyn Transport>,
        app: Option<Arc<AppClient>>,
        auth_error: AuthStatus,
    ) -> Result<Daemon, http::Error> {
        let listener = http::bind("listen", cfg.http.listen, http::listener::limits(&cfg.http))?;
        let ops_listener = match cfg.http.ops_listen {
            Some(addr) => Some(http::bind(
                "ops_listen",
                addr,
                http::listener::ops_limits(&cfg.http),
            )?),
            None => None,
        };
        let health = Arc::new(Health {
            auth_error,
            ..Health::default()
        });
        let (ami_tx, ami_rx) = unbounded();
        let (wake_tx, wake_rx) = bounded::<()>(1);
        let wake_for_attach = wake_tx.clone();
        let (ctl_tx, ctl_rx) = unbounded::<Control>();
        let (stop_tx, stop_rx) = bounded::<()>(0);

        // One bucket for every request to the portal (bitrix24-api.md §9.4).
        let limiter = Limiter::new(cfg.bitrix24.rate, cfg.bitrix24.burst);
        let transport: Arc<dyn Transport> = Arc::new(Counted::new(
            Limited::new(transport, limiter),
            health.rest.clone(),
        ));
        let (outbox, journal, state) = open_state(cfg, &health.disk);

        let (ami, ami_thread) = client::start(ami_config(cfg), ami_tx);

        let directory = Arc::new(RwLock::new(Arc::new(Directory::from_users(
            Vec::new(),
            Instant::now(),
        ))));
        let context = Context {
            config: Arc::new(cfg.clone()),
            health: health.clone(),
            ami: ami.clone(),
            control: ctl_tx.clone(),
            directory: directory.clone(),
            transport: transport.clone(),
            app,
        };

        let h = health.clone();
        let ami_for_state = ami.clone();
        let stop_state = stop_rx.clone();
        let ob = outbox.clone();
        let state = thread::Builder::new()
            .name("state".into())
            .spawn(move || {
                state_loop(
                    state,
                    journal,
                    ob,
                    ami_rx,
                    ctl_rx,
                    wake_tx,
                    stop_state,
                    h,
                    ami_for_state,
                )
            })
            .expect("spawn state thread");

        // The delivery thread's requests stamp its liveness (`/healthz`, the watchdog); the
        // attach worker's do not, so a busy upload cannot hide a stuck delivery thread.
        health.delivery_limit_ms.store(
            delivery_limit(cfg.bitrix24.timeout).as_millis() as u64,
            Ordering::Relaxed,
        );
        let beating = Heartbeat::new(transport.clone(), health.delivery_alive_ms.clone());
        let deliverer = Deliverer::with_outbox(
            DeliverConfig::from_config(cfg),
            Box::new(beating),
            Directory::from_users(Vec::new(), Instant::now()),
            outbox,
        )
        .with_attach_worker(transport, Some(wake_for_attach));
        let refresh = cfg.bitrix24.users_refresh;
        let h = health.clone();
        let delivery = thread::Builder::new()
            .name("delivery".into())
            .spawn(move || {
                delivery_loop(deliverer, wake_rx, ctl_tx, stop_rx, refresh, h, directory)
            })
            .expect("spawn delivery thread");

        let http = listener.serve(context.clone(), cfg.http.threads, ops_listener);

        Ok(Daemon {
            health,
            ami,
            context,
            stop: stop_tx,
            threads: vec![ami_thread, state, delivery],
            http,
        })
    }

    /// The address the HTTP server listens on (the real port when `listen` used port 0).
    pub fn http_addr(&self) -> std::net::SocketAddr {
        self.http.addr()
    }

    /// The ops listener's address (`[http] ops_listen`), if there is one.
    pub fn ops_addr(&self) -> Option<std::net::SocketAddr> {
        self.http.ops_addr()
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

/// How long the delivery thread may go without a stamp before it counts as stuck: one
/// request is bounded by `timeout`, twice when an OAuth refresh comes first, plus rate-limit
/// waits; the idle loop stamps every second.
pub fn delivery_limit(timeout: Duration) -> Duration {
    timeout * 2 + Duration::from_secs(30)
}

/// Open the outbox and the events journal, and rebuild the tracker from the journal. A state
/// directory that cannot be used is reported to `disk` (`/healthz` 503, logged once) and the
/// daemon runs from memory: losing durability is better than losing every call.
fn open_state(
    cfg: &Config,
    disk: &Arc<DiskStatus>,
) -> (Arc<Mutex<Outbox>>, Option<EventJournal>, Tracking) {
    let dir = &cfg.state.dir;
    let outbox = Outbox::open_or_memory(dir, cfg.state.outbox_warn, disk.clone());
    let mut state = Tracking::new(Tracker::new(TrackerConfig::from_config(cfg)));
    let journal = match EventJournal::open(dir) {
        Ok((mut j, records)) => {
            state.replay(&records);
            j.report_to(disk.clone());
            Some(j)
        }
        Err(e) => {
            disk.failed(
                "events journal",
                &format!("{e}; calls in progress will not survive a restart"),
            );
            None
        }
    };
    (Arc::new(Mutex::new(outbox)), journal, state)
}

/// The tracker plus what reconciliation needs to know about its channels.
struct Tracking {
    tracker: Tracker,
    /// Uniqueid → (channel name, Linkedid), for the synthetic Hangup of a vanished channel.
    chans: HashMap<String, (String, String)>,
}

impl Tracking {
    fn new(tracker: Tracker) -> Tracking {
        Tracking {
            tracker,
            chans: HashMap::new(),
        }
    }

    /// Feed one event to the tracker, remembering its channels' names.
    fn handle(&mut self, msg: &Message, at_ms: u64, out: &mut Vec<Intent>) {
        for prefix in ["", "Dest"] {
            let field = |k: &str| msg.get(&format!("{prefix}{k}"));
            if let (Some(name), Some(id)) = (field("Channel"), field("Uniqueid")) {
                let linked = field("Linkedid").unwrap_or(id);
                self.chans
                    .insert(id.to_string(), (name.to_string(), linked.to_string()));
            }
        }
        self.tracker.handle(msg, at_ms, out);
    }

    /// Rebuild the tracker from the events journal. The intents it produces are dropped:
    /// they were put in the outbox when the events first came.
    fn replay(&mut self, records: &[EventRecord]) {
        let mut scratch = Vec::new();
        let mut events = 0usize;
        for r in records {
            match r {
                EventRecord::Employees { list } => self.tracker.set_employees(list.iter().cloned()),
                EventRecord::Event { at, f } => {
                    self.handle(&EventRecord::message(f), *at, &mut scratch);
                    scratch.clear();
                    events += 1;
                }
            }
        }
        self.prune();
        if events > 0 {
            log::info!(
                "restored {} call(s) in progress from {events} journaled AMI event(s)",
                self.tracker.len()
            );
        }
    }

    fn prune(&mut self) {
        let live: HashSet<String> = self.tracker.channel_ids().into_iter().collect();
        self.chans.retain(|id, _| live.contains(id));
    }

    /// A synthetic `Hangup` (cause 16, normal clearing) for a channel Asterisk no longer has.
    fn vanished(&self, id: &str) -> Message {
        let (name, linked) = self
            .chans
            .get(id)
            .cloned()
            .unwrap_or_else(|| (String::new(), id.to_string()));
        Message::from_pairs(&[
            ("Event", "Hangup"),
            ("Channel", &name),
            ("Uniqueid", id),
            ("Linkedid", &linked),
            ("Cause", "16"),
            ("Cause-txt", "Normal Clearing"),
        ])
    }
}

/// A reconciliation answer: the channels tracked when `CoreShowChannels` was sent, and the
/// Uniqueids Asterisk listed (or why it could not be asked).
type Reconcile = (Vec<String>, Result<HashSet<String>, String>);

/// Ask Asterisk for its channels off the state thread (the request can take seconds).
fn start_reconcile(ami: &client::Handle, tracked: Vec<String>, tx: &Sender<Reconcile>) {
    let ami = ami.clone();
    let tx = tx.clone();
    let spawned = thread::Builder::new()
        .name("reconcile".into())
        .spawn(move || {
            let action = Message::from_pairs(&[("Action", "CoreShowChannels")]);
            let listed = ami
                .request_list(action, Duration::from_secs(10))
                .map(|items| {
                    items
                        .iter()
                        .filter_map(|m| m.get("Uniqueid").map(str::to_string))
                        .collect()
                })
                .map_err(|e| e.to_string());
            let _ = tx.send((tracked, listed));
        });
    if let Err(e) = spawned {
        log::warn!("reconcile: cannot start a thread: {e}");
    }
}

#[allow(clippy::too_many_arguments)]
fn state_loop(
    mut st: Tracking,
    mut journal: Option<EventJournal>,
    outbox: Arc<Mutex<Outbox>>,
    ami_rx: Receiver<Incoming>,
    ctl_rx: Receiver<Control>,
    wake: Sender<()>,
    stop: Receiver<()>,
    health: Arc<Health>,
    ami: client::Handle,
) {
    let (recon_tx, recon_rx) = unbounded::<Reconcile>();
    let mut out = Vec::new();
    // The intents go to the outbox (on disk) before the event goes to the journal; the
    // delivery thread, woken here, sends them.
    let enqueue = |out: &mut Vec<Intent>| {
        if out.is_empty() {
            return;
        }
        let mut ob = outbox.lock().unwrap_or_else(|e| e.into_inner());
        for intent in out.drain(..) {
            log::debug!("intent: {intent}");
            ob.enqueue(intent);
        }
        drop(ob);
        let _ = wake.try_send(());
    };
    let feed = |st: &mut Tracking,
                journal: &mut Option<EventJournal>,
                out: &mut Vec<Intent>,
                msg: &Message,
                at_ms| {
        st.handle(msg, at_ms, out);
        enqueue(out);
        if let Some(j) = journal.as_mut() {
            j.append(msg, at_ms);
        }
    };
    loop {
        // Controls first: a click-to-call must be known before its own AMI events are seen.
        while let Ok(ctl) = ctl_rx.try_recv() {
            apply_control(&mut st.tracker, journal.as_mut(), ctl, &mut out);
            enqueue(&mut out);
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
                            ms_of(at)
                        });
                        if matches!(Event::parse(&msg), Event::Other) {
                            // Not for the tracker: neither fed nor journaled.
                        } else {
                            feed(&mut st, &mut journal, &mut out, &msg, at_ms);
                        }
                    }
                    Incoming::Connected { banner } => {
                        log::info!("AMI connected and logged in ({banner})");
                        let tracked = st.tracker.channel_ids();
                        if !tracked.is_empty() {
                            start_reconcile(&ami, tracked, &recon_tx);
                        }
                    }
                    Incoming::Disconnected { reason } => {
                        log::warn!("AMI connection lost: {reason}");
                    }
                }
            }
            recv(ctl_rx) -> ctl => {
                if let Ok(ctl) = ctl {
                    apply_control(&mut st.tracker, journal.as_mut(), ctl, &mut out);
                    enqueue(&mut out);
                }
            }
            recv(recon_rx) -> r => {
                if let Ok((tracked, listed)) = r {
                    match listed {
                        Ok(listed) => {
                            let now: HashSet<String> = st.tracker.channel_ids().into_iter().collect();
                            let gone: Vec<String> = tracked
                                .into_iter()
                                .filter(|id| now.contains(id) && !listed.contains(id))
                                .collect();
                            if !gone.is_empty() {
                                log::info!(
                                    "reconcile: {} tracked channel(s) are gone from Asterisk, hanging them up: {}",
                                    gone.len(),
                                    gone.join(", ")
                                );
                            }
                            for id in gone {
                                let msg = st.vanished(&id);
                                feed(&mut st, &mut journal, &mut out, &msg, now_ms());
                            }
                        }
                        Err(e) => log::warn!("reconcile: CoreShowChannels failed: {e}"),
                    }
                }
            }
            recv(stop) -> _ => break,
            default(Duration::from_secs(1)) => {}
        }
        st.tracker.tick(now_ms(), &mut out);
        enqueue(&mut out);
        if let Some(j) = journal.as_mut() {
            if st.tracker.is_empty() && st.tracker.channel_count() == 0 && j.len() > 1 {
                // No call in progress: the events behind the finished ones are not needed.
                j.sync(true);
                j.clear();
                st.chans.clear();
            } else {
                j.sync(false);
            }
        }
        health
            .ami_logged_in
            .store(ami.is_logged_in(), Ordering::Relaxed);
        health.state_alive_ms.store(now_ms(), Ordering::Relaxed);
        if let Ok(mut calls) = health.active_calls.lock() {
            *calls = st.tracker.active_calls();
        }
    }
    if let Some(j) = journal.as_mut() {
        j.sync(true);
    }
    outbox.lock().unwrap_or_else(|e| e.into_inner()).flush();
    log::debug!("state thread stopped");
}

fn apply_control(
    tracker: &mut Tracker,
    journal: Option<&mut EventJournal>,
    ctl: Control,
    out: &mut Vec<Intent>,
) {
    match ctl {
        Control::Employees(list) => {
            log::debug!("tracker: {} employee numbers", list.len());
            if let Some(j) = journal {
                j.employees(&list);
            }
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
            tracker.originate_failed(&call_id, out);
        }
        Control::OriginateRefused { call_id, status } => {
            tracker.originate_refused(&call_id, status, out);
        }
    }
}

/// The delivery thread: loads the user directory (every `refresh`; until the first load
/// succeeds, every 30 s at most) and sends it to the state thread as
/// [`Control::Employees`] and to `published`; runs the steps that are due when `wake` says
/// new intents are in the outbox or the next retry is due; mirrors its progress into
/// `health.delivery`. Ends when `stop` (or `wake`) is closed, leaving undelivered steps in
/// the outbox. Public so that tests drive this very loop rather than a copy of it.
pub fn delivery_loop(
    mut d: Deliverer,
    wake: Receiver<()>,
    ctl: Sender<Control>,
    stop: Receiver<()>,
    refresh: Duration,
    health: Arc<Health>,
    published: Arc<RwLock<Arc<Directory>>>,
) {
    // Until the first successful load, retry every 30 s (or sooner if refresh is shorter).
    let retry_load = refresh.min(Duration::from_secs(30));
    let mut next_load = Instant::now();
    // Steps left in the outbox by the last run are due at once: without this the first pass
    // would wait for a new intent or the next user-directory refresh.
    let mut next_due: Option<Instant> = Some(Instant::now());
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
        health.delivery_alive_ms.store(now_ms(), Ordering::Relaxed);
        let wake_at = next_due.map_or(next_load, |t| t.min(next_load));
        // At least once a second: the liveness stamp, and a retry of a failed outbox write.
        let timeout = wake_at
            .saturating_duration_since(Instant::now())
            .min(Duration::from_secs(1));
        let mut stopping = false;
        select! {
            recv(wake) -> w => stopping = w.is_err(),
            recv(stop) -> _ => stopping = true,
            recv(after(timeout)) -> _ => {},
        }
        if stopping {
            // Steps wait in the outbox for the next start; no new attempt now, so that
            // shutdown is not held up by a slow portal.
            d.outbox().lock().unwrap_or_else(|e| e.into_inner()).flush();
        } else {
            next_due = d.run_due(Instant::now());
        }
        if let Ok(mut v) = health.delivery.lock() {
            *v = DeliveryView {
                pending: d.pending(),
                oldest_pending_age: d.oldest_pending_age(),
                stats: d.stats().clone(),
                users: d.directory().len(),
                users_loaded: Some(d.directory().loaded_at()),
            };
        }
        if stopping {
            if d.pending() > 0 {
                log::info!(
                    "stopping with {} Bitrix24 step(s) not delivered yet; they wait in the outbox",
                    d.pending()
                );
            }
            break;
        }
    }
    log::debug!("delivery thread stopped");
}
