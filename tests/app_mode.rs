//! App mode (`[bitrix24] auth = app`) and `WRONG_AUTH_TYPE` in webhook mode, against the fake
//! portal, the fake OAuth server and (for the daemon tests) the fake AMI, all on loopback.
mod support;

use std::collections::HashMap;
use std::fs;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use callme::bitrix::deliver::{DeliverConfig, Deliverer};
use callme::bitrix::oauth::{AppClient, TokenStore, Tokens};
use callme::bitrix::AuthStatus;
use callme::bitrix::{api, Directory, Transport};
use callme::calls::{Tracker, TrackerConfig};
use serde_json::Value;
use support::captures::alternating_call;
use support::configs;
use support::daemon::{Running, TempDir};
use support::fake_ami::FakeAmi;
use support::fake_bitrix::FakeBitrix;
use support::fake_oauth::{FakeOAuth, CLIENT_SECRET};
use support::http::{form, request};
use support::wait::{wait_for, wait_until};

const MEMBER: &str = "a223c6b9410f85df78e9377d6c4f7213";
const APP_TOKEN: &str = "application-token-1";
const SECRET: &str = "amisecret-app";
const WAIT: Duration = Duration::from_secs(20);

fn app_config_text(portal: &FakeBitrix, oauth: &FakeOAuth, state: &str, ami_port: u16) -> String {
    let bitrix24 = configs::app_bitrix24(&portal.host(), &oauth.url());
    let text = configs::daemon(ami_port, SECRET, &bitrix24);
    let text = configs::set(
        &text,
        "http",
        "public_url",
        "https://pbx.example.com/callme/",
    );
    configs::set(&text, "state", "dir", state)
}

fn tokens(portal: &FakeBitrix, (access, refresh): (String, String)) -> Tokens {
    Tokens {
        access_token: access,
        refresh_token: refresh,
        expires: 4_000_000_000,
        client_endpoint: portal.client_endpoint(),
        member_id: MEMBER.into(),
        domain: portal.host(),
        application_token: APP_TOKEN.into(),
    }
}

/// The install event's form body.
fn install_body(t: &Tokens) -> String {
    form(&[
        ("event", "ONAPPINSTALL"),
        ("data[VERSION]", "1"),
        ("auth[access_token]", &t.access_token),
        ("auth[refresh_token]", &t.refresh_token),
        ("auth[expires_in]", "3600"),
        ("auth[client_endpoint]", &t.client_endpoint),
        ("auth[member_id]", &t.member_id),
        ("auth[domain]", &t.domain),
        ("auth[application_token]", &t.application_token),
    ])
}

fn post(addr: &str, path: &str, body: &str) -> (u16, String) {
    let r = request(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/x-www-form-urlencoded")],
        body.as_bytes(),
    );
    (r.status, r.body)
}

fn get(addr: &str, path: &str) -> (u16, String) {
    let r = request(addr, "GET", path, &[], b"");
    (r.status, r.body)
}

/// The daemon's `/status` document, from the ops listener at `addr`.
fn status(addr: &str) -> Value {
    serde_json::from_str(&get(addr, "/status").1).expect("/status is JSON")
}

fn app_client(
    portal: &FakeBitrix,
    oauth: &FakeOAuth,
    dir: &TempDir,
    status: AuthStatus,
) -> AppClient {
    let text = app_config_text(portal, oauth, &dir.path().display().to_string(), 1);
    let cfg = configs::parse(&text);
    AppClient::new(
        cfg.bitrix24.app.as_ref().unwrap(),
        dir.path(),
        Duration::from_secs(5),
        status,
    )
}

/// 20 calls through a `Deliverer` on an `AppClient` while access tokens die every 15
/// requests: every call is registered and finished, the newest pair is on disk, and no
/// request sends a token after that token was refused.
#[test]
fn twenty_calls_cross_token_expiries() {
    let portal = FakeBitrix::start();
    let first = portal.enable_app(15);
    let oauth = FakeOAuth::start(portal.refresher(), portal.client_endpoint());
    let dir = TempDir::new("callme-app-expiry");
    let status = AuthStatus::default();
    let app = Arc::new(app_client(&portal, &oauth, &dir, status.clone()));
    app.install(tokens(&portal, first)).expect("install");

    let directory = Directory::from_users(api::users_all(&*app).expect("user.get"), Instant::now());
    let employees: Vec<String> = directory.inners().map(String::from).collect();
    let mut cfg = DeliverConfig::from_config(&configs::parse(&app_config_text(
        &portal,
        &oauth,
        &dir.path().display().to_string(),
        1,
    )));
    cfg.retry_min = Duration::from_millis(20);
    cfg.retry_max = Duration::from_millis(200);
    let mut d = Deliverer::new(cfg, Box::new(app.clone()), directory);
    let mut tracker = Tracker::new(TrackerConfig::default());
    tracker.set_employees(employees);
    for n in 0..20 {
        for intent in alternating_call(&mut tracker, n) {
            d.push(intent);
        }
    }
    let deadline = Instant::now() + WAIT;
    while d.pending() > 0 && Instant::now() < deadline {
        d.run_due(Instant::now());
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(d.pending(), 0, "steps left: {:?}", d.stats());

    let ok = |m: &str| {
        portal
            .commands()
            .iter()
            .filter(|r| r.method == m && r.status == 200)
            .count()
    };
    assert_eq!(ok("telephony.externalcall.register"), 20);
    assert_eq!(portal.finished_calls().len(), 20);
    assert!(
        oauth.refreshes() >= 2,
        "only {} refreshes: the run must cross two expiries",
        oauth.refreshes()
    );
    assert_eq!(status.lock().unwrap().clone(), None);

    // No token is sent again once it was refused, and only the newest token is in use.
    let log = portal.token_log();
    let mut refused: HashMap<&str, usize> = HashMap::new();
    for (i, (tok, st)) in log.iter().enumerate() {
        if let Some(at) = refused.get(tok.as_str()) {
            panic!("token refused at request {at} was sent again at request {i}");
        }
        if *st == 401 {
            refused.insert(tok, i);
        }
    }
    assert_eq!(refused.len(), oauth.refreshes(), "one 401 per refresh");
    let disk = TokenStore::new(dir.path()).load().unwrap().unwrap();
    assert_eq!(
        &disk.access_token,
        &log.last().unwrap().0,
        "newest token on disk"
    );
    assert_eq!(disk, app.tokens().unwrap());
    assert!(
        (portal.refresher())(&disk.refresh_token).is_some(),
        "the refresh token on disk is the live one"
    );
}

/// Four threads calling at once while tokens die every 5 requests: a refresh token is never
/// spent twice (that would be `invalid_grant`), so every call succeeds.
#[test]
fn concurrent_calls_refresh_once_at_a_time() {
    let portal = FakeBitrix::start();
    let first = portal.enable_app(5);
    let oauth = FakeOAuth::start(portal.refresher(), portal.client_endpoint());
    let dir = TempDir::new("callme-app-concurrent");
    let status = AuthStatus::default();
    let app = Arc::new(app_client(&portal, &oauth, &dir, status.clone()));
    app.install(tokens(&portal, first)).unwrap();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let app = app.clone();
            thread::spawn(move || {
                for _ in 0..10 {
                    // A fresh token may be used up by the other threads before this one
                    // sends it (the fake's tokens live 5 requests): that is a retryable
                    // error, retried here as the outbox would.
                    let mut tries = 0;
                    while let Err(e) = app.call("event.get", &Value::Null) {
                        assert!(e.is_retryable() && tries < 5, "{e}");
                        tries += 1;
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert!(oauth.refreshes() >= 7, "{}", oauth.refreshes());
    assert_eq!(status.lock().unwrap().clone(), None);
    assert_eq!(
        TokenStore::new(dir.path()).load().unwrap().unwrap(),
        app.tokens().unwrap()
    );
}

/// The daemon in app mode: a refused refresh keeps the call in the outbox and turns
/// `/healthz` to 503; a new install event brings delivery back.
#[test]
fn refused_refresh_waits_for_a_new_install() {
    refused_refresh_waits("a_inbound_answered.ami");
}

/// The same on the PJSIP twin (`tests/fixtures/pjsip/`, Asterisk 22).
#[test]
fn refused_refresh_waits_for_a_new_install_pjsip() {
    refused_refresh_waits("pjsip/a_inbound_answered.ami");
}

/// `answered`: an answered inbound call's capture.
fn refused_refresh_waits(answered: &str) {
    let portal = FakeBitrix::start();
    let first = portal.enable_app(1000);
    let oauth = FakeOAuth::start(portal.refresher(), portal.client_endpoint());
    let ami = FakeAmi::start("callme", SECRET);
    let mut d = Running::start(
        &app_config_text(&portal, &oauth, "{state}", ami.port()),
        &[],
    );
    let addr = d.http_addr(WAIT).expect("HTTP address");
    let ops = d.ops_addr(WAIT).expect("ops address");
    assert!(ami.wait_accepted(1, WAIT), "AMI login");

    // Not installed yet: unhealthy, and says why on the ops listener only (the public one
    // must not tell strangers that the install URL is open).
    let (code, text) = get(&ops, "/healthz");
    assert_eq!(code, 503);
    assert!(text.contains("not installed"), "{text}");
    assert_eq!(get(&addr, "/healthz"), (503, "unhealthy\n".to_string()));

    let t1 = tokens(&portal, first);
    assert_eq!(post(&addr, "/bitrix24/install", &install_body(&t1)).0, 200);
    assert!(
        wait_until(WAIT, || portal.bound_events().len() == 2),
        "events bound"
    );
    let bound = portal.bound_events();
    assert!(bound.contains(&(
        "ONEXTERNALCALLSTART".to_string(),
        "https://pbx.example.com/callme/bitrix24/event".to_string()
    )));
    assert!(
        wait_until(WAIT, || get(&addr, "/healthz").0 == 200),
        "healthy after install"
    );
    // The user directory loads once the app is installed (retried every users_refresh).
    assert!(wait_until(WAIT, || status(&ops)["users"]["count"]
        .as_u64()
        .is_some_and(|n| n > 0)));

    // The app is removed: its tokens die and the OAuth server refuses the refresh.
    oauth.set_refuse(true);
    portal.expire_all();
    assert!(ami.push(&support::capture_tail(answered)));
    assert!(
        wait_until(WAIT, || get(&ops, "/healthz")
            .1
            .contains("refused to refresh")),
        "healthz: {:?}\n{}",
        get(&ops, "/healthz"),
        d.log()
    );
    assert_eq!(get(&addr, "/healthz").0, 503);
    // The delivery thread has met the refusal once it counts a retry; the call must then
    // still be waiting in the outbox, not dropped.
    let held = wait_for(WAIT, || {
        let s = status(&ops);
        (s["bitrix24"]["retries"].as_u64()? > 0).then_some(s)
    })
    .unwrap_or_else(|| panic!("no retry after the refusal: {}", status(&ops)));
    let b = &held["bitrix24"];
    assert!(b["queue_depth"].as_u64().unwrap() > 0, "{held}");
    assert_eq!(b["permanent_failures"], 0, "{held}");
    assert!(
        b["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("refused to refresh")),
        "{held}"
    );
    assert!(portal.finished_calls().is_empty());
    let log = d.log();
    assert_eq!(
        log.lines()
            .filter(|l| l.starts_with("[ERROR") && l.contains("refused to refresh"))
            .count(),
        1,
        "logged once:\n{log}"
    );
    assert!(!log.contains(CLIENT_SECRET) && !log.contains(&t1.refresh_token));

    // A reinstall brings new tokens: the call goes through.
    let t2 = tokens(&portal, portal.issue_tokens());
    assert_eq!(post(&addr, "/bitrix24/install", &install_body(&t2)).0, 200);
    assert!(
        wait_until(Duration::from_secs(30), || portal.finished_calls().len()
            == 1),
        "not delivered after reinstall:\n{}",
        d.log()
    );
    assert_eq!(get(&addr, "/healthz").0, 200);
    let disk = TokenStore::new(&d.dir.path().join("state"))
        .load()
        .unwrap()
        .unwrap();
    assert_eq!(disk.access_token, t2.access_token);
    d.terminate();
    d.wait_exit(WAIT);
}

/// An install reloads the user directory at once, not at the next refresh (issue #16): with
/// `users_refresh` an hour, an employee added on the portal reaches `/status` right after a
/// reinstall, which without the reload would take the hour.
#[test]
fn an_install_reloads_the_user_directory_at_once() {
    let portal = FakeBitrix::start();
    let first = portal.enable_app(1000);
    let oauth = FakeOAuth::start(portal.refresher(), portal.client_endpoint());
    let ami = FakeAmi::start("callme", SECRET);
    let text = configs::set(
        &app_config_text(&portal, &oauth, "{state}", ami.port()),
        "bitrix24",
        "users_refresh",
        "3600",
    );
    let d = Running::start(&text, &["--debug"]);
    let addr = d.http_addr(WAIT).expect("HTTP address");
    let ops = d.ops_addr(WAIT).expect("ops address");
    // Not installed: the directory cannot load, and /status says so.
    assert_eq!(status(&ops)["users"]["loaded"], false);

    let t1 = tokens(&portal, first);
    assert_eq!(post(&addr, "/bitrix24/install", &install_body(&t1)).0, 200);
    let count = |ops: &str| status(ops)["users"]["count"].as_u64().unwrap_or(0);
    let before = wait_for(WAIT, || Some(count(&ops)).filter(|&n| n > 0))
        .unwrap_or_else(|| panic!("no directory after the install:\n{}", d.log()));
    assert_eq!(status(&ops)["users"]["loaded"], true);

    // A new employee; the next refresh is an hour away. A reinstall loads them now.
    portal.add_users(1);
    let t2 = tokens(&portal, portal.issue_tokens());
    assert_eq!(post(&addr, "/bitrix24/install", &install_body(&t2)).0, 200);
    assert!(
        wait_until(WAIT, || count(&ops) == before + 1),
        "the install did not reload the directory ({} users):\n{}",
        count(&ops),
        d.log()
    );
    assert!(d
        .log()
        .contains("loading the Bitrix24 user directory again now"));
}

/// The install endpoint: the first install must name our portal; later ones must carry the
/// stored application_token and member_id; oversized and malformed bodies are refused.
/// Events in app mode are checked against the stored token too.
#[test]
fn install_endpoint_checks() {
    let portal = FakeBitrix::start();
    let first = portal.enable_app(1000);
    let oauth = FakeOAuth::start(portal.refresher(), portal.client_endpoint());
    let ami = FakeAmi::start("callme", SECRET);
    let d = Running::start(
        &app_config_text(&portal, &oauth, "{state}", ami.port()),
        &[],
    );
    let addr = d.http_addr(WAIT).expect("HTTP address");
    let t1 = tokens(&portal, first);

    // Events before any install cannot be verified.
    let event = form(&[
        ("event", "ONEXTERNALCALLSTART"),
        ("auth[application_token]", APP_TOKEN),
        ("auth[member_id]", MEMBER),
    ]);
    assert_eq!(post(&addr, "/bitrix24/event", &event).0, 403);
    // The first install must come from [bitrix24] portal.
    let stranger = Tokens {
        domain: "evil.bitrix24.ru".into(),
        ..t1.clone()
    };
    assert_eq!(
        post(&addr, "/bitrix24/install", &install_body(&stranger)).0,
        403
    );
    assert_eq!(post(&addr, "/bitrix24/install", &install_body(&t1)).0, 200);
    let path = d.dir.path().join("state/oauth.json");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let stored = fs::read_to_string(&path).unwrap();

    // Later installs: wrong token or member_id → 403, tokens unchanged.
    let (a, r) = portal.issue_tokens();
    let bad_token = Tokens {
        access_token: a.clone(),
        refresh_token: r.clone(),
        application_token: "application-token-2".into(),
        ..t1.clone()
    };
    assert_eq!(
        post(&addr, "/bitrix24/install", &install_body(&bad_token)).0,
        403
    );
    let bad_member = Tokens {
        access_token: a,
        refresh_token: r,
        member_id: "b334d7c0521096e089488ed7d5a8324".into(),
        ..t1.clone()
    };
    assert_eq!(
        post(&addr, "/bitrix24/install", &install_body(&bad_member)).0,
        403
    );
    assert_eq!(fs::read_to_string(&path).unwrap(), stored);

    // Oversized, malformed, incomplete, wrong method.
    let big = format!("{}&pad={}", install_body(&t1), "x".repeat(70 * 1024));
    assert_eq!(post(&addr, "/bitrix24/install", &big).0, 413);
    assert_eq!(post(&addr, "/bitrix24/install", "auth%zz=1").0, 400);
    let (code, text) = post(&addr, "/bitrix24/install", "auth[access_token]=x");
    assert_eq!(code, 400, "{text}");
    assert_eq!(get(&addr, "/bitrix24/install").0, 405);
    assert_eq!(fs::read_to_string(&path).unwrap(), stored);

    // Events: the stored token and member_id, not the webhook's app_token.
    let wrong = form(&[
        ("event", "ONAPPTEST"),
        ("auth[application_token]", "nope"),
        ("auth[member_id]", MEMBER),
    ]);
    assert_eq!(post(&addr, "/bitrix24/event", &wrong).0, 403);
    let other_member = form(&[
        ("event", "ONAPPTEST"),
        ("auth[application_token]", APP_TOKEN),
        ("auth[member_id]", "b334d7c0521096e089488ed7d5a8324"),
    ]);
    assert_eq!(post(&addr, "/bitrix24/event", &other_member).0, 403);
    let good = form(&[
        ("event", "ONAPPTEST"),
        ("auth[application_token]", APP_TOKEN),
        ("auth[member_id]", MEMBER),
    ]);
    assert_eq!(
        post(&addr, "/bitrix24/event", &good),
        (200, "ignored\n".to_string())
    );
    let log = d.log();
    for secret in [
        APP_TOKEN,
        &t1.access_token,
        &t1.refresh_token,
        CLIENT_SECRET,
    ] {
        assert!(!log.contains(secret), "{secret} in the log");
    }

    // app-status: what is stored and bound, no secrets.
    assert!(wait_until(WAIT, || portal.bound_events().len() == 2));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_callme"))
        .args(["app-status", "-c"])
        .arg(d.dir.path().join("callme.conf"))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    let host = portal.host();
    for want in [
        host.as_str(),
        MEMBER,
        "tokens stored: yes",
        "valid until",
        "ONEXTERNALCALLSTART -> https://pbx.example.com/callme/bitrix24/event",
        "ONEXTERNALCALLBACKSTART",
    ] {
        assert!(text.contains(want), "{want} missing:\n{text}");
    }
    for secret in [
        APP_TOKEN,
        &t1.access_token,
        &t1.refresh_token,
        CLIENT_SECRET,
    ] {
        assert!(!text.contains(secret), "{secret} printed");
    }
}

/// Forged installs (issue #13): each is refused with 403, leaves `oauth.json` as it was (absent
/// before the first install, byte for byte after it), and is logged with its reason but no
/// token. The real install works after all of them. `[bitrix24] member_id` is pinned here.
#[test]
fn forged_installs_are_refused() {
    let portal = FakeBitrix::start();
    let first = portal.enable_app(1000);
    let oauth = FakeOAuth::start(portal.refresher(), portal.client_endpoint());
    let ami = FakeAmi::start("callme", SECRET);
    let text = app_config_text(&portal, &oauth, "{state}", ami.port());
    let d = Running::start(&configs::set(&text, "bitrix24", "member_id", MEMBER), &[]);
    let addr = d.http_addr(WAIT).expect("HTTP address");
    let path = d.dir.path().join("state/oauth.json");
    let real = tokens(&portal, first);

    // What an attacker can post: the right domain, but REST calls pointed at their server;
    // the right endpoint with a token the portal never issued; a working token of another
    // application on the same portal; our app's token for another portal identity.
    let evil = FakeBitrix::start();
    evil.enable_app(1000);
    let forged = |secrets: &mut Vec<String>| {
        let (a, r) = portal.issue_tokens();
        let (fa, fr) = portal.issue_foreign_tokens();
        let list = vec![
            (
                "foreign endpoint",
                Tokens {
                    client_endpoint: evil.client_endpoint(),
                    ..tokens(&portal, (a.clone(), r.clone()))
                },
                "client_endpoint",
            ),
            (
                "https endpoint of another host",
                Tokens {
                    client_endpoint: "https://evil.example/rest/".into(),
                    ..tokens(&portal, (a.clone(), r.clone()))
                },
                "client_endpoint",
            ),
            (
                "unknown token",
                tokens(&portal, ("access-forged".into(), "refresh-forged".into())),
                "not confirmed by the portal",
            ),
            (
                "token of another app",
                tokens(&portal, (fa.clone(), fr.clone())),
                "belongs to application local.other.2",
            ),
            (
                "member_id mismatch",
                Tokens {
                    member_id: "b334d7c0521096e089488ed7d5a8324".into(),
                    ..tokens(&portal, (a.clone(), r.clone()))
                },
                "member_id",
            ),
        ];
        secrets.extend([
            a,
            r,
            fa,
            fr,
            "access-forged".into(),
            "refresh-forged".into(),
        ]);
        list
    };
    let mut secrets = vec![real.access_token.clone(), real.refresh_token.clone()];
    for (what, t, _) in forged(&mut secrets) {
        let (code, body) = post(&addr, "/bitrix24/install", &install_body(&t));
        assert_eq!(code, 403, "{what}: {body}\n{}", d.log());
        assert!(!path.exists(), "{what}: oauth.json written");
    }
    // The endpoint is checked before anything is sent; nothing ever reaches the evil server.
    assert!(evil.token_log().is_empty(), "{:?}", evil.token_log());
    assert_eq!(get(&addr, "/healthz").0, 503, "still not installed");

    // The portal cannot be asked: not stored either, and Bitrix24 is told to try again.
    portal.set_down(true);
    assert_eq!(
        post(&addr, "/bitrix24/install", &install_body(&real)).0,
        503
    );
    portal.set_down(false);
    assert!(!path.exists());

    // The real install works, and is verified at the configured portal with its own token.
    assert_eq!(
        post(&addr, "/bitrix24/install", &install_body(&real)).0,
        200
    );
    assert!(portal
        .token_log()
        .iter()
        .any(|(tok, st)| *tok == real.access_token && *st == 200));
    let stored = fs::read_to_string(&path).unwrap();
    assert!(stored.contains(&real.access_token));
    assert!(
        wait_until(WAIT, || get(&addr, "/healthz").0 == 200),
        "{}",
        d.log()
    );

    // Once installed, the same forgeries (with the stored application token, even) change
    // nothing.
    for (what, t, _) in forged(&mut secrets) {
        assert_eq!(
            post(&addr, "/bitrix24/install", &install_body(&t)).0,
            403,
            "{what} after install"
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), stored, "{what}");
    }
    assert!(evil.token_log().is_empty());

    let log = d.log();
    for (what, _, reason) in forged(&mut Vec::new()) {
        assert!(
            log.lines()
                .any(|l| l.contains("install from") && l.contains("refused") && l.contains(reason)),
            "{what}: no log line with {reason:?}:\n{log}"
        );
    }
    for secret in secrets
        .iter()
        .map(String::as_str)
        .chain([APP_TOKEN, CLIENT_SECRET])
    {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
}

/// Webhook mode on a portal that refuses telephony methods to webhooks: the clear message
/// once, in `/status` and `/healthz`, and no step retried.
#[test]
fn webhook_wrong_auth_type_is_said_once_and_not_retried() {
    let portal = FakeBitrix::start();
    portal.set_telephony_requires_app(true);
    let ami = FakeAmi::start("callme", SECRET);
    let cfg = support::daemon::e2e_config(ami.port(), SECRET, &portal.webhook_url());
    let d = Running::start(&cfg, &[]);
    let addr = d.http_addr(WAIT).expect("HTTP address");
    let ops = d.ops_addr(WAIT).expect("ops address");
    assert!(ami.wait_accepted(1, WAIT));
    // Two calls on each driver: chan_sip (Asterisk 20) and PJSIP (Asterisk 22).
    for capture in [
        "a_inbound_answered.ami",
        "b_inbound_noanswer.ami",
        "pjsip/a_inbound_answered.ami",
        "pjsip/b_inbound_noanswer.ami",
    ] {
        assert!(ami.push(&support::capture_tail(capture)));
    }
    let refused = || portal.commands().iter().filter(|r| r.status == 403).count();
    assert!(wait_until(WAIT, || refused() >= 4), "{}", d.log());
    // All four registers fail for good and take their calls' later steps with them: the queue
    // empties with nothing left to retry. A retryable error would keep it non-empty.
    let settled = wait_for(WAIT, || {
        let s = status(&ops);
        let b = &s["bitrix24"];
        (b["permanent_failures"].as_u64()? >= 4 && b["queue_depth"].as_u64()? == 0).then_some(s)
    })
    .unwrap_or_else(|| panic!("steps still queued: {}\n{}", status(&ops), d.log()));
    assert_eq!(settled["bitrix24"]["permanent_failures"], 4, "{settled}");
    assert_eq!(settled["bitrix24"]["retries"], 0, "{settled}");
    let registers = portal
        .commands()
        .iter()
        .filter(|r| r.method == "telephony.externalcall.register")
        .count();
    assert_eq!(registers, 4, "one attempt per call, no retries");
    let log = d.log();
    assert_eq!(
        log.matches("this portal requires app mode; see README § App mode")
            .count(),
        1,
        "{log}"
    );
    assert_eq!(
        status(&ops)["bitrix24"]["auth_error"],
        "this portal requires app mode; see README § App mode"
    );
    let (code, text) = get(&ops, "/healthz");
    assert_eq!(code, 503);
    assert!(text.contains("requires app mode"), "{text}");
    assert_eq!(get(&addr, "/healthz"), (503, "unhealthy\n".to_string()));
}
