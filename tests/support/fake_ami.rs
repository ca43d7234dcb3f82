//! Fake AMI server: a real TCP listener on 127.0.0.1:0 that speaks enough of Asterisk's manager
//! protocol (ami.md §2, §4) to drive the client through login, keepalive, event lists,
//! originate, dead links and reconnects. Every test binary shares it; it stops when dropped.
//!
//! What it mimics, and why it matters:
//! - the banner is written alone on accept, without a blank line (ami.md §2.1);
//! - anything but Login/Logoff/Challenge before a successful Login gets `Permission denied`
//!   (ami.md §2.1), so a client that pings too early shows up in [`FakeAmi::denied`];
//! - a wrong secret gets `Response: Error` / `Authentication failed` and the socket is closed
//!   (ami.md §2.3; the real server waits 1 s first, the fake answers at once to keep tests fast);
//! - list answers are written in one go, items carrying the ActionID (ami.md §2.6, §2.8);
//! - what `callme doctor` asks (ami.md §2.7, §3): `ListCommands` lists the actions the
//!   account's write classes allow, `CoreSettings`, `ModuleCheck`, and `Command` (14+ form,
//!   `Output:` lines) for `manager show user`, `manager show settings`, `dialplan show`,
//!   `module show like` and `core show version`. By default every action is permitted; after
//!   [`FakeAmi::set_classes`] an action outside the write classes gets `Permission denied` and
//!   `FullyBooted` needs the `system` read class (the stream of `set_stream` is not filtered).

use std::io::{BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use callme::ami::{Frame, Message, Reader};

pub const BANNER: &str = "Asterisk Call Manager/9.0.0";

/// Kept here too because many tests import it from the fake AMI.
pub use super::wait::wait_until;

pub struct FakeAmi {
    addr: SocketAddr,
    inner: Arc<Inner>,
    accept: Option<JoinHandle<()>>,
}

struct Inner {
    state: Mutex<State>,
    stopping: AtomicBool,
}

struct State {
    username: String,
    secret: String,
    stream: Vec<u8>,
    actions: Vec<(Instant, Message)>,
    logins: usize,
    accepted: usize,
    connections: usize,
    denied: usize,
    current: Option<Conn>,
    open: Vec<Arc<Mutex<TcpStream>>>,
    handlers: Vec<JoinHandle<()>>,
    channels: Vec<Vec<(String, String)>>,
    /// When set, `CoreShowChannels` answers what this returns at that moment (a live PBX).
    source: Option<ChannelSource>,
    /// New connections are closed at once, before the banner: Asterisk down or restarting.
    refusing: bool,
    /// One entry per accepted connection, by id - 1.
    conn_log: Vec<ConnRecord>,
    originate_ok: bool,
    silent: bool,
    fully_booted: bool,
    /// `(read, write)` classes of the account; `None`: everything permitted.
    classes: Option<(Vec<String>, Vec<String>)>,
    /// manager.conf `timestampevents`: `Timestamp:` on the events the fake writes itself.
    timestamps: bool,
    /// Dialplan contexts `dialplan show` finds.
    contexts: Vec<String>,
    /// Loaded modules, e.g. `chan_pjsip.so`.
    modules: Vec<String>,
}

/// Produces the `CoreShowChannel` items of the moment (see [`FakeAmi::set_channel_source`]).
pub type ChannelSource = Arc<dyn Fn() -> Vec<Vec<(String, String)>> + Send + Sync>;

/// When a connection logged in and when it closed (either side), for judging afterwards
/// whether the client had the chance to read what was written to it.
#[derive(Clone, Copy, Debug)]
pub struct ConnRecord {
    pub logged_in: Option<Instant>,
    pub closed: Option<Instant>,
}

/// Asterisk's version as `CoreSettings` and `core show version` give it (AMI 9.0.0 = 20).
pub const ASTERISK_VERSION: &str = "20.5.2";

/// The actions the fake knows, with their synopsis and classes (any one of them permits
/// the action; none = always permitted), as `ListCommands` prints them.
const ACTIONS: &[(&str, &str, &[&str])] = &[
    ("Ping", "Keepalive command.", &[]),
    ("Login", "Login Manager.", &[]),
    ("Logoff", "Logoff Manager.", &[]),
    ("ListCommands", "List available manager commands.", &[]),
    ("Events", "Control Event Flow.", &[]),
    ("Originate", "Originate a call.", &["originate"]),
    (
        "CoreShowChannels",
        "List currently active channels.",
        &["system", "reporting"],
    ),
    (
        "CoreSettings",
        "Show PBX core settings (version etc).",
        &["system", "reporting"],
    ),
    (
        "Status",
        "List channel status.",
        &["system", "call", "reporting"],
    ),
    ("Command", "Execute Asterisk CLI Command.", &["command"]),
    ("ModuleCheck", "Check if module is loaded.", &["system"]),
    (
        "Setvar",
        "Sets a channel variable or function value.",
        &["call"],
    ),
    ("Hangup", "Hangup channel.", &["system", "call"]),
];

/// The write side of one accepted connection; the mutex keeps a reply and a `push` from
/// interleaving.
#[derive(Clone)]
struct Conn {
    id: usize,
    out: Arc<Mutex<TcpStream>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Conn {
    fn write(&self, bytes: &[u8]) -> bool {
        lock(&self.out).write_all(bytes).is_ok()
    }

    fn close(&self) {
        let _ = lock(&self.out).shutdown(Shutdown::Both);
    }
}

impl FakeAmi {
    /// Listens on 127.0.0.1:0 and accepts `username`/`secret` as the only valid login.
    pub fn start(username: &str, secret: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake AMI");
        let addr = listener.local_addr().expect("fake AMI address");
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                username: username.to_string(),
                secret: secret.to_string(),
                stream: Vec::new(),
                actions: Vec::new(),
                logins: 0,
                accepted: 0,
                connections: 0,
                denied: 0,
                current: None,
                open: Vec::new(),
                handlers: Vec::new(),
                channels: Vec::new(),
                source: None,
                refusing: false,
                conn_log: Vec::new(),
                originate_ok: true,
                silent: false,
                fully_booted: true,
                classes: None,
                timestamps: false,
                contexts: Vec::new(),
                modules: vec!["chan_pjsip.so".to_string()],
            }),
            stopping: AtomicBool::new(false),
        });
        let acceptor = Arc::clone(&inner);
        let accept = thread::spawn(move || {
            for stream in listener.incoming() {
                if acceptor.stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let id = {
                    let mut st = acceptor.lock();
                    if st.refusing {
                        // Dropped unanswered: the client sees the connection close at once.
                        drop(st);
                        drop(stream);
                        continue;
                    }
                    st.connections += 1;
                    st.conn_log.push(ConnRecord {
                        logged_in: None,
                        closed: None,
                    });
                    st.connections
                };
                let served = Arc::clone(&acceptor);
                let handler = thread::spawn(move || served.serve(id, stream));
                acceptor.lock().handlers.push(handler);
            }
        });
        FakeAmi {
            addr,
            inner,
            accept: Some(accept),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Bytes written to every new logged-in connection right after the Login response (and the
    /// FullyBooted event), in the same write: e.g. the events of a capture.
    pub fn set_stream(&self, bytes: Vec<u8>) {
        self.inner.lock().stream = bytes;
    }

    /// Writes raw bytes to the current logged-in connection now. False if there is none.
    pub fn push(&self, bytes: &[u8]) -> bool {
        let current = self.inner.lock().current.clone();
        current.is_some_and(|c| c.write(bytes))
    }

    /// Closes the current logged-in connection, as a network failure or an Asterisk crash would.
    pub fn drop_connection(&self) {
        let mut st = self.inner.lock();
        if let Some(c) = st.current.take() {
            c.close();
            st.mark_closed(c.id);
        }
    }

    /// Writes `bytes` to the current logged-in connection, running `apply` first under the
    /// same lock as `CoreShowChannels` answers: a live PBX changes its channels and sends the
    /// event as one step, so a listing is never newer than the events already sent nor older
    /// than the ones that follow it. Returns the id of the connection written to, if any.
    pub fn emit(&self, bytes: &[u8], apply: impl FnOnce()) -> Option<usize> {
        let st = self.inner.lock();
        apply();
        let current = st.current.clone()?;
        current.write(bytes).then_some(current.id)
    }

    /// Answer `CoreShowChannels` from `source`, called at the moment of each request (under the
    /// lock [`FakeAmi::emit`] holds), instead of the fixed list of `set_core_show_channels`.
    pub fn set_channel_source(&self, source: ChannelSource) {
        self.inner.lock().source = Some(source);
    }

    /// true: close every new connection at once (Asterisk down); false: serve them again.
    /// Does not touch the current connection (see [`FakeAmi::drop_connection`]).
    pub fn set_refusing(&self, on: bool) {
        self.inner.lock().refusing = on;
    }

    /// Login and close times of every accepted connection, by id - 1.
    pub fn connection_log(&self) -> Vec<ConnRecord> {
        self.inner.lock().conn_log.clone()
    }

    /// Whether a client is logged in right now.
    pub fn has_client(&self) -> bool {
        self.inner.lock().current.is_some()
    }

    /// Every action received, all connections, in order (Login included).
    pub fn actions(&self) -> Vec<Message> {
        self.inner
            .lock()
            .actions
            .iter()
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// The actions whose `Action:` is `name` (case-insensitive), in order.
    pub fn actions_named(&self, name: &str) -> Vec<Message> {
        self.actions()
            .into_iter()
            .filter(|m| is_action(m, name))
            .collect()
    }

    /// When each action named `name` arrived: lets a test check the spacing of retries.
    pub fn action_times(&self, name: &str) -> Vec<Instant> {
        self.inner
            .lock()
            .actions
            .iter()
            .filter(|(_, m)| is_action(m, name))
            .map(|(t, _)| *t)
            .collect()
    }

    /// Login actions received, accepted or not.
    pub fn logins(&self) -> usize {
        self.inner.lock().logins
    }

    /// Logins answered with `Authentication accepted`.
    pub fn accepted_logins(&self) -> usize {
        self.inner.lock().accepted
    }

    /// TCP connections accepted.
    pub fn connections(&self) -> usize {
        self.inner.lock().connections
    }

    /// Actions answered `Permission denied` because they came before a successful Login.
    pub fn denied(&self) -> usize {
        self.inner.lock().denied
    }

    /// Waits until at least `n` Login actions were received.
    pub fn wait_logins(&self, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.logins() >= n)
    }

    /// Waits until at least `n` Logins were accepted.
    pub fn wait_accepted(&self, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.accepted_logins() >= n)
    }

    /// Waits for an action named `name` and returns the latest one received.
    pub fn wait_action(&self, name: &str, timeout: Duration) -> Option<Message> {
        let mut found = None;
        wait_until(timeout, || {
            found = self.actions_named(name).pop();
            found.is_some()
        });
        found
    }

    /// The channels answered to `CoreShowChannels`: one `CoreShowChannel` event per item
    /// (fields in the given order, after `Event` and `ActionID`), then the Complete event.
    pub fn set_core_show_channels(&self, items: Vec<Vec<(String, String)>>) {
        self.inner.lock().channels = items;
    }

    /// true: `Originate successfully queued` (plus an `OriginateResponse` event if `Async`
    /// is true); false: `Response: Error` / `Originate failed`.
    pub fn set_originate_response(&self, ok: bool) {
        self.inner.lock().originate_ok = ok;
    }

    /// Stops answering anything, including the banner of new connections, without closing:
    /// a dead link as seen by a client (half-open TCP). Actions are still recorded.
    pub fn set_silent(&self, silent: bool) {
        self.inner.lock().silent = silent;
    }

    /// false: no `FullyBooted` after Login, like a user without the `system` read class.
    pub fn set_fully_booted(&self, on: bool) {
        self.inner.lock().fully_booted = on;
    }

    /// The account's classes, as `read =` and `write =` in manager.conf: actions outside
    /// `write` get `Permission denied`, `ListCommands` lists only the others, and
    /// `manager show user` shows both.
    pub fn set_classes(&self, read: &[&str], write: &[&str]) {
        let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        self.inner.lock().classes = Some((own(read), own(write)));
    }

    /// manager.conf `timestampevents`: `Timestamp:` on FullyBooted, and what
    /// `manager show settings` says.
    pub fn set_timestamp_events(&self, on: bool) {
        self.inner.lock().timestamps = on;
    }

    /// The dialplan contexts `dialplan show` finds (none by default).
    pub fn set_dialplan_contexts(&self, contexts: &[&str]) {
        self.inner.lock().contexts = contexts.iter().map(|s| s.to_string()).collect();
    }

    /// The loaded modules (`chan_pjsip.so` by default).
    pub fn set_modules(&self, modules: &[&str]) {
        self.inner.lock().modules = modules.iter().map(|s| s.to_string()).collect();
    }

    /// Changes the accepted secret, as an operator fixing manager.conf would.
    pub fn set_secret(&self, secret: &str) {
        self.inner.lock().secret = secret.to_string();
    }
}

impl Drop for FakeAmi {
    fn drop(&mut self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        // Wake the blocking accept() so the thread sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        // A handler registers its socket in `open` and then checks `stopping`, so every handler
        // either gets its socket closed here or exits on its own.
        let (open, handlers) = {
            let mut st = self.inner.lock();
            st.current = None;
            (
                std::mem::take(&mut st.open),
                std::mem::take(&mut st.handlers),
            )
        };
        for out in open {
            let _ = lock(&out).shutdown(Shutdown::Both);
        }
        for h in handlers {
            let _ = h.join();
        }
    }
}

/// `<sec>.<usec>` of now, as Asterisk writes `Timestamp:`.
fn timestamp() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:06}", now.as_secs(), now.subsec_micros())
}

fn is_action(m: &Message, name: &str) -> bool {
    m.get("Action")
        .is_some_and(|a| a.eq_ignore_ascii_case(name))
}

impl State {
    fn mark_closed(&mut self, id: usize) {
        if let Some(r) = self.conn_log.get_mut(id - 1) {
            r.closed.get_or_insert_with(Instant::now);
        }
    }

    /// Whether the account may run `action` (lower case).
    fn permits(&self, action: &str) -> bool {
        let Some((_, write)) = &self.classes else {
            return true;
        };
        match ACTIONS
            .iter()
            .find(|(a, _, _)| a.eq_ignore_ascii_case(action))
        {
            Some((_, _, [])) => true,
            Some((_, _, any)) => any
                .iter()
                .any(|c| write.iter().any(|w| w == c || w == "all")),
            None => true,
        }
    }

    fn reads(&self, class: &str) -> bool {
        self.classes
            .as_ref()
            .is_none_or(|(read, _)| read.iter().any(|r| r == class || r == "all"))
    }

    /// CLI output of `cmd` (the `Command` action): `(success, lines)`.
    fn cli(&self, cmd: &str) -> (bool, Vec<String>) {
        let words: Vec<&str> = cmd.split_whitespace().collect();
        let lines = |v: Vec<String>| (true, v);
        match words.as_slice() {
            ["manager", "show", "user", name] if *name == self.username => {
                let (read, write) = self.classes.clone().unwrap_or_else(|| {
                    let all: Vec<String> = ["system", "call", "log", "verbose", "command", "agent",
                        "user", "config", "dtmf", "reporting", "cdr", "dialplan", "originate"]
                        .iter()
                        .map(|s| s.to_string())
                        .collect();
                    (all.clone(), all)
                });
                lines(vec![
                    String::new(),
                    format!("          username: {name}"),
                    "            secret: <Set>".to_string(),
                    "               ACL: yes".to_string(),
                    format!("         read perm: {}", read.join(",")),
                    format!("        write perm: {}", write.join(",")),
                    "   displayconnects: yes".to_string(),
                    "allowmultiplelogin: yes".to_string(),
                    "         Variables: ".to_string(),
                    String::new(),
                ])
            }
            ["manager", "show", "user", name] => (
                false,
                vec![format!("There is no manager called {name}")],
            ),
            ["manager", "show", "settings"] => lines(vec![
                String::new(),
                "Global Settings:".to_string(),
                "----------------".to_string(),
                "  Manager (AMI):             Yes".to_string(),
                "  Web Manager (AMI/HTTP):    No".to_string(),
                "  TCP Bindaddress:           0.0.0.0:5038".to_string(),
                "  Display connects:          Yes".to_string(),
                format!(
                    "  Timestamp events:          {}",
                    if self.timestamps { "Yes" } else { "No" }
                ),
                "  Channel vars:              ".to_string(),
                "  Debug:                     No".to_string(),
            ]),
            ["dialplan", "show", ctx] if self.contexts.iter().any(|c| c == ctx) => lines(vec![
                format!("[ Context '{ctx}' created by 'pbx_config' ]"),
                "  's' =>            1. Set(CallMeLINKEDID=${CHANNEL(linkedid)})      [extensions_custom.conf:45]".to_string(),
                String::new(),
                "-= 1 extension (11 priorities) in 1 context. =-".to_string(),
            ]),
            ["dialplan", "show", ctx] => (
                false,
                vec![format!("There is no existence of '{ctx}' context")],
            ),
            ["module", "show", "like", pattern] => {
                let mut out = vec![
                    "Module                         Description                              Use Count  Status      Support Level".to_string(),
                ];
                let found: Vec<&String> =
                    self.modules.iter().filter(|m| m.contains(pattern)).collect();
                for m in &found {
                    out.push(format!(
                        "{m:<30} {:<40} 0          Running              core",
                        "Channel Driver"
                    ));
                }
                out.push(format!("{} modules loaded", found.len()));
                lines(out)
            }
            ["core", "show", "version"] => lines(vec![format!(
                "Asterisk {ASTERISK_VERSION} built by root @ fakepbx on a x86_64 running Linux on 2026-01-01 00:00:00 UTC"
            )]),
            _ => (
                false,
                vec![format!(
                    "No such command '{cmd}' (type 'core show help {cmd}' for other possible commands)"
                )],
            ),
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn serve(self: Arc<Self>, id: usize, stream: TcpStream) {
        let Ok(out) = stream.try_clone() else { return };
        let conn = Conn {
            id,
            out: Arc::new(Mutex::new(out)),
        };
        let silent = {
            let mut st = self.lock();
            st.open.push(Arc::clone(&conn.out));
            st.silent
        };
        if self.stopping.load(Ordering::SeqCst) {
            return;
        }
        if !silent {
            conn.write(format!("{BANNER}\r\n").as_bytes());
        }
        let mut reader = Reader::new(BufReader::new(stream));
        let mut logged_in = false;
        while let Ok(Some(frame)) = reader.read_frame() {
            let Frame::Message(action) = frame else {
                continue;
            };
            if !self.answer(&conn, &mut logged_in, action) {
                break;
            }
        }
        conn.close();
        let mut st = self.lock();
        if st.current.as_ref().is_some_and(|c| c.id == id) {
            st.current = None;
        }
        st.mark_closed(id);
    }

    /// Records and answers one action. Returns false when the connection must close.
    fn answer(&self, conn: &Conn, logged_in: &mut bool, action: Message) -> bool {
        let name = action
            .get("Action")
            .unwrap_or_default()
            .to_ascii_lowercase();
        let head = |status: &str| match action.action_id() {
            Some(id) => format!("Response: {status}\r\nActionID: {id}\r\n"),
            None => format!("Response: {status}\r\n"),
        };
        let id_line = action
            .action_id()
            .map(|id| format!("ActionID: {id}\r\n"))
            .unwrap_or_default();

        let mut st = self.lock();
        st.actions.push((Instant::now(), action.clone()));
        if name == "login" {
            st.logins += 1;
        }
        if st.silent {
            return true;
        }
        if !*logged_in && !matches!(name.as_str(), "login" | "logoff" | "challenge") {
            st.denied += 1;
            drop(st);
            return conn
                .write(format!("{}Message: Permission denied\r\n\r\n", head("Error")).as_bytes());
        }
        if *logged_in && !st.permits(&name) {
            drop(st);
            return conn
                .write(format!("{}Message: Permission denied\r\n\r\n", head("Error")).as_bytes());
        }
        match name.as_str() {
            "login" => {
                let good = action.get("Username") == Some(st.username.as_str())
                    && action.get("Secret") == Some(st.secret.as_str());
                if !good {
                    drop(st);
                    conn.write(
                        format!("{}Message: Authentication failed\r\n\r\n", head("Error"))
                            .as_bytes(),
                    );
                    return false;
                }
                st.accepted += 1;
                *logged_in = true;
                if let Some(r) = st.conn_log.get_mut(conn.id - 1) {
                    r.logged_in = Some(Instant::now());
                }
                let mut bytes = format!(
                    "{}Message: Authentication accepted\r\n\r\n",
                    head("Success")
                );
                if st.fully_booted && st.reads("system") {
                    bytes.push_str("Event: FullyBooted\r\nPrivilege: system,all\r\n");
                    if st.timestamps {
                        bytes.push_str(&format!("Timestamp: {}\r\n", timestamp()));
                    }
                    bytes.push_str("Uptime: 1\r\nLastReload: 1\r\nStatus: Fully Booted\r\n\r\n");
                }
                let mut bytes = bytes.into_bytes();
                bytes.extend_from_slice(&st.stream);
                // Take the write lock before publishing the connection, so a `push` cannot get
                // in between the Login response and the stream.
                let mut out = lock(&conn.out);
                st.current = Some(conn.clone());
                drop(st);
                out.write_all(&bytes).is_ok()
            }
            "ping" => {
                drop(st);
                let reply = format!(
                    "{}Ping: Pong\r\nTimestamp: {}\r\n\r\n",
                    head("Success"),
                    timestamp()
                );
                conn.write(reply.as_bytes())
            }
            "listcommands" => {
                let mut reply = head("Success");
                for (action, synopsis, classes) in ACTIONS {
                    if st.permits(action) {
                        let privs = if classes.is_empty() {
                            "<none>".to_string()
                        } else {
                            format!("{},all", classes.join(","))
                        };
                        reply.push_str(&format!("{action}: {synopsis} (Priv: {privs})\r\n"));
                    }
                }
                reply.push_str("\r\n");
                drop(st);
                conn.write(reply.as_bytes())
            }
            "coresettings" => {
                drop(st);
                let reply = format!(
                    "{}AMIversion: {}\r\nAsteriskVersion: {ASTERISK_VERSION}\r\nSystemName: \r\n\
                     CoreMaxCalls: 0\r\nCoreMaxLoadAvg: 0.000000\r\nCoreRunUser: asterisk\r\n\
                     CoreRunGroup: asterisk\r\nCoreMaxFilehandles: 0\r\n\
                     CoreRealTimeEnabled: No\r\nCoreCDRenabled: Yes\r\nCoreHTTPenabled: No\r\n\r\n",
                    head("Success"),
                    BANNER.rsplit('/').next().unwrap_or_default(),
                );
                conn.write(reply.as_bytes())
            }
            "modulecheck" => {
                let module = action
                    .get("Module")
                    .unwrap_or_default()
                    .trim_end_matches(".so");
                let loaded = st
                    .modules
                    .iter()
                    .any(|m| m.trim_end_matches(".so") == module);
                drop(st);
                let reply = if loaded {
                    format!("{}Version: \r\n\r\n", head("Success"))
                } else {
                    format!("{}Message: Module not loaded\r\n\r\n", head("Error"))
                };
                conn.write(reply.as_bytes())
            }
            "command" => {
                let (ok, lines) = st.cli(action.get("Command").unwrap_or_default());
                drop(st);
                let mut reply = format!(
                    "{}Message: Command output follows\r\n",
                    head(if ok { "Success" } else { "Error" })
                );
                for l in lines {
                    reply.push_str(&format!("Output: {l}\r\n"));
                }
                reply.push_str("\r\n");
                conn.write(reply.as_bytes())
            }
            "logoff" => {
                drop(st);
                conn.write(
                    format!(
                        "{}Message: Thanks for all the fish.\r\n\r\n",
                        head("Goodbye")
                    )
                    .as_bytes(),
                );
                false
            }
            "coreshowchannels" => {
                let mut reply = format!(
                    "{}EventList: start\r\nMessage: Channels will follow\r\n\r\n",
                    head("Success")
                );
                let channels = match &st.source {
                    Some(source) => source(),
                    None => st.channels.clone(),
                };
                for item in &channels {
                    reply.push_str("Event: CoreShowChannel\r\n");
                    reply.push_str(&id_line);
                    for (k, v) in item {
                        reply.push_str(&format!("{k}: {v}\r\n"));
                    }
                    reply.push_str("\r\n");
                }
                reply.push_str(&format!(
                    "Event: CoreShowChannelsComplete\r\n{id_line}EventList: Complete\r\n\
                     ListItems: {}\r\n\r\n",
                    channels.len()
                ));
                // Written under the state lock, so no event emitted after the snapshot can
                // overtake it (see `FakeAmi::emit`).
                let ok = conn.write(reply.as_bytes());
                drop(st);
                ok
            }
            "originate" => {
                let ok = st.originate_ok;
                drop(st);
                if !ok {
                    return conn.write(
                        format!("{}Message: Originate failed\r\n\r\n", head("Error")).as_bytes(),
                    );
                }
                let mut reply = format!(
                    "{}Message: Originate successfully queued\r\n\r\n",
                    head("Success")
                );
                if action
                    .get("Async")
                    .is_some_and(|a| a.eq_ignore_ascii_case("true"))
                {
                    // ami.md §4.2: an event, ActionID third, with its own `Response:` field.
                    reply.push_str(&format!(
                        "Event: OriginateResponse\r\nPrivilege: call,all\r\n{id_line}\
                         Response: Success\r\nChannel: {}\r\nContext: {}\r\nExten: {}\r\n\
                         Reason: 4\r\nUniqueid: 1795668285.99\r\nCallerIDNum: <unknown>\r\n\
                         CallerIDName: <unknown>\r\n\r\n",
                        action.get("Channel").unwrap_or_default(),
                        action.get("Context").unwrap_or_default(),
                        action.get("Exten").unwrap_or_default(),
                    ));
                }
                conn.write(reply.as_bytes())
            }
            _ => {
                drop(st);
                conn.write(format!("{}Message: OK\r\n\r\n", head("Success")).as_bytes())
            }
        }
    }
}
