//! Clearing: the exact optimum of credit lifts, as a min-cost circulation.
//!
//! Every edge is a debt that a lift may lower: `from` owes `to` (a lift runs around a circle of
//! such debts), up to `cap`, at `cost` per unit (negative: lowering it is worth doing; the
//! clearing of plain debt uses -1 everywhere, so the optimum clears the most debt). A lift plan
//! is a circulation `0 <= f <= cap` that keeps every node's net position; [`solve`] finds one of
//! minimum total cost, exactly, and [`decompose`] cuts it into circles, each one lift.
//!
//! Method (what the MTCS literature does with a min-cost-flow solver, written here for our
//! amounts): edges outside a strongly connected component lie on no circle and are dropped
//! (petgraph's Tarjan). Every negative-cost edge starts saturated, which leaves some nodes with
//! excess and others with deficit; the cheapest way to return the excess along the reversed
//! edges (the debt *not* cleared) is a min-cost flow with non-negative costs, solved by the
//! primal-dual method: Dijkstra with node potentials, then a blocking flow (Dinic) along the
//! arcs whose reduced cost is zero, until all excess is back. Amounts are `i64`, sums `i128`,
//! and every addition that could overflow is checked.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// A debt a lift may lower: `from` owes `to`, at most `cap`, at `cost` per unit lowered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edge {
    pub from: u32,
    pub to: u32,
    pub cap: i64,
    pub cost: i64,
}

/// An optimal circulation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Circulation {
    /// Units lowered on each input edge, in input order.
    pub flow: Vec<i64>,
    /// Sum of the flow over all edges: the debt cleared.
    pub cleared: i128,
    /// Sum of cost times flow (for plain clearing, minus `cleared`).
    pub cost: i128,
    /// False when a deadline cut the search short: the flow is still a circulation (every net
    /// position kept), just not proven the cheapest.
    pub optimal: bool,
}

/// The largest absolute cost an edge may have (keeps potentials far from overflow).
pub const MAX_COST: i64 = 1 << 20;

fn check(n: usize, edges: &[Edge]) -> Result<()> {
    if n > u32::MAX as usize - 2 {
        return Err(Error::value("too many nodes"));
    }
    for (i, e) in edges.iter().enumerate() {
        if e.from as usize >= n || e.to as usize >= n {
            return Err(Error::value(format!(
                "edge {i} names a node outside 0..{n}"
            )));
        }
        if e.from == e.to {
            return Err(Error::value(format!(
                "edge {i} is a loop on node {}",
                e.from
            )));
        }
        if e.cap < 0 {
            return Err(Error::value(format!(
                "edge {i} has a negative capacity {}",
                e.cap
            )));
        }
        if e.cost.abs() > MAX_COST {
            return Err(Error::value(format!(
                "edge {i} costs {} (at most {MAX_COST} either way)",
                e.cost
            )));
        }
    }
    Ok(())
}

/// For each edge, whether both ends are in one strongly connected component of the graph of
/// edges with capacity: only those can carry a circulation.
pub fn on_some_circle(n: usize, edges: &[Edge]) -> Vec<bool> {
    let mut g = petgraph::graph::DiGraph::<(), ()>::with_capacity(n, edges.len());
    for _ in 0..n {
        g.add_node(());
    }
    for e in edges.iter().filter(|e| e.cap > 0) {
        g.add_edge(
            petgraph::graph::NodeIndex::new(e.from as usize),
            petgraph::graph::NodeIndex::new(e.to as usize),
            (),
        );
    }
    let mut comp = vec![0u32; n];
    for (c, nodes) in petgraph::algo::tarjan_scc(&g).into_iter().enumerate() {
        for v in nodes {
            comp[v.index()] = c as u32;
        }
    }
    edges
        .iter()
        .map(|e| e.cap > 0 && comp[e.from as usize] == comp[e.to as usize])
        .collect()
}

/// Residual network in compressed form: the arcs leaving node `v` are
/// `first[v]..first[v + 1]`, and `rev[a]` is the reverse of arc `a`. Arcs of one node are
/// contiguous, so a scan of a node's arcs reads memory in order.
struct Network {
    first: Vec<usize>,
    head: Vec<u32>,
    rev: Vec<u32>,
    residual: Vec<i64>,
    cost: Vec<i64>,
}

impl Network {
    /// `pairs`: (from, to, residual forward, residual backward, cost forward). Returns the
    /// network and, per pair, the position of its forward arc.
    fn new(nodes: usize, pairs: &[(u32, u32, i64, i64, i64)]) -> (Network, Vec<u32>) {
        let m = pairs.len() * 2;
        let mut first = vec![0usize; nodes + 1];
        for &(u, v, _, _, _) in pairs {
            first[u as usize + 1] += 1;
            first[v as usize + 1] += 1;
        }
        for v in 0..nodes {
            first[v + 1] += first[v];
        }
        let mut fill = first.clone();
        let (mut head, mut rev) = (vec![0u32; m], vec![0u32; m]);
        let (mut residual, mut cost) = (vec![0i64; m], vec![0i64; m]);
        let mut forward = Vec::with_capacity(pairs.len());
        for &(u, v, fwd, bwd, c) in pairs {
            let a = fill[u as usize];
            fill[u as usize] += 1;
            let b = fill[v as usize];
            fill[v as usize] += 1;
            (head[a], rev[a], residual[a], cost[a]) = (v, b as u32, fwd, c);
            (head[b], rev[b], residual[b], cost[b]) = (u, a as u32, bwd, -c);
            forward.push(a as u32);
        }
        (
            Network {
                first,
                head,
                rev,
                residual,
                cost,
            },
            forward,
        )
    }

    fn out(&self, v: usize) -> std::ops::Range<usize> {
        self.first[v]..self.first[v + 1]
    }
}

const INF: i64 = i64::MAX / 4;

/// A min-cost circulation of `edges` on nodes `0..n`: `0 <= flow <= cap`, inflow equals outflow
/// at every node, minimum `sum(cost * flow)`.
pub fn solve(n: usize, edges: &[Edge]) -> Result<Circulation> {
    solve_within(n, edges, None)
}

/// [`solve`], but the search for a cheaper flow stops at `deadline`; what is left to route is
/// then routed by a plain max-flow, so the answer is always a circulation, optimal or not
/// ([`Circulation::optimal`]).
pub fn solve_within(n: usize, edges: &[Edge], deadline: Option<Instant>) -> Result<Circulation> {
    check(n, edges)?;
    let useful = on_some_circle(n, edges);
    // Only edges on some circle take part. Negative-cost ones start saturated.
    let mut excess = vec![0i128; n];
    let mut pairs = Vec::new();
    let mut index = vec![usize::MAX; edges.len()];
    for (i, e) in edges.iter().enumerate() {
        if !useful[i] {
            continue;
        }
        index[i] = pairs.len();
        if e.cost < 0 {
            excess[e.to as usize] += i128::from(e.cap);
            excess[e.from as usize] -= i128::from(e.cap);
            pairs.push((e.from, e.to, 0, e.cap, e.cost));
        } else {
            pairs.push((e.from, e.to, e.cap, 0, e.cost));
        }
    }
    let (s, t) = (n as u32, n as u32 + 1);
    let mut supply: i128 = 0;
    for (v, &x) in excess.iter().enumerate() {
        let amount = i64::try_from(x.abs()).map_err(|_| {
            Error::value(format!(
                "node {v} is owed or owes more than i64 can hold; scale the amounts down"
            ))
        })?;
        if x > 0 {
            pairs.push((s, v as u32, amount, 0, 0));
            supply += x;
        } else if x < 0 {
            pairs.push((v as u32, t, amount, 0, 0));
        }
    }
    let (mut net, forward) = Network::new(n + 2, &pairs);
    let mut work = Work::new(n + 2, net.head.len());
    let (sent, optimal) = min_cost_flow(
        &mut net, &mut work, s as usize, t as usize, supply, deadline,
    )?;
    debug_assert_eq!(sent, supply, "returning the excess is always feasible");

    let mut flow = vec![0i64; edges.len()];
    let (mut cleared, mut cost) = (0i128, 0i128);
    for (i, e) in edges.iter().enumerate() {
        if index[i] != usize::MAX {
            let f = net.residual[net.rev[forward[index[i]] as usize] as usize];
            flow[i] = f;
            cleared += i128::from(f);
            cost += i128::from(f) * i128::from(e.cost);
        }
    }
    Ok(Circulation {
        flow,
        cleared,
        cost,
        optimal,
    })
}

/// Scratch space of the flow algorithms, allocated once per solve.
struct Work {
    pot: Vec<i64>,
    dist: Vec<i64>,
    heap: BinaryHeap<Reverse<(i64, u32)>>,
    level: Vec<i32>,
    next: Vec<usize>,
    queue: Vec<u32>,
    path: Vec<u32>,
    sub: Sub,
    /// Where each arc of the network sits in `sub` (valid for the arcs copied this phase).
    pos: Vec<u32>,
}

/// The arcs one phase may use, copied into a network of their own (grouped by tail, residuals
/// copied, `partner` the reverse arc's position), so that the max flow reads memory in order;
/// written back to the network when the phase ends.
#[derive(Default)]
struct Sub {
    first: Vec<usize>,
    head: Vec<u32>,
    partner: Vec<u32>,
    res: Vec<i64>,
    /// The arc of the network each one copies.
    orig: Vec<u32>,
}

impl Work {
    fn new(n: usize, m: usize) -> Work {
        Work {
            pot: vec![0; n],
            dist: vec![INF; n],
            heap: BinaryHeap::new(),
            level: vec![-1; n],
            next: vec![0; n],
            queue: Vec::with_capacity(n),
            path: Vec::new(),
            sub: Sub {
                first: vec![0; n + 1],
                ..Sub::default()
            },
            pos: vec![0; m],
        }
    }

    /// Copies the arcs `keep` accepts into `sub` (with their reverses, which `keep` must
    /// accept too).
    fn copy(&mut self, net: &Network, keep: impl Fn(usize, usize) -> bool) {
        let n = net.first.len() - 1;
        let sub = &mut self.sub;
        sub.head.clear();
        sub.res.clear();
        sub.orig.clear();
        for v in 0..n {
            sub.first[v] = sub.head.len();
            for a in net.out(v) {
                if keep(v, a) {
                    self.pos[a] = sub.head.len() as u32;
                    sub.head.push(net.head[a]);
                    sub.res.push(net.residual[a]);
                    sub.orig.push(a as u32);
                }
            }
        }
        sub.first[n] = sub.head.len();
        sub.partner.clear();
        sub.partner.extend(
            sub.orig
                .iter()
                .map(|&a| self.pos[net.rev[a as usize] as usize]),
        );
    }

    /// Writes the residuals of `sub` back to the network.
    fn write_back(&self, net: &mut Network) {
        for (&a, &r) in self.sub.orig.iter().zip(&self.sub.res) {
            net.residual[a as usize] = r;
        }
    }
}

/// Primal-dual min-cost flow from `s` to `t` of at most `want`; all arc costs with residual
/// capacity must be non-negative at the start. Returns the amount sent, and whether it is of
/// minimum cost (false when `deadline` passed and the rest was sent by a plain max-flow).
fn min_cost_flow(
    net: &mut Network,
    w: &mut Work,
    s: usize,
    t: usize,
    want: i128,
    deadline: Option<Instant>,
) -> Result<(i128, bool)> {
    let n = net.first.len() - 1;
    let mut sent: i128 = 0;
    while sent < want {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            // Out of time: route the rest along any residual arcs.
            w.copy(net, |_, _| true);
            sent += blocking_flows(w, s, t)?;
            w.write_back(net);
            return Ok((sent, false));
        }
        // Shortest distances from s under reduced costs, up to t's: every node farther away
        // moves its potential by t's distance, which is all the update below needs.
        w.dist.fill(INF);
        w.dist[s] = 0;
        w.heap.clear();
        w.heap.push(Reverse((0i64, s as u32)));
        while let Some(Reverse((d, v))) = w.heap.pop() {
            let v = v as usize;
            if d > w.dist[v] {
                continue;
            }
            if v == t {
                break;
            }
            for a in net.out(v) {
                if net.residual[a] == 0 {
                    continue;
                }
                let x = net.head[a] as usize;
                let nd = d + net.cost[a] + w.pot[v] - w.pot[x];
                if nd < w.dist[x] {
                    w.dist[x] = nd;
                    w.heap.push(Reverse((nd, x as u32)));
                }
            }
        }
        if w.dist[t] >= INF {
            break;
        }
        let dt = w.dist[t];
        for v in 0..n {
            w.pot[v] += w.dist[v].min(dt);
        }
        // The arcs of zero reduced cost: the only ones a blocking flow of this phase can use
        // (pushing along one opens its reverse, which has zero reduced cost too).
        let pot = std::mem::take(&mut w.pot);
        w.copy(net, |v, a| {
            net.cost[a] + pot[v] - pot[net.head[a] as usize] == 0
        });
        w.pot = pot;
        sent += blocking_flows(w, s, t)?;
        w.write_back(net);
    }
    Ok((sent, true))
}

/// Dinic's max flow from `s` to `t` over the arcs of `w.sub`: BFS levels, then blocking flows
/// that advance along the arcs, augment at `t`, and retreat from dead ends; until `t` is out of
/// reach.
fn blocking_flows(w: &mut Work, s: usize, t: usize) -> Result<i128> {
    let n = w.level.len();
    let g = &mut w.sub;
    let mut sent: i128 = 0;
    loop {
        w.level.fill(-1);
        w.level[s] = 0;
        w.queue.clear();
        w.queue.push(s as u32);
        let mut qi = 0;
        while qi < w.queue.len() {
            let v = w.queue[qi] as usize;
            qi += 1;
            if w.level[t] >= 0 && w.level[v] >= w.level[t] - 1 {
                break; // t is labelled: nothing deeper leads to it this round
            }
            for a in g.first[v]..g.first[v + 1] {
                let x = g.head[a] as usize;
                if g.res[a] > 0 && w.level[x] < 0 {
                    w.level[x] = w.level[v] + 1;
                    w.queue.push(x as u32);
                }
            }
        }
        if w.level[t] < 0 {
            return Ok(sent);
        }
        // Nodes as deep as t, other than t, lead nowhere: unlabel them.
        let lt = w.level[t];
        for &x in &w.queue[qi.saturating_sub(1)..] {
            if w.level[x as usize] >= lt && x as usize != t {
                w.level[x as usize] = -1;
            }
        }
        w.next.copy_from_slice(&g.first[..n]);
        w.path.clear();
        let mut v = s;
        loop {
            if v == t {
                let push = w
                    .path
                    .iter()
                    .map(|&a| g.res[a as usize])
                    .min()
                    .expect("s != t");
                for &a in &w.path {
                    g.res[a as usize] -= push;
                    g.res[g.partner[a as usize] as usize] += push;
                }
                sent = sent
                    .checked_add(i128::from(push))
                    .ok_or_else(|| Error::value("flow total overflows"))?;
                // Back up to the tail of the first arc this push saturated, not to s.
                let k = w
                    .path
                    .iter()
                    .position(|&a| g.res[a as usize] == 0)
                    .expect("the bottleneck arc is saturated");
                v = g.head[g.partner[w.path[k] as usize] as usize] as usize;
                w.path.truncate(k);
                continue;
            }
            let mut advanced = false;
            while w.next[v] < g.first[v + 1] {
                let a = w.next[v];
                let x = g.head[a] as usize;
                if g.res[a] > 0 && w.level[x] == w.level[v] + 1 {
                    w.path.push(a as u32);
                    v = x;
                    advanced = true;
                    break;
                }
                w.next[v] += 1;
            }
            if advanced {
                continue;
            }
            if v == s {
                break;
            }
            w.level[v] = -1; // a dead end for this round
            let a = w
                .path
                .pop()
                .expect("a node other than s was reached by an arc") as usize;
            v = g.head[g.partner[a] as usize] as usize;
            w.next[v] += 1;
        }
    }
}

/// One lift: the edges of a circle (in order, each edge's `to` is the next one's `from`) and
/// the units lowered on each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Circle {
    pub edges: Vec<u32>,
    pub units: i64,
}

/// Cuts a circulation on `edges` into circles. Each circle zeroes at least one edge, so there
/// are at most as many circles as edges; their units sum back to `flow` on every edge.
pub fn decompose(n: usize, edges: &[Edge], flow: &[i64]) -> Result<Vec<Circle>> {
    if flow.len() != edges.len() {
        return Err(Error::value("one flow value per edge"));
    }
    check(n, edges)?;
    let mut rest: Vec<i64> = flow.to_vec();
    let mut first = vec![0usize; n + 1];
    for (i, e) in edges.iter().enumerate() {
        if rest[i] > 0 {
            first[e.from as usize + 1] += 1;
        } else if rest[i] < 0 {
            return Err(Error::value(format!("edge {i} has negative flow")));
        }
    }
    for v in 0..n {
        first[v + 1] += first[v];
    }
    let mut fill = first.clone();
    let mut out = vec![0u32; first[n]];
    for (i, e) in edges.iter().enumerate() {
        if rest[i] > 0 {
            out[fill[e.from as usize]] = i as u32;
            fill[e.from as usize] += 1;
        }
    }
    let mut next = first.clone();
    let mut pos = vec![usize::MAX; n];
    let mut path: Vec<u32> = Vec::new();
    let mut circles = Vec::new();
    for start in 0..n {
        loop {
            // Find an edge with flow left out of `start`.
            while next[start] < first[start + 1] && rest[out[next[start]] as usize] == 0 {
                next[start] += 1;
            }
            if next[start] == first[start + 1] {
                break;
            }
            path.clear();
            pos[start] = 0;
            let mut v = start;
            loop {
                while next[v] < first[v + 1] && rest[out[next[v]] as usize] == 0 {
                    next[v] += 1;
                }
                if next[v] == first[v + 1] {
                    return Err(Error::value(format!(
                        "flow is not a circulation: node {v} has inflow left and no outflow"
                    )));
                }
                let e = out[next[v]];
                let w = edges[e as usize].to as usize;
                path.push(e);
                if pos[w] != usize::MAX {
                    // A circle: the path from w's position to here.
                    let circle: Vec<u32> = path[pos[w]..].to_vec();
                    let units = circle
                        .iter()
                        .map(|&e| rest[e as usize])
                        .min()
                        .expect("non-empty");
                    for &e in &circle {
                        rest[e as usize] -= units;
                    }
                    for &e in &path[pos[w]..] {
                        let u = edges[e as usize].to as usize;
                        if u != w {
                            pos[u] = usize::MAX;
                        }
                    }
                    path.truncate(pos[w]);
                    circles.push(Circle {
                        edges: circle,
                        units,
                    });
                    v = w;
                    if v == start && path.is_empty() {
                        break;
                    }
                    continue;
                }
                pos[w] = path.len();
                v = w;
            }
            pos[start] = usize::MAX;
        }
    }
    Ok(circles)
}

/// What to keep of a decomposition.
#[derive(Debug, Clone, Copy)]
pub struct LiftOptions {
    /// Circles lowering fewer units than this are left out.
    pub min_units: i64,
    /// Circles of more edges than this are left out.
    pub max_len: usize,
    /// Stop searching for a better plan after this long (the plan stays a valid circulation;
    /// [`Plan::optimal`] says whether it is the optimum).
    pub time_budget: Option<Duration>,
}

impl Default for LiftOptions {
    fn default() -> Self {
        LiftOptions {
            min_units: 1,
            max_len: usize::MAX,
            time_budget: None,
        }
    }
}

/// A lift plan: the circles kept, and what they clear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub circles: Vec<Circle>,
    /// Sum over kept circles of units times length: the debt the plan clears.
    pub cleared: i128,
    /// What the circulation found clears before circles are left out.
    pub optimum: i128,
    /// Whether that circulation is the proven optimum (false when the time budget ran out).
    pub optimal: bool,
}

/// Solves, decomposes, and keeps the circles `options` allow. Leaving a circle out keeps the
/// rest a circulation, so every plan keeps every net position.
pub fn plan(n: usize, edges: &[Edge], options: LiftOptions) -> Result<Plan> {
    let c = solve_within(n, edges, options.time_budget.map(|b| Instant::now() + b))?;
    let circles: Vec<Circle> = decompose(n, edges, &c.flow)?
        .into_iter()
        .filter(|k| k.units >= options.min_units && k.edges.len() <= options.max_len)
        .collect();
    let cleared = circles
        .iter()
        .map(|k| i128::from(k.units) * k.edges.len() as i128)
        .sum();
    Ok(Plan {
        circles,
        cleared,
        optimum: c.cleared,
        optimal: c.optimal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn e(from: u32, to: u32, cap: i64) -> Edge {
        Edge {
            from,
            to,
            cap,
            cost: -1,
        }
    }

    fn net_positions(n: usize, edges: &[Edge], flow: &[i64]) -> Vec<i128> {
        let mut b = vec![0i128; n];
        for (e, &f) in edges.iter().zip(flow) {
            b[e.from as usize] -= i128::from(f);
            b[e.to as usize] += i128::from(f);
        }
        b
    }

    /// The independent oracle: the same problem as a linear program (microlp, a simplex solver
    /// we did not write). Integral capacities make the LP optimum integral.
    fn lp_optimum(n: usize, edges: &[Edge]) -> f64 {
        use microlp::{ComparisonOp, OptimizationDirection, Problem};
        let mut p = Problem::new(OptimizationDirection::Minimize);
        let vars: Vec<_> = edges
            .iter()
            .map(|e| p.add_var(e.cost as f64, (0.0, e.cap as f64)))
            .collect();
        for v in 0..n as u32 {
            let mut row = vec![];
            for (i, e) in edges.iter().enumerate() {
                if e.to == v {
                    row.push((vars[i], 1.0));
                }
                if e.from == v {
                    row.push((vars[i], -1.0));
                }
            }
            if !row.is_empty() {
                p.add_constraint(&row, ComparisonOp::Eq, 0.0);
            }
        }
        match p.solve().expect("the zero flow is feasible") {
            microlp::SolveOutcome::Solution(sol) => sol.objective(),
            other => panic!("the LP oracle gave no solution: {other:?}"),
        }
    }

    #[test]
    fn a_triangle_clears_its_smallest_debt() {
        let edges = [e(0, 1, 5), e(1, 2, 3), e(2, 0, 7)];
        let c = solve(3, &edges).unwrap();
        assert_eq!(c.flow, vec![3, 3, 3]);
        assert_eq!(c.cleared, 9);
        let circles = decompose(3, &edges, &c.flow).unwrap();
        assert_eq!(
            circles,
            vec![Circle {
                edges: vec![0, 1, 2],
                units: 3
            }]
        );
    }

    #[test]
    fn overlapping_circles_are_cleared_together() {
        // The informal.systems example shape: circles overlap on 0->1 and 1->0; clearing the
        // circle with the biggest "length x min" first (as the original system does) leaves
        // debt that the optimum clears. Here every node is balanced, so all 24 units go.
        let edges = [
            e(0, 1, 4),
            e(1, 0, 4),
            e(1, 2, 4),
            e(2, 0, 4),
            e(0, 3, 4),
            e(3, 1, 4),
        ];
        let c = solve(4, &edges).unwrap();
        assert_eq!(c.cleared, 24);
        assert_eq!(c.cleared as f64, -lp_optimum(4, &edges));
        // A greedy first lift of 0->3->1->2->0 (length 4, min 4 = 16) leaves 0->1, 1->0: 8 more,
        // which the optimum includes.
        let unbalanced = [
            e(0, 1, 4),
            e(1, 0, 2),
            e(1, 2, 4),
            e(2, 0, 4),
            e(0, 3, 4),
            e(3, 1, 4),
        ];
        let c = solve(4, &unbalanced).unwrap();
        assert_eq!(c.cleared as f64, -lp_optimum(4, &unbalanced));
    }

    #[test]
    fn no_circle_clears_nothing() {
        let edges = [e(0, 1, 5), e(1, 2, 5), e(0, 2, 5)];
        let c = solve(3, &edges).unwrap();
        assert_eq!(c.cleared, 0);
        assert!(decompose(3, &edges, &c.flow).unwrap().is_empty());
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(solve(2, &[e(0, 2, 1)]).is_err());
        assert!(solve(2, &[e(1, 1, 1)]).is_err());
        assert!(solve(2, &[e(0, 1, -1)]).is_err());
        assert!(solve(
            2,
            &[Edge {
                from: 0,
                to: 1,
                cap: 1,
                cost: MAX_COST + 1
            }]
        )
        .is_err());
        assert!(decompose(2, &[e(0, 1, 1)], &[1, 2]).is_err());
        assert!(
            decompose(2, &[e(0, 1, 1)], &[1]).is_err(),
            "not a circulation"
        );
    }

    #[test]
    fn huge_amounts_do_not_overflow() {
        let big = 1_000_000_000_000i64; // 1e12 per tally
        let edges: Vec<Edge> = (0..50u32)
            .map(|i| e(i, (i + 1) % 50, big - i64::from(i)))
            .collect();
        let c = solve(50, &edges).unwrap();
        assert_eq!(c.cleared, 50 * i128::from(big - 49));
        let near_max = i64::MAX / 4;
        let edges = [
            e(0, 1, near_max),
            e(1, 0, near_max),
            e(1, 2, near_max),
            e(2, 0, near_max),
        ];
        let c = solve(3, &edges).unwrap();
        // circles 0-1-0 and 0-1-2-0 share 0->1: the longer one takes all of it
        assert_eq!(c.cleared, 3 * i128::from(near_max));
        // More owed to one node than i64 holds: refused, not wrapped.
        let edges = [e(0, 2, i64::MAX), e(1, 2, i64::MAX), e(2, 0, 1), e(2, 1, 1)];
        assert!(solve(3, &edges).is_err());
    }

    fn arb_graph(max_n: u32, max_cap: i64) -> impl Strategy<Value = (usize, Vec<Edge>)> {
        (2..=max_n).prop_flat_map(move |n| {
            let edge = (
                0..n,
                0..n,
                0..=max_cap,
                prop_oneof![3 => Just(-1i64), 1 => -5i64..=5],
            )
                .prop_filter("no loops", |(a, b, _, _)| a != b)
                .prop_map(|(from, to, cap, cost)| Edge {
                    from,
                    to,
                    cap,
                    cost,
                });
            (
                Just(n as usize),
                prop::collection::vec(edge, 0..(3 * n as usize)),
            )
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Random graphs (parallel edges, zero capacities, mixed costs): the cost equals the LP
        /// optimum, net positions do not move, every edge stays within [0, cap], and the circles
        /// sum back to the flow.
        #[test]
        fn optimal_and_sound((n, edges) in arb_graph(9, 1000)) {
            let c = solve(n, &edges).unwrap();
            let lp = lp_optimum(n, &edges);
            prop_assert!((c.cost as f64 - lp).abs() < 1e-6 * (1.0 + lp.abs()), "ours {} lp {}", c.cost, lp);
            prop_assert!(net_positions(n, &edges, &c.flow).iter().all(|&b| b == 0));
            for (e, &f) in edges.iter().zip(&c.flow) {
                prop_assert!(0 <= f && f <= e.cap);
            }
            let circles = decompose(n, &edges, &c.flow).unwrap();
            prop_assert!(circles.len() <= edges.len());
            let mut sum = vec![0i64; edges.len()];
            for k in &circles {
                prop_assert!(k.units > 0);
                for (i, &ei) in k.edges.iter().enumerate() {
                    let next = k.edges[(i + 1) % k.edges.len()];
                    prop_assert_eq!(edges[ei as usize].to, edges[next as usize].from);
                    sum[ei as usize] += k.units;
                }
            }
            prop_assert_eq!(sum, c.flow.clone());
            let p = plan(n, &edges, LiftOptions { min_units: 50, max_len: 3, time_budget: None }).unwrap();
            prop_assert!(p.optimal);
            prop_assert!(p.cleared <= p.optimum);
            let mut pf = vec![0i64; edges.len()];
            for k in &p.circles {
                prop_assert!(k.units >= 50 && k.edges.len() <= 3);
                for &ei in &k.edges { pf[ei as usize] += k.units; }
            }
            prop_assert!(net_positions(n, &edges, &pf).iter().all(|&b| b == 0));
        }

        /// With no time at all, the plan is still a circulation within the capacities, and no
        /// better than the optimum.
        #[test]
        fn out_of_time_is_still_sound((n, edges) in arb_graph(9, 1000)) {
            let best = solve(n, &edges).unwrap();
            let c = solve_within(n, &edges, Some(Instant::now())).unwrap();
            prop_assert!(net_positions(n, &edges, &c.flow).iter().all(|&b| b == 0));
            for (e, &f) in edges.iter().zip(&c.flow) {
                prop_assert!(0 <= f && f <= e.cap);
            }
            prop_assert!(c.cost >= best.cost);
            prop_assert!(!c.optimal || c.cost == best.cost);
            decompose(n, &edges, &c.flow).unwrap();
        }

        /// Scaling every capacity by a large factor scales the optimum exactly (no float oracle
        /// reaches 1e12; this property does).
        #[test]
        fn scales_exactly_to_huge_amounts((n, edges) in arb_graph(8, 1000)) {
            let plain: Vec<Edge> = edges.iter().map(|e| Edge { cost: -1, ..*e }).collect();
            let k = 1_000_000_000i64;
            let big: Vec<Edge> = plain.iter().map(|e| Edge { cap: e.cap * k, ..*e }).collect();
            let (a, b) = (solve(n, &plain).unwrap(), solve(n, &big).unwrap());
            prop_assert_eq!(b.cleared, a.cleared * i128::from(k));
            prop_assert!(net_positions(n, &big, &b.flow).iter().all(|&x| x == 0));
        }
    }
}
