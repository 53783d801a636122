//! What the whole network could carry: the oracle the demo and the chaos run hold payments to
//! CHIP addresses against. It reads every site's rows (as their DBA), which no site and no part
//! of the product can do: the product never calls it.
//!
//! Each tally half a site holds is one arc of the federation's liftable graph, from its partner
//! to its holder, with what the holder can take now (`chips._recv_capacity`: its debt, then up
//! to its target, never past the limit it granted; pending chits count against it). A payment
//! of `units` from one user to another could be carried at that moment when the maximum flow
//! between them over the union of those arcs is at least `units`.

use std::collections::HashMap;

use petgraph::algo::dinics;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;
use serde_json::Value;

use tokio_postgres::Client;

/// The liftable graph of every site together: arcs `from -> to` (users as `cuid@agent`) with
/// the units value can move along them now.
#[derive(Debug, Default, Clone)]
pub struct Graph {
    pub arcs: Vec<(String, String, i64)>,
}

/// A user's name in the oracle's graph: `cuid@agent` of their CHIP address.
pub fn node(chad: &Value) -> String {
    format!(
        "{}@{}",
        chad["cuid"].as_str().unwrap_or_default(),
        chad["agent"].as_str().unwrap_or_default()
    )
}

impl Graph {
    /// Every open tally half at every site, read now (one statement per site, over each site's
    /// superuser connection).
    pub async fn read(sites: &[&Client]) -> crate::Result<Graph> {
        let mut arcs = Vec::new();
        for s in sites {
            for r in s
                .query(
                    "SELECT h.part_cert->'chad', h.hold_cert->'chad',
                            chips._recv_capacity(h, coalesce(p.clutch, (h.part_sets->>'clutch')::double precision))
                     FROM chips.tallies h
                     LEFT JOIN chips.tallies p ON p.tally_uuid = h.tally_uuid AND p.side <> h.side
                     WHERE h.status = 'open'",
                    &[],
                )
                .await?
            {
                let cap: Option<i64> = r.get(2);
                if let Some(cap) = cap.filter(|&c| c > 0) {
                    arcs.push((node(&r.get(0)), node(&r.get(1)), cap));
                }
            }
        }
        Ok(Graph { arcs })
    }

    /// The most units that can move from `from` to `to` at once, over any number of routes
    /// (0 when either is not in the graph, or they are the same user).
    pub fn max_flow(&self, from: &str, to: &str) -> i64 {
        self.flow_paths(from, to).0
    }

    /// The maximum flow from `from` to `to` and the routes it takes: each a list of users from
    /// `from` to `to` with the units it carries (their sum is the flow; a flow that goes round a
    /// circle on the way leaves that circle out).
    pub fn flow_paths(&self, from: &str, to: &str) -> (i64, Vec<(Vec<String>, i64)>) {
        let mut g: DiGraph<&str, u64> = DiGraph::new();
        let mut ids: HashMap<&str, NodeIndex> = HashMap::new();
        for (a, b, c) in &self.arcs {
            if a == b {
                continue;
            }
            let x = *ids
                .entry(a.as_str())
                .or_insert_with(|| g.add_node(a.as_str()));
            let y = *ids
                .entry(b.as_str())
                .or_insert_with(|| g.add_node(b.as_str()));
            g.add_edge(x, y, c.unsigned_abs());
        }
        let (Some(&s), Some(&t)) = (ids.get(from), ids.get(to)) else {
            return (0, vec![]);
        };
        if s == t {
            return (0, vec![]);
        }
        let (value, mut flows) = dinics(&g, s, t);
        let mut paths = Vec::new();
        // peel routes off the flow: follow arcs with flow left from `from` until `to`
        loop {
            let mut path = vec![s];
            let mut arcs = Vec::new();
            let mut at = s;
            while at != t {
                let Some(e) = g
                    .edges(at)
                    .find(|e| flows[e.id().index()] > 0 && !path.contains(&e.target()))
                else {
                    break;
                };
                arcs.push(e.id().index());
                at = e.target();
                path.push(at);
            }
            if at != t {
                break;
            }
            let units = arcs.iter().map(|&a| flows[a]).min().unwrap_or(0);
            for &a in &arcs {
                flows[a] -= units;
            }
            paths.push((
                path.iter().map(|&n| g[n].to_string()).collect(),
                i64::try_from(units).unwrap_or(i64::MAX),
            ));
        }
        (i64::try_from(value).unwrap_or(i64::MAX), paths)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(arcs: &[(&str, &str, i64)]) -> Graph {
        Graph {
            arcs: arcs
                .iter()
                .map(|(a, b, c)| (a.to_string(), b.to_string(), *c))
                .collect(),
        }
    }

    #[test]
    fn two_routes_carry_their_sum_and_a_shared_tally_bounds_them() {
        // a -> b -> d (5) and a -> c -> d (7): 12 together, neither alone
        let two = g(&[("a", "b", 5), ("b", "d", 9), ("a", "c", 7), ("c", "d", 7)]);
        assert_eq!(two.max_flow("a", "d"), 12);
        // both through e -> d (8)
        let shared = g(&[
            ("a", "b", 5),
            ("a", "c", 7),
            ("b", "e", 9),
            ("c", "e", 9),
            ("e", "d", 8),
        ]);
        assert_eq!(shared.max_flow("a", "d"), 8);
        // arcs point one way: nothing comes back
        assert_eq!(two.max_flow("d", "a"), 0);
        assert_eq!(two.max_flow("a", "nobody"), 0);
        assert_eq!(two.max_flow("a", "a"), 0);
        // the routes the flow takes
        let (v, mut paths) = two.flow_paths("a", "d");
        paths.sort();
        let names = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(v, 12);
        assert_eq!(
            paths,
            vec![(names(&["a", "b", "d"]), 5), (names(&["a", "c", "d"]), 7)]
        );
        let (v, paths) = shared.flow_paths("a", "d");
        assert_eq!((v, paths.iter().map(|p| p.1).sum::<i64>()), (8, 8));
    }
}
