//! callme: a bridge between an Asterisk PBX (AMI) and Bitrix24 telephony.
//!
//! Data flows one way: AMI socket → codec → pure call tracker → outbox → Bitrix24 REST.
//! `main.rs` only wires these pieces together; everything testable lives here.
// `deny`, not `forbid`: src/rlimit.rs alone needs unsafe code (see below).
#![deny(unsafe_code)]

pub mod ami;
pub mod bitrix;
pub mod calls;
pub mod cli;
pub mod clock;
pub mod cmd;
pub mod config;
pub mod context;
pub mod daemon;
pub mod dial_policy;
pub mod doctor;
pub mod dryrun;
pub mod histogram;
pub mod http;
pub mod isotime;
pub mod journal;
pub mod listener_watch;
pub mod logging;
pub mod notify;
pub mod originate;
pub mod panic_hook;
pub mod phone;
pub mod replay;
// The only unsafe code: libc's getrlimit/setrlimit declared by hand (std has no call for
// resource limits and the design allows no libc crate).
#[allow(unsafe_code)]
pub mod rlimit;
pub mod statefile;
pub mod statelock;
pub mod supervisor;
pub mod text;
