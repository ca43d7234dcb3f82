//! Client-side rate limit: a leaky bucket like the portal's own (bitrix24-api.md §9.4).
//!
//! Bitrix24 counts every request from our IP in a bucket that drains `rate` per second and
//! refuses requests with 503 `QUERY_LIMIT_EXCEEDED` once more than `burst` are in it. Keeping
//! the same bucket on our side, shared by everything that talks to the portal (delivery, the
//! user directory refresh, the webhook's look-ups), means we wait a little instead of drawing a
//! storm of 503s and retries. The clock is passed in, so the arithmetic is unit-tested
//! without sleeping.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::client::{Reply, Transport};
use super::Error;

/// The bucket arithmetic, with time injected.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    level: f64,
    last: Option<Instant>,
}

impl Bucket {
    /// `rate` requests per second sustained, up to `burst` at once. One slot of a burst over
    /// 1 is kept spare: the portal measures arrival times, and a request delayed on the way
    /// followed by a fast one looks closer together there than here (network jitter).
    pub fn new(rate: f64, burst: u32) -> Bucket {
        let burst = if burst > 1 { burst - 1 } else { 1 };
        Bucket {
            rate: if rate > 0.0 { rate } else { 2.0 },
            burst: f64::from(burst),
            level: 0.0,
            last: None,
        }
    }

    fn drain(&mut self, now: Instant) {
        if let Some(last) = self.last {
            let gone = now.saturating_duration_since(last).as_secs_f64() * self.rate;
            self.level = (self.level - gone).max(0.0);
        }
        self.last = Some(self.last.map_or(now, |l| l.max(now)));
    }

    /// Take one request slot at `now`, or say how long to wait for one.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        self.drain(now);
        if self.level + 1.0 <= self.burst {
            self.level += 1.0;
            Ok(())
        } else {
            let need = self.level + 1.0 - self.burst;
            Err(Duration::from_secs_f64(need / self.rate).max(Duration::from_millis(1)))
        }
    }

    /// How long until a request slot is free at `now` (zero if one is), without taking it.
    pub fn wait_for(&mut self, now: Instant) -> Duration {
        self.drain(now);
        if self.level + 1.0 <= self.burst {
            Duration::ZERO
        } else {
            let need = self.level + 1.0 - self.burst;
            Duration::from_secs_f64(need / self.rate).max(Duration::from_millis(1))
        }
    }

    /// The sustained rate, requests per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// How many requests could go at once right now.
    pub fn available(&mut self, now: Instant) -> u32 {
        self.drain(now);
        (self.burst - self.level).floor().max(0.0) as u32
    }

    /// How many request slots are in use at `now`, of the burst; a partly drained one counts.
    pub fn used(&mut self, now: Instant) -> u32 {
        self.drain(now);
        self.level.ceil() as u32
    }

    /// The portal said its bucket is full (503 `QUERY_LIMIT_EXCEEDED`): ours was too
    /// optimistic (another client shares our IP, §9.4), so fill it and pace from here.
    pub fn saturate(&mut self, now: Instant) {
        self.drain(now);
        self.level = self.burst;
    }
}

/// The bucket shared by all threads that talk to Bitrix24.
#[derive(Debug)]
pub struct Limiter {
    bucket: Mutex<Bucket>,
}

impl Limiter {
    pub fn new(rate: f64, burst: u32) -> Arc<Limiter> {
        Arc::new(Limiter {
            bucket: Mutex::new(Bucket::new(rate, burst)),
        })
    }

    fn with<R>(&self, f: impl FnOnce(&mut Bucket) -> R) -> R {
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut b)
    }

    /// Block until a request may go. Waits at most `1 / rate` seconds per queued request.
    pub fn acquire(&self) {
        loop {
            match self.with(|b| b.try_take(Instant::now())) {
                Ok(()) => return,
                Err(wait) => std::thread::sleep(wait),
            }
        }
    }

    pub fn available(&self) -> u32 {
        self.with(|b| b.available(Instant::now()))
    }

    /// Request slots in use right now: 0 when the bucket is full of budget, more as requests
    /// go faster than it drains (a slot partly drained counts as in use).
    pub fn used(&self) -> u32 {
        self.with(|b| b.used(Instant::now()))
    }

    /// Block until a request slot is free, without taking it: delivery waits here *before*
    /// it chooses what goes into the next request, so that whatever became due during the
    /// wait rides along in the same batch (see `deliver.rs`, `run_due`).
    pub fn wait_ready(&self) {
        loop {
            let wait = self.with(|b| b.wait_for(Instant::now()));
            if wait.is_zero() {
                return;
            }
            std::thread::sleep(wait);
        }
    }

    /// One request slot's time: how soon after a full bucket the next request may go.
    pub fn slot(&self) -> Duration {
        self.with(|b| Duration::from_secs_f64(1.0 / b.rate()))
    }

    pub fn saturate(&self) {
        self.with(|b| b.saturate(Instant::now()));
    }
}

/// A [`Transport`] that waits for the shared [`Limiter`] before every request. A `batch`
/// counts as one request, as it does for the portal (§8).
pub struct Limited<T> {
    inner: T,
    limiter: Arc<Limiter>,
}

impl<T: Transport> Limited<T> {
    pub fn new(inner: T, limiter: Arc<Limiter>) -> Limited<T> {
        Limited { inner, limiter }
    }
}

impl<T: Transport> Transport for Limited<T> {
    fn call(&self, method: &str, params: &Value) -> Result<Reply, Error> {
        self.limiter.acquire();
        let r = self.inner.call(method, params);
        if let Err(Error::Api { code, .. }) = &r {
            if code == "QUERY_LIMIT_EXCEEDED" {
                self.limiter.saturate();
            }
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(2.0, 50);
        for _ in 0..49 {
            assert!(b.try_take(t0).is_ok());
        }
        let wait = b.try_take(t0).unwrap_err();
        assert!(wait >= Duration::from_millis(499) && wait <= Duration::from_millis(501));
        assert!(b.try_take(t0 + Duration::from_millis(500)).is_ok());
        assert!(b.try_take(t0 + Duration::from_millis(600)).is_err());
        // After 25 s the bucket is empty again.
        assert_eq!(b.available(t0 + Duration::from_secs(30)), 49);
    }

    #[test]
    fn wait_for_does_not_take_a_slot() {
        let t0 = Instant::now();
        let mut b = Bucket::new(2.0, 2);
        assert_eq!(b.wait_for(t0), Duration::ZERO);
        assert_eq!(b.wait_for(t0), Duration::ZERO, "asking twice takes nothing");
        assert!(b.try_take(t0).is_ok());
        let wait = b.wait_for(t0);
        assert!(wait >= Duration::from_millis(499) && wait <= Duration::from_millis(501));
        assert_eq!(b.wait_for(t0 + wait), Duration::ZERO);
    }

    #[test]
    fn used_counts_partly_drained_slots() {
        let t0 = Instant::now();
        let mut b = Bucket::new(2.0, 50);
        assert_eq!(b.used(t0), 0);
        for _ in 0..10 {
            b.try_take(t0).unwrap();
        }
        assert_eq!(b.used(t0), 10);
        assert_eq!(
            b.used(t0 + Duration::from_millis(250)),
            10,
            "half a slot drained"
        );
        assert_eq!(b.used(t0 + Duration::from_millis(500)), 9);
        assert_eq!(b.used(t0 + Duration::from_secs(60)), 0);
    }

    #[test]
    fn saturate_paces_from_now() {
        let t0 = Instant::now();
        let mut b = Bucket::new(2.0, 50);
        b.saturate(t0);
        assert!(b.try_take(t0).is_err());
        assert!(b.try_take(t0 + Duration::from_millis(500)).is_ok());
    }

    #[test]
    fn time_going_backwards_does_not_refill() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1.0, 1);
        assert!(b.try_take(t0 + Duration::from_secs(5)).is_ok());
        assert!(b.try_take(t0).is_err());
    }
}
