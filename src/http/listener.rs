//! The listeners' limits, their descriptors and the public listener's health (issue #19,
//! docs/security.md "Connection limits").
//!
//! tiny_http (patched in `vendor/`) runs one thread per connection and uses two descriptors
//! for each (it clones the socket). Without limits a flood of idle connections exhausted the
//! descriptors, the accept thread died on EMFILE and click-to-call ended until a restart. Now
//! the accept loop retries its errors, connections are capped and timed out, the soft
//! `RLIMIT_NOFILE` is raised at start, and a listener that cannot accept for
//! [`DOWN_AFTER`](crate::listener_watch::DOWN_AFTER) turns `/healthz` to 503 and stops the
//! systemd watchdog keepalive ([`crate::listener_watch`]).

use std::time::Duration;

use crate::config::HttpConfig;
use crate::rlimit;

/// A response the client does not read blocks a worker at most this long.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Request line plus headers. Bitrix24 sends well under 1 KiB.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;

/// The soft `RLIMIT_NOFILE` callme raises itself to, at most (the unit sets this too).
pub const NOFILE_CAP: u64 = 65_536;

/// Descriptors the rest of the daemon needs besides the connections: AMI, Bitrix24
/// connections, the outbox and journal files, stdio, with room to spare.
pub const FD_HEADROOM: u64 = 128;

/// Connections the ops listener (`[http] ops_listen`) holds at once: it serves an operator
/// and a Prometheus scrape, on loopback by default, so a small cap is plenty and keeps its
/// descriptors out of the public listener's way.
pub const OPS_MAX_CONNECTIONS: usize = 16;

/// The limits handed to tiny_http for the public listener.
pub fn limits(cfg: &HttpConfig) -> tiny_http::Limits {
    tiny_http::Limits {
        max_connections: Some(cfg.max_connections),
        idle_timeout: Some(cfg.idle_timeout),
        request_timeout: Some(cfg.request_timeout),
        write_timeout: Some(WRITE_TIMEOUT),
        max_header_bytes: Some(MAX_HEADER_BYTES),
    }
}

/// The limits of the ops listener: the public listener's timeouts and header limit, and
/// [`OPS_MAX_CONNECTIONS`].
pub fn ops_limits(cfg: &HttpConfig) -> tiny_http::Limits {
    tiny_http::Limits {
        max_connections: Some(OPS_MAX_CONNECTIONS),
        ..limits(cfg)
    }
}

/// Open files needed for `max_connections` connections on the public listener, plus the ops
/// listener's [`OPS_MAX_CONNECTIONS`] (counted whether or not it is configured).
pub fn fds_needed(max_connections: usize) -> u64 {
    2 * (max_connections + OPS_MAX_CONNECTIONS) as u64 + FD_HEADROOM
}

/// Raise the soft open-files limit (up to [`NOFILE_CAP`]) and say what we got; warn when it
/// is too low for `max_connections`.
pub fn raise_fd_limit(max_connections: usize) {
    let need = fds_needed(max_connections);
    match rlimit::raise_nofile(NOFILE_CAP) {
        Ok((before, after)) => {
            if after.soft != before.soft {
                log::info!(
                    "open files limit raised from {} to {} (hard limit {})",
                    before.soft,
                    after.soft,
                    after.hard
                );
            } else {
                log::info!(
                    "open files limit {} (hard limit {})",
                    after.soft,
                    after.hard
                );
            }
            if after.soft < need {
                log::warn!(
                    "open files limit {} is below the {need} that [http] max_connections = \
                     {max_connections} needs (2 per connection, the ops listener's \
                     {OPS_MAX_CONNECTIONS} included, + {FD_HEADROOM}): a flood of \
                     connections can exhaust it; raise LimitNOFILE= in the unit or lower \
                     max_connections",
                    after.soft
                );
            }
        }
        Err(e) => log::warn!("cannot read or raise the open files limit: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_needed() {
        assert_eq!(fds_needed(1536), 3232);
        assert!(fds_needed(HttpConfig::MAX_MAX_CONNECTIONS) <= NOFILE_CAP);
    }
}
