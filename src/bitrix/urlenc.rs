//! Percent-encoding for the query strings we build by hand: batch commands (`api`), OAuth
//! refresh queries (`oauth`) and recording URLs (`record`). Its own file so that those
//! modules share it without importing each other.

/// Percent-encoding of everything but RFC 3986 unreserved characters (`+` becomes `%2B`, so
/// a phone number survives `parse_str`). Shared by batch commands, OAuth refresh queries and
/// recording URLs.
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_query_values() {
        assert_eq!(url_encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
        assert_eq!(url_encode("local.1-2_3~"), "local.1-2_3~");
        assert_eq!(url_encode("+79991234567"), "%2B79991234567");
    }
}
