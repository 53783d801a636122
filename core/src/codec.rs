//! base64url without padding (RFC 4648 §5), the text form of keys, signatures and digests.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::{Error, Result};

pub fn b64url_encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn b64url_decode(text: &str) -> Result<Vec<u8>> {
    URL_SAFE_NO_PAD
        .decode(text.as_bytes())
        .map_err(|e| Error::Encoding(format!("{text:?} is not base64url without padding ({e})")))
}

/// Decodes exactly `N` bytes; `what` names the value in the error message.
pub fn b64url_decode_array<const N: usize>(text: &str, what: &str) -> Result<[u8; N]> {
    let bytes = b64url_decode(text).map_err(|_| {
        Error::Encoding(format!("{what} {text:?} is not base64url without padding"))
    })?;
    bytes.as_slice().try_into().map_err(|_| {
        Error::Encoding(format!(
            "{what} must be {N} bytes, {text:?} decodes to {}",
            bytes.len()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4648_vectors_without_padding() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
        ] {
            assert_eq!(b64url_encode(plain.as_bytes()), enc);
            assert_eq!(b64url_decode(enc).unwrap(), plain.as_bytes());
        }
        assert_eq!(b64url_encode(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn padding_and_standard_alphabet_refused() {
        assert!(b64url_decode("Zg==").is_err());
        assert!(b64url_decode("+/8").is_err());
    }

    #[test]
    fn wrong_length_refused() {
        let e = b64url_decode_array::<32>("Zm9v", "key").unwrap_err();
        assert!(e.to_string().contains("32 bytes"), "{e}");
    }
}
