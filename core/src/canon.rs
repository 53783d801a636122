//! Canonical JSON (RFC 8785, the JSON Canonicalization Scheme) and SHA-256 digests.
//!
//! Canonical form: object keys sorted by their UTF-16 code units, no insignificant whitespace,
//! strings UTF-8 with only the escapes JSON requires, numbers in ECMAScript's shortest form.
//! Every digest and every signature in chips is computed over these bytes, so two parties that
//! agree on a JSON value agree on its bytes whatever library produced it.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{codec, Error, Result};

/// The canonical text of a JSON value.
pub fn canonical(value: &Value) -> Result<String> {
    serde_json_canonicalizer::to_string(value).map_err(|e| Error::Json(e.to_string()))
}

/// Parses JSON text and returns its canonical text.
pub fn canonical_text(text: &str) -> Result<String> {
    let value: Value = serde_json::from_str(text).map_err(|e| Error::Json(e.to_string()))?;
    canonical(&value)
}

/// SHA-256 of raw bytes.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// SHA-256 of the canonical text of a JSON value: the digest of a document.
pub fn digest(value: &Value) -> Result<[u8; 32]> {
    Ok(sha256(canonical(value)?.as_bytes()))
}

/// The digest as base64url text, the form documents are referenced by (`rid`).
pub fn digest_b64(value: &Value) -> Result<String> {
    Ok(codec::b64url_encode(&digest(value)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn rfc8785_section_3_2_2_example() {
        // The example of RFC 8785 §3.2.2 (numbers, string escapes, literals).
        let input = r#"{
          "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
          "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
          "literals": [null, true, false]
        }"#;
        let expected = r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#;
        assert_eq!(canonical_text(input).unwrap(), expected);
    }

    #[test]
    fn rfc8785_section_3_2_3_key_order_is_utf16() {
        let input = r#"{"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh",
            "1":"One","\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis"}"#;
        let out = canonical_text(input).unwrap();
        let keys: Vec<&str> = ["\r", "1", "\u{80}", "ö", "€", "😀", "\u{fb33}"].to_vec();
        let mut pos = 0;
        for k in keys {
            let needle = serde_json::to_string(k).unwrap();
            let at = out[pos..]
                .find(&needle)
                .unwrap_or_else(|| panic!("{k:?} out of order in {out}"));
            pos += at + needle.len();
        }
    }

    #[test]
    fn non_ascii_is_not_escaped() {
        assert_eq!(
            canonical(&json!({"name": "Zoë ☃"})).unwrap(),
            r#"{"name":"Zoë ☃"}"#
        );
    }

    #[test]
    fn nested_objects_sorted_and_compact() {
        let v = json!({"b": [1, {"z": 1, "a": 2}], "a": {"d": null, "c": "x"}});
        assert_eq!(
            canonical(&v).unwrap(),
            r#"{"a":{"c":"x","d":null},"b":[1,{"a":2,"z":1}]}"#
        );
    }

    #[test]
    fn sha256_vectors() {
        assert_eq!(
            hex(&sha256(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn digest_ignores_formatting_and_key_order() {
        let a = canonical_text(r#"{ "b" : 1, "a" : [ 1.0, "x" ] }"#).unwrap();
        let b = canonical_text(r#"{"a":[1,"x"],"b":1}"#).unwrap();
        assert_eq!(a, b);
        assert_eq!(
            digest_b64(&serde_json::from_str(&a).unwrap()).unwrap(),
            codec::b64url_encode(&sha256(br#"{"a":[1,"x"],"b":1}"#))
        );
    }

    #[test]
    fn invalid_json_is_an_error() {
        assert!(matches!(canonical_text("{"), Err(Error::Json(_))));
        assert!(matches!(
            canonical_text(r#"{"a":1} x"#),
            Err(Error::Json(_))
        ));
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            (-1e12f64..1e12).prop_map(|f| json!(f)),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(".{0,8}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn canonical_is_idempotent_and_roundtrips(v in arb_json()) {
            let once = canonical(&v).unwrap();
            // Parsing the canonical text gives back the same value (integral floats come back
            // as integers, which is the same JSON number).
            let parsed: Value = serde_json::from_str(&once).unwrap();
            prop_assert_eq!(canonical(&parsed).unwrap(), once.clone());
            prop_assert_eq!(canonical_text(&once).unwrap(), once.clone());
            // No insignificant whitespace outside strings: pretty printing changes nothing.
            let pretty = serde_json::to_string_pretty(&v).unwrap();
            prop_assert_eq!(canonical_text(&pretty).unwrap(), once);
        }
    }
}
