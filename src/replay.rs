//! Capture replay: a recorded AMI byte stream through the real codec and tracker.
//!
//! Replay runs on the capture's own clock and never sleeps, so durations come out exact. The
//! time of each message comes from, in order of preference:
//! 1. its `Timestamp:` header (manager.conf `timestampevents = yes`);
//! 2. the `CAPTURE.timing.tsv` sidecar: one line per socket read (`epoch`, `R`/`S`, byte offset,
//!    length); a message takes the time of the read that delivered its last byte;
//! 3. the moment the message is read.
//!
//! A capture is streamed, never loaded whole: a [`Source`] reads the capture and its sidecar
//! side by side and hands out one message at a time, so a replay's memory does not depend on
//! the capture's size (issue #20: a 200 MB capture took 533 MB when it was read whole). What
//! reading holds at any moment, whatever the capture:
//! - the capture's read buffer, [`READ_BUFFER`];
//! - the message being decoded, at most [`MAX_MESSAGE`] (the codec's own cap: a longer
//!   message is skipped, counted in [`Source::dropped`] and warned about, and the replay goes
//!   on with the next one);
//! - the sidecar's read buffer and one of its lines, at most [`MAX_TIMING_LINE`] (a longer
//!   line is an error: a sidecar line is about 40 bytes, so it is not a sidecar);
//! - two sidecar reads (the current one and, while looking ahead, the next).
//!
//! Streaming needs the sidecar's `R` lines in the order of the bytes they delivered, which is
//! how a capture tool writes them; a sidecar out of order is refused with its line number.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read as _, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::ami::codec::{Frame, Message, Reader};
use crate::ami::event::{timestamp_ms, Event};
use crate::bitrix::deliver::Deliverer;
use crate::bitrix::{api, Directory};
use crate::calls::{Action, Tracker};

pub use crate::ami::codec::MAX_MESSAGE;

/// Bytes read from a capture file at a time.
pub const READ_BUFFER: usize = 64 * 1024;

/// Bytes read from a timing sidecar at a time.
const TIMING_BUFFER: usize = 8 * 1024;

/// The longest timing sidecar line accepted, line end included.
pub const MAX_TIMING_LINE: usize = 1024;

/// A message and when it happened (milliseconds since the Unix epoch).
#[derive(Clone, Debug)]
pub struct Timed {
    pub msg: Message,
    pub at_ms: u64,
}

/// A capture read whole into memory: for tests, benchmarks and small captures. `callme
/// replay` streams through a [`Source`] instead.
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

/// The sidecar, read one line at a time.
struct Timing<T> {
    input: T,
    path: PathBuf,
    /// Lines read so far (the number of the last one, for errors).
    line_no: usize,
    line: Vec<u8>,
    /// End of the last read returned: the next one may not end before it.
    last_end: u64,
}

impl<T: BufRead> Timing<T> {
    fn new(input: T, path: PathBuf) -> Self {
        Timing {
            input,
            path,
            line_no: 0,
            line: Vec::new(),
            last_end: 0,
        }
    }

    fn error(&self, msg: &str) -> Error {
        Error::Timing {
            path: self.path.clone(),
            line: self.line_no,
            msg: msg.to_string(),
        }
    }

    /// The next read of what the capture session received (`R`); `None` at the end.
    fn next_read(&mut self) -> Result<Option<Read>, Error> {
        loop {
            self.line.clear();
            let limit = MAX_TIMING_LINE as u64 + 1;
            let n = match (&mut self.input)
                .take(limit)
                .read_until(b'\n', &mut self.line)
            {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(Error::Io {
                        path: self.path.clone(),
                        source,
                    })
                }
            };
            if n == 0 {
                return Ok(None);
            }
            self.line_no += 1;
            if self.line.len() > MAX_TIMING_LINE {
                return Err(self.error(&format!(
                    "line longer than {MAX_TIMING_LINE} bytes: not a timing sidecar"
                )));
            }
            let line = self.line.strip_suffix(b"\n").unwrap_or(&self.line);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Ok(line) = std::str::from_utf8(line) else {
                return Err(self.error("not UTF-8: not a timing sidecar"));
            };
            let read = match parse_timing_line(line, self.line_no == 1) {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(msg) => {
                    return Err(self.error(&format!(
                        "{msg} (expected: epoch<TAB>R|S<TAB>offset<TAB>length)"
                    )))
                }
            };
            if read.end < self.last_end {
                return Err(self.error(&format!(
                    "read ends at byte {} but an earlier one ends at {}: lines out of order",
                    read.end, self.last_end
                )));
            }
            self.last_end = read.end;
            return Ok(Some(read));
        }
    }
}

/// One sidecar line: `Ok(None)` for the header, blank lines and what the capture session sent.
fn parse_timing_line(line: &str, first: bool) -> Result<Option<Read>, &'static str> {
    let mut cols = line.split('\t');
    let epoch = cols.next().unwrap_or("");
    if first && epoch == "epoch" {
        return Ok(None);
    }
    if line.trim().is_empty() {
        return Ok(None);
    }
    let (Some(dir), Some(offset), Some(len), None) =
        (cols.next(), cols.next(), cols.next(), cols.next())
    else {
        return Err("wrong number of columns");
    };
    if dir != "R" {
        return Ok(None); // what the capture session sent, not received
    }
    let epoch: f64 = epoch.parse().map_err(|_| "bad epoch")?;
    let offset: u64 = offset.parse().map_err(|_| "bad offset")?;
    let len: u64 = len.parse().map_err(|_| "bad length")?;
    if !epoch.is_finite() || epoch < 0.0 {
        return Err("bad epoch");
    }
    Ok(Some(Read {
        at_ms: (epoch * 1000.0).round() as u64,
        end: offset.saturating_add(len),
    }))
}

/// The capture stream, noting whether its end was reached: a message handed out after that
/// was cut short by the end of the capture (see [`Source::next_message`]).
struct Stream<R> {
    inner: R,
    eof: bool,
}

impl<R: io::Read> io::Read for Stream<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

impl<R: BufRead> BufRead for Stream<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        let chunk = self.inner.fill_buf()?;
        if chunk.is_empty() {
            self.eof = true;
        }
        Ok(chunk)
    }

    fn consume(&mut self, n: usize) {
        self.inner.consume(n)
    }
}

/// A capture read message by message, with the time of each (see the module docs for where
/// times come from and what reading holds in memory).
pub struct Source<R, T> {
    path: PathBuf,
    reader: Reader<Stream<R>>,
    timing: Option<Timing<T>>,
    /// The sidecar read the last message fell in; `None` before the first lookup.
    read: Option<Read>,
    /// The sidecar has no `R` line: times come from the wall clock.
    no_reads: bool,
    banner: Option<String>,
    saw_timestamp: bool,
    dropped: u64,
    done: bool,
}

/// A capture file and its sidecar.
pub type FileSource = Source<BufReader<File>, BufReader<File>>;

impl<R: BufRead, T: BufRead> Source<R, T> {
    /// Read `capture` (named `path` in errors) with the times of `timing`, the text of a
    /// sidecar (named `timing_path`).
    pub fn new(capture: R, path: &Path, timing: Option<(T, &Path)>) -> Self {
        Source {
            path: path.to_path_buf(),
            reader: Reader::new(Stream {
                inner: capture,
                eof: false,
            }),
            timing: timing.map(|(t, p)| Timing::new(t, p.to_path_buf())),
            read: None,
            no_reads: false,
            banner: None,
            saw_timestamp: false,
            dropped: 0,
            done: false,
        }
    }

    /// The next message, or `None` at the end of the capture. A message over
    /// [`MAX_MESSAGE`] is skipped (warned about and counted in [`Source::dropped`]); a last
    /// message cut short by the end of the capture is returned as far as it goes, with a
    /// warning. After an error, `None`.
    pub fn next_message(&mut self) -> Result<Option<Timed>, Error> {
        if self.done {
            return Ok(None);
        }
        let r = self.read_message();
        if !matches!(r, Ok(Some(_))) {
            self.done = true;
        }
        r
    }

    fn read_message(&mut self) -> Result<Option<Timed>, Error> {
        let msg = loop {
            let frame = match self.reader.read_frame() {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(Error::Io {
                        path: self.path.clone(),
                        source,
                    })
                }
            };
            let dropped = self.reader.dropped();
            if dropped > self.dropped {
                log::warn!(
                    "{}: a message before byte {} is longer than {MAX_MESSAGE} bytes; skipped",
                    self.path.display(),
                    self.reader.position()
                );
                self.dropped = dropped;
            }
            match frame {
                None => return Ok(None),
                Some(Frame::Banner(b)) => self.banner = Some(b),
                Some(Frame::Message(m)) => break m,
            }
        };
        if self.reader.get_ref().eof {
            log::warn!(
                "{}: the capture ends inside its last message (no blank line after it); \
                 replayed as far as it goes",
                self.path.display()
            );
        }
        let last_byte = self.reader.position().saturating_sub(1);
        let at_ms = if let Some(ts) = timestamp_ms(&msg) {
            self.saw_timestamp = true;
            ts
        } else if let Some(at) = self.read_time(last_byte)? {
            at
        } else {
            wall_clock_ms()
        };
        Ok(Some(Timed { msg, at_ms }))
    }

    /// The time of the sidecar read that delivered `last_byte` (the last read if none did);
    /// `None` without a sidecar or with one that has no `R` line.
    fn read_time(&mut self, last_byte: u64) -> Result<Option<u64>, Error> {
        let Some(timing) = self.timing.as_mut() else {
            return Ok(None);
        };
        if self.no_reads {
            return Ok(None);
        }
        let mut read = match self.read {
            Some(r) => r,
            None => match timing.next_read()? {
                Some(r) => r,
                None => {
                    self.no_reads = true;
                    return Ok(None);
                }
            },
        };
        while read.end <= last_byte {
            match timing.next_read()? {
                Some(r) => read = r,
                None => break,
            }
        }
        self.read = Some(read);
        Ok(Some(read.at_ms))
    }

    /// The banner, once it has been read.
    pub fn banner(&self) -> Option<&str> {
        self.banner.as_deref()
    }

    /// Messages skipped so far for being over [`MAX_MESSAGE`].
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Capture bytes read so far.
    pub fn position(&self) -> u64 {
        self.reader.position()
    }

    /// Where the times of the messages so far came from, for the user.
    pub fn clock(&self) -> &'static str {
        if self.saw_timestamp {
            "Timestamp headers"
        } else if self.timing.is_some() {
            "timing sidecar"
        } else {
            "read time"
        }
    }

    /// Every message, into memory (for tests and small captures).
    pub fn read_all(mut self) -> Result<Capture, Error> {
        let mut messages = Vec::new();
        while let Some(t) = self.next_message()? {
            messages.push(t);
        }
        Ok(Capture {
            clock: self.clock(),
            dropped: self.dropped,
            banner: self.banner,
            messages,
        })
    }
}

/// `path` beside its sidecar: `path.timing.tsv`.
fn timing_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".timing.tsv");
    PathBuf::from(p)
}

fn open_file(path: &Path, capacity: usize) -> Result<Option<BufReader<File>>, Error> {
    match File::open(path) {
        Ok(f) => Ok(Some(BufReader::with_capacity(capacity, f))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Stream `path` with `path.timing.tsv` beside it when there is one. The sidecar is read
/// through once first (in constant memory), so a broken one is refused before anything is
/// replayed rather than halfway.
pub fn open(path: &Path) -> Result<FileSource, Error> {
    let capture = open_file(path, READ_BUFFER)?.ok_or_else(|| Error::Io {
        path: path.to_path_buf(),
        source: io::Error::from(io::ErrorKind::NotFound),
    })?;
    let tpath = timing_path(path);
    let timing = match open_file(&tpath, TIMING_BUFFER)? {
        Some(check) => {
            let mut check = Timing::new(check, tpath.clone());
            while check.next_read()?.is_some() {}
            open_file(&tpath, TIMING_BUFFER)?.map(|t| (t, tpath.as_path()))
        }
        None => None,
    };
    Ok(Source::new(capture, path, timing))
}

/// Load `path` and, when it exists, `path.timing.tsv` beside it, whole.
pub fn load(path: &Path) -> Result<Capture, Error> {
    open(path)?.read_all()
}

fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Parse a capture from bytes with no sidecar (times: `Timestamp:` headers, else read time).
pub fn parse_bytes(bytes: &[u8]) -> Capture {
    let source = Source::new(bytes, Path::new("capture"), None::<(&[u8], &Path)>);
    // Reading from memory cannot fail, and without a sidecar nothing else can.
    source.read_all().unwrap_or_default()
}

/// Stream a capture held in memory with the text of its timing sidecar (the capture bundled
/// in the binary for `callme demo`). `name` names both in errors.
pub fn from_memory<'a>(
    bytes: &'a [u8],
    timing_tsv: &'a str,
    name: &str,
) -> Source<&'a [u8], &'a [u8]> {
    let path = Path::new(name);
    Source::new(bytes, path, Some((timing_tsv.as_bytes(), path)))
}

/// Parse a capture and the text of its timing sidecar, whole.
pub fn parse_with_timing(bytes: &[u8], timing_tsv: &str, name: &str) -> Result<Capture, Error> {
    from_memory(bytes, timing_tsv, name).read_all()
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
    /// Messages skipped for being over [`MAX_MESSAGE`].
    pub dropped: u64,
    /// Why reading stopped before the end of the capture, if it did (what was read before
    /// is still delivered).
    pub error: Option<String>,
}

/// How long a replay against a real portal waits for retries before giving up.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(120);

/// The most steps `callme replay` into a real portal ([`Pace::AfterCapture`]) lets wait in
/// the outbox while it reads. At that many, reading pauses and the backlog is delivered, so a
/// capture of any size is replayed with a bounded outbox. A capture of a few hundred calls
/// (about four steps a call) gets nowhere near it: all of it is queued before anything is sent.
pub const MAX_BACKLOG: usize = 10_000;

/// Calls that are over the deliverer's outbox remembers during a replay, to drop a late
/// duplicate step of theirs. The daemon keeps them ten minutes of wall clock; a replay goes
/// through hours of calls in seconds, so it keeps this many instead (a few hundred bytes
/// each), which bounds the outbox whatever the capture's length.
pub const KEEP_FINISHED_CALLS: usize = 1_000;

/// Messages between two trims of the finished calls down to [`KEEP_FINISHED_CALLS`]: a trim
/// looks at every call in the outbox, so it is not done for each message.
const TRIM_EVERY: usize = 1_000;

/// When the deliverer sends during a replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pace {
    /// After each intent, so a timeline shows each request under the event behind it (the
    /// demo and `--dry-run`, whose responder answers at once).
    EachIntent,
    /// The capture into the outbox first, then delivered the way `callme run` delivers a
    /// backlog: batched, through its rate limiter (a replay into a real portal). Whenever
    /// `max_backlog` steps wait, reading pauses until they are delivered (down to half).
    AfterCapture { max_backlog: usize },
}

/// Feed a capture through the tracker and deliver the intents, one message at a time. Never
/// sleeps between events: time comes from the capture. Only delivery to a real portal waits:
/// for its rate limiter, and for retries (up to `drain_limit` each time the backlog is
/// delivered).
///
/// With `timeline`, a readable line is written for each key AMI event and each intent.
///
/// Memory: nothing here is kept per message, only counters. The tracker and the dry-run
/// portal hold the calls in progress; the deliverer's outbox the steps still to send (at
/// most `max_backlog` and the intents of one message, with [`Pace::AfterCapture`]) and the last [`KEEP_FINISHED_CALLS`] calls that are over.
pub fn run<R: BufRead, T: BufRead>(
    source: &mut Source<R, T>,
    tracker: &mut Tracker,
    deliverer: &mut Deliverer,
    mut timeline: Option<&mut dyn Write>,
    pace: Pace,
    drain_limit: Duration,
) -> Summary {
    let mut summary = Summary::default();
    match api::users_all(deliverer.transport()) {
        Ok(users) => {
            let dir = Directory::from_users(users, Instant::now());
            tracker.set_employees(dir.inners().map(String::from));
            deliverer.set_directory(dir);
        }
        Err(e) => log::warn!("could not load Bitrix24 users, cards will be skipped: {e}"),
    }
    let mut t0 = None;
    let mut out = Vec::new();
    // An upper bound of the steps waiting: what was left after the last delivery plus what
    // was queued since (duplicates are dropped, so the real count may be lower).
    let mut backlog = 0;
    loop {
        let timed = match source.next_message() {
            Ok(Some(t)) => t,
            Ok(None) => break,
            Err(e) => {
                summary.error = Some(e.to_string());
                break;
            }
        };
        summary.messages += 1;
        if summary.messages % TRIM_EVERY == 0 {
            trim_finished(deliverer);
        }
        let t0 = *t0.get_or_insert(timed.at_ms);
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
            backlog += 1;
            if pace == Pace::EachIntent {
                deliverer.run_due(Instant::now());
            }
        }
        if let Pace::AfterCapture { max_backlog } = pace {
            if backlog < max_backlog {
                continue;
            }
            backlog = deliverer.pending();
            if backlog >= max_backlog {
                log::info!("replay: {backlog} steps queued, delivering them before reading on");
                backlog = deliver(deliverer, max_backlog / 2, drain_limit);
                if backlog > max_backlog / 2 {
                    let e = format!(
                        "Bitrix24 did not take the backlog in {} s ({backlog} steps still \
                         waiting); stopped reading at byte {} of the capture",
                        drain_limit.as_secs(),
                        source.position()
                    );
                    summary.error = Some(e);
                    break;
                }
            }
        }
    }
    summary.dropped = source.dropped();
    summary.pending = deliver(deliverer, 0, drain_limit);
    summary.permanent_failures = deliverer.stats().permanent_failures;
    summary
}

fn trim_finished(deliverer: &Deliverer) {
    let forgotten = deliverer
        .outbox()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .forget_finished_beyond(KEEP_FINISHED_CALLS);
    if forgotten > 0 {
        log::debug!("replay: forgot {forgotten} finished call(s)");
    }
}

/// Deliver until at most `target` steps wait or the retries they wait for are due later than
/// `limit` from now. Returns the steps still waiting.
fn deliver(deliverer: &mut Deliverer, target: usize, limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    while deliverer.pending() > target {
        let Some(next) = deliverer.run_due(Instant::now()) else {
            break;
        };
        if next > deadline {
            break;
        }
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    deliverer.pending()
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

    fn sidecar(reads: &[(f64, u64, u64)]) -> String {
        let mut t = String::from("epoch\tdir\toffset\tlength\n");
        for (epoch, offset, len) in reads {
            t.push_str(&format!("{epoch:.6}\tR\t{offset}\t{len}\n"));
            // What the capture session sent has offsets of its own, and does not count.
            t.push_str(&format!("{epoch:.6}\tS\t0\t95\n"));
        }
        t
    }

    #[test]
    fn timing_maps_last_byte_to_its_read() {
        let bytes = b"Asterisk Call Manager/9.0.0\r\nEvent: A\r\n\r\nEvent: B\r\n\r\n";
        // Banner+A arrive in the first read (0..42), B in the second.
        let tsv = sidecar(&[(1.0, 0, 42), (2.0, 42, bytes.len() as u64 - 42)]);
        let cap = parse_with_timing(bytes, &tsv, "t").unwrap();
        assert_eq!(cap.banner.as_deref(), Some("Asterisk Call Manager/9.0.0"));
        let times: Vec<u64> = cap.messages.iter().map(|t| t.at_ms).collect();
        assert_eq!(times, vec![1000, 2000]);
        assert_eq!(cap.clock, "timing sidecar");
    }

    /// The read that delivered the last byte counts, even when it carried that byte alone.
    #[test]
    fn a_message_takes_the_time_of_its_very_last_byte() {
        let bytes = b"Event: A\r\n\r\n";
        let n = bytes.len() as u64;
        let cap = parse_with_timing(bytes, &sidecar(&[(1.0, 0, n - 1), (2.0, n - 1, 1)]), "t");
        assert_eq!(cap.unwrap().messages[0].at_ms, 2000);
    }

    #[test]
    fn a_message_past_the_last_read_takes_its_time() {
        let bytes = b"Event: A\r\n\r\nEvent: B\r\n\r\n";
        let cap = parse_with_timing(bytes, &sidecar(&[(3.5, 0, 5)]), "t").unwrap();
        let times: Vec<u64> = cap.messages.iter().map(|t| t.at_ms).collect();
        assert_eq!(times, vec![3500, 3500]);
    }

    #[test]
    fn timestamp_header_wins() {
        let bytes = b"Event: A\r\nTimestamp: 1700000000.250000\r\n\r\n";
        let cap = parse_bytes(bytes);
        assert_eq!(cap.messages[0].at_ms, 1_700_000_000_250);
        assert_eq!(cap.clock, "Timestamp headers");
    }

    fn timing_error(tsv: &str) -> String {
        let bytes = b"Event: A\r\n\r\nEvent: B\r\n\r\n";
        parse_with_timing(bytes, tsv, "c.tsv")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn timing_sidecar_errors_name_the_line() {
        let err = timing_error("epoch\tdir\toffset\tlength\n1\tR\tx\t5\n");
        assert!(err.starts_with("c.tsv:2: bad offset"), "{err}");
        let err = timing_error("1\tR\t0\n");
        assert!(err.starts_with("c.tsv:1: wrong number of columns"), "{err}");
    }

    /// Streaming cannot sort the reads: a sidecar whose reads go back is refused, not
    /// misread.
    #[test]
    fn timing_reads_out_of_order_are_refused() {
        let err = timing_error("1\tR\t0\t12\n2\tR\t0\t5\n");
        assert!(
            err.starts_with("c.tsv:2: read ends at byte 5 but an earlier one ends at 12"),
            "{err}"
        );
    }

    #[test]
    fn a_timing_line_over_the_bound_is_refused() {
        let long = format!("1\tR\t0\t{}\n", "1".repeat(MAX_TIMING_LINE));
        let err = timing_error(&long);
        assert!(
            err.starts_with("c.tsv:1: line longer than 1024 bytes"),
            "{err}"
        );
        // A line of exactly the bound, line end included, is a line like any other.
        let line = format!("1\tR\t0\t{}", "0".repeat(MAX_TIMING_LINE - 7));
        assert_eq!(line.len() + 1, MAX_TIMING_LINE);
        let bytes = b"Event: A\r\n\r\n";
        let cap = parse_with_timing(bytes, &format!("{line}\n"), "c.tsv").unwrap();
        assert_eq!(cap.messages[0].at_ms, 1000);
    }

    #[test]
    fn a_sidecar_without_reads_falls_back_to_read_time() {
        let before = wall_clock_ms();
        let cap =
            parse_with_timing(b"Event: A\r\n\r\n", "epoch\tdir\toffset\tlength\n", "t").unwrap();
        assert!(cap.messages[0].at_ms >= before);
    }
}
