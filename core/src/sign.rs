//! Ed25519 keys and signatures.
//!
//! Keys and signatures travel as base64url text (32-byte public keys, 64-byte signatures). A
//! document is signed over its canonical JSON bytes ([`crate::canon::canonical`]). Verification
//! is strict (RFC 8032 with the cofactor-less check and small-order keys refused), so a signature
//! has exactly one valid encoding.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde_json::Value;

use crate::{canon, codec, Error, Result};

/// Parses a base64url Ed25519 public key.
pub fn public_key(text: &str) -> Result<VerifyingKey> {
    let bytes = codec::b64url_decode_array::<32>(text, "public key")?;
    let key = VerifyingKey::from_bytes(&bytes)
        .map_err(|_| Error::Encoding(format!("public key {text:?} is not a point on Ed25519")))?;
    if key.is_weak() {
        return Err(Error::value(format!(
            "public key {text:?} is a weak (small-order) key"
        )));
    }
    Ok(key)
}

/// Parses a base64url Ed25519 signature.
pub fn signature(text: &str) -> Result<Signature> {
    let bytes = codec::b64url_decode_array::<64>(text, "signature")?;
    Ok(Signature::from_bytes(&bytes))
}

/// Verifies `sig` (base64url) over `message` with `key` (base64url).
pub fn verify(key: &str, message: &[u8], sig: &str) -> Result<()> {
    let key = public_key(key)?;
    let sig = signature(sig)?;
    key.verify_strict(message, &sig).map_err(|_| {
        Error::BadSignature("it was not made by the holder of this key over this document".into())
    })
}

/// Verifies a signature over the canonical JSON of `doc`.
pub fn verify_json(key: &str, doc: &Value, sig: &str) -> Result<()> {
    verify(key, canon::canonical(doc)?.as_bytes(), sig)
}

/// An Ed25519 key pair: clients, tests and the demo hold one; the database holds only the keys of
/// custodial users (`chips.custody`), and signs with them in Rust (extension/src/crypto.rs).
pub struct KeyPair(SigningKey);

impl KeyPair {
    pub fn generate() -> Self {
        KeyPair(SigningKey::generate(&mut rand::rngs::OsRng))
    }

    pub fn from_seed(seed: &[u8; 32]) -> Self {
        KeyPair(SigningKey::from_bytes(seed))
    }

    /// Derives a key pair from any text: for reproducible test and demo identities only.
    pub fn from_phrase(phrase: &str) -> Self {
        Self::from_seed(&canon::sha256(phrase.as_bytes()))
    }

    pub fn seed(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    pub fn public_b64(&self) -> String {
        codec::b64url_encode(self.0.verifying_key().as_bytes())
    }

    pub fn sign(&self, message: &[u8]) -> String {
        codec::b64url_encode(&self.0.sign(message).to_bytes())
    }

    pub fn sign_json(&self, doc: &Value) -> Result<String> {
        Ok(self.sign(canon::canonical(doc)?.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn rfc8032_test_1() {
        let seed: [u8; 32] =
            unhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
                .try_into()
                .unwrap();
        let kp = KeyPair::from_seed(&seed);
        let public = codec::b64url_encode(&unhex(
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        ));
        assert_eq!(kp.public_b64(), public);
        let sig = codec::b64url_encode(&unhex(
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
        ));
        assert_eq!(kp.sign(b""), sig);
        verify(&public, b"", &sig).unwrap();
    }

    #[test]
    fn json_signature_verifies_over_any_formatting() {
        let kp = KeyPair::from_phrase("alice");
        let doc = json!({"b": 2, "a": "x"});
        let sig = kp.sign_json(&doc).unwrap();
        let reformatted: Value = serde_json::from_str(r#"{ "a" : "x", "b" : 2.0 }"#).unwrap();
        verify_json(&kp.public_b64(), &reformatted, &sig).unwrap();
    }

    #[test]
    fn forged_and_tampered_signatures_refused() {
        let alice = KeyPair::from_phrase("alice");
        let mallory = KeyPair::from_phrase("mallory");
        let doc = json!({"units": 100});
        let forged = mallory.sign_json(&doc).unwrap();
        assert!(matches!(
            verify_json(&alice.public_b64(), &doc, &forged),
            Err(Error::BadSignature(_))
        ));
        let good = alice.sign_json(&doc).unwrap();
        let tampered = json!({"units": 1000});
        assert!(matches!(
            verify_json(&alice.public_b64(), &tampered, &good),
            Err(Error::BadSignature(_))
        ));
    }

    #[test]
    fn malformed_keys_and_signatures_are_encoding_errors() {
        let kp = KeyPair::from_phrase("alice");
        assert!(matches!(
            verify(&kp.public_b64(), b"x", "not base64!"),
            Err(Error::Encoding(_))
        ));
        assert!(matches!(
            verify(&kp.public_b64(), b"x", "AAAA"),
            Err(Error::Encoding(_))
        ));
        assert!(matches!(
            verify("AAAA", b"x", &kp.sign(b"x")),
            Err(Error::Encoding(_))
        ));
        // The identity point is a small-order key.
        let mut ident = [0u8; 32];
        ident[0] = 1;
        assert!(public_key(&codec::b64url_encode(&ident)).is_err());
    }
}

/// The key pairs of the seeds used lately (custodial keys held by a site): deriving a key pair
/// from its seed costs a scalar multiplication, as much as the signature it is needed for.
pub struct KeyCache {
    keys: std::collections::VecDeque<([u8; 32], std::rc::Rc<KeyPair>)>,
    capacity: usize,
}

impl KeyCache {
    pub fn new(capacity: usize) -> Self {
        KeyCache {
            keys: std::collections::VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    /// The key pair of `seed`, derived once while it stays among the last `capacity` used.
    pub fn get(&mut self, seed: &[u8; 32]) -> std::rc::Rc<KeyPair> {
        if let Some((_, k)) = self.keys.iter().find(|(s, _)| s == seed) {
            return k.clone();
        }
        if self.keys.len() == self.capacity {
            self.keys.pop_front();
        }
        let k = std::rc::Rc::new(KeyPair::from_seed(seed));
        self.keys.push_back((*seed, k.clone()));
        k
    }
}

/// Remembers the last signatures that verified, so that one signature checked several times in
/// a row (by a function, then by the trigger guarding the row it writes, then on the partner's
/// half) costs one Ed25519 verification. Verification is a pure function of key, message and
/// signature, so a remembered success is always still true; failures are not remembered.
pub struct VerifyCache {
    seen: std::collections::VecDeque<[u8; 32]>,
    capacity: usize,
}

impl VerifyCache {
    pub fn new(capacity: usize) -> Self {
        VerifyCache {
            seen: std::collections::VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    fn fingerprint(key: &str, message: &[u8], sig: &str) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for part in [key.as_bytes(), sig.as_bytes(), message] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        h.finalize().into()
    }

    /// [`verify`], remembering successes.
    pub fn verify(&mut self, key: &str, message: &[u8], sig: &str) -> Result<()> {
        let f = Self::fingerprint(key, message, sig);
        if self.seen.contains(&f) {
            return Ok(());
        }
        verify(key, message, sig)?;
        if self.seen.len() == self.capacity {
            self.seen.pop_front();
        }
        self.seen.push_back(f);
        Ok(())
    }

    /// [`verify_json`], remembering successes.
    pub fn verify_json(&mut self, key: &str, doc: &Value, sig: &str) -> Result<()> {
        self.verify(key, canon::canonical(doc)?.as_bytes(), sig)
    }

    fn remember(&mut self, f: [u8; 32]) {
        if self.seen.contains(&f) {
            return;
        }
        if self.seen.len() == self.capacity {
            self.seen.pop_front();
        }
        self.seen.push_back(f);
    }

    /// Signs the canonical JSON of `doc` with `key` and remembers the signature as verified
    /// under `key`'s own public key: an Ed25519 signature made with a key verifies under its
    /// public key by construction, so checking it again right after would prove nothing.
    pub fn sign_json(&mut self, key: &KeyPair, doc: &Value) -> Result<String> {
        let message = canon::canonical(doc)?;
        let sig = key.sign(message.as_bytes());
        self.remember(Self::fingerprint(
            &key.public_b64(),
            message.as_bytes(),
            &sig,
        ));
        Ok(sig)
    }
}

#[cfg(test)]
mod cache_tests {
    use super::*;

    #[test]
    fn cache_remembers_successes_only() {
        let kp = KeyPair::from_phrase("cache");
        let other = KeyPair::from_phrase("other");
        let mut c = VerifyCache::new(2);
        let sig = kp.sign(b"m");
        c.verify(&kp.public_b64(), b"m", &sig).unwrap();
        c.verify(&kp.public_b64(), b"m", &sig).unwrap();
        assert_eq!(c.seen.len(), 1);
        // A cached success never vouches for another key, message or signature.
        assert!(c.verify(&other.public_b64(), b"m", &sig).is_err());
        assert!(c.verify(&kp.public_b64(), b"n", &sig).is_err());
        assert!(c.verify(&kp.public_b64(), b"m", &other.sign(b"m")).is_err());
        assert_eq!(c.seen.len(), 1, "failures are not remembered");
        // Bounded: the oldest success is forgotten (and re-verified when asked again).
        c.verify(&other.public_b64(), b"x", &other.sign(b"x"))
            .unwrap();
        c.verify(&other.public_b64(), b"y", &other.sign(b"y"))
            .unwrap();
        assert_eq!(c.seen.len(), 2);
        c.verify(&kp.public_b64(), b"m", &sig).unwrap();
    }

    #[test]
    fn key_cache_derives_each_seed_once_and_stays_bounded() {
        let mut c = KeyCache::new(2);
        let (a, b, d) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        let ka = c.get(&a);
        assert_eq!(ka.public_b64(), KeyPair::from_seed(&a).public_b64());
        assert!(std::rc::Rc::ptr_eq(&ka, &c.get(&a)), "derived once");
        c.get(&b);
        c.get(&d); // the oldest (a) is forgotten
        assert_eq!(c.keys.len(), 2);
        assert!(!std::rc::Rc::ptr_eq(&ka, &c.get(&a)), "derived again");
        assert_eq!(c.get(&a).seed(), a);
    }

    #[test]
    fn own_signatures_are_remembered_under_their_own_key_only() {
        let kp = KeyPair::from_phrase("signer");
        let other = KeyPair::from_phrase("other");
        let doc = serde_json::json!({"b": 1, "a": [true, null]});
        let mut c = VerifyCache::new(4);
        let sig = c.sign_json(&kp, &doc).unwrap();
        assert_eq!(
            sig,
            kp.sign_json(&doc).unwrap(),
            "the same signature as signing alone"
        );
        assert_eq!(c.seen.len(), 1);
        // The remembered entry answers for exactly this key, document and signature...
        c.verify_json(&kp.public_b64(), &doc, &sig).unwrap();
        assert_eq!(c.seen.len(), 1, "answered from the cache");
        // ...and it is a true answer: an independent verification agrees.
        verify_json(&kp.public_b64(), &doc, &sig).unwrap();
        // Nothing else is vouched for.
        assert!(c.verify_json(&other.public_b64(), &doc, &sig).is_err());
        assert!(c
            .verify_json(&kp.public_b64(), &serde_json::json!({"b": 2}), &sig)
            .is_err());
    }
}
