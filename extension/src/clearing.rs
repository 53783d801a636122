//! Clearing inside the database: the liftable graph read through SPI, solved by
//! `chips_core::clearing`, returned as the circles of a lift plan.

use std::collections::HashMap;
use std::time::Duration;

use chips_core::clearing::{plan, Edge, LiftOptions};
use pgrx::prelude::*;

use crate::error::{ok, ChipsError};

/// The lift plan for the debts among this site's local tallies (both halves here): one row per
/// tally of each circle, in circle order, with the debtor and creditor of that step and the
/// units the circle lowers. Capacity today is the debt itself (trading variables left at zero);
/// reads only, locks nothing. `max_len` 0 means no limit; `budget_ms` 0 means no time budget.
#[pg_extern(stable)]
#[allow(clippy::type_complexity)]
fn clearing_plan(
    min_units: default!(i64, 1),
    max_len: default!(i32, 0),
    budget_ms: default!(i32, 0),
) -> TableIterator<
    'static,
    (
        name!(circle, i32),
        name!(step, i32),
        name!(tally, pgrx::Uuid),
        name!(debtor, String),
        name!(creditor, String),
        name!(units, i64),
    ),
> {
    if min_units < 1 || max_len < 0 || budget_ms < 0 {
        ChipsError::Invalid("min_units must be >= 1, max_len and budget_ms >= 0".into()).raise();
    }
    let need = |what: &str| -> ChipsError {
        ChipsError::Invalid(format!("clearing: a tally without {what}"))
    };
    let debts: Vec<(pgrx::Uuid, String, String, i64)> = Spi::connect(|c| {
        let rows = c.select(
            "SELECT tally_uuid, ent, part_ent, net_good FROM chips.tallies
             WHERE side = 'stock' AND status = 'open' AND part_ent IS NOT NULL AND net_good <> 0
             ORDER BY id",
            None,
            &[],
        )?;
        let mut out = Vec::new();
        for r in rows {
            let (t, stock, foil, net) = (
                r.get::<pgrx::Uuid>(1)?,
                r.get::<String>(2)?,
                r.get::<String>(3)?,
                r.get::<i64>(4)?,
            );
            match (t, stock, foil, net) {
                (Some(t), Some(s), Some(f), Some(n)) => out.push((t, s, f, n)),
                _ => need("a uuid, holders or balance").raise(),
            }
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .unwrap_or_else(|e| ChipsError::Invalid(format!("clearing: {e}")).raise());

    let mut ids: HashMap<String, u32> = HashMap::new();
    let mut names: Vec<String> = Vec::new();
    let mut node = |ent: &str| -> u32 {
        *ids.entry(ent.to_string()).or_insert_with(|| {
            names.push(ent.to_string());
            (names.len() - 1) as u32
        })
    };
    // An edge runs from the debtor to the creditor, as far as the debt goes.
    let edges: Vec<Edge> = debts
        .iter()
        .map(|(_, stock, foil, net)| {
            let (s, f) = (node(stock), node(foil));
            if *net > 0 {
                Edge {
                    from: f,
                    to: s,
                    cap: *net,
                    cost: -1,
                }
            } else {
                Edge {
                    from: s,
                    to: f,
                    cap: net.saturating_neg(),
                    cost: -1,
                }
            }
        })
        .collect();
    let options = LiftOptions {
        min_units,
        max_len: if max_len == 0 {
            usize::MAX
        } else {
            max_len as usize
        },
        time_budget: (budget_ms > 0).then(|| Duration::from_millis(budget_ms as u64)),
    };
    let p = ok(plan(names.len(), &edges, options));
    let mut rows = Vec::new();
    for (ci, circle) in p.circles.iter().enumerate() {
        for (si, &e) in circle.edges.iter().enumerate() {
            let edge = edges[e as usize];
            rows.push((
                ci as i32 + 1,
                si as i32 + 1,
                debts[e as usize].0,
                names[edge.from as usize].clone(),
                names[edge.to as usize].clone(),
                circle.units,
            ));
        }
    }
    TableIterator::new(rows)
}
