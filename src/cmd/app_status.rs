//! `callme app-status`.

use std::path::Path;
use std::process::ExitCode;

use super::load_or_report;
use crate::bitrix::oauth::{self, AppClient};
use crate::clock::now_secs;
use crate::isotime;

/// `callme app-status`: what app mode has stored, and what the portal has bound. Read-only:
/// it never refreshes the token (that would rotate the pair under a running daemon).
pub fn run(path: &Path) -> ExitCode {
    let Some(cfg) = load_or_report(path) else {
        return ExitCode::FAILURE;
    };
    let Some(app) = &cfg.bitrix24.app else {
        eprintln!(
            "{}: [bitrix24] auth is not app; nothing to show",
            path.display()
        );
        return ExitCode::from(2);
    };
    let client = AppClient::new(
        app,
        &cfg.state.dir,
        cfg.bitrix24.timeout,
        Default::default(),
    )
    .read_only();
    println!("portal:        {}", app.portal);
    println!("token file:    {}", client.store().path().display());
    let Some(t) = client.tokens() else {
        println!("tokens stored: no (install the application; see docs/app-mode.md)");
        return ExitCode::FAILURE;
    };
    let now = now_secs();
    println!("tokens stored: yes");
    println!("domain:        {}", t.domain);
    println!("member_id:     {}", t.member_id);
    println!("endpoint:      {}", t.client_endpoint);
    println!(
        "access token:  {} ({})",
        if t.expires > now {
            "valid until"
        } else {
            "expired at"
        },
        isotime::utc(t.expires.saturating_mul(1000))
    );
    match oauth::bound_events(&client) {
        Ok(list) if list.is_empty() => println!("bound events:  none"),
        Ok(list) => {
            println!("bound events:");
            for (event, handler) in list {
                println!("  {event} -> {handler}");
            }
        }
        Err(e) => {
            println!("bound events:  unknown ({e})");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
