//! Value parsers: `Ok(value)` or `Err("what is wrong (what is allowed)")`. They never see the
//! key name or the file; the validator adds `FILE:LINE: [section] key = "value": ` in front.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::ini;
use super::secret::Secret;
use super::types::MIB;

/// Longest accepted seconds value: one day. Anything longer is a typo (`3000` for `300`?) and
/// would also make the daemon look hung.
const MAX_SECS: u64 = 86_400;

/// Placeholders a template may use, and whether each one is allowed.
pub(super) fn check_placeholders(v: &str, allowed: &[&str]) -> Result<(), String> {
    let mut rest = v;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            return Err("has a `{` without `}`".to_string());
        };
        let name = &rest[open + 1..open + close];
        if !allowed.contains(&name) {
            return Err(format!("unknown placeholder {{{}}}", escape_short(name)));
        }
        rest = &rest[open + close + 1..];
    }
    if rest.contains('}') {
        return Err("has a `}` without `{`".to_string());
    }
    Ok(())
}

/// `tech/data` with `{inner}`: `Local/{inner}@from-internal`, `PJSIP/{inner}`, `SIP/{inner}`.
/// Only characters that appear in channel names, so the template cannot smuggle anything
/// into the action (AMI splits nothing here, but a space or comma is always a mistake).
pub(super) fn parse_channel_template(v: &str) -> Result<String, String> {
    const ALLOWED: &str =
        "allowed: TECH/DATA with {inner}, e.g. Local/{inner}@from-internal or PJSIP/{inner}";
    let ok_chars = v.bytes().all(|b| {
        b.is_ascii_alphanumeric() || matches!(b, b'/' | b'@' | b'_' | b'.' | b'-' | b'{' | b'}')
    });
    if !ok_chars {
        return Err(format!(
            "has characters a channel name cannot have ({ALLOWED})"
        ));
    }
    check_placeholders(v, &["inner"]).map_err(|e| format!("{e} ({ALLOWED})"))?;
    if !v.contains("{inner}") {
        return Err(format!("does not contain {{inner}} ({ALLOWED})"));
    }
    match v.split_once('/') {
        Some((tech, data)) if !tech.is_empty() && !data.is_empty() && !tech.contains('{') => {
            Ok(v.to_string())
        }
        _ => Err(format!("is not TECH/DATA ({ALLOWED})")),
    }
}

/// The caller ID template: `{number}`, `"Client" <{number}>`, `{inner}`...
pub(super) fn parse_caller_id_template(v: &str) -> Result<String, String> {
    const ALLOWED: &str =
        "allowed: text with {number} and/or {inner}, e.g. {number} or \"CRM\" <{number}>";
    if v.chars().any(char::is_control) {
        return Err(format!("has control characters ({ALLOWED})"));
    }
    if v.len() > 80 {
        return Err(format!("is longer than 80 characters ({ALLOWED})"));
    }
    check_placeholders(v, &["number", "inner"]).map_err(|e| format!("{e} ({ALLOWED})"))?;
    Ok(v.to_string())
}

pub(super) fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

pub(super) fn all_digits(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit())
}

/// Seconds, whole or with up to three decimals (`10`, `2.5`), more than 0, at most a day.
/// Parsed by hand into milliseconds so no float rounding or `Duration` panic is possible.
pub(super) fn parse_secs(v: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "not a number of seconds (allowed: more than 0 and at most {MAX_SECS}, e.g. 10 or 2.5)"
        )
    };
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if int.is_empty() || int.len() > 6 || !all_digits(int) || frac.len() > 3 || !all_digits(frac) {
        return Err(bad());
    }
    let whole: u64 = int.parse().map_err(|_| bad())?;
    let millis: u64 = format!("{frac:0<3}").parse().map_err(|_| bad())?;
    let total = whole * 1000 + millis;
    if total == 0 || total > MAX_SECS * 1000 {
        return Err(bad());
    }
    Ok(Duration::from_millis(total))
}

/// An absolute directory, normalised to have no trailing `/` and no `.`/`..` components: the
/// recordings root that every attached file must stay inside.
pub(super) fn parse_root(v: &str) -> Result<PathBuf, String> {
    use std::path::Component;
    let p = PathBuf::from(v);
    let clean = p
        .components()
        .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if p.is_absolute() && clean {
        Ok(p.components().collect())
    } else {
        Err("not an absolute directory (allowed: a path starting with /, without . or .., e.g. /var/spool/asterisk)".to_string())
    }
}

/// An `http(s)://` base URL, returned with a trailing `/` so a relative path can be appended.
/// No `user:password@`, query or fragment: such URLs would end up in logs.
pub(super) fn parse_base_url(v: &str) -> Result<String, String> {
    const ALLOWED: &str = "allowed: http:// or https:// URL of the recordings root, e.g. https://pbx.example.com/recordings/";
    let rest = v
        .strip_prefix("https://")
        .or_else(|| v.strip_prefix("http://"))
        .ok_or_else(|| format!("must start with https:// or http:// ({ALLOWED})"))?;
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() {
        return Err(format!("has no host name ({ALLOWED})"));
    }
    if host.contains('@') || v.contains(['?', '#']) || v.chars().any(char::is_whitespace) {
        return Err(format!(
            "must not contain user:password@, `?`, `#` or spaces ({ALLOWED})"
        ));
    }
    Ok(format!("{}/", v.trim_end_matches('/')))
}

/// Megabytes (MiB), whole or with up to three decimals (`10`, `0.5`), more than 0, at most
/// 1024; returned in bytes.
pub(super) fn parse_mib(v: &str) -> Result<u64, String> {
    let bad = || {
        "not a size in megabytes (allowed: more than 0 and at most 1024, e.g. 10 or 0.5)"
            .to_string()
    };
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if int.is_empty() || int.len() > 4 || !all_digits(int) || frac.len() > 3 || !all_digits(frac) {
        return Err(bad());
    }
    let whole: u64 = int.parse().map_err(|_| bad())?;
    let thousandths: u64 = format!("{frac:0<3}").parse().map_err(|_| bad())?;
    let milli = whole * 1000 + thousandths;
    if milli == 0 || milli > 1024 * 1000 {
        return Err(bad());
    }
    Ok(milli * MIB / 1000)
}

/// A whole number in `min..=max`.
pub(super) fn parse_number<T>(v: &str, min: T, max: T) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + fmt::Display + Copy,
{
    let bad = || format!("not a whole number from {min} to {max} (allowed: {min}-{max})");
    if !all_digits(v) || v.is_empty() {
        return Err(bad());
    }
    match v.parse::<T>() {
        Ok(n) if n >= min && n <= max => Ok(n),
        _ => Err(bad()),
    }
}

pub(super) fn parse_port(v: &str) -> Result<u16, String> {
    parse_number(v, 1, u16::MAX)
}

pub(super) fn parse_burst(v: &str) -> Result<u32, String> {
    parse_number(v, 1, u32::MAX)
}

pub(super) fn parse_rate(v: &str) -> Result<f64, String> {
    match v.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 && r <= 1000.0 => Ok(r),
        _ => Err(
            "not a rate (allowed: requests per second, more than 0 and at most 1000, e.g. 2 or 0.5)"
                .to_string(),
        ),
    }
}

/// The usual spellings of PBX admins: `yes`/`no` as in Asterisk, and the rest for good measure.
pub(super) fn parse_bool(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "yes" | "true" | "on" | "1" => Ok(true),
        "no" | "false" | "off" | "0" => Ok(false),
        _ => Err("not a yes/no value (allowed: yes, no, true, false, on, off, 1, 0)".to_string()),
    }
}

pub(super) fn parse_host(v: &str) -> Result<String, String> {
    let ok = !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'));
    if ok {
        Ok(v.to_string())
    } else {
        Err("not a host (allowed: a host name or IP address, e.g. 127.0.0.1)".to_string())
    }
}

pub(super) fn parse_username(v: &str) -> Result<String, String> {
    if v.chars().any(char::is_whitespace) {
        Err(
            "contains spaces (allowed: the user name of a [section] in Asterisk's manager.conf)"
                .to_string(),
        )
    } else {
        Ok(v.to_string())
    }
}

/// `[http] ops_token`: sent in an `Authorization: Bearer` header, so visible ASCII without
/// spaces; at least 16 characters, so it cannot be guessed. The error never repeats it.
pub(super) fn parse_ops_token(v: &str) -> Result<Secret, String> {
    if v.len() >= 16 && v.len() <= 256 && v.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(Secret::new(v))
    } else {
        Err("not a usable token (allowed: 16 to 256 visible ASCII characters without spaces, e.g. the output of `openssl rand -hex 24`)".to_string())
    }
}

/// `[bitrix24] portal`: a host name with an optional `:port` (a self-hosted Bitrix24 on a
/// port of its own), as the portal sends it in `auth[domain]`.
pub(super) fn parse_portal(v: &str) -> Result<String, String> {
    let (host, port) = v.rsplit_once(':').unwrap_or((v, ""));
    let port_ok = v == host || port.parse::<u16>().is_ok_and(|p| p > 0);
    match parse_domain(host) {
        Ok(_) if port_ok => Ok(v.to_ascii_lowercase()),
        _ => Err("not a portal (allowed: the portal's host name, optionally with :port, e.g. portal.bitrix24.ru, without https://)".to_string()),
    }
}

pub(super) fn parse_domain(v: &str) -> Result<String, String> {
    let ok = v
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
        && v.contains('.');
    if ok {
        Ok(v.to_string())
    } else {
        Err("not a domain (allowed: the portal's host name only, e.g. portal.bitrix24.ru, without https://)".to_string())
    }
}

/// `[http] public_url`: like [`parse_base_url`], with a message about this key.
pub(super) fn parse_public_url(v: &str) -> Result<String, String> {
    parse_base_url(v).map_err(|e| {
        e.replace(
            "URL of the recordings root, e.g. https://pbx.example.com/recordings/",
            "URL where Bitrix24 reaches this server, e.g. https://pbx.example.com/callme/",
        )
    })
}

/// `[bitrix24] oauth_url`: an `http(s)://` URL without credentials, query or fragment.
pub(super) fn parse_oauth_url(v: &str) -> Result<String, String> {
    parse_base_url(v).map_err(|e| {
        e.replace(
            "URL of the recordings root, e.g. https://pbx.example.com/recordings/",
            "URL of the OAuth token endpoint, e.g. https://oauth.bitrix.info/oauth/token/",
        )
    })
}

/// `client_id` of a local application, e.g. `local.5f1a2b3c4d5e6.12345678`.
pub(super) fn parse_client_id(v: &str) -> Result<String, String> {
    if v.len() <= 128
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Ok(v.to_string())
    } else {
        Err("not a client_id (allowed: the application code shown by Bitrix24, e.g. local.5f1a2b3c4d5e6.12345678)".to_string())
    }
}

pub(super) fn parse_member_id(v: &str) -> Result<String, String> {
    if v.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(v.to_string())
    } else {
        Err("not a member_id (allowed: letters and digits, as sent in auth[member_id])".to_string())
    }
}

/// `EXTERNAL_CALL_ID` prefix: characters that survive any URL or log unescaped.
pub(super) fn parse_system_name(v: &str) -> Result<String, String> {
    let ok = (1..=32).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(v.to_string())
    } else {
        Err("not a system name (allowed: 1-32 characters from A-Z a-z 0-9 _ . -)".to_string())
    }
}

/// External numbers (DIDs): the same rule as numbers sent to AMI.
pub(super) fn check_phone(v: &str) -> Result<(), String> {
    match crate::phone::validate(v) {
        Ok(()) => Ok(()),
        Err(e @ crate::phone::Error::BadChars(_)) => Err(e.to_string()),
        Err(e) => Err(format!("{}: {e}", escape_short(v))),
    }
}

/// Internal (extension) numbers: 1-6 digits, as FreePBX allows.
pub(super) fn check_internal(v: &str) -> Result<(), String> {
    if (1..=6).contains(&v.len()) && all_digits(v) {
        Ok(())
    } else {
        Err(format!(
            "{:?} is not an internal number (allowed: 1-6 digits, e.g. 100)",
            escape_short(v)
        ))
    }
}

pub(super) fn check_context(v: &str) -> Result<(), String> {
    let ok = v
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'+' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{:?} is not a dialplan context name (allowed: letters, digits, _ . - + @)",
            escape_short(v)
        ))
    }
}

/// A comma-separated list whose items each pass `check`.
pub(super) fn parse_list(
    v: &str,
    check: impl Fn(&str) -> Result<(), String>,
) -> Result<Vec<String>, String> {
    let items = ini::split_list(v);
    for item in &items {
        check(item)?;
    }
    Ok(items)
}

/// `8001231231:219, 8001231232:220` → `[("8001231231", "219"), ...]`.
pub(super) fn parse_static_responsible(v: &str) -> Result<Vec<(String, String)>, String> {
    const ALLOWED: &str =
        "allowed: LINE:EXT pairs separated by commas, e.g. 8001231231:219, 8001231232:220";
    let mut pairs: Vec<(String, String)> = Vec::new();
    for item in ini::split_list(v) {
        let Some((line, ext)) = item.split_once(':') else {
            return Err(format!(
                "{:?} is not LINE:EXT ({ALLOWED})",
                escape_short(&item)
            ));
        };
        let (line, ext) = (line.trim(), ext.trim());
        check_phone(line).map_err(|e| format!("{e} ({ALLOWED})"))?;
        check_internal(ext).map_err(|e| format!("{e} ({ALLOWED})"))?;
        if pairs.iter().any(|(l, _)| l == line) {
            return Err(format!(
                "line {line} is listed twice (allowed: one EXT per LINE)"
            ));
        }
        pairs.push((line.to_string(), ext.to_string()));
    }
    Ok(pairs)
}

/// `LINE:EXT` pairs for callback forms. Bitrix24's `LINE_NUMBER` is whatever the line was
/// created with (often a short id such as `7`), so LINE is any short word, not a phone number.
pub(super) fn parse_callback_targets(v: &str) -> Result<Vec<(String, String)>, String> {
    const ALLOWED: &str = "allowed: LINE:EXT pairs separated by commas, e.g. 7:219, 8001231231:400";
    let mut pairs: Vec<(String, String)> = Vec::new();
    for item in ini::split_list(v) {
        let Some((line, ext)) = item.split_once(':') else {
            return Err(format!(
                "{:?} is not LINE:EXT ({ALLOWED})",
                escape_short(&item)
            ));
        };
        let (line, ext) = (line.trim(), ext.trim());
        let line_ok = !line.is_empty()
            && line.len() <= 50
            && line
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'.' | b'_' | b'-'));
        if !line_ok {
            return Err(format!(
                "{:?} is not a line number ({ALLOWED})",
                escape_short(line)
            ));
        }
        check_internal(ext).map_err(|e| format!("{e} ({ALLOWED})"))?;
        if pairs.iter().any(|(l, _)| l == line) {
            return Err(format!(
                "line {line} is listed twice (allowed: one EXT per LINE)"
            ));
        }
        pairs.push((line.to_string(), ext.to_string()));
    }
    Ok(pairs)
}

/// A value quoted in a config error: escaped and cut after 60 characters.
pub(super) fn escape_short(s: &str) -> String {
    crate::text::escape_short(s, 60)
}
