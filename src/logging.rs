//! Logging setup for every subcommand: `env_logger` on stderr, no timestamps (journald stamps
//! each line itself; on a terminal the lines are read as they come).
//!
//! Under systemd, when stderr *is* the journal, every line starts with its syslog priority
//! (`<3>` error, `<4>` warning, `<6>` info, `<7>` debug and trace): journald strips the prefix
//! and files the line under that priority, so `journalctl -u callme -p warning` shows exactly
//! the warnings and errors. Without the prefix every line of a service is filed as info.

use std::io::Write;

/// `RUST_LOG` wins when set. Otherwise `info`, or `debug` for our own modules with `--debug`.
/// ureq and rustls stay at `info` whatever is asked: at trace level ureq prints request paths,
/// and a webhook path contains its secret code.
pub fn init(debug: bool) {
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
    if stderr_is_journal() {
        b.format(|buf, record| {
            let prio = priority(record.level());
            let text = record.args().to_string();
            // journald splits a message at newlines and files each later line as info:
            // give every line the prefix, so a multi-line error stays an error.
            for line in text.split('\n') {
                writeln!(
                    buf,
                    "<{prio}>[{:<5} {}] {line}",
                    record.level(),
                    record.target()
                )?;
            }
            Ok(())
        });
    }
    let _ = b.try_init();
    crate::panic_hook::install();
}

/// The syslog priority journald reads from a `<N>` line prefix (sd-daemon(3)).
pub fn priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// True when stderr is the journal stream systemd connected: `JOURNAL_STREAM` holds its
/// `device:inode`, and it must match stderr's own, because the variable is inherited by
/// children whose stderr was redirected elsewhere (a shell started from the service, a
/// pipe into a file), and those must keep the plain format (systemd.exec(5)).
pub fn stderr_is_journal() -> bool {
    let Ok(value) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    match (parse_journal_stream(&value), stderr_dev_ino()) {
        (Some(want), Some(have)) => want == have,
        _ => false,
    }
}

/// `"8:12345"` → `(8, 12345)`: both decimal, as systemd writes them.
pub fn parse_journal_stream(value: &str) -> Option<(u64, u64)> {
    let (dev, ino) = value.trim().split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

/// Device and inode of what fd 2 refers to, through `/proc/self/fd/2` (no `unsafe` fstat).
#[cfg(unix)]
fn stderr_dev_ino() -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata("/proc/self/fd/2").ok()?;
    Some((meta.dev(), meta.ino()))
}

#[cfg(not(unix))]
fn stderr_dev_ino() -> Option<(u64, u64)> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_follow_syslog() {
        assert_eq!(priority(log::Level::Error), 3);
        assert_eq!(priority(log::Level::Warn), 4);
        assert_eq!(priority(log::Level::Info), 6);
        assert_eq!(priority(log::Level::Debug), 7);
        assert_eq!(priority(log::Level::Trace), 7);
    }

    #[test]
    fn journal_stream_values() {
        assert_eq!(parse_journal_stream("8:12345"), Some((8, 12345)));
        assert_eq!(parse_journal_stream(" 0:1\n"), Some((0, 1)));
        assert_eq!(parse_journal_stream("8"), None);
        assert_eq!(parse_journal_stream("a:1"), None);
        assert_eq!(parse_journal_stream(""), None);
    }
}
