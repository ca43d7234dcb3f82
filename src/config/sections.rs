//! One method per section: which keys it has, their defaults, their parsers, and the checks
//! between keys of the section.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::secret::{Secret, WebhookUrl};
use super::types::{
    AppConfig, AsteriskConfig, AuthMode, Bitrix24Config, CallsConfig, HttpConfig, MissedUser,
    OriginateConfig, RecordingConfig, RecordingMode, RecordingSource, Responsible, StateConfig,
    DEFAULT_OAUTH_URL,
};
use super::validate::Validator;
use super::values::*;
use crate::dial_policy::{self, DialPolicy};
use crate::phone::PhoneConfig;

impl Validator<'_> {
    pub(super) fn asterisk(&mut self) -> Option<AsteriskConfig> {
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
        let reconcile_interval = self.value(S, "reconcile_interval", secs(300), parse_secs);
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
            reconcile_interval,
        })
    }

    pub(super) fn bitrix24(&mut self) -> Option<Bitrix24Config> {
        const S: &str = "bitrix24";
        let auth = self.value(S, "auth", AuthMode::Webhook, |v| {
            match v.to_ascii_lowercase().as_str() {
                "webhook" => Ok(AuthMode::Webhook),
                "app" => Ok(AuthMode::App),
                _ => Err("unknown mode (allowed: webhook, app)".to_string()),
            }
        });
        // `no` is fine in webhook mode (the example config says it), `yes` is a mistake.
        let insecure_http = self.value(S, "insecure_http", false, parse_bool);
        let (webhook_url, app) = match auth {
            AuthMode::Webhook => {
                if insecure_http {
                    let line = self.line_of(S, &["insecure_http"]);
                    self.error(
                        line,
                        format!("[{S}] insecure_http is only used with auth = app (allowed: no, or set auth = app)"),
                    );
                }
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
                let portal = self.required(S, "portal", parse_portal);
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
                        member_id: None,
                        insecure_http,
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
        let (webhook_url, mut app) = (webhook_url?, app?);
        if let Some(app) = app.as_mut() {
            app.member_id = member_id.clone();
        }
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

    pub(super) fn calls(&mut self) -> CallsConfig {
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

    pub(super) fn phone(&mut self) -> PhoneConfig {
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

    pub(super) fn http(&mut self) -> HttpConfig {
        const S: &str = "http";
        let d = HttpConfig::default();
        // The overlap check below only on addresses that parsed.
        let errors_before = self.errors.len();
        let listen = self.value(S, "listen", d.listen, |v| {
            v.parse::<SocketAddr>().map_err(|_| {
                "not an address (allowed: IP:PORT, e.g. 127.0.0.1:8080 or [::]:8080; host names are not accepted)".to_string()
            })
        });
        let ops_listen = self.value(S, "ops_listen", d.ops_listen, |v| {
            if v.is_empty() {
                return Ok(None);
            }
            v.parse::<SocketAddr>().map(Some).map_err(|_| {
                "not an address (allowed: IP:PORT, e.g. 127.0.0.1:8081, or empty for no ops listener)".to_string()
            })
        });
        if let Some(ops) = ops_listen.filter(|_| self.errors.len() == errors_before) {
            let overlaps = ops.port() != 0
                && ops.port() == listen.port()
                && (ops.ip() == listen.ip()
                    || ops.ip().is_unspecified()
                    || listen.ip().is_unspecified());
            if overlaps {
                let line = self.line_of(S, &["ops_listen", "listen"]);
                self.error(
                    line,
                    format!("[{S}] ops_listen ({ops}) is the address of listen ({listen}) (allowed: another port, e.g. 127.0.0.1:8081, or empty for no ops listener)"),
                );
            }
        }
        let ops_token = self.optional(S, "ops_token", parse_ops_token);
        let threads = self.value(S, "threads", d.threads, |v| parse_number(v, 1, 64));
        let public_url = self.optional(S, "public_url", parse_public_url);
        let max_connections = self.value(S, "max_connections", d.max_connections, |v| {
            parse_number(v, 8, HttpConfig::MAX_MAX_CONNECTIONS)
        });
        let idle_timeout = self.value(S, "idle_timeout", d.idle_timeout, parse_secs);
        let request_timeout = self.value(S, "request_timeout", d.request_timeout, parse_secs);
        HttpConfig {
            listen,
            ops_listen,
            ops_token,
            threads,
            public_url,
            max_connections,
            idle_timeout,
            request_timeout,
        }
    }

    pub(super) fn state(&mut self) -> StateConfig {
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

    pub(super) fn recording(&mut self) -> RecordingConfig {
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

    pub(super) fn originate(&mut self, phone: &PhoneConfig) -> OriginateConfig {
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
        let d = DialPolicy::defaults(phone, dial_national, &dial_prefix);
        let rate = |v: &str| parse_number(v, 1, dial_policy::MAX_RATE);
        let policy = DialPolicy {
            // Empty or absent: the defaults for [phone] (an empty allow list would silently
            // turn click-to-call off).
            allow: self
                .optional(S, "allow", dial_policy::parse_list)
                .unwrap_or(d.allow),
            deny: self
                .optional(S, "deny", dial_policy::parse_list)
                .unwrap_or(d.deny),
            max_per_user_per_minute: self.value(
                S,
                "max_per_user_per_minute",
                d.max_per_user_per_minute,
                rate,
            ),
            max_per_minute: self.value(S, "max_per_minute", d.max_per_minute, rate),
        };
        OriginateConfig {
            channel,
            context,
            timeout,
            caller_id,
            dial_national,
            dial_prefix,
            callback_targets,
            policy,
        }
    }
}
