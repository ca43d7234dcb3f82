//! A panic in any thread is logged at error level, in the daemon's log format, with the
//! thread's name.
//!
//! Rust's default hook writes a raw line to stderr, and a panic in a thread other than main
//! ends only that thread: before this hook, tiny_http's accept thread died that way and the
//! daemon ran on without a listener, its log saying nothing (issue #19). The health checks
//! (`/healthz`, the watchdog) notice a dead listener or state thread; this makes the cause
//! visible in the journal next to it.

use std::panic::{self, PanicHookInfo};

/// Replace the default panic hook (call once, after the logger is set up).
pub fn install() {
    panic::set_hook(Box::new(|info| log::error!("{}", describe(info))));
}

/// `thread 'NAME' panicked at FILE:LINE:COL: MESSAGE`, as the default hook says it.
fn describe(info: &PanicHookInfo<'_>) -> String {
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("<unnamed>");
    let msg = info
        .payload()
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
        .unwrap_or("Box<dyn Any>");
    match info.location() {
        Some(at) => format!("thread '{name}' panicked at {at}: {msg}"),
        None => format!("thread '{name}' panicked: {msg}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn names_the_thread_and_the_message() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        // The hook is process-wide: take it only around our own thread's panic, then put
        // the default back for the other tests.
        let prev = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() == Some("panicky") {
                s.lock().unwrap().push(describe(info));
            }
        }));
        let r = std::thread::Builder::new()
            .name("panicky".into())
            .spawn(|| panic!("boom {}", 7))
            .unwrap()
            .join();
        panic::set_hook(prev);
        assert!(r.is_err());
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert!(
            seen[0].starts_with("thread 'panicky' panicked at src/panic_hook.rs:"),
            "{}",
            seen[0]
        );
        assert!(seen[0].ends_with(": boom 7"), "{}", seen[0]);
    }
}
