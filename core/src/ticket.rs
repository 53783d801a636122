//! Invitation tokens: 24 random bytes from the operating system, as base64url (32 characters).

use rand::RngCore;

use crate::codec;

pub const TOKEN_BYTES: usize = 24;

pub fn new_token() -> String {
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    codec::b64url_encode(&bytes)
}

/// Whether `text` has the shape of a token (it may still be unknown or expired).
pub fn looks_like_token(text: &str) -> bool {
    text.len() == 32 && codec::b64url_decode(text).is_ok_and(|b| b.len() == TOKEN_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn tokens_are_distinct_and_well_formed() {
        let set: HashSet<String> = (0..1000).map(|_| new_token()).collect();
        assert_eq!(set.len(), 1000);
        assert!(set.iter().all(|t| looks_like_token(t)));
        assert!(!looks_like_token("short"));
    }
}
