//! The HTTP server, on two listeners:
//!
//! - the **public** one (`[http] listen`, behind the TLS reverse proxy Bitrix24 reaches):
//!   Bitrix24 events (`POST /bitrix24/event`), the app install event (`POST
//!   /bitrix24/install`, app mode) and `GET /healthz` (status only: its 503 says
//!   `unhealthy`, not why, since a reason such as "not installed yet" helps an attacker);
//! - the **ops** one (`[http] ops_listen`, loopback by default): `GET /healthz`, `/status` and
//!   `/metrics`. `/status` shows live caller numbers, so it never answers on the public
//!   listener, except when there is no ops listener and `[http] ops_token` is set: then
//!   `/status` and `/metrics` are served there behind the bearer token. With `ops_token`
//!   set they always need `Authorization: Bearer <ops_token>` (docs/security.md).
//!
//! tiny_http accepts connections on its own thread and hands complete requests to a queue;
//! `[http] threads` workers of ours take requests from it (and [`OPS_THREADS`] from the ops
//! listener's). A worker answers first and then does slow work (an AMI Originate, a Bitrix24
//! user reload) in the same thread, because the Bitrix24 queue server slows down delivery to
//! handlers that answer late and never retries (bitrix24-api.md §5.4).
//!
//! Tests find the ports of `127.0.0.1:0` in the info lines `HTTP listening on ADDR` and
//! `HTTP ops listening on ADDR` (or from [`Server::addr`] / [`Server::ops_addr`] in-process).

mod install;
mod ops;
mod webhook;

pub mod form;
pub mod listener;

use std::collections::BTreeMap;
use std::fmt;
use std::io::Cursor;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Instant;

use tiny_http::{Header, Method, Request, Response};

use crate::config::{HttpConfig, Secret};
use crate::context::Context;
use crate::dial_policy::{RateLimiter, Refusal};
use crate::originate::Dedup;

pub use install::INSTALL_PATH;
pub use ops::{metrics_text, Snapshot};

/// The webhook path (a contract, mission.md).
pub const EVENT_PATH: &str = "/bitrix24/event";

/// Worker threads of the ops listener: an operator's curl and a Prometheus scrape.
pub const OPS_THREADS: usize = 2;

/// Why the server could not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The address of `[http] {key}` is taken, not ours, or needs privileges.
    Bind {
        key: &'static str,
        addr: SocketAddr,
        reason: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Bind { key, addr, reason } => write!(
                f,
                "cannot listen on {addr} for HTTP: {reason} (check [http] {key}: is another \
                 process using the port, or is the address not on this host?)"
            ),
        }
    }
}

/// Which endpoints a listener serves (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Public,
    Ops,
}

impl std::error::Error for Error {}

/// A bound, not yet serving, listener: binding comes first so a bad `listen` stops the
/// daemon before any other thread starts.
pub struct Bound {
    server: Arc<tiny_http::Server>,
    addr: SocketAddr,
}

/// Bind `addr`, the address of `[http] {key}` (port 0: any free port; see [`Bound::addr`]),
/// with `limits` ([`listener::limits`]).
pub fn bind(
    key: &'static str,
    addr: SocketAddr,
    limits: tiny_http::Limits,
) -> Result<Bound, Error> {
    let bind_error = |reason: String| Error::Bind { key, addr, reason };
    let tcp = std::net::TcpListener::bind(addr).map_err(|e| bind_error(e.to_string()))?;
    let server = tiny_http::Server::from_listener_with_limits(tcp, None, limits)
        .map_err(|e| bind_error(e.to_string()))?;
    let bound = server.server_addr().to_ip().unwrap_or(addr);
    Ok(Bound {
        server: Arc::new(server),
        addr: bound,
    })
}

impl Bound {
    /// The address actually bound.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Start `threads` workers on this (public) listener, and [`OPS_THREADS`] on `ops`.
    /// Listener health (`/healthz`, the watchdog) follows the public listener: the one calls
    /// depend on.
    pub fn serve(self, daemon: Context, threads: usize, ops: Option<Bound>) -> Server {
        daemon.health.listener.attach(&self.server);
        let ctx = Arc::new(Ctx {
            limiter: RateLimiter::new(&daemon.config.originate.policy),
            daemon,
            dedup: Dedup::default(),
            started: Instant::now(),
            clicks: Mutex::new(BTreeMap::new()),
            refused: Mutex::new(BTreeMap::new()),
        });
        let stopping = Arc::new(AtomicBool::new(false));
        let spawn = |bound: &Bound, role: Role, n: usize, name: &str| -> Vec<JoinHandle<()>> {
            (0..n.max(1))
                .map(|i| {
                    let (server, ctx, stopping) =
                        (bound.server.clone(), ctx.clone(), stopping.clone());
                    thread::Builder::new()
                        .name(format!("{name}-{i}"))
                        .spawn(move || worker(&server, &ctx, role, &stopping))
                        .expect("spawn HTTP worker thread")
                })
                .collect()
        };
        let workers = spawn(&self, Role::Public, threads, "http");
        log::info!("HTTP listening on {}", self.addr);
        let ops = ops.map(|o| {
            let workers = spawn(&o, Role::Ops, OPS_THREADS, "http-ops");
            log::info!("HTTP ops listening on {}", o.addr);
            (o, workers)
        });
        let cfg = &ctx.daemon.config.http;
        if ops.is_none() {
            if cfg.ops_token.is_some() {
                log::info!("HTTP: no ops listener; /status and /metrics on the public listener need the ops_token");
            } else {
                log::info!("HTTP: no ops listener and no ops_token; /status and /metrics are off");
            }
        }
        let mut listeners = vec![(self, workers)];
        listeners.extend(ops);
        Server {
            listeners,
            stopping,
        }
    }
}

/// The running server. Stop it with [`Server::shutdown`].
pub struct Server {
    /// The public listener first, then the ops listener if any, each with its workers.
    listeners: Vec<(Bound, Vec<JoinHandle<()>>)>,
    stopping: Arc<AtomicBool>,
}

impl Server {
    /// The public listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.listeners[0].0.addr
    }

    /// The ops listener's address, if there is one.
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.listeners.get(1).map(|(b, _)| b.addr)
    }

    /// Ask the workers to stop without waiting (a worker busy with a request finishes it).
    /// `unblock` wakes exactly one waiting `recv`, so it is called once per worker.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        for (bound, workers) in &self.listeners {
            for _ in workers {
                bound.server.unblock();
            }
        }
    }

    /// [`Server::stop`], then wait for the workers. The listening sockets close when the
    /// last reference to their tiny_http server goes, i.e. here.
    pub fn shutdown(self) {
        self.stop();
        for (_, workers) in self.listeners {
            for w in workers {
                let _ = w.join();
            }
        }
        log::debug!("HTTP server stopped");
    }
}

/// What the workers share.
struct Ctx {
    daemon: Context,
    dedup: Dedup,
    started: Instant,
    /// Click-to-call outcomes by name, for `/metrics` and `/status`.
    clicks: Mutex<BTreeMap<&'static str, u64>>,
    /// Toll-fraud guard: Originates per minute.
    limiter: RateLimiter,
    /// Originates the guard refused, by reason (`callme_originate_refused_total`).
    refused: Mutex<BTreeMap<&'static str, u64>>,
}

impl Ctx {
    fn count_click(&self, outcome: &'static str) {
        *self
            .clicks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(outcome)
            .or_insert(0) += 1;
    }

    /// The toll-fraud guard for one Originate of `dial` by `who`: the number policy first, then
    /// the rate limits (so a refused number does not use up the employee's quota). A refusal is
    /// counted for `/metrics`.
    fn guard(&self, dial: &str, who: &str) -> Result<(), Refusal> {
        let verdict = self
            .daemon
            .config
            .originate
            .policy
            .check(dial)
            .and_then(|()| self.limiter.admit(who, Instant::now()));
        if let Err(why) = &verdict {
            *self
                .refused
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(why.reason())
                .or_insert(0) += 1;
        }
        verdict
    }
}

fn worker(server: &tiny_http::Server, ctx: &Ctx, role: Role, stopping: &AtomicBool) {
    loop {
        match server.recv() {
            Ok(req) => handle(ctx, role, req),
            // Unblocked by `stop`, or an accept error tiny_http passed on.
            Err(e) => {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                log::debug!("HTTP: {e}");
            }
        }
        if stopping.load(Ordering::SeqCst) {
            break;
        }
    }
}

fn handle(ctx: &Ctx, role: Role, req: Request) {
    let path = req.url().split('?').next().unwrap_or("").to_string();
    match (role, path.as_str()) {
        (Role::Public, EVENT_PATH) => webhook::handle(ctx, req),
        (Role::Public, INSTALL_PATH) => install::handle(ctx, req),
        (_, "/healthz" | "/status" | "/metrics") => {
            let private = path != "/healthz";
            if private && !ops_served_on(&ctx.daemon.config.http, role) {
                return respond(req, reply(404, "not found\n"));
            }
            if !matches!(req.method(), Method::Get | Method::Head) {
                respond(
                    req,
                    reply(405, "method not allowed\n").with_header(header("Allow", "GET, HEAD")),
                );
                return;
            }
            if private && !bearer_ok(ctx.daemon.config.http.ops_token.as_ref(), &req) {
                return respond(
                    req,
                    reply(401, "unauthorized\n").with_header(header("WWW-Authenticate", "Bearer")),
                );
            }
            let resp = match path.as_str() {
                // The reason only where /status could be read too.
                "/healthz" => ops::healthz(
                    ctx,
                    role == Role::Ops
                        || (ops_served_on(&ctx.daemon.config.http, role)
                            && bearer_ok(ctx.daemon.config.http.ops_token.as_ref(), &req)),
                ),
                "/status" => ops::status(ctx),
                _ => ops::metrics(ctx),
            };
            respond(req, resp);
        }
        _ => respond(req, reply(404, "not found\n")),
    }
}

/// Whether `/status` and `/metrics` answer on a listener of `role`: always on the ops
/// listener; on the public one only when there is no ops listener and a token guards them.
fn ops_served_on(cfg: &HttpConfig, role: Role) -> bool {
    match role {
        Role::Ops => true,
        Role::Public => cfg.ops_listen.is_none() && cfg.ops_token.is_some(),
    }
}

/// No `ops_token`: nothing to check. Otherwise `Authorization: Bearer <ops_token>`, compared
/// in constant time.
fn bearer_ok(token: Option<&Secret>, req: &Request) -> bool {
    let Some(token) = token else {
        return true;
    };
    req.headers()
        .iter()
        .filter(|h| h.field.equiv("Authorization"))
        .any(|h| {
            let v = h.value.as_str().trim();
            v.split_once(' ').is_some_and(|(scheme, cred)| {
                scheme.eq_ignore_ascii_case("bearer") && token.ct_eq(cred.trim())
            })
        })
}

type Reply = Response<Cursor<Vec<u8>>>;

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("static header is valid")
}

/// A `text/plain` answer.
fn reply(status: u16, body: &str) -> Reply {
    Response::from_string(body)
        .with_status_code(status)
        .with_header(header("Content-Type", "text/plain; charset=utf-8"))
}

fn respond(req: Request, resp: Reply) {
    if let Err(e) = req.respond(resp) {
        log::debug!("HTTP: could not send the response: {e}");
    }
}
