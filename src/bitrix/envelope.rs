//! The Bitrix24 result/error envelope (bitrix24-api.md §9), decoded the same way for the
//! webhook client, the OAuth client and file uploads. Its own file so that neither client
//! imports the other.

use serde_json::Value;

use super::error::{truncate, Error};

/// How much of a request's params or a response body goes into a debug log line or an error.
pub(crate) const LOG_LIMIT: usize = 2048;

/// A decoded success envelope `{"result": .., "next": .., "total": .., "time": {..}}` (§9.1).
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub result: Value,
    /// Offset of the next page of a list method; absent on the last page (§6.2).
    pub next: Option<u64>,
    /// Total rows of a list method. Absent when the list is empty (§6.2).
    pub total: Option<u64>,
}

/// Decode a response body into a [`Reply`] or an [`Error`].
///
/// An error is recognised by the *presence* of the `error` key, never its truthiness:
/// method-level errors come back as `"error": ""` (§9.2, ISSUE-175).
pub(crate) fn parse_envelope(status: u16, body: &str) -> Result<Reply, Error> {
    let not_envelope = || Error::Http {
        status,
        body: truncate(body, LOG_LIMIT),
    };
    let Ok(Value::Object(mut map)) = serde_json::from_str::<Value>(body) else {
        return Err(not_envelope());
    };
    if let Some(code) = map.get("error") {
        return Err(Error::Api {
            status,
            code: text_of(code),
            description: map
                .get("error_description")
                .map(text_of)
                .unwrap_or_default(),
        });
    }
    if !(200..300).contains(&status) {
        return Err(not_envelope());
    }
    let Some(result) = map.remove("result") else {
        return Err(not_envelope());
    };
    Ok(Reply {
        result,
        next: map.get("next").and_then(json_u64),
        total: map.get("total").and_then(json_u64),
    })
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A non-negative integer that Bitrix24 may send as a JSON number or as a numeric string:
/// `user.get` IDs are strings, CRM IDs come back either way (§4.3, §6.2, §7.2).
pub(crate) fn json_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < u64::MAX as f64)
                .map(|f| f as u64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn empty_error_code_is_an_error() {
        // §3.1 / ISSUE-175: the real body of a second finish.
        let body = r#"{"error":"","error_description":"Call is not found (call should be registered prior to finishing"}"#;
        let e = parse_envelope(400, body).unwrap_err();
        assert_eq!(
            e,
            Error::Api {
                status: 400,
                code: String::new(),
                description: "Call is not found (call should be registered prior to finishing"
                    .into()
            }
        );
        assert!(e.is_call_not_found());
        assert!(!e.is_retryable());
        // Even on HTTP 200 the presence of `error` wins.
        assert!(matches!(
            parse_envelope(200, r#"{"error":"","error_description":"x"}"#),
            Err(Error::Api { .. })
        ));
    }

    #[test]
    fn query_limit_is_retryable() {
        let body = r#"{"error":"QUERY_LIMIT_EXCEEDED","error_description":"Too many requests"}"#;
        let e = parse_envelope(503, body).unwrap_err();
        assert!(e.is_retryable());
        assert!(e.to_string().contains("QUERY_LIMIT_EXCEEDED"));
        assert!(e.to_string().contains("Too many requests"));
    }

    #[test]
    fn non_envelopes_are_http_errors() {
        let e = parse_envelope(502, "<html>Bad Gateway</html>").unwrap_err();
        assert!(matches!(e, Error::Http { status: 502, .. }));
        assert!(e.is_retryable());
        let e = parse_envelope(200, r#"{"foo":1}"#).unwrap_err();
        assert!(matches!(e, Error::Http { status: 200, .. }));
        assert!(!e.is_retryable());
        assert!(matches!(
            parse_envelope(200, ""),
            Err(Error::Http { status: 200, .. })
        ));
    }

    #[test]
    fn success_envelope_with_paging() {
        let r = parse_envelope(
            200,
            r#"{"result":[{"ID":"1"}],"next":50,"total":"123","time":{"start":1}}"#,
        )
        .unwrap();
        assert_eq!(r.result, json!([{"ID":"1"}]));
        assert_eq!(r.next, Some(50));
        assert_eq!(r.total, Some(123));
        let r = parse_envelope(200, r#"{"result":[],"time":{}}"#).unwrap();
        assert_eq!((r.next, r.total), (None, None));
    }

    #[test]
    fn u64_from_number_or_string() {
        assert_eq!(json_u64(&json!(7)), Some(7));
        assert_eq!(json_u64(&json!("7")), Some(7));
        assert_eq!(json_u64(&json!(" 42 ")), Some(42));
        assert_eq!(json_u64(&json!(7.0)), Some(7));
        assert_eq!(json_u64(&json!(-1)), None);
        assert_eq!(json_u64(&json!("abc")), None);
        assert_eq!(json_u64(&json!(null)), None);
        assert_eq!(json_u64(&json!(7.5)), None);
    }
}
