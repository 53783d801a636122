//! The peer message parser: an envelope that parses serializes to bytes that parse to the same
//! envelope; anything else is refused with an error.
#![no_main]

use chips_core::peer::Envelope;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = Envelope::from_slice(data) {
        let again = Envelope::from_slice(&e.to_vec()).expect("a parsed envelope parses again");
        assert_eq!(again, e);
    }
});
