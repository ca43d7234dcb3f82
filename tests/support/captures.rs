//! Real captures (`tests/fixtures/*.ami`, `tests/fixtures/pjsip/*.ami`) reshaped for the fake AMI server and for load:
//! the part after login, the same with Asterisk's `Timestamp:` headers, and copies made
//! into independent calls.

use callme::ami::Message;
use callme::calls::{Intent, Tracker};

use super::fixture_path;

/// A capture after its first `FullyBooted`: what Asterisk sent once the capture session was up
/// (its banner, Login response and FullyBooted are the fake server's job). It still ends with
/// the `Response: Goodbye` of the capture's Logoff, a response nobody waits for.
pub fn capture_tail(name: &str) -> Vec<u8> {
    let bytes = std::fs::read(fixture_path(name)).expect("read capture");
    let start = find(&bytes, b"Event: FullyBooted").expect("capture has FullyBooted");
    let end = start + find(&bytes[start..], b"\r\n\r\n").expect("end of FullyBooted") + 4;
    bytes[end..].to_vec()
}

/// `bytes` (AMI messages, each ending in a blank line) cut in two right before the first
/// message whose `Event:` is one of `events`; all in the first part if there is none.
///
/// Live, a phone rings for seconds; a capture pushed in one write rings for microseconds, and
/// a card whose phone stopped ringing before it could be sent is dropped (issue #20). Tests
/// that want the card push the part before the first event that ends a ring ([`RING_ENDS`]),
/// wait for the card at the portal, then push the rest: the ring lasts until the card is up,
/// as it would live.
pub fn split_before(bytes: &[u8], events: &[&str]) -> (Vec<u8>, Vec<u8>) {
    let mut start = 0;
    while start < bytes.len() {
        let end = find(&bytes[start..], b"\r\n\r\n").map_or(bytes.len(), |i| start + i + 4);
        let block = &bytes[start..end];
        let hit = events.iter().any(|e| {
            let line = format!("Event: {e}\r\n");
            block.starts_with(line.as_bytes())
                || find(block, format!("\r\n{line}").as_bytes()).is_some()
        });
        if hit {
            return (bytes[..start].to_vec(), bytes[start..].to_vec());
        }
        start = end;
    }
    (bytes.to_vec(), Vec::new())
}

/// The events that can end a phone's ring: answered or given up (`DialEnd`), picked up by
/// another phone (`Pickup`), hung up.
pub const RING_ENDS: &[&str] = &["DialEnd", "Pickup", "Hangup"];

/// [`capture_tail`] as Asterisk sends it with `timestampevents = yes` (manager.conf): every
/// event after `FullyBooted` carries `Timestamp: SECONDS.MICROS`, its time on the capture's own
/// clock (the `.timing.tsv` sidecar). The daemon then times the call on that clock, so the
/// durations and dates it sends are the capture's, whatever the wall clock says.
/// `callme::replay::parse_bytes` reads the times back from the headers.
pub fn timestamped_tail(name: &str) -> Vec<u8> {
    let cap = callme::replay::load(&fixture_path(name)).expect("capture loads");
    assert_eq!(cap.clock, "timing sidecar", "{name}: needs its sidecar");
    let booted = cap
        .messages
        .iter()
        .position(|t| t.msg.event() == Some("FullyBooted"))
        .expect("capture has FullyBooted");
    let mut bytes = Vec::new();
    for t in &cap.messages[booted + 1..] {
        for (k, v) in t.msg.iter() {
            bytes.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        if t.msg.event().is_some() {
            let stamp = format!("Timestamp: {}.{:03}000\r\n", t.at_ms / 1000, t.at_ms % 1000);
            bytes.extend_from_slice(stamp.as_bytes());
        }
        bytes.extend_from_slice(b"\r\n");
    }
    bytes
}

/// A capture's messages with every Uniqueid, Linkedid, bridge id and channel name made
/// unique to copy `n`, so that `n` copies are `n` independent calls (see [`renumber`]).
pub fn renumbered(capture: &str, n: usize) -> Vec<(Message, u64)> {
    let bytes = std::fs::read(fixture_path(capture)).expect("capture");
    let cap = callme::replay::parse_bytes(&bytes);
    cap.messages
        .iter()
        .map(|t| (renumber(&t.msg, n), t.at_ms))
        .collect()
}

/// `msg` with its Uniqueids, Linkedids and channel names made unique to copy `n`.
pub fn renumber(msg: &Message, n: usize) -> Message {
    let mut m = Message::new();
    for (k, v) in msg.iter() {
        let key = k.to_ascii_lowercase();
        if key.ends_with("channel") && v.contains('-') {
            m.push(k, &renumber_channel(v, n));
        } else if key.ends_with("uniqueid") || key.ends_with("linkedid") {
            m.push(k, &format!("{v}x{n}"));
        } else {
            m.push(k, v);
        }
    }
    m
}

/// A channel name made unique to copy `n` while it still parses as one: the copy number goes
/// into the hex sequence (`SIP/219-00000001` → `SIP/219-0000000100000005`, before a Local
/// channel's `;1`), so the peer (the internal number) stays what it was.
fn renumber_channel(name: &str, n: usize) -> String {
    let Some((head, tail)) = name.rsplit_once('-') else {
        return format!("{name}x{n}");
    };
    let end = tail.find([';', '<']).unwrap_or(tail.len());
    let (seq, rest) = tail.split_at(end);
    if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_hexdigit()) {
        return format!("{name}x{n}");
    }
    format!("{head}-{seq}{n:08x}{rest}")
}

/// Call `n` of a stream of independent calls, answered (capture a) for even `n` and missed
/// (capture b) for odd `n`, fed through `tracker`: the intents it produced. The chan_sip
/// captures (Asterisk 20) and their PJSIP twins (Asterisk 22) take turns: `n % 4` 0 and 1 are
/// chan_sip, 2 and 3 PJSIP.
pub fn alternating_call(tracker: &mut Tracker, n: usize) -> Vec<Intent> {
    let capture = [
        "a_inbound_answered.ami",
        "b_inbound_noanswer.ami",
        "pjsip/a_inbound_answered.ami",
        "pjsip/b_inbound_noanswer.ami",
    ][n % 4];
    let mut out = Vec::new();
    for (msg, at) in renumbered(capture, n) {
        tracker.handle(&msg, at, &mut out);
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `n` copies of the answered inbound call behind an AMI banner, as `callme replay` reads a
/// capture: each copy `spacing_ms` later on the capture clock (`Timestamp:` headers) and with
/// its own Uniqueids, Linkedid and channel names.
pub fn timestamped_calls(n: usize, spacing_ms: u64) -> Vec<u8> {
    let cap = callme::replay::parse_bytes(&timestamped_tail("a_inbound_answered.ami"));
    let mut out = b"Asterisk Call Manager/9.0.0\r\n".to_vec();
    for i in 0..n {
        answered_copy(&cap, i, spacing_ms * i as u64, &mut out);
    }
    out
}

/// Call `n`: the answered inbound capture after login, as the AMI sends it (no timestamps),
/// every Uniqueid, Linkedid and channel name made unique to `n`, responses left out.
pub fn answered_call(n: usize) -> Vec<u8> {
    let cap = callme::replay::parse_bytes(&capture_tail("a_inbound_answered.ami"));
    let mut out = Vec::new();
    answered_copy(&cap, n, 0, &mut out);
    out
}

/// Copy `i` of the events of `cap` onto `out`: Uniqueids, Linkedids and channel names get
/// `x{i}`, and `Timestamp:` headers (where the capture has them) move `shift_ms` later.
fn answered_copy(cap: &callme::replay::Capture, i: usize, shift_ms: u64, out: &mut Vec<u8>) {
    for t in cap.messages.iter().filter(|t| t.msg.event().is_some()) {
        for (k, v) in t.msg.iter() {
            let key = k.to_ascii_lowercase();
            let renumber = key.ends_with("uniqueid")
                || key.ends_with("linkedid")
                || (key.ends_with("channel") && v.contains('-'));
            let v = if key == "timestamp" {
                let at = t.at_ms + shift_ms;
                format!("{}.{:03}000", at / 1000, at % 1000)
            } else if renumber {
                format!("{v}x{i}")
            } else {
                v.to_string()
            };
            out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
}
