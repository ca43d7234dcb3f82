//! Attaching a call's recording to the finished Bitrix24 call (`attachRecord`, bitrix24-api.md
//! §4.2).
//!
//! The tracker names the file (from `CallMeFULLFNAME` or `MIXMONITOR_FILENAME`) and queues the
//! attach right after `finish`, because Bitrix24 refuses a record for a call that is not
//! finished. The file may not be ready then: our dialplan converts the WAV to MP3 *after*
//! hangup. So an attach is a small state machine driven by the delivery queue:
//!
//! 1. check the name: only `.mp3`/`.wav`, only below `[recording] pbx_root` (no `..`, no
//!    symlink leading out of the directory). A refused name is logged once and skipped;
//! 2. look for the file: the MP3 is ready when it exists and its WAV is gone (`lame … && rm`
//!    removes the WAV only after a complete MP3). Not ready: [`Progress::Later`] with a growing
//!    delay, up to `wait`;
//! 3. after `wait`, send the WAV of the same name if it is there, else give up with one log
//!    line;
//! 4. send it: `RECORD_URL` (`mode = url`), base64 `FILE_CONTENT` (encoded as the file is
//!    read), or, above `upload_max`, `FILENAME` alone and then the file streamed to the
//!    returned upload URL ([`super::upload`], `mode = upload`). A file is never held whole,
//!    raw and encoded.
//!
//! The daemon runs attaches on their own thread ([`super::attach_worker`]): all of this can
//! take minutes, and cards must not wait for it.

use std::fs;
use std::io::{ErrorKind, Read};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use super::agent::{agent, Redirects};
use super::api::{self, Attached, RecordParams};
use super::client::Transport;
use super::error::Error;
use super::upload::upload_record;
use super::urlenc::url_encode;
use crate::config::{RecordingConfig, RecordingMode};

/// HEAD requests to see whether a file is there.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Downloading a recording from the PBX and uploading it to Bitrix24.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(300);
/// Larger files are refused (by their size on disk or `Content-Length`, before a byte is
/// read): a recording this size is a runaway MixMonitor.
const MAX_FILE: u64 = 512 * 1024 * 1024;
/// The longest pause between two looks for the file.
const MAX_POLL: Duration = Duration::from_secs(15);

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Sent; the text says how, for the log.
    Attached(String),
    /// The file is not ready: look again after this long.
    Later(Duration),
    /// Nothing will be sent for this call. `outcome` is the counter's name (`off`, `refused`,
    /// `missing`); the reason has already been logged where it is worth a warning.
    Skipped { why: String, outcome: &'static str },
}

/// One attempt to attach the recording `raw` (as the channel variable named it) to `call_id`.
/// `waited` is how long attempts for this call have been going on.
///
/// Errors are Bitrix24's or the PBX web server's; the delivery queue retries the retryable
/// ones like any other step.
pub fn attach(
    cfg: &RecordingConfig,
    t: &dyn Transport,
    call_id: &str,
    raw: &str,
    waited: Duration,
) -> Result<Progress, Error> {
    if cfg.mode == RecordingMode::Off {
        return Ok(skipped("[recording] mode = off", "off"));
    }
    let target = match Target::resolve(raw, &cfg.pbx_root) {
        Ok(t) => t,
        Err(why) => return Ok(refuse(raw, &why)),
    };
    let store = Store::for_config(cfg);
    let found = match locate(&store, &target, waited, cfg.wait)? {
        Located::Found(f) => f,
        Located::NotYet => return Ok(Progress::Later(poll_delay(waited, cfg.wait))),
        Located::Outside(rel) => {
            return Ok(refuse(
                raw,
                &format!("{rel} leads outside {}", store.root()),
            ))
        }
        Located::Missing => {
            log::warn!(
                "{call_id}: recording {raw} did not appear in {} within {} s, giving up",
                store.root(),
                cfg.wait.as_secs_f64()
            );
            return Ok(skipped("recording file not found", "missing"));
        }
    };
    let filename = found.filename();
    if found.segments != target.segments {
        log::warn!(
            "{call_id}: {} did not appear within {} s, attaching {} instead",
            target.rel(),
            cfg.wait.as_secs_f64(),
            found.rel()
        );
    }
    if cfg.mode == RecordingMode::Url {
        let base = cfg.public_url.as_deref().unwrap_or_default();
        let url = format!("{base}{}", found.url_path());
        api::attach_record(t, call_id, &RecordParams::Url { url, filename })?;
        return Ok(Progress::Attached(format!("{} by URL", found.rel())));
    }
    let (reader, len) = match store.open(&found)? {
        Opened::Stream(r, len) => (r, len),
        Opened::Refused(why) => return Ok(refuse(raw, &why)),
    };
    let read_err = |e: std::io::Error| Error::Transport(format!("reading {}: {e}", found.rel()));
    match prepare(reader, len, cfg.upload_max).map_err(read_err)? {
        Body::Inline { base64, len } => {
            api::attach_record(t, call_id, &RecordParams::Content { filename, base64 })?;
            Ok(Progress::Attached(format!(
                "{} ({len} bytes) as base64",
                found.rel()
            )))
        }
        Body::Upload { mut reader, len } => {
            let name_only = RecordParams::NameOnly {
                filename: filename.clone(),
            };
            let (upload_url, field_name) = match api::attach_record(t, call_id, &name_only)? {
                Attached::UploadUrl {
                    upload_url,
                    field_name,
                } => (upload_url, field_name),
                Attached::File(_) => {
                    return Err(Error::Decode(
                        "attachRecord with FILENAME only did not return an uploadUrl".into(),
                    ))
                }
            };
            check_upload_answer(&upload_url, &field_name)?;
            upload_record(
                &upload_url,
                &field_name,
                &filename,
                &mut reader,
                len,
                TRANSFER_TIMEOUT,
            )?;
            Ok(Progress::Attached(format!(
                "{} ({} bytes) through the upload URL",
                found.rel(),
                len.map_or("unknown".to_string(), |n| n.to_string())
            )))
        }
    }
}

/// The longest upload URL and field name taken from an `attachRecord` answer: they come from
/// the network, and the URL is requested and the name put into a body header.
const MAX_UPLOAD_URL: usize = 4096;
const MAX_FIELD_NAME: usize = 128;

fn check_upload_answer(url: &str, field: &str) -> Result<(), Error> {
    let lower = url.to_ascii_lowercase();
    if url.len() > MAX_UPLOAD_URL
        || !(lower.starts_with("https://") || lower.starts_with("http://"))
    {
        return Err(Error::Decode(format!(
            "attachRecord: uploadUrl is not an http(s) URL of at most {MAX_UPLOAD_URL} bytes \
             ({} bytes)",
            url.len()
        )));
    }
    if field.len() > MAX_FIELD_NAME {
        return Err(Error::Decode(format!(
            "attachRecord: fieldName longer than {MAX_FIELD_NAME} bytes"
        )));
    }
    Ok(())
}

/// How the file goes to Bitrix24.
enum Body {
    /// At most `upload_max` bytes: inline, base64.
    Inline { base64: String, len: u64 },
    /// Larger: streamed to the upload URL (`len` when known beforehand).
    Upload {
        reader: Box<dyn Read + Send>,
        len: Option<u64>,
    },
}

/// Choose inline or upload without holding a large file: a known length decides at once
/// (inline files are base64-encoded as they are read, never held raw); an unknown one (a
/// recordings server without `Content-Length`) is read up to `upload_max` + 1 bytes, and
/// what is beyond goes to the upload behind what was read.
fn prepare(
    mut reader: Box<dyn Read + Send>,
    len: Option<u64>,
    upload_max: u64,
) -> std::io::Result<Body> {
    match len {
        Some(n) if n <= upload_max => {
            let (base64, read) = base64_encode_reader(&mut reader.take(n))?;
            if read != n {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("the file ended after {read} of {n} bytes"),
                ));
            }
            Ok(Body::Inline { base64, len: n })
        }
        Some(n) => Ok(Body::Upload {
            reader,
            len: Some(n),
        }),
        None => {
            let mut head = Vec::new();
            (&mut reader)
                .take(upload_max.saturating_add(1))
                .read_to_end(&mut head)?;
            if head.len() as u64 <= upload_max {
                let len = head.len() as u64;
                return Ok(Body::Inline {
                    base64: base64_encode(&head),
                    len,
                });
            }
            Ok(Body::Upload {
                reader: Box::new(std::io::Cursor::new(head).chain(reader)),
                len: None,
            })
        }
    }
}

fn skipped(why: &str, outcome: &'static str) -> Progress {
    Progress::Skipped {
        why: why.to_string(),
        outcome,
    }
}

fn refuse(raw: &str, why: &str) -> Progress {
    log::warn!("recording {raw:?} refused: {why}");
    skipped(&format!("recording refused: {why}"), "refused")
}

/// The pause before the next look: `wait / 10` (at least 0.1 s, at most 1 s) at first, then
/// about as long as we have already waited, so it doubles (1, 1, 2, 4, 8 s…), capped at
/// [`MAX_POLL`] and never past the deadline.
pub fn poll_delay(waited: Duration, wait: Duration) -> Duration {
    let first = (wait / 10).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let left = wait.saturating_sub(waited);
    waited
        .max(first)
        .min(MAX_POLL)
        .min(left)
        .max(Duration::from_millis(10))
}

// ---------------------------------------------------------------------------------------------
// Names

/// A recording named relative to the recordings root, as checked path segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub segments: Vec<String>,
}

impl Target {
    /// Check a name from the dialplan. An absolute name must be below `root` (the PBX's
    /// recordings root); a relative one is taken relative to it. `..`, an extension other than
    /// `.mp3`/`.wav` and non-UTF-8 names are refused.
    pub fn resolve(raw: &str, root: &Path) -> Result<Target, String> {
        let raw = raw.trim();
        if raw.is_empty() || raw.contains('\0') {
            return Err("empty or NUL in the name".into());
        }
        let path = Path::new(raw);
        if path.components().any(|c| c == Component::ParentDir) {
            return Err("the name contains `..`".into());
        }
        let rel = if path.is_absolute() {
            path.strip_prefix(root)
                .map_err(|_| format!("not below [recording] pbx_root {}", root.display()))?
        } else {
            path
        };
        let mut segments = Vec::new();
        for c in rel.components() {
            match c {
                Component::Normal(s) => match s.to_str() {
                    Some(s) => segments.push(s.to_string()),
                    None => return Err("the name is not UTF-8".into()),
                },
                Component::CurDir => {}
                _ => return Err("not a plain relative path".into()),
            }
        }
        if segments.is_empty() {
            return Err("no file name".into());
        }
        let t = Target { segments };
        if t.ext().is_none() {
            return Err("only .mp3 and .wav files can be attached".into());
        }
        Ok(t)
    }

    fn name(&self) -> &str {
        self.segments.last().map_or("", String::as_str)
    }

    /// `mp3` or `wav`, lower-cased.
    fn ext(&self) -> Option<&'static str> {
        let (_, ext) = self.name().rsplit_once('.')?;
        match ext.to_ascii_lowercase().as_str() {
            "mp3" => Some("mp3"),
            "wav" => Some("wav"),
            _ => None,
        }
    }

    /// The same name with the other extension.
    fn with_ext(&self, ext: &str) -> Target {
        let mut segments = self.segments.clone();
        if let Some(last) = segments.last_mut() {
            let stem = last.rsplit_once('.').map_or(last.as_str(), |(s, _)| s);
            *last = format!("{stem}.{ext}");
        }
        Target { segments }
    }

    /// `FILENAME`: lower case, since Bitrix24 accepts only `mp3` and `wav` (§4.2).
    pub fn filename(&self) -> String {
        self.name().to_lowercase()
    }

    /// For logs.
    pub fn rel(&self) -> String {
        self.segments.join("/")
    }

    /// The path below a base URL, each segment percent-encoded.
    pub fn url_path(&self) -> String {
        self.segments
            .iter()
            .map(|s| url_encode(s))
            .collect::<Vec<_>>()
            .join("/")
    }
}

// ---------------------------------------------------------------------------------------------
// Where the files are

enum Located {
    Found(Target),
    NotYet,
    Missing,
    /// A symlink below the root points outside it.
    Outside(String),
}

/// Pick the file to send (see the module docs for the rule).
fn locate(
    store: &Store,
    target: &Target,
    waited: Duration,
    wait: Duration,
) -> Result<Located, Error> {
    let requested = target.ext().unwrap_or("wav");
    let mp3 = if requested == "mp3" {
        target.clone()
    } else {
        target.with_ext("mp3")
    };
    let wav = if requested == "wav" {
        target.clone()
    } else {
        target.with_ext("wav")
    };
    let present = |t: &Target| -> Result<Option<bool>, Error> {
        Ok(match store.probe(t)? {
            Probe::Present => Some(true),
            Probe::Absent => Some(false),
            Probe::Outside => None,
        })
    };
    let (Some(has_mp3), Some(has_wav)) = (present(&mp3)?, present(&wav)?) else {
        return Ok(Located::Outside(target.rel()));
    };
    // A complete MP3: the dialplan removes the WAV only after lame succeeded.
    if has_mp3 && !has_wav {
        return Ok(Located::Found(mp3));
    }
    // FreePBX's recordings stay WAV; one that exists is complete once the call has ended.
    if requested == "wav" && has_wav {
        return Ok(Located::Found(wav));
    }
    if waited < wait {
        return Ok(Located::NotYet);
    }
    if has_wav {
        return Ok(Located::Found(wav));
    }
    Ok(Located::Missing)
}

enum Probe {
    Present,
    Absent,
    Outside,
}

enum Opened {
    Stream(Box<dyn Read + Send>, Option<u64>),
    Refused(String),
}

/// Where callme reads (or checks) the recordings.
enum Store {
    /// `path_base`, a local or mounted directory.
    Local(PathBuf),
    /// A base URL ending with `/`.
    Http(String),
}

impl Store {
    /// `fetch_url` if set; otherwise `mode = url` checks the public URL (what Bitrix24 will
    /// download) and `mode = upload` reads `path_base`.
    fn for_config(cfg: &RecordingConfig) -> Store {
        match (&cfg.fetch_url, cfg.mode, &cfg.public_url) {
            (Some(url), _, _) => Store::Http(url.clone()),
            (None, RecordingMode::Url, Some(url)) => Store::Http(url.clone()),
            _ => Store::Local(cfg.path_base.clone()),
        }
    }

    fn root(&self) -> String {
        match self {
            Store::Local(p) => p.display().to_string(),
            Store::Http(url) => url.clone(),
        }
    }

    fn probe(&self, t: &Target) -> Result<Probe, Error> {
        match self {
            Store::Local(base) => Ok(match local_path(base, t) {
                LocalPath::File(_) => Probe::Present,
                LocalPath::Absent => Probe::Absent,
                LocalPath::Outside => Probe::Outside,
            }),
            Store::Http(base) => {
                let url = format!("{base}{}", t.url_path());
                let response = agent(PROBE_TIMEOUT, Redirects::Follow)
                    .head(&url)
                    .call()
                    .map_err(|e| Error::Transport(format!("HEAD {}: {e}", t.rel())))?;
                match response.status().as_u16() {
                    200..=299 => Ok(Probe::Present),
                    404 | 410 => Ok(Probe::Absent),
                    status => Err(Error::Http {
                        status,
                        body: format!("HEAD {} at the recordings server", t.rel()),
                    }),
                }
            }
        }
    }

    /// The file as a reader, with its length when known. Larger than [`MAX_FILE`] (by its
    /// size on disk or its `Content-Length`) is refused before a byte is read; a server that
    /// sends more than it announced, or more than that without announcing, is cut off there.
    fn open(&self, t: &Target) -> Result<Opened, Error> {
        match self {
            Store::Local(base) => {
                let path = match local_path(base, t) {
                    LocalPath::File(p) => p,
                    LocalPath::Outside => {
                        return Ok(Opened::Refused(format!("{} leads outside", t.rel())))
                    }
                    LocalPath::Absent => {
                        return Err(Error::Transport(format!("{} vanished", t.rel())))
                    }
                };
                let file = fs::File::open(&path)
                    .map_err(|e| Error::Transport(format!("reading {}: {e}", t.rel())))?;
                let len = file
                    .metadata()
                    .map_err(|e| Error::Transport(format!("reading {}: {e}", t.rel())))?
                    .len();
                if len > MAX_FILE {
                    return Ok(Opened::Refused(format!("larger than {MAX_FILE} bytes")));
                }
                Ok(Opened::Stream(Box::new(file), Some(len)))
            }
            Store::Http(base) => {
                let url = format!("{base}{}", t.url_path());
                let response = agent(TRANSFER_TIMEOUT, Redirects::Follow)
                    .get(&url)
                    .call()
                    .map_err(|e| Error::Transport(format!("GET {}: {e}", t.rel())))?;
                let status = response.status().as_u16();
                if !(200..300).contains(&status) {
                    return Err(Error::Http {
                        status,
                        body: format!("GET {} at the recordings server", t.rel()),
                    });
                }
                let len = response
                    .headers()
                    .get("content-length")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok());
                if len.is_some_and(|n| n > MAX_FILE) {
                    return Ok(Opened::Refused(format!("larger than {MAX_FILE} bytes")));
                }
                let reader = response
                    .into_body()
                    .into_with_config()
                    .limit(len.unwrap_or(MAX_FILE))
                    .reader();
                Ok(Opened::Stream(Box::new(reader), len))
            }
        }
    }
}

enum LocalPath {
    /// The canonical path of a regular file inside the base.
    File(PathBuf),
    Absent,
    Outside,
}

/// Resolve symlinks and check the result is still inside `base`: the name was checked
/// lexically, but a link below the root could still point at `/etc`.
fn local_path(base: &Path, t: &Target) -> LocalPath {
    let Ok(root) = fs::canonicalize(base) else {
        return LocalPath::Absent;
    };
    let mut path = base.to_path_buf();
    path.extend(&t.segments);
    match fs::canonicalize(&path) {
        Ok(real) if !real.starts_with(&root) => LocalPath::Outside,
        Ok(real) if real.is_file() => LocalPath::File(real),
        Ok(_) => LocalPath::Absent,
        Err(e) if e.kind() == ErrorKind::NotFound => LocalPath::Absent,
        Err(e) => {
            log::debug!("recording {}: {e}", t.rel());
            LocalPath::Absent
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Base64

/// Standard base64 with padding (RFC 4648 §4), what `FILE_CONTENT` expects.
pub fn base64_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// [`base64_encode`] of everything `r` gives, read in chunks (never held raw); also returns
/// how many bytes were read.
pub fn base64_encode_reader(r: &mut dyn Read) -> std::io::Result<(String, u64)> {
    // A multiple of 3, so only the last chunk can need padding.
    const CHUNK: usize = 3 * 16 * 1024;
    let mut out = String::new();
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        // Fill the chunk (reads may come short) so padding appears only at the very end.
        let mut filled = 0;
        while filled < CHUNK {
            match r.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        total += filled as u64;
        out.push_str(&base64_encode(&buf[..filled]));
        if filled < CHUNK {
            return Ok((out, total));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_of_a_reader_equals_base64_of_its_bytes() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        for len in [0, 1, 2, 3, 49_151, 49_152, 49_153, 200_000] {
            /// A reader that hands out at most 1000 bytes per read.
            struct Trickle<'a>(&'a [u8]);
            impl Read for Trickle<'_> {
                fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                    let n = buf.len().min(self.0.len()).min(1000);
                    buf[..n].copy_from_slice(&self.0[..n]);
                    self.0 = &self.0[n..];
                    Ok(n)
                }
            }
            let (b64, n) = base64_encode_reader(&mut Trickle(&data[..len])).unwrap();
            assert_eq!(n, len as u64);
            assert_eq!(b64, base64_encode(&data[..len]), "{len}");
        }
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(input.as_bytes()), want, "{input}");
        }
        assert_eq!(base64_encode(&[0xff, 0xfe, 0xfd]), "//79");
    }

    #[test]
    fn names_are_checked() {
        let root = Path::new("/var/spool/asterisk");
        let ok = |raw: &str| Target::resolve(raw, root).map(|t| t.rel());
        assert_eq!(
            ok("/var/spool/asterisk/continuous/2025/10/26/call-1.2.mp3").unwrap(),
            "continuous/2025/10/26/call-1.2.mp3"
        );
        assert_eq!(ok("2026/11/26/in-1.WAV").unwrap(), "2026/11/26/in-1.WAV");
        assert_eq!(ok("./a/./b.wav").unwrap(), "a/b.wav");
        for bad in [
            "",
            "../../etc/passwd.wav",
            "/var/spool/asterisk/../../../etc/shadow.mp3",
            "/etc/passwd.mp3",
            "/var/spool/asteriskX/a.mp3",
            "a/b.gsm",
            "a/b",
            "a/mp3",
        ] {
            assert!(ok(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn filenames_and_urls() {
        let t = Target::resolve("mon/2026/In Call #1.WAV", Path::new("/r")).unwrap();
        assert_eq!(t.filename(), "in call #1.wav");
        assert_eq!(t.url_path(), "mon/2026/In%20Call%20%231.WAV");
        assert_eq!(t.with_ext("mp3").rel(), "mon/2026/In Call #1.mp3");
    }

    #[test]
    fn poll_delay_doubles_and_stops_at_the_deadline() {
        let s = Duration::from_secs;
        let wait = s(120);
        assert_eq!(poll_delay(s(0), wait), s(1));
        assert_eq!(poll_delay(s(1), wait), s(1));
        assert_eq!(poll_delay(s(2), wait), s(2));
        assert_eq!(poll_delay(s(4), wait), s(4));
        assert_eq!(poll_delay(s(60), wait), MAX_POLL);
        assert_eq!(poll_delay(s(115), wait), s(5));
        assert_eq!(poll_delay(Duration::ZERO, s(2)), Duration::from_millis(200));
    }
}
