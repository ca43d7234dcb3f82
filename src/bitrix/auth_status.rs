//! Why Bitrix24 refuses our credentials right now, if it does. Written by both clients (the
//! OAuth client when a refresh is refused, the webhook client on `WRONG_AUTH_TYPE`) and read
//! by `/healthz` and `/status`; its own file so the clients need not import each other.

use std::sync::{Arc, Mutex};

/// Why app mode cannot call Bitrix24 right now (or `None`), shared with `/healthz` and
/// `/status`. Also used by the webhook client for `WRONG_AUTH_TYPE`.
pub type AuthStatus = Arc<Mutex<Option<String>>>;

pub(crate) fn set_status(status: &AuthStatus, value: Option<String>) {
    *status.lock().unwrap_or_else(|p| p.into_inner()) = value;
}
