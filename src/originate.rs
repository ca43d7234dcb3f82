//! Click-to-call: turn a Bitrix24 `ONEXTERNALCALLSTART` (or `callme originate`) into one AMI
//! `Originate` (ami.md §4.2).
//!
//! Everything that ends up in the action is checked here first: the client's number passes
//! [`phone::validate`] and comes out digits only, the internal number is digits, the CALL_ID
//! uses a small safe alphabet, and the templates were checked when the config was loaded. The
//! AMI writer's CR/LF guard (`ami::Error::Injection`) is the second line, not the only one.
//! The number must also pass the toll-fraud guard (`[originate] allow`/`deny`,
//! [`crate::dial_policy`]): [`build_action`] refuses any other, so no path can send one.
//!
//! The tracker is told about the Originate ([`Control::Originate`]) **before** it is sent, so
//! the first AMI event of the new channel already finds it; a refused Originate is reported
//! back ([`Control::OriginateFailed`]) so the Bitrix24 call is finished, never left open.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::ami::{self, Message};
use crate::bitrix::{api, Directory};
use crate::calls::tracker::Originate;
use crate::calls::Status;
use crate::clock::now_ms;
use crate::config::OriginateConfig;
use crate::context::{publish_directory, Context, Control};
use crate::dial_policy::Refusal;
use crate::phone::{self, PhoneConfig};

/// How long we wait for Asterisk's `Response` to the Originate. With `Async: true` it comes at
/// once (`Originate successfully queued`); the call's outcome comes later as an event.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// A second `ONEXTERNALCALLSTART` for the same CALL_ID within this window is a duplicate
/// (bitrix24-api.md §5.4: AsterLink uses 30 s; Bitrix24's queue may deliver an event twice).
pub const DEDUP_WINDOW: Duration = Duration::from_secs(60);

/// How long after the ring timeout the tracker keeps waiting for the Originate's channels
/// before it finishes the Bitrix24 call anyway.
const EXPIRY_GRACE: Duration = Duration::from_secs(60);

/// Why a click-to-call was not (or not successfully) sent.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The client's number is not a phone number (or too long once formatted for dialling).
    Number(phone::Error),
    /// The employee's internal number is not 1-20 digits. Holds it, escaped.
    Inner(String),
    /// The Bitrix24 CALL_ID has characters outside `A-Z a-z 0-9 . _ -` or is too long.
    CallId,
    /// The action could not be sent or got no answer.
    Ami(ami::Error),
    /// Asterisk answered `Response: Error`; holds its `Message:`.
    Rejected(String),
    /// The toll-fraud guard does not allow this number (`[originate] allow`/`deny`).
    Refused(Refusal),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Number(e) => write!(f, "{e}"),
            Error::Inner(s) => write!(
                f,
                "bad internal number \"{s}\" (allowed: 1-20 digits, e.g. 219)"
            ),
            Error::CallId => write!(
                f,
                "bad CALL_ID (allowed: up to 128 characters from A-Z a-z 0-9 . _ -)"
            ),
            Error::Ami(e) => write!(f, "{e}"),
            Error::Rejected(msg) => write!(f, "Asterisk refused the Originate: {msg}"),
            Error::Refused(r) => write!(f, "not dialled: {r}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<phone::Error> for Error {
    fn from(e: phone::Error) -> Self {
        Error::Number(e)
    }
}

/// The number Asterisk should dial for a client number from Bitrix24 or the command line.
///
/// The number is first brought to international digits ([`phone::normalize`]: `+7999…`,
/// `8999…` and `999…` all become `7999…`). Then:
/// - `dial_national = yes` and the number is in our country (`country_code` + a national
///   number of `national_length` digits): `national_prefix` + national number
///   (`+79991234567` → `89991234567`), the form a PBX's outbound routes usually expect;
/// - otherwise the international digits, without `+` (dialplan patterns rarely match `+`);
/// - short numbers (internal, `219`) are left alone;
/// - finally `dial_prefix` is put in front (`9` for an outside line).
///
/// The result passes [`phone::validate`] or this fails.
pub fn dial_number(
    raw: &str,
    phone_cfg: &PhoneConfig,
    cfg: &OriginateConfig,
) -> Result<String, Error> {
    phone::validate(raw)?;
    let intl = phone::normalize(raw, phone_cfg).ok_or(phone::Error::Empty)?;
    let cc = phone_cfg.country_code.as_str();
    let national = intl
        .strip_prefix(cc)
        .filter(|nsn| nsn.len() == phone_cfg.national_length);
    let number = match national {
        Some(nsn) if cfg.dial_national => format!("{}{nsn}", phone_cfg.national_prefix),
        _ => intl,
    };
    let dial = format!("{}{number}", cfg.dial_prefix);
    phone::validate(&dial)?;
    Ok(dial)
}

/// Internal numbers end up in the `Channel` (`Local/{inner}@…`): digits only.
pub fn check_inner(s: &str) -> Result<(), Error> {
    if (1..=20).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(Error::Inner(
            s.chars().take(24).flat_map(char::escape_debug).collect(),
        ))
    }
}

/// Bitrix24 CALL_IDs look like `externalCall.89350264e026dace3f2b14d1f438257c.1773236989`
/// (bitrix24-api.md §5.3). It goes into `Variable:`, where Asterisk splits values on `,`
/// (ami.md §4.2), so anything outside this alphabet is refused rather than escaped.
pub fn check_call_id(s: &str) -> Result<(), Error> {
    let ok = (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::CallId)
    }
}

/// The ids of one Originate: `ChannelId` (becomes the Uniqueid and Linkedid of the employee's
/// channel, so the tracker recognises the call from its first event) and `ActionID` (carried
/// by the `OriginateResponse` event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ids {
    pub channel_id: String,
    pub action_id: String,
}

/// Fresh ids: `c2c-<unix ms>-<counter>`, unique within this process and across restarts
/// (the clock moves on), short and of safe characters (Asterisk allows 149, ami.md §4.2).
pub fn new_ids() -> Ids {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed) + 1;
    let ms = now_ms();
    Ids {
        channel_id: format!("c2c-{ms}-{n}"),
        action_id: format!("callme-c2c-{ms}-{n}"),
    }
}

/// What to originate, already checked and formatted.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// The employee's internal number.
    pub inner: &'a str,
    /// The client's number, as [`dial_number`] made it.
    pub dial: &'a str,
    /// The Bitrix24 CALL_ID (`None` for `callme originate`).
    pub call_id: Option<&'a str>,
    pub ids: &'a Ids,
}

/// The `Originate` action. Fails if any input is not what the checks above allow.
pub fn build_action(cfg: &OriginateConfig, r: &Request) -> Result<Message, Error> {
    check_inner(r.inner)?;
    phone::validate(r.dial)?;
    cfg.policy.check(r.dial).map_err(Error::Refused)?;
    if let Some(id) = r.call_id {
        check_call_id(id)?;
    }
    let fill = |t: &str| t.replace("{inner}", r.inner).replace("{number}", r.dial);
    let channel = fill(&cfg.channel);
    let caller_id = fill(&cfg.caller_id);
    let timeout = cfg.timeout.as_millis().to_string();
    let mut m = Message::from_pairs(&[
        ("Action", "Originate"),
        ("ActionID", &r.ids.action_id),
        ("Channel", &channel),
        ("Context", &cfg.context),
        ("Exten", r.dial),
        ("Priority", "1"),
        ("Timeout", &timeout),
        ("CallerID", &caller_id),
        ("Async", "true"),
        ("ChannelId", &r.ids.channel_id),
    ]);
    if let Some(id) = r.call_id {
        m.push("Variable", &format!("CallMeCALL_ID={id}"));
    }
    m.push("Variable", "IS_CALLME_ORIGINATE=1");
    // The same guard the writer applies, here too so a test of this function proves it.
    ami::codec::encode_action(&m).map_err(Error::Ami)?;
    Ok(m)
}

/// Remembers CALL_IDs seen within [`DEDUP_WINDOW`].
#[derive(Debug, Default)]
pub struct Dedup {
    seen: Mutex<HashMap<String, Instant>>,
}

impl Dedup {
    /// True the first time `call_id` is seen within the window (and remembers it).
    pub fn first(&self, call_id: &str, now: Instant) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.retain(|_, at| now.saturating_duration_since(*at) < DEDUP_WINDOW);
        if seen.contains_key(call_id) {
            return false;
        }
        seen.insert(call_id.to_string(), now);
        true
    }
}

/// A validated click-to-call from Bitrix24.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Click {
    pub call_id: String,
    pub user_id: u64,
    /// Already formatted by [`dial_number`].
    pub dial: String,
}

/// How a click-to-call ended on our side (for the log and `/metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Asterisk queued the Originate.
    Sent,
    /// The employee has no internal number; the Bitrix24 call is finished.
    NoUser,
    /// Asterisk refused it, or it could not be sent; the Bitrix24 call is finished.
    Failed,
    /// No answer from Asterisk in time; the tracker finishes the call if no channel shows up.
    Unknown,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Sent => "sent",
            Outcome::NoUser => "no_user",
            Outcome::Failed => "failed",
            Outcome::Unknown => "unanswered",
        }
    }
}

/// The internal number of Bitrix24 user `user_id`. On a miss (a new employee, one whose
/// `UF_PHONE_INNER` was just set, or no directory loaded yet) the directory is loaded again
/// once and published for everybody: delivery and the tracker included.
pub fn resolve_inner(daemon: &Context, user_id: u64) -> Option<String> {
    let current = daemon.directory.get();
    if let Some(inner) = current.as_ref().and_then(|d| d.inner_for(user_id)) {
        return Some(inner.to_string());
    }
    match &current {
        Some(_) => log::info!("Bitrix24 user {user_id} not in the user directory, reloading it"),
        None => log::info!("the Bitrix24 user directory has not loaded yet, loading it now"),
    }
    match api::users_all(&*daemon.transport) {
        Ok(users) => {
            let dir = Directory::from_users(users, Instant::now());
            let inner = dir.inner_for(user_id).map(str::to_string);
            publish_directory(&daemon.directory, &daemon.control, dir);
            inner
        }
        Err(e) => {
            log::warn!("could not reload Bitrix24 users (user.get): {e}");
            None
        }
    }
}

/// Tell the tracker about an Originate before it is sent.
fn expect(daemon: &Context, call_id: &str, ids: &Ids, ext: &str, phone: &str) {
    expect_as(daemon, call_id, ids, ext, phone, None);
}

fn expect_as(
    daemon: &Context,
    call_id: &str,
    ids: &Ids,
    ext: &str,
    phone: &str,
    callback_line: Option<&str>,
) {
    let timeout = daemon.config.originate.timeout + EXPIRY_GRACE;
    let _ = daemon.control.send(Control::Originate {
        originate: Originate {
            call_id: call_id.to_string(),
            channel_id: ids.channel_id.clone(),
            action_id: ids.action_id.clone(),
            ext: ext.to_string(),
            phone: phone.to_string(),
            callback_line: callback_line.map(str::to_string),
        },
        expires_ms: now_ms() + timeout.as_millis() as u64,
    });
}

/// Finish a Bitrix24 call we will not dial: the tracker finishes it under `ext` (or, when
/// `ext` is empty or unknown, under the responsible/default user).
pub fn abandon(daemon: &Context, call_id: &str, ext: &str, phone: &str) {
    expect(daemon, call_id, &new_ids(), ext, phone);
    let _ = daemon.control.send(Control::OriginateFailed {
        call_id: call_id.to_string(),
    });
}

/// The `STATUS_CODE` Bitrix24 gets when it finishes a click-to-call the toll-fraud guard
/// refused: `403` ("forbidden") for a number the policy does not allow, `423` ("blocked") for
/// the rate limit. Both are in Bitrix24's list of codes (bitrix24-api.md §3.1).
pub fn refusal_status(why: &Refusal) -> Status {
    match why {
        Refusal::Rate { .. } => Status::BLOCKED,
        Refusal::Deny(_) | Refusal::NotAllowed => Status::FORBIDDEN,
    }
}

/// Finish a Bitrix24 call the toll-fraud guard refused, with [`refusal_status`]. Nothing is
/// sent to AMI.
pub fn refuse(daemon: &Context, call_id: &str, ext: &str, phone: &str, why: &Refusal) {
    expect(daemon, call_id, &new_ids(), ext, phone);
    let _ = daemon.control.send(Control::OriginateRefused {
        call_id: call_id.to_string(),
        status: refusal_status(why),
    });
}

/// Run one click-to-call: find the employee's phone, tell the tracker, send the Originate.
pub fn click_to_call(daemon: &Context, click: &Click) -> Outcome {
    let Click {
        call_id,
        user_id,
        dial,
    } = click;
    let Some(inner) = resolve_inner(daemon, *user_id) else {
        log::error!(
            "click-to-call {call_id}: Bitrix24 user {user_id} has no internal number \
             (UF_PHONE_INNER), so there is no phone to ring; finishing the call"
        );
        abandon(daemon, call_id, "", dial);
        return Outcome::NoUser;
    };
    let ids = new_ids();
    let request = Request {
        inner: &inner,
        dial,
        call_id: Some(call_id),
        ids: &ids,
    };
    let action = match build_action(&daemon.config.originate, &request) {
        Ok(a) => a,
        Err(e) => {
            log::error!(
                "click-to-call {call_id}: cannot build the Originate: {e}; finishing the call"
            );
            abandon(daemon, call_id, &inner, dial);
            return Outcome::Failed;
        }
    };
    expect(daemon, call_id, &ids, &inner, dial);
    log::info!(
        "click-to-call {call_id}: ringing {inner} (user {user_id}), then dialling {dial} ({})",
        ids.channel_id
    );
    let failed = |why: &dyn fmt::Display| {
        log::error!("click-to-call {call_id}: {why}; finishing the call");
        let _ = daemon.control.send(Control::OriginateFailed {
            call_id: call_id.clone(),
        });
        Outcome::Failed
    };
    match daemon.ami.request(action, RESPONSE_TIMEOUT) {
        Ok(resp) if is_success(&resp) => Outcome::Sent,
        Ok(resp) => failed(&Error::Rejected(message_of(&resp))),
        // The action went out but the answer did not come back: Asterisk may be dialling.
        // The tracker adopts the channels if they appear and finishes the call if not.
        Err(e @ ami::Error::Timeout(_)) => {
            log::warn!("click-to-call {call_id}: {e}; the call is finished if no channel appears");
            Outcome::Unknown
        }
        Err(e) => failed(&e),
    }
}

/// One callback-form request (ONEXTERNALCALLBACKSTART), validated.
#[derive(Debug, Clone)]
pub struct Callback {
    /// The client's number, as [`dial_number`] made it.
    pub dial: String,
    /// The form's `LINE_NUMBER` (may be empty).
    pub line: String,
    /// The form's CRM item (`CRM_ENTITY_TYPE`, `CRM_ENTITY_ID`), when given.
    pub entity: Option<(String, u64)>,
}

/// Who is rung first for a callback: the line's target from `[originate] callback_targets`,
/// else the responsible employee of the form's CRM item, else `[calls] default_user`.
fn callback_target(daemon: &Context, cb: &Callback) -> Option<String> {
    let cfg = &daemon.config;
    if let Some((_, ext)) = cfg
        .originate
        .callback_targets
        .iter()
        .find(|(line, _)| *line == cb.line)
    {
        return Some(ext.clone());
    }
    if let Some((ty, id)) = &cb.entity {
        match api::crm_item_responsible(&*daemon.transport, ty, *id) {
            Ok(Some(user)) => {
                if let Some(inner) = resolve_inner(daemon, user) {
                    return Some(inner);
                }
                log::warn!("callback: responsible user {user} of {ty} {id} has no internal number");
            }
            Ok(None) => {}
            Err(e) => log::warn!("callback: could not read {ty} {id} from Bitrix24: {e}"),
        }
    }
    cfg.calls.default_user.clone()
}

/// Run one callback: ring the target first, then dial the client. The tracker registers the
/// call (TYPE 4) once the employee answers; until then nothing exists in Bitrix24.
pub fn callback(daemon: &Context, cb: &Callback) -> Outcome {
    let Some(inner) = callback_target(daemon, cb) else {
        log::error!(
            "callback to {} (line {:?}): nobody to ring: set [originate] callback_targets for              this line or [calls] default_user",
            cb.dial,
            cb.line
        );
        return Outcome::NoUser;
    };
    let ids = new_ids();
    // Our own id for the CallMeCALL_ID variable: there is no Bitrix24 CALL_ID yet.
    let cb_id = format!("callback-{}", ids.channel_id);
    let request = Request {
        inner: &inner,
        dial: &cb.dial,
        call_id: Some(&cb_id),
        ids: &ids,
    };
    let action = match build_action(&daemon.config.originate, &request) {
        Ok(a) => a,
        Err(e) => {
            log::error!("callback to {}: cannot build the Originate: {e}", cb.dial);
            return Outcome::Failed;
        }
    };
    expect_as(daemon, &cb_id, &ids, &inner, &cb.dial, Some(&cb.line));
    log::info!(
        "callback (line {:?}): ringing {inner}, then dialling {} ({})",
        cb.line,
        cb.dial,
        ids.channel_id
    );
    match daemon.ami.request(action, RESPONSE_TIMEOUT) {
        Ok(resp) if is_success(&resp) => Outcome::Sent,
        Ok(resp) => {
            log::error!(
                "callback to {}: {}",
                cb.dial,
                Error::Rejected(message_of(&resp))
            );
            let _ = daemon
                .control
                .send(Control::OriginateFailed { call_id: cb_id });
            Outcome::Failed
        }
        Err(e @ ami::Error::Timeout(_)) => {
            log::warn!("callback to {}: {e}", cb.dial);
            Outcome::Unknown
        }
        Err(e) => {
            log::error!("callback to {}: {e}", cb.dial);
            let _ = daemon
                .control
                .send(Control::OriginateFailed { call_id: cb_id });
            Outcome::Failed
        }
    }
}

/// `Response: Success` (case-insensitive, as Asterisk is not consistent).
pub fn is_success(resp: &Message) -> bool {
    resp.response()
        .is_some_and(|r| r.eq_ignore_ascii_case("Success"))
}

/// Asterisk's `Message:` (or a placeholder), one line.
pub fn message_of(resp: &Message) -> String {
    resp.get("Message")
        .unwrap_or("(no message)")
        .chars()
        .take(200)
        .flat_map(char::escape_debug)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dial_policy::{self, DialPolicy};

    fn ru() -> PhoneConfig {
        PhoneConfig::default()
    }

    #[test]
    fn national_numbers_are_dialled_with_the_trunk_prefix() {
        let o = OriginateConfig::default();
        for raw in ["+79991234567", "89991234567", "79991234567", "9991234567"] {
            assert_eq!(dial_number(raw, &ru(), &o).unwrap(), "89991234567", "{raw}");
        }
    }

    #[test]
    fn foreign_and_short_numbers() {
        let o = OriginateConfig::default();
        assert_eq!(
            dial_number("+494951234567", &ru(), &o).unwrap(),
            "494951234567"
        );
        assert_eq!(dial_number("219", &ru(), &o).unwrap(), "219");
        // A '+' number that happens to start with 8 is not ours: left as digits.
        assert_eq!(
            dial_number("+89991234567", &ru(), &o).unwrap(),
            "89991234567"
        );
    }

    #[test]
    fn dial_national_off_and_prefix() {
        let o = OriginateConfig {
            dial_national: false,
            dial_prefix: "9".into(),
            ..OriginateConfig::default()
        };
        assert_eq!(
            dial_number("+79991234567", &ru(), &o).unwrap(),
            "979991234567"
        );
        assert_eq!(
            dial_number("89991234567", &ru(), &o).unwrap(),
            "979991234567"
        );
        let o = OriginateConfig {
            dial_prefix: "9".into(),
            ..OriginateConfig::default()
        };
        assert_eq!(
            dial_number("+79991234567", &ru(), &o).unwrap(),
            "989991234567"
        );
        // Germany: no trunk prefix configured, 10-digit national numbers.
        let de = PhoneConfig {
            country_code: "49".into(),
            national_prefix: "0".into(),
            national_length: 10,
        };
        let o = OriginateConfig::default();
        assert_eq!(
            dial_number("+493012345678", &de, &o).unwrap(),
            "03012345678"
        );
    }

    #[test]
    fn dial_rejects_bad_input_and_overlong_results() {
        let o = OriginateConfig::default();
        for bad in [
            "",
            "12",
            "123\r\nAction: Command",
            "+7 999 123",
            "abc",
            "8(999)1234567",
        ] {
            assert!(
                matches!(dial_number(bad, &ru(), &o), Err(Error::Number(_))),
                "{bad:?}"
            );
        }
        let o = OriginateConfig {
            dial_prefix: "99".into(),
            ..OriginateConfig::default()
        };
        let twenty = "1".repeat(20);
        assert!(matches!(
            dial_number(&twenty, &ru(), &o),
            Err(Error::Number(phone::Error::Length(22)))
        ));
    }

    fn ids() -> Ids {
        Ids {
            channel_id: "c2c-1-1".into(),
            action_id: "callme-c2c-1-1".into(),
        }
    }

    #[test]
    fn action_headers_exact() {
        let o = OriginateConfig {
            caller_id: "\"CRM\" <{number}> for {inner}".into(),
            ..OriginateConfig::default()
        };
        let ids = ids();
        let m = build_action(
            &o,
            &Request {
                inner: "219",
                dial: "89991234567",
                call_id: Some("externalCall.abc.1773236989"),
                ids: &ids,
            },
        )
        .unwrap();
        let fields: Vec<(&str, &str)> = m.iter().collect();
        assert_eq!(
            fields,
            vec![
                ("Action", "Originate"),
                ("ActionID", "callme-c2c-1-1"),
                ("Channel", "Local/219@from-internal"),
                ("Context", "from-internal"),
                ("Exten", "89991234567"),
                ("Priority", "1"),
                ("Timeout", "30000"),
                ("CallerID", "\"CRM\" <89991234567> for 219"),
                ("Async", "true"),
                ("ChannelId", "c2c-1-1"),
                ("Variable", "CallMeCALL_ID=externalCall.abc.1773236989"),
                ("Variable", "IS_CALLME_ORIGINATE=1"),
            ]
        );
        // Without a CALL_ID (callme originate) only the marker variable is sent.
        let m = build_action(
            &OriginateConfig {
                policy: DialPolicy {
                    allow: dial_policy::parse_list("219").unwrap(),
                    ..OriginateConfig::default().policy
                },
                ..OriginateConfig::default()
            },
            &Request {
                inner: "219",
                dial: "219",
                call_id: None,
                ids: &ids,
            },
        )
        .unwrap();
        assert_eq!(
            m.get_all("Variable").collect::<Vec<_>>(),
            ["IS_CALLME_ORIGINATE=1"]
        );
    }

    #[test]
    fn crlf_cannot_get_into_the_action() {
        let ids = ids();
        let o = OriginateConfig::default();
        let req = |inner, dial, call_id| Request {
            inner,
            dial,
            call_id,
            ids: &ids,
        };
        assert!(matches!(
            build_action(&o, &req("219", "123\r\nAction: Command", None)),
            Err(Error::Number(_))
        ));
        assert!(matches!(
            build_action(&o, &req("219\r\nAction: Command", "89991234567", None)),
            Err(Error::Inner(_))
        ));
        let long = "x".repeat(129);
        for id in ["a\r\nAction: Command", "a,b=c", "a b", "", &long] {
            assert!(
                matches!(
                    build_action(&o, &req("219", "89991234567", Some(id))),
                    Err(Error::CallId)
                ),
                "{id:?}"
            );
        }
        // A config that somehow holds CR/LF (it cannot load from a file) is still refused.
        let o = OriginateConfig {
            context: "x\r\nAction: Command".into(),
            ..OriginateConfig::default()
        };
        assert!(matches!(
            build_action(&o, &req("219", "89991234567", None)),
            Err(Error::Ami(ami::Error::Injection { .. }))
        ));
    }

    #[test]
    fn the_policy_is_checked_when_the_action_is_built() {
        let ids = ids();
        let o = OriginateConfig::default();
        let req = |dial| Request {
            inner: "219",
            dial,
            call_id: None,
            ids: &ids,
        };
        assert!(build_action(&o, &req("89991234567")).is_ok());
        assert!(matches!(
            build_action(&o, &req("88091234567")),
            Err(Error::Refused(Refusal::Deny(_)))
        ));
        assert!(matches!(
            build_action(&o, &req("81049301234567")),
            Err(Error::Refused(Refusal::Deny(_)))
        ));
        assert!(matches!(
            build_action(&o, &req("219")),
            Err(Error::Refused(Refusal::NotAllowed))
        ));
        let e = build_action(&o, &req("88091234567"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "not dialled: the number matches [originate] deny pattern _8809!"
        );
    }

    #[test]
    fn refusal_statuses() {
        let rate = Refusal::Rate {
            per_user: false,
            limit: 3,
        };
        assert_eq!(refusal_status(&rate).code(), "423");
        assert_eq!(refusal_status(&Refusal::NotAllowed).code(), "403");
        assert_eq!(refusal_status(&Refusal::Deny("_00.".into())).code(), "403");
    }

    #[test]
    fn ids_are_unique_and_safe() {
        let a = new_ids();
        let b = new_ids();
        assert_ne!(a, b);
        for id in [&a.channel_id, &a.action_id] {
            assert!(id.len() <= 149);
            assert!(
                id.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-'),
                "{id}"
            );
        }
    }

    #[test]
    fn dedup_window() {
        let d = Dedup::default();
        let t0 = Instant::now();
        assert!(d.first("a", t0));
        assert!(!d.first("a", t0 + Duration::from_secs(59)));
        assert!(d.first("b", t0 + Duration::from_secs(59)));
        assert!(d.first("a", t0 + Duration::from_secs(61)));
    }
}
