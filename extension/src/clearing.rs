//! Clearing inside the database: the liftable graph read through SPI (balances, both holders'
//! trading variables and credit limits), solved by `chips_core::liftable`, returned as the
//! steps of a lift plan; and the capacity check the executor repeats on every step.

use std::collections::HashMap;
use std::time::Duration;

use chips_core::clearing::LiftOptions;
use chips_core::liftable::{self, Half, Policy, Tally};
use chips_core::tally::TradingVars;
use pgrx::prelude::*;

use crate::error::{ok, ChipsError};

/// One local tally as read for clearing.
struct Row {
    uuid: pgrx::Uuid,
    stock: String,
    foil: String,
    tally: Tally,
}

fn read_tallies() -> Vec<Row> {
    // Both halves here, open, no chit pending on either (a pending chit may still move the
    // balance; such a tally waits for the next pass).
    const SQL: &str = "
        SELECT s.tally_uuid, s.ent, f.ent, s.net_good,
               s.target, s.bound, s.reward, s.clutch,
               coalesce((s.hold_terms->>'limit')::bigint, 0),
               f.target, f.bound, f.reward, f.clutch,
               coalesce((f.hold_terms->>'limit')::bigint, 0)
        FROM chips.tallies s
        JOIN chips.tallies f ON f.tally_uuid = s.tally_uuid AND f.side = 'foil'
        WHERE s.side = 'stock' AND s.status = 'open' AND f.status = 'open'
          AND s.net_good = s.net_pend AND f.net_good = f.net_pend
        ORDER BY s.id";
    Spi::connect(|c| {
        let mut out = Vec::new();
        for r in c.select(SQL, None, &[])? {
            let vars = |i: usize| -> Result<Option<TradingVars>, pgrx::spi::Error> {
                Ok(
                    match (
                        r.get::<i64>(i)?,
                        r.get::<i64>(i + 1)?,
                        r.get::<f64>(i + 2)?,
                        r.get::<f64>(i + 3)?,
                    ) {
                        (Some(target), Some(bound), Some(reward), Some(clutch)) => {
                            Some(TradingVars {
                                target,
                                bound,
                                reward,
                                clutch,
                            })
                        }
                        _ => None,
                    },
                )
            };
            match (
                r.get::<pgrx::Uuid>(1)?,
                r.get::<String>(2)?,
                r.get::<String>(3)?,
                r.get::<i64>(4)?,
                vars(5)?,
                r.get::<i64>(9)?,
                vars(10)?,
                r.get::<i64>(14)?,
            ) {
                (
                    Some(uuid),
                    Some(stock),
                    Some(foil),
                    Some(net),
                    Some(sv),
                    Some(sl),
                    Some(fv),
                    Some(fl),
                ) => out.push(Row {
                    uuid,
                    stock,
                    foil,
                    tally: Tally {
                        stock: 0,
                        foil: 0,
                        net,
                        stock_vars: sv,
                        foil_vars: fv,
                        stock_limit: Some(sl),
                        foil_limit: Some(fl),
                    },
                }),
                _ => ChipsError::Invalid("clearing: a tally row with a null field".into()).raise(),
            }
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .unwrap_or_else(|e| ChipsError::Invalid(format!("clearing: {e}")).raise())
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
    if min_units < 1 || max_len < 0 || budget_ms < 0 {
        ChipsError::Invalid("min_units must be >= 1, max_len and budget_ms >= 0".into()).raise();
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
    let mut rows = read_tallies();
    let mut ids: HashMap<String, u32> = HashMap::new();
    let mut names: Vec<String> = Vec::new();
    let mut node = |ent: &str| -> u32 {
        *ids.entry(ent.to_string()).or_insert_with(|| {
            names.push(ent.to_string());
            (names.len() - 1) as u32
        })
    };
    for r in rows.iter_mut() {
        r.tally.stock = node(&r.stock);
        r.tally.foil = node(&r.foil);
    }
    let tallies: Vec<Tally> = rows.iter().map(|r| r.tally).collect();
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
            None => return TableIterator::new(Vec::new()), // no open local tally: nothing to lift
        },
    };
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
