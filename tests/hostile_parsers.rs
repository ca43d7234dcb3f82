//! Hostile-input suite for the parsers (issue #13 point 5): generated inputs from a seeded
//! generator (`support::gen`), so every run tries the same cases and a failure names its seed.
//!
//! - the AMI codec: random and mutated real captures, read in random chunk sizes;
//! - the form decoder: random bodies, PHP bracket keys, percent-encoding, deep nesting, huge
//!   counts;
//! - the config (INI parser and validation): mutated real config files and random lines;
//! - the dial-policy patterns: random patterns, numbers built to match and not to match.
//!
//! Invariants: no panic; output bounded by a stated limit; what round-trips must round-trip;
//! error messages stay one line per problem and never repeat a secret.
mod support;

use std::io::{BufReader, Cursor, Read};
use std::path::Path;

use callme::ami::codec::{encode_action, MAX_MESSAGE};
use callme::ami::{Frame, Message, Reader};
use callme::dial_policy::{DialPolicy, Pattern};
use callme::http::form;
use support::gen::{Gen, SEEDS};

/// Every capture, raw: chan_sip, PJSIP and the legacy ones.
fn captures() -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut v: Vec<_> = ["", "pjsip", "legacy"]
        .iter()
        .flat_map(|sub| std::fs::read_dir(root.join(sub)).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "ami"))
        .collect();
    v.sort();
    assert!(v.len() >= 20, "captures missing in {}", root.display());
    v.into_iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// A reader that hands out at most `max` bytes per read, like a socket.
struct Trickle<R> {
    inner: R,
    sizes: Gen,
    max: usize,
}

impl<R: Read> Read for Trickle<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.sizes.range(1, self.max).min(buf.len());
        self.inner.read(&mut buf[..n])
    }
}

/// Read every frame of `bytes`, the reader fed `max` bytes at a time at most.
fn frames(bytes: &[u8], seed: u64, max: usize) -> Vec<Frame> {
    let trickle = Trickle {
        inner: Cursor::new(bytes.to_vec()),
        sizes: Gen::new(seed),
        max,
    };
    let mut r = Reader::new(BufReader::with_capacity(max.max(1), trickle));
    let mut out = Vec::new();
    while let Some(f) = r.read_frame().expect("in-memory reads do not fail") {
        out.push(f);
        assert!(out.len() <= bytes.len(), "more frames than bytes");
    }
    assert_eq!(r.position(), bytes.len() as u64, "everything consumed");
    assert!(r.get_ref().buffer().is_empty());
    out
}

/// The bound stated in `codec.rs`: a message holds at most [`MAX_MESSAGE`] bytes of the wire,
/// which lossy decoding may at most triple (one invalid byte becomes U+FFFD, 3 bytes) and a
/// `Response: Follows` body adds the 6-byte key `Output` per line.
fn assert_bounded(f: &Frame, seed: u64) {
    if let Frame::Message(m) = f {
        let text: usize = m.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert!(m.len() <= MAX_MESSAGE, "seed {seed}: {} fields", m.len());
        assert!(
            text <= 3 * MAX_MESSAGE + 6 * m.len(),
            "seed {seed}: {text} bytes of text"
        );
    }
}

#[test]
fn ami_codec_survives_random_and_mutated_streams_whatever_the_chunking() {
    let caps = captures();
    for seed in SEEDS {
        let mut g = Gen::new(seed);
        let input = match seed % 4 {
            0 => {
                let n = g.range(0, 4096);
                g.nasty(n)
            }
            1 => {
                let n = g.range(0, 4096);
                g.bytes(n)
            }
            _ => {
                let cap = &caps[g.below(caps.len())];
                g.mutate(cap)
            }
        };
        let whole = frames(&input, seed, input.len().max(1));
        for f in &whole {
            assert_bounded(f, seed);
        }
        // A read may end anywhere: the frames must not depend on where.
        for max in [1, 2, 3, 7, 64] {
            assert_eq!(
                frames(&input, seed ^ max as u64, max),
                whole,
                "seed {seed}, max {max}"
            );
        }
    }
}

#[test]
fn ami_codec_bounds_giant_lines_and_endless_follows() {
    for seed in SEEDS.take(20) {
        let mut g = Gen::new(seed);
        let mut input = b"Asterisk Call Manager/9.0.0\r\n".to_vec();
        // A line far over the cap, with and without an end.
        let n = MAX_MESSAGE * g.range(1, 4) + g.below(1000);
        input.extend(std::iter::repeat_n(b'a', n));
        input.extend_from_slice(b": x\r\n\r\nEvent: After\r\n\r\n");
        // A Response: Follows that never says --END COMMAND--.
        input.extend_from_slice(b"Response: Follows\r\n");
        for _ in 0..g.range(1, 40_000) {
            let len = g.range(0, 3);
            input.extend(g.nasty(len).into_iter().filter(|&b| b != b'-'));
            input.extend_from_slice(b"\n");
        }
        input.extend_from_slice(b"\r\n");
        let out = frames(&input, seed, 4096);
        for f in &out {
            assert_bounded(f, seed);
        }
        assert!(
            out.iter()
                .any(|f| matches!(f, Frame::Message(m) if m.event() == Some("After"))),
            "seed {seed}: the message after an oversized one is read"
        );
    }
}

#[test]
fn ami_actions_are_refused_or_round_trip() {
    const KEY: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
    for seed in SEEDS {
        let mut g = Gen::new(seed);
        let mut m = Message::new();
        let mut clean = true;
        for _ in 0..g.range(1, 12) {
            let n = g.range(1, 20);
            let mut key = g.string(KEY, n);
            let n = g.range(0, 60);
            let value = String::from_utf8_lossy(&g.nasty(n)).into_owned();
            if g.chance(1, 10) {
                const SEPS: [&str; 4] = [":", "\r\n", "\n", "\r"];
                let sep = SEPS[g.below(SEPS.len())];
                key.push_str(sep);
            }
            if key.contains(['\r', '\n', ':']) || value.contains(['\r', '\n']) {
                clean = false;
            }
            m.push(&key, &value);
        }
        match encode_action(&m) {
            Err(_) => assert!(!clean, "seed {seed}: a clean action refused: {m:?}"),
            Ok(bytes) => {
                assert!(
                    clean,
                    "seed {seed}: CR/LF or a colon in a key got through: {m:?}"
                );
                // Nothing can smuggle a second action in: exactly one message comes back.
                let back = frames(&bytes, seed, 16);
                assert_eq!(back, vec![Frame::Message(m)], "seed {seed}");
            }
        }
    }
}

#[test]
fn form_decoder_random_bodies() {
    for seed in SEEDS {
        let mut g = Gen::new(seed);
        let n = g.range(0, 8192);
        let body = if seed % 2 == 0 {
            g.nasty(n)
        } else {
            g.bytes(n)
        };
        if let Ok(f) = form::parse(&body) {
            let pairs = body.split(|&b| b == b'&').filter(|p| !p.is_empty()).count();
            assert_eq!(f.len(), pairs, "seed {seed}");
            assert!(f.len() <= form::MAX_PAIRS);
        }
    }
}

#[test]
fn form_decoder_round_trips_what_php_would_send() {
    let alphabet = "abcXYZ019_-.~ []%&=+;#\"'\\/:?П€\u{0}\r\n\t";
    for seed in SEEDS {
        let mut g = Gen::new(seed);
        let mut pairs = Vec::new();
        for _ in 0..g.range(0, 60) {
            let depth = g.range(0, 6);
            let n = g.range(1, 10);
            let mut key = g.string(alphabet, n);
            for _ in 0..depth {
                let n = g.range(0, 8);
                let inner = g.string(alphabet, n);
                key = format!("{key}[{inner}]");
            }
            let n = g.range(0, 40);
            let value = g.string(alphabet, n);
            pairs.push((key, value));
        }
        let refs: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let body = support::http::form(&refs);
        let f = form::parse(body.as_bytes()).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert_eq!(f.len(), pairs.len(), "seed {seed}");
        // Last one wins, as in PHP.
        for (k, _) in &pairs {
            let last = pairs.iter().rev().find(|(k2, _)| k2 == k).unwrap();
            assert_eq!(f.get(k), Some(last.1.as_str()), "seed {seed}: {k:?}");
        }
    }
}

#[test]
fn form_decoder_deep_nesting_and_huge_counts() {
    // 64 KiB of brackets: one flat key, nothing recursive to blow the stack.
    let deep = format!("{}=1", "a[b]".repeat(16 * 1024));
    let f = form::parse(deep.as_bytes()).unwrap();
    assert_eq!(f.len(), 1);
    let deep_enc = format!("{}=1", "a%5Bb%5D".repeat(8 * 1024));
    assert_eq!(form::parse(deep_enc.as_bytes()).unwrap().len(), 1);
    // As many pairs as fit the webhook's 64 KiB body: refused, not built.
    for body in [
        "a&".repeat(32 * 1024),
        "a=&".repeat(21 * 1024),
        "%41=%42&".repeat(8 * 1024),
    ] {
        assert_eq!(form::parse(body.as_bytes()), Err(form::Error::TooMany));
    }
    // Bad escapes at every position of a real body are located, never a panic.
    let real = support::http::form(&[("event", "ONEXTERNALCALLSTART"), ("data[USER_ID]", "19")]);
    for at in 0..=real.len() {
        let mut b = real.clone().into_bytes();
        b.insert(at, b'%');
        let r = form::parse(&b);
        if let Err(form::Error::BadEscape(p)) = r {
            assert!(p <= at, "{p} > {at}");
        }
    }
}

const SECRET: &str = "S3NT1NEL-ami-secret";
const TOKEN: &str = "S3NT1NEL-app-token";
const CODE: &str = "S3NT1NELwebhookcode";

/// The example config with recognisable secrets.
fn config_text() -> String {
    let example =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("callme.conf.example"))
            .unwrap();
    let mut out = String::new();
    for line in example.lines() {
        let l = match line.split_once('=').map(|(k, _)| k.trim()) {
            Some("secret") => format!("secret = {SECRET}"),
            Some("app_token") => format!("app_token = {TOKEN}"),
            Some("webhook_url") => format!("webhook_url = https://p.bitrix24.ru/rest/1/{CODE}/"),
            _ => line.to_string(),
        };
        out.push_str(&l);
        out.push('\n');
    }
    out
}

#[test]
fn config_parser_survives_mutations_and_keeps_secrets_out_of_errors() {
    let base = config_text();
    callme::config::parse_str(&base, "t.conf").expect("the example with secrets loads");
    let secret_lines = [
        format!("secret = {SECRET}"),
        format!("app_token = {TOKEN}"),
        format!("webhook_url = https://p.bitrix24.ru/rest/1/{CODE}/"),
    ];
    for seed in SEEDS {
        let mut g = Gen::new(seed);
        let text = if seed % 3 == 0 {
            let mut t = String::new();
            for _ in 0..g.range(0, 80) {
                let n = g.range(0, 80);
                t.push_str(&String::from_utf8_lossy(&g.nasty(n)));
                t.push('\n');
            }
            t
        } else {
            String::from_utf8_lossy(&g.mutate(base.as_bytes())).into_owned()
        };
        let lines = text.lines().count();
        let Err(e) = callme::config::parse_str(&text, "t.conf") else {
            continue;
        };
        for p in e.problems() {
            let line = p.line().unwrap();
            assert!(
                line <= lines + 1,
                "seed {seed}: line {line} of {lines}: {p}"
            );
            // One line, no control characters: an error goes to the terminal and the journal.
            assert!(
                !p.to_string().contains(char::is_control),
                "seed {seed}: {:?}",
                p.to_string()
            );
        }
        // A secret whose line is intact never shows up in an error.
        for (l, s) in secret_lines.iter().zip([SECRET, TOKEN, CODE]) {
            if text.lines().any(|x| x == l) {
                assert!(!e.to_string().contains(s), "seed {seed}: {e}");
            }
        }
    }
}

/// A random pattern in the documented syntax, with a function to build a matching number.
fn random_pattern(g: &mut Gen) -> (String, Vec<Vec<u8>>, u8) {
    let mut text = String::from("_");
    let mut sets = Vec::new();
    for _ in 0..g.range(0, 12) {
        let (s, set): (String, Vec<u8>) = match g.below(6) {
            0 => {
                let d = g.range(0, 9) as u8;
                (d.to_string(), vec![d])
            }
            1 => ("X".into(), (0..=9).collect()),
            2 => ("Z".into(), (1..=9).collect()),
            3 => ("N".into(), (2..=9).collect()),
            _ => {
                let a = g.range(0, 9) as u8;
                let b = g.range(a as usize, 9) as u8;
                let c = g.range(0, 9) as u8;
                (format!("[{a}-{b}{c}]"), (a..=b).chain([c]).collect())
            }
        };
        text.push_str(&s);
        sets.push(set);
    }
    let tail = *g.pick(b" .!");
    if sets.is_empty() && tail != b'.' {
        text.push('1');
        sets.push(vec![1]);
    }
    if tail != b' ' {
        text.push(tail as char);
    }
    (text, sets, tail)
}

#[test]
fn dial_patterns_match_exactly_what_they_describe() {
    for seed in SEEDS {
        let mut g = Gen::new(seed);
        // Random text never panics the parser.
        let n = g.range(0, 70);
        let junk = String::from_utf8_lossy(&g.nasty(n)).into_owned();
        if let Ok(p) = Pattern::parse(&junk) {
            let _ = p.matches(&junk);
        }
        let (text, sets, tail) = random_pattern(&mut g);
        let p = Pattern::parse(&text).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let mut number: Vec<u8> = sets.iter().map(|s| b'0' + *g.pick(s)).collect();
        let extra = match tail {
            b'.' => g.range(1, 5),
            b'!' => g.range(0, 5),
            _ => 0,
        };
        for _ in 0..extra {
            number.push(b'0' + g.range(0, 9) as u8);
        }
        let s = String::from_utf8(number.clone()).unwrap();
        assert!(p.matches(&s), "seed {seed}: {text} should match {s}");
        // One digit outside its set: no match.
        if let Some(i) = (0..sets.len()).find(|&i| sets[i].len() < 10) {
            let outside = (0..=9u8).find(|d| !sets[i].contains(d)).unwrap();
            let mut bad = number.clone();
            bad[i] = b'0' + outside;
            assert!(
                !p.matches(std::str::from_utf8(&bad).unwrap()),
                "seed {seed}: {text}"
            );
        }
        // One digit more without a tail, or one fewer than the fixed part: no match.
        if tail == b' ' {
            assert!(!p.matches(&format!("{s}0")), "seed {seed}: {text}");
        }
        if !sets.is_empty() {
            assert!(!p.matches(&s[..sets.len() - 1]), "seed {seed}: {text}");
        }
        // And through a whole policy, deny winning.
        let both = DialPolicy {
            allow: vec![p.clone()],
            deny: vec![p.clone()],
            max_per_user_per_minute: 1,
            max_per_minute: 1,
        };
        assert!(both.check(&s).is_err());
    }
}
