//! The `callme` binary: parse the command line, load the config, start the right thing.
//! Everything else lives in the library.

use std::io::{self, Write};
use std::path::Path;
use std::process::ExitCode;

use callme::bitrix::deliver::{DeliverConfig, Deliverer};
use callme::bitrix::{Directory, Transport, WebhookClient};
use callme::calls::Tracker;
use callme::cli::{self, Command};
use callme::config::{self, Config};
use callme::dryrun::{self, DryRun};
use callme::replay;

/// The capture bundled for `callme demo`: a real Asterisk 20 call through a ring-all queue
/// (two phones ring, 221 answers, 220 is cancelled).
const DEMO_CAPTURE: &[u8] = include_bytes!("../tests/fixtures/k_inbound_queue_ringall.ami");
const DEMO_TIMING: &str = include_str!("../tests/fixtures/k_inbound_queue_ringall.ami.timing.tsv");

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
            init_logging(false);
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
            init_logging(debug);
            let cfg = match config {
                Some(path) => match config::load(&path) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("{e}");
                        return ExitCode::FAILURE;
                    }
                },
                None => Config::demo(),
            };
            if !dry_run && config_is_demo(&cfg) {
                eprintln!(
                    "error: replay without --dry-run sends to the configured webhook_url; \
                     give a config with -c FILE, or add --dry-run"
                );
                return ExitCode::from(2);
            }
            let cap = match replay::load(&capture) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            let transport: Box<dyn Transport> = if dry_run {
                Box::new(DryRun::new(
                    Box::new(io::stdout()),
                    dryrun::Format::JsonLines,
                ))
            } else {
                Box::new(WebhookClient::new(
                    cfg.bitrix24.webhook_url.expose(),
                    cfg.bitrix24.timeout,
                ))
            };
            run_replay(&cfg, &cap, transport, None)
        }
        Command::Demo { debug } => {
            init_logging(debug);
            demo()
        }
        Command::Run { config, debug } => {
            init_logging(debug);
            run_daemon(&config)
        }
        Command::AmiEvents { config, debug } => {
            init_logging(debug);
            ami_events(&config)
        }
        Command::Originate { .. } => {
            init_logging(false);
            eprintln!("error: 'callme originate' is not implemented yet (see README, Status)");
            ExitCode::FAILURE
        }
    }
}

/// `RUST_LOG` wins when set. Otherwise `info`, or `debug` for our own modules with `--debug`.
/// ureq and rustls stay at `info` whatever is asked: at trace level ureq prints request paths,
/// and a webhook path contains its secret code.
fn init_logging(debug: bool) {
    let ours = if debug { "debug" } else { "info" };
    let default = format!("{ours},ureq=info,ureq_proto=info,rustls=info");
    let mut b = env_logger::Builder::new();
    b.parse_filters(&default);
    if let Ok(env) = std::env::var("RUST_LOG") {
        b.parse_filters(&env);
        b.filter_module("ureq", log::LevelFilter::Info);
        b.filter_module("ureq_proto", log::LevelFilter::Info);
        b.filter_module("rustls", log::LevelFilter::Info);
    }
    b.format_timestamp(None); // journald stamps every line itself
    let _ = b.try_init();
}

fn config_is_demo(cfg: &Config) -> bool {
    cfg.bitrix24.webhook_url.expose().contains("demo.invalid")
}

fn run_replay(
    cfg: &Config,
    cap: &replay::Capture,
    transport: Box<dyn Transport>,
    timeline: Option<&mut dyn Write>,
) -> ExitCode {
    let mut tracker = Tracker::new(callme::calls::TrackerConfig::from_config(&cfg.calls));
    let mut deliverer = Deliverer::new(
        DeliverConfig::from_config(cfg),
        transport,
        Directory::from_users(Vec::new(), std::time::Instant::now()),
    );
    let s = replay::run(
        cap,
        &mut tracker,
        &mut deliverer,
        timeline,
        replay::DRAIN_LIMIT,
    );
    log::info!(
        "replayed {} messages: {} call(s), {} intent(s), {} step(s) undelivered, {} permanent failure(s)",
        s.messages,
        s.calls,
        s.intents,
        s.pending,
        s.permanent_failures
    );
    if s.pending > 0 || s.permanent_failures > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn demo() -> ExitCode {
    let cap = match replay::parse_with_timing(DEMO_CAPTURE, DEMO_TIMING, "demo timing") {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bundled demo capture is broken: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = io::stdout();
    let _ = writeln!(
        stdout,
        "callme demo: a real Asterisk 20 capture (caller 79991234567 → DID 8001231234 → queue, \
         phones 220 and 221 ring, 221 answers)\nreplayed through the call tracker against a \
         built-in dry-run Bitrix24 (no PBX, no portal, no network).\n\
         Employees: {}. CRM: contact {} for {}, responsible user {}.\n",
        dryrun::USERS
            .iter()
            .map(|(id, inner, name)| format!("{name} (user {id}, ext {inner})"))
            .collect::<Vec<_>>()
            .join(", "),
        dryrun::CONTACT.1,
        dryrun::CONTACT.0,
        dryrun::CONTACT.2
    );
    let cfg = Config::demo();
    let transport = DryRun::new(Box::new(io::stdout()), dryrun::Format::Timeline);
    let code = run_replay(&cfg, &cap, Box::new(transport), Some(&mut stdout));
    let _ = writeln!(
        stdout,
        "\nEvery Bitrix24 request above was answered by the dry-run responder. Try \
         `callme replay --dry-run CAPTURE` for JSON lines, or see README.md to connect a real PBX."
    );
    code
}

fn load_or_report(path: &Path) -> Option<Config> {
    match config::load(path) {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("{e}");
            None
        }
    }
}

fn run_daemon(path: &Path) -> ExitCode {
    let Some(cfg) = load_or_report(path) else {
        return ExitCode::FAILURE;
    };
    log::info!(
        "callme {} starting: AMI {}:{}, Bitrix24 {}",
        env!("CARGO_PKG_VERSION"),
        cfg.asterisk.host,
        cfg.asterisk.port,
        cfg.bitrix24.webhook_url
    );
    let daemon = callme::daemon::Daemon::start(&cfg);
    // Runs until the process is stopped. (Clean SIGTERM handling: see README, Status.)
    daemon.wait();
    ExitCode::SUCCESS
}

/// `callme ami-events`: log in with the config's credentials and print every event as it
/// arrives, in AMI's own `Key: value` form. For checking what a live PBX sends.
fn ami_events(path: &Path) -> ExitCode {
    let Some(cfg) = load_or_report(path) else {
        return ExitCode::FAILURE;
    };
    let (tx, rx) = crossbeam_channel::unbounded();
    let (_handle, _thread) = callme::ami::client::start(callme::daemon::ami_config(&cfg), tx);
    let mut out = io::stdout().lock();
    for incoming in rx {
        match incoming {
            callme::ami::Incoming::Connected { banner } => {
                log::info!(
                    "connected to {}:{} ({banner})",
                    cfg.asterisk.host,
                    cfg.asterisk.port
                )
            }
            callme::ami::Incoming::Disconnected { reason } => log::warn!("disconnected: {reason}"),
            callme::ami::Incoming::Event { msg, .. } => {
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
