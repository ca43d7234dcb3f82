//! `callme replay [--dry-run] CAPTURE` and `callme demo`: a recorded AMI capture through the
//! tracker and the deliverer, against a real portal (through `run`'s pipeline: rate limiter,
//! outbox, batching) or the built-in dry-run one.

use std::io::{self, BufRead, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::bitrix::deliver::{DeliverConfig, Deliverer};
use crate::bitrix::limiter::{Limited, Limiter};
use crate::bitrix::outbox::Outbox;
use crate::bitrix::{Directory, SharedDirectory, Transport, WebhookClient};
use crate::calls::{Tracker, TrackerConfig};
use crate::config::{self, Config, StateConfig};
use crate::dryrun::{self, DryRun};
use crate::replay;
use crate::statelock::StateLock;

/// The capture bundled for `callme demo`: a real Asterisk 20 call through a ring-all queue
/// (two phones ring, 221 answers, 220 is cancelled).
const DEMO_CAPTURE: &[u8] = include_bytes!("../../tests/fixtures/k_inbound_queue_ringall.ami");
const DEMO_TIMING: &str =
    include_str!("../../tests/fixtures/k_inbound_queue_ringall.ami.timing.tsv");

/// `callme replay`: `config: None` replays with the built-in demo settings (dry-run only).
pub fn replay(config: Option<&Path>, dry_run: bool, capture: &Path) -> ExitCode {
    let cfg = match config {
        Some(path) => match config::load(path) {
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
    let mut cap = match replay::open(capture) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if dry_run {
        let transport = DryRun::new(Box::new(io::stdout()), dryrun::Format::JsonLines);
        return run(&cfg, &mut cap, Box::new(transport), None);
    }
    // A replay is a one-off tool; it does not take part in the daemon's token refresh (two
    // refreshers of one refresh_token would log each other out).
    let Some(url) = &cfg.bitrix24.webhook_url else {
        eprintln!(
            "error: replay without --dry-run needs [bitrix24] webhook_url \
             (not available with auth = app); add --dry-run"
        );
        return ExitCode::from(2);
    };
    let client = WebhookClient::new(url.expose(), cfg.bitrix24.timeout);
    run_pipeline(&cfg, &mut cap, client)
}

/// A replay into a real portal goes the way `callme run` sends: the same rate limiter (one
/// bucket, `[bitrix24] rate` and `burst`), a durable outbox and batching. The outbox lives
/// in the config's `[state] dir` when it names one other than the service's default (taking
/// its lock, so never beside a daemon using it; steps left undelivered wait there for the
/// next replay or run), else in a temporary directory removed afterwards.
fn run_pipeline<R: BufRead, T: BufRead>(
    cfg: &Config,
    cap: &mut replay::Source<R, T>,
    client: WebhookClient,
) -> ExitCode {
    let temp = (cfg.state.dir == StateConfig::default().dir)
        .then(|| std::env::temp_dir().join(format!("callme-replay-{}", std::process::id())));
    let dir = temp.clone().unwrap_or_else(|| cfg.state.dir.clone());
    let lock = match StateLock::acquire(&dir) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outbox = match Outbox::open(&dir, cfg.state.outbox_warn) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    log::info!("replay: outbox in {}", dir.display());
    let limiter = Limiter::new(cfg.bitrix24.rate, cfg.bitrix24.burst);
    let mut deliverer = Deliverer::with_outbox(
        DeliverConfig::from_config(cfg),
        Box::new(Limited::new(client, limiter)),
        SharedDirectory::not_loaded(),
        Arc::new(Mutex::new(outbox)),
    );
    let mut tracker = Tracker::new(TrackerConfig::from_config(cfg));
    let s = replay::run(
        cap,
        &mut tracker,
        &mut deliverer,
        None,
        replay::Pace::AfterCapture {
            max_backlog: replay::MAX_BACKLOG,
        },
        replay::DRAIN_LIMIT,
    );
    deliverer
        .outbox()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .flush();
    drop(deliverer);
    drop(lock);
    if let Some(t) = temp {
        let _ = std::fs::remove_dir_all(t);
    }
    report(&s)
}

/// `callme demo`: the bundled capture with a readable timeline.
pub fn demo() -> ExitCode {
    let mut cap = replay::from_memory(DEMO_CAPTURE, DEMO_TIMING, "bundled demo capture");
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
    let code = run(&cfg, &mut cap, Box::new(transport), Some(&mut stdout));
    let _ = writeln!(
        stdout,
        "\nEvery Bitrix24 request above was answered by the dry-run responder. Try \
         `callme replay --dry-run CAPTURE` for JSON lines, or see README.md to connect a real PBX."
    );
    code
}

fn config_is_demo(cfg: &Config) -> bool {
    cfg.bitrix24
        .webhook_url
        .as_ref()
        .is_some_and(|u| u.expose().contains("demo.invalid"))
}

fn run<R: BufRead, T: BufRead>(
    cfg: &Config,
    cap: &mut replay::Source<R, T>,
    transport: Box<dyn Transport>,
    timeline: Option<&mut dyn Write>,
) -> ExitCode {
    let mut tracker = Tracker::new(TrackerConfig::from_config(cfg));
    let mut deliverer = Deliverer::new(
        DeliverConfig::from_config(cfg),
        transport,
        Directory::from_users(Vec::new(), Instant::now()),
    );
    let s = replay::run(
        cap,
        &mut tracker,
        &mut deliverer,
        timeline,
        replay::Pace::EachIntent,
        replay::DRAIN_LIMIT,
    );
    report(&s)
}

fn report(s: &replay::Summary) -> ExitCode {
    let skipped = if s.dropped > 0 {
        format!(
            ", {} message(s) over {} bytes skipped",
            s.dropped,
            replay::MAX_MESSAGE
        )
    } else {
        String::new()
    };
    log::info!(
        "replayed {} messages: {} call(s), {} intent(s), {} step(s) undelivered, {} permanent failure(s){skipped}",
        s.messages,
        s.calls,
        s.intents,
        s.pending,
        s.permanent_failures
    );
    if let Some(e) = &s.error {
        eprintln!("error: replay stopped: {e}");
        return ExitCode::FAILURE;
    }
    if s.pending > 0 || s.permanent_failures > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
