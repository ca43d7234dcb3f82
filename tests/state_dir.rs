//! The state dir under trouble, with the real `callme run` binary against the fake AMI and the
//! fake portal on loopback (issue #16 points 4 and 5): one owner per state dir, and a state
//! dir that cannot be written turns `/healthz` to 503 with the reason, is logged once per
//! change, leaves no torn record behind, and loses no call.
mod support;

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::configs;
use support::daemon::{Running, TempDir};
use support::fake_ami::FakeAmi;
use support::fake_bitrix::FakeBitrix;
use support::http::request;
use support::wait::wait_until;

const WAIT: Duration = Duration::from_secs(20);
const SECRET: &str = "amisecret-statedir";

fn config(ami: &FakeAmi, portal: &FakeBitrix, state: &Path) -> String {
    let text = configs::webhook(ami.port(), SECRET, &portal.webhook_url());
    configs::set(&text, "state", "dir", &state.display().to_string())
}

/// `callme run -c CONF --debug`, optionally with the file size limit (`RLIMIT_FSIZE`, soft) at
/// `blocks` of 512 bytes: writes past it fail with `EFBIG`, as on a full disk. SIGXFSZ is
/// ignored through `sh` (its default action would kill the daemon) and `exec` keeps the pid,
/// so `prlimit` can lift the limit later. stderr goes through a pipe (the limit would cut a
/// log file short), copied to `log` by a thread.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(conf: &Path, log: PathBuf, blocks: Option<u64>) -> Daemon {
        let mut cmd = match blocks {
            None => Command::new(env!("CARGO_BIN_EXE_callme")),
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!(
                        "trap '' XFSZ; ulimit -S -f {n} && exec \"$0\" \"$@\""
                    ))
                    .arg(env!("CARGO_BIN_EXE_callme"));
                c
            }
        };
        let mut child = cmd
            .arg("run")
            .arg("-c")
            .arg(conf)
            .arg("--debug")
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn callme");
        let mut pipe = child.stderr.take().expect("stderr pipe");
        let mut file = File::create(&log).expect("log file");
        std::thread::spawn(move || std::io::copy(&mut pipe, &mut file));
        Daemon { child, log }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The ops listener (`/healthz` with its reasons, `/status`).
    fn ops_addr(&self) -> String {
        let mut addr = None;
        wait_until(WAIT, || {
            addr = self.log().lines().find_map(|l| {
                l.split_once("HTTP ops listening on ")
                    .map(|(_, a)| a.trim().to_string())
            });
            addr.is_some()
        });
        addr.unwrap_or_else(|| panic!("no HTTP address; log:\n{}", self.log()))
    }

    /// Raise the soft file size limit to the hard one (unlimited).
    fn lift_file_limit(&self) {
        let ok = Command::new("prlimit")
            .arg(format!("--pid={}", self.child.id()))
            .arg("--fsize=unlimited:")
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "prlimit failed");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn get(addr: &str, path: &str) -> (u16, String) {
    let r = request(addr, "GET", path, &[], b"");
    (r.status, r.body)
}

fn completed(portal: &FakeBitrix) -> (usize, usize) {
    let cmds = portal.commands();
    let ok = |m: &str| {
        cmds.iter()
            .filter(|r| r.method == m && r.status == 200)
            .count()
    };
    (
        ok("telephony.externalcall.register"),
        ok("telephony.externalcall.finish"),
    )
}

/// Every line of `outbox.jsonl` and `events.jsonl` is a whole JSON record: no torn one, none
/// glued to the next.
fn assert_whole_records(state: &Path) {
    for file in ["outbox.jsonl", "events.jsonl"] {
        let text = fs::read_to_string(state.join(file)).unwrap_or_default();
        for (i, l) in text.lines().enumerate() {
            assert!(
                serde_json::from_str::<serde_json::Value>(l).is_ok(),
                "{file}:{}: not a whole record: {l}",
                i + 1
            );
        }
    }
}

#[test]
fn a_second_daemon_on_the_same_state_dir_exits_at_once_naming_the_first() {
    let portal = FakeBitrix::start();
    let ami = FakeAmi::start("callme", SECRET);
    let first = Running::start(
        &configs::webhook(ami.port(), SECRET, &portal.webhook_url()),
        &[],
    );
    first.http_addr(WAIT).expect("first daemon up");
    let pid = first.pid().expect("running");
    let state = first.dir.path().join("state");
    assert_eq!(
        fs::read_to_string(state.join("callme.lock"))
            .unwrap()
            .trim(),
        pid.to_string(),
        "the lock file names its owner"
    );

    // The same config file, so the same state dir.
    let out = Command::new(env!("CARGO_BIN_EXE_callme"))
        .arg("run")
        .arg("-c")
        .arg(first.dir.path().join("callme.conf"))
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .output()
        .expect("run a second callme");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "second daemon: {:?}", out.status);
    assert!(
        stderr.contains(&format!(
            "another callme (PID {pid}) already uses this [state] dir"
        )),
        "{stderr}"
    );
    assert!(
        !stderr.contains("HTTP listening"),
        "the second one started serving: {stderr}"
    );
    let mut first = first;
    assert!(first.alive(), "the first daemon is untouched");

    // Once the first is gone (even by SIGKILL), the lock is free.
    first.kill();
    let conf = first.dir.path().join("callme.conf");
    let log = first.dir.path().join("second.log");
    let second = Daemon::start(&conf, log, None);
    second.ops_addr();
    assert!(second.log().contains("HTTP listening"), "{}", second.log());
}

#[test]
fn a_state_dir_that_cannot_be_created_makes_healthz_503_and_calls_still_go_through() {
    let portal = FakeBitrix::start();
    let ami = FakeAmi::start("callme", SECRET);
    let dir = TempDir::new("callme-statedir-missing");
    // A regular file where the state dir's parent should be: it can never be created.
    let blocker = dir.path().join("blocker");
    fs::write(&blocker, "not a directory").unwrap();
    let state = blocker.join("state");
    let conf = dir.path().join("callme.conf");
    fs::write(&conf, config(&ami, &portal, &state)).unwrap();
    ami.set_stream(support::captures::answered_call(1));
    let daemon = Daemon::start(&conf, dir.path().join("log"), None);
    let addr = daemon.ops_addr();

    assert!(
        wait_until(WAIT, || completed(&portal) == (1, 1)),
        "the call did not go through from memory: {:?}; log:\n{}",
        completed(&portal),
        daemon.log()
    );
    let (status, body) = get(&addr, "/healthz");
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("state dir "), "{body}");
    assert!(body.contains("cannot create"), "{body}");
    let (_, status_json) = get(&addr, "/status");
    let v: serde_json::Value = serde_json::from_str(&status_json).unwrap();
    assert_eq!(v["state_dir"]["writable"], false, "{status_json}");
    assert!(
        v["state_dir"]["problem"]
            .as_str()
            .is_some_and(|p| p.contains("outbox")),
        "{status_json}"
    );
    // Once per change, not per write: one error for the outbox, one for the journal.
    let log = daemon.log();
    let errors = log
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("cannot create"))
        .count();
    assert!(errors <= 3, "logged {errors} times:\n{log}");
    assert!(log.contains("outbox: cannot create"), "{log}");
}

#[test]
fn writes_failing_for_room_make_healthz_503_cut_torn_records_and_recover() {
    let portal = FakeBitrix::start();
    let ami = FakeAmi::start("callme", SECRET);
    let dir = TempDir::new("callme-statedir-full");
    let state = dir.path().join("state");
    let conf = dir.path().join("callme.conf");
    fs::write(&conf, config(&ami, &portal, &state)).unwrap();
    // 6 KiB per file: a few calls fill it.
    let daemon = Daemon::start(&conf, dir.path().join("log"), Some(12));
    let addr = daemon.ops_addr();
    assert!(ami.wait_accepted(1, WAIT));

    let calls = 12;
    for n in 0..calls {
        assert!(
            ami.push(&support::captures::answered_call(n)),
            "push call {n}"
        );
    }
    let mut last = (0, String::new());
    let failing = wait_until(WAIT, || {
        last = get(&addr, "/healthz");
        last.0 == 503
    });
    assert!(
        failing,
        "/healthz while writes fail: {last:?}; log:\n{}",
        daemon.log()
    );
    assert!(last.1.contains("File too large"), "{last:?}");
    // Calls go on from memory meanwhile.
    assert!(
        wait_until(WAIT, || completed(&portal) == (calls, calls)),
        "{:?}; log:\n{}",
        completed(&portal),
        daemon.log()
    );
    assert_whole_records(&state);

    daemon.lift_file_limit();
    let back = wait_until(WAIT, || {
        last = get(&addr, "/healthz");
        last.0 == 200
    });
    assert!(back, "/healthz once there is room: {last:?}");
    // More calls after the recovery are written as usual.
    for n in calls..calls + 2 {
        assert!(ami.push(&support::captures::answered_call(n)));
    }
    assert!(wait_until(WAIT, || completed(&portal) == (calls + 2, calls + 2)));
    assert_whole_records(&state);
    let log = daemon.log();
    let failed = log
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("outbox: cannot write"))
        .count();
    let recovered = log
        .lines()
        .filter(|l| l.contains("outbox: the state dir can be written again"))
        .count();
    assert_eq!((failed, recovered), (1, 1), "once per change:\n{log}");
    // Every call reached the portal once.
    assert_eq!(completed(&portal), (calls + 2, calls + 2));
}

/// A state dir that exists but refuses writes (read-only mount, wrong owner; here `chattr +i`,
/// as the tests run as root) with steps left in it from the last run: those steps are read
/// and delivered, new calls go through from memory, `/healthz` says 503 naming the state dir,
/// and once the dir can be written again the outbox is rewritten from memory and `/healthz`
/// is back to 200.
#[test]
fn a_read_only_state_dir_still_delivers_what_it_holds_and_recovers() {
    let portal = FakeBitrix::start();
    let ami = FakeAmi::start("callme", SECRET);
    let dir = TempDir::new("callme-statedir-ro");
    let state = dir.path().join("state");
    let conf = dir.path().join("callme.conf");
    fs::write(&conf, config(&ami, &portal, &state)).unwrap();

    // The last run: the portal down, one whole call queued on disk, then kill -9.
    portal.set_down(true);
    let first = Daemon::start(&conf, dir.path().join("log1"), None);
    assert!(ami.wait_accepted(1, WAIT));
    assert!(ami.push(&support::captures::answered_call(0)));
    let outbox = state.join("outbox.jsonl");
    assert!(
        wait_until(WAIT, || fs::read_to_string(&outbox)
            .is_ok_and(|t| t.contains("finish") || t.contains("Finish"))),
        "the call's steps never reached the outbox; log:\n{}",
        first.log()
    );
    drop(first);

    let ro = Immutable::make(&state);
    portal.set_down(false);
    let daemon = Daemon::start(&conf, dir.path().join("log2"), None);
    let addr = daemon.ops_addr();
    assert!(ami.wait_accepted(2, WAIT));
    assert!(ami.push(&support::captures::answered_call(1)));
    assert!(
        wait_until(WAIT, || completed(&portal) == (2, 2)),
        "left-over and new call: {:?}; log:\n{}",
        completed(&portal),
        daemon.log()
    );
    let (status, body) = get(&addr, "/healthz");
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("state dir "), "{body}");

    drop(ro);
    let mut last = (0, String::new());
    assert!(
        wait_until(Duration::from_secs(30), || {
            last = get(&addr, "/healthz");
            last.0 == 200
        }),
        "/healthz once the dir can be written: {last:?}; log:\n{}",
        daemon.log()
    );
    assert_whole_records(&state);
    // Once each, in all.
    assert_eq!(completed(&portal), (2, 2));
}

/// `chattr +i` on a directory for the life of the guard: no entry can be created, renamed or
/// removed in it (root ignores mode bits, so a mode alone would not do).
struct Immutable<'a>(&'a Path);

impl<'a> Immutable<'a> {
    fn make(dir: &'a Path) -> Immutable<'a> {
        let ok = Command::new("chattr")
            .arg("+i")
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        let probe = dir.join("probe");
        let refused = fs::write(&probe, b"x").is_err();
        let _ = fs::remove_file(&probe);
        assert!(
            ok && refused,
            "cannot make {} unwritable here",
            dir.display()
        );
        Immutable(dir)
    }
}

impl Drop for Immutable<'_> {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(self.0).status();
    }
}
