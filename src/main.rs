//! The `callme` binary: parse the command line, start the right subcommand. Everything else,
//! the subcommands included, lives in the library (`callme::cmd`).

mod signals;

use std::process::ExitCode;

use callme::cli::{self, Command};
use callme::cmd::{ami_events, app_status, doctor, originate_once, replay_capture, run_daemon};
use callme::{config, logging};

fn main() -> ExitCode {
    let cmd = match cli::parse(std::env::args().skip(1)) {
        Ok(cmd) => cmd,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match cmd {
        Command::Help => {
            print!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("callme {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::CheckConfig { config } => {
            logging::init(false);
            match config::load(&config) {
                Ok(_) => {
                    println!("{}: ok", config.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Replay {
            config,
            dry_run,
            capture,
            debug,
        } => {
            logging::init(debug);
            replay_capture::replay(config.as_deref(), dry_run, &capture)
        }
        Command::Demo { debug } => {
            logging::init(debug);
            replay_capture::demo()
        }
        Command::Run { config, debug } => {
            logging::init(debug);
            // Before anything else, so a SIGTERM or SIGHUP during startup is not fatal and
            // silent (after logging, so a handler that cannot be installed is reported).
            signals::install();
            run_daemon::run(
                &config,
                run_daemon::Signals {
                    terminate_requested: signals::terminate_requested,
                    take_hangup: signals::take_hangup,
                },
            )
        }
        Command::AmiEvents { config, debug } => {
            logging::init(debug);
            ami_events::run(&config)
        }
        Command::Originate {
            config,
            from,
            to,
            debug,
        } => {
            logging::init(debug);
            originate_once::run(&config, &from, &to)
        }
        Command::AppStatus { config } => {
            logging::init(false);
            app_status::run(&config)
        }
        Command::Doctor { config } => {
            logging::init(false);
            doctor::run(&config)
        }
    }
}
