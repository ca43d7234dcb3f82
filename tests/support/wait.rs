//! Waiting on a condition with a deadline: tests never sleep "long enough".

use std::thread;
use std::time::{Duration, Instant};

/// How often a condition is polled.
const POLL: Duration = Duration::from_millis(5);

/// Polls `cond` until it holds or `timeout` passes; whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    wait_for(timeout, || cond().then_some(())).is_some()
}

/// Polls `probe` until it returns `Some` or `timeout` passes; the value, or `None` on timeout.
/// For a condition on something that has to be fetched (a `/status` document, a request
/// log), so that the test can go on to assert on what satisfied it.
pub fn wait_for<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(POLL);
    }
}
