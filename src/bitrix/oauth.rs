//! App mode (`[bitrix24] auth = app`): REST calls with OAuth tokens of a local application
//! instead of an inbound webhook (bitrix24-api.md §1.3, §1.4).
//!
//! The tokens arrive with the application's install event (`POST /bitrix24/install`, see
//! `http::install`), are kept in `[state] dir`/`oauth.json` (mode 0600, replaced atomically),
//! and are refreshed against `oauth_url` when the portal answers `expired_token` or shortly
//! before they expire. Bitrix24 rotates the refresh token on every refresh, so:
//!
//! - only one refresh runs at a time (`refresh_lock`): two refreshes of the same refresh token
//!   would leave one of them holding a pair the server has already replaced;
//! - the new pair is written to disk before any request uses it, so a crash right after a
//!   refresh does not leave us with a refresh token the server no longer accepts;
//! - a request that saw its access token expire never sends that token again: it waits for
//!   the refresh (or takes the one another thread just made).
//!
//! A refresh the server refuses (`invalid_grant`: the app was removed, or the refresh token
//! is older than 180 days) cannot heal by itself. It is logged once as an error, shown by
//! `/healthz` and `/status`, and every call fails with a *retryable* error, so the outbox keeps
//! the steps until an administrator reinstalls the app and new tokens arrive.
//!
//! An install is taken only when it is verifiably ours (`AppClient::install`): its
//! `client_endpoint` is the configured portal's, and its access token works *there*, for *our*
//! application (`app.info` answers with our `client_id`). REST calls only ever go to the
//! configured portal ([`AppConfig::endpoint`]); the endpoint an event or the OAuth server names
//! is checked, never followed.
//!
//! No token and no client secret is ever logged or put in an error message.

use std::fmt;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::agent::{agent, Redirects};
use super::auth_status::{set_status, AuthStatus};
use super::client::{Reply, Transport};
use super::envelope::parse_envelope;
use super::error::{truncate, Error};
use super::urlenc::url_encode;
use crate::clock::now_secs;
use crate::config::{AppConfig, Secret};

/// The file in `[state] dir` that holds the tokens.
pub const TOKEN_FILE: &str = "oauth.json";

/// The events the daemon handles, bound after install (bitrix24-api.md §5.2).
pub const EVENTS: &[&str] = &["ONEXTERNALCALLSTART", "ONEXTERNALCALLBACKSTART"];

/// Refresh this long before `expires`: a request started a second before expiry would
/// otherwise arrive with a dead token and cost a round trip.
const EXPIRY_MARGIN: u64 = 60;

/// What an install event gives us, as stored in `oauth.json`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    pub access_token: String,
    pub refresh_token: String,
    /// Unix seconds when `access_token` stops working.
    pub expires: u64,
    /// `https://{portal}/rest/`: REST calls go to `{client_endpoint}{method}.json`.
    pub client_endpoint: String,
    /// The portal's identity; events and later installs must carry the same one.
    pub member_id: String,
    pub domain: String,
    /// Sent by Bitrix24 with every event of this app (`auth[application_token]`).
    pub application_token: String,
}

/// Secrets as `***`, so a `{:?}` can never leak a token.
impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("access_token", &"***")
            .field("refresh_token", &"***")
            .field("expires", &self.expires)
            .field("client_endpoint", &self.client_endpoint)
            .field("member_id", &self.member_id)
            .field("domain", &self.domain)
            .field("application_token", &"***")
            .finish()
    }
}

/// A problem with `oauth.json`. The message names the file, never its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}

/// `oauth.json` in the state directory.
#[derive(Debug, Clone)]
pub struct TokenStore {
    path: PathBuf,
}

impl TokenStore {
    pub fn new(dir: &Path) -> TokenStore {
        TokenStore {
            path: dir.join(TOKEN_FILE),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `Ok(None)` when there is no file yet (the app was never installed).
    pub fn load(&self) -> Result<Option<Tokens>, StoreError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError(format!("{}: {e}", self.path.display()))),
        };
        serde_json::from_str(&text).map(Some).map_err(|e| {
            StoreError(format!(
                "{}: not a token file ({}); reinstall the app",
                self.path.display(),
                e.classify_name()
            ))
        })
    }

    /// Write to a temporary file (0600), fsync it, rename it over `oauth.json` and fsync the
    /// directory: a crash leaves either the old pair or the new one, never half a file.
    pub fn save(&self, t: &Tokens) -> Result<(), StoreError> {
        let err = |what: &str, e: std::io::Error| {
            StoreError(format!("{}: {what}: {e}", self.path.display()))
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(|e| err("creating the directory", e))?;
        let tmp = dir.join(format!(".{TOKEN_FILE}.tmp"));
        let text = serde_json::to_vec_pretty(t).map_err(|e| StoreError(e.to_string()))?;
        let mut f = crate::statefile::private_file(&tmp, 0o600).map_err(|e| err("creating", e))?;
        f.write_all(&text).map_err(|e| err("writing", e))?;
        f.sync_all().map_err(|e| err("fsync", e))?;
        drop(f);
        fs::rename(&tmp, &self.path).map_err(|e| err("renaming", e))?;
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    /// serde's message may quote the file's content (a token); say only what kind of error.
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "I/O error",
            serde_json::error::Category::Syntax => "invalid JSON",
            serde_json::error::Category::Data => "missing or wrong fields",
            serde_json::error::Category::Eof => "truncated",
        }
    }
}

/// Why an install event was refused. Nothing is stored in any case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstallError {
    /// Not from our portal (endpoint, domain, member_id, or the stored application token of a
    /// reinstall). The text names the check, never a value.
    Forbidden(&'static str),
    /// The configured portal did not confirm the tokens: it refused the access token, or it
    /// answered for another application. The text holds no token.
    Unverified(String),
    /// The configured portal could not be asked (network, 5xx): try the install again.
    Unreachable(String),
    /// The tokens could not be saved; the install is not taken.
    Store(StoreError),
}

impl fmt::Display for InstallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InstallError::Forbidden(why) => write!(f, "refused: {why}"),
            InstallError::Unverified(why) => {
                write!(f, "refused: not confirmed by the portal: {why}")
            }
            InstallError::Unreachable(why) => {
                write!(f, "refused: the portal could not confirm the tokens: {why}")
            }
            InstallError::Store(e) => write!(f, "cannot save the tokens: {e}"),
        }
    }
}

impl std::error::Error for InstallError {}

/// What the client knows; guarded by one mutex.
#[derive(Default)]
struct TokenState {
    tokens: Option<Tokens>,
    /// Set when the OAuth server refused a refresh for good; cleared by the next install.
    broken: Option<String>,
}

/// A [`Transport`] that calls `{endpoint}{method}.json` (the configured portal) with `auth=<access_token>` in
/// the JSON body, refreshing the token as described in the module docs.
pub struct AppClient {
    agent: ureq::Agent,
    client_id: String,
    client_secret: Secret,
    oauth_url: String,
    portal: String,
    /// `AppConfig::endpoint`: where every REST call goes.
    endpoint: String,
    /// `[bitrix24] member_id`, if the operator pinned the portal.
    member_id: Option<String>,
    store: TokenStore,
    state: Mutex<TokenState>,
    /// Held for a whole refresh (and an install), so only one runs at a time.
    refresh_lock: Mutex<()>,
    status: AuthStatus,
    /// A refresh failure is logged once, not once per request.
    failure_logged: AtomicBool,
    /// `false` for one-off tools (`callme app-status`): they must not rotate the pair under
    /// a running daemon, which would then hold a refresh token the server no longer accepts.
    may_refresh: bool,
    /// Refresh outcomes since start, for `/metrics`.
    refreshes: RefreshCounts,
}

/// How token refreshes ended: an operator alerts on the failures, and on an access token
/// that stays expired although callme keeps making requests.
#[derive(Debug, Default)]
pub struct RefreshCounts {
    pub ok: AtomicU64,
    /// The OAuth server could not be reached or answered 5xx; retried on the next request.
    pub failed: AtomicU64,
    /// The OAuth server refused the refresh token (`invalid_grant`): needs a reinstall.
    pub refused: AtomicU64,
}

impl AppClient {
    /// Load the stored tokens, if any. A token file that cannot be read, or that belongs to
    /// another portal than the configured one (another endpoint, or a `member_id` other than
    /// the pinned one: the config changed, or a forged install was stored by an older
    /// version), is logged and treated as "not installed": the next install replaces it.
    pub fn new(cfg: &AppConfig, state_dir: &Path, timeout: Duration, status: AuthStatus) -> Self {
        let store = TokenStore::new(state_dir);
        let endpoint = cfg.endpoint();
        let tokens = match store.load() {
            Ok(Some(t)) if !t.client_endpoint.eq_ignore_ascii_case(&endpoint) => {
                log::error!(
                    "app mode: {} holds tokens for {}, not for [bitrix24] portal ({endpoint}); \
                     ignored until the application is installed again",
                    store.path().display(),
                    t.client_endpoint
                );
                None
            }
            Ok(Some(t)) if cfg.member_id.as_ref().is_some_and(|m| *m != t.member_id) => {
                log::error!(
                    "app mode: {} holds tokens of member_id {}, not [bitrix24] member_id; \
                     ignored until the application is installed again",
                    store.path().display(),
                    t.member_id
                );
                None
            }
            Ok(t) => t,
            Err(e) => {
                log::error!("app mode: {e}");
                None
            }
        };
        let client = AppClient {
            agent: agent(timeout, Redirects::Refuse),
            client_id: cfg.client_id.clone(),
            client_secret: cfg.client_secret.clone(),
            oauth_url: cfg.oauth_url.clone(),
            portal: cfg.portal.clone(),
            endpoint,
            member_id: cfg.member_id.clone(),
            store,
            state: Mutex::new(TokenState {
                tokens,
                broken: None,
            }),
            refresh_lock: Mutex::new(()),
            status,
            failure_logged: AtomicBool::new(false),
            may_refresh: true,
            refreshes: RefreshCounts::default(),
        };
        if client.tokens().is_none() {
            client.set_not_installed();
        }
        client
    }

    /// Never refresh: for tools that run next to the daemon.
    pub fn read_only(mut self) -> Self {
        self.may_refresh = false;
        self
    }

    fn set_not_installed(&self) {
        set_status(
            &self.status,
            Some(format!(
                "app mode: the Bitrix24 application is not installed yet (no {})",
                self.store.path().display()
            )),
        );
    }

    fn lock(&self) -> MutexGuard<'_, TokenState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current tokens (a copy).
    pub fn tokens(&self) -> Option<Tokens> {
        self.lock().tokens.clone()
    }

    /// Unix seconds when the current access token expires; `None` before the install.
    pub fn expires(&self) -> Option<u64> {
        self.lock().tokens.as_ref().map(|t| t.expires)
    }

    pub fn refresh_counts(&self) -> &RefreshCounts {
        &self.refreshes
    }

    pub fn store(&self) -> &TokenStore {
        &self.store
    }

    /// Take the tokens of an install event, if all of these hold (else nothing changes):
    ///
    /// - `auth[client_endpoint]` is the configured portal's endpoint and `auth[domain]` is
    ///   `[bitrix24] portal`, so our REST calls can never be pointed elsewhere;
    /// - `member_id` is the pinned `[bitrix24] member_id`, if set;
    /// - when tokens are stored (a reinstall), it carries the stored `application_token`
    ///   (compared in constant time) and `member_id`;
    /// - the configured portal accepts the new access token and says it belongs to our
    ///   application (`app.info` answers `CODE` = `client_id`), asked at the configured
    ///   endpoint, never at the posted one.
    ///
    /// The cheap checks come first, so a stranger cannot make us call the portal for a
    /// reinstall. The tokens are saved before they are used.
    pub fn install(&self, new: Tokens) -> Result<(), InstallError> {
        let _one = self.refresh_lock.lock().unwrap_or_else(|p| p.into_inner());
        if !new.client_endpoint.eq_ignore_ascii_case(&self.endpoint) {
            return Err(InstallError::Forbidden(
                "auth[client_endpoint] is not the endpoint of [bitrix24] portal",
            ));
        }
        if !new.domain.eq_ignore_ascii_case(&self.portal) {
            return Err(InstallError::Forbidden("domain is not [bitrix24] portal"));
        }
        if self.member_id.as_ref().is_some_and(|m| *m != new.member_id) {
            return Err(InstallError::Forbidden(
                "member_id is not [bitrix24] member_id",
            ));
        }
        let old = self.tokens();
        if let Some(old) = &old {
            if !Secret::new(old.application_token.clone()).ct_eq(&new.application_token) {
                return Err(InstallError::Forbidden("bad application_token"));
            }
            if old.member_id != new.member_id {
                return Err(InstallError::Forbidden("wrong member_id"));
            }
        }
        self.verify(&new)?;
        let new = Tokens {
            client_endpoint: self.endpoint.clone(),
            ..new
        };
        self.store.save(&new).map_err(InstallError::Store)?;
        let mut st = self.lock();
        st.tokens = Some(new);
        st.broken = None;
        drop(st);
        self.failure_logged.store(false, Ordering::SeqCst);
        set_status(&self.status, None);
        log::info!(
            "app mode: {} for portal {} (member_id {})",
            if old.is_some() {
                "tokens renewed by a new install"
            } else {
                "installed"
            },
            self.portal,
            self.tokens().map(|t| t.member_id).unwrap_or_default()
        );
        Ok(())
    }

    /// Ask the configured portal, with `t`'s access token, which application it belongs to
    /// (`app.info`: for a local application its `CODE` is the `client_id`). A token the portal does not know, or one of another
    /// application, is refused; so is an answer without `CODE`.
    fn verify(&self, t: &Tokens) -> Result<(), InstallError> {
        let reply = match self.send(t, "app.info", &Value::Null) {
            Ok(r) => r,
            Err(e) if e.is_retryable() => return Err(InstallError::Unreachable(e.to_string())),
            Err(e) => return Err(InstallError::Unverified(format!("app.info: {e}"))),
        };
        let code = reply
            .result
            .get("CODE")
            .and_then(Value::as_str)
            .unwrap_or("");
        if code == self.client_id {
            return Ok(());
        }
        Err(InstallError::Unverified(if code.is_empty() {
            "app.info answered without CODE".to_string()
        } else {
            format!(
                "the token belongs to application {}, not to [bitrix24] client_id",
                truncate(code, 128)
            )
        }))
    }

    /// The tokens to send now, or why there are none.
    fn current(&self) -> Result<Tokens, Error> {
        let st = self.lock();
        if let Some(why) = &st.broken {
            return Err(Error::Transport(why.clone()));
        }
        st.tokens.clone().ok_or_else(|| {
            Error::Transport(
                "app mode: not installed yet; waiting for the install event".to_string(),
            )
        })
    }

    /// Refresh unless someone already replaced `seen` (the token that expired or is about
    /// to). Returns tokens whose access token is not `seen`.
    fn refresh(&self, seen: &str) -> Result<Tokens, Error> {
        let _one = self.refresh_lock.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.current()?;
        if old.access_token != seen {
            return Ok(old);
        }
        if !self.may_refresh {
            return Err(Error::Transport(
                "the access token has expired; the daemon refreshes it on its next request"
                    .to_string(),
            ));
        }
        let started = Instant::now();
        match self.request_refresh(&old) {
            Ok(new) => {
                if new.access_token == seen {
                    return Err(Error::Transport(
                        "OAuth server returned the expired access token again".to_string(),
                    ));
                }
                // Saved before use. If saving fails the pair is still used: the server has
                // already retired the old refresh token, so dropping the new one would lose
                // the authorization for good. The problem is shown on /healthz instead.
                let saved = self.store.save(&new);
                self.lock().tokens = Some(new.clone());
                match saved {
                    Ok(()) => set_status(&self.status, None),
                    Err(e) => {
                        log::error!("app mode: refreshed tokens could not be saved: {e}");
                        set_status(
                            &self.status,
                            Some(format!(
                                "app mode: tokens could not be saved ({e}); a restart would lose them"
                            )),
                        );
                    }
                }
                self.refreshes.ok.fetch_add(1, Ordering::Relaxed);
                log::info!(
                    "app mode: access token refreshed in {} ms, valid until unix time {}",
                    started.elapsed().as_millis(),
                    new.expires
                );
                Ok(new)
            }
            Err(Refresh::Temporary(e)) => {
                self.refreshes.failed.fetch_add(1, Ordering::Relaxed);
                log::warn!("app mode: token refresh failed, will retry: {e}");
                Err(e)
            }
            Err(Refresh::Refused(why)) => {
                self.refreshes.refused.fetch_add(1, Ordering::Relaxed);
                let msg = format!(
                    "app mode: Bitrix24 refused to refresh the OAuth token ({why}); calls wait \
                     in the outbox until the application is reinstalled on {}",
                    self.portal
                );
                if !self.failure_logged.swap(true, Ordering::SeqCst) {
                    log::error!("{msg}");
                }
                self.lock().broken = Some(msg.clone());
                set_status(&self.status, Some(msg.clone()));
                Err(Error::Transport(msg))
            }
        }
    }

    /// `GET oauth_url?grant_type=refresh_token&client_id=…&client_secret=…&refresh_token=…`
    /// (bitrix24-api.md §1.3).
    fn request_refresh(&self, old: &Tokens) -> Result<Tokens, Refresh> {
        let url = format!(
            "{}?grant_type=refresh_token&client_id={}&client_secret={}&refresh_token={}",
            self.oauth_url,
            url_encode(&self.client_id),
            url_encode(self.client_secret.expose()),
            url_encode(&old.refresh_token)
        );
        let scrub = |s: String| {
            s.replace(&url, &self.oauth_url)
                .replace(self.client_secret.expose(), "***")
                .replace(&old.refresh_token, "***")
        };
        let mut resp = match self
            .agent
            .get(&url)
            .header("Accept", "application/json")
            .call()
        {
            Ok(r) => r,
            Err(e) => {
                return Err(Refresh::Temporary(Error::Transport(scrub(format!(
                    "OAuth server: {e}"
                )))))
            }
        };
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().map_err(|e| {
            Refresh::Temporary(Error::Transport(scrub(format!("OAuth server: {e}"))))
        })?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let field = |k: &str| match v.get(k) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => String::new(),
        };
        if !field("error").is_empty() || v.get("error").is_some() {
            let (code, desc) = (field("error"), field("error_description"));
            let why = scrub(format!("{code}: {desc}"));
            if status >= 500 || status == 429 {
                return Err(Refresh::Temporary(Error::Http {
                    status,
                    body: truncate(&why, 200),
                }));
            }
            return Err(Refresh::Refused(truncate(&why, 200)));
        }
        let (access, refresh) = (field("access_token"), field("refresh_token"));
        if status != 200 || access.is_empty() || refresh.is_empty() {
            return Err(Refresh::Temporary(Error::Http {
                status,
                body: "OAuth server answered without tokens".to_string(),
            }));
        }
        let now = now_secs();
        let expires = field("expires")
            .parse::<u64>()
            .ok()
            .or_else(|| field("expires_in").parse::<u64>().ok().map(|s| now + s))
            .unwrap_or(now + 3600);
        // The answer's client_endpoint is not followed: REST calls go to the configured
        // portal only.
        Ok(Tokens {
            access_token: access,
            refresh_token: refresh,
            expires,
            client_endpoint: self.endpoint.clone(),
            member_id: old.member_id.clone(),
            domain: old.domain.clone(),
            application_token: old.application_token.clone(),
        })
    }

    /// One POST with `auth` in the JSON body (never in the URL, which could reach a log).
    fn send(&self, t: &Tokens, method: &str, params: &Value) -> Result<Reply, Error> {
        let mut body = match params {
            Value::Object(m) => m.clone(),
            Value::Null => serde_json::Map::new(),
            other => {
                return Err(Error::Decode(format!(
                    "params of {method} are not an object: {}",
                    truncate(&other.to_string(), 100)
                )))
            }
        };
        body.insert("auth".into(), json!(t.access_token));
        let bytes = serde_json::to_vec(&body).map_err(|e| Error::Decode(e.to_string()))?;
        // Never `t.client_endpoint`: that came from outside.
        let url = format!("{}{method}.json", self.endpoint);
        if log::log_enabled!(log::Level::Debug) {
            log::debug!(
                "bitrix24 -> POST {url} {}",
                truncate(&params.to_string(), 2048)
            );
        }
        let scrub = |s: String| s.replace(&t.access_token, "***");
        let mut resp = self
            .agent
            .post(&url)
            .header("Content-Type", "application/json")
            .header("Accept", "application/json")
            .send(&bytes[..])
            .map_err(|e| Error::Transport(scrub(e.to_string())))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| Error::Transport(scrub(format!("reading response body: {e}"))))?;
        log::debug!(
            "bitrix24 <- {method} HTTP {status}: {}",
            truncate(&scrub(text.clone()), 2048)
        );
        parse_envelope(status, &text)
    }
}

/// Why a refresh failed.
enum Refresh {
    /// The OAuth server was unreachable or overloaded: try again later, same refresh token.
    Temporary(Error),
    /// The OAuth server said no (`invalid_grant`, `invalid_client`…): only a reinstall helps.
    Refused(String),
}

/// The access token is dead: refresh and try again (bitrix24-api.md §1.3, §9.3).
fn is_expired(e: &Error) -> bool {
    matches!(e, Error::Api { code, .. } if code == "expired_token" || code == "invalid_token")
}

impl Transport for AppClient {
    fn call(&self, method: &str, params: &Value) -> Result<Reply, Error> {
        let mut t = self.current()?;
        if t.expires <= now_secs() + EXPIRY_MARGIN {
            t = self.refresh(&t.access_token)?;
        }
        match self.send(&t, method, params) {
            Err(e) if is_expired(&e) => {
                log::debug!("bitrix24 x {method}: access token expired, refreshing");
                let fresh = self.refresh(&t.access_token)?;
                match self.send(&fresh, method, params) {
                    // Twice in a row: do not loop; the outbox retries the step later.
                    Err(e) if is_expired(&e) => Err(Error::Transport(format!(
                        "app mode: {method}: access token expired again right after a refresh"
                    ))),
                    r => r,
                }
            }
            r => r,
        }
    }
}

/// The handlers bound for `events` (upper-cased event → handler URLs), from `event.get`.
pub fn bound_events(t: &dyn Transport) -> Result<Vec<(String, String)>, Error> {
    let reply = t.call("event.get", &json!({}))?;
    let mut out = Vec::new();
    if let Value::Array(items) = reply.result {
        for it in items {
            let ev = it.get("event").and_then(Value::as_str).unwrap_or("");
            let h = it.get("handler").and_then(Value::as_str).unwrap_or("");
            out.push((ev.to_ascii_uppercase(), h.to_string()));
        }
    }
    Ok(out)
}

/// Bind [`EVENTS`] to `handler` unless already bound there (`event.get`, then `event.bind`;
/// bitrix24-api.md §5.2). Returns the events it bound.
pub fn bind_events(t: &dyn Transport, handler: &str) -> Result<Vec<&'static str>, Error> {
    let bound = bound_events(t)?;
    let mut done = Vec::new();
    for ev in EVENTS {
        if bound.iter().any(|(e, h)| e == ev && h == handler) {
            continue;
        }
        t.call("event.bind", &json!({"event": ev, "handler": handler}))?;
        done.push(*ev);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        Tokens {
            access_token: "acc-secret".into(),
            refresh_token: "ref-secret".into(),
            expires: 100,
            client_endpoint: "https://p.bitrix24.ru/rest/".into(),
            member_id: "m1".into(),
            domain: "p.bitrix24.ru".into(),
            application_token: "app-secret".into(),
        }
    }

    #[test]
    fn debug_hides_secrets() {
        let d = format!("{:?}", tokens());
        assert!(!d.contains("secret"), "{d}");
        assert!(d.contains("m1"));
    }

    #[test]
    fn store_round_trip_is_private_and_atomic() {
        let dir = std::env::temp_dir().join(format!("callme-oauth-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let s = TokenStore::new(&dir);
        assert_eq!(s.load(), Ok(None));
        s.save(&tokens()).unwrap();
        assert_eq!(s.load(), Ok(Some(tokens())));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(s.path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(!dir.join(".oauth.json.tmp").exists());
        fs::write(s.path(), "{\"access_token\":\"leak\"").unwrap();
        let e = s.load().unwrap_err().to_string();
        assert!(!e.contains("leak"), "{e}");
        let _ = fs::remove_dir_all(&dir);
    }

    /// A portal on loopback where nothing listens (a port bound, then freed), over plain
    /// http, so a check that reaches the network fails as `Unreachable` at once.
    fn closed_portal() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("127.0.0.1:{}", l.local_addr().unwrap().port())
    }

    fn config(portal: &str, member_id: Option<&str>) -> AppConfig {
        AppConfig {
            client_id: "local.1.2".into(),
            client_secret: Secret::new("cs"),
            portal: portal.into(),
            oauth_url: format!("http://{portal}/oauth/token/"),
            member_id: member_id.map(String::from),
            insecure_http: true,
        }
    }

    fn tokens_of(portal: &str) -> Tokens {
        Tokens {
            client_endpoint: format!("http://{portal}/rest/"),
            domain: portal.into(),
            ..tokens()
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("callme-oauth-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    /// The checks that need no portal refuse before any request, and store nothing.
    #[test]
    fn install_refuses_another_endpoint_domain_or_member_before_asking() {
        let dir = temp_dir("checks");
        let portal = closed_portal();
        let app = AppClient::new(
            &config(&portal, Some("m1")),
            &dir,
            Duration::from_secs(5),
            AuthStatus::default(),
        );
        let good = tokens_of(&portal);
        let cases = [
            (
                Tokens {
                    client_endpoint: "https://evil.example/rest/".into(),
                    ..good.clone()
                },
                "auth[client_endpoint] is not the endpoint of [bitrix24] portal",
            ),
            (
                Tokens {
                    client_endpoint: format!("https://{portal}/rest/"),
                    ..good.clone()
                },
                "auth[client_endpoint] is not the endpoint of [bitrix24] portal",
            ),
            (
                Tokens {
                    domain: "evil.bitrix24.ru".into(),
                    ..good.clone()
                },
                "domain is not [bitrix24] portal",
            ),
            (
                Tokens {
                    member_id: "m2".into(),
                    ..good.clone()
                },
                "member_id is not [bitrix24] member_id",
            ),
        ];
        for (t, why) in cases {
            assert_eq!(app.install(t), Err(InstallError::Forbidden(why)));
            assert!(!dir.join(TOKEN_FILE).exists());
        }
        // Past those checks the portal is asked; here it cannot be reached.
        assert!(matches!(
            app.install(good),
            Err(InstallError::Unreachable(_))
        ));
        assert!(!dir.join(TOKEN_FILE).exists());
        assert!(app.tokens().is_none());
        let _ = fs::remove_dir_all(&dir);
    }

    /// A token file of another endpoint or another (pinned) member_id is not used.
    #[test]
    fn stored_tokens_of_another_portal_are_ignored() {
        let dir = temp_dir("load");
        let portal = closed_portal();
        let store = TokenStore::new(&dir);
        let load = |member: Option<&str>| {
            AppClient::new(
                &config(&portal, member),
                &dir,
                Duration::from_secs(5),
                AuthStatus::default(),
            )
            .tokens()
        };
        let good = tokens_of(&portal);
        store.save(&good).unwrap();
        assert_eq!(load(None), Some(good.clone()));
        assert_eq!(load(Some("m1")), Some(good.clone()));
        assert_eq!(load(Some("m2")), None);
        store
            .save(&Tokens {
                client_endpoint: "https://evil.example/rest/".into(),
                ..good
            })
            .unwrap();
        assert_eq!(load(None), None);
        let _ = fs::remove_dir_all(&dir);
    }
}
