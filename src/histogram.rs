//! A fixed-bucket latency histogram in the shape Prometheus wants (`_bucket{le}`, `_sum`,
//! `_count`), without a metrics crate.
//!
//! Fixed buckets because a histogram is only useful across restarts and instances when the
//! bucket bounds never change; and fixed size, so it cannot grow however many calls pass.
//! Milliseconds as integers, so the type stays `Eq` like the stats it lives in.

/// Upper bounds of the buckets, in milliseconds. Chosen for "from ringing to the card on the
/// screen": a CRM look-up, a register and a show take well under a second on a healthy
/// portal; seconds mean retries or a slow portal; minutes mean an outage backlog.
pub const BUCKETS_MS: [u64; 11] = [
    250, 500, 1_000, 1_500, 2_000, 3_000, 5_000, 10_000, 30_000, 60_000, 300_000,
];

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Observations per bucket, not cumulative: `counts[i]` holds those with
    /// `BUCKETS_MS[i-1] < ms <= BUCKETS_MS[i]`. Larger ones are only in `count`.
    counts: [u64; BUCKETS_MS.len()],
    count: u64,
    sum_ms: u64,
}

impl Histogram {
    pub fn observe_ms(&mut self, ms: u64) {
        if let Some(i) = BUCKETS_MS.iter().position(|&b| ms <= b) {
            self.counts[i] += 1;
        }
        self.count += 1;
        self.sum_ms = self.sum_ms.saturating_add(ms);
    }

    /// `(upper bound in seconds, cumulative count)` for each finite bucket, in order. The
    /// `+Inf` bucket is [`Histogram::count`].
    pub fn cumulative(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        let mut acc = 0;
        BUCKETS_MS.iter().zip(self.counts).map(move |(&b, n)| {
            acc += n;
            (b as f64 / 1000.0, acc)
        })
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn sum_seconds(&self) -> f64 {
        self.sum_ms as f64 / 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_inclusive() {
        let mut h = Histogram::default();
        for ms in [0, 250, 251, 999, 400_000] {
            h.observe_ms(ms);
        }
        let c: Vec<(f64, u64)> = h.cumulative().collect();
        assert_eq!(c[0], (0.25, 2)); // 0 and 250: le is inclusive
        assert_eq!(c[1], (0.5, 3));
        assert_eq!(c[2], (1.0, 4));
        assert_eq!(c.last(), Some(&(300.0, 4))); // 400 s is only in +Inf
        assert_eq!(h.count(), 5);
        assert!((h.sum_seconds() - 401.5).abs() < 1e-9);
        assert!(c.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
    }
}
