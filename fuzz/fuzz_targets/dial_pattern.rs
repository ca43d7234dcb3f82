//! `[originate] allow`/`deny` patterns: the first line is the pattern list, the rest a number.
#![no_main]

use callme::dial_policy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (list, number) = text.split_once('\n').unwrap_or((&text, "89991234567"));
    if let Ok(patterns) = dial_policy::parse_list(list) {
        for p in &patterns {
            let _ = p.matches(number);
            // A pattern matches no number with anything but ASCII digits in it.
            if !number.bytes().all(|b| b.is_ascii_digit()) {
                assert!(!p.matches(number));
            }
        }
    }
});
