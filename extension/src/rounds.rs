//! Clearing rounds across sites (sql/rounds.sql): a member's graph (`_round_graph`) and its
//! check of the flows it gets (`_round_check`), the coordinator's solve (`_round_solve`), over
//! `chips_core::round`.

use std::collections::HashMap;
use std::time::Instant;

use chips_core::liftable::{Half, Policy};
use chips_core::round::{self, Arc, Local, Remote, SiteGraph, Via};
use chips_core::tally::TradingVars;
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::json;

use crate::clearing::read_tallies;
use crate::error::{ok, ChipsError};

fn fail(e: impl std::fmt::Display) -> ! {
    ChipsError::Invalid(format!("clearing round: {e}")).raise()
}

fn field<T>(v: Option<T>) -> T {
    v.unwrap_or_else(|| fail("a row with a null field"))
}

/// A half this site holds of a tally with another site, as read for a round.
struct RemoteRow {
    uuid: pgrx::Uuid,
    remote: Remote,
}

/// The open, settled halves this site holds of tallies with other sites (`only`: of those).
fn read_remotes(only: Option<&[pgrx::Uuid]>, lock: bool) -> Vec<RemoteRow> {
    let sql = format!(
        "SELECT t.tally_uuid, t.side, t.ent, t.net_good, t.target, t.bound, t.reward, t.clutch,
                coalesce((t.hold_terms->>'limit')::bigint, 0),
                coalesce((t.part_sets->>'clutch')::float8, 0), t.digest,
                coalesce((t.part_sets->>'target')::bigint, 0),
                coalesce((t.part_sets->>'bound')::bigint, 0),
                coalesce((t.part_sets->>'reward')::float8, 0),
                coalesce((t.part_terms->>'limit')::bigint, 0)
         FROM chips.tallies t
         WHERE t.part_ent IS NULL AND t.status = 'open' AND t.net_good = t.net_pend
           AND t.digest IS NOT NULL {} ORDER BY t.id {}",
        if only.is_some() {
            "AND t.tally_uuid = ANY ($1)"
        } else {
            ""
        },
        if lock { "FOR NO KEY UPDATE" } else { "" }
    );
    Spi::connect_mut(|c| {
        let args = only.map(|u| vec![u.to_vec().into()]).unwrap_or_default();
        let mut out = Vec::new();
        for r in c.update(sql.as_str(), None, &args)? {
            let side: String = field(r.get(2)?);
            out.push(RemoteRow {
                uuid: field(r.get(1)?),
                remote: Remote {
                    holder: field(r.get(3)?),
                    side: ok(side.parse()),
                    half: Half {
                        position: field(r.get(4)?),
                        vars: TradingVars {
                            target: field(r.get(5)?),
                            bound: field(r.get(6)?),
                            reward: field(r.get(7)?),
                            clutch: field(r.get(8)?),
                        },
                        limit: Some(field(r.get(9)?)),
                        partner_clutch: field(r.get(10)?),
                    },
                    digest: field(r.get(11)?),
                    // the partner's half as this site knows it: its position is minus ours,
                    // its settings come with its setting chits
                    partner: Some(Half {
                        position: field::<i64>(r.get(4)?).checked_neg().unwrap_or(i64::MAX),
                        vars: TradingVars {
                            target: field(r.get(12)?),
                            bound: field(r.get(13)?),
                            reward: field(r.get(14)?),
                            clutch: field(r.get(10)?),
                        },
                        limit: Some(field(r.get(15)?)),
                        partner_clutch: field(r.get(8)?),
                    }),
                },
            });
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .unwrap_or_else(|e| fail(e))
}

/// A member's graph for round `round`: its arcs (users named by pseudonyms keyed by `secret`,
/// tallies with other sites cut at link tokens), kept in `chips.round_parts` for lift `lift`.
/// Returns how many.
#[pg_extern(name = "_round_graph")]
fn round_graph(lift: i64, round: &str, secret: &[u8]) -> i32 {
    let locals = read_tallies(None);
    let locals: Vec<_> = locals.into_iter().filter(|r| r.settled).collect();
    let remotes = read_remotes(None, false);
    let g = round::site_graph(
        secret,
        round,
        &locals
            .iter()
            .map(|r| Local {
                stock: r.stock.clone(),
                foil: r.foil.clone(),
                tally: r.tally,
            })
            .collect::<Vec<_>>(),
        &remotes.iter().map(|r| r.remote.clone()).collect::<Vec<_>>(),
    );
    let n = g.arcs.len();
    let (mut tally, mut via) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for v in &g.via {
        let (u, name) = match *v {
            Via::Local { tally, foil } => (
                locals[tally as usize].uuid,
                if foil { "foil" } else { "stock" },
            ),
            Via::Out { half } => (remotes[half as usize].uuid, "out"),
            Via::In { half } => (remotes[half as usize].uuid, "in"),
        };
        tally.push(u);
        via.push(name);
    }
    let (tails, heads): (Vec<&str>, Vec<&str>) =
        g.arcs.iter().map(|a| (a.0.as_str(), a.1.as_str())).unzip();
    let (caps, costs): (Vec<i64>, Vec<i64>) = g.arcs.iter().map(|a| (a.2, a.3)).unzip();
    Spi::run_with_args(
        "INSERT INTO chips.round_parts (lift_id, k, tally, via, tail, head, cap, cost)
         SELECT $1, p.k - 1, p.t, p.v, p.a, p.b, p.c, p.d
         FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::bigint[])
              WITH ORDINALITY p(t, v, a, b, c, d, k)",
        &[
            lift.into(),
            tally.into(),
            via.into(),
            tails.into(),
            heads.into(),
            caps.into(),
            costs.into(),
        ],
    )
    .unwrap_or_else(|e| fail(e));
    n as i32
}

/// The coordinator's solve of round `round_id` over the arcs its sites sent: the flows go into
/// `chips.round_arcs`, the cost and figures into `chips.rounds`.
#[pg_extern(name = "_round_solve")]
fn round_solve(round_id: i64) {
    let t0 = Instant::now();
    let mut agents: Vec<String> = Vec::new();
    let mut parts: Vec<Vec<Arc>> = Vec::new();
    Spi::connect(|c| {
        for r in c.select(
            "SELECT a.agent, a.tail, a.head, a.cap, a.cost FROM chips.round_arcs a
             JOIN chips.round_sites s ON s.round_id = a.round_id AND s.agent = a.agent
             WHERE a.round_id = $1 AND s.status <> 'absent' ORDER BY a.agent, a.k",
            None,
            &[round_id.into()],
        )? {
            let agent: String = field(r.get(1)?);
            if agents.last() != Some(&agent) {
                agents.push(agent);
                parts.push(Vec::new());
            }
            parts.last_mut().expect("pushed above").push(Arc(
                field(r.get(2)?),
                field(r.get(3)?),
                field(r.get(4)?),
                field(r.get(5)?),
            ));
        }
        Ok::<_, pgrx::spi::Error>(())
    })
    .unwrap_or_else(|e| fail(e));
    let read = t0.elapsed();
    let arcs: usize = parts.iter().map(Vec::len).sum();
    let t1 = Instant::now();
    let sol = ok(round::solve(&parts));
    let solve = t1.elapsed();
    let (mut who, mut ks, mut fs) = (Vec::new(), Vec::new(), Vec::new());
    for (a, flows) in agents.iter().zip(&sol.flows) {
        for (k, &f) in flows.iter().enumerate() {
            if f != 0 {
                who.push(a.as_str());
                ks.push(k as i32);
                fs.push(f);
            }
        }
    }
    let moved = fs.len();
    Spi::run_with_args(
        "UPDATE chips.round_arcs a SET flow = 0 WHERE a.round_id = $1 AND a.flow <> 0",
        &[round_id.into()],
    )
    .unwrap_or_else(|e| fail(e));
    Spi::run_with_args(
        "UPDATE chips.round_arcs a SET flow = f.f
         FROM unnest($2::text[], $3::int[], $4::bigint[]) f(a, k, f)
         WHERE a.round_id = $1 AND a.agent = f.a AND a.k = f.k",
        &[round_id.into(), who.into(), ks.into(), fs.into()],
    )
    .unwrap_or_else(|e| fail(e));
    let stats = json!({
        "sites": agents.len(), "arcs": arcs, "arcs_with_flow": moved, "refused_arcs": sol.refused,
        "read_ms": read.as_secs_f64() * 1e3, "solve_ms": solve.as_secs_f64() * 1e3,
    });
    Spi::run_with_args(
        "UPDATE chips.rounds r SET cost = $2::numeric, stats = r.stats || $3 WHERE r.id = $1",
        &[
            round_id.into(),
            sol.cost.to_string().into(),
            JsonB(stats).into(),
        ],
    )
    .unwrap_or_else(|e| fail(e));
}

/// The tallies between two users here (`uuids`) as they are now (read under lock when
/// `lock`): what their holders can each lift, (stock, foil) capacities, or none when the tally
/// cannot move (not open here, a chit pending, halves that disagree); and their holders, (stock,
/// foil).
type LocalsNow = (
    HashMap<[u8; 16], Option<[i64; 2]>>,
    HashMap<[u8; 16], (String, String)>,
);

fn locals_now(uuids: &[pgrx::Uuid], lock: bool) -> LocalsNow {
    let policy = Policy { max_margin: 0.0 };
    if lock {
        Spi::connect_mut(|c| {
            // lock every half first, in id order (as payments and lifts lock)
            c.update(
                "SELECT 1 FROM chips.tallies x WHERE x.tally_uuid = ANY ($1) ORDER BY x.id FOR NO KEY UPDATE",
                None,
                &[uuids.to_vec().into()],
            )?;
            Ok::<_, pgrx::spi::Error>(())
        })
        .unwrap_or_else(|e| fail(e));
    }
    let mut caps: HashMap<[u8; 16], Option<[i64; 2]>> =
        uuids.iter().map(|u| (*u.as_bytes(), None)).collect();
    let mut names = HashMap::new();
    for r in read_tallies(Some(uuids)) {
        let key = *r.uuid.as_bytes();
        caps.insert(
            key,
            r.settled.then(|| {
                [
                    r.tally.stock_half().capacity(&policy, false),
                    r.tally.foil_half().capacity(&policy, false),
                ]
            }),
        );
        names.insert(key, (r.stock, r.foil));
    }
    (caps, names)
}

/// One move of a member's part, as the check counts it: on a tally between two users here,
/// `units` > 0 lowers the net (the foil holder's arc), < 0 raises it; on a tally with another
/// site, `units` > 0 is what this site's holder gains.
struct Move {
    tally: pgrx::Uuid,
    local: bool,
    units: i64,
}

/// The (tally, direction)s that can carry less now than their moves need.
type Short = std::collections::HashSet<([u8; 16], &'static str)>;

/// The tallies of some moves as they are now (read under lock when `lock`): every direction
/// that can carry less than its move needs, the holders of the tallies between two users here
/// (stock, foil), and the halves held here of the tallies with other sites.
struct Now {
    short: Short,
    names: HashMap<[u8; 16], (String, String)>,
    remotes: HashMap<[u8; 16], RemoteRow>,
}

fn now(moves: &[Move], lock: bool) -> Now {
    let (locals, remotes): (Vec<&Move>, Vec<&Move>) = moves.iter().partition(|m| m.local);
    let local_uuids: Vec<pgrx::Uuid> = locals.iter().map(|m| m.tally).collect();
    let remote_uuids: Vec<pgrx::Uuid> = remotes.iter().map(|m| m.tally).collect();
    let (caps, names) = locals_now(&local_uuids, lock);
    let remotes_now: HashMap<[u8; 16], RemoteRow> = read_remotes(Some(&remote_uuids), lock)
        .into_iter()
        .map(|r| (*r.uuid.as_bytes(), r))
        .collect();
    let policy = Policy { max_margin: 0.0 };
    let mut short = Short::new();
    for m in locals {
        let key = *m.tally.as_bytes();
        // net going down: the foil holder's arc; up: the stock holder's
        let (dir, k) = if m.units > 0 {
            ("foil", 1)
        } else {
            ("stock", 0)
        };
        let cap = caps.get(&key).copied().flatten().map_or(0, |c| c[k]);
        if cap < m.units.abs() {
            short.insert((key, dir));
        }
    }
    for m in remotes {
        let key = *m.tally.as_bytes();
        match remotes_now.get(&key) {
            None => {
                short.insert((key, if m.units > 0 { "out" } else { "in" }));
            }
            Some(r) if m.units > 0 => {
                if r.remote.half.capacity(&policy, false) < m.units {
                    short.insert((key, "out"));
                }
            }
            Some(_) => {}
        }
    }
    Now {
        short,
        names,
        remotes: remotes_now,
    }
}

/// For the coordinator to solve again without the stale part: every arc (of `rows`) of each
/// short direction, at capacity 0, `[[k, 0], ...]`. Not the capacity it has now: a tally that
/// moved since the snapshot is one its holders are paying on, and by the next attempt's
/// reservation it would have moved again (each attempt would be refused in turn until the
/// round runs out of attempts).
fn caps_of(rows: &[PartRow], short: &Short) -> Vec<serde_json::Value> {
    rows.iter()
        .filter(|r| {
            let dir: &'static str = match r.via.as_str() {
                "stock" => "stock",
                "foil" => "foil",
                "out" => "out",
                _ => "in",
            };
            short.contains(&(*r.tally.as_bytes(), dir))
        })
        .map(|r| json!([r.k, 0]))
        .collect()
}

/// One of a member's arcs, as kept.
struct PartRow {
    k: i32,
    tally: pgrx::Uuid,
    via: String,
    flow: i64,
}

/// A member's arcs of lift `lift`'s round (`only`: on those tallies), in order: as kept, and as
/// the check counts them.
fn read_parts(lift: i64, only: Option<&[pgrx::Uuid]>) -> (Vec<PartRow>, Vec<Arc>) {
    let (mut rows, mut arcs) = (Vec::new(), Vec::new());
    Spi::connect(|c| {
        for r in c.select(
            "SELECT k, tally, via, tail, head, cap, cost, flow FROM chips.round_parts
             WHERE lift_id = $1 AND ($2::uuid[] IS NULL OR tally = ANY ($2)) ORDER BY k",
            None,
            &[lift.into(), only.map(<[pgrx::Uuid]>::to_vec).into()],
        )? {
            rows.push(PartRow {
                k: field(r.get(1)?),
                tally: field(r.get(2)?),
                via: field(r.get(3)?),
                flow: field(r.get(8)?),
            });
            arcs.push(Arc(
                field(r.get(4)?),
                field(r.get(5)?),
                field(r.get(6)?),
                field(r.get(7)?),
            ));
        }
        Ok::<_, pgrx::spi::Error>(())
    })
    .unwrap_or_else(|e| fail(e));
    (rows, arcs)
}

/// A member checks the flows it got for lift `lift`'s round (`chips_core::round::check`: within
/// what it offered, no user's net position moving; 22023 when not) and each move against its
/// tallies as they are now (without locking them: the pieces that reserve the moves check
/// again under lock, `_round_caps`). Returns the moves, `{"moves": [{tally, local, flow, by,
/// units, debtor}], "shared": [{tally, units}]}` (`flow`: the units as the check counts them,
/// see `Move`; `by`: the side that issues the lift chit; `shared`: on tallies with other sites,
/// what this site's holder gains), or, when a tally can carry less now, `{"caps": [[k, cap
/// 0], ...]}` for the coordinator to solve again without them (`caps_of`).
#[pg_extern(name = "_round_check")]
fn round_check(lift: i64) -> JsonB {
    let (rows, arcs) = read_parts(lift, None);
    // number the tallies as the check counts them
    let (mut locals, mut remotes): (Vec<pgrx::Uuid>, Vec<pgrx::Uuid>) = (vec![], vec![]);
    let (mut li, mut ri): (HashMap<[u8; 16], u32>, HashMap<[u8; 16], u32>) =
        (HashMap::new(), HashMap::new());
    let mut via = Vec::with_capacity(rows.len());
    for r in &rows {
        let key = *r.tally.as_bytes();
        let local = r.via == "stock" || r.via == "foil";
        let (list, index) = if local {
            (&mut locals, &mut li)
        } else {
            (&mut remotes, &mut ri)
        };
        let i = *index.entry(key).or_insert_with(|| {
            list.push(r.tally);
            (list.len() - 1) as u32
        });
        via.push(match r.via.as_str() {
            "stock" => Via::Local {
                tally: i,
                foil: false,
            },
            "foil" => Via::Local {
                tally: i,
                foil: true,
            },
            "out" => Via::Out { half: i },
            _ => Via::In { half: i },
        });
    }
    let flows: Vec<i64> = rows.iter().map(|r| r.flow).collect();
    let part = ok(round::check(&SiteGraph { arcs, via }, &flows));
    let moves: Vec<Move> = part
        .locals
        .iter()
        .map(|&(i, units)| Move {
            tally: locals[i as usize],
            local: true,
            units,
        })
        .chain(part.remotes.iter().map(|&(i, units)| Move {
            tally: remotes[i as usize],
            local: false,
            units,
        }))
        .collect();
    let now = now(&moves, false);
    if !now.short.is_empty() {
        return JsonB(json!({ "caps": caps_of(&rows, &now.short) }));
    }
    let (mut out, mut shared) = (Vec::new(), Vec::new());
    for m in &moves {
        let key = *m.tally.as_bytes();
        let tally = crate::chit::uuid_text(&m.tally);
        if m.local {
            let (stock, foil) = now.names.get(&key).cloned().unwrap_or_default();
            // the side whose balance goes down issues the lift chit
            let (by, debtor) = if m.units > 0 {
                ("stock", foil)
            } else {
                ("foil", stock)
            };
            out.push(
                json!({"tally": tally, "local": true, "flow": m.units, "by": by,
                            "units": m.units.abs(), "debtor": debtor}),
            );
        } else if let Some(r) = now.remotes.get(&key) {
            let side = r.remote.side;
            // the holder gains: the partner's side issues; the holder loses: its own side does
            let by = if m.units > 0 { side.other() } else { side };
            out.push(json!({"tally": tally, "local": false, "flow": m.units, "by": by.as_str(),
                            "units": m.units.abs(),
                            "debtor": if m.units > 0 { r.remote.holder.clone() } else { String::new() }}));
            shared.push(json!({"tally": tally, "units": m.units}));
        }
    }
    JsonB(json!({ "moves": out, "shared": shared }))
}

/// A piece of a member's part, checked again before it is reserved: the moves of lift `lift`
/// (`chips.round_moves`) on `tallies`, against those tallies as they are now (read under lock
/// when `lock`: the halves stay locked until the transaction ends). Returns `[]` when each can
/// still carry its move, or `[[k, 0], ...]` for the coordinator to solve again without them.
#[pg_extern(name = "_round_caps")]
fn round_caps(lift: i64, tallies: Vec<pgrx::Uuid>, lock: bool) -> JsonB {
    let mut moves = Vec::new();
    Spi::connect(|c| {
        for r in c.select(
            "SELECT tally, local, flow FROM chips.round_moves
             WHERE lift_id = $1 AND tally = ANY ($2) ORDER BY n",
            None,
            &[lift.into(), tallies.clone().into()],
        )? {
            moves.push(Move {
                tally: field(r.get(1)?),
                local: field(r.get(2)?),
                units: field(r.get(3)?),
            });
        }
        Ok::<_, pgrx::spi::Error>(())
    })
    .unwrap_or_else(|e| fail(e));
    let now = now(&moves, lock);
    if now.short.is_empty() {
        return JsonB(json!([]));
    }
    JsonB(json!(caps_of(
        &read_parts(lift, Some(&tallies)).0,
        &now.short
    )))
}

/// The uuid of the lift chit an attempt of a round writes on a tally: the same at both
/// partners' sites.
#[pg_extern(immutable, parallel_safe, name = "_round_chit_uuid")]
fn round_chit_uuid(round: pgrx::Uuid, attempt: i32, tally: pgrx::Uuid) -> pgrx::Uuid {
    let attempt = u32::try_from(attempt).unwrap_or_else(|_| fail("a negative attempt"));
    pgrx::Uuid::from_bytes(round::chit_uuid(
        round.as_bytes(),
        attempt,
        tally.as_bytes(),
    ))
}
