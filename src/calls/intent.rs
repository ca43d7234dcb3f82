//! What the tracker asks the Bitrix24 side to do. Intents speak in internal numbers
//! (extensions), not Bitrix24 user IDs: mapping numbers to users is I/O and happens later.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::status::Status;

/// Who the call belongs to when it is finished.
///
/// Serialised (like [`Action`] and [`Direction`]) because steps wait in the on-disk outbox
/// (`docs/outbox.md`), so the names below are an on-disk format: rename with care.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishUser {
    /// The employee with this internal number (the last one who talked, or who rang).
    Employee(String),
    /// The CRM-responsible user resolved when the call was registered.
    Responsible,
    /// `[calls] default_user`.
    Default,
}

/// The direction recorded in Bitrix24 (`TYPE` on register).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    #[default]
    Inbound,
    Outbound,
    /// A Bitrix24 callback form (ONEXTERNALCALLBACKSTART): we call the client back.
    Callback,
}

impl Direction {
    /// `telephony.externalCall.register` TYPE: 1 outgoing, 2 incoming (bitrix24-api.md §2.1).
    pub fn bitrix_type(self) -> u8 {
        match self {
            Direction::Outbound => 1,
            Direction::Inbound => 2,
            Direction::Callback => 4,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
            Direction::Callback => "callback",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Register the call. Who is responsible is decided by the delivery side (CRM lookup,
    /// static map, default) *before* the register request, so the card opens for the right person.
    Register {
        direction: Direction,
        /// The client's number as Asterisk reported it (not yet normalised).
        phone: String,
        /// The DID (inbound) or the empty string when unknown.
        line: String,
        /// Call start, milliseconds since the Unix epoch.
        started_ms: u64,
        /// Register under this employee instead of looking the responsible one up: the
        /// employee who dialled a desk-phone outbound call, or who called a callback back
        /// (registered once they answered). When that internal number belongs to no Bitrix24
        /// user, delivery falls back to the inbound rules (outbound) or `default_user`
        /// (callback).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        employee: Option<String>,
    },
    /// Bitrix24 already registered this call (click-to-call: ONEXTERNALCALLSTART carried its
    /// CALL_ID). Nothing is sent; later steps use this CALL_ID, and `ext` is the employee.
    Adopt {
        call_id: String,
        ext: String,
    },
    Show {
        ext: String,
    },
    Hide {
        ext: String,
    },
    Finish {
        user: FinishUser,
        /// Talk seconds, from the first employee answer to the end of the call.
        duration: u64,
        status: Status,
    },
    /// Attach a recording; always emitted after `Finish` (Bitrix24 refuses it before).
    Attach {
        path: String,
    },
}

/// One step for one call. `call` is the call's `EXTERNAL_CALL_ID` (system name + Linkedid),
/// which is also the key that keeps steps of one call in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    pub call: String,
    pub action: Action,
}

impl fmt::Display for Intent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.action {
            Action::Register {
                direction,
                phone,
                line,
                ..
            } => write!(
                f,
                "{} register {} from {phone} on line {line:?}",
                self.call,
                direction.as_str()
            ),
            Action::Adopt { call_id, ext } => {
                write!(f, "{} click-to-call {call_id} by {ext}", self.call)
            }
            Action::Show { ext } => write!(f, "{} show card to {ext}", self.call),
            Action::Hide { ext } => write!(f, "{} hide card from {ext}", self.call),
            Action::Finish {
                user,
                duration,
                status,
            } => {
                let who = match user {
                    FinishUser::Employee(ext) => ext.as_str(),
                    FinishUser::Responsible => "<responsible>",
                    FinishUser::Default => "<default user>",
                };
                write!(
                    f,
                    "{} finish under {who}: status {status}, {duration} s",
                    self.call
                )
            }
            Action::Attach { path } => write!(f, "{} attach recording {path}", self.call),
        }
    }
}
