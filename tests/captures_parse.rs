//! Every real capture in `tests/fixtures/*.ami` (Asterisk 20, chan_sip) and its twin in
//! `tests/fixtures/pjsip/` (Asterisk 22, chan_pjsip; see CAPTURES.md) goes through the codec:
//! nothing dropped, every `Event:` line becomes an event frame, banner first, Goodbye last.

use std::fs;
use std::io::{self, BufRead, Read};
use std::path::{Path, PathBuf};

use callme::ami::codec::{Frame, Reader};

/// `grep -c '^Event:' tests/fixtures/*.ami tests/fixtures/pjsip/*.ami`. A new capture must be
/// added here.
const EXPECTED_EVENTS: &[(&str, usize)] = &[
    ("a_inbound_answered", 96),
    ("b_inbound_noanswer", 49),
    ("c_inbound_busy", 49),
    ("d_inbound_blind_transfer_ami", 165),
    ("e_inbound_attended_transfer_ami", 242),
    ("f_click2call_answered", 101),
    ("h_inbound_recorded_mixmonitor", 103),
    ("k_inbound_queue_ringall", 119),
    ("l_internal_219_to_220", 94),
    ("pk_inbound_directed_pickup_221_from_220", 117),
    ("v_inbound_attended_transfer_refer_220_to_221", 201),
    ("w_outbound_desk_220_answered_carrier_hangs_up", 93),
    ("x_outbound_desk_221_noanswer", 47),
    ("pjsip/a_inbound_answered", 84),
    ("pjsip/b_inbound_noanswer", 43),
    ("pjsip/c_inbound_busy", 44),
    ("pjsip/d_inbound_blind_transfer_ami", 149),
    ("pjsip/e_inbound_attended_transfer_ami", 229),
    ("pjsip/f_click2call_answered", 93),
    ("pjsip/h_inbound_recorded_mixmonitor", 91),
    ("pjsip/k_inbound_queue_ringall", 106),
    ("pjsip/l_internal_219_to_220", 82),
    ("pjsip/pk_inbound_directed_pickup_221_from_220", 101),
    ("pjsip/v_inbound_attended_transfer_refer_220_to_221", 191),
    ("pjsip/w_outbound_desk_220_answered_carrier_hangs_up", 82),
    ("pjsip/x_outbound_desk_221_noanswer", 42),
];

/// The chan_sip captures, then their PJSIP twins.
fn fixtures() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut all = Vec::new();
    for dir in [root.clone(), root.join("pjsip")] {
        let mut files: Vec<PathBuf> = fs::read_dir(&dir)
            .expect("tests/fixtures")
            .map(|e| e.expect("dir entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "ami"))
            .collect();
        files.sort();
        all.extend(files);
    }
    all
}

/// `a_inbound_answered`, or `pjsip/a_inbound_answered` for a PJSIP twin.
fn stem(path: &Path) -> String {
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .expect("utf-8 name");
    match path.parent().and_then(Path::file_name) {
        Some(dir) if dir == "pjsip" => format!("pjsip/{name}"),
        _ => name.to_string(),
    }
}

/// All frames, with `position()` after each, and `dropped()`.
fn parse<R: BufRead>(input: R) -> (Vec<(Frame, u64)>, u64) {
    let mut reader = Reader::new(input);
    let mut frames = Vec::new();
    while let Some(frame) = reader.read_frame().expect("read_frame") {
        frames.push((frame, reader.position()));
    }
    (frames, reader.dropped())
}

#[test]
fn every_capture_has_an_expected_count() {
    let found: Vec<String> = fixtures().iter().map(|p| stem(p)).collect();
    let expected: Vec<String> = EXPECTED_EVENTS.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(found, expected);
}

#[test]
fn every_capture_parses() {
    for path in fixtures() {
        let name = stem(&path);
        let bytes = fs::read(&path).expect("read capture");
        let raw_events = bytes
            .split(|&b| b == b'\n')
            .filter(|line| line.starts_with(b"Event:"))
            .count();
        let expected = EXPECTED_EVENTS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, count)| *count)
            .unwrap_or_else(|| panic!("{name}: no expected event count"));

        let (frames, dropped) = parse(&bytes[..]);
        assert_eq!(dropped, 0, "{name}: dropped messages");
        let events = frames
            .iter()
            .filter(|(f, _)| matches!(f, Frame::Message(m) if m.event().is_some()))
            .count();
        assert_eq!(events, raw_events, "{name}: events vs Event: lines");
        assert_eq!(events, expected, "{name}: events vs expected count");

        match &frames.first().expect("frames").0 {
            Frame::Banner(b) => assert!(b.starts_with("Asterisk Call Manager/"), "{name}: {b}"),
            other => panic!("{name}: first frame is not the banner: {other:?}"),
        }
        match &frames.last().expect("frames").0 {
            Frame::Message(m) => assert_eq!(m.response(), Some("Goodbye"), "{name}"),
            other => panic!("{name}: last frame is {other:?}"),
        }
        assert_eq!(
            frames.last().unwrap().1,
            bytes.len() as u64,
            "{name}: position"
        );
    }
}

/// Serves a capture in the very read sizes Asterisk's socket delivered (the `R` rows of the
/// `.timing.tsv` sidecar).
struct Replay {
    data: Vec<u8>,
    pos: usize,
    cuts: Vec<usize>,
}

impl Read for Replay {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = {
            let chunk = self.fill_buf()?;
            let n = chunk.len().min(buf.len());
            buf[..n].copy_from_slice(&chunk[..n]);
            n
        };
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for Replay {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        let next = self.cuts.partition_point(|&c| c <= self.pos);
        let end = self.cuts.get(next).copied().unwrap_or(self.data.len());
        Ok(&self.data[self.pos..end])
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
    }
}

#[test]
fn captures_replayed_with_recorded_read_sizes_give_the_same_frames() {
    for path in fixtures() {
        let name = stem(&path);
        let bytes = fs::read(&path).expect("read capture");
        let timing = fs::read_to_string(path.with_extension("ami.timing.tsv")).expect("timing");
        let mut cuts = Vec::new();
        let mut expected_offset = 0;
        for row in timing.lines().skip(1) {
            let cols: Vec<&str> = row.split('\t').collect();
            if cols[1] != "R" {
                continue;
            }
            let offset: usize = cols[2].parse().expect("offset");
            let len: usize = cols[3].parse().expect("length");
            assert_eq!(offset, expected_offset, "{name}: reads are contiguous");
            expected_offset = offset + len;
            cuts.push(expected_offset);
        }
        assert_eq!(
            expected_offset,
            bytes.len(),
            "{name}: reads cover the capture"
        );
        assert!(cuts.len() > 1, "{name}: several reads");

        let whole = parse(&bytes[..]);
        let replayed = parse(Replay {
            data: bytes,
            pos: 0,
            cuts,
        });
        assert_eq!(replayed, whole, "{name}");
    }
}
