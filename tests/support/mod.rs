//! Test doubles and builders shared by every integration test: a fake AMI server and a fake
//! Bitrix24 portal, both on 127.0.0.1 port 0; the real binary under a handle; the captures,
//! events and config texts the tests build on, by channel driver where a test runs on both;
//! waits with a deadline. Each test binary uses only some of it.
#![allow(dead_code)]

pub mod captures;
pub mod chaos;
pub mod clicks;
pub mod configs;
pub mod daemon;
#[macro_use]
pub mod drivers;
pub mod events;
pub mod fake_ami;
pub mod fake_bitrix;
pub mod fake_oauth;
pub mod gate;
pub mod gen;
pub mod http;
pub mod invariants;
pub mod prometheus;
pub mod template;
pub mod traffic;
pub mod wait;

use std::path::PathBuf;

/// Kept at the root too: most end-to-end tests call it as `support::capture_tail`.
#[allow(unused_imports)]
pub use captures::capture_tail;

/// Path of a file in `tests/fixtures/`.
pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}
