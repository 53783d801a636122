//! Continuous clearing: a tick that clears only where something changed since the last one.
//!
//! After a pass at the optimum no circle is left to lift, so any circle a later tick can find
//! runs along an arc whose capacity grew since (a new or larger debt, a settings change, a
//! pending chit settled; a debt paid back only shrinks one). The tick keeps the site's liftable
//! graph in this backend (read once, then kept up to date from the chits written since), takes
//! the arcs `u -> v` that grew, the nodes reached from their heads and reaching their tails (so
//! every circle through one of them), and solves and writes only the tallies among those
//! nodes, with the same planner and writer as a pass (`crate::clearing`). Within that set the
//! result is the optimum of the whole graph: a path between two of its nodes through any other
//! node would put that node in the set too.
//!
//! What changed is read from the chits table by id. Ids are taken when a chit is written but
//! become visible when its transaction commits, so every tick reads again the ids of the last
//! [`WINDOW`] (and skips those it has taken into account): a transaction that commits its chits
//! later than that after writing them is left to the next full pass (`clearing_run`).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use chips_core::clearing::LiftOptions;
use chips_core::liftable::{self, Policy, Tally};
use chips_core::pass::Pass;
use pgrx::prelude::*;

use crate::clearing::{execute_pass, read_tallies, with_work_mem, Ctx, Row};
use crate::error::{ok, ChipsError};

/// How long a tick keeps reading the ids of chits it has seen, for late commits.
const WINDOW: Duration = Duration::from_secs(2);

/// The site's liftable graph as this backend knows it.
struct Graph {
    policy: Policy,
    rows: Vec<Row>,
    /// What each tally's stock holder and foil holder can lift along it now (0 unless settled),
    /// and which of their segments (reduce, overshoot, costed: bits 0, 1, 2) have capacity.
    caps: Vec<[i64; 2]>,
    segments: Vec<[u8; 2]>,
    by_uuid: HashMap<[u8; 16], u32>,
    by_half: HashMap<i64, u32>,
    ids: HashMap<String, u32>,
    names: Vec<String>,
    /// The tallies at each node.
    incident: Vec<Vec<u32>>,
    /// The highest chit id read, and at each tick of the last WINDOW the highest then.
    seen: i64,
    marks: VecDeque<(Instant, i64)>,
    /// Chits of the window already taken into account.
    done: HashSet<i64>,
}

thread_local! {
    static GRAPH: RefCell<Option<Graph>> = const { RefCell::new(None) };
}

impl Graph {
    fn node(&mut self, ent: &str) -> u32 {
        if let Some(&v) = self.ids.get(ent) {
            return v;
        }
        let v = self.names.len() as u32;
        self.ids.insert(ent.to_string(), v);
        self.names.push(ent.to_string());
        self.incident.push(Vec::new());
        v
    }

    /// Puts a tally as read now in the graph (new, or replacing what was known of it).
    fn put(&mut self, mut row: Row) -> u32 {
        row.tally.stock = self.node(&row.stock);
        row.tally.foil = self.node(&row.foil);
        let t = match self.by_uuid.get(row.uuid.as_bytes()) {
            Some(&t) => {
                self.rows[t as usize] = row;
                t
            }
            None => {
                let t = self.rows.len() as u32;
                self.by_uuid.insert(*row.uuid.as_bytes(), t);
                self.by_half.insert(row.halves[0], t);
                self.by_half.insert(row.halves[1], t);
                self.incident[row.tally.stock as usize].push(t);
                self.incident[row.tally.foil as usize].push(t);
                self.rows.push(row);
                self.caps.push([0, 0]);
                self.segments.push([0, 0]);
                t
            }
        };
        self.recap(t);
        t
    }

    /// Marks tally `t` as one no lift may use (not open any more, or not read back).
    fn shut(&mut self, t: u32) {
        self.rows[t as usize].settled = false;
        self.recap(t);
    }

    /// Computes the capacities of tally `t` again.
    fn recap(&mut self, t: u32) {
        let row = &self.rows[t as usize];
        let (mut caps, mut segs) = ([0i64; 2], [0u8; 2]);
        if row.settled {
            for (k, half) in [row.tally.stock_half(), row.tally.foil_half()]
                .iter()
                .enumerate()
            {
                for (seg, cap, _) in half.segments(&self.policy) {
                    caps[k] = caps[k].saturating_add(cap);
                    segs[k] |= 1 << seg as u8;
                }
            }
        }
        self.caps[t as usize] = caps;
        self.segments[t as usize] = segs;
    }

    /// What node `x` can lift along tally `t` now (towards the other holder).
    fn capacity(&self, t: u32, x: u32) -> i64 {
        let k = usize::from(self.rows[t as usize].tally.stock != x);
        self.caps[t as usize][k]
    }

    fn other(&self, t: u32, x: u32) -> u32 {
        let tally = &self.rows[t as usize].tally;
        if tally.stock == x {
            tally.foil
        } else {
            tally.stock
        }
    }

    /// The arcs of node `x`: to the nodes it can lift to (`forward`), or from the nodes that
    /// can lift to it.
    fn next(&self, x: u32, forward: bool) -> impl Iterator<Item = u32> + '_ {
        self.incident[x as usize].iter().filter_map(move |&t| {
            let y = self.other(t, x);
            let cap = if forward {
                self.capacity(t, x)
            } else {
                self.capacity(t, y)
            };
            (cap > 0).then_some(y)
        })
    }

    /// The nodes reached from the head of an arc that grew and reaching its tail: every circle
    /// the growth made possible is among them. A search forward from the heads and one backward
    /// from the tails take turns, a node at a time; when the first is complete, the other is run
    /// within what it found. In a graph a pass has cleared (no circle left) the cheaper side
    /// usually ends soon, so a tick costs about the smaller of the two searches.
    fn around(&self, grown: &[(u32, u32)]) -> Vec<u32> {
        if grown.is_empty() {
            return Vec::new();
        }
        let heads: Vec<u32> = grown.iter().map(|&(_, v)| v).collect();
        let tails: Vec<u32> = grown.iter().map(|&(u, _)| u).collect();
        let mut ahead = Search::new(self.names.len(), &heads);
        let mut behind = Search::new(self.names.len(), &tails);
        let (done, forward) = loop {
            if !ahead.step(|x| self.next(x, true), None) {
                break (ahead, true);
            }
            if !behind.step(|x| self.next(x, false), None) {
                break (behind, false);
            }
        };
        // The other way, within what the complete search found.
        let starts: Vec<u32> = if forward { &tails } else { &heads }
            .iter()
            .copied()
            .filter(|&x| done.seen[x as usize])
            .collect();
        if starts.is_empty() {
            return Vec::new();
        }
        let mut rest = Search::new(self.names.len(), &starts);
        while rest.step(|x| self.next(x, !forward), Some(&done.seen)) {}
        (0..self.names.len() as u32)
            .filter(|&x| rest.seen[x as usize])
            .collect()
    }
}

/// A graph search that advances a node at a time.
struct Search {
    seen: Vec<bool>,
    queue: Vec<u32>,
}

impl Search {
    fn new(n: usize, from: &[u32]) -> Search {
        let mut seen = vec![false; n];
        let mut queue = Vec::with_capacity(from.len());
        for &x in from {
            if !seen[x as usize] {
                seen[x as usize] = true;
                queue.push(x);
            }
        }
        Search { seen, queue }
    }

    /// Expands one node (over the arcs `next` gives, within `within` when given); false when
    /// nothing was left to expand.
    fn step<I: Iterator<Item = u32>>(
        &mut self,
        next: impl Fn(u32) -> I,
        within: Option<&[bool]>,
    ) -> bool {
        let Some(x) = self.queue.pop() else {
            return false;
        };
        for y in next(x) {
            if !self.seen[y as usize] && within.is_none_or(|w| w[y as usize]) {
                self.seen[y as usize] = true;
                self.queue.push(y);
            }
        }
        true
    }
}

/// The highest chit id there is now.
fn last_chit() -> i64 {
    Spi::get_one::<i64>("SELECT coalesce(max(id), 0) FROM chips.chits")
        .ok()
        .flatten()
        .unwrap_or(0)
}

/// Reads the whole graph (the first tick of a session, or after the policy changed).
fn build(policy: Policy) -> Graph {
    let seen = last_chit();
    let mut g = Graph {
        policy,
        rows: Vec::new(),
        by_uuid: HashMap::new(),
        by_half: HashMap::new(),
        ids: HashMap::new(),
        names: Vec::new(),
        incident: Vec::new(),
        caps: Vec::new(),
        segments: Vec::new(),
        seen,
        marks: VecDeque::new(),
        done: HashSet::new(),
    };
    for row in with_work_mem(|| read_tallies(None)) {
        g.put(row);
    }
    g
}

/// Reads again the tallies whose chits changed since the last tick, and returns the arcs
/// (tail, head) that gained a segment (a reduce, overshoot or costed segment had no capacity
/// and has some now): only those can make a new circle. More of a segment that had capacity
/// adds no arc the last optimum did not see, and a debt paid back only shrinks one.
fn refresh(g: &mut Graph) -> Vec<(u32, u32)> {
    let now = Instant::now();
    while g.marks.front().is_some_and(|(at, _)| now - *at > WINDOW) {
        g.marks.pop_front();
    }
    let low = g.marks.front().map_or(g.seen, |m| m.1);
    let mut halves: HashSet<i64> = HashSet::new();
    let mut top = g.seen;
    Spi::connect(|c| {
        for r in c.select(
            "SELECT c.id, c.tally_id FROM chips.chits c WHERE c.id > $1",
            None,
            &[low.into()],
        )? {
            let (Some(id), Some(half)) = (r.get::<i64>(1)?, r.get::<i64>(2)?) else {
                continue;
            };
            top = top.max(id);
            if g.done.insert(id) {
                halves.insert(half);
            }
        }
        Ok::<_, pgrx::spi::Error>(())
    })
    .unwrap_or_else(|e| ChipsError::Invalid(format!("continuous clearing: {e}")).raise());
    g.seen = top;
    g.marks.push_back((now, top));
    let oldest = g.marks.front().map_or(top, |m| m.1);
    g.done.retain(|&id| id > oldest);
    if halves.is_empty() {
        return Vec::new();
    }
    // tallies this graph knows, and the uuids of those it does not (opened since)
    let mut uuids: Vec<pgrx::Uuid> = Vec::new();
    let mut unknown: Vec<i64> = Vec::new();
    for h in halves {
        match g.by_half.get(&h) {
            Some(&t) => uuids.push(g.rows[t as usize].uuid),
            None => unknown.push(h),
        }
    }
    if !unknown.is_empty() {
        Spi::connect(|c| {
            for r in c.select(
                "SELECT DISTINCT x.tally_uuid FROM chips.tallies x WHERE x.id = ANY ($1)",
                None,
                &[unknown.into()],
            )? {
                if let Some(u) = r.get::<pgrx::Uuid>(1)? {
                    uuids.push(u);
                }
            }
            Ok::<_, pgrx::spi::Error>(())
        })
        .unwrap_or_else(|e| ChipsError::Invalid(format!("continuous clearing: {e}")).raise());
    }
    uuids.sort_unstable_by_key(|u| *u.as_bytes());
    uuids.dedup_by_key(|u| *u.as_bytes());
    // what each could carry before; a tally not read back is no longer open: nothing may lift
    // along it
    let mut before: HashMap<u32, [u8; 2]> = HashMap::new();
    for u in &uuids {
        if let Some(&t) = g.by_uuid.get(u.as_bytes()) {
            before.insert(t, g.segments[t as usize]);
            g.shut(t);
        }
    }
    let mut grown = Vec::new();
    for row in read_tallies(Some(&uuids)) {
        let t = g.put(row);
        let tally = g.rows[t as usize].tally;
        let was = before.get(&t).copied().unwrap_or([0, 0]);
        for (k, (u, v)) in [(tally.stock, tally.foil), (tally.foil, tally.stock)]
            .into_iter()
            .enumerate()
        {
            if g.segments[t as usize][k] & !was[k] != 0 {
                grown.push((u, v));
            }
        }
    }
    grown
}

/// One tick of continuous clearing with the site's settings (`min_units`, `max_len`): lifts
/// the circles through the tallies that changed since the last tick of this session (the first
/// one reads the whole site and clears it all), as one lift written like a pass's. One row per
/// circle, as `chips._clearing_pass` returns them; none when nothing changed.
#[pg_extern(security_definer, name = "_clearing_continuous")]
#[search_path(@extschema@, pg_catalog, pg_temp)]
#[allow(clippy::type_complexity)]
fn clearing_continuous(
    min_units: Option<i64>,
    max_len: Option<i32>,
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
    if min_units < 1 || max_len < 0 {
        ChipsError::Invalid("min_units must be >= 1 and max_len >= 0".into()).raise();
    }
    let max_margin = Spi::get_one::<f64>("SELECT max_margin FROM chips.clearing_settings")
        .ok()
        .flatten()
        .unwrap_or(0.0);
    let policy = Policy { max_margin };
    let mut g = GRAPH.with(|g| g.borrow_mut().take());
    let around = match g.as_mut() {
        Some(graph) if graph.policy == policy => {
            let grown = refresh(graph);
            let around = graph.around(&grown);
            if around.is_empty() {
                GRAPH.with(|c| *c.borrow_mut() = g);
                return TableIterator::new(Vec::new());
            }
            around
        }
        _ => {
            let graph = build(policy);
            let all: Vec<u32> = (0..graph.names.len() as u32).collect();
            g = Some(graph);
            all
        }
    };
    let graph = g.as_ref().expect("built or kept above");
    // the tallies among those nodes, numbered afresh
    let mut local: HashMap<u32, u32> = HashMap::new();
    let mut names: Vec<String> = Vec::new();
    let mut rows: Vec<Row> = Vec::new();
    let mut picked: HashSet<u32> = HashSet::new();
    let nodes = around;
    for &x in &nodes {
        for &t in &graph.incident[x as usize] {
            let row = &graph.rows[t as usize];
            let y = graph.other(t, x);
            if !row.settled || nodes.binary_search(&y).is_err() || !picked.insert(t) {
                continue;
            }
            let mut row = row.clone();
            for end in [row.tally.stock, row.tally.foil] {
                local.entry(end).or_insert_with(|| {
                    names.push(graph.names[end as usize].clone());
                    (names.len() - 1) as u32
                });
            }
            row.tally.stock = local[&row.tally.stock];
            row.tally.foil = local[&row.tally.foil];
            rows.push(row);
        }
    }
    let tallies: Vec<Tally> = rows.iter().map(|r| r.tally).collect();
    let options = LiftOptions {
        min_units,
        max_len: if max_len == 0 {
            usize::MAX
        } else {
            max_len as usize
        },
        time_budget: None,
    };
    let plan = ok(liftable::clear(names.len(), &tallies, &policy, options));
    let pass = ok(Pass::from_lifts(&plan.lifts));
    GRAPH.with(|c| *c.borrow_mut() = g);
    if pass.circles.is_empty() {
        return TableIterator::new(Vec::new());
    }
    let ctx = Ctx {
        rows,
        names,
        policy,
        min_units,
        through: None,
    };
    TableIterator::new(execute_pass(pass, &ctx))
}

/// Forgets this session's graph: the next tick reads the whole site again.
#[pg_extern(security_definer, name = "_clearing_forget")]
#[search_path(@extschema@, pg_catalog, pg_temp)]
fn clearing_forget() {
    GRAPH.with(|g| g.borrow_mut().take());
}
