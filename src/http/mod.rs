//! The HTTP server: Bitrix24 events (`POST /bitrix24/event`), the app install event
//! (`POST /bitrix24/install`, app mode) and the ops endpoints
//! (`GET /healthz`, `/status`, `/metrics`), on `[http] listen`.
//!
//! tiny_http accepts connections on its own thread and hands complete requests to a queue;
//! `[http] threads` workers of ours take requests from it. A worker answers first and then
//! does slow work (an AMI Originate, a Bitrix24 user reload) in the same thread, because the
//! Bitrix24 queue server slows down delivery to handlers that answer late and never retries
//! (bitrix24-api.md §5.4).
//!
//! Tests find the port of `listen = 127.0.0.1:0` in the info line `HTTP listening on ADDR`
//! (or from [`Server::addr`] / `Daemon::http_addr` in-process).

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

use crate::context::Context;
use crate::dial_policy::{RateLimiter, Refusal};
use crate::originate::Dedup;

pub use install::INSTALL_PATH;
pub use ops::{metrics_text, Snapshot};

/// The webhook path (a contract, mission.md).
pub const EVENT_PATH: &str = "/bitrix24/event";

/// Why the server could not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The listen address is taken, not ours, or needs privileges.
    Bind { addr: SocketAddr, reason: String },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Bind { addr, reason } => write!(
                f,
                "cannot listen on {addr} for HTTP: {reason} (check [http] listen: is another \
                 process using the port, or is the address not on this host?)"
            ),
        }
    }
}

impl std::error::Error for Error {}

/// A bound, not yet serving, listener: binding comes first so a bad `listen` stops the
/// daemon before any other thread starts.
pub struct Bound {
    server: Arc<tiny_http::Server>,
    addr: SocketAddr,
}

/// Bind `addr` (port 0: any free port; see [`Bound::addr`]) with `limits`
/// ([`listener::limits`]).
pub fn bind(addr: SocketAddr, limits: tiny_http::Limits) -> Result<Bound, Error> {
    let bind_error = |reason: String| Error::Bind { addr, reason };
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

    /// Start `threads` workers.
    pub fn serve(self, daemon: Context, threads: usize) -> Server {
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
        let workers = (0..threads.max(1))
            .map(|i| {
                let (server, ctx, stopping) = (self.server.clone(), ctx.clone(), stopping.clone());
                thread::Builder::new()
                    .name(format!("http-{i}"))
                    .spawn(move || worker(&server, &ctx, &stopping))
                    .expect("spawn HTTP worker thread")
            })
            .collect();
        log::info!("HTTP listening on {}", self.addr);
        Server {
            server: self.server,
            addr: self.addr,
            workers,
            stopping,
        }
    }
}

/// The running server. Stop it with [`Server::shutdown`].
pub struct Server {
    server: Arc<tiny_http::Server>,
    addr: SocketAddr,
    workers: Vec<JoinHandle<()>>,
    stopping: Arc<AtomicBool>,
}

impl Server {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Ask the workers to stop without waiting (a worker busy with a request finishes it).
    /// `unblock` wakes exactly one waiting `recv`, so it is called once per worker.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        for _ in &self.workers {
            self.server.unblock();
        }
    }

    /// [`Server::stop`], then wait for the workers. The listening socket closes when the
    /// last reference to the tiny_http server goes, i.e. here.
    pub fn shutdown(self) {
        self.stop();
        for w in self.workers {
            let _ = w.join();
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

fn worker(server: &tiny_http::Server, ctx: &Ctx, stopping: &AtomicBool) {
    loop {
        match server.recv() {
            Ok(req) => handle(ctx, req),
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

fn handle(ctx: &Ctx, req: Request) {
    let path = req.url().split('?').next().unwrap_or("").to_string();
    match path.as_str() {
        EVENT_PATH => webhook::handle(ctx, req),
        INSTALL_PATH => install::handle(ctx, req),
        "/healthz" | "/status" | "/metrics" => {
            if !matches!(req.method(), Method::Get | Method::Head) {
                respond(
                    req,
                    reply(405, "method not allowed\n").with_header(header("Allow", "GET, HEAD")),
                );
                return;
            }
            let resp = match path.as_str() {
                "/healthz" => ops::healthz(ctx),
                "/status" => ops::status(ctx),
                _ => ops::metrics(ctx),
            };
            respond(req, resp);
        }
        _ => respond(req, reply(404, "not found\n")),
    }
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
