//! A real capture as the template of one call: its messages cut into literal text and the
//! call's identities (Uniqueids and Linkedids, channel-name suffixes, bridge ids, the caller's
//! number), so that any number of copies can be rendered, each a call of its own with the
//! capture's own event order and fields. The traffic generator (`traffic.rs`) and the replay
//! bench (`benches/replay_rss.rs`, which includes this file alone) both render from it.

use std::cmp::Reverse;
use std::io::Write;
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Token {
    Uniqueid(usize),
    /// A channel name's `-XXXXXXXX` suffix, dash included.
    Suffix(usize),
    Bridge(usize),
    Caller,
}

#[derive(Clone, Debug)]
pub enum Piece {
    Lit(String),
    Tok(Token),
}

/// One message of the call: when (ms after the call's first message) and its fields.
#[derive(Debug)]
pub struct TEvent {
    pub offset_ms: u64,
    pub fields: Vec<(String, Vec<Piece>)>,
}

#[derive(Debug)]
pub struct Template {
    pub events: Vec<TEvent>,
    /// Index of the first event of the call's end (its first hangup request): where an
    /// endless call is held.
    pub end_at: usize,
    /// Which uniqueid token is the call's Linkedid.
    pub linked: usize,
}

/// The caller's number in every inbound capture.
pub const CAPTURE_CALLER: &str = "79991234567";

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'.'
}

fn is_hex8(s: &str) -> bool {
    s.len() == 8 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Template {
    /// The call of the capture at `path`: its messages after the capture session's own login.
    pub fn load(path: &Path) -> Template {
        let cap = callme::replay::load(path).expect("load capture");
        let msgs: Vec<_> = cap
            .messages
            .into_iter()
            // The capture session's own login (FullyBooted, SuccessfulAuth of the AMI service)
            // is not part of the call.
            .filter(|t| {
                t.msg.event().is_some_and(|e| {
                    e != "FullyBooted"
                        && !(e == "SuccessfulAuth" && t.msg.get("Service") == Some("AMI"))
                })
            })
            .collect();
        let t0 = msgs.first().map_or(0, |t| t.at_ms);

        // The identities this capture uses.
        let mut uniqueids: Vec<String> = Vec::new();
        let mut suffixes: Vec<String> = Vec::new();
        let mut bridges: Vec<String> = Vec::new();
        let push = |v: &mut Vec<String>, s: &str| {
            if !s.is_empty() && !v.iter().any(|x| x == s) {
                v.push(s.to_string());
            }
        };
        for t in &msgs {
            for (k, v) in t.msg.iter() {
                let k = k.to_ascii_lowercase();
                if k.ends_with("bridgeuniqueid") {
                    push(&mut bridges, v);
                } else if k.ends_with("uniqueid") || k.ends_with("linkedid") {
                    if v.contains('.') {
                        push(&mut uniqueids, v);
                    }
                } else if k.ends_with("channel") {
                    if let Some(i) = v.rfind('-') {
                        let hex = v[i + 1..].split(';').next().unwrap_or("");
                        if is_hex8(hex) {
                            push(&mut suffixes, &format!("-{hex}"));
                        }
                    }
                }
            }
        }
        let mut tokens: Vec<(String, Token)> = Vec::new();
        let numbered = |v: &[String], f: fn(usize) -> Token| -> Vec<(String, Token)> {
            v.iter()
                .enumerate()
                .map(|(j, s)| (s.clone(), f(j)))
                .collect()
        };
        tokens.extend(numbered(&uniqueids, Token::Uniqueid));
        tokens.extend(numbered(&suffixes, Token::Suffix));
        tokens.extend(numbered(&bridges, Token::Bridge));
        tokens.push((CAPTURE_CALLER.to_string(), Token::Caller));
        // Longest first: `1795668285.10` before `1795668285.1`.
        tokens.sort_by_key(|(s, _)| Reverse(s.len()));

        let events: Vec<TEvent> = msgs
            .iter()
            .map(|t| TEvent {
                offset_ms: t.at_ms - t0,
                fields: t
                    .msg
                    .iter()
                    .map(|(k, v)| (k.to_string(), split(v, &tokens)))
                    .collect(),
            })
            .collect();
        let end_at = msgs
            .iter()
            .position(|t| {
                matches!(
                    t.msg.event(),
                    Some("HangupRequest" | "SoftHangupRequest" | "Hangup")
                )
            })
            .unwrap_or(msgs.len());
        let first_linked = msgs
            .iter()
            .find_map(|t| t.msg.get("Linkedid"))
            .expect("capture has a Linkedid");
        let linked = uniqueids
            .iter()
            .position(|u| u == first_linked)
            .expect("Linkedid is a known uniqueid");
        Template {
            events,
            end_at,
            linked,
        }
    }
}

/// Cut a value into literal text and tokens. A token counts only as a whole word: not inside
/// a longer number or name (a suffix token carries its own `-`, so only its end is checked).
fn split(value: &str, tokens: &[(String, Token)]) -> Vec<Piece> {
    let b = value.as_bytes();
    let mut out = Vec::new();
    let mut lit = String::new();
    let mut i = 0;
    'scan: while i < b.len() {
        for (tok, kind) in tokens {
            if !value[i..].starts_with(tok.as_str()) {
                continue;
            }
            let starts_ok = matches!(kind, Token::Suffix(_)) || i == 0 || !is_word(b[i - 1]);
            let end = i + tok.len();
            let ends_ok = end == b.len() || !is_word(b[end]);
            if starts_ok && ends_ok {
                if !lit.is_empty() {
                    out.push(Piece::Lit(std::mem::take(&mut lit)));
                }
                out.push(Piece::Tok(*kind));
                i = end;
                continue 'scan;
            }
        }
        let c = value[i..].chars().next().unwrap_or(' ');
        lit.push(c);
        i += c.len_utf8();
    }
    if !lit.is_empty() {
        out.push(Piece::Lit(lit));
    }
    out
}

/// The identity of one copy: what each token becomes.
pub struct Identity {
    pub index: usize,
    pub caller: String,
}

impl Identity {
    pub fn value(&self, t: Token) -> String {
        let i = self.index;
        match t {
            // Asterisk's forms; 64 ids and 16 channels per call is more than any capture uses.
            Token::Uniqueid(j) => format!("1800000000.{}", i * 64 + j),
            Token::Suffix(j) => format!("-{:08x}", (i * 16 + j) as u32),
            Token::Bridge(j) => format!("{:08x}-{j:04x}-4000-8000-{:012x}", i as u32, i),
            Token::Caller => self.caller.clone(),
        }
    }

    /// One value of `e` as this copy's.
    fn fill(&self, pieces: &[Piece], out: &mut String) {
        for p in pieces {
            match p {
                Piece::Lit(s) => out.push_str(s),
                Piece::Tok(t) => out.push_str(&self.value(*t)),
            }
        }
    }

    /// `e`'s fields as this copy's.
    pub fn render(&self, e: &TEvent) -> Vec<(String, String)> {
        e.fields
            .iter()
            .map(|(k, pieces)| {
                let mut v = String::new();
                self.fill(pieces, &mut v);
                (k.clone(), v)
            })
            .collect()
    }

    /// `e` as this copy's AMI wire bytes (`Key: value` lines and the blank line), into `buf`.
    pub fn wire(&self, e: &TEvent, buf: &mut Vec<u8>) {
        buf.clear();
        let mut v = String::new();
        for (k, pieces) in &e.fields {
            v.clear();
            self.fill(pieces, &mut v);
            let _ = write!(buf, "{k}: {v}\r\n");
        }
        buf.extend_from_slice(b"\r\n");
    }
}
