//! `POST /bitrix24/install`: the local application's install event (ONAPPINSTALL) in app mode
//! (`docs/app-mode.md`). It carries the OAuth tokens we call Bitrix24 with.
//!
//! The same size and encoding limits as `/bitrix24/event` apply. Trust: an install is taken
//! only if its endpoint and domain are the configured portal's, its access token works there
//! for our application (`app.info`), its `member_id` is the pinned one, and (once tokens are
//! stored) it carries the stored `application_token` and `member_id`: see
//! [`AppClient::install`](crate::bitrix::oauth::AppClient::install). A refused install changes
//! nothing on disk and is logged with the reason, never with a token.
//! After a successful install the events are bound (`event.bind`) if `[http] public_url` is
//! set; that happens after the answer, since Bitrix24 waits for it. A successful install also
//! asks the delivery thread to load the user directory at once.

use std::time::{SystemTime, UNIX_EPOCH};

use tiny_http::Request;

use super::{form, reply, respond, webhook, Ctx, EVENT_PATH};
use crate::bitrix::oauth::{self, InstallError, Tokens};

/// The install path (configure it as the application's "installation path").
pub const INSTALL_PATH: &str = "/bitrix24/install";

/// The tokens in an install event: `auth[access_token]`, `auth[refresh_token]`,
/// `auth[expires]` (unix seconds; or `auth[expires_in]`), `auth[client_endpoint]`,
/// `auth[member_id]`, `auth[domain]`, `auth[application_token]`.
fn tokens_of(f: &form::Form, now: u64) -> Result<Tokens, String> {
    let need = |k: &str| {
        f.non_empty(&format!("auth[{k}]"))
            .map(str::to_string)
            .ok_or(format!("missing auth[{k}]"))
    };
    let client_endpoint = need("client_endpoint")?;
    if !(client_endpoint.starts_with("https://") || client_endpoint.starts_with("http://"))
        || client_endpoint.contains(['?', '#', ' '])
    {
        return Err("auth[client_endpoint] is not an http(s) URL".to_string());
    }
    let expires = f
        .non_empty("auth[expires]")
        .and_then(|v| v.parse::<u64>().ok())
        .or_else(|| {
            f.non_empty("auth[expires_in]")
                .and_then(|v| v.parse::<u64>().ok())
                .map(|s| now + s)
        })
        .unwrap_or(now + 3600);
    Ok(Tokens {
        access_token: need("access_token")?,
        refresh_token: need("refresh_token")?,
        expires,
        client_endpoint,
        member_id: need("member_id")?,
        domain: need("domain")?,
        application_token: need("application_token")?,
    })
}

pub(super) fn handle(ctx: &Ctx, mut req: Request) {
    let from = req
        .remote_addr()
        .map_or_else(|| "?".to_string(), |a| a.to_string());
    let Some(app) = ctx.daemon.app.clone() else {
        log::warn!("Bitrix24 install from {from} refused: [bitrix24] auth is not app");
        return respond(req, reply(404, "not found\n"));
    };
    let f = match webhook::read_form(&mut req, &from, "Bitrix24 install") {
        Ok(f) => f,
        Err(resp) => return respond(req, resp),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let tokens = match tokens_of(&f, now) {
        Ok(t) => t,
        Err(why) => {
            log::warn!("Bitrix24 install from {from} refused: {why}");
            return respond(req, reply(400, &format!("{why}\n")));
        }
    };
    match app.install(tokens) {
        // New tokens, maybe a first install after a start that could not load `user.get`:
        // load the user directory now, not at the next refresh, so steps waiting for it go.
        Ok(()) => ctx.daemon.directory.request_reload(),
        Err(InstallError::Forbidden(why)) => {
            log::warn!("Bitrix24 install from {from} refused: {why}");
            return respond(req, reply(403, "forbidden\n"));
        }
        Err(e @ InstallError::Unverified(_)) => {
            log::warn!("Bitrix24 install from {from} {e}");
            return respond(req, reply(403, "forbidden\n"));
        }
        Err(e @ InstallError::Unreachable(_)) => {
            log::warn!("Bitrix24 install from {from} {e}; nothing stored, install again");
            return respond(
                req,
                reply(503, "the portal could not be asked; try again\n"),
            );
        }
        Err(e @ InstallError::Store(_)) => {
            log::error!("Bitrix24 install from {from}: {e}");
            return respond(req, reply(500, "cannot save the tokens\n"));
        }
    }
    respond(req, reply(200, "ok\n"));
    let Some(base) = &ctx.daemon.config.http.public_url else {
        log::warn!(
            "app mode: [http] public_url is not set, so ONEXTERNALCALLSTART is not bound; \
             set it (or bind the events by hand) for click-to-call"
        );
        return;
    };
    let handler = format!("{}{}", base, EVENT_PATH.trim_start_matches('/'));
    match oauth::bind_events(app.as_ref(), &handler) {
        Ok(bound) if bound.is_empty() => {
            log::info!("app mode: events already bound to {handler}")
        }
        Ok(bound) => log::info!("app mode: bound {} to {handler}", bound.join(", ")),
        Err(e) => log::warn!("app mode: could not bind the events to {handler}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_fields() {
        let f = form::parse(
            b"auth[access_token]=a&auth[refresh_token]=r&auth[expires_in]=3600&\
              auth[client_endpoint]=https://p.bitrix24.ru/rest/&auth[member_id]=m&\
              auth[domain]=p.bitrix24.ru&auth[application_token]=t",
        )
        .unwrap();
        let t = tokens_of(&f, 1000).unwrap();
        assert_eq!(t.expires, 4600);
        assert_eq!(t.member_id, "m");
        let f = form::parse(b"auth[access_token]=a").unwrap();
        assert_eq!(
            tokens_of(&f, 0).unwrap_err(),
            "missing auth[client_endpoint]"
        );
        let f = form::parse(b"auth[client_endpoint]=ftp://x").unwrap();
        assert!(tokens_of(&f, 0).unwrap_err().contains("not an http"));
    }
}
