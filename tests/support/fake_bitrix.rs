//! Fake Bitrix24 REST portal.
//!
//! A tiny_http server on `127.0.0.1:0` that answers the webhook URL
//! `http://127.0.0.1:PORT/rest/1/testcode/` the way a real portal does, quirks included
//! (`bitrix24-api.md` §12 is the model; the section numbers below refer to that file).
//! Every request is recorded, so a test asserts on what the daemon *sent*, and can wait for
//! it with a deadline instead of sleeping.
//!
//! # Default state ([`FakeBitrix::start`])
//!
//! 120 users, so that `user.get` paging crosses 50 twice (pages 0, 50, 100):
//!
//! | user ids | `UF_PHONE_INNER` | `ACTIVE` |
//! |---|---|---|
//! | 1..=120 except below | `200 + id` as a string: 1 → `"201"`, **19 → `"219"`, 20 → `"220"`, 21 → `"221"`** (the phones of the AMI captures), 120 → `"320"` | true |
//! | 7 | `null` | true |
//! | 8 | `""` | true |
//! | 13 | `"213"` | **false** |
//!
//! So `user.get` with `FILTER: {ACTIVE: true}` returns 119 users, and 117 of them have an
//! internal number. Names are `NAME: "User<id>"`, `LAST_NAME: "Test"`.
//!
//! The CRM is empty ([`FakeBitrix::add_contact`], [`FakeBitrix::add_crm`] fill it). There
//! are no active calls and no open cards.
//!
//! # Methods
//!
//! `user.get`, `telephony.externalcall.register`, `.finish`, `.show`, `.hide`,
//! `.searchCrmEntities`, `.attachRecord`, `crm.duplicate.findbycomm`, `scope` (the granted
//! scopes: `crm`, `telephony`, `user` unless [`FakeBitrix::set_scopes`] says otherwise; a
//! method of a scope not granted is HTTP 401 `insufficient_scope`) and
//! `telephony.externalLine.get` (no lines), case-insensitively, with `.json`, a
//! trailing `/` or neither. Anything else is HTTP 404 `ERROR_METHOD_NOT_FOUND`. A wrong user
//! id or code in the URL is HTTP 401 `INVALID_CREDENTIALS` (the source's status, §9.3).
//! Params may be a JSON body, a form-encoded body (PHP `a[b][]=` brackets) and/or a query
//! string; the body wins (§1.2). Success envelopes carry a `time` block, errors do not (§9.2).
//! Method errors are HTTP 400 with `"error": ""` like live portals (§2.3).
//!
//! `attachRecord` (§4.2) works only for finished calls and has all four modes: `RECORD_URL`
//! (the fake downloads the URL itself, once), `FILENAME` + base64 `FILE_CONTENT` (decoded
//! strictly), `FILENAME` alone (answers an `uploadUrl` under `/rest/1/testcode/upload/?token=…`
//! that takes a `multipart/form-data` POST with the field `file`), and neither (error). Every
//! stored record is kept with its decoded bytes: [`FakeBitrix::records`].
//!
//! # Failure injection
//!
//! - [`FakeBitrix::fail_next`]: the next `n` requests, whatever the method, get the given
//!   status and body (e.g. 503 `QUERY_LIMIT_EXCEEDED`). They are recorded with that status.
//! - [`FakeBitrix::set_down`]: while down, every request gets **HTTP 503 with an HTML body**
//!   (`Content-Type: text/html`), like the load balancer in front of a portal under
//!   maintenance. The connection is answered, not dropped: tiny_http cannot close a connection
//!   without answering, and a refused connection is easier to get from a closed port (see
//!   [`closed_port_url`]). Requests while down are recorded too.
//! - [`FakeBitrix::set_upload_delay`]: a slow upload endpoint; other requests are served
//!   meanwhile.
//! - [`FakeBitrix::set_rate_limit`]: a leaky bucket like the cloud's (§9.4). Off by default.
//!   When it overflows the request gets HTTP 503
//!   `{"error":"QUERY_LIMIT_EXCEEDED","error_description":"Too many requests"}`; a `batch`
//!   counts as one request.
//! - [`FakeBitrix::set_delay`]: every answer is held back, the request applied at once (a slow
//!   portal; above the client's timeout, an answer lost after the work was done).
//! - A portal that refuses connections is a [`super::gate::Gate`] in front of the fake.
//!
//! # Batch
//!
//! `batch` (§8) runs each `cmd` entry (`method?query`, PHP-style query) with `halt=0` and
//! answers `{"result":{"result":{..},"result_error":{..},..}}`, empty sections as `[]`.
//! A top-level param `$result[key][FIELD]` takes that field of an earlier command's result.
//! [`FakeBitrix::commands`] lists every method the portal ran, inside a batch or not.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::TcpListener;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use super::fake_oauth::CLIENT_ID;

/// The webhook's user id and secret code in [`FakeBitrix::webhook_url`].
pub const WEBHOOK_USER: &str = "1";
pub const WEBHOOK_CODE: &str = "testcode";

/// Bitrix24 list methods return 50 rows a page (§6.2).
const PAGE: usize = 50;

/// One request as the fake saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    /// Lower-cased, without `.json` or a trailing slash: `telephony.externalcall.register`.
    pub method: String,
    /// The merged query + body params, keys as sent.
    pub params: Value,
    /// The HTTP status the fake answered with.
    pub status: u16,
}

impl Recorded {
    /// `params[key]` with a string of digits (also inside a list, or a PHP-style `{"0": ..}`
    /// list) as the number it spells: inside a `batch` every param arrives as a string.
    pub fn num(&self, key: &str) -> Value {
        number(&self.params[key])
    }
}

fn number(v: &Value) -> Value {
    match v {
        Value::String(s) => s.parse::<u64>().map_or_else(|_| v.clone(), Value::from),
        Value::Array(a) => Value::Array(a.iter().map(number).collect()),
        Value::Object(o) if o.keys().all(|k| k.parse::<usize>().is_ok()) => {
            Value::Array(o.values().map(number).collect())
        }
        _ => v.clone(),
    }
}

/// A card put on screen: when the portal applied it, for which call and user.
#[derive(Debug, Clone, PartialEq)]
pub struct CardShown {
    pub at: Instant,
    /// The call's `EXTERNAL_CALL_ID` as registered (empty if it had none).
    pub external_call_id: String,
    pub user_id: u64,
}

/// A user of the fake portal.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeUser {
    pub id: u64,
    /// `None` is JSON `null`; `Some("")` is the empty string (§6.2).
    pub inner: Option<String>,
    pub active: bool,
}

/// A CRM item findable by phone.
#[derive(Debug, Clone, PartialEq)]
pub struct CrmItem {
    /// `CONTACT`, `COMPANY` or `LEAD`.
    pub entity_type: String,
    pub id: u64,
    pub assigned_by: Option<u64>,
    /// Digits only, as the duplicate index stores it (§7.1).
    pub phone: String,
}

/// A recording attached to a finished call (§4.2).
#[derive(Debug, Clone, PartialEq)]
pub struct AttachedRecord {
    pub call_id: String,
    /// `FILENAME` as sent (or the last URL segment).
    pub filename: String,
    /// `url`, `content` or `upload`: which mode stored it.
    pub via: String,
    pub record_url: Option<String>,
    /// The file as the portal stored it (decoded base64, downloaded or uploaded bytes).
    pub bytes: Vec<u8>,
    pub file_id: u64,
}

/// A registered, not yet finished call (§2.1).
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveCall {
    pub call_id: String,
    pub user_id: u64,
    /// After `stripLetters` (§2.1).
    pub phone: String,
    pub call_type: i64,
    pub line: Option<String>,
    pub external_call_id: Option<String>,
    /// The primary CRM binding, if any.
    pub crm: Option<(String, u64)>,
    /// Items auto-created by `CRM_CREATE`; `finish` reassigns them (§3.1).
    pub created: Vec<(String, u64)>,
}

#[derive(Default)]
struct State {
    users: Vec<FakeUser>,
    crm: Vec<CrmItem>,
    calls: BTreeMap<String, ActiveCall>,
    /// `finish` statistics rows, in order.
    finished: Vec<Value>,
    /// (CALL_ID, USER_ID) of every card on screen. Cards outlive `finish` for every user
    /// but the finishing one (§4.1), which is exactly what tests must be able to catch.
    cards: BTreeSet<(String, u64)>,
    /// Every time a card went up (register with SHOW, or show), for latency benchmarks.
    shown: Vec<CardShown>,
    requests: Vec<Recorded>,
    failures: VecDeque<(u16, String)>,
    /// Methods whose next response is lost after the request was applied.
    lost: Vec<String>,
    down: bool,
    /// What `scope` answers; `None`: the default `crm`, `telephony`, `user`.
    scopes: Option<Vec<String>>,
    /// (rate per second, burst, level, last update) of the optional leaky bucket.
    bucket: Option<(f64, f64, f64, Instant)>,
    /// Every method run, alone or inside a batch, with its outcome status.
    commands: Vec<Recorded>,
    seq: u64,
    next_crm_id: u64,
    /// `http://127.0.0.1:PORT`, for upload URLs.
    base: String,
    records: Vec<AttachedRecord>,
    /// Upload URL token → (CALL_ID, FILENAME) of an `attachRecord` without `FILE_CONTENT`.
    uploads: BTreeMap<String, (String, String)>,
    /// How long an upload to an upload URL waits before it is read and answered (on a thread
    /// of its own, so other requests are served meanwhile): a slow upload endpoint.
    upload_delay: Duration,
    /// App (OAuth) mode, when enabled with [`FakeBitrix::enable_app`].
    app: Option<AppAuth>,
    /// Answer `WRONG_AUTH_TYPE` to telephony methods called through the webhook (§1.4).
    telephony_requires_app: bool,
    /// Every successful `register`, re-registrations included, in order.
    registrations: Vec<Registration>,
    /// How long to hold every answer before sending it (a slow portal).
    delay: Duration,
    /// Requests being served right now (0 or 1: one serving thread).
    in_flight: usize,
}

/// One successful `telephony.externalcall.register`, as the portal answered it.
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    /// The `CALL_ID` answered.
    pub call_id: String,
    pub external_call_id: Option<String>,
    pub user_id: u64,
    /// false when an open call with the same key got its old `CALL_ID` back (§2.1).
    pub new: bool,
    /// Index of this command in [`FakeBitrix::commands`].
    pub command: usize,
}

/// Trades a refresh token for a new (access, refresh) pair; `None` if it is not valid.
pub type Refresher = Arc<dyn Fn(&str) -> Option<(String, String)> + Send + Sync>;

/// The portal's side of app mode (bitrix24-api.md §1.3): access tokens that expire after a
/// number of requests, refresh tokens that are rotated on use. A token the portal never issued
/// gets 401 `invalid_token`; `app.info` answers which application a token belongs to (`CODE`:
/// the `client_id`), so an install can be verified.
#[derive(Default)]
struct AppAuth {
    /// Requests each new access token is good for.
    uses: u32,
    /// Access token → requests left (0: expired).
    access: BTreeMap<String, u32>,
    /// Refresh tokens not used yet.
    refresh: BTreeSet<String>,
    serial: u64,
    /// (access token sent, HTTP status) of every app-mode request, in order.
    log: Vec<(String, u16)>,
    /// `event.bind` calls: (event, handler).
    bound: Vec<(String, String)>,
    /// Every (access, refresh) pair issued, in order, for tests that look for leaks.
    issued: Vec<(String, String)>,
    /// Access tokens of another application on this portal: `app.info` answers with
    /// [`OTHER_APP`] for them, with our `CLIENT_ID` for the rest.
    foreign: BTreeSet<String>,
}

/// The `client_id` (`app.info` `CODE`) of the other application tokens can belong to.
pub const OTHER_APP: &str = "local.other.2";

impl AppAuth {
    fn issue(&mut self) -> (String, String) {
        self.serial += 1;
        // Long and unlike any other text, so a test that looks for a leaked token in a log
        // cannot miss it or find it by chance.
        let (a, r) = (
            format!("access-{}-{}", self.serial, hex32(&("access", self.serial))),
            format!(
                "refresh-{}-{}",
                self.serial,
                hex32(&("refresh", self.serial))
            ),
        );
        self.access.insert(a.clone(), self.uses);
        self.refresh.insert(r.clone());
        self.issued.push((a.clone(), r.clone()));
        (a, r)
    }
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not take every later assertion down with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The fake portal. Stops (and frees its port) when dropped.
pub struct FakeBitrix {
    shared: Arc<Shared>,
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    port: u16,
}

impl FakeBitrix {
    /// Start with the default state described in the module docs.
    pub fn start() -> Self {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind fake Bitrix24"));
        let port = server
            .server_addr()
            .to_ip()
            .expect("fake Bitrix24 listens on IP")
            .port();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                users: default_users(),
                next_crm_id: 1000,
                base: format!("http://127.0.0.1:{port}"),
                ..State::default()
            }),
            changed: Condvar::new(),
        });
        let thread = {
            let (server, shared) = (server.clone(), shared.clone());
            std::thread::Builder::new()
                .name("fake-bitrix".into())
                .spawn(move || {
                    for request in server.incoming_requests() {
                        let delay = if request.url().contains("/upload/") {
                            shared.lock().upload_delay
                        } else {
                            Duration::ZERO
                        };
                        if delay.is_zero() {
                            serve(&shared, request);
                        } else {
                            let shared = shared.clone();
                            std::thread::spawn(move || {
                                // The slow endpoint is the scenario, not a wait.
                                std::thread::sleep(delay);
                                serve(&shared, request);
                            });
                        }
                    }
                })
                .expect("spawn fake Bitrix24")
        };
        FakeBitrix {
            shared,
            server,
            thread: Some(thread),
            port,
        }
    }

    /// Turn on app mode: `/rest/{method}.json` with `auth=<access token>`. Each access token
    /// works for `uses` requests, then gets 401 `expired_token`. Returns the first pair.
    pub fn enable_app(&self, uses: u32) -> (String, String) {
        let mut st = self.shared.lock();
        let app = st.app.get_or_insert_with(AppAuth::default);
        app.uses = uses;
        app.issue()
    }

    /// Expire every access token issued so far (the next use gets 401 `expired_token`).
    pub fn expire_all(&self) {
        if let Some(app) = self.shared.lock().app.as_mut() {
            app.access.values_mut().for_each(|n| *n = 0);
        }
    }

    /// A fresh pair, as a new install event would bring (the old pairs stay valid).
    pub fn issue_tokens(&self) -> (String, String) {
        self.shared.lock().app.as_mut().expect("app mode").issue()
    }

    /// Every (access, refresh) pair the portal issued so far, refreshed ones included.
    pub fn issued_tokens(&self) -> Vec<(String, String)> {
        self.shared
            .lock()
            .app
            .as_ref()
            .map(|a| a.issued.clone())
            .unwrap_or_default()
    }

    /// A fresh pair that belongs to another application installed on this portal: it works,
    /// but `app.info` says [`OTHER_APP`].
    pub fn issue_foreign_tokens(&self) -> (String, String) {
        let mut st = self.shared.lock();
        let app = st.app.as_mut().expect("app mode");
        let pair = app.issue();
        app.foreign.insert(pair.0.clone());
        pair
    }

    /// The OAuth server's side: trade an unused refresh token for a new pair.
    pub fn refresher(&self) -> Refresher {
        let shared = self.shared.clone();
        Arc::new(move |refresh: &str| {
            let mut st = shared.lock();
            let app = st.app.as_mut()?;
            if !app.refresh.remove(refresh) {
                return None;
            }
            Some(app.issue())
        })
    }

    /// `127.0.0.1:PORT`: the portal's "domain" (`[bitrix24] portal`, `auth[domain]`).
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT/rest/`: the `client_endpoint` of app mode.
    pub fn client_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/rest/", self.port)
    }

    /// (access token, HTTP status) of every app-mode request.
    pub fn token_log(&self) -> Vec<(String, u16)> {
        self.shared
            .lock()
            .app
            .as_ref()
            .map(|a| a.log.clone())
            .unwrap_or_default()
    }

    /// `event.bind` calls so far: (event, handler).
    pub fn bound_events(&self) -> Vec<(String, String)> {
        self.shared
            .lock()
            .app
            .as_ref()
            .map(|a| a.bound.clone())
            .unwrap_or_default()
    }

    /// Answer `WRONG_AUTH_TYPE` (HTTP 403) to `telephony.*` through the webhook (§1.4).
    pub fn set_telephony_requires_app(&self, on: bool) {
        self.shared.lock().telephony_requires_app = on;
    }

    /// `http://127.0.0.1:PORT/rest/1/testcode/`.
    pub fn webhook_url(&self) -> String {
        format!(
            "http://127.0.0.1:{}/rest/{WEBHOOK_USER}/{WEBHOOK_CODE}/",
            self.port
        )
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().requests.clone()
    }

    /// The requests for one method (case-insensitive).
    pub fn requests_for(&self, method: &str) -> Vec<Recorded> {
        let method = method.to_ascii_lowercase();
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.method == method)
            .cloned()
            .collect()
    }

    /// Wait until `pred` holds for the requests so far, or `timeout` passes. Wakes up on
    /// every request, so there is no polling interval to tune.
    pub fn wait_for(&self, pred: impl Fn(&[Recorded]) -> bool, timeout: Duration) -> bool {
        self.wait_on(|st| &st.requests, pred, timeout)
    }

    /// Wait until `pred` holds for the list `pick` chooses, waking on every request.
    fn wait_on(
        &self,
        pick: impl Fn(&State) -> &Vec<Recorded>,
        pred: impl Fn(&[Recorded]) -> bool,
        timeout: Duration,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            if pred(pick(&st)) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = self
                .shared
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Add `n` active users after the highest id, with `UF_PHONE_INNER` = `200 + id`.
    pub fn add_users(&self, n: usize) {
        let mut st = self.shared.lock();
        let first = st.users.iter().map(|u| u.id).max().unwrap_or(0) + 1;
        for id in first..first + n as u64 {
            st.users.push(FakeUser {
                id,
                inner: Some((200 + id).to_string()),
                active: true,
            });
        }
    }

    /// Replace all users: `(id, UF_PHONE_INNER, active)`, `None` meaning JSON `null`.
    pub fn set_users(&self, users: Vec<(u64, Option<&str>, bool)>) {
        self.shared.lock().users = users
            .into_iter()
            .map(|(id, inner, active)| FakeUser {
                id,
                inner: inner.map(str::to_string),
                active,
            })
            .collect();
    }

    /// A contact with this phone (non-digits are dropped), responsible `assigned_by`.
    pub fn add_contact(&self, phone_digits: &str, id: u64, assigned_by: u64) {
        self.add_crm("CONTACT", phone_digits, id, Some(assigned_by));
    }

    /// Any CRM item: `entity_type` is `CONTACT`, `COMPANY` or `LEAD`.
    pub fn add_crm(&self, entity_type: &str, phone: &str, id: u64, assigned_by: Option<u64>) {
        self.shared.lock().crm.push(CrmItem {
            entity_type: entity_type.to_ascii_uppercase(),
            id,
            assigned_by,
            phone: match_code(phone),
        });
    }

    /// The CRM as it is now, including leads created by `CRM_CREATE`.
    pub fn crm_items(&self) -> Vec<CrmItem> {
        self.shared.lock().crm.clone()
    }

    /// Answer the next `n` requests with `status` and `body` (sent as `application/json`).
    pub fn fail_next(&self, n: usize, status: u16, body: &str) {
        let mut st = self.shared.lock();
        st.failures
            .extend(std::iter::repeat_n((status, body.to_string()), n));
    }

    /// Apply the next request for `method` (e.g. `telephony.externalcall.finish`) normally but
    /// answer it with a 504 page, like a proxy that timed out while the portal did the work.
    /// A client that retries then meets the portal's answer to a repeated request.
    pub fn lose_next_response(&self, method: &str) {
        self.shared.lock().lost.push(method.to_ascii_lowercase());
    }

    /// Hold each upload to an upload URL (§4.2 mode 3) for `delay` before reading it, while
    /// every other request is served as usual: a slow upload endpoint.
    pub fn set_upload_delay(&self, delay: Duration) {
        self.shared.lock().upload_delay = delay;
    }

    /// Enforce a leaky bucket of `burst` requests draining `rate` per second (see module docs).
    pub fn set_rate_limit(&self, rate: f64, burst: u32) {
        self.shared.lock().bucket = Some((rate, f64::from(burst), 0.0, Instant::now()));
    }

    /// Every method the portal ran, alone or as a batch command (the `batch` itself is not
    /// listed); requests refused before running (down, rate limit, injected failures) are not.
    pub fn commands(&self) -> Vec<Recorded> {
        self.shared.lock().commands.clone()
    }

    /// Wait until `pred` holds for [`FakeBitrix::commands`].
    pub fn wait_for_commands(&self, pred: impl Fn(&[Recorded]) -> bool, timeout: Duration) -> bool {
        self.wait_on(|st| &st.commands, pred, timeout)
    }

    /// While down, answer every request with HTTP 503 and an HTML page (see module docs).
    pub fn set_down(&self, down: bool) {
        self.shared.lock().down = down;
    }

    /// Hold every answer for `delay` before sending it (the request is applied at once): a
    /// slow portal, or with a delay above the client's timeout, answers lost after the work
    /// was done. Requests are served one at a time, so they queue behind each other.
    pub fn set_delay(&self, delay: Duration) {
        self.shared.lock().delay = delay;
    }

    /// How many requests arrived so far (cheaper than [`FakeBitrix::requests`]).
    pub fn request_count(&self) -> usize {
        self.shared.lock().requests.len()
    }

    /// Whether a request is being served now (read, or held by [`FakeBitrix::set_delay`]).
    pub fn busy(&self) -> bool {
        self.shared.lock().in_flight > 0
    }

    /// Every successful register so far, re-registrations included.
    pub fn registrations(&self) -> Vec<Registration> {
        self.shared.lock().registrations.clone()
    }

    /// The scopes the webhook (or app) was granted, as `scope` answers them.
    pub fn set_scopes(&self, scopes: &[&str]) {
        self.shared.lock().scopes = Some(scopes.iter().map(|s| s.to_string()).collect());
    }

    /// Registered calls not finished yet.
    pub fn active_calls(&self) -> Vec<ActiveCall> {
        self.shared.lock().calls.values().cloned().collect()
    }

    /// `finish` statistics rows, as returned to the client.
    pub fn finished_calls(&self) -> Vec<Value> {
        self.shared.lock().finished.clone()
    }

    /// Recordings attached so far, in order (a second attach of a call replaces the first on a
    /// real portal; here both are kept so a test can count them).
    pub fn records(&self) -> Vec<AttachedRecord> {
        self.shared.lock().records.clone()
    }

    /// Every card that went up so far, in order, with the moment the portal applied it.
    pub fn cards_shown(&self) -> Vec<CardShown> {
        self.shared.lock().shown.clone()
    }

    /// Cards currently on screen: (CALL_ID, USER_ID). Should be empty after every call.
    pub fn open_cards(&self) -> Vec<(String, u64)> {
        self.shared.lock().cards.iter().cloned().collect()
    }
}

impl Drop for FakeBitrix {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A URL on 127.0.0.1 where nothing listens: for "connection refused" tests.
pub fn closed_port_url() -> String {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a throwaway port")
        .port();
    format!("http://127.0.0.1:{port}/rest/{WEBHOOK_USER}/{WEBHOOK_CODE}/")
}

fn default_users() -> Vec<FakeUser> {
    (1..=120u64)
        .map(|id| FakeUser {
            id,
            inner: match id {
                7 => None,
                8 => Some(String::new()),
                _ => Some((200 + id).to_string()),
            },
            active: id != 13,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// HTTP: routing, params, envelopes
// ---------------------------------------------------------------------------------------

/// A method-level or system error: `{"error": code, "error_description": description}`.
struct Fail {
    status: u16,
    code: &'static str,
    description: String,
}

/// HTTP 400 with `"error": ""`, as the real `RestException` without a code (§2.3, §9.2).
fn fail(description: &str) -> Fail {
    Fail {
        status: 400,
        code: "",
        description: description.to_string(),
    }
}

/// A success envelope without `time` (added by `serve`).
type Outcome = Result<Map<String, Value>, Fail>;

fn ok(result: Value) -> Outcome {
    let mut m = Map::new();
    m.insert("result".into(), result);
    Ok(m)
}

fn serve(shared: &Shared, request: tiny_http::Request) {
    shared.lock().in_flight += 1;
    serve_one(shared, request);
    shared.lock().in_flight -= 1;
}

fn serve_one(shared: &Shared, mut request: tiny_http::Request) {
    let started = SystemTime::now();
    let url = request.url().to_string();
    let content_type = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Content-Type"))
        .map(|h| h.value.as_str().to_string())
        .unwrap_or_default();
    // Bytes, not a String: an upload is binary.
    let mut raw = Vec::new();
    let _ = request.as_reader().read_to_end(&mut raw);
    let body = String::from_utf8_lossy(&raw).into_owned();
    let upload = parse_upload(&content_type, &raw);
    let content_type = content_type.to_ascii_lowercase();

    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let mut params = merge_params(query, &body, &content_type);
    if upload.is_some() {
        // Not form fields: record what the upload was, not the raw multipart text.
        params = Value::Object(parse_form(query));
    }
    let route = route(path);

    let mut st = shared.lock();
    let (status, text, mime) = if let Some((status, text)) = st.failures.pop_front() {
        (status, text, "application/json")
    } else if st.down {
        (503, DOWN_PAGE.to_string(), "text/html")
    } else if !take_token(&mut st) {
        (
            503,
            json!({"error":"QUERY_LIMIT_EXCEEDED","error_description":"Too many requests"})
                .to_string(),
            "application/json",
        )
    } else {
        let outcome = match &route {
            Route::NoAuth(method) if st.app.is_some() && !method.is_empty() => {
                app_call(&mut st, method, &mut params)
            }
            Route::Method(method) if method == "upload" => {
                upload_file(&mut st, &upper_keys(&params), upload.as_ref())
            }
            Route::Method(method) if method == "batch" => batch(&mut st, &params),
            Route::Method(method) => {
                let p = upper_keys(&params);
                let outcome = dispatch(&mut st, method, &p);
                let status = outcome.as_ref().map_or_else(|f| f.status, |_| 200);
                st.commands.push(Recorded {
                    method: method.clone(),
                    params: params.clone(),
                    status,
                });
                outcome
            }
            Route::BadCredentials(_) => Err(Fail {
                status: 401,
                code: "INVALID_CREDENTIALS",
                description: "Invalid request credentials".into(),
            }),
            Route::NoAuth(_) => Err(Fail {
                status: 401,
                code: "NO_AUTH_FOUND",
                description: "Wrong authorization data".into(),
            }),
        };
        let (status, envelope) = match outcome {
            Ok(mut m) => {
                m.insert("time".into(), time_block(started));
                (200, Value::Object(m))
            }
            Err(f) => (
                f.status,
                json!({"error": f.code, "error_description": f.description}),
            ),
        };
        let method = route.method().to_string();
        if let Some(i) = st.lost.iter().position(|m| *m == method) {
            st.lost.remove(i);
            (504, LOST_PAGE.to_string(), "text/html")
        } else {
            (status, envelope.to_string(), "application/json")
        }
    };
    st.requests.push(Recorded {
        method: route.method().to_string(),
        params,
        status,
    });
    let delay = st.delay;
    drop(st);
    shared.changed.notify_all();
    if !delay.is_zero() {
        std::thread::sleep(delay);
    }

    let content_type = format!("{mime}; charset=utf-8");
    let response = tiny_http::Response::from_string(text)
        .with_status_code(status)
        .with_header(
            tiny_http::Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes())
                .expect("valid header"),
        );
    let _ = request.respond(response);
}

const LOST_PAGE: &str =
    "<html><head><title>504 Gateway Time-out</title></head><body>504 Gateway Time-out</body></html>";

const DOWN_PAGE: &str = "<html><head><title>503 Service Temporarily Unavailable</title></head>\
<body><center><h1>503 Service Temporarily Unavailable</h1></center></body></html>";

enum Route {
    /// `/rest/1/testcode/<method>`: lower-cased method.
    Method(String),
    /// The right shape with a wrong user id or code.
    BadCredentials(String),
    /// No webhook credentials at all (e.g. `/rest/user.get`, or not under `/rest/`).
    NoAuth(String),
}

impl Route {
    fn method(&self) -> &str {
        match self {
            Route::Method(m) | Route::BadCredentials(m) | Route::NoAuth(m) => m,
        }
    }
}

/// `/rest/{uid}/{code}/{method}[.json|/]` (§1.1).
fn route(path: &str) -> Route {
    let segments: Vec<&str> = path
        .trim_start_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let method = |s: &str| s.strip_suffix(".json").unwrap_or(s).to_ascii_lowercase();
    match segments.as_slice() {
        ["rest", uid, code, m] if *uid == WEBHOOK_USER && *code == WEBHOOK_CODE => {
            Route::Method(method(m))
        }
        ["rest", _, _, m] => Route::BadCredentials(method(m)),
        // The webhook URL itself, without a method.
        ["rest", uid, code] if *uid == WEBHOOK_USER && *code == WEBHOOK_CODE => {
            Route::Method(String::new())
        }
        [.., last] => Route::NoAuth(method(last)),
        [] => Route::NoAuth(String::new()),
    }
}

/// An app-mode request `/rest/{method}.json`: check and spend `auth`, then run the method.
fn app_call(st: &mut State, method: &str, params: &mut Value) -> Outcome {
    let token = params
        .as_object_mut()
        .and_then(|m| m.remove("auth"))
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let app = st.app.as_mut().expect("app mode");
    let left = app.access.get_mut(&token);
    let failure = match left {
        Some(0) => Some(Fail {
            status: 401,
            code: "expired_token",
            description: "The access token provided has expired".into(),
        }),
        Some(n) => {
            *n -= 1;
            None
        }
        None => Some(Fail {
            status: 401,
            code: if token.is_empty() {
                "NO_AUTH_FOUND"
            } else {
                "invalid_token"
            },
            description: "Wrong authorization data".into(),
        }),
    };
    let foreign = app.foreign.contains(&token);
    app.log
        .push((token, failure.as_ref().map_or(200, |f| f.status)));
    if let Some(f) = failure {
        return Err(f);
    }
    match method {
        // For a local application, CODE is its client_id (dev.1c-bitrix.ru app.info).
        "app.info" => ok(json!({
            "ID": "7",
            "CODE": if foreign { OTHER_APP } else { CLIENT_ID },
            "VERSION": 1,
            "STATUS": "L",
            "INSTALLED": true,
            "PAYMENT_EXPIRED": "N",
            "DAYS": null,
            "LICENSE": "ru_project",
        })),
        "event.get" => ok(Value::Array(
            app.bound
                .iter()
                .map(|(e, h)| json!({"event": e, "handler": h, "auth_type": 0, "offline": 0}))
                .collect(),
        )),
        "event.bind" => {
            let p = upper_keys(params);
            let ev = p
                .get("EVENT")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_ascii_uppercase();
            let h = p
                .get("HANDLER")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            app.bound.push((ev, h));
            ok(json!(true))
        }
        "batch" => {
            let webhook_only = std::mem::take(&mut st.telephony_requires_app);
            let outcome = batch(st, params);
            st.telephony_requires_app = webhook_only;
            outcome
        }
        _ => {
            let p = upper_keys(params);
            let webhook_only = std::mem::take(&mut st.telephony_requires_app);
            let outcome = dispatch(st, method, &p);
            st.telephony_requires_app = webhook_only;
            let status = outcome.as_ref().map_or_else(|f| f.status, |_| 200);
            st.commands.push(Recorded {
                method: method.to_string(),
                params: params.clone(),
                status,
            });
            outcome
        }
    }
}

/// The leaky bucket, if on: false when this request overflows it (§9.4).
fn take_token(st: &mut State) -> bool {
    let Some((rate, burst, level, last)) = st.bucket.as_mut() else {
        return true;
    };
    let now = Instant::now();
    *level = (*level - now.duration_since(*last).as_secs_f64() * *rate).max(0.0);
    *last = now;
    if *level + 1.0 > *burst + 1e-9 {
        return false;
    }
    *level += 1.0;
    true
}

/// `$result[key][FIELD]` placeholders in a batch command's top-level params, replaced by that
/// field of an earlier command's result (§8). One that does not resolve is left as it is,
/// which the method then refuses or ignores.
fn resolve_results(params: &mut Map<String, Value>, results: &Map<String, Value>) {
    for v in params.values_mut() {
        let Some(text) = v.as_str() else { continue };
        let Some(inner) = text
            .strip_prefix("$result[")
            .and_then(|t| t.strip_suffix(']'))
        else {
            continue;
        };
        let Some((key, field)) = inner.split_once("][") else {
            continue;
        };
        if let Some(found) = results.get(key).and_then(|r| r.get(field)) {
            *v = match found {
                Value::String(s) => Value::String(s.clone()),
                other => Value::String(other.to_string()),
            };
        }
    }
}

/// `batch` with halt=0 (§8): `cmd` maps keys to `method?query`; `$result[key][FIELD]`
/// placeholders are filled from earlier commands' results.
fn batch(st: &mut State, params: &Value) -> Outcome {
    let Some(Value::Object(cmds)) = params.get("cmd").or_else(|| params.get("CMD")) else {
        return Err(Fail {
            status: 400,
            code: "ERROR_ARGUMENT",
            description: "cmd is required".into(),
        });
    };
    let mut results = Map::new();
    let mut errors = Map::new();
    for (i, (key, cmd)) in cmds.iter().enumerate() {
        let cmd = cmd.as_str().unwrap_or("");
        let (method, query) = cmd.split_once('?').unwrap_or((cmd, ""));
        let method = method.to_ascii_lowercase();
        if i >= 50 {
            errors.insert(
                key.clone(),
                json!({"error":"ERROR_BATCH_LENGTH_EXCEEDED","error_description":"Max batch length exceeded"}),
            );
            continue;
        }
        let mut form = parse_form(query);
        resolve_results(&mut form, &results);
        let p = Value::Object(form);
        let outcome = dispatch(st, &method, &upper_keys(&p));
        st.commands.push(Recorded {
            method: method.clone(),
            params: p,
            status: outcome.as_ref().map_or_else(|f| f.status, |_| 200),
        });
        match outcome {
            Ok(mut m) => {
                results.insert(key.clone(), m.remove("result").unwrap_or(Value::Null));
            }
            Err(f) => {
                errors.insert(
                    key.clone(),
                    json!({"error": f.code, "error_description": f.description}),
                );
            }
        }
    }
    let section = |m: Map<String, Value>| {
        if m.is_empty() {
            json!([])
        } else {
            Value::Object(m)
        }
    };
    ok(json!({
        "result": section(results),
        "result_error": section(errors),
        "result_total": [],
        "result_next": [],
        "result_time": [],
    }))
}

fn dispatch(st: &mut State, method: &str, p: &Map<String, Value>) -> Outcome {
    // Webhook context only; app calls clear the switch while they run (§1.4).
    if st.telephony_requires_app && method.starts_with("telephony.") {
        return Err(Fail {
            status: 403,
            code: "WRONG_AUTH_TYPE",
            description: "Current authorization type is denied for this method".into(),
        });
    }
    // A method of a scope not granted (set_scopes): 401 insufficient_scope (§9.3).
    if let Some(granted) = &st.scopes {
        let scope = method.split('.').next().unwrap_or("");
        let ok_with: &[&str] = match scope {
            "user" => &["user", "user_brief", "user_basic"],
            "telephony" => &["telephony"],
            "crm" => &["crm"],
            _ => &[],
        };
        if !ok_with.is_empty() && !granted.iter().any(|g| ok_with.contains(&g.as_str())) {
            return Err(Fail {
                status: 401,
                code: "insufficient_scope",
                description:
                    "The request requires higher privileges than provided by the webhook token"
                        .into(),
            });
        }
    }
    match method {
        "user.get" => user_get(st, p),
        "telephony.externalcall.register" => register(st, p),
        "telephony.externalcall.finish" => finish(st, p),
        "telephony.externalcall.show" => show_hide(st, p, true),
        "telephony.externalcall.hide" => show_hide(st, p, false),
        "telephony.externalcall.searchcrmentities" => search_crm_entities(st, p),
        "telephony.externalcall.attachrecord" => attach_record(st, p),
        "crm.duplicate.findbycomm" => find_by_comm(st, p),
        "crm.contact.get" => crm_get(st, p, "CONTACT"),
        "crm.company.get" => crm_get(st, p, "COMPANY"),
        "crm.lead.get" => crm_get(st, p, "LEAD"),
        "scope" => ok(json!(st.scopes.clone().unwrap_or_else(|| vec![
            "crm".into(),
            "telephony".into(),
            "user".into()
        ]))),
        "telephony.externalline.get" => ok(json!([])),
        _ => Err(Fail {
            status: 404,
            code: "ERROR_METHOD_NOT_FOUND",
            description: "Method not found!".into(),
        }),
    }
}

// ---------------------------------------------------------------------------------------
// Methods
// ---------------------------------------------------------------------------------------

/// `user.get` (§6): `FILTER` replaces the query as the filter; without it the top-level
/// params are the filter. Pages of 50 with `next`/`total`; an empty page has no `total`.
fn user_get(st: &mut State, p: &Map<String, Value>) -> Outcome {
    let filter = match p.get("FILTER") {
        Some(Value::Object(f)) => upper_keys(&Value::Object(f.clone())),
        _ => p
            .iter()
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "START" | "SORT" | "ORDER" | "ADMIN_MODE" | "IMAGE_RESIZE" | "FILTER"
                )
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    };
    let mut rows: Vec<&FakeUser> = st
        .users
        .iter()
        .filter(|u| filter.iter().all(|(k, v)| user_matches(u, k, v)))
        .collect();
    rows.sort_by_key(|u| u.id);
    let total = rows.len();
    let start = p.get("START").map(php_int).unwrap_or(0).max(0) as usize;
    let page: Vec<Value> = rows
        .iter()
        .skip(start)
        .take(PAGE)
        .map(|u| {
            json!({
                "ID": u.id.to_string(),
                "ACTIVE": u.active,
                "NAME": format!("User{}", u.id),
                "LAST_NAME": "Test",
                "UF_PHONE_INNER": u.inner,
                "USER_TYPE": "employee",
                "UF_DEPARTMENT": [1],
            })
        })
        .collect();
    let count = page.len();
    let mut m = ok(Value::Array(page))?;
    if count > 0 {
        if start + count < total {
            m.insert("next".into(), json!(start + count));
        }
        m.insert("total".into(), json!(total));
    }
    Ok(m)
}

fn user_matches(u: &FakeUser, key: &str, v: &Value) -> bool {
    match key {
        // `($v && $v !== 'N') ? 'Y' : 'N'` (§6.1): the string "false" means active.
        "ACTIVE" => u.active == (php_truthy(v) && v.as_str() != Some("N")),
        "UF_PHONE_INNER" => u.inner.as_deref() == php_str(v).as_deref(),
        "ID" => u.id as i64 == php_int(v),
        _ => true,
    }
}

/// `telephony.externalcall.register` (§2): validation in the server's order, the
/// re-registration key, CRM binding, optional lead creation.
fn register(st: &mut State, p: &Map<String, Value>) -> Outcome {
    let user_id = resolve_user(st, p)?;
    let call_type = p.get("TYPE").map(php_int).unwrap_or(0);
    if !(1..=5).contains(&call_type) {
        return Err(fail("Unknown TYPE"));
    }
    if let Some(date) = p.get("CALL_START_DATE").and_then(php_str) {
        if !date.is_empty() && !looks_like_date(&date) {
            return Err(fail("CALL_START_DATE should be in the ISO-8601 format"));
        }
    }
    let phone = strip_letters(&p.get("PHONE_NUMBER").and_then(php_str).unwrap_or_default());
    if phone.is_empty() {
        return Err(fail("Unsupported phone number format"));
    }
    check_active(st, user_id)?;
    let line = p
        .get("LINE_NUMBER")
        .and_then(php_str)
        .map(|l| l.trim().chars().take(50).collect::<String>())
        .filter(|l| !l.is_empty());
    let external_call_id = p
        .get("EXTERNAL_CALL_ID")
        .and_then(php_str)
        .filter(|s| !s.is_empty());
    let show = p.get("SHOW").map(php_truthy).unwrap_or(true);

    // The 30-minute re-registration (§2.1): an open call with the same key gets its old
    // CALL_ID back. All calls in a test are "recent", so time is not part of the key here.
    let same = st.calls.values().find(|c| {
        c.user_id == user_id
            && c.phone == phone
            && c.call_type == call_type
            && (line.is_none() || c.line == line)
            && (external_call_id.is_none() || c.external_call_id == external_call_id)
    });
    if let Some(call) = same.cloned() {
        if show {
            card_up(st, &call, user_id);
        }
        let command = st.commands.len();
        st.registrations.push(Registration {
            call_id: call.call_id.clone(),
            external_call_id: call.external_call_id.clone(),
            user_id,
            new: false,
            command,
        });
        let (ty, id) = call.crm.clone().unzip();
        return ok(json!({
            "CALL_ID": call.call_id,
            "CRM_CREATED_LEAD": null,
            "CRM_CREATED_ENTITIES": [],
            "CRM_ENTITY_TYPE": ty,
            "CRM_ENTITY_ID": id,
        }));
    }

    let internal = is_internal(st, &phone);
    let mut crm = match (
        p.get("CRM_ENTITY_TYPE").and_then(php_str),
        p.get("CRM_ENTITY_ID").map(php_int),
    ) {
        (Some(ty), Some(id)) if !ty.is_empty() && id > 0 => Some((ty.to_uppercase(), id as u64)),
        _ if internal => None,
        _ => best_crm_match(st, &match_code(&phone)),
    };
    let mut created = Vec::new();
    let mut lead_error = None;
    let wants_lead =
        p.get("CRM_CREATE").is_some_and(php_truthy) || p.get("CRM").is_some_and(php_truthy);
    if wants_lead && crm.is_none() {
        if internal {
            lead_error = Some("Lead creation is disabled for local users");
        } else {
            let id = st.next_crm_id;
            st.next_crm_id += 1;
            st.crm.push(CrmItem {
                entity_type: "LEAD".into(),
                id,
                assigned_by: Some(user_id),
                phone: match_code(&phone),
            });
            created.push(("LEAD".to_string(), id));
            crm = Some(("LEAD".into(), id));
        }
    }

    st.seq += 1;
    let now = unix_now();
    let call_id = format!(
        "externalCall.{}.{}",
        hex32(&(st.seq, &external_call_id, &phone)),
        now as u64
    );
    let call = ActiveCall {
        call_id: call_id.clone(),
        user_id,
        phone,
        call_type,
        line,
        external_call_id,
        crm: crm.clone(),
        created: created.clone(),
    };
    if show {
        card_up(st, &call, user_id);
    }
    let command = st.commands.len();
    st.registrations.push(Registration {
        call_id: call_id.clone(),
        external_call_id: call.external_call_id.clone(),
        user_id,
        new: true,
        command,
    });
    st.calls.insert(call_id.clone(), call);
    let (ty, id) = crm.unzip();
    let mut result = json!({
        "CALL_ID": call_id,
        "CRM_CREATED_LEAD": created.first().map(|c| c.1),
        "CRM_CREATED_ENTITIES": created
            .iter()
            .map(|(t, i)| json!({"ENTITY_TYPE": t, "ENTITY_ID": i}))
            .collect::<Vec<_>>(),
        "CRM_ENTITY_TYPE": ty.unwrap_or_default(),
        "CRM_ENTITY_ID": id,
    });
    if let Some(e) = lead_error {
        result["LEAD_CREATION_ERROR"] = json!(e);
    }
    ok(result)
}

/// `telephony.externalcall.finish` (§3): hides only the finishing user's card, deletes the
/// active call, returns the statistics row with its odd types (`INCOMING` a string,
/// `CALL_START_DATE` `{}`).
fn finish(st: &mut State, p: &Map<String, Value>) -> Outcome {
    let call_id = match p.get("CALL_ID") {
        Some(Value::String(s)) => s.clone(),
        _ => {
            return Err(Fail {
                status: 400,
                code: "INVALID_ARGUMENT",
                description: "CALL_ID must be a string".into(),
            })
        }
    };
    let user_id = resolve_user(st, p)?;
    let Some(call) = st.calls.get(&call_id).cloned() else {
        return Err(fail(
            "Call is not found (call should be registered prior to finishing",
        ));
    };
    check_active(st, user_id)?;

    st.cards.remove(&(call_id.clone(), user_id));
    for item in st.crm.iter_mut() {
        if call.created.contains(&(item.entity_type.clone(), item.id)) {
            item.assigned_by = Some(user_id);
        }
    }
    let duration = p.get("DURATION").map(php_int).unwrap_or(0).max(0);
    let status_code = p
        .get("STATUS_CODE")
        .and_then(php_str)
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| if duration > 0 { "200" } else { "304" }.into());
    let mut row = json!({
        "CALL_ID": call.call_id,
        "EXTERNAL_CALL_ID": call.external_call_id,
        "PORTAL_USER_ID": user_id,
        "PHONE_NUMBER": call.phone,
        "PORTAL_NUMBER": call.line.clone().unwrap_or_else(|| "REST_APP:".into()),
        "INCOMING": call.call_type.to_string(),
        "CALL_DURATION": duration,
        "CALL_START_DATE": {},
        "CALL_STATUS": i32::from(duration > 0),
        "CALL_VOTE": p.get("VOTE").map(php_int),
        "COST": 0,
        "COST_CURRENCY": "",
        "CALL_FAILED_CODE": status_code,
        "CALL_FAILED_REASON": p.get("FAILED_REASON").and_then(php_str).unwrap_or_default(),
        "REST_APP_ID": null,
        "REST_APP_NAME": false,
        "COMMENT": null,
        "ID": st.finished.len() + 1,
    });
    match &call.crm {
        Some((ty, id)) => {
            row["CRM_ENTITY_TYPE"] = json!(ty);
            row["CRM_ENTITY_ID"] = json!(id);
            row["CRM_ACTIVITY_ID"] = json!(7000 + st.finished.len());
        }
        None => {
            row["CRM_ACTIVITY_ID"] = Value::Null;
            row["ERRORS"] = json!({
                "ACTIVITY_CREATION": "Could not find associated crm entity for the current call"
            });
        }
    }
    st.finished.push(row.clone());
    st.calls.remove(&call_id);
    ok(row)
}

/// `show`/`hide` (§4.1): `true` for an active call, `false` otherwise (never an error).
/// `USER_ID` is an int or an array; absent means the registering user.
fn show_hide(st: &mut State, p: &Map<String, Value>, show: bool) -> Outcome {
    let call = match p.get("CALL_ID").and_then(php_str) {
        Some(id) => st.calls.get(&id).cloned(),
        None => None,
    };
    let Some(call) = call else {
        return ok(json!(false));
    };
    let users: Vec<u64> = match p.get("USER_ID") {
        None => vec![call.user_id],
        Some(Value::Array(a)) => a.iter().map(php_int).map(|i| i as u64).collect(),
        Some(Value::Object(o)) => o.values().map(php_int).map(|i| i as u64).collect(),
        Some(v) => vec![php_int(v) as u64],
    };
    for user in users {
        if show {
            card_up(st, &call, user);
        } else {
            st.cards.remove(&(call.call_id.clone(), user));
        }
    }
    ok(json!(true))
}

/// Put `call`'s card on `user`'s screen, noting when.
fn card_up(st: &mut State, call: &ActiveCall, user: u64) {
    st.cards.insert((call.call_id.clone(), user));
    st.shown.push(CardShown {
        at: Instant::now(),
        external_call_id: call.external_call_id.clone().unwrap_or_default(),
        user_id: user,
    });
}

/// `telephony.externalCall.searchCrmEntities` (§4.3): contacts, then leads, then companies.
/// `CRM_ENTITY_ID` is an int and `ASSIGNED_BY_ID` a numeric string, so clients must parse both.
fn search_crm_entities(st: &mut State, p: &Map<String, Value>) -> Outcome {
    let phone = p.get("PHONE_NUMBER").and_then(php_str).unwrap_or_default();
    if phone.trim().is_empty() {
        return Err(fail("PHONE_NUMBER is empty"));
    }
    let code = match_code(&phone);
    let mut rows = Vec::new();
    for ty in ["CONTACT", "LEAD", "COMPANY"] {
        for item in st
            .crm
            .iter()
            .filter(|i| i.entity_type == ty && i.phone == code)
        {
            let mut row = json!({
                "CRM_ENTITY_TYPE": ty,
                "CRM_ENTITY_ID": item.id,
                "ASSIGNED_BY_ID": item.assigned_by.map(|a| a.to_string()),
                "NAME": format!("{}{}", title_case(ty), item.id),
            });
            if let Some(a) = item.assigned_by {
                let inner = st
                    .users
                    .iter()
                    .find(|u| u.id == a)
                    .and_then(|u| u.inner.clone());
                row["ASSIGNED_BY"] = json!({
                    "ID": a.to_string(), "TIMEMAN_STATUS": "OPENED", "USER_PHONE_INNER": inner,
                    "WORK_PHONE": null, "PERSONAL_PHONE": null, "PERSONAL_MOBILE": null,
                });
            }
            rows.push(row);
        }
    }
    ok(Value::Array(rows))
}

/// `crm.duplicate.findbycomm` (§7.1): `{"CONTACT":[ids]}` per type found, or `[]`.
/// `crm.{contact,company,lead}.get` (§7.2): a flat object, IDs as strings.
fn crm_get(st: &mut State, p: &Map<String, Value>, entity_type: &str) -> Outcome {
    let id: u64 = p
        .get("ID")
        .and_then(php_str)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| fail("ID is not defined or invalid."))?;
    let item = st
        .crm
        .iter()
        .find(|i| i.entity_type == entity_type && i.id == id)
        .ok_or_else(|| fail("Not found"))?;
    ok(json!({
        "ID": item.id.to_string(),
        "ASSIGNED_BY_ID": item.assigned_by.map(|a| a.to_string()),
    }))
}

fn find_by_comm(st: &mut State, p: &Map<String, Value>) -> Outcome {
    let kind = p.get("TYPE").and_then(php_str).unwrap_or_default();
    if kind != "PHONE" && kind != "EMAIL" {
        return Err(fail("Communication type is not defined."));
    }
    let Some(Value::Array(values)) = p.get("VALUES") else {
        return Err(fail("Communication values is not defined."));
    };
    let only = p
        .get("ENTITY_TYPE")
        .and_then(php_str)
        .filter(|s| !s.is_empty());
    if only.as_deref() == Some("DEAL") {
        return Err(fail("Deal is not supported in current context."));
    }
    let codes: Vec<String> = values
        .iter()
        .take(20)
        .filter_map(php_str)
        .map(|v| match_code(&v))
        .collect();
    let mut found: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    if kind == "PHONE" {
        for item in &st.crm {
            if codes.contains(&item.phone) && only.as_deref().is_none_or(|t| t == item.entity_type)
            {
                found
                    .entry(item.entity_type.clone())
                    .or_default()
                    .push(item.id);
            }
        }
    }
    if found.is_empty() {
        // A PHP empty array serialises as `[]`, not `{}`.
        return ok(json!([]));
    }
    ok(json!(found))
}

// ---------------------------------------------------------------------------------------
// Helpers: users, CRM, PHP-style value coercion
// ---------------------------------------------------------------------------------------

/// `USER_ID`, or `USER_PHONE_INNER` looked up exactly among active users (§2.1).
fn resolve_user(st: &State, p: &Map<String, Value>) -> Result<u64, Fail> {
    let id = p.get("USER_ID").map(php_int).unwrap_or(0);
    if id > 0 {
        return Ok(id as u64);
    }
    let inner = p
        .get("USER_PHONE_INNER")
        .and_then(php_str)
        .unwrap_or_default();
    st.users
        .iter()
        .find(|u| u.active && !inner.is_empty() && u.inner.as_deref() == Some(&inner))
        .map(|u| u.id)
        .ok_or_else(|| fail("USER_ID or USER_PHONE_INNER should be set"))
}

fn check_active(st: &State, user_id: u64) -> Result<(), Fail> {
    if st.users.iter().any(|u| u.id == user_id && u.active) {
        Ok(())
    } else {
        Err(fail("User is not found or is not active"))
    }
}

/// An employee's own number: internal calls get no CRM binding and no lead (§2.1).
fn is_internal(st: &State, phone: &str) -> bool {
    st.users.iter().any(|u| {
        u.active
            && u.inner
                .as_deref()
                .is_some_and(|i| !i.is_empty() && i == phone)
    })
}

fn best_crm_match(st: &State, code: &str) -> Option<(String, u64)> {
    ["CONTACT", "COMPANY", "LEAD"].iter().find_map(|ty| {
        st.crm
            .iter()
            .find(|i| i.entity_type == *ty && i.phone == code)
            .map(|i| (i.entity_type.clone(), i.id))
    })
}

/// `CVoxImplantPhone::stripLetters`: keep `0-9 # * + , ;` (§2.1).
fn strip_letters(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_digit() || "#*+,;".contains(*c))
        .collect()
}

/// The duplicate index's key: digits only, extension after `;`/`#` dropped (§7.1).
fn match_code(s: &str) -> String {
    s.split([';', '#'])
        .next()
        .unwrap_or("")
        .chars()
        .filter(char::is_ascii_digit)
        .collect()
}

fn looks_like_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 10
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[5..7].iter().all(u8::is_ascii_digit)
        && b[7] == b'-'
        && b[8..10].iter().all(u8::is_ascii_digit)
}

/// PHP `(int)`: numbers truncate, strings take their leading integer, anything else is 0.
fn php_int(v: &Value) -> i64 {
    match v {
        Value::Number(n) => n
            .as_i64()
            .unwrap_or_else(|| n.as_f64().unwrap_or(0.0) as i64),
        Value::String(s) => {
            let s = s.trim();
            let end = s
                .char_indices()
                .find(|&(i, c)| !(c.is_ascii_digit() || (i == 0 && c == '-')))
                .map_or(s.len(), |(i, _)| i);
            s[..end].parse().unwrap_or(0)
        }
        Value::Bool(b) => i64::from(*b),
        _ => 0,
    }
}

/// PHP truthiness: `""`, `"0"`, `0`, `false`, `null` and empty arrays are false.
fn php_truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !(s.is_empty() || s == "0"),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// PHP `(string)` of a scalar; `None` for null, arrays and objects.
fn php_str(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(if *b { "1" } else { "" }.into()),
        _ => None,
    }
}

fn title_case(s: &str) -> String {
    let lower = s.to_ascii_lowercase();
    let mut c = lower.chars();
    c.next()
        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
        .unwrap_or_default()
}

fn upper_keys(v: &Value) -> Map<String, Value> {
    match v {
        Value::Object(o) => o
            .iter()
            .map(|(k, v)| (k.to_ascii_uppercase(), v.clone()))
            .collect(),
        _ => Map::new(),
    }
}

/// 32 hex digits, like the md5 in a real CALL_ID (§2.1).
fn hex32(seed: &impl Hash) -> String {
    let mut h = DefaultHasher::new();
    seed.hash(&mut h);
    let a = h.finish();
    a.hash(&mut h);
    format!("{a:016x}{:016x}", h.finish())
}

// ---------------------------------------------------------------------------------------
// Params: query string + body, PHP semantics (§1.2)
// ---------------------------------------------------------------------------------------

/// Query and body merged, the body winning. A JSON body is read only with an
/// `application/json` content type, and invalid JSON counts as `{}` (§1.2).
fn merge_params(query: &str, body: &str, content_type: &str) -> Value {
    let mut params = parse_form(query);
    let body_params = if content_type.starts_with("application/json") {
        match serde_json::from_str(body) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        }
    } else {
        parse_form(body)
    };
    params.extend(body_params);
    Value::Object(params)
}

/// `a=1&b[]=2&b[]=3&c[x][y]=4` → `{"a":"1","b":["2","3"],"c":{"x":{"y":"4"}}}`.
/// Form values are always strings, as in PHP.
fn parse_form(s: &str) -> Map<String, Value> {
    let mut root = Map::new();
    for pair in s.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(k);
        let path: Vec<&str> = match key.find('[') {
            Some(i) if key.ends_with(']') => std::iter::once(&key[..i])
                .chain(key[i + 1..key.len() - 1].split("]["))
                .collect(),
            _ => vec![key.as_str()],
        };
        insert_path(&mut root, &path, percent_decode(v));
    }
    match lists_to_arrays(Value::Object(root)) {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// Store `value` under `path`; an empty path element (`[]`) appends.
fn insert_path(map: &mut Map<String, Value>, path: &[&str], value: String) {
    let key = match path[0] {
        "" => map.len().to_string(),
        k => k.to_string(),
    };
    if path.len() == 1 {
        map.insert(key, Value::String(value));
        return;
    }
    let child = map.entry(key).or_insert_with(|| Value::Object(Map::new()));
    if !child.is_object() {
        *child = Value::Object(Map::new());
    }
    if let Value::Object(m) = child {
        insert_path(m, &path[1..], value);
    }
}

/// Objects keyed exactly `"0".."n-1"` become JSON arrays, as PHP lists serialise.
fn lists_to_arrays(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let is_list =
                !m.is_empty() && (0..m.len()).all(|i| m.contains_key(i.to_string().as_str()));
            if is_list {
                let mut m = m;
                Value::Array(
                    (0..m.len())
                        .map(|i| lists_to_arrays(m.remove(i.to_string().as_str()).unwrap()))
                        .collect(),
                )
            } else {
                Value::Object(
                    m.into_iter()
                        .map(|(k, v)| (k, lists_to_arrays(v)))
                        .collect(),
                )
            }
        }
        other => other,
    }
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push(hi << 4 | lo);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------
// The `time` block (§9.1)
// ---------------------------------------------------------------------------------------

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn time_block(started: SystemTime) -> Value {
    let start = started
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let finish = unix_now().max(start);
    json!({
        "start": start,
        "finish": finish,
        "duration": finish - start,
        "processing": finish - start,
        "date_start": iso8601(start as i64),
        "date_finish": iso8601(finish as i64),
        "operating_reset_at": start as i64 + 600,
        "operating": 0,
    })
}

/// Unix seconds → `YYYY-MM-DDTHH:MM:SS+00:00` (Howard Hinnant's civil-from-days).
fn iso8601(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}+00:00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

// ---------------------------------------------------------------------------------------
// attachRecord and its upload URL (§4.2)
// ---------------------------------------------------------------------------------------

/// `telephony.externalCall.attachRecord`: the four modes and their error strings.
fn attach_record(st: &mut State, p: &Map<String, Value>) -> Outcome {
    let call_id = p.get("CALL_ID").and_then(php_str).unwrap_or_default();
    let finished = st
        .finished
        .iter()
        .any(|row| row["CALL_ID"].as_str() == Some(call_id.as_str()));
    if !finished {
        return Err(fail(
            "Call is not found in the statistic table. Looks like it is not finished yet.",
        ));
    }
    let filename = p.get("FILENAME").and_then(php_str);
    if let Some(url) = p
        .get("RECORD_URL")
        .and_then(php_str)
        .filter(|u| !u.is_empty())
    {
        // Mode 1: downloaded once, synchronously.
        let bytes = match ureq::get(&url).call() {
            Ok(mut r) => r
                .body_mut()
                .with_config()
                .limit(1 << 30)
                .read_to_vec()
                .map_err(|e| fail(&format!("SERVER_NOT_AVAILABLE: {e}")))?,
            Err(ureq::Error::StatusCode(code)) => {
                return Err(fail(&format!("Server returns HTTP error code {code}")))
            }
            Err(e) => return Err(fail(&format!("SERVER_NOT_AVAILABLE: {e}"))),
        };
        let name = filename
            .filter(|f| !f.is_empty())
            .unwrap_or_else(|| url.rsplit('/').next().unwrap_or("").to_string());
        return Ok(store_record(st, call_id, name, "url", Some(url), bytes));
    }
    let Some(filename) = filename else {
        return Err(fail(
            "Required parameters are not set. Request should contain or URL or FILENAME parameter",
        ));
    };
    if filename.is_empty() {
        return Err(fail("File name is empty"));
    }
    let ext = filename.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    if ext != "wav" && ext != "mp3" {
        return Err(fail("Wrong file extension. Only wav and mp3 are allowed"));
    }
    match p.get("FILE_CONTENT") {
        None | Some(Value::Null) => {
            // Mode 3: hand out an upload URL.
            st.seq += 1;
            let token = format!("telephony|{}|{}", hex32(&(st.seq, &call_id)), st.seq);
            st.uploads
                .insert(token.clone(), (call_id.clone(), filename.clone()));
            let upload_url = format!(
                "{}/rest/{WEBHOOK_USER}/{WEBHOOK_CODE}/upload/?token={}",
                st.base,
                token.replace('|', "%7C")
            );
            ok(json!({ "uploadUrl": upload_url, "fieldName": "file" }))
        }
        Some(content) => {
            let text = php_str(content).unwrap_or_default();
            if text.is_empty() {
                return Err(fail("File content is empty."));
            }
            let Some(bytes) = base64_decode(&text) else {
                return Err(fail(
                    "File content is not properly encoded. Base64 encoding is expected.",
                ));
            };
            Ok(store_record(st, call_id, filename, "content", None, bytes))
        }
    }
}

fn store_record(
    st: &mut State,
    call_id: String,
    filename: String,
    via: &str,
    record_url: Option<String>,
    bytes: Vec<u8>,
) -> Map<String, Value> {
    let file_id = 9000 + st.records.len() as u64;
    st.records.push(AttachedRecord {
        call_id,
        filename,
        via: via.to_string(),
        record_url,
        bytes,
        file_id,
    });
    let mut m = Map::new();
    m.insert("result".into(), json!({ "FILE_ID": file_id }));
    m
}

/// `POST /rest/1/testcode/upload/?token=…` with a multipart `file` field.
fn upload_file(
    st: &mut State,
    p: &Map<String, Value>,
    upload: Option<&(String, Vec<u8>)>,
) -> Outcome {
    let token = p.get("TOKEN").and_then(php_str).unwrap_or_default();
    let Some((call_id, filename)) = st.uploads.remove(&token) else {
        return Err(Fail {
            status: 401,
            code: "INVALID_TOKEN",
            description: "Upload token is invalid or already used".into(),
        });
    };
    let Some((field, bytes)) = upload else {
        return Err(fail(
            "No file in the request (multipart/form-data field `file`)",
        ));
    };
    if field != "file" {
        return Err(fail(&format!(
            "Unexpected field {field:?}, expected `file`"
        )));
    }
    Ok(store_record(
        st,
        call_id,
        filename,
        "upload",
        None,
        bytes.clone(),
    ))
}

/// The first file part of a `multipart/form-data` body: (field name, bytes).
fn parse_upload(content_type: &str, body: &[u8]) -> Option<(String, Vec<u8>)> {
    if !content_type
        .to_ascii_lowercase()
        .starts_with("multipart/form-data")
    {
        return None;
    }
    let boundary = content_type
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))?
        .trim_matches('"');
    let delim = format!("--{boundary}");
    let find = |hay: &[u8], needle: &[u8], from: usize| {
        hay.get(from..)?
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|i| i + from)
    };
    let start = find(body, delim.as_bytes(), 0)? + delim.len() + 2;
    let headers_end = find(body, b"\r\n\r\n", start)?;
    let headers = String::from_utf8_lossy(&body[start..headers_end]).into_owned();
    let content_start = headers_end + 4;
    let end = find(body, format!("\r\n{delim}").as_bytes(), content_start)?;
    let name = headers
        .split(';')
        .find_map(|p| p.trim().strip_prefix("name="))?
        .trim_matches('"')
        .to_string();
    Some((name, body[content_start..end].to_vec()))
}

/// Strict standard base64 (length a multiple of 4, padding only at the end), as PHP's
/// `base64_decode($s, true)` that the portal uses.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if !s.len().is_multiple_of(4) {
        return None;
    }
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for (i, chunk) in s.chunks(4).enumerate() {
        let last = i == s.len() / 4 - 1;
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = (n << 6) | val(c)?;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}
