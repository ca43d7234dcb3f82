//! The `callme run` supervisor: READY only after the AMI login, STATUS on change, and the
//! watchdog keepalive withheld while the state thread is silent or the HTTP listener cannot
//! accept connections. Notifications land in a
//! Unix datagram socket the test reads, as systemd's would.

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use callme::clock::now_ms;
use callme::context::Health;
use callme::supervisor::Supervisor;

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
    assert_eq!(sup.watchdog(), Some(interval));
    let health = Health::default();
    let t0 = Instant::now();
    let ms0 = sup.started_ms();
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
    assert!(sup.is_stalled());
    sup.tick(&health, t0 + Duration::from_secs(7), ms0 + 7000);
    assert_eq!(watchdogs(received(&sock)), 0, "still withheld");

    health.state_alive_ms.store(ms0 + 7500, Ordering::Relaxed);
    sup.tick(&health, t0 + Duration::from_secs(8), ms0 + 8000);
    assert_eq!(watchdogs(received(&sock)), 1, "resumed");
    assert!(!sup.is_stalled());
}

#[test]
fn watchdog_stops_while_the_listener_cannot_accept() {
    use callme::listener_watch::ListenerStats;
    use std::sync::{Arc, Mutex};
    let interval = Duration::from_secs(2);
    let (mut sup, sock, _dir) = supervised("listener", Some(interval));
    let health = Health::default();
    let failing = Arc::new(Mutex::new(None));
    let f = failing.clone();
    health.listener.attach_probe(move || {
        Some(ListenerStats {
            failing_for: *f.lock().unwrap(),
            ..ListenerStats::default()
        })
    });
    let t0 = Instant::now();
    let ms0 = sup.started_ms();
    let watchdogs = |v: Vec<String>| v.iter().filter(|m| *m == "WATCHDOG=1").count();
    let mut tick = |secs: u64| {
        // the state thread is alive throughout
        health
            .state_alive_ms
            .store(ms0 + secs * 1000, Ordering::Relaxed);
        sup.tick(&health, t0 + Duration::from_secs(secs), ms0 + secs * 1000);
        watchdogs(received(&sock))
    };
    assert_eq!(tick(0), 1);
    *failing.lock().unwrap() = Some(Duration::from_secs(2));
    assert_eq!(tick(1), 1, "a short run of accept errors is tolerated");
    *failing.lock().unwrap() = Some(Duration::from_secs(6));
    assert_eq!(tick(2), 0, "withheld");
    assert_eq!(tick(3), 0, "still withheld");
    *failing.lock().unwrap() = None;
    assert_eq!(tick(4), 1, "resumed");
}

/// The delivery thread is watched too: silent past `Health::delivery_limit_ms` (a panic, or a
/// request that never ends), the keepalive is withheld; stamping again resumes it.
#[test]
fn watchdog_stops_while_the_delivery_thread_is_silent() {
    let interval = Duration::from_secs(2);
    let (mut sup, sock, _dir) = supervised("watchdog-delivery", Some(interval));
    let health = Health::default();
    let t0 = Instant::now();
    let ms0 = sup.started_ms();
    health.delivery_limit_ms.store(70_000, Ordering::Relaxed);
    health.delivery_alive_ms.store(ms0, Ordering::Relaxed);
    let watchdogs = |v: Vec<String>| v.iter().filter(|m| *m == "WATCHDOG=1").count();

    // The state thread stays alive throughout; only delivery goes quiet.
    let tick = |sup: &mut Supervisor, secs: u64| {
        let ms = ms0 + secs * 1000;
        health.state_alive_ms.store(ms, Ordering::Relaxed);
        sup.tick(&health, t0 + Duration::from_secs(secs), ms);
    };
    tick(&mut sup, 0);
    assert_eq!(watchdogs(received(&sock)), 1, "first tick");
    tick(&mut sup, 60);
    assert_eq!(
        watchdogs(received(&sock)),
        1,
        "60 s without a stamp is under the limit"
    );
    tick(&mut sup, 71);
    assert_eq!(watchdogs(received(&sock)), 0, "withheld past the limit");
    assert!(sup.is_stalled());
    health
        .delivery_alive_ms
        .store(ms0 + 71_500, Ordering::Relaxed);
    tick(&mut sup, 72);
    assert_eq!(watchdogs(received(&sock)), 1, "resumed");
    assert!(!sup.is_stalled());
}
