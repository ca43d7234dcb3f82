//! Capture replay: a recorded AMI byte stream through the real codec and tracker.
//!
//! Replay runs on the capture's own clock and never sleeps, so durations come out exact. The
//! time of each message comes from, in order of preference:
//! 1. its `Timestamp:` header (manager.conf `timestampevents = yes`);
//! 2. the `CAPTURE.timing.tsv` sidecar: one line per socket read (`epoch`, `R`/`S`, byte offset,
//!    length); a message takes the time of the read that delivered its last byte;
//! 3. the moment the message is read.

use std::fmt;
use std::fs;
use std::io::{self, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::ami::codec::{Frame, Message, Reader};
use crate::ami::event::{timestamp_ms, Event};
use crate::bitrix::deliver::Deliverer;
use crate::bitrix::{api, Directory};
use crate::calls::{Action, Tracker};

/// A message and when it happened (milliseconds since the Unix epoch).
#[derive(Clone, Debug)]
pub struct Timed {
    pub msg: Message,
    pub at_ms: u64,
}

/// A loaded capture.
#[derive(Debug, Default)]
pub struct Capture {
    pub banner: Option<String>,
    pub messages: Vec<Timed>,
    /// Messages the codec had to drop (over the size cap).
    pub dropped: u64,
    /// Where the times came from, for the user.
    pub clock: &'static str,
}

#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    Io {
        path: PathBuf,
        source: io::Error,
    },
    Timing {
        path: PathBuf,
        line: usize,
        msg: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Error::Timing { path, line, msg } => write!(f, "{}:{line}: {msg}", path.display()),
        }
    }
}

impl std::error::Error for Error {}

/// One socket read from the timing sidecar.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Read {
    at_ms: u64,
    end: u64,
}

/// Load `path` and, when it exists, `path.timing.tsv` beside it.
pub fn load(path: &Path) -> Result<Capture, Error> {
    let bytes = fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut timing_path = path.as_os_str().to_owned();
    timing_path.push(".timing.tsv");
    let timing_path = PathBuf::from(timing_path);
    let timing = match fs::read_to_string(&timing_path) {
        Ok(text) => Some(parse_timing(&text, &timing_path)?),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(Error::Io {
                path: timing_path,
                source,
            })
        }
    };
    Ok(from_bytes(&bytes, timing.as_deref()))
}

fn parse_timing(text: &str, path: &Path) -> Result<Vec<Read>, Error> {
    let mut reads = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let cols: Vec<&str> = line.split('\t').collect();
        if i == 0 && cols.first() == Some(&"epoch") {
            continue;
        }
        if line.trim().is_empty() {
            continue;
        }
        let bad = |msg: &str| Error::Timing {
            path: path.to_path_buf(),
            line: i + 1,
            msg: format!("{msg} (expected: epoch<TAB>R|S<TAB>offset<TAB>length)"),
        };
        if cols.len() != 4 {
            return Err(bad("wrong number of columns"));
        }
        if cols[1] != "R" {
            continue; // what the capture session sent, not received
        }
        let epoch: f64 = cols[0].parse().map_err(|_| bad("bad epoch"))?;
        let offset: u64 = cols[2].parse().map_err(|_| bad("bad offset"))?;
        let len: u64 = cols[3].parse().map_err(|_| bad("bad length"))?;
        if !epoch.is_finite() || epoch < 0.0 {
            return Err(bad("bad epoch"));
        }
        reads.push(Read {
            at_ms: (epoch * 1000.0).round() as u64,
            end: offset + len,
        });
    }
    reads.sort_by_key(|r| r.end);
    Ok(reads)
}

fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Parse a capture held in memory. See the module docs for where times come from.
fn from_bytes(bytes: &[u8], timing: Option<&[Read]>) -> Capture {
    let mut reader = Reader::new(BufReader::new(bytes));
    let mut cap = Capture {
        clock: if timing.is_some() {
            "timing sidecar"
        } else {
            "read time"
        },
        ..Capture::default()
    };
    let mut saw_timestamp = false;
    let mut next_read = 0;
    loop {
        let frame = match reader.read_frame() {
            Ok(Some(f)) => f,
            Ok(None) => break,
            // Reading from memory cannot fail; a decoding problem is not an io error.
            Err(e) => {
                log::warn!("capture read stopped: {e}");
                break;
            }
        };
        let msg = match frame {
            Frame::Banner(b) => {
                cap.banner = Some(b);
                continue;
            }
            Frame::Message(m) => m,
        };
        let last_byte = reader.position().saturating_sub(1);
        let at_ms = if let Some(ts) = timestamp_ms(&msg) {
            saw_timestamp = true;
            ts
        } else if let Some(reads) = timing.filter(|r| !r.is_empty()) {
            while next_read + 1 < reads.len() && reads[next_read].end <= last_byte {
                next_read += 1;
            }
            reads[next_read].at_ms
        } else {
            wall_clock_ms()
        };
        cap.messages.push(Timed { msg, at_ms });
    }
    if saw_timestamp {
        cap.clock = "Timestamp headers";
    }
    cap.dropped = reader.dropped();
    cap
}

/// Parse a capture from bytes with no sidecar (times: `Timestamp:` headers, else read time).
pub fn parse_bytes(bytes: &[u8]) -> Capture {
    from_bytes(bytes, None)
}

/// Parse a capture and the text of its timing sidecar (used for the capture bundled in the
/// binary for `callme demo`).
pub fn parse_with_timing(bytes: &[u8], timing_tsv: &str, name: &str) -> Result<Capture, Error> {
    let reads = parse_timing(timing_tsv, Path::new(name))?;
    Ok(from_bytes(bytes, Some(&reads)))
}

/// What a replay did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub messages: usize,
    pub intents: usize,
    pub calls: usize,
    /// Steps still undelivered when the replay gave up waiting for retries.
    pub pending: usize,
    pub permanent_failures: u64,
}

/// How long a replay against a real portal waits for retries before giving up.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(120);

/// When the deliverer sends during a replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pace {
    /// After each intent, so a timeline shows each request under the event behind it (the
    /// demo and `--dry-run`, whose responder answers at once).
    EachIntent,
    /// The whole capture into the outbox first, then delivered the way `callme run` delivers
    /// a backlog: batched, through its rate limiter (a replay into a real portal).
    AfterCapture,
}

/// Feed a capture through the tracker and deliver the intents. Never sleeps between events:
/// time comes from the capture. Only retries against a real portal wait (up to `drain_limit`).
///
/// With `timeline`, a readable line is written for each key AMI event and each intent.
pub fn run(
    cap: &Capture,
    tracker: &mut Tracker,
    deliverer: &mut Deliverer,
    mut timeline: Option<&mut dyn Write>,
    pace: Pace,
    drain_limit: Duration,
) -> Summary {
    let mut summary = Summary {
        messages: cap.messages.len(),
        ..Summary::default()
    };
    match api::users_all(deliverer.transport()) {
        Ok(users) => {
            let dir = Directory::from_users(users, Instant::now());
            tracker.set_employees(dir.inners().map(String::from));
            deliverer.set_directory(dir);
        }
        Err(e) => log::warn!("could not load Bitrix24 users, cards will be skipped: {e}"),
    }
    let t0 = cap.messages.first().map_or(0, |m| m.at_ms);
    let mut out = Vec::new();
    for timed in &cap.messages {
        let rel = timed.at_ms.saturating_sub(t0) as f64 / 1000.0;
        if let Some(w) = timeline.as_deref_mut() {
            if let Some(line) = describe(&timed.msg) {
                let _ = writeln!(w, "  +{rel:6.2}s  AMI   {line}");
            }
        }
        tracker.handle(&timed.msg, timed.at_ms, &mut out);
        for intent in out.drain(..) {
            summary.intents += 1;
            if matches!(intent.action, Action::Register { .. }) {
                summary.calls += 1;
            }
            if let Some(w) = timeline.as_deref_mut() {
                let _ = writeln!(w, "  +{rel:6.2}s  CALL  {intent}");
                let _ = w.flush();
            }
            deliverer.push(intent);
            if pace == Pace::EachIntent {
                deliverer.run_due(Instant::now());
            }
        }
    }
    let deadline = Instant::now() + drain_limit;
    while deliverer.pending() > 0 {
        let Some(next) = deliverer.run_due(Instant::now()) else {
            break;
        };
        if next > deadline {
            break;
        }
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    summary.pending = deliverer.pending();
    summary.permanent_failures = deliverer.stats().permanent_failures;
    summary
}

/// One readable line for the AMI events that move a call along; `None` for the rest.
fn describe(msg: &Message) -> Option<String> {
    Some(match Event::parse(msg) {
        Event::Newchannel(c) => format!(
            "new channel {} from {} to {}@{}",
            c.name, c.caller_num, c.exten, c.context
        ),
        Event::DialBegin { dest, .. } => format!("dial {}", dest.name),
        Event::DialEnd { dest, status, .. } => format!("dial {} ended: {status}", dest.name),
        Event::BridgeEnter { chan, .. } => format!("{} joined a bridge", chan.name),
        Event::Hangup { chan, cause } => format!("hangup {} (cause {cause})", chan.name),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_maps_last_byte_to_its_read() {
        let bytes = b"Asterisk Call Manager/9.0.0\r\nEvent: A\r\n\r\nEvent: B\r\n\r\n";
        // Banner+A arrive in the first read (0..42), B in the second.
        let reads = [
            Read {
                at_ms: 1000,
                end: 42,
            },
            Read {
                at_ms: 2000,
                end: bytes.len() as u64,
            },
        ];
        let cap = from_bytes(bytes, Some(&reads));
        assert_eq!(cap.banner.as_deref(), Some("Asterisk Call Manager/9.0.0"));
        let times: Vec<u64> = cap.messages.iter().map(|t| t.at_ms).collect();
        assert_eq!(times, vec![1000, 2000]);
    }

    #[test]
    fn timestamp_header_wins() {
        let bytes = b"Event: A\r\nTimestamp: 1700000000.250000\r\n\r\n";
        let cap = parse_bytes(bytes);
        assert_eq!(cap.messages[0].at_ms, 1_700_000_000_250);
        assert_eq!(cap.clock, "Timestamp headers");
    }

    #[test]
    fn timing_sidecar_errors_name_the_line() {
        let err = parse_timing(
            "epoch\tdir\toffset\tlength\n1\tR\tx\t5\n",
            Path::new("c.tsv"),
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("c.tsv:2: bad offset"), "{err}");
    }
}
