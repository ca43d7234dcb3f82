//! Test doubles shared by every integration test: a fake AMI server and a fake Bitrix24 portal,
//! both on 127.0.0.1 port 0. Each test binary uses only some of it.
#![allow(dead_code)]

pub mod daemon;
pub mod fake_ami;
pub mod fake_bitrix;
pub mod fake_oauth;
pub mod http;

use std::path::PathBuf;

/// Path of a file in `tests/fixtures/`.
pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A capture after its first `FullyBooted`: what Asterisk sent once the capture session was up
/// (its banner, Login response and FullyBooted are the fake server's job). It still ends with
/// the `Response: Goodbye` of the capture's Logoff, a response nobody waits for.
pub fn capture_tail(name: &str) -> Vec<u8> {
    let bytes = std::fs::read(fixture_path(name)).expect("read capture");
    let start = find(&bytes, b"Event: FullyBooted").expect("capture has FullyBooted");
    let end = start + find(&bytes[start..], b"\r\n\r\n").expect("end of FullyBooted") + 4;
    bytes[end..].to_vec()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
