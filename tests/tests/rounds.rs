//! Clearing rounds across sites (sql/rounds.sql), relayed by the test: the coordinator solves
//! the whole federation's optimum from pseudonymous graphs; every site checks its part, and every
//! round ends good everywhere or void everywhere, both halves of every tally agreeing.

use std::collections::HashMap;

use chips_core::clearing::LiftOptions;
use chips_core::liftable::{self, Policy, Tally};
use chips_core::tally::TradingVars;
use chips_tests::load::{load, Obl};
use chips_tests::{net_positions, relay_all, Cluster, Site, User};
use serde_json::Value;
use uuid::Uuid;

/// A stock half as read: (holder, balance, trading variables, limit); a foil half: the same
/// without the balance.
type StockHalf = (String, i64, TradingVars, i64);
type FoilHalf = (String, TradingVars, i64);
/// A chain: (index, chit, hash) per block.
type Chain = Vec<(i32, Uuid, Vec<u8>)>;
/// A lie told to a site: what it does to the site's flows.
type Lie = Box<dyn Fn(&mut Vec<Value>)>;

/// Three sites (or as many as named; the first coordinates and takes part), two users each.
struct Fed {
    sites: Vec<Site>,
    users: Vec<Vec<User>>,
}

impl Fed {
    async fn new(tag: &str, port: u16) -> Fed {
        Fed::named(tag, port, &["a", "b", "c"]).await
    }

    async fn named(tag: &str, port: u16, names: &[&str]) -> Fed {
        let cl = Cluster::from_env();
        let mut sites = Vec::new();
        let mut users = Vec::new();
        for (k, name) in names.iter().enumerate() {
            let s = cl
                .site(&format!("t_round_{tag}_{name}"), port + k as u16)
                .await
                .unwrap();
            let mut us = Vec::new();
            for i in 0..2 {
                let n = format!("{name}{i}");
                us.push(s.user(&n, &n).await.unwrap());
            }
            sites.push(s);
            users.push(us);
        }
        let fed = Fed { sites, users };
        // the first coordinates; every site takes part
        fed.sites[0]
            .admin
            .execute(
                "SELECT * FROM chips.round_configure(coordinate => true)",
                &[],
            )
            .await
            .unwrap();
        let coordinator = format!("{}@127.0.0.1:{port}", fed.sites[0].agent_id());
        for s in &fed.sites {
            s.admin
                .execute(
                    "SELECT * FROM chips.round_configure(coordinator => $1)",
                    &[&coordinator],
                )
                .await
                .unwrap();
        }
        fed.relay().await;
        let members: i64 = fed.sites[0]
            .admin
            .query_one("SELECT count(*) FROM chips.round_members", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(members, names.len() as i64);
        fed
    }

    fn all(&self) -> Vec<&Site> {
        self.sites.iter().collect()
    }

    async fn relay(&self) {
        relay_all(&self.all()).await.unwrap();
    }

    /// `debtor` owes `creditor` `units` on a new tally.
    async fn owe(&self, creditor: (usize, usize), debtor: (usize, usize), units: i64) -> Uuid {
        let (c, d) = (
            &self.users[creditor.0][creditor.1],
            &self.users[debtor.0][debtor.1],
        );
        let t = c.open_with(d, 1_000_000, &self.all()).await.unwrap();
        d.pay(t, units, "").await.unwrap();
        self.relay().await;
        t
    }

    /// Two sites (the federation's, named from `port`): `n` pairs of firms, firm `10_000 + i` at
    /// the first owing firm `20_000 + i` at the second `owed(i)`, which owes it 100 back, loaded
    /// straight into both halves.
    async fn pairs(&self, port: u16, n: u32, owed: impl Fn(u32) -> i64) {
        let mut obls = Vec::new();
        for i in 0..n {
            let (a, b) = (10_000 + i, 20_000 + i);
            obls.push(Obl {
                debtor: a,
                creditor: b,
                amount: owed(i),
            });
            obls.push(Obl {
                debtor: b,
                creditor: a,
                amount: 100,
            });
        }
        load(&self.sites, &[port, port + 1], &obls, |f| {
            usize::from(f >= 20_000)
        })
        .await
        .unwrap();
    }

    /// What all debtors owe, over every tally (its stock half).
    async fn debt(&self) -> i64 {
        let mut total = 0;
        for s in &self.sites {
            let d: i64 = s
                .admin
                .query_one(
                    "SELECT coalesce(sum(abs(net_good)), 0)::bigint FROM chips.tallies WHERE side = 'stock'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            total += d;
        }
        total
    }

    /// What the solver clears on the whole federation's tallies at once.
    async fn central_optimum(&self) -> i128 {
        // both halves of every tally, wherever they are
        let mut halves: HashMap<Uuid, (Option<StockHalf>, Option<FoilHalf>)> = HashMap::new();
        for (k, s) in self.sites.iter().enumerate() {
            for r in s
                .admin
                .query(
                    "SELECT tally_uuid, side, ent, net_good, target, bound, reward, clutch,
                            coalesce((hold_terms->>'limit')::bigint, 0)
                     FROM chips.tallies WHERE status = 'open'",
                    &[],
                )
                .await
                .unwrap()
            {
                let vars = TradingVars {
                    target: r.get(4),
                    bound: r.get(5),
                    reward: r.get(6),
                    clutch: r.get(7),
                };
                let e = halves.entry(r.get(0)).or_default();
                let who = format!("{k}:{}", r.get::<_, String>(2));
                if r.get::<_, String>(1) == "stock" {
                    e.0 = Some((who, r.get(3), vars, r.get(8)));
                } else {
                    e.1 = Some((who, vars, r.get(8)));
                }
            }
        }
        let mut ids: HashMap<String, u32> = HashMap::new();
        let mut tallies = Vec::new();
        for (s, f) in halves.into_values() {
            let (Some((sw, net, sv, sl)), Some((fw, fv, fl))) = (s, f) else {
                continue;
            };
            let mut id = |w: String| {
                let n = ids.len() as u32;
                *ids.entry(w).or_insert(n)
            };
            tallies.push(Tally {
                stock: id(sw),
                foil: id(fw),
                net,
                stock_vars: sv,
                foil_vars: fv,
                stock_limit: Some(sl),
                foil_limit: Some(fl),
            });
        }
        liftable::clear(
            ids.len(),
            &tallies,
            &Policy::default(),
            LiftOptions::default(),
        )
        .unwrap()
        .optimum
    }

    /// Opens a round at the coordinator (nothing relayed yet).
    async fn open(&self) -> Uuid {
        self.sites[0]
            .admin
            .query_one("SELECT chips.round_open()", &[])
            .await
            .unwrap()
            .get(0)
    }

    /// Opens a round at the coordinator and relays until nothing moves.
    async fn round(&self) -> Uuid {
        let r = self.open().await;
        self.relay().await;
        r
    }

    /// The round's status at the coordinator, and its attempt.
    async fn coordinated(&self, r: Uuid) -> (String, i32, Option<String>) {
        let row = self.sites[0]
            .admin
            .query_one(
                "SELECT status, attempt, reason FROM chips.rounds WHERE round_uuid = $1",
                &[&r],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    }

    /// The round's lift at each site: its status.
    async fn lifts(&self, r: Uuid) -> Vec<Option<String>> {
        let mut out = Vec::new();
        for s in &self.sites {
            out.push(
                s.admin
                    .query_opt("SELECT status FROM chips.lifts WHERE lift_uuid = $1", &[&r])
                    .await
                    .unwrap()
                    .map(|x| x.get(0)),
            );
        }
        out
    }

    /// Every tally audits clean, and the two halves of every tally between two sites hold the
    /// same chain; nothing is pending.
    async fn check_sound(&self) {
        self.check_halves(true).await;
    }

    /// Both halves of every tally between two sites hold the same chain, nothing is pending;
    /// and with `audit`, every tally audits clean (loaded tallies carry no signatures).
    async fn check_halves(&self, audit: bool) {
        let mut chains: HashMap<Uuid, Vec<Chain>> = HashMap::new();
        for s in &self.sites {
            for r in s
                .admin
                .query(
                    "SELECT tally_uuid, side FROM chips.tallies WHERE status = 'open'",
                    &[],
                )
                .await
                .unwrap()
            {
                let (t, side): (Uuid, String) = (r.get(0), r.get(1));
                assert!(
                    !audit || s.audit_failures(t).await.unwrap().is_empty(),
                    "{} {t} {side}",
                    s.db
                );
                chains
                    .entry(t)
                    .or_default()
                    .push(s.chain(t, &side).await.unwrap());
            }
            let pend: i64 = s
                .admin
                .query_one(
                    "SELECT count(*) FROM chips.chits WHERE status = 'pend'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(pend, 0, "nothing pending at {}", s.db);
        }
        for (t, c) in chains {
            assert_eq!(c.len(), 2, "tally {t} has two halves");
            assert_eq!(c[0], c[1], "both halves of {t} hold the same chain");
        }
    }

    async fn positions(&self) -> Vec<Vec<(String, i64)>> {
        let mut out = Vec::new();
        for s in &self.sites {
            out.push(net_positions(&s.admin).await);
        }
        out
    }

    /// A round opened now ends good and lowers the debt, `debt` before it, by `cleared`.
    async fn round_clears(&self, debt: i64, cleared: i64) {
        let r = self.round().await;
        assert_eq!(self.coordinated(r).await.0, "good");
        assert_eq!(debt - self.debt().await, cleared);
    }

    /// Round `r` ended void at the coordinator (returns its reason) and at every site, and
    /// nothing moved: the debt and every position as they were, every tally sound.
    async fn void_and_unchanged(
        &self,
        r: Uuid,
        debt: i64,
        positions: &[Vec<(String, i64)>],
        what: &str,
    ) -> Option<String> {
        let (status, _, reason) = self.coordinated(r).await;
        assert_eq!(status, "void", "{what}: {reason:?}");
        assert_eq!(
            self.lifts(r).await,
            vec![Some("void".to_string()); self.sites.len()],
            "{what}"
        );
        assert_eq!(self.debt().await, debt, "{what}: nothing cleared");
        assert_eq!(self.positions().await, positions, "{what}");
        self.check_sound().await;
        reason
    }

    /// Two circles through sites sharing a0 -> b0: a0 b0 c0 (4) and a0 b0 b1 c1 (5), with a0
    /// owing b0 6. The optimum lifts 1 round the first and 5 round the second: 23 units cleared,
    /// which no site can see alone (b0 -> b1 is b's only local tally).
    async fn two_circles(&self) -> [Uuid; 6] {
        [
            self.owe((1, 0), (0, 0), 6_000).await, // a0 owes b0 6
            self.owe((2, 0), (1, 0), 4_000).await, // b0 owes c0 4
            self.owe((0, 0), (2, 0), 4_000).await, // c0 owes a0 4
            self.owe((1, 1), (1, 0), 5_000).await, // b0 owes b1 5 (local to b)
            self.owe((2, 1), (1, 1), 5_000).await, // b1 owes c1 5
            self.owe((0, 0), (2, 1), 5_000).await, // c1 owes a0 5
        ]
    }
}

#[tokio::test]
async fn a_round_clears_the_whole_federation_optimum() {
    let fed = Fed::new("opt", 47300).await;
    fed.two_circles().await;
    let (debt, positions) = (fed.debt().await, fed.positions().await);
    let optimum = fed.central_optimum().await;
    assert_eq!(optimum, 23_000);
    let r = fed.round().await;
    assert_eq!(fed.coordinated(r).await, ("good".into(), 1, None));
    assert_eq!(fed.lifts(r).await, vec![Some("good".to_string()); 3]);
    assert_eq!(i128::from(debt - fed.debt().await), optimum);
    assert_eq!(fed.positions().await, positions, "no net position moved");
    fed.check_sound().await;
    // nothing left to clear
    assert_eq!(fed.central_optimum().await, 0);
}

/// Two sites that share 520 tallies, each pair of firms owing each other across: the round
/// clears all of it, and each site's moves on the tallies they share (more than one message
/// holds) reach the other in two parts, both checked before either site is ready.
#[tokio::test]
async fn a_round_agrees_hundreds_of_shared_tallies_in_parts() {
    let fed = Fed::named("parts", 47360, &["a", "b"]).await;
    fed.pairs(47360, 260, |i| 100 + i64::from(i)).await;
    let (debt, positions) = (fed.debt().await, fed.positions().await);
    assert_eq!(debt, 260 * 100 + (0..260).map(|i| 100 + i).sum::<i64>());
    let r = fed.round().await;
    assert_eq!(fed.coordinated(r).await, ("good".into(), 1, None));
    assert_eq!(fed.lifts(r).await, vec![Some("good".to_string()); 2]);
    assert_eq!(
        debt - fed.debt().await,
        2 * 260 * 100,
        "every pair clears 100 both ways"
    );
    assert_eq!(fed.positions().await, positions, "no net position moved");
    for s in &fed.sites {
        let parts: Vec<(i32, Vec<i32>, i64)> = s
            .admin
            .query(
                "SELECT a.parts, a.got, jsonb_array_length(a.moves)::bigint FROM chips.round_agrees a
                 JOIN chips.lifts l ON l.id = a.lift_id WHERE l.lift_uuid = $1",
                &[&r],
            )
            .await
            .unwrap()
            .iter()
            .map(|x| (x.get(0), x.get(1), x.get(2)))
            .collect();
        assert_eq!(
            parts,
            vec![(2, vec![1, 2], 520)],
            "{}: one agreement in two parts",
            s.db
        );
    }
    fed.check_halves(false).await;
}

/// A member settles its part piece by piece (chips.round_work), each piece its own transaction:
/// while one piece is under way, the tallies of the others are free (a payment on them locks
/// them as this test does), and the round still ends whole.
#[tokio::test]
async fn a_round_settles_in_pieces_and_holds_each_tally_only_for_its_piece() {
    let fed = Fed::named("pieces", 47380, &["a", "b"]).await;
    fed.pairs(47380, 100, |_| 300).await;
    let (debt, positions) = (fed.debt().await, fed.positions().await);
    let r = fed.open().await;
    let b = &fed.sites[1];
    let work = || async {
        b.admin
            .query_opt(
                "SELECT x.work FROM chips.round_state x JOIN chips.lifts l ON l.id = x.lift_id
                 WHERE l.lift_uuid = $1",
                &[&r],
            )
            .await
            .unwrap()
            .and_then(|x| x.get::<_, Option<String>>(0))
    };
    // everything until b has the decision, and not its work on it
    while work().await.as_deref() != Some("good") {
        let mut moved = chips_tests::round_work(&fed.sites[0]).await.unwrap();
        moved += chips_tests::round_work(b).await.unwrap();
        moved += chips_tests::relay(&fed.sites[0], b).await.unwrap().applied;
        moved += chips_tests::relay(b, &fed.sites[0]).await.unwrap().applied;
        assert!(
            moved > 0 || work().await.as_deref() == Some("good"),
            "the round stalled"
        );
    }
    let (lift, tallies): (i64, Vec<Uuid>) = {
        let row = b
            .admin
            .query_one(
                // the reserved moves, in the order the pieces take them
                "SELECT l.id, array_agg(m.tally ORDER BY m.n)
                 FROM chips.lifts l JOIN chips.round_moves m ON m.lift_id = l.id AND m.stage = 1
                 WHERE l.lift_uuid = $1 GROUP BY l.id",
                &[&r],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(tallies.len(), 200, "b moves every tally");
    // one piece under way: its tallies are locked, the others are not
    let n: i32 = b
        .admin
        .query_one("SELECT chips._round_piece()", &[])
        .await
        .unwrap()
        .get(0);
    let n = n as usize;
    assert!(n < tallies.len());
    let piece = chips_tests::connect(&b.dsn).await.unwrap();
    piece.batch_execute("BEGIN").await.unwrap();
    let more: bool = piece
        .query_one("SELECT chips._round_step($1)", &[&lift])
        .await
        .unwrap()
        .get(0);
    assert!(more);
    let payer = chips_tests::connect(&b.dsn).await.unwrap();
    payer
        .batch_execute("SET lock_timeout = '500ms'")
        .await
        .unwrap();
    let lock = "SELECT 1 FROM chips.tallies WHERE tally_uuid = $1 FOR UPDATE";
    let e = payer.query(lock, &[&tallies[0]]).await.unwrap_err();
    assert_eq!(
        e.code(),
        Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE),
        "the piece holds its own tallies"
    );
    for t in &tallies[n..] {
        payer.query(lock, &[t]).await.unwrap();
    }
    piece.batch_execute("COMMIT").await.unwrap();
    let settled: i64 = b
        .admin
        .query_one(
            "SELECT count(*) FROM chips.chits WHERE lift_id = $1 AND status = 'good'",
            &[&lift],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(settled, n as i64, "one piece settled: {settled} chits");
    assert_eq!(fed.lifts(r).await[1].as_deref(), Some("pend"));
    fed.relay().await;
    assert_eq!(fed.lifts(r).await, vec![Some("good".to_string()); 2]);
    assert_eq!(debt - fed.debt().await, 2 * 100 * 100);
    assert_eq!(fed.positions().await, positions, "no net position moved");
    fed.check_halves(false).await;
}

/// Four sites: a circle through all four (a0 b0 c0 d0), one through d and b only (b1 d1), and
/// one crossing every site twice (a1 c1 b1 d1 ... a0): no site sees any of them alone.
#[tokio::test]
async fn a_round_across_four_sites_clears_the_optimum() {
    let fed = Fed::named("four", 47350, &["a", "b", "c", "d"]).await;
    fed.owe((1, 0), (0, 0), 7_000).await; // a0 owes b0
    fed.owe((2, 0), (1, 0), 3_000).await; // b0 owes c0
    fed.owe((3, 0), (2, 0), 9_000).await; // c0 owes d0
    fed.owe((0, 0), (3, 0), 4_000).await; // d0 owes a0
    fed.owe((3, 1), (1, 1), 2_000).await; // b1 owes d1
    fed.owe((1, 1), (3, 1), 6_000).await; // d1 owes b1
    fed.owe((2, 1), (0, 1), 8_000).await; // a1 owes c1
    fed.owe((1, 1), (2, 1), 5_000).await; // c1 owes b1
    fed.owe((3, 1), (1, 1), 1_000).await; // b1 owes d1 again, on a second tally
    fed.owe((0, 1), (3, 1), 5_000).await; // d1 owes a1
    let (debt, positions) = (fed.debt().await, fed.positions().await);
    let optimum = fed.central_optimum().await;
    assert!(optimum > 0);
    let r = fed.round().await;
    assert_eq!(fed.coordinated(r).await, ("good".into(), 1, None));
    assert_eq!(fed.lifts(r).await, vec![Some("good".to_string()); 4]);
    assert_eq!(i128::from(debt - fed.debt().await), optimum);
    assert_eq!(fed.positions().await, positions, "no net position moved");
    fed.check_sound().await;
    assert_eq!(fed.central_optimum().await, 0, "nothing left to clear");
}

#[tokio::test]
async fn the_coordinator_stores_no_user_and_no_tally() {
    let fed = Fed::new("privacy", 47310).await;
    let tallies = fed.two_circles().await;
    fed.round().await;
    let c = &fed.sites[0].admin;
    let seen: Vec<String> = c
        .query(
            "SELECT x::text FROM chips.round_arcs x UNION ALL SELECT x::text FROM chips.rounds x
             UNION ALL SELECT x::text FROM chips.round_sites x UNION ALL SELECT x::text FROM chips.round_members x",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(seen.len() > 10);
    // every word the coordinator stored (a pseudonym may contain "a0" by chance; it is not one)
    let words: std::collections::HashSet<&str> = seen
        .iter()
        .flat_map(|row| row.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-')))
        .collect();
    for s in &fed.sites {
        for r in s
            .admin
            .query(
                "SELECT ent, cuid, name, coalesce(pubkey, '') FROM chips.users",
                &[],
            )
            .await
            .unwrap()
        {
            for i in 0..4 {
                let secret: String = r.get(i);
                if secret.is_empty() {
                    continue;
                }
                for w in secret.split(' ') {
                    assert!(!words.contains(w), "the coordinator stored {w}");
                }
            }
        }
    }
    for t in tallies {
        assert!(
            !seen.iter().any(|row| row.contains(&t.to_string())),
            "tally {t}"
        );
    }
}

/// A tampering with one site's flows in the coordinator's outbox, before they are relayed.
async fn tamper(fed: &Fed, site: usize, f: impl Fn(&mut Vec<Value>)) {
    let a = &fed.sites[0].admin;
    let rows = a
        .query(
            "SELECT id, msg FROM chips.outbox WHERE delivered IS NULL AND action = 'flows' AND to_agent = $1",
            &[&fed.sites[site].agent_id()],
        )
        .await
        .unwrap();
    assert!(!rows.is_empty(), "flows queued for site {site}");
    for r in rows {
        let (id, mut msg): (i64, Value) = (r.get(0), r.get(1));
        let flows = msg["object"]["flows"].as_array_mut().unwrap();
        f(flows);
        a.execute(
            "UPDATE chips.outbox SET msg = $2 WHERE id = $1",
            &[&id, &msg],
        )
        .await
        .unwrap();
    }
}

/// Opens a round and relays until the coordinator has every graph and has queued the flows.
async fn solved(fed: &Fed) -> Uuid {
    let r = fed.open().await;
    // open to b and c, their graphs back (a is its own member: already in)
    for k in 1..3 {
        chips_tests::relay(&fed.sites[0], &fed.sites[k])
            .await
            .unwrap();
    }
    for k in 1..3 {
        chips_tests::relay(&fed.sites[k], &fed.sites[0])
            .await
            .unwrap();
    }
    assert_eq!(fed.coordinated(r).await.0, "prepare");
    r
}

#[tokio::test]
async fn a_lying_coordinator_is_refused_and_nothing_changes() {
    let fed = Fed::new("lies", 47320).await;
    fed.two_circles().await;
    let (debt, positions) = (fed.debt().await, fed.positions().await);
    // Three lies to site b, each its own round: a flow past what b offered; one more unit on
    // one arc (a user's inflow no longer its outflow); and no flows at all, which checks at b
    // but differs from what a and c were told about the tallies they share with b.
    let lies: [(&str, Lie); 3] = [
        (
            "over capacity",
            Box::new(|f: &mut Vec<Value>| f[0][1] = Value::from(1i64 << 62)),
        ),
        (
            "a position moves",
            Box::new(|f: &mut Vec<Value>| {
                let v = f[0][1].as_i64().unwrap();
                f[0][1] = Value::from(v - 1);
            }),
        ),
        (
            "the halves differ",
            Box::new(|f: &mut Vec<Value>| f.clear()),
        ),
    ];
    for (what, lie) in lies {
        let r = solved(&fed).await;
        tamper(&fed, 1, lie).await;
        fed.relay().await;
        fed.void_and_unchanged(r, debt, &positions, what).await;
    }
    // and an honest round still clears the optimum
    fed.round_clears(debt, 23_000).await;
}

/// A round's graph is unlogged (round_arcs at the coordinator, round_parts at a member): a
/// crash or a failover empties it, as TRUNCATE does here. The coordinator that lost arcs, or a
/// member that lost its part, ends the round void everywhere, with nothing changed.
#[tokio::test]
async fn a_round_whose_graph_a_crash_emptied_ends_void_everywhere() {
    let fed = Fed::new("lost", 47390).await;
    fed.two_circles().await;
    let (debt, positions) = (fed.debt().await, fed.positions().await);
    let unlogged: Vec<String> = fed.sites[0]
        .admin
        .query(
            "SELECT relname::text FROM pg_class
             WHERE relnamespace = 'chips'::regnamespace AND relpersistence = 'u'
               AND relname IN ('round_arcs', 'round_parts', 'round_moves', 'round_state')
             ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(unlogged, ["round_arcs", "round_parts"]);
    let lost = [
        (0, "round_arcs", "the coordinator lost the round's graph"),
        (1, "round_parts", "this site lost its part of round"),
    ];
    for (site, table, why) in lost {
        // open to b and c; a (its own member) sent its graph at the open
        let r = fed.open().await;
        for k in 1..3 {
            chips_tests::relay(&fed.sites[0], &fed.sites[k])
                .await
                .unwrap();
        }
        fed.sites[site]
            .admin
            .batch_execute(&format!("TRUNCATE chips.{table}"))
            .await
            .unwrap();
        fed.relay().await;
        let reason = fed.void_and_unchanged(r, debt, &positions, table).await;
        assert!(
            reason.as_deref().unwrap_or("").contains(why),
            "{table}: {reason:?}"
        );
    }
    // and the next round clears the optimum
    fed.round_clears(debt, 23_000).await;
}

#[tokio::test]
async fn a_payment_after_the_snapshot_makes_the_coordinator_solve_again() {
    let fed = Fed::new("stale", 47330).await;
    let t = fed.two_circles().await;
    let debt = fed.debt().await;
    let r = solved(&fed).await;
    chips_tests::round_work(&fed.sites[0]).await.unwrap();
    // a (coordinator and member) has reserved its part: 1 of the 4 c0 owes a0 is held back, so
    // a0 cannot pay c0 back all 4 (with the lift it would end owing c0, past the 0 it may)
    let e = fed.users[0][0]
        .pay(t[2], 4_000, "too much")
        .await
        .unwrap_err();
    assert_eq!(chips_tests::sqlstate(&e), "23514");
    // b1 pays b0 back 3 of the 5 b0 owes it: b can carry only 2 on that tally now
    fed.users[1][1].pay(t[3], 3_000, "paid back").await.unwrap();
    fed.relay().await;
    let (status, attempt, _) = fed.coordinated(r).await;
    assert_eq!((status.as_str(), attempt), ("good", 2));
    // the optimum without the stale part (b0 -> b1, which b refused): 4 round a0 b0 c0 = 12;
    // the payment itself lowered the debt by 3
    assert_eq!(debt - fed.debt().await, 12_000 + 3_000);
    fed.check_sound().await;
}

#[tokio::test]
async fn a_round_the_coordinator_never_decides_ends_void_and_a_lost_decision_is_asked_for() {
    let fed = Fed::new("faults", 47340).await;
    fed.two_circles().await;
    let debt = fed.debt().await;
    // The coordinator stops after the flows (its readies never arrive): at its expiry it voids
    // the round, and every site releases what it reserved.
    let r = solved(&fed).await;
    for k in 1..3 {
        chips_tests::relay(&fed.sites[0], &fed.sites[k])
            .await
            .unwrap();
    }
    fed.sites[0]
        .admin
        .execute(
            "UPDATE chips.rounds SET expires = now() WHERE round_uuid = $1",
            &[&r],
        )
        .await
        .unwrap();
    fed.sites[0]
        .admin
        .execute("SELECT * FROM chips.round_tick()", &[])
        .await
        .unwrap();
    fed.relay().await;
    assert_eq!(fed.coordinated(r).await.0, "void");
    assert!(fed
        .lifts(r)
        .await
        .iter()
        .all(|s| s.as_deref() == Some("void")));
    assert_eq!(fed.debt().await, debt);
    fed.check_sound().await;

    // The decision to b is lost: b, prepared, asks past its expiry, and settles as the others.
    let r = solved(&fed).await;
    loop {
        // everything but the coordinator's decision to b, which is lost as soon as it is sent
        let mut moved = 0;
        for from in 0..3 {
            for to in 0..3 {
                if from == to {
                    continue;
                }
                fed.sites[0]
                    .admin
                    .execute(
                        "UPDATE chips.outbox SET delivered = now()
                         WHERE delivered IS NULL AND action = 'good' AND to_agent = $1",
                        &[&fed.sites[1].agent_id()],
                    )
                    .await
                    .unwrap();
                moved += chips_tests::relay(&fed.sites[from], &fed.sites[to])
                    .await
                    .unwrap()
                    .applied;
            }
        }
        for s in &fed.sites {
            moved += chips_tests::round_work(s).await.unwrap();
        }
        if moved == 0 {
            break;
        }
    }
    assert_eq!(fed.coordinated(r).await.0, "good");
    assert_eq!(fed.lifts(r).await[1].as_deref(), Some("pend"));
    fed.sites[1]
        .admin
        .execute(
            "UPDATE chips.lifts SET expires = now() WHERE lift_uuid = $1",
            &[&r],
        )
        .await
        .unwrap();
    let asked: i32 = fed.sites[1]
        .admin
        .query_one("SELECT asked FROM chips.round_tick()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(asked, 1);
    fed.relay().await;
    assert_eq!(fed.lifts(r).await, vec![Some("good".to_string()); 3]);
    assert_eq!(debt - fed.debt().await, 23_000);
    fed.check_sound().await;
}
