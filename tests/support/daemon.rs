//! Runs the real `callme` binary for end-to-end tests: a private temp dir with the config and
//! state, stderr captured to a file, and the process killed when the handle is dropped.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A running `callme run -c DIR/callme.conf`.
pub struct Running {
    child: Option<Child>,
    pub dir: TempDir,
    stderr: PathBuf,
}

impl Running {
    /// Write `config` (use `{state}` for the state directory) and start the daemon with `args`
    /// after `run -c FILE`.
    pub fn start(config: &str, args: &[&str]) -> Running {
        Self::start_with_env(config, args, &[])
    }

    /// [`Running::start`] with extra environment variables (e.g. `NOTIFY_SOCKET`). The
    /// systemd variables of the test's own environment are never passed on, so a test run
    /// under a systemd service does not notify that service.
    pub fn start_with_env(config: &str, args: &[&str], env: &[(&str, &str)]) -> Running {
        Self::spawn(config, args, env, None, false)
    }

    /// [`Running::start_with_env`] under `ulimit ULIMIT` (e.g. `-Sn 1024`), set for the
    /// daemon only: it runs as `sh -c 'ulimit ULIMIT; exec callme ...'`, so the pid is still
    /// the daemon's.
    pub fn start_with_ulimit(
        config: &str,
        args: &[&str],
        env: &[(&str, &str)],
        ulimit: &str,
    ) -> Running {
        Self::spawn(config, args, env, Some(format!("ulimit {ulimit}")), false)
    }

    /// [`Running::start`] with `RLIMIT_FSIZE` (soft) set to `blocks` of 512 bytes: a write
    /// that would grow a file past it fails with `EFBIG`, like a full disk. The daemon runs
    /// through `sh -c 'trap "" XFSZ; ulimit -S -f N; exec callme …'` so that it inherits
    /// SIGXFSZ ignored (the default action would kill it) and keeps its own pid; the hard
    /// limit stays, so [`Running::lift_file_limit`] can raise the soft one again. Its stderr
    /// goes through a pipe, copied to the log file by a thread of ours (it ends when the
    /// daemon does): the limit would cut the log short too.
    pub fn start_limited(config: &str, args: &[&str], blocks: u64) -> Running {
        let shell = format!("trap '' XFSZ; ulimit -S -f {blocks}");
        Self::spawn(config, args, &[], Some(shell), true)
    }

    /// `shell`: commands `sh` runs before it `exec`s the daemon.
    fn spawn(
        config: &str,
        args: &[&str],
        env: &[(&str, &str)],
        shell: Option<String>,
        pipe_stderr: bool,
    ) -> Running {
        let dir = TempDir::new("callme-e2e");
        let state = dir.path().join("state");
        fs::create_dir_all(&state).expect("state dir");
        let conf = dir.path().join("callme.conf");
        fs::write(
            &conf,
            config.replace("{state}", &state.display().to_string()),
        )
        .expect("write config");
        let stderr = dir.path().join("stderr.log");
        let bin = env!("CARGO_BIN_EXE_callme");
        let mut cmd = match shell {
            None => Command::new(bin),
            Some(pre) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("{pre} && exec \"$0\" \"$@\""))
                    .arg(bin);
                c
            }
        };
        let child = cmd
            .arg("run")
            .arg("-c")
            .arg(&conf)
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if pipe_stderr {
                Stdio::piped()
            } else {
                Stdio::from(File::create(&stderr).expect("stderr file"))
            })
            .spawn()
            .expect("spawn callme");
        let mut child = child;
        if let Some(mut pipe) = child.stderr.take() {
            let mut file = File::create(&stderr).expect("stderr file");
            std::thread::spawn(move || std::io::copy(&mut pipe, &mut file));
        }
        Running {
            child: Some(child),
            dir,
            stderr,
        }
    }

    /// Everything the daemon logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The public HTTP listener's address (`127.0.0.1:PORT`), read from the daemon's info line
    /// `HTTP listening on ADDR`; waits up to `timeout` for it.
    pub fn http_addr(&self, timeout: Duration) -> Option<String> {
        self.logged_addr("HTTP listening on ", timeout)
    }

    /// The ops listener's address (`/status`, `/metrics`), from the info line
    /// `HTTP ops listening on ADDR`; waits up to `timeout` for it.
    pub fn ops_addr(&self, timeout: Duration) -> Option<String> {
        self.logged_addr("HTTP ops listening on ", timeout)
    }

    fn logged_addr(&self, prefix: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(addr) = self
                .log()
                .lines()
                .find_map(|l| l.split_once(prefix).map(|(_, a)| a.trim().to_string()))
            {
                return Some(addr);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// The process id, while the handle owns the process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Send a signal by name (`TERM`, `HUP`, ...) with `kill(1)`: std can only SIGKILL.
    pub fn signal(&self, name: &str) {
        let pid = self.pid().expect("daemon not running");
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{name} {pid} failed");
    }

    /// Raise `RLIMIT_FSIZE` back to unlimited on the running process (`prlimit(1)`, util-linux):
    /// the disk has room again. False if that could not be done.
    pub fn lift_file_limit(&self) -> bool {
        let Some(pid) = self.pid() else { return false };
        Command::new("prlimit")
            .arg(format!("--pid={pid}"))
            .arg("--fsize=unlimited:")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Resident memory of the process in KiB (`VmRSS` in `/proc/PID/status`).
    pub fn rss_kib(&self) -> Option<u64> {
        let pid = self.pid()?;
        let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// SIGTERM, as `systemctl stop` sends.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Wait up to `timeout` for the process to exit; its status, or `None` if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.child.as_mut()?.try_wait().expect("try_wait");
            if let Some(status) = status {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A config for an end-to-end test against the fake AMI server on `ami_port` and the fake
/// portal at `webhook_url` ([`super::configs::webhook`]; `{state}` for [`Running::start`]).
pub fn e2e_config(ami_port: u16, secret: &str, webhook_url: &str) -> String {
    super::configs::webhook(ami_port, secret, webhook_url)
}
