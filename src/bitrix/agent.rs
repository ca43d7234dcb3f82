//! The one place a ureq agent is built, so every request to the portal (webhook and OAuth
//! REST calls, token refreshes, recording probes, downloads and uploads) has the same timeout
//! semantics, status handling and User-Agent.

use std::time::Duration;

/// Whether the agent follows HTTP redirects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Redirects {
    /// Follow them (ureq's default limit): recording and upload URLs may be redirected to
    /// storage.
    Follow,
    /// Report a redirect as the answer. A redirected POST would come back as a GET without
    /// our body; better to report it as a misconfigured URL (e.g. http:// or an old domain).
    Refuse,
}

/// An agent whose every request is bounded by `timeout` as a whole. A 4xx/5xx is returned as
/// a response, not an error: it carries the error envelope we need to classify
/// (bitrix24-api.md §9.2, §9.3).
pub fn agent(timeout: Duration, redirects: Redirects) -> ureq::Agent {
    let b = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .user_agent(concat!("callme/", env!("CARGO_PKG_VERSION")));
    let b = match redirects {
        Redirects::Follow => b,
        Redirects::Refuse => b.max_redirects(0),
    };
    b.build().into()
}
