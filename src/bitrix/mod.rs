//! Bitrix24 REST: transport, typed methods, user directory.
//!
//! - [`client`]: the webhook transport and the result/error envelope.
//! - [`error`]: the one error type, with its retry classification.
//!
//! Reference for every quirk cited in here: `bitrix24-api.md` (shared docs).

pub mod client;
pub mod error;

pub use client::{redact_url, Reply, Transport, WebhookClient};
pub use error::Error;
