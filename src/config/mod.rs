//! Configuration: `/etc/callme/callme.conf` → a validated, typed [`Config`].
//!
//! Two steps, like ripgrep's low-level/high-level arguments:
//! 1. [`ini`] parses the Asterisk-style text and remembers `file:line` for every entry;
//! 2. validation here turns entries into typed values.
//!
//! The rules that matter to the people who edit the file (PBX admins):
//! - every problem is reported as `FILE:LINE: what is wrong (what is allowed)`, and all problems
//!   of a file are reported at once, so `callme check-config` is one edit-and-retry loop;
//! - an unknown section or key is an error, never ignored: a typo (`defualt_user`) must not
//!   silently fall back to the default and leave the admin wondering why the setting has no effect;
//! - secrets (`secret`, `app_token`, the code in `webhook_url`) never appear in `Debug` output or
//!   error messages, because both end up in the journal.

mod ini;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ini::{Entry, Ini, SECRET_KEYS};

pub use crate::phone::PhoneConfig;

/// Where the RPM installs the config; the default of `-c` for the daemon subcommands.
pub const DEFAULT_PATH: &str = "/etc/callme/callme.conf";

/// Every section and its keys. The names are a contract (see `callme.conf.example`).
const SCHEMA: &[(&str, &[&str])] = &[
    (
        "asterisk",
        &[
            "host",
            "port",
            "username",
            "secret",
            "ping_interval",
            "ping_timeout",
            "connect_timeout",
            "reconnect_min",
            "reconnect_max",
        ],
    ),
    (
        "bitrix24",
        &[
            "auth",
            "webhook_url",
            "app_token",
            "domain",
            "member_id",
            "timeout",
            "users_refresh",
            "rate",
            "burst",
            "client_id",
            "client_secret",
            "portal",
            "oauth_url",
        ],
    ),
    (
        "calls",
        &[
            "system_name",
            "lines",
            "inbound_contexts",
            "default_user",
            "responsible",
            "static_responsible",
            "crm_create",
            "show_cards_to",
            "add_to_chat",
            "missed_user",
        ],
    ),
    (
        "phone",
        &["country_code", "national_prefix", "national_length"],
    ),
    ("http", &["listen", "threads", "public_url"]),
    ("state", &["dir", "outbox_warn"]),
    (
        "recording",
        &[
            "mode",
            "source",
            "pbx_root",
            "path_base",
            "public_url",
            "fetch_url",
            "upload_max",
            "wait",
        ],
    ),
    (
        "originate",
        &[
            "channel",
            "context",
            "timeout",
            "caller_id",
            "dial_national",
            "dial_prefix",
            "callback_targets",
        ],
    ),
];

/// Longest accepted seconds value: one day. Anything longer is a typo (`3000` for `300`?) and
/// would also make the daemon look hung.
const MAX_SECS: u64 = 86_400;

// ---------------------------------------------------------------------------------------------
// Errors

/// Why the config could not be loaded.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The file could not be read.
    Io { path: PathBuf, source: io::Error },
    /// The text is not valid INI (a line that is neither section, key = value, comment nor blank;
    /// a key before any section; a duplicate key or section).
    Syntax {
        file: String,
        line: usize,
        msg: String,
    },
    /// Valid INI, but not a valid callme config (unknown name, wrong type, missing key).
    /// `line` is 0 when the problem is a missing section.
    Invalid {
        file: String,
        line: usize,
        msg: String,
    },
    /// Several of the above, in line order; `Display` prints one per line.
    Multiple(Vec<Error>),
}

impl Error {
    fn from_list(mut errors: Vec<Error>) -> Error {
        if errors.len() == 1 {
            errors.remove(0)
        } else {
            Error::Multiple(errors)
        }
    }

    /// The individual problems (one element unless this is [`Error::Multiple`]).
    pub fn problems(&self) -> Vec<&Error> {
        match self {
            Error::Multiple(v) => v.iter().flat_map(Error::problems).collect(),
            e => vec![e],
        }
    }

    /// Line the (first) problem points at; `None` for I/O errors, `Some(0)` for a missing section.
    pub fn line(&self) -> Option<usize> {
        match self {
            Error::Io { .. } => None,
            Error::Syntax { line, .. } | Error::Invalid { line, .. } => Some(*line),
            Error::Multiple(v) => v.first().and_then(Error::line),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, source } => {
                let hint = match source.kind() {
                    io::ErrorKind::NotFound => {
                        " (create it from callme.conf.example, or pass -c FILE)"
                    }
                    io::ErrorKind::PermissionDenied => {
                        " (the callme user must be able to read it: owner root, group callme, mode 0640)"
                    }
                    _ => "",
                };
                write!(
                    f,
                    "{}: cannot read the config file: {source}{hint}",
                    path.display()
                )
            }
            Error::Syntax { file, line, msg } | Error::Invalid { file, line, msg } => {
                if *line == 0 {
                    write!(f, "{file}: {msg}")
                } else {
                    write!(f, "{file}:{line}: {msg}")
                }
            }
            Error::Multiple(errors) => {
                for (i, e) in errors.iter().enumerate() {
                    if i > 0 {
                        writeln!(f)?;
                    }
                    write!(f, "{e}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Secret values

/// A value that must never be logged: `Debug` and `Display` print `***`.
///
/// The only way to the text is [`Secret::expose`], so every use is visible in review.
#[derive(Clone, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compare with `other` in time that does not depend on where the bytes differ, so a remote
    /// caller cannot guess `app_token` byte by byte. (The length may leak; that is acceptable.)
    pub fn ct_eq(&self, other: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), other.as_bytes());
        let mut diff = a.len() ^ b.len();
        for i in 0..a.len().max(b.len()) {
            let x = a.get(i).copied().unwrap_or(0);
            let y = b.get(i).copied().unwrap_or(0);
            diff |= usize::from(x ^ y);
        }
        std::hint::black_box(diff) == 0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The Bitrix24 inbound webhook base URL, normalised to end with `/`.
///
/// Everything after `/rest/USER_ID/` is the webhook code, which is as good as a password for
/// the portal, so `Debug` and `Display` show `https://portal.bitrix24.ru/rest/1/***/`.
/// Use [`WebhookUrl::expose`] to build request URLs (`{base}{method}.json`).
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    url: String,
    /// Byte offset just past `/rest/`.
    rest_end: usize,
}

impl WebhookUrl {
    /// Check and normalise a webhook URL. The error text says what is wrong and what is allowed;
    /// it never repeats the URL.
    pub fn parse(s: &str) -> Result<WebhookUrl, String> {
        const ALLOWED: &str =
            "allowed: the inbound webhook URL from Bitrix24, e.g. https://portal.bitrix24.ru/rest/1/abcdef/";
        let Some(after_scheme) = s
            .strip_prefix("https://")
            .or_else(|| s.strip_prefix("http://"))
        else {
            return Err(format!("must start with https:// or http:// ({ALLOWED})"));
        };
        let scheme_len = s.len() - after_scheme.len();
        if s.chars()
            .any(|c| c.is_whitespace() || matches!(c, '?' | '#' | '"' | '\''))
        {
            return Err(format!(
                "must not contain spaces, quotes, `?` or `#` ({ALLOWED})"
            ));
        }
        let host_len = after_scheme.find('/').unwrap_or(after_scheme.len());
        let host = &after_scheme[..host_len];
        if host.is_empty() {
            return Err(format!("has no host name ({ALLOWED})"));
        }
        if host.contains('@') {
            return Err(format!("must not contain user:password@ ({ALLOWED})"));
        }
        let path = &after_scheme[host_len..];
        let Some(rest_at) = path.find("/rest/") else {
            return Err(format!("does not contain /rest/ ({ALLOWED})"));
        };
        let tail = path[rest_at + "/rest/".len()..].trim_end_matches('/');
        if tail.is_empty() {
            return Err(
                "has nothing after /rest/ (allowed: .../rest/USER_ID/CODE/ as shown by Bitrix24)"
                    .to_string(),
            );
        }
        if let Some(last) = tail.rsplit('/').next().filter(|seg| seg.contains('.')) {
            return Err(format!(
                "ends with a method name `{last}` (allowed: only the base URL, up to and including the code: .../rest/1/abcdef/)"
            ));
        }
        let rest_end = scheme_len + host_len + rest_at + "/rest/".len();
        let url = format!("{}/", s.trim_end_matches('/'));
        Ok(WebhookUrl { url, rest_end })
    }

    /// The full URL with the secret code; ends with `/`.
    pub fn expose(&self) -> &str {
        &self.url
    }

    /// `https://host/rest/USER_ID/***/`: safe for logs.
    pub fn redacted(&self) -> String {
        let (head, tail) = self.url.split_at(self.rest_end);
        let segs: Vec<&str> = tail.split('/').filter(|s| !s.is_empty()).collect();
        match segs.as_slice() {
            [] => head.to_string(),
            [_] => format!("{head}***/"),
            [user, ..] => format!("{head}{user}/***/"),
        }
    }

    /// Plain `http://`: the code crosses the network in clear text.
    pub fn is_plain_http(&self) -> bool {
        self.url.starts_with("http://")
    }
}

impl fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.redacted(), f)
    }
}

impl fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

// ---------------------------------------------------------------------------------------------
// Typed config

/// The whole validated configuration. Field names are the key names of the file.
#[derive(Debug, Clone)]
pub struct Config {
    pub asterisk: AsteriskConfig,
    pub bitrix24: Bitrix24Config,
    pub calls: CallsConfig,
    pub phone: PhoneConfig,
    pub http: HttpConfig,
    pub state: StateConfig,
    pub recording: RecordingConfig,
    pub originate: OriginateConfig,
    /// The file this came from (for messages such as "reloaded /etc/callme/callme.conf").
    pub source: PathBuf,
}

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
    /// If set, incoming events must carry this `auth[member_id]`.
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
    /// The portal's host name; the first install event must come from it (`auth[domain]`).
    pub portal: String,
    /// Where tokens are refreshed; configurable so tests can point it at a fake server.
    pub oauth_url: String,
}

/// `[http]`: the webhook and ops endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// Worker threads, 1..=64.
    pub threads: usize,
    /// Where Bitrix24 reaches this server from outside (through the reverse proxy), ending
    /// with `/`. In app mode the event handler bound with `event.bind` is
    /// `{public_url}bitrix24/event`. `None`: events are not bound automatically.
    pub public_url: Option<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            threads: 4,
            public_url: None,
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
const MIB: u64 = 1024 * 1024;

impl Config {
    /// A valid config with placeholder credentials, for `callme demo` and replay without `-c`.
    /// Everything not set here has its documented default, except the state directory, which
    /// points under the system temp dir so the demo runs as an ordinary user.
    pub fn demo() -> Config {
        const DEMO: &str = "[asterisk]\nusername = demo\nsecret = demo\n\
                            [bitrix24]\nwebhook_url = https://demo.invalid/rest/1/demo/\n";
        let mut cfg = parse_str(DEMO, "<built-in demo config>")
            .expect("the built-in demo config is valid (tested)");
        cfg.state.dir = std::env::temp_dir().join("callme-demo");
        cfg
    }
}

// ---------------------------------------------------------------------------------------------
// Loading

/// Read, parse and validate a config file.
pub fn load(path: &Path) -> Result<Config, Error> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let file = path.display().to_string();
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let line = good.iter().filter(|&&b| b == b'\n').count() + 1;
            return Err(Error::Syntax {
                file,
                line,
                msg: "the file is not valid UTF-8 (allowed: UTF-8 text; re-save it as UTF-8)"
                    .to_string(),
            });
        }
    };
    let mut cfg = parse_str(&text, &file)?;
    cfg.source = path.to_path_buf();
    warn_risky(&cfg, path);
    Ok(cfg)
}

/// Parse and validate config text; `file_name` is used in error messages and as `source`.
pub fn parse_str(text: &str, file_name: &str) -> Result<Config, Error> {
    let ini = ini::parse(text, file_name)?;
    let mut v = Validator {
        file: file_name,
        ini: &ini,
        errors: Vec::new(),
    };
    v.check_names();
    let cfg = v.build();
    let mut errors = v.errors;
    match cfg {
        Some(cfg) if errors.is_empty() => Ok(cfg),
        _ => {
            // Stable sort: problems on the same line keep their order; line 0 (missing
            // sections) first.
            errors.sort_by_key(|e| e.line().unwrap_or(0));
            Err(Error::from_list(errors))
        }
    }
}

/// Settings that work but deserve a word in the journal.
fn warn_risky(cfg: &Config, path: &Path) {
    if cfg
        .bitrix24
        .webhook_url
        .as_ref()
        .is_some_and(WebhookUrl::is_plain_http)
    {
        log::warn!(
            "{}: webhook_url uses http://, the webhook code is sent unencrypted",
            path.display()
        );
    }
    if cfg.bitrix24.auth == AuthMode::Webhook && cfg.bitrix24.app_token.is_none() {
        log::warn!(
            "{}: [bitrix24] app_token is empty, so incoming Bitrix24 events cannot be verified",
            path.display()
        );
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o004 != 0 {
                log::warn!(
                    "{}: readable by every user but holds the AMI secret and webhook code; chmod 0640",
                    path.display()
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Validation

struct Validator<'a> {
    file: &'a str,
    ini: &'a Ini,
    errors: Vec<Error>,
}

impl<'a> Validator<'a> {
    fn error(&mut self, line: usize, msg: String) {
        self.errors.push(Error::Invalid {
            file: self.file.to_string(),
            line,
            msg,
        });
    }

    fn entry(&self, section: &str, key: &str) -> Option<&'a Entry> {
        self.ini.section(section).and_then(|s| s.get(key))
    }

    /// Unknown sections and keys. Keys of an unknown section are not reported one by one:
    /// the section error already says what to fix.
    fn check_names(&mut self) {
        let allowed_sections: Vec<&str> = SCHEMA.iter().map(|(name, _)| *name).collect();
        for section in &self.ini.sections {
            match SCHEMA.iter().find(|(name, _)| *name == section.name) {
                None => {
                    let hint = suggest(&section.name, &allowed_sections)
                        .map(|s| format!(", did you mean [{s}]?"))
                        .unwrap_or_default();
                    let list = allowed_sections
                        .iter()
                        .map(|s| format!("[{s}]"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    self.error(
                        section.line,
                        format!(
                            "unknown section [{}]{hint} (allowed sections: {list})",
                            section.name
                        ),
                    );
                }
                Some((_, keys)) => {
                    for e in &section.entries {
                        if !keys.contains(&e.key.as_str()) {
                            let hint = suggest(&e.key, keys)
                                .map(|s| format!(", did you mean `{s}`?"))
                                .unwrap_or_default();
                            self.error(
                                e.line,
                                format!(
                                    "unknown key `{}` in [{}]{hint} (allowed keys: {})",
                                    e.key,
                                    section.name,
                                    keys.join(", ")
                                ),
                            );
                        }
                    }
                }
            }
        }
    }

    /// Record a bad value. Secret values are never repeated.
    fn bad(&mut self, section: &str, e: &Entry, why: &str) {
        let what = if SECRET_KEYS.contains(&e.key.as_str()) {
            format!("[{section}] {}", e.key)
        } else {
            format!("[{section}] {} = \"{}\"", e.key, escape_short(&e.value))
        };
        self.error(e.line, format!("{what}: {why}"));
    }

    /// A key with a default. On a bad value the error is recorded and the default returned, so
    /// validation goes on and reports every problem (the config is not returned in that case).
    fn value<T>(
        &mut self,
        section: &str,
        key: &str,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> T {
        let Some(e) = self.entry(section, key) else {
            return default;
        };
        match parse(&e.value) {
            Ok(v) => v,
            Err(why) => {
                self.bad(section, e, &why);
                default
            }
        }
    }

    /// An optional key: absent or empty means `None`.
    fn optional<T>(
        &mut self,
        section: &str,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let e = self.entry(section, key).filter(|e| !e.value.is_empty())?;
        match parse(&e.value) {
            Ok(v) => Some(v),
            Err(why) => {
                self.bad(section, e, &why);
                None
            }
        }
    }

    /// A required key: absent or empty is an error pointing at the section header.
    fn required<T>(
        &mut self,
        section: &str,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        match self.entry(section, key) {
            Some(e) if e.value.is_empty() => {
                self.error(
                    e.line,
                    format!("[{section}] {key} is empty (it is required)"),
                );
                None
            }
            Some(e) => match parse(&e.value) {
                Ok(v) => Some(v),
                Err(why) => {
                    self.bad(section, e, &why);
                    None
                }
            },
            None => {
                match self.ini.section(section) {
                    Some(s) => {
                        let line = s.line;
                        self.error(
                            line,
                            format!("[{section}] {key} is missing (it is required: add `{key} = ...` to this section)"),
                        );
                    }
                    None => self.error(
                        0,
                        format!("[{section}] {key} is missing (it is required: add a [{section}] section with `{key} = ...`)"),
                    ),
                }
                None
            }
        }
    }

    /// Line to blame for a problem involving several keys: the first of them present, else the
    /// section header, else 0.
    fn line_of(&self, section: &str, keys: &[&str]) -> usize {
        keys.iter()
            .find_map(|k| self.entry(section, k).map(|e| e.line))
            .or_else(|| self.ini.section(section).map(|s| s.line))
            .unwrap_or(0)
    }

    fn build(&mut self) -> Option<Config> {
        let asterisk = self.asterisk();
        let bitrix24 = self.bitrix24();
        let calls = self.calls();
        let phone = self.phone();
        let http = self.http();
        let state = self.state();
        let recording = self.recording();
        let originate = self.originate();
        Some(Config {
            asterisk: asterisk?,
            bitrix24: bitrix24?,
            calls,
            phone,
            http,
            state,
            recording,
            originate,
            source: PathBuf::from(self.file),
        })
    }

    fn asterisk(&mut self) -> Option<AsteriskConfig> {
        const S: &str = "asterisk";
        let errors_before = self.errors.len();
        let host = self.value(S, "host", "127.0.0.1".to_string(), parse_host);
        let port = self.value(S, "port", 5038, parse_port);
        let username = self.required(S, "username", parse_username);
        let secret = self.required(S, "secret", |v| Ok(Secret::new(v)));
        let ping_interval = self.value(S, "ping_interval", secs(10), parse_secs);
        let ping_timeout = self.value(S, "ping_timeout", secs(5), parse_secs);
        let connect_timeout = self.value(S, "connect_timeout", secs(5), parse_secs);
        let reconnect_min = self.value(S, "reconnect_min", secs(1), parse_secs);
        let reconnect_max = self.value(S, "reconnect_max", secs(30), parse_secs);
        // Cross-checks only on values that parsed; otherwise they would repeat the problem.
        if self.errors.len() == errors_before && reconnect_max < reconnect_min {
            let line = self.line_of(S, &["reconnect_max", "reconnect_min"]);
            self.error(
                line,
                format!(
                    "[{S}] reconnect_max ({}s) is less than reconnect_min ({}s) (allowed: reconnect_max >= reconnect_min)",
                    reconnect_max.as_secs_f64(),
                    reconnect_min.as_secs_f64()
                ),
            );
        }
        Some(AsteriskConfig {
            host,
            port,
            username: username?,
            secret: secret?,
            ping_interval,
            ping_timeout,
            connect_timeout,
            reconnect_min,
            reconnect_max,
        })
    }

    fn bitrix24(&mut self) -> Option<Bitrix24Config> {
        const S: &str = "bitrix24";
        let auth = self.value(S, "auth", AuthMode::Webhook, |v| {
            match v.to_ascii_lowercase().as_str() {
                "webhook" => Ok(AuthMode::Webhook),
                "app" => Ok(AuthMode::App),
                _ => Err("unknown mode (allowed: webhook, app)".to_string()),
            }
        });
        let (webhook_url, app) = match auth {
            AuthMode::Webhook => {
                for key in ["client_id", "client_secret", "portal"] {
                    if let Some(e) = self.entry(S, key).filter(|e| !e.value.is_empty()) {
                        let line = e.line;
                        self.error(
                            line,
                            format!("[{S}] {key} is only used with auth = app (allowed: empty, or set auth = app)"),
                        );
                    }
                }
                let url = self.required(S, "webhook_url", WebhookUrl::parse);
                (url.map(Some), Some(None))
            }
            AuthMode::App => {
                let url = self.optional(S, "webhook_url", WebhookUrl::parse);
                let client_id = self.required(S, "client_id", parse_client_id);
                let client_secret = self.required(S, "client_secret", |v| Ok(Secret::new(v)));
                let portal = self.required(S, "portal", parse_domain);
                let oauth_url = self.value(
                    S,
                    "oauth_url",
                    DEFAULT_OAUTH_URL.to_string(),
                    parse_oauth_url,
                );
                let app = match (client_id, client_secret, portal) {
                    (Some(client_id), Some(client_secret), Some(portal)) => Some(AppConfig {
                        client_id,
                        client_secret,
                        portal,
                        oauth_url,
                    }),
                    _ => None,
                };
                (Some(url), app.map(Some))
            }
        };
        let app_token = self.optional(S, "app_token", |v| Ok(Secret::new(v)));
        let domain = self.optional(S, "domain", parse_domain);
        let member_id = self.optional(S, "member_id", parse_member_id);
        let timeout = self.value(S, "timeout", secs(10), parse_secs);
        let users_refresh = self.value(S, "users_refresh", secs(300), parse_secs);
        let rate = self.value(S, "rate", 2.0, parse_rate);
        let burst = self.value(S, "burst", 50, parse_burst);
        // Checked after every other key, so all problems are reported at once.
        let (webhook_url, app) = (webhook_url?, app?);
        Some(Bitrix24Config {
            auth,
            webhook_url,
            app,
            app_token,
            domain,
            member_id,
            timeout,
            users_refresh,
            rate,
            burst,
        })
    }

    fn calls(&mut self) -> CallsConfig {
        const S: &str = "calls";
        let d = CallsConfig::default();
        let errors_before = self.errors.len();
        let system_name = self.value(S, "system_name", d.system_name, parse_system_name);
        let lines = self.value(S, "lines", d.lines, |v| parse_list(v, check_phone));
        let inbound_contexts = self.value(S, "inbound_contexts", d.inbound_contexts, |v| {
            let list = parse_list(v, check_context)?;
            if list.is_empty() {
                return Err(
                    "is empty (allowed: at least one dialplan context, e.g. from-trunk, from-pstn)"
                        .to_string(),
                );
            }
            Ok(list)
        });
        let default_user = self.optional(S, "default_user", |v| {
            check_internal(v).map(|()| v.to_string())
        });
        let responsible = self.value(S, "responsible", d.responsible, |v| {
            match v.to_ascii_lowercase().as_str() {
                "crm" => Ok(Responsible::Crm),
                "static" => Ok(Responsible::Static),
                _ => Err("unknown mode (allowed: crm, static)".to_string()),
            }
        });
        let static_responsible = self.value(
            S,
            "static_responsible",
            d.static_responsible,
            parse_static_responsible,
        );
        let crm_create = self.value(S, "crm_create", d.crm_create, parse_bool);
        let show_cards_to = self.value(S, "show_cards_to", d.show_cards_to, |v| {
            parse_list(v, check_internal)
        });
        let add_to_chat = self.value(S, "add_to_chat", d.add_to_chat, parse_bool);
        let missed_user = self.value(S, "missed_user", d.missed_user, |v| {
            match v.to_ascii_lowercase().as_str() {
                "responsible" => Ok(MissedUser::Responsible),
                "last_rang" => Ok(MissedUser::LastRang),
                "default" => Ok(MissedUser::Default),
                _ => Err("unknown choice (allowed: responsible, last_rang, default)".to_string()),
            }
        });
        let all_parsed = self.errors.len() == errors_before;
        if all_parsed && responsible == Responsible::Static && static_responsible.is_empty() {
            let line = self.line_of(S, &["responsible"]);
            self.error(
                line,
                format!("[{S}] responsible = static needs static_responsible (allowed: set static_responsible = LINE:EXT, ..., or use responsible = crm)"),
            );
        }
        if all_parsed && missed_user == MissedUser::Default && default_user.is_none() {
            let line = self.line_of(S, &["missed_user"]);
            self.error(
                line,
                format!("[{S}] missed_user = default needs default_user (allowed: set default_user, or use missed_user = responsible or last_rang)"),
            );
        }
        CallsConfig {
            system_name,
            lines,
            inbound_contexts,
            default_user,
            responsible,
            static_responsible,
            crm_create,
            show_cards_to,
            add_to_chat,
            missed_user,
        }
    }

    fn phone(&mut self) -> PhoneConfig {
        const S: &str = "phone";
        let d = PhoneConfig::default();
        let country_code = self.value(S, "country_code", d.country_code, |v| {
            if (1..=3).contains(&v.len()) && all_digits(v) && !v.starts_with('0') {
                Ok(v.to_string())
            } else {
                Err(
                    "not a country calling code (allowed: 1-3 digits, not starting with 0, e.g. 7)"
                        .to_string(),
                )
            }
        });
        let national_prefix = self.value(S, "national_prefix", d.national_prefix, |v| {
            if v.len() <= 4 && all_digits(v) {
                Ok(v.to_string())
            } else {
                Err(
                    "not a trunk prefix (allowed: up to 4 digits, e.g. 8, or empty for none)"
                        .to_string(),
                )
            }
        });
        let national_length = self.value(S, "national_length", d.national_length, |v| {
            parse_number(v, 4, 15)
        });
        PhoneConfig {
            country_code,
            national_prefix,
            national_length,
        }
    }

    fn http(&mut self) -> HttpConfig {
        const S: &str = "http";
        let d = HttpConfig::default();
        let listen = self.value(S, "listen", d.listen, |v| {
            v.parse::<SocketAddr>().map_err(|_| {
                "not an address (allowed: IP:PORT, e.g. 127.0.0.1:8080 or [::]:8080; host names are not accepted)".to_string()
            })
        });
        let threads = self.value(S, "threads", d.threads, |v| parse_number(v, 1, 64));
        let public_url = self.optional(S, "public_url", parse_public_url);
        HttpConfig {
            listen,
            threads,
            public_url,
        }
    }

    fn state(&mut self) -> StateConfig {
        const S: &str = "state";
        let d = StateConfig::default();
        let dir = self.value(S, "dir", d.dir, |v| {
            let p = PathBuf::from(v);
            if p.is_absolute() {
                Ok(p)
            } else {
                Err("not an absolute path (allowed: a directory starting with /, e.g. /var/lib/callme; the daemon runs from /)".to_string())
            }
        });
        let outbox_warn = self.value(S, "outbox_warn", d.outbox_warn, |v| {
            parse_number(v, 1, 10_000_000)
        });
        StateConfig { dir, outbox_warn }
    }

    fn recording(&mut self) -> RecordingConfig {
        const S: &str = "recording";
        let d = RecordingConfig::default();
        let errors_before = self.errors.len();
        let mode = self.value(S, "mode", d.mode, |v| {
            match v.to_ascii_lowercase().as_str() {
                "off" => Ok(RecordingMode::Off),
                "url" => Ok(RecordingMode::Url),
                "upload" => Ok(RecordingMode::Upload),
                _ => Err("unknown mode (allowed: off, url, upload)".to_string()),
            }
        });
        let source = self.value(S, "source", d.source, |v| {
            match v.to_ascii_lowercase().as_str() {
                "callme" => Ok(RecordingSource::Callme),
                "freepbx" => Ok(RecordingSource::Freepbx),
                "both" => Ok(RecordingSource::Both),
                _ => Err("unknown source (allowed: callme, freepbx, both)".to_string()),
            }
        });
        let pbx_root = self.value(S, "pbx_root", d.pbx_root, parse_root);
        let path_base = self.optional(S, "path_base", parse_root);
        let public_url = self.optional(S, "public_url", parse_base_url);
        let fetch_url = self.optional(S, "fetch_url", parse_base_url);
        let upload_max = self.value(S, "upload_max", d.upload_max, parse_mib);
        let wait = self.value(S, "wait", d.wait, parse_secs);
        if self.errors.len() == errors_before && mode == RecordingMode::Url && public_url.is_none()
        {
            let line = self.line_of(S, &["public_url", "mode"]);
            self.error(
                line,
                format!("[{S}] mode = url needs public_url (allowed: set public_url to the address where Bitrix24 can download the recordings, or use mode = upload)"),
            );
        }
        RecordingConfig {
            mode,
            source,
            path_base: path_base.unwrap_or_else(|| pbx_root.clone()),
            pbx_root,
            public_url,
            fetch_url,
            upload_max,
            wait,
        }
    }
}

impl Validator<'_> {
    fn originate(&mut self) -> OriginateConfig {
        const S: &str = "originate";
        let d = OriginateConfig::default();
        let channel = self.value(S, "channel", d.channel, parse_channel_template);
        let context = self.value(S, "context", d.context, |v| {
            if v.is_empty() {
                return Err("is empty (allowed: a dialplan context, e.g. from-internal)".into());
            }
            check_context(v).map(|()| v.to_string())
        });
        let timeout = self.value(S, "timeout", d.timeout, parse_secs);
        let caller_id = self.value(S, "caller_id", d.caller_id, parse_caller_id_template);
        let dial_national = self.value(S, "dial_national", d.dial_national, parse_bool);
        let dial_prefix = self.value(S, "dial_prefix", d.dial_prefix, |v| {
            if v.len() <= 4 && all_digits(v) {
                Ok(v.to_string())
            } else {
                Err("not a dial prefix (allowed: up to 4 digits, e.g. 9, or empty for none)".into())
            }
        });
        let callback_targets = self.value(
            S,
            "callback_targets",
            d.callback_targets,
            parse_callback_targets,
        );
        OriginateConfig {
            channel,
            context,
            timeout,
            caller_id,
            dial_national,
            dial_prefix,
            callback_targets,
        }
    }
}

/// Placeholders a template may use, and whether each one is allowed.
fn check_placeholders(v: &str, allowed: &[&str]) -> Result<(), String> {
    let mut rest = v;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            return Err("has a `{` without `}`".to_string());
        };
        let name = &rest[open + 1..open + close];
        if !allowed.contains(&name) {
            return Err(format!("unknown placeholder {{{}}}", escape_short(name)));
        }
        rest = &rest[open + close + 1..];
    }
    if rest.contains('}') {
        return Err("has a `}` without `{`".to_string());
    }
    Ok(())
}

/// `tech/data` with `{inner}`: `Local/{inner}@from-internal`, `PJSIP/{inner}`, `SIP/{inner}`.
/// Only characters that appear in channel names, so the template cannot smuggle anything
/// into the action (AMI splits nothing here, but a space or comma is always a mistake).
fn parse_channel_template(v: &str) -> Result<String, String> {
    const ALLOWED: &str =
        "allowed: TECH/DATA with {inner}, e.g. Local/{inner}@from-internal or PJSIP/{inner}";
    let ok_chars = v.bytes().all(|b| {
        b.is_ascii_alphanumeric() || matches!(b, b'/' | b'@' | b'_' | b'.' | b'-' | b'{' | b'}')
    });
    if !ok_chars {
        return Err(format!(
            "has characters a channel name cannot have ({ALLOWED})"
        ));
    }
    check_placeholders(v, &["inner"]).map_err(|e| format!("{e} ({ALLOWED})"))?;
    if !v.contains("{inner}") {
        return Err(format!("does not contain {{inner}} ({ALLOWED})"));
    }
    match v.split_once('/') {
        Some((tech, data)) if !tech.is_empty() && !data.is_empty() && !tech.contains('{') => {
            Ok(v.to_string())
        }
        _ => Err(format!("is not TECH/DATA ({ALLOWED})")),
    }
}

/// The caller ID template: `{number}`, `"Client" <{number}>`, `{inner}`...
fn parse_caller_id_template(v: &str) -> Result<String, String> {
    const ALLOWED: &str =
        "allowed: text with {number} and/or {inner}, e.g. {number} or \"CRM\" <{number}>";
    if v.chars().any(char::is_control) {
        return Err(format!("has control characters ({ALLOWED})"));
    }
    if v.len() > 80 {
        return Err(format!("is longer than 80 characters ({ALLOWED})"));
    }
    check_placeholders(v, &["number", "inner"]).map_err(|e| format!("{e} ({ALLOWED})"))?;
    Ok(v.to_string())
}

// ---------------------------------------------------------------------------------------------
// Value parsers: Ok(value) or Err("what is wrong (what is allowed)").

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn all_digits(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit())
}

/// Seconds, whole or with up to three decimals (`10`, `2.5`), more than 0, at most a day.
/// Parsed by hand into milliseconds so no float rounding or `Duration` panic is possible.
fn parse_secs(v: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "not a number of seconds (allowed: more than 0 and at most {MAX_SECS}, e.g. 10 or 2.5)"
        )
    };
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if int.is_empty() || int.len() > 6 || !all_digits(int) || frac.len() > 3 || !all_digits(frac) {
        return Err(bad());
    }
    let whole: u64 = int.parse().map_err(|_| bad())?;
    let millis: u64 = format!("{frac:0<3}").parse().map_err(|_| bad())?;
    let total = whole * 1000 + millis;
    if total == 0 || total > MAX_SECS * 1000 {
        return Err(bad());
    }
    Ok(Duration::from_millis(total))
}

/// An absolute directory, normalised to have no trailing `/` and no `.`/`..` components: the
/// recordings root that every attached file must stay inside.
fn parse_root(v: &str) -> Result<PathBuf, String> {
    use std::path::Component;
    let p = PathBuf::from(v);
    let clean = p
        .components()
        .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if p.is_absolute() && clean {
        Ok(p.components().collect())
    } else {
        Err("not an absolute directory (allowed: a path starting with /, without . or .., e.g. /var/spool/asterisk)".to_string())
    }
}

/// An `http(s)://` base URL, returned with a trailing `/` so a relative path can be appended.
/// No `user:password@`, query or fragment: such URLs would end up in logs.
fn parse_base_url(v: &str) -> Result<String, String> {
    const ALLOWED: &str = "allowed: http:// or https:// URL of the recordings root, e.g. https://pbx.example.com/recordings/";
    let rest = v
        .strip_prefix("https://")
        .or_else(|| v.strip_prefix("http://"))
        .ok_or_else(|| format!("must start with https:// or http:// ({ALLOWED})"))?;
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() {
        return Err(format!("has no host name ({ALLOWED})"));
    }
    if host.contains('@') || v.contains(['?', '#']) || v.chars().any(char::is_whitespace) {
        return Err(format!(
            "must not contain user:password@, `?`, `#` or spaces ({ALLOWED})"
        ));
    }
    Ok(format!("{}/", v.trim_end_matches('/')))
}

/// Megabytes (MiB), whole or with up to three decimals (`10`, `0.5`), more than 0, at most
/// 1024; returned in bytes.
fn parse_mib(v: &str) -> Result<u64, String> {
    let bad = || {
        "not a size in megabytes (allowed: more than 0 and at most 1024, e.g. 10 or 0.5)"
            .to_string()
    };
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if int.is_empty() || int.len() > 4 || !all_digits(int) || frac.len() > 3 || !all_digits(frac) {
        return Err(bad());
    }
    let whole: u64 = int.parse().map_err(|_| bad())?;
    let thousandths: u64 = format!("{frac:0<3}").parse().map_err(|_| bad())?;
    let milli = whole * 1000 + thousandths;
    if milli == 0 || milli > 1024 * 1000 {
        return Err(bad());
    }
    Ok(milli * MIB / 1000)
}

/// A whole number in `min..=max`.
fn parse_number<T>(v: &str, min: T, max: T) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + fmt::Display + Copy,
{
    let bad = || format!("not a whole number from {min} to {max} (allowed: {min}-{max})");
    if !all_digits(v) || v.is_empty() {
        return Err(bad());
    }
    match v.parse::<T>() {
        Ok(n) if n >= min && n <= max => Ok(n),
        _ => Err(bad()),
    }
}

fn parse_port(v: &str) -> Result<u16, String> {
    parse_number(v, 1, u16::MAX)
}

fn parse_burst(v: &str) -> Result<u32, String> {
    parse_number(v, 1, u32::MAX)
}

fn parse_rate(v: &str) -> Result<f64, String> {
    match v.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 && r <= 1000.0 => Ok(r),
        _ => Err(
            "not a rate (allowed: requests per second, more than 0 and at most 1000, e.g. 2 or 0.5)"
                .to_string(),
        ),
    }
}

/// The usual spellings of PBX admins: `yes`/`no` as in Asterisk, and the rest for good measure.
fn parse_bool(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "yes" | "true" | "on" | "1" => Ok(true),
        "no" | "false" | "off" | "0" => Ok(false),
        _ => Err("not a yes/no value (allowed: yes, no, true, false, on, off, 1, 0)".to_string()),
    }
}

fn parse_host(v: &str) -> Result<String, String> {
    let ok = !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'));
    if ok {
        Ok(v.to_string())
    } else {
        Err("not a host (allowed: a host name or IP address, e.g. 127.0.0.1)".to_string())
    }
}

fn parse_username(v: &str) -> Result<String, String> {
    if v.chars().any(char::is_whitespace) {
        Err(
            "contains spaces (allowed: the user name of a [section] in Asterisk's manager.conf)"
                .to_string(),
        )
    } else {
        Ok(v.to_string())
    }
}

fn parse_domain(v: &str) -> Result<String, String> {
    let ok = v
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
        && v.contains('.');
    if ok {
        Ok(v.to_string())
    } else {
        Err("not a domain (allowed: the portal's host name only, e.g. portal.bitrix24.ru, without https://)".to_string())
    }
}

/// `[http] public_url`: like [`parse_base_url`], with a message about this key.
fn parse_public_url(v: &str) -> Result<String, String> {
    parse_base_url(v).map_err(|e| {
        e.replace(
            "URL of the recordings root, e.g. https://pbx.example.com/recordings/",
            "URL where Bitrix24 reaches this server, e.g. https://pbx.example.com/callme/",
        )
    })
}

/// `[bitrix24] oauth_url`: an `http(s)://` URL without credentials, query or fragment.
fn parse_oauth_url(v: &str) -> Result<String, String> {
    parse_base_url(v).map_err(|e| {
        e.replace(
            "URL of the recordings root, e.g. https://pbx.example.com/recordings/",
            "URL of the OAuth token endpoint, e.g. https://oauth.bitrix.info/oauth/token/",
        )
    })
}

/// `client_id` of a local application, e.g. `local.5f1a2b3c4d5e6.12345678`.
fn parse_client_id(v: &str) -> Result<String, String> {
    if v.len() <= 128
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Ok(v.to_string())
    } else {
        Err("not a client_id (allowed: the application code shown by Bitrix24, e.g. local.5f1a2b3c4d5e6.12345678)".to_string())
    }
}

fn parse_member_id(v: &str) -> Result<String, String> {
    if v.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(v.to_string())
    } else {
        Err("not a member_id (allowed: letters and digits, as sent in auth[member_id])".to_string())
    }
}

/// `EXTERNAL_CALL_ID` prefix: characters that survive any URL or log unescaped.
fn parse_system_name(v: &str) -> Result<String, String> {
    let ok = (1..=32).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(v.to_string())
    } else {
        Err("not a system name (allowed: 1-32 characters from A-Z a-z 0-9 _ . -)".to_string())
    }
}

/// External numbers (DIDs): the same rule as numbers sent to AMI.
fn check_phone(v: &str) -> Result<(), String> {
    match crate::phone::validate(v) {
        Ok(()) => Ok(()),
        Err(e @ crate::phone::Error::BadChars(_)) => Err(e.to_string()),
        Err(e) => Err(format!("{}: {e}", escape_short(v))),
    }
}

/// Internal (extension) numbers: 1-6 digits, as FreePBX allows.
fn check_internal(v: &str) -> Result<(), String> {
    if (1..=6).contains(&v.len()) && all_digits(v) {
        Ok(())
    } else {
        Err(format!(
            "{:?} is not an internal number (allowed: 1-6 digits, e.g. 100)",
            escape_short(v)
        ))
    }
}

fn check_context(v: &str) -> Result<(), String> {
    let ok = v
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'+' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{:?} is not a dialplan context name (allowed: letters, digits, _ . - + @)",
            escape_short(v)
        ))
    }
}

/// A comma-separated list whose items each pass `check`.
fn parse_list(v: &str, check: impl Fn(&str) -> Result<(), String>) -> Result<Vec<String>, String> {
    let items = ini::split_list(v);
    for item in &items {
        check(item)?;
    }
    Ok(items)
}

/// `8001231231:219, 8001231232:220` → `[("8001231231", "219"), ...]`.
fn parse_static_responsible(v: &str) -> Result<Vec<(String, String)>, String> {
    const ALLOWED: &str =
        "allowed: LINE:EXT pairs separated by commas, e.g. 8001231231:219, 8001231232:220";
    let mut pairs: Vec<(String, String)> = Vec::new();
    for item in ini::split_list(v) {
        let Some((line, ext)) = item.split_once(':') else {
            return Err(format!(
                "{:?} is not LINE:EXT ({ALLOWED})",
                escape_short(&item)
            ));
        };
        let (line, ext) = (line.trim(), ext.trim());
        check_phone(line).map_err(|e| format!("{e} ({ALLOWED})"))?;
        check_internal(ext).map_err(|e| format!("{e} ({ALLOWED})"))?;
        if pairs.iter().any(|(l, _)| l == line) {
            return Err(format!(
                "line {line} is listed twice (allowed: one EXT per LINE)"
            ));
        }
        pairs.push((line.to_string(), ext.to_string()));
    }
    Ok(pairs)
}

/// `LINE:EXT` pairs for callback forms. Bitrix24's `LINE_NUMBER` is whatever the line was
/// created with (often a short id such as `7`), so LINE is any short word, not a phone number.
fn parse_callback_targets(v: &str) -> Result<Vec<(String, String)>, String> {
    const ALLOWED: &str = "allowed: LINE:EXT pairs separated by commas, e.g. 7:219, 8001231231:400";
    let mut pairs: Vec<(String, String)> = Vec::new();
    for item in ini::split_list(v) {
        let Some((line, ext)) = item.split_once(':') else {
            return Err(format!(
                "{:?} is not LINE:EXT ({ALLOWED})",
                escape_short(&item)
            ));
        };
        let (line, ext) = (line.trim(), ext.trim());
        let line_ok = !line.is_empty()
            && line.len() <= 50
            && line
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'.' | b'_' | b'-'));
        if !line_ok {
            return Err(format!(
                "{:?} is not a line number ({ALLOWED})",
                escape_short(line)
            ));
        }
        check_internal(ext).map_err(|e| format!("{e} ({ALLOWED})"))?;
        if pairs.iter().any(|(l, _)| l == line) {
            return Err(format!(
                "line {line} is listed twice (allowed: one EXT per LINE)"
            ));
        }
        pairs.push((line.to_string(), ext.to_string()));
    }
    Ok(pairs)
}

/// Escape control characters and cut long values, so a message stays one short line.
fn escape_short(s: &str) -> String {
    const MAX: usize = 60;
    let mut out: String = s.chars().take(MAX).flat_map(char::escape_debug).collect();
    if s.chars().count() > MAX {
        out.push_str("...");
    }
    out
}

/// The closest allowed name within two edits (or differing only in case), for "did you mean".
fn suggest<'a>(word: &str, allowed: &[&'a str]) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    allowed
        .iter()
        .map(|a| (edit_distance(&word, a), *a))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

/// Levenshtein distance, counting an adjacent swap (`hsot`) as one edit like a typist would.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests;
