//! What must hold after a run, checked on what the fake portal recorded against what the
//! load generator knows about each call ([`super::traffic::CallRecord`]).
//!
//! A call is **in reach** when the daemon had the chance to see it: one of its channels was
//! listed by a `CoreShowChannels` answer, or its first event was written to an AMI connection
//! that stayed open for [`MARGIN`] afterwards (a `kill -9` right after a write can lose what the
//! kernel buffered). A call that began and ended while nobody was logged in is out of AMI's
//! reach: it may be missing, but if it shows up it must be whole.
//!
//! For every call in reach that belongs in Bitrix24:
//! - registered once (one `CALL_ID` for its `EXTERNAL_CALL_ID`; a repeat answered with the same
//!   `CALL_ID` is harmless) under the right user (the CRM contact's responsible, else the
//!   default user);
//! - finished once;
//! - steps in order: register < every show/hide < finish < attach;
//! - cards shown only to phones that rang (a card is a `show` for each user it names, or a
//!   register with `SHOW=1` for the user it registers the call under);
//! - a show is dropped only together with its hide: every hide the portal ran follows a show
//!   for the same user on the same call. The daemon drops a show (and then its hide) when the
//!   phone stopped ringing before the show could be sent (issue #20: a card after the ring is
//!   worse than none), so a phone that rang may have no card at all, but never a hide alone;
//! - when the daemon saw the whole call and a phone that rang answered it, that phone had its
//!   card (answering ends a ring without a hide, so that show is never dropped);
//! - no card left open: every show that reached the portal was followed by a hide for that
//!   user or by the call's finish under that user (the fake portal's open cards);
//! - when the daemon saw the whole call: finished by the right user with the right status.
//!
//! Internal calls never reach the portal, and the portal holds no call nobody made.
//!
//! A call is **volatile** when one of its events reached the daemon in a span where its state
//! dir refused writes and the daemon then stopped (killed or terminated) before the dir could
//! be written again. What the daemon learnt in that span lived in memory only; `/healthz`
//! said 503 "state dir" the whole time and docs/outbox.md says a restart then loses it. Such a
//! call is exempt from "card left open" and "hide without a show" (counted in the summary);
//! unless a `CoreShowChannels`
//! listing after the span showed it still up (then the restarted daemon adopts it), it is
//! exempt from "never registered" and "never finished" too. It is held to every other rule.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::fake_ami::ConnRecord;
use super::fake_bitrix::{FakeBitrix, Recorded};
use super::traffic::{CallRecord, Delivery};

/// How long a connection must stay open after a write for the daemon to have read it.
pub const MARGIN: Duration = Duration::from_secs(2);

/// The verdict of one run.
#[derive(Debug, Default)]
pub struct Report {
    pub violations: Vec<String>,
    /// EXTERNAL_CALL_IDs and CALL_IDs of the offending calls, for grepping logs.
    pub offenders: Vec<String>,
    /// One timeline per offending call.
    pub timelines: Vec<String>,
    /// Counts, always filled: calls generated, in reach, registered, finished.
    pub summary: String,
    /// Calls that must be in Bitrix24 and are not (never registered or never finished).
    pub lost: usize,
    /// Calls in reach.
    pub in_reach: usize,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

fn seen_on(conn: usize, at: Instant, conns: &[ConnRecord]) -> bool {
    conns.get(conn.wrapping_sub(1)).is_some_and(|c| {
        c.closed
            .is_none_or(|closed| closed.saturating_duration_since(at) >= MARGIN)
    })
}

fn seen(d: &Delivery, conns: &[ConnRecord]) -> bool {
    d.conn.is_some_and(|c| seen_on(c, d.at, conns))
}

/// The daemon had the chance to see this call (see the module docs).
pub fn in_reach(c: &CallRecord, conns: &[ConnRecord]) -> bool {
    c.first_event().is_some_and(|d| seen(&d, conns))
        || c.listed_at.iter().any(|&t| {
            conns.iter().any(|k| {
                k.logged_in.is_some_and(|l| l <= t)
                    && k.closed
                        .is_none_or(|closed| closed.saturating_duration_since(t) >= MARGIN)
            })
        })
}

/// The daemon saw every event of the call.
pub fn fully_seen(c: &CallRecord, conns: &[ConnRecord]) -> bool {
    c.ended() && c.events.iter().all(|(_, d)| seen(d, conns))
}

/// Every user a show or hide names: `USER_ID` is one user or a list of them (§4.1).
fn users_param(p: &Value) -> Vec<u64> {
    match p.get("USER_ID").or_else(|| p.get("user_id")) {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| user_param(&serde_json::json!({ "USER_ID": x })))
            .collect(),
        Some(Value::Object(o)) => o
            .values()
            .filter_map(|x| user_param(&serde_json::json!({ "USER_ID": x })))
            .collect(),
        _ => user_param(p).into_iter().collect(),
    }
}

/// A register that put the card up itself (`SHOW` missing or truthy: the default is 1).
fn shows_itself(p: &Value) -> bool {
    match p.get("SHOW") {
        None => true,
        Some(Value::String(s)) => !s.is_empty() && s != "0",
        Some(Value::Number(n)) => n.as_u64() != Some(0),
        Some(Value::Bool(b)) => *b,
        Some(_) => false,
    }
}

fn user_param(p: &Value) -> Option<u64> {
    let v = p.get("USER_ID").or_else(|| p.get("user_id"))?;
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        Value::Array(a) => a
            .first()
            .and_then(|x| user_param(&serde_json::json!({ "USER_ID": x }))),
        Value::Object(o) => o
            .values()
            .next()
            .and_then(|x| user_param(&serde_json::json!({ "USER_ID": x }))),
        _ => None,
    }
}

fn param<'a>(p: &'a Value, key: &str) -> Option<&'a str> {
    p.as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .and_then(|(_, v)| v.as_str())
}

/// Check every invariant. `seed` only labels the report; timelines count seconds from `base`.
pub fn check(
    seed: u64,
    base: Instant,
    calls: &[CallRecord],
    portal: &FakeBitrix,
    volatile: &[(Instant, Instant)],
    conns: &[ConnRecord],
) -> Report {
    let commands = portal.commands();
    let regs = portal.registrations();
    let finished = portal.finished_calls();
    let cards = portal.open_cards();

    // CALL_ID → command indexes of its steps; EXTERNAL_CALL_ID → registrations.
    let mut by_call_id: HashMap<&str, Vec<(usize, &Recorded)>> = HashMap::new();
    for (i, r) in commands.iter().enumerate() {
        if let Some(id) = param(&r.params, "CALL_ID") {
            by_call_id.entry(id).or_default().push((i, r));
        }
    }
    let mut by_ext: HashMap<&str, Vec<&super::fake_bitrix::Registration>> = HashMap::new();
    for r in &regs {
        if let Some(e) = r.external_call_id.as_deref() {
            by_ext.entry(e).or_default().push(r);
        }
    }

    let mut report = Report::default();
    let mut volatile_n = 0;
    let mut known_ext = BTreeSet::new();
    let (mut registered, mut finished_n) = (0, 0);
    for c in calls {
        known_ext.insert(c.external_id.as_str());
        // The end of the last volatile span the call had an event in.
        let span_end = c
            .events
            .iter()
            .filter_map(|(_, d)| {
                volatile
                    .iter()
                    .find(|&&(a, b)| d.at >= a && d.at <= b)
                    .map(|&(_, b)| b)
            })
            .max();
        // Its cards shown in the span are forgotten; but a call still up after the restart
        // is listed by CoreShowChannels and adopted, so it must still be registered and
        // finished.
        let cards_forgotten = span_end.is_some();
        let lost_in_memory = span_end.is_some_and(|end| c.listed_at.iter().all(|&t| t <= end));
        volatile_n += usize::from(cards_forgotten && c.expected().is_some());
        let reach = in_reach(c, conns) && !lost_in_memory;
        let whole = fully_seen(c, conns);
        let mut bad: Vec<String> = Vec::new();
        let rs = by_ext
            .get(c.external_id.as_str())
            .cloned()
            .unwrap_or_default();
        let call_ids: BTreeSet<&str> = rs.iter().map(|r| r.call_id.as_str()).collect();
        let Some(exp) = c.expected() else {
            if !rs.is_empty() {
                bad.push(format!(
                    "internal call registered in Bitrix24 as {call_ids:?}"
                ));
            }
            report.add(base, c, bad, &rs, &by_call_id, reach, whole);
            continue;
        };
        if reach {
            report.in_reach += 1;
        }
        if call_ids.is_empty() {
            if reach {
                bad.push("never registered".into());
                report.lost += 1;
            }
            report.add(base, c, bad, &rs, &by_call_id, reach, whole);
            continue;
        }
        registered += 1;
        if call_ids.len() > 1 {
            bad.push(format!("registered {} times: {call_ids:?}", call_ids.len()));
        }
        let first = rs[0];
        if first.user_id != exp.register_user {
            bad.push(format!(
                "registered under user {}, expected {}",
                first.user_id, exp.register_user
            ));
        }
        for call_id in &call_ids {
            let rows: Vec<&Value> = finished
                .iter()
                .filter(|r| r["CALL_ID"].as_str() == Some(call_id))
                .collect();
            match rows.len() {
                0 if lost_in_memory => {}
                0 => {
                    bad.push(format!("{call_id} never finished"));
                    if reach {
                        report.lost += 1;
                    }
                }
                1 => finished_n += 1,
                n => bad.push(format!("{call_id} finished {n} times")),
            }
            if let Some(row) = rows.first() {
                let user = row["PORTAL_USER_ID"].as_u64().unwrap_or(0);
                let status = row["CALL_FAILED_CODE"].as_str().unwrap_or("");
                if whole {
                    if user != exp.finish_user {
                        bad.push(format!(
                            "finished by user {user}, expected {}",
                            exp.finish_user
                        ));
                    }
                    if status != exp.status {
                        bad.push(format!(
                            "finished with status {status}, expected {}",
                            exp.status
                        ));
                    }
                } else if user != exp.register_user && !exp.rings.contains(&user) {
                    bad.push(format!(
                        "finished by user {user}, who neither rang nor was registered"
                    ));
                }
            }
            // Order of the steps that went through.
            let steps = by_call_id.get(call_id).cloned().unwrap_or_default();
            let reg_at = rs
                .iter()
                .filter(|r| r.call_id == *call_id)
                .map(|r| r.command)
                .min()
                .unwrap_or(0);
            let fin_at = steps
                .iter()
                .find(|(_, r)| r.method == "telephony.externalcall.finish" && r.status == 200)
                .map(|(i, _)| *i);
            let mut shown = BTreeSet::new();
            // Users a show for this call reached the portal for, whatever it answered; a
            // register with SHOW=1 is the registered user's show.
            let mut sent_shows = BTreeSet::new();
            for r in rs.iter().filter(|r| r.call_id == *call_id) {
                if commands
                    .get(r.command)
                    .is_some_and(|c| shows_itself(&c.params))
                {
                    if !exp.rings.contains(&r.user_id) {
                        bad.push(format!(
                            "register with SHOW for user {}, whose phone never rang",
                            r.user_id
                        ));
                    }
                    shown.insert(r.user_id);
                    sent_shows.insert(r.user_id);
                }
            }
            for (i, r) in &steps {
                let show = r.method == "telephony.externalcall.show";
                let hide = r.method == "telephony.externalcall.hide";
                let attach = r.method == "telephony.externalcall.attachrecord";
                if (show || hide) && r.status == 200 {
                    if *i < reg_at || fin_at.is_some_and(|f| *i > f) {
                        bad.push(format!(
                            "{} at command {i} outside register {reg_at} .. finish {fin_at:?}",
                            r.method
                        ));
                    }
                    for u in users_param(&r.params) {
                        if !exp.rings.contains(&u) {
                            bad.push(format!("{} for user {u}, whose phone never rang", r.method));
                        }
                        if show {
                            shown.insert(u);
                        }
                        // A volatile call's shows were forgotten with the crash: its hides
                        // may name a card nobody knows was shown (harmless at the portal).
                        if hide && !sent_shows.contains(&u) && !cards_forgotten {
                            bad.push(format!(
                                "hide at command {i} for user {u} without a show before it"
                            ));
                        }
                    }
                }
                if show {
                    sent_shows.extend(users_param(&r.params));
                }
                if attach && fin_at.is_none_or(|f| *i < f) {
                    bad.push(format!("attachRecord at command {i} before the finish"));
                }
            }
            // A phone that stopped ringing before its show was sent gets no card at all
            // (issue #20), so not every phone that rang must have had one; the one that
            // answered must.
            if whole
                && exp.status == "200"
                && exp.rings.contains(&exp.finish_user)
                && !shown.contains(&exp.finish_user)
            {
                bad.push(format!(
                    "cards shown to {shown:?}, not to {} who answered (phones that rang {:?})",
                    exp.finish_user, exp.rings
                ));
            }
            let open: Vec<u64> = cards
                .iter()
                .filter(|(id, _)| id == call_id)
                .map(|(_, u)| *u)
                .collect();
            if !open.is_empty() && !cards_forgotten {
                bad.push(format!("card left open for users {open:?}"));
            }
        }
        report.add(base, c, bad, &rs, &by_call_id, reach, whole);
    }
    for r in &regs {
        let ext = r.external_call_id.as_deref().unwrap_or("");
        if !known_ext.contains(ext) {
            report.violations.push(format!(
                "portal has a call nobody made: {ext:?} as {}",
                r.call_id
            ));
        }
    }
    let _ = write!(
        report.summary,
        "seed {seed}: {} calls generated, {} in reach, {volatile_n} volatile, {registered} \
         registered, {finished_n} finished, {} lost, {} violation(s)",
        calls.len(),
        report.in_reach,
        report.lost,
        report.violations.len()
    );
    report
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        base: Instant,
        c: &CallRecord,
        bad: Vec<String>,
        regs: &[&super::fake_bitrix::Registration],
        steps: &HashMap<&str, Vec<(usize, &Recorded)>>,
        reach: bool,
        whole: bool,
    ) {
        if bad.is_empty() {
            return;
        }
        for b in &bad {
            self.violations.push(format!(
                "call #{} {} ({:?}): {b}",
                c.index, c.external_id, c.scenario
            ));
        }
        self.offenders.push(c.external_id.clone());
        let mut t = String::new();
        let _ = writeln!(
            t,
            "call #{} {} scenario {} ({:?}) caller {} responsible {:?} endless {} in reach {reach} \
             fully seen {whole} listed at {} moment(s)",
            c.index,
            c.external_id,
            c.scenario.letter(),
            c.scenario,
            c.caller,
            c.responsible,
            c.endless,
            c.listed_at.len()
        );
        let rel = |at: Instant| at.saturating_duration_since(base).as_secs_f64();
        let mut last: Option<Option<usize>> = None;
        for (name, d) in &c.events {
            // Only the events that matter to a tracker, and every change of connection.
            let key = matches!(
                name.as_str(),
                "Newchannel"
                    | "DialBegin"
                    | "DialEnd"
                    | "BridgeEnter"
                    | "BridgeLeave"
                    | "Hangup"
                    | "AttendedTransfer"
                    | "BlindTransfer"
            );
            if key || last != Some(d.conn) {
                let _ = writeln!(t, "    {:7.3}s {name:<18} conn {:?}", rel(d.at), d.conn);
            }
            last = Some(d.conn);
        }
        if c.events.len() < c.total_events {
            let _ = writeln!(
                t,
                "    ({} of {} events sent)",
                c.events.len(),
                c.total_events
            );
        }
        for r in regs {
            let _ = writeln!(
                t,
                "    portal: register (command {}) -> {} user {} new {}",
                r.command, r.call_id, r.user_id, r.new
            );
            for (i, s) in steps.get(r.call_id.as_str()).into_iter().flatten() {
                let _ = writeln!(
                    t,
                    "    portal: command {i} {} {} user {:?}",
                    s.method,
                    s.status,
                    user_param(&s.params)
                );
            }
            self.offenders.push(r.call_id.clone());
        }
        self.timelines.push(t);
    }
}
