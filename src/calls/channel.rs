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
}
