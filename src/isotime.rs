//! ISO-8601 timestamps without a date crate.
//!
//! Bitrix24 parses `CALL_START_DATE` with PHP `strtotime`; without an offset it reads the time
//! in the *portal server's* zone (bitrix24-api.md §10.2). Sending UTC with an explicit `+00:00`
//! is exact wherever the portal is, and Bitrix24 shows it in each user's zone.

/// `2026-11-26T04:44:45+00:00` for milliseconds since the Unix epoch.
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}+00:00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants() {
        assert_eq!(utc(0), "1970-01-01T00:00:00+00:00");
        // The a_inbound_answered capture: epoch 1795668285.289.
        assert_eq!(utc(1_795_668_285_289), "2026-11-26T04:44:45+00:00");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00+00:00");
        assert_eq!(utc(4_107_542_399_000), "2100-02-28T23:59:59+00:00");
    }
}
