//! Command-line parsing, by hand: the design allows no argument-parsing crate, and the
//! surface is small (nine subcommands, five flags).
//!
//! Flags may come before or after the subcommand (`callme -c f run` = `callme run -c f`), but
//! each subcommand accepts only its own flags, so a misplaced `--dry-run` is an error instead of
//! being silently ignored. `-h`/`--help` and `-V`/`--version` win wherever they appear. `--`
//! ends the flags (for a capture file whose name starts with `-`).

use std::fmt;
use std::path::PathBuf;

use crate::config::DEFAULT_PATH;

/// What the user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// The daemon.
    Run {
        config: PathBuf,
        debug: bool,
    },
    /// Validate the config and exit.
    CheckConfig {
        config: PathBuf,
    },
    /// Feed a raw AMI capture through codec and tracker. `config: None` = built-in defaults
    /// ([`crate::config::Config::demo`]).
    Replay {
        config: Option<PathBuf>,
        dry_run: bool,
        capture: PathBuf,
        debug: bool,
    },
    /// Replay the bundled capture, dry-run, with a readable timeline.
    Demo {
        debug: bool,
    },
    /// Connect to AMI and print the event stream.
    AmiEvents {
        config: PathBuf,
        debug: bool,
    },
    /// Click-to-call from the command line: ring `from` (internal), then dial `to`.
    Originate {
        config: PathBuf,
        from: String,
        to: String,
        debug: bool,
    },
    /// App mode: what is stored and bound (never a token or secret).
    AppStatus {
        config: PathBuf,
    },
    /// Online checks of AMI, Bitrix24, click-to-call and the state dir.
    Doctor {
        config: PathBuf,
    },
    Help,
    Version,
}

/// Bad command line. The binary prints it to stderr and exits with status 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error: {}\n\nRun 'callme --help' for usage.", self.0)
    }
}

impl std::error::Error for UsageError {}

/// The full `--help` text.
pub const USAGE: &str = concat!(
    "callme ",
    env!("CARGO_PKG_VERSION"),
    ": Asterisk (AMI) to Bitrix24 telephony bridge

Usage:
  callme run          [-c FILE] [--debug]
  callme check-config [-c FILE | FILE]
  callme replay       [-c FILE] [--dry-run] [--debug] CAPTURE
  callme demo         [--debug]
  callme ami-events   [-c FILE] [--debug]
  callme originate    [-c FILE] --from INNER --to NUMBER [--debug]
  callme app-status   [-c FILE]
  callme doctor       [-c FILE]
  callme help | -h | --help
  callme -V | --version

Subcommands:
  run           Run the daemon (this is what the systemd unit starts).
  check-config  Check the config file. Prints FILE:LINE: problem for every
                problem and exits non-zero if there is one.
  replay        Feed a raw AMI capture (a file of bytes read from port 5038)
                through the call tracker and deliver the Bitrix24 requests
                to the configured webhook_url. Without -c, built-in
                placeholder settings are used: combine it with --dry-run.
  demo          Replay the bundled sample call with --dry-run and print a
                readable timeline. Needs no config, PBX or portal.
  ami-events    Log in to Asterisk with the config's credentials and print
                the AMI events as they arrive (to check permissions/traffic).
  originate     Test click-to-call: ring the internal phone INNER first,
                then dial NUMBER from it.
  app-status    App mode ([bitrix24] auth = app): show the portal, member_id,
                token expiry, whether tokens are stored and the bound events.
                Never prints a token or secret.
  doctor        Online checks, one line each (OK, WARN or FAIL with the
                fix): AMI login, classes, timestamps, Asterisk version and
                channel driver, the contrib dialplan; Bitrix24 credentials,
                scopes, employees' internal numbers and the [calls] numbers;
                click-to-call public_url and bound events; the state dir.
                Exits non-zero if a check fails. Never prints a secret.
                Start here when something is wrong.

Options:
  -c, --config FILE  Config file. Default: ",
    "/etc/callme/callme.conf",
    "
                     (replay: built-in defaults)
      --debug        Verbose log: every Bitrix24 request and response and
                     every AMI event (secrets are always hidden)
      --dry-run      replay: print each Bitrix24 request as one JSON object
                     per line instead of sending it; a built-in responder
                     answers
      --from INNER   originate: internal number to ring first (1-6 digits)
      --to NUMBER    originate: number to dial (digits, optional leading +)
  -h, --help         Show this help
  -V, --version      Show the version

A usage error exits with status 2.
"
);

/// Flags, by canonical name, for "not valid for this subcommand" checks and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flag {
    Config,
    Debug,
    DryRun,
    From,
    To,
}

impl Flag {
    fn name(self) -> &'static str {
        match self {
            Flag::Config => "-c/--config",
            Flag::Debug => "--debug",
            Flag::DryRun => "--dry-run",
            Flag::From => "--from",
            Flag::To => "--to",
        }
    }

    fn takes_value(self) -> bool {
        matches!(self, Flag::Config | Flag::From | Flag::To)
    }

    fn lookup(arg: &str) -> Option<Flag> {
        Some(match arg {
            "-c" | "--config" => Flag::Config,
            "--debug" => Flag::Debug,
            "--dry-run" => Flag::DryRun,
            "--from" => Flag::From,
            "--to" => Flag::To,
            _ => return None,
        })
    }
}

const SUBCOMMANDS: &str =
    "run, check-config, replay, demo, ami-events, originate, app-status, doctor, help";

/// Parse the arguments, without `argv[0]`.
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Command, UsageError> {
    let mut positionals: Vec<String> = Vec::new();
    let mut flags: Vec<(Flag, Option<String>)> = Vec::new();
    // The first problem is reported, but only after the whole line is scanned, so that
    // `--help` anywhere still shows help.
    let mut problem: Option<String> = None;
    let mut only_positionals = false;
    let mut args = args.into_iter().peekable();

    while let Some(arg) = args.next() {
        if only_positionals || arg == "-" || !arg.starts_with('-') {
            positionals.push(arg);
            continue;
        }
        match arg.as_str() {
            "--" => {
                only_positionals = true;
                continue;
            }
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            _ => {}
        }
        if problem.is_some() {
            continue; // keep scanning for --help / --version only
        }
        // `--name=value` for long flags.
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if arg.starts_with("--") => (n, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let Some(flag) = Flag::lookup(name) else {
            problem = Some(format!("unknown option `{}`", shown(&arg)));
            continue;
        };
        if flags.iter().any(|(f, _)| *f == flag) {
            problem = Some(format!("{} given twice", flag.name()));
            continue;
        }
        let value = if !flag.takes_value() {
            if inline.is_some() {
                problem = Some(format!("{} takes no value", flag.name()));
                continue;
            }
            None
        } else if let Some(v) = inline {
            Some(v)
        } else {
            // A following flag is not taken as the value: `-c --debug` is a forgotten FILE.
            match args.next_if(|next| next == "-" || !next.starts_with('-')) {
                Some(v) => Some(v),
                None => {
                    problem = Some(format!("{} needs a value", flag.name()));
                    continue;
                }
            }
        };
        if value.as_deref() == Some("") {
            problem = Some(format!("{} needs a non-empty value", flag.name()));
            continue;
        }
        flags.push((flag, value));
    }
    if let Some(p) = problem {
        return Err(UsageError(p));
    }

    let mut positionals = positionals.into_iter();
    let Some(sub) = positionals.next() else {
        return Err(UsageError(format!(
            "missing subcommand (one of: {SUBCOMMANDS})"
        )));
    };
    let rest: Vec<String> = positionals.collect();

    let allowed: &[Flag] = match sub.as_str() {
        "run" | "ami-events" => &[Flag::Config, Flag::Debug],
        "check-config" | "app-status" | "doctor" => &[Flag::Config],
        "replay" => &[Flag::Config, Flag::DryRun, Flag::Debug],
        "demo" => &[Flag::Debug],
        "originate" => &[Flag::Config, Flag::From, Flag::To, Flag::Debug],
        "help" => &[],
        other => {
            return Err(UsageError(format!(
                "unknown subcommand `{}` (one of: {SUBCOMMANDS})",
                shown(other)
            )))
        }
    };
    if let Some((flag, _)) = flags.iter().find(|(f, _)| !allowed.contains(f)) {
        let valid = if allowed.is_empty() {
            "it takes no options".to_string()
        } else {
            let names: Vec<&str> = allowed.iter().map(|f| f.name()).collect();
            format!("valid: {}", names.join(", "))
        };
        return Err(UsageError(format!(
            "{} is not valid for `{sub}` ({valid})",
            flag.name()
        )));
    }

    let get = |flag: Flag| -> Option<String> {
        flags
            .iter()
            .find(|(f, _)| *f == flag)
            .and_then(|(_, v)| v.clone())
    };
    let has = |flag: Flag| flags.iter().any(|(f, _)| *f == flag);
    let config = || PathBuf::from(get(Flag::Config).unwrap_or_else(|| DEFAULT_PATH.to_string()));
    let debug = has(Flag::Debug);

    // replay takes its CAPTURE; check-config also takes the file as `check-config FILE`
    // (the way people try it first); nothing else takes positional arguments.
    let expected_positionals = usize::from(sub == "replay" || sub == "check-config");
    if rest.len() > expected_positionals {
        return Err(UsageError(format!(
            "unexpected argument `{}` for `{sub}`",
            shown(&rest[expected_positionals])
        )));
    }

    Ok(match sub.as_str() {
        "run" => Command::Run {
            config: config(),
            debug,
        },
        "check-config" => match rest.into_iter().next() {
            Some(_) if has(Flag::Config) => {
                return Err(UsageError(
                    "give the config file either as FILE or with -c FILE, not both".to_string(),
                ))
            }
            Some(file) => Command::CheckConfig {
                config: PathBuf::from(file),
            },
            None => Command::CheckConfig { config: config() },
        },
        "replay" => {
            let Some(capture) = rest.into_iter().next() else {
                return Err(UsageError(
                    "replay needs a CAPTURE file (callme replay [-c FILE] [--dry-run] CAPTURE)"
                        .to_string(),
                ));
            };
            Command::Replay {
                config: get(Flag::Config).map(PathBuf::from),
                dry_run: has(Flag::DryRun),
                capture: PathBuf::from(capture),
                debug,
            }
        }
        "demo" => Command::Demo { debug },
        "ami-events" => Command::AmiEvents {
            config: config(),
            debug,
        },
        "app-status" => Command::AppStatus { config: config() },
        "doctor" => Command::Doctor { config: config() },
        "originate" => {
            let (Some(from), Some(to)) = (get(Flag::From), get(Flag::To)) else {
                return Err(UsageError(
                    "originate needs both --from INNER and --to NUMBER".to_string(),
                ));
            };
            if from.len() > 6 || !from.bytes().all(|b| b.is_ascii_digit()) {
                return Err(UsageError(format!(
                    "--from `{}` is not an internal number (allowed: 1-6 digits)",
                    shown(&from)
                )));
            }
            if let Err(e) = crate::phone::validate(&to) {
                return Err(UsageError(format!("--to: {e}")));
            }
            Command::Originate {
                config: config(),
                from,
                to,
                debug,
            }
        }
        _ => Command::Help, // "help"; unknown names were rejected above
    })
}

/// Argument text for a message: control characters escaped, long text cut.
fn shown(s: &str) -> String {
    const MAX: usize = 60;
    let mut out: String = s.chars().take(MAX).flat_map(char::escape_debug).collect();
    if s.chars().count() > MAX {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Command, UsageError> {
        parse(args.iter().map(|s| s.to_string()))
    }

    fn err(args: &[&str]) -> String {
        p(args).unwrap_err().0
    }

    fn default_config() -> PathBuf {
        PathBuf::from("/etc/callme/callme.conf")
    }

    #[test]
    fn usage_mentions_default_path_and_every_subcommand() {
        assert!(USAGE.contains(DEFAULT_PATH));
        for sub in SUBCOMMANDS.split(", ") {
            assert!(USAGE.contains(&format!("callme {sub}")), "{sub}");
        }
        for flag in [
            "--config",
            "--debug",
            "--dry-run",
            "--from",
            "--to",
            "--help",
            "--version",
        ] {
            assert!(USAGE.contains(flag), "{flag}");
        }
    }

    #[test]
    fn run() {
        assert_eq!(
            p(&["run"]).unwrap(),
            Command::Run {
                config: default_config(),
                debug: false
            }
        );
        let want = Command::Run {
            config: "/tmp/c.conf".into(),
            debug: true,
        };
        assert_eq!(p(&["run", "-c", "/tmp/c.conf", "--debug"]).unwrap(), want);
        assert_eq!(
            p(&["run", "--config", "/tmp/c.conf", "--debug"]).unwrap(),
            want
        );
        assert_eq!(
            p(&["run", "--config=/tmp/c.conf", "--debug"]).unwrap(),
            want
        );
        assert_eq!(p(&["--debug", "-c", "/tmp/c.conf", "run"]).unwrap(), want);
    }

    #[test]
    fn check_config() {
        assert_eq!(
            p(&["check-config"]).unwrap(),
            Command::CheckConfig {
                config: default_config()
            }
        );
        assert_eq!(
            p(&["check-config", "-c", "x.conf"]).unwrap(),
            Command::CheckConfig {
                config: PathBuf::from("x.conf")
            }
        );
        assert_eq!(
            p(&["check-config", "x.conf"]).unwrap(),
            Command::CheckConfig {
                config: "x.conf".into()
            }
        );
        assert!(err(&["check-config", "--debug"])
            .starts_with("--debug is not valid for `check-config`"));
        assert!(err(&["check-config", "-c", "a.conf", "b.conf"]).starts_with("give the config"));
        assert!(err(&["check-config", "a.conf", "b.conf"]).starts_with("unexpected argument"));
    }

    #[test]
    fn replay() {
        assert_eq!(
            p(&["replay", "cap.ami"]).unwrap(),
            Command::Replay {
                config: None,
                dry_run: false,
                capture: "cap.ami".into(),
                debug: false
            }
        );
        assert_eq!(
            p(&["replay", "-c", "c.conf", "--dry-run", "--debug", "cap.ami"]).unwrap(),
            Command::Replay {
                config: Some("c.conf".into()),
                dry_run: true,
                capture: "cap.ami".into(),
                debug: true
            }
        );
        assert_eq!(
            p(&["replay", "--dry-run", "--", "-odd.ami"]).unwrap(),
            Command::Replay {
                config: None,
                dry_run: true,
                capture: "-odd.ami".into(),
                debug: false
            }
        );
        assert!(err(&["replay", "--dry-run"]).starts_with("replay needs a CAPTURE file"));
        assert_eq!(
            err(&["replay", "a.ami", "b.ami"]),
            "unexpected argument `b.ami` for `replay`"
        );
    }

    #[test]
    fn demo() {
        assert_eq!(p(&["demo"]).unwrap(), Command::Demo { debug: false });
        assert_eq!(
            p(&["demo", "--debug"]).unwrap(),
            Command::Demo { debug: true }
        );
        assert_eq!(
            err(&["demo", "-c", "x"]),
            "-c/--config is not valid for `demo` (valid: --debug)"
        );
    }

    #[test]
    fn ami_events() {
        assert_eq!(
            p(&["ami-events", "--debug"]).unwrap(),
            Command::AmiEvents {
                config: default_config(),
                debug: true
            }
        );
    }

    #[test]
    fn originate() {
        assert_eq!(
            p(&["originate", "--from", "219", "--to", "+79991234567"]).unwrap(),
            Command::Originate {
                config: default_config(),
                from: "219".into(),
                to: "+79991234567".into(),
                debug: false
            }
        );
        assert_eq!(
            p(&[
                "originate",
                "--to=89991234567",
                "--from=100",
                "-c",
                "c",
                "--debug"
            ])
            .unwrap(),
            Command::Originate {
                config: "c".into(),
                from: "100".into(),
                to: "89991234567".into(),
                debug: true
            }
        );
        assert_eq!(
            err(&["originate", "--from", "219"]),
            "originate needs both --from INNER and --to NUMBER"
        );
        assert_eq!(
            err(&["originate", "--to", "89991234567"]),
            "originate needs both --from INNER and --to NUMBER"
        );
        assert!(
            err(&["originate", "--from", "2a", "--to", "123"]).contains("not an internal number")
        );
        assert!(err(&["originate", "--from", "219", "--to", "12 34"])
            .starts_with("--to: bad phone number"));
        assert!(err(&[
            "originate",
            "--from",
            "219",
            "--to",
            "123\r\nAction: Command"
        ])
        .starts_with("--to: bad phone number"));
    }

    #[test]
    fn app_status() {
        assert_eq!(
            p(&["app-status"]).unwrap(),
            Command::AppStatus {
                config: default_config()
            }
        );
        assert_eq!(
            p(&["app-status", "-c", "x.conf"]).unwrap(),
            Command::AppStatus {
                config: PathBuf::from("x.conf")
            }
        );
        assert!(err(&["app-status", "--debug"]).contains("--debug is not valid for `app-status`"));
        assert!(err(&["app-status", "extra"]).contains("unexpected argument `extra`"));
        assert!(USAGE.contains("callme app-status   [-c FILE]"));
    }

    #[test]
    fn doctor() {
        assert_eq!(
            p(&["doctor"]).unwrap(),
            Command::Doctor {
                config: default_config()
            }
        );
        assert_eq!(
            p(&["doctor", "-c", "x.conf"]).unwrap(),
            Command::Doctor {
                config: PathBuf::from("x.conf")
            }
        );
        assert!(err(&["doctor", "--debug"]).contains("--debug is not valid for `doctor`"));
        assert!(err(&["doctor", "extra"]).contains("unexpected argument `extra`"));
    }

    #[test]
    fn help_and_version() {
        assert_eq!(p(&["help"]).unwrap(), Command::Help);
        assert_eq!(p(&["-h"]).unwrap(), Command::Help);
        assert_eq!(p(&["--help"]).unwrap(), Command::Help);
        assert_eq!(p(&["run", "--help"]).unwrap(), Command::Help);
        // Help wins even over a mistake elsewhere on the line.
        assert_eq!(p(&["run", "--bogus", "--help"]).unwrap(), Command::Help);
        assert_eq!(p(&["-V"]).unwrap(), Command::Version);
        assert_eq!(p(&["--version"]).unwrap(), Command::Version);
        assert!(err(&["help", "run"]).starts_with("unexpected argument `run`"));
        assert!(err(&["help", "--debug"]).starts_with("--debug is not valid for `help`"));
    }

    #[test]
    fn missing_subcommand() {
        assert!(err(&[]).starts_with("missing subcommand"));
        assert!(err(&["--debug"]).starts_with("missing subcommand"));
    }

    #[test]
    fn unknown_things() {
        assert_eq!(
            err(&["rnu"]),
            "unknown subcommand `rnu` (one of: run, check-config, replay, demo, ami-events, originate, app-status, doctor, help)"
        );
        assert_eq!(err(&["run", "--dryrun"]), "unknown option `--dryrun`");
        assert_eq!(err(&["run", "-x"]), "unknown option `-x`");
        assert_eq!(
            err(&["run", "extra"]),
            "unexpected argument `extra` for `run`"
        );
        assert_eq!(
            err(&["run", "--dry-run"]),
            "--dry-run is not valid for `run` (valid: -c/--config, --debug)"
        );
        assert_eq!(
            err(&["run", "--from", "1"]),
            "--from is not valid for `run` (valid: -c/--config, --debug)"
        );
        assert!(err(&["run", "--bad\r\n"]).contains("`--bad\\r\\n`"));
    }

    #[test]
    fn missing_or_bad_values() {
        assert_eq!(err(&["run", "-c"]), "-c/--config needs a value");
        assert_eq!(err(&["run", "-c", "--debug"]), "-c/--config needs a value");
        assert_eq!(
            err(&["run", "--config="]),
            "-c/--config needs a non-empty value"
        );
        assert_eq!(err(&["run", "--debug=yes"]), "--debug takes no value");
        assert_eq!(
            err(&["run", "-c", "a", "-c", "b"]),
            "-c/--config given twice"
        );
        assert_eq!(
            err(&["originate", "--from", "--to", "123"]),
            "--from needs a value"
        );
    }

    #[test]
    fn usage_error_display() {
        assert_eq!(
            UsageError("missing subcommand".into()).to_string(),
            "error: missing subcommand\n\nRun 'callme --help' for usage."
        );
    }
}
