//! `application/x-www-form-urlencoded` bodies, as Bitrix24 posts its events (bitrix24-api.md
//! §5.3): PHP-style bracket keys (`data[USER_ID]`, `auth[application_token]`), `+` for space.
//!
//! Keys stay flat: `data%5BUSER_ID%5D` decodes to the key `data[USER_ID]`, and that is how
//! callers look it up. We only need a handful of known keys, so building PHP's nested arrays
//! would add code without adding safety.

use std::fmt;

/// Most pairs accepted in one body: PHP's own default `max_input_vars`, so we accept what a
/// PHP handler (Bitrix24's SDK) would. A real event has about 20. Without a cap a 64 KiB body
/// of `a&a&a&…` becomes 32 768 pairs, two allocations each: the output is bounded by this
/// number, not only by the body size.
pub const MAX_PAIRS: usize = 1000;

/// Why a body could not be decoded. Safe to log and to send back: it names a position, never
/// the content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// `%` not followed by two hex digits, at this byte offset of the body.
    BadEscape(usize),
    /// The decoded pair starting at this byte offset is not UTF-8.
    NotUtf8(usize),
    /// More than [`MAX_PAIRS`] pairs.
    TooMany,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadEscape(at) => write!(f, "bad percent escape at byte {at}"),
            Error::NotUtf8(at) => write!(f, "field at byte {at} is not UTF-8"),
            Error::TooMany => write!(f, "more than {MAX_PAIRS} fields"),
        }
    }
}

impl std::error::Error for Error {}

/// Decoded pairs in body order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Form {
    pairs: Vec<(String, String)>,
}

impl Form {
    /// The value of `key` (exact, case-sensitive, as PHP's `$_POST`). The **last** occurrence
    /// wins, as in PHP's `parse_str`, so we read a body the way Bitrix24's own SDK would.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `key` when present and not empty.
    pub fn non_empty(&self, key: &str) -> Option<&str> {
        self.get(key).filter(|v| !v.is_empty())
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
}

/// Decode a whole body. Empty pairs (`a=1&&b=2`) are skipped; a pair without `=` has an
/// empty value, as in PHP. More than [`MAX_PAIRS`] pairs is an error (PHP would drop the rest
/// with a warning; refusing is clearer).
pub fn parse(body: &[u8]) -> Result<Form, Error> {
    let mut pairs = Vec::new();
    let mut start = 0;
    for part in body.split(|&b| b == b'&') {
        let at = start;
        start += part.len() + 1;
        if part.is_empty() {
            continue;
        }
        if pairs.len() == MAX_PAIRS {
            return Err(Error::TooMany);
        }
        let (k, v, v_at) = match part.iter().position(|&b| b == b'=') {
            Some(i) => (&part[..i], &part[i + 1..], at + i + 1),
            None => (part, &part[..0], at + part.len()),
        };
        let key = decode(k, at)?;
        let value = decode(v, v_at)?;
        pairs.push((key, value));
    }
    Ok(Form { pairs })
}

/// Percent-decode one key or value (`offset` = where it starts in the body, for errors).
fn decode(s: &[u8], offset: usize) -> Result<String, Error> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = |b: Option<&u8>| b.and_then(|&b| (b as char).to_digit(16));
                match (hex(s.get(i + 1)), hex(s.get(i + 2))) {
                    (Some(hi), Some(lo)) => out.push((hi * 16 + lo) as u8),
                    _ => return Err(Error::BadEscape(offset + i)),
                }
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| Error::NotUtf8(offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brackets_stay_flat_keys() {
        let f = parse(b"event=ONEXTERNALCALLSTART&data%5BUSER_ID%5D=19&auth[domain]=a.b").unwrap();
        assert_eq!(f.get("event"), Some("ONEXTERNALCALLSTART"));
        assert_eq!(f.get("data[USER_ID]"), Some("19"));
        assert_eq!(f.get("auth[domain]"), Some("a.b"));
        assert_eq!(f.get("data"), None);
        assert_eq!(f.len(), 3);
    }

    #[test]
    fn percent_and_plus() {
        let f = parse(b"p=%2B79991234567&t=a+b%20c&u=%D0%9F%d1%80&e=").unwrap();
        assert_eq!(f.get("p"), Some("+79991234567"));
        assert_eq!(f.get("t"), Some("a b c"));
        assert_eq!(f.get("u"), Some("Пр"));
        assert_eq!(f.get("e"), Some(""));
        assert_eq!(f.non_empty("e"), None);
        // A literal '+' must be sent as %2B; %2B decodes to '+', never to a space.
        assert_eq!(parse(b"x=%2B+").unwrap().get("x"), Some("+ "));
    }

    #[test]
    fn crlf_survives_decoding_for_the_validators_to_refuse() {
        let f = parse(b"data%5BPHONE_NUMBER%5D=123%0D%0AAction%3A+Command").unwrap();
        assert_eq!(f.get("data[PHONE_NUMBER]"), Some("123\r\nAction: Command"));
    }

    #[test]
    fn empty_pairs_missing_values_and_last_wins() {
        let f = parse(b"&a=1&&b&a=2&").unwrap();
        assert_eq!(f.get("a"), Some("2"));
        assert_eq!(f.get("b"), Some(""));
        assert_eq!(f.len(), 3);
        assert!(parse(b"").unwrap().is_empty());
        // Only the first '=' splits.
        assert_eq!(parse(b"k=a=b").unwrap().get("k"), Some("a=b"));
    }

    #[test]
    fn bad_escapes() {
        assert_eq!(parse(b"a=%"), Err(Error::BadEscape(2)));
        assert_eq!(parse(b"a=%4"), Err(Error::BadEscape(2)));
        assert_eq!(parse(b"a=1&b=%zz"), Err(Error::BadEscape(6)));
        assert_eq!(parse(b"%G0=1"), Err(Error::BadEscape(0)));
    }

    #[test]
    fn pair_count_is_capped() {
        let ok = "a=1&".repeat(MAX_PAIRS);
        assert_eq!(parse(ok.as_bytes()).unwrap().len(), MAX_PAIRS);
        let over = format!("{ok}b=2");
        assert_eq!(parse(over.as_bytes()), Err(Error::TooMany));
        // Empty pairs are not counted.
        let empties = format!("{ok}{}", "&".repeat(5000));
        assert_eq!(parse(empties.as_bytes()).unwrap().len(), MAX_PAIRS);
        assert_eq!(Error::TooMany.to_string(), "more than 1000 fields");
    }

    #[test]
    fn invalid_utf8() {
        assert_eq!(parse(b"a=%FF"), Err(Error::NotUtf8(2)));
        assert_eq!(parse(b"ok=1&%C3=1"), Err(Error::NotUtf8(5)));
        assert_eq!(parse(b"a=\xff"), Err(Error::NotUtf8(2)));
        let e = Error::NotUtf8(7).to_string();
        assert_eq!(e, "field at byte 7 is not UTF-8");
    }
}
