//! Clearing inside the database: the liftable graph read through SPI (balances, both holders'
//! trading variables and credit limits), solved by `chips_core::liftable`, returned as the
//! steps of a lift plan (`clearing_plan`) or written as one circulation (`_clearing_pass`: lock,
//! re-check with `chips_core::pass`, and write the lift, its circles and every lift chit with
//! a few set-based statements).

use std::collections::HashMap;
use std::time::Duration;

use chips_core::chit::{random_uuid, uuid_text, ChitDoc};
use chips_core::clearing::LiftOptions;
use chips_core::liftable::{self, Half, Policy, Tally, TallyPlan};
use chips_core::pass::Pass;
use chips_core::tally::{Side, TradingVars};
use pgrx::prelude::*;
use pgrx::JsonB;

use crate::error::{ok, ChipsError};

/// One local tally as read for clearing.
#[derive(Clone)]
pub(crate) struct Row {
    pub(crate) uuid: pgrx::Uuid,
    /// The ids of its stock and foil halves.
    pub(crate) halves: [i64; 2],
    pub(crate) stock: String,
    pub(crate) foil: String,
    /// Node numbers are 0 until the reader numbers them.
    pub(crate) tally: Tally,
    /// Whether a lift may use it now: no chit pending on either half.
    pub(crate) settled: bool,
}

/// An array column of the read (empty when there is no row), every element present.
fn column<T>(v: Option<Vec<Option<T>>>) -> Vec<T> {
    v.unwrap_or_default()
        .into_iter()
        .map(|x| {
            x.unwrap_or_else(|| {
                ChipsError::Invalid("clearing: a tally row with a null field".into()).raise()
            })
        })
        .collect()
}

/// One half of an open tally as the reader scans it.
struct ReadHalf {
    id: i64,
    ent: String,
    net: i64,
    vars: TradingVars,
    limit: i64,
    settled: bool,
}

/// The open tallies with both halves here (`only`: just those), in id order (of the stock
/// half). Whether one has a chit pending (a pending chit may still move the balance; such a
/// tally waits) is `settled`. One scan of the open halves into one row of arrays (one aggregate
/// pass, so every array is in the same order), not a row per half; the halves are paired here
/// by tally uuid: a join of the table with itself in the query cost a second scan and a hash
/// of every half (docs/benchmarks.md, "Clearing inside PostgreSQL", has both timed).
pub(crate) fn read_tallies(only: Option<&[pgrx::Uuid]>) -> Vec<Row> {
    const SQL: &str = "
        SELECT array_agg(x.id), array_agg(x.tally_uuid), array_agg(x.side = 'stock'),
               array_agg(x.ent), array_agg(x.net_good), array_agg(x.target), array_agg(x.bound),
               array_agg(x.reward), array_agg(x.clutch),
               array_agg(coalesce((x.hold_terms->>'limit')::bigint, 0)),
               array_agg(x.net_good = x.net_pend)
        FROM chips.tallies x WHERE x.status = 'open'";
    let halves = Spi::connect(|c| {
        let r = match only {
            None => c.select(SQL, None, &[])?.first(),
            Some(u) => c
                .select(
                    &format!("{SQL} AND x.tally_uuid = ANY ($1)"),
                    None,
                    &[u.to_vec().into()],
                )?
                .first(),
        };
        let ids: Vec<i64> = column(r.get(1)?);
        let uuids: Vec<pgrx::Uuid> = column(r.get(2)?);
        let stock: Vec<bool> = column(r.get(3)?);
        let ents: Vec<String> = column(r.get(4)?);
        let net: Vec<i64> = column(r.get(5)?);
        let target: Vec<i64> = column(r.get(6)?);
        let bound: Vec<i64> = column(r.get(7)?);
        let reward: Vec<f64> = column(r.get(8)?);
        let clutch: Vec<f64> = column(r.get(9)?);
        let limit: Vec<i64> = column(r.get(10)?);
        let settled: Vec<bool> = column(r.get(11)?);
        let n = ids.len();
        if [
            uuids.len(),
            stock.len(),
            ents.len(),
            net.len(),
            target.len(),
            bound.len(),
            reward.len(),
            clutch.len(),
            limit.len(),
            settled.len(),
        ]
        .iter()
        .any(|&l| l != n)
        {
            ChipsError::Invalid("clearing: the tally columns differ in length".into()).raise();
        }
        Ok::<_, pgrx::spi::Error>(
            ents.into_iter()
                .enumerate()
                .map(|(k, ent)| {
                    (
                        uuids[k],
                        stock[k],
                        ReadHalf {
                            id: ids[k],
                            ent,
                            net: net[k],
                            vars: TradingVars {
                                target: target[k],
                                bound: bound[k],
                                reward: reward[k],
                                clutch: clutch[k],
                            },
                            limit: limit[k],
                            settled: settled[k],
                        },
                    )
                })
                .collect::<Vec<_>>(),
        )
    })
    .unwrap_or_else(|e| ChipsError::Invalid(format!("clearing: {e}")).raise());
    let mut pairs: HashMap<[u8; 16], (Option<ReadHalf>, Option<ReadHalf>)> =
        HashMap::with_capacity(halves.len() / 2 + 1);
    for (uuid, is_stock, half) in halves {
        let e = pairs.entry(*uuid.as_bytes()).or_default();
        if is_stock {
            e.0 = Some(half);
        } else {
            e.1 = Some(half);
        }
    }
    let mut rows: Vec<Row> = pairs
        .into_iter()
        .filter_map(|(uuid, pair)| match pair {
            (Some(s), Some(f)) => Some(Row {
                uuid: pgrx::Uuid::from_bytes(uuid),
                halves: [s.id, f.id],
                tally: Tally {
                    stock: 0,
                    foil: 0,
                    net: s.net,
                    stock_vars: s.vars,
                    foil_vars: f.vars,
                    stock_limit: Some(s.limit),
                    foil_limit: Some(f.limit),
                },
                settled: s.settled && f.settled,
                stock: s.ent,
                foil: f.ent,
            }),
            // a tally with another site: one half here
            _ => None,
        })
        .collect();
    // in id order: the same tallies always make the same plan
    rows.sort_unstable_by_key(|r| r.halves[0]);
    rows
}

/// The lift plan for the debts among this site's local tallies: one row per step of each
/// circle, in circle order. A step lowers what `debtor` owes `creditor` on `tally` by `units`
/// (past zero only within the creditor-to-be's target and limit); `costed` says it uses
/// capacity between a target and a bound; `margin` is the circle's compounded margin. With
/// `through` (a user's ent) every circle starts and ends at that user. Reads only, locks
/// nothing. `max_len` 0: no limit; `budget_ms` 0: no time budget; `max_margin` NULL: the site's
/// setting (`chips.clearing_settings`).
#[pg_extern(stable)]
#[allow(clippy::type_complexity)]
fn clearing_plan(
    min_units: default!(Option<i64>, 1),
    max_len: default!(Option<i32>, 0),
    budget_ms: default!(Option<i32>, 0),
    through: default!(Option<&str>, "NULL"),
    max_margin: default!(Option<f64>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(circle, i32),
        name!(step, i32),
        name!(tally, pgrx::Uuid),
        name!(debtor, String),
        name!(creditor, String),
        name!(units, i64),
        name!(costed, bool),
        name!(margin, f64),
    ),
> {
    let (Some(min_units), Some(max_len), Some(budget_ms)) = (min_units, max_len, budget_ms) else {
        ChipsError::Invalid("min_units, max_len and budget_ms must not be null".into()).raise()
    };
    if budget_ms < 0 {
        ChipsError::Invalid("budget_ms must be >= 0".into()).raise();
    }
    let Planned {
        rows, names, plan, ..
    } = plan(min_units, max_len, budget_ms, through, max_margin);
    let mut out = Vec::new();
    for (ci, lift) in plan.lifts.iter().enumerate() {
        for (si, s) in lift.steps.iter().enumerate() {
            out.push((
                ci as i32 + 1,
                si as i32 + 1,
                rows[s.tally as usize].uuid,
                names[s.from as usize].clone(),
                names[s.to as usize].clone(),
                lift.units,
                s.costed,
                lift.margin,
            ));
        }
    }
    TableIterator::new(out)
}

/// The memory a pass's statements may use for sorts and hashes before spilling to disk: a pass
/// joins and sorts every tally (the default 4 MB would spill the read of a 300k-tally site to
/// disk in eight batches). Raised for the pass's statements only, put back after.
const PASS_WORK_MEM_KB: i64 = 64 * 1024;

/// Runs `f` with `work_mem` at least [`PASS_WORK_MEM_KB`], then puts the setting back (an error
/// aborts the transaction, which puts it back too).
pub(crate) fn with_work_mem<R>(f: impl FnOnce() -> R) -> R {
    let before = Spi::get_one::<String>("SELECT current_setting('work_mem')")
        .ok()
        .flatten();
    let kb = Spi::get_one::<i64>(
        "SELECT setting::bigint FROM pg_catalog.pg_settings WHERE name = 'work_mem'",
    )
    .ok()
    .flatten()
    .unwrap_or(0);
    let raise = kb < PASS_WORK_MEM_KB;
    if raise {
        set_work_mem(&format!("{PASS_WORK_MEM_KB}kB"));
    }
    let r = f();
    if let (true, Some(b)) = (raise, before) {
        set_work_mem(&b);
    }
    r
}

fn set_work_mem(value: &str) {
    Spi::run_with_args(
        "SELECT pg_catalog.set_config('work_mem', $1, true)",
        &[value.into()],
    )
    .unwrap_or_else(|e| ChipsError::Invalid(format!("clearing: {e}")).raise());
}

/// A value read through SPI that the schema says is never null.
fn field<T>(v: Option<T>) -> T {
    v.unwrap_or_else(|| {
        ChipsError::Invalid("clearing: a tally row with a null field".into()).raise()
    })
}

/// A plan and what it was made from.
struct Planned {
    rows: Vec<Row>,
    names: Vec<String>,
    plan: TallyPlan,
    policy: Policy,
}

/// Reads this site's tallies (no locks) and plans: the optimum, or through one user.
fn plan(
    min_units: i64,
    max_len: i32,
    budget_ms: i32,
    through: Option<&str>,
    max_margin: Option<f64>,
) -> Planned {
    if min_units < 1 || max_len < 0 {
        ChipsError::Invalid("min_units must be >= 1 and max_len >= 0".into()).raise();
    }
    let max_margin = match max_margin {
        Some(m) => m,
        None => Spi::get_one::<f64>("SELECT max_margin FROM chips.clearing_settings")
            .ok()
            .flatten()
            .unwrap_or(0.0),
    };
    if !(0.0..=1.0).contains(&max_margin) {
        ChipsError::Invalid(format!(
            "max_margin must be within [0, 1], not {max_margin}"
        ))
        .raise();
    }
    let started = std::time::Instant::now();
    let mut rows: Vec<Row> = with_work_mem(|| read_tallies(None))
        .into_iter()
        .filter(|r| r.settled)
        .collect();
    let mut ids: HashMap<String, u32> = HashMap::new();
    let mut names: Vec<String> = Vec::new();
    let mut node = |ent: &str| -> u32 {
        if let Some(&v) = ids.get(ent) {
            return v;
        }
        names.push(ent.to_string());
        let v = (names.len() - 1) as u32;
        ids.insert(ent.to_string(), v);
        v
    };
    for r in rows.iter_mut() {
        r.tally.stock = node(&r.stock);
        r.tally.foil = node(&r.foil);
    }
    let tallies: Vec<Tally> = rows.iter().map(|r| r.tally).collect();
    phase("read", started);
    let started = std::time::Instant::now();
    let options = LiftOptions {
        min_units,
        max_len: if max_len == 0 {
            usize::MAX
        } else {
            max_len as usize
        },
        time_budget: (budget_ms > 0).then(|| Duration::from_millis(budget_ms as u64)),
    };
    let policy = Policy { max_margin };
    let plan = match through {
        None => ok(liftable::clear(names.len(), &tallies, &policy, options)),
        Some(ent) => match ids.get(ent) {
            Some(&v) => ok(liftable::through(
                names.len(),
                &tallies,
                v,
                &policy,
                options,
            )),
            // no open local tally: nothing to lift
            None => TallyPlan {
                lifts: Vec::new(),
                cleared: 0,
                optimum: 0,
                optimal: true,
            },
        },
    };
    phase("solve", started);
    Planned {
        rows,
        names,
        plan,
        policy,
    }
}

/// Where a pass's time goes, at DEBUG1 (`SET client_min_messages = debug1` shows it).
fn phase(what: &str, started: std::time::Instant) {
    pgrx::debug1!(
        "clearing: {what} {:.1} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
}

/// One tally half as locked for writing a pass.
struct Locked {
    id: i64,
    ent: String,
    open: bool,
    good: i64,
    settled: bool,
    vars: TradingVars,
    limit: i64,
    chain_len: i32,
    tip: Vec<u8>,
}

/// Locks the tally halves `ids` (in id order, as payments and lifts lock) and reads them as
/// they are now: (stock, foil) per tally.
fn lock_halves(mut ids: Vec<i64>) -> HashMap<[u8; 16], (Option<Locked>, Option<Locked>)> {
    ids.sort_unstable();
    const SQL: &str = "
        SELECT x.tally_uuid, x.side, x.id, x.ent, x.status IN ('open'), x.net_good,
               x.net_good = x.net_pend, x.target, x.bound, x.reward, x.clutch,
               coalesce((x.hold_terms->>'limit')::bigint, 0), x.chain_len,
               coalesce(x.chain_tip, x.digest)
        FROM chips.tallies x WHERE x.id = ANY ($1)
        ORDER BY x.id FOR NO KEY UPDATE";
    let mut out: HashMap<[u8; 16], (Option<Locked>, Option<Locked>)> = HashMap::new();
    Spi::connect_mut(|c| {
        for r in c.update(SQL, None, &[ids.into()])? {
            let uuid: pgrx::Uuid = field(r.get(1)?);
            let side: String = field(r.get(2)?);
            let half = Locked {
                id: field(r.get(3)?),
                ent: field(r.get(4)?),
                open: field(r.get(5)?),
                good: field(r.get(6)?),
                settled: field(r.get(7)?),
                vars: TradingVars {
                    target: field(r.get(8)?),
                    bound: field(r.get(9)?),
                    reward: field(r.get(10)?),
                    clutch: field(r.get(11)?),
                },
                limit: field(r.get(12)?),
                chain_len: field(r.get(13)?),
                tip: field(r.get(14)?),
            };
            let e = out.entry(*uuid.as_bytes()).or_default();
            if side == "stock" {
                e.0 = Some(half);
            } else {
                e.1 = Some(half);
            }
        }
        Ok::<_, pgrx::spi::Error>(())
    })
    .unwrap_or_else(|e| ChipsError::Invalid(format!("clearing: {e}")).raise());
    out
}

/// What `debtor`'s half of a tally can take now, raising the debtor's position: zero unless
/// both halves are here, open, agree, and have no chit pending.
fn capacity_now(
    halves: &(Option<Locked>, Option<Locked>),
    debtor: &str,
    creditor: &str,
    policy: &Policy,
    costed: bool,
) -> i64 {
    let (Some(s), Some(f)) = halves else { return 0 };
    let agree = s.open
        && f.open
        && s.settled
        && f.settled
        && s.good.checked_neg() == Some(f.good)
        && s.chain_len == f.chain_len
        && s.tip == f.tip;
    let holders = (s.ent.as_str(), f.ent.as_str());
    if !agree || (holders != (debtor, creditor) && holders != (creditor, debtor)) {
        return 0;
    }
    let t = Tally {
        stock: 0,
        foil: 1,
        net: s.good,
        stock_vars: s.vars,
        foil_vars: f.vars,
        stock_limit: Some(s.limit),
        foil_limit: Some(f.limit),
    };
    let half = if s.ent == debtor {
        t.stock_half()
    } else {
        t.foil_half()
    };
    half.capacity(policy, costed)
}

/// What a pass is written from: the snapshot it was planned on, and the site's policy.
pub(crate) struct Ctx {
    pub(crate) rows: Vec<Row>,
    pub(crate) names: Vec<String>,
    pub(crate) policy: Policy,
    pub(crate) min_units: i64,
    pub(crate) through: Option<String>,
}

/// The pieces of a pass still to write, kept in this backend between the transactions of a
/// procedure that commits a piece at a time (`chips.clearing_run(piece => n)`).
struct Pending {
    ctx: Ctx,
    pieces: std::collections::VecDeque<Pass>,
}

thread_local! {
    static PENDING: std::cell::RefCell<Option<Pending>> = const { std::cell::RefCell::new(None) };
}

/// A clearing pass over this site's open local tallies (or through one user's node), in the
/// caller's transaction: the optimum, planned without locks; with `execute`, the moved tallies
/// locked, re-checked and shrunk (`chips_core::pass`), and written as one lift: the lift row,
/// its circles (`chips.pass_circles`), and one lift chit on both halves of every moved tally,
/// chained (one INSERT; the statement triggers move the balances and chain tips and tell the
/// holders); each holder is NOTIFYed once. With `piece` > 0 only the first piece of at most
/// `piece` tallies is written here (each piece is a circulation of whole circles, and a lift of
/// its own); `chips._clearing_next()` writes the next, in a later transaction of this session.
/// One row per circle: its units, its length, and `planned`, `good`, or `skipped` (payments
/// since the plan used the capacity up).
#[pg_extern(security_definer, name = "_clearing_pass")]
#[search_path(@extschema@, pg_catalog, pg_temp)]
fn clearing_pass(
    execute: Option<bool>,
    min_units: Option<i64>,
    max_len: Option<i32>,
    through: Option<&str>,
    max_margin: Option<f64>,
    piece: default!(Option<i32>, 0),
) -> TableIterator<
    'static,
    (
        name!(lift, Option<pgrx::Uuid>),
        name!(units, i64),
        name!(tallies, i32),
        name!(status, String),
    ),
> {
    let (Some(min_units), Some(max_len)) = (min_units, max_len) else {
        ChipsError::Invalid("min_units and max_len must not be null".into()).raise()
    };
    let piece = piece.unwrap_or(0);
    if piece < 0 {
        ChipsError::Invalid(format!("piece must be >= 0 tallies, not {piece}")).raise();
    }
    let Planned {
        rows,
        names,
        plan,
        policy,
    } = plan(min_units, max_len, 0, through, max_margin);
    let pass = ok(Pass::from_lifts(&plan.lifts));
    if !execute.unwrap_or(false) {
        return TableIterator::new(
            pass.circles
                .iter()
                .map(|c| (None, c.units, c.steps.len() as i32, "planned".to_string()))
                .collect::<Vec<_>>(),
        );
    }
    let ctx = Ctx {
        rows,
        names,
        policy,
        min_units,
        through: through.map(str::to_string),
    };
    if piece == 0 {
        PENDING.with(|p| p.borrow_mut().take());
        return TableIterator::new(execute_pass(pass, &ctx));
    }
    let mut pieces: std::collections::VecDeque<Pass> = pass.pieces(piece as usize).into();
    let first = pieces.pop_front();
    let out = first.map(|q| execute_pass(q, &ctx)).unwrap_or_default();
    PENDING.with(|p| *p.borrow_mut() = Some(Pending { ctx, pieces }));
    TableIterator::new(out)
}

/// Writes the next piece of the pass `chips._clearing_pass(piece => n)` began in this session
/// (re-checked against the tallies as they are now, like every piece); no rows when none is
/// left.
#[pg_extern(security_definer, name = "_clearing_next")]
#[search_path(@extschema@, pg_catalog, pg_temp)]
fn clearing_next() -> TableIterator<
    'static,
    (
        name!(lift, Option<pgrx::Uuid>),
        name!(units, i64),
        name!(tallies, i32),
        name!(status, String),
    ),
> {
    let Some(mut pending) = PENDING.with(|p| p.borrow_mut().take()) else {
        return TableIterator::new(Vec::new());
    };
    let Some(piece) = pending.pieces.pop_front() else {
        return TableIterator::new(Vec::new());
    };
    let out = execute_pass(piece, &pending.ctx);
    if !pending.pieces.is_empty() {
        PENDING.with(|p| *p.borrow_mut() = Some(pending));
    }
    TableIterator::new(out)
}

/// Locks, re-checks, shrinks and writes one pass; one row per circle.
pub(crate) fn execute_pass(
    mut pass: Pass,
    ctx: &Ctx,
) -> Vec<(Option<pgrx::Uuid>, i64, i32, String)> {
    let uuids: Vec<pgrx::Uuid> = pass
        .moves
        .iter()
        .map(|m| ctx.rows[m.tally as usize].uuid)
        .collect();
    let started = std::time::Instant::now();
    let halves = with_work_mem(|| {
        lock_halves(
            pass.moves
                .iter()
                .flat_map(|m| ctx.rows[m.tally as usize].halves)
                .collect(),
        )
    });
    let capacity: Vec<i64> = pass
        .moves
        .iter()
        .zip(&uuids)
        .map(|(m, u)| match halves.get(u.as_bytes()) {
            Some(h) => capacity_now(
                h,
                &ctx.names[m.debtor as usize],
                &ctx.names[m.creditor as usize],
                &ctx.policy,
                m.costed,
            ),
            None => 0,
        })
        .collect();
    ok(pass.shrink(&capacity, ctx.min_units));
    phase("lock and re-check", started);
    let lengths: Vec<(i64, i32)> = pass
        .circles
        .iter()
        .map(|c| (c.units, c.steps.len() as i32))
        .collect();
    pass.compact();
    let started = std::time::Instant::now();
    let lift = (!pass.moves.is_empty()).then(|| {
        with_work_mem(|| {
            write_pass(
                &pass,
                &ctx.rows,
                &ctx.names,
                &halves,
                ctx.through.as_deref(),
            )
        })
    });
    phase("write", started);
    lengths
        .into_iter()
        .map(|(units, len)| {
            if units > 0 {
                (lift, units, len, "good".to_string())
            } else {
                (None, 0, len, "skipped".to_string())
            }
        })
        .collect()
}

/// Writes a (checked, shrunk, compacted) pass over locked tallies: the lift, its circles, one
/// lift chit on both halves of every move, chained, and one NOTIFY per holder.
fn write_pass(
    pass: &Pass,
    rows: &[Row],
    names: &[String],
    halves: &HashMap<[u8; 16], (Option<Locked>, Option<Locked>)>,
    through: Option<&str>,
) -> pgrx::Uuid {
    let started = std::time::Instant::now();
    let lift = random_uuid();
    let lift_text = uuid_text(&lift);
    let date_ms = Spi::get_one::<i64>("SELECT (extract(epoch FROM now()) * 1000)::bigint")
        .ok()
        .flatten()
        .unwrap_or_else(|| ChipsError::Invalid("clearing: no time".into()).raise());
    let n = pass.moves.len();
    let (mut tallies, mut debtors) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut c_tally, mut c_uuid, mut c_issuer, mut c_units, mut c_value, mut c_idx) = (
        Vec::with_capacity(2 * n),
        Vec::with_capacity(2 * n),
        Vec::with_capacity(2 * n),
        Vec::with_capacity(2 * n),
        Vec::with_capacity(2 * n),
        Vec::with_capacity(2 * n),
    );
    let (mut c_prev, mut c_hash) = (Vec::with_capacity(2 * n), Vec::with_capacity(2 * n));
    let mut moved: i128 = 0;
    let mut told: HashMap<&str, (i32, i64)> = HashMap::new();
    for m in &pass.moves {
        let row = &rows[m.tally as usize];
        let (Some(s), Some(f)) = &halves[row.uuid.as_bytes()] else {
            ChipsError::Invalid("clearing: a moved tally is not locked".into()).raise()
        };
        let creditor = names[m.creditor as usize].as_str();
        let issuer = if s.ent == creditor {
            Side::Stock
        } else {
            Side::Foil
        };
        let chit = random_uuid();
        let doc = ok(ChitDoc::lift(
            &crate::chit::uuid_text(&row.uuid),
            issuer,
            &uuid_text(&chit),
            date_ms,
            m.units,
            &lift_text,
        ));
        let idx = s.chain_len + 1;
        let hash = ok(doc.chain_hash(i64::from(idx), &s.tip, None)).to_vec();
        for (h, side) in [(s, Side::Stock), (f, Side::Foil)] {
            c_tally.push(h.id);
            c_uuid.push(pgrx::Uuid::from_bytes(chit));
            c_issuer.push(issuer.as_str());
            c_units.push(m.units);
            c_value.push(chips_core::chit::change(side, issuer, m.units));
            c_idx.push(idx);
            c_prev.push(s.tip.clone());
            c_hash.push(hash.clone());
            let e = told.entry(h.ent.as_str()).or_default();
            e.0 += 1;
            e.1 = e.1.saturating_add(m.units);
        }
        tallies.push(row.uuid);
        debtors.push(names[m.debtor as usize].clone());
        moved += i128::from(m.units);
    }
    let moved = i64::try_from(moved).unwrap_or_else(|_| {
        ChipsError::Invalid("clearing: the pass moves too much".into()).raise()
    });
    let margin = pass.circles.iter().map(|c| c.margin).fold(0.0, f64::max);
    // circles: steps flattened, 1-based positions in the lift's tallies
    let (mut k_units, mut k_margin, mut k_from, mut k_to, mut k_steps) =
        (vec![], vec![], vec![], vec![], vec![]);
    for c in &pass.circles {
        k_units.push(c.units);
        k_margin.push(c.margin);
        k_from.push(k_steps.len() as i32 + 1);
        k_steps.extend(c.steps.iter().map(|&s| s as i32 + 1));
        k_to.push(k_steps.len() as i32);
    }
    let (who, many): (Vec<&str>, Vec<(i32, i64)>) = told.into_iter().unzip();
    let (who_n, who_units): (Vec<i32>, Vec<i64>) = many.into_iter().unzip();
    let lift_uuid = pgrx::Uuid::from_bytes(lift);
    phase("chits chained", started);
    Spi::connect_mut(|c| {
        let id: i64 = c
            .update(
                "INSERT INTO chips.lifts (lift_uuid, kind, status, units, tallies, debtors, through, margin)
                 VALUES ($1, 'local', 'good', $2, $3, $4, $5, $6) RETURNING id",
                None,
                &[
                    lift_uuid.into(),
                    moved.into(),
                    tallies.into(),
                    debtors.into(),
                    through.into(),
                    margin.into(),
                ],
            )?
            .first()
            .get_one::<i64>()?
            .unwrap_or_else(|| ChipsError::Invalid("clearing: no lift id".into()).raise());
        c.update(
            "INSERT INTO chips.pass_circles (lift_id, circle, units, margin, steps)
             SELECT $1, k.n, k.u, k.m, $4[k.a:k.b]
             FROM unnest($2::bigint[], $3::float8[], $5::int[], $6::int[])
                  WITH ORDINALITY k(u, m, a, b, n)",
            None,
            &[
                id.into(),
                k_units.into(),
                k_margin.into(),
                k_steps.into(),
                k_from.into(),
                k_to.into(),
            ],
        )?;
        c.update(
            "INSERT INTO chips.chits (tally_id, chit_uuid, chit_type, issuer, units, reference,
                                      chit_date, status, value, chain_idx, chain_prev, chain_hash,
                                      lift_id)
             SELECT k.t, k.u, 'lift', k.i, k.n, $8,
                    timestamptz '1970-01-01 00:00:00+00' + $9 * interval '1 millisecond',
                    'good', k.v, k.x, k.p, k.h, $10
             FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::bigint[], $5::bigint[],
                         $6::int[], $7::bytea[], $11::bytea[]) k(t, u, i, n, v, x, p, h)",
            None,
            &[
                c_tally.into(),
                c_uuid.into(),
                c_issuer.into(),
                c_units.into(),
                c_value.into(),
                c_idx.into(),
                c_prev.into(),
                JsonB(serde_json::json!({ "lift": lift_text })).into(),
                date_ms.into(),
                id.into(),
                c_hash.into(),
            ],
        )?;
        c.update(
            "SELECT pg_catalog.pg_notify('chips_user_' || w.ent, pg_catalog.json_build_object(
                 'target', 'lift', 'lift', $1, 'tallies', w.n, 'units', w.u)::text)
             FROM unnest($2::text[], $3::int[], $4::bigint[]) w(ent, n, u)",
            None,
            &[lift_uuid.into(), who.into(), who_n.into(), who_units.into()],
        )?;
        Ok::<_, pgrx::spi::Error>(())
    })
    .unwrap_or_else(|e| ChipsError::Invalid(format!("clearing: {e}")).raise());
    lift_uuid
}

/// The units a lift may take through one tally half now, raising the holder's `position`: the
/// debt the holder owes, then (if the partner's clutch and the site's `max_margin` allow) up to
/// the holder's target and, with `costed`, its bound, never past the `lim` it granted the
/// partner. The executor's re-check of every step; see `chips_core::liftable::Half`.
#[pg_extern(immutable, parallel_safe, name = "_lift_capacity")]
#[allow(clippy::too_many_arguments)]
fn lift_capacity(
    position: i64,
    target: i64,
    bound: i64,
    reward: f64,
    partner_clutch: f64,
    lim: i64,
    max_margin: f64,
    costed: bool,
) -> i64 {
    Half {
        position,
        vars: TradingVars {
            target,
            bound,
            reward,
            clutch: 0.0,
        },
        limit: Some(lim),
        partner_clutch,
    }
    .capacity(&Policy { max_margin }, costed)
}
