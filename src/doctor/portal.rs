//! The Bitrix24 and click-to-call checks. Only reads: `scope`, `user.get`,
//! `telephony.externalLine.get`, `event.get`, and a GET of `public_url`.

use std::time::Instant;

use serde_json::{json, Value};

use super::Check;
use crate::bitrix::agent::{agent, Redirects};
use crate::bitrix::oauth::{self, AppClient, EVENTS};
use crate::bitrix::{api, Directory, Error, Transport, WebhookClient, APP_MODE_REQUIRED};
use crate::clock::now_secs;
use crate::config::{AuthMode, Config};
use crate::http::EVENT_PATH;
use crate::isotime;

/// The scopes callme calls methods of; `user_brief` and `user_basic` also give `user.get`
/// with `UF_PHONE_INNER` (bitrix24-api.md §1.1, §6).
const SCOPES: &[(&str, &[&str])] = &[
    ("telephony", &["telephony"]),
    ("crm", &["crm"]),
    ("user", &["user", "user_brief", "user_basic"]),
];

pub(super) fn check(cfg: &Config, out: &mut dyn FnMut(Check)) {
    let b = &cfg.bitrix24;
    let src = cfg.source.display();
    // `fix_scope` has `{}` where the missing scopes go.
    let (transport, who, fix_auth, fix_scope): (Box<dyn Transport>, String, String, String) =
        match (b.auth, &b.webhook_url, &b.app) {
            (AuthMode::Webhook, Some(url), _) => (
                Box::new(WebhookClient::new(url.expose(), b.timeout)),
                format!("webhook {}", url.redacted()),
                format!(
                    "create an inbound webhook in Bitrix24 (Developer resources > Other > Inbound \
                     webhook) and put its URL into [bitrix24] webhook_url in {src}"
                ),
                "edit the inbound webhook in Bitrix24 (Developer resources > Integrations), tick \
                 {} and save; its URL stays the same"
                    .to_string(),
            ),
            (AuthMode::App, _, Some(app)) => {
                let client =
                    AppClient::new(app, &cfg.state.dir, b.timeout, Default::default()).read_only();
                let Some(t) = client.tokens() else {
                    out(Check::fail(
                        "bitrix24 auth",
                        format!("app mode: no tokens in {}", client.store().path().display()),
                        "install the local application on the portal while callme runs \
                         (docs/app-mode.md)",
                    ));
                    return;
                };
                if t.expires <= now_secs() {
                    out(Check::warn(
                        "bitrix24 auth",
                        format!(
                            "app mode ({}): the access token expired at {}; callme refreshes it on \
                             its next request, and doctor never does (that would rotate the pair \
                             under the daemon); run doctor again while callme runs",
                            t.domain,
                            isotime::utc(t.expires.saturating_mul(1000))
                        ),
                    ));
                    return;
                }
                (
                    Box::new(client),
                    format!("app mode ({})", t.domain),
                    "reinstall the local application on the portal (docs/app-mode.md)".to_string(),
                    "add {} to the local application's scopes in Bitrix24 (Developer resources > \
                     Integrations), then reinstall it"
                        .to_string(),
                )
            }
            _ => {
                out(Check::fail(
                    "bitrix24 auth",
                    "no credentials configured",
                    format!("set [bitrix24] webhook_url (or auth = app) in {src}"),
                ));
                return;
            }
        };
    let t = transport.as_ref();

    // Credentials, through `scope` (any method would do; this one answers the next check).
    let scopes = match t.call("scope", &json!({})) {
        Ok(reply) => {
            out(Check::ok("bitrix24 auth", format!("{who} accepted")));
            reply
        }
        Err(e) => {
            out(Check::fail(
                "bitrix24 auth",
                format!("{who}: {e}"),
                auth_fix(&e, &fix_auth),
            ));
            return;
        }
    };
    let have: Vec<String> = match &scopes.result {
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_ascii_lowercase)
            .collect(),
        _ => Vec::new(),
    };
    let missing: Vec<&str> = SCOPES
        .iter()
        .filter(|(_, any)| !any.iter().any(|s| have.iter().any(|h| h == s)))
        .map(|(name, _)| *name)
        .collect();
    if missing.is_empty() {
        out(Check::ok("bitrix24 scope", have.join(", ")));
    } else {
        out(Check::fail(
            "bitrix24 scope",
            format!(
                "{} missing (granted: {})",
                missing.join(", "),
                if have.is_empty() {
                    "none".to_string()
                } else {
                    have.join(", ")
                }
            ),
            fix_scope.replace("{}", &missing.join(", ")),
        ));
    }

    // The telephony methods, which some portals refuse to webhooks (§1.4).
    match t.call("telephony.externalLine.get", &json!({})) {
        Ok(_) => out(Check::ok(
            "bitrix24 telephony",
            "telephony methods accepted (telephony.externalLine.get)",
        )),
        Err(e) if e.is_wrong_auth_type() => out(Check::fail(
            "bitrix24 telephony",
            "the portal refuses telephony methods to webhooks (WRONG_AUTH_TYPE)",
            APP_MODE_REQUIRED,
        )),
        Err(e) => out(Check::fail(
            "bitrix24 telephony",
            format!("telephony.externalLine.get: {e}"),
            fix_scope.replace("{}", "telephony"),
        )),
    }

    // The employees and their internal numbers.
    let users = match api::users_all(t) {
        Ok(users) => users,
        Err(e) => {
            out(Check::fail(
                "bitrix24 users",
                format!("user.get: {e}"),
                fix_scope.replace("{}", "user"),
            ));
            click_to_call(cfg, t, out);
            return;
        }
    };
    let active = users.iter().filter(|u| u.active).count();
    let dir = Directory::from_users(users, Instant::now());
    if dir.is_empty() {
        out(Check::fail(
            "bitrix24 users",
            format!("{active} active employees, none with an internal number (UF_PHONE_INNER)"),
            "fill in each employee's internal number in Bitrix24 (profile > Telephony > internal \
             number, or Telephony > Users), the same as the extension of their phone",
        ));
    } else {
        out(Check::ok(
            "bitrix24 users",
            format!(
                "{active} active employees, {} with an internal number (UF_PHONE_INNER)",
                dir.len()
            ),
        ));
    }
    calls_numbers(cfg, &dir, out);
    click_to_call(cfg, t, out);
}

/// The fix for a refused or failed first request.
fn auth_fix(e: &Error, fix_auth: &str) -> String {
    match e {
        Error::Transport(_) => "check DNS, the proxy and the firewall between this host and the \
                                portal (the portal must be reachable over HTTPS)"
            .to_string(),
        Error::Api { code, .. } if code == "insufficient_scope" => {
            format!("{fix_auth}; the webhook needs the scopes telephony, crm, user")
        }
        _ => fix_auth.to_string(),
    }
}

/// `[calls]` numbers that must be employees' internal numbers.
fn calls_numbers(cfg: &Config, dir: &Directory, out: &mut dyn FnMut(Check)) {
    let c = &cfg.calls;
    let src = cfg.source.display();
    let fix = |key: &str, nums: &[&str]| {
        format!(
            "give {} to an active employee in Bitrix24 (internal number), or change [calls] {key} \
             in {src}",
            nums.join(", ")
        )
    };
    if let Some(d) = &c.default_user {
        match dir.user_for(d) {
            Some(id) => out(Check::ok(
                "calls default_user",
                format!("{d} is Bitrix24 user {id}"),
            )),
            None => out(Check::fail(
                "calls default_user",
                format!(
                    "{d} is no active employee's internal number: calls nobody else takes \
                     cannot be registered"
                ),
                fix("default_user", &[d]),
            )),
        }
    }
    if !c.static_responsible.is_empty() {
        let nobody: Vec<&str> = c
            .static_responsible
            .iter()
            .filter(|(_, ext)| dir.user_for(ext).is_none())
            .map(|(_, ext)| ext.as_str())
            .collect();
        let n = c.static_responsible.len();
        if nobody.is_empty() {
            out(Check::ok(
                "calls static_responsible",
                format!("all {n} lines map to employees"),
            ));
        } else {
            out(Check::fail(
                "calls static_responsible",
                format!(
                    "{} map to nobody: calls to those lines go to default_user instead",
                    nobody.join(", ")
                ),
                fix("static_responsible", &nobody),
            ));
        }
    }
    if !c.show_cards_to.is_empty() {
        let nobody: Vec<&str> = c
            .show_cards_to
            .iter()
            .map(String::as_str)
            .filter(|n| dir.user_for(n).is_none())
            .collect();
        if nobody.is_empty() {
            out(Check::ok(
                "calls show_cards_to",
                format!("all {} numbers are employees", c.show_cards_to.len()),
            ));
        } else {
            out(Check::warn(
                "calls show_cards_to",
                format!(
                    "{} map to nobody, so no card can show there; {}",
                    nobody.join(", "),
                    fix("show_cards_to", &nobody)
                ),
            ));
        }
    }
}

/// `public_url` reachable from here, and in app mode the events bound to it.
fn click_to_call(cfg: &Config, t: &dyn Transport, out: &mut dyn FnMut(Check)) {
    let src = cfg.source.display();
    let Some(public) = &cfg.http.public_url else {
        if cfg.bitrix24.auth == AuthMode::App {
            out(Check::warn(
                "click-to-call public_url",
                format!(
                    "not set, so callme binds no events and Bitrix24 cannot ask it to dial; set \
                     [http] public_url in {src} to the address Bitrix24 reaches callme at"
                ),
            ));
        }
        return;
    };
    let handler = format!("{public}{}", EVENT_PATH.trim_start_matches('/'));
    let fix = format!(
        "make {handler} reach callme's [http] listen ({}) through the reverse proxy, or correct \
         [http] public_url in {src}",
        cfg.http.listen
    );
    let probe = agent(cfg.bitrix24.timeout, Redirects::Refuse);
    match probe.get(&handler).call() {
        Ok(resp) => {
            let status = resp.status().as_u16();
            if matches!(status, 502..=504) {
                out(Check::fail(
                    "click-to-call public_url",
                    format!(
                        "{handler}: HTTP {status}: the proxy answers, callme behind it does not"
                    ),
                    fix,
                ));
            } else {
                out(Check::ok(
                    "click-to-call public_url",
                    format!("{handler} reachable (HTTP {status} to a GET)"),
                ));
            }
        }
        Err(e) => out(Check::fail(
            "click-to-call public_url",
            format!("{handler}: {e}"),
            fix,
        )),
    }
    if cfg.bitrix24.auth != AuthMode::App {
        return;
    }
    match oauth::bound_events(t) {
        Ok(bound) => {
            let missing: Vec<&str> = EVENTS
                .iter()
                .copied()
                .filter(|ev| !bound.iter().any(|(e, h)| e == ev && *h == handler))
                .collect();
            if missing.is_empty() {
                out(Check::ok(
                    "click-to-call events",
                    format!("{} bound to {handler}", EVENTS.join(", ")),
                ));
            } else {
                out(Check::fail(
                    "click-to-call events",
                    format!("{} not bound to {handler}", missing.join(", ")),
                    "reinstall the local application while callme runs with this public_url \
                     (callme binds them when the install event arrives; docs/app-mode.md)",
                ));
            }
        }
        Err(e) => out(Check::fail(
            "click-to-call events",
            format!("event.get: {e}"),
            "reinstall the application (docs/app-mode.md)",
        )),
    }
}
