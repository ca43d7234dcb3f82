//! The AMI client against the fake AMI server: login, event streaming, ActionID routing,
//! keepalive, reconnects, header-injection guard, shutdown, and what reaches the log.
mod support;

use std::net::TcpListener;
use std::sync::{Mutex, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use callme::ami::client::start;
use callme::ami::{ClientConfig, Error, Frame, Handle, Incoming, Message, Reader};
use crossbeam_channel::{unbounded, Receiver};
use support::fake_ami::{wait_until, FakeAmi, BANNER};

const USER: &str = "callme";
/// Upper bound for anything that should happen "soon"; tests normally finish far below it.
const WAIT: Duration = Duration::from_secs(3);

// ---- log capture: the client's log lines are part of its contract (no secrets, no flooding).

struct CaptureLog;

static LOG_LINES: Mutex<Vec<(log::Level, String)>> = Mutex::new(Vec::new());
static LOGGER: CaptureLog = CaptureLog;

impl log::Log for CaptureLog {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        let line = record.args().to_string();
        LOG_LINES
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((record.level(), line));
    }
    fn flush(&self) {}
}

fn init_log() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        log::set_logger(&LOGGER).expect("install the test logger");
        log::set_max_level(log::LevelFilter::Trace);
    });
}

fn log_lines() -> Vec<(log::Level, String)> {
    LOG_LINES.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

fn count_logs(level: log::Level, needle: &str) -> usize {
    log_lines()
        .iter()
        .filter(|(l, s)| *l == level && s.contains(needle))
        .count()
}

// ---- helpers

fn config(port: u16, secret: &str) -> ClientConfig {
    ClientConfig {
        host: "127.0.0.1".to_string(),
        port,
        username: USER.to_string(),
        secret: secret.to_string(),
        ping_interval: Duration::from_secs(5),
        ping_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_millis(500),
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(400),
        fully_booted_timeout: Duration::from_secs(1),
    }
}

/// A started client that is shut down and joined when the test ends, pass or fail.
struct Client {
    handle: Handle,
    thread: Option<JoinHandle<()>>,
    rx: Receiver<Incoming>,
}

impl Client {
    fn start(cfg: ClientConfig) -> Self {
        init_log();
        let (tx, rx) = unbounded();
        let (handle, thread) = start(cfg, tx);
        Client {
            handle,
            thread: Some(thread),
            rx,
        }
    }

    fn next(&self) -> Incoming {
        self.rx
            .recv_timeout(WAIT)
            .expect("nothing from the AMI client in time")
    }

    /// Skips events (e.g. the rest of a dropped connection's stream) up to the next Connected.
    fn wait_connected(&self) -> String {
        loop {
            match self.next() {
                Incoming::Connected { banner } => return banner,
                Incoming::Event { .. } => {}
                Incoming::Disconnected { reason } => panic!("disconnected: {reason}"),
            }
        }
    }

    fn wait_disconnected(&self) -> String {
        loop {
            match self.next() {
                Incoming::Disconnected { reason } => return reason,
                Incoming::Event { .. } => {}
                Incoming::Connected { .. } => panic!("connected again before a Disconnected"),
            }
        }
    }

    fn next_event(&self) -> Message {
        match self.next() {
            Incoming::Event { msg, .. } => msg,
            other => panic!("expected an event, got {other:?}"),
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.handle.shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Event names in `bytes`, parsed with the crate's own codec.
fn event_names(bytes: &[u8]) -> Vec<String> {
    let mut reader = Reader::new(bytes);
    let mut names = Vec::new();
    while let Some(frame) = reader.read_frame().expect("parse capture") {
        if let Frame::Message(m) = frame {
            if let Some(name) = m.event() {
                names.push(name.to_string());
            }
        }
    }
    names
}

fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

const SENTINEL: &[u8] = b"Event: TestSentinel\r\nPrivilege: user,all\r\n\r\n";

fn assert_sentinel_next(fake: &FakeAmi, client: &Client) {
    assert!(fake.push(SENTINEL));
    assert_eq!(client.next_event().event(), Some("TestSentinel"));
}

// ---- tests

#[test]
fn streams_capture_events_after_connected() {
    streams_capture_events("a_inbound_answered.ami", 95);
}

/// The same on the PJSIP twin (`tests/fixtures/pjsip/`, Asterisk 22).
#[test]
fn streams_capture_events_after_connected_pjsip() {
    streams_capture_events("pjsip/a_inbound_answered.ami", 83);
}

/// `events`: the capture's events after its FullyBooted.
fn streams_capture_events(capture: &str, events: usize) {
    let fake = FakeAmi::start(USER, "s3cret-stream");
    let tail = support::capture_tail(capture);
    let raw_count = tail
        .split(|&b| b == b'\n')
        .filter(|line| line.starts_with(b"Event:"))
        .count();
    let mut expected = vec!["FullyBooted".to_string()];
    expected.extend(event_names(&tail));
    assert_eq!(expected.len(), raw_count + 1);
    assert_eq!(raw_count, events, "{capture}: events after FullyBooted");
    fake.set_stream(tail);

    let client = Client::start(config(fake.port(), "s3cret-stream"));
    assert_eq!(client.wait_connected(), BANNER);
    assert!(client.handle.is_logged_in());
    let mut got = Vec::new();
    let mut last_at = None;
    for _ in 0..expected.len() {
        match client.next() {
            Incoming::Event { msg, at } => {
                assert!(
                    last_at.is_none_or(|prev| prev <= at),
                    "timestamps go forward"
                );
                last_at = Some(at);
                got.push(msg.event().expect("an event").to_string());
            }
            other => panic!("expected an event, got {other:?}"),
        }
    }
    assert_eq!(got, expected);
    // Nothing more: the capture's trailing `Response: Goodbye` was not forwarded.
    assert_sentinel_next(&fake, &client);
    let stats = client.handle.stats();
    assert_eq!(stats.events, expected.len() as u64 + 1);
    assert_eq!(stats.reconnects, 0);
    assert!(stats.logged_in);

    let login = fake.wait_action("Login", WAIT).expect("a Login");
    assert_eq!(login.get("Username"), Some(USER));
    assert_eq!(login.get("Secret"), Some("s3cret-stream"));
    assert!(login
        .action_id()
        .is_some_and(|id| id.starts_with("callme-")));
    assert_eq!(fake.denied(), 0);
}

#[test]
fn reconnects_after_connection_drop() {
    reconnects_after_drop("a_inbound_answered.ami");
}

/// The same on the PJSIP twin (`tests/fixtures/pjsip/`, Asterisk 22).
#[test]
fn reconnects_after_connection_drop_pjsip() {
    reconnects_after_drop("pjsip/a_inbound_answered.ami");
}

fn reconnects_after_drop(capture: &str) {
    let fake = FakeAmi::start(USER, "s3cret-drop");
    fake.set_stream(support::capture_tail(capture));
    let client = Client::start(config(fake.port(), "s3cret-drop"));
    client.wait_connected();
    for _ in 0..10 {
        client.next_event();
    }

    fake.drop_connection();
    let reason = client.wait_disconnected();
    assert!(reason.contains("closed"), "reason: {reason}");
    client.wait_connected();
    assert!(client.handle.is_logged_in());
    assert_eq!(fake.logins(), 2);
    assert_eq!(fake.accepted_logins(), 2);
    assert_eq!(client.handle.stats().reconnects, 1);
    assert_eq!(client.handle.last_error(), None, "cleared by the new login");
}

#[test]
fn wrong_secret_retries_with_backoff_logs_once_and_recovers() {
    let secret = "wr0ng-s3cret-xyz";
    let fake = FakeAmi::start(USER, "the-right-one");
    let mut cfg = config(fake.port(), secret);
    cfg.reconnect_min = Duration::from_millis(200);
    cfg.reconnect_max = Duration::from_secs(2);
    let client = Client::start(cfg);

    assert!(fake.wait_logins(3, WAIT), "the client retries");
    assert!(!client.handle.is_logged_in());
    let auth_failed = Error::AuthFailed("Authentication failed".to_string()).to_string();
    assert!(wait_until(WAIT, || client.handle.last_error().as_deref()
        == Some(auth_failed.as_str())));
    // Spaced by the backoff (200 ms, then 400 ms, each ±20%), not a tight loop.
    let times = fake.action_times("Login");
    for (i, pair) in times.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        let floor = Duration::from_millis(200 * (1 << i)).mul_f64(0.8);
        assert!(
            gap >= floor,
            "retry {i} after {gap:?}, expected at least {floor:?}"
        );
    }
    assert!(
        client.rx.try_recv().is_err(),
        "no Connected for a refused login"
    );

    // Logged at error once; the identical repeats only at debug.
    assert!(wait_until(WAIT, || count_logs(
        log::Level::Debug,
        &auth_failed
    ) >= 2));
    assert_eq!(count_logs(log::Level::Error, &auth_failed), 1);

    // The operator fixes manager.conf: the next retry gets in, and that is logged at warn.
    fake.set_secret(secret);
    client.wait_connected();
    assert!(client.handle.is_logged_in());
    assert_eq!(client.handle.last_error(), None);
    let again = format!("logged in again to 127.0.0.1:{}", fake.port());
    assert!(wait_until(WAIT, || count_logs(log::Level::Warn, &again) == 1));

    for (_, line) in log_lines() {
        assert!(!line.contains(secret), "secret in log: {line}");
        if let Some(i) = line.find("Secret: ") {
            assert!(line[i..].starts_with("Secret: ***"), "unmasked: {line}");
        }
    }
}

#[test]
fn request_ping_and_core_show_channels() {
    let fake = FakeAmi::start(USER, "s3cret-req");
    let channel = |name: &str, uniqueid: &str| {
        vec![
            ("Channel".to_string(), name.to_string()),
            ("Uniqueid".to_string(), uniqueid.to_string()),
            ("Linkedid".to_string(), "1795668285.0".to_string()),
            ("Duration".to_string(), "00:00:07".to_string()),
        ]
    };
    fake.set_core_show_channels(vec![
        channel("SIP/trunk-00000000", "1795668285.0"),
        channel("SIP/219-00000001", "1795668285.1"),
    ]);
    let client = Client::start(config(fake.port(), "s3cret-req"));
    client.wait_connected();
    assert_eq!(client.next_event().event(), Some("FullyBooted"));

    let pong = client
        .handle
        .request(Message::from_pairs(&[("Action", "Ping")]), WAIT)
        .expect("Ping answered");
    assert_eq!(pong.response(), Some("Success"));
    assert_eq!(pong.get("Ping"), Some("Pong"));
    assert!(pong.action_id().is_some_and(|id| id.starts_with("callme-")));

    let items = client
        .handle
        .request_list(Message::from_pairs(&[("Action", "CoreShowChannels")]), WAIT)
        .expect("channel list");
    assert_eq!(items.len(), 2);
    assert!(items.iter().all(|m| m.event() == Some("CoreShowChannel")));
    assert_eq!(items[0].get("Channel"), Some("SIP/trunk-00000000"));
    assert_eq!(items[1].get("uniqueid"), Some("1795668285.1"));

    fake.set_core_show_channels(Vec::new());
    let none = client
        .handle
        .request_list(Message::from_pairs(&[("Action", "CoreShowChannels")]), WAIT)
        .expect("empty channel list");
    assert!(none.is_empty());

    // A caller's own ActionID is kept and echoed.
    let mine = client
        .handle
        .request(
            Message::from_pairs(&[("Action", "Ping"), ("ActionID", "my-id")]),
            WAIT,
        )
        .expect("Ping answered");
    assert_eq!(mine.action_id(), Some("my-id"));

    // Neither responses nor list items leaked onto the event channel.
    assert_sentinel_next(&fake, &client);
}

#[test]
fn originate_response_reaches_the_event_channel() {
    let fake = FakeAmi::start(USER, "s3cret-orig");
    let client = Client::start(config(fake.port(), "s3cret-orig"));
    client.wait_connected();
    assert_eq!(client.next_event().event(), Some("FullyBooted"));
    let originate = || {
        Message::from_pairs(&[
            ("Action", "Originate"),
            ("Channel", "SIP/219"),
            ("Context", "from-internal"),
            ("Exten", "79991234567"),
            ("Priority", "1"),
            ("Async", "true"),
        ])
    };

    let resp = client.handle.request(originate(), WAIT).expect("answered");
    assert_eq!(resp.response(), Some("Success"));
    assert_eq!(resp.get("Message"), Some("Originate successfully queued"));
    let ev = client.next_event();
    assert_eq!(ev.event(), Some("OriginateResponse"));
    assert_eq!(ev.action_id(), resp.action_id());
    assert_eq!(ev.get("Response"), Some("Success"));
    assert_eq!(ev.get("Reason"), Some("4"));

    // Fire and forget: the ActionID returned by `send` matches the later event.
    let id = client.handle.send(originate()).expect("sent");
    let ev = client.next_event();
    assert_eq!(ev.event(), Some("OriginateResponse"));
    assert_eq!(ev.action_id(), Some(id.as_str()));

    fake.set_originate_response(false);
    let resp = client.handle.request(originate(), WAIT).expect("answered");
    assert_eq!(resp.response(), Some("Error"));
    assert_eq!(resp.get("Message"), Some("Originate failed"));
    assert_sentinel_next(&fake, &client);
}

#[test]
fn dead_link_is_detected_by_ping_timeout() {
    let fake = FakeAmi::start(USER, "s3cret-dead");
    let mut cfg = config(fake.port(), "s3cret-dead");
    cfg.ping_interval = Duration::from_millis(200);
    cfg.ping_timeout = Duration::from_millis(300);
    let client = Client::start(cfg);
    client.wait_connected();
    assert!(fake.wait_action("Ping", WAIT).is_some(), "keepalive pings");

    fake.set_silent(true);
    let silent_at = Instant::now();
    let reason = client.wait_disconnected();
    assert!(reason.contains("Ping"), "reason: {reason}");
    assert!(silent_at.elapsed() < Duration::from_secs(2));
    assert!(!client.handle.is_logged_in());

    fake.set_silent(false);
    client.wait_connected();
    assert!(fake.accepted_logins() >= 2);
    assert!(client.handle.stats().reconnects >= 1);
    // No Ping ever went out before a Login succeeded (ami.md §2.6, AsterNET #214).
    assert_eq!(fake.denied(), 0);
}

#[test]
fn injection_is_refused_before_anything_is_written() {
    let fake = FakeAmi::start(USER, "s3cret-inj");
    let client = Client::start(config(fake.port(), "s3cret-inj"));
    client.wait_connected();
    let evil = Message::from_pairs(&[
        ("Action", "Originate"),
        ("Channel", "SIP/219\r\nAction: Hangup"),
        ("ActionID", "evil-1"),
    ]);
    match client.handle.send(evil.clone()) {
        Err(Error::Injection { key }) => assert_eq!(key, "Channel"),
        other => panic!("expected Injection, got {other:?}"),
    }
    assert!(matches!(
        client.handle.request(evil, WAIT),
        Err(Error::Injection { .. })
    ));
    // The refused request left no waiter behind: its ActionID is free again.
    client
        .handle
        .request(
            Message::from_pairs(&[("Action", "Ping"), ("ActionID", "evil-1")]),
            WAIT,
        )
        .expect("Ping answered");
    // The Ping was answered, so everything sent before it has been recorded.
    assert!(fake.actions_named("Originate").is_empty());
    assert!(fake.actions_named("Hangup").is_empty());
    assert!(!fake
        .actions()
        .iter()
        .any(|m| m.iter().any(|(_, v)| v.contains("SIP/219"))));
}

#[test]
fn pending_request_fails_when_the_link_drops() {
    let fake = FakeAmi::start(USER, "s3cret-pend");
    let client = Client::start(config(fake.port(), "s3cret-pend"));
    client.wait_connected();
    fake.set_silent(true);
    let handle = client.handle.clone();
    let waiter = std::thread::spawn(move || {
        let started = Instant::now();
        let result = handle.request(
            Message::from_pairs(&[("Action", "Getvar"), ("Variable", "X")]),
            Duration::from_secs(10),
        );
        (result, started.elapsed())
    });
    assert!(fake.wait_action("Getvar", WAIT).is_some());
    fake.drop_connection();
    let (result, took) = waiter.join().expect("waiter thread");
    assert!(matches!(result, Err(Error::NotConnected)), "{result:?}");
    assert!(
        took < Duration::from_secs(3),
        "failed at once, not at its timeout"
    );
}

#[test]
fn missing_fully_booted_times_out_and_keeps_events() {
    let fake = FakeAmi::start(USER, "s3cret-boot");
    fake.set_fully_booted(false);
    fake.set_stream(b"Event: Early\r\nPrivilege: call,all\r\n\r\n".to_vec());
    let mut cfg = config(fake.port(), "s3cret-boot");
    cfg.fully_booted_timeout = Duration::from_millis(300);
    let started = Instant::now();
    let client = Client::start(cfg);
    match client.next() {
        Incoming::Connected { .. } => {}
        other => panic!("Connected must come first, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(client.next_event().event(), Some("Early"));
    assert!(count_logs(log::Level::Warn, "no FullyBooted") >= 1);
}

#[test]
fn asterisk_shutdown_event_triggers_reconnect() {
    let fake = FakeAmi::start(USER, "s3cret-shut");
    let client = Client::start(config(fake.port(), "s3cret-shut"));
    client.wait_connected();
    assert_eq!(client.next_event().event(), Some("FullyBooted"));
    assert!(fake.push(
        b"Event: Shutdown\r\nPrivilege: system,all\r\nShutdown: Cleanly\r\nRestart: True\r\n\r\n"
    ));
    assert_eq!(client.next_event().event(), Some("Shutdown"));
    let reason = client.wait_disconnected();
    assert!(reason.contains("shutting down"), "reason: {reason}");
    client.wait_connected();
    assert_eq!(fake.logins(), 2);
}

#[test]
fn shutdown_stops_the_thread_promptly() {
    let fake = FakeAmi::start(USER, "s3cret-stop");
    let mut client = Client::start(config(fake.port(), "s3cret-stop"));
    client.wait_connected();
    let thread = client.thread.take().expect("thread");
    client.handle.shutdown();
    assert!(wait_until(Duration::from_secs(2), || thread.is_finished()));
    thread.join().expect("reader thread did not panic");
    assert_eq!(client.wait_disconnected(), "AMI client shut down");
    assert!(!client.handle.is_logged_in());
    assert!(matches!(
        client
            .handle
            .send(Message::from_pairs(&[("Action", "Ping")])),
        Err(Error::NotConnected)
    ));
    assert_eq!(fake.logins(), 1, "no reconnect after shutdown");
}

#[test]
fn shutdown_interrupts_the_backoff_wait() {
    let mut cfg = config(closed_port(), "s3cret-backoff");
    cfg.reconnect_min = Duration::from_secs(30);
    cfg.reconnect_max = Duration::from_secs(60);
    let mut client = Client::start(cfg);
    assert!(wait_until(WAIT, || client.handle.last_error().is_some()));
    let thread = client.thread.take().expect("thread");
    client.handle.shutdown();
    assert!(wait_until(Duration::from_secs(2), || thread.is_finished()));
}

#[test]
fn actions_while_down_are_not_connected() {
    let port = closed_port();
    let client = Client::start(config(port, "s3cret-down"));
    assert!(matches!(
        client
            .handle
            .send(Message::from_pairs(&[("Action", "Ping")])),
        Err(Error::NotConnected)
    ));
    assert!(matches!(
        client
            .handle
            .request(Message::from_pairs(&[("Action", "Ping")]), WAIT),
        Err(Error::NotConnected)
    ));
    assert!(wait_until(WAIT, || client.handle.last_error().is_some_and(
        |e| e.contains(&format!("cannot connect to AMI at 127.0.0.1:{port}"))
    )));
    assert!(!client.handle.is_logged_in());
    assert!(
        client.rx.try_recv().is_err(),
        "no Connected, no Disconnected"
    );
}

/// A message split across a read timeout must arrive whole. The client relies on the codec's
/// reader being resumable after WouldBlock/TimedOut (the hardened `Reader`, branch `codec`);
/// the skeleton reader loses the first half, so this waits for that merge.
#[test]
fn message_split_across_a_read_timeout_arrives_whole() {
    let fake = FakeAmi::start(USER, "s3cret-split");
    let mut cfg = config(fake.port(), "s3cret-split");
    cfg.ping_timeout = Duration::from_millis(200); // read timeout 100 ms; no Ping for 5 s
    let client = Client::start(cfg);
    client.wait_connected();
    assert_eq!(client.next_event().event(), Some("FullyBooted"));
    assert!(fake.push(b"Event: Split\r\nPart: one\r\n"));
    // Deliberately longer than the read timeout: the pause is the scenario, not a wait.
    std::thread::sleep(Duration::from_millis(350));
    assert!(fake.push(b"Part: two\r\n\r\n"));
    let ev = client.next_event();
    assert_eq!(ev.event(), Some("Split"));
    assert_eq!(ev.get_all("Part").collect::<Vec<_>>(), ["one", "two"]);
    assert_sentinel_next(&fake, &client);
}
