//! `POST /bitrix24/event`: Bitrix24's outgoing events (bitrix24-api.md §5).
//!
//! Order of checks: method, size, encoding, then **authentication before anything about the
//! content**, so an unauthenticated caller learns nothing but 403. Only then the fields,
//! including the phone number, which must pass validation before we answer: a number like
//! `123\r\nAction: Command` gets 400 and never reaches AMI.

use std::io::Read;
use std::time::Instant;

use tiny_http::{Method, Request};

use super::{form, header, reply, respond, Ctx, Reply};
use crate::bitrix::oauth::Tokens;
use crate::config::{Bitrix24Config, Secret};
use crate::dial_policy::Refusal;
use crate::originate::{self, Click};

/// Largest body accepted. A real ONEXTERNALCALLSTART is under 2 KiB.
pub const BODY_LIMIT: usize = 64 * 1024;

/// Why an event was refused; the text goes back to the caller, so it names no secret.
#[derive(Debug, PartialEq, Eq)]
enum Reject {
    Forbidden(&'static str),
    NoToken,
}

/// Compare `auth[...]` with the config. The token comparison takes the same time wherever the
/// strings differ ([`crate::config::Secret::ct_eq`]).
fn check_auth(cfg: &Bitrix24Config, f: &form::Form) -> Result<(), Reject> {
    let Some(token) = &cfg.app_token else {
        return Err(Reject::NoToken);
    };
    let sent = f.get("auth[application_token]").unwrap_or("");
    if !token.ct_eq(sent) {
        return Err(Reject::Forbidden("bad application_token"));
    }
    if let Some(domain) = &cfg.domain {
        if !f
            .get("auth[domain]")
            .is_some_and(|d| d.eq_ignore_ascii_case(domain))
        {
            return Err(Reject::Forbidden("wrong domain"));
        }
    }
    if let Some(member) = &cfg.member_id {
        if f.get("auth[member_id]") != Some(member.as_str()) {
            return Err(Reject::Forbidden("wrong member_id"));
        }
    }
    Ok(())
}

/// The fields of ONEXTERNALCALLSTART we need, checked: (CALL_ID, USER_ID, raw number).
fn start_fields(f: &form::Form) -> Result<(&str, u64, &str), String> {
    let call_id = f
        .non_empty("data[CALL_ID]")
        .ok_or("missing data[CALL_ID]")?;
    originate::check_call_id(call_id).map_err(|e| e.to_string())?;
    let user = f
        .non_empty("data[USER_ID]")
        .ok_or("missing data[USER_ID]")?;
    let user_id = user
        .parse::<u64>()
        .ok()
        .filter(|_| user.bytes().all(|b| b.is_ascii_digit()))
        .ok_or("data[USER_ID] is not a number")?;
    // PHONE_NUMBER is the number as stored in the CRM (spaces, brackets...); the
    // international form is what we can validate and dial (bitrix24-api.md §5.3).
    let number = f
        .non_empty("data[PHONE_NUMBER_INTERNATIONAL]")
        .or_else(|| f.non_empty("data[PHONE_NUMBER]"))
        .ok_or("missing data[PHONE_NUMBER]")?;
    Ok((call_id, user_id, number))
}

fn content_type_ok(req: &Request) -> bool {
    req.headers()
        .iter()
        .find(|h| h.field.equiv("Content-Type"))
        .is_none_or(|h| {
            h.value
                .as_str()
                .to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        })
}

/// Method, content type, size and encoding of a Bitrix24 form POST (events and installs):
/// the decoded form, or the answer to send. `what` names the endpoint in log lines.
pub(super) fn read_form(req: &mut Request, from: &str, what: &str) -> Result<form::Form, Reply> {
    if *req.method() != Method::Post {
        return Err(reply(405, "method not allowed\n").with_header(header("Allow", "POST")));
    }
    if !content_type_ok(req) {
        return Err(reply(415, "expected application/x-www-form-urlencoded\n"));
    }
    if req.body_length().is_some_and(|n| n > BODY_LIMIT) {
        log::warn!("{what} from {from}: body over {BODY_LIMIT} bytes, refused");
        return Err(reply(413, "body too large\n"));
    }
    // Enforced while reading too: a chunked body has no length up front.
    let mut body = Vec::new();
    let read = req
        .as_reader()
        .take(BODY_LIMIT as u64 + 1)
        .read_to_end(&mut body);
    if let Err(e) = read {
        log::debug!("{what} from {from}: could not read the body: {e}");
        return Err(reply(400, "could not read the body\n"));
    }
    if body.len() > BODY_LIMIT {
        log::warn!("{what} from {from}: body over {BODY_LIMIT} bytes, refused");
        return Err(reply(413, "body too large\n"));
    }
    form::parse(&body).map_err(|e| {
        log::warn!("{what} from {from}: bad form encoding: {e}");
        reply(400, &format!("bad form encoding: {e}\n"))
    })
}

pub(super) fn handle(ctx: &Ctx, mut req: Request) {
    let from = req
        .remote_addr()
        .map_or_else(|| "?".to_string(), |a| a.to_string());
    let f = match read_form(&mut req, &from, "Bitrix24 event") {
        Ok(f) => f,
        Err(resp) => return respond(req, resp),
    };
    // App mode: the application token and member_id come from the install event.
    if let Some(app) = &ctx.daemon.app {
        match check_app_auth(app.tokens().as_ref(), &f) {
            Ok(()) => return dispatch(ctx, req, &f, &from),
            Err(Reject::NoToken) => {
                log::error!(
                    "Bitrix24 event from {from} refused: the application is not installed yet, \
                     so events cannot be verified (see docs/app-mode.md)"
                );
                return respond(req, reply(403, "forbidden\n"));
            }
            Err(Reject::Forbidden(why)) => {
                log::warn!("Bitrix24 event from {from} refused: {why}");
                return respond(req, reply(403, "forbidden\n"));
            }
        }
    }
    let cfg = &ctx.daemon.config.bitrix24;
    match check_auth(cfg, &f) {
        Ok(()) => {}
        Err(Reject::NoToken) => {
            log::error!(
                "Bitrix24 event from {from} refused: [bitrix24] app_token is not set, so events \
                 cannot be verified; set it to the application token shown in the Bitrix24 \
                 outgoing webhook settings"
            );
            return respond(req, reply(403, "forbidden\n"));
        }
        Err(Reject::Forbidden(why)) => {
            log::warn!("Bitrix24 event from {from} refused: {why}");
            return respond(req, reply(403, "forbidden\n"));
        }
    }
    dispatch(ctx, req, &f, &from)
}

/// App mode: `auth[application_token]` must equal the stored one (constant time) and
/// `auth[member_id]` the stored one. No install yet: nothing to compare with, so refuse.
fn check_app_auth(tokens: Option<&Tokens>, f: &form::Form) -> Result<(), Reject> {
    let Some(t) = tokens else {
        return Err(Reject::NoToken);
    };
    let sent = f.get("auth[application_token]").unwrap_or("");
    if !Secret::new(t.application_token.clone()).ct_eq(sent) {
        return Err(Reject::Forbidden("bad application_token"));
    }
    if f.get("auth[member_id]") != Some(t.member_id.as_str()) {
        return Err(Reject::Forbidden("wrong member_id"));
    }
    Ok(())
}

/// An authenticated event: act on its name.
fn dispatch(ctx: &Ctx, req: Request, f: &form::Form, from: &str) {
    let Some(event) = f.non_empty("event") else {
        return respond(req, reply(400, "missing event\n"));
    };
    match event.to_ascii_uppercase().as_str() {
        "ONEXTERNALCALLSTART" => start(ctx, req, f, from),
        "ONEXTERNALCALLBACKSTART" => callback_start(ctx, req, f, from),
        other => {
            log::debug!(
                "Bitrix24 event {} ignored",
                other
                    .chars()
                    .take(64)
                    .flat_map(char::escape_debug)
                    .collect::<String>()
            );
            respond(req, reply(200, "ignored\n"));
        }
    }
}

/// The internal number of `user_id` if the directory knows it (no reload), else empty: the
/// tracker then finishes the call under the responsible/default user.
fn known_inner(ctx: &Ctx, user_id: u64) -> String {
    ctx.daemon
        .directory
        .get()
        .and_then(|d| d.inner_for(user_id).map(str::to_string))
        .unwrap_or_default()
}

/// 403 for a number the policy does not allow, 429 past the rate limit. Bitrix24 does not
/// retry either way; the text is for whoever reads its logs.
fn refused_reply(why: &Refusal) -> Reply {
    match why {
        Refusal::Rate { .. } => reply(429, "too many calls, not dialled\n"),
        _ => reply(403, "number not allowed by policy, not dialled\n"),
    }
}

/// ONEXTERNALCALLSTART: validate, answer 200, then originate in this thread.
fn start(ctx: &Ctx, req: Request, f: &form::Form, from: &str) {
    let (call_id, user_id, number) = match start_fields(f) {
        Ok(v) => v,
        Err(why) => {
            log::warn!("ONEXTERNALCALLSTART from {from} refused: {why}");
            ctx.count_click("rejected");
            return respond(req, reply(400, &format!("{why}\n")));
        }
    };
    let daemon = &ctx.daemon;
    let dial = match originate::dial_number(number, &daemon.config.phone, &daemon.config.originate)
    {
        Ok(d) => d,
        Err(e) => {
            log::warn!("ONEXTERNALCALLSTART {call_id} from {from} refused: {e}");
            ctx.count_click("rejected");
            respond(req, reply(400, "bad phone number\n"));
            if !ctx.dedup.first(call_id, Instant::now()) {
                return;
            }
            // Bitrix24 registered this call already; finish it so no card stays open.
            originate::abandon(daemon, call_id, &known_inner(ctx, user_id), "");
            return;
        }
    };
    if !ctx.dedup.first(call_id, Instant::now()) {
        log::info!("ONEXTERNALCALLSTART {call_id}: duplicate within 60 s, not dialling again");
        ctx.count_click("duplicate");
        return respond(req, reply(200, "ok (duplicate)\n"));
    }
    if let Err(why) = ctx.guard(&dial, &format!("user:{user_id}")) {
        log::warn!(
            "ONEXTERNALCALLSTART {call_id} from {from}: {dial} for Bitrix24 user {user_id} not \
             dialled: {why}; finishing the call with STATUS_CODE {}",
            originate::refusal_status(&why).code()
        );
        ctx.count_click("refused");
        respond(req, refused_reply(&why));
        originate::refuse(daemon, call_id, &known_inner(ctx, user_id), &dial, &why);
        return;
    }
    respond(req, reply(200, "ok\n"));
    let click = Click {
        call_id: call_id.to_string(),
        user_id,
        dial,
    };
    let outcome = originate::click_to_call(daemon, &click);
    ctx.count_click(outcome.as_str());
}

/// ONEXTERNALCALLBACKSTART (a callback form on the website): validate, answer 200, then ring
/// the line's target and dial the client. Bitrix24 sends no CALL_ID: the same number on the
/// same line within the dedup window is dialled once.
fn callback_start(ctx: &Ctx, req: Request, f: &form::Form, from: &str) {
    let Some(number) = f.non_empty("data[PHONE_NUMBER]") else {
        log::warn!("ONEXTERNALCALLBACKSTART from {from} refused: no data[PHONE_NUMBER]");
        return respond(req, reply(400, "missing data[PHONE_NUMBER]\n"));
    };
    let daemon = &ctx.daemon;
    let dial = match originate::dial_number(number, &daemon.config.phone, &daemon.config.originate)
    {
        Ok(d) => d,
        Err(e) => {
            log::warn!("ONEXTERNALCALLBACKSTART from {from} refused: {e}");
            return respond(req, reply(400, "bad phone number\n"));
        }
    };
    let line = f.non_empty("data[LINE_NUMBER]").unwrap_or("").to_string();
    let entity = match (
        f.non_empty("data[CRM_ENTITY_TYPE]"),
        f.non_empty("data[CRM_ENTITY_ID]")
            .and_then(|v| v.parse::<u64>().ok()),
    ) {
        (Some(ty), Some(id)) => Some((ty.to_string(), id)),
        _ => None,
    };
    if !ctx
        .dedup
        .first(&format!("callback:{line}:{dial}"), Instant::now())
    {
        log::info!("ONEXTERNALCALLBACKSTART for {dial}: duplicate within 60 s, not dialling again");
        return respond(req, reply(200, "ok (duplicate)\n"));
    }
    // All website forms share one rate-limit bucket: nobody is behind them but the public.
    if let Err(why) = ctx.guard(&dial, "callback") {
        // Nothing exists in Bitrix24 yet (a callback is registered when the employee
        // answers), so there is no call to finish.
        log::warn!("ONEXTERNALCALLBACKSTART from {from}: {dial} not dialled: {why}");
        return respond(req, refused_reply(&why));
    }
    respond(req, reply(200, "ok\n"));
    let cb = originate::Callback { dial, line, entity };
    let outcome = originate::callback(daemon, &cb);
    log::debug!("callback to {}: {}", cb.dial, outcome.as_str());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(token: Option<&str>) -> Bitrix24Config {
        let mut c = crate::config::Config::demo().bitrix24;
        c.app_token = token.map(Secret::new);
        c
    }

    fn body(s: &str) -> form::Form {
        form::parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn token_must_match_exactly() {
        let c = cfg(Some("51610fefc120afg4b628cc82d6298cce"));
        let ok = body("auth%5Bapplication_token%5D=51610fefc120afg4b628cc82d6298cce");
        assert_eq!(check_auth(&c, &ok), Ok(()));
        for bad in [
            "auth[application_token]=51610fefc120afg4b628cc82d6298ccf",
            "auth[application_token]=51610fefc120afg4b628cc82d6298cc",
            "auth[application_token]=51610fefc120afg4b628cc82d6298ccee",
            "auth[application_token]=",
            "auth[other]=51610fefc120afg4b628cc82d6298cce",
            "",
        ] {
            assert_eq!(
                check_auth(&c, &body(bad)),
                Err(Reject::Forbidden("bad application_token")),
                "{bad}"
            );
        }
    }

    #[test]
    fn app_mode_uses_the_stored_token_and_member_id() {
        let t = Tokens {
            access_token: "a".into(),
            refresh_token: "r".into(),
            expires: 0,
            client_endpoint: "https://p/rest/".into(),
            member_id: "m1".into(),
            domain: "p.bitrix24.ru".into(),
            application_token: "apptok".into(),
        };
        let ok = body("auth[application_token]=apptok&auth[member_id]=m1");
        assert_eq!(check_app_auth(Some(&t), &ok), Ok(()));
        assert_eq!(check_app_auth(None, &ok), Err(Reject::NoToken));
        assert_eq!(
            check_app_auth(
                Some(&t),
                &body("auth[application_token]=apptoK&auth[member_id]=m1")
            ),
            Err(Reject::Forbidden("bad application_token"))
        );
        assert_eq!(
            check_app_auth(
                Some(&t),
                &body("auth[application_token]=apptok&auth[member_id]=m2")
            ),
            Err(Reject::Forbidden("wrong member_id"))
        );
    }

    #[test]
    fn no_configured_token_refuses_everything() {
        assert_eq!(
            check_auth(&cfg(None), &body("auth[application_token]=")),
            Err(Reject::NoToken)
        );
        assert_eq!(check_auth(&cfg(None), &body("")), Err(Reject::NoToken));
    }

    #[test]
    fn domain_and_member_id_pinned_when_set() {
        let mut c = cfg(Some("tok"));
        c.domain = Some("portal.bitrix24.ru".into());
        c.member_id = Some("a223c6".into());
        let good =
            "auth[application_token]=tok&auth[domain]=Portal.Bitrix24.ru&auth[member_id]=a223c6";
        assert_eq!(check_auth(&c, &body(good)), Ok(()));
        assert_eq!(
            check_auth(
                &c,
                &body("auth[application_token]=tok&auth[domain]=evil.ru&auth[member_id]=a223c6")
            ),
            Err(Reject::Forbidden("wrong domain"))
        );
        assert_eq!(
            check_auth(
                &c,
                &body("auth[application_token]=tok&auth[domain]=portal.bitrix24.ru")
            ),
            Err(Reject::Forbidden("wrong member_id"))
        );
    }

    #[test]
    fn start_fields_checked() {
        let f = body(
            "data[CALL_ID]=externalCall.x.1&data[USER_ID]=19&data[PHONE_NUMBER]=8+999&\
             data[PHONE_NUMBER_INTERNATIONAL]=%2B79991234567",
        );
        assert_eq!(
            start_fields(&f),
            Ok(("externalCall.x.1", 19, "+79991234567"))
        );
        let f = body("data[CALL_ID]=c.1&data[USER_ID]=19&data[PHONE_NUMBER]=89991234567");
        assert_eq!(start_fields(&f), Ok(("c.1", 19, "89991234567")));
        for (b, why) in [
            (
                "data[USER_ID]=19&data[PHONE_NUMBER]=1",
                "missing data[CALL_ID]",
            ),
            (
                "data[CALL_ID]=c&data[PHONE_NUMBER]=1",
                "missing data[USER_ID]",
            ),
            (
                "data[CALL_ID]=c&data[USER_ID]=+19&data[PHONE_NUMBER]=1",
                "data[USER_ID] is not a number",
            ),
            (
                "data[CALL_ID]=c&data[USER_ID]=19",
                "missing data[PHONE_NUMBER]",
            ),
        ] {
            assert_eq!(start_fields(&body(b)), Err(why.to_string()), "{b}");
        }
        assert!(start_fields(&body(
            "data[CALL_ID]=a%0D%0Ab&data[USER_ID]=1&data[PHONE_NUMBER]=1"
        ))
        .unwrap_err()
        .contains("bad CALL_ID"));
    }
}
