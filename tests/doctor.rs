//! `callme doctor` against the fakes: a healthy setup gives no FAIL and exit 0; each fault
//! (wrong AMI secret, a missing scope, an unmapped default_user, an unwritable state dir, an
//! account that may not Originate) gives its FAIL line and a non-zero exit. Runs the real
//! binary. Each output is printed (`cargo test --test doctor -- --nocapture`): these are the
//! outputs shown in docs/operations.md.
mod support;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::thread::JoinHandle;

use support::configs;
use support::daemon::TempDir;
use support::fake_ami::FakeAmi;
use support::fake_bitrix::{FakeBitrix, WEBHOOK_CODE};

const AMI_SECRET: &str = "ami-s3cret-do-not-print";
const APP_TOKEN: &str = "app-token-do-not-print";

/// The reverse proxy in front of callme, as far as `public_url` is concerned: answers every
/// request with 405, as callme does to a GET of its event path.
struct Proxy {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
}

impl Proxy {
    fn start() -> Proxy {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind the proxy"));
        let s = Arc::clone(&server);
        let thread = std::thread::spawn(move || {
            for req in s.incoming_requests() {
                let _ = req.respond(tiny_http::Response::from_string("").with_status_code(405));
            }
        });
        Proxy {
            server,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        let port = self.server.server_addr().to_ip().expect("ip").port();
        format!("http://127.0.0.1:{port}/callme/")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Everything healthy: an AMI account with the recommended classes plus `command`,
/// timestamps on, the contrib dialplan loaded, PJSIP; a portal with all scopes; the
/// `[calls]` numbers all employees; `public_url` answering; an empty, private state dir.
struct Setup {
    ami: FakeAmi,
    portal: FakeBitrix,
    proxy: Proxy,
    dir: TempDir,
    config: String,
}

impl Setup {
    fn healthy(name: &str) -> Setup {
        Setup::with_bitrix24(name, None)
    }

    /// [`Setup::healthy`] with another `[bitrix24]` section body, made for the fake portal
    /// (default: its webhook).
    fn with_bitrix24(name: &str, bitrix24: Option<&dyn Fn(&FakeBitrix) -> String>) -> Setup {
        let ami = FakeAmi::start("callme", AMI_SECRET);
        ami.set_classes(
            &["system", "call", "dialplan", "agent"],
            &["originate", "call", "reporting", "command"],
        );
        ami.set_timestamp_events(true);
        ami.set_dialplan_contexts(&["callme-rec"]);
        let portal = FakeBitrix::start();
        let proxy = Proxy::start();
        let dir = TempDir::new(name);
        let state = dir.path().join("state");
        fs::create_dir(&state).expect("create the state dir");
        set_mode(&state, 0o750);
        let webhook = format!(
            "webhook_url = {}\napp_token = {APP_TOKEN}\ntimeout = 5\n",
            portal.webhook_url()
        );
        let config = format!(
            "{}[bitrix24]\n{}\
             [calls]\ndefault_user = 201\nresponsible = static\n\
             static_responsible = 8001231231:219, 8002345678:220\nshow_cards_to = 219, 220, 221\n\
             [http]\npublic_url = {}\n[state]\ndir = {}\n",
            configs::asterisk(ami.port(), AMI_SECRET),
            bitrix24.map_or(webhook, |f| f(&portal)),
            proxy.url(),
            state.display()
        );
        Setup {
            ami,
            portal,
            proxy,
            dir,
            config,
        }
    }

    fn state_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("state")
    }

    /// Runs `callme doctor -c` on the config (with `key = value` set in `section`, if given):
    /// (exit code, stdout). Prints the output under `title`.
    fn doctor(&self, title: &str, edit: Option<(&str, &str, &str)>) -> (i32, String) {
        let text = match edit {
            Some((section, key, value)) => configs::set(&self.config, section, key, value),
            None => self.config.clone(),
        };
        let path = self.dir.path().join("callme.conf");
        fs::write(&path, text).expect("write the config");
        set_mode(&path, 0o640);
        let out = Command::new(env!("CARGO_BIN_EXE_callme"))
            .args(["doctor", "-c"])
            .arg(&path)
            .env_remove("RUST_LOG")
            .env_remove("JOURNAL_STREAM")
            .output()
            .expect("run callme doctor");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        println!(
            "---- {title} (exit {:?})\n$ callme doctor\n{stdout}",
            out.status.code()
        );
        if !stderr.is_empty() {
            println!("stderr:\n{stderr}");
        }
        for secret in [AMI_SECRET, APP_TOKEN, WEBHOOK_CODE] {
            assert!(
                !stdout.contains(secret) && !stderr.contains(secret),
                "{title}: a secret was printed:\n{stdout}\n{stderr}"
            );
        }
        (out.status.code().unwrap_or(-1), stdout)
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

fn line<'a>(out: &'a str, start: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("no line starting {start:?} in:\n{out}"))
}

fn fails(out: &str) -> Vec<&str> {
    out.lines().filter(|l| l.starts_with("FAIL  ")).collect()
}

#[test]
fn healthy_setup_passes_every_check() {
    let s = Setup::healthy("doctor-ok");
    let (code, out) = s.doctor("healthy", None);
    assert_eq!(code, 0, "{out}");
    assert!(fails(&out).is_empty(), "{out}");
    for expected in [
        format!("OK    ami connect: 127.0.0.1:{} reachable", s.ami.port()),
        "OK    ami banner: Asterisk Call Manager/9.0.0".to_string(),
        "OK    ami login: user callme accepted".to_string(),
        "OK    ami read classes: read = agent,call,dialplan,system (manager show user)".to_string(),
        "OK    ami write classes: permitted: Originate, CoreShowChannels, Command, CoreSettings \
         (click-to-call can dial)"
            .to_string(),
        "OK    ami timestamps: timestampevents = yes".to_string(),
        "OK    asterisk version: Asterisk 20.5.2 (AMI 9.0.0)".to_string(),
        "OK    asterisk channel driver: PJSIP (chan_pjsip loaded, chan_sip not loaded)".to_string(),
        "OK    asterisk dialplan: callme-rec loaded".to_string(),
        "OK    bitrix24 auth: webhook http://127.0.0.1:".to_string(),
        "OK    bitrix24 scope: crm, telephony, user".to_string(),
        "OK    bitrix24 telephony: ".to_string(),
        "OK    bitrix24 users: 119 active employees, 117 with an internal number".to_string(),
        "OK    calls default_user: 201 is Bitrix24 user 1".to_string(),
        "OK    calls static_responsible: all 2 lines map to employees".to_string(),
        "OK    calls show_cards_to: all 3 numbers are employees".to_string(),
        format!(
            "OK    click-to-call public_url: {}bitrix24/event reachable",
            s.proxy.url()
        ),
        "OK    state dir: ".to_string(),
        "OK    state permissions: no access for other users".to_string(),
        "OK    state lock: free: no callme.lock in ".to_string(),
        "OK    state backlog: 0 Bitrix24 step(s) waiting".to_string(),
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(&expected)),
            "no line starting {expected:?} in:\n{out}"
        );
    }
    assert!(out.contains("/rest/1/***/ accepted"), "{out}");
    // Only reads were sent: no Originate, no REST write.
    assert!(s.ami.actions_named("Originate").is_empty());
    let methods: Vec<String> = s.portal.requests().into_iter().map(|r| r.method).collect();
    assert!(
        methods
            .iter()
            .all(|m| ["scope", "telephony.externalline.get", "user.get"].contains(&m.as_str())),
        "{methods:?}"
    );
}

#[test]
fn wrong_ami_secret_fails_the_login() {
    let s = Setup::healthy("doctor-secret");
    s.ami.set_secret("the-secret-manager-conf-has");
    let (code, out) = s.doctor("wrong AMI secret", None);
    assert_ne!(code, 0, "{out}");
    let l = line(&out, "FAIL  ami login:");
    assert!(
        l.contains("Asterisk refused user callme: Authentication failed; fix: make [asterisk] username/secret"),
        "{l}"
    );
    assert!(l.contains("manager reload"), "{l}");
    // Nothing else of AMI could be checked; the rest still ran.
    assert!(!out.contains("ami read classes"), "{out}");
    assert!(out.contains("OK    bitrix24 auth"), "{out}");
}

#[test]
fn missing_scope_fails() {
    let s = Setup::healthy("doctor-scope");
    s.portal.set_scopes(&["crm", "user"]);
    let (code, out) = s.doctor("missing telephony scope", None);
    assert_ne!(code, 0, "{out}");
    let l = line(&out, "FAIL  bitrix24 scope:");
    assert!(
        l.starts_with("FAIL  bitrix24 scope: telephony missing (granted: crm, user); fix: edit the inbound webhook"),
        "{l}"
    );
    assert!(l.contains("tick telephony and save"), "{l}");
    assert!(
        line(&out, "FAIL  bitrix24 telephony:").contains("insufficient_scope"),
        "{out}"
    );
}

#[test]
fn unmapped_default_user_fails() {
    let s = Setup::healthy("doctor-default");
    let (code, out) = s.doctor(
        "unmapped default_user",
        Some(("calls", "default_user", "999")),
    );
    assert_ne!(code, 0, "{out}");
    assert_eq!(fails(&out).len(), 1, "{out}");
    let l = line(&out, "FAIL  calls default_user:");
    assert!(
        l.starts_with("FAIL  calls default_user: 999 is no active employee's internal number"),
        "{l}"
    );
    assert!(
        l.contains("fix: give 999 to an active employee in Bitrix24 (internal number), or change [calls] default_user"),
        "{l}"
    );
}

#[test]
fn unwritable_state_dir_fails() {
    let s = Setup::healthy("doctor-state");
    let state = s.state_dir();
    let _lock = Unwritable::make(&state);
    let (code, out) = s.doctor("unwritable state dir", None);
    assert_ne!(code, 0, "{out}");
    assert_eq!(fails(&out).len(), 1, "{out}");
    let l = line(&out, "FAIL  state dir:");
    assert!(
        l.starts_with(&format!(
            "FAIL  state dir: {} is not writable: ",
            state.display()
        )),
        "{l}"
    );
    assert!(l.contains("fix: chown -R callme:callme"), "{l}");
}

#[test]
fn state_dir_open_to_every_user_fails() {
    let s = Setup::healthy("doctor-perm");
    let state = s.state_dir();
    set_mode(&state, 0o755);
    let (code, out) = s.doctor("state dir open to every user", None);
    assert_ne!(code, 0, "{out}");
    assert_eq!(fails(&out).len(), 1, "{out}");
    assert_eq!(
        line(&out, "FAIL  state permissions:"),
        format!(
            "FAIL  state permissions: {0} is open to every user (0755); fix: chmod -R o-rwx {0} \
             (the unit sets StateDirectoryMode=0750, UMask=0027)",
            state.display()
        )
    );
    // Closed again, a stray readable file is only a warning.
    set_mode(&state, 0o750);
    fs::write(state.join("notes.txt"), b"x").expect("write a file");
    set_mode(&state.join("notes.txt"), 0o644);
    let (code, out) = s.doctor("a readable file in a closed state dir", None);
    assert_eq!(code, 0, "{out}");
    assert!(
        line(&out, "WARN  state permissions:").contains("notes.txt (0644)"),
        "{out}"
    );
}

#[test]
fn account_without_originate_fails_when_click_to_call_is_configured() {
    let s = Setup::healthy("doctor-originate");
    // The recommended classes minus originate, and no command class: the read classes and
    // timestamps then come from the events that arrive.
    s.ami.set_classes(
        &["system", "call", "dialplan", "agent"],
        &["call", "reporting"],
    );
    s.ami.set_stream(
        b"Event: Newchannel\r\nPrivilege: call,all\r\nTimestamp: 1795668285.100000\r\n\
          Channel: PJSIP/219-00000001\r\nChannelState: 0\r\nUniqueid: 1795668285.1\r\n\
          Linkedid: 1795668285.1\r\n\r\n\
          Event: VarSet\r\nPrivilege: dialplan,all\r\nTimestamp: 1795668285.100100\r\n\
          Channel: PJSIP/219-00000001\r\nVariable: CallMeLINKEDID\r\nValue: 1795668285.1\r\n\
          Uniqueid: 1795668285.1\r\n\r\n"
            .to_vec(),
    );
    let (code, out) = s.doctor("no originate class", None);
    assert_ne!(code, 0, "{out}");
    assert_eq!(fails(&out).len(), 1, "{out}");
    assert!(
        line(&out, "FAIL  ami write classes:").contains(
            "Originate is not permitted, so click-to-call and callbacks cannot dial; fix: write = originate,call,reporting"
        ),
        "{out}"
    );
    assert!(
        line(&out, "WARN  ami read classes:")
            .contains("call, dialplan, system confirmed by events; no agent event seen"),
        "{out}"
    );
    assert!(line(&out, "OK    ami timestamps:").contains("yes"), "{out}");
    // CoreSettings needs reporting only; the driver shows in the channel of the call event.
    assert!(
        line(&out, "OK    asterisk version:").contains("20.5.2"),
        "{out}"
    );
    assert!(
        line(&out, "OK    asterisk channel driver:")
            .contains("PJSIP (chan_pjsip loaded, chan_sip unknown)"),
        "{out}"
    );
    assert!(
        line(&out, "OK    asterisk dialplan:").contains("not checked (needs write = command)"),
        "{out}"
    );
}

#[test]
fn app_mode_checks_the_bound_events() {
    use callme::bitrix::oauth::{bind_events, AppClient, TokenStore, Tokens};
    use callme::config::AppConfig;
    use support::fake_oauth::{CLIENT_ID, CLIENT_SECRET};

    // Never contacted: doctor does not refresh tokens.
    let oauth_url = "http://127.0.0.1:9/oauth/token/";
    let body = |p: &FakeBitrix| configs::app_bitrix24(&p.host(), oauth_url);
    let s = Setup::with_bitrix24("doctor-app", Some(&body));
    let (access, refresh) = s.portal.enable_app(1000);
    let tokens = Tokens {
        access_token: access.clone(),
        refresh_token: refresh.clone(),
        expires: 4_000_000_000,
        client_endpoint: s.portal.client_endpoint(),
        member_id: "member-1".into(),
        domain: s.portal.host(),
        application_token: APP_TOKEN.into(),
    };
    TokenStore::new(&s.state_dir())
        .save(&tokens)
        .expect("store the tokens");

    let (code, out) = s.doctor("app mode, events not bound", None);
    assert_ne!(code, 0, "{out}");
    assert_eq!(fails(&out).len(), 1, "{out}");
    let handler = format!("{}bitrix24/event", s.proxy.url());
    assert!(
        line(&out, "OK    bitrix24 auth:")
            .contains(&format!("app mode ({}) accepted", s.portal.host())),
        "{out}"
    );
    assert!(
        line(&out, "FAIL  click-to-call events:").starts_with(&format!(
            "FAIL  click-to-call events: ONEXTERNALCALLSTART, ONEXTERNALCALLBACKSTART not bound to {handler}; fix: reinstall"
        )),
        "{out}"
    );

    // Bound the way the install event binds them.
    let cfg = AppConfig {
        client_id: CLIENT_ID.into(),
        client_secret: callme::config::Secret::new(CLIENT_SECRET),
        portal: s.portal.host(),
        oauth_url: oauth_url.into(),
        member_id: None,
        insecure_http: true,
    };
    let client = AppClient::new(
        &cfg,
        &s.state_dir(),
        std::time::Duration::from_secs(5),
        Default::default(),
    )
    .read_only();
    bind_events(&client, &handler).expect("bind the events");
    let (code, out) = s.doctor("app mode, healthy", None);
    assert_eq!(code, 0, "{out}");
    assert!(
        line(&out, "OK    click-to-call events:").contains(&format!(
            "ONEXTERNALCALLSTART, ONEXTERNALCALLBACKSTART bound to {handler}"
        )),
        "{out}"
    );
    for secret in [access.as_str(), refresh.as_str(), CLIENT_SECRET] {
        assert!(!out.contains(secret), "{out}");
    }
}

#[test]
fn backlog_is_counted_without_touching_the_outbox() {
    use callme::bitrix::outbox::{Outbox, OUTBOX_FILE};
    use callme::calls::{Action, Direction, Intent};

    let s = Setup::healthy("doctor-backlog");
    {
        let mut ob = Outbox::open(&s.state_dir(), 1000).expect("open the outbox");
        let call = "callme-1795668285.0".to_string();
        let register = Action::Register {
            direction: Direction::Inbound,
            phone: "79991234567".into(),
            line: "8001231231".into(),
            started_ms: 1_795_668_285_000,
            employee: None,
        };
        for action in [register, Action::Show { ext: "219".into() }] {
            assert!(ob.enqueue(Intent {
                call: call.clone(),
                action,
            }));
        }
        ob.flush();
    }
    let path = s.state_dir().join(OUTBOX_FILE);
    set_mode(&path, 0o640);
    let before = fs::read(&path).expect("read the outbox");
    let (code, out) = s.doctor("backlog", None);
    assert_eq!(code, 0, "{out}");
    assert!(
        line(&out, "OK    state backlog:").starts_with(&format!(
            "OK    state backlog: 2 Bitrix24 step(s) waiting in {}, the oldest queued",
            path.display()
        )),
        "{out}"
    );
    assert_eq!(fs::read(&path).expect("read it again"), before);

    // Over [state] outbox_warn it is a warning.
    let (code, out) = s.doctor(
        "backlog over outbox_warn",
        Some(("state", "outbox_warn", "2")),
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        line(&out, "WARN  state backlog:").contains("over [state] outbox_warn = 2"),
        "{out}"
    );
}

/// A directory its owner cannot write to, even as root: mode 0500, and when that is not
/// enough (root), the immutable attribute. Undone on drop so the temp dir can be removed.
struct Unwritable<'a> {
    dir: &'a Path,
    immutable: bool,
}

impl<'a> Unwritable<'a> {
    fn make(dir: &'a Path) -> Unwritable<'a> {
        set_mode(dir, 0o500);
        let mut u = Unwritable {
            dir,
            immutable: false,
        };
        if !u.refuses_writes() {
            let ok = Command::new("chattr")
                .arg("+i")
                .arg(dir)
                .status()
                .is_ok_and(|s| s.success());
            u.immutable = ok;
            assert!(
                ok && u.refuses_writes(),
                "cannot make {} unwritable here (root, and chattr +i failed)",
                dir.display()
            );
        }
        u
    }

    fn refuses_writes(&self) -> bool {
        let probe = self.dir.join("probe");
        let refused = fs::write(&probe, b"x").is_err();
        let _ = fs::remove_file(&probe);
        refused
    }
}

impl Drop for Unwritable<'_> {
    fn drop(&mut self) {
        if self.immutable {
            let _ = Command::new("chattr").arg("-i").arg(self.dir).status();
        }
        set_mode(self.dir, 0o750);
    }
}

#[test]
fn unreachable_ami_fails_the_connect_and_the_rest_still_runs() {
    let s = Setup::healthy("doctor-connect");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let (code, out) = s.doctor(
        "AMI not reachable",
        Some(("asterisk", "port", &closed.to_string())),
    );
    assert_ne!(code, 0, "{out}");
    assert_eq!(fails(&out).len(), 1, "{out}");
    let l = line(&out, "FAIL  ami connect:");
    assert!(
        l.starts_with(&format!(
            "FAIL  ami connect: cannot connect to 127.0.0.1:{closed}: "
        )),
        "{l}"
    );
    assert!(
        l.contains("fix: start Asterisk, or correct [asterisk] host/port"),
        "{l}"
    );
    assert!(!out.contains("ami login"), "{out}");
    assert!(out.contains("OK    bitrix24 users"), "{out}");
}

/// The library entry point with a short event wait: an idle PBX and an account without the
/// `command` class leave the read classes unconfirmed, which is a warning, not a failure; the
/// channel driver comes from the calls in progress.
#[test]
fn idle_pbx_without_command_class_warns_about_read_classes() {
    use callme::doctor::{self, Level, Options};

    let s = Setup::healthy("doctor-idle");
    s.ami.set_classes(
        &["system", "call", "dialplan", "agent"],
        &["originate", "call", "reporting"],
    );
    // A call in progress on chan_sip: CoreShowChannels (write class reporting) names it.
    s.ami.set_core_show_channels(vec![vec![
        ("Channel".to_string(), "SIP/220-0000002a".to_string()),
        ("Uniqueid".to_string(), "1795668285.42".to_string()),
    ]]);
    let cfg = configs::parse(&s.config);
    let opts = Options {
        events_wait: std::time::Duration::from_millis(300),
    };
    let started = std::time::Instant::now();
    let checks = doctor::run(&cfg, &opts, &mut |_| {});
    let took = started.elapsed();
    let get = |name: &str| {
        checks
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no {name} in {checks:#?}"))
    };
    let read = get("ami read classes");
    assert_eq!(read.level, Level::Warn, "{read}");
    assert!(
        read.detail.starts_with("no call event within 0.3 s"),
        "{read}"
    );
    // Without `command` the setting comes from the FullyBooted event and its Timestamp.
    let stamps = get("ami timestamps");
    assert_eq!(stamps.level, Level::Ok, "{stamps}");
    assert!(
        stamps.detail.starts_with("timestampevents = yes"),
        "{stamps}"
    );
    let driver = get("asterisk channel driver");
    assert_eq!(
        driver.detail, "chan_sip (chan_pjsip unknown, chan_sip loaded)",
        "{driver}"
    );
    assert!(!doctor::any_failed(&checks), "{checks:#?}");
    println!("idle PBX: {read}\n(took {took:?})");
}

/// `callme run` holds `callme.lock` (flock, its PID inside); doctor names the holder from
/// `/proc/locks` without taking the lock.
#[test]
fn state_lock_names_the_running_daemon() {
    let s = Setup::healthy("doctor-lock");
    let lock = s.state_dir().join("callme.lock");

    // A PID that has ended.
    let mut gone = Command::new(env!("CARGO_BIN_EXE_callme"))
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("run callme --version");
    let gone_pid = gone.id();
    gone.wait().expect("wait for it");
    fs::write(&lock, format!("{gone_pid}\n")).expect("write the lock file");
    set_mode(&lock, 0o640);
    let (code, out) = s.doctor("lock file of an ended daemon", None);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        line(&out, "OK    state lock:"),
        format!(
            "OK    state lock: free: no daemon holds it (PID {gone_pid} in callme.lock is from an earlier run)"
        )
    );

    // A real `callme run` on this state dir takes the lock for its lifetime.
    let conf = s.dir.path().join("run.conf");
    fs::write(&conf, &s.config).expect("write its config");
    let mut running = Command::new(env!("CARGO_BIN_EXE_callme"))
        .args(["run", "-c"])
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start callme run");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while fs::read_to_string(&lock).unwrap_or_default().trim() != running.id().to_string() {
        assert!(
            std::time::Instant::now() < deadline,
            "callme run never took the lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (code, out) = s.doctor("lock held by a running callme", None);
    let _ = running.kill();
    let _ = running.wait();
    // What the daemon wrote is closed to other users even without the unit's UMask.
    assert_eq!(
        line(&out, "OK    state permissions:"),
        "OK    state permissions: no access for other users",
        "{out}"
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        line(&out, "OK    state lock:"),
        format!(
            "OK    state lock: held by callme PID {}: the daemon on this dir is running",
            running.id()
        )
    );

    // Its PID is still in the file, but nobody holds the lock any more.
    let (code, out) = s.doctor("lock file of a killed daemon", None);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        line(&out, "OK    state lock:"),
        format!(
            "OK    state lock: free: no daemon holds it (PID {} in callme.lock is from an earlier run)",
            running.id()
        )
    );

    // A live callme that does not hold the lock (ami-events takes none) is not its owner:
    // the kernel's flock table decides, not the PID in the file.
    let mut other = Command::new(env!("CARGO_BIN_EXE_callme"))
        .args(["ami-events", "-c"])
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start callme ami-events");
    fs::write(&lock, format!("{}\n", other.id())).expect("write the lock file");
    let (code, out) = s.doctor("PID of a callme that holds no lock", None);
    let _ = other.kill();
    let _ = other.wait();
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        line(&out, "OK    state lock:"),
        format!(
            "OK    state lock: free: no daemon holds it (PID {} in callme.lock is from an earlier run)",
            other.id()
        )
    );
}
