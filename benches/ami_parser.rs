//! Throughput of the AMI reader on real traffic: the captures in `tests/fixtures/*.ami`
//! concatenated (banner kept only once) into a ~128 MiB in-memory stream.
//!
//! `cargo bench --bench ami_parser`. Two inputs: a `Cursor` (one big `fill_buf` slice, parser
//! cost only) and a `BufReader` with a 64 KiB buffer (adds the copy a socket reader does).
//! Target: at least 300 MB/s on one core.

use std::fs;
use std::hint::black_box;
use std::io::{BufRead, BufReader, Cursor};
use std::path::Path;
use std::time::{Duration, Instant};

use callme::ami::codec::{Frame, Reader};

const TARGET_BYTES: usize = 128 << 20;
const RUNS: usize = 5;

/// `cargo bench` passes `--bench`; `cargo test --all-targets` does not, and then one small
/// pass checks that the benchmark still runs without spending a minute in a debug build.
fn full_run() -> bool {
    std::env::args().any(|a| a == "--bench")
}

fn stream() -> Vec<u8> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut paths: Vec<_> = fs::read_dir(&dir)
        .expect("tests/fixtures")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "ami"))
        .collect();
    paths.sort();
    let mut captures = Vec::new();
    for path in &paths {
        let bytes = fs::read(path).expect("read capture");
        // Without its banner line (only the stream's first line may be a banner).
        let body_start = bytes.iter().position(|&b| b == b'\n').expect("banner line") + 1;
        captures.push((bytes, body_start));
    }
    let mut out = Vec::with_capacity(TARGET_BYTES + 256 * 1024);
    out.extend_from_slice(&captures[0].0[..captures[0].1]);
    while out.len() < TARGET_BYTES {
        for (bytes, body_start) in &captures {
            out.extend_from_slice(&bytes[*body_start..]);
        }
    }
    out
}

struct Run {
    elapsed: Duration,
    messages: u64,
    events: u64,
}

fn run<R: BufRead>(input: R) -> Run {
    let start = Instant::now();
    let mut reader = Reader::new(input);
    let (mut messages, mut events) = (0u64, 0u64);
    while let Some(frame) = reader.read_frame().expect("read_frame") {
        if let Frame::Message(m) = &frame {
            messages += 1;
            events += u64::from(m.event().is_some());
        }
        black_box(&frame);
    }
    let elapsed = start.elapsed();
    assert_eq!(reader.dropped(), 0);
    Run {
        elapsed,
        messages,
        events,
    }
}

fn report(label: &str, bytes: usize, runs: &[Run]) {
    let mbps = |r: &Run| bytes as f64 / 1e6 / r.elapsed.as_secs_f64();
    let eps = |r: &Run| r.events as f64 / r.elapsed.as_secs_f64();
    let best = runs
        .iter()
        .max_by(|a, b| mbps(a).total_cmp(&mbps(b)))
        .expect("runs");
    let mut all: Vec<f64> = runs.iter().map(mbps).collect();
    all.sort_by(f64::total_cmp);
    let median = all[all.len() / 2];
    println!(
        "{label:<22} best {:>7.1} MB/s  median {:>7.1} MB/s  {:>9.0} events/s  {:>9.0} messages/s  ({} messages, {} events, {:.3} s best)",
        mbps(best),
        median,
        eps(best),
        best.messages as f64 / best.elapsed.as_secs_f64(),
        best.messages,
        best.events,
        best.elapsed.as_secs_f64(),
    );
}

fn main() {
    let mut data = stream();
    let runs = if full_run() { RUNS } else { 1 };
    if !full_run() {
        data.truncate(data.len() / 64);
    }
    println!(
        "stream: {:.1} MB built from the tests/fixtures captures, {runs} runs each",
        data.len() as f64 / 1e6
    );
    let cursor: Vec<Run> = (0..runs).map(|_| run(Cursor::new(&data[..]))).collect();
    report("Cursor", data.len(), &cursor);
    let buffered: Vec<Run> = (0..runs)
        .map(|_| run(BufReader::with_capacity(64 * 1024, Cursor::new(&data[..]))))
        .collect();
    report("BufReader 64 KiB", data.len(), &buffered);
}
