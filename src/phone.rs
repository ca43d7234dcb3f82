//! Phone numbers: validation before anything reaches AMI, and normalisation for Bitrix24.
//!
//! Bitrix24 finds a CRM client only if the number is written the way the CRM stores it, and
//! Asterisk trunks deliver the same caller in several forms (`8XXXXXXXXXX`, `+7XXXXXXXXXX`,
//! `XXXXXXXXXX` in Russia). [`normalize`] folds them into one international form (digits only,
//! no `+`) driven by `[phone]` in the config.
//!
//! [`validate`] is the gate for numbers that come from outside (Bitrix24 click-to-call events,
//! the `originate` subcommand) and end up in an AMI action: only digits and one leading `+`,
//! so nothing like `123\r\nAction: Command` can be smuggled into the manager protocol.

use std::fmt;

/// `[phone]` in the config: how numbers are normalised (see [`normalize`]). Defined here, not
/// in `config`, so that this module depends on nothing: the config validator calls
/// [`validate`], and the config re-exports this type as `config::PhoneConfig`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhoneConfig {
    /// 1-3 digits, e.g. `7`.
    pub country_code: String,
    /// National trunk prefix, digits, may be empty; e.g. `8`.
    pub national_prefix: String,
    /// Length of the national significant number, 4-15; e.g. 10.
    pub national_length: usize,
}

impl Default for PhoneConfig {
    /// Russia: `8XXXXXXXXXX` / `+7XXXXXXXXXX`, where most of our users are.
    fn default() -> Self {
        PhoneConfig {
            country_code: "7".to_string(),
            national_prefix: "8".to_string(),
            national_length: 10,
        }
    }
}

/// Fewest digits accepted: short internal numbers like `219` are legal, `12` is not a phone.
pub const MIN_DIGITS: usize = 3;
/// Most digits accepted: E.164 allows 15; 20 leaves room for dial prefixes and extensions.
pub const MAX_DIGITS: usize = 20;

/// Why a number was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Nothing at all.
    Empty,
    /// Something other than digits and one leading `+` (spaces, letters, CR/LF, ...).
    /// Holds the offending input; `Display` escapes it so it is safe to log.
    BadChars(String),
    /// Wrong number of digits (the count is stored).
    Length(usize),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Empty => write!(f, "empty phone number"),
            Error::BadChars(s) => write!(
                f,
                "bad phone number \"{}\" (allowed: digits and an optional leading +)",
                crate::text::escape_short(s, 40)
            ),
            Error::Length(n) => write!(
                f,
                "phone number has {n} digits (allowed: {MIN_DIGITS} to {MAX_DIGITS})"
            ),
        }
    }
}

impl std::error::Error for Error {}

/// Accept only digits with an optional leading `+`, 3–20 digits.
///
/// Nothing is trimmed: a number with spaces or line breaks around it did not come from a
/// well-behaved source and is refused rather than repaired.
pub fn validate(s: &str) -> Result<(), Error> {
    digits_of(s).map(|_| ())
}

/// Normalise a caller number for CRM search and `telephony.externalcall.register`.
///
/// - a leading `+` means the number is already international: the `+` is dropped and nothing
///   else is touched (`+4930123456` → `4930123456`);
/// - national form, `national_prefix` + `national_length` digits (RU `8XXXXXXXXXX`) →
///   `country_code` + NSN (`7XXXXXXXXXX`);
/// - exactly `national_length` digits (`XXXXXXXXXX`) → `country_code` prepended;
/// - already international (`country_code` + `national_length` digits) → unchanged;
/// - anything else (internal numbers like `219`, foreign numbers) → unchanged digits.
///
/// Returns `None` when the input fails [`validate`] (`<unknown>`, `anonymous`, empty, too short
/// or too long), so callers treat it as "no usable number" instead of searching the CRM for
/// garbage.
pub fn normalize(raw: &str, cfg: &PhoneConfig) -> Option<String> {
    let (plus, digits) = digits_of(raw).ok()?;
    if plus {
        return Some(digits.to_string());
    }
    let nl = cfg.national_length;
    let prefix = cfg.national_prefix.as_str();
    let cc = cfg.country_code.as_str();
    if !prefix.is_empty() && digits.len() == prefix.len() + nl {
        if let Some(nsn) = digits.strip_prefix(prefix) {
            return Some(format!("{cc}{nsn}"));
        }
    }
    if digits.len() == nl {
        return Some(format!("{cc}{digits}"));
    }
    // Already international (cc + NSN) or something we do not know how to improve:
    // both are passed through as they are.
    Some(digits.to_string())
}

/// Split off one leading `+` and check the rest: `(had_plus, digits)`.
fn digits_of(s: &str) -> Result<(bool, &str), Error> {
    if s.is_empty() {
        return Err(Error::Empty);
    }
    let (plus, digits) = match s.strip_prefix('+') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::BadChars(s.to_string()));
    }
    if !(MIN_DIGITS..=MAX_DIGITS).contains(&digits.len()) {
        return Err(Error::Length(digits.len()));
    }
    Ok((plus, digits))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ru() -> PhoneConfig {
        PhoneConfig::default()
    }

    #[test]
    fn normalize_russian_forms() {
        let c = ru();
        assert_eq!(normalize("89991234567", &c).as_deref(), Some("79991234567"));
        assert_eq!(
            normalize("+79991234567", &c).as_deref(),
            Some("79991234567")
        );
        assert_eq!(normalize("9991234567", &c).as_deref(), Some("79991234567"));
        assert_eq!(normalize("79991234567", &c).as_deref(), Some("79991234567"));
    }

    #[test]
    fn normalize_leaves_internal_and_foreign_numbers() {
        let c = ru();
        assert_eq!(normalize("219", &c).as_deref(), Some("219"));
        assert_eq!(normalize("+4930123456", &c).as_deref(), Some("4930123456"));
        // Without '+' an 11-digit number not starting with the trunk prefix is kept as is.
        assert_eq!(normalize("49301234567", &c).as_deref(), Some("49301234567"));
        // '+' wins over national rules: +8... is not rewritten to 7...
        assert_eq!(
            normalize("+89991234567", &c).as_deref(),
            Some("89991234567")
        );
    }

    #[test]
    fn normalize_rejects_non_numbers() {
        let c = ru();
        for bad in [
            "<unknown>",
            "anonymous",
            "",
            "+",
            "12",
            "8 999 123 45 67",
            " 219",
        ] {
            assert_eq!(normalize(bad, &c), None, "{bad:?}");
        }
    }

    #[test]
    fn normalize_without_national_prefix() {
        let c = PhoneConfig {
            country_code: "49".into(),
            national_prefix: String::new(),
            national_length: 10,
        };
        assert_eq!(normalize("3012345678", &c).as_deref(), Some("493012345678"));
        assert_eq!(normalize("03012345678", &c).as_deref(), Some("03012345678"));
    }

    #[test]
    fn validate_accepts_numbers() {
        assert_eq!(validate("+79991234567"), Ok(()));
        assert_eq!(validate("219"), Ok(()));
        assert_eq!(validate(&"9".repeat(20)), Ok(()));
    }

    #[test]
    fn validate_rejects() {
        assert_eq!(validate(""), Err(Error::Empty));
        assert_eq!(validate("12"), Err(Error::Length(2)));
        assert_eq!(validate(&"1".repeat(21)), Err(Error::Length(21)));
        assert_eq!(validate("+"), Err(Error::Length(0)));
        assert!(matches!(
            validate("123\r\nAction: Command"),
            Err(Error::BadChars(_))
        ));
        assert!(matches!(validate("12 34"), Err(Error::BadChars(_))));
        assert!(matches!(validate("++79991234567"), Err(Error::BadChars(_))));
        assert!(matches!(validate("7999-123"), Err(Error::BadChars(_))));
        assert!(matches!(validate("１２３"), Err(Error::BadChars(_))));
    }

    #[test]
    fn error_display_is_one_safe_line() {
        let e = validate("123\r\nAction: Command").unwrap_err().to_string();
        assert!(!e.contains('\r') && !e.contains('\n'), "{e}");
        assert!(e.contains("\\r\\n"), "{e}");
        assert_eq!(
            Error::Length(2).to_string(),
            "phone number has 2 digits (allowed: 3 to 20)"
        );
    }
}
