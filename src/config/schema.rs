//! Which sections and keys exist, and the "did you mean" for names that do not.

/// Every section and its keys. The names are a contract (see `callme.conf.example`).
pub(super) const SCHEMA: &[(&str, &[&str])] = &[
    (
        "asterisk",
        &[
            "host",
            "port",
            "username",
            "secret",
            "ping_interval",
            "ping_timeout",
            "connect_timeout",
            "reconnect_min",
            "reconnect_max",
            "reconcile_interval",
        ],
    ),
    (
        "bitrix24",
        &[
            "auth",
            "webhook_url",
            "app_token",
            "domain",
            "member_id",
            "timeout",
            "users_refresh",
            "rate",
            "burst",
            "client_id",
            "client_secret",
            "portal",
            "oauth_url",
            "insecure_http",
        ],
    ),
    (
        "calls",
        &[
            "system_name",
            "lines",
            "inbound_contexts",
            "default_user",
            "responsible",
            "static_responsible",
            "crm_create",
            "show_cards_to",
            "add_to_chat",
            "missed_user",
        ],
    ),
    (
        "phone",
        &["country_code", "national_prefix", "national_length"],
    ),
    (
        "http",
        &[
            "listen",
            "ops_listen",
            "ops_token",
            "threads",
            "public_url",
            "max_connections",
            "idle_timeout",
            "request_timeout",
        ],
    ),
    ("state", &["dir", "outbox_warn"]),
    (
        "recording",
        &[
            "mode",
            "source",
            "pbx_root",
            "path_base",
            "public_url",
            "fetch_url",
            "upload_max",
            "wait",
        ],
    ),
    (
        "originate",
        &[
            "channel",
            "context",
            "timeout",
            "caller_id",
            "dial_national",
            "dial_prefix",
            "callback_targets",
            "allow",
            "deny",
            "max_per_user_per_minute",
            "max_per_minute",
        ],
    ),
];

/// The closest allowed name within two edits (or differing only in case), for "did you mean".
pub(super) fn suggest<'a>(word: &str, allowed: &[&'a str]) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    allowed
        .iter()
        .map(|a| (edit_distance(&word, a), *a))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

/// Levenshtein distance, counting an adjacent swap (`hsot`) as one edit like a typist would.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        let keys = ["host", "port", "username", "secret"];
        assert_eq!(suggest("hsot", &keys), Some("host"));
        assert_eq!(suggest("Port", &keys), Some("port"));
        assert_eq!(suggest("user", &keys), None);
        assert_eq!(suggest("secrets", &keys), Some("secret"));
        assert_eq!(suggest("colour", &keys), None);
    }
}
