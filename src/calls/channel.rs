//! Channel names → internal numbers.
//!
//! Asterisk names channels `TECH/resource-sequence` (`SIP/219-00000001`, `PJSIP/219-0000002a`),
//! `Local/exten@context-sequence;1|2` for Local channels (FreePBX follow-me and ring groups), and
//! `IAX2/219-1234`. The resource is the peer (endpoint) name, which on a PBX is the internal
//! number for a desk phone and an arbitrary name for a trunk.

/// The peer or Local extension behind a channel name, without technology or sequence suffix.
/// `None` for names that do not look like a channel (`SIP/219` dial strings are accepted).
pub fn peer(name: &str) -> Option<&str> {
    let (tech, rest) = name.split_once('/')?;
    if tech.eq_ignore_ascii_case("Local") {
        // Local/219@from-internal-00000005;1
        let (exten, _) = rest.split_once('@')?;
        return Some(exten);
    }
    // Asterisk 1.8/11 masquerades rename channels `…<MASQ>` / `…<ZOMBIE>` (ami.md §6).
    let rest = rest.split('<').next().unwrap_or(rest);
    // The sequence suffix is after the LAST '-': peers may contain '-' themselves.
    let resource = match rest.rsplit_once('-') {
        Some((peer, seq)) if !seq.is_empty() && seq.bytes().all(|b| b.is_ascii_hexdigit()) => peer,
        _ => rest,
    };
    Some(resource)
}

/// The number in the dial string of a trunk leg (`DialBegin` `DialString`): chan_sip's
/// `Dial(SIP/trunk/79991234567)` gives `trunk/79991234567`, PJSIP's
/// `Dial(PJSIP/79991234567@trunk)` gives `79991234567@trunk`, and a PJSIP URI dial
/// (`Dial(PJSIP/trunk/sip:79991234567@host)`) gives `trunk/sip:79991234567@host`. Whatever
/// comes back still has to look like a number to be used.
pub fn dialled_number(dial_string: &str) -> &str {
    let last = dial_string.rsplit('/').next().unwrap_or("");
    let user = last.split('@').next().unwrap_or("");
    user.strip_prefix("sips:")
        .or_else(|| user.strip_prefix("sip:"))
        .unwrap_or(user)
}

/// Whether `peer` looks like an internal number: 1–6 digits. Used only until the Bitrix24 user
/// directory is loaded; afterwards the directory decides (an internal number is one that maps to
/// an active Bitrix24 user).
pub fn looks_internal(peer: &str) -> bool {
    (1..=6).contains(&peer.len()) && peer.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(peer("SIP/219-00000001"), Some("219"));
        assert_eq!(peer("PJSIP/219-0000002a"), Some("219"));
        assert_eq!(peer("IAX2/219-1234"), Some("219"));
        assert_eq!(peer("Local/219@from-internal-00000005;1"), Some("219"));
        assert_eq!(peer("SIP/my-trunk-0000000a"), Some("my-trunk"));
        assert_eq!(peer("SIP/trunk-00000000"), Some("trunk"));
        assert_eq!(peer("SIP/219"), Some("219"));
        assert_eq!(peer("SIP/219-00000001<ZOMBIE>"), Some("219"));
        assert_eq!(peer("garbage"), None);
        assert!(looks_internal("219"));
        assert!(!looks_internal("trunk"));
        assert!(!looks_internal("79991234567"));
        assert!(!looks_internal(""));
    }

    #[test]
    fn dial_strings() {
        // The w/x captures' trunk legs on chan_sip and on PJSIP (ami-captures/pjsip/README.md).
        assert_eq!(dialled_number("trunk/79997654321"), "79997654321");
        assert_eq!(dialled_number("79997654321@trunk"), "79997654321");
        assert_eq!(
            dialled_number("trunk/sip:79997654321@10.0.0.1"),
            "79997654321"
        );
        assert_eq!(dialled_number("trunk/sips:+79997654321@h"), "+79997654321");
        assert_eq!(dialled_number("220"), "220");
        assert_eq!(dialled_number(""), "");
    }
}
