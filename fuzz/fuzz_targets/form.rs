//! The `application/x-www-form-urlencoded` decoder of `/bitrix24/event` and `/bitrix24/install`.
#![no_main]

use callme::http::form;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = form::parse(data) {
        assert!(f.len() <= form::MAX_PAIRS);
    }
});
