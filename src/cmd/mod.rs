//! The subcommands of the `callme` binary, one file each. `main.rs` parses the command line
//! and calls one of these; each returns the process exit status.

pub mod ami_events;
pub mod app_status;
pub mod doctor;
pub mod originate_once;
pub mod replay_capture;
pub mod run_daemon;

use std::path::Path;

use crate::config::{self, Config};

/// Load the config, or print why not to stderr (the subcommands exit with status 1 then).
fn load_or_report(path: &Path) -> Option<Config> {
    match config::load(path) {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("{e}");
            None
        }
    }
}
