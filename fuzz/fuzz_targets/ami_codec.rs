//! The AMI reader on arbitrary bytes. The first byte picks how many bytes each read hands the
//! decoder (1-64), so messages are cut at every possible place, as a socket cuts them.
#![no_main]

use std::io::{BufReader, Cursor};

use callme::ami::codec::{encode_action, MAX_MESSAGE};
use callme::ami::{Frame, Reader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, data)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first % 64) + 1;
    let mut r = Reader::new(BufReader::with_capacity(chunk, Cursor::new(data)));
    while let Ok(Some(frame)) = r.read_frame() {
        if let Frame::Message(m) = frame {
            // The bound stated in codec.rs.
            assert!(m.len() <= MAX_MESSAGE);
            // Whatever came in, what we would write back is refused or one clean action.
            if let Ok(bytes) = encode_action(&m) {
                assert!(bytes.ends_with(b"\r\n\r\n"));
            }
        }
    }
    assert_eq!(r.position(), data.len() as u64);
});
