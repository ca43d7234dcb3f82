//! `callme ami-events`.

use std::io::{self, Write};
use std::path::Path;
use std::process::ExitCode;

use super::load_or_report;
use crate::ami::{client, Incoming};
use crate::daemon::ami_config;

/// `callme ami-events`: log in with the config's credentials and print every event as it
/// arrives, in AMI's own `Key: value` form. For checking what a live PBX sends.
pub fn run(path: &Path) -> ExitCode {
    let Some(cfg) = load_or_report(path) else {
        return ExitCode::FAILURE;
    };
    let (tx, rx) = crossbeam_channel::unbounded();
    let (_handle, _thread) = client::start(ami_config(&cfg), tx);
    let mut out = io::stdout().lock();
    for incoming in rx {
        match incoming {
            Incoming::Connected { banner } => {
                log::info!(
                    "connected to {}:{} ({banner})",
                    cfg.asterisk.host,
                    cfg.asterisk.port
                )
            }
            Incoming::Disconnected { reason } => log::warn!("disconnected: {reason}"),
            Incoming::Event { msg, .. } => {
                let mut text = String::new();
                for (k, v) in msg.iter() {
                    text.push_str(k);
                    text.push_str(": ");
                    text.push_str(v);
                    text.push('\n');
                }
                if writeln!(out, "{text}").and_then(|_| out.flush()).is_err() {
                    break; // stdout closed (piped into `head`)
                }
            }
        }
    }
    ExitCode::SUCCESS
}
