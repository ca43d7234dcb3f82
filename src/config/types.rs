//! The typed, validated sections of the config. Field names are the key names of the file.
//!
//! `[phone]` is [`crate::phone::PhoneConfig`]: the phone module owns its settings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::secret::{Secret, WebhookUrl};
use crate::dial_policy::DialPolicy;
use crate::phone::PhoneConfig;

/// `[asterisk]`: the AMI connection.
#[derive(Debug, Clone)]
pub struct AsteriskConfig {
    pub host: String,
    pub port: u16,
    pub username: String,
    pub secret: Secret,
    /// How often we send `Ping` on an idle link.
    pub ping_interval: Duration,
    /// No data at all for this long after a `Ping` = the link is dead, reconnect.
    pub ping_timeout: Duration,
    pub connect_timeout: Duration,
    /// Reconnect backoff starts here and doubles up to `reconnect_max`.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// How often the tracked channels are compared with `CoreShowChannels` (besides after
    /// every login): a missed Hangup finishes its call within this long.
    pub reconcile_interval: Duration,
}

/// `[bitrix24]`: the REST side and the incoming event webhook.
#[derive(Debug, Clone)]
pub struct Bitrix24Config {
    /// How REST calls are authorised: an inbound webhook, or a local application (OAuth).
    pub auth: AuthMode,
    /// Required with `auth = webhook`; unused (and may be absent) with `auth = app`.
    pub webhook_url: Option<WebhookUrl>,
    /// `auth = app` only: the local application's credentials and portal.
    pub app: Option<AppConfig>,
    /// Expected `auth[application_token]` of incoming events. `None` = not configured.
    pub app_token: Option<Secret>,
    /// If set, incoming events must carry this `auth[domain]`.
    pub domain: Option<String>,
    /// The portal's identity. If set, incoming events must carry this `auth[member_id]`; in
    /// app mode it also pins the install: an install event with another `member_id` is
    /// refused, even the first one (copied into [`AppConfig::member_id`]).
    pub member_id: Option<String>,
    /// Per request.
    pub timeout: Duration,
    /// How often the internal-number → user cache is rebuilt.
    pub users_refresh: Duration,
    /// Leaky bucket: sustained requests per second (Bitrix24 allows 2 on most plans).
    pub rate: f64,
    /// Leaky bucket: requests allowed at once before `rate` applies (Bitrix24: 50).
    pub burst: u32,
}

/// `[calls]`: which calls are tracked and who gets them.
#[derive(Debug, Clone, PartialEq)]
pub struct CallsConfig {
    /// Prefix of every `EXTERNAL_CALL_ID`; `[A-Za-z0-9_.-]+`.
    pub system_name: String,
    /// Monitored DIDs; empty = every inbound call.
    pub lines: Vec<String>,
    /// Dialplan contexts where trunk calls enter; never empty.
    pub inbound_contexts: Vec<String>,
    /// Internal number (1-6 digits) used when nobody else is found.
    pub default_user: Option<String>,
    pub responsible: Responsible,
    /// `(LINE, EXT)` pairs for `responsible = static`, in file order.
    pub static_responsible: Vec<(String, String)>,
    /// Create a lead for unknown numbers on register.
    pub crm_create: bool,
    /// Internal numbers allowed to get cards; empty = every employee.
    pub show_cards_to: Vec<String>,
    /// `ADD_TO_CHAT` of finish, always sent explicitly.
    pub add_to_chat: bool,
    /// Who a missed call is finished under.
    pub missed_user: MissedUser,
}

impl Default for CallsConfig {
    fn default() -> Self {
        CallsConfig {
            system_name: "callme".to_string(),
            lines: Vec::new(),
            inbound_contexts: vec!["from-trunk".to_string(), "from-pstn".to_string()],
            default_user: None,
            responsible: Responsible::Crm,
            static_responsible: Vec::new(),
            crm_create: false,
            show_cards_to: Vec::new(),
            add_to_chat: true,
            missed_user: MissedUser::Responsible,
        }
    }
}

/// Where the responsible employee of an inbound call comes from (before `default_user`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Responsible {
    /// `ASSIGNED_BY_ID` of the CRM contact / company / lead found by the caller's number.
    Crm,
    /// The `static_responsible` map from the called line.
    Static,
}

/// Who a missed call is finished under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissedUser {
    /// The responsible employee found at register time.
    Responsible,
    /// The last employee whose phone rang.
    LastRang,
    /// `default_user`.
    Default,
}

/// `[bitrix24] auth`: which credentials REST calls carry (bitrix24-api.md §1.1, §1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMode {
    /// An inbound webhook URL (`/rest/{user}/{code}/`): the default, unchanged since 1.0.
    #[default]
    Webhook,
    /// A local application: OAuth tokens from its install event, refreshed by us. Some portals
    /// refuse telephony methods to webhooks (`WRONG_AUTH_TYPE`, §1.4).
    App,
}

/// The OAuth default authorization server (bitrix24-api.md §1.3).
pub const DEFAULT_OAUTH_URL: &str = "https://oauth.bitrix.info/oauth/token/";

/// `[bitrix24]` keys of `auth = app`.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// The local application's `client_id` ("Application code").
    pub client_id: String,
    /// The local application's `client_secret` ("Application key").
    pub client_secret: Secret,
    /// The portal's host name (optionally `:port`). Install events must name it as
    /// `auth[domain]`, their `auth[client_endpoint]` must be [`AppConfig::endpoint`], and every
    /// REST call goes there, whatever an event says.
    pub portal: String,
    /// Where tokens are refreshed; configurable so tests can point it at a fake server.
    pub oauth_url: String,
    /// `[bitrix24] member_id`: when set, the only portal identity an install may carry.
    pub member_id: Option<String>,
    /// `[bitrix24] insecure_http`: talk to the portal over plain `http://` (tests against a
    /// fake portal on loopback only; a real portal is always `https://`).
    pub insecure_http: bool,
}

impl AppConfig {
    /// `https://{portal}/rest/`: the only REST endpoint app mode uses, and the only
    /// `auth[client_endpoint]` an install may carry.
    pub fn endpoint(&self) -> String {
        let scheme = if self.insecure_http { "http" } else { "https" };
        format!("{scheme}://{}/rest/", self.portal)
    }
}

/// `[http]`: the listeners. `listen` is the public one (the Bitrix24 endpoints and
/// `/healthz`); `ops_listen` the private one (`/healthz`, `/status`, `/metrics`), because
/// `/status` shows live caller numbers (docs/security.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// The ops listener; `None` (`ops_listen =` empty): none, and `/status` and `/metrics`
    /// are served on `listen` behind `ops_token`, or nowhere without it.
    pub ops_listen: Option<SocketAddr>,
    /// If set, `/status` and `/metrics` need `Authorization: Bearer <ops_token>`, on
    /// whichever listener serves them.
    pub ops_token: Option<Secret>,
    /// Worker threads, 1..=64.
    pub threads: usize,
    /// Where Bitrix24 reaches this server from outside (through the reverse proxy), ending
    /// with `/`. In app mode the event handler bound with `event.bind` is
    /// `{public_url}bitrix24/event`. `None`: events are not bound automatically.
    pub public_url: Option<String>,
    /// Most connections open at once; more are closed at once (docs/security.md).
    pub max_connections: usize,
    /// How long a client may stay silent (keep-alive, or within a request).
    pub idle_timeout: Duration,
    /// How long a client may take to send a request, from its first byte.
    pub request_timeout: Duration,
}

impl HttpConfig {
    /// `max_connections` by default. Measured (docs/security.md, "Connection limits"): a full
    /// cap costs about 30 MB of RSS in a release build and 35 MB in the test build, within
    /// the 40 MB bound of the flood test, and leaves room above its 1,220 connections.
    pub const DEFAULT_MAX_CONNECTIONS: usize = 1536;
    /// The largest `max_connections` accepted: two open files each still fit in the 65,536
    /// callme asks for.
    pub const MAX_MAX_CONNECTIONS: usize = 30_000;
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            // Loopback only; not 9090, the port of Prometheus itself.
            ops_listen: Some(SocketAddr::from(([127, 0, 0, 1], 8081))),
            ops_token: None,
            threads: 4,
            public_url: None,
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            idle_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// `[state]`: durable outbox and call state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateConfig {
    /// Absolute path.
    pub dir: PathBuf,
    /// Log loudly (once per crossing) when more Bitrix24 steps than this wait in the outbox.
    /// Steps are still accepted: they wait on disk.
    pub outbox_warn: usize,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            dir: PathBuf::from("/var/lib/callme"),
            outbox_warn: 1000,
        }
    }
}

/// `[recording]`: whether and how call recordings are attached to Bitrix24 calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingConfig {
    pub mode: RecordingMode,
    /// Which channel variables name the file.
    pub source: RecordingSource,
    /// The recordings root as Asterisk names it (the prefix of `MIXMONITOR_FILENAME` and
    /// `CallMeFULLFNAME`). Absolute; default `/var/spool/asterisk`.
    pub pbx_root: PathBuf,
    /// The same directory as callme sees it: equal to `pbx_root` when callme runs on the PBX,
    /// a mount point (NFS, sshfs) otherwise. Absolute; default: `pbx_root`.
    pub path_base: PathBuf,
    /// Public base URL of the recordings root, ending with `/` (`mode = url`).
    pub public_url: Option<String>,
    /// Base URL from which callme itself downloads (or checks) the files, ending with `/`.
    pub fetch_url: Option<String>,
    /// Files larger than this (bytes) go through Bitrix24's upload URL instead of base64.
    pub upload_max: u64,
    /// How long to wait for the MP3 after the call is finished.
    pub wait: Duration,
}

impl Default for RecordingConfig {
    fn default() -> Self {
        RecordingConfig {
            mode: RecordingMode::Off,
            source: RecordingSource::Both,
            pbx_root: PathBuf::from("/var/spool/asterisk"),
            path_base: PathBuf::from("/var/spool/asterisk"),
            public_url: None,
            fetch_url: None,
            upload_max: 10 * MIB,
            wait: Duration::from_secs(120),
        }
    }
}

/// `[originate]`: how a click-to-call becomes an AMI `Originate` (ami.md §4.2). The
/// employee's phone is rung first through `channel`; when they answer, Asterisk dials the
/// client's number (`Exten`) in `context`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginateConfig {
    /// `tech/data` template with `{inner}` (the employee's internal number).
    pub channel: String,
    /// Dialplan context the client's number is dialled in.
    pub context: String,
    /// How long the employee's phone rings (sent to Asterisk in milliseconds).
    pub timeout: Duration,
    /// Caller ID shown on the employee's phone; template with `{number}` and `{inner}`.
    pub caller_id: String,
    /// Dial numbers of our own country in national form (`national_prefix` + NSN).
    pub dial_national: bool,
    /// Digits prepended to every dialled number (an outside-line prefix such as `9`).
    pub dial_prefix: String,
    /// Callback forms (ONEXTERNALCALLBACKSTART): `(LINE_NUMBER, internal number or queue)`
    /// to ring first. A line not listed rings the CRM item's responsible employee, then
    /// `[calls] default_user`.
    pub callback_targets: Vec<(String, String)>,
    /// Toll-fraud guard: `allow`, `deny` and the rate limits (`crate::dial_policy`). The
    /// defaults follow `[phone]`, `dial_national` and `dial_prefix`.
    pub policy: DialPolicy,
}

impl Default for OriginateConfig {
    /// FreePBX: `Local/219@from-internal` rings the phone with all its follow-me rules, and
    /// `from-internal` routes the client's number through the outbound routes.
    fn default() -> Self {
        OriginateConfig {
            channel: "Local/{inner}@from-internal".to_string(),
            context: "from-internal".to_string(),
            timeout: Duration::from_secs(30),
            caller_id: "{number}".to_string(),
            dial_national: true,
            dial_prefix: String::new(),
            callback_targets: Vec::new(),
            policy: DialPolicy::defaults(&PhoneConfig::default(), true, ""),
        }
    }
}

/// How a recording reaches Bitrix24 (bitrix24-api.md §4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordingMode {
    /// Recordings are not attached.
    Off,
    /// `RECORD_URL`: Bitrix24 downloads the file from `public_url` itself.
    Url,
    /// callme sends the bytes: base64 `FILE_CONTENT`, or the upload URL for large files.
    Upload,
}

/// Which channel variables name a call's recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordingSource {
    /// `CallMeFULLFNAME`, set by `contrib/b24_continuous_parallel.conf`.
    Callme,
    /// `MIXMONITOR_FILENAME`, set by FreePBX's own call recording.
    Freepbx,
    /// Both; `CallMeFULLFNAME` wins when a call has both.
    Both,
}

impl RecordingSource {
    /// The variable names, best first (`TrackerConfig::recording_vars`).
    pub fn vars(self) -> Vec<String> {
        let v: &[&str] = match self {
            RecordingSource::Callme => &["CallMeFULLFNAME"],
            RecordingSource::Freepbx => &["MIXMONITOR_FILENAME"],
            RecordingSource::Both => &["CallMeFULLFNAME", "MIXMONITOR_FILENAME"],
        };
        v.iter().map(|s| s.to_string()).collect()
    }
}

/// One MiB: the unit of `upload_max`.
pub(super) const MIB: u64 = 1024 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recording_source_maps_to_tracker_variables() {
        assert_eq!(RecordingSource::Callme.vars(), vec!["CallMeFULLFNAME"]);
        assert_eq!(RecordingSource::Freepbx.vars(), vec!["MIXMONITOR_FILENAME"]);
        assert_eq!(
            RecordingSource::Both.vars(),
            vec!["CallMeFULLFNAME", "MIXMONITOR_FILENAME"]
        );
    }
}
