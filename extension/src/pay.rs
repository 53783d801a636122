//! Many payments written at once: the set-based path of `chips.pay_batch` (sql/chits.sql).
//!
//! A payroll or a shop's end of day is a batch of custodial payments on open tallies between
//! users of this site. Item by item, each payment runs some thirty statements (its chit on both
//! halves, the statement trigger's balances and events, the checks); here the whole batch is
//! checked in memory against its tallies, locked once, and written in one INSERT, so the chits
//! statement trigger (sql/chits.sql, `chips._chits_ins`) moves every balance and chain tip and
//! makes every event in one run. The rules are the single payment's: each chit is built, signed
//! with its payer's custodial key and chained as `chips._custodial_issue` and
//! `chips._chit_insert` do, the credit limit is core's `pay_room` counted over the items in
//! order, and the row trigger verifies every signature.
//!
//! The path only takes batches it can write whole: when any item is not such a payment, or would
//! be refused, it declines (returns null) and `chips.pay_batch` pays item by item, which says
//! what each refused item's SQLSTATE and message are. Anything it raises is caught there the same
//! way (in a subtransaction, so nothing it wrote stays).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use chips_core::chit::{change, iso_millis, pay_room, random_uuid, uuid_text, ChitDoc, ChitType};
use chips_core::tally::Side;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient};
use pgrx::{IntoDatum, JsonB, PgOid};
use serde_json::Value;

use crate::error::ChipsError;

/// One item of a batch as the set-based path takes it: `{tally, units, memo?, reference?,
/// payer?}`.
struct Item {
    tally: String,
    units: i64,
    memo: Option<String>,
    reference: Option<Value>,
    payer: Option<String>,
}

/// The items, or None when any is not a plain custodial payment (a signed document, a field of
/// another type or an unknown one): those go item by item.
fn items(payments: &Value) -> Option<Vec<Item>> {
    let list = payments.as_array()?;
    if list.is_empty() || list.len() > 1000 {
        return None;
    }
    list.iter()
        .map(|p| {
            let o = p.as_object()?;
            if o.keys().any(|k| {
                !matches!(
                    k.as_str(),
                    "tally" | "units" | "memo" | "reference" | "payer"
                )
            }) {
                return None;
            }
            Some(Item {
                tally: o.get("tally")?.as_str()?.to_string(),
                units: o.get("units")?.as_i64()?,
                memo: match o.get("memo") {
                    None => None,
                    Some(m) => Some(m.as_str()?.to_string()),
                },
                reference: match o.get("reference") {
                    None => None,
                    Some(r) if r.is_object() => Some(r.clone()),
                    Some(_) => return None,
                },
                payer: match o.get("payer") {
                    None | Some(Value::Null) => None,
                    Some(x) => Some(x.as_str()?.to_string()),
                },
            })
        })
        .collect()
}

/// A tally half as locked for the batch.
struct Half {
    id: i64,
    ent: String,
    side: Side,
    open: bool,
    part_ent: Option<String>,
    room: i64,
    chain_len: i32,
    tip: Vec<u8>,
}

fn field<T>(v: Option<T>) -> T {
    v.unwrap_or_else(|| ChipsError::Invalid("pay_batch: a row with a null field".into()).raise())
}

fn spi<T>(r: Result<T, pgrx::spi::Error>) -> T {
    r.unwrap_or_else(|e| ChipsError::Invalid(format!("pay_batch: {e}")).raise())
}

thread_local! {
    /// The path's statements, planned once per backend (a one-payment batch would otherwise
    /// spend most of its time parsing and planning them).
    static PLANS: RefCell<HashMap<&'static str, Rc<OwnedPreparedStatement>>> =
        RefCell::new(HashMap::new());
}

/// The kept plan of `sql`, whose parameters are of `types`.
fn plan(c: &SpiClient<'_>, sql: &'static str, types: &[PgOid]) -> Rc<OwnedPreparedStatement> {
    if let Some(p) = PLANS.with(|m| m.borrow().get(sql).cloned()) {
        return p;
    }
    let p = Rc::new(spi(c.prepare_mut(sql, types)).keep());
    PLANS.with(|m| m.borrow_mut().insert(sql, p.clone()));
    p
}

fn oid<T: IntoDatum>() -> PgOid {
    PgOid::from_untagged(T::type_oid())
}

/// A uuid written as 32 hex digits in 8-4-4-4-12 groups (either case), or None.
fn parse_uuid(t: &str) -> Option<[u8; 16]> {
    let b = t.as_bytes();
    if b.len() != 36 || [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
        return None;
    }
    let hex: Vec<u8> = b.iter().copied().filter(|&c| c != b'-').collect();
    let mut out = [0u8; 16];
    for (k, pair) in hex.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        *out.get_mut(k)? = u8::from_str_radix(s, 16).ok()?;
    }
    (hex.len() == 32).then_some(out)
}

/// Pays every item of `payments` (chips.pay_batch's array) at once, in the caller's transaction:
/// the chit uuids in item order, or null when the batch is not one the set-based path writes
/// whole (then nothing was written). Internal to `chips.pay_batch` (SECURITY DEFINER).
#[pg_extern(volatile, name = "_pay_bulk")]
fn pay_bulk(payments: JsonB) -> Option<Vec<pgrx::Uuid>> {
    write(items(&payments.0)?)
}

/// One payment by the caller (`chips.pay`'s arguments) written the same way: its chit's uuid,
/// or null when it is not one this path writes (then nothing was written). Internal to
/// `chips.pay` (SECURITY DEFINER).
#[pg_extern(volatile, name = "_pay_one")]
fn pay_one(
    tally: Option<pgrx::Uuid>,
    units: Option<i64>,
    memo: Option<String>,
    reference: Option<JsonB>,
) -> Option<pgrx::Uuid> {
    let reference = match reference {
        Some(r) if !r.0.is_object() => return None,
        r => r.map(|r| r.0),
    };
    let item = Item {
        tally: uuid_text(tally?.as_bytes()),
        units: units?,
        memo,
        reference,
        payer: None,
    };
    write(vec![item])?.pop()
}

/// Writes `items` at once (see the module's comment), or None.
fn write(items: Vec<Item>) -> Option<Vec<pgrx::Uuid>> {
    // the tallies, as their uuids are written (any other form goes item by item)
    let keys: Vec<[u8; 16]> = items
        .iter()
        .map(|i| parse_uuid(&i.tally))
        .collect::<Option<_>>()?;
    let mut uuids: Vec<pgrx::Uuid> = keys.iter().map(|k| pgrx::Uuid::from_bytes(*k)).collect();
    uuids.sort_unstable_by_key(|u| *u.as_bytes());
    uuids.dedup_by_key(|u| *u.as_bytes());
    let mut payers: HashMap<Option<String>, String> = HashMap::new();
    let mut seeds: HashMap<String, Vec<u8>> = HashMap::new();
    let mut halves: HashMap<[u8; 16], Vec<Half>> = HashMap::new();
    let mut date_ms = 0;
    Spi::connect_mut(|c| {
        // who pays: the caller, or a user the caller acts for (each raises what a single item
        // would), their custodial key (a payer who signs with their own key pays item by item:
        // 55000), and the time every chit of the batch carries
        // (the caller and a payer acted for by statements of their own: a function in FROM is
        // called once, where a CASE over both would call chips._me() twice)
        let me = plan(
            c,
            "SELECT u.ent, (extract(epoch FROM pg_catalog.now()) * 1000)::bigint, k.seed
             FROM chips._me() u LEFT JOIN chips.custody k ON k.ent = u.ent",
            &[],
        );
        let acted = plan(
            c,
            "SELECT u.ent, (extract(epoch FROM pg_catalog.now()) * 1000)::bigint, k.seed
             FROM chips._acting_for($1) u LEFT JOIN chips.custody k ON k.ent = u.ent",
            &[oid::<String>()],
        );
        for it in &items {
            if !payers.contains_key(&it.payer) {
                let r = match &it.payer {
                    None => spi(c.select(&*me, None, &[])),
                    Some(p) => spi(c.select(&*acted, None, &[p.clone().into()])),
                };
                let r = spi(r.first().get_three::<String, i64, Vec<u8>>());
                let ent: String = field(r.0);
                date_ms = field(r.1);
                if let Some(seed) = r.2 {
                    seeds.insert(ent.clone(), seed);
                }
                payers.insert(it.payer.clone(), ent);
            }
        }
        // the tallies, both halves locked in id order (as every writer locks them)
        // (one tally by its own statement: PostgreSQL plans `= ANY ($1)` afresh at every call,
        // its generic plan costing more than one made for the array given)
        let rows = if let [one] = uuids[..] {
            let lock = plan(
                c,
                "SELECT x.tally_uuid, x.id, x.ent, x.side, x.status = 'open', x.part_ent, x.net_good,
                        x.net_hold, coalesce((x.part_terms->>'limit')::bigint, 0), x.chain_len,
                        coalesce(x.chain_tip, x.digest)
                 FROM chips.tallies x WHERE x.tally_uuid = $1 ORDER BY x.id FOR UPDATE",
                &[oid::<pgrx::Uuid>()],
            );
            spi(c.select(&*lock, None, &[one.into()]))
        } else {
            let lock = plan(
                c,
                "SELECT x.tally_uuid, x.id, x.ent, x.side, x.status = 'open', x.part_ent, x.net_good,
                        x.net_hold, coalesce((x.part_terms->>'limit')::bigint, 0), x.chain_len,
                        coalesce(x.chain_tip, x.digest)
                 FROM chips.tallies x WHERE x.tally_uuid = ANY ($1) ORDER BY x.id FOR UPDATE",
                &[oid::<Vec<pgrx::Uuid>>()],
            );
            spi(c.select(&*lock, None, &[uuids.into()]))
        };
        for r in rows {
            let uuid: pgrx::Uuid = field(spi(r.get(1)));
            let side: String = field(spi(r.get(4)));
            halves.entry(*uuid.as_bytes()).or_default().push(Half {
                id: field(spi(r.get(2))),
                ent: field(spi(r.get(3))),
                side: if side == "stock" {
                    Side::Stock
                } else {
                    Side::Foil
                },
                open: field(spi(r.get(5))),
                part_ent: spi(r.get(6)),
                room: pay_room(
                    field(spi(r.get(7))),
                    field(spi(r.get(8))),
                    field(spi(r.get(9))),
                ),
                chain_len: field(spi(r.get(10))),
                tip: spi(r.get(11)).unwrap_or_default(), // none before a tally is signed (not open)
            });
        }
    });
    if payers.values().any(|e| !seeds.contains_key(e)) {
        return None;
    }
    let date = iso_millis(date_ms).ok()?;
    let n = items.len();
    let mut chits = Vec::with_capacity(n);
    let (mut c_tally, mut c_uuid, mut c_issuer, mut c_units, mut c_ref, mut c_memo) = (
        Vec::with_capacity(2 * n),
        Vec::with_capacity(2 * n),
        Vec::with_capacity(2 * n),
        Vec::with_capacity(2 * n),
        Vec::with_capacity(2 * n),
        Vec::with_capacity(2 * n),
    );
    let (mut c_sig, mut c_value, mut c_idx, mut c_prev, mut c_hash) = (
        Vec::with_capacity(2 * n),
        Vec::with_capacity(2 * n),
        Vec::with_capacity(2 * n),
        Vec::with_capacity(2 * n),
        Vec::with_capacity(2 * n),
    );
    for (it, key) in items.iter().zip(&keys) {
        let ent = &payers[&it.payer];
        let pair = halves.get_mut(key)?;
        // the payer's half and its partner's, both here and open, their chains in step
        let mine = pair.iter().position(|h| &h.ent == ent)?;
        let other = pair.iter().position(|h| h.id != pair[mine].id)?;
        let (m, o) = (&pair[mine], &pair[other]);
        if pair.len() != 2
            || !m.open
            || !o.open
            || m.part_ent.as_deref() != Some(o.ent.as_str())
            || m.chain_len != o.chain_len
            || m.tip != o.tip
            || it.units > m.room
        {
            return None;
        }
        let uuid = random_uuid();
        let doc = ChitDoc {
            tally: uuid_text(key),
            by: m.side,
            kind: ChitType::Tran,
            uuid: uuid_text(&uuid),
            date: date.clone(),
            units: Some(it.units),
            reference: it.reference.clone(),
            memo: it.memo.clone(),
        };
        doc.check().ok()?;
        let sig = crate::crypto::sign_with_seed(&seeds[ent], &doc.to_json());
        let idx = m.chain_len + 1;
        let hash = doc
            .chain_hash(i64::from(idx), &m.tip, Some(&sig))
            .ok()?
            .to_vec();
        let by = m.side;
        // the foil half first, as a single payment writes them
        let order = if m.side == Side::Foil {
            [mine, other]
        } else {
            [other, mine]
        };
        for k in order {
            let h = &pair[k];
            c_tally.push(h.id);
            c_uuid.push(pgrx::Uuid::from_bytes(uuid));
            c_issuer.push(by.as_str());
            c_units.push(it.units);
            c_ref.push(it.reference.clone().map(JsonB));
            c_memo.push(it.memo.clone());
            c_sig.push(sig.clone());
            c_value.push(change(h.side, by, it.units));
            c_idx.push(idx);
            c_prev.push(h.tip.clone());
            c_hash.push(hash.clone());
        }
        for h in pair.iter_mut() {
            h.chain_len = idx;
            h.tip = hash.clone();
            if h.ent == *ent {
                h.room = h.room.saturating_sub(it.units);
            }
        }
        chits.push(pgrx::Uuid::from_bytes(uuid));
    }
    Spi::connect_mut(|c| {
        let insert = plan(
            c,
            "INSERT INTO chips.chits (tally_id, chit_uuid, chit_type, issuer, units, reference, memo,
                                      chit_date, signature, status, value, chain_idx, chain_prev,
                                      chain_hash)
             SELECT k.t, k.u, 'tran', k.i, k.n, k.r, k.m,
                    timestamptz '1970-01-01 00:00:00+00' + $12 * interval '1 millisecond',
                    k.s, 'good', k.v, k.x, k.p, k.h
             FROM ROWS FROM (pg_catalog.unnest($1::bigint[]), pg_catalog.unnest($2::uuid[]),
                             pg_catalog.unnest($3::text[]), pg_catalog.unnest($4::bigint[]),
                             pg_catalog.unnest($5::jsonb[]), pg_catalog.unnest($6::text[]),
                             pg_catalog.unnest($7::text[]), pg_catalog.unnest($8::bigint[]),
                             pg_catalog.unnest($9::int[]), pg_catalog.unnest($10::bytea[]),
                             pg_catalog.unnest($11::bytea[]))
                  WITH ORDINALITY k(t, u, i, n, r, m, s, v, x, p, h, o)
             ORDER BY k.o",
            &[
                oid::<Vec<i64>>(),
                oid::<Vec<pgrx::Uuid>>(),
                oid::<Vec<String>>(),
                oid::<Vec<i64>>(),
                oid::<Vec<JsonB>>(),
                oid::<Vec<String>>(),
                oid::<Vec<String>>(),
                oid::<Vec<i64>>(),
                oid::<Vec<i32>>(),
                oid::<Vec<Vec<u8>>>(),
                oid::<Vec<Vec<u8>>>(),
                oid::<i64>(),
            ],
        );
        spi(c.update(
            &*insert,
            None,
            &[
                c_tally.into(),
                c_uuid.into(),
                c_issuer.into(),
                c_units.into(),
                c_ref.into(),
                c_memo.into(),
                c_sig.into(),
                c_value.into(),
                c_idx.into(),
                c_prev.into(),
                c_hash.into(),
                date_ms.into(),
            ],
        ));
    });
    Some(chits)
}
