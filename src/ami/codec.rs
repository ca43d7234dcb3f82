//! AMI framing: messages are `Key: value` lines ended by a blank line.
//!
//! SKELETON: a simple, correct-enough reader so the rest of the crate can build against the
//! final API. The hardened version (caps, Response: Follows, lossy per-message decoding,
//! zero-copy layout) replaces the internals without changing the signatures.

use std::io::{self, BufRead, Write};

use super::Error;

/// Hard cap for one message from Asterisk. Past it the rest of the message is skipped.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// One AMI message: ordered fields, keys may repeat, keys compare case-insensitively.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    fields: Vec<(String, String)>,
}

impl Message {
    pub fn new() -> Self {
        Message::default()
    }

    /// Build a message (typically an action) from pairs, in order.
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Self {
        let mut m = Message::new();
        for (k, v) in pairs {
            m.push(k, v);
        }
        m
    }

    pub fn push(&mut self, key: &str, value: &str) {
        self.fields.push((key.to_string(), value.to_string()));
    }

    /// The first value for `key`, compared case-insensitively (Asterisk mixes `Uniqueid` and `UniqueID`).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    /// Every value for a repeated key (`ChanVariable`, `Variable`, `Output`), in order.
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.fields
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fields.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The event name, when the **first** field is `Event:`. An `OriginateResponse` event carries a
    /// `Response:` field too, so classification must look at the first field only.
    pub fn event(&self) -> Option<&str> {
        match self.fields.first() {
            Some((k, v)) if k.eq_ignore_ascii_case("Event") => Some(v),
            _ => None,
        }
    }

    /// The response status (`Success`, `Error`, `Follows`, `Goodbye`…), when the first field is `Response:`.
    pub fn response(&self) -> Option<&str> {
        match self.fields.first() {
            Some((k, v)) if k.eq_ignore_ascii_case("Response") => Some(v),
            _ => None,
        }
    }

    pub fn action_id(&self) -> Option<&str> {
        self.get("ActionID")
    }
}

/// What the reader yields: the one-line banner, or a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// `Asterisk Call Manager/9.0.0`, sent alone on connect.
    Banner(String),
    Message(Message),
}

/// Reads frames from any `BufRead`.
pub struct Reader<R> {
    inner: R,
    position: u64,
    dropped: u64,
    seen_first_line: bool,
}

impl<R: BufRead> Reader<R> {
    pub fn new(inner: R) -> Self {
        Reader {
            inner,
            position: 0,
            dropped: 0,
            seen_first_line: false,
        }
    }

    /// Bytes consumed from the stream so far (used to map messages to capture timing).
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Messages skipped because they exceeded [`MAX_MESSAGE`].
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The next frame, or `None` at a clean end of stream.
    pub fn read_frame(&mut self) -> io::Result<Option<Frame>> {
        let mut msg = Message::new();
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = self.inner.read_until(b'\n', &mut line)?;
            if n == 0 {
                return Ok(if msg.is_empty() {
                    None
                } else {
                    Some(Frame::Message(msg))
                });
            }
            self.position += n as u64;
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\r', '\n']);
            if !self.seen_first_line {
                self.seen_first_line = true;
                if text.starts_with("Asterisk Call Manager") {
                    return Ok(Some(Frame::Banner(text.to_string())));
                }
            }
            if text.is_empty() {
                if msg.is_empty() {
                    continue;
                }
                return Ok(Some(Frame::Message(msg)));
            }
            match text.split_once(':') {
                Some((k, v)) => msg.push(k, v.strip_prefix(' ').unwrap_or(v)),
                None => msg.push("Output", text),
            }
        }
    }
}

/// Serialise an action. Refuses (and writes nothing) if any key or value contains CR or LF.
pub fn encode_action(action: &Message) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(64 * action.len());
    for (k, v) in action.iter() {
        if k.contains(['\r', '\n']) || v.contains(['\r', '\n']) {
            return Err(Error::Injection { key: k.to_string() });
        }
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(out)
}

/// Writes actions to a stream, one `write_all` per action so actions never interleave.
pub struct Writer<W> {
    inner: W,
}

impl<W: Write> Writer<W> {
    pub fn new(inner: W) -> Self {
        Writer { inner }
    }

    pub fn send(&mut self, action: &Message) -> Result<(), Error> {
        let bytes = encode_action(action)?;
        self.inner.write_all(&bytes)?;
        self.inner.flush()?;
        Ok(())
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }
}
