//! Peak memory and speed of `callme replay --dry-run` on a large capture (issue #20: a 200 MB
//! capture must replay in at most 30 MB of RSS).
//!
//! Builds a capture the way `script` records one: the AMI byte stream in one file and a
//! `.timing.tsv` sidecar beside it (one `R` line per read). Its calls are renumbered copies of
//! the real captures in `tests/fixtures/` (chan_sip and PJSIP), ten overlapping at a time, so
//! each copy is an independent call. Then it runs the real binary on it as a child process,
//! with its stdout (one JSON line per Bitrix24 request) counted and thrown away, and samples the
//! child's `VmHWM` (peak RSS) from `/proc` until it exits.
//!
//! `cargo bench --bench replay_rss` writes 200 MB (`CALLME_REPLAY_MB=N` for another size);
//! under `cargo test --all-targets` a 2 MB capture checks that the benchmark still runs.
//! `CALLME_REPLAY_KEEP=1` leaves the capture in the temporary directory afterwards.

// Only the template and its rendering: what the traffic generator also uses (where an
// endless call is held, the Linkedid, rendering to fields) stays unused here.
#[allow(dead_code)]
#[path = "../tests/support/template.rs"]
mod template;

use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use template::{Identity, Template, CAPTURE_CALLER};

/// Calls that overlap on the capture clock: each group of copies starts this many at once,
/// [`STAGGER_MS`] apart.
const OVERLAP: usize = 10;
const STAGGER_MS: u64 = 300;
/// Capture-clock gap between one group's last event and the next group's first.
const GROUP_GAP_MS: u64 = 1_000;

fn target_bytes() -> u64 {
    let mb = std::env::var("CALLME_REPLAY_MB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    let bench = std::env::args().any(|a| a == "--bench");
    mb.unwrap_or(if bench { 200 } else { 2 }) * 1_000_000
}

/// Every fixture capture's call, as a template (`tests/support/template.rs`): copy `n` of
/// it is a call of its own.
fn templates() -> Vec<Template> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut paths = Vec::new();
    for dir in [root.clone(), root.join("pjsip")] {
        for e in fs::read_dir(&dir).expect("fixtures").flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "ami") {
                paths.push(p);
            }
        }
    }
    paths.sort();
    paths.iter().map(|p| Template::load(p)).collect()
}

/// Write the capture and its sidecar; returns (bytes, messages, calls).
fn generate(path: &Path, target: u64) -> (u64, u64, usize) {
    let templates = templates();
    assert!(!templates.is_empty(), "no fixture captures");
    let mut timing_path = path.as_os_str().to_owned();
    timing_path.push(".timing.tsv");
    let mut cap = BufWriter::new(File::create(path).expect("create capture"));
    let mut tsv = BufWriter::new(File::create(&timing_path).expect("create timing"));
    let banner = b"Asterisk Call Manager/9.0.0\r\n";
    let mut base_ms: u64 = 1_795_000_000_000;
    cap.write_all(banner).unwrap();
    writeln!(tsv, "epoch\tdir\toffset\tlength").unwrap();
    writeln!(
        tsv,
        "{:.6}\tR\t0\t{}",
        base_ms as f64 / 1000.0,
        banner.len()
    )
    .unwrap();
    let mut offset = banner.len() as u64;
    let (mut messages, mut calls) = (0u64, 0usize);
    let mut buf = Vec::new();
    while offset < target {
        // A group of overlapping calls, merged in time order.
        let mut order = Vec::new();
        for j in 0..OVERLAP {
            let n = calls + j;
            let t = &templates[n % templates.len()];
            for (i, m) in t.events.iter().enumerate() {
                order.push((base_ms + j as u64 * STAGGER_MS + m.offset_ms, j, i));
            }
        }
        order.sort();
        for &(at, j, i) in &order {
            let n = calls + j;
            let id = Identity {
                index: n,
                caller: CAPTURE_CALLER.to_string(),
            };
            id.wire(&templates[n % templates.len()].events[i], &mut buf);
            cap.write_all(&buf).unwrap();
            writeln!(
                tsv,
                "{}.{:06}\tR\t{offset}\t{}",
                at / 1000,
                (at % 1000) * 1000,
                buf.len()
            )
            .unwrap();
            offset += buf.len() as u64;
            messages += 1;
        }
        base_ms = order.last().map_or(base_ms, |o| o.0) + GROUP_GAP_MS;
        calls += OVERLAP;
    }
    cap.flush().unwrap();
    tsv.flush().unwrap();
    (offset, messages, calls)
}

/// `VmHWM` (peak resident set) of a process, KiB; `None` once it has exited.
fn peak_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        if std::env::var_os("CALLME_REPLAY_KEEP").is_some() {
            println!("  kept {} and its .timing.tsv", self.0.display());
            return;
        }
        let _ = fs::remove_file(&self.0);
        let mut t = self.0.as_os_str().to_owned();
        t.push(".timing.tsv");
        let _ = fs::remove_file(PathBuf::from(t));
    }
}

fn main() {
    let target = target_bytes();
    let path = std::env::temp_dir().join(format!("callme-replay-rss-{}.ami", std::process::id()));
    let _cleanup = TempFile(path.clone());
    let started = Instant::now();
    let (bytes, messages, calls) = generate(&path, target);
    let tsv_len = fs::metadata(format!("{}.timing.tsv", path.display()))
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "replay_rss: capture of {:.1} MB ({messages} messages, {calls} calls, timing sidecar \
         {:.1} MB) written in {:.1} s",
        bytes as f64 / 1e6,
        tsv_len as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );

    let exe = env!("CARGO_BIN_EXE_callme");
    let started = Instant::now();
    let mut child = Command::new(exe)
        .args(["replay", "--dry-run"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start callme replay");
    let pid = child.id();
    // Count the JSON lines on a thread so the pipe never fills up.
    let mut stdout = child.stdout.take().expect("stdout");
    let counter = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        let (mut lines, mut total) = (0u64, 0u64);
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
            total += n as u64;
        }
        (lines, total)
    });
    let mut stderr = child.stderr.take().expect("stderr");
    let errs = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    // VmHWM only grows, so the last sample before the exit is the peak (give or take the
    // last 5 ms of the run).
    let mut peak = 0u64;
    loop {
        if let Some(hwm) = peak_kib(pid) {
            peak = peak.max(hwm);
        }
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("wait for callme replay: {e}"),
        }
    }
    let status = child.wait().expect("wait");
    let elapsed = started.elapsed().as_secs_f64();
    let (requests, out_bytes) = counter.join().expect("stdout counter");
    let log = errs.join().expect("stderr reader");
    assert!(status.success(), "callme replay failed: {status}\n{log}");
    assert!(requests > 0, "the replay sent no request");
    println!(
        "  peak RSS (VmHWM) {:.1} MiB; {:.2} s; {:.1} MB/s; {:.0} events/s; {requests} dry-run \
         requests ({:.1} MB of JSON lines)",
        peak as f64 / 1024.0,
        elapsed,
        bytes as f64 / 1e6 / elapsed,
        messages as f64 / elapsed,
        out_bytes as f64 / 1e6
    );
    if !log.trim().is_empty() {
        let lines: Vec<&str> = log.lines().collect();
        println!(
            "  stderr ({} lines), last: {}",
            lines.len(),
            lines[lines.len() - 1]
        );
    }
}
