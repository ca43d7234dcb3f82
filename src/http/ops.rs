//! `GET /healthz`, `/status`, `/metrics`: what an operator (or systemd, or Prometheus) needs
//! to see whether calls are flowing, without reading the journal.
//!
//! Nothing here prints a secret: the values come from counters and call summaries, and the
//! free-text error strings are scrubbed of the configured secrets before they leave.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{header, reply, Ctx, Reply};
use crate::ami::Stats as AmiStats;
use crate::calls::CallSummary;
use crate::clock::now_ms;
use crate::config::Config;
use crate::context::DeliveryView;
use crate::isotime;
use crate::listener_watch::{ListenerStats, DOWN_AFTER};

/// The state thread stamps `state_alive_ms` at least once a second; this much silence means
/// it is stuck.
const STATE_STALE: Duration = Duration::from_secs(5);

/// Everything the three endpoints show, read once per request.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub uptime: Duration,
    pub ami: AmiStats,
    /// As the state thread last saw it (`Health::ami_logged_in`).
    pub ami_logged_in: bool,
    pub ami_last_error: Option<String>,
    /// Milliseconds since the state thread was last seen alive; `None` if never.
    pub state_silent_ms: Option<u64>,
    pub calls: Vec<CallSummary>,
    pub delivery: DeliveryView,
    pub users: usize,
    pub users_age: Option<Duration>,
    pub clicks: Vec<(&'static str, u64)>,
    /// Bitrix24 refuses our credentials (`Health::auth_error`).
    pub auth_error: Option<String>,
    /// Milliseconds since the delivery thread was last seen alive; `None` if never.
    pub delivery_silent_ms: Option<u64>,
    /// How much delivery silence is a stall (`Health::delivery_limit_ms`); 0: not watched.
    pub delivery_limit_ms: u64,
    /// Why the state dir's files cannot be written (`Health::disk`).
    pub disk_problem: Option<String>,
    /// `[state] dir`, for `/status`.
    pub state_dir: String,
    /// REST requests by (method, answer class), from `Health::rest`.
    pub rest: Vec<((String, &'static str), u64)>,
    /// App mode only: the OAuth token's state.
    pub app: Option<AppView>,
    /// Originates the toll-fraud guard refused, by reason.
    pub refused: Vec<(&'static str, u64)>,
    /// The HTTP listener (`Health::listener`); `None` when not running.
    pub listener: Option<ListenerStats>,
}

/// What `/metrics` shows of app mode's OAuth tokens.
#[derive(Debug, Clone, Default)]
pub struct AppView {
    /// Unix seconds when the access token expires; `None` before the install.
    pub expires: Option<u64>,
    pub refreshed: u64,
    pub refresh_failed: u64,
    pub refresh_refused: u64,
}

fn snapshot(ctx: &Ctx) -> Snapshot {
    let s = &ctx.daemon;
    let h = &s.health;
    let alive = h.state_alive_ms.load(Ordering::Relaxed);
    let delivery_alive = h.delivery_alive_ms.load(Ordering::Relaxed);
    let dir = s.directory.get();
    Snapshot {
        uptime: ctx.started.elapsed(),
        ami: s.ami.stats(),
        ami_logged_in: h.ami_logged_in.load(Ordering::Relaxed),
        ami_last_error: s.ami.last_error(),
        state_silent_ms: (alive > 0).then(|| now_ms().saturating_sub(alive)),
        calls: h.active_calls.lock().map(|c| c.clone()).unwrap_or_default(),
        delivery: h.delivery.lock().map(|d| d.clone()).unwrap_or_default(),
        users: dir.as_ref().map_or(0, |d| d.len()),
        users_age: dir
            .as_ref()
            .map(|d| Instant::now().saturating_duration_since(d.loaded_at())),
        clicks: ctx
            .clicks
            .lock()
            .map(|c| c.iter().map(|(k, v)| (*k, *v)).collect())
            .unwrap_or_default(),
        auth_error: h.auth_error.lock().map(|e| e.clone()).unwrap_or_default(),
        delivery_silent_ms: (delivery_alive > 0).then(|| now_ms().saturating_sub(delivery_alive)),
        delivery_limit_ms: h.delivery_limit_ms.load(Ordering::Relaxed),
        disk_problem: h.disk.problem(),
        state_dir: s.config.state.dir.display().to_string(),
        rest: h.rest.snapshot(),
        app: s.app.as_ref().map(|a| {
            let c = a.refresh_counts();
            AppView {
                expires: a.expires(),
                refreshed: c.ok.load(Ordering::Relaxed),
                refresh_failed: c.failed.load(Ordering::Relaxed),
                refresh_refused: c.refused.load(Ordering::Relaxed),
            }
        }),
        refused: ctx
            .refused
            .lock()
            .map(|c| c.iter().map(|(k, v)| (*k, *v)).collect())
            .unwrap_or_default(),
        listener: h.listener.stats(),
    }
}

/// 200 `ok` when AMI is logged in, the state thread is alive and the listener accepts
/// connections; 503 with the reason when `reason` (the ops listener), a bare `unhealthy`
/// otherwise: the public listener must not tell strangers that the app is not installed
/// yet, or why Bitrix24 refuses us.
pub(super) fn healthz(ctx: &Ctx, reason: bool) -> Reply {
    match health_problem(&snapshot(ctx)) {
        None => reply(200, "ok\n"),
        Some(why) if reason => reply(503, &format!("{why}\n")),
        Some(_) => reply(503, "unhealthy\n"),
    }
}

fn health_problem(s: &Snapshot) -> Option<String> {
    // First: calls cannot reach Bitrix24 at all until an operator acts.
    if let Some(e) = &s.auth_error {
        return Some(format!("Bitrix24 authorization: {e}"));
    }
    if let Some(down) = s.listener.and_then(|l| l.failing_for) {
        if down >= DOWN_AFTER {
            return Some(format!(
                "HTTP listener cannot accept connections for {} s",
                down.as_secs()
            ));
        }
    }
    if !s.ami_logged_in {
        return Some("AMI is not logged in".to_string());
    }
    match s.state_silent_ms {
        None => return Some("state thread has not started".to_string()),
        Some(ms) if ms > STATE_STALE.as_millis() as u64 => {
            return Some(format!("state thread silent for {ms} ms"))
        }
        Some(_) => {}
    }
    // Steps would pile up unsent: a dead or stuck delivery thread.
    if s.delivery_limit_ms > 0 {
        match s.delivery_silent_ms {
            None => return Some("delivery thread has not started".to_string()),
            Some(ms) if ms > s.delivery_limit_ms => {
                return Some(format!("delivery thread silent for {ms} ms"))
            }
            Some(_) => {}
        }
    }
    // Calls still flow, but a restart now would lose what is only in memory.
    s.disk_problem
        .as_ref()
        .map(|p| format!("state dir {}: {p}", s.state_dir))
}

pub(super) fn status(ctx: &Ctx) -> Reply {
    let text = serde_json::to_string_pretty(&status_json(&snapshot(ctx))).unwrap_or_default();
    let text = scrub(text, &ctx.daemon.config);
    reply(200, &format!("{text}\n")).with_header(header("Content-Type", "application/json"))
}

fn status_json(s: &Snapshot) -> Value {
    let d = &s.delivery;
    let calls: Vec<Value> = s
        .calls
        .iter()
        .map(|c| {
            json!({
                "call": c.call,
                "direction": c.direction.as_str(),
                "number": c.phone,
                "line": c.line,
                "employee": c.employee,
                "started": isotime::utc(c.started_ms),
            })
        })
        .collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": s.uptime.as_secs(),
        "healthy": health_problem(s).is_none(),
        "ami": {
            "logged_in": s.ami_logged_in,
            "events_read": s.ami.events,
            "events_dropped": s.ami.dropped,
            "reconnects": s.ami.reconnects,
            "last_error": s.ami_last_error,
        },
        "state_thread_silent_ms": s.state_silent_ms,
        "delivery_thread_silent_ms": s.delivery_silent_ms,
        "state_dir": {
            "path": s.state_dir,
            "writable": s.disk_problem.is_none(),
            "problem": s.disk_problem,
        },
        "active_calls": calls,
        "bitrix24": {
            "queue_depth": d.pending,
            "oldest_pending_seconds": d.oldest_pending_age.map(|a| a.as_secs_f64()),
            "sent": d.stats.sent,
            "retries": d.stats.retries,
            "permanent_failures": d.stats.permanent_failures,
            "skipped": d.stats.skipped,
            "last_error": d.stats.last_error,
            "auth_error": s.auth_error,
        },
        "users": {
            "loaded": s.users_age.is_some(),
            "count": s.users,
            "age_seconds": s.users_age.map(|a| a.as_secs()),
            // Calls whose next step needs the directory and waits for its first load.
            "calls_waiting": d.stats.waiting_for_directory,
        },
        "click_to_call": s.clicks.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "originate_refused": s.refused.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "http": s.listener.map(|l| json!({
            "connections": l.connections,
            "rejected_connections": l.rejected,
            "accept_errors": l.accept_errors,
            "accept_failing_seconds": l.failing_for.map(|d| d.as_secs_f64()),
        })),
    })
}

/// Replace every configured secret that might have slipped into a free-text error string.
/// Secrets shorter than 6 characters are not searched for: replacing them would garble
/// ordinary text, and such a secret is no secret anyway.
fn scrub(mut text: String, cfg: &Config) -> String {
    let mut code = None;
    if let Some(w) = &cfg.bitrix24.webhook_url {
        let url = w.expose();
        text = text.replace(url, &w.redacted());
        code = url.trim_end_matches('/').rsplit('/').next();
    }
    let secrets = [
        code,
        Some(cfg.asterisk.secret.expose()),
        cfg.bitrix24.app_token.as_ref().map(|t| t.expose()),
        cfg.bitrix24.app.as_ref().map(|a| a.client_secret.expose()),
    ];
    for s in secrets.into_iter().flatten() {
        if s.len() >= 6 {
            text = text.replace(s, "***");
        }
    }
    text
}

pub(super) fn metrics(ctx: &Ctx) -> Reply {
    reply(200, &metrics_text(&snapshot(ctx))).with_header(header(
        "Content-Type",
        "text/plain; version=0.0.4; charset=utf-8",
    ))
}

/// A label value in Prometheus text format: `\`, `"` and newline escaped.
fn label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The Prometheus text exposition (format 0.0.4).
pub fn metrics_text(s: &Snapshot) -> String {
    fn head(out: &mut String, name: &str, kind: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
    let mut out = String::new();
    let d = &s.delivery;
    head(
        &mut out,
        "callme_up_seconds",
        "gauge",
        "Seconds since the daemon started.",
    );
    let _ = writeln!(out, "callme_up_seconds {}", s.uptime.as_secs());
    head(
        &mut out,
        "callme_ami_up",
        "gauge",
        "1 when logged in to AMI.",
    );
    let _ = writeln!(out, "callme_ami_up {}", u8::from(s.ami_logged_in));
    head(
        &mut out,
        "callme_ami_events_total",
        "counter",
        "AMI events read.",
    );
    let _ = writeln!(out, "callme_ami_events_total {}", s.ami.events);
    head(
        &mut out,
        "callme_ami_events_dropped_total",
        "counter",
        "AMI messages dropped for being over the size cap.",
    );
    let _ = writeln!(out, "callme_ami_events_dropped_total {}", s.ami.dropped);
    head(
        &mut out,
        "callme_ami_reconnects_total",
        "counter",
        "AMI connection attempts after the first.",
    );
    let _ = writeln!(out, "callme_ami_reconnects_total {}", s.ami.reconnects);
    head(
        &mut out,
        "callme_active_calls",
        "gauge",
        "Calls being tracked now.",
    );
    let _ = writeln!(out, "callme_active_calls {}", s.calls.len());
    head(
        &mut out,
        "callme_calls_finished_total",
        "counter",
        "Calls finished in Bitrix24, by direction and STATUS_CODE.",
    );
    for ((dir, status), n) in &d.stats.finished {
        let _ = writeln!(
            out,
            "callme_calls_finished_total{{direction=\"{}\",status=\"{}\"}} {n}",
            label(dir),
            label(status)
        );
    }
    head(
        &mut out,
        "callme_bitrix24_steps_total",
        "counter",
        "Bitrix24 steps by step and outcome.",
    );
    for ((step, outcome), n) in &d.stats.steps {
        let _ = writeln!(
            out,
            "callme_bitrix24_steps_total{{step=\"{}\",outcome=\"{}\"}} {n}",
            label(step),
            label(outcome)
        );
    }
    head(
        &mut out,
        "callme_bitrix24_retries_total",
        "counter",
        "Bitrix24 steps that failed and will be tried again.",
    );
    let _ = writeln!(out, "callme_bitrix24_retries_total {}", d.stats.retries);
    head(
        &mut out,
        "callme_bitrix24_permanent_failures_total",
        "counter",
        "Bitrix24 steps given up on (logged with the full error).",
    );
    let _ = writeln!(
        out,
        "callme_bitrix24_permanent_failures_total {}",
        d.stats.permanent_failures
    );
    head(
        &mut out,
        "callme_bitrix24_queue_depth",
        "gauge",
        "Bitrix24 steps waiting to be sent.",
    );
    let _ = writeln!(out, "callme_bitrix24_queue_depth {}", d.pending);
    head(
        &mut out,
        "callme_bitrix24_oldest_pending_seconds",
        "gauge",
        "Age of the oldest Bitrix24 step waiting (0 when none).",
    );
    let _ = writeln!(
        out,
        "callme_bitrix24_oldest_pending_seconds {}",
        d.oldest_pending_age.map_or(0.0, |a| a.as_secs_f64())
    );
    head(
        &mut out,
        "callme_bitrix24_users",
        "gauge",
        "Bitrix24 employees with an internal number.",
    );
    let _ = writeln!(out, "callme_bitrix24_users {}", s.users);
    head(
        &mut out,
        "callme_bitrix24_users_waiting_calls",
        "gauge",
        "Calls whose next Bitrix24 step waits for the first load of the user directory.",
    );
    let _ = writeln!(
        out,
        "callme_bitrix24_users_waiting_calls {}",
        d.stats.waiting_for_directory
    );
    head(
        &mut out,
        "callme_bitrix24_requests_total",
        "counter",
        "REST requests to Bitrix24 by method and answer: 2xx, 429, 503, 4xx, 5xx, other; none = no HTTP answer (network, timeout, or app mode unable to send).",
    );
    for ((method, class), n) in &s.rest {
        let _ = writeln!(
            out,
            "callme_bitrix24_requests_total{{method=\"{}\",status=\"{class}\"}} {n}",
            label(method)
        );
    }
    head(
        &mut out,
        "callme_bitrix24_auth_error",
        "gauge",
        "1 while Bitrix24 refuses our credentials (see /healthz for why).",
    );
    let _ = writeln!(
        out,
        "callme_bitrix24_auth_error {}",
        u8::from(s.auth_error.is_some())
    );
    if let Some(app) = &s.app {
        head(
            &mut out,
            "callme_bitrix24_token_refreshes_total",
            "counter",
            "App mode: OAuth token refreshes by outcome (ok, failed = will retry, refused = reinstall needed).",
        );
        for (outcome, n) in [
            ("ok", app.refreshed),
            ("failed", app.refresh_failed),
            ("refused", app.refresh_refused),
        ] {
            let _ = writeln!(
                out,
                "callme_bitrix24_token_refreshes_total{{outcome=\"{outcome}\"}} {n}"
            );
        }
        if let Some(expires) = app.expires {
            head(
                &mut out,
                "callme_bitrix24_token_expires_timestamp_seconds",
                "gauge",
                "App mode: Unix time when the current access token expires.",
            );
            let _ = writeln!(
                out,
                "callme_bitrix24_token_expires_timestamp_seconds {expires}"
            );
        }
    }
    let latency = &d.stats.card_latency;
    head(
        &mut out,
        "callme_card_latency_seconds",
        "histogram",
        "From the phone starting to ring (the tracker's Show) to Bitrix24 accepting the card.",
    );
    for (le, n) in latency.cumulative() {
        let _ = writeln!(out, "callme_card_latency_seconds_bucket{{le=\"{le}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "callme_card_latency_seconds_bucket{{le=\"+Inf\"}} {}\ncallme_card_latency_seconds_sum {}\ncallme_card_latency_seconds_count {}",
        latency.count(),
        latency.sum_seconds(),
        latency.count()
    );
    head(
        &mut out,
        "callme_click_to_call_total",
        "counter",
        "Click-to-call events by outcome.",
    );
    for (outcome, n) in &s.clicks {
        let _ = writeln!(
            out,
            "callme_click_to_call_total{{outcome=\"{}\"}} {n}",
            label(outcome)
        );
    }
    head(
        &mut out,
        "callme_originate_refused_total",
        "counter",
        "Originates the toll-fraud guard refused ([originate] allow, deny, rate limits), by reason.",
    );
    // Every reason is always printed, so an alert on the rate works from the first refusal.
    for reason in REFUSAL_REASONS {
        let n = s
            .refused
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n);
        let _ = writeln!(
            out,
            "callme_originate_refused_total{{reason=\"{reason}\"}} {n}"
        );
    }
    let l = s.listener.unwrap_or_default();
    head(
        &mut out,
        "callme_http_connections",
        "gauge",
        "HTTP connections open now ([http] max_connections caps them).",
    );
    let _ = writeln!(out, "callme_http_connections {}", l.connections);
    head(
        &mut out,
        "callme_http_rejected_connections_total",
        "counter",
        "HTTP connections closed at once because max_connections were open.",
    );
    let _ = writeln!(out, "callme_http_rejected_connections_total {}", l.rejected);
    head(
        &mut out,
        "callme_http_accept_errors_total",
        "counter",
        "Failed accepts on the HTTP listener (e.g. out of open files).",
    );
    let _ = writeln!(out, "callme_http_accept_errors_total {}", l.accept_errors);
    out
}

/// The `reason` labels of `callme_originate_refused_total` (`dial_policy::Refusal::reason`).
const REFUSAL_REASONS: [&str; 3] = ["deny", "not_allowed", "rate"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_reasons() {
        let mut s = Snapshot::default();
        assert_eq!(health_problem(&s).as_deref(), Some("AMI is not logged in"));
        s.ami_logged_in = true;
        assert_eq!(
            health_problem(&s).as_deref(),
            Some("state thread has not started")
        );
        s.state_silent_ms = Some(6000);
        assert_eq!(
            health_problem(&s).as_deref(),
            Some("state thread silent for 6000 ms")
        );
        s.state_silent_ms = Some(900);
        assert_eq!(health_problem(&s), None);
        let failing = |secs| ListenerStats {
            failing_for: Some(Duration::from_secs(secs)),
            ..ListenerStats::default()
        };
        s.listener = Some(failing(2));
        assert_eq!(health_problem(&s), None, "a short accept hiccup");
        s.listener = Some(failing(7));
        assert_eq!(
            health_problem(&s).as_deref(),
            Some("HTTP listener cannot accept connections for 7 s")
        );
        s.listener = None;
        s.delivery_limit_ms = 70_000;
        assert_eq!(
            health_problem(&s).as_deref(),
            Some("delivery thread has not started")
        );
        s.delivery_silent_ms = Some(70_001);
        assert_eq!(
            health_problem(&s).as_deref(),
            Some("delivery thread silent for 70001 ms")
        );
        s.delivery_silent_ms = Some(1000);
        assert_eq!(health_problem(&s), None);
        s.state_dir = "/var/lib/callme".into();
        s.disk_problem = Some("outbox: cannot write x: File too large".into());
        assert_eq!(
            health_problem(&s).as_deref(),
            Some("state dir /var/lib/callme: outbox: cannot write x: File too large")
        );
    }

    #[test]
    fn metrics_escape_labels_and_name_every_metric() {
        let mut s = Snapshot::default();
        s.delivery
            .stats
            .steps
            .insert(("fin\"ish\\".into(), "o\nk".into()), 3);
        s.delivery
            .stats
            .finished
            .insert(("inbound".into(), "200".into()), 2);
        s.clicks = vec![("sent", 1)];
        let text = metrics_text(&s);
        assert!(
            text.contains(
                "callme_bitrix24_steps_total{step=\"fin\\\"ish\\\\\",outcome=\"o\\nk\"} 3"
            ),
            "{text}"
        );
        assert!(
            text.contains("callme_calls_finished_total{direction=\"inbound\",status=\"200\"} 2")
        );
        assert!(text.contains("callme_click_to_call_total{outcome=\"sent\"} 1"));
        assert!(text.contains("callme_originate_refused_total{reason=\"rate\"} 0"));
        s.refused = vec![("deny", 2)];
        let text = metrics_text(&s);
        assert!(text.contains("callme_originate_refused_total{reason=\"deny\"} 2"));
        assert!(text.contains("callme_originate_refused_total{reason=\"not_allowed\"} 0"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let sample = line.split(['{', ' ']).next().unwrap();
            // A histogram's samples carry suffixes; HELP and TYPE name the histogram.
            let name = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|sfx| {
                    sample
                        .strip_suffix(sfx)
                        .filter(|base| text.contains(&format!("# TYPE {base} histogram")))
                })
                .unwrap_or(sample);
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
        }
        // Webhook mode: no token metrics.
        assert!(!text.contains("callme_bitrix24_token_"), "{text}");
        assert!(text.contains("callme_bitrix24_auth_error 0\n"));
    }

    #[test]
    fn card_latency_histogram_and_app_token_metrics() {
        let mut s = Snapshot::default();
        for ms in [120, 800, 800, 4_000, 700_000] {
            s.delivery.stats.card_latency.observe_ms(ms);
        }
        s.rest = vec![(("batch".into(), "503"), 2)];
        s.delivery.stats.retries = 7;
        s.delivery.stats.permanent_failures = 1;
        s.auth_error = Some("refused".into());
        s.app = Some(AppView {
            expires: Some(1_700_000_000),
            refreshed: 3,
            refresh_failed: 1,
            refresh_refused: 0,
        });
        let text = metrics_text(&s);
        for want in [
            "# TYPE callme_card_latency_seconds histogram\n",
            "callme_card_latency_seconds_bucket{le=\"0.25\"} 1\n",
            "callme_card_latency_seconds_bucket{le=\"1\"} 3\n",
            "callme_card_latency_seconds_bucket{le=\"5\"} 4\n",
            "callme_card_latency_seconds_bucket{le=\"300\"} 4\n",
            "callme_card_latency_seconds_bucket{le=\"+Inf\"} 5\n",
            "callme_card_latency_seconds_sum 705.72\n",
            "callme_card_latency_seconds_count 5\n",
            "callme_bitrix24_requests_total{method=\"batch\",status=\"503\"} 2\n",
            "callme_bitrix24_auth_error 1\n",
            "callme_bitrix24_retries_total 7\n",
            "callme_bitrix24_permanent_failures_total 1\n",
            "callme_bitrix24_token_refreshes_total{outcome=\"ok\"} 3\n",
            "callme_bitrix24_token_refreshes_total{outcome=\"failed\"} 1\n",
            "callme_bitrix24_token_refreshes_total{outcome=\"refused\"} 0\n",
            "callme_bitrix24_token_expires_timestamp_seconds 1700000000\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }

    #[test]
    fn scrub_removes_configured_secrets() {
        let mut cfg = Config::demo();
        cfg.bitrix24.app_token = Some(crate::config::Secret::new("tok-123456"));
        cfg.asterisk.secret = crate::config::Secret::new("amisecret");
        let text = format!(
            "{} / tok-123456 / amisecret / demo",
            cfg.bitrix24.webhook_url.as_ref().unwrap().expose()
        );
        let out = scrub(text, &cfg);
        assert_eq!(out, "https://demo.invalid/rest/1/***/ / *** / *** / demo");
    }
}
