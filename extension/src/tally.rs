//! Tally rules from `chips_core::tally`, callable from SQL.

use chips_core::address::{self, ChipAddress};
use chips_core::tally::{self, Cert, Side, Status, TallyDoc, Terms, TradingVars};
use pgrx::prelude::*;
use pgrx::JsonB;

use crate::error::{ok, ChipsError};

fn status(s: &str) -> Status {
    ok(s.parse())
}

fn to_json<T: serde::Serialize>(v: &T) -> JsonB {
    JsonB(serde_json::to_value(v).expect("core types always serialize"))
}

/// Whether a tally half may move from one status to another (the lifecycle's transition table).
#[pg_extern(immutable, strict, parallel_safe)]
fn tally_transition_allowed(from_status: &str, to_status: &str) -> bool {
    tally::transition_allowed(status(from_status), status(to_status))
}

/// The state a person sees: status plus who signed (`P.draft`, `H.offer`, `P.offer`, `open`, ...).
#[pg_extern(immutable, strict, parallel_safe)]
fn tally_state(
    status_text: &str,
    holder_signed: bool,
    partner_signed: bool,
    has_partner: bool,
) -> String {
    tally::state_label(
        status(status_text),
        holder_signed,
        partner_signed,
        has_partner,
    )
}

/// Validates a tally document and returns it normalized.
#[pg_extern(immutable, strict, parallel_safe)]
fn tally_doc_check(doc: JsonB) -> JsonB {
    JsonB(ok(TallyDoc::from_json(&doc.0)).to_json())
}

/// Raises 28000 unless `signature` is `side`'s signature over the tally document.
#[pg_extern(immutable, strict, parallel_safe)]
fn tally_verify(doc: JsonB, side: &str, signature: &str) -> bool {
    let d = ok(TallyDoc::from_json(&doc.0));
    let side: Side = ok(side.parse());
    ok(d.verify_with(side, signature, crate::crypto::verify_json_cached));
    true
}

/// Validates a certificate (`{chad, name, public, type}`) and returns it normalized.
#[pg_extern(immutable, strict, parallel_safe)]
fn cert_check(cert: JsonB) -> JsonB {
    to_json(&ok(Cert::from_json(&cert.0)))
}

/// Validates credit terms (`{limit, call}`) and returns them normalized.
#[pg_extern(immutable, strict, parallel_safe)]
fn terms_check(terms: JsonB) -> JsonB {
    to_json(&ok(Terms::from_json(&terms.0)))
}

/// Raises 22023 unless the trading variables are within their constraints.
#[pg_extern(immutable, strict, parallel_safe)]
fn trading_check(target: i64, bound: i64, reward: f64, clutch: f64) -> bool {
    ok(TradingVars {
        target,
        bound,
        reward,
        clutch,
    }
    .check());
    true
}

/// Parses a CHIP address `cuid:agent[@host:port]` into its JSON form.
#[pg_extern(immutable, strict, parallel_safe)]
fn address_parse(address: &str) -> JsonB {
    to_json(&ok(ChipAddress::parse(address)))
}

/// Validates a CHIP address in JSON form (`{cuid, agent, host, port}`) and returns it normalized.
#[pg_extern(immutable, strict, parallel_safe)]
fn address_check(chad: JsonB) -> JsonB {
    if !chad.0.is_object() {
        ChipsError::Invalid(format!(
            "a CHIP address must be a JSON object, not {}",
            chad.0
        ))
        .raise();
    }
    let a: ChipAddress = serde_json::from_value(chad.0.clone())
        .unwrap_or_else(|e| ChipsError::Invalid(format!("CHIP address {}: {e}", chad.0)).raise());
    ok(a.check());
    to_json(&a)
}

/// Raises 22023 unless `agent` is a base64url Ed25519 public key.
#[pg_extern(immutable, strict, parallel_safe)]
fn agent_check(agent: &str) -> bool {
    ok(address::check_agent(agent));
    true
}

/// Raises 22023 unless `cuid` is a valid CHIP user id.
#[pg_extern(immutable, strict, parallel_safe)]
fn cuid_check(cuid: &str) -> bool {
    ok(address::check_cuid(cuid));
    true
}

/// Raises 22023 unless `key` is a base64url Ed25519 public key.
#[pg_extern(immutable, strict, parallel_safe)]
fn pubkey_check(key: &str) -> bool {
    chips_core::sign::public_key(key)
        .unwrap_or_else(|e| ChipsError::Invalid(format!("public key: {e}")).raise());
    true
}

/// A timestamp as the documents write it, `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC, milliseconds):
/// `chips_core::chit::iso_millis`, the one format of dates in tally and chit documents, for the
/// SQL that builds documents and answers.
#[pg_extern(immutable, strict, parallel_safe, name = "_iso")]
pub(crate) fn iso(ts: pgrx::datum::TimestampWithTimeZone) -> String {
    ok(chips_core::chit::iso_millis(millis(ts)))
}

/// Milliseconds since 1970 (PostgreSQL counts microseconds from 2000-01-01).
fn millis(ts: pgrx::datum::TimestampWithTimeZone) -> i64 {
    const FROM_1970_US: i64 = 946_684_800_000_000;
    let us: i64 = pg_sys::TimestampTz::from(ts);
    us.saturating_add(FROM_1970_US).div_euclid(1000)
}

/// The tally document a half's columns make (`chips._tally_doc(t)` passes them):
/// `chips_core::tally::HalfDoc`, the one definition of the document both parties sign.
#[allow(clippy::too_many_arguments)]
#[pg_extern(immutable, parallel_safe, name = "_tally_doc_make")]
pub(crate) fn tally_doc_make(
    version: i32,
    revision: i32,
    uuid: &str,
    date: pgrx::datum::TimestampWithTimeZone,
    memo: Option<&str>,
    contract: &str,
    side: &str,
    hold_cert: Option<JsonB>,
    hold_terms: JsonB,
    part_cert: Option<JsonB>,
    part_terms: JsonB,
) -> JsonB {
    let side: Side = ok(side.parse());
    let party = |cert: Option<JsonB>, terms: JsonB| tally::HalfParty {
        cert: cert.map(|c| c.0),
        terms: terms.0,
    };
    JsonB(
        ok(tally::HalfDoc::from_half(
            version,
            revision,
            uuid,
            millis(date),
            memo,
            contract,
            side,
            party(hold_cert, hold_terms),
            party(part_cert, part_terms),
        ))
        .to_json(),
    )
}
