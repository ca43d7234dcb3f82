//! The config loader: INI parse, then validation. Errors must stay one line each, without
//! control characters (they go to a terminal and the journal).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = callme::config::parse_str(text, "fuzz.conf") {
        for p in e.problems() {
            assert!(!p.to_string().contains(char::is_control), "{p:?}");
        }
    }
});
