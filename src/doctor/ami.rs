//! The AMI checks: one short manager session of our own (not the daemon's reconnecting
//! client, which hides the banner and retries a refused login instead of reporting it).
//!
//! What the account may do is read from Asterisk itself where it can be:
//! - `ListCommands` lists exactly the actions the account's write classes allow (manager.c
//!   `action_listcommands`), so `Originate` in it means click-to-call is permitted;
//! - with the `command` class, `manager show user` gives the read classes exactly,
//!   `manager show settings` the `timestampevents` setting, `dialplan show` whether the
//!   contrib module is loaded, `module show like chan_` the channel drivers;
//! - otherwise the events that arrive are the evidence: `FullyBooted` needs `system`, a call
//!   event `call`, and a `Timestamp:` header means `timestampevents = yes`.

use std::collections::BTreeSet;
use std::io::{BufReader, ErrorKind, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::{click_to_call_configured, Check, Options};
use crate::ami::codec::encode_action;
use crate::ami::{Frame, Message, Reader};
use crate::config::{Config, RecordingMode, RecordingSource};

/// The context `contrib/b24_continuous_parallel.conf` defines (its entry point).
pub const CONTRIB_CONTEXT: &str = "callme-rec";
/// Where the manager account is defined, for the fix texts.
const MANAGER_FILE: &str = "manager_custom.conf (plain Asterisk: manager.conf)";
/// Asterisk answers a wrong secret only after sleeping a second (ami.md §2.3).
const LOGIN_GRACE: Duration = Duration::from_secs(2);
/// Per action.
const ACTION_TIMEOUT: Duration = Duration::from_secs(5);
/// Events kept while listening; only their kinds matter, so a busy PBX cannot grow this.
const MAX_EVENTS: usize = 1000;

/// The read classes callme uses and what each one is for (contrib/manager_custom.conf).
const READ_CLASSES: &[(&str, &str)] = &[
    (
        "call",
        "the calls themselves (Newchannel, Dial*, Bridge*, Hangup)",
    ),
    (
        "dialplan",
        "VarSet: recording file names, CallMeLINKEDID, FROM_DID",
    ),
    (
        "system",
        "FullyBooted and Shutdown: resync after a PBX restart",
    ),
    ("agent", "queue events: calls through queues"),
];

/// One manager session.
struct Session {
    reader: Reader<BufReader<TcpStream>>,
    writer: TcpStream,
    next_id: u64,
    /// Events seen so far (bounded by [`MAX_EVENTS`]).
    events: Vec<Message>,
}

impl Session {
    /// The next frame before `deadline`; `Ok(None)` when the deadline passed.
    fn next_frame(&mut self, deadline: Instant) -> Result<Option<Frame>, String> {
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let _ = self
                .reader
                .get_ref()
                .get_ref()
                .set_read_timeout(Some(deadline - now));
            match self.reader.read_frame() {
                Ok(Some(f)) => return Ok(Some(f)),
                Ok(None) => return Err("Asterisk closed the connection".to_string()),
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    fn keep_event(&mut self, m: Message) {
        if self.events.len() < MAX_EVENTS {
            self.events.push(m);
        }
    }

    /// Send `pairs` and wait for the response with our ActionID; events on the way are kept.
    fn request(&mut self, pairs: &[(&str, &str)], timeout: Duration) -> Result<Message, String> {
        self.next_id += 1;
        let id = format!("callme-doctor-{}", self.next_id);
        let mut action = Message::from_pairs(pairs);
        action.push("ActionID", &id);
        let bytes = encode_action(&action).map_err(|e| e.to_string())?;
        self.writer.write_all(&bytes).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + timeout;
        loop {
            match self.next_frame(deadline)? {
                None => return Err(format!("no answer within {} s", timeout.as_secs())),
                Some(Frame::Message(m)) if m.action_id() == Some(id.as_str()) => {
                    if m.response().is_some() {
                        return Ok(m);
                    }
                }
                Some(Frame::Message(m)) if m.event().is_some() => self.keep_event(m),
                Some(_) => {}
            }
        }
    }

    /// An event-list action: the items, up to the `…Complete` event (ami.md §2.8).
    fn list(&mut self, pairs: &[(&str, &str)]) -> Result<Vec<Message>, String> {
        let ack = self.request(pairs, ACTION_TIMEOUT)?;
        if ack.response() != Some("Success") {
            return Err(ack.get("Message").unwrap_or("refused").to_string());
        }
        let id = ack.action_id().unwrap_or_default().to_string();
        let deadline = Instant::now() + ACTION_TIMEOUT;
        let mut items = Vec::new();
        loop {
            match self.next_frame(deadline)? {
                None => return Err("the list did not complete".to_string()),
                Some(Frame::Message(m)) if m.action_id() == Some(id.as_str()) => {
                    if m.event().is_some_and(|e| e.ends_with("Complete")) {
                        return Ok(items);
                    }
                    if items.len() < MAX_EVENTS {
                        items.push(m);
                    }
                }
                Some(Frame::Message(m)) if m.event().is_some() => self.keep_event(m),
                Some(_) => {}
            }
        }
    }

    /// `Command` (class `command`): the CLI output lines, or `Err` with why not. Asterisk 14+
    /// answers `Error` for a failed CLI command, with its output; that output is returned too.
    fn command(&mut self, cli: &str) -> Result<Vec<String>, String> {
        let m = self.request(&[("Action", "Command"), ("Command", cli)], ACTION_TIMEOUT)?;
        let out: Vec<String> = m.get_all("Output").map(str::to_string).collect();
        if out.is_empty() && m.response() == Some("Error") {
            return Err(m.get("Message").unwrap_or("refused").to_string());
        }
        Ok(out)
    }

    /// Listen until `deadline` or until `enough` says the events seen tell all we need.
    fn listen(&mut self, deadline: Instant, enough: impl Fn(&[Message]) -> bool) {
        while !enough(&self.events) {
            match self.next_frame(deadline) {
                Ok(Some(Frame::Message(m))) if m.event().is_some() => self.keep_event(m),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return,
            }
        }
    }
}

/// What the session found out, for the report.
#[derive(Default)]
struct Facts {
    /// Actions the write classes allow (lower case); `None` if `ListCommands` failed.
    actions: Option<BTreeSet<String>>,
    /// From `manager show user`.
    read_classes: Option<BTreeSet<String>>,
    /// From `manager show settings`.
    timestamps: Option<bool>,
    /// `(AsteriskVersion, AMIversion)`.
    version: Option<(String, Option<String>)>,
    pjsip: Option<bool>,
    chan_sip: Option<bool>,
    /// Whether [`CONTRIB_CONTEXT`] is in the dialplan.
    contrib: Option<bool>,
    /// Channels in progress (`CoreShowChannels`).
    channels: Vec<String>,
}

impl Facts {
    fn may(&self, action: &str) -> bool {
        self.actions
            .as_ref()
            .is_some_and(|a| a.contains(&action.to_ascii_lowercase()))
    }
}

pub(super) fn check(cfg: &Config, opts: &Options, out: &mut dyn FnMut(Check)) {
    let a = &cfg.asterisk;
    let target = format!("{}:{}", a.host, a.port);
    let Some(mut s) = connect(cfg, &target, out) else {
        return;
    };

    // Login. Asterisk closes the socket after a refusal, so nothing else can be checked.
    let login = s.request(
        &[
            ("Action", "Login"),
            ("Username", &a.username),
            ("Secret", a.secret.expose()),
        ],
        a.connect_timeout + LOGIN_GRACE,
    );
    let logged_in = Instant::now();
    match login {
        Ok(m) if m.response() == Some("Success") => {
            out(Check::ok(
                "ami login",
                format!("user {} accepted", a.username),
            ));
        }
        Ok(m) => {
            let said = m.get("Message").unwrap_or("no reason given");
            out(Check::fail(
                "ami login",
                format!("Asterisk refused user {}: {said}", a.username),
                format!(
                    "make [asterisk] username/secret in {} match the [{}] account in {MANAGER_FILE} \
                     and let its permit= include this host, then asterisk -rx \"manager reload\"",
                    cfg.source.display(),
                    a.username
                ),
            ));
            return;
        }
        Err(e) => {
            out(Check::fail(
                "ami login",
                format!("no answer to Login: {e}"),
                format!("check that {target} is Asterisk's manager port"),
            ));
            return;
        }
    }

    let facts = gather(&mut s, cfg);
    // Events: wait only for what nothing else told us.
    let need_classes = facts.read_classes.is_none();
    let need_stamps = facts.timestamps.is_none();
    if need_classes || need_stamps {
        s.listen(logged_in + opts.events_wait, |events| {
            let classes_known = !need_classes
                || (events.iter().any(is_call_event) && events.iter().any(is_fully_booted));
            let stamps_known = !need_stamps || !events.is_empty();
            classes_known && stamps_known
        });
    }
    let _ = s.request(&[("Action", "Logoff")], Duration::from_millis(500));

    out(read_classes(cfg, &facts, &s.events, opts.events_wait));
    out(write_classes(cfg, &facts));
    out(timestamps(&facts, &s.events));
    out(version(&facts));
    out(channel_driver(cfg, &facts, &s.events));
    out(contrib_dialplan(cfg, &facts));
}

/// TCP connect and the banner.
fn connect(cfg: &Config, target: &str, out: &mut dyn FnMut(Check)) -> Option<Session> {
    let a = &cfg.asterisk;
    let fix = format!(
        "start Asterisk, or correct [asterisk] host/port in {}; manager.conf [general] needs \
         enabled = yes and a bindaddr/port this host can reach",
        cfg.source.display()
    );
    let addrs: Vec<_> = match (a.host.as_str(), a.port).to_socket_addrs() {
        Ok(addrs) => addrs.collect(),
        Err(e) => {
            out(Check::fail("ami connect", format!("{target}: {e}"), fix));
            return None;
        }
    };
    let mut last = String::from("no address");
    let mut stream = None;
    for addr in &addrs {
        match TcpStream::connect_timeout(addr, a.connect_timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = e.to_string(),
        }
    }
    let Some(stream) = stream else {
        out(Check::fail(
            "ami connect",
            format!("cannot connect to {target}: {last}"),
            fix,
        ));
        return None;
    };
    out(Check::ok("ami connect", format!("{target} reachable")));
    let writer = match stream.try_clone() {
        Ok(w) => w,
        Err(e) => {
            out(Check::fail("ami connect", e, "retry"));
            return None;
        }
    };
    let _ = writer.set_write_timeout(Some(ACTION_TIMEOUT));
    let mut s = Session {
        reader: Reader::new(BufReader::new(stream)),
        writer,
        next_id: 0,
        events: Vec::new(),
    };
    let not_ami = format!(
        "set [asterisk] port to the manager port of {} (manager.conf [general] port, 5038 by default)",
        a.host
    );
    match s.next_frame(Instant::now() + a.connect_timeout) {
        Ok(Some(Frame::Banner(b))) => {
            out(Check::ok("ami banner", b));
            Some(s)
        }
        Ok(Some(Frame::Message(_))) => {
            out(Check::fail(
                "ami banner",
                format!("{target} did not greet like Asterisk's manager"),
                not_ami,
            ));
            None
        }
        Ok(None) => {
            out(Check::fail(
                "ami banner",
                format!(
                    "no banner from {target} within {} s",
                    a.connect_timeout.as_secs_f64()
                ),
                not_ami,
            ));
            None
        }
        Err(e) => {
            out(Check::fail(
                "ami banner",
                format!("{target}: {e} before the banner (an ACL or a full authlimit?)"),
                not_ami,
            ));
            None
        }
    }
}

/// Everything the account's classes let us ask.
fn gather(s: &mut Session, cfg: &Config) -> Facts {
    let mut f = Facts::default();
    if let Ok(m) = s.request(&[("Action", "ListCommands")], ACTION_TIMEOUT) {
        if m.response() == Some("Success") {
            let skip = ["response", "actionid", "message", "eventlist"];
            f.actions = Some(
                m.iter()
                    .map(|(k, _)| k.to_ascii_lowercase())
                    .filter(|k| !skip.contains(&k.as_str()))
                    .collect(),
            );
        }
    }
    if f.may("Command") {
        let user = format!("manager show user {}", cfg.asterisk.username);
        if let Ok(lines) = s.command(&user) {
            f.read_classes = perm_line(&lines, "read perm");
        }
        if let Ok(lines) = s.command("manager show settings") {
            f.timestamps = lines
                .iter()
                .find_map(|l| l.trim().strip_prefix("Timestamp events:"))
                .map(|v| v.trim().eq_ignore_ascii_case("yes"));
        }
        let context = format!("dialplan show {CONTRIB_CONTEXT}");
        f.contrib = match s.command(&context) {
            Ok(lines) => Some(!lines.iter().any(|l| l.contains("There is no existence"))),
            Err(_) => None,
        };
        if let Ok(lines) = s.command("module show like chan_") {
            let loaded = |name: &str| {
                lines.iter().any(|l| {
                    l.split_whitespace().next() == Some(name) && !l.contains("Not Running")
                })
            };
            f.pjsip = Some(loaded("chan_pjsip.so"));
            f.chan_sip = Some(loaded("chan_sip.so"));
        }
    }
    if f.may("CoreSettings") {
        if let Ok(m) = s.request(&[("Action", "CoreSettings")], ACTION_TIMEOUT) {
            if let Some(v) = m.get("AsteriskVersion") {
                f.version = Some((v.to_string(), m.get("AMIversion").map(str::to_string)));
            }
        }
    }
    if f.version.is_none() && f.may("Command") {
        if let Ok(lines) = s.command("core show version") {
            // "Asterisk 20.5.2 built by root @ pbx on a x86_64 running Linux on …"
            f.version = lines.iter().find_map(|l| {
                let rest = l.trim().strip_prefix("Asterisk ")?;
                Some((rest.split_whitespace().next()?.to_string(), None))
            });
        }
    }
    if f.may("CoreShowChannels") {
        // Calls in progress name their driver (`PJSIP/219-…`, `SIP/219-…`).
        if let Ok(items) = s.list(&[("Action", "CoreShowChannels")]) {
            f.channels = items
                .iter()
                .filter_map(|m| m.get("Channel").map(str::to_string))
                .collect();
        }
    }
    if f.pjsip.is_none() && f.may("ModuleCheck") {
        let mut loaded = |module: &str| {
            s.request(
                &[("Action", "ModuleCheck"), ("Module", module)],
                ACTION_TIMEOUT,
            )
            .ok()
            .map(|m| m.response() == Some("Success"))
        };
        f.pjsip = loaded("chan_pjsip");
        f.chan_sip = loaded("chan_sip");
    }
    f
}

/// `read perm: system,call,all` from `manager show user` → the classes.
fn perm_line(lines: &[String], key: &str) -> Option<BTreeSet<String>> {
    lines.iter().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| {
            v.split(',')
                .map(|c| c.trim().to_ascii_lowercase())
                .filter(|c| !c.is_empty())
                .collect()
        })
    })
}

fn privileges(m: &Message) -> impl Iterator<Item = &str> {
    m.get("Privilege").unwrap_or("").split(',').map(str::trim)
}

fn is_call_event(m: &Message) -> bool {
    privileges(m).any(|p| p.eq_ignore_ascii_case("call"))
}

fn is_fully_booted(m: &Message) -> bool {
    m.event() == Some("FullyBooted")
}

fn read_fix(cfg: &Config) -> String {
    format!(
        "read = system,call,dialplan,agent in [{}] of {MANAGER_FILE}, then asterisk -rx \"manager reload\"",
        cfg.asterisk.username
    )
}

fn read_classes(cfg: &Config, f: &Facts, events: &[Message], waited: Duration) -> Check {
    const NAME: &str = "ami read classes";
    if let Some(have) = &f.read_classes {
        let all = have.contains("all");
        let missing: Vec<&(&str, &str)> = READ_CLASSES
            .iter()
            .filter(|(c, _)| !all && !have.contains(*c))
            .collect();
        let recording = cfg.recording.mode != RecordingMode::Off;
        let fatal: Vec<&str> = missing
            .iter()
            .filter(|(c, _)| *c == "call" || (*c == "dialplan" && recording))
            .map(|(c, _)| *c)
            .collect();
        let list = have.iter().cloned().collect::<Vec<_>>().join(",");
        if missing.is_empty() {
            return Check::ok(NAME, format!("read = {list} (manager show user)"));
        }
        let why: Vec<String> = missing.iter().map(|(c, w)| format!("{c} ({w})")).collect();
        let detail = format!("read = {list}; missing {}", why.join(", "));
        return if fatal.is_empty() {
            Check::warn(NAME, format!("{detail}; add them: {}", read_fix(cfg)))
        } else {
            Check::fail(NAME, detail, read_fix(cfg))
        };
    }
    // No `command` class: what the events prove (each carries its class in `Privilege`).
    let seen: BTreeSet<String> = events
        .iter()
        .flat_map(privileges)
        .map(str::to_ascii_lowercase)
        .filter(|p| !p.is_empty() && p != "all")
        .collect();
    let secs = waited.as_secs_f64();
    if !seen.contains("call") {
        return Check::warn(
            NAME,
            format!(
                "no call event within {secs} s: the PBX was idle, or read = call is missing \
                 (then no card ever shows); check with asterisk -rx \"manager show user {}\"",
                cfg.asterisk.username
            ),
        );
    }
    if !seen.contains("system") {
        return Check::warn(
            NAME,
            format!(
                "call events arrive, but no FullyBooted: system is missing, so a PBX restart is \
                 noticed only by the dropped link; {}",
                read_fix(cfg)
            ),
        );
    }
    let confirmed: Vec<&str> = READ_CLASSES
        .iter()
        .map(|(c, _)| *c)
        .filter(|c| seen.contains(*c))
        .collect();
    let unseen: Vec<&str> = READ_CLASSES
        .iter()
        .map(|(c, _)| *c)
        .filter(|c| !seen.contains(*c))
        .collect();
    if unseen.is_empty() {
        return Check::ok(
            NAME,
            format!("{} confirmed by events", confirmed.join(", ")),
        );
    }
    Check::warn(
        NAME,
        format!(
            "{} confirmed by events; no {} event seen (grant write = command for an exact \
             answer, or run asterisk -rx \"manager show user {}\")",
            confirmed.join(", "),
            unseen.join(" or "),
            cfg.asterisk.username
        ),
    )
}

fn write_classes(cfg: &Config, f: &Facts) -> Check {
    const NAME: &str = "ami write classes";
    if f.actions.is_none() {
        return Check::warn(
            NAME,
            "ListCommands failed: the permitted actions are unknown",
        );
    }
    let fix = |what: &str| {
        format!(
            "write = originate,call,reporting in [{}] of {MANAGER_FILE} ({what}), then \
             asterisk -rx \"manager reload\"",
            cfg.asterisk.username
        )
    };
    let click = click_to_call_configured(cfg);
    if click && !f.may("Originate") {
        return Check::fail(
            NAME,
            "Originate is not permitted, so click-to-call and callbacks cannot dial",
            fix("originate"),
        );
    }
    let mut have = Vec::new();
    for action in ["Originate", "CoreShowChannels", "Command", "CoreSettings"] {
        if f.may(action) {
            have.push(action);
        }
    }
    let permitted = format!("permitted: {}", have.join(", "));
    if !f.may("CoreShowChannels") {
        return Check::warn(
            NAME,
            format!(
                "{permitted}; CoreShowChannels is not, so calls in progress are not picked up \
                 after a reconnect; add it: {}",
                fix("reporting")
            ),
        );
    }
    let originate = if click {
        "click-to-call can dial"
    } else {
        "click-to-call is not configured"
    };
    Check::ok(NAME, format!("{permitted} ({originate})"))
}

fn timestamps(f: &Facts, events: &[Message]) -> Check {
    const NAME: &str = "ami timestamps";
    let on = f
        .timestamps
        .or_else(|| events.first().map(|e| e.get("Timestamp").is_some()));
    match on {
        Some(true) => Check::ok(
            NAME,
            "timestampevents = yes: call start times and durations come from Asterisk's clock",
        ),
        Some(false) => Check::warn(
            NAME,
            "timestampevents = no: call times and durations are taken when events reach callme, \
             so a slow link or a backlog after a reconnect skews them; set timestampevents = yes \
             in manager.conf [general] (FreePBX: Settings > Asterisk Manager), then \
             asterisk -rx \"manager reload\"",
        ),
        None => Check::warn(
            NAME,
            "unknown (no event arrived and no command class); check with asterisk -rx \
             \"manager show settings\" (Timestamp events)",
        ),
    }
}

fn version(f: &Facts) -> Check {
    const NAME: &str = "asterisk version";
    let Some((v, ami)) = &f.version else {
        return Check::warn(
            NAME,
            "unknown: CoreSettings needs write = reporting (or system), Command write = command",
        );
    };
    let ami = ami
        .as_ref()
        .map(|a| format!(" (AMI {a})"))
        .unwrap_or_default();
    let mut nums = v
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty());
    let major: u32 = nums.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    let minor: u32 = nums.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    if (major, minor) >= (13, 5) {
        Check::ok(NAME, format!("Asterisk {v}{ami}"))
    } else {
        Check::warn(
            NAME,
            format!(
                "Asterisk {v}{ami} is outside the supported range 13.5-22 (README § Supported \
                 Asterisk versions); calls are tracked, but this version is not tested"
            ),
        )
    }
}

fn channel_driver(cfg: &Config, f: &Facts, events: &[Message]) -> Check {
    const NAME: &str = "asterisk channel driver";
    // Channel names of calls in progress and in the events seen are evidence too.
    let seen = |prefix: &str| {
        f.channels.iter().any(|c| c.starts_with(prefix))
            || events
                .iter()
                .any(|e| e.get("Channel").is_some_and(|c| c.starts_with(prefix)))
    };
    let pjsip = f.pjsip.or(seen("PJSIP/").then_some(true));
    let chan_sip = f.chan_sip.or(seen("SIP/").then_some(true));
    let template = &cfg.originate.channel;
    if click_to_call_configured(cfg) {
        let needs = |prefix: &str| template.starts_with(prefix);
        let missing = if needs("PJSIP/") && pjsip == Some(false) {
            Some("chan_pjsip")
        } else if needs("SIP/") && chan_sip == Some(false) {
            Some("chan_sip")
        } else {
            None
        };
        if let Some(m) = missing {
            let other = if m == "chan_sip" { "PJSIP" } else { "SIP" };
            return Check::fail(
                NAME,
                format!("[originate] channel = {template} but {m} is not loaded"),
                format!(
                    "set [originate] channel = {other}/{{inner}} (or Local/{{inner}}@from-internal) in {}",
                    cfg.source.display()
                ),
            );
        }
    }
    let name = |on: Option<bool>| match on {
        Some(true) => "loaded",
        Some(false) => "not loaded",
        None => "unknown",
    };
    let detail = format!("chan_pjsip {}, chan_sip {}", name(pjsip), name(chan_sip));
    match (pjsip, chan_sip) {
        (Some(true), Some(true)) => Check::ok(NAME, format!("both: {detail}")),
        (Some(true), _) => Check::ok(NAME, format!("PJSIP ({detail})")),
        (_, Some(true)) => Check::ok(NAME, format!("chan_sip ({detail})")),
        (Some(false), Some(false)) => Check::warn(NAME, format!("no SIP driver: {detail}")),
        _ => Check::warn(
            NAME,
            format!("{detail}: ModuleCheck needs write = system, Command write = command"),
        ),
    }
}

fn contrib_dialplan(cfg: &Config, f: &Facts) -> Check {
    const NAME: &str = "asterisk dialplan";
    let rec = &cfg.recording;
    let needed = rec.mode != RecordingMode::Off;
    let only_ours = rec.source == RecordingSource::Callme;
    let fix = "#include b24_continuous_parallel.conf in extensions_custom.conf (plain Asterisk: \
               extensions.conf), then asterisk -rx \"dialplan reload\" (contrib/README.md)";
    match f.contrib {
        Some(true) => Check::ok(
            NAME,
            format!("{CONTRIB_CONTEXT} loaded (contrib/b24_continuous_parallel.conf)"),
        ),
        Some(false) if needed && only_ours => Check::fail(
            NAME,
            format!(
                "{CONTRIB_CONTEXT} is not loaded, and [recording] source = callme needs it: no \
                 recording will be attached"
            ),
            fix,
        ),
        Some(false) if needed => Check::warn(
            NAME,
            format!(
                "{CONTRIB_CONTEXT} is not loaded: only FreePBX's own recordings \
                 (MIXMONITOR_FILENAME) are attached; to record every call: {fix}"
            ),
        ),
        Some(false) => Check::ok(
            NAME,
            format!("{CONTRIB_CONTEXT} not loaded (not needed: [recording] mode = off)"),
        ),
        None if needed => Check::warn(
            NAME,
            format!(
                "not checked (needs write = command); check with asterisk -rx \"dialplan show \
                 {CONTRIB_CONTEXT}\""
            ),
        ),
        None => Check::ok(
            NAME,
            "not checked (needs write = command); not needed: [recording] mode = off",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perm_lines_of_manager_show_user() {
        let lines: Vec<String> = [
            "          username: callme",
            "            secret: <Set>",
            "         read perm: system,call,dialplan,agent",
            "        write perm: call,reporting,originate",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let read = perm_line(&lines, "read perm").unwrap();
        assert_eq!(
            read.into_iter().collect::<Vec<_>>(),
            ["agent", "call", "dialplan", "system"]
        );
        assert_eq!(perm_line(&lines, "nope"), None);
    }

    #[test]
    fn versions() {
        let v = |s: &str| Facts {
            version: Some((s.to_string(), None)),
            ..Facts::default()
        };
        assert_eq!(version(&v("20.5.2")).level, super::super::Level::Ok);
        assert_eq!(version(&v("13.5.0")).level, super::super::Level::Ok);
        assert_eq!(version(&v("13.4.0")).level, super::super::Level::Warn);
        assert_eq!(
            version(&v("certified/18.9-cert5")).level,
            super::super::Level::Ok
        );
        assert_eq!(version(&v("11.25.3")).level, super::super::Level::Warn);
        assert_eq!(version(&Facts::default()).level, super::super::Level::Warn);
    }
}
