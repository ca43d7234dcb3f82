//! The HTTP transport: one JSON POST per REST method to an inbound webhook URL, and the
//! result/error envelope (bitrix24-api.md §1.1, §1.2, §9).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::agent::{agent, Redirects};
use super::auth_status::AuthStatus;
use super::envelope::{parse_envelope, LOG_LIMIT};
use super::error::{truncate, Error};

pub use super::envelope::Reply;

/// Something that can call a Bitrix24 REST method. The real one is [`WebhookClient`]; a
/// dry-run or test double can stand in for it, since [`super::api`] only sees this trait.
pub trait Transport: Send + Sync {
    /// Call `method` (e.g. `telephony.externalcall.register`) with a JSON object of params.
    fn call(&self, method: &str, params: &Value) -> Result<Reply, Error>;
}

impl<T: Transport + ?Sized> Transport for &T {
    fn call(&self, method: &str, params: &Value) -> Result<Reply, Error> {
        (**self).call(method, params)
    }
}

impl<T: Transport + ?Sized> Transport for Box<T> {
    fn call(&self, method: &str, params: &Value) -> Result<Reply, Error> {
        (**self).call(method, params)
    }
}

impl<T: Transport + ?Sized> Transport for Arc<T> {
    fn call(&self, method: &str, params: &Value) -> Result<Reply, Error> {
        (**self).call(method, params)
    }
}

/// A Bitrix24 inbound webhook: `https://{portal}/rest/{user_id}/{code}/` (§1.1).
///
/// The `{code}` is a password. It is kept only in `base`, which is used for nothing but the
/// request itself: log lines use `redacted_base`, and every error message is scrubbed of it.
pub struct WebhookClient {
    agent: ureq::Agent,
    base: String,
    redacted_base: String,
    secrets: Vec<String>,
    /// Where `WRONG_AUTH_TYPE` is reported for `/healthz` and `/status`.
    status: Option<AuthStatus>,
    /// `WRONG_AUTH_TYPE` is a configuration error: said once, not once per request.
    wrong_auth_said: std::sync::atomic::AtomicBool,
}

/// What an operator must read when the portal refuses telephony methods to webhooks
/// (bitrix24-api.md §1.4). README.md has a "§ App mode" section pointing to docs/app-mode.md.
pub const APP_MODE_REQUIRED: &str = "this portal requires app mode; see README § App mode";

impl WebhookClient {
    /// `webhook_url` may end with a slash or not. `timeout` bounds each request as a whole
    /// (connect, send, receive); Bitrix24 cloud itself stops a request after 60 s (§9.4).
    pub fn new(webhook_url: &str, timeout: Duration) -> Self {
        let mut base = webhook_url.trim().to_string();
        if !base.ends_with('/') {
            base.push('/');
        }
        WebhookClient {
            agent: agent(timeout, Redirects::Refuse),
            redacted_base: redact_url(&base),
            secrets: secrets_of(&base),
            base,
            status: None,
            wrong_auth_said: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Report `WRONG_AUTH_TYPE` into `status` (the daemon's health) as well as the log.
    pub fn with_status(mut self, status: AuthStatus) -> Self {
        self.status = Some(status);
        self
    }

    /// Log [`APP_MODE_REQUIRED`] the first time, and publish it. The step itself is not
    /// retried: `WRONG_AUTH_TYPE` is permanent ([`Error::is_retryable`]).
    fn note_wrong_auth_type(&self) {
        use std::sync::atomic::Ordering;
        if !self.wrong_auth_said.swap(true, Ordering::SeqCst) {
            log::error!("{APP_MODE_REQUIRED}");
        }
        if let Some(s) = &self.status {
            *s.lock().unwrap_or_else(|p| p.into_inner()) = Some(APP_MODE_REQUIRED.to_string());
        }
    }

    /// Replace every occurrence of the secret code with `***`: ureq's messages (e.g. "bad uri")
    /// and a proxy's error page may quote the URL.
    fn scrub(&self, s: &str) -> String {
        let mut out = s.to_string();
        for secret in &self.secrets {
            out = out.replace(secret.as_str(), "***");
        }
        out
    }

    fn scrub_error(&self, e: Error) -> Error {
        match e {
            Error::Transport(m) => Error::Transport(self.scrub(&m)),
            Error::Http { status, body } => Error::Http {
                status,
                body: self.scrub(&body),
            },
            Error::Api {
                status,
                code,
                description,
            } => Error::Api {
                status,
                code: self.scrub(&code),
                description: self.scrub(&description),
            },
            Error::Decode(m) => Error::Decode(self.scrub(&m)),
        }
    }

    fn send(&self, method: &str, params: &Value) -> Result<Reply, Error> {
        let body = serde_json::to_vec(params).map_err(|e| Error::Decode(e.to_string()))?;
        let url = format!("{}{}.json", self.base, method);
        let started = Instant::now();
        let result = self
            .agent
            .post(&url)
            .header("Content-Type", "application/json")
            .header("Accept", "application/json")
            .send(&body[..]);
        let mut response = match result {
            Ok(r) => r,
            Err(e) => return Err(Error::Transport(e.to_string())),
        };
        let status = response.status().as_u16();
        if (300..400).contains(&status) {
            let location = response
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .map(redact_url)
                .unwrap_or_default();
            log::debug!("bitrix24 <- {method} HTTP {status} redirect to {location}");
            return Err(Error::Http {
                status,
                body: format!("redirect to {location:?} (not followed; fix webhook_url)"),
            });
        }
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| Error::Transport(format!("reading response body: {e}")))?;
        if log::log_enabled!(log::Level::Debug) {
            log::debug!(
                "bitrix24 <- {method} HTTP {status} in {} ms: {}",
                started.elapsed().as_millis(),
                truncate(&self.scrub(&text), LOG_LIMIT)
            );
        }
        parse_envelope(status, &text)
    }
}

impl Transport for WebhookClient {
    fn call(&self, method: &str, params: &Value) -> Result<Reply, Error> {
        if log::log_enabled!(log::Level::Debug) {
            log::debug!(
                "bitrix24 -> POST {}{method}.json {}",
                self.redacted_base,
                truncate(&params.to_string(), LOG_LIMIT)
            );
        }
        let result = self.send(method, params).map_err(|e| {
            let e = self.scrub_error(e);
            log::debug!("bitrix24 x {method}: {e}");
            if e.is_wrong_auth_type() {
                self.note_wrong_auth_type();
            }
            e
        });
        // Inside a batch the refusal is a sub-result (`result_error`, §8), not our error.
        if let Ok(reply) = &result {
            if method == "batch" && batch_has_wrong_auth_type(&reply.result) {
                self.note_wrong_auth_type();
            }
        }
        result
    }
}

/// Whether a `batch` result holds a `WRONG_AUTH_TYPE` among its `result_error` entries.
fn batch_has_wrong_auth_type(result: &Value) -> bool {
    let errors = match result.get("result_error") {
        Some(Value::Object(m)) => m.values().collect::<Vec<_>>(),
        Some(Value::Array(a)) => a.iter().collect(),
        _ => return false,
    };
    errors
        .iter()
        .any(|e| e.get("error").and_then(Value::as_str) == Some("WRONG_AUTH_TYPE"))
}

/// The webhook URL with its secret code replaced by `***`, for logs and messages:
/// `https://p.bitrix24.ru/rest/1/abcdef/x` → `https://p.bitrix24.ru/rest/1/***/x`.
///
/// Anything that does not look like `/rest/{uid}/{code}/` has its whole path hidden, and a
/// query string or `user:password@` is hidden too, since we cannot tell where the secret is.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => (&url[..i + 3], &url[i + 3..]),
        None => ("", url),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let authority = match authority.rfind('@') {
        Some(i) => format!("***@{}", &authority[i + 1..]),
        None => authority.to_string(),
    };
    let (path, query) = match path.find(['?', '#']) {
        Some(i) => (&path[..i], "?***"),
        None => (path, ""),
    };
    let path = match split_webhook_path(path) {
        Some((prefix, code, tail)) if !code.is_empty() => format!("{prefix}***{tail}"),
        Some(_) => path.to_string(),
        None if path.is_empty() || path == "/" => path.to_string(),
        None => "/***".to_string(),
    };
    format!("{scheme}{authority}{path}{query}")
}

/// Check that `url` looks like an inbound webhook, `https://{portal}/rest/{user_id}/{code}/`
/// (§1.1), so that a typo is reported at startup rather than retried forever as a transport
/// error. `http://` is accepted: on-premise portals may allow it, and tests use it.
/// The message never contains the code.
pub fn validate_webhook_url(url: &str) -> Result<(), String> {
    let url = url.trim();
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!("{}: not a URL", redact_url(url)));
    };
    if scheme != "https" && scheme != "http" {
        return Err(format!("{}: must be https://", redact_url(url)));
    }
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if authority.is_empty() {
        return Err(format!("{}: no host", redact_url(url)));
    }
    let layout_ok = match split_webhook_path(path) {
        Some((prefix, code, tail)) => {
            let uid = prefix
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or("");
            !uid.is_empty()
                && uid.bytes().all(|b| b.is_ascii_digit())
                && !code.is_empty()
                && (tail.is_empty() || tail == "/")
        }
        None => false,
    };
    if !layout_ok || path.contains(['?', '#']) {
        return Err(format!(
            "{}: expected https://<portal>/rest/<user id>/<code>/",
            redact_url(url)
        ));
    }
    Ok(())
}

/// Split a path `…/rest/{uid}/{code}{tail}` into (`…/rest/{uid}/`, `{code}`, `{tail}`).
fn split_webhook_path(path: &str) -> Option<(&str, &str, &str)> {
    let rest_at = path.find("/rest/")? + "/rest/".len();
    let uid_len = path[rest_at..].find('/')?;
    let code_at = rest_at + uid_len + 1;
    let code_len = path[code_at..].find('/').unwrap_or(path.len() - code_at);
    Some((
        &path[..code_at],
        &path[code_at..code_at + code_len],
        &path[code_at + code_len..],
    ))
}

/// The substrings of a webhook URL that must never be shown: the code, or the whole path
/// when the layout is unknown, and a password in `user:password@`.
fn secrets_of(url: &str) -> Vec<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut secrets = Vec::new();
    if let Some((userinfo, _)) = authority.rsplit_once('@') {
        secrets.push(userinfo.to_string());
    }
    let path = path.split(['?', '#']).next().unwrap_or("");
    match split_webhook_path(path) {
        Some((_, code, _)) if !code.is_empty() => secrets.push(code.to_string()),
        Some(_) => {}
        None if path.len() > 1 => secrets.push(path.trim_end_matches('/').to_string()),
        None => {}
    }
    if let Some((_, query)) = rest.split_once('?') {
        secrets.push(query.to_string());
    }
    secrets.retain(|s| !s.is_empty());
    secrets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_the_code() {
        assert_eq!(
            redact_url("https://p.bitrix24.ru/rest/1/abcdef/x"),
            "https://p.bitrix24.ru/rest/1/***/x"
        );
        assert_eq!(
            redact_url("https://p.bitrix24.ru/rest/1/abcdef/"),
            "https://p.bitrix24.ru/rest/1/***/"
        );
        assert_eq!(
            redact_url("https://p.bitrix24.ru/rest/1/abcdef"),
            "https://p.bitrix24.ru/rest/1/***"
        );
        assert_eq!(
            redact_url("http://127.0.0.1:8080/rest/12/testcode/user.get.json"),
            "http://127.0.0.1:8080/rest/12/***/user.get.json"
        );
    }

    #[test]
    fn redacts_unknown_layouts_entirely() {
        assert_eq!(
            redact_url("https://p.example/hook/abcdef/"),
            "https://p.example/***"
        );
        assert_eq!(
            redact_url("https://u:pw@p.example/rest/1/abc/?auth=tok"),
            "https://***@p.example/rest/1/***/?***"
        );
        assert_eq!(redact_url("https://p.example"), "https://p.example");
        assert_eq!(redact_url("https://p.example/"), "https://p.example/");
    }

    #[test]
    fn validates_webhook_urls() {
        assert!(validate_webhook_url("https://p.bitrix24.ru/rest/1/abcdef/").is_ok());
        assert!(validate_webhook_url("https://p.bitrix24.ru/rest/12/abcdef").is_ok());
        assert!(validate_webhook_url("http://127.0.0.1:8080/rest/1/testcode/").is_ok());
        for bad in [
            "p.bitrix24.ru/rest/1/abcdef/",
            "ftp://p.bitrix24.ru/rest/1/abcdef/",
            "https:///rest/1/abcdef/",
            "https://p.bitrix24.ru/rest/1/",
            "https://p.bitrix24.ru/rest/x/abcdef/",
            "https://p.bitrix24.ru/rest/1/abcdef/user.get",
            "https://p.bitrix24.ru/abcdef/",
        ] {
            let e = validate_webhook_url(bad).expect_err(bad);
            assert!(!e.contains("abcdef"), "{e}");
        }
    }

    #[test]
    fn client_knows_its_secret() {
        let c = WebhookClient::new(
            "https://p.bitrix24.ru/rest/1/abcdef",
            Duration::from_secs(1),
        );
        assert_eq!(c.base, "https://p.bitrix24.ru/rest/1/abcdef/");
        assert_eq!(c.redacted_base, "https://p.bitrix24.ru/rest/1/***/");
        assert_eq!(c.secrets, vec!["abcdef".to_string()]);
        let e = c.scrub_error(Error::Transport(
            "bad uri: https://p.bitrix24.ru/rest/1/abcdef/x.json".into(),
        ));
        assert!(!e.to_string().contains("abcdef"), "{e}");
    }
}
