//! Wall-clock readings, in one place. The call tracker never reads the clock (it is given
//! the time); these are for the threads around it, the outbox and the ops endpoints.
//!
//! A clock before 1970 (a broken RTC at boot) reads as 0 rather than panicking.

use std::time::{SystemTime, UNIX_EPOCH};

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
}
