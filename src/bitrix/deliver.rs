//! Delivery: tracker intents → Bitrix24 requests, in order per call, with retries.
//!
//! The tracker speaks in internal numbers; this is where they become Bitrix24 user IDs, where
//! the responsible employee is found **before** the call is registered (registering first and
//! looking up afterwards was a bug of the PHP predecessors), and where each call's `CALL_ID`
//! is kept so later steps can use it.
//!
//! Steps of one call run strictly in order. A retryable failure (network, 5xx,
//! `QUERY_LIMIT_EXCEEDED`, `OPERATION_TIME_LIMIT`) puts only that call on hold with a capped
//! exponential backoff; other calls go on. A permanent failure is logged once with the full
//! Bitrix24 error and the call moves on.
//!
//! This queue lives in memory: a daemon restart loses steps not yet sent.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::api::{self, FinishParams, RegisterParams};
use super::client::Transport;
use super::users::Directory;
use super::Error;
use crate::calls::{Action, Direction, FinishUser, Intent};
use crate::config::{Config, PhoneConfig, RecordingConfig, Responsible};
use crate::{isotime, phone};

/// What delivery needs from the configuration.
#[derive(Clone, Debug)]
pub struct DeliverConfig {
    pub responsible: Responsible,
    /// `(line, internal number)` pairs used when `responsible = static`.
    pub static_responsible: Vec<(String, String)>,
    pub default_user: Option<String>,
    pub crm_create: bool,
    pub add_to_chat: bool,
    pub phone: PhoneConfig,
    /// First retry delay; doubles up to `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// `[recording]`: how `Action::Attach` is delivered.
    pub recording: RecordingConfig,
}

impl DeliverConfig {
    pub fn from_config(cfg: &Config) -> DeliverConfig {
        DeliverConfig {
            responsible: cfg.calls.responsible,
            static_responsible: cfg.calls.static_responsible.clone(),
            default_user: cfg.calls.default_user.clone(),
            crm_create: cfg.calls.crm_create,
            add_to_chat: cfg.calls.add_to_chat,
            phone: cfg.phone.clone(),
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            recording: cfg.recording.clone(),
        }
    }
}

/// Counters for `/status`, `/metrics` and the demo's summary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub sent: u64,
    pub retries: u64,
    pub permanent_failures: u64,
    pub skipped: u64,
    pub last_error: Option<String>,
    /// Steps by (step name: register/show/hide/finish/attachRecord/adopt, outcome:
    /// ok/retry/failed/skipped).
    pub steps: BTreeMap<(String, String), u64>,
    /// Finished calls by (direction: inbound/outbound, STATUS_CODE).
    pub finished: BTreeMap<(String, String), u64>,
}

impl Stats {
    fn count(&mut self, step: &str, outcome: &str) {
        *self
            .steps
            .entry((step.to_string(), outcome.to_string()))
            .or_insert(0) += 1;
    }
}

#[derive(Default)]
struct CallState {
    /// Inbound unless registered outbound or adopted (click-to-call).
    direction: Direction,
    /// When the oldest step still queued for this call was queued.
    oldest: Option<Instant>,
    call_id: Option<String>,
    responsible: Option<u64>,
    steps: VecDeque<Action>,
    attempts: u32,
    not_before: Option<Instant>,
    /// Register failed for good: later steps have no CALL_ID to go to.
    dead: bool,
    finished: bool,
    /// When the attach of this call's recording was first tried, for `[recording] wait`.
    attach_since: Option<Instant>,
}

/// Outcome of one step.
enum Done {
    Ok,
    /// Nothing to send (no Bitrix24 user for that internal number, or nothing to do yet).
    Skipped(String),
    /// Not yet: run this step again after the delay. Not a failure and not a retry (the
    /// attempt count stays), e.g. a recording still being converted.
    Later(Duration),
}

pub struct Deliverer {
    cfg: DeliverConfig,
    transport: Box<dyn Transport>,
    directory: Directory,
    calls: HashMap<String, CallState>,
    /// Calls in arrival order, so older calls are served first.
    order: VecDeque<String>,
    stats: Stats,
}

impl Deliverer {
    pub fn new(cfg: DeliverConfig, transport: Box<dyn Transport>, directory: Directory) -> Self {
        Deliverer {
            cfg,
            transport,
            directory,
            calls: HashMap::new(),
            order: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    pub fn set_directory(&mut self, directory: Directory) {
        self.directory = directory;
    }

    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    pub fn transport(&self) -> &dyn Transport {
        self.transport.as_ref()
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Steps waiting to be sent, all calls together.
    pub fn pending(&self) -> usize {
        self.calls.values().map(|c| c.steps.len()).sum()
    }

    /// How long the oldest undelivered step has been waiting.
    pub fn oldest_pending_age(&self, now: Instant) -> Option<Duration> {
        self.calls
            .values()
            .filter(|c| !c.steps.is_empty())
            .filter_map(|c| c.oldest)
            .min()
            .map(|t| now.saturating_duration_since(t))
    }

    /// Queue an intent behind the earlier steps of the same call.
    pub fn push(&mut self, intent: Intent) {
        if !self.calls.contains_key(&intent.call) {
            self.order.push_back(intent.call.clone());
        }
        let state = self.calls.entry(intent.call).or_default();
        if state.steps.is_empty() {
            state.oldest = Some(Instant::now());
        }
        state.steps.push_back(intent.action);
    }

    /// Send every step that is due at `now`. Returns when the next retry is due, if any step
    /// is waiting for one.
    pub fn run_due(&mut self, now: Instant) -> Option<Instant> {
        let keys: Vec<String> = self.order.iter().cloned().collect();
        for key in keys {
            self.run_call(&key, now);
        }
        // Forget calls that are done.
        let calls = &self.calls;
        let done: Vec<String> = self
            .order
            .iter()
            .filter(|k| {
                calls
                    .get(*k)
                    .is_none_or(|c| c.steps.is_empty() && (c.finished || c.dead))
            })
            .cloned()
            .collect();
        for k in &done {
            self.calls.remove(k);
        }
        self.order.retain(|k| self.calls.contains_key(k));
        self.calls.values().filter_map(|c| c.not_before).min()
    }

    fn run_call(&mut self, key: &str, now: Instant) {
        loop {
            let Some(state) = self.calls.get(key) else {
                return;
            };
            if state.not_before.is_some_and(|t| t > now) {
                return;
            }
            let Some(action) = state.steps.front().cloned() else {
                return;
            };
            let result = self.step(key, &action);
            let state = self.calls.get_mut(key).expect("call state");
            match result {
                Ok(Done::Ok) => {
                    self.stats.sent += 1;
                    self.stats.count(step_name(&action), "ok");
                    state.steps.pop_front();
                    state.oldest = Some(now);
                    state.attempts = 0;
                    state.not_before = None;
                }
                Ok(Done::Skipped(why)) => {
                    log::debug!("{key}: skipped {}: {why}", step_name(&action));
                    self.stats.skipped += 1;
                    self.stats.count(step_name(&action), "skipped");
                    state.steps.pop_front();
                }
                Ok(Done::Later(d)) => {
                    log::debug!("{key}: {} not ready, again in {d:?}", step_name(&action));
                    state.not_before = Some(now + d);
                    return;
                }
                Err(e) if e.is_retryable() => {
                    state.attempts += 1;
                    self.stats.retries += 1;
                    self.stats.count(step_name(&action), "retry");
                    let delay =
                        backoff(self.cfg.retry_min, self.cfg.retry_max, state.attempts, key);
                    // The first failure is worth a warning; the rest would flood the log
                    // during an outage.
                    if state.attempts == 1 {
                        log::warn!("{key}: {} failed, will retry: {e}", step_name(&action));
                    } else {
                        log::debug!(
                            "{key}: {} failed (attempt {}), retry in {delay:?}: {e}",
                            step_name(&action),
                            state.attempts
                        );
                    }
                    self.stats.last_error = Some(e.to_string());
                    state.not_before = Some(now + delay);
                    return;
                }
                Err(e) => {
                    log::error!(
                        "{key}: {} failed permanently, moving on: {e}",
                        step_name(&action)
                    );
                    self.stats.permanent_failures += 1;
                    self.stats.count(step_name(&action), "failed");
                    self.stats.last_error = Some(e.to_string());
                    state.steps.pop_front();
                    state.attempts = 0;
                    if matches!(action, Action::Register { .. }) {
                        let dropped = state.steps.len();
                        state.steps.clear();
                        state.dead = true;
                        if dropped > 0 {
                            log::error!("{key}: not registered, dropping {dropped} later step(s)");
                        }
                        return;
                    }
                }
            }
        }
    }

    fn step(&mut self, key: &str, action: &Action) -> Result<Done, Error> {
        match action {
            Action::Register {
                direction,
                phone: raw,
                line,
                started_ms,
            } => {
                let number = phone::normalize(raw, &self.cfg.phone).unwrap_or_else(|| {
                    // Anonymous or garbled caller ID. Bitrix24 refuses an empty PHONE_NUMBER
                    // ("Unsupported phone number format"), and the call must still be logged.
                    let digits: String = raw.chars().filter(char::is_ascii_digit).collect();
                    if digits.is_empty() {
                        "0".to_string()
                    } else {
                        digits
                    }
                });
                let user_id = match self.responsible_for(&number, line)? {
                    Some(id) => id,
                    None => {
                        return Err(Error::Decode(
                            "nobody to register the call under: the CRM has no responsible \
                             employee for this number and [calls] default_user is not set or \
                             is not a Bitrix24 user"
                                .into(),
                        ))
                    }
                };
                let reg = api::register(
                    self.transport.as_ref(),
                    &RegisterParams {
                        user_id,
                        phone_number: number,
                        call_type: direction.bitrix_type(),
                        call_start_date: isotime::utc(*started_ms),
                        line_number: (!line.is_empty()).then(|| line.clone()),
                        crm_create: self.cfg.crm_create,
                        external_call_id: key.to_string(),
                        show: false,
                    },
                )?;
                log::info!("{key}: registered as {} under user {user_id}", reg.call_id);
                let state = self.calls.get_mut(key).expect("call state");
                state.direction = *direction;
                state.call_id = Some(reg.call_id);
                state.responsible = Some(user_id);
                Ok(Done::Ok)
            }
            Action::Adopt { call_id, ext } => {
                let user = self.directory.user_for(ext);
                let state = self.calls.get_mut(key).expect("call state");
                state.call_id = Some(call_id.clone());
                state.responsible = user;
                state.direction = Direction::Outbound;
                log::info!("{key}: click-to-call {call_id} by {ext}");
                Ok(Done::Ok)
            }
            Action::Show { ext } | Action::Hide { ext } => {
                let Some(call_id) = self.call_id(key) else {
                    return Ok(Done::Skipped("call is not registered".into()));
                };
                let Some(user) = self.directory.user_for(ext) else {
                    return Ok(Done::Skipped(format!("{ext} is not a Bitrix24 user")));
                };
                let t = self.transport.as_ref();
                if matches!(action, Action::Show { .. }) {
                    api::show(t, &call_id, &[user])?;
                } else {
                    api::hide(t, &call_id, &[user])?;
                }
                Ok(Done::Ok)
            }
            Action::Finish {
                user,
                duration,
                status,
            } => {
                let Some(call_id) = self.call_id(key) else {
                    return Ok(Done::Skipped("call is not registered".into()));
                };
                let user_id = self.finish_user(key, user).ok_or_else(|| {
                    Error::Decode(
                        "nobody to finish the call under (set [calls] default_user)".into(),
                    )
                })?;
                let attempts = self.calls.get(key).map_or(0, |c| c.attempts);
                let res = api::finish(
                    self.transport.as_ref(),
                    &FinishParams {
                        call_id: call_id.clone(),
                        user_id,
                        duration: *duration,
                        status_code: status.code().to_string(),
                        add_to_chat: self.cfg.add_to_chat,
                        failed_reason: None,
                    },
                );
                match res {
                    // An earlier attempt timed out after Bitrix24 had already finished the
                    // call: "not found" now means it is done.
                    Err(e) if e.is_call_not_found() && attempts > 0 => {
                        log::info!("{key}: finish already applied by an earlier attempt");
                    }
                    other => other?,
                }
                log::info!(
                    "{key}: finished {call_id} under user {user_id}, status {status}, {duration} s"
                );
                if let Some(state) = self.calls.get_mut(key) {
                    state.finished = true;
                }
                let direction = self
                    .calls
                    .get(key)
                    .map_or("inbound", |c| c.direction.as_str());
                *self
                    .stats
                    .finished
                    .entry((direction.to_string(), status.code().to_string()))
                    .or_insert(0) += 1;
                Ok(Done::Ok)
            }
            Action::Attach { path } => {
                let Some(call_id) = self.call_id(key) else {
                    return Ok(Done::Skipped("call is not registered".into()));
                };
                let since = match self.calls.get_mut(key) {
                    Some(state) => *state.attach_since.get_or_insert_with(Instant::now),
                    None => Instant::now(),
                };
                let step = super::record::attach(
                    &self.cfg.recording,
                    self.transport.as_ref(),
                    &call_id,
                    path,
                    since.elapsed(),
                )?;
                match step {
                    super::record::Step::Attached(how) => {
                        log::info!("{key}: recording attached to {call_id}: {how}");
                        Ok(Done::Ok)
                    }
                    super::record::Step::Later(d) => Ok(Done::Later(d)),
                    super::record::Step::Skipped { why, outcome } => {
                        // Why nothing was sent, beside the general "skipped" count.
                        self.stats.count("attachRecord", outcome);
                        Ok(Done::Skipped(why))
                    }
                }
            }
        }
    }

    fn call_id(&self, key: &str) -> Option<String> {
        self.calls.get(key).and_then(|c| c.call_id.clone())
    }

    /// CRM responsible (contact → company → lead), else the static line map, else the default
    /// user. A CRM lookup that fails with a retryable error is retried: registering under a
    /// fallback user because Bitrix24 hiccuped would put the card in front of the wrong person.
    fn responsible_for(&self, number: &str, line: &str) -> Result<Option<u64>, Error> {
        if self.cfg.responsible == Responsible::Crm {
            match api::responsible_for(self.transport.as_ref(), number) {
                Ok(Some(id)) => return Ok(Some(id)),
                Ok(None) => {}
                Err(e) if e.is_retryable() => return Err(e),
                Err(e) => log::warn!("CRM lookup for {number} failed, using fallbacks: {e}"),
            }
        }
        let by_line = self
            .cfg
            .static_responsible
            .iter()
            .find(|(l, _)| l == line)
            .and_then(|(_, ext)| self.directory.user_for(ext));
        Ok(by_line.or_else(|| self.default_user()))
    }

    fn default_user(&self) -> Option<u64> {
        self.cfg
            .default_user
            .as_deref()
            .and_then(|ext| self.directory.user_for(ext))
    }

    fn finish_user(&self, key: &str, user: &FinishUser) -> Option<u64> {
        let responsible = self.calls.get(key).and_then(|c| c.responsible);
        match user {
            FinishUser::Employee(ext) => self
                .directory
                .user_for(ext)
                .or(responsible)
                .or_else(|| self.default_user()),
            FinishUser::Responsible => responsible.or_else(|| self.default_user()),
            FinishUser::Default => self.default_user().or(responsible),
        }
    }
}

fn step_name(a: &Action) -> &'static str {
    match a {
        Action::Register { .. } => "register",
        Action::Adopt { .. } => "adopt",
        Action::Show { .. } => "show",
        Action::Hide { .. } => "hide",
        Action::Finish { .. } => "finish",
        Action::Attach { .. } => "attachRecord",
    }
}

/// `min · 2^(attempt-1)`, capped at `max`, with ±20 % jitter derived from the call key and the
/// attempt so that calls failing together do not retry in lockstep.
fn backoff(min: Duration, max: Duration, attempt: u32, key: &str) -> Duration {
    let exp = min.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let base = exp.min(max);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes().chain(attempt.to_le_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let permille = 800 + (h % 401); // 0.8 ..= 1.2
    base.mul_f64(permille as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_jitters() {
        let min = Duration::from_secs(1);
        let max = Duration::from_secs(60);
        let b1 = backoff(min, max, 1, "k");
        assert!(b1 >= Duration::from_millis(800) && b1 <= Duration::from_millis(1200));
        let b3 = backoff(min, max, 3, "k");
        assert!(b3 >= Duration::from_millis(3200) && b3 <= Duration::from_millis(4800));
        let b30 = backoff(min, max, 30, "k");
        assert!(b30 <= Duration::from_secs(72) && b30 >= Duration::from_secs(48));
        assert_ne!(backoff(min, max, 5, "a"), backoff(min, max, 5, "b"));
    }
}
