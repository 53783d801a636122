//! Routes of distributed lifts inside one site, and the hash locks and timers of the lift
//! protocol (docs/protocol.md, "Distributed lifts").
//!
//! A site carries a lift from where it enters (the payer, or the holder of the tally the lift
//! arrives on) to where it leaves (the payee, or the holder of the tally it goes out on) over
//! its own tallies. Each arc is one tally in the direction value moves, with the units it can
//! take now (the receiving holder's free lift capacity, [`crate::liftable::Half`]). A route is a
//! shortest path (fewest tallies) whose every arc can take the lift's units.

use petgraph::graph::{DiGraph, NodeIndex};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// One tally in the direction value moves: `from` pays `to`, at most `capacity` units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arc {
    pub from: u32,
    pub to: u32,
    pub capacity: i64,
}

fn graph(n: usize, arcs: &[Arc], units: i64) -> Result<DiGraph<(), usize>> {
    let mut g = DiGraph::with_capacity(n, arcs.len());
    for _ in 0..n {
        g.add_node(());
    }
    for (i, a) in arcs.iter().enumerate() {
        if a.from as usize >= n || a.to as usize >= n {
            return Err(Error::value(format!("arc {i} names a node past {n}")));
        }
        if a.capacity >= units && a.from != a.to {
            g.add_edge(
                NodeIndex::new(a.from as usize),
                NodeIndex::new(a.to as usize),
                i,
            );
        }
    }
    Ok(g)
}

/// The arcs (indexes into `arcs`) of a shortest route from `from` to `to` on which every arc
/// takes `units`; among equally short routes, the one whose arcs have the most capacity at each
/// step. `Some(vec![])` when `from == to`; `None` when there is no such route.
pub fn shortest_path(
    n: usize,
    arcs: &[Arc],
    from: u32,
    to: u32,
    units: i64,
) -> Result<Option<Vec<usize>>> {
    if units < 1 {
        return Err(Error::value("a route carries at least 1 unit"));
    }
    if from as usize >= n || to as usize >= n {
        return Err(Error::value("a route's ends must be nodes of the graph"));
    }
    let g = graph(n, arcs, units)?;
    let found = petgraph::algo::astar(
        &g,
        NodeIndex::new(from as usize),
        |x| x.index() == to as usize,
        |_| 1u32,
        |_| 0u32,
    );
    let Some((_, nodes)) = found else {
        return Ok(None);
    };
    let mut out = Vec::with_capacity(nodes.len().saturating_sub(1));
    for w in nodes.windows(2) {
        // the widest of the parallel arcs between two consecutive nodes
        let best = g
            .edges_connecting(w[0], w[1])
            .map(|e| *e.weight())
            .max_by_key(|&i| (arcs[i].capacity, std::cmp::Reverse(i)))
            .ok_or_else(|| Error::value("astar returned a step without an arc"))?;
        out.push(best);
    }
    Ok(Some(out))
}

/// How many arcs each node is from `from` over arcs that take `units` (`None`: unreachable).
pub fn reachable(n: usize, arcs: &[Arc], from: u32, units: i64) -> Result<Vec<Option<u32>>> {
    if units < 1 {
        return Err(Error::value("a route carries at least 1 unit"));
    }
    if from as usize >= n {
        return Err(Error::value("a route's start must be a node of the graph"));
    }
    let g = graph(n, arcs, units)?;
    let d = petgraph::algo::dijkstra(&g, NodeIndex::new(from as usize), None, |_| 1u32);
    Ok((0..n).map(|i| d.get(&NodeIndex::new(i)).copied()).collect())
}

/// The most units one route from `from` to `to` carries: the widest path (the route whose
/// tightest arc has the most capacity; any length). `None` when no route carries a unit, and
/// when `from == to` (a route to oneself carries nothing).
pub fn widest(n: usize, arcs: &[Arc], from: u32, to: u32) -> Result<Option<i64>> {
    if from as usize >= n || to as usize >= n {
        return Err(Error::value("a route's ends must be nodes of the graph"));
    }
    let g = graph(n, arcs, 1)?;
    // Dijkstra with the bottleneck for a length: a node is settled at the widest way to it
    let mut best = vec![0i64; n];
    let mut heap = std::collections::BinaryHeap::new();
    best[from as usize] = i64::MAX;
    heap.push((i64::MAX, from));
    while let Some((w, x)) = heap.pop() {
        if w < best[x as usize] {
            continue;
        }
        if x == to && x != from {
            return Ok(Some(w));
        }
        for e in g.edges(NodeIndex::new(x as usize)) {
            let arc = &arcs[*e.weight()];
            let c = w.min(arc.capacity);
            if c > best[arc.to as usize] {
                best[arc.to as usize] = c;
                heap.push((c, arc.to));
            }
        }
    }
    Ok(None)
}

/// The most any one arc or exit counts for in [`flow_out`] (2^48 units): sums of capacities
/// stay far from overflowing, and no route carries more than that.
pub const FLOW_CAP: i64 = 1 << 48;

/// The most units that can leave from `from` at once over any number of routes, each ending at
/// one of the `exits` (a node and the most that may leave through it): the maximum flow to the
/// exits together. What a site's ways on carry together, where [`widest`] gives the most one
/// of them carries. Capacities count up to [`FLOW_CAP`]; 0 when no exit is reachable.
pub fn flow_out(n: usize, arcs: &[Arc], from: u32, exits: &[(u32, i64)]) -> Result<i64> {
    if from as usize >= n || exits.iter().any(|&(x, _)| x as usize >= n) {
        return Err(Error::value("a route's ends must be nodes of the graph"));
    }
    let cap = |c: i64| c.clamp(0, FLOW_CAP) as u64;
    let mut g: DiGraph<(), u64> = DiGraph::with_capacity(n + 1, arcs.len() + exits.len());
    for _ in 0..=n {
        g.add_node(());
    }
    for (i, a) in arcs.iter().enumerate() {
        if a.from as usize >= n || a.to as usize >= n {
            return Err(Error::value(format!("arc {i} names a node past {n}")));
        }
        if a.capacity > 0 && a.from != a.to {
            g.add_edge(
                NodeIndex::new(a.from as usize),
                NodeIndex::new(a.to as usize),
                cap(a.capacity),
            );
        }
    }
    let sink = NodeIndex::new(n);
    for &(x, c) in exits {
        if c > 0 {
            g.add_edge(NodeIndex::new(x as usize), sink, cap(c));
        }
    }
    let (flow, _) = petgraph::algo::dinics(&g, NodeIndex::new(from as usize), sink);
    Ok(i64::try_from(flow).unwrap_or(i64::MAX))
}

/// The lock of a lift: SHA-256 of a 32-byte secret.
pub fn condition(secret: &[u8]) -> Result<[u8; 32]> {
    if secret.len() != 32 {
        return Err(Error::value(format!(
            "a lift secret is 32 bytes, not {}",
            secret.len()
        )));
    }
    Ok(Sha256::digest(secret).into())
}

/// Whether `secret` opens the lock `condition`.
pub fn fulfills(secret: &[u8], condition: &[u8]) -> bool {
    secret.len() == 32 && Sha256::digest(secret).as_slice() == condition
}

/// The anonymous name of a tally within one query: base64url(SHA-256(query id || tally id)).
/// Both holders of the tally can compute it; nobody else can tell which tally it is.
pub fn link_id(query: &str, tally: &str) -> String {
    let mut h = Sha256::new();
    h.update(query.as_bytes());
    h.update(b"\0");
    h.update(tally.as_bytes());
    crate::codec::b64url_encode(&h.finalize())
}

/// The expiry a site gives the next hop: its own less `step_ms`, if at least `min_ms` would be
/// left from `now_ms`; `None` when the lift is too close to expiring to go on.
pub fn next_expiry(expires_ms: i64, now_ms: i64, step_ms: i64, min_ms: i64) -> Option<i64> {
    let next = expires_ms.checked_sub(step_ms)?;
    (next.checked_sub(now_ms)? >= min_ms).then_some(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn a(from: u32, to: u32, capacity: i64) -> Arc {
        Arc { from, to, capacity }
    }

    #[test]
    fn ways_to_several_exits_carry_together() {
        // 0 -> 1 (10); 1 -> 2 (6), 1 -> 3 (5): exits at 2 (up to 6) and 3 (up to 9)
        let arcs = [a(0, 1, 10), a(1, 2, 6), a(1, 3, 5)];
        assert_eq!(flow_out(4, &arcs, 0, &[(2, 6), (3, 9)]).unwrap(), 10);
        assert_eq!(flow_out(4, &arcs, 0, &[(2, 2), (3, 9)]).unwrap(), 7);
        assert_eq!(widest(4, &arcs, 0, 2).unwrap(), Some(6), "one way alone");
        // leaving from an exit itself; none reachable; huge capacities do not overflow
        assert_eq!(flow_out(4, &arcs, 1, &[(1, 4)]).unwrap(), 4);
        assert_eq!(flow_out(4, &arcs, 2, &[(3, 9)]).unwrap(), 0);
        let big = [a(0, 1, i64::MAX), a(0, 2, i64::MAX)];
        assert_eq!(
            flow_out(3, &big, 0, &[(1, i64::MAX), (2, i64::MAX)]).unwrap(),
            2 * FLOW_CAP
        );
        assert!(flow_out(3, &big, 0, &[(5, 1)]).is_err());
    }

    #[test]
    fn shortest_route_that_carries_the_units() {
        // 0 -> 1 -> 3 (capacity 5) and 0 -> 2 -> 4 -> 3 (capacity 10)
        let arcs = [
            a(0, 1, 5),
            a(1, 3, 5),
            a(0, 2, 10),
            a(2, 4, 10),
            a(4, 3, 10),
        ];
        assert_eq!(shortest_path(5, &arcs, 0, 3, 5).unwrap(), Some(vec![0, 1]));
        assert_eq!(
            shortest_path(5, &arcs, 0, 3, 6).unwrap(),
            Some(vec![2, 3, 4])
        );
        assert_eq!(shortest_path(5, &arcs, 0, 3, 11).unwrap(), None);
        assert_eq!(
            shortest_path(5, &arcs, 3, 0, 1).unwrap(),
            None,
            "arcs are directed"
        );
        assert_eq!(shortest_path(5, &arcs, 2, 2, 1).unwrap(), Some(vec![]));
        assert_eq!(
            widest(5, &arcs, 0, 3).unwrap(),
            Some(10),
            "the longer, wider way"
        );
        assert_eq!(widest(5, &arcs, 1, 3).unwrap(), Some(5));
        assert_eq!(widest(5, &arcs, 3, 0).unwrap(), None);
        assert_eq!(widest(5, &arcs, 2, 2).unwrap(), None, "not to oneself");
        let d = reachable(5, &arcs, 0, 6).unwrap();
        assert_eq!(d, vec![Some(0), None, Some(1), Some(3), Some(2)]);
    }

    #[test]
    fn parallel_arcs_take_the_widest() {
        let arcs = [a(0, 1, 3), a(0, 1, 9), a(0, 1, 9)];
        assert_eq!(shortest_path(2, &arcs, 0, 1, 2).unwrap(), Some(vec![1]));
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(shortest_path(2, &[a(0, 5, 1)], 0, 1, 1).is_err());
        assert!(shortest_path(2, &[], 0, 1, 0).is_err());
        assert!(shortest_path(2, &[], 0, 2, 1).is_err());
        assert!(reachable(2, &[], 3, 1).is_err());
        assert!(widest(2, &[], 0, 2).is_err());
        assert!(widest(2, &[a(0, 5, 1)], 0, 1).is_err());
        assert!(condition(&[0; 31]).is_err());
    }

    #[test]
    fn locks_and_timers() {
        let s = [7u8; 32];
        let c = condition(&s).unwrap();
        assert!(fulfills(&s, &c));
        assert!(!fulfills(&[8u8; 32], &c));
        assert!(!fulfills(&s[..31], &c));
        assert_ne!(link_id("q1", "t"), link_id("q2", "t"));
        assert_eq!(link_id("q1", "t").len(), 43);
        assert_eq!(next_expiry(10_000, 0, 1_000, 2_000), Some(9_000));
        assert_eq!(next_expiry(10_000, 7_500, 1_000, 2_000), None);
        assert_eq!(next_expiry(i64::MIN, 0, 1, 0), None);
    }

    /// An independent oracle: breadth-first search by hand over the arcs that carry the units.
    fn bfs(n: usize, arcs: &[Arc], from: u32, units: i64) -> Vec<Option<u32>> {
        let mut d = vec![None; n];
        d[from as usize] = Some(0);
        let mut queue = std::collections::VecDeque::from([from]);
        while let Some(x) = queue.pop_front() {
            for arc in arcs.iter().filter(|a| a.from == x && a.capacity >= units) {
                if d[arc.to as usize].is_none() {
                    d[arc.to as usize] = Some(d[x as usize].unwrap() + 1);
                    queue.push_back(arc.to);
                }
            }
        }
        d
    }

    proptest! {
        #[test]
        fn routes_are_shortest_valid_and_found_whenever_one_exists(
            n in 2usize..9,
            raw in proptest::collection::vec((0u32..9, 0u32..9, 0i64..20), 0..30),
            units in 1i64..15,
        ) {
            let arcs: Vec<Arc> = raw.iter().map(|&(f, t, c)| a(f % n as u32, t % n as u32, c)).collect();
            let oracle = bfs(n, &arcs, 0, units);
            prop_assert_eq!(&reachable(n, &arcs, 0, units).unwrap(), &oracle);
            for to in 0..n as u32 {
                let p = shortest_path(n, &arcs, 0, to, units).unwrap();
                match (p, oracle[to as usize]) {
                    (None, None) => {}
                    (Some(p), Some(d)) => {
                        prop_assert_eq!(p.len() as u32, d);
                        let mut at = 0;
                        for i in p {
                            prop_assert_eq!(arcs[i].from, at);
                            prop_assert!(arcs[i].capacity >= units);
                            at = arcs[i].to;
                        }
                        prop_assert_eq!(at, to);
                    }
                    (p, d) => prop_assert!(false, "route {:?} but distance {:?}", p, d),
                }
            }
        }

        #[test]
        fn what_all_ways_to_the_exits_carry_is_the_least_cut(
            n in 2usize..8,
            raw in proptest::collection::vec((0u32..8, 0u32..8, 0i64..20), 0..24),
            outs in proptest::collection::vec((0u32..8, 0i64..30), 0..4),
        ) {
            let arcs: Vec<Arc> = raw.iter().map(|&(f, t, c)| a(f % n as u32, t % n as u32, c)).collect();
            let exits: Vec<(u32, i64)> = outs.iter().map(|&(x, c)| (x % n as u32, c)).collect();
            // the oracle: max flow = min cut; every set of nodes that holds 0 (the sink is
            // outside), what the arcs and exits leaving it carry
            let cut = (0u32..1 << n)
                .filter(|m| m & 1 == 1)
                .map(|m| {
                    let inside = |x: u32| m >> x & 1 == 1;
                    arcs.iter()
                        .filter(|a| inside(a.from) && !inside(a.to))
                        .map(|a| a.capacity)
                        .chain(exits.iter().filter(|e| inside(e.0)).map(|e| e.1))
                        .sum::<i64>()
                })
                .min()
                .unwrap();
            prop_assert_eq!(flow_out(n, &arcs, 0, &exits).unwrap(), cut);
        }

        #[test]
        fn the_widest_route_is_the_most_units_any_route_carries(
            n in 2usize..9,
            raw in proptest::collection::vec((0u32..9, 0u32..9, 0i64..20), 0..30),
        ) {
            let arcs: Vec<Arc> = raw.iter().map(|&(f, t, c)| a(f % n as u32, t % n as u32, c)).collect();
            for to in 1..n as u32 {
                // the oracle: the most units for which breadth-first search still reaches `to`
                let most = (1..20i64).rev().find(|&u| bfs(n, &arcs, 0, u)[to as usize].is_some());
                prop_assert_eq!(widest(n, &arcs, 0, to).unwrap(), most);
            }
        }
    }
}
