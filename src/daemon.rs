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
//! Durability (`docs/outbox.md`): the state thread works in passes (whatever is waiting on its
//! channels, at most [`PASS_MAX`] messages) and commits each pass as a group: the pass's
//! intents go to the on-disk outbox in one append and one fsync *before* the pass's AMI events
//! go to the journal (one write), and only then is delivery woken. A crash in between can lose
//! events (which reconciliation makes up for) but never a step. On start the events journal is
//! replayed through a fresh tracker (its intents are dropped: they are in the outbox), and
//! after every AMI login and every `[asterisk] reconcile_interval` the tracked channels are
//! reconciled with `CoreShowChannels`: vanished ones are hung up, ones never seen are adopted
//! ([`crate::calls::adopt`]). The journal is compacted per call ([`crate::journal`]).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
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
use crate::bitrix::{
    api, AppClient, AuthStatus, Directory, SharedDirectory, Transport, WebhookClient,
};
use crate::calls::adopt;
use crate::calls::tracker::Originate;
use crate::calls::{Intent, Tracker, TrackerConfig};
use crate::clock::{ms_of, now_ms, PbxClock};
use crate::config::AuthMode;
use crate::config::Config;
use crate::context::{publish_directory, Context, Control, DeliveryView, Health};
use crate::http;
use crate::journal::{EventJournal, EventRecord, OriginateRecord};
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
            Limited::new(transport, limiter.clone()),
            health.rest.clone(),
        ));
        let (outbox, journal, state) = open_state(cfg, &health.disk);

        let (ami, ami_thread) = client::start(ami_config(cfg), ami_tx);

        // Not loaded until the delivery thread's first `user.get` succeeds; steps that need
        // it wait for it (issue #16).
        let directory = SharedDirectory::not_loaded();
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
        let opts = StateOptions {
            reconcile_interval: cfg.asterisk.reconcile_interval,
            inbound_contexts: cfg.calls.inbound_contexts.clone(),
        };
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
                    opts,
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
        let mut deliverer = Deliverer::with_outbox(
            DeliverConfig::from_config(cfg),
            Box::new(beating),
            directory,
            outbox,
        )
        .with_attach_worker(transport, Some(wake_for_attach));
        deliverer.set_pacing(limiter);
        let refresh = cfg.bitrix24.users_refresh;
        let h = health.clone();
        let delivery = thread::Builder::new()
            .name("delivery".into())
            .spawn(move || delivery_loop(deliverer, wake_rx, ctl_tx, stop_rx, refresh, h))
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
    /// Only channels the tracker tracks; an entry goes with its channel's Hangup.
    chans: HashMap<String, (String, String)>,
}

impl Tracking {
    fn new(tracker: Tracker) -> Tracking {
        Tracking {
            tracker,
            chans: HashMap::new(),
        }
    }

    /// Feed one event to the tracker, remembering its tracked channels' names.
    fn handle(&mut self, msg: &Message, at_ms: u64, out: &mut Vec<Intent>) {
        self.tracker.handle(msg, at_ms, out);
        for prefix in ["", "Dest"] {
            let field = |k: &str| msg.get(&format!("{prefix}{k}"));
            if let (Some(name), Some(id)) = (field("Channel"), field("Uniqueid")) {
                if self.tracker.has_channel(id) {
                    let linked = field("Linkedid").unwrap_or(id);
                    self.chans
                        .insert(id.to_string(), (name.to_string(), linked.to_string()));
                } else {
                    self.chans.remove(id);
                }
            }
        }
        // A channel can also leave the tracker without an event of its own (a merge never
        // drops one, but a finished call's last channels go together): keep `chans` within it.
        if self.chans.len() > self.tracker.channel_count() {
            self.prune();
        }
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
                    events += 1;
                }
                EventRecord::Originate(o) => {
                    self.tracker.expect_originate(originate_of(o), o.expires_ms);
                }
                EventRecord::OriginateFailed { call_id } => {
                    self.tracker.originate_failed(call_id, &mut scratch);
                }
            }
            scratch.clear();
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
        let t = &self.tracker;
        self.chans.retain(|id, _| t.has_channel(id));
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

fn originate_of(o: &OriginateRecord) -> Originate {
    Originate {
        call_id: o.call_id.clone(),
        channel_id: o.channel_id.clone(),
        action_id: o.action_id.clone(),
        ext: o.ext.clone(),
        phone: o.phone.clone(),
        callback_line: o.callback_line.clone(),
    }
}

fn record_of(o: &Originate, expires_ms: u64) -> OriginateRecord {
    OriginateRecord {
        call_id: o.call_id.clone(),
        channel_id: o.channel_id.clone(),
        action_id: o.action_id.clone(),
        ext: o.ext.clone(),
        phone: o.phone.clone(),
        callback_line: o.callback_line.clone(),
        expires_ms,
    }
}

/// A reconciliation answer: the channels tracked when `CoreShowChannels` was sent, and the
/// `CoreShowChannel` items Asterisk listed (or why it could not be asked).
/// Tagged with the request's number: an answer to an older request than the one in flight
/// (sent before a reconnect) is dropped.
type Reconcile = (u64, Vec<String>, Result<(Vec<Message>, u64), String>);

/// Ask Asterisk for its channels off the state thread (the request can take seconds).
fn start_reconcile(
    ami: &client::Handle,
    n: u64,
    tracked: Vec<String>,
    tx: &Sender<Reconcile>,
) -> bool {
    let ami = ami.clone();
    let tx = tx.clone();
    let spawned = thread::Builder::new()
        .name("reconcile".into())
        .spawn(move || {
            let action = Message::from_pairs(&[("Action", "CoreShowChannels")]);
            let listed = ami
                .request_list_at(action, Duration::from_secs(10))
                .map_err(|e| e.to_string());
            let _ = tx.send((n, tracked, listed));
        });
    match spawned {
        Ok(_) => true,
        Err(e) => {
            log::warn!("reconcile: cannot start a thread: {e}");
            false
        }
    }
}

/// At most this many Hangups of unknown channels are remembered while a reconciliation is
/// out; past it the listing is too stale to adopt from (its vanished channels are still hung
/// up).
const MAX_HANGUPS_IN_FLIGHT: usize = 10_000;

/// At most this many messages (AMI traffic and controls) make one pass of the state thread,
/// and at most this many journal records are staged before a commit: one fsync of the outbox
/// covers them all. Bounds the memory a pass holds and how long a pass can keep delivery
/// waiting for its steps.
pub const PASS_MAX: usize = 1024;

/// What the state thread needs besides its channels.
struct StateOptions {
    /// Reconcile this often besides after every login (`[asterisk] reconcile_interval`).
    reconcile_interval: Duration,
    /// `[calls] inbound_contexts`, for adopting calls that began while we were away.
    inbound_contexts: Vec<String>,
}

/// The state thread's own state: the tracker, the journal, the PBX clock, and the
/// reconciliation in flight.
struct StateThread {
    st: Tracking,
    journal: Option<EventJournal>,
    outbox: Arc<Mutex<Outbox>>,
    wake: Sender<()>,
    clock: PbxClock,
    /// The intents of the pass, not yet in the outbox.
    out: Vec<Intent>,
    /// AMI events taken from the reader so far, to line a listing up with the stream
    /// ([`client::Handle::request_list_at`]).
    events_taken: u64,
    /// Journal records staged in the pass (committed at [`PASS_MAX`]).
    staged: usize,
    /// The reconciliation in flight (`None`: none), by number, with the Hangups (and their
    /// times) of channels the tracker did not know that came since it was sent: a channel the
    /// listing shows may have hung up right after, and once adopted it must hang up again.
    hung_up: Option<(u64, Vec<(Message, u64)>)>,
    /// Numbers reconciliations.
    recon_seq: u64,
    opts: StateOptions,
}

impl StateThread {
    /// Group commit of what was handled since the last one: the intents go to the outbox in
    /// one append and one fsync, then the journal records behind them in one write, then the
    /// delivery thread is woken to send them. So every step is on disk before it can be sent,
    /// and before the event that made it is in the journal (a crash in between loses the
    /// event, which reconciliation makes up for, and the outbox drops the repeated steps).
    /// Then the journal is compacted if that is due.
    fn commit(&mut self) {
        let intents = !self.out.is_empty();
        if intents {
            let mut ob = self.outbox.lock().unwrap_or_else(|e| e.into_inner());
            if log::log_enabled!(log::Level::Debug) {
                for intent in &self.out {
                    log::debug!("intent: {intent}");
                }
            }
            ob.enqueue_all(self.out.drain(..));
        }
        self.staged = 0;
        let t = &self.st.tracker;
        if let Some(j) = self.journal.as_mut() {
            j.commit();
            if j.compaction_due(t.holds_nothing()) {
                j.sync(true);
                j.compact(&t.live_keys());
            }
        }
        if intents {
            let _ = self.wake.try_send(());
        }
    }

    /// A journal record was staged: commit once a pass's worth is waiting.
    fn staged_one(&mut self) {
        self.staged += 1;
        if self.staged >= PASS_MAX {
            self.commit();
        }
    }

    fn feed(&mut self, msg: &Message, at_ms: u64) {
        self.st.handle(msg, at_ms, &mut self.out);
        if let Some(j) = self.journal.as_mut() {
            j.append(msg, at_ms);
        }
        self.staged_one();
    }

    /// One message from the AMI reader; whether it was a login.
    fn incoming(&mut self, msg: Incoming) -> bool {
        match msg {
            Incoming::Event { msg, at } => {
                self.events_taken += 1;
                self.event(&msg, at);
            }
            Incoming::Connected { banner } => {
                log::info!("AMI connected and logged in ({banner})");
                return true;
            }
            Incoming::Disconnected { reason } => log::warn!("AMI connection lost: {reason}"),
        }
        false
    }

    /// One AMI event from the wire.
    fn event(&mut self, msg: &Message, at: std::time::SystemTime) {
        if log::log_enabled!(log::Level::Trace) {
            log::trace!("AMI event: {msg:?}");
        }
        // One clock per duration: the PBX's when it stamps events, else ours on arrival.
        let at_ms = match timestamp_ms(msg) {
            Some(ms) => {
                self.clock.saw(ms);
                ms
            }
            None => ms_of(at),
        };
        let ev = Event::parse(msg);
        if let (Some((_, v)), Event::Hangup { chan, .. }) = (self.hung_up.as_mut(), &ev) {
            if v.len() < MAX_HANGUPS_IN_FLIGHT && !self.st.tracker.has_channel(chan.uniqueid) {
                v.push((msg.clone(), at_ms));
            }
        }
        if !matches!(ev, Event::Other) {
            // Others are not for the tracker: neither fed nor journaled.
            self.feed(msg, at_ms);
        }
    }

    fn control(&mut self, ctl: Control) {
        match ctl {
            Control::Employees(list) => {
                log::debug!("tracker: {} employee numbers", list.len());
                if let Some(j) = self.journal.as_mut() {
                    j.employees(&list);
                }
                self.st.tracker.set_employees(list);
                self.staged_one();
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
                if let Some(j) = self.journal.as_mut() {
                    j.originate(record_of(&originate, expires_ms));
                }
                self.st.tracker.expect_originate(originate, expires_ms);
                self.staged_one();
            }
            Control::OriginateFailed { call_id } => {
                self.st.tracker.originate_failed(&call_id, &mut self.out);
                if let Some(j) = self.journal.as_mut() {
                    j.originate_failed(&call_id);
                }
                self.staged_one();
            }
            Control::OriginateRefused { call_id, status } => {
                self.st
                    .tracker
                    .originate_refused(&call_id, status, &mut self.out);
                // For the tracker's state after a restart, a refusal is a failure: the
                // expectation is gone (its finish is in the outbox before this record).
                if let Some(j) = self.journal.as_mut() {
                    j.originate_failed(&call_id);
                }
                self.staged_one();
            }
        }
    }

    /// The answer to a `CoreShowChannels`: hang up the tracked channels Asterisk no longer
    /// has, and adopt the listed ones the tracker never saw (then replay the Hangups of those
    /// that went after the listing: the tracker ignored them, not knowing the channel).
    fn reconciled(&mut self, tracked: Vec<String>, listed: Vec<Message>) {
        let Some((_, hung_up)) = self.hung_up.take() else {
            return;
        };
        let now = self.clock.now_ms();
        let listed_ids: HashSet<&str> = listed.iter().filter_map(|m| m.get("Uniqueid")).collect();
        let gone: Vec<String> = tracked
            .into_iter()
            .filter(|id| self.st.tracker.has_channel(id) && !listed_ids.contains(id.as_str()))
            .collect();
        if !gone.is_empty() {
            log::info!(
                "reconcile: {} tracked channel(s) are gone from Asterisk, hanging them up: {}",
                gone.len(),
                gone.join(", ")
            );
        }
        for id in gone {
            let msg = self.st.vanished(&id);
            self.feed(&msg, now);
        }
        if hung_up.len() >= MAX_HANGUPS_IN_FLIGHT {
            log::warn!("reconcile: the listing is too old to adopt channels from; next time");
            return;
        }
        let tracker = &self.st.tracker;
        let events = adopt::adopt(
            &listed,
            &|u| tracker.has_channel(u),
            &|name| tracker.is_employee_channel(name),
            &self.opts.inbound_contexts,
            now,
        );
        let calls_before = self.st.tracker.len();
        let new_chans = events
            .iter()
            .filter(|(e, _)| e.get("Event") == Some("Newchannel"))
            .count();
        let mut last = now;
        for (msg, at) in events {
            last = last.max(at);
            self.feed(&msg, at);
        }
        for (msg, at) in hung_up {
            let adopted = msg
                .get("Uniqueid")
                .is_some_and(|u| self.st.tracker.has_channel(u));
            if adopted {
                // Not before the adoption's own events, so no duration runs backwards.
                self.feed(&msg, at.max(last));
            }
        }
        if new_chans > 0 {
            log::info!(
                "reconcile: adopted {new_chans} channel(s) we had not seen ({} new call(s))",
                self.st.tracker.len().saturating_sub(calls_before)
            );
        }
    }

    /// The end of a pass: expire click-to-calls, commit the pass, fsync the journal if a
    /// second has passed.
    fn tick(&mut self) {
        self.st.tracker.tick(now_ms(), &mut self.out);
        self.commit();
        if let Some(j) = self.journal.as_mut() {
            j.sync(false);
        }
        if self.st.tracker.holds_nothing() {
            self.st.chans.clear();
        }
    }
}

/// The state thread's view for `/status`, `/healthz` and the watchdog.
fn publish(s: &StateThread, health: &Health, ami: &client::Handle) {
    health
        .ami_logged_in
        .store(ami.is_logged_in(), Ordering::Relaxed);
    health.state_alive_ms.store(now_ms(), Ordering::Relaxed);
    if let Ok(mut calls) = health.active_calls.lock() {
        *calls = s.st.tracker.active_calls();
    }
}

#[allow(clippy::too_many_arguments)]
fn state_loop(
    st: Tracking,
    journal: Option<EventJournal>,
    outbox: Arc<Mutex<Outbox>>,
    ami_rx: Receiver<Incoming>,
    ctl_rx: Receiver<Control>,
    wake: Sender<()>,
    stop: Receiver<()>,
    health: Arc<Health>,
    ami: client::Handle,
    opts: StateOptions,
) {
    let (recon_tx, recon_rx) = unbounded::<Reconcile>();
    let interval = opts.reconcile_interval;
    let mut s = StateThread {
        st,
        journal,
        outbox,
        wake,
        clock: PbxClock::default(),
        out: Vec::new(),
        staged: 0,
        hung_up: None,
        events_taken: 0,
        recon_seq: 0,
        opts,
    };
    // The calls restored from the journal show in /status at once, not after the first event.
    publish(&s, &health, &ami);
    let mut next_reconcile = Instant::now() + interval;
    // Reconcile after a login, and every `interval` while logged in.
    let reconcile = |s: &mut StateThread, why: &str| {
        if s.hung_up.is_some() {
            return; // one at a time
        }
        log::debug!("reconcile: asking Asterisk for its channels ({why})");
        s.recon_seq += 1;
        if start_reconcile(&ami, s.recon_seq, s.st.tracker.channel_ids(), &recon_tx) {
            s.hung_up = Some((s.recon_seq, Vec::new()));
        }
    };
    loop {
        // One pass: controls first (a click-to-call must be known before its own AMI events
        // are seen), then the first message to come (or a second's wait), then whatever else
        // is already waiting, then one commit for all of it (`StateThread::tick`).
        let mut login = false;
        let mut handled = 0usize;
        while handled < PASS_MAX {
            let Ok(ctl) = ctl_rx.try_recv() else { break };
            s.control(ctl);
            handled += 1;
        }
        // Something handled already is committed without waiting for more.
        let wait = if handled > 0 {
            Duration::ZERO
        } else {
            Duration::from_secs(1)
        };
        let mut closed = false;
        select! {
            recv(ami_rx) -> msg => match msg {
                Ok(msg) => {
                    login |= s.incoming(msg);
                    handled += 1;
                }
                Err(_) => closed = true,
            },
            recv(ctl_rx) -> ctl => {
                if let Ok(ctl) = ctl {
                    s.control(ctl);
                    handled += 1;
                }
            }
            recv(recon_rx) -> r => {
                let current = s.hung_up.as_ref().map(|(n, _)| *n);
                match r {
                    Ok((n, tracked, listed)) if Some(n) == current => {
                        // Events that came before the listing's end are queued already:
                        // apply exactly those first, so the listing is compared with the state
                        // it describes (one after it, say the Hangup of a listed channel, would
                        // make the listing look newer than it is).
                        if let Ok((_, upto)) = &listed {
                            while s.events_taken < *upto {
                                match ami_rx.try_recv() {
                                    Ok(msg) => login |= s.incoming(msg),
                                    Err(_) => break,
                                }
                            }
                        }
                        match listed {
                            Ok((listed, _)) => s.reconciled(tracked, listed),
                            Err(e) => {
                                s.hung_up = None;
                                log::warn!("reconcile: CoreShowChannels failed: {e}");
                            }
                        }
                        next_reconcile = Instant::now() + interval;
                    }
                    Ok(_) => log::debug!("reconcile: dropping the answer to an older request"),
                    Err(_) => {}
                }
                handled += 1;
            }
            recv(stop) -> _ => closed = true,
            default(wait) => {}
        }
        if closed {
            break;
        }
        // The rest of the pass: what is already waiting, without blocking. A login ends it,
        // so the reconciliation goes out at once.
        while handled > 0 && handled < PASS_MAX && !login {
            if let Ok(ctl) = ctl_rx.try_recv() {
                s.control(ctl);
            } else if let Ok(msg) = ami_rx.try_recv() {
                login |= s.incoming(msg);
            } else {
                break;
            }
            handled += 1;
        }
        if login {
            // Every login, the first one included: calls that began (or ended) while we were
            // not listening are found here.
            s.hung_up = None;
            reconcile(&mut s, "login");
            next_reconcile = Instant::now() + interval;
        } else if Instant::now() >= next_reconcile && ami.is_logged_in() {
            reconcile(&mut s, "periodic");
            next_reconcile = Instant::now() + interval;
        }
        s.tick();
        publish(&s, &health, &ami);
    }
    // What the last pass handled (controls before a stop) is committed like any pass.
    s.commit();
    if let Some(j) = s.journal.as_mut() {
        j.sync(true);
    }
    s.outbox.lock().unwrap_or_else(|e| e.into_inner()).flush();
    log::debug!("state thread stopped");
}

/// First and longest wait between failed `user.get` loads before the directory has loaded
/// once (then `refresh` applies; a failed refresh keeps the old directory and tries again at
/// this pace too).
const LOAD_RETRY_MIN: Duration = Duration::from_secs(1);
const LOAD_RETRY_MAX: Duration = Duration::from_secs(30);

/// The delivery thread: loads the user directory (every `refresh`; until the first load
/// succeeds and after a failed one, with a backoff from 1 s to 30 s; at once when the shared
/// directory is asked to reload, e.g. by an app install) and publishes it with
/// [`publish_directory`]; runs the steps that are due when `wake` says new intents are in the
/// outbox, when the next retry is due, or when a directory was published (steps waiting for
/// it go at once); mirrors its progress into `health.delivery`. Ends when `stop` (or `wake`)
/// is closed, leaving undelivered steps in the outbox. Public so that tests drive this very
/// loop rather than a copy of it.
pub fn delivery_loop(
    mut d: Deliverer,
    wake: Receiver<()>,
    ctl: Sender<Control>,
    stop: Receiver<()>,
    refresh: Duration,
    health: Arc<Health>,
) {
    let shared = d.directory().clone();
    let mut load_failures = 0u32;
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
                    publish_directory(&shared, &ctl, dir);
                    load_failures = 0;
                    next_load = now + refresh;
                }
                Err(e) => {
                    load_failures += 1;
                    let delay = load_retry(load_failures, refresh);
                    if load_failures == 1 {
                        log::warn!(
                            "could not load Bitrix24 users (user.get), retrying in {delay:?}: {e}"
                        );
                    } else {
                        log::debug!(
                            "user.get failed again ({load_failures} in a row), retrying in \
                             {delay:?}: {e}"
                        );
                    }
                    next_load = now + delay;
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
            recv(shared.reload_requests()) -> _ => {
                log::info!("loading the Bitrix24 user directory again now (requested)");
                next_load = Instant::now();
            },
            recv(shared.publications()) -> _ => d.directory_arrived(Instant::now()),
            recv(after(timeout)) -> _ => {},
        }
        if stopping {
            // Steps wait in the outbox for the next start; no new attempt now, so that
            // shutdown is not held up by a slow portal.
            d.outbox().lock().unwrap_or_else(|e| e.into_inner()).flush();
        } else {
            next_due = d.run_due(Instant::now());
        }
        let dir = d.directory().get();
        if let Ok(mut v) = health.delivery.lock() {
            *v = DeliveryView {
                pending: d.pending(),
                oldest_pending_age: d.oldest_pending_age(),
                stats: d.stats().clone(),
                users: dir.as_ref().map_or(0, |d| d.len()),
                users_loaded: dir.as_ref().map(|d| d.loaded_at()),
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

/// The wait after `failures` failed directory loads in a row: doubling from
/// [`LOAD_RETRY_MIN`], capped at [`LOAD_RETRY_MAX`] and at `refresh`.
fn load_retry(failures: u32, refresh: Duration) -> Duration {
    let exp = LOAD_RETRY_MIN.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    exp.min(LOAD_RETRY_MAX).min(refresh.max(LOAD_RETRY_MIN))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bitrix::outbox::DISK_NAME as OUTBOX;
    use crate::calls::Action;
    use crate::journal::DISK_NAME as JOURNAL;
    use crate::statefile::Counts;
    use std::time::SystemTime;

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("callme-state-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// The events of one inbound call `n` (capture a's shape): the trunk leg, 219's leg, the
    /// dial, the answer, the bridge; the hangups only if `ends`.
    fn call_events(n: u64, ends: bool) -> Vec<Message> {
        let (t, e) = (format!("{n}.0"), format!("{n}.1"));
        let trunk = format!("SIP/trunk-{n:08x}");
        let leg = format!("SIP/219-{n:08x}");
        let chan = |ev: &str, name: &str, uid: &str, ctx: &str, exten: &str| {
            Message::from_pairs(&[
                ("Event", ev),
                ("Channel", name),
                ("CallerIDNum", "79991234567"),
                ("Context", ctx),
                ("Exten", exten),
                ("Uniqueid", uid),
                ("Linkedid", &t),
            ])
        };
        let mut dial = chan("DialBegin", &trunk, &t, "from-trunk", "8001");
        for (k, v) in [
            ("DestChannel", leg.as_str()),
            ("DestUniqueid", &e),
            ("DestLinkedid", &t),
            ("DialString", "219"),
        ] {
            dial.push(k, v);
        }
        let mut answer = chan("DialEnd", &trunk, &t, "from-trunk", "8001");
        for (k, v) in [
            ("DestChannel", leg.as_str()),
            ("DestUniqueid", &e),
            ("DestLinkedid", &t),
            ("DialStatus", "ANSWER"),
        ] {
            answer.push(k, v);
        }
        let mut enter1 = chan("BridgeEnter", &leg, &e, "from-internal", "");
        enter1.push("BridgeUniqueid", &format!("b-{n}"));
        let mut enter2 = chan("BridgeEnter", &trunk, &t, "from-trunk", "8001");
        enter2.push("BridgeUniqueid", &format!("b-{n}"));
        let mut v = vec![
            chan("Newchannel", &trunk, &t, "from-trunk", "8001"),
            chan("Newchannel", &leg, &e, "from-internal", "s"),
            dial,
            answer,
            enter1,
            enter2,
        ];
        if ends {
            let mut h1 = chan("Hangup", &trunk, &t, "from-trunk", "8001");
            h1.push("Cause", "16");
            let mut h2 = chan("Hangup", &leg, &e, "from-internal", "");
            h2.push("Cause", "16");
            v.extend([h1, h2]);
        }
        v
    }

    fn state_thread(dir: &std::path::Path) -> (StateThread, Receiver<()>) {
        let (wake, woken) = bounded(1);
        let (journal, records) = EventJournal::open(dir).unwrap();
        let mut st = Tracking::new(Tracker::new(TrackerConfig::default()));
        st.replay(&records);
        let s = StateThread {
            st,
            journal: Some(journal),
            outbox: Arc::new(Mutex::new(Outbox::in_memory())),
            wake,
            clock: PbxClock::default(),
            out: Vec::new(),
            staged: 0,
            hung_up: None,
            events_taken: 0,
            recon_seq: 0,
            opts: StateOptions {
                reconcile_interval: Duration::from_secs(300),
                inbound_contexts: vec!["from-trunk".into()],
            },
        };
        (s, woken)
    }

    /// [`state_thread`] with the outbox on disk in `dir` too, both files counted in the
    /// returned [`DiskStatus`].
    fn state_thread_on_disk(dir: &std::path::Path) -> (StateThread, Receiver<()>, Arc<DiskStatus>) {
        let disk = Arc::new(DiskStatus::default());
        let (mut s, woken) = state_thread(dir);
        s.outbox = Arc::new(Mutex::new(Outbox::open_or_memory(dir, 1000, disk.clone())));
        s.journal.as_mut().unwrap().report_to(disk.clone());
        (s, woken, disk)
    }

    fn counted(disk: &DiskStatus, what: &'static str, since: Counts) -> Counts {
        let now = disk.counts(what);
        Counts {
            records: now.records - since.records,
            appends: now.appends - since.appends,
            syncs: now.syncs - since.syncs,
        }
    }

    /// The kinds of the step records for `call` in the outbox file, in order.
    fn steps_on_disk(dir: &std::path::Path, call: &str) -> Vec<String> {
        let text = std::fs::read_to_string(dir.join(crate::bitrix::outbox::OUTBOX_FILE)).unwrap();
        text.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["t"] == "step" && v["call"] == call)
            .filter_map(|v| v["action"].as_object()?.keys().next().cloned())
            .collect()
    }

    /// Group commit: a pass of many events from many calls costs one outbox append and one
    /// fsync, and one journal write, however many intents it makes; nothing is visible to
    /// delivery (or woken) before that commit, and everything is on disk after it.
    #[test]
    fn one_pass_of_many_events_is_one_outbox_fsync_and_one_journal_write() {
        let dir = tmp("group-commit");
        let (mut s, woken, disk) = state_thread_on_disk(&dir);
        let (o0, j0) = (disk.counts(OUTBOX), disk.counts(JOURNAL));
        let events: Vec<Message> = (1..=20).flat_map(|n| call_events(n, true)).collect();
        for m in &events {
            s.event(m, SystemTime::now());
        }
        assert_eq!(
            counted(&disk, OUTBOX, o0),
            Counts::default(),
            "nothing written mid-pass"
        );
        assert_eq!(
            s.outbox.lock().unwrap().pending(),
            0,
            "nothing for delivery mid-pass"
        );
        assert!(woken.try_recv().is_err());
        s.commit();
        let (o, j) = (counted(&disk, OUTBOX, o0), counted(&disk, JOURNAL, j0));
        assert!(
            o.records >= 3 * 20,
            "register, show, finish per call: {o:?}"
        );
        assert_eq!((o.appends, o.syncs), (1, 1), "one append, one fsync: {o:?}");
        assert_eq!((j.records, j.appends), (events.len() as u64, 1), "{j:?}");
        assert!(
            woken.try_recv().is_ok(),
            "delivery is woken after the commit"
        );
        let ob = Outbox::read(&dir.join(crate::bitrix::outbox::OUTBOX_FILE)).unwrap();
        assert_eq!(
            ob.pending() as u64,
            o.records,
            "every intent of the pass is on disk"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A pass is bounded: past [`PASS_MAX`] journal records the pass is committed, so memory
    /// held by a pass (and the wait of its first step) does not grow with a burst.
    #[test]
    fn a_burst_is_committed_every_pass_max_records() {
        let dir = tmp("pass-max");
        let (mut s, _woken, disk) = state_thread_on_disk(&dir);
        let o0 = disk.counts(OUTBOX);
        // Two and a half passes' worth: 8 events a call.
        let calls = (PASS_MAX * 5 / 16) as u64;
        let events: Vec<Message> = (1..=calls).flat_map(|n| call_events(n, true)).collect();
        assert_eq!(events.len(), PASS_MAX * 5 / 2);
        for m in &events {
            s.event(m, SystemTime::now());
            assert!(s.journal.as_ref().unwrap().staged() < PASS_MAX as u64);
        }
        s.commit();
        let o = counted(&disk, OUTBOX, o0);
        assert_eq!(o.syncs, 3, "two full passes and the rest: {o:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A crash after a pass's intents are in the outbox but before its events are in the
    /// journal: after the restart nothing is lost (the steps are on disk) and nothing is
    /// queued twice. The tracker, rebuilt from a journal without those events, learns of
    /// them again from the reconciliation (a vanished channel's Hangup, an adopted call); the
    /// register and finish it decides again are the outbox's duplicates and are dropped.
    #[test]
    fn a_crash_between_the_outbox_and_the_journal_loses_and_duplicates_nothing() {
        let dir = tmp("crash-between");
        let (mut s, _woken, _disk) = state_thread_on_disk(&dir);
        // Pass 1, committed: call 1 rings 219, who answers.
        for m in call_events(1, false) {
            s.event(&m, SystemTime::now());
        }
        s.tick();
        // Pass 2: call 1 hangs up, call 2 begins. Its intents reach the outbox, then the
        // process dies before the journal write.
        for m in call_events(1, true).into_iter().skip(6) {
            s.event(&m, SystemTime::now());
        }
        for m in call_events(2, false) {
            s.event(&m, SystemTime::now());
        }
        let intents: Vec<Intent> = s.out.drain(..).collect();
        s.outbox.lock().unwrap().enqueue_all(intents);
        drop(s); // kill -9: the staged journal records are gone
        let one = steps_on_disk(&dir, "callme-1.0");
        let two = steps_on_disk(&dir, "callme-2.0");
        assert_eq!(one, ["register", "show", "finish"]);
        assert_eq!(two, ["register", "show"]);

        // Restart: call 1 is up as far as the journal knows, call 2 unknown.
        let (mut s, _woken, _disk) = state_thread_on_disk(&dir);
        assert_eq!(s.st.tracker.len(), 1);
        s.hung_up = Some((1, Vec::new()));
        s.reconciled(
            vec!["1.0".into(), "1.1".into()],
            vec![
                listed("SIP/trunk-00000002", "2.0", "2.0", "from-trunk", "8001"),
                listed("SIP/219-00000002", "2.1", "2.0", "from-internal", ""),
            ],
        );
        s.tick();
        assert!(
            s.st.tracker
                .active_calls()
                .iter()
                .any(|c| c.call == "callme-2.0"),
            "call 2 was adopted"
        );
        let ob = s.outbox.lock().unwrap();
        let kinds = |call: &str| -> Vec<String> {
            ob.call(call)
                .unwrap()
                .steps
                .iter()
                .map(|st| serde_json::to_value(&st.action).unwrap())
                .filter_map(|v| v.as_object()?.keys().next().cloned())
                .collect()
        };
        assert_eq!(
            kinds("callme-1.0"),
            ["register", "show", "finish"],
            "once each"
        );
        let two = kinds("callme-2.0");
        assert_eq!(
            two.iter().filter(|k| *k == "register").count(),
            1,
            "registered once: {two:?}"
        );
        assert!(!two.iter().any(|k| k == "finish"), "{two:?}");
        drop(ob);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn stamped(mut m: Message, ms: u64) -> Message {
        m.push("Timestamp", &format!("{}.{:03}", ms / 1000, ms % 1000));
        m
    }

    /// A PBX that is never idle: one call stays up while 3000 others come and go, four at a
    /// time. Stated bounds, checked after every event: the journal holds at most
    /// 2·L + COMPACT_SLACK records, where L (what the last compaction kept) is the endless
    /// call's 6 events plus the overlapping calls' (at most 4 × 8); `chans` holds only tracked
    /// channels (at most 2 + 4 × 2); the tracker's maps hold only the live calls. After a
    /// restart the endless call is still there and its hangup finishes it.
    #[test]
    fn a_never_idle_stream_keeps_the_journal_and_the_maps_bounded() {
        let dir = tmp("never-idle");
        let (mut s, _woken) = state_thread(&dir);
        let t0 = 1_795_668_000_000u64;
        let mut ms = t0;
        let mut feed = |s: &mut StateThread, m: Message| {
            ms += 10;
            s.event(&stamped(m, ms), SystemTime::now());
            s.tick();
        };
        for m in call_events(1, false) {
            feed(&mut s, m);
        }
        let bound = 2 * (6 + 4 * 8) + crate::journal::COMPACT_SLACK;
        let mut max_journal = 0;
        let calls = 3000u64;
        // Four calls overlap: call n's events interleave with n+1..n+3's.
        let all: Vec<Vec<Message>> = (2..calls + 2).map(|n| call_events(n, true)).collect();
        let mut cursors = vec![0usize; all.len()];
        let mut next = 0usize;
        let mut live: Vec<usize> = Vec::new();
        while next < all.len() || !live.is_empty() {
            while live.len() < 4 && next < all.len() {
                live.push(next);
                next += 1;
            }
            let mut finished = Vec::new();
            for &c in &live {
                let m = all[c][cursors[c]].clone();
                cursors[c] += 1;
                feed(&mut s, m);
                if cursors[c] == all[c].len() {
                    finished.push(c);
                }
                let j = s.journal.as_ref().unwrap();
                max_journal = max_journal.max(j.len());
                assert!(j.len() <= bound, "journal {} > {bound}", j.len());
                assert!(s.st.chans.len() <= 2 + 4 * 2, "chans {}", s.st.chans.len());
                let [calls, links, chans, bridges, pending] = s.st.tracker.sizes();
                assert!(
                    calls <= 5 && links <= 5 && chans <= 10 && bridges <= 5 && pending == 0,
                    "{:?}",
                    s.st.tracker.sizes()
                );
            }
            live.retain(|c| !finished.contains(c));
        }
        let file_lines = std::fs::read_to_string(dir.join(crate::journal::EVENTS_FILE))
            .unwrap()
            .lines()
            .count();
        assert!(file_lines <= bound + 1, "{file_lines} lines on disk");
        let finishes = {
            let ob = s.outbox.lock().unwrap();
            (2..calls + 2)
                .filter(|n| {
                    ob.call(&format!("callme-{n}.0"))
                        .is_some_and(|c| c.finishing)
                })
                .count()
        };
        assert_eq!(
            finishes as u64, calls,
            "every call that came and went finished"
        );
        println!(
            "never-idle: {calls} calls, journal peaked at {max_journal} records (bound {bound}), \
             {file_lines} lines on disk at the end"
        );
        drop(s);

        // Restart: the endless call comes back from the compacted journal and finishes.
        let (mut s, _woken) = state_thread(&dir);
        assert_eq!(s.st.tracker.len(), 1);
        assert_eq!(s.st.tracker.active_calls()[0].call, "callme-1.0");
        for m in call_events(1, true).into_iter().skip(6) {
            feed(&mut s, m);
        }
        let ob = s.outbox.lock().unwrap();
        let steps: Vec<&Action> = ob
            .call("callme-1.0")
            .unwrap()
            .steps
            .iter()
            .map(|st| &st.action)
            .collect();
        assert!(
            matches!(steps.as_slice(), [Action::Finish { duration, .. }] if *duration > 60),
            "{steps:?}"
        );
        drop(ob);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn originate(channel_id: &str) -> Originate {
        Originate {
            call_id: format!("externalCall.{channel_id}"),
            channel_id: channel_id.into(),
            action_id: format!("act-{channel_id}"),
            ext: "219".into(),
            phone: "+79991234567".into(),
            callback_line: None,
        }
    }

    fn steps(s: &StateThread, key: &str) -> Vec<Action> {
        let ob = s.outbox.lock().unwrap();
        ob.call(key)
            .map(|c| c.steps.iter().map(|st| st.action.clone()).collect())
            .unwrap_or_default()
    }

    /// A restart between an Originate and its first AMI event: the expectation comes back
    /// from the journal, so the call's channel is still recognised as the click-to-call (and
    /// one that never shows up is still finished when it expires).
    #[test]
    fn a_click_to_call_expectation_survives_a_restart() {
        let dir = tmp("originate");
        let (mut s, _w) = state_thread(&dir);
        s.control(Control::Originate {
            originate: originate("c2c-1"),
            expires_ms: now_ms() + 60_000,
        });
        s.control(Control::Originate {
            originate: originate("c2c-2"),
            // Already due: it expires at the first tick after the restart.
            expires_ms: now_ms().saturating_sub(1),
        });
        s.control(Control::Originate {
            originate: originate("c2c-3"),
            expires_ms: now_ms() + 60_000,
        });
        s.control(Control::OriginateFailed {
            call_id: "externalCall.c2c-3".into(),
        });
        assert_eq!(s.st.tracker.sizes()[4], 2);
        s.commit(); // the end of the pass
        drop(s); // as a kill -9 would: nothing flushed beyond write(2)

        let (mut s, _w) = state_thread(&dir);
        assert_eq!(s.st.tracker.sizes()[4], 2, "c2c-1 and c2c-2 pending again");
        s.tick();
        assert_eq!(
            steps(&s, "callme-c2c-2"),
            [
                Action::Adopt {
                    call_id: "externalCall.c2c-2".into(),
                    ext: "219".into()
                },
                Action::Finish {
                    user: crate::calls::FinishUser::Employee("219".into()),
                    duration: 0,
                    status: crate::calls::Status::OTHER,
                }
            ]
        );
        let first = Message::from_pairs(&[
            ("Event", "Newchannel"),
            ("Channel", "SIP/219-00000001"),
            ("CallerIDNum", "219"),
            ("Context", "from-internal"),
            ("Exten", "s"),
            ("Uniqueid", "c2c-1"),
            ("Linkedid", "c2c-1"),
        ]);
        s.event(&first, SystemTime::now());
        s.commit();
        assert_eq!(
            steps(&s, "callme-c2c-1"),
            [Action::Adopt {
                call_id: "externalCall.c2c-1".into(),
                ext: "219".into()
            }]
        );
        assert!(steps(&s, "callme-c2c-3").is_empty(), "c2c-3 failed before");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn listed(name: &str, uid: &str, linked: &str, context: &str, exten: &str) -> Message {
        Message::from_pairs(&[
            ("Event", "CoreShowChannel"),
            ("Channel", name),
            ("ChannelState", "6"),
            ("CallerIDNum", "79991234567"),
            ("Context", context),
            ("Exten", exten),
            ("Uniqueid", uid),
            ("Linkedid", linked),
            ("Duration", "00:00:04"),
            ("BridgeId", ""),
        ])
    }

    /// A reconciliation adopts the listed channels it never saw, those that hung up right
    /// after the listing included (adopted, then hung up again); tracked channels missing
    /// from the listing are hung up with a synthetic Hangup stamped on the PBX's clock.
    #[test]
    fn reconcile_adopts_unknown_channels_and_replays_hangups_since_the_listing() {
        let dir = tmp("reconcile");
        let (mut s, _w) = state_thread(&dir);
        let pbx = 1_000_000_000_000u64; // the PBX's clock, far from ours
        for m in call_events(7, false) {
            s.event(&stamped(m, pbx), SystemTime::now());
        }
        s.commit();
        assert_eq!(steps(&s, "callme-7.0").len(), 2, "register, show");
        s.hung_up = Some((1, Vec::new()));
        // 9.0 hangs up after Asterisk listed it, before the listing reaches the state thread.
        let gone = Message::from_pairs(&[
            ("Event", "Hangup"),
            ("Channel", "SIP/trunk-00000009"),
            ("Uniqueid", "9.0"),
            ("Linkedid", "9.0"),
            ("Cause", "16"),
        ]);
        s.event(&stamped(gone, pbx + 1_000), SystemTime::now());
        s.reconciled(
            vec!["7.0".into(), "7.1".into()],
            vec![
                listed("SIP/trunk-00000008", "8.0", "8.0", "from-trunk", "8002"),
                listed("SIP/trunk-00000009", "9.0", "9.0", "from-trunk", "8003"),
            ],
        );
        s.commit();
        assert!(
            matches!(steps(&s, "callme-8.0").first(), Some(Action::Register { line, .. }) if line == "8002"),
            "{:?}",
            steps(&s, "callme-8.0")
        );
        let nine = steps(&s, "callme-9.0");
        assert!(
            matches!(nine.as_slice(), [Action::Register { line, .. }, Action::Finish { .. }] if line == "8003"),
            "9.0, listed then hung up, is registered and finished: {nine:?}"
        );
        let fin = steps(&s, "callme-7.0");
        match fin.last() {
            // Answered at `pbx`, hung up by reconciliation a moment later on the PBX clock:
            // not the hours between the PBX's clock and ours.
            Some(Action::Finish { duration, .. }) => assert!(*duration <= 5, "{fin:?}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.st.tracker.len(), 1, "8.0 is up");
        assert!(s.st.chans.len() == 1 && s.st.chans.contains_key("8.0"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn directory_load_retries_double_from_1_s_to_30_s_and_never_exceed_the_refresh() {
        let hour = Duration::from_secs(3600);
        let waits: Vec<u64> = (1..=8).map(|n| load_retry(n, hour).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(load_retry(u32::MAX, hour), LOAD_RETRY_MAX);
        assert_eq!(
            load_retry(5, Duration::from_secs(5)),
            Duration::from_secs(5)
        );
        assert_eq!(load_retry(1, Duration::ZERO), LOAD_RETRY_MIN);
    }
}
