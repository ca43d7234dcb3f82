//! A [`Transport`] that stamps a liveness clock before and after every request, so a thread
//! that spends its life in Bitrix24 requests (the delivery thread) can be watched: the longest
//! silence while it works is one request (bounded by `[bitrix24] timeout`), however long a
//! backlog takes to send. `/healthz` and the systemd watchdog read the stamp.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::Value;

use super::client::{Reply, Transport};
use super::error::Error;
use crate::clock::now_ms;

pub struct Heartbeat<T> {
    inner: T,
    alive_ms: Arc<AtomicU64>,
}

impl<T: Transport> Heartbeat<T> {
    pub fn new(inner: T, alive_ms: Arc<AtomicU64>) -> Heartbeat<T> {
        Heartbeat { inner, alive_ms }
    }
}

impl<T: Transport> Transport for Heartbeat<T> {
    fn call(&self, method: &str, params: &Value) -> Result<Reply, Error> {
        self.alive_ms.store(now_ms(), Ordering::Relaxed);
        let r = self.inner.call(method, params);
        self.alive_ms.store(now_ms(), Ordering::Relaxed);
        r
    }
}
