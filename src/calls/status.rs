//! Call outcome → Bitrix24 `STATUS_CODE` (mission.md "Status code mapping").

use std::fmt;

/// A Bitrix24 finish `STATUS_CODE`. Stored verbatim by Bitrix24, so only codes from its
/// documented list are produced (bitrix24-api.md §3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Status(&'static str);

impl Status {
    pub const ANSWERED: Status = Status("200");
    pub const MISSED: Status = Status("304");
    /// The number is not allowed by `[originate]` allow/deny (toll-fraud guard).
    pub const FORBIDDEN: Status = Status("403");
    pub const INVALID_NUMBER: Status = Status("404");
    /// A click-to-call over the `[originate]` rate limits.
    pub const BLOCKED: Status = Status("423");
    pub const UNAVAILABLE: Status = Status("480");
    pub const BUSY: Status = Status("486");
    pub const CONGESTION: Status = Status("503");
    pub const DECLINED: Status = Status("603");
    pub const OTHER: Status = Status("OTHER");

    pub fn code(self) -> &'static str {
        self.0
    }

    /// From a `DialEnd` `DialStatus` (ami.md §5.3). `None` for statuses that say nothing about
    /// the outcome of the call as a whole (ANSWER is handled by the talk time; CONTINUE/GOTO
    /// mean the dialplan went on).
    pub fn from_dial_status(status: &str) -> Option<Status> {
        Some(match status.trim().to_ascii_uppercase().as_str() {
            "NOANSWER" | "CANCEL" | "NO ANSWER" => Status::MISSED,
            "BUSY" => Status::BUSY,
            "CONGESTION" => Status::CONGESTION,
            "CHANUNAVAIL" => Status::UNAVAILABLE,
            "INVALIDNMBR" => Status::INVALID_NUMBER,
            _ => return None,
        })
    }

    /// From a Q.850 hangup cause (`include/asterisk/causes.h`), for calls nobody answered.
    /// Cause 16 (normal clearing) while ringing means the caller gave up: a missed call.
    pub fn from_cause(cause: u32) -> Status {
        match cause {
            1 | 28 => Status::INVALID_NUMBER,
            17 => Status::BUSY,
            21 => Status::DECLINED,
            20 | 27 => Status::UNAVAILABLE,
            34 | 38 | 41 | 42 | 47 => Status::CONGESTION,
            _ => Status::MISSED,
        }
    }

    /// Click-to-call `OriginateResponse` `Reason` (ami.md §4.2).
    pub fn from_originate_reason(reason: u32) -> Status {
        match reason {
            4 => Status::ANSWERED,
            5 => Status::BUSY,
            3 => Status::MISSED,
            8 => Status::CONGESTION,
            1 => Status::DECLINED,
            _ => Status::OTHER,
        }
    }
}

/// Every code [`Status`] can hold, so a code read back from disk maps to its constant.
const KNOWN: [Status; 10] = [
    Status::ANSWERED,
    Status::FORBIDDEN,
    Status::BLOCKED,
    Status::MISSED,
    Status::INVALID_NUMBER,
    Status::UNAVAILABLE,
    Status::BUSY,
    Status::CONGESTION,
    Status::DECLINED,
    Status::OTHER,
];

impl Status {
    /// The constant whose code is `code`; anything unknown (an outbox written by a newer
    /// version, a hand-edited file) becomes [`Status::OTHER`] rather than an error, so one odd
    /// step never stops a restart.
    pub fn from_code(code: &str) -> Status {
        KNOWN
            .iter()
            .copied()
            .find(|s| s.0 == code)
            .unwrap_or(Status::OTHER)
    }
}

/// Written as its code string (`"304"`): the outbox keeps finish steps on disk.
impl serde::Serialize for Status {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Status {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Status, D::Error> {
        let code = String::deserialize(d)?;
        Ok(Status::from_code(&code))
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mission_table() {
        assert_eq!(Status::from_dial_status("NOANSWER"), Some(Status::MISSED));
        assert_eq!(Status::from_dial_status("CANCEL"), Some(Status::MISSED));
        assert_eq!(Status::from_dial_status("BUSY"), Some(Status::BUSY));
        assert_eq!(
            Status::from_dial_status("CONGESTION"),
            Some(Status::CONGESTION)
        );
        assert_eq!(
            Status::from_dial_status("CHANUNAVAIL"),
            Some(Status::UNAVAILABLE)
        );
        assert_eq!(
            Status::from_dial_status("INVALIDNMBR"),
            Some(Status::INVALID_NUMBER)
        );
        assert_eq!(Status::from_dial_status("ANSWER"), None);
        assert_eq!(Status::from_cause(1), Status::INVALID_NUMBER);
        assert_eq!(Status::from_cause(28), Status::INVALID_NUMBER);
        assert_eq!(Status::from_cause(21), Status::DECLINED);
        assert_eq!(Status::from_cause(17), Status::BUSY);
        assert_eq!(Status::from_cause(16), Status::MISSED);
        assert_eq!(Status::from_originate_reason(5).code(), "486");
        assert_eq!(Status::from_originate_reason(3).code(), "304");
        assert_eq!(Status::from_originate_reason(8).code(), "503");
        assert_eq!(Status::from_originate_reason(1).code(), "603");
        assert_eq!(Status::from_originate_reason(0).code(), "OTHER");
    }

    #[test]
    fn serde_round_trip_by_code() {
        for s in KNOWN {
            let j = serde_json::to_string(&s).unwrap();
            assert_eq!(j, format!("\"{}\"", s.code()));
            assert_eq!(serde_json::from_str::<Status>(&j).unwrap(), s);
        }
        assert_eq!(
            serde_json::from_str::<Status>("\"999\"").unwrap(),
            Status::OTHER
        );
    }
}
