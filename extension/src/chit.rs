//! Chit rules from `chips_core::chit`, callable from SQL.

use chips_core::chit::{self, ChitDoc, ChitStatus, Settings};
use chips_core::tally::Side;
use pgrx::prelude::*;
use pgrx::JsonB;

use crate::error::{ok, ChipsError};

/// Whether a chit may move from one status to another.
#[pg_extern(immutable, strict, parallel_safe)]
fn chit_transition_allowed(from_status: &str, to_status: &str) -> bool {
    let from: ChitStatus = ok(from_status.parse());
    let to: ChitStatus = ok(to_status.parse());
    chit::chit_transition_allowed(from, to)
}

/// The chit document of a chit's fields (nulls left out), validated. `date_ms` is the chit's
/// time in milliseconds since 1970 (UTC).
#[pg_extern(immutable, parallel_safe)]
#[allow(clippy::too_many_arguments)]
fn chit_doc_make(
    tally: pgrx::Uuid,
    by: &str,
    kind: &str,
    uuid: pgrx::Uuid,
    date_ms: i64,
    units: Option<i64>,
    reference: Option<JsonB>,
    memo: Option<String>,
) -> JsonB {
    JsonB(doc_of(tally, by, kind, uuid, date_ms, units, reference, memo).to_json())
}

/// The checked chit document of a chit's fields: `chit_doc_make`, and the row check below.
#[allow(clippy::too_many_arguments)]
fn doc_of(
    tally: pgrx::Uuid,
    by: &str,
    kind: &str,
    uuid: pgrx::Uuid,
    date_ms: i64,
    units: Option<i64>,
    reference: Option<JsonB>,
    memo: Option<String>,
) -> ChitDoc {
    let doc = ChitDoc {
        tally: uuid_text(&tally),
        by: ok(by.parse()),
        kind: ok(kind.parse()),
        uuid: uuid_text(&uuid),
        date: ok(chips_core::chit::iso_millis(date_ms)),
        units,
        reference: reference.map(|j| j.0),
        memo,
    };
    ok(doc.check());
    doc
}

/// Raises 28000 unless `signature` is the issuer's (`issuer_key`) signature over the chit
/// document of these fields (as `chit_doc_make` builds it): `chit_verify` of a stored chit row
/// (`chips._chit_verify`, the chits row trigger) without building the document as jsonb and
/// reading it back.
#[pg_extern(immutable, parallel_safe, name = "_chit_row_verify")]
#[allow(clippy::too_many_arguments)]
fn chit_row_verify(
    tally: pgrx::Uuid,
    by: &str,
    kind: &str,
    uuid: pgrx::Uuid,
    date_ms: i64,
    units: Option<i64>,
    reference: Option<JsonB>,
    memo: Option<String>,
    issuer_key: &str,
    signature: &str,
) -> bool {
    let doc = doc_of(tally, by, kind, uuid, date_ms, units, reference, memo);
    ok(doc.verify_with(issuer_key, signature, crate::crypto::verify_json_cached));
    true
}

pub(crate) fn uuid_text(u: &pgrx::Uuid) -> String {
    chips_core::chit::uuid_text(u.as_bytes())
}

/// Validates a chit document and returns it normalized.
#[pg_extern(immutable, strict, parallel_safe)]
fn chit_doc_check(doc: JsonB) -> JsonB {
    JsonB(ok(ChitDoc::from_json(&doc.0)).to_json())
}

/// Raises 28000 unless `signature` is the issuer's (`issuer_key`) signature over the chit.
#[pg_extern(immutable, strict, parallel_safe)]
fn chit_verify(doc: JsonB, issuer_key: &str, signature: &str) -> bool {
    let d = ok(ChitDoc::from_json(&doc.0));
    ok(d.verify_with(issuer_key, signature, crate::crypto::verify_json_cached));
    true
}

/// The change of the `holder` half's balance when the chit is good.
#[pg_extern(immutable, strict, parallel_safe)]
fn chit_value(doc: JsonB, holder: &str) -> i64 {
    let d = ok(ChitDoc::from_json(&doc.0));
    let side: Side = ok(holder.parse());
    d.value_for(side)
}

/// What a chit of `units` by side `by` does to the balance of the half on side `side`
/// (`chips_core::chit::change`: the issuer's goes down); the SQL side's one rule of the sign,
/// used in sums over chit rows and in events.
#[pg_extern(immutable, strict, parallel_safe, name = "_chit_change")]
fn chit_change(side: &str, by: &str, units: i64) -> i64 {
    let (side, by): (Side, Side) = (ok(side.parse()), ok(by.parse()));
    chips_core::chit::change(side, by, units)
}

/// Whether a chit dated `date` (a document date) may be issued at `now_ms` (core's
/// `chit::dated_near`: an hour either way). 22023 for a date that is no date.
#[pg_extern(immutable, strict, parallel_safe, name = "_chit_dated_near")]
fn chit_dated_near(date: &str, now_ms: i64) -> bool {
    chit::dated_near(ok(chit::millis_of(date)), now_ms)
}

/// The most the holder of a half may pay now (core's `chit::pay_room`): its balance plus what
/// lifts under way may still take (`held`, at most 0) plus the credit limit its partner granted.
#[pg_extern(immutable, strict, parallel_safe, name = "_pay_room")]
fn pay_room(balance: i64, held: i64, credit_limit: i64) -> i64 {
    chit::pay_room(balance, held, credit_limit)
}

/// The chain hash of a chit at `index` after the block hashed `prior`.
#[pg_extern(immutable, parallel_safe)]
fn chit_chain_hash(doc: JsonB, index: i32, prior: &[u8], signature: Option<&str>) -> Vec<u8> {
    let d = ok(ChitDoc::from_json(&doc.0));
    ok(d.chain_hash(i64::from(index), prior, signature)).to_vec()
}

/// The trading variables after a `set` chit's settings (`chips_core::chit::Settings::apply`:
/// each setting given replaces its variable, the result checked, 22023 when it breaks a rule):
/// the one place settings meet trading variables, for issuing a setting chit and applying it.
#[pg_extern(immutable, strict, parallel_safe, name = "_settings_apply")]
fn settings_apply(
    settings: JsonB,
    target: i64,
    bound: i64,
    reward: f64,
    clutch: f64,
) -> TableIterator<
    'static,
    (
        name!(target, i64),
        name!(bound, i64),
        name!(reward, f64),
        name!(clutch, f64),
    ),
> {
    let s = ok(Settings::from_json(&settings.0));
    let next = ok(s.apply(chips_core::tally::TradingVars {
        target,
        bound,
        reward,
        clutch,
    }));
    TableIterator::once((next.target, next.bound, next.reward, next.clutch))
}

/// Validates the settings of a `set` chit and returns them normalized.
#[pg_extern(immutable, strict, parallel_safe)]
fn settings_check(settings: JsonB) -> JsonB {
    let s = ok(Settings::from_json(&settings.0));
    JsonB(serde_json::to_value(s).unwrap_or_else(|e| ChipsError::Invalid(e.to_string()).raise()))
}
