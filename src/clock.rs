//! Wall-clock readings, in one place. The call tracker never reads the clock (it is given
//! the time); these are for the threads around it, the outbox and the ops endpoints.
//!
//! A clock before 1970 (a broken RTC at boot) reads as 0 rather than panicking.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    ms_of(SystemTime::now())
}

/// Seconds since the Unix epoch, now (OAuth token expiry is given in seconds).
pub fn now_secs() -> u64 {
    now_ms() / 1000
}

/// Milliseconds since the Unix epoch of `t`.
pub fn ms_of(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The PBX's clock, for times the state thread makes up (a reconciliation's synthetic
/// Hangup, an adopted call's events): the last event `Timestamp` seen plus the local
/// monotonic time elapsed since. So a duration between a real event and a synthetic one is
/// measured on one clock, the PBX's, even when the PBX's and our wall clocks disagree. Until
/// the PBX has sent a timestamp (or if it never does: `timestampevents` off, when every
/// event is stamped on arrival with our clock) it reads our wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct PbxClock {
    last: Option<(u64, Instant)>,
}

impl PbxClock {
    /// An event stamped `pbx_ms` by the PBX arrived now.
    pub fn saw(&mut self, pbx_ms: u64) {
        self.saw_at(pbx_ms, Instant::now());
    }

    fn saw_at(&mut self, pbx_ms: u64, at: Instant) {
        // Never backwards: events can carry equal or slightly older stamps.
        if self.reading(at).is_none_or(|now| pbx_ms >= now) {
            self.last = Some((pbx_ms, at));
        }
    }

    fn reading(&self, at: Instant) -> Option<u64> {
        self.last.map(|(ms, seen)| {
            ms.saturating_add(at.saturating_duration_since(seen).as_millis() as u64)
        })
    }

    /// Now, on the PBX's clock (ms since the epoch).
    pub fn now_ms(&self) -> u64 {
        self.reading(Instant::now()).unwrap_or_else(now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn epoch_offsets() {
        assert_eq!(ms_of(UNIX_EPOCH + Duration::from_millis(1_234)), 1_234);
        assert_eq!(ms_of(UNIX_EPOCH - Duration::from_secs(1)), 0);
        let (a, s) = (now_ms(), now_secs());
        assert!(s >= a / 1000 && s <= a / 1000 + 1, "{a} {s}");
    }

    #[test]
    fn pbx_clock_advances_from_the_last_stamp_on_local_time() {
        let mut c = PbxClock::default();
        let wall = now_ms();
        assert!(c.now_ms() >= wall, "no stamp yet: our wall clock");
        let t0 = Instant::now();
        // A PBX an hour behind us.
        c.saw_at(1_000_000, t0);
        assert_eq!(
            c.reading(t0 + Duration::from_millis(2_500)),
            Some(1_002_500)
        );
        // An older stamp later does not move it back; a newer one does.
        c.saw_at(1_000_100, t0 + Duration::from_millis(1_000));
        assert_eq!(
            c.reading(t0 + Duration::from_millis(2_500)),
            Some(1_002_500)
        );
        c.saw_at(1_005_000, t0 + Duration::from_millis(2_000));
        assert_eq!(
            c.reading(t0 + Duration::from_millis(2_500)),
            Some(1_005_500)
        );
    }
}
