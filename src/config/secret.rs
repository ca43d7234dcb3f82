//! Values that must never reach a log: [`Secret`] and the webhook URL, whose code is a password.

use std::fmt;

/// A value that must never be logged: `Debug` and `Display` print `***`.
///
/// The only way to the text is [`Secret::expose`], so every use is visible in review.
#[derive(Clone, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compare with `other` in time that does not depend on where the bytes differ, so a remote
    /// caller cannot guess `app_token` byte by byte. (The length may leak; that is acceptable.)
    pub fn ct_eq(&self, other: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), other.as_bytes());
        let mut diff = a.len() ^ b.len();
        for i in 0..a.len().max(b.len()) {
            let x = a.get(i).copied().unwrap_or(0);
            let y = b.get(i).copied().unwrap_or(0);
            diff |= usize::from(x ^ y);
        }
        std::hint::black_box(diff) == 0
    }
}

/// In constant time ([`Secret::ct_eq`]), so a config compared with another leaks nothing.
impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        self.ct_eq(&other.0)
    }
}

impl Eq for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The Bitrix24 inbound webhook base URL, normalised to end with `/`.
///
/// Everything after `/rest/USER_ID/` is the webhook code, which is as good as a password for
/// the portal, so `Debug` and `Display` show `https://portal.bitrix24.ru/rest/1/***/`.
/// Use [`WebhookUrl::expose`] to build request URLs (`{base}{method}.json`).
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    url: String,
    /// Byte offset just past `/rest/`.
    rest_end: usize,
}

impl WebhookUrl {
    /// Check and normalise a webhook URL. The error text says what is wrong and what is allowed;
    /// it never repeats the URL.
    pub fn parse(s: &str) -> Result<WebhookUrl, String> {
        const ALLOWED: &str =
            "allowed: the inbound webhook URL from Bitrix24, e.g. https://portal.bitrix24.ru/rest/1/abcdef/";
        let Some(after_scheme) = s
            .strip_prefix("https://")
            .or_else(|| s.strip_prefix("http://"))
        else {
            return Err(format!("must start with https:// or http:// ({ALLOWED})"));
        };
        let scheme_len = s.len() - after_scheme.len();
        if s.chars()
            .any(|c| c.is_whitespace() || matches!(c, '?' | '#' | '"' | '\''))
        {
            return Err(format!(
                "must not contain spaces, quotes, `?` or `#` ({ALLOWED})"
            ));
        }
        let host_len = after_scheme.find('/').unwrap_or(after_scheme.len());
        let host = &after_scheme[..host_len];
        if host.is_empty() {
            return Err(format!("has no host name ({ALLOWED})"));
        }
        if host.contains('@') {
            return Err(format!("must not contain user:password@ ({ALLOWED})"));
        }
        let path = &after_scheme[host_len..];
        let Some(rest_at) = path.find("/rest/") else {
            return Err(format!("does not contain /rest/ ({ALLOWED})"));
        };
        let tail = path[rest_at + "/rest/".len()..].trim_end_matches('/');
        if tail.is_empty() {
            return Err(
                "has nothing after /rest/ (allowed: .../rest/USER_ID/CODE/ as shown by Bitrix24)"
                    .to_string(),
            );
        }
        if let Some(last) = tail.rsplit('/').next().filter(|seg| seg.contains('.')) {
            return Err(format!(
                "ends with a method name `{last}` (allowed: only the base URL, up to and including the code: .../rest/1/abcdef/)"
            ));
        }
        let rest_end = scheme_len + host_len + rest_at + "/rest/".len();
        let url = format!("{}/", s.trim_end_matches('/'));
        Ok(WebhookUrl { url, rest_end })
    }

    /// The full URL with the secret code; ends with `/`.
    pub fn expose(&self) -> &str {
        &self.url
    }

    /// `https://host/rest/USER_ID/***/`: safe for logs.
    pub fn redacted(&self) -> String {
        let (head, tail) = self.url.split_at(self.rest_end);
        let segs: Vec<&str> = tail.split('/').filter(|s| !s.is_empty()).collect();
        match segs.as_slice() {
            [] => head.to_string(),
            [_] => format!("{head}***/"),
            [user, ..] => format!("{head}{user}/***/"),
        }
    }

    /// Plain `http://`: the code crosses the network in clear text.
    pub fn is_plain_http(&self) -> bool {
        self.url.starts_with("http://")
    }
}

impl fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.redacted(), f)
    }
}

impl fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_url_redacted() {
        let u = WebhookUrl::parse("https://portal.bitrix24.ru/rest/1/abcdef").unwrap();
        assert_eq!(u.redacted(), "https://portal.bitrix24.ru/rest/1/***/");
        assert_eq!(u.to_string(), "https://portal.bitrix24.ru/rest/1/***/");
        assert_eq!(
            format!("{u:?}"),
            "\"https://portal.bitrix24.ru/rest/1/***/\""
        );
        let u = WebhookUrl::parse("https://p/rest/onlycode/").unwrap();
        assert_eq!(u.redacted(), "https://p/rest/***/");
        // A host called "rest" does not confuse the redaction.
        let u = WebhookUrl::parse("https://rest/rest/1/code/").unwrap();
        assert_eq!(u.redacted(), "https://rest/rest/1/***/");
    }

    #[test]
    fn secret_type() {
        let s = Secret::new("abc");
        assert_eq!(s.expose(), "abc");
        assert_eq!(s.to_string(), "***");
        assert_eq!(format!("{s:?}"), "\"***\"");
        assert!(s.ct_eq("abc"));
        assert!(!s.ct_eq("abd"));
        assert!(!s.ct_eq("ab"));
        assert!(!s.ct_eq("abcd"));
        assert!(!s.ct_eq(""));
        assert!(Secret::new("").ct_eq(""));
    }
}
