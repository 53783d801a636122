//! Routes of distributed lifts through this site (`chips_core::route`): the SQL side passes the
//! site's arcs (one per open local tally and direction, with the receiving holder's free lift
//! capacity) as three parallel arrays, and gets back arc numbers (1-based) or distances.

use std::collections::HashMap;

use chips_core::route::{self, Arc};
use pgrx::prelude::*;

use crate::error::{ok, ChipsError};

/// Names to node numbers, and the arcs over them.
fn arcs(
    payers: &[Option<String>],
    receivers: &[Option<String>],
    capacities: &[Option<i64>],
) -> (HashMap<String, u32>, Vec<String>, Vec<Arc>) {
    if payers.len() != receivers.len() || payers.len() != capacities.len() {
        ChipsError::Invalid("payers, receivers and capacities must have the same length".into())
            .raise();
    }
    let mut ids: HashMap<String, u32> = HashMap::new();
    let mut names: Vec<String> = Vec::new();
    let mut id = |s: &Option<String>| -> u32 {
        let Some(s) = s else {
            ChipsError::Invalid("a route arc with a null end".into()).raise()
        };
        *ids.entry(s.clone()).or_insert_with(|| {
            names.push(s.clone());
            (names.len() - 1) as u32
        })
    };
    let mut out = Vec::with_capacity(payers.len());
    for ((p, r), c) in payers.iter().zip(receivers).zip(capacities) {
        let (from, to) = (id(p), id(r));
        out.push(Arc {
            from,
            to,
            capacity: c.unwrap_or(0),
        });
    }
    (ids, names, out)
}

/// The arcs (1-based positions in the arrays) of a shortest route from `from` to `to` on which
/// every arc carries `units`; an empty array when `from = to`, NULL when there is none.
#[pg_extern(immutable, parallel_safe, name = "_route_path")]
fn route_path(
    payers: Vec<Option<String>>,
    receivers: Vec<Option<String>>,
    capacities: Vec<Option<i64>>,
    from: &str,
    to: &str,
    units: i64,
) -> Option<Vec<i32>> {
    let (ids, _, arcs) = arcs(&payers, &receivers, &capacities);
    if from == to {
        return Some(Vec::new());
    }
    let (Some(&f), Some(&t)) = (ids.get(from), ids.get(to)) else {
        return None;
    };
    ok(route::shortest_path(ids.len(), &arcs, f, t, units))
        .map(|p| p.into_iter().map(|i| i as i32 + 1).collect())
}

/// Every node reachable from `from` over arcs that carry `units`, with its distance in tallies
/// (`from` itself at 0).
#[pg_extern(immutable, parallel_safe, name = "_route_reach")]
fn route_reach(
    payers: Vec<Option<String>>,
    receivers: Vec<Option<String>>,
    capacities: Vec<Option<i64>>,
    from: &str,
    units: i64,
) -> TableIterator<'static, (name!(ent, String), name!(hops, i32))> {
    let (ids, names, arcs) = arcs(&payers, &receivers, &capacities);
    let Some(&f) = ids.get(from) else {
        if units < 1 {
            ChipsError::Invalid("a route carries at least 1 unit".into()).raise();
        }
        return TableIterator::new(vec![(from.to_string(), 0)]);
    };
    let d = ok(route::reachable(ids.len(), &arcs, f, units));
    TableIterator::new(
        names
            .into_iter()
            .zip(d)
            .filter_map(|(n, d)| d.map(|d| (n, d as i32)))
            .collect::<Vec<_>>(),
    )
}

/// The most units one route from `from` to `to` carries over the arcs (the widest path); NULL
/// when none carries a unit or `from = to`.
#[pg_extern(immutable, parallel_safe, name = "_route_widest")]
fn route_widest(
    payers: Vec<Option<String>>,
    receivers: Vec<Option<String>>,
    capacities: Vec<Option<i64>>,
    from: &str,
    to: &str,
) -> Option<i64> {
    let (ids, _, arcs) = arcs(&payers, &receivers, &capacities);
    let (Some(&f), Some(&t)) = (ids.get(from), ids.get(to)) else {
        return None;
    };
    ok(route::widest(ids.len(), &arcs, f, t))
}

/// The most units that can leave from `from` at once over the arcs, over any number of routes,
/// each ending at one of the `exits` (a user, with the most that may leave through them,
/// `exit_caps`; NULL: no bound of its own): what a site's ways on carry together. 0 when none
/// carries a unit.
#[pg_extern(immutable, parallel_safe, name = "_route_flow")]
fn route_flow(
    payers: Vec<Option<String>>,
    receivers: Vec<Option<String>>,
    capacities: Vec<Option<i64>>,
    from: &str,
    exits: Vec<Option<String>>,
    exit_caps: Vec<Option<i64>>,
) -> i64 {
    if exits.len() != exit_caps.len() {
        ChipsError::Invalid("exits and exit capacities must have the same length".into()).raise();
    }
    let (mut ids, _, arcs) = arcs(&payers, &receivers, &capacities);
    let mut node = |s: &str| -> u32 {
        let n = ids.len() as u32;
        *ids.entry(s.to_string()).or_insert(n)
    };
    let from = node(from);
    let exits: Vec<(u32, i64)> = exits
        .iter()
        .zip(&exit_caps)
        .filter_map(|(x, c)| Some((node(x.as_deref()?), c.unwrap_or(route::FLOW_CAP))))
        .collect();
    ok(route::flow_out(ids.len(), &arcs, from, &exits))
}

/// SHA-256 of a 32-byte lift secret (its lock); 22023 for any other length.
#[pg_extern(immutable, parallel_safe, name = "_lift_condition")]
fn lift_condition(secret: &[u8]) -> Vec<u8> {
    ok(route::condition(secret)).to_vec()
}

/// Whether `secret` opens the lock `lock` (SHA-256 of a 32-byte secret); false for any other
/// length or a null.
#[pg_extern(immutable, parallel_safe, name = "_lift_opens")]
fn lift_opens(secret: Option<&[u8]>, lock: Option<&[u8]>) -> bool {
    matches!((secret, lock), (Some(s), Some(l)) if route::fulfills(s, l))
}

/// The expiry (epoch milliseconds) a site gives the next hop: `expires_ms` less `step_ms`, if at
/// least `min_ms` would be left from `now_ms`; NULL when the lift is too close to expiring.
#[pg_extern(immutable, parallel_safe, name = "_lift_next_expiry")]
fn lift_next_expiry(expires_ms: i64, now_ms: i64, step_ms: i64, min_ms: i64) -> Option<i64> {
    route::next_expiry(expires_ms, now_ms, step_ms, min_ms)
}

/// The anonymous name of `tally` within query `query` (both holders can compute it).
#[pg_extern(immutable, parallel_safe, name = "_link_id")]
fn link_id(query: &str, tally: pgrx::Uuid) -> String {
    route::link_id(query, &tally.to_string())
}
