//! Clearing rounds: the optimum of a whole federation of sites, solved by a coordinator that
//! never learns who is who (docs/protocol.md, "Clearing rounds").
//!
//! Each site offers the round its part of the liftable graph ([`site_graph`]): the arcs of its
//! local tallies between its users, and for each half it holds of a tally with another site an
//! arc from the holder to the tally's *link* and one from the tally's other link back to the
//! holder. Users are named by per-round pseudonyms ([`pseudonym`]: HMAC under a secret only
//! the site knows, so the coordinator cannot tell a user from one round to the next nor name
//! one); a tally between two sites is joined by two link tokens ([`link`], one per direction),
//! HMACs keyed by the tally's digest, which both partners hold and the coordinator never sees.
//! A tally between users U (site A) and P (site B) thus becomes U -> L(U) -> P and
//! P -> L(P) -> U: U's arc to L(U) carries what U's half offers, the arc from L(U) to P is
//! offered by B with no bound of its own. The union of the parts is the whole federation's
//! liftable graph with each cross-site arc cut in two, so its min-cost circulation ([`solve`])
//! is the federation's optimum.
//!
//! Each site gets back only the flows on its own arcs and checks them itself ([`check`]): within
//! what it offered, and every one of its users' inflow equal to their outflow (no net position
//! moves). It nets the two directions of each tally into one move (what the lift chit carries).
//! Rounds offer free capacity only (margin 0): a circle's compounded margin spans sites no
//! single site can see.

use std::collections::HashMap;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::clearing::{self, Edge};
use crate::codec;
use crate::error::{Error, Result};
use crate::liftable::{Half, Policy, Tally};
use crate::tally::Side;

/// The bound of an arc from a link to the holder: none of its own (the partner's arc into the
/// link bounds what passes).
pub const OPEN: i64 = 1 << 60;

/// 12 bytes of HMAC-SHA-256 under `key` over the length-prefixed `parts`, base64url.
fn mac(key: &[u8], parts: &[&[u8]]) -> String {
    let mut m = <Hmac<Sha256>>::new_from_slice(key).expect("HMAC takes a key of any length");
    for p in parts {
        m.update(&(p.len() as u32).to_be_bytes());
        m.update(p);
    }
    codec::b64url_encode(&m.finalize().into_bytes()[..12])
}

/// A user's name in one round: keyed by the site's secret and the round, so it says nothing
/// about the user to anyone without the secret, and differs from round to round.
pub fn pseudonym(site_secret: &[u8], round: &str, ent: &str) -> String {
    mac(site_secret, &[b"user", round.as_bytes(), ent.as_bytes()])
}

/// The link of one direction of a tally between sites in one round: the arc of the `from`
/// side's holder ends there. Keyed by the tally's digest, which both partners hold.
pub fn link(digest: &[u8], round: &str, from: Side) -> String {
    mac(
        digest,
        &[b"link", round.as_bytes(), from.as_str().as_bytes()],
    )
}

/// The uuid of the lift chit an attempt of a round writes on a tally: derived from all three (a
/// version-4 layout over SHA-256), so the two partners' sites write the same chit, and a new
/// attempt a new one.
pub fn chit_uuid(round: &[u8; 16], attempt: u32, tally: &[u8; 16]) -> [u8; 16] {
    use sha2::Digest;
    let d = Sha256::digest([b"chit".as_slice(), round, &attempt.to_be_bytes(), tally].concat());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    b
}

/// An arc a site offers a round, on the wire `[tail, head, cap, cost]`: `tail` may pass up to
/// `cap` to `head` at `cost` per unit (-1 lowers a debt, +1 moves a balance away from zero, 0
/// from a link to its holder).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Arc(pub String, pub String, pub i64, pub i64);

/// What an arc of a site is, kept at the site (never sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Local tally `tally`, along its foil holder's arc (lowering `net`) or its stock holder's.
    Local { tally: u32, foil: bool },
    /// Remote half `half`: its holder passes value to the partner (the holder's position rises).
    Out { half: u32 },
    /// Remote half `half`: the partner passes value to the holder (the holder's position drops).
    In { half: u32 },
}

/// A tally whose two halves are both at the site.
#[derive(Debug, Clone, PartialEq)]
pub struct Local {
    pub stock: String,
    pub foil: String,
    /// Its balance, trading variables and limits (node numbers unused).
    pub tally: Tally,
}

/// A half the site holds of a tally with another site.
#[derive(Debug, Clone, PartialEq)]
pub struct Remote {
    pub holder: String,
    pub side: Side,
    /// What the holder's half can take (its position, trading variables, limit, the partner's
    /// clutch).
    pub half: Half,
    /// The tally's digest (SHA-256 of the document both parties signed).
    pub digest: Vec<u8>,
    /// What the partner's half can take, as this site knows it (the partner's settings come
    /// with its setting chits): the arc from the link back to the holder is offered only when
    /// the partner can pass something, and never more (the partner's own arc still bounds it).
    pub partner: Option<Half>,
}

/// A site's part of a round: the arcs it offers, and what each is.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SiteGraph {
    pub arcs: Vec<Arc>,
    pub via: Vec<Via>,
}

/// The arcs a site offers round `round` (free capacity only).
pub fn site_graph(secret: &[u8], round: &str, locals: &[Local], remotes: &[Remote]) -> SiteGraph {
    let policy = Policy { max_margin: 0.0 };
    let mut names: HashMap<String, String> = HashMap::new();
    let mut name = |ent: &str| -> String {
        names
            .entry(ent.to_string())
            .or_insert_with(|| pseudonym(secret, round, ent))
            .clone()
    };
    let mut g = SiteGraph::default();
    for (i, l) in locals.iter().enumerate() {
        for (foil, half, from, to) in [
            (true, l.tally.foil_half(), &l.foil, &l.stock),
            (false, l.tally.stock_half(), &l.stock, &l.foil),
        ] {
            for (segment, cap, _) in half.segments(&policy) {
                g.arcs.push(Arc(name(from), name(to), cap, segment.cost()));
                g.via.push(Via::Local {
                    tally: i as u32,
                    foil,
                });
            }
        }
    }
    for (i, r) in remotes.iter().enumerate() {
        let holder = name(&r.holder);
        for (segment, cap, _) in r.half.segments(&policy) {
            g.arcs.push(Arc(
                holder.clone(),
                link(&r.digest, round, r.side),
                cap,
                segment.cost(),
            ));
            g.via.push(Via::Out { half: i as u32 });
        }
        let back = r.partner.map_or(OPEN, |p| p.capacity(&policy, true));
        if back > 0 {
            g.arcs
                .push(Arc(link(&r.digest, round, r.side.other()), holder, back, 0));
            g.via.push(Via::In { half: i as u32 });
        }
    }
    g
}

/// The coordinator's answer: the flow on every arc of every part, in the parts' order.
#[derive(Debug, Clone, PartialEq)]
pub struct Solution {
    pub flows: Vec<Vec<i64>>,
    /// The circulation's cost (for plain debt, minus the units moved along reduced debts).
    pub cost: i128,
    /// Arcs left out: at a node more than one site claimed (only links are shared, and each
    /// by one site on either side).
    pub refused: usize,
}

/// The min-cost circulation over the union of the sites' parts.
pub fn solve(parts: &[Vec<Arc>]) -> Result<Solution> {
    fn node<'a>(s: &'a str, ids: &mut HashMap<&'a str, u32>) -> u32 {
        let next = ids.len() as u32;
        *ids.entry(s).or_insert(next)
    }
    let mut ids: HashMap<&str, u32> = HashMap::new();
    // Who leaves and who enters each node: a node shared by two sites must be a link, entered
    // by one site and left by the other.
    let mut leaving: HashMap<&str, usize> = HashMap::new();
    let mut entering: HashMap<&str, usize> = HashMap::new();
    let mut bad = std::collections::HashSet::new();
    for (site, arcs) in parts.iter().enumerate() {
        for Arc(tail, head, cap, cost) in arcs {
            if tail == head || *cap < 0 || cost.abs() > clearing::MAX_COST {
                return Err(Error::value(format!(
                    "site {site} offers a malformed arc {tail} -> {head}"
                )));
            }
            for (at, map) in [
                (tail.as_str(), &mut leaving),
                (head.as_str(), &mut entering),
            ] {
                if *map.entry(at).or_insert(site) != site {
                    bad.insert(at);
                }
            }
        }
    }
    let mut edges = Vec::new();
    let mut place = Vec::with_capacity(parts.len());
    let mut refused = 0;
    for arcs in parts {
        let mut at = Vec::with_capacity(arcs.len());
        for Arc(tail, head, cap, cost) in arcs {
            if bad.contains(tail.as_str()) || bad.contains(head.as_str()) {
                refused += 1;
                at.push(usize::MAX);
                continue;
            }
            let (from, to) = (node(tail, &mut ids), node(head, &mut ids));
            at.push(edges.len());
            edges.push(Edge {
                from,
                to,
                cap: *cap,
                cost: *cost,
            });
        }
        place.push(at);
    }
    let c = clearing::solve(ids.len(), &edges)?;
    let flows = place
        .iter()
        .map(|at| {
            at.iter()
                .map(|&e| if e == usize::MAX { 0 } else { c.flow[e] })
                .collect()
        })
        .collect();
    Ok(Solution {
        flows,
        cost: c.cost,
        refused,
    })
}

/// What a round asks of a site, checked and netted: per local tally the units its balance
/// `net` goes down by (negative: up), per remote half the units its holder's position goes up
/// by (negative: down). Moves of zero are left out.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Part {
    pub locals: Vec<(u32, i64)>,
    pub remotes: Vec<(u32, i64)>,
}

/// Checks the flows a coordinator sent for a site's arcs: one per arc, each within what the
/// site offered, and at every one of the site's users as much in as out (no net position
/// moves); then nets each tally's two directions.
pub fn check(graph: &SiteGraph, flows: &[i64]) -> Result<Part> {
    if flows.len() != graph.arcs.len() {
        return Err(Error::value(format!(
            "the round sent {} flows for {} arcs",
            flows.len(),
            graph.arcs.len()
        )));
    }
    let mut balance: HashMap<&str, i128> = HashMap::new();
    let (mut locals, mut remotes): (HashMap<u32, i128>, HashMap<u32, i128>) =
        (HashMap::new(), HashMap::new());
    for ((Arc(tail, head, cap, _), via), &f) in graph.arcs.iter().zip(&graph.via).zip(flows) {
        if f < 0 || f > *cap {
            return Err(Error::value(format!(
                "the round moves {f} along an arc that offered {cap}"
            )));
        }
        let f = i128::from(f);
        match *via {
            Via::Local { tally, foil } => {
                *balance.entry(tail).or_default() -= f;
                *balance.entry(head).or_default() += f;
                *locals.entry(tally).or_default() += if foil { f } else { -f };
            }
            Via::Out { half } => {
                *balance.entry(tail).or_default() -= f;
                *remotes.entry(half).or_default() += f;
            }
            Via::In { half } => {
                *balance.entry(head).or_default() += f;
                *remotes.entry(half).or_default() -= f;
            }
        }
    }
    if balance.values().any(|&b| b != 0) {
        return Err(Error::value(
            "the round would move a user's net position: what reaches a user must leave them",
        ));
    }
    let moves = |m: HashMap<u32, i128>| -> Result<Vec<(u32, i64)>> {
        let mut v: Vec<(u32, i64)> = m
            .into_iter()
            .filter(|&(_, u)| u != 0)
            .map(|(k, u)| {
                i64::try_from(u)
                    .map(|u| (k, u))
                    .map_err(|_| Error::value("a move overflows"))
            })
            .collect::<Result<_>>()?;
        v.sort_unstable();
        Ok(v)
    };
    Ok(Part {
        locals: moves(locals)?,
        remotes: moves(remotes)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clearing::LiftOptions;
    use crate::liftable;
    use proptest::prelude::*;

    /// A federation: users 0..n at sites `site[u]`; tallies (stock, foil, net).
    fn split(
        sites: usize,
        site: &[usize],
        tallies: &[Tally],
        round: &str,
    ) -> (Vec<SiteGraph>, Vec<Vec<(usize, Side)>>) {
        let secret = |s: usize| format!("secret of site {s}").into_bytes();
        let (mut locals, mut remotes): (Vec<Vec<Local>>, Vec<Vec<Remote>>) =
            (vec![vec![]; sites], vec![vec![]; sites]);
        // which (tally, side) each remote half is, per site; which tally each local is
        let mut which: Vec<Vec<(usize, Side)>> = vec![vec![]; sites];
        for (i, t) in tallies.iter().enumerate() {
            let (a, b) = (site[t.stock as usize], site[t.foil as usize]);
            if a == b {
                locals[a].push(Local {
                    stock: format!("u{}", t.stock),
                    foil: format!("u{}", t.foil),
                    tally: *t,
                });
            } else {
                let digest = format!("digest of tally {i}").into_bytes();
                remotes[a].push(Remote {
                    holder: format!("u{}", t.stock),
                    side: Side::Stock,
                    half: t.stock_half(),
                    digest: digest.clone(),
                    partner: Some(t.foil_half()),
                });
                which[a].push((i, Side::Stock));
                remotes[b].push(Remote {
                    holder: format!("u{}", t.foil),
                    side: Side::Foil,
                    half: t.foil_half(),
                    digest,
                    partner: (i % 2 == 0).then(|| t.stock_half()),
                });
                which[b].push((i, Side::Foil));
            }
        }
        let graphs = (0..sites)
            .map(|s| site_graph(&secret(s), round, &locals[s], &remotes[s]))
            .collect();
        (graphs, which)
    }

    fn arb_federation() -> impl Strategy<Value = (usize, Vec<usize>, Vec<Tally>)> {
        (2usize..5, 3usize..10).prop_flat_map(|(sites, n)| {
            let t = (0..n as u32, 0..n as u32, -1000i64..1000, 0i64..300)
                .prop_filter("two holders", |(a, b, _, _)| a != b)
                .prop_map(|(stock, foil, net, target)| Tally {
                    stock,
                    foil,
                    net,
                    foil_vars: crate::tally::TradingVars {
                        target,
                        bound: target,
                        ..Default::default()
                    },
                    foil_limit: Some(500),
                    stock_limit: Some(1000),
                    ..Default::default()
                });
            (
                Just(sites),
                prop::collection::vec(0..sites, n),
                prop::collection::vec(t, 1..(3 * n)),
            )
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        /// The round clears exactly what the solver clears on the whole network at once, every
        /// site's part checks, both partners of a tally between sites agree on its move, and
        /// no net position moves.
        #[test]
        fn a_round_clears_the_federation_optimum((sites, site, tallies) in arb_federation()) {
            let n = site.len();
            let central = liftable::clear(n, &tallies, &Policy::default(), LiftOptions::default()).unwrap();
            let (graphs, which) = split(sites, &site, &tallies, "r1");
            let parts: Vec<Vec<Arc>> = graphs.iter().map(|g| g.arcs.clone()).collect();
            let sol = solve(&parts).unwrap();
            prop_assert_eq!(sol.refused, 0);
            // per tally: how much `net` goes down
            let mut down = vec![0i64; tallies.len()];
            let mut remote_moves: HashMap<(usize, Side), i64> = HashMap::new();
            for (s, g) in graphs.iter().enumerate() {
                let part = check(g, &sol.flows[s]).unwrap();
                let local_ids: Vec<usize> = (0..tallies.len())
                    .filter(|&i| site[tallies[i].stock as usize] == s && site[tallies[i].foil as usize] == s)
                    .collect();
                for (k, units) in part.locals {
                    down[local_ids[k as usize]] += units;
                }
                for (k, units) in part.remotes {
                    remote_moves.insert(which[s][k as usize], units);
                }
            }
            for ((i, side), units) in &remote_moves {
                // what one holder's position gains, the other's loses
                let other = remote_moves.get(&(*i, side.other())).copied().unwrap_or(0);
                prop_assert_eq!(*units, -other, "both halves of tally {} agree", i);
                // the foil holder's position is -net: its rise is net going down
                if *side == Side::Foil {
                    down[*i] += units;
                }
            }
            let cleared: i128 = tallies.iter().zip(&down)
                .map(|(t, &d)| i128::from(t.net).abs() - (i128::from(t.net) - i128::from(d)).abs())
                .sum();
            prop_assert_eq!(cleared, central.optimum);
            let mut pos = vec![0i128; n];
            for (t, &d) in tallies.iter().zip(&down) {
                pos[t.stock as usize] -= i128::from(d);
                pos[t.foil as usize] += i128::from(d);
            }
            prop_assert!(pos.iter().all(|&p| p == 0));
        }

        /// A coordinator that moves a user's position, or goes past an arc, is refused.
        #[test]
        fn a_lying_coordinator_is_refused((sites, site, tallies) in arb_federation(), pick in 0usize..1000) {
            let (graphs, _) = split(sites, &site, &tallies, "r2");
            let parts: Vec<Vec<Arc>> = graphs.iter().map(|g| g.arcs.clone()).collect();
            let sol = solve(&parts).unwrap();
            let s = pick % sites;
            let g = &graphs[s];
            prop_assume!(!g.arcs.is_empty());
            let k = pick % g.arcs.len();
            let mut more = sol.flows[s].clone();
            more[k] = more[k].saturating_add(1);
            let over = more[k] > g.arcs[k].2;
            // one more unit on one arc: past its capacity, or a position moves
            prop_assert!(check(g, &more).is_err(), "over capacity: {}", over);
            let mut wrong = sol.flows[s].clone();
            wrong.pop();
            prop_assert!(check(g, &wrong).is_err());
        }
    }

    #[test]
    fn pseudonyms_differ_by_round_and_site_and_hide_the_user() {
        let (a, b) = (b"site a secret".as_slice(), b"site b secret".as_slice());
        assert_eq!(pseudonym(a, "r1", "p1000"), pseudonym(a, "r1", "p1000"));
        assert_ne!(pseudonym(a, "r1", "p1000"), pseudonym(a, "r2", "p1000"));
        assert_ne!(pseudonym(a, "r1", "p1000"), pseudonym(b, "r1", "p1000"));
        assert!(!pseudonym(a, "r1", "p1000").contains("p1000"));
        let d = [7u8; 32];
        assert_eq!(link(&d, "r1", Side::Stock), link(&d, "r1", Side::Stock));
        assert_ne!(link(&d, "r1", Side::Stock), link(&d, "r1", Side::Foil));
        assert_ne!(link(&d, "r1", Side::Stock), link(&d, "r2", Side::Stock));
    }

    #[test]
    fn a_node_two_sites_claim_is_left_out() {
        // sites 0 and 1 both leave and enter "x": no arc through it takes part, the rest does
        let parts = vec![
            vec![
                Arc("a".into(), "x".into(), 5, -1),
                Arc("x".into(), "a".into(), 5, -1),
                Arc("a".into(), "c".into(), 3, -1),
                Arc("c".into(), "a".into(), 3, -1),
            ],
            vec![
                Arc("x".into(), "b".into(), 5, -1),
                Arc("b".into(), "x".into(), 5, -1),
            ],
        ];
        let sol = solve(&parts).unwrap();
        assert_eq!(sol.refused, 4);
        assert_eq!(sol.flows, vec![vec![0, 0, 3, 3], vec![0, 0]]);
    }
}
