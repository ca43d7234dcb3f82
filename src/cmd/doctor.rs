//! `callme doctor`.

use std::io::{self, Write};
use std::path::Path;
use std::process::ExitCode;

use super::load_or_report;
use crate::doctor::{self, Options};

/// `callme doctor`: the online checks, one line each as it is known, then a summary. Exit
/// status 1 if any check failed (or the config does not load).
pub fn run(path: &Path) -> ExitCode {
    let Some(cfg) = load_or_report(path) else {
        return ExitCode::FAILURE;
    };
    let mut stdout = io::stdout().lock();
    let checks = doctor::run(&cfg, &Options::default(), &mut |c| {
        let _ = writeln!(stdout, "{c}").and_then(|_| stdout.flush());
    });
    let _ = writeln!(stdout, "{}", doctor::summary(&checks));
    if doctor::any_failed(&checks) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
