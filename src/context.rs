//! The handles the daemon's threads and the HTTP side share: built once by
//! [`Daemon::start`](crate::daemon::Daemon::start), used by `http` and `originate`.
//!
//! Why a module of its own: `http` and `originate` need these handles, and `daemon` starts
//! the HTTP server. With the handles in `daemon`, the three imported each other; here they
//! depend only on what lies below them (`ami`, `calls`, `bitrix`, `config`).

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::ami::client;
use crate::bitrix::counted::RestCounts;
use crate::bitrix::deliver::DeliveryStats;
use crate::bitrix::{AppClient, AuthStatus, Directory, SharedDirectory, Transport};
use crate::calls::tracker::Originate;
use crate::calls::CallSummary;
use crate::config::Config;
use crate::statefile::DiskStatus;

/// Shared, read-mostly view of the daemon for the ops endpoints and the watchdog.
#[derive(Debug, Default)]
pub struct Health {
    pub ami_logged_in: AtomicBool,
    pub state_alive_ms: AtomicU64,
    /// Stamped by the delivery thread before and after every Bitrix24 request and at least
    /// once a second when idle (an `Arc`: the request wrapper that stamps it holds it).
    pub delivery_alive_ms: Arc<AtomicU64>,
    /// How long the delivery thread may stay silent before it counts as stuck (one request
    /// can take up to `[bitrix24] timeout`, twice with an OAuth refresh); 0 when there is no
    /// delivery thread to watch.
    pub delivery_limit_ms: AtomicU64,
    pub active_calls: Mutex<Vec<CallSummary>>,
    pub delivery: Mutex<DeliveryView>,
    /// Why Bitrix24 refuses our credentials, if it does: app mode not installed or its
    /// refresh refused, or a webhook on a portal that requires app mode. Makes `/healthz` 503.
    pub auth_error: AuthStatus,
    /// Every REST request to the portal, by method and answer (`/metrics`).
    pub rest: Arc<RestCounts>,
    /// The HTTP listener; down (unable to accept) makes `/healthz` 503 and stops the watchdog.
    pub listener: crate::listener_watch::Watch,
    /// Whether the outbox and the events journal can be written; a problem makes `/healthz`
    /// 503.
    pub disk: Arc<DiskStatus>,
}

#[derive(Clone, Debug, Default)]
pub struct DeliveryView {
    pub pending: usize,
    /// How long the oldest undelivered Bitrix24 step has been waiting.
    pub oldest_pending_age: Option<Duration>,
    pub stats: DeliveryStats,
    pub users: usize,
    /// When the directory in use was loaded; `None` until the first `user.get` succeeded
    /// (steps that need it wait meanwhile: `stats.waiting_for_directory`).
    pub users_loaded: Option<Instant>,
}

/// Messages to the state thread besides AMI traffic. The state thread owns the tracker, so
/// anything that changes call state (the HTTP webhook included) goes through here.
#[derive(Debug)]
pub enum Control {
    /// The internal numbers of active Bitrix24 users (after each directory load).
    Employees(Vec<String>),
    /// A click-to-call Originate was sent; expect its channels until `expires_ms`.
    Originate {
        originate: Originate,
        expires_ms: u64,
    },
    /// The Originate for this CALL_ID was refused (`Response: Error`) or could not be sent.
    OriginateFailed { call_id: String },
    /// The toll-fraud guard refused this CALL_ID's number: finish it with `status`.
    OriginateRefused {
        call_id: String,
        status: crate::calls::Status,
    },
}

/// What the HTTP workers and click-to-call share with the daemon's threads.
#[derive(Clone)]
pub struct Context {
    pub config: Arc<Config>,
    pub health: Arc<Health>,
    /// The mutex-guarded AMI writer (Originate, requests).
    pub ami: client::Handle,
    /// Into the state thread.
    pub control: Sender<Control>,
    /// The one Bitrix24 user directory, shared with delivery: loaded by the delivery thread
    /// (and by click-to-call on a miss); `request_reload` makes the delivery thread load it
    /// again at once (an app install).
    pub directory: SharedDirectory,
    /// The Bitrix24 transport, for the rare request outside the delivery queue (a user
    /// directory refresh when a click-to-call names an unknown user).
    pub transport: Arc<dyn Transport>,
    /// App mode: the OAuth client, for the install endpoint and event checks. `None` in
    /// webhook mode.
    pub app: Option<Arc<AppClient>>,
}

/// Publish a freshly loaded directory: to everyone sharing it (delivery, click-to-call,
/// `/status`) and, as the employees' internal numbers, to the state thread's tracker. The
/// one way a directory gets published, so the tracker and delivery never disagree.
pub fn publish_directory(shared: &SharedDirectory, ctl: &Sender<Control>, dir: Directory) {
    let _ = ctl.send(Control::Employees(dir.inners().map(String::from).collect()));
    shared.publish(dir);
}
