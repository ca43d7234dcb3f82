//! Small text helpers shared by the error messages of several modules.

/// Escape control characters and cut `s` after `max` characters (marking the cut with
/// `...`), so a value quoted in an error message keeps the message on one short line and
/// cannot inject a line of its own into the log.
pub fn escape_short(s: &str, max: usize) -> String {
    let mut out: String = s.chars().take(max).flat_map(char::escape_debug).collect();
    if s.chars().count() > max {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_cuts() {
        assert_eq!(escape_short("a\nb\"c", 10), "a\\nb\\\"c");
        assert_eq!(escape_short("abcdef", 3), "abc...");
        assert_eq!(escape_short("abc", 3), "abc");
        assert_eq!(escape_short("ééé", 2), "éé...");
    }
}
