//! AMI framing: messages are `Key: value` lines ended by a blank line (ami.md §2).
//!
//! The reader is a small state machine fed from [`BufRead::fill_buf`] slices. All of its state lives
//! in the [`Reader`], so a socket read timeout in the middle of a message loses nothing: the next
//! [`Reader::read_frame`] call carries on with the same message.
//!
//! Quirks handled here, each because Asterisk really does it:
//! * the banner is one line, alone, with no blank line after it (ami.md §2.1);
//! * `\r\n` and bare `\n` line ends (the `Command` CLI text uses bare `\n`, ami.md §2.7);
//! * values containing `:`, empty values, repeated and oddly cased keys (ami.md §2.3 rules 2-6);
//! * legacy `Response: Follows` whose raw body may hold empty lines and colons (ami.md §2.7);
//! * non-UTF-8 bytes (cp1251 caller names), decoded lossily per whole message (ami.md §2.4);
//! * no line length limit server → client (ami.md §2.5), hence our own [`MAX_MESSAGE`] cap.

use std::borrow::Cow;
use std::fmt;
use std::io::{self, BufRead};

use super::Error;

/// Hard cap for one message from Asterisk. Past it the rest of the message is skipped.
///
/// Asterisk has no line or message limit in the server → client direction (ami.md §2.5), so without
/// a cap a broken peer could make us buffer without bound. The largest message in the captures is
/// 2.6 KB. Counted: the message's bytes on the wire, line ends included, the blank line that
/// ends it excluded.
///
/// Memory: a line is never buffered past the cap, so for ordinary traffic the reader holds about
/// one cap. Per-field bookkeeping comes on top: a pathological `Response: Follows` body made of
/// 65 000 empty lines (each one an `Output` field) takes it to about 16 times the cap (1 MiB).
pub const MAX_MESSAGE: usize = 64 * 1024;

/// The banner's fixed prefix; the version after the slash varies (ami.md §2.1).
const BANNER_PREFIX: &[u8] = b"Asterisk Call Manager/";

/// Terminator of the legacy `Command` output (ami.md §2.7).
const END_COMMAND: &[u8] = b"--END COMMAND--";

/// Bytes of a line kept while skipping an oversized message: enough to recognise a blank line
/// and a line ending in `--END COMMAND--`, nothing more.
const SKIP_TAIL: usize = 32;

/// How far an oversized `Response: Follows` is skipped while looking for `--END COMMAND--`
/// before falling back to blank-line framing. Without a limit, a peer that never sends the marker
/// would make the reader swallow the rest of the stream and the daemon go deaf. Past the limit a
/// genuine, huge CLI output may then come out as a few junk messages, which is the lesser harm.
const FOLLOWS_SKIP_LIMIT: usize = 16 * MAX_MESSAGE;

/// One AMI message: ordered fields, keys may repeat, keys compare case-insensitively.
///
/// Layout: all keys and values live in ONE `String`, back to back (`key0 value0 key1 value1 …`),
/// and `ends` holds, per field, where its key ends and where its value ends. This costs two
/// allocations per message instead of two per field, which is most of the parser's speed. The
/// layout is canonical (it depends only on the field sequence), so the derived `PartialEq` compares
/// field sequences.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Message {
    text: String,
    ends: Vec<(usize, usize)>,
}

impl Message {
    pub fn new() -> Self {
        Message::default()
    }

    /// Build a message (typically an action) from pairs, in order.
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Self {
        let mut m = Message {
            text: String::with_capacity(pairs.iter().map(|(k, v)| k.len() + v.len()).sum()),
            ends: Vec::with_capacity(pairs.len()),
        };
        for (k, v) in pairs {
            m.push(k, v);
        }
        m
    }

    pub fn push(&mut self, key: &str, value: &str) {
        self.text.push_str(key);
        let key_end = self.text.len();
        self.text.push_str(value);
        self.ends.push((key_end, self.text.len()));
    }

    /// The first value for `key`, compared case-insensitively (Asterisk mixes `Uniqueid` and
    /// `UniqueID`, ami.md §2.3 rule 6). The first occurrence wins, as in Asterisk itself.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    }

    /// Every value for a repeated key (`ChanVariable`, `Variable`, `Output`), in order.
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    }

    /// All fields in wire order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        let text = self.text.as_str();
        self.ends
            .iter()
            .scan(0usize, move |start, &(key_end, value_end)| {
                let field = (&text[*start..key_end], &text[key_end..value_end]);
                *start = value_end;
                Some(field)
            })
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The first field, which is what classifies a message (ami.md §2.3 rule 1).
    fn first(&self) -> Option<(&str, &str)> {
        self.ends
            .first()
            .map(|&(key_end, value_end)| (&self.text[..key_end], &self.text[key_end..value_end]))
    }

    /// The event name, when the **first** field is `Event:`. An `OriginateResponse` event carries a
    /// `Response:` field too, so classification must look at the first field only (ami.md §2.3
    /// rule 1).
    pub fn event(&self) -> Option<&str> {
        match self.first() {
            Some((k, v)) if k.eq_ignore_ascii_case("Event") => Some(v),
            _ => None,
        }
    }

    /// The response status (`Success`, `Error`, `Follows`, `Goodbye`…), when the first field is
    /// `Response:`.
    pub fn response(&self) -> Option<&str> {
        match self.first() {
            Some((k, v)) if k.eq_ignore_ascii_case("Response") => Some(v),
            _ => None,
        }
    }

    pub fn action_id(&self) -> Option<&str> {
        self.get("ActionID")
    }
}

impl fmt::Debug for Message {
    /// Shows the fields, not the internal layout.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Message ")?;
        f.debug_list().entries(self.iter()).finish()
    }
}

/// What the reader yields: the one-line banner, or a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// `Asterisk Call Manager/9.0.0`, sent alone on connect.
    Banner(String),
    Message(Message),
}

/// Where the decoder is inside the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Position {
    /// `Key: value` lines of an ordinary message, or blank lines before one.
    Headers,
    /// First field was `Response: Follows`: only `Privilege` and `ActionID` headers may follow
    /// before the raw CLI text (that is all `action_command` writes, ami.md §2.7).
    FollowsHeaders,
    /// Raw CLI text of a `Response: Follows`, up to `--END COMMAND--`.
    FollowsBody,
    /// `--END COMMAND--` seen; swallow the blank line Asterisk writes after it. `cr`: its `\r` is
    /// already consumed. `keep`: false when the message was dropped for size.
    AfterEnd { cr: bool, keep: bool },
    /// Past [`MAX_MESSAGE`]: discard up to the end of the message (the blank line, or
    /// `--END COMMAND--` when the message is a `Response: Follows`).
    Skip { follows: bool },
}

/// The sans-I/O part of [`Reader`]: eats byte slices, produces frames.
#[derive(Debug)]
struct Decoder {
    state: Position,
    /// The first line of the stream is done (it is the only place a banner may appear).
    started: bool,
    /// Keys and values of the message being read, back to back, as raw bytes. Decoded only when
    /// the message is complete, so a multibyte character split across reads survives (ami.md §2.4,
    /// python-ami #3).
    raw: Vec<u8>,
    /// Per field: (key end, value end) in `raw`. `u32` halves the bookkeeping of a message made of
    /// tiny lines; `raw` stays far below 4 GiB (at most about six times [`MAX_MESSAGE`]).
    ends: Vec<(u32, u32)>,
    /// A line that started in an earlier read. While skipping: only the last [`SKIP_TAIL`] bytes.
    line: Vec<u8>,
    /// Bytes of the current message counted against [`MAX_MESSAGE`].
    size: usize,
    /// Bytes skipped so far in [`Position::Skip`].
    skipped: usize,
    dropped: u64,
}

impl Decoder {
    fn new() -> Self {
        Decoder {
            state: Position::Headers,
            started: false,
            raw: Vec::with_capacity(4096),
            ends: Vec::with_capacity(64),
            line: Vec::new(),
            size: 0,
            skipped: 0,
            dropped: 0,
        }
    }

    /// Process bytes from the start of `chunk`. Returns how many bytes were used and, when a frame
    /// was completed, the frame; in that case the count stops right after the frame's last byte.
    /// Without a frame the whole chunk is used.
    fn feed(&mut self, chunk: &[u8]) -> (usize, Option<Frame>) {
        let mut i = 0;
        while i < chunk.len() {
            let rest = &chunk[i..];
            match self.state {
                Position::AfterEnd { cr, keep } => match rest[0] {
                    b'\n' => {
                        i += 1;
                        if let Some(frame) = self.end_follows(keep) {
                            return (i, Some(frame));
                        }
                    }
                    b'\r' if !cr => {
                        i += 1;
                        self.state = Position::AfterEnd { cr: true, keep };
                    }
                    // No blank line after the marker (or a lone `\r`, which is then lost): the
                    // message still ended at the marker; this byte starts the next one.
                    _ => {
                        if let Some(frame) = self.end_follows(keep) {
                            return (i, Some(frame));
                        }
                    }
                },
                Position::Skip { .. } => match find_newline(rest) {
                    None => {
                        self.keep_tail(rest);
                        self.skipped += rest.len();
                        i = chunk.len();
                    }
                    Some(p) => {
                        self.keep_tail(&rest[..p]);
                        self.skipped += p + 1;
                        i += p + 1;
                        self.skipped_line_end();
                    }
                },
                Position::Headers | Position::FollowsHeaders | Position::FollowsBody => {
                    match find_newline(rest) {
                        None => {
                            // A line continues past this read: buffer it, within the cap.
                            let len = self.line.len() + rest.len();
                            if len <= 1 || self.fits(len) {
                                append_capped(&mut self.line, rest);
                            } else {
                                self.overflow();
                                self.keep_tail(rest);
                            }
                            i = chunk.len();
                        }
                        Some(p) => {
                            i += p + 1;
                            let piece = &rest[..p];
                            let len = self.line.len() + p;
                            // A memory guard before copying anything. `len <= 1` may be a blank
                            // line, which is not counted; `on_line` does the exact accounting.
                            let frame = if len > 1 && !self.fits(len + 1) {
                                self.drop_at_line_end(piece)
                            } else if self.line.is_empty() {
                                // Fast path: the whole line is in this read, no copy.
                                self.on_line(piece)
                            } else {
                                let mut line = std::mem::take(&mut self.line);
                                append_capped(&mut line, piece);
                                let frame = self.on_line(&line);
                                line.clear();
                                self.line = line;
                                frame
                            };
                            if frame.is_some() {
                                return (i, frame);
                            }
                        }
                    }
                }
            }
        }
        (i, None)
    }

    /// End of stream. A message cut short by EOF is still returned, with whatever part of its last
    /// line arrived; a message being skipped is not (it was already counted in `dropped`).
    fn finish(&mut self) -> Option<Frame> {
        match self.state {
            Position::Skip { .. } => {
                self.reset();
                None
            }
            Position::AfterEnd { keep, .. } => self.end_follows(keep),
            Position::Headers | Position::FollowsHeaders | Position::FollowsBody => {
                if !self.line.is_empty() {
                    let line = std::mem::take(&mut self.line);
                    if let Some(frame) = self.on_line(&line) {
                        return Some(frame);
                    }
                }
                if let Position::AfterEnd { keep, .. } = self.state {
                    return self.end_follows(keep);
                }
                if self.ends.is_empty() {
                    self.reset();
                    None
                } else {
                    Some(self.take_message())
                }
            }
        }
    }

    /// Whether `n` more bytes keep the current message within [`MAX_MESSAGE`].
    fn fits(&self, n: usize) -> bool {
        self.size + n <= MAX_MESSAGE
    }

    /// The current message is too big: forget it and skip the rest of it.
    fn overflow(&mut self) {
        let follows = matches!(self.state, Position::FollowsHeaders | Position::FollowsBody);
        self.raw.clear();
        self.ends.clear();
        // A partly read line goes on being skipped: keep its end, to see how it finishes.
        let excess = self.line.len().saturating_sub(SKIP_TAIL);
        self.line.drain(..excess);
        self.size = 0;
        self.skipped = 0;
        self.dropped += 1;
        // An oversized first line is not a banner, and is no longer "the first line" afterwards.
        self.started = true;
        self.state = Position::Skip { follows };
    }

    /// Count `n` bytes against the cap; false (and nothing counted) when they do not fit.
    fn count(&mut self, n: usize) -> bool {
        let fits = self.fits(n);
        if fits {
            self.size += n;
        }
        fits
    }

    /// `line` (complete, already consumed) does not fit: drop the message and skip what is left
    /// of it. The line itself may be the one ending a `Response: Follows`.
    fn drop_at_line_end(&mut self, line: &[u8]) -> Option<Frame> {
        self.overflow();
        self.keep_tail(line);
        self.skipped_line_end();
        None
    }

    /// While skipping, remember only the end of the current line.
    fn keep_tail(&mut self, piece: &[u8]) {
        let piece = &piece[piece.len().saturating_sub(SKIP_TAIL)..];
        self.line.extend_from_slice(piece);
        if self.line.len() > SKIP_TAIL {
            let excess = self.line.len() - SKIP_TAIL;
            self.line.drain(..excess);
        }
    }

    /// A line of a skipped message is complete (its tail is in `self.line`).
    fn skipped_line_end(&mut self) {
        let Position::Skip { follows } = self.state else {
            return;
        };
        let tail = strip_cr(&self.line);
        if follows && self.skipped <= FOLLOWS_SKIP_LIMIT {
            if tail.ends_with(END_COMMAND) {
                self.state = Position::AfterEnd {
                    cr: false,
                    keep: false,
                };
            }
        } else if tail.is_empty() {
            self.state = Position::Headers;
        } else {
            self.state = Position::Skip { follows: false };
        }
        self.line.clear();
    }

    /// One complete line (without its `\n`) in a non-skipping state.
    fn on_line(&mut self, line: &[u8]) -> Option<Frame> {
        let content = strip_cr(line);
        if !self.started {
            self.started = true;
            if content.starts_with(BANNER_PREFIX) {
                self.size = 0;
                return Some(Frame::Banner(String::from_utf8_lossy(content).into_owned()));
            }
        }
        match self.state {
            Position::Headers => {
                if content.is_empty() {
                    // Blank lines between messages are skipped; otherwise the message is complete.
                    return if self.ends.is_empty() {
                        None
                    } else {
                        Some(self.take_message())
                    };
                }
                if !self.count(line.len() + 1) {
                    return self.drop_at_line_end(line);
                }
                let (key, value) = split_field(content);
                self.push_raw(key, value);
                if self.ends.len() == 1
                    && key.eq_ignore_ascii_case(b"Response")
                    && value.eq_ignore_ascii_case(b"Follows")
                {
                    self.state = Position::FollowsHeaders;
                }
                None
            }
            Position::FollowsHeaders => {
                let (key, value) = split_field(content);
                if key.eq_ignore_ascii_case(b"Privilege") || key.eq_ignore_ascii_case(b"ActionID") {
                    if !self.count(line.len() + 1) {
                        return self.drop_at_line_end(line);
                    }
                    self.push_raw(key, value);
                    None
                } else {
                    self.state = Position::FollowsBody;
                    self.body_line(line, content)
                }
            }
            Position::FollowsBody => self.body_line(line, content),
            Position::AfterEnd { .. } | Position::Skip { .. } => {
                unreachable!("on_line is only called in the line-reading states")
            }
        }
    }

    /// A raw line of `Response: Follows` output: stored whole as `Output`, colons and all.
    ///
    /// Asterisk appends the CLI text as-is and then `--END COMMAND--` (ami.md §2.7,
    /// `action_command`), so when the text does not end with a newline the marker is glued to its
    /// last line: accept the marker as a line suffix too.
    fn body_line(&mut self, line: &[u8], content: &[u8]) -> Option<Frame> {
        if !self.count(line.len() + 1) {
            return self.drop_at_line_end(line);
        }
        match content.strip_suffix(END_COMMAND) {
            Some(text) => {
                if !text.is_empty() {
                    self.push_raw(b"Output", text);
                }
                self.state = Position::AfterEnd {
                    cr: false,
                    keep: true,
                };
            }
            None => self.push_raw(b"Output", content),
        }
        None
    }

    fn push_raw(&mut self, key: &[u8], value: &[u8]) {
        append_capped(&mut self.raw, key);
        let key_end = self.raw.len() as u32;
        append_capped(&mut self.raw, value);
        self.ends.push((key_end, self.raw.len() as u32));
    }

    /// The `--END COMMAND--` message is over (its trailing blank line consumed or absent).
    fn end_follows(&mut self, keep: bool) -> Option<Frame> {
        if keep {
            Some(self.take_message())
        } else {
            self.reset();
            None
        }
    }

    fn take_message(&mut self) -> Frame {
        let msg = decode_message(&self.raw, &self.ends);
        self.reset();
        Frame::Message(msg)
    }

    fn reset(&mut self) {
        self.raw.clear();
        self.ends.clear();
        self.line.clear();
        self.size = 0;
        self.state = Position::Headers;
    }
}

/// Turn a complete message's raw bytes into a [`Message`], replacing invalid UTF-8 with U+FFFD.
///
/// Decoding per field gives the same text as decoding the message as a whole: fields were
/// separated by ASCII bytes (`:`, space, CR, LF), which always end an invalid sequence.
fn decode_message(raw: &[u8], ends: &[(u32, u32)]) -> Message {
    if let Ok(text) = std::str::from_utf8(raw) {
        // Valid as a whole is not enough: `\xd0:\x90` becomes `\xd0\x90` once the colon is gone,
        // a valid character straddling the key/value boundary. Then fall through to per-field.
        if ends
            .iter()
            .all(|&(k, v)| text.is_char_boundary(k as usize) && text.is_char_boundary(v as usize))
        {
            return Message {
                text: text.to_owned(),
                ends: ends
                    .iter()
                    .map(|&(k, v)| (k as usize, v as usize))
                    .collect(),
            };
        }
    }
    let mut msg = Message {
        text: String::with_capacity(raw.len() + 16),
        ends: Vec::with_capacity(ends.len()),
    };
    let mut start = 0;
    for &(key_end, value_end) in ends {
        let (key_end, value_end) = (key_end as usize, value_end as usize);
        let key: Cow<str> = String::from_utf8_lossy(&raw[start..key_end]);
        let value: Cow<str> = String::from_utf8_lossy(&raw[key_end..value_end]);
        msg.push(&key, &value);
        start = value_end;
    }
    msg
}

/// `Key: value` → (key, value). Split on the FIRST colon, because values contain colons
/// (`DialString: 7002/sip:7002@203.0.113.10:5063`, ami.md §2.3 rule 4). One leading space is
/// stripped; `Key:` with nothing after it is an empty value (rule 5). A line without a colon is
/// kept as `Output` rather than lost.
fn split_field(content: &[u8]) -> (&[u8], &[u8]) {
    match content.iter().position(|&b| b == b':') {
        Some(c) => {
            let value = &content[c + 1..];
            (&content[..c], value.strip_prefix(b" ").unwrap_or(value))
        }
        None => (b"Output", content),
    }
}

/// `extend_from_slice`, but doubling does not overshoot [`MAX_MESSAGE`]: a buffer that holds at
/// most the cap (a partial line) must not end up with twice the cap of capacity. Past the cap
/// (`raw` can be, with the `Output` keys it adds) growth doubles again, never byte by byte.
fn append_capped(buf: &mut Vec<u8>, bytes: &[u8]) {
    let needed = buf.len() + bytes.len();
    if needed > buf.capacity() {
        let doubled = buf.capacity() * 2;
        let target = if needed <= MAX_MESSAGE {
            doubled.min(MAX_MESSAGE).max(needed)
        } else {
            doubled.max(needed)
        };
        buf.reserve_exact(target - buf.len());
    }
    buf.extend_from_slice(bytes);
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn find_newline(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n')
}

/// Reads frames from any `BufRead`.
pub struct Reader<R> {
    inner: R,
    position: u64,
    decoder: Decoder,
}

impl<R: BufRead> Reader<R> {
    pub fn new(inner: R) -> Self {
        Reader {
            inner,
            position: 0,
            decoder: Decoder::new(),
        }
    }

    /// Bytes consumed from the stream so far (used to map messages to capture timing). After a
    /// frame is returned it points just past that frame's last byte (for a message: its blank
    /// line; for `Response: Follows`: the blank line after `--END COMMAND--`).
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Messages skipped because they exceeded [`MAX_MESSAGE`].
    pub fn dropped(&self) -> u64 {
        self.decoder.dropped
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The next frame, or `None` at a clean end of stream.
    ///
    /// Errors from the inner reader are returned as they are, and the partial frame is kept: after
    /// `WouldBlock`, `TimedOut` or `Interrupted` (a socket read timeout) call again to continue the
    /// same message. Only bytes the decoder has taken are consumed from the inner reader.
    pub fn read_frame(&mut self) -> io::Result<Option<Frame>> {
        loop {
            let chunk = self.inner.fill_buf()?;
            if chunk.is_empty() {
                return Ok(self.decoder.finish());
            }
            let (used, frame) = self.decoder.feed(chunk);
            self.inner.consume(used);
            self.position += used as u64;
            if frame.is_some() {
                return Ok(frame);
            }
        }
    }
}

/// Serialise an action.
///
/// Refuses (and produces nothing) if any key or value contains CR or LF, or a key contains `:`:
/// AMI has no escaping in the client → server direction (ami.md §2.2), so such a field would end
/// the header early and let the text after it become a header or a whole new action (injection).
pub fn encode_action(action: &Message) -> Result<Vec<u8>, Error> {
    for (k, v) in action.iter() {
        let bad_key = k.bytes().any(|b| matches!(b, b'\r' | b'\n' | b':'));
        let bad_value = v.bytes().any(|b| matches!(b, b'\r' | b'\n'));
        if bad_key || bad_value {
            return Err(Error::Injection { key: k.to_string() });
        }
    }
    let mut out = Vec::with_capacity(action.text.len() + 4 * action.len() + 2);
    for (k, v) in action.iter() {
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, ErrorKind, Read};

    /// A `BufRead` that serves `data` in chunks ending at `cuts`, and can fail with a transient
    /// error (cycling WouldBlock / TimedOut / Interrupted) before every chunk, like a socket with a
    /// read timeout.
    struct Chunked {
        data: Vec<u8>,
        pos: usize,
        cuts: Vec<usize>,
        inject: bool,
        fail_next: bool,
        errors: usize,
    }

    impl Chunked {
        fn new(data: &[u8], cuts: Vec<usize>, inject: bool) -> Self {
            Chunked {
                data: data.to_vec(),
                pos: 0,
                cuts,
                inject,
                fail_next: inject,
                errors: 0,
            }
        }

        fn two_chunks(data: &[u8], k: usize) -> Self {
            Chunked::new(data, vec![k], false)
        }

        fn bytewise(data: &[u8], inject: bool) -> Self {
            Chunked::new(data, (1..=data.len()).collect(), inject)
        }

        fn sized(data: &[u8], size: usize) -> Self {
            Chunked::new(data, (size..data.len()).step_by(size).collect(), false)
        }
    }

    impl Read for Chunked {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let chunk = self.fill_buf()?;
            let n = chunk.len().min(buf.len());
            buf[..n].copy_from_slice(&chunk[..n]);
            self.consume(n);
            Ok(n)
        }
    }

    impl BufRead for Chunked {
        fn fill_buf(&mut self) -> io::Result<&[u8]> {
            if self.fail_next {
                self.fail_next = false;
                self.errors += 1;
                let kind = [
                    ErrorKind::TimedOut,
                    ErrorKind::WouldBlock,
                    ErrorKind::Interrupted,
                ][self.errors % 3];
                return Err(io::Error::new(kind, "injected"));
            }
            let next = self.cuts.partition_point(|&c| c <= self.pos);
            let end = self
                .cuts
                .get(next)
                .copied()
                .unwrap_or(self.data.len())
                .min(self.data.len());
            Ok(&self.data[self.pos..end])
        }

        fn consume(&mut self, n: usize) {
            self.pos += n;
            if self.inject && n > 0 && self.cuts.binary_search(&self.pos).is_ok() {
                self.fail_next = true;
            }
        }
    }

    /// Frames with the position after each, plus `dropped()`. Transient errors are retried.
    fn collect<R: BufRead>(reader: &mut Reader<R>) -> (Vec<(Frame, u64)>, u64) {
        let mut out = Vec::new();
        loop {
            match reader.read_frame() {
                Ok(Some(frame)) => out.push((frame, reader.position())),
                Ok(None) => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::TimedOut | ErrorKind::WouldBlock | ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                Err(e) => panic!("unexpected error {e}"),
            }
        }
        (out, reader.dropped())
    }

    fn parse(data: &[u8]) -> Vec<Frame> {
        let (frames, dropped) = collect(&mut Reader::new(Cursor::new(data)));
        assert_eq!(dropped, 0);
        frames.into_iter().map(|(f, _)| f).collect()
    }

    fn msg(frame: &Frame) -> &Message {
        match frame {
            Frame::Message(m) => m,
            Frame::Banner(b) => panic!("expected a message, got banner {b:?}"),
        }
    }

    fn pairs(m: &Message) -> Vec<(&str, &str)> {
        m.iter().collect()
    }

    /// Every quirk at once, mixing CRLF and bare LF, UTF-8 and cp1251, for the split tests.
    fn sample() -> Vec<u8> {
        [
            &b"Asterisk Call Manager/9.0.0\r\n"[..],
            b"Response: Success\r\nActionID: login-1\r\nMessage: Authentication accepted\r\n\r\n",
            b"\r\n\n\r\n",
            b"Event: Dial\nPrivilege: call,all\nDialString: 7002/sip:7002@203.0.113.10:5063\n",
            b"UniqueID: 1573204600.10000\n\n",
            b"Event: Newchannel\r\nCallerIDName: \xc2\xe8\xf2\xe0\xeb\xe8\xe9\r\n",
            b"ConnectedLineName: ",
            "Виталий Калинин".as_bytes(),
            b"\r\nAccountCode: \r\nLanguage:\r\nExten:  8001231231\r\n\r\n",
            b"Response: Follows\r\nPrivilege: Command\r\nActionID: cmd-1\r\n",
            b"\nName: value: more\nsecond line\n\r\n\n--END COMMAND--\r\n\r\n",
            b"Event: OriginateResponse\r\nPrivilege: call,all\r\nActionID: orig-1\r\n",
            b"Response: Success\r\nChannel: SIP/219-00000001\r\n",
            b"ChanVariable(SIP/219-00000001): x=y\r\n",
            b"ChanVariable(SIP/219-00000001): CallMeCALL_ID=42\r\n\r\n",
            b"Event: UserEvent\r\nData: a\0b\r\nno colon here\r\n\xd0:\x90\r\n\r\n",
            b"Response: Follows\r\nPrivilege: Command\r\nlast line--END COMMAND--\r\n\r\n",
            b"Response: Goodbye\r\nMessage: Thanks for all the fish.\r\n\r\n",
        ]
        .concat()
    }

    fn sample_expected() -> Vec<Frame> {
        let m = |p: &[(&str, &str)]| Frame::Message(Message::from_pairs(p));
        let cp1251 = "\u{FFFD}".repeat(7);
        vec![
            Frame::Banner("Asterisk Call Manager/9.0.0".into()),
            m(&[
                ("Response", "Success"),
                ("ActionID", "login-1"),
                ("Message", "Authentication accepted"),
            ]),
            m(&[
                ("Event", "Dial"),
                ("Privilege", "call,all"),
                ("DialString", "7002/sip:7002@203.0.113.10:5063"),
                ("UniqueID", "1573204600.10000"),
            ]),
            m(&[
                ("Event", "Newchannel"),
                ("CallerIDName", &cp1251),
                ("ConnectedLineName", "Виталий Калинин"),
                ("AccountCode", ""),
                ("Language", ""),
                ("Exten", " 8001231231"),
            ]),
            m(&[
                ("Response", "Follows"),
                ("Privilege", "Command"),
                ("ActionID", "cmd-1"),
                ("Output", ""),
                ("Output", "Name: value: more"),
                ("Output", "second line"),
                ("Output", ""),
                ("Output", ""),
            ]),
            m(&[
                ("Event", "OriginateResponse"),
                ("Privilege", "call,all"),
                ("ActionID", "orig-1"),
                ("Response", "Success"),
                ("Channel", "SIP/219-00000001"),
                ("ChanVariable(SIP/219-00000001)", "x=y"),
                ("ChanVariable(SIP/219-00000001)", "CallMeCALL_ID=42"),
            ]),
            m(&[
                ("Event", "UserEvent"),
                ("Data", "a\0b"),
                ("Output", "no colon here"),
                ("\u{FFFD}", "\u{FFFD}"),
            ]),
            m(&[
                ("Response", "Follows"),
                ("Privilege", "Command"),
                ("Output", "last line"),
            ]),
            m(&[
                ("Response", "Goodbye"),
                ("Message", "Thanks for all the fish."),
            ]),
        ]
    }

    /// Byte offsets just past each frame of `sample()`, found by hand from its parts.
    fn sample_positions(data: &[u8]) -> Vec<u64> {
        let after = |needle: &[u8], from: usize| -> usize {
            from + data[from..]
                .windows(needle.len())
                .position(|w| w == needle)
                .expect("needle in sample")
                + needle.len()
        };
        let mut out = Vec::new();
        let mut at = after(b"9.0.0\r\n", 0);
        out.push(at);
        at = after(b"accepted\r\n\r\n", at);
        out.push(at);
        at = after(b"10000\n\n", at);
        out.push(at);
        at = after(b"8001231231\r\n\r\n", at);
        out.push(at);
        at = after(b"--END COMMAND--\r\n\r\n", at);
        out.push(at);
        at = after(b"=42\r\n\r\n", at);
        out.push(at);
        at = after(b"\x90\r\n\r\n", at);
        out.push(at);
        at = after(b"--END COMMAND--\r\n\r\n", at);
        out.push(at);
        at = after(b"fish.\r\n\r\n", at);
        out.push(at);
        assert_eq!(at, data.len());
        out.into_iter().map(|p| p as u64).collect()
    }

    #[test]
    fn sample_parses_with_exact_positions() {
        let data = sample();
        let (got, dropped) = collect(&mut Reader::new(Cursor::new(&data[..])));
        assert_eq!(dropped, 0);
        let frames: Vec<Frame> = got.iter().map(|(f, _)| f.clone()).collect();
        assert_eq!(frames, sample_expected());
        let positions: Vec<u64> = got.iter().map(|(_, p)| *p).collect();
        assert_eq!(positions, sample_positions(&data));
    }

    #[test]
    fn split_at_every_byte_gives_identical_frames() {
        let data = sample();
        let reference = collect(&mut Reader::new(Cursor::new(&data[..])));
        assert_eq!(reference.0.len(), sample_expected().len());
        for k in 0..=data.len() {
            let got = collect(&mut Reader::new(Chunked::two_chunks(&data, k)));
            assert_eq!(got, reference, "split at byte {k}");
        }
        let got = collect(&mut Reader::new(Chunked::bytewise(&data, false)));
        assert_eq!(got, reference, "one byte per read");
    }

    #[test]
    fn resumes_after_timeout_mid_message() {
        let data = sample();
        let reference = collect(&mut Reader::new(Cursor::new(&data[..])));
        // An error before every single byte: each message is interrupted many times.
        let mut reader = Reader::new(Chunked::bytewise(&data, true));
        let got = collect(&mut reader);
        assert_eq!(got, reference);
        assert!(reader.get_ref().errors >= data.len());

        // The error is handed to the caller as is, and the message is still whole afterwards.
        let input = b"Event: Hangup\r\nCause: 16\r\n\r\n";
        let mut reader = Reader::new(Chunked::new(input, vec![9, 20], true));
        let mut kinds = Vec::new();
        let frame = loop {
            match reader.read_frame() {
                Ok(frame) => break frame,
                Err(e) => kinds.push(e.kind()),
            }
        };
        assert_eq!(kinds.len(), 3, "one error before each of the three chunks");
        assert!(kinds.contains(&ErrorKind::TimedOut));
        assert_eq!(
            frame,
            Some(Frame::Message(Message::from_pairs(&[
                ("Event", "Hangup"),
                ("Cause", "16")
            ])))
        );
        assert_eq!(reader.position(), input.len() as u64);
    }

    #[test]
    fn multibyte_char_split_across_reads_survives() {
        let data = "Event: Newchannel\r\nCallerIDName: Виталий\r\n\r\n".as_bytes();
        let cut = data.iter().position(|&b| b >= 0x80).unwrap() + 1; // inside the first char
        let (frames, _) = collect(&mut Reader::new(Chunked::two_chunks(data, cut)));
        assert_eq!(msg(&frames[0].0).get("CallerIDName"), Some("Виталий"));
    }

    /// 1 MiB without a newline, then more messages: dropped, counted, memory stays near the cap.
    fn garbage_stream() -> Vec<u8> {
        let mut data = b"Event: Before\r\n\r\n".to_vec();
        data.extend(std::iter::repeat_n(b'x', 1 << 20));
        data.extend_from_slice(b"\r\n\r\nEvent: After\r\nKey: v\r\n\r\n");
        data.extend_from_slice(b"Event: Huge\r\nAppData: ");
        data.extend(std::iter::repeat_n(b'y', 200_000));
        data.extend_from_slice(b"\r\nMore: z\r\n\r\nEvent: Last\r\n\r\n");
        data
    }

    fn assert_bounded<R>(reader: &Reader<R>) {
        let d = &reader.decoder;
        let bytes = d.raw.capacity()
            + d.line.capacity()
            + d.ends.capacity() * std::mem::size_of::<(u32, u32)>();
        assert!(
            bytes <= MAX_MESSAGE + 8192,
            "decoder holds {bytes} bytes: raw {} line {} ends {}",
            d.raw.capacity(),
            d.line.capacity(),
            d.ends.capacity()
        );
    }

    #[test]
    fn huge_line_is_dropped_and_memory_stays_bounded() {
        let data = garbage_stream();
        let events = |frames: &[(Frame, u64)]| -> Vec<String> {
            frames
                .iter()
                .map(|(f, _)| msg(f).event().unwrap().to_string())
                .collect()
        };
        let mut whole = Reader::new(Cursor::new(&data[..]));
        let (frames, dropped) = collect(&mut whole);
        assert_eq!(events(&frames), ["Before", "After", "Last"]);
        assert_eq!(msg(&frames[1].0).get("Key"), Some("v"));
        assert_eq!(dropped, 2);
        assert_eq!(whole.position(), data.len() as u64);
        assert_bounded(&whole);

        for size in [4096, 65_535, 70_000] {
            let mut reader = Reader::new(Chunked::sized(&data, size));
            let got = collect(&mut reader);
            assert_eq!(got, (frames.clone(), 2), "reads of {size} bytes");
            assert_bounded(&reader);
        }
        let mut reader = Reader::new(Chunked::bytewise(&data, false));
        assert_eq!(
            collect(&mut reader),
            (frames.clone(), 2),
            "one byte per read"
        );
        assert_bounded(&reader);
    }

    #[test]
    fn cap_is_exact_and_split_invariant() {
        // A message of exactly MAX_MESSAGE bytes (blank line excluded) passes; one more is dropped.
        // `big(size, last)`: `Event: Big`, a padded `Data:` line, then `last`, `size` bytes in all.
        let big = |size: usize, last: &[u8]| {
            let head = b"Event: Big\r\nData: ";
            let mut m = head.to_vec();
            m.extend(std::iter::repeat_n(
                b'z',
                size - head.len() - 2 - last.len(),
            ));
            m.extend_from_slice(b"\r\n");
            m.extend_from_slice(last);
            assert_eq!(m.len(), size);
            m.extend_from_slice(b"\r\n");
            m
        };
        let data = [
            big(MAX_MESSAGE, b"Tail: t\r\n"),
            big(MAX_MESSAGE + 1, b"Tail: t\r\n"),
            // The Data line itself crosses the cap, and more lines follow it.
            big(MAX_MESSAGE + 10, b"Tail: t\r\n"),
            // One-byte bare-LF last line: exactly at the cap, then one past it.
            big(MAX_MESSAGE, b"x\n"),
            big(MAX_MESSAGE + 1, b"x\n"),
            b"Event: Next\r\n\r\n".to_vec(),
        ]
        .concat();
        let reference = collect(&mut Reader::new(Cursor::new(&data[..])));
        assert_eq!(reference.1, 3);
        let names: Vec<_> = reference.0.iter().map(|(f, _)| msg(f).event()).collect();
        assert_eq!(names, [Some("Big"), Some("Big"), Some("Next")]);
        assert_eq!(msg(&reference.0[0].0).get("Tail"), Some("t"));
        assert_eq!(msg(&reference.0[1].0).get("Output"), Some("x"));
        assert_eq!(reference.0[0].1, (MAX_MESSAGE + 2) as u64);

        // Every split near a line end (where the cap is decided), and a sample of the rest.
        let line_ends: Vec<usize> = (0..data.len()).filter(|&i| data[i] == b'\n').collect();
        for k in (0..data.len())
            .step_by(997)
            .chain(line_ends.iter().flat_map(|&e| e.saturating_sub(3)..e + 3))
        {
            let got = collect(&mut Reader::new(Chunked::two_chunks(&data, k)));
            assert_eq!(got, reference, "split at byte {k}");
        }
    }

    #[test]
    fn many_tiny_lines_stay_bounded() {
        // Worst case for bookkeeping: in a `Follows` body each bare `\n` is an `Output` field,
        // so the stored text and the spans outgrow the wire size (and the cap).
        let mut data = b"Response: Follows\r\nPrivilege: Command\r\n".to_vec();
        data.resize(MAX_MESSAGE - 64, b'\n');
        data.extend_from_slice(b"--END COMMAND--\r\n\r\n");
        let mut reader = Reader::new(Chunked::sized(&data, 4096));
        let (frames, dropped) = collect(&mut reader);
        assert_eq!(dropped, 0);
        assert!(msg(&frames[0].0).len() > 65_000);
        let d = &reader.decoder;
        let held = d.raw.capacity()
            + d.line.capacity()
            + d.ends.capacity() * std::mem::size_of::<(u32, u32)>();
        assert!(held <= 16 * MAX_MESSAGE, "decoder holds {held} bytes");
    }

    #[test]
    fn oversized_follows_is_skipped_to_end_command() {
        // The body has blank lines: skipping to the next blank line would parse the rest of the
        // body as messages.
        let mut data = b"Response: Follows\r\nPrivilege: Command\r\n".to_vec();
        for _ in 0..3000 {
            data.extend_from_slice(b"\nline with: colon and padding padding padding\n");
        }
        data.extend_from_slice(b"--END COMMAND--\r\n\r\nEvent: After\r\n\r\n");
        let reference = collect(&mut Reader::new(Cursor::new(&data[..])));
        assert_eq!(reference.1, 1);
        assert_eq!(reference.0.len(), 1);
        assert_eq!(msg(&reference.0[0].0).event(), Some("After"));
        let got = collect(&mut Reader::new(Chunked::bytewise(&data, false)));
        assert_eq!(got, reference);
    }

    #[test]
    fn follows_without_end_command_does_not_swallow_the_stream() {
        let mut data = b"Response: Follows\r\nPrivilege: Command\r\n".to_vec();
        let mut n = 0;
        while data.len() < MAX_MESSAGE + FOLLOWS_SKIP_LIMIT + 4096 {
            data.extend_from_slice(format!("Event: Lost\r\nN: {n}\r\n\r\n").as_bytes());
            n += 1;
        }
        data.extend_from_slice(b"Event: Found\r\n\r\n");
        let (frames, dropped) = collect(&mut Reader::new(Cursor::new(&data[..])));
        assert_eq!(dropped, 1);
        let last = frames.last().map(|(f, _)| msg(f).event());
        assert_eq!(last, Some(Some("Found")));
        assert!(frames.len() < n / 2, "most of the junk is skipped");
        let junk = &frames[..frames.len() - 1];
        assert!(!junk.is_empty());
        assert!(
            junk.iter()
                .all(|(f, _)| msg(f).event() == Some("Lost") && msg(f).get("N").is_some()),
            "resync on a message boundary"
        );
    }

    #[test]
    fn embedded_nul_is_kept() {
        let frames = parse(b"Event: UserEvent\r\nData: a\0b\r\nNext: c\r\n\r\n");
        let m = msg(&frames[0]);
        assert_eq!(m.get("Data"), Some("a\0b"));
        assert_eq!(m.get("Next"), Some("c"));
    }

    #[test]
    fn cp1251_caller_name_is_decoded_lossily() {
        let frames = parse(
            b"Event: Newchannel\r\nChannel: SIP/trunk-00000001\r\n\
              CallerIDName: \xc2\xe8\xf2\xe0\xeb\xe8\xe9 \xca\xe0\xeb\xe8\xed\xe8\xed\r\n\
              CallerIDNum: 79991234567\r\n\r\n",
        );
        let m = msg(&frames[0]);
        let name = format!("{} {}", "\u{FFFD}".repeat(7), "\u{FFFD}".repeat(7));
        assert_eq!(m.get("CallerIDName"), Some(name.as_str()));
        assert_eq!(m.event(), Some("Newchannel"));
        assert_eq!(m.get("Channel"), Some("SIP/trunk-00000001"));
        assert_eq!(m.get("CallerIDNum"), Some("79991234567"));
    }

    #[test]
    fn invalid_bytes_around_a_colon_do_not_glue_into_a_char() {
        // Without the colon, \xd0 \x90 would be a valid "А" straddling the key/value boundary.
        let frames = parse(b"Event: X\r\n\xd0:\x90\r\n\r\n");
        assert_eq!(
            pairs(msg(&frames[0])),
            [("Event", "X"), ("\u{FFFD}", "\u{FFFD}")]
        );
    }

    #[test]
    fn response_follows_keeps_raw_text_until_end_command() {
        let frames = parse(
            b"Response: Follows\r\nPrivilege: Command\r\nActionID: 42\r\n\
              \nChannel              Location   Position   Application(Data)\n\
              SIP/219-00000001     s@ctx:1    Up      Dial(SIP/220,30)\n\
              \r\n\
              1 active channel\n--END COMMAND--\r\n\r\n\
              Response: Follows\r\nPrivilege: Command\r\nno newline at end--END COMMAND--\r\n\r\n\
              Response: Follows\r\nPrivilege: Command\r\ntext\n--END COMMAND--\r\n\
              Event: NoBlankLineBefore\r\n\r\n",
        );
        assert_eq!(frames.len(), 4);
        let m = msg(&frames[0]);
        assert_eq!(m.response(), Some("Follows"));
        assert_eq!(m.action_id(), Some("42"));
        assert_eq!(m.get("Privilege"), Some("Command"));
        let out: Vec<&str> = m.get_all("Output").collect();
        assert_eq!(
            out,
            [
                "",
                "Channel              Location   Position   Application(Data)",
                "SIP/219-00000001     s@ctx:1    Up      Dial(SIP/220,30)",
                "",
                "1 active channel",
            ]
        );
        assert_eq!(
            msg(&frames[1]).get_all("Output").collect::<Vec<_>>(),
            ["no newline at end"]
        );
        assert_eq!(
            msg(&frames[2]).get_all("Output").collect::<Vec<_>>(),
            ["text"]
        );
        assert_eq!(msg(&frames[3]).event(), Some("NoBlankLineBefore"));
    }

    #[test]
    fn originate_response_is_an_event() {
        let frames = parse(
            b"Event: OriginateResponse\r\nPrivilege: call,all\r\nActionID: c2c-7\r\n\
              Response: Success\r\nChannel: SIP/219-00000001\r\nReason: 4\r\n\
              Uniqueid: 1795668285.4\r\n\
              ChanVariable(SIP/219-00000001): x=y\r\n\r\n",
        );
        let m = msg(&frames[0]);
        assert_eq!(m.event(), Some("OriginateResponse"));
        assert_eq!(m.response(), None);
        assert_eq!(m.get("Response"), Some("Success"));
        assert_eq!(m.action_id(), Some("c2c-7"));
        assert_eq!(m.get("ChanVariable(SIP/219-00000001)"), Some("x=y"));
        // And a real response is classified as one.
        let r = Message::from_pairs(&[("Response", "Success"), ("Event", "Bogus")]);
        assert_eq!((r.response(), r.event()), (Some("Success"), None));
    }

    #[test]
    fn field_syntax_colons_empty_values_case_and_repeats() {
        let frames = parse(
            b"Event: Dial\r\nDialString: 7002/sip:7002@203.0.113.10:5063\r\n\
              AccountCode: \r\nLanguage:\r\nPadded:  two spaces\r\nNoSpace:x\r\n\
              Uniqueid: 1.1\r\nUniqueID: 1.2\r\n\
              Variable: a=1\r\nVARIABLE: b=2\r\nOther: o\r\nVariable: c=3\r\n\r\n",
        );
        let m = msg(&frames[0]);
        assert_eq!(m.get("DialString"), Some("7002/sip:7002@203.0.113.10:5063"));
        assert_eq!(m.get("AccountCode"), Some(""));
        assert_eq!(m.get("Language"), Some(""));
        assert_eq!(m.get("Padded"), Some(" two spaces"));
        assert_eq!(m.get("NoSpace"), Some("x"));
        assert_eq!(m.get("uniqueid"), Some("1.1"));
        assert_eq!(m.get("UNIQUEID"), Some("1.1"));
        assert_eq!(m.get_all("UniqueID").collect::<Vec<_>>(), ["1.1", "1.2"]);
        assert_eq!(
            m.get_all("variable").collect::<Vec<_>>(),
            ["a=1", "b=2", "c=3"]
        );
        assert_eq!(m.get("Missing"), None);
        assert_eq!(m.len(), 12);
        assert!(!m.is_empty());
        // Keys keep their wire spelling and order.
        let keys: Vec<&str> = m.iter().map(|(k, _)| k).collect();
        assert_eq!(&keys[6..9], ["Uniqueid", "UniqueID", "Variable"]);
    }

    #[test]
    fn bare_lf_framing() {
        let frames = parse(b"Event: A\nX: 1\n\n\n\nEvent: B\nY: 2\n\n");
        assert_eq!(
            frames,
            [
                Frame::Message(Message::from_pairs(&[("Event", "A"), ("X", "1")])),
                Frame::Message(Message::from_pairs(&[("Event", "B"), ("Y", "2")])),
            ]
        );
    }

    #[test]
    fn banner_only_on_the_first_line() {
        let banner = "Asterisk Call Manager/9.0.0";
        let frames = parse(b"Asterisk Call Manager/9.0.0\r\nResponse: Success\r\n\r\n");
        assert_eq!(frames[0], Frame::Banner(banner.into()));
        assert_eq!(msg(&frames[1]).response(), Some("Success"));

        // Later in the stream it is an ordinary line without a colon.
        let frames = parse(b"Event: A\r\n\r\nAsterisk Call Manager/9.0.0\r\n\r\n");
        assert_eq!(frames.len(), 2);
        assert_eq!(msg(&frames[1]).get("Output"), Some(banner));
        let frames = parse(b"\r\nAsterisk Call Manager/9.0.0\r\n\r\n");
        assert_eq!(pairs(msg(&frames[0])), [("Output", banner)]);
        let frames = parse(b"Response: Success\r\nAsterisk Call Manager/9.0.0\r\n\r\n");
        assert_eq!(frames.len(), 1);
    }

    #[test]
    fn end_of_stream() {
        assert_eq!(parse(b""), []);
        assert_eq!(parse(b"\r\n\r\n"), []);
        // A message cut by EOF is returned with what arrived.
        let frames = parse(b"Event: A\r\nKey: partial");
        assert_eq!(pairs(msg(&frames[0])), [("Event", "A"), ("Key", "partial")]);
        let mut reader = Reader::new(Cursor::new(&b"Event: A\r\n\r\n"[..]));
        assert!(reader.read_frame().unwrap().is_some());
        assert!(reader.read_frame().unwrap().is_none());
        assert!(reader.read_frame().unwrap().is_none());
    }

    #[test]
    fn message_api() {
        let mut m = Message::new();
        assert!(m.is_empty());
        assert_eq!((m.event(), m.response(), m.action_id()), (None, None, None));
        m.push("Action", "Ping");
        m.push("ActionID", "p-1");
        assert_eq!(
            m,
            Message::from_pairs(&[("Action", "Ping"), ("ActionID", "p-1")])
        );
        assert_ne!(
            m,
            Message::from_pairs(&[("Action", "Pin"), ("gActionID", "p-1")])
        );
        assert_eq!(m.action_id(), Some("p-1"));
        assert_eq!(
            format!("{m:?}"),
            r#"Message [("Action", "Ping"), ("ActionID", "p-1")]"#
        );
    }

    #[test]
    fn an_action_encodes_to_one_frame_the_reader_reads_back() {
        let action = Message::from_pairs(&[
            ("Action", "Originate"),
            ("Channel", "SIP/219"),
            ("Variable", "CallMeCALL_ID=a:b"),
            ("Account", ""),
        ]);
        let expected = b"Action: Originate\r\nChannel: SIP/219\r\n\
                         Variable: CallMeCALL_ID=a:b\r\nAccount: \r\n\r\n";
        assert_eq!(encode_action(&action).unwrap(), expected);
        // What we send, the reader reads back.
        assert_eq!(parse(expected), [Frame::Message(action)]);
    }

    #[test]
    fn injection_is_refused() {
        let bad: &[(&str, &str)] = &[
            ("Action", "Ping\r\nAction: Logoff"),
            ("Action", "Ping\nAction: Logoff"),
            ("Action", "Ping\r"),
            ("Act\rion", "Ping"),
            ("Act\nion", "Ping"),
            ("Action: Logoff\r\nX", "Ping"),
            ("Action:", "Ping"),
        ];
        for &(k, v) in bad {
            let action = Message::from_pairs(&[("ActionID", "1"), (k, v), ("Last", "x")]);
            match encode_action(&action) {
                Err(Error::Injection { key }) => assert_eq!(key, k),
                other => panic!("{k:?}: {v:?} gave {other:?}"),
            }
        }
    }
}
