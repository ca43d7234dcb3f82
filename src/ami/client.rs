//! AMI connection client: one reader thread owns the connection (connect → banner → Login →
//! FullyBooted → read loop → reconnect), and any thread sends actions through a shared,
//! mutex-guarded writer ([`Handle`]).
//!
//! Why this shape: Asterisk disconnects a session whose socket it cannot write to within
//! `writetimeout` (100 ms by default, ami.md §2.6). So the reader thread never waits on anything
//! but the socket: events go onto an unbounded channel drained by another thread, and responses
//! are handed to the waiting caller by ActionID without ever blocking the reader.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::io::{self, BufReader, ErrorKind, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{bounded, select, Receiver, RecvTimeoutError, Sender};

use super::codec::{encode_action, Frame, Message, Reader};
use super::Error;

/// Asterisk answers a wrong secret only after `sleep(1)` (ami.md §2.3), so the wait for the Login
/// response must outlast that, or a wrong secret would be reported as a mere timeout.
const LOGIN_GRACE: Duration = Duration::from_secs(2);
/// Events kept that arrive before the Login response (see [`Worker::login`]); past this many
/// the oldest of them are dropped, with a warning. Each is at most the codec's message cap.
const EARLY_EVENTS_MAX: usize = 10_000;
/// Bounds of the socket read timeout, i.e. how often timers are checked while the link is idle.
const MIN_TICK: Duration = Duration::from_millis(10);
const MAX_TICK: Duration = Duration::from_secs(1);
/// A zero `reconnect_min` would turn the retry loop into a busy loop against a refusing PBX.
const MIN_BACKOFF: Duration = Duration::from_millis(10);
/// A write only blocks when Asterisk stopped reading; after this long the link is declared dead.
const MIN_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Where and how to connect. Usually built from the `[asterisk]` section of the config file.
#[derive(Clone)]
pub struct ClientConfig {
    pub host: String,
    pub port: u16,
    pub username: String,
    pub secret: String,
    /// How often to send `Action: Ping`. Asterisk sends no keepalive of its own (ami.md §2.6).
    pub ping_interval: Duration,
    /// No data at all for this long after a Ping means the link is dead (half-open TCP).
    pub ping_timeout: Duration,
    /// TCP connect, and then the banner, must each arrive within this.
    pub connect_timeout: Duration,
    /// Reconnect backoff: starts at `reconnect_min`, doubles up to `reconnect_max`, ±20% jitter.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// How long to wait for `Event: FullyBooted` after Login. A user without the `system` read
    /// class never gets it, so this is a bound, not a requirement.
    pub fully_booted_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            host: "127.0.0.1".to_string(),
            port: 5038,
            username: String::new(),
            secret: String::new(),
            ping_interval: Duration::from_secs(10),
            ping_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            reconnect_min: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(60),
            fully_booted_timeout: Duration::from_secs(5),
        }
    }
}

/// Hand-written so that `{:?}` of a config (in a log line or a panic) never shows the secret.
impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("secret", &"***")
            .field("ping_interval", &self.ping_interval)
            .field("ping_timeout", &self.ping_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("reconnect_min", &self.reconnect_min)
            .field("reconnect_max", &self.reconnect_max)
            .field("fully_booted_timeout", &self.fully_booted_timeout)
            .finish()
    }
}

/// What the reader thread reports on the events channel.
#[derive(Clone, Debug)]
pub enum Incoming {
    /// Logged in, and `FullyBooted` seen (or waited for in vain). Asterisk replays no state after
    /// a reconnect (ami.md §2.6), so this is the consumer's cue to resynchronise
    /// (`CoreShowChannels`, ami.md §4.3).
    Connected { banner: String },
    /// Every event, in arrival order, stamped when it was parsed. List items of a pending
    /// [`Handle::request_list`] are not repeated here; everything else is, including
    /// `OriginateResponse` (an event that carries the ActionID of an earlier Originate).
    Event { msg: Message, at: SystemTime },
    /// The link went down after a `Connected`. Sent only after a `Connected`, so the consumer
    /// sees strict Connected/Disconnected pairs; failed attempts in between show in the log and
    /// in [`Handle::last_error`].
    Disconnected { reason: String },
}

/// Counters for `/status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Events put on the channel.
    pub events: u64,
    /// Messages the codec skipped because they were over its size cap.
    pub dropped: u64,
    /// Connection attempts after the first one (each retry counts, successful or not).
    pub reconnects: u64,
    pub logged_in: bool,
}

/// A caller waiting for the answer to one action.
enum Pending {
    Response(Sender<Result<Message, Error>>),
    /// An event-list action (ami.md §2.8): collect items until `<X>Complete`. The reply
    /// carries how many events had been emitted when the list completed (see
    /// [`Handle::request_list_at`]).
    List {
        items: Vec<Message>,
        reply: Sender<Result<(Vec<Message>, u64), Error>>,
    },
}

impl Pending {
    fn fail_not_connected(self) {
        // The caller may have given up already (timeout): nobody to tell then.
        match self {
            Pending::Response(tx) => {
                let _ = tx.send(Err(Error::NotConnected));
            }
            Pending::List { reply, .. } => {
                let _ = reply.send(Err(Error::NotConnected));
            }
        }
    }
}

/// State shared by the reader thread and every [`Handle`].
struct Shared {
    /// A `try_clone` of the current socket. Present from TCP connect until the link drops, so
    /// Login can be written through it; user actions additionally need `logged_in`.
    writer: Mutex<Option<TcpStream>>,
    pending: Mutex<HashMap<String, Pending>>,
    logged_in: AtomicBool,
    stopping: AtomicBool,
    /// Taken and dropped by `shutdown()`: a disconnected channel wakes every wait on it at once
    /// (backoff sleep, connect), which `thread::sleep` could not.
    stop_tx: Mutex<Option<Sender<()>>>,
    next_id: AtomicU64,
    events: AtomicU64,
    dropped: AtomicU64,
    reconnects: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// A poisoned lock only means another thread panicked while holding it; the data (a socket, a
/// map of waiters) is still usable, and the AMI link must outlive such a bug.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    fn new_action_id(&self) -> String {
        format!(
            "callme-{}",
            self.next_id.fetch_add(1, Ordering::Relaxed) + 1
        )
    }

    /// Returns the action with a non-empty ActionID, and that ID. Asterisk echoes an ActionID only
    /// when it is non-empty (ami.md §2.3), so an empty one is replaced.
    fn with_action_id(&self, action: Message) -> (Message, String) {
        if let Some(id) = action.action_id().filter(|id| !id.is_empty()) {
            let id = id.to_string();
            return (action, id);
        }
        let id = self.new_action_id();
        let mut out = Message::new();
        for (k, v) in action.iter() {
            if !k.eq_ignore_ascii_case("ActionID") {
                out.push(k, v);
            }
        }
        out.push("ActionID", &id);
        (out, id)
    }

    /// Writes one action. `need_login`: anything but Login gets "Permission denied" before the
    /// Login succeeded (ami.md §2.1; AsterNET #214 pinged too early after a restart).
    fn write(&self, action: &Message, need_login: bool) -> Result<(), Error> {
        // Encode before touching the socket: an action with CR/LF in it writes nothing at all.
        let bytes = encode_action(action)?;
        self.write_locked(lock(&self.writer), action, &bytes, need_login)
    }

    /// The reader thread's keepalive Ping. If a caller holds the writer (perhaps stuck in a slow
    /// write), skip this round instead of waiting: the reader must keep draining the socket,
    /// Asterisk drops sessions that fall 100 ms behind (ami.md §2.6). `Ok(false)`: not sent.
    fn try_write(&self, action: &Message) -> Result<bool, Error> {
        let bytes = encode_action(action)?;
        let guard = match self.writer.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return Ok(false),
        };
        self.write_locked(guard, action, &bytes, true)
            .map(|()| true)
    }

    fn write_locked(
        &self,
        mut guard: MutexGuard<'_, Option<TcpStream>>,
        action: &Message,
        bytes: &[u8],
        need_login: bool,
    ) -> Result<(), Error> {
        if need_login && !self.logged_in.load(Ordering::SeqCst) {
            return Err(Error::NotConnected);
        }
        let Some(stream) = guard.as_mut() else {
            return Err(Error::NotConnected);
        };
        if let Err(e) = stream.write_all(bytes).and_then(|()| stream.flush()) {
            // Part of the action may be on the wire: Asterisk would glue the next action to it.
            // Kill the link; the reader sees it and reconnects.
            let _ = stream.shutdown(Shutdown::Both);
            *guard = None;
            return Err(Error::Io(e));
        }
        drop(guard);
        if action
            .get("Action")
            .is_some_and(|a| a.eq_ignore_ascii_case("Ping"))
        {
            log::trace!("AMI action sent: {}", Redacted(action));
        } else {
            log::debug!("AMI action sent: {}", Redacted(action));
        }
        Ok(())
    }

    /// Marks the link down: no more writes, every waiting caller gets `NotConnected`. The writer
    /// is cleared *before* the waiters are failed, so a request either fails to write or is
    /// failed here; it can never wait on a dead link until its own timeout.
    fn go_down(&self) {
        self.logged_in.store(false, Ordering::SeqCst);
        if let Some(stream) = lock(&self.writer).take() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        let waiting: Vec<Pending> = lock(&self.pending).drain().map(|(_, p)| p).collect();
        for p in waiting {
            p.fail_not_connected();
        }
    }

    /// Hands a response, or an item of a pending list, to its waiting caller. Returns the message
    /// when it is an event for the channel.
    ///
    /// Classification looks at the first field only (ami.md §2.3 rule 1): `OriginateResponse`
    /// is an event with a `Response:` field *and* our ActionID, and must reach the channel. A
    /// non-event that has `Response:` somewhere else (a third-party module put `ActionID` first,
    /// rule 7) is still a response.
    fn route(&self, msg: Message) -> Option<Message> {
        let is_event = msg.event().is_some();
        if !is_event && msg.get("Response").is_none() {
            log::debug!("AMI message that is neither event nor response ignored");
            return None;
        }
        let Some(id) = msg.action_id().map(str::to_owned) else {
            if is_event {
                return Some(msg);
            }
            log::trace!("AMI response without ActionID ignored");
            return None;
        };
        let mut pending = lock(&self.pending);
        if !is_event {
            match pending.remove(&id) {
                Some(Pending::Response(tx)) => {
                    let _ = tx.send(Ok(msg));
                }
                Some(Pending::List { items, reply }) => {
                    let status = msg.get("Response").unwrap_or_default();
                    if status.eq_ignore_ascii_case("Error") {
                        let text = msg.get("Message").unwrap_or(status).to_string();
                        let _ = reply.send(Err(Error::Rejected(text)));
                    } else {
                        // The `EventList: start` ack; the items follow.
                        pending.insert(id, Pending::List { items, reply });
                    }
                }
                // Keepalive Pings and fire-and-forget actions: nobody waits.
                None => log::trace!("AMI response to {id} with no waiting caller"),
            }
            return None;
        }
        if let Some(Pending::List { items, .. }) = pending.get_mut(&id) {
            if is_list_end(&msg) {
                if let Some(Pending::List { items, reply }) = pending.remove(&id) {
                    // On the reader thread: every event before the Complete in the stream has
                    // been emitted, none after it.
                    let seen = self.events.load(Ordering::SeqCst);
                    let _ = reply.send(Ok((items, seen)));
                }
            } else {
                items.push(msg);
            }
            return None;
        }
        Some(msg)
    }
}

/// The end of an event list: `Event: <X>Complete`, or `EventList: Complete|Cancelled`. Both
/// are checked because Asterisk 11 `StatusComplete` has no `EventList` (ami.md §2.8).
fn is_list_end(msg: &Message) -> bool {
    let by_name = msg.event().is_some_and(|name| {
        let name = name.as_bytes();
        name.len() >= 8 && name[name.len() - 8..].eq_ignore_ascii_case(b"complete")
    });
    let by_flag = msg.get("EventList").is_some_and(|flag| {
        flag.eq_ignore_ascii_case("Complete") || flag.eq_ignore_ascii_case("Cancelled")
    });
    by_name || by_flag
}

/// Shows an action for the debug log with `Secret` and `Key` (MD5 login) masked.
struct Redacted<'a>(&'a Message);

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            let secret = k.eq_ignore_ascii_case("Secret") || k.eq_ignore_ascii_case("Key");
            write!(f, "{k}: {}", if secret { "***" } else { v })?;
        }
        Ok(())
    }
}

/// The application's side of the client: cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
}

impl Handle {
    /// Sends an action without waiting for its response; returns its ActionID (assigned if the
    /// action had none). Use it for `Originate` with `Async: true`, whose outcome arrives later
    /// as an `OriginateResponse` event with this ActionID.
    pub fn send(&self, action: Message) -> Result<String, Error> {
        let (action, id) = self.shared.with_action_id(action);
        self.shared.write(&action, true)?;
        Ok(id)
    }

    /// Sends an action and waits for the `Response` with the same ActionID. A `Response: Error`
    /// is returned as a message, not as an `Err`: the caller decides what it means.
    pub fn request(&self, action: Message, timeout: Duration) -> Result<Message, Error> {
        let (tx, rx) = bounded(1);
        self.exchange(
            action,
            Pending::Response(tx),
            rx,
            timeout,
            "no response to the action",
        )
    }

    /// Sends an event-list action (e.g. `CoreShowChannels`) and collects the events carrying
    /// its ActionID until `<X>Complete`. Returns the items only (neither the ack nor the
    /// Complete event). `Response: Error` instead of the ack gives [`Error::Rejected`].
    pub fn request_list(&self, action: Message, timeout: Duration) -> Result<Vec<Message>, Error> {
        self.request_list_at(action, timeout)
            .map(|(items, _)| items)
    }

    /// [`Handle::request_list`], plus where the list sits in the event stream: the number of
    /// events emitted (sent as [`Incoming::Event`], counted from the start) before its
    /// Complete. A consumer that has taken exactly that many events has seen the stream up to
    /// the list and nothing after it: a listing of channels then agrees with what it knows.
    pub fn request_list_at(
        &self,
        action: Message,
        timeout: Duration,
    ) -> Result<(Vec<Message>, u64), Error> {
        let (tx, rx) = bounded(1);
        let pending = Pending::List {
            items: Vec::new(),
            reply: tx,
        };
        self.exchange(action, pending, rx, timeout, "event list not completed")
    }

    fn exchange<T>(
        &self,
        action: Message,
        pending: Pending,
        rx: Receiver<Result<T, Error>>,
        timeout: Duration,
        what: &'static str,
    ) -> Result<T, Error> {
        let (action, id) = self.shared.with_action_id(action);
        {
            // Registered before writing: the answer can arrive before `write` returns.
            let mut waiting = lock(&self.shared.pending);
            if waiting.contains_key(&id) {
                return Err(Error::ActionIdInUse(id));
            }
            waiting.insert(id.clone(), pending);
        }
        if let Err(e) = self.shared.write(&action, true) {
            lock(&self.shared.pending).remove(&id);
            return Err(e);
        }
        match rx.recv_timeout(timeout) {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => {
                lock(&self.shared.pending).remove(&id);
                // The answer may have been routed between the timeout and the removal.
                rx.try_recv().unwrap_or(Err(Error::Timeout(what)))
            }
            Err(RecvTimeoutError::Disconnected) => Err(Error::NotConnected),
        }
    }

    pub fn is_logged_in(&self) -> bool {
        self.shared.logged_in.load(Ordering::SeqCst)
    }

    pub fn stats(&self) -> Stats {
        Stats {
            events: self.shared.events.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
            reconnects: self.shared.reconnects.load(Ordering::Relaxed),
            logged_in: self.is_logged_in(),
        }
    }

    /// Why the last connection attempt or link failed (the [`Error`] Display, e.g. "AMI login
    /// failed: Authentication failed ..."). Cleared by the next successful Login, so `/status`
    /// shows only a current problem; the log keeps the history.
    pub fn last_error(&self) -> Option<String> {
        lock(&self.shared.last_error).clone()
    }

    /// Stops the reader thread within about a second: no reconnect afterwards, pending requests
    /// fail with `NotConnected`. Closing the socket wakes a blocked read at once; dropping the
    /// stop sender wakes the backoff wait and a pending connect.
    pub fn shutdown(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        drop(lock(&self.shared.stop_tx).take());
        if let Some(stream) = lock(&self.shared.writer).as_ref() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// Starts the reader thread. It connects at once and keeps reconnecting until
/// [`Handle::shutdown`]; the thread ends after that (join it to be sure).
pub fn start(cfg: ClientConfig, events: Sender<Incoming>) -> (Handle, JoinHandle<()>) {
    let (stop_tx, stop_rx) = bounded(0);
    let shared = Arc::new(Shared {
        writer: Mutex::new(None),
        pending: Mutex::new(HashMap::new()),
        logged_in: AtomicBool::new(false),
        stopping: AtomicBool::new(false),
        stop_tx: Mutex::new(Some(stop_tx)),
        next_id: AtomicU64::new(0),
        events: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
        reconnects: AtomicU64::new(0),
        last_error: Mutex::new(None),
    });
    let tick = [MAX_TICK, cfg.ping_interval / 2, cfg.ping_timeout / 2]
        .into_iter()
        .min()
        .unwrap_or(MAX_TICK)
        .max(MIN_TICK);
    let worker = Worker {
        backoff: Backoff::new(cfg.reconnect_min, cfg.reconnect_max),
        write_timeout: cfg.ping_timeout.max(MIN_WRITE_TIMEOUT),
        cfg,
        shared: Arc::clone(&shared),
        events,
        stop_rx,
        tick,
        failures: 0,
        last_failure: None,
        warned_no_boot: false,
        announced: false,
    };
    let thread = thread::Builder::new()
        .name("ami-reader".to_string())
        .spawn(move || worker.run())
        .expect("cannot spawn the AMI reader thread");
    (Handle { shared }, thread)
}

type AmiReader = Reader<BufReader<TcpStream>>;

/// The reader thread's state.
struct Worker {
    cfg: ClientConfig,
    shared: Arc<Shared>,
    events: Sender<Incoming>,
    stop_rx: Receiver<()>,
    backoff: Backoff,
    /// Socket read timeout: how often timers are checked while nothing arrives.
    tick: Duration,
    write_timeout: Duration,
    /// Failures since the last successful Login, and the text of the last one: an identical
    /// failure is logged at debug so a wrong secret does not flood the journal.
    failures: u32,
    last_failure: Option<String>,
    /// The missing-FullyBooted warning is a configuration hint: once per process is enough.
    warned_no_boot: bool,
    /// `Connected` was sent for the current session, so a `Disconnected` is owed.
    announced: bool,
}

impl Worker {
    fn stopping(&self) -> bool {
        self.shared.stopping.load(Ordering::SeqCst)
    }

    fn run(mut self) {
        let mut first = true;
        while !self.stopping() {
            if !first {
                self.shared.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            first = false;
            let err = match self.session() {
                Ok(never) => match never {},
                Err(e) => e,
            };
            self.shared.go_down();
            if self.stopping() {
                break;
            }
            let reason = err.to_string();
            let delay = self.backoff.next_delay();
            self.log_failure(&err, &reason, delay);
            *lock(&self.shared.last_error) = Some(reason.clone());
            if self.announced {
                self.announced = false;
                let _ = self.events.send(Incoming::Disconnected { reason });
            }
            match self.stop_rx.recv_timeout(delay) {
                Err(RecvTimeoutError::Timeout) => {}
                _ => break,
            }
        }
        self.shared.go_down();
        if self.announced {
            let _ = self.events.send(Incoming::Disconnected {
                reason: "AMI client shut down".to_string(),
            });
        }
        log::info!("AMI client stopped");
    }

    fn log_failure(&mut self, err: &Error, reason: &str, delay: Duration) {
        self.failures += 1;
        if self.last_failure.as_deref() == Some(reason) {
            log::debug!(
                "{reason} (again, {} failures in a row); retrying in {delay:.1?}",
                self.failures
            );
        } else if matches!(err, Error::AuthFailed(_)) {
            log::error!("{reason}; retrying in {delay:.1?}");
        } else {
            log::warn!("{reason}; reconnecting in {delay:.1?}");
        }
        self.last_failure = Some(reason.to_string());
    }

    /// One connection, from TCP connect to the error that ends it.
    fn session(&mut self) -> Result<Infallible, Error> {
        log::debug!("AMI: connecting to {}:{}", self.cfg.host, self.cfg.port);
        let stream = self.connect()?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(self.tick))?;
        stream.set_write_timeout(Some(self.write_timeout))?;
        *lock(&self.shared.writer) = Some(stream.try_clone()?);
        // `shutdown()` sets the flag before it looks for the writer: if it looked too early,
        // the flag is visible here.
        if self.stopping() {
            return Err(Error::NotConnected);
        }
        let mut reader = Reader::new(BufReader::new(stream));

        let deadline = Instant::now() + self.cfg.connect_timeout;
        let banner = match self.next_frame(&mut reader, deadline, "waiting for the AMI banner")? {
            Frame::Banner(banner) => banner,
            Frame::Message(m) => {
                return Err(Error::Protocol(format!(
                    "expected the AMI banner, got a message starting with {:?}",
                    m.iter().next().map(|(k, _)| k).unwrap_or_default()
                )))
            }
        };
        let early = self.login(&mut reader)?;

        self.shared.logged_in.store(true, Ordering::SeqCst);
        self.backoff.reset();
        *lock(&self.shared.last_error) = None;
        let target = format!("{}:{}", self.cfg.host, self.cfg.port);
        if self.failures > 0 {
            log::warn!(
                "AMI logged in again to {target} as {:?} after {} failure(s)",
                self.cfg.username,
                self.failures
            );
        } else {
            log::info!(
                "AMI logged in to {target} as {:?} ({banner})",
                self.cfg.username
            );
        }
        self.failures = 0;
        self.last_failure = None;
        self.read_loop(reader, banner, early)
    }

    /// Resolving and connecting cannot be interrupted, so they run on a short-lived helper
    /// thread; `shutdown()` then does not have to wait out `connect_timeout`.
    fn connect(&self) -> Result<TcpStream, Error> {
        let (tx, rx) = bounded(1);
        let host = self.cfg.host.clone();
        let port = self.cfg.port;
        let timeout = self.cfg.connect_timeout.max(MIN_TICK);
        thread::Builder::new()
            .name("ami-connect".to_string())
            .spawn(move || {
                let _ = tx.send(connect_to(&host, port, timeout));
            })?;
        select! {
            recv(rx) -> result => result.unwrap_or(Err(Error::NotConnected)),
            recv(self.stop_rx) -> _ => Err(Error::NotConnected),
        }
    }

    /// Log in. Returns the events that came before the Login response: a busy server may
    /// already be streaming a call when the response goes out (issue #16: the first call after
    /// a start vanished without a word because its Newchannel was read here and thrown away).
    /// They are kept, in order, and delivered after `Connected` like every other event.
    fn login(&self, reader: &mut AmiReader) -> Result<Vec<(Message, SystemTime)>, Error> {
        let id = self.shared.new_action_id();
        let login = Message::from_pairs(&[
            ("Action", "Login"),
            ("Username", &self.cfg.username),
            ("Secret", &self.cfg.secret),
            ("ActionID", &id),
        ]);
        self.shared.write(&login, false)?;
        let deadline = Instant::now() + self.cfg.connect_timeout + LOGIN_GRACE;
        let mut early = EarlyEvents::new(EARLY_EVENTS_MAX);
        loop {
            let Frame::Message(msg) =
                self.next_frame(reader, deadline, "waiting for the Login response")?
            else {
                continue;
            };
            if msg.event().is_some() {
                early.push(msg, SystemTime::now());
                continue;
            }
            if msg.action_id().is_some_and(|a| a != id) {
                continue;
            }
            let status = msg.get("Response").unwrap_or_default();
            if status.eq_ignore_ascii_case("Success") {
                if early.dropped > 0 {
                    log::warn!(
                        "AMI: {} events came before the Login response; kept the last \
                         {EARLY_EVENTS_MAX}, dropped {}",
                        early.kept.len() + early.dropped,
                        early.dropped
                    );
                } else if !early.kept.is_empty() {
                    log::info!(
                        "AMI: {} event(s) came before the Login response; kept, delivered \
                         after it",
                        early.kept.len()
                    );
                }
                return Ok(early.kept.into());
            }
            let text = msg
                .get("Message")
                .filter(|m| !m.is_empty())
                .unwrap_or(status);
            return Err(Error::AuthFailed(text.to_string()));
        }
    }

    /// The next frame before `deadline`; used before the read loop, where no timers run yet.
    fn next_frame(
        &self,
        reader: &mut AmiReader,
        deadline: Instant,
        what: &'static str,
    ) -> Result<Frame, Error> {
        loop {
            match reader.read_frame() {
                Ok(Some(frame)) => return Ok(frame),
                Ok(None) => return Err(closed_by_peer()),
                Err(e) if is_timeout(&e) => {
                    if self.stopping() {
                        return Err(Error::NotConnected);
                    }
                    if Instant::now() >= deadline {
                        return Err(Error::Timeout(what));
                    }
                }
                Err(e) => return Err(Error::Io(e)),
            }
        }
    }

    /// Reads until the link fails. Waits on nothing but the socket: the read timeout (`tick`)
    /// wakes it to run the keepalive and FullyBooted timers. This relies on the codec's reader
    /// being resumable after a timeout in the middle of a message.
    fn read_loop(
        &mut self,
        mut reader: AmiReader,
        banner: String,
        early: Vec<(Message, SystemTime)>,
    ) -> Result<Infallible, Error> {
        let dropped_base = self.shared.dropped.load(Ordering::Relaxed);
        let mut keepalive = Keepalive::new(
            Instant::now(),
            self.cfg.ping_interval,
            self.cfg.ping_timeout,
        );
        // Until FullyBooted (or its timeout) events are held back, so the consumer gets
        // `Connected` first and every event after it.
        let mut boot_deadline = Some(Instant::now() + self.cfg.fully_booted_timeout);
        // The events that came with the Login response go first.
        let mut held: Vec<(Message, SystemTime)> = early;
        let mut position = reader.position();
        loop {
            if self.stopping() {
                return Err(Error::NotConnected);
            }
            let now = Instant::now();
            if reader.position() != position {
                // Bytes of a partial message count as "data" for the dead-link check.
                position = reader.position();
                keepalive.data();
            }
            keepalive.check(now)?;
            if keepalive.due(now) {
                let ping = Message::from_pairs(&[
                    ("Action", "Ping"),
                    ("ActionID", &self.shared.new_action_id()),
                ]);
                if self.shared.try_write(&ping)? {
                    keepalive.pinged(now);
                }
            }
            if boot_deadline.is_some_and(|d| now >= d) {
                boot_deadline = None;
                if !self.warned_no_boot {
                    self.warned_no_boot = true;
                    log::warn!(
                        "AMI: no FullyBooted within {:?} after Login; the AMI user probably lacks \
                         the `system` read class in manager.conf (or Asterisk is still booting); \
                         going on without it",
                        self.cfg.fully_booted_timeout
                    );
                }
                self.announce(&banner, &mut held);
            }

            let frame = match reader.read_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => return Err(closed_by_peer()),
                Err(e) if is_timeout(&e) => continue,
                Err(e) => return Err(Error::Io(e)),
            };
            position = reader.position();
            keepalive.data();
            self.shared
                .dropped
                .store(dropped_base + reader.dropped(), Ordering::Relaxed);
            let Frame::Message(msg) = frame else { continue };
            let at = SystemTime::now();
            let Some(msg) = self.shared.route(msg) else {
                continue;
            };
            let name = msg.event().unwrap_or_default();
            let booted = name.eq_ignore_ascii_case("FullyBooted");
            // Asterisk closes the session right after `Shutdown` (ami.md §2.6); treating it as
            // the end of the link avoids waiting for the EOF or the ping timeout.
            let shutdown = name.eq_ignore_ascii_case("Shutdown").then(|| {
                format!(
                    "Shutdown: {}, Restart: {}",
                    msg.get("Shutdown").unwrap_or("?"),
                    msg.get("Restart").unwrap_or("?")
                )
            });
            if boot_deadline.is_some() {
                held.push((msg, at));
                if booted {
                    boot_deadline = None;
                    self.announce(&banner, &mut held);
                }
            } else {
                self.emit(msg, at);
            }
            if let Some(what) = shutdown {
                return Err(Error::AsteriskShutdown(what));
            }
        }
    }

    fn announce(&mut self, banner: &str, held: &mut Vec<(Message, SystemTime)>) {
        self.announced = true;
        let _ = self.events.send(Incoming::Connected {
            banner: banner.to_string(),
        });
        for (msg, at) in held.drain(..) {
            self.emit(msg, at);
        }
    }

    fn emit(&self, msg: Message, at: SystemTime) {
        // Counted before it is sent: a list completing later reports it as emitted.
        self.shared.events.fetch_add(1, Ordering::SeqCst);
        // A dropped receiver means the daemon is stopping; requests may still be in flight.
        let _ = self.events.send(Incoming::Event { msg, at });
    }
}

/// Events read while waiting for the Login response: the newest `max` are kept, in order;
/// older ones beyond that are counted and dropped.
struct EarlyEvents {
    kept: VecDeque<(Message, SystemTime)>,
    dropped: usize,
    max: usize,
}

impl EarlyEvents {
    fn new(max: usize) -> EarlyEvents {
        EarlyEvents {
            kept: VecDeque::new(),
            dropped: 0,
            max,
        }
    }

    fn push(&mut self, msg: Message, at: SystemTime) {
        if self.kept.len() >= self.max {
            self.kept.pop_front();
            self.dropped += 1;
        }
        self.kept.push_back((msg, at));
    }
}

fn connect_to(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, Error> {
    let addr = format!("{host}:{port}");
    let fail = |source| Error::Connect {
        addr: addr.clone(),
        source,
    };
    let mut last = io::Error::new(ErrorKind::NotFound, "name resolved to no address");
    for sock in (host, port).to_socket_addrs().map_err(fail)? {
        match TcpStream::connect_timeout(&sock, timeout) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(fail(last))
}

fn closed_by_peer() -> Error {
    Error::Io(io::Error::new(
        ErrorKind::UnexpectedEof,
        "Asterisk closed the connection",
    ))
}

/// A socket read timeout shows up as WouldBlock (Unix) or TimedOut (Windows).
fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}

/// Ping bookkeeping. Asterisk sends no keepalive (ami.md §2.6), so a half-open connection (PBX
/// host gone, NAT state lost) is noticed only by asking and hearing nothing back.
struct Keepalive {
    interval: Duration,
    timeout: Duration,
    next_ping: Instant,
    /// When the oldest Ping not yet followed by any data was sent.
    waiting_since: Option<Instant>,
}

impl Keepalive {
    fn new(now: Instant, interval: Duration, timeout: Duration) -> Self {
        Keepalive {
            interval,
            timeout,
            next_ping: now + interval,
            waiting_since: None,
        }
    }

    fn data(&mut self) {
        self.waiting_since = None;
    }

    fn due(&self, now: Instant) -> bool {
        now >= self.next_ping
    }

    fn pinged(&mut self, now: Instant) {
        self.next_ping = now + self.interval;
        self.waiting_since.get_or_insert(now);
    }

    fn check(&self, now: Instant) -> Result<(), Error> {
        match self.waiting_since {
            Some(since) if now.duration_since(since) >= self.timeout => Err(Error::Timeout(
                "no data from Asterisk within ping_timeout after a Ping (dead link)",
            )),
            _ => Ok(()),
        }
    }
}

/// Capped exponential backoff with ±20% jitter, so that several daemons (or a retry storm after
/// an Asterisk restart) do not hit the PBX in lockstep.
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
    rng: XorShift,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        let min = min.max(MIN_BACKOFF);
        Backoff {
            min,
            max: max.max(min),
            next: min,
            rng: XorShift::from_clock(),
        }
    }

    fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = base.checked_mul(2).unwrap_or(self.max).min(self.max);
        base.mul_f64(0.8 + 0.4 * self.rng.next_f64())
    }

    fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Jitter needs no quality randomness, and the crate keeps its dependency list short.
struct XorShift(u64);

impl XorShift {
    fn from_clock() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9E37_79B9_7F4A_7C15);
        XorShift(nanos | 1)
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_before_the_login_response_are_kept_up_to_the_bound() {
        let mut early = EarlyEvents::new(3);
        for i in 0..5 {
            let n = i.to_string();
            early.push(
                Message::from_pairs(&[("Event", "Newchannel"), ("Uniqueid", &n)]),
                SystemTime::now(),
            );
        }
        let kept: Vec<&str> = early
            .kept
            .iter()
            .filter_map(|(m, _)| m.get("Uniqueid"))
            .collect();
        assert_eq!(kept, ["2", "3", "4"], "the newest, in order");
        assert_eq!(early.dropped, 2);
    }

    fn shared() -> Shared {
        Shared {
            writer: Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
            logged_in: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            stop_tx: Mutex::new(None),
            next_id: AtomicU64::new(0),
            events: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_bounded_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        for base in [100u64, 200, 400, 800, 1000, 1000] {
            let d = b.next_delay().as_secs_f64() * 1000.0;
            let base = base as f64;
            assert!(
                d >= base * 0.8 - 0.001 && d <= base * 1.2 + 0.001,
                "{d} vs {base}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(120));
    }

    #[test]
    fn backoff_never_zero() {
        let mut b = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert!(b.next_delay() >= MIN_BACKOFF.mul_f64(0.8));
    }

    #[test]
    fn jitter_spreads() {
        let mut rng = XorShift::from_clock();
        let xs: Vec<f64> = (0..1000).map(|_| rng.next_f64()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        assert!(xs.iter().any(|&x| x < 0.1) && xs.iter().any(|&x| x > 0.9));
    }

    #[test]
    fn redacts_secret_and_key() {
        let m = Message::from_pairs(&[
            ("Action", "Login"),
            ("Username", "callme"),
            ("Secret", "hunter2"),
            ("key", "abc"),
        ]);
        let s = Redacted(&m).to_string();
        assert_eq!(s, "Action: Login, Username: callme, Secret: ***, key: ***");
    }

    #[test]
    fn config_debug_hides_secret() {
        let cfg = ClientConfig {
            secret: "hunter2".to_string(),
            ..ClientConfig::default()
        };
        assert!(!format!("{cfg:?}").contains("hunter2"));
    }

    #[test]
    fn action_id_is_assigned_and_empty_one_replaced() {
        let s = shared();
        let (m, id) = s.with_action_id(Message::from_pairs(&[("Action", "Ping")]));
        assert_eq!(id, "callme-1");
        assert_eq!(m.action_id(), Some("callme-1"));
        let (m, id) =
            s.with_action_id(Message::from_pairs(&[("Action", "Ping"), ("ActionID", "")]));
        assert_eq!(id, "callme-2");
        assert_eq!(m.get_all("ActionID").collect::<Vec<_>>(), ["callme-2"]);
        let (_, id) = s.with_action_id(Message::from_pairs(&[("ActionID", "mine")]));
        assert_eq!(id, "mine");
    }

    #[test]
    fn originate_response_event_is_not_swallowed_by_a_waiting_request() {
        let s = shared();
        let (tx, rx) = bounded(1);
        s.pending
            .lock()
            .unwrap()
            .insert("o1".to_string(), Pending::Response(tx));
        let ev = Message::from_pairs(&[
            ("Event", "OriginateResponse"),
            ("ActionID", "o1"),
            ("Response", "Success"),
        ]);
        assert_eq!(s.route(ev.clone()), Some(ev));
        assert!(rx.try_recv().is_err());
        // A response with ActionID first (third-party module) is still a response.
        let resp = Message::from_pairs(&[("ActionID", "o1"), ("Response", "Success")]);
        assert_eq!(s.route(resp.clone()), None);
        assert_eq!(rx.try_recv().unwrap().unwrap(), resp);
    }

    #[test]
    fn list_items_go_to_the_caller_until_complete() {
        let s = shared();
        let (tx, rx) = bounded(1);
        s.pending.lock().unwrap().insert(
            "l1".to_string(),
            Pending::List {
                items: Vec::new(),
                reply: tx,
            },
        );
        let ack = Message::from_pairs(&[
            ("Response", "Success"),
            ("ActionID", "l1"),
            ("EventList", "start"),
        ]);
        let item = Message::from_pairs(&[("Event", "Status"), ("ActionID", "l1")]);
        // Asterisk 11: no EventList on the Complete event, only the name.
        let done = Message::from_pairs(&[("Event", "StatusComplete"), ("ActionID", "l1")]);
        let other = Message::from_pairs(&[("Event", "Newchannel")]);
        assert_eq!(s.route(ack), None);
        assert_eq!(s.route(item.clone()), None);
        assert_eq!(s.route(other.clone()), Some(other));
        assert!(rx.try_recv().is_err());
        assert_eq!(s.route(done), None);
        assert_eq!(rx.try_recv().unwrap().unwrap(), (vec![item], 0));
        assert!(s.pending.lock().unwrap().is_empty());
    }

    #[test]
    fn list_rejected_by_asterisk() {
        let s = shared();
        let (tx, rx) = bounded(1);
        s.pending.lock().unwrap().insert(
            "l2".to_string(),
            Pending::List {
                items: Vec::new(),
                reply: tx,
            },
        );
        let err = Message::from_pairs(&[
            ("Response", "Error"),
            ("ActionID", "l2"),
            ("Message", "Permission denied"),
        ]);
        assert_eq!(s.route(err), None);
        match rx.try_recv().unwrap() {
            Err(Error::Rejected(m)) => assert_eq!(m, "Permission denied"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn keepalive_declares_dead_link_only_without_data() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut k = Keepalive::new(t0, ms(200), ms(300));
        assert!(!k.due(t0 + ms(100)));
        assert!(k.due(t0 + ms(200)));
        k.pinged(t0 + ms(200));
        assert!(k.check(t0 + ms(400)).is_ok());
        k.data();
        assert!(k.check(t0 + ms(900)).is_ok());
        k.pinged(t0 + ms(900));
        k.pinged(t0 + ms(1100)); // a second Ping does not restart the clock
        assert!(k.check(t0 + ms(1150)).is_ok());
        assert!(k.check(t0 + ms(1200)).is_err());
    }
}
