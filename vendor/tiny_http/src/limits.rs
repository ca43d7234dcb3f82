//! Limits against slow and numerous clients, and an accept loop that survives its errors.
//!
//! Without limits a server spawns one thread per connection for as long as the client likes
//! to stay, and any `accept` error (EMFILE when descriptors run out, ECONNABORTED from one
//! impatient client) used to end the accept thread: the server stopped listening for good
//! while the process ran on. See tiny-http issue #283.

use std::io::{Error as IoError, ErrorKind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

/// Limits that protect the server from slow or numerous clients, for
/// [`Server::from_listener_with_limits`](crate::Server::from_listener_with_limits).
///
/// `Limits::default()` sets none of them (tiny_http's historic behaviour).
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// Most connections open at once. A connection accepted over it is closed at once.
    /// Each connection has a thread of its own, so this bounds the threads too.
    pub max_connections: Option<usize>,
    /// Socket read timeout: how long a client may stay silent, between two requests of a
    /// keep-alive connection or in the middle of one. The connection is then closed.
    pub idle_timeout: Option<Duration>,
    /// How long a client may take to send a request, from its first byte to the end of its
    /// head, and of its body too where tiny_http reads it (bodies up to 1 KiB are read before
    /// the request is handed out; larger bodies fail with `TimedOut` when read past it).
    /// Checked whenever bytes arrive, so a silent client is caught by `idle_timeout`: the
    /// longest a request can hold its connection is `request_timeout + idle_timeout`.
    /// A client past it gets `408 Request Timeout`.
    pub request_timeout: Option<Duration>,
    /// Socket write timeout, so that a client that does not read cannot block a response.
    pub write_timeout: Option<Duration>,
    /// Most bytes in the request line and headers together. A client over it gets
    /// `431 Request Header Fields Too Large`.
    pub max_header_bytes: Option<usize>,
}

/// What the accept loop and the connections share with the [`Server`](crate::Server).
#[derive(Default)]
pub(crate) struct Stats {
    connections: AtomicUsize,
    rejected: AtomicU64,
    accept_errors: AtomicU64,
    /// When the current run of `accept` failures began (or the accept thread ended).
    failing_since: Mutex<Option<Instant>>,
    accept_ended: AtomicBool,
}

impl Stats {
    pub(crate) fn connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    pub(crate) fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    pub(crate) fn accept_errors(&self) -> u64 {
        self.accept_errors.load(Ordering::Relaxed)
    }

    pub(crate) fn failing_for(&self) -> Option<Duration> {
        let since = *self
            .failing_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        since.map(|t| t.elapsed())
    }

    fn set_failing(&self, since: Option<Instant>) {
        *self
            .failing_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = since;
    }
}

/// Held by the accept thread: if that thread ends for any reason (a panic included), the
/// server counts as failing from then on.
pub(crate) struct AcceptThread(pub(crate) Arc<Stats>);

impl Drop for AcceptThread {
    fn drop(&mut self) {
        self.0.accept_ended.store(true, Ordering::Release);
        if self.0.failing_for().is_none() {
            self.0.set_failing(Some(Instant::now()));
        }
        log::debug!("Terminating accept thread");
    }
}

/// One slot of `max_connections`, released when the connection's task ends.
pub(crate) struct Slot(Arc<Stats>);

impl Slot {
    /// A slot, or `None` when `max` connections are open.
    pub(crate) fn acquire(stats: &Arc<Stats>, max: Option<usize>) -> Option<Slot> {
        let max = max.unwrap_or(usize::MAX);
        let mut n = stats.connections.load(Ordering::Acquire);
        loop {
            if n >= max {
                stats.rejected.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            match stats.connections.compare_exchange_weak(
                n,
                n + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(Slot(stats.clone())),
                Err(now) => n = now,
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

const BACKOFF_MIN: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Go's net/http answer to a failing `accept`: log, sleep 5 ms, doubling up to 1 s, retry.
/// Logged once per run of failures, so a descriptor shortage does not flood the log.
#[derive(Default)]
pub(crate) struct Backoff {
    delay: Option<Duration>,
    failures: u64,
    rejecting: bool,
}

impl Backoff {
    /// `accept` (or the setup of the connection it gave) failed with `e`; sleeps before the
    /// next attempt. Errors that concern one client only are skipped without a pause.
    pub(crate) fn failed(&mut self, stats: &Stats, e: &IoError) {
        stats.accept_errors.fetch_add(1, Ordering::Relaxed);
        if matches!(
            e.kind(),
            ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::Interrupted
        ) {
            log::debug!("Error accepting new client: {}", e);
            return;
        }
        self.failures += 1;
        let delay = match self.delay {
            None => {
                log::error!(
                    "Error accepting new client: {}; retrying from {:?} up to every {:?} \
                     (not logged again until accepting works)",
                    e,
                    BACKOFF_MIN,
                    BACKOFF_MAX
                );
                stats.set_failing(Some(Instant::now()));
                BACKOFF_MIN
            }
            Some(d) => (d * 2).min(BACKOFF_MAX),
        };
        self.delay = Some(delay);
        thread::sleep(delay);
    }

    /// A connection was accepted and set up: the run of failures, if any, is over.
    pub(crate) fn succeeded(&mut self, stats: &Stats) {
        if self.delay.take().is_some() {
            log::warn!(
                "Accepting new clients again after {} failed attempt(s)",
                self.failures
            );
            self.failures = 0;
            stats.set_failing(None);
        }
        self.rejecting = false;
    }

    /// A connection was closed because `max` were open; logged once per run.
    pub(crate) fn rejected(&mut self, max: Option<usize>) {
        if !self.rejecting {
            self.rejecting = true;
            log::warn!(
                "{} connections open: closing new ones until some end",
                max.unwrap_or(usize::MAX)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_stop_at_the_cap_and_come_back() {
        let stats = Arc::new(Stats::default());
        let a = Slot::acquire(&stats, Some(2)).unwrap();
        let _b = Slot::acquire(&stats, Some(2)).unwrap();
        assert!(Slot::acquire(&stats, Some(2)).is_none());
        assert_eq!(stats.rejected(), 1);
        drop(a);
        assert_eq!(stats.connections(), 1);
        assert!(Slot::acquire(&stats, Some(2)).is_some());
    }

    #[test]
    fn backoff_doubles_to_a_second_and_resets() {
        let stats = Stats::default();
        let mut b = Backoff::default();
        let emfile = IoError::new(ErrorKind::Other, "Too many open files");
        b.failed(&stats, &emfile);
        assert_eq!(b.delay, Some(BACKOFF_MIN));
        assert!(stats.failing_for().is_some());
        b.delay = Some(Duration::from_millis(800));
        b.failed(&stats, &emfile);
        assert_eq!(b.delay, Some(BACKOFF_MAX));
        b.succeeded(&stats);
        assert_eq!(b.delay, None);
        assert!(stats.failing_for().is_none());
        b.failed(&stats, &IoError::new(ErrorKind::ConnectionAborted, "gone"));
        assert_eq!(b.delay, None, "one client's error is not a run of failures");
        assert_eq!(stats.accept_errors(), 3);
    }
}
