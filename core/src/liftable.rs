//! The liftable graph: how far a lift may move each tally, from its balance, the trading
//! variables of both holders and the credit limits they granted; and the clearing of a set of
//! tallies as the exact optimum of [`crate::clearing`].
//!
//! # One tally, two arcs
//! A tally's balance `net` is what the foil holder owes the stock holder (negative: the stock
//! holder owes). Each holder has a *position* on it: the stock's is `net`, the foil's `-net`. A
//! lift along a tally moves value from one holder to the other: it raises one position and
//! lowers the other by the same units. Each half therefore offers one arc: the holder's arc
//! raises the holder's position, runs from the holder to the partner (it lowers what the holder
//! owes the partner) and is split in up to three segments, as in the original system's
//! `tallies_v_edg` (`min = max(target - p, 0)`, `max = max(target, bound) - p`):
//!
//! | segment   | from position | to position                   | cost | margin |
//! |-----------|---------------|-------------------------------|------|--------|
//! | reduce    | `p < 0`       | `0`                           | -1   | 0 (an IOU is honoured without charge) |
//! | overshoot | `max(p, 0)`   | `min(target, limit)`          | +1   | the partner's clutch |
//! | costed    | `target`      | `min(bound, limit)`           | +1   | `1-(1-reward)(1-partner clutch)` |
//!
//! `limit` is the credit limit the holder granted the partner: a lift never takes the partner
//! past it, just as a payment never does. A segment whose margin is above the site's
//! `max_margin` is not offered; a partner clutch of 1 or more offers nothing beyond `reduce`.
//!
//! # What the optimum is
//! Costs make the objective the total debt cleared, `sum over tallies of |net before| - |net
//! after|`: lowering a balance towards zero gains one per unit, moving it away from zero (into
//! a holder's target, or between target and bound) costs one per unit. Per tally the cost is a
//! convex function of the net change, so no circle ever gains by going round one tally both
//! ways (the "phantom" two-circle an arc per half would otherwise offer); flows that do go both
//! ways on a tally (equal-cost ties) are netted before the circulation is cut into lifts, and
//! the net move is spread over the segments in order (free before costed). Free and costed
//! capacity count the same to the optimizer; circles whose compounded margin ends above
//! `max_margin` are left out of the plan.

use std::time::Instant;

use crate::clearing::{self, Edge, LiftOptions};
use crate::error::{Error, Result};
use crate::tally::TradingVars;

/// Margins are floats: a margin equal to the policy's up to this much still passes.
const EPS: f64 = 1e-12;

/// One holder's side of a tally, as the lift engine sees it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Half {
    /// The holder's position: what the partner owes the holder (negative: what it owes).
    pub position: i64,
    pub vars: TradingVars,
    /// The credit limit the holder granted the partner; `None`: unlimited.
    pub limit: Option<i64>,
    /// The partner's clutch (its price for letting its own position drop below zero).
    pub partner_clutch: f64,
}

/// The site's policy for costed capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// The highest margin a lift may carry (compounded over its steps); 0: only free lifts.
    pub max_margin: f64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy { max_margin: 0.0 }
    }
}

/// What one half offers a lift: the original system's lading, plus its segments.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Lading {
    /// Units that lower a debt of the holder (`p < 0` up to zero).
    pub reduce: i64,
    /// Units free of charge: `reduce` plus up to the holder's target (the original `min`).
    pub free: i64,
    /// Units up to the holder's bound, free and costed (the original `max`, never below `free`).
    pub max: i64,
    /// Margin on the free units beyond `reduce`.
    pub overshoot_margin: f64,
    /// Margin on the units between `free` and `max`.
    pub costed_margin: f64,
}

/// One segment of an arc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    Reduce,
    Overshoot,
    Costed,
}

impl Segment {
    /// What a unit along the segment costs the optimizer: lowering a debt gains one, moving a
    /// balance away from zero costs one (so the optimum clears the most debt).
    pub fn cost(self) -> i64 {
        match self {
            Segment::Reduce => -1,
            Segment::Overshoot | Segment::Costed => 1,
        }
    }
}

impl Half {
    /// The capacity of the holder's arc, segment by segment, before any policy.
    pub fn lading(&self) -> Lading {
        let p = self.position;
        let limit = self.limit.unwrap_or(i64::MAX).max(0);
        let target = self.vars.target.max(0).min(limit);
        let bound = self.vars.bound.max(self.vars.target).max(0).min(limit);
        let gap = |ceiling: i64| -> i64 {
            // ceiling - p, clamped at zero, without overflow for any i64 p
            i64::try_from((i128::from(ceiling) - i128::from(p)).max(0)).unwrap_or(i64::MAX)
        };
        let reduce = if p < 0 { gap(0) } else { 0 };
        let free = gap(target).max(reduce);
        let max = gap(bound).max(free);
        let clutch = self.partner_clutch;
        Lading {
            reduce,
            free,
            max,
            overshoot_margin: clutch,
            costed_margin: 1.0 - (1.0 - self.vars.reward) * (1.0 - clutch),
        }
    }

    /// The segments `policy` offers, in order, with their capacities and margins (empty ones
    /// left out).
    pub fn segments(&self, policy: &Policy) -> Vec<(Segment, i64, f64)> {
        let l = self.lading();
        let mut out = Vec::with_capacity(3);
        if l.reduce > 0 {
            out.push((Segment::Reduce, l.reduce, 0.0));
        }
        let beyond = self.partner_clutch < 1.0;
        if beyond && l.free > l.reduce && l.overshoot_margin <= policy.max_margin + EPS {
            out.push((Segment::Overshoot, l.free - l.reduce, l.overshoot_margin));
            if l.max > l.free && l.costed_margin <= policy.max_margin + EPS {
                out.push((Segment::Costed, l.max - l.free, l.costed_margin));
            }
        }
        out
    }

    /// The units a lift may move this half's way now: what [`Half::segments`] offers, costed
    /// segment included or not. The executor re-checks every step with this.
    pub fn capacity(&self, policy: &Policy, costed: bool) -> i64 {
        self.segments(policy)
            .iter()
            .filter(|(s, _, _)| costed || *s != Segment::Costed)
            .fold(0i64, |a, (_, c, _)| a.saturating_add(*c))
    }
}

/// A tally between two nodes of the graph.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Tally {
    pub stock: u32,
    pub foil: u32,
    /// What the foil holder owes the stock holder.
    pub net: i64,
    pub stock_vars: TradingVars,
    pub foil_vars: TradingVars,
    /// Limit the stock holder granted the foil holder (`None`: unlimited).
    pub stock_limit: Option<i64>,
    /// Limit the foil holder granted the stock holder.
    pub foil_limit: Option<i64>,
}

impl Tally {
    /// The stock holder's half: its arc runs stock -> foil and raises `net`.
    pub fn stock_half(&self) -> Half {
        Half {
            position: self.net,
            vars: self.stock_vars,
            limit: self.stock_limit,
            partner_clutch: self.foil_vars.clutch,
        }
    }

    /// The foil holder's half: its arc runs foil -> stock and lowers `net`.
    pub fn foil_half(&self) -> Half {
        Half {
            position: self.net.checked_neg().unwrap_or(i64::MAX),
            vars: self.foil_vars,
            limit: self.foil_limit,
            partner_clutch: self.stock_vars.clutch,
        }
    }
}

/// One step of a lift: tally `tally` (an index into the input), lowering what `from` owes `to`
/// by the circle's units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub tally: u32,
    pub from: u32,
    pub to: u32,
    /// Whether the step uses the holder's costed capacity (between target and bound).
    pub costed: bool,
}

/// One lift of a plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Lift {
    pub steps: Vec<Step>,
    pub units: i64,
    /// Compounded margin of the steps: `1 - prod(1 - margin)`.
    pub margin: f64,
}

/// A clearing plan over tallies.
#[derive(Debug, Clone, PartialEq)]
pub struct TallyPlan {
    pub lifts: Vec<Lift>,
    /// Debt the kept lifts clear: `sum |net before| - |net after|`.
    pub cleared: i128,
    /// What the optimum clears before lifts are left out.
    pub optimum: i128,
    pub optimal: bool,
}

struct Arc {
    tally: u32,
    /// true: the foil holder's arc (lowers net).
    foil: bool,
    segment: Segment,
    margin: f64,
}

impl Arc {
    /// How `units` on this arc move its tally's `net` (the foil's arc lowers it).
    fn lowers_net_by(&self, units: i64) -> i128 {
        if self.foil {
            i128::from(units)
        } else {
            -i128::from(units)
        }
    }
}

fn graph(n: usize, tallies: &[Tally], policy: &Policy) -> Result<(Vec<Edge>, Vec<Arc>)> {
    let mut edges = Vec::with_capacity(tallies.len() * 2);
    let mut arcs = Vec::with_capacity(tallies.len() * 2);
    for (i, t) in tallies.iter().enumerate() {
        if t.stock as usize >= n || t.foil as usize >= n || t.stock == t.foil {
            return Err(Error::value(format!(
                "tally {i} must join two different nodes of 0..{n}"
            )));
        }
        for (foil, half, from, to) in [
            (true, t.foil_half(), t.foil, t.stock),
            (false, t.stock_half(), t.stock, t.foil),
        ] {
            for (segment, cap, margin) in half.segments(policy) {
                edges.push(Edge {
                    from,
                    to,
                    cap,
                    cost: segment.cost(),
                });
                arcs.push(Arc {
                    tally: i as u32,
                    foil,
                    segment,
                    margin,
                });
            }
        }
    }
    Ok((edges, arcs))
}

/// Per tally, the net move of a flow on [`graph`]'s arcs, spread back over the arcs of that one
/// direction in segment order: flows that went both ways round one tally cancel.
fn netted(tallies: &[Tally], edges: &[Edge], arcs: &[Arc], flow: &[i64]) -> Vec<i64> {
    let mut moved = vec![0i128; tallies.len()];
    for (a, &f) in arcs.iter().zip(flow) {
        moved[a.tally as usize] += a.lowers_net_by(f);
    }
    let mut out = vec![0i64; flow.len()];
    for (i, a) in arcs.iter().enumerate() {
        let m = &mut moved[a.tally as usize];
        let want = if a.foil { *m } else { -*m };
        if want > 0 {
            let take = want.min(i128::from(edges[i].cap)) as i64;
            out[i] = take;
            *m -= a.lowers_net_by(take);
        }
    }
    out
}

/// One edge per tally and direction (its segments merged), carrying the summed flow: a lift
/// takes a tally's free and costed units in one step. The step's margin is that of the
/// highest segment the flow reaches on that tally.
fn merged(edges: &[Edge], arcs: &[Arc], flow: &[i64]) -> (Vec<Edge>, Vec<Arc>, Vec<i64>) {
    let (mut me, mut ma, mut mf): (Vec<Edge>, Vec<Arc>, Vec<i64>) = (vec![], vec![], vec![]);
    for ((e, a), &f) in edges.iter().zip(arcs).zip(flow) {
        let same = ma
            .last()
            .is_some_and(|l: &Arc| l.tally == a.tally && l.foil == a.foil);
        if !same {
            me.push(Edge { cap: 0, ..*e });
            ma.push(Arc {
                tally: a.tally,
                foil: a.foil,
                segment: Segment::Reduce,
                margin: 0.0,
            });
            mf.push(0);
        }
        let i = me.len() - 1;
        me[i].cap = me[i].cap.saturating_add(e.cap);
        mf[i] = mf[i].saturating_add(f);
        if f > 0 {
            ma[i].segment = a.segment;
            ma[i].margin = a.margin;
        }
    }
    (me, ma, mf)
}

fn cleared_by(tallies: &[Tally], moved: &[i128]) -> i128 {
    tallies
        .iter()
        .zip(moved)
        .map(|(t, &m)| i128::from(t.net).abs() - (i128::from(t.net) - m).abs())
        .sum()
}

fn compound(margins: impl Iterator<Item = f64>) -> f64 {
    1.0 - margins.fold(1.0, |keep, m| keep * (1.0 - m))
}

/// The arc that joins a split node back together: its index, and the node's two sides.
struct Join {
    arc: usize,
    split: u32,
    node: u32,
}

/// Cuts a (netted, merged) circulation into lifts and keeps those `options` and `policy`
/// allow. With `join`, the circles are those through the split node, the joining arc left out
/// and the split side named as the node again.
#[allow(clippy::too_many_arguments)]
fn plan_of(
    n: usize,
    tallies: &[Tally],
    edges: &[Edge],
    arcs: &[Arc],
    flow: &[i64],
    policy: &Policy,
    options: &LiftOptions,
    join: Option<Join>,
) -> Result<(Vec<Lift>, i128, i128)> {
    let mut kept = Vec::new();
    let (mut moved, mut optimum) = (vec![0i128; tallies.len()], vec![0i128; tallies.len()]);
    for c in clearing::decompose(n, edges, flow)? {
        let steps: Vec<u32> = match &join {
            None => c.edges,
            Some(j) => {
                let rest: Vec<u32> = c
                    .edges
                    .iter()
                    .copied()
                    .filter(|&e| e as usize != j.arc)
                    .collect();
                if rest.len() == c.edges.len() {
                    continue; // not through the node (not at the optimum: such circles cost)
                }
                rest
            }
        };
        for &e in &steps {
            let a = &arcs[e as usize];
            optimum[a.tally as usize] += a.lowers_net_by(c.units);
        }
        let margin = compound(steps.iter().map(|&e| arcs[e as usize].margin));
        if c.units < options.min_units
            || steps.len() > options.max_len
            || margin > policy.max_margin + EPS
        {
            continue;
        }
        let steps = steps
            .iter()
            .map(|&e| {
                let (a, d) = (&arcs[e as usize], &edges[e as usize]);
                moved[a.tally as usize] += a.lowers_net_by(c.units);
                let to = match &join {
                    Some(j) if d.to == j.split => j.node,
                    _ => d.to,
                };
                Step {
                    tally: a.tally,
                    from: d.from,
                    to,
                    costed: a.segment == Segment::Costed,
                }
            })
            .collect();
        kept.push(Lift {
            steps,
            units: c.units,
            margin,
        });
    }
    Ok((
        kept,
        cleared_by(tallies, &moved),
        cleared_by(tallies, &optimum),
    ))
}

/// The clearing of `tallies` among nodes `0..n`: the lifts of the optimum (most debt cleared)
/// that `options` and `policy` keep.
pub fn clear(
    n: usize,
    tallies: &[Tally],
    policy: &Policy,
    options: LiftOptions,
) -> Result<TallyPlan> {
    let (edges, arcs) = graph(n, tallies, policy)?;
    let deadline = options.time_budget.map(|b| Instant::now() + b);
    let c = clearing::solve_within(n, &edges, deadline)?;
    let flow = netted(tallies, &edges, &arcs, &c.flow);
    let (edges, arcs, flow) = merged(&edges, &arcs, &flow);
    let (lifts, cleared, optimum) =
        plan_of(n, tallies, &edges, &arcs, &flow, policy, &options, None)?;
    Ok(TallyPlan {
        lifts,
        cleared,
        optimum,
        optimal: c.optimal,
    })
}

/// Lifts through one node only: every lift starts and ends at `node` (the node is split in two,
/// one side keeping its arcs out, the other its arcs in, joined by one arc worth more than any
/// circle costs). The plan moves the most units through `node` that the capacities allow;
/// among such plans it prefers lowering debts to moving balances away from zero, and short
/// circles to long ones.
pub fn through(
    n: usize,
    tallies: &[Tally],
    node: u32,
    policy: &Policy,
    options: LiftOptions,
) -> Result<TallyPlan> {
    if node as usize >= n {
        return Err(Error::value(format!("node {node} is not in 0..{n}")));
    }
    let (all_edges, all_arcs) = graph(n, tallies, policy)?;
    // On the node's own tallies only the debtor's arc stays: a lift through the node lowers
    // its debts and what it is owed (and carries on past zero only within the target, in that
    // same direction). Keeping both arcs of such a tally would let a "circle" go out and back
    // along it, moving nothing.
    let (mut edges, arcs): (Vec<Edge>, Vec<Arc>) = all_edges
        .into_iter()
        .zip(all_arcs)
        .filter(|(e, a)| {
            let net = tallies[a.tally as usize].net;
            (e.from != node && e.to != node) || (a.foil && net > 0) || (!a.foil && net < 0)
        })
        .unzip();
    let split = n as u32; // the node's "in" side
    let mut out_cap: i128 = 0;
    for e in edges.iter_mut() {
        // Every other circle must cost more than nothing: reduce 1, the others 3.
        e.cost = if e.cost < 0 { 1 } else { 3 };
        if e.to == node {
            e.to = split;
        }
        if e.from == node {
            out_cap += i128::from(e.cap);
        }
    }
    let deadline = options.time_budget.map(|b| Instant::now() + b);
    let joining = Edge {
        from: split,
        to: node,
        cap: i64::try_from(out_cap).unwrap_or(i64::MAX),
        cost: -clearing::MAX_COST,
    };
    let c = clearing::solve_within(n + 1, &[edges.as_slice(), &[joining]].concat(), deadline)?;
    let (tally_flow, join_flow) = c.flow.split_at(edges.len());
    // Net per tally and merge; the joining arc goes last, as it is.
    let flow = netted(tallies, &edges, &arcs, tally_flow);
    let (mut edges, mut arcs, mut flow) = merged(&edges, &arcs, &flow);
    edges.push(joining);
    arcs.push(Arc {
        tally: u32::MAX,
        foil: false,
        segment: Segment::Reduce,
        margin: 0.0,
    });
    flow.push(join_flow[0]);
    let join = Join {
        arc: edges.len() - 1,
        split,
        node,
    };
    let (lifts, cleared, optimum) = plan_of(
        n + 1,
        tallies,
        &edges,
        &arcs,
        &flow,
        policy,
        &options,
        Some(join),
    )?;
    Ok(TallyPlan {
        lifts,
        cleared,
        optimum,
        optimal: c.optimal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vars(target: i64, bound: i64, reward: f64, clutch: f64) -> TradingVars {
        TradingVars {
            target,
            bound,
            reward,
            clutch,
        }
    }

    /// The original system's fixture `test/auto/data/tallies_v_edg.json` (target 3, bound 7,
    /// foil reward .02 clutch .04, stock reward .04 clutch .001): the holder's net as the
    /// original stores it is the holder's position.
    #[test]
    fn golden_edges_of_the_original_system() {
        let foil = vars(3, 7, 0.02, 0.04);
        let stock = vars(3, 7, 0.04, 0.001);
        let half = |position, vars, partner_clutch| Half {
            position,
            vars,
            limit: None,
            partner_clutch,
        };
        // p1000/1 foil, net_pc -2: min 5 max 9
        let l = half(-2, foil, 0.001).lading();
        assert_eq!((l.free, l.max), (5, 9));
        // p1002/3 foil, net_pc -14: min 17 max 21
        let l = half(-14, foil, 0.001).lading();
        assert_eq!((l.free, l.max), (17, 21));
        // p1003/3 stock, net_pc -12: min 15 max 19
        let l = half(-12, stock, 0.04).lading();
        assert_eq!((l.free, l.max), (15, 19));
        // p1000/2 stock toward a foreign partner, net_pc 8: min 0, max -1 (nothing)
        let l = half(8, stock, 0.04).lading();
        assert_eq!((l.free, l.max), (0, 0));
        // its inverted edge uses the partner's defaults (target 0, bound 0) and -net: min 8 max 8
        let l = half(-8, TradingVars::default(), 0.001).lading();
        assert_eq!((l.free, l.max), (8, 8));
        // margins: the partner's clutch beyond the debt; reward and clutch compounded beyond target
        let l = half(-2, foil, 0.001).lading();
        assert_eq!(l.reduce, 2);
        assert!((l.overshoot_margin - 0.001).abs() < 1e-12);
        assert!((l.costed_margin - (1.0 - 0.98 * 0.999)).abs() < 1e-12);
    }

    #[test]
    fn limits_policy_and_clutch_bound_the_arcs() {
        let h = Half {
            position: -2,
            vars: vars(10, 20, 0.0, 0.0),
            limit: Some(4),
            partner_clutch: 0.0,
        };
        let p = Policy::default();
        assert_eq!(
            h.capacity(&p, true),
            6,
            "2 to clear, then up to the limit 4"
        );
        let h = Half { limit: None, ..h };
        assert_eq!(h.capacity(&p, false), 12);
        assert_eq!(
            h.capacity(&p, true),
            22,
            "reward 0: costed capacity is free"
        );
        let h = Half {
            vars: vars(10, 20, 0.05, 0.0),
            ..h
        };
        assert_eq!(h.capacity(&p, true), 12, "reward .05 > max_margin 0");
        assert_eq!(
            h.capacity(&Policy { max_margin: 0.05 }, true),
            22,
            "allowed at max_margin .05"
        );
        let h = Half {
            partner_clutch: 1.0,
            ..h
        };
        assert_eq!(
            h.capacity(&Policy { max_margin: 1.0 }, true),
            2,
            "clutch 1: only the debt"
        );
        let h = Half {
            position: i64::MIN,
            ..h
        };
        assert_eq!(h.capacity(&p, true), i64::MAX, "no overflow");
    }

    #[test]
    fn targets_let_a_circle_through_that_clears_more() {
        // 0 owes 1 10, 1 owes 2 10; 2 and 0 have a tally at zero. With no target the chain
        // clears nothing; when 2 (foil on the 0-2 tally) will hold 10 of 0's credit, lifting
        // 10 around clears 20 and adds 10: 10 net.
        let mut ts = vec![
            Tally {
                stock: 1,
                foil: 0,
                net: 10,
                ..Default::default()
            },
            Tally {
                stock: 2,
                foil: 1,
                net: 10,
                ..Default::default()
            },
            Tally {
                stock: 0,
                foil: 2,
                net: 0,
                foil_limit: Some(100),
                ..Default::default()
            },
        ];
        let p = clear(3, &ts, &Policy::default(), LiftOptions::default()).unwrap();
        assert_eq!(p.cleared, 0);
        ts[2].foil_vars = vars(10, 10, 0.0, 0.0);
        let p = clear(3, &ts, &Policy::default(), LiftOptions::default()).unwrap();
        assert_eq!(p.cleared, 10);
        assert_eq!(p.lifts.len(), 1);
        assert_eq!(p.lifts[0].units, 10);
    }

    #[test]
    fn no_phantom_circle_on_one_tally() {
        // Both holders have room for more: an arc per half with a cost of -1 each would "clear"
        // by going back and forth. The convex costs do not.
        let ts = [Tally {
            stock: 0,
            foil: 1,
            net: 5,
            stock_vars: vars(100, 100, 0.0, 0.0),
            foil_vars: vars(100, 100, 0.0, 0.0),
            ..Default::default()
        }];
        let p = clear(2, &ts, &Policy::default(), LiftOptions::default()).unwrap();
        assert_eq!((p.cleared, p.lifts.len()), (0, 0));
    }

    #[test]
    fn through_one_node_only() {
        // Two separate triangles: 0-1-2 and 3-4-5; through node 4 only the second one lifts.
        let owes = |foil, stock, net| Tally {
            stock,
            foil,
            net,
            ..Default::default()
        };
        let ts = [
            owes(0, 1, 5),
            owes(1, 2, 5),
            owes(2, 0, 5),
            owes(3, 4, 7),
            owes(4, 5, 9),
            owes(5, 3, 8),
        ];
        let p = through(6, &ts, 4, &Policy::default(), LiftOptions::default()).unwrap();
        assert_eq!(p.lifts.len(), 1);
        let l = &p.lifts[0];
        assert_eq!(l.units, 7);
        assert_eq!(l.steps.len(), 3);
        assert!(l.steps.iter().any(|s| s.from == 4) && l.steps.iter().any(|s| s.to == 4));
        assert_eq!(p.cleared, 21);
        assert!(through(6, &ts, 6, &Policy::default(), LiftOptions::default()).is_err());
    }

    /// The independent oracle: the tally model as a linear program of its own (microlp): per
    /// tally a net move `x` within both holders' capacities and `y >= |net - x|`, flows balanced
    /// at every node; minimum `sum y` is the least debt that can remain.
    fn lp_remaining(n: usize, ts: &[Tally], policy: &Policy) -> f64 {
        use microlp::{ComparisonOp, OptimizationDirection, Problem};
        let mut p = Problem::new(OptimizationDirection::Minimize);
        let mut xs = Vec::new();
        for t in ts {
            let up = t.stock_half().capacity(policy, true) as f64; // net may rise this far
            let down = t.foil_half().capacity(policy, true) as f64; // and fall this far
            let x = p.add_var(0.0, (-up, down));
            let y = p.add_var(1.0, (0.0, f64::INFINITY));
            // y >= net - x and y >= x - net
            p.add_constraint([(y, 1.0), (x, 1.0)], ComparisonOp::Ge, t.net as f64);
            p.add_constraint([(y, 1.0), (x, -1.0)], ComparisonOp::Ge, -(t.net as f64));
            xs.push(x);
        }
        for v in 0..n as u32 {
            let mut row = vec![];
            for (t, &x) in ts.iter().zip(&xs) {
                // x > 0 lowers what foil owes stock: value from stock to foil... the foil's
                // position rises and the stock's falls; balance is sum of moves per node.
                if t.foil == v {
                    row.push((x, 1.0));
                }
                if t.stock == v {
                    row.push((x, -1.0));
                }
            }
            if !row.is_empty() {
                p.add_constraint(&row, ComparisonOp::Eq, 0.0);
            }
        }
        match p.solve().expect("the zero move is feasible") {
            microlp::SolveOutcome::Solution(s) => s.objective(),
            other => panic!("no LP solution: {other:?}"),
        }
    }

    fn arb_vars() -> impl Strategy<Value = TradingVars> {
        prop_oneof![
            2 => Just(TradingVars::default()),
            1 => (0i64..50, 0i64..50, prop_oneof![Just(0.0), Just(0.02)], prop_oneof![Just(0.0), Just(0.01), Just(1.0)])
                .prop_map(|(a, b, reward, clutch)| TradingVars { target: a.min(b), bound: a.max(b), reward, clutch }),
        ]
    }

    fn arb_tallies(max_n: u32) -> impl Strategy<Value = (usize, Vec<Tally>)> {
        (2..=max_n).prop_flat_map(|n| {
            let t = (
                0..n,
                0..n,
                -100i64..=100,
                arb_vars(),
                arb_vars(),
                prop::option::of(0i64..60),
                prop::option::of(0i64..60),
            )
                .prop_filter("two holders", |(a, b, ..)| a != b)
                .prop_map(|(stock, foil, net, sv, fv, sl, fl)| Tally {
                    stock,
                    foil,
                    net,
                    stock_vars: sv,
                    foil_vars: fv,
                    stock_limit: sl,
                    foil_limit: fl,
                });
            (
                Just(n as usize),
                prop::collection::vec(t, 0..(3 * n as usize)),
            )
        })
    }

    fn apply(ts: &[Tally], lifts: &[Lift]) -> (Vec<i128>, Vec<i128>) {
        let mut net: Vec<i128> = ts.iter().map(|t| i128::from(t.net)).collect();
        for l in lifts {
            for s in &l.steps {
                let t = &ts[s.tally as usize];
                if (s.from, s.to) == (t.foil, t.stock) {
                    net[s.tally as usize] -= i128::from(l.units);
                } else {
                    assert_eq!((s.from, s.to), (t.stock, t.foil));
                    net[s.tally as usize] += i128::from(l.units);
                }
            }
        }
        // Each node's position change: what it is owed more, less what it owes more.
        let nodes = ts
            .iter()
            .map(|t| t.stock.max(t.foil) as usize + 1)
            .max()
            .unwrap_or(0);
        let mut pos = vec![0i128; nodes];
        for (t, &after) in ts.iter().zip(&net) {
            let rise = after - i128::from(t.net);
            pos[t.stock as usize] += rise;
            pos[t.foil as usize] -= rise;
        }
        (net, pos)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1500))]

        /// The optimum clears what the LP oracle says can be cleared; after the lifts every
        /// node's net position is unchanged, every balance stays within what both holders
        /// allow, and the costed policy holds.
        #[test]
        fn tally_clearing_is_optimal_and_within_limits((n, ts) in arb_tallies(7), margin in prop_oneof![Just(0.0), Just(0.05)]) {
            let policy = Policy { max_margin: margin };
            let p = clear(n, &ts, &policy, LiftOptions::default()).unwrap();
            let before: f64 = ts.iter().map(|t| (t.net as f64).abs()).sum();
            let best = before - lp_remaining(n, &ts, &policy);
            prop_assert!((p.optimum as f64 - best).abs() < 1e-6 * (1.0 + best), "ours {} lp {}", p.optimum, best);
            prop_assert!(p.cleared <= p.optimum);
            let (net, pos) = apply(&ts, &p.lifts);
            prop_assert!(pos.iter().all(|&x| x == 0), "positions moved: {pos:?}");
            for (t, &after) in ts.iter().zip(&net) {
                let moved_down = i128::from(t.net) - after;
                prop_assert!(moved_down <= i128::from(t.foil_half().capacity(&policy, true)));
                prop_assert!(-moved_down <= i128::from(t.stock_half().capacity(&policy, true)));
            }
            for l in &p.lifts {
                prop_assert!(l.units > 0 && l.margin <= margin + EPS);
            }
            let cleared: i128 = ts.iter().zip(&net).map(|(t, a)| i128::from(t.net).abs() - a.abs()).sum();
            prop_assert_eq!(cleared, p.cleared);
        }

        /// Lifts through one node all pass through it and keep every position; without targets
        /// they leave nothing more to lift through it.
        #[test]
        fn through_a_node_is_sound((n, ts) in arb_tallies(6)) {
            let policy = Policy::default();
            let p = through(n, &ts, 0, &policy, LiftOptions::default()).unwrap();
            let (_, pos) = apply(&ts, &p.lifts);
            prop_assert!(pos.iter().all(|&x| x == 0));
            for l in &p.lifts {
                prop_assert!(l.steps.iter().any(|s| s.from == 0));
                prop_assert!(l.steps.iter().any(|s| s.to == 0));
            }
            // Without targets no balance crosses zero: then no lift through node 0 is left
            // (the plan was a maximum flow), and clearing again through it finds nothing.
            if ts.iter().any(|t| t.stock_vars.target > 0 || t.foil_vars.target > 0) {
                return Ok(());
            }
            let (net, _) = apply(&ts, &p.lifts);
            let after: Vec<Tally> = ts.iter().zip(&net).map(|(t, &x)| Tally { net: x as i64, ..*t }).collect();
            let again = through(n, &after, 0, &policy, LiftOptions::default()).unwrap();
            prop_assert!(again.lifts.is_empty(), "{:?}", again.lifts);
        }
    }
}
