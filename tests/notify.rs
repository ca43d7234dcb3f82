//! `callme run` under a pretend systemd: a `UnixDatagram` bound in a temp dir is the
//! `NOTIFY_SOCKET`. Proves READY waits for the AMI login, the watchdog is fed, and SIGTERM
//! stops the daemon cleanly (STOPPING=1, exit status 0) well within `TimeoutStopSec`.
mod support;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use support::daemon::{Running, TempDir};
use support::fake_ami::FakeAmi;
use support::fake_bitrix::FakeBitrix;

const WAIT: Duration = Duration::from_secs(20);
const SECRET: &str = "amisecret-notify";

fn config(ami: &FakeAmi, portal: &FakeBitrix) -> String {
    support::daemon::e2e_config(ami.port(), SECRET, &portal.webhook_url())
}

/// The assignments of one datagram, e.g. `["READY=1", "STATUS=..."]`.
fn next_datagram(sock: &UnixDatagram, until: Instant) -> Option<Vec<String>> {
    let mut buf = [0u8; 4096];
    while Instant::now() < until {
        match sock.recv(&mut buf) {
            Ok(n) => {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                return Some(text.lines().map(String::from).collect());
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("recv on the notify socket: {e}"),
        }
    }
    None
}

#[test]
fn ready_after_login_watchdog_and_clean_stop_on_sigterm() {
    let portal = FakeBitrix::start();
    // Start with the wrong secret: the daemon must not claim READY while its login is denied.
    let ami = FakeAmi::start("callme", "not-the-secret");
    let dir = TempDir::new("callme-notify");
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();

    let mut daemon = Running::start_with_env(
        &config(&ami, &portal),
        &[],
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );

    assert!(
        support::fake_ami::wait_until(WAIT, || ami.logins() >= 2),
        "no denied login; log:\n{}",
        daemon.log()
    );
    // Whatever arrives while the login is refused (STATUS, WATCHDOG) must not be READY.
    // Collected until the daemon has been refused twice more and has fed the watchdog: by
    // then a daemon that claimed READY without a login would have said so.
    let denied = ami.logins();
    let deadline = Instant::now() + WAIT;
    let mut early = Vec::new();
    while ami.logins() < denied + 2 || !early.iter().any(|l| l == "WATCHDOG=1") {
        assert!(
            Instant::now() < deadline,
            "no more logins or no WATCHDOG=1 while AMI is down: {early:?}; log:\n{}",
            daemon.log()
        );
        if let Some(d) = next_datagram(&sock, Instant::now() + Duration::from_millis(100)) {
            early.extend(d);
        }
    }
    assert_eq!(ami.accepted_logins(), 0);
    assert!(
        !early.iter().any(|l| l == "READY=1"),
        "READY before login: {early:?}"
    );
    assert!(
        early.iter().any(|l| l == "WATCHDOG=1"),
        "the watchdog is fed while AMI is down too: {early:?}"
    );

    ami.set_secret(SECRET);
    let deadline = Instant::now() + WAIT;
    let mut ready_status = None;
    while ready_status.is_none() {
        let d = next_datagram(&sock, deadline)
            .unwrap_or_else(|| panic!("no READY=1; log:\n{}", daemon.log()));
        if d.iter().any(|l| l == "READY=1") {
            assert!(
                ami.accepted_logins() >= 1,
                "READY=1 before the fake AMI accepted a login"
            );
            ready_status = d.iter().find(|l| l.starts_with("STATUS=")).cloned();
            assert!(ready_status.is_some(), "READY without STATUS: {d:?}");
        }
    }
    let status = ready_status.unwrap();
    assert!(status.contains("AMI connected"), "{status}");
    assert!(status.contains("0 active call(s)"), "{status}");

    // WATCHDOG_USEC=400000: a keepalive every ~200 ms.
    let mut watchdogs = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while watchdogs < 2 {
        let d = next_datagram(&sock, deadline).unwrap_or_else(|| {
            panic!("{watchdogs} WATCHDOG=1 after READY; log:\n{}", daemon.log())
        });
        watchdogs += d.iter().filter(|l| *l == "WATCHDOG=1").count();
    }

    // A SIGHUP is logged, not fatal.
    daemon.signal("HUP");
    assert!(
        support::fake_ami::wait_until(Duration::from_secs(5), || daemon
            .log()
            .contains("reloading the configuration is not supported")),
        "SIGHUP not logged; log:\n{}",
        daemon.log()
    );
    assert!(daemon.alive(), "SIGHUP killed the daemon");

    let stop_sent = Instant::now();
    daemon.terminate();
    let status = daemon
        .wait_exit(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("still running 5 s after SIGTERM; log:\n{}", daemon.log()));
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        daemon.log()
    );
    assert!(stop_sent.elapsed() < Duration::from_secs(5));
    let mut stopping = false;
    while let Some(d) = next_datagram(&sock, Instant::now() + Duration::from_millis(300)) {
        stopping |= d.iter().any(|l| l == "STOPPING=1");
    }
    assert!(stopping, "no STOPPING=1; log:\n{}", daemon.log());
}
