use std::fmt;

/// Everything that can go wrong when talking to Bitrix24 REST.
///
/// The outbox needs one question answered: send again later, or give up? That is
/// [`Error::is_retryable`]. The other predicates name the few errors the daemon reacts to
/// specifically.
///
/// No variant ever holds the webhook URL: the client builds messages from the redacted URL
/// and scrubs the secret code out of anything that came from ureq or the server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// No HTTP answer at all: connection refused, DNS, timeout, TLS, a connection cut mid-body.
    /// Always retryable.
    Transport(String),
    /// An HTTP answer that is not a Bitrix24 envelope: a proxy's HTML error page, an empty body,
    /// JSON with neither `result` nor `error`. 5xx and 429 are retryable, the rest permanent.
    Http { status: u16, body: String },
    /// The Bitrix24 error envelope `{"error": .., "error_description": ..}` (bitrix24-api.md §9.2).
    /// `code` may be the empty string: method-level errors such as "Call is not found" carry
    /// `"error": ""` on real portals (§2.3, §9.2, ISSUE-175).
    Api {
        status: u16,
        code: String,
        description: String,
    },
    /// A success envelope whose `result` we could not understand. Permanent: sending the same
    /// request again gives the same answer.
    Decode(String),
}

/// Error codes Bitrix24 documents as "try again later" (bitrix24-api.md §9.3, §9.4).
/// `ERROR_UNEXPECTED_ANSWER` is listed next to `INTERNAL_SERVER_ERROR` as a 500 to retry.
const RETRYABLE_CODES: &[&str] = &[
    "QUERY_LIMIT_EXCEEDED",
    "OPERATION_TIME_LIMIT",
    "INTERNAL_SERVER_ERROR",
    "ERROR_UNEXPECTED_ANSWER",
];

/// Codes that mean the webhook URL (user id or secret code) or its scopes are wrong (§9.3).
const AUTH_CODES: &[&str] = &[
    "INVALID_CREDENTIALS",
    "NO_AUTH_FOUND",
    "insufficient_scope",
    "authorization_error",
    "INVALID_REQUEST",
    "expired_token",
    "invalid_token",
];

impl Error {
    /// Whether sending the same request later may succeed.
    ///
    /// Transport failures, any 5xx, 429 and the rate-limit codes are retryable; everything
    /// else is permanent (§9.3 "Recommendation"). The code is checked as well as the status
    /// because the docs and the server source disagree on several statuses.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Transport(_) => true,
            Error::Http { status, .. } => retryable_status(*status),
            Error::Api { status, code, .. } => {
                retryable_status(*status) || RETRYABLE_CODES.contains(&code.as_str())
            }
            Error::Decode(_) => false,
        }
    }

    /// The active call is gone: `finish` of a call that was already finished (or never
    /// registered). Real body: HTTP 400
    /// `{"error":"","error_description":"Call is not found (call should be registered prior to finishing"}`
    /// (§3.1, §11 item 1). The code is `""` on live portals and `ERROR_CORE` in the new docs, so
    /// only the description is matched. `attachRecord`'s "Call is not found in the statistic
    /// table" (the call is *not finished yet*, §4.2) means the opposite and is excluded.
    pub fn is_call_not_found(&self) -> bool {
        match self {
            Error::Api { description, .. } => {
                let d = description.to_ascii_lowercase();
                d.starts_with("call is not found") && !d.contains("statistic")
            }
            _ => false,
        }
    }

    /// `WRONG_AUTH_TYPE`: the portal refuses this method for webhooks (§1.4, §2.3).
    pub fn is_wrong_auth_type(&self) -> bool {
        matches!(self, Error::Api { code, .. } if code == "WRONG_AUTH_TYPE")
    }

    /// The webhook URL or its scopes are wrong (§9.3). Retrying will not help; the operator
    /// has to fix `webhook_url`.
    pub fn is_auth_failure(&self) -> bool {
        matches!(self, Error::Api { code, .. } if AUTH_CODES.contains(&code.as_str()))
    }
}

fn retryable_status(status: u16) -> bool {
    status >= 500 || status == 429
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Transport(msg) => write!(f, "Bitrix24 unreachable: {msg}"),
            Error::Http { status, body } => {
                write!(f, "Bitrix24 answered HTTP {status} without a REST envelope")?;
                let body = body.trim();
                if body.is_empty() {
                    write!(f, " (empty body)")
                } else {
                    write!(f, ": {}", truncate(body, 200))
                }
            }
            Error::Api {
                status,
                code,
                description,
            } => {
                let code = if code.is_empty() { "(no code)" } else { code };
                write!(f, "Bitrix24 error {code} (HTTP {status}): {description}")?;
                if self.is_auth_failure() {
                    write!(f, " (check [bitrix24] webhook_url and its scopes)")?;
                }
                Ok(())
            }
            Error::Decode(msg) => write!(f, "Bitrix24 answer not understood: {msg}"),
        }
    }
}

impl std::error::Error for Error {}

/// Cut `s` to at most `max` bytes on a char boundary, marking the cut.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes total)", &s[..end], s.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: &str, description: &str) -> Error {
        Error::Api {
            status,
            code: code.into(),
            description: description.into(),
        }
    }

    #[test]
    fn rate_limit_is_retryable() {
        // §9.3, ISSUE-193: the exact production body.
        let e = api(503, "QUERY_LIMIT_EXCEEDED", "Too many requests");
        assert!(e.is_retryable());
        // Classified by code even if a proxy rewrote the status.
        assert!(api(400, "QUERY_LIMIT_EXCEEDED", "Too many requests").is_retryable());
        assert!(api(429, "OPERATION_TIME_LIMIT", "Method is blocked").is_retryable());
        assert!(api(500, "INTERNAL_SERVER_ERROR", "").is_retryable());
    }

    #[test]
    fn call_not_found_is_permanent() {
        let e = api(
            400,
            "",
            "Call is not found (call should be registered prior to finishing",
        );
        assert!(!e.is_retryable());
        assert!(e.is_call_not_found());
        // The new docs' code for the same error.
        let e = api(
            400,
            "ERROR_CORE",
            "Call is not found (call should be registered prior to finishing",
        );
        assert!(e.is_call_not_found());
        // attachRecord before finish means "not finished yet", not "gone".
        let e = api(
            400,
            "",
            "Call is not found in the statistic table. Looks like it is not finished yet.",
        );
        assert!(!e.is_call_not_found());
    }

    #[test]
    fn permanent_and_special_codes() {
        let e = api(401, "INVALID_CREDENTIALS", "Invalid request credentials");
        assert!(!e.is_retryable());
        assert!(e.is_auth_failure());
        assert!(e.to_string().contains("webhook_url"));
        let e = api(
            403,
            "WRONG_AUTH_TYPE",
            "Current authorization type is denied for this method",
        );
        assert!(e.is_wrong_auth_type());
        assert!(!e.is_retryable());
        assert!(!api(404, "ERROR_METHOD_NOT_FOUND", "Method not found!").is_retryable());
        assert!(!Error::Decode("x".into()).is_retryable());
    }

    #[test]
    fn transport_and_http_classes() {
        assert!(Error::Transport("io: Connection refused".into()).is_retryable());
        let http = |status| Error::Http {
            status,
            body: "<html>".into(),
        };
        assert!(http(502).is_retryable());
        assert!(http(429).is_retryable());
        assert!(!http(404).is_retryable());
        assert!(!http(301).is_retryable());
    }

    #[test]
    fn display_names_code_and_description() {
        let e = api(503, "QUERY_LIMIT_EXCEEDED", "Too many requests");
        assert_eq!(
            e.to_string(),
            "Bitrix24 error QUERY_LIMIT_EXCEEDED (HTTP 503): Too many requests"
        );
        let e = api(400, "", "Call is not found");
        assert_eq!(
            e.to_string(),
            "Bitrix24 error (no code) (HTTP 400): Call is not found"
        );
        let e = Error::Http {
            status: 502,
            body: "x".repeat(1000),
        };
        assert!(e.to_string().len() < 300);
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        let s = "жжжж"; // 2 bytes each
        assert_eq!(truncate(s, 3), "ж… (8 bytes total)");
        assert_eq!(truncate("abc", 3), "abc");
    }
}
