//! POSTing a recording to the upload URL that `attachRecord` returned (bitrix24-api.md §4.2
//! mode 3), streamed: the file goes from its reader into the multipart body as it is sent,
//! so a recording of hundreds of megabytes never sits in memory (once or twice).
//!
//! The body is built by hand (one part; no multipart crate is allowed). Its boundary cannot
//! be checked against the whole file before sending any more, so the bytes are checked as
//! they pass: a file that contains the boundary ends the upload with an error, and the retry
//! picks a new boundary.

use std::io::{self, Cursor, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::agent::{agent, Redirects};
use super::client::redact_url;
use super::envelope::{json_u64, parse_envelope};
use super::error::Error;

/// The upload answer is a small JSON envelope; more than this is not read.
const MAX_ANSWER: u64 = 64 * 1024;

/// POST `content` (exactly `len` bytes when given: sent with that `Content-Length`, else
/// chunked) as the multipart field `field_name` named `filename`. Returns the Drive file id
/// if the answer has one.
///
/// The URL carries a token (and, for webhooks, the webhook code): it is never logged or put
/// into an error as is, only through [`redact_url`].
pub fn upload_record(
    upload_url: &str,
    field_name: &str,
    filename: &str,
    content: &mut dyn Read,
    len: Option<u64>,
    timeout: Duration,
) -> Result<Option<u64>, Error> {
    let boundary = boundary();
    let (head, tail) = multipart_frame(&boundary, field_name, filename);
    let shown = redact_url(upload_url);
    log::debug!(
        "bitrix24 -> POST {shown} ({} bytes, {filename})",
        len.map_or("unknown".to_string(), |n| n.to_string())
    );
    let scrub = |m: String| m.replace(upload_url, &shown);
    let mut body = Multipart::new(head, content, len, tail, &boundary);
    let mut request = agent(timeout, Redirects::Follow).post(upload_url).header(
        "Content-Type",
        &format!("multipart/form-data; boundary={boundary}"),
    );
    if let Some(total) = body.total_len() {
        request = request.header("Content-Length", &total.to_string());
    }
    let mut response = request
        .send(ureq::SendBody::from_reader(&mut body))
        .map_err(|e| Error::Transport(scrub(e.to_string())))?;
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .with_config()
        .limit(MAX_ANSWER)
        .read_to_string()
        .map_err(|e| Error::Transport(scrub(format!("reading upload response: {e}"))))?;
    log::debug!(
        "bitrix24 <- upload HTTP {status}: {}",
        super::error::truncate(&text, 512)
    );
    let reply = parse_envelope(status, &text)?;
    Ok(reply.result.get("FILE_ID").and_then(json_u64))
}

/// A fresh boundary each time (time and a counter), so a retry after a file that happened to
/// contain one uses another.
fn boundary() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("callme-{nanos:x}-{n}-{:x}", std::process::id())
}

/// The text before and after the file in a one-part `multipart/form-data` body (RFC 7578).
/// Quotes and line breaks in the names are replaced, since they would end the header.
pub fn multipart_frame(boundary: &str, field: &str, filename: &str) -> (Vec<u8>, Vec<u8>) {
    let clean = |s: &str| s.replace(['"', '\r', '\n', '\\'], "_");
    let mime = if filename.ends_with(".mp3") {
        "audio/mpeg"
    } else if filename.ends_with(".wav") {
        "audio/wav"
    } else {
        "application/octet-stream"
    };
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"{}\"; filename=\"{}\"\r\n\
         Content-Type: {mime}\r\n\r\n",
        clean(field),
        clean(filename)
    );
    (
        head.into_bytes(),
        format!("\r\n--{boundary}--\r\n").into_bytes(),
    )
}

/// head ‖ content ‖ tail as one reader. The content is checked for the boundary as it
/// passes, and, when its length was announced, for being exactly that long (a file that
/// changes under us would otherwise leave the server waiting, or send bytes it never reads).
struct Multipart<'a> {
    head: Cursor<Vec<u8>>,
    content: &'a mut dyn Read,
    len: Option<u64>,
    sent: u64,
    tail: Cursor<Vec<u8>>,
    needle: Vec<u8>,
    /// The last `needle.len() - 1` content bytes, to find a boundary split across reads.
    carry: Vec<u8>,
    content_done: bool,
}

impl<'a> Multipart<'a> {
    fn new(
        head: Vec<u8>,
        content: &'a mut dyn Read,
        len: Option<u64>,
        tail: Vec<u8>,
        boundary: &str,
    ) -> Multipart<'a> {
        Multipart {
            head: Cursor::new(head),
            content,
            len,
            sent: 0,
            tail: Cursor::new(tail),
            needle: format!("--{boundary}").into_bytes(),
            carry: Vec::new(),
            content_done: false,
        }
    }

    fn total_len(&self) -> Option<u64> {
        let frame = self.head.get_ref().len() + self.tail.get_ref().len();
        self.len.map(|n| n + frame as u64)
    }

    fn check(&mut self, chunk: &[u8]) -> io::Result<()> {
        let mut window = std::mem::take(&mut self.carry);
        window.extend_from_slice(chunk);
        if window
            .windows(self.needle.len())
            .any(|w| w == self.needle.as_slice())
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the file contains the multipart boundary; the retry uses another",
            ));
        }
        let keep = self.needle.len().saturating_sub(1).min(window.len());
        self.carry = window.split_off(window.len() - keep);
        Ok(())
    }
}

impl Read for Multipart<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.head.read(buf)?;
        if n > 0 {
            return Ok(n);
        }
        if !self.content_done {
            let want = match self.len {
                Some(len) => (len - self.sent).min(buf.len() as u64) as usize,
                None => buf.len(),
            };
            let n = if want == 0 {
                0
            } else {
                self.content.read(&mut buf[..want])?
            };
            if n > 0 {
                self.check(&buf[..n])?;
                self.sent += n as u64;
                return Ok(n);
            }
            if self.len.is_some_and(|len| self.sent < len) {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "the file ended after {} of {} bytes",
                        self.sent,
                        self.len.unwrap_or(0)
                    ),
                ));
            }
            self.content_done = true;
        }
        self.tail.read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(content: &[u8], len: Option<u64>, boundary: &str) -> io::Result<Vec<u8>> {
        let (head, tail) = multipart_frame(boundary, "file", "a\".mp3");
        let mut src = content;
        let mut m = Multipart::new(head, &mut src, len, tail, boundary);
        let total = m.total_len();
        let mut out = Vec::new();
        // Small reads, so a boundary split across reads is exercised.
        let mut buf = [0u8; 3];
        loop {
            let n = m.read(&mut buf)?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        if let Some(t) = total {
            assert_eq!(t, out.len() as u64);
        }
        Ok(out)
    }

    #[test]
    fn one_file_part_with_the_announced_length() {
        let b = body(b"\x00\x01ID3", Some(5), "XyZ").unwrap();
        let mut want = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; \
                         filename=\"a_.mp3\"\r\nContent-Type: audio/mpeg\r\n\r\n"
            .to_vec();
        want.extend_from_slice(b"\x00\x01ID3\r\n--XyZ--\r\n");
        assert_eq!(b, want);
        assert_eq!(body(b"\x00\x01ID3", None, "XyZ").unwrap(), want);
    }

    #[test]
    fn a_boundary_inside_the_file_or_a_short_file_is_an_error() {
        let err = body(b"abc--XyZdef", None, "XyZ").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let err = body(b"abc", Some(10), "XyZ").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        // A longer file than announced sends the announced bytes only.
        let b = body(b"abcdef", Some(3), "Q").unwrap();
        assert!(b.windows(5).any(|w| w == b"abc\r\n"), "{b:?}");
        assert!(boundary() != boundary());
    }
}
