//! Continuous clearing: a tick that clears only where something changed since the last one.
//!
//! After a pass at the optimum no circle is left to lift, so any circle a later tick can find
//! runs through a tally that changed since (a new or larger debt, a settings change, a pending
//! chit settled). The tick keeps the site's liftable graph in this backend (read once, then kept
//! up to date from the chits written since), finds, for every changed tally and direction with
//! capacity `u -> v`, the nodes on some circle through it (reached from `v` and reaching `u`),
//! and solves and writes only the tallies among those nodes, with the same planner and writer as
//! a pass (`crate::clearing`). Within that set the result is the optimum of the whole graph: a
//! path between two of its nodes through any other node would put that node on such a circle.
//!
//! What changed is read from the chits table by id. Ids are taken when a chit is written but
//! become visible when its transaction commits, so every tick reads again the ids of the last
//! [`WINDOW`] (and skips those it has taken into account): a transaction that commits its chits
//! later than that after writing them is left to the next full pass (`clearing_run`).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use chips_core::clearing::LiftOptions;
use chips_core::liftable::{self, Half, Policy, Tally};
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
        match self.by_uuid.get(row.uuid.as_bytes()) {
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
                t
            }
        }
    }

    /// The half of tally `t` that node `x` holds.
    fn half(&self, t: u32, x: u32) -> Half {
        let tally = &self.rows[t as usize].tally;
        if tally.stock == x {
            tally.stock_half()
        } else {
            tally.foil_half()
        }
    }

    /// Whether node `x` can lift along tally `t` now (towards the other holder).
    fn arc(&self, t: u32, x: u32) -> bool {
        self.rows[t as usize].settled && self.half(t, x).capacity(&self.policy, true) > 0
    }

    fn other(&self, t: u32, x: u32) -> u32 {
        let tally = &self.rows[t as usize].tally;
        if tally.stock == x {
            tally.foil
        } else {
            tally.stock
        }
    }

    /// Nodes reached from `from` along arcs with capacity (`forward`), or reaching it
    /// (`!forward`), within `within` when given.
    fn reach(&self, from: u32, forward: bool, within: Option<&HashSet<u32>>) -> HashSet<u32> {
        let mut seen = HashSet::from([from]);
        let mut queue = vec![from];
        while let Some(x) = queue.pop() {
            for &t in &self.incident[x as usize] {
                let y = self.other(t, x);
                let usable = if forward {
                    self.arc(t, x)
                } else {
                    self.arc(t, y)
                };
                if usable && within.is_none_or(|w| w.contains(&y)) && seen.insert(y) {
                    queue.push(y);
                }
            }
        }
        seen
    }

    /// The nodes on some circle through a changed tally.
    fn around(&self, changed: &HashSet<u32>) -> HashSet<u32> {
        let mut out = HashSet::new();
        for &t in changed {
            let tally = self.rows[t as usize].tally;
            for (u, v) in [(tally.stock, tally.foil), (tally.foil, tally.stock)] {
                if !self.arc(t, u) || (out.contains(&u) && out.contains(&v)) {
                    continue;
                }
                let ahead = self.reach(v, true, None);
                if ahead.contains(&u) {
                    out.extend(self.reach(u, false, Some(&ahead)));
                }
            }
        }
        out
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
        seen,
        marks: VecDeque::new(),
        done: HashSet::new(),
    };
    for row in with_work_mem(|| read_tallies(None)) {
        g.put(row);
    }
    g
}

/// The tallies whose chits changed since the last tick, read again as they are now.
fn refresh(g: &mut Graph) -> HashSet<u32> {
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
        return HashSet::new();
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
    // a tally not read back is no longer open: nothing may lift along it
    for u in &uuids {
        if let Some(&t) = g.by_uuid.get(u.as_bytes()) {
            g.rows[t as usize].settled = false;
        }
    }
    let mut changed = HashSet::new();
    for row in read_tallies(Some(&uuids)) {
        changed.insert(g.put(row));
    }
    changed
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
            let changed = refresh(graph);
            if changed.is_empty() {
                GRAPH.with(|c| *c.borrow_mut() = g);
                return TableIterator::new(Vec::new());
            }
            graph.around(&changed)
        }
        _ => {
            let graph = build(policy);
            let all = (0..graph.names.len() as u32).collect();
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
    let mut nodes: Vec<u32> = around.into_iter().collect();
    nodes.sort_unstable();
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
