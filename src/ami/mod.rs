//! Asterisk Manager Interface: wire codec, connection client, typed event views.

pub mod client;
pub mod codec;
mod error;
pub mod event;

pub use client::{ClientConfig, Handle, Incoming, Stats};
pub use codec::{Frame, Message, Reader};
pub use error::Error;
