//! Canonical JSON, digests, base64url and Ed25519 verification, callable from SQL.

use chips_core::{canon, codec, sign, Error};
use pgrx::prelude::*;
use pgrx::JsonB;

use crate::error::{ok, ChipsError};

/// The canonical (RFC 8785) text of a JSON value.
#[pg_extern(immutable, strict, parallel_safe)]
fn canonical_json(doc: JsonB) -> String {
    ok(canon::canonical(&doc.0))
}

/// SHA-256 of the canonical text of a JSON value.
#[pg_extern(immutable, strict, parallel_safe)]
fn json_digest(doc: JsonB) -> Vec<u8> {
    ok(canon::digest(&doc.0).map(|d| d.to_vec()))
}

/// base64url without padding.
#[pg_extern(immutable, strict, parallel_safe)]
fn b64url_encode(data: &[u8]) -> String {
    codec::b64url_encode(data)
}

/// Decodes base64url without padding; SQLSTATE 22P02 for anything else.
#[pg_extern(immutable, strict, parallel_safe)]
fn b64url_decode(encoded: &str) -> Vec<u8> {
    ok(codec::b64url_decode(encoded))
}

thread_local! {
    /// Signatures verified lately in this backend (see `chips_core::sign::VerifyCache`).
    static VERIFIED: std::cell::RefCell<sign::VerifyCache> =
        std::cell::RefCell::new(sign::VerifyCache::new(256));
}

/// Verifies `sig` by `key` over the canonical JSON of `doc`, remembering successes.
pub(crate) fn verify_json_cached(
    key: &str,
    doc: &serde_json::Value,
    sig: &str,
) -> chips_core::Result<()> {
    VERIFIED.with(|c| c.borrow_mut().verify_json(key, doc, sig))
}

/// Whether `signature` is `pubkey`'s Ed25519 signature over the canonical text of `doc`.
/// A malformed key or signature is an error (22P02), not `false`.
#[pg_extern(immutable, strict, parallel_safe)]
fn verify_signature(pubkey: &str, doc: JsonB, signature: &str) -> bool {
    match verify_json_cached(pubkey, &doc.0, signature) {
        Ok(()) => true,
        Err(Error::BadSignature(_)) => false,
        Err(e) => ChipsError::from(e).raise(),
    }
}

/// A fresh random invitation token.
#[pg_extern(volatile, parallel_safe)]
fn new_token() -> String {
    chips_core::ticket::new_token()
}

/// Whether the session logged in as a member of `chips_gateway` (the websocket gateway), whose
/// calls act for a user only within a session that user opened (sql/access.sql). Membership is
/// direct or through other roles; a superuser is not a member by being superuser.
#[pg_extern(stable, parallel_safe)]
fn _via_gateway() -> bool {
    // SAFETY: catalog look-ups valid in any transaction; missing_ok = true returns InvalidOid
    // for a missing role instead of raising, and no role is a member of InvalidOid.
    unsafe {
        let gateway = pg_sys::get_role_oid(c"chips_gateway".as_ptr(), true);
        gateway != pg_sys::InvalidOid
            && pg_sys::is_member_of_role_nosuper(pg_sys::GetSessionUserId(), gateway)
    }
}

/// The role the session acts as (after SET ROLE), even inside a SECURITY DEFINER function, where
/// `current_user` is the function's owner. The user API uses it to know who is calling.
#[pg_extern(stable, parallel_safe)]
fn outer_role() -> String {
    // SAFETY: both are plain catalog look-ups valid in any transaction; with noerr = false a
    // missing role raises a Postgres error instead of returning null.
    unsafe {
        let oid = pg_sys::GetOuterUserId();
        let name = pg_sys::GetUserNameFromId(oid, false);
        core::ffi::CStr::from_ptr(name)
            .to_string_lossy()
            .into_owned()
    }
}

/// A new random Ed25519 seed (32 bytes), for a custodial user's key.
#[pg_extern(volatile, parallel_safe)]
fn new_seed() -> Vec<u8> {
    chips_core::sign::KeyPair::generate().seed().to_vec()
}

/// The base64url public key of a seed.
#[pg_extern(immutable, strict, parallel_safe)]
fn seed_public(seed: &[u8]) -> String {
    seed_public_key(seed)
}

/// [`seed_public`] for Rust callers.
pub(crate) fn seed_public_key(seed: &[u8]) -> String {
    keypair(seed).public_b64()
}

thread_local! {
    /// Key pairs of the custodial seeds used lately in this backend.
    static KEYS: std::cell::RefCell<sign::KeyCache> = std::cell::RefCell::new(sign::KeyCache::new(64));
}

/// Signs the canonical JSON of `doc` with a seed: what a custodial user's "device" does. The
/// signature is remembered as verified under the seed's own public key (it verifies by
/// construction), so the row trigger that checks it next does not verify it again.
#[pg_extern(immutable, strict, parallel_safe)]
fn seed_sign(seed: &[u8], doc: JsonB) -> String {
    sign_with_seed(seed, &doc.0)
}

/// [`seed_sign`] for Rust callers.
pub(crate) fn sign_with_seed(seed: &[u8], doc: &serde_json::Value) -> String {
    let key = keypair(seed);
    ok(VERIFIED.with(|c| c.borrow_mut().sign_json(&key, doc)))
}

fn keypair(seed: &[u8]) -> std::rc::Rc<sign::KeyPair> {
    let seed: [u8; 32] = seed
        .try_into()
        .unwrap_or_else(|_| ChipsError::Invalid("a key seed is 32 bytes".into()).raise());
    KEYS.with(|keys| keys.borrow_mut().get(&seed))
}
