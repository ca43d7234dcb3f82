//! Toll-fraud guard: which numbers a click-to-call may dial, and how often.
//!
//! One leaked token (the webhook `app_token` or the app's `application_token`) lets whoever
//! holds it make the PBX dial any number it likes: premium-rate and international calls at the
//! company's expense, the classic PBX attack. So every Originate (click-to-call, callback form,
//! `callme originate`) passes [`DialPolicy::check`] first, and the daemon's two webhook paths
//! also pass a [`RateLimiter`].
//!
//! Patterns are matched against the number **exactly as it will be dialled**: the `Exten` of
//! the Originate, after [`crate::originate::dial_number`] (the `[phone]` conversion and
//! `dial_prefix`). What is checked is what Asterisk gets; nothing changes the number after the
//! check.
//!
//! Syntax (a subset of Asterisk's extension patterns, so operators can copy from their
//! dialplan):
//! - without a leading `_`: digits only, an exact number (`89991234567`);
//! - with a leading `_`, one element per digit: `0`-`9` that digit; `X` any digit; `Z` 1-9;
//!   `N` 2-9; `[...]` one digit from a set of digits and ranges (`[1-5]`, `[137]`,
//!   `[0-35-9]`); letters may be lower case;
//! - and, only as the last character: `.` one or more further digits, `!` zero or more.
//!
//! Anything else (`+`, `*`, `#`, letters other than X Z N, `.` in the middle) is refused when
//! the config is loaded, with the line of the key.
//!
//! Deny wins over allow: a number is dialled only if no deny pattern matches and some allow
//! pattern does.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::phone::PhoneConfig;
use crate::text::escape_short;

/// Longest pattern accepted (a phone number is at most 20 digits; a set like `[0-35-9]` takes
/// several characters per digit).
pub const MAX_PATTERN: usize = 64;

/// Most patterns in one list: a policy is a handful of lines, not a number database.
pub const MAX_PATTERNS: usize = 100;

/// The rate-limit window.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Default `max_per_user_per_minute`: a busy agent clicks a number every few seconds at most.
pub const DEFAULT_PER_USER: u32 = 10;

/// Default `max_per_minute`, all employees together.
pub const DEFAULT_OVERALL: u32 = 60;

/// Largest accepted value of either rate limit. It also bounds the limiter's memory: it keeps
/// two timestamps (overall and per employee) per Originate admitted in the last minute, so at
/// most twice `max_per_minute`.
pub const MAX_RATE: u32 = 10_000;

/// Digits 0-9 as bits 0-9.
const ANY: u16 = 0x3ff;

/// What may follow the fixed digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tail {
    /// Nothing: the number has exactly as many digits as the pattern.
    None,
    /// `.`: one or more digits.
    OneOrMore,
    /// `!`: zero or more digits.
    ZeroOrMore,
}

/// One compiled pattern. Displays as it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    /// Per digit position: the set of digits allowed there.
    digits: Vec<u16>,
    tail: Tail,
}

impl Pattern {
    /// Compile `s`. The error says what is wrong and what is allowed; it repeats the pattern
    /// (patterns are not secrets).
    pub fn parse(s: &str) -> Result<Pattern, String> {
        let bad = |why: &str| {
            Err(format!(
                "bad number pattern \"{}\": {why} (allowed: digits for one exact number, or _ \
                 followed by 0-9 X Z N [1-5] and a final . or !, e.g. _8XXXXXXXXXX)",
                escape_short(s, MAX_PATTERN)
            ))
        };
        if s.is_empty() {
            return bad("empty");
        }
        if s.len() > MAX_PATTERN {
            return bad(&format!("longer than {MAX_PATTERN} characters"));
        }
        let Some(body) = s.strip_prefix('_') else {
            if !s.bytes().all(|b| b.is_ascii_digit()) {
                return bad("an exact number has digits only; start a pattern with _");
            }
            return Ok(Pattern {
                text: s.to_string(),
                digits: s.bytes().map(|b| 1u16 << (b - b'0')).collect(),
                tail: Tail::None,
            });
        };
        let bytes = body.as_bytes();
        let mut digits = Vec::new();
        let mut tail = Tail::None;
        let mut i = 0;
        while i < bytes.len() {
            let last = i + 1 == bytes.len();
            match bytes[i] {
                b @ b'0'..=b'9' => digits.push(1u16 << (b - b'0')),
                b'X' | b'x' => digits.push(ANY),
                b'Z' | b'z' => digits.push(ANY & !1),
                b'N' | b'n' => digits.push(ANY & !3),
                b'.' | b'!' if !last => return bad(". and ! are allowed only at the end"),
                b'.' => tail = Tail::OneOrMore,
                b'!' => tail = Tail::ZeroOrMore,
                b'[' => {
                    let Some(len) = bytes[i + 1..].iter().position(|&b| b == b']') else {
                        return bad("[ without ]");
                    };
                    match class(&bytes[i + 1..i + 1 + len]) {
                        Some(set) => digits.push(set),
                        None => return bad("a [set] holds digits and ranges such as 1-5"),
                    }
                    i += len + 1;
                }
                _ => return bad("unexpected character"),
            }
            i += 1;
        }
        if digits.is_empty() && tail != Tail::OneOrMore {
            return bad("matches no number");
        }
        Ok(Pattern {
            text: s.to_string(),
            digits,
            tail,
        })
    }

    /// Whether `number` (the dialled digits) matches.
    pub fn matches(&self, number: &str) -> bool {
        let n = number.as_bytes();
        let fixed = self.digits.len();
        let len_ok = match self.tail {
            Tail::None => n.len() == fixed,
            Tail::OneOrMore => n.len() > fixed,
            Tail::ZeroOrMore => n.len() >= fixed,
        };
        len_ok
            && n.iter().all(u8::is_ascii_digit)
            && n.iter()
                .zip(&self.digits)
                .all(|(&b, &set)| set & (1 << (b - b'0')) != 0)
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The inside of `[...]`: digits and `a-b` ranges. `None` if empty or malformed.
fn class(inner: &[u8]) -> Option<u16> {
    let mut set = 0u16;
    let mut i = 0;
    while i < inner.len() {
        let a = inner[i];
        if !a.is_ascii_digit() {
            return None;
        }
        if inner.get(i + 1) == Some(&b'-') {
            let b = *inner.get(i + 2)?;
            if !b.is_ascii_digit() || b < a {
                return None;
            }
            for d in a..=b {
                set |= 1 << (d - b'0');
            }
            i += 3;
        } else {
            set |= 1 << (a - b'0');
            i += 1;
        }
    }
    (set != 0).then_some(set)
}

/// A comma-separated list of patterns (`[originate] allow` and `deny`). Empty is an empty list.
pub fn parse_list(v: &str) -> Result<Vec<Pattern>, String> {
    let items: Vec<&str> = v
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if items.len() > MAX_PATTERNS {
        return Err(format!(
            "{} patterns (allowed: at most {MAX_PATTERNS})",
            items.len()
        ));
    }
    items.into_iter().map(Pattern::parse).collect()
}

/// Why a number was refused. `Display` is one log line; it names the pattern, never a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A deny pattern matches (holds it).
    Deny(String),
    /// No allow pattern matches.
    NotAllowed,
    /// Too many Originates in the last minute: by this employee (`per_user`), or overall.
    Rate { per_user: bool, limit: u32 },
}

impl Refusal {
    /// The `reason` label of `callme_originate_refused_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Deny(_) => "deny",
            Refusal::NotAllowed => "not_allowed",
            Refusal::Rate { .. } => "rate",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Deny(p) => write!(f, "the number matches [originate] deny pattern {p}"),
            Refusal::NotAllowed => write!(f, "the number matches no [originate] allow pattern"),
            Refusal::Rate {
                per_user: true,
                limit,
            } => write!(
                f,
                "more than {limit} Originates in a minute for this employee \
                 ([originate] max_per_user_per_minute)"
            ),
            Refusal::Rate {
                per_user: false,
                limit,
            } => write!(
                f,
                "more than {limit} Originates in a minute overall ([originate] max_per_minute)"
            ),
        }
    }
}

/// `[originate] allow`, `deny` and the rate limits, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialPolicy {
    pub allow: Vec<Pattern>,
    pub deny: Vec<Pattern>,
    pub max_per_user_per_minute: u32,
    pub max_per_minute: u32,
}

impl DialPolicy {
    /// The defaults for these `[phone]` and `[originate]` settings: [`default_allow`],
    /// [`default_deny`] and the default rates.
    pub fn defaults(phone: &PhoneConfig, dial_national: bool, dial_prefix: &str) -> DialPolicy {
        DialPolicy {
            allow: default_allow(phone, dial_national, dial_prefix),
            deny: default_deny(phone, dial_prefix),
            max_per_user_per_minute: DEFAULT_PER_USER,
            max_per_minute: DEFAULT_OVERALL,
        }
    }

    /// Deny first, then allow.
    pub fn check(&self, dial: &str) -> Result<(), Refusal> {
        if let Some(p) = self.deny.iter().find(|p| p.matches(dial)) {
            return Err(Refusal::Deny(p.to_string()));
        }
        if self.allow.iter().any(|p| p.matches(dial)) {
            Ok(())
        } else {
            Err(Refusal::NotAllowed)
        }
    }
}

fn compile(text: String) -> Pattern {
    // Built from validated config digits only; a failure would be a bug here, and the
    // fallback (a pattern matching nothing useful) fails closed.
    Pattern::parse(&text).unwrap_or(Pattern {
        text,
        digits: vec![0; 1],
        tail: Tail::None,
    })
}

/// The national numbers of `[phone]`, written the way [`crate::originate::dial_number`] dials
/// them: `dial_prefix` + `national_prefix` + `national_length` digits (RU: `_8XXXXXXXXXX`), or
/// with `dial_national = no`, `dial_prefix` + `country_code` + `national_length` digits
/// (`_7XXXXXXXXXX`). Nothing else: foreign and short numbers must be allowed explicitly.
pub fn default_allow(phone: &PhoneConfig, dial_national: bool, dial_prefix: &str) -> Vec<Pattern> {
    let lead = if dial_national {
        &phone.national_prefix
    } else {
        &phone.country_code
    };
    vec![compile(format!(
        "_{dial_prefix}{lead}{}",
        "X".repeat(phone.national_length)
    ))]
}

/// International prefixes and premium ranges, after `dial_prefix`:
/// - everywhere: `00` (the ITU international prefix);
/// - `country_code = 7` (Russia, Kazakhstan): `810` (international through the trunk prefix)
///   and the premium-rate range 809, in both national and international form (`8809`, `7809`);
/// - `country_code = 1` (NANP): `011` (international) and the premium-rate range 900
///   (`1900`).
pub fn default_deny(phone: &PhoneConfig, dial_prefix: &str) -> Vec<Pattern> {
    let p = dial_prefix;
    let mut v = vec![format!("_{p}00.")];
    match phone.country_code.as_str() {
        "7" => {
            v.push(format!("_{p}810."));
            if !phone.national_prefix.is_empty() {
                v.push(format!("_{p}{}809!", phone.national_prefix));
            }
            v.push(format!("_{p}7809!"));
        }
        "1" => {
            v.push(format!("_{p}011."));
            v.push(format!("_{p}1900!"));
        }
        _ => {}
    }
    v.into_iter().map(compile).collect()
}

/// Sliding one-minute windows, per employee and overall. Only admitted Originates are
/// counted: hammering on after a refusal does not push the employee's window further out.
///
/// Memory: at most `max_per_minute` timestamps overall, and the per-employee queues together
/// hold no more (every admitted Originate is in both); empty queues are dropped.
#[derive(Debug)]
pub struct RateLimiter {
    per_user: u32,
    overall: u32,
    state: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    all: VecDeque<Instant>,
    by_key: HashMap<String, VecDeque<Instant>>,
}

impl RateLimiter {
    pub fn new(policy: &DialPolicy) -> RateLimiter {
        RateLimiter {
            per_user: policy.max_per_user_per_minute,
            overall: policy.max_per_minute,
            state: Mutex::new(Window::default()),
        }
    }

    /// Count one Originate for `key` (the employee, or `callback` for the website forms) at
    /// `now`, or refuse it.
    pub fn admit(&self, key: &str, now: Instant) -> Result<(), Refusal> {
        let mut w = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = |at: &Instant| now.saturating_duration_since(*at) < WINDOW;
        while w.all.front().is_some_and(|at| !fresh(at)) {
            w.all.pop_front();
        }
        w.by_key.retain(|_, q| {
            while q.front().is_some_and(|at| !fresh(at)) {
                q.pop_front();
            }
            !q.is_empty()
        });
        if w.all.len() >= self.overall as usize {
            return Err(Refusal::Rate {
                per_user: false,
                limit: self.overall,
            });
        }
        if w.by_key.get(key).map_or(0, VecDeque::len) >= self.per_user as usize {
            return Err(Refusal::Rate {
                per_user: true,
                limit: self.per_user,
            });
        }
        w.all.push_back(now);
        w.by_key.entry(key.to_string()).or_default().push_back(now);
        Ok(())
    }

    /// Timestamps held (for the memory-bound test).
    pub fn held(&self) -> usize {
        let w = self.state.lock().unwrap_or_else(|p| p.into_inner());
        w.all.len() + w.by_key.values().map(VecDeque::len).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn exact_numbers() {
        assert!(p("219").matches("219"));
        assert!(!p("219").matches("2190"));
        assert!(!p("219").matches("21"));
        assert!(!p("219").matches(""));
    }

    #[test]
    fn digit_classes() {
        let pat = p("_8XXXXXXXXXX");
        assert!(pat.matches("89991234567"));
        assert!(!pat.matches("79991234567"));
        assert!(!pat.matches("8999123456"));
        assert!(!pat.matches("899912345678"));
        assert!(p("_Z").matches("1") && !p("_Z").matches("0"));
        assert!(p("_N").matches("2") && !p("_N").matches("1") && !p("_N").matches("0"));
        assert!(p("_n").matches("9") && p("_x").matches("0") && p("_z").matches("9"));
        let set = p("_[1-35]");
        for (d, ok) in [
            ("0", false),
            ("1", true),
            ("3", true),
            ("4", false),
            ("5", true),
        ] {
            assert_eq!(set.matches(d), ok, "{d}");
        }
        assert!(p("_[0-35-9]X").matches("60") && !p("_[0-35-9]X").matches("40"));
        assert!(p("_[7]").matches("7"));
    }

    #[test]
    fn tails() {
        let dot = p("_810.");
        assert!(dot.matches("8101"));
        assert!(dot.matches("81049301234567"));
        assert!(!dot.matches("810"));
        let bang = p("_8809!");
        assert!(bang.matches("8809"));
        assert!(bang.matches("88091234567"));
        assert!(!bang.matches("880"));
        assert!(p("_.").matches("1") && !p("_.").matches(""));
        assert!(p("_X!").matches("1234"));
    }

    #[test]
    fn non_digits_never_match() {
        for pat in ["_X.", "_X!", "_XXX", "123"] {
            for n in ["12a", "+123", "1 2", "12\r\n"] {
                assert!(!p(pat).matches(n), "{pat} {n:?}");
            }
        }
    }

    #[test]
    fn bad_patterns_are_refused_with_the_reason() {
        for (bad, why) in [
            ("", "empty"),
            ("_", "matches no number"),
            ("_!", "matches no number"),
            ("+7999", "digits only"),
            ("8X", "digits only"),
            ("_8X.X", "only at the end"),
            ("_8!.", "only at the end"),
            ("_8[1-", "without ]"),
            ("_8[]", "[set]"),
            ("_8[5-1]", "[set]"),
            ("_8[a]", "[set]"),
            ("_8[1-]", "[set]"),
            ("_8*", "unexpected"),
            ("_8#", "unexpected"),
            ("_+7", "unexpected"),
            ("_8Y", "unexpected"),
            ("_8 9", "unexpected"),
            ("_8é", "unexpected"),
        ] {
            let e = Pattern::parse(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
            assert!(e.contains("allowed:"), "{e}");
        }
        let long = format!("_{}", "X".repeat(MAX_PATTERN));
        assert!(Pattern::parse(&long).unwrap_err().contains("longer than"));
        let e = Pattern::parse("a\r\nb").unwrap_err();
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn lists() {
        let v = parse_list(" _8XXXXXXXXXX , 219,").unwrap();
        assert_eq!(
            v.iter().map(Pattern::as_str).collect::<Vec<_>>(),
            ["_8XXXXXXXXXX", "219"]
        );
        assert!(parse_list("").unwrap().is_empty());
        assert!(parse_list("_8X, _+").is_err());
        let many = vec!["1"; MAX_PATTERNS + 1].join(",");
        assert!(parse_list(&many).unwrap_err().contains("at most"));
    }

    fn ru() -> PhoneConfig {
        PhoneConfig::default()
    }

    #[test]
    fn russian_defaults() {
        let d = DialPolicy::defaults(&ru(), true, "");
        assert_eq!(d.check("89991234567"), Ok(()));
        assert_eq!(d.check("84951234567"), Ok(()));
        assert_eq!(d.check("88001234567"), Ok(()));
        assert_eq!(d.check("88091234567"), Err(Refusal::Deny("_8809!".into())));
        assert_eq!(
            d.check("81049301234567"),
            Err(Refusal::Deny("_810.".into()))
        );
        assert_eq!(d.check("0049301234567"), Err(Refusal::Deny("_00.".into())));
        // Foreign numbers come out of dial_number as international digits: not allowed.
        assert_eq!(d.check("493012345678"), Err(Refusal::NotAllowed));
        assert_eq!(d.check("79991234567"), Err(Refusal::NotAllowed));
        // Short numbers (internal, emergency, service) are not allowed by default.
        assert_eq!(d.check("219"), Err(Refusal::NotAllowed));
        assert_eq!(d.check("112"), Err(Refusal::NotAllowed));

        let intl = DialPolicy::defaults(&ru(), false, "9");
        assert_eq!(intl.check("979991234567"), Ok(()));
        assert_eq!(intl.check("89991234567"), Err(Refusal::NotAllowed));
        assert_eq!(
            intl.check("978091234567"),
            Err(Refusal::Deny("_97809!".into()))
        );
        assert_eq!(
            intl.check("98101234567"),
            Err(Refusal::Deny("_9810.".into()))
        );
    }

    #[test]
    fn other_countries_defaults() {
        let de = PhoneConfig {
            country_code: "49".into(),
            national_prefix: "0".into(),
            national_length: 10,
        };
        let d = DialPolicy::defaults(&de, true, "");
        assert_eq!(d.check("03012345678"), Ok(()));
        assert_eq!(d.check("0044201234567"), Err(Refusal::Deny("_00.".into())));
        let us = PhoneConfig {
            country_code: "1".into(),
            national_prefix: "1".into(),
            national_length: 10,
        };
        let d = DialPolicy::defaults(&us, true, "");
        assert_eq!(d.check("12125551234"), Ok(()));
        assert_eq!(d.check("19005551234"), Err(Refusal::Deny("_1900!".into())));
        assert_eq!(
            d.check("01144201234567"),
            Err(Refusal::Deny("_011.".into()))
        );
        // No trunk prefix configured: national numbers are the bare NSN.
        let np = PhoneConfig {
            national_prefix: String::new(),
            ..ru()
        };
        assert_eq!(
            DialPolicy::defaults(&np, true, "").check("9991234567"),
            Ok(())
        );
    }

    #[test]
    fn deny_wins_over_allow() {
        let d = DialPolicy {
            allow: parse_list("_X.").unwrap(),
            deny: parse_list("_8809!, 112").unwrap(),
            ..DialPolicy::defaults(&ru(), true, "")
        };
        assert_eq!(d.check("493012345678"), Ok(()));
        assert_eq!(d.check("112"), Err(Refusal::Deny("112".into())));
        assert!(matches!(d.check("88090000000"), Err(Refusal::Deny(_))));
        let none = DialPolicy {
            allow: Vec::new(),
            ..d
        };
        assert_eq!(none.check("89991234567"), Err(Refusal::NotAllowed));
    }

    #[test]
    fn refusal_labels() {
        assert_eq!(Refusal::Deny("x".into()).reason(), "deny");
        assert_eq!(Refusal::NotAllowed.reason(), "not_allowed");
        let rate = Refusal::Rate {
            per_user: true,
            limit: 3,
        };
        assert_eq!(rate.reason(), "rate");
        assert!(rate.to_string().contains("max_per_user_per_minute"));
    }

    fn limiter(per_user: u32, overall: u32) -> RateLimiter {
        RateLimiter::new(&DialPolicy {
            max_per_user_per_minute: per_user,
            max_per_minute: overall,
            ..DialPolicy::defaults(&ru(), true, "")
        })
    }

    #[test]
    fn per_user_limit_slides() {
        let l = limiter(2, 100);
        let t0 = Instant::now();
        assert_eq!(l.admit("19", t0), Ok(()));
        assert_eq!(l.admit("19", t0 + Duration::from_secs(10)), Ok(()));
        let refused = l.admit("19", t0 + Duration::from_secs(20));
        assert_eq!(
            refused,
            Err(Refusal::Rate {
                per_user: true,
                limit: 2
            })
        );
        // Another employee is not affected.
        assert_eq!(l.admit("7", t0 + Duration::from_secs(20)), Ok(()));
        // The first one leaves the window after 60 s.
        assert_eq!(l.admit("19", t0 + Duration::from_secs(60)), Ok(()));
        assert!(l.admit("19", t0 + Duration::from_secs(61)).is_err());
    }

    #[test]
    fn overall_limit_and_bounded_memory() {
        let l = limiter(1000, 5);
        let t0 = Instant::now();
        let mut admitted = 0;
        for i in 0..10_000u32 {
            let at = t0 + Duration::from_millis(u64::from(i) * 7);
            if l.admit(&format!("user{i}"), at).is_ok() {
                admitted += 1;
            }
            assert!(l.held() <= 10, "{}", l.held());
        }
        // 70 s of attempts: 5 in the first minute, 5 more after it slid.
        assert_eq!(admitted, 10);
        assert_eq!(
            l.admit("x", t0 + Duration::from_millis(69_999)),
            Err(Refusal::Rate {
                per_user: false,
                limit: 5
            })
        );
    }
}
