//! Many payments written at once: the set-based path of `chips.pay_batch` (sql/chits.sql).
//!
//! A payroll or a shop's end of day is a batch of payments on open tallies between users of this
//! site: signed here with the payers' custodial keys, or documents the payers signed themselves.
//! Item by item, each payment runs some thirty statements (its chit on both halves, the
//! statement trigger's balances and events, the checks); here the whole batch is checked in
//! memory against its tallies, locked once, and written in one INSERT, so the chits statement
//! trigger (sql/chits.sql, `chips._chits_ins`) moves every balance and chain tip and makes every
//! event in one run. The rules are the single payment's: each chit is built and signed with its
//! payer's custodial key as `chips._custodial_issue` does (or, written by its payer, checked as
//! `chips._chit_issue` checks one: the payer's side, dated within the hour, new on its tally,
//! signed by the payer) and chained as `chips._chit_insert` chains it; the credit limit is
//! core's `pay_room` counted over the items in order. Every signature is checked here, as the
//! chits row trigger would check it (`chips._chits_biu`: valid under the key the row's half names
//! for its issuer, `chips._key_of`): a document its payer signed is verified under the payer's
//! key, one signed here is made with the payer's custodial key, and both halves must name that
//! key. The rows are then marked as checked (`chips._chit_checked`), and the row trigger, whose
//! WHEN clause asks, skips them instead of building each document again and verifying it once
//! more through a statement of its own (two of them for every payment).
//!
//! The path only takes batches it can write whole: when any item is not such a payment, or would
//! be refused, it declines (returns null) and `chips.pay_batch` pays item by item, which says
//! what each refused item's SQLSTATE and message are. Anything it raises is caught there the same
//! way (in a subtransaction, so nothing it wrote stays).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use chips_core::chit::{
    change, dated_near, iso_millis, millis_of, pay_room, random_uuid, uuid_text, ChitDoc, ChitType,
};
use chips_core::tally::Side;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient};
use pgrx::{IntoDatum, JsonB, PgOid};
use serde_json::Value;

use crate::error::ChipsError;

/// One item of a batch as the set-based path takes it: `{tally, units, memo?, reference?,
/// payer?}`, signed here with the payer's custodial key, or `{doc, signature?, payer?}`, a
/// payment document (`tran`) its payer signed (or, without a signature, one to sign here), whose
/// tally, units, memo and reference are read into the item's own fields.
struct Item {
    tally: [u8; 16],
    units: i64,
    memo: Option<String>,
    reference: Option<Value>,
    payer: Option<String>,
    signed: Option<(ChitDoc, Option<String>)>,
}

/// The bytes of a uuid in a form PostgreSQL reads too (hyphenated, plain or braced: the `uuid`
/// crate also reads `urn:uuid:...`, which a single payment's `::uuid` refuses), or None.
fn uuid_bytes(text: &str) -> Option<[u8; 16]> {
    if text.starts_with("urn:") {
        return None;
    }
    uuid::Uuid::parse_str(text).ok().map(|u| *u.as_bytes())
}

/// The items, or None when any is not such a payment (a setting, a field of another type or an
/// unknown one): those go item by item.
fn items(payments: &Value) -> Option<Vec<Item>> {
    let list = payments.as_array()?;
    if list.is_empty() || list.len() > 1000 {
        return None;
    }
    list.iter()
        .map(|p| {
            let o = p.as_object()?;
            let payer = match o.get("payer") {
                None | Some(Value::Null) => None,
                Some(x) => Some(x.as_str()?.to_string()),
            };
            if let Some(d) = o.get("doc") {
                if o.keys()
                    .any(|k| !matches!(k.as_str(), "doc" | "signature" | "payer"))
                {
                    return None;
                }
                let doc = ChitDoc::from_json(d).ok()?;
                let signature = match o.get("signature") {
                    None | Some(Value::Null) => None,
                    Some(x) => Some(x.as_str()?.to_string()),
                };
                if doc.kind != ChitType::Tran {
                    return None;
                }
                return Some(Item {
                    tally: uuid_bytes(&doc.tally)?,
                    units: doc.units?,
                    memo: doc.memo.clone(),
                    reference: doc.reference.clone(),
                    payer,
                    signed: Some((doc, signature)),
                });
            }
            if o.keys().any(|k| {
                !matches!(
                    k.as_str(),
                    "tally" | "units" | "memo" | "reference" | "payer"
                )
            }) {
                return None;
            }
            Some(Item {
                tally: uuid_bytes(o.get("tally")?.as_str()?)?,
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
                payer,
                signed: None,
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
    /// the keys a chit by the stock side and by the foil side verify with on this half, as the
    /// chits row trigger finds them (`chips._key_of`)
    keys: [Option<String>; 2],
}

impl Half {
    /// The key a chit issued by `by` verifies with on this half.
    fn key_of(&self, by: Side) -> Option<&str> {
        self.keys[usize::from(by == Side::Foil)].as_deref()
    }
}

/// The chit rows of a batch, column by column (both halves of each chit, the foil half first), as
/// the INSERT takes them.
#[derive(Default)]
struct Rows {
    tally: Vec<i64>,
    uuid: Vec<pgrx::Uuid>,
    issuer: Vec<&'static str>,
    units: Vec<i64>,
    reference: Vec<Option<JsonB>>,
    memo: Vec<Option<String>>,
    signature: Vec<String>,
    value: Vec<i64>,
    idx: Vec<i32>,
    prev: Vec<Vec<u8>>,
    hash: Vec<Vec<u8>>,
    date: Vec<i64>,
}

/// The statement that locks a batch's tallies (`$1`: one uuid, or an array of them), both halves
/// in id order as every writer locks them, and reads what the batch is checked against.
macro_rules! lock_sql {
    ($which:literal) => {
        concat!(
            "SELECT x.tally_uuid, x.id, x.ent, x.side, x.status = 'open', x.part_ent, x.net_good,
                    x.net_hold, coalesce((x.part_terms->>'limit')::bigint, 0), x.chain_len,
                    coalesce(x.chain_tip, x.digest), chips._key_of(x, 'stock'), chips._key_of(x, 'foil')
             FROM chips.tallies x WHERE x.tally_uuid ",
            $which,
            " ORDER BY x.id FOR UPDATE"
        )
    };
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

thread_local! {
    /// The chit rows the writer is inserting whose signatures it checked itself: (tally half,
    /// chit uuid, signature). Filled just before its INSERT and emptied when the INSERT ends,
    /// however it ends; only this module adds to it.
    static CHECKED: RefCell<HashMap<(i64, [u8; 16]), String>> = RefCell::new(HashMap::new());
}

/// The rows of one INSERT marked as checked, for as long as the guard lives (a PostgreSQL
/// error raised inside the INSERT unwinds through it too).
struct Checked;

impl Checked {
    fn mark(rows: &Rows) -> Checked {
        CHECKED.with(|s| {
            let mut s = s.borrow_mut();
            s.clear();
            for ((t, u), sig) in rows.tally.iter().zip(&rows.uuid).zip(&rows.signature) {
                s.insert((*t, *u.as_bytes()), sig.clone());
            }
        });
        Checked
    }
}

impl Drop for Checked {
    fn drop(&mut self) {
        CHECKED.with(|s| s.borrow_mut().clear());
    }
}

/// Whether the chit row (half `tally_id`, `chit`, `signature`) being inserted is one whose
/// signature the set-based writer checked itself (see the module's comment); each row is
/// answered true once. The WHEN clause of the chits row trigger (sql/finalize.sql) asks it, so
/// that the trigger verifies every other good chit written.
#[pg_extern(volatile, parallel_unsafe, name = "_chit_checked")]
fn chit_checked(tally_id: Option<i64>, chit: Option<pgrx::Uuid>, signature: Option<&str>) -> bool {
    let (Some(tally_id), Some(chit), Some(signature)) = (tally_id, chit, signature) else {
        return false;
    };
    CHECKED.with(|s| {
        let mut s = s.borrow_mut();
        s.remove(&(tally_id, *chit.as_bytes()))
            .is_some_and(|checked| checked == signature)
    })
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
        tally: *tally?.as_bytes(),
        units: units?,
        memo,
        reference,
        payer: None,
        signed: None,
    };
    write(vec![item])?.pop()
}

/// Writes `items` at once (see the module's comment), or None.
fn write(items: Vec<Item>) -> Option<Vec<pgrx::Uuid>> {
    let mut uuids: Vec<pgrx::Uuid> = items
        .iter()
        .map(|i| pgrx::Uuid::from_bytes(i.tally))
        .collect();
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
        // the tallies, locked (one tally by a statement of its own: PostgreSQL plans
        // `= ANY ($1)` afresh at every call, its generic plan costing more than one made for the
        // array given)
        let rows = if let [one] = uuids[..] {
            let lock = plan(c, lock_sql!("= $1"), &[oid::<pgrx::Uuid>()]);
            spi(c.select(&*lock, None, &[one.into()]))
        } else {
            let lock = plan(c, lock_sql!("= ANY ($1)"), &[oid::<Vec<pgrx::Uuid>>()]);
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
                keys: [spi(r.get(12)), spi(r.get(13))],
            });
        }
    });
    // a payment signed here needs its payer's custodial key (without one it goes item by item:
    // 55000)
    if items
        .iter()
        .any(|i| !matches!(i.signed, Some((_, Some(_)))) && !seeds.contains_key(&payers[&i.payer]))
    {
        return None;
    }
    // a signed document's uuid is its signer's: one already on its tally (a retry, or a
    // clash) goes item by item, which tells them apart
    let mut given: Vec<(i64, pgrx::Uuid)> = Vec::new();
    for it in &items {
        if let Some((doc, _)) = &it.signed {
            let half = halves
                .get(&it.tally)?
                .iter()
                .find(|h| h.ent == payers[&it.payer])?;
            given.push((half.id, pgrx::Uuid::from_bytes(uuid_bytes(&doc.uuid)?)));
        }
    }
    if !given.is_empty() {
        let mut seen: Vec<(i64, [u8; 16])> =
            given.iter().map(|(t, u)| (*t, *u.as_bytes())).collect();
        seen.sort_unstable();
        seen.dedup();
        if seen.len() < given.len() {
            return None;
        }
        let (ids, uuids): (Vec<i64>, Vec<pgrx::Uuid>) = given.into_iter().unzip();
        let taken: i64 = Spi::connect(|c| {
            let q = plan(
                c,
                // pair by pair: `tally_id = ANY ($1) AND chit_uuid = ANY ($2)` made PostgreSQL
                // 15 descend the (tally_id, chit_uuid) index once for every pair of the two
                // arrays' elements, 10,000 descents for a batch of 100
                "SELECT count(*) FROM unnest($1::bigint[], $2::uuid[]) g(t, u)
                 JOIN chips.chits y ON y.tally_id = g.t AND y.chit_uuid = g.u",
                &[oid::<Vec<i64>>(), oid::<Vec<pgrx::Uuid>>()],
            );
            spi(spi(c.select(&*q, None, &[ids.into(), uuids.into()]))
                .first()
                .get_one::<i64>())
        })
        .unwrap_or(0);
        if taken > 0 {
            return None;
        }
    }
    let date = iso_millis(date_ms).ok()?;
    let mut chits = Vec::with_capacity(items.len());
    let mut rows = Rows::default();
    for it in &items {
        let ent = &payers[&it.payer];
        let pair = halves.get_mut(&it.tally)?;
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
        let (doc, uuid, ms, their_sig) = match &it.signed {
            // a document its payer wrote: by the payer's side, dated near now and signed by the
            // payer, as chips._chit_issue checks one
            Some((doc, sig)) => {
                let ms = millis_of(&doc.date).ok()?;
                if doc.by != m.side || !dated_near(ms, date_ms) {
                    return None;
                }
                if let Some(sig) = sig {
                    doc.verify_with(m.key_of(m.side)?, sig, crate::crypto::verify_json_cached)
                        .ok()?;
                }
                (doc.clone(), uuid_bytes(&doc.uuid)?, ms, sig.clone())
            }
            None => {
                let uuid = random_uuid();
                let doc = ChitDoc {
                    tally: uuid_text(&it.tally),
                    by: m.side,
                    kind: ChitType::Tran,
                    uuid: uuid_text(&uuid),
                    date: date.clone(),
                    units: Some(it.units),
                    reference: it.reference.clone(),
                    memo: it.memo.clone(),
                };
                doc.check().ok()?;
                (doc, uuid, date_ms, None)
            }
        };
        // the key the signature is valid under: the payer's (verified above), or the custodial
        // seed's (signed now); both halves must name it for the payer, else the item path and
        // the row trigger say what is wrong
        let (sig, signer) = match their_sig {
            Some(sig) => (sig, m.key_of(m.side)?.to_string()),
            None => {
                let seed = seeds.get(ent)?;
                (
                    crate::crypto::sign_with_seed(seed, &doc.to_json()),
                    crate::crypto::seed_public_key(seed),
                )
            }
        };
        if sig.is_empty()
            || pair
                .iter()
                .any(|h| h.key_of(m.side) != Some(signer.as_str()))
        {
            return None;
        }
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
            rows.tally.push(h.id);
            rows.uuid.push(pgrx::Uuid::from_bytes(uuid));
            rows.issuer.push(by.as_str());
            rows.units.push(it.units);
            rows.reference.push(it.reference.clone().map(JsonB));
            rows.memo.push(it.memo.clone());
            rows.signature.push(sig.clone());
            rows.value.push(change(h.side, by, it.units));
            rows.idx.push(idx);
            rows.prev.push(h.tip.clone());
            rows.hash.push(hash.clone());
            rows.date.push(ms);
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
    let _checked = Checked::mark(&rows);
    Spi::connect_mut(|c| {
        let insert = plan(
            c,
            "INSERT INTO chips.chits (tally_id, chit_uuid, chit_type, issuer, units, reference, memo,
                                      chit_date, signature, status, value, chain_idx, chain_prev,
                                      chain_hash)
             SELECT k.t, k.u, 'tran', k.i, k.n, k.r, k.m,
                    timestamptz '1970-01-01 00:00:00+00' + k.d * interval '1 millisecond',
                    k.s, 'good', k.v, k.x, k.p, k.h
             FROM ROWS FROM (pg_catalog.unnest($1::bigint[]), pg_catalog.unnest($2::uuid[]),
                             pg_catalog.unnest($3::text[]), pg_catalog.unnest($4::bigint[]),
                             pg_catalog.unnest($5::jsonb[]), pg_catalog.unnest($6::text[]),
                             pg_catalog.unnest($7::text[]), pg_catalog.unnest($8::bigint[]),
                             pg_catalog.unnest($9::int[]), pg_catalog.unnest($10::bytea[]),
                             pg_catalog.unnest($11::bytea[]), pg_catalog.unnest($12::bigint[]))
                  WITH ORDINALITY k(t, u, i, n, r, m, s, v, x, p, h, d, o)
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
                oid::<Vec<i64>>(),
            ],
        );
        spi(c.update(
            &*insert,
            None,
            &[
                rows.tally.into(),
                rows.uuid.into(),
                rows.issuer.into(),
                rows.units.into(),
                rows.reference.into(),
                rows.memo.into(),
                rows.signature.into(),
                rows.value.into(),
                rows.idx.into(),
                rows.prev.into(),
                rows.hash.into(),
                rows.date.into(),
            ],
        ));
    });
    Some(chits)
}
