//! Runs the real `callme` binary for end-to-end tests: a private temp dir with the config and
//! state, stderr captured to a file, and the process killed when the handle is dropped.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

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
        let child = Command::new(env!("CARGO_BIN_EXE_callme"))
            .arg("run")
            .arg("-c")
            .arg(&conf)
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("spawn callme");
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

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
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
