//! Counting every REST request that goes to the portal, by method and by how the portal
//! answered, for `/metrics`.
//!
//! The delivery stats count *steps* (a register is one step but two requests; a backlog goes
//! out as `batch` requests). The portal's limits, and the 503s it answers when they are hit
//! (bitrix24-api.md §9.4), are about *requests*, so an operator watching the rate limit
//! needs this count. It wraps the same shared transport as the rate limiter, so it sees the
//! delivery thread, the user directory refresh and the webhook's look-ups alike.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::Value;

use super::client::{Reply, Transport};
use super::Error;

/// Distinct method names kept; more (which the daemon's own code never produces) are
/// counted under `other`, so the map has a stated bound.
const MAX_METHODS: usize = 64;

/// Requests by (method, answer class). The answer classes are `2xx`, `429`, `503`, `4xx`,
/// `5xx`, `other` (an unexpected status) and `none` (no HTTP answer at all: the network, a
/// timeout, or app mode refusing to send without a usable token).
#[derive(Debug, Default)]
pub struct RestCounts {
    counts: Mutex<BTreeMap<(String, &'static str), u64>>,
}

impl RestCounts {
    pub fn record(&self, method: &str, result: &Result<Reply, Error>) {
        let class = class_of(result);
        let mut m = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let known = m.keys().any(|(name, _)| name == method);
        let distinct = || {
            let mut names: Vec<&str> = m.keys().map(|(n, _)| n.as_str()).collect();
            names.dedup();
            names.len()
        };
        let name = if known || distinct() < MAX_METHODS {
            method.to_string()
        } else {
            "other".to_string()
        };
        *m.entry((name, class)).or_insert(0) += 1;
    }

    /// A copy, sorted by method then class.
    pub fn snapshot(&self) -> Vec<((String, &'static str), u64)> {
        let m = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        m.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

fn class_of(result: &Result<Reply, Error>) -> &'static str {
    let status = match result {
        // A success envelope, or one we could not understand: either way HTTP 200.
        Ok(_) | Err(Error::Decode(_)) => return "2xx",
        Err(Error::Transport(_)) => return "none",
        Err(Error::Http { status, .. }) | Err(Error::Api { status, .. }) => *status,
    };
    match status {
        429 => "429",
        503 => "503",
        200..=299 => "2xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

/// A [`Transport`] that records each request's outcome in [`RestCounts`].
pub struct Counted<T> {
    inner: T,
    counts: std::sync::Arc<RestCounts>,
}

impl<T: Transport> Counted<T> {
    pub fn new(inner: T, counts: std::sync::Arc<RestCounts>) -> Counted<T> {
        Counted { inner, counts }
    }
}

impl<T: Transport> Transport for Counted<T> {
    fn call(&self, method: &str, params: &Value) -> Result<Reply, Error> {
        let r = self.inner.call(method, params);
        self.counts.record(method, &r);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16) -> Result<Reply, Error> {
        Err(Error::Api {
            status,
            code: "X".into(),
            description: String::new(),
        })
    }

    #[test]
    fn classes_and_bound() {
        let c = RestCounts::default();
        let ok = Ok(Reply {
            result: Value::Null,
            next: None,
            total: None,
        });
        c.record("user.get", &ok);
        c.record("user.get", &ok);
        c.record("batch", &api(503));
        c.record("batch", &api(400));
        c.record("batch", &Err(Error::Transport("down".into())));
        c.record(
            "batch",
            &Err(Error::Http {
                status: 502,
                body: String::new(),
            }),
        );
        let snap = c.snapshot();
        let get = |m: &str, k: &str| {
            snap.iter()
                .find(|((mm, kk), _)| mm == m && *kk == k)
                .map(|(_, n)| *n)
        };
        assert_eq!(get("user.get", "2xx"), Some(2));
        assert_eq!(get("batch", "503"), Some(1));
        assert_eq!(get("batch", "4xx"), Some(1));
        assert_eq!(get("batch", "none"), Some(1));
        assert_eq!(get("batch", "5xx"), Some(1));

        for i in 0..100 {
            c.record(&format!("m{i}"), &ok);
        }
        let snap = c.snapshot();
        let mut names: Vec<&str> = snap.iter().map(|((m, _), _)| m.as_str()).collect();
        names.dedup();
        assert_eq!(names.len(), MAX_METHODS + 1, "{names:?}");
        assert!(names.contains(&"other"));
        // A method seen before the bound was reached keeps its own name.
        c.record("user.get", &ok);
        assert_eq!(
            c.snapshot()
                .iter()
                .find(|((m, k), _)| m == "user.get" && *k == "2xx")
                .map(|(_, n)| *n),
            Some(3)
        );
    }
}
