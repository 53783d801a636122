//! Canonical JSON (RFC 8785): any text either fails to parse or canonicalizes to JSON that means
//! the same and is its own canonical form; the digest is that of the canonical form.
#![no_main]

use chips_core::canon::{canonical_text, digest, sha256};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = canonical_text(text) {
        assert_eq!(canonical_text(&c).expect("canonical text parses"), c);
        let v: serde_json::Value = serde_json::from_str(&c).expect("canonical text is JSON");
        assert_eq!(digest(&v).expect("digest"), sha256(c.as_bytes()));
    }
});
