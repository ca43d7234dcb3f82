//! The fault-injection rig: the real `callme run` against the fake AMI (fed by
//! [`super::traffic`]) and the fake portal behind a [`Gate`], with faults applied at chosen
//! moments, then the invariants of [`super::invariants`] checked on what the portal recorded.
//!
//! A [`Schedule`] is drawn from a seed ([`Schedule::random`]), so a failing run is replayed
//! with the same seed. Everything is bounded: the traffic by its call count, each wait by a
//! deadline, and every child process is killed when the rig is dropped (panics included).

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::daemon::{Running, TempDir};
use super::fake_ami::{wait_until, FakeAmi};
use super::fake_bitrix::FakeBitrix;
use super::gate::Gate;
use super::gen::Gen;
use super::invariants::{self, Report};
use super::traffic::{Traffic, TrafficSpec};

pub const SECRET: &str = "amisecret-faults";

/// The file size limit of [`Schedule::disk_full_at_start`], in 512-byte blocks.
pub const FULL_DISK_BLOCKS: u64 = 16;

/// One fault, applied at a moment of the run.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// The portal refuses connections (nothing listens) for `secs`.
    PortalRefusing { secs: f64 },
    /// The next `n` portal requests get HTTP `status` with a JSON error body.
    Portal5xx { n: usize, status: u16 },
    /// The next `n` portal requests get 503 `QUERY_LIMIT_EXCEEDED`.
    QueryLimit { n: usize },
    /// Every portal answer is held `delay_ms` for `secs` (above the daemon's 5 s timeout the
    /// answer is lost after the portal did the work).
    Slow { secs: f64, delay_ms: u64 },
    /// The AMI link is cut and Asterisk refuses logins for `secs`.
    AmiCut { secs: f64 },
    /// `kill -9`, started again `down` seconds later.
    Kill9 { down: f64 },
    /// SIGTERM (waits for the exit), started again `down` seconds later.
    Term { down: f64 },
    /// SIGTERM, then started again with `RLIMIT_FSIZE` just above the state files' size, so
    /// writes soon fail with `EFBIG` (a full disk); the limit is lifted after `secs`.
    DiskFull { secs: f64 },
}

/// A whole run: the traffic, an optional portal outage from the start, and timed faults.
#[derive(Clone, Debug)]
pub struct Schedule {
    pub seed: u64,
    pub traffic: TrafficSpec,
    /// The portal refuses connections for this long after the daemon starts.
    pub portal_down_at_start: Option<f64>,
    /// (seconds, ms): every portal answer is held this many ms from before the daemon starts
    /// until this many seconds after the traffic starts (a slow user directory load).
    pub slow_at_start: Option<(f64, u64)>,
    /// The daemon starts with `RLIMIT_FSIZE` at [`FULL_DISK_BLOCKS`] (writes past 8 KiB fail
    /// with `EFBIG`), lifted this many seconds after the traffic starts.
    pub disk_full_at_start: Option<f64>,
    /// (seconds after the traffic starts, fault), in time order.
    pub faults: Vec<(f64, Fault)>,
    /// Extra `[bitrix24]` lines for the daemon's config (e.g. `rate = 10`).
    pub bitrix_extra: String,
    /// How long to wait, after the traffic and every fault are over, for the daemon to get
    /// everything to the portal.
    pub settle: Duration,
}

/// Which faults a random schedule may draw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kinds {
    /// Portal trouble once the daemon runs (refusing, 5xx, rate limit, slow answers).
    Portal,
    /// Everything: the portal down at start, daemon and AMI faults included.
    All,
}

impl Schedule {
    /// A short schedule (a few seconds of traffic, 1–3 faults), for `cargo test` and soaks.
    pub fn random(seed: u64, kinds: Kinds) -> Schedule {
        let mut rng = Gen::unmixed(seed);
        let calls = 12 + rng.below(14);
        let rate = rng.range_f64(3.0, 6.0);
        let mut traffic = TrafficSpec::new(seed, calls, rate);
        traffic.speed = 3.0;
        let span = calls as f64 / rate; // seconds of call starts
        let portal_down_at_start = rng
            .probability(0.3)
            .then(|| rng.range_f64(0.5, 3.0))
            .filter(|_| kinds == Kinds::All);
        let mut faults = Vec::new();
        for _ in 0..1 + rng.below(3) {
            let at = rng.range_f64(0.2, span + 2.0);
            let portal_only = kinds == Kinds::Portal || rng.probability(0.4);
            let fault = if portal_only {
                match rng.below(4) {
                    0 => Fault::PortalRefusing {
                        secs: rng.range_f64(0.5, 3.0),
                    },
                    1 => Fault::Portal5xx {
                        n: 1 + rng.below(8),
                        status: [500, 502, 503, 504][rng.below(4)],
                    },
                    2 => Fault::QueryLimit {
                        n: 1 + rng.below(8),
                    },
                    _ => Fault::Slow {
                        secs: rng.range_f64(0.5, 3.0),
                        delay_ms: [200, 1000, 5500][rng.below(3)],
                    },
                }
            } else {
                match rng.below(4) {
                    0 => Fault::AmiCut {
                        secs: rng.range_f64(0.2, 2.0),
                    },
                    1 => Fault::Kill9 {
                        down: rng.range_f64(0.1, 2.0),
                    },
                    2 => Fault::Term {
                        down: rng.range_f64(0.1, 2.0),
                    },
                    _ => Fault::DiskFull {
                        secs: rng.range_f64(1.0, 3.0),
                    },
                }
            };
            faults.push((at, fault));
        }
        faults.sort_by(|a, b| a.0.total_cmp(&b.0));
        Schedule {
            seed,
            traffic,
            portal_down_at_start,
            slow_at_start: None,
            disk_full_at_start: None,
            faults,
            bitrix_extra: "rate = 20\nusers_refresh = 2\n".into(),
            settle: Duration::from_secs(45),
        }
    }
}

/// The daemon, the fakes and a state dir that outlives each daemon process.
pub struct Rig {
    pub portal: Arc<FakeBitrix>,
    pub gate: Gate,
    pub ami: Arc<FakeAmi>,
    pub daemon: Option<Running>,
    state: TempDir,
    config: String,
    /// Logs of the daemon processes that ended.
    past_logs: Vec<String>,
    /// What the rig did and when (seconds since it was built), for failure reports.
    pub notes: Vec<(f64, String)>,
    /// When the rig was built: the zero of every timeline.
    pub t0: Instant,
    /// Since when the running daemon's writes fail (started with a file size limit not lifted
    /// yet).
    limited: Option<Instant>,
    /// Spans in which the state dir could not be written and the daemon then stopped before
    /// it could: what it learnt in them lived in memory only, and the docs say so (a restart
    /// while `/healthz` says "state dir" loses it). See [`invariants::check`].
    pub volatile: Vec<(Instant, Instant)>,
}

impl Rig {
    /// The fakes and the config; no daemon yet. `portal_open = false` starts with the portal
    /// refusing connections. `bitrix_extra` goes into `[bitrix24]`.
    pub fn new(portal_open: bool, bitrix_extra: &str) -> Rig {
        let portal = Arc::new(FakeBitrix::start());
        let target = format!("127.0.0.1:{}", portal.port())
            .parse()
            .expect("portal address");
        let gate = Gate::start(target, portal_open);
        let ami = Arc::new(FakeAmi::start("callme", SECRET));
        let state = TempDir::new("callme-faults");
        let webhook = portal.webhook_url().replace(
            &format!(":{}/", portal.port()),
            &format!(":{}/", gate.port()),
        );
        let config = super::configs::daemon(
            ami.port(),
            SECRET,
            &format!("webhook_url = {webhook}\ntimeout = 5\n{bitrix_extra}"),
        )
        .replace("{state}", &state.path().display().to_string());
        Rig {
            portal,
            gate,
            ami,
            daemon: None,
            state,
            config,
            past_logs: Vec::new(),
            notes: Vec::new(),
            t0: Instant::now(),
            limited: None,
            volatile: Vec::new(),
        }
    }

    pub fn note(&mut self, what: impl Into<String>) {
        self.notes
            .push((self.t0.elapsed().as_secs_f64(), what.into()));
    }

    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    pub fn running(&mut self) -> bool {
        self.daemon.as_mut().is_some_and(Running::alive)
    }

    /// Start the daemon (no-op if it runs).
    pub fn start(&mut self) {
        if self.running() {
            return;
        }
        self.retire();
        self.daemon = Some(Running::start(&self.config, &["--debug"]));
        self.limited = None;
        self.note("daemon started");
    }

    /// Start the daemon with writes past `blocks` × 512 bytes failing with EFBIG.
    pub fn start_limited(&mut self, blocks: u64) {
        if self.running() {
            return;
        }
        self.retire();
        self.daemon = Some(Running::start_limited(&self.config, &["--debug"], blocks));
        self.limited = Some(Instant::now());
        self.note(format!("daemon started with RLIMIT_FSIZE {blocks} blocks"));
    }

    pub fn kill9(&mut self) {
        if let Some(d) = self.daemon.as_mut() {
            d.kill();
            self.note("kill -9");
        }
        self.stopped_while_limited();
    }

    /// SIGTERM and wait (up to 15 s) for the exit; `kill -9` if it does not come.
    pub fn term(&mut self) -> bool {
        let Some(d) = self.daemon.as_mut() else {
            return true;
        };
        if !d.alive() {
            return true;
        }
        d.terminate();
        let exited = d.wait_exit(Duration::from_secs(15)).is_some();
        if !exited {
            d.kill();
        }
        self.stopped_while_limited();
        self.note(if exited {
            "SIGTERM: exited"
        } else {
            "SIGTERM: no exit within 15 s, killed"
        });
        exited
    }

    /// Keep the log of the daemon process that ended.
    fn retire(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.kill();
            self.past_logs.push(d.log());
        }
        self.stopped_while_limited();
    }

    /// The daemon stopped while its writes failed: close the volatile span.
    fn stopped_while_limited(&mut self) {
        if let Some(since) = self.limited.take() {
            self.volatile.push((since, Instant::now()));
            self.note("the daemon stopped while its state dir refused writes");
        }
    }

    /// Every daemon process's log, oldest first.
    pub fn logs(&self) -> Vec<String> {
        let mut v = self.past_logs.clone();
        if let Some(d) = &self.daemon {
            v.push(d.log());
        }
        v
    }

    /// `GET /status` of the running daemon.
    pub fn status(&self) -> Option<Value> {
        let d = self.daemon.as_ref()?;
        let addr = d.ops_addr(Duration::from_secs(5))?;
        let body = http_get(&addr, "/status")?;
        serde_json::from_str(&body).ok()
    }

    /// `GET /healthz` of the running daemon on its ops listener, which gives the reason:
    /// (status, body).
    pub fn healthz(&self) -> Option<(u16, String)> {
        let addr = self.daemon.as_ref()?.ops_addr(Duration::from_secs(5))?;
        http_fetch(&addr, "/healthz")
    }

    /// Bytes in the state dir (every file, recursively).
    pub fn state_bytes(&self) -> u64 {
        dir_bytes(self.state.path())
    }

    /// The largest file in the state dir, in 512-byte blocks, rounded up.
    fn largest_file_blocks(&self) -> u64 {
        let mut max = 0;
        if let Ok(rd) = fs::read_dir(self.state.path()) {
            for e in rd.flatten() {
                max = max.max(e.metadata().map(|m| m.len()).unwrap_or(0));
            }
        }
        max.div_ceil(512)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.kill();
        }
    }
}

/// `GET path` over a fresh connection; the body, or `None` on any failure (the daemon may be
/// stopping: unlike `support::http::request`, this never panics).
fn http_get(addr: &str, path: &str) -> Option<String> {
    let (status, body) = http_fetch(addr, path)?;
    (status == 200).then_some(body)
}

/// `GET path`: (status, body), or `None` on any failure.
fn http_fetch(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

pub fn dir_bytes(p: &Path) -> u64 {
    let mut total = 0;
    let mut stack: Vec<PathBuf> = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// One step of a run, at a moment (seconds after the traffic started).
#[derive(Debug)]
enum Step {
    GateOpen(bool),
    FailNext(usize, u16, String),
    Delay(u64),
    AmiRefusing(bool),
    Kill9,
    Term,
    Start,
    StartLimited,
    LiftLimit,
}

fn steps(s: &Schedule) -> Vec<(f64, Step)> {
    let mut v = Vec::new();
    if let Some(secs) = s.portal_down_at_start {
        v.push((secs, Step::GateOpen(true)));
    }
    if let Some(secs) = s.disk_full_at_start {
        v.push((secs, Step::LiftLimit));
    }
    if let Some((secs, _)) = s.slow_at_start {
        v.push((secs, Step::Delay(0)));
    }
    for (at, f) in &s.faults {
        let at = *at;
        match f {
            Fault::PortalRefusing { secs } => {
                v.push((at, Step::GateOpen(false)));
                v.push((at + secs, Step::GateOpen(true)));
            }
            Fault::Portal5xx { n, status } => v.push((
                at,
                Step::FailNext(
                    *n,
                    *status,
                    r#"{"error":"INTERNAL_SERVER_ERROR","error_description":"Internal server error"}"#
                        .into(),
                ),
            )),
            Fault::QueryLimit { n } => v.push((
                at,
                Step::FailNext(
                    *n,
                    503,
                    r#"{"error":"QUERY_LIMIT_EXCEEDED","error_description":"Too many requests"}"#
                        .into(),
                ),
            )),
            Fault::Slow { secs, delay_ms } => {
                v.push((at, Step::Delay(*delay_ms)));
                v.push((at + secs, Step::Delay(0)));
            }
            Fault::AmiCut { secs } => {
                v.push((at, Step::AmiRefusing(true)));
                v.push((at + secs, Step::AmiRefusing(false)));
            }
            Fault::Kill9 { down } => {
                v.push((at, Step::Kill9));
                v.push((at + down, Step::Start));
            }
            Fault::Term { down } => {
                v.push((at, Step::Term));
                v.push((at + down, Step::Start));
            }
            Fault::DiskFull { secs } => {
                v.push((at, Step::Term));
                v.push((at, Step::StartLimited));
                v.push((at + secs, Step::LiftLimit));
            }
        }
    }
    // Stable: steps of one fault at the same moment keep their order.
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v
}

impl Rig {
    fn apply(&mut self, step: &Step) {
        match step {
            Step::GateOpen(open) => {
                self.gate.set_open(*open);
                self.note(if *open {
                    "portal reachable"
                } else {
                    "portal refusing connections"
                });
            }
            Step::FailNext(n, status, body) => {
                self.portal.fail_next(*n, *status, body);
                self.note(format!("portal: next {n} requests get {status} {body}"));
            }
            Step::Delay(ms) => {
                self.portal.set_delay(Duration::from_millis(*ms));
                self.note(format!("portal answers delayed {ms} ms"));
            }
            Step::AmiRefusing(on) => {
                self.ami.set_refusing(*on);
                if *on {
                    self.ami.drop_connection();
                    self.note("AMI cut, logins refused");
                } else {
                    self.note("AMI accepts logins again");
                }
            }
            Step::Kill9 => self.kill9(),
            Step::Term => {
                self.term();
            }
            Step::Start => self.start(),
            Step::StartLimited => {
                let blocks = self.largest_file_blocks() + 4;
                self.start_limited(blocks);
            }
            Step::LiftLimit => {
                let lifted = self.daemon.as_ref().is_some_and(Running::lift_file_limit);
                if lifted {
                    self.limited = None;
                    self.note("RLIMIT_FSIZE lifted (prlimit)");
                } else {
                    // No prlimit: a restart without the limit frees the "disk" too.
                    self.term();
                    self.start();
                }
            }
        }
    }
}

/// Run a schedule from start to verdict. Returns the report (violations empty on success);
/// the rig is returned too, for figures and logs.
pub fn run(s: &Schedule) -> (Report, Rig) {
    let mut rig = Rig::new(s.portal_down_at_start.is_none(), &s.bitrix_extra);
    if s.portal_down_at_start.is_some() {
        rig.note("portal refusing connections from the start");
    }
    if let Some((_, ms)) = s.slow_at_start {
        rig.apply(&Step::Delay(ms));
    }
    match s.disk_full_at_start {
        Some(_) => rig.start_limited(FULL_DISK_BLOCKS),
        None => rig.start(),
    }
    assert!(
        rig.ami.wait_accepted(1, Duration::from_secs(20)),
        "seed {}: the daemon never logged in to AMI; log:\n{}",
        s.seed,
        rig.logs().join("\n---\n")
    );
    let mut traffic = Traffic::start(s.traffic.clone(), rig.ami.clone(), rig.portal.clone());
    let t0 = Instant::now();
    rig.note(format!("traffic started: {:?}", s.traffic));
    for (at, step) in steps(s) {
        let due = t0 + Duration::from_secs_f64(at);
        // A scheduled moment, not a synchronisation: the fault is meant to hit whatever is
        // in flight at that time.
        thread::sleep(due.saturating_duration_since(Instant::now()));
        rig.apply(&step);
    }
    // Heal everything, then let the traffic finish.
    let calls_span = Duration::from_secs_f64(
        (s.traffic.calls as f64 / s.traffic.rate * 1.5 + 20.0 / s.traffic.speed) * 2.0 + 30.0,
    );
    let finished = traffic.wait_done(calls_span);
    rig.gate.set_open(true);
    rig.portal.set_delay(Duration::ZERO);
    rig.ami.set_refusing(false);
    if rig.daemon.as_ref().is_some_and(|d| d.pid().is_some()) && !rig.running() {
        rig.note("daemon had exited on its own");
    }
    if !rig.running() {
        rig.start();
    }
    traffic.release_held();
    let finished = finished && traffic.wait_finished(Duration::from_secs(30));
    rig.note(format!("traffic over (complete: {finished})"));
    settle(&mut rig, &traffic, s.settle);
    let report = invariants::check(
        s.seed,
        rig.t0,
        &traffic.calls(),
        &rig.portal,
        &rig.volatile,
        &rig.ami.connection_log(),
    );
    (report, rig)
}

/// Wait until the daemon has nothing left to send and every call that must reach the portal
/// did (or the deadline).
fn settle(rig: &mut Rig, traffic: &Traffic, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let calls = traffic.calls();
    let conns = rig.ami.connection_log();
    let must: Vec<String> = calls
        .iter()
        .filter(|c| c.expected().is_some() && invariants::in_reach(c, &conns))
        .map(|c| c.external_id.clone())
        .collect();
    let idle = |rig: &Rig| {
        rig.status().is_some_and(|v| {
            v["bitrix24"]["queue_depth"].as_u64() == Some(0)
                && v["active_calls"].as_array().is_some_and(Vec::is_empty)
        })
    };
    // Until every call in reach is finished, or the daemon has nothing to do: `/status` says
    // so, and has for 3 s while the portal was serving nothing (`/status` is refreshed only
    // between two requests, so a request in flight can hide work). Then nothing more will
    // come: a lost call stays lost.
    let mut idle_since: Option<Instant> = None;
    let mut all_done = false;
    while Instant::now() < deadline {
        let finished: std::collections::HashSet<String> = rig
            .portal
            .finished_calls()
            .iter()
            .filter_map(|r| r["EXTERNAL_CALL_ID"].as_str().map(str::to_string))
            .collect();
        // Calls out of reach may still have been registered (seen, then a crash): the
        // portal holding no open call is part of "done", or a vacuous `must` ends the wait
        // before a restarted daemon has finished them.
        all_done =
            must.iter().all(|m| finished.contains(m)) && rig.portal.active_calls().is_empty();
        if all_done {
            break;
        }
        if !rig.portal.busy() && idle(rig) && !rig.portal.busy() {
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= Duration::from_secs(3) {
                break;
            }
        } else {
            idle_since = None;
        }
        // A polling period (the daemon's /status is the condition), not a synchronisation.
        thread::sleep(Duration::from_millis(200));
    }
    // Then the queue drains (late duplicates would show up now).
    let drained = wait_until(deadline.saturating_duration_since(Instant::now()), || {
        let ok = idle(rig);
        if !ok {
            thread::sleep(Duration::from_millis(100));
        }
        ok
    });
    rig.note(format!(
        "settled: every call in reach finished: {all_done}; daemon idle: {drained}"
    ));
}

/// A failure report: the seed, the violations, each offending call's timeline, the rig's
/// notes and the daemon log lines about those calls.
pub fn explain(s: &Schedule, report: &Report, rig: &Rig) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "FAULT SEED {} failed ({} violation(s)); replay with FAULT_SEED={}",
        s.seed,
        report.violations.len(),
        s.seed
    );
    let _ = writeln!(out, "schedule: {s:#?}");
    let _ = writeln!(out, "{}", report.summary);
    for v in report.violations.iter().take(20) {
        let _ = writeln!(out, "- {v}");
    }
    let _ = writeln!(out, "rig timeline:");
    for (t, n) in &rig.notes {
        let _ = writeln!(out, "  {t:7.3}s {n}");
    }
    for tl in report.timelines.iter().take(5) {
        let _ = writeln!(out, "{tl}");
    }
    let logs = rig.logs();
    // The whole logs, kept after the run for a closer look.
    for (i, log) in logs.iter().enumerate() {
        let path =
            std::env::temp_dir().join(format!("callme-fault-seed-{}-run-{}.log", s.seed, i + 1));
        if fs::write(&path, log).is_ok() {
            let _ = writeln!(out, "daemon run {} log: {}", i + 1, path.display());
        }
    }
    let keys: Vec<&String> = report.offenders.iter().take(5).collect();
    for (i, log) in logs.iter().enumerate() {
        let _ = writeln!(
            out,
            "--- daemon run {} (lines about the offending calls, last 40 lines):",
            i + 1
        );
        for l in log
            .lines()
            .filter(|l| keys.iter().any(|k| l.contains(k.as_str())))
            .take(60)
        {
            let _ = writeln!(out, "  {l}");
        }
        let lines: Vec<&str> = log.lines().collect();
        for l in &lines[lines.len().saturating_sub(40)..] {
            let _ = writeln!(out, "  | {l}");
        }
    }
    out
}
