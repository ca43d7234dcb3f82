//! The `callme` binary: parse the command line, load the config, start the right thing.
//! Everything else lives in the library.

mod signals;

use std::ffi::OsString;
use std::io::{self, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use callme::bitrix::deliver::{DeliverConfig, Deliverer};
use callme::bitrix::{Directory, Transport, WebhookClient};
use callme::calls::Tracker;
use callme::cli::{self, Command};
use callme::config::{self, Config};
use callme::context::Health;
use callme::dryrun::{self, DryRun};
use callme::notify;
use callme::replay;

/// The capture bundled for `callme demo`: a real Asterisk 20 call through a ring-all queue
/// (two phones ring, 221 answers, 220 is cancelled).
const DEMO_CAPTURE: &[u8] = include_bytes!("../tests/fixtures/k_inbound_queue_ringall.ami");
const DEMO_TIMING: &str = include_str!("../tests/fixtures/k_inbound_queue_ringall.ami.timing.tsv");

fn main() -> ExitCode {
    let cmd = match cli::parse(std::env::args().skip(1)) {
        Ok(cmd) => cmd,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match cmd {
        Command::Help => {
            print!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("callme {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::CheckConfig { config } => {
            init_logging(false);
            match config::load(&config) {
                Ok(_) => {
                    println!("{}: ok", config.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Replay {
            config,
            dry_run,
            capture,
            debug,
        } => {
            init_logging(debug);
            let cfg = match config {
                Some(path) => match config::load(&path) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("{e}");
                        return ExitCode::FAILURE;
                    }
                },
                None => Config::demo(),
            };
            if !dry_run && config_is_demo(&cfg) {
                eprintln!(
                    "error: replay without --dry-run sends to the configured webhook_url; \
                     give a config with -c FILE, or add --dry-run"
                );
                return ExitCode::from(2);
            }
            let cap = match replay::load(&capture) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            let transport: Box<dyn Transport> = if dry_run {
                Box::new(DryRun::new(
                    Box::new(io::stdout()),
                    dryrun::Format::JsonLines,
                ))
            } else {
                // A replay is a one-off tool; it does not take part in the daemon's token
                // refresh (two refreshers of one refresh_token would log each other out).
                let Some(url) = &cfg.bitrix24.webhook_url else {
                    eprintln!(
                        "error: replay without --dry-run needs [bitrix24] webhook_url \
                         (not available with auth = app); add --dry-run"
                    );
                    return ExitCode::from(2);
                };
                Box::new(WebhookClient::new(url.expose(), cfg.bitrix24.timeout))
            };
            run_replay(&cfg, &cap, transport, None)
        }
        Command::Demo { debug } => {
            init_logging(debug);
            demo()
        }
        Command::Run { config, debug } => {
            init_logging(debug);
            run_daemon(&config)
        }
        Command::AmiEvents { config, debug } => {
            init_logging(debug);
            ami_events(&config)
        }
        Command::Originate {
            config,
            from,
            to,
            debug,
        } => {
            init_logging(debug);
            originate_once(&config, &from, &to)
        }
        Command::AppStatus { config } => {
            init_logging(false);
            app_status(&config)
        }
    }
}

/// `callme app-status`: what app mode has stored, and what the portal has bound. Read-only:
/// it never refreshes the token (that would rotate the pair under a running daemon).
fn app_status(path: &Path) -> ExitCode {
    use callme::bitrix::oauth::{self, AppClient};
    let Some(cfg) = load_or_report(path) else {
        return ExitCode::FAILURE;
    };
    let Some(app) = &cfg.bitrix24.app else {
        eprintln!(
            "{}: [bitrix24] auth is not app; nothing to show",
            path.display()
        );
        return ExitCode::from(2);
    };
    let client = AppClient::new(
        app,
        &cfg.state.dir,
        cfg.bitrix24.timeout,
        Default::default(),
    )
    .read_only();
    println!("portal:        {}", app.portal);
    println!("token file:    {}", client.store().path().display());
    let Some(t) = client.tokens() else {
        println!("tokens stored: no (install the application; see docs/app-mode.md)");
        return ExitCode::FAILURE;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    println!("tokens stored: yes");
    println!("domain:        {}", t.domain);
    println!("member_id:     {}", t.member_id);
    println!("endpoint:      {}", t.client_endpoint);
    println!(
        "access token:  {} ({})",
        if t.expires > now {
            "valid until"
        } else {
            "expired at"
        },
        callme::isotime::utc(t.expires.saturating_mul(1000))
    );
    match oauth::bound_events(&client) {
        Ok(list) if list.is_empty() => println!("bound events:  none"),
        Ok(list) => {
            println!("bound events:");
            for (event, handler) in list {
                println!("  {event} -> {handler}");
            }
        }
        Err(e) => {
            println!("bound events:  unknown ({e})");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// `RUST_LOG` wins when set. Otherwise `info`, or `debug` for our own modules with `--debug`.
/// ureq and rustls stay at `info` whatever is asked: at trace level ureq prints request paths,
/// and a webhook path contains its secret code.
fn init_logging(debug: bool) {
    let ours = if debug { "debug" } else { "info" };
    let default = format!("{ours},ureq=info,ureq_proto=info,rustls=info");
    let mut b = env_logger::Builder::new();
    b.parse_filters(&default);
    if let Ok(env) = std::env::var("RUST_LOG") {
        b.parse_filters(&env);
        b.filter_module("ureq", log::LevelFilter::Info);
        b.filter_module("ureq_proto", log::LevelFilter::Info);
        b.filter_module("rustls", log::LevelFilter::Info);
    }
    b.format_timestamp(None); // journald stamps every line itself
    let _ = b.try_init();
}

fn config_is_demo(cfg: &Config) -> bool {
    cfg.bitrix24
        .webhook_url
        .as_ref()
        .is_some_and(|u| u.expose().contains("demo.invalid"))
}

fn run_replay(
    cfg: &Config,
    cap: &replay::Capture,
    transport: Box<dyn Transport>,
    timeline: Option<&mut dyn Write>,
) -> ExitCode {
    let mut tracker = Tracker::new(callme::calls::TrackerConfig::from_config(cfg));
    let mut deliverer = Deliverer::new(
        DeliverConfig::from_config(cfg),
        transport,
        Directory::from_users(Vec::new(), std::time::Instant::now()),
    );
    let s = replay::run(
        cap,
        &mut tracker,
        &mut deliverer,
        timeline,
        replay::DRAIN_LIMIT,
    );
    log::info!(
        "replayed {} messages: {} call(s), {} intent(s), {} step(s) undelivered, {} permanent failure(s)",
        s.messages,
        s.calls,
        s.intents,
        s.pending,
        s.permanent_failures
    );
    if s.pending > 0 || s.permanent_failures > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn demo() -> ExitCode {
    let cap = match replay::parse_with_timing(DEMO_CAPTURE, DEMO_TIMING, "demo timing") {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bundled demo capture is broken: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = io::stdout();
    let _ = writeln!(
        stdout,
        "callme demo: a real Asterisk 20 capture (caller 79991234567 → DID 8001231234 → queue, \
         phones 220 and 221 ring, 221 answers)\nreplayed through the call tracker against a \
         built-in dry-run Bitrix24 (no PBX, no portal, no network).\n\
         Employees: {}. CRM: contact {} for {}, responsible user {}.\n",
        dryrun::USERS
            .iter()
            .map(|(id, inner, name)| format!("{name} (user {id}, ext {inner})"))
            .collect::<Vec<_>>()
            .join(", "),
        dryrun::CONTACT.1,
        dryrun::CONTACT.0,
        dryrun::CONTACT.2
    );
    let cfg = Config::demo();
    let transport = DryRun::new(Box::new(io::stdout()), dryrun::Format::Timeline);
    let code = run_replay(&cfg, &cap, Box::new(transport), Some(&mut stdout));
    let _ = writeln!(
        stdout,
        "\nEvery Bitrix24 request above was answered by the dry-run responder. Try \
         `callme replay --dry-run CAPTURE` for JSON lines, or see README.md to connect a real PBX."
    );
    code
}

fn load_or_report(path: &Path) -> Option<Config> {
    match config::load(path) {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("{e}");
            None
        }
    }
}

/// How often `run_daemon` looks at signals and health: SIGTERM is acted on within this, and it
/// is well under half of any sane `WatchdogSec=` (the test uses 400 ms).
const TICK: Duration = Duration::from_millis(200);

/// The unit's `TimeoutStopSec=20` is when systemd sends SIGKILL. A thread stuck in a Bitrix24
/// request (timeout up to `[bitrix24] timeout` per page) must not make us miss it, so after
/// this long we exit without waiting for it.
const SHUTDOWN_BUDGET: Duration = Duration::from_secs(15);

fn run_daemon(path: &Path) -> ExitCode {
    // First thing, so a SIGTERM or SIGHUP during startup is not fatal and silent.
    signals::install();
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
    let daemon = match callme::daemon::Daemon::start(&cfg) {
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
    if let Some(iv) = sup.watchdog {
        log::debug!("systemd watchdog: {iv:?}, keepalive every {:?}", iv / 2);
    }
    loop {
        if signals::terminate_requested() {
            break;
        }
        if signals::take_hangup() {
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

/// Tells systemd how the daemon is doing (sd_notify): READY once AMI is logged in, WATCHDOG
/// while the state thread is alive, STATUS when the summary line changes.
struct Supervisor {
    /// `$NOTIFY_SOCKET`, read once; `None` when not started by systemd.
    socket: Option<OsString>,
    watchdog: Option<Duration>,
    ami: String,
    started_ms: u64,
    ready: bool,
    last_status: String,
    last_watchdog: Option<Instant>,
    /// The state thread missed its deadline; logged once per episode.
    stalled: bool,
    /// A notify error was logged; not repeated every tick.
    notify_failed: bool,
}

impl Supervisor {
    fn new(socket: Option<OsString>, watchdog: Option<Duration>, ami: String) -> Supervisor {
        Supervisor {
            socket,
            watchdog,
            ami,
            started_ms: now_ms(),
            ready: false,
            last_status: String::new(),
            last_watchdog: None,
            stalled: false,
            notify_failed: false,
        }
    }

    fn tick(&mut self, health: &Health, now: Instant, now_ms: u64) {
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

        let Some(interval) = self.watchdog else {
            return;
        };
        if self.last_watchdog.is_some_and(|t| now - t < interval / 2) {
            return;
        }
        // The state thread stamps `state_alive_ms` at least every second. If it stops (a
        // panic, a deadlock), we stop the keepalive so systemd kills and restarts us; a
        // watchdog fed by this loop alone would only prove that this loop runs.
        let limit = interval.max(Duration::from_secs(5)).as_millis() as u64;
        let last = health
            .state_alive_ms
            .load(Ordering::Relaxed)
            .max(self.started_ms);
        let silent_ms = now_ms.saturating_sub(last);
        if silent_ms <= limit {
            if self.stalled {
                log::warn!("state thread is responsive again; watchdog keepalive resumed");
                self.stalled = false;
            }
            self.send("WATCHDOG=1");
            self.last_watchdog = Some(now);
        } else if !self.stalled {
            log::error!(
                "state thread silent for {silent_ms} ms; withholding the watchdog keepalive \
                 so systemd restarts callme"
            );
            self.stalled = true;
        }
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

    fn send(&mut self, state: &str) {
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

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// [`Daemon::shutdown`](callme::daemon::Daemon::shutdown), but give up waiting after
/// `budget`: exiting with a request in flight beats being SIGKILLed by systemd.
fn shutdown_within(daemon: callme::daemon::Daemon, budget: Duration) {
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

/// `callme ami-events`: log in with the config's credentials and print every event as it
/// arrives, in AMI's own `Key: value` form. For checking what a live PBX sends.
fn ami_events(path: &Path) -> ExitCode {
    let Some(cfg) = load_or_report(path) else {
        return ExitCode::FAILURE;
    };
    let (tx, rx) = crossbeam_channel::unbounded();
    let (_handle, _thread) = callme::ami::client::start(callme::daemon::ami_config(&cfg), tx);
    let mut out = io::stdout().lock();
    for incoming in rx {
        match incoming {
            callme::ami::Incoming::Connected { banner } => {
                log::info!(
                    "connected to {}:{} ({banner})",
                    cfg.asterisk.host,
                    cfg.asterisk.port
                )
            }
            callme::ami::Incoming::Disconnected { reason } => log::warn!("disconnected: {reason}"),
            callme::ami::Incoming::Event { msg, .. } => {
                let mut text = String::new();
                for (k, v) in msg.iter() {
                    text.push_str(k);
                    text.push_str(": ");
                    text.push_str(v);
                    text.push('\n');
                }
                if writeln!(out, "{text}").and_then(|_| out.flush()).is_err() {
                    break; // stdout closed (piped into `head`)
                }
            }
        }
    }
    ExitCode::SUCCESS
}

/// How long `callme originate` waits for the AMI login.
const ORIGINATE_LOGIN_WAIT: Duration = Duration::from_secs(10);

/// `callme originate --from INNER --to NUMBER`: one click-to-call through AMI, no Bitrix24.
/// Builds the same action as the daemon (`callme::originate`), prints Asterisk's response and
/// then the `OriginateResponse` event. Exit 0 only when the employee's phone answered.
fn originate_once(path: &Path, from: &str, to: &str) -> ExitCode {
    use callme::ami::Incoming;
    use callme::originate;

    let Some(cfg) = load_or_report(path) else {
        return ExitCode::FAILURE;
    };
    if let Err(e) = originate::check_inner(from) {
        eprintln!("error: --from: {e}");
        return ExitCode::from(2);
    }
    let dial = match originate::dial_number(to, &cfg.phone, &cfg.originate) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: --to: {e}");
            return ExitCode::from(2);
        }
    };
    let ids = originate::new_ids();
    let action = match originate::build_action(
        &cfg.originate,
        &originate::Request {
            inner: from,
            dial: &dial,
            call_id: None,
            ids: &ids,
        },
    ) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };

    let (tx, rx) = crossbeam_channel::unbounded();
    let (ami, thread) = callme::ami::client::start(callme::daemon::ami_config(&cfg), tx);
    let finish = |code: ExitCode| {
        ami.shutdown();
        let _ = thread.join();
        code
    };
    let addr = format!("{}:{}", cfg.asterisk.host, cfg.asterisk.port);
    let deadline = Instant::now() + ORIGINATE_LOGIN_WAIT;
    while !ami.is_logged_in() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let why = ami.last_error().unwrap_or_else(|| "no answer".to_string());
            eprintln!(
                "error: could not log in to AMI at {addr} within {}s: {why}",
                ORIGINATE_LOGIN_WAIT.as_secs()
            );
            return finish(ExitCode::FAILURE);
        }
        let _ = rx.recv_timeout(left.min(Duration::from_millis(100)));
    }
    println!(
        "Originate: ringing {from} ({}), then dialling {dial} in {} (ActionID {}, ChannelId {})",
        action.get("Channel").unwrap_or_default(),
        cfg.originate.context,
        ids.action_id,
        ids.channel_id
    );
    let resp = match ami.request(action, originate::RESPONSE_TIMEOUT) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return finish(ExitCode::FAILURE);
        }
    };
    println!(
        "Response: {} ({})",
        resp.response().unwrap_or("?"),
        originate::message_of(&resp)
    );
    if !originate::is_success(&resp) {
        return finish(ExitCode::FAILURE);
    }
    let wait = cfg.originate.timeout + Duration::from_secs(5);
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            eprintln!("error: no OriginateResponse within {}s", wait.as_secs());
            return finish(ExitCode::FAILURE);
        }
        match rx.recv_timeout(left) {
            Ok(Incoming::Event { msg, .. })
                if msg
                    .event()
                    .is_some_and(|e| e.eq_ignore_ascii_case("OriginateResponse"))
                    && msg.action_id() == Some(ids.action_id.as_str()) =>
            {
                // An event: its `Response:` is not the first field, so not `msg.response()`.
                let ok = msg
                    .get("Response")
                    .is_some_and(|r| r.eq_ignore_ascii_case("Success"));
                println!(
                    "OriginateResponse: {} (Reason {})",
                    msg.get("Response").unwrap_or("?"),
                    msg.get("Reason").unwrap_or("?")
                );
                return finish(if ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                });
            }
            Ok(Incoming::Disconnected { reason }) => {
                log::warn!("AMI connection lost while waiting: {reason}");
            }
            Ok(_) => {}
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    /// A supervisor whose notifications land in a socket the test reads. The socket's
    /// directory is removed when the returned guard drops.
    fn supervised(tag: &str, watchdog: Option<Duration>) -> (Supervisor, UnixDatagram, Cleanup) {
        let dir = std::env::temp_dir().join(format!("callme-sup-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_nonblocking(true).unwrap();
        let sup = Supervisor::new(
            Some(path.into_os_string()),
            watchdog,
            "192.0.2.1:5038".into(),
        );
        (sup, sock, Cleanup(dir))
    }

    struct Cleanup(std::path::PathBuf);

    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn received(sock: &UnixDatagram) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = [0u8; 512];
        while let Ok(n) = sock.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        out
    }

    #[test]
    fn ready_waits_for_the_ami_login_and_comes_once() {
        let (mut sup, sock, _dir) = supervised("ready", None);
        let health = Health::default();
        let (t0, ms0) = (Instant::now(), now_ms());
        sup.tick(&health, t0, ms0);
        assert_eq!(
            received(&sock),
            ["STATUS=connecting to AMI at 192.0.2.1:5038; 0 active call(s); 0 Bitrix24 step(s) pending"]
        );
        health.ami_logged_in.store(true, Ordering::Relaxed);
        sup.tick(&health, t0, ms0);
        assert_eq!(
            received(&sock),
            ["READY=1\nSTATUS=AMI connected; 0 active call(s); 0 Bitrix24 step(s) pending"]
        );
        sup.tick(&health, t0, ms0);
        assert!(received(&sock).is_empty(), "nothing changed, nothing sent");
        health.ami_logged_in.store(false, Ordering::Relaxed);
        health.delivery.lock().unwrap().pending = 3;
        sup.tick(&health, t0, ms0);
        assert_eq!(
            received(&sock),
            ["STATUS=AMI link to 192.0.2.1:5038 lost, reconnecting; 0 active call(s); 3 Bitrix24 step(s) pending"]
        );
    }

    #[test]
    fn watchdog_stops_while_the_state_thread_is_silent() {
        let interval = Duration::from_secs(2);
        let (mut sup, sock, _dir) = supervised("watchdog", Some(interval));
        let health = Health::default();
        let t0 = Instant::now();
        let ms0 = sup.started_ms;
        health.state_alive_ms.store(ms0, Ordering::Relaxed);
        let watchdogs = |v: Vec<String>| v.iter().filter(|m| *m == "WATCHDOG=1").count();

        sup.tick(&health, t0, ms0);
        assert_eq!(watchdogs(received(&sock)), 1, "first tick");
        sup.tick(&health, t0 + Duration::from_millis(500), ms0 + 500);
        assert_eq!(watchdogs(received(&sock)), 0, "before half the interval");
        sup.tick(&health, t0 + Duration::from_secs(1), ms0 + 1000);
        assert_eq!(watchdogs(received(&sock)), 1, "at half the interval");

        // The state thread last stamped at ms0; 5 s (the floor) later it counts as dead.
        sup.tick(&health, t0 + Duration::from_secs(6), ms0 + 6000);
        assert_eq!(watchdogs(received(&sock)), 0, "withheld");
        assert!(sup.stalled);
        sup.tick(&health, t0 + Duration::from_secs(7), ms0 + 7000);
        assert_eq!(watchdogs(received(&sock)), 0, "still withheld");

        health.state_alive_ms.store(ms0 + 7500, Ordering::Relaxed);
        sup.tick(&health, t0 + Duration::from_secs(8), ms0 + 8000);
        assert_eq!(watchdogs(received(&sock)), 1, "resumed");
        assert!(!sup.stalled);
    }
}
