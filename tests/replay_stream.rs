//! `callme replay` streams its capture (issue #20): the capture and its timing sidecar are read
//! a buffer at a time, and what the replay keeps does not grow with the capture. These tests
//! pin that the stream reads what the whole-file parse read, however the bytes arrive, and
//! what happens at the edges: a message cut by the end of the capture, a message over the
//! size bound, a broken sidecar, a backlog over its bound, finished calls past theirs.
mod support;

use std::fs;
use std::io::{self, BufRead, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use callme::bitrix::deliver::{DeliverConfig, Deliverer};
use callme::bitrix::outbox::Outbox;
use callme::bitrix::{Directory, Reply, Transport};
use callme::calls::{Tracker, TrackerConfig};
use callme::config::Config;
use callme::dryrun::{self, DryRun};
use callme::replay::{self, Capture, Pace, Source};
use serde_json::Value;

use support::daemon::TempDir;

/// The whole-file parse `callme replay` used before it streamed (src/replay.rs before issue
/// #20: the capture read with `fs::read`, the sidecar with `read_to_string` and sorted), kept
/// as the reference the stream must agree with.
mod whole_file {
    use std::fs;
    use std::io::{self, BufReader};
    use std::path::{Path, PathBuf};

    use callme::ami::codec::{Frame, Reader};
    use callme::ami::event::timestamp_ms;
    use callme::replay::{Capture, Timed};

    struct Read {
        at_ms: u64,
        end: u64,
    }

    pub fn load(path: &Path) -> Capture {
        let bytes = fs::read(path).expect("read capture");
        let mut timing_path = path.as_os_str().to_owned();
        timing_path.push(".timing.tsv");
        let timing = match fs::read_to_string(PathBuf::from(timing_path)) {
            Ok(text) => Some(parse_timing(&text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => panic!("read sidecar: {e}"),
        };
        from_bytes(&bytes, timing.as_deref())
    }

    fn parse_timing(text: &str) -> Vec<Read> {
        let mut reads = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let cols: Vec<&str> = line.split('\t').collect();
            if i == 0 && cols.first() == Some(&"epoch") {
                continue;
            }
            if line.trim().is_empty() {
                continue;
            }
            assert_eq!(cols.len(), 4, "line {}", i + 1);
            if cols[1] != "R" {
                continue;
            }
            let epoch: f64 = cols[0].parse().expect("epoch");
            let offset: u64 = cols[2].parse().expect("offset");
            let len: u64 = cols[3].parse().expect("length");
            reads.push(Read {
                at_ms: (epoch * 1000.0).round() as u64,
                end: offset + len,
            });
        }
        reads.sort_by_key(|r| r.end);
        reads
    }

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
                Err(_) => break,
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
                0 // read time: not compared (see `assert_same`)
            };
            cap.messages.push(Timed { msg, at_ms });
        }
        if saw_timestamp {
            cap.clock = "Timestamp headers";
        }
        cap.dropped = reader.dropped();
        cap
    }
}

/// A reader that hands out the bytes a few at a time (the sizes in `sizes`, in turn), the way
/// a slow socket or pipe would: every message and sidecar line is split across reads.
struct Trickle {
    data: Vec<u8>,
    pos: usize,
    sizes: &'static [usize],
    /// Reads consumed from so far, shared with the test.
    turns: Arc<AtomicU64>,
}

impl Trickle {
    fn new(data: Vec<u8>, sizes: &'static [usize], turns: &Arc<AtomicU64>) -> Trickle {
        Trickle {
            data,
            pos: 0,
            sizes,
            turns: turns.clone(),
        }
    }

    fn turn(&self) -> usize {
        self.turns.load(Ordering::SeqCst) as usize
    }
}

impl Read for Trickle {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.fill_buf()?.len().min(buf.len());
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for Trickle {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        let size = self.sizes[self.turn() % self.sizes.len()];
        let end = (self.pos + size).min(self.data.len());
        Ok(&self.data[self.pos..end])
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
        if n > 0 {
            self.turns.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn sidecar_of(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".timing.tsv");
    PathBuf::from(p)
}

/// Every capture in `tests/fixtures/` and its subdirectories.
fn fixtures() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")];
    while let Some(dir) = dirs.pop() {
        for e in fs::read_dir(&dir).expect("fixtures dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "ami") {
                out.push(p);
            }
        }
    }
    out.sort();
    assert!(out.len() >= 30, "fixtures not found: {out:?}");
    out
}

fn assert_same(name: &str, how: &str, want: &Capture, got: &Capture) {
    assert_eq!(got.banner, want.banner, "{name} ({how}): banner");
    assert_eq!(got.dropped, want.dropped, "{name} ({how}): dropped");
    assert_eq!(got.clock, want.clock, "{name} ({how}): clock");
    assert_eq!(
        got.messages.len(),
        want.messages.len(),
        "{name} ({how}): messages"
    );
    for (i, (g, w)) in got.messages.iter().zip(&want.messages).enumerate() {
        assert_eq!(g.msg, w.msg, "{name} ({how}): message {i}");
        // A message timed by the moment it is read (no header, no sidecar) is not compared.
        if w.at_ms != 0 {
            assert_eq!(g.at_ms, w.at_ms, "{name} ({how}): time of message {i}");
        }
    }
}

/// The stream from the file (64 KiB reads), and the same bytes one at a time and in odd
/// sizes (capture and sidecar alike), give exactly the messages and times of the whole-file
/// parse, on every fixture.
#[test]
fn streaming_reads_what_the_whole_file_parse_read_on_every_fixture() {
    let mut timed = 0;
    for path in fixtures() {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let want = whole_file::load(&path);
        assert!(!want.messages.is_empty(), "{name}: empty");
        if want.clock != "read time" {
            timed += 1;
        }
        let got = replay::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_same(&name, "file", &want, &got);

        let bytes = fs::read(&path).unwrap();
        let tsv = fs::read(sidecar_of(&path)).ok();
        for sizes in [&[1usize][..], &[3, 1, 7, 2, 13, 1, 64, 5]] {
            let tpath = sidecar_of(&path);
            let (turns, tsv_turns) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
            let timing = tsv
                .clone()
                .map(|t| (Trickle::new(t, sizes, &tsv_turns), tpath.as_path()));
            let capture = Trickle::new(bytes.clone(), sizes, &turns);
            let source = Source::new(capture, &path, timing);
            let got = source.read_all().unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_same(&name, &format!("reads of {sizes:?} bytes"), &want, &got);
            if sizes == [1] {
                assert_eq!(turns.load(Ordering::SeqCst), bytes.len() as u64, "{name}");
                assert!(
                    tsv.is_none() || tsv_turns.load(Ordering::SeqCst) > 100,
                    "{name}"
                );
            }
        }
    }
    // The comparison of times is not vacuous: the fixtures have a clock.
    assert!(timed >= 30, "{timed} fixtures with times");
}

/// Runs the real binary: `callme replay --dry-run CAPTURE`.
fn replay_dry_run(capture: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_callme"))
        .args(["replay", "--dry-run"])
        .arg(capture)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run callme replay")
}

fn fixture_bytes(name: &str) -> Vec<u8> {
    fs::read(support::fixture_path(name)).expect("fixture")
}

/// A capture cut in the middle of a line of its last message (`script` killed mid-read):
/// everything before it replays as from the whole capture, the torn message comes out as far
/// as it goes, with a warning, and nothing panics.
#[test]
fn a_capture_torn_inside_its_last_message_replays_up_to_the_tear() {
    let full = fixture_bytes("a_inbound_answered.ami");
    let want = replay::parse_bytes(&full);
    // Into the `Uniqueid:` value of the last Hangup.
    let hangup = find_last(&full, b"Event: Hangup\r\n").expect("a Hangup");
    let cut = hangup + find_last(&full[hangup..], b"Uniqueid: ").unwrap() + 14;
    let torn = &full[..cut];

    let got = replay::parse_bytes(torn);
    let k = got.messages.len() - 1;
    assert_eq!(got.messages[k].msg.event(), Some("Hangup"));
    for (g, w) in got.messages[..k].iter().zip(&want.messages) {
        assert_eq!(g.msg, w.msg);
    }
    let last: Vec<(&str, &str)> = got.messages[k].msg.iter().collect();
    let whole: Vec<(&str, &str)> = want.messages[k].msg.iter().collect();
    let (tail_key, tail_value) = *last.last().unwrap();
    assert_eq!(tail_key, "Uniqueid");
    assert_eq!(&last[..last.len() - 1], &whole[..last.len() - 1]);
    assert!(whole[last.len() - 1].1.starts_with(tail_value));
    assert!(tail_value.len() < whole[last.len() - 1].1.len());

    // The binary, with the fixture's sidecar (which covers bytes past the tear).
    let dir = TempDir::new("callme-replay-torn");
    let path = dir.path().join("torn.ami");
    fs::write(&path, torn).unwrap();
    fs::copy(
        sidecar_of(&support::fixture_path("a_inbound_answered.ami")),
        sidecar_of(&path),
    )
    .unwrap();
    let out = replay_dry_run(&path);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}\n{log}", out.status);
    assert!(
        log.contains("the capture ends inside its last message"),
        "{log}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("telephony.externalcall.register"),
        "{stdout}"
    );
}

fn find_last(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).rposition(|w| w == needle)
}

/// A message over the bound (`MAX_MESSAGE`, 64 KiB) in the middle of a capture is skipped
/// with a warning and counted; the replay goes on and sends exactly what it sends without it.
#[test]
fn a_message_over_the_bound_is_skipped_with_a_warning_and_the_replay_goes_on() {
    let tail = support::captures::timestamped_tail("a_inbound_answered.ami");
    let mut clean = b"Asterisk Call Manager/9.0.0\r\n".to_vec();
    clean.extend_from_slice(&tail);
    // After the first Newchannel: a UserEvent with a 100 KiB value.
    let at = find_last(&clean, b"Event: Newchannel\r\n").unwrap();
    let end = at + find_first(&clean[at..], b"\r\n\r\n").unwrap() + 4;
    let mut big = b"Event: UserEvent\r\nUserEvent: Blob\r\nData: ".to_vec();
    big.extend(std::iter::repeat_n(b'x', 100 * 1024));
    big.extend_from_slice(b"\r\n\r\n");
    let mut with_big = clean[..end].to_vec();
    with_big.extend_from_slice(&big);
    with_big.extend_from_slice(&clean[end..]);

    let want = replay::parse_bytes(&clean);
    let got = replay::parse_bytes(&with_big);
    assert_eq!(got.dropped, 1);
    assert_eq!(got.messages.len(), want.messages.len());
    for (g, w) in got.messages.iter().zip(&want.messages) {
        assert_eq!(g.msg, w.msg);
        if g.msg.get("Timestamp").is_some() {
            assert_eq!(g.at_ms, w.at_ms);
        }
    }

    let dir = TempDir::new("callme-replay-big");
    let (a, b) = (dir.path().join("clean.ami"), dir.path().join("big.ami"));
    fs::write(&a, &clean).unwrap();
    fs::write(&b, &with_big).unwrap();
    let (want, got) = (replay_dry_run(&a), replay_dry_run(&b));
    let log = String::from_utf8_lossy(&got.stderr);
    assert!(want.status.success() && got.status.success(), "{log}");
    assert!(log.contains("is longer than 65536 bytes; skipped"), "{log}");
    assert!(
        log.contains("1 message(s) over 65536 bytes skipped"),
        "{log}"
    );
    assert!(!want.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&got.stdout),
        String::from_utf8_lossy(&want.stdout)
    );
}

fn find_first(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A sidecar with a bad line near its end is refused before anything is replayed: the
/// stream reads it through once first, so the error does not come halfway through.
#[test]
fn a_broken_sidecar_is_refused_before_anything_is_replayed() {
    let dir = TempDir::new("callme-replay-badtsv");
    let path = dir.path().join("a.ami");
    fs::write(&path, fixture_bytes("a_inbound_answered.ami")).unwrap();
    let mut tsv =
        fs::read_to_string(sidecar_of(&support::fixture_path("a_inbound_answered.ami"))).unwrap();
    let lines = tsv.lines().count();
    tsv.push_str("1795668299.0\tR\tlots\t5\n");
    fs::write(sidecar_of(&path), tsv).unwrap();
    let out = replay_dry_run(&path);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{log}");
    assert!(
        log.contains(&format!("a.ami.timing.tsv:{}: bad offset", lines + 1)),
        "{log}"
    );
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// `n` copies of the answered inbound call, a minute apart on the capture clock (`Timestamp:`
/// headers), each with its own Uniqueids, Linkedid and channel names, behind a banner.
fn many_calls(n: usize) -> Vec<u8> {
    support::captures::timestamped_calls(n, 60_000)
}

/// Bytes of the capture taken by the replay so far, shared with the transport.
struct Counted {
    inner: io::Cursor<Vec<u8>>,
    taken: Arc<AtomicU64>,
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.taken.fetch_add(n as u64, Ordering::SeqCst);
        Ok(n)
    }
}

impl BufRead for Counted {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, n: usize) {
        self.taken.fetch_add(n as u64, Ordering::SeqCst);
        self.inner.consume(n)
    }
}

/// The dry-run portal, noting for each request how much of the capture had been read.
struct Recorder {
    portal: DryRun,
    taken: Arc<AtomicU64>,
    seen: Arc<Mutex<Vec<(String, u64)>>>,
}

impl Transport for Recorder {
    fn call(&self, method: &str, params: &Value) -> Result<Reply, callme::bitrix::Error> {
        let at = self.taken.load(Ordering::SeqCst);
        self.seen.lock().unwrap().push((method.to_string(), at));
        self.portal.call(method, params)
    }
}

/// Replays `calls` calls with `Pace::AfterCapture { max_backlog }`: the summary and, per
/// request, its method and the capture bytes read when it was sent.
fn replay_after_capture(
    calls: usize,
    max_backlog: usize,
) -> (replay::Summary, Vec<(String, u64)>, u64) {
    let bytes = many_calls(calls);
    let total = bytes.len() as u64;
    let taken = Arc::new(AtomicU64::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorder = Recorder {
        portal: DryRun::new(Box::new(io::sink()), dryrun::Format::JsonLines),
        taken: taken.clone(),
        seen: seen.clone(),
    };
    let cfg = Config::demo();
    let mut deliverer = Deliverer::new(
        DeliverConfig::from_config(&cfg),
        Box::new(recorder),
        Directory::from_users(Vec::new(), Instant::now()),
    );
    let mut tracker = Tracker::new(TrackerConfig::from_config(&cfg));
    let capture = Counted {
        inner: io::Cursor::new(bytes),
        taken,
    };
    let mut source = Source::new(capture, Path::new("many.ami"), None::<(&[u8], &Path)>);
    let summary = replay::run(
        &mut source,
        &mut tracker,
        &mut deliverer,
        None,
        Pace::AfterCapture { max_backlog },
        Duration::from_secs(10),
    );
    let seen = seen.lock().unwrap().clone();
    (summary, seen, total)
}

/// Into a real portal the whole capture is queued before anything is sent, unless the
/// backlog reaches its bound: then reading pauses while it is delivered, so the outbox stays
/// bounded whatever the capture's size, and every call still arrives.
#[test]
fn a_backlog_at_its_bound_is_delivered_before_reading_on() {
    let calls = 30;
    // No bound: every step goes after the last byte is read (user.get comes first).
    let (s, seen, total) = replay_after_capture(calls, usize::MAX);
    assert_eq!((s.calls, s.pending, s.error.as_deref()), (calls, 0, None));
    let steps: Vec<_> = seen.iter().filter(|(m, _)| m != "user.get").collect();
    assert!(steps.iter().all(|(_, at)| *at == total), "{steps:?}");

    // A bound of 20 steps (about seven calls' worth): delivery starts long before the end.
    let (s, seen, total) = replay_after_capture(calls, 20);
    assert_eq!((s.calls, s.pending, s.error.as_deref()), (calls, 0, None));
    let count = |m: &str| seen.iter().filter(|(x, _)| x == m).count();
    assert_eq!(count("telephony.externalcall.register"), calls);
    assert_eq!(count("telephony.externalcall.finish"), calls);
    let first = seen
        .iter()
        .find(|(m, _)| m == "telephony.externalcall.register")
        .unwrap();
    assert!(
        first.1 < total / 2,
        "first register at byte {} of {total}",
        first.1
    );
    let before_end = seen.iter().filter(|(_, at)| *at < total).count();
    assert!(
        before_end > seen.len() / 2,
        "{before_end} of {}",
        seen.len()
    );
}

/// The outbox forgets the oldest calls that are over past the number it is told to keep
/// (what a replay does, instead of keeping them ten minutes of wall clock); calls with steps
/// still queued are never forgotten.
#[test]
fn the_outbox_keeps_only_the_last_finished_calls_it_is_told_to() {
    let mut tracker = Tracker::new(TrackerConfig::default());
    tracker.set_employees(["219", "220", "221"].map(String::from));
    let mut ob = Outbox::in_memory();
    let mut keys = Vec::new();
    for n in 0..10 {
        for intent in support::captures::alternating_call(&mut tracker, n) {
            if !keys.contains(&intent.call) {
                keys.push(intent.call.clone());
            }
            ob.enqueue(intent);
        }
    }
    assert_eq!(keys.len(), 10);
    // Deliver the first eight calls' steps (the last two stay queued).
    loop {
        let due: Vec<_> = ob
            .due(Instant::now())
            .into_iter()
            .filter(|(k, _)| keys[..8].contains(k))
            .collect();
        if due.is_empty() {
            break;
        }
        for (k, step) in due {
            ob.complete(&k, step.seq);
        }
    }
    assert!(keys.iter().all(|k| ob.call(k).is_some()));
    assert_eq!(ob.forget_finished_beyond(3), 5);
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(ob.call(k).is_some(), i >= 5, "call {i}");
    }
    assert!(ob.pending() > 0);
    assert_eq!(ob.forget_finished_beyond(3), 0);
}
