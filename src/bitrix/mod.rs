//! Bitrix24 REST: transport, typed methods, user directory.
//!
//! - [`client`]: the webhook transport.
//! - [`envelope`]: the result/error envelope, decoded the same way for every client.
//! - [`auth_status`]: why the portal refuses our credentials, for `/healthz`.
//! - [`agent`]: the one ureq agent builder.
//! - [`urlenc`]: percent-encoding for hand-built query strings.
//! - [`api`]: one typed function per REST method the daemon uses.
//! - [`users`]: the internal number ↔ employee map.
//! - [`record`]: attaching call recordings after finish, on the [`attach_worker`] thread; [`upload`]: streaming one to the
//!   upload URL.
//! - [`error`]: the one error type, with its retry classification.
//! - [`outbox`]: the durable journal of steps and the events journal.
//! - [`limiter`]: the client-side leaky bucket shared by everything that calls Bitrix24.
//! - [`heartbeat`]: stamps the delivery thread's liveness around every request.
//! - [`counted`]: requests by method and answer, for `/metrics`.
//! - [`oauth`]: app mode: OAuth tokens from the install event, refreshed and persisted.
//! - [`deliver`]: outbox → requests, in order per call, batched when a backlog forms.
//! - [`priority`]: which due step goes first when the request budget is short.
//!
//! Reference for every quirk cited in here: `bitrix24-api.md` (shared docs).

pub mod agent;
pub mod api;
pub mod attach_worker;
pub mod auth_status;
pub mod client;
pub mod counted;
pub mod deliver;
pub mod envelope;
pub mod error;
pub mod heartbeat;
pub mod limiter;
pub mod oauth;
pub mod outbox;
pub mod priority;
pub mod record;
pub mod upload;
pub mod urlenc;
pub mod users;

pub use api::User;
pub use auth_status::AuthStatus;
pub use client::{
    redact_url, validate_webhook_url, Reply, Transport, WebhookClient, APP_MODE_REQUIRED,
};
pub use error::Error;
pub use oauth::AppClient;
pub use users::{Directory, SharedDirectory};
