//! A view of the HTTP listener for `/healthz`, `/metrics` and the systemd watchdog (issue
//! #19): is it accepting connections, how many are open, how many were refused.
//!
//! A module of its own, below both `context` (which holds it in `Health`) and `http` (which
//! attaches the running server), so that neither imports the other.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Unable to accept for this long: the listener counts as down.
pub const DOWN_AFTER: Duration = Duration::from_secs(5);

/// What the listener reports about itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenerStats {
    /// Connections open now.
    pub connections: usize,
    /// Connections closed at once because `max_connections` were open.
    pub rejected: u64,
    /// `accept` failures (EMFILE and the like), since start.
    pub accept_errors: u64,
    /// How long it has been unable to accept (`None`: accepting).
    pub failing_for: Option<Duration>,
}

type Probe = Box<dyn Fn() -> Option<ListenerStats> + Send + Sync>;

/// A view of the running listener for `/healthz`, `/metrics` and the watchdog, without
/// owning it (the listening socket closes when the HTTP server stops).
#[derive(Default)]
pub struct Watch(OnceLock<Probe>);

impl fmt::Debug for Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Watch").field(&self.stats()).finish()
    }
}

impl Watch {
    /// Watch `server` from now on (once; later calls are ignored).
    pub fn attach(&self, server: &Arc<tiny_http::Server>) {
        let weak = Arc::downgrade(server);
        self.attach_probe(move || {
            weak.upgrade().map(|s| ListenerStats {
                connections: s.num_connections(),
                rejected: s.rejected_connections(),
                accept_errors: s.accept_errors(),
                failing_for: s.accept_failing_for(),
            })
        });
    }

    /// Any source of [`ListenerStats`] (tests).
    pub fn attach_probe(&self, probe: impl Fn() -> Option<ListenerStats> + Send + Sync + 'static) {
        let _ = self.0.set(Box::new(probe));
    }

    /// `None` before the server starts and after it stopped.
    pub fn stats(&self) -> Option<ListenerStats> {
        self.0.get().and_then(|probe| probe())
    }

    /// How long the listener has been down, once that is at least [`DOWN_AFTER`].
    pub fn down_for(&self) -> Option<Duration> {
        self.stats()?.failing_for.filter(|d| *d >= DOWN_AFTER)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_only_after_the_grace_period() {
        let w = Watch::default();
        assert_eq!(w.stats(), None);
        assert_eq!(w.down_for(), None);
        let failing = Arc::new(std::sync::Mutex::new(None));
        let f = failing.clone();
        w.attach_probe(move || {
            Some(ListenerStats {
                failing_for: *f.lock().unwrap(),
                ..ListenerStats::default()
            })
        });
        assert_eq!(w.down_for(), None);
        *failing.lock().unwrap() = Some(Duration::from_secs(1));
        assert_eq!(
            w.down_for(),
            None,
            "a short run of accept errors is not down"
        );
        *failing.lock().unwrap() = Some(Duration::from_secs(6));
        assert_eq!(w.down_for(), Some(Duration::from_secs(6)));
    }
}
