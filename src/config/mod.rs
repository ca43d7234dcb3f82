//! Configuration: `/etc/callme/callme.conf` → a validated, typed [`Config`].
//!
//! Two steps, like ripgrep's low-level/high-level arguments:
//! 1. [`ini`] parses the Asterisk-style text and remembers `file:line` for every entry;
//! 2. validation turns entries into typed values: `validate.rs` walks the entries and collects
//!    the problems, `schema.rs` knows which names exist, `sections.rs` what each key of each
//!    section means, `values.rs` how each kind of value is read.
//!
//! The results are the typed sections of `types.rs` (and [`PhoneConfig`], which the phone
//! module owns), with secrets wrapped by `secret.rs`. This file holds [`Config`] and the entry
//! points [`load`] and [`parse_str`]; everything public is re-exported here, so users write
//! `config::Secret`, not `config::secret::Secret`.
//!
//! The rules that matter to the people who edit the file (PBX admins):
//! - every problem is reported as `FILE:LINE: what is wrong (what is allowed)`, and all problems
//!   of a file are reported at once, so `callme check-config` is one edit-and-retry loop;
//! - an unknown section or key is an error, never ignored: a typo (`defualt_user`) must not
//!   silently fall back to the default and leave the admin wondering why the setting has no effect;
//! - secrets (`secret`, `app_token`, the code in `webhook_url`) never appear in `Debug` output or
//!   error messages, because both end up in the journal.

mod error;
mod ini;
mod schema;
mod secret;
mod sections;
mod types;
mod validate;
mod values;

use std::path::{Path, PathBuf};

pub use crate::phone::PhoneConfig;
pub use error::Error;
pub use secret::{Secret, WebhookUrl};
pub use types::{
    AppConfig, AsteriskConfig, AuthMode, Bitrix24Config, CallsConfig, HttpConfig, MissedUser,
    OriginateConfig, RecordingConfig, RecordingMode, RecordingSource, Responsible, StateConfig,
    DEFAULT_OAUTH_URL,
};

use validate::Validator;

/// Where the RPM installs the config; the default of `-c` for the daemon subcommands.
pub const DEFAULT_PATH: &str = "/etc/callme/callme.conf";

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
    if cfg.bitrix24.app.as_ref().is_some_and(|a| a.insecure_http) {
        log::warn!(
            "{}: [bitrix24] insecure_http = yes: the portal is called over plain http://, \
             tokens are sent unencrypted (meant for tests only)",
            path.display()
        );
    }
    match (cfg.http.ops_listen, &cfg.http.ops_token) {
        (Some(ops), None) if !ops.ip().is_loopback() => log::warn!(
            "{}: [http] ops_listen {ops} is not a loopback address and ops_token is empty, so \
             anyone who reaches it sees /status (live caller numbers); set ops_token",
            path.display()
        ),
        (None, None) => log::warn!(
            "{}: [http] ops_listen and ops_token are empty: /status and /metrics are served \
             nowhere",
            path.display()
        ),
        _ => {}
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

#[cfg(test)]
mod tests;
