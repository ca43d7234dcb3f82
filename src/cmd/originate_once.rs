//! `callme originate --from INNER --to NUMBER`.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::load_or_report;
use crate::ami::{client, Incoming};
use crate::daemon::ami_config;
use crate::originate;

/// How long `callme originate` waits for the AMI login.
const ORIGINATE_LOGIN_WAIT: Duration = Duration::from_secs(10);

/// `callme originate --from INNER --to NUMBER`: one click-to-call through AMI, no Bitrix24.
/// Builds the same action as the daemon ([`crate::originate`]), prints Asterisk's response and
/// then the `OriginateResponse` event. Exit 0 only when the employee's phone answered.
pub fn run(path: &Path, from: &str, to: &str) -> ExitCode {
    let Some(cfg) = load_or_report(path) else {
        return ExitCode::FAILURE;
    };
    if let Err(e) = originate::check_inner(from) {
        eprintln!("error: --from: {e}");
        return ExitCode::from(2);
    }
    let dial = match originate::dial_number(to, &cfg.phone, &cfg.originate) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: --to: {e}");
            return ExitCode::from(2);
        }
    };
    let ids = originate::new_ids();
    let action = match originate::build_action(
        &cfg.originate,
        &originate::Request {
            inner: from,
            dial: &dial,
            call_id: None,
            ids: &ids,
        },
    ) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };

    let (tx, rx) = crossbeam_channel::unbounded();
    let (ami, thread) = client::start(ami_config(&cfg), tx);
    let finish = |code: ExitCode| {
        ami.shutdown();
        let _ = thread.join();
        code
    };
    let addr = format!("{}:{}", cfg.asterisk.host, cfg.asterisk.port);
    let deadline = Instant::now() + ORIGINATE_LOGIN_WAIT;
    while !ami.is_logged_in() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let why = ami.last_error().unwrap_or_else(|| "no answer".to_string());
            eprintln!(
                "error: could not log in to AMI at {addr} within {}s: {why}",
                ORIGINATE_LOGIN_WAIT.as_secs()
            );
            return finish(ExitCode::FAILURE);
        }
        let _ = rx.recv_timeout(left.min(Duration::from_millis(100)));
    }
    println!(
        "Originate: ringing {from} ({}), then dialling {dial} in {} (ActionID {}, ChannelId {})",
        action.get("Channel").unwrap_or_default(),
        cfg.originate.context,
        ids.action_id,
        ids.channel_id
    );
    let resp = match ami.request(action, originate::RESPONSE_TIMEOUT) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return finish(ExitCode::FAILURE);
        }
    };
    println!(
        "Response: {} ({})",
        resp.response().unwrap_or("?"),
        originate::message_of(&resp)
    );
    if !originate::is_success(&resp) {
        return finish(ExitCode::FAILURE);
    }
    let wait = cfg.originate.timeout + Duration::from_secs(5);
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            eprintln!("error: no OriginateResponse within {}s", wait.as_secs());
            return finish(ExitCode::FAILURE);
        }
        match rx.recv_timeout(left) {
            Ok(Incoming::Event { msg, .. })
                if msg
                    .event()
                    .is_some_and(|e| e.eq_ignore_ascii_case("OriginateResponse"))
                    && msg.action_id() == Some(ids.action_id.as_str()) =>
            {
                // An event: its `Response:` is not the first field, so not `msg.response()`.
                let ok = msg
                    .get("Response")
                    .is_some_and(|r| r.eq_ignore_ascii_case("Success"));
                println!(
                    "OriginateResponse: {} (Reason {})",
                    msg.get("Response").unwrap_or("?"),
                    msg.get("Reason").unwrap_or("?")
                );
                return finish(if ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                });
            }
            Ok(Incoming::Disconnected { reason }) => {
                log::warn!("AMI connection lost while waiting: {reason}");
            }
            Ok(_) => {}
            Err(_) => {}
        }
    }
}
