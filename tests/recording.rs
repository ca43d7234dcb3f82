//! Attaching recordings end to end: the real delivery queue and webhook client against the fake
//! Bitrix24 over HTTP, with a temporary recordings directory standing in for the PBX's
//! `/var/spool/asterisk`. Waits are configured short so the suite stays fast.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use callme::bitrix::api;
use callme::bitrix::deliver::{DeliverConfig, Deliverer};
use callme::bitrix::{Directory, Transport, WebhookClient};
use callme::calls::{Action, Direction, FinishUser, Intent, Status};
use callme::config::RecordingMode;
use support::configs;
use support::daemon::TempDir;
use support::fake_bitrix::FakeBitrix;

struct Setup {
    fake: FakeBitrix,
    deliverer: Deliverer,
    root: TempDir,
}

/// A deliverer in `mode` with the recordings root at a temp dir (`pbx_root` = `path_base`),
/// `wait` seconds, calls registered under default user 219.
fn setup(mode: &str, wait: &str, extra: &str) -> Setup {
    let fake = FakeBitrix::start();
    let root = TempDir::new(&format!("callme-rec-{mode}"));
    let mut text = configs::set(
        &configs::offline(&fake.webhook_url()),
        "calls",
        "default_user",
        "219",
    );
    for (key, value) in [
        ("mode", mode),
        ("pbx_root", &root.path().display().to_string()),
        ("wait", wait),
    ] {
        text = configs::set(&text, "recording", key, value);
    }
    let cfg = configs::parse(&format!("{text}{extra}\n"));
    let client = WebhookClient::new(&fake.webhook_url(), Duration::from_secs(5));
    let users = api::users_all(&client).unwrap();
    let mut dcfg = DeliverConfig::from_config(&cfg);
    dcfg.retry_min = Duration::from_millis(50);
    dcfg.retry_max = Duration::from_millis(200);
    let deliverer = Deliverer::new(
        dcfg,
        Box::new(client),
        Directory::from_users(users, Instant::now()),
    );
    Setup {
        fake,
        deliverer,
        root,
    }
}

/// Register, finish and attach `path` for call `key`.
fn push_call(d: &mut Deliverer, key: &str, path: &str) {
    let actions = [
        Action::Register {
            direction: Direction::Inbound,
            phone: "79991234567".into(),
            line: "8001231231".into(),
            started_ms: 1_795_668_455_000,
            employee: None,
        },
        Action::Finish {
            user: FinishUser::Employee("219".into()),
            duration: 5,
            status: Status::ANSWERED,
        },
        Action::Attach { path: path.into() },
    ];
    for action in actions {
        d.push(Intent {
            call: key.into(),
            action,
        });
    }
}

/// Run the queue like the daemon's delivery loop until nothing is pending.
fn drain(d: &mut Deliverer, limit: Duration) -> Duration {
    let started = Instant::now();
    while d.pending() > 0 {
        assert!(started.elapsed() < limit, "still pending after {limit:?}");
        match d.run_due(Instant::now()) {
            Some(next) => {
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    started.elapsed()
}

fn count(d: &Deliverer, outcome: &str) -> u64 {
    d.stats()
        .steps
        .get(&("attachRecord".to_string(), outcome.to_string()))
        .copied()
        .unwrap_or(0)
}

/// Some bytes that are not text, of length `n`.
fn audio(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn write(path: &Path, bytes: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

#[test]
fn mp3_converted_after_hangup_is_attached_once_as_base64() {
    let mut s = setup("upload", "3", "");
    let dir = s.root.path().join("continuous/2025/10/26");
    let wav = dir.join("call-1761855304.108488.wav");
    let mp3 = dir.join("call-1761855304.108488.mp3");
    // The call has ended: MixMonitor left the WAV, lame is about to convert it.
    write(&wav, &audio(3000));
    let want = audio(4321);
    let converter = {
        let (wav, mp3, want) = (wav.clone(), mp3.clone(), want.clone());
        std::thread::spawn(move || {
            // The conversion taking its time is the scenario, not a wait.
            std::thread::sleep(Duration::from_secs(2));
            fs::write(&mp3, &want).unwrap();
            let converted = Instant::now();
            fs::remove_file(&wav).unwrap();
            converted
        })
    };
    push_call(&mut s.deliverer, "c1", mp3.to_str().unwrap());
    drain(&mut s.deliverer, Duration::from_secs(10));
    let drained = Instant::now();
    let converted = converter.join().unwrap();

    assert!(drained >= converted, "attached before the MP3 existed");
    let records = s.fake.records();
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records[0];
    assert_eq!(r.via, "content");
    assert_eq!(r.filename, "call-1761855304.108488.mp3");
    assert_eq!(r.bytes, want, "decoded FILE_CONTENT equals the file");
    let attaches = s.fake.requests_for("telephony.externalcall.attachrecord");
    assert_eq!(attaches.len(), 1, "one attachRecord, no early tries");
    assert_eq!(attaches[0].status, 200);
    // After finish, never before.
    let methods: Vec<String> = s.fake.requests().into_iter().map(|r| r.method).collect();
    let finish = methods
        .iter()
        .position(|m| m == "telephony.externalcall.finish")
        .unwrap();
    let attach = methods
        .iter()
        .position(|m| m == "telephony.externalcall.attachrecord")
        .unwrap();
    assert!(finish < attach, "{methods:?}");
    assert_eq!(count(&s.deliverer, "ok"), 1);
    assert_eq!(s.deliverer.stats().retries, 0, "waiting is not retrying");
}

#[test]
fn a_file_that_never_appears_is_given_up_after_wait() {
    let mut s = setup("upload", "0.4", "");
    let path = s.root.path().join("continuous/2025/10/26/call-9.9.mp3");
    push_call(&mut s.deliverer, "c1", path.to_str().unwrap());
    let took = drain(&mut s.deliverer, Duration::from_secs(5));
    assert!(took >= Duration::from_millis(400), "{took:?}");
    assert!(s.fake.records().is_empty());
    assert!(s
        .fake
        .requests_for("telephony.externalcall.attachrecord")
        .is_empty());
    assert_eq!(count(&s.deliverer, "missing"), 1);
    assert_eq!(s.deliverer.stats().permanent_failures, 0);
}

#[test]
fn the_wav_is_sent_when_the_mp3_never_comes() {
    let mut s = setup("upload", "0.3", "");
    let wav = s.root.path().join("continuous/x/call-2.2.wav");
    write(&wav, &audio(999));
    push_call(
        &mut s.deliverer,
        "c1",
        s.root
            .path()
            .join("continuous/x/call-2.2.mp3")
            .to_str()
            .unwrap(),
    );
    drain(&mut s.deliverer, Duration::from_secs(5));
    let records = s.fake.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].filename, "call-2.2.wav");
    assert_eq!(records[0].bytes, audio(999));
}

#[test]
fn a_freepbx_wav_is_attached_at_once_with_a_lower_case_name() {
    let mut s = setup("upload", "60", "");
    // Relative names are relative to pbx_root.
    write(
        &s.root.path().join("monitor/2026/11/26/IN-1.WAV"),
        &audio(10),
    );
    push_call(&mut s.deliverer, "c1", "monitor/2026/11/26/IN-1.WAV");
    let took = drain(&mut s.deliverer, Duration::from_secs(5));
    assert!(took < Duration::from_secs(2), "{took:?}");
    let records = s.fake.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].filename, "in-1.wav");
}

#[test]
fn paths_outside_the_root_are_refused() {
    let mut s = setup("upload", "0.2", "");
    let outside = TempDir::new("callme-rec-outside");
    write(&outside.path().join("secret.mp3"), b"not yours");
    write(&outside.path().join("passwd.wav"), b"not yours");
    std::os::unix::fs::symlink(outside.path(), s.root.path().join("escape")).unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("passwd.wav"),
        s.root.path().join("linked.wav"),
    )
    .unwrap();
    let outside_abs = outside.path().join("secret.mp3");
    let bad = [
        "../../etc/passwd".to_string(),
        "../../etc/passwd.wav".to_string(),
        format!("{}/../../etc/passwd.mp3", s.root.path().display()),
        outside_abs.display().to_string(),
        "escape/secret.mp3".to_string(),
        "linked.wav".to_string(),
        "recording.gsm".to_string(),
    ];
    for (i, path) in bad.iter().enumerate() {
        push_call(&mut s.deliverer, &format!("c{i}"), path);
    }
    drain(&mut s.deliverer, Duration::from_secs(5));
    assert!(s.fake.records().is_empty(), "{:?}", s.fake.records());
    assert!(s
        .fake
        .requests_for("telephony.externalcall.attachrecord")
        .is_empty());
    assert_eq!(count(&s.deliverer, "refused"), bad.len() as u64);
}

#[test]
fn a_large_file_goes_through_the_upload_url() {
    let mut s = setup("upload", "5", "upload_max = 0.001");
    let mp3 = s.root.path().join("continuous/big/call-3.3.mp3");
    let want = audio(5000); // over 0.001 MiB = 1048 bytes
    write(&mp3, &want);
    push_call(&mut s.deliverer, "c1", mp3.to_str().unwrap());
    drain(&mut s.deliverer, Duration::from_secs(5));
    let records = s.fake.records();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].via, "upload");
    assert_eq!(records[0].filename, "call-3.3.mp3");
    assert_eq!(records[0].bytes, want);
    let attaches = s.fake.requests_for("telephony.externalcall.attachrecord");
    assert_eq!(attaches.len(), 1);
    assert!(attaches[0].params.get("FILE_CONTENT").is_none());
    assert_eq!(attaches[0].params["FILENAME"], "call-3.3.mp3");
    assert_eq!(s.fake.requests_for("upload").len(), 1);
}

/// A static file server for the recordings root, like nginx on the PBX.
fn serve_dir(root: PathBuf) -> (String, Arc<tiny_http::Server>) {
    let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
    let port = server.server_addr().to_ip().unwrap().port();
    let srv = server.clone();
    std::thread::spawn(move || {
        for req in srv.incoming_requests() {
            let path = req.url().trim_start_matches('/').replace("%20", " ");
            let file = root.join(path);
            let resp = match fs::read(&file) {
                Ok(bytes) => tiny_http::Response::from_data(bytes),
                Err(_) => tiny_http::Response::from_data(b"no".to_vec()).with_status_code(404),
            };
            let _ = req.respond(resp);
        }
    });
    (format!("http://127.0.0.1:{port}/"), server)
}

#[test]
fn url_mode_sends_the_public_url_once_the_file_is_there() {
    // The PBX's web server publishes the recordings root; callme checks the public URL (no
    // fetch_url, no local directory) and Bitrix24 downloads it.
    let published = TempDir::new("callme-rec-pub");
    let (base, server) = serve_dir(published.path().to_path_buf());
    let mut s = setup("url", "5", &format!("public_url = {base}"));
    let rel = "continuous/a b/call-4.4.mp3";
    let writer = {
        let file = published.path().join(rel);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(700));
            write(&file, &audio(700));
        })
    };
    push_call(&mut s.deliverer, "c1", rel);
    drain(&mut s.deliverer, Duration::from_secs(5));
    writer.join().unwrap();
    let records = s.fake.records();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].via, "url");
    assert_eq!(
        records[0].record_url.as_deref(),
        Some(format!("{base}continuous/a%20b/call-4.4.mp3").as_str())
    );
    assert_eq!(records[0].filename, "call-4.4.mp3");
    assert_eq!(records[0].bytes, audio(700), "Bitrix24 downloaded the file");
    assert_eq!(
        s.fake
            .requests_for("telephony.externalcall.attachrecord")
            .len(),
        1,
        "no attach before the file was published"
    );
    server.unblock();
}

#[test]
fn upload_mode_can_fetch_from_the_pbx_over_http() {
    let mut s = setup("upload", "5", "");
    let (base, server) = serve_dir(s.root.path().to_path_buf());
    let mut cfg = DeliverConfig::from_config(&callme::config::Config::demo());
    cfg.recording.mode = RecordingMode::Upload;
    cfg.recording.pbx_root = s.root.path().to_path_buf();
    cfg.recording.path_base = PathBuf::from("/nonexistent");
    cfg.recording.fetch_url = Some(base);
    cfg.default_user = Some("219".into());
    let client = WebhookClient::new(&s.fake.webhook_url(), Duration::from_secs(5));
    let users = api::users_all(&client).unwrap();
    let mut d = Deliverer::new(
        cfg,
        Box::new(client),
        Directory::from_users(users, Instant::now()),
    );
    write(&s.root.path().join("c/call-5.5.mp3"), &audio(1234));
    push_call(&mut d, "c1", "c/call-5.5.mp3");
    drain(&mut d, Duration::from_secs(5));
    let records = s.fake.records();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].bytes, audio(1234));
    // Unused deliverer of the setup: nothing queued there.
    assert_eq!(s.deliverer.pending(), 0);
    drain(&mut s.deliverer, Duration::from_secs(1));
    server.unblock();
}

#[test]
fn mode_off_sends_nothing() {
    let mut s = setup("off", "1", "");
    write(&s.root.path().join("a.mp3"), b"x");
    push_call(&mut s.deliverer, "c1", "a.mp3");
    drain(&mut s.deliverer, Duration::from_secs(2));
    assert!(s
        .fake
        .requests_for("telephony.externalcall.attachrecord")
        .is_empty());
    assert_eq!(count(&s.deliverer, "off"), 1);
}

#[test]
fn the_fake_refuses_a_record_before_finish() {
    let fake = FakeBitrix::start();
    let client = WebhookClient::new(&fake.webhook_url(), Duration::from_secs(5));
    let reg = api::register(
        &client,
        &api::RegisterParams {
            user_id: 19,
            phone_number: "79991234567".into(),
            call_type: 2,
            call_start_date: String::new(),
            line_number: None,
            crm_create: false,
            external_call_id: "x-1".into(),
            show: false,
        },
    )
    .unwrap();
    let p = api::RecordParams::Content {
        filename: "a.mp3".into(),
        base64: "eA==".into(),
    };
    let e = api::attach_record(&client, &reg.call_id, &p).unwrap_err();
    assert!(
        e.to_string()
            .contains("Call is not found in the statistic table"),
        "{e}"
    );
    // And the other error strings once it is finished.
    client
        .call(
            "telephony.externalcall.finish",
            &serde_json::json!({"CALL_ID": reg.call_id, "USER_ID": 19, "DURATION": 1}),
        )
        .unwrap();
    let id = reg.call_id.as_str();
    for (params, want) in [
        (
            serde_json::json!({"CALL_ID": id}),
            "Request should contain or URL or FILENAME",
        ),
        (
            serde_json::json!({"CALL_ID": id, "FILENAME": "a.MP3", "FILE_CONTENT": "eA=="}),
            "Only wav and mp3 are allowed",
        ),
        (
            serde_json::json!({"CALL_ID": id, "FILENAME": "a.mp3", "FILE_CONTENT": ""}),
            "File content is empty.",
        ),
        (
            serde_json::json!({"CALL_ID": id, "FILENAME": "a.mp3", "FILE_CONTENT": "e!=="}),
            "Base64 encoding is expected",
        ),
    ] {
        let e = client
            .call("telephony.externalCall.attachRecord", &params)
            .unwrap_err();
        assert!(e.to_string().contains(want), "{params}: {e}");
    }
    assert!(api::attach_record(&client, id, &p).is_ok());
    assert_eq!(fake.records()[0].bytes, b"x");
}
