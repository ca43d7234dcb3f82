//! SIGTERM, SIGINT and SIGHUP for `callme run`.
//!
//! Why `unsafe` lives here: std has no signal API, and the design allows neither `libc` nor a
//! signal crate, so we declare glibc's `signal()` ourselves. That is why this module belongs to
//! the binary crate: the library denies unsafe code everywhere but `rlimit.rs`.
//!
//! The handlers only store `true` into static atomics, which is async-signal-safe (a lock-free
//! store, no allocation, no lock, no I/O). The main loop polls them every ~200 ms. glibc's
//! `signal()` has BSD semantics: the handler stays installed and interrupted system calls are
//! restarted (`SA_RESTART`), so the other threads' blocking reads are not disturbed.

use std::os::raw::c_int;
use std::sync::atomic::{AtomicBool, Ordering};

// Linux signal numbers (the same on every Linux architecture for these three).
const SIGHUP: c_int = 1;
const SIGINT: c_int = 2;
const SIGTERM: c_int = 15;
/// `SIG_ERR` is `(void (*)(int)) -1`.
const SIG_ERR: usize = usize::MAX;

unsafe extern "C" {
    /// glibc: `sighandler_t signal(int signum, sighandler_t handler);`. The return value is the
    /// previous handler as a pointer-sized integer; we only compare it with `SIG_ERR`.
    fn signal(signum: c_int, handler: extern "C" fn(c_int)) -> usize;
}

static TERMINATE: AtomicBool = AtomicBool::new(false);
static HANGUP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_terminate(_signum: c_int) {
    TERMINATE.store(true, Ordering::SeqCst);
}

extern "C" fn on_hangup(_signum: c_int) {
    HANGUP.store(true, Ordering::SeqCst);
}

/// Install the handlers. Without this, SIGHUP (whose default action is to terminate) would
/// kill the daemon silently when someone tries `kill -HUP` to reload the config.
pub fn install() {
    for (sig, name, handler) in [
        (SIGTERM, "SIGTERM", on_terminate as extern "C" fn(c_int)),
        (SIGINT, "SIGINT", on_terminate),
        (SIGHUP, "SIGHUP", on_hangup),
    ] {
        // SAFETY: `signal` is called with a valid signal number and an `extern "C"` handler
        // whose body is async-signal-safe (a single atomic store).
        let previous = unsafe { signal(sig, handler) };
        if previous == SIG_ERR {
            log::warn!(
                "could not install the {name} handler: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// SIGTERM or SIGINT arrived: stop cleanly. Stays true once set.
pub fn terminate_requested() -> bool {
    TERMINATE.load(Ordering::SeqCst)
}

/// SIGHUP arrived since the last call (each SIGHUP is reported once, however many came).
pub fn take_hangup() -> bool {
    HANGUP.swap(false, Ordering::SeqCst)
}
