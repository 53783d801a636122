//! The frame decoder: any bytes either parse into a type and a payload that frame back into the
//! same bytes, or are refused with an error (never a panic).
#![no_main]

use chips_core::peer::{frame, parse_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((kind, payload)) = parse_frame(data) {
        if let Ok(again) = frame(kind, payload) {
            assert_eq!(again, data, "a parsed frame frames back to itself");
        }
    }
});
