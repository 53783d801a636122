//! Distributed lifts (sql/lifts.sql) between four sites, relayed by the test: route discovery,
//! hash-locked prepare and decision, payments to a CHIP address, circular lifts across all
//! sites, and faults (lost, duplicated and late messages, sites that stop at each phase, expiry).
//! After each, every lift is good everywhere or void everywhere, nothing is left pending, and
//! both halves of every tally agree.

use std::time::Duration;

use chips_tests::ring::{chad, pay_address, Net, Who};
use chips_tests::{sqlstate, User};
use serde_json::{json, Value};
use uuid::Uuid;

#[tokio::test]
async fn a_payment_two_sites_away_takes_exactly_the_free_capacity() {
    // the tightest hop: site 1's u2 -> u3 (u3 offers 300)
    let net = Net::build(
        "pay",
        500,
        Some(((1, 2), 300)),
        [47100, 47101, 47102, 47103],
    )
    .await;
    let (payer, payee) = (&net.users[0][0], &net.users[2][3]);
    let to = chad(&net.sites[2], payee);
    let before = net.positions().await;

    // one unit more than the tightest hop: void everywhere, nothing pending
    let l = pay_address(payer, &to, 301).await.unwrap();
    net.settle_all().await;
    let st = net.lift_status(l).await;
    assert!(st.iter().all(|(_, s, _)| s == "void"), "{st:?}");
    net.check_consistent().await;
    assert_eq!(
        net.positions().await,
        before,
        "a refused payment moves nothing"
    );
    // its query went as far as site 1's full hop, which never learnt whom it was for
    route_queries_hide_the_payee(&net, &payee.cuid, &[1, 2, 3]).await;

    // exactly the capacity: good at every site it passed
    let l = pay_address(payer, &to, 300).await.unwrap();
    net.settle_all().await;
    let st = net.lift_status(l).await;
    assert_eq!(
        st.iter()
            .map(|(k, s, r)| (*k, s.as_str(), r.as_str()))
            .collect::<Vec<_>>(),
        vec![
            (0, "good", "origin"),
            (1, "good", "relay"),
            (2, "good", "terminus")
        ]
    );
    net.check_consistent().await;
    route_queries_hide_the_payee(&net, &payee.cuid, &[]).await;
    let after = net.positions().await;
    for k in 0..4 {
        for i in 0..4 {
            let d = after[k][i] - before[k][i];
            let want = match (k, i) {
                (0, 0) => -300,
                (2, 3) => 300,
                _ => 0,
            };
            assert_eq!(
                d, want,
                "site {k} user {i}: intermediaries' positions do not move"
            );
        }
    }
    // the payee heard of it: a lift event
    let n: i64 = payee
        .db
        .query_one(
            "SELECT count(*) FROM chips.events_since(0) WHERE kind = 'lift'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(n >= 1, "the payee has lift events");

    // the tightest hop is full now: one unit is refused, at discovery
    let l = pay_address(payer, &to, 1).await.unwrap();
    net.settle_all().await;
    assert!(net.lift_status(l).await.iter().all(|(_, s, _)| s == "void"));
    net.check_consistent().await;

    // bad input changes nothing
    for (to, units, code) in [
        (json!({"cuid": "u23"}), 5, "22023"),
        (to.clone(), 0, "22023"),
        (json!("u23"), 5, "22023"),
    ] {
        let e = payer
            .db
            .query_one("SELECT chips.pay_address($1, $2)", &[&to, &(units as i64)])
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e), code, "{to} {units}: {e}");
    }
    let e = payer
        .db
        .query_one("SELECT chips.pay_address_sign($1, 'bad')", &[&l])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "55000", "{e}");
    assert_eq!(net.positions().await, after);
}

/// Debts around the whole ring: every client owes its vendor 100, one owes 60. A circle through
/// all four sites clears 60 from every tally of it.
#[tokio::test]
async fn a_circle_through_four_sites_clears_the_tightest_debt() {
    let net = Net::build("circle", 0, None, [47110, 47111, 47112, 47113]).await;
    for k in 0..4 {
        for i in 0..4 {
            let units = if (k, i) == (2, 1) { 60 } else { 100 };
            net.users[k][i]
                .pay(net.tallies[k][i], units, "owed")
                .await
                .unwrap();
        }
    }
    net.settle_all().await;
    let before = net.positions().await;
    let started: i32 = net.sites[0]
        .admin
        .query_one("SELECT chips.lift_circles(1, 1)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(started, 1);
    // the lift commits everywhere while every chain update is held back; a resync then (chipsd
    // runs chain_sync every few seconds) must not send the lift chits as chits of their own
    let chain = |m: &Value| m["target"] == "chit" && m["action"] == "chain";
    for _ in 0..50 {
        relay_except(&net, chain).await;
        if net.open_lifts().await == 0 {
            break;
        }
    }
    assert_eq!(net.open_lifts().await, 0);
    for s in &net.sites {
        s.admin
            .execute("SELECT chips.chain_sync()", &[])
            .await
            .unwrap();
    }
    relay_except(&net, chain).await; // panics on a refused message
    net.settle_all().await;
    net.check_consistent().await;
    let lifts = net.sites[0]
        .admin
        .query(
            "SELECT lift_uuid, status, units FROM chips.lifts WHERE kind = 'circular'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(lifts.len(), 1);
    let (lift, status, units): (Uuid, String, i64) =
        (lifts[0].get(0), lifts[0].get(1), lifts[0].get(2));
    assert_eq!((status.as_str(), units), ("good", 60));
    let st = net.lift_status(lift).await;
    assert_eq!(st.len(), 4, "every site took part: {st:?}");
    assert_eq!(
        net.positions().await,
        before,
        "a circle moves no one's net position"
    );
    for k in 0..4 {
        for i in 0..4 {
            let (b, _) = net.users[k][i].balance(net.tallies[k][i]).await.unwrap();
            let want = if (k, i) == (2, 1) { 0 } else { -40 };
            assert_eq!(b, want, "site {k} tally {i}: the client's debt");
        }
    }
}

/// Carries every message but those `drop` refuses; returns how many were held back.
async fn relay_except(net: &Net, drop: impl Fn(&Value) -> bool) -> usize {
    relay_round(net, drop, false).await.1
}

/// One pass over every site's outbox: delivers each message `drop` does not refuse (with
/// `replay`, a second time under the same id, which must be a `duplicate`, and a third time under
/// a new id) and acknowledges it. Returns (delivered, held back).
async fn relay_round(net: &Net, drop: impl Fn(&Value) -> bool, replay: bool) -> (usize, usize) {
    let (mut moved, mut held) = (0, 0);
    for from in &net.sites {
        let rows = from
            .admin
            .query(
                "SELECT id, msg FROM chips.outbox WHERE delivered IS NULL ORDER BY id",
                &[],
            )
            .await
            .unwrap();
        for r in rows {
            let (id, msg): (i64, Value) = (r.get(0), r.get(1));
            if drop(&msg) {
                held += 1;
                continue;
            }
            let to = net
                .sites
                .iter()
                .find(|s| s.agent_id() == msg["to"]["agent"].as_str().unwrap())
                .unwrap();
            let from_agent = msg["from"]["agent"].as_str().unwrap();
            let receive = |m: Value| async move {
                let r: String = to
                    .admin
                    .query_one("SELECT chips.peer_receive($1, $2)", &[&from_agent, &m])
                    .await
                    .unwrap_or_else(|e| panic!("{m}: {e}"))
                    .get(0);
                r
            };
            receive(msg.clone()).await;
            if replay {
                assert_eq!(receive(msg.clone()).await, "duplicate");
                let mut copy = msg.clone();
                copy["id"] = json!(Uuid::new_v4().to_string());
                receive(copy).await;
            }
            from.admin
                .execute("SELECT chips.outbox_ack(ARRAY[$1::bigint])", &[&id])
                .await
                .unwrap();
            moved += 1;
        }
    }
    (moved, held)
}

/// A site "stops" (its sidecar is down): nothing goes in or out of it, until it is back.
async fn run_with_site_down(net: &Net, down: usize, rounds: usize) {
    let agent = net.sites[down].agent_id();
    for _ in 0..rounds {
        relay_except(net, |m| {
            m["to"]["agent"].as_str() == Some(&agent) || m["from"]["agent"].as_str() == Some(&agent)
        })
        .await;
        for (k, s) in net.sites.iter().enumerate() {
            if k != down {
                s.admin
                    .query_one("SELECT * FROM chips.lift_tick()", &[])
                    .await
                    .unwrap();
            }
        }
    }
}

#[tokio::test]
async fn faults_leave_every_lift_good_everywhere_or_void_everywhere() {
    let net = Net::build("faults", 10_000, None, [47120, 47121, 47122, 47123]).await;
    let (payer, payee) = (&net.users[0][0], &net.users[3][3]);
    let to = chad(&net.sites[3], payee);
    let mut outcomes = Vec::new();

    // 1. every message delivered twice (same id), and once more under a new id
    let l = pay_address(payer, &to, 10).await.unwrap();
    for _ in 0..30 {
        if relay_round(&net, |_| false, true).await.0 == 0 {
            break;
        }
    }
    net.settle_all().await;
    net.check_consistent().await;
    outcomes.push(("duplicated", net.lift_status(l).await));

    // 2. a site stops at each phase of a lift, for longer than the lift lives, then comes back
    for (phase, action) in [
        ("discovery", "query"),
        ("prepare", "prepare"),
        ("ready", "ready"),
        ("commit", "commit"),
    ] {
        for down in 1..4 {
            let l = pay_address(payer, &to, 10).await.unwrap();
            // run until the first message of this phase is about to reach the site
            let agent = net.sites[down].agent_id();
            for _ in 0..20 {
                let held = relay_except(&net, |m| {
                    m["action"] == action
                        && (m["to"]["agent"].as_str() == Some(&agent)
                            || m["from"]["agent"].as_str() == Some(&agent))
                })
                .await;
                if held > 0 {
                    break;
                }
            }
            run_with_site_down(&net, down, 3).await;
            tokio::time::sleep(Duration::from_millis(3200)).await;
            run_with_site_down(&net, down, 3).await;
            net.settle_all().await;
            net.check_consistent().await;
            outcomes.push((phase, net.lift_status(l).await));
        }
    }

    // 3. lost messages: every commit is lost once; the sites that prepared ask the origin
    let l = pay_address(payer, &to, 10).await.unwrap();
    let mut lost = 0;
    for _ in 0..10 {
        relay_except(&net, |m| m["action"] == "commit").await;
        for s in &net.sites {
            lost += s
                .admin
                .execute(
                    "DELETE FROM chips.outbox WHERE msg->>'action' = 'commit' AND delivered IS NULL",
                    &[],
                )
                .await
                .unwrap();
        }
    }
    assert!(lost >= 1);
    net.settle_all().await;
    net.check_consistent().await;
    let st = net.lift_status(l).await;
    assert!(
        st.len() == 4 && st.iter().all(|(_, s, _)| s == "good"),
        "lost commits: {st:?}"
    );

    // 4. an expired lift: the prepare is held past the expiry at the second site
    let l = pay_address(payer, &to, 10).await.unwrap();
    let agent = net.sites[2].agent_id();
    for _ in 0..5 {
        relay_except(&net, |m| {
            m["action"] == "prepare" && m["to"]["agent"].as_str() == Some(&agent)
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(3200)).await;
    net.settle_all().await;
    net.check_consistent().await;
    let st = net.lift_status(l).await;
    assert!(st.iter().all(|(_, s, _)| s == "void"), "expired: {st:?}");

    // Every lift ended one way everywhere (check_consistent), and some of each.
    for (phase, st) in &outcomes {
        let first = &st[0].1;
        assert!(st.iter().all(|(_, s, _)| s == first), "{phase}: {st:?}");
    }
    assert!(outcomes.iter().any(|(_, st)| st[0].1 == "good"));
    // the origin decides: a site down before the terminus is ready voids the lift; a site
    // down after the decision only delays it
    let commits: Vec<_> = outcomes.iter().filter(|(p, _)| *p == "commit").collect();
    assert!(
        commits
            .iter()
            .all(|(_, st)| st.iter().all(|(_, s, _)| s == "good")),
        "{commits:?}"
    );
}

/// Route discovery never names the payee: every query any site sent carries `{agent, tag}`
/// only, and the sites `blind` (that no prepare of a payment to it passed) stored nothing
/// that holds the payee's cuid, though the query reached the first of them (if any).
async fn route_queries_hide_the_payee(net: &Net, cuid: &str, blind: &[usize]) {
    let mut queries = 0;
    for (k, s) in net.sites.iter().enumerate() {
        for r in s
            .admin
            .query(
                "SELECT msg FROM chips.outbox WHERE target = 'lift' AND action = 'query'",
                &[],
            )
            .await
            .unwrap()
        {
            let m: Value = r.get(0);
            let find = &m["object"]["find"];
            let mut keys: Vec<_> = find.as_object().unwrap().keys().cloned().collect();
            keys.sort();
            assert_eq!(keys, ["agent", "tag"], "site {k} sent {find}");
            assert!(
                !m["object"].to_string().contains(&format!("\"{cuid}\"")),
                "site {k} sent the payee: {m}"
            );
            queries += 1;
        }
    }
    assert!(queries >= 1, "the payment was sought by route queries");
    if let Some(&k) = blind.first() {
        let reached: i64 = net.sites[k]
            .admin
            .query_one("SELECT count(*) FROM chips.lift_routes", &[])
            .await
            .unwrap()
            .get(0);
        assert!(reached >= 1, "the query reached site {k}");
    }
    for &k in blind {
        let stored: i64 = net.sites[k]
            .admin
            .query_one(
                "SELECT (SELECT count(*) FROM chips.lift_routes WHERE find ? 'cuid' OR find::text LIKE '%\"' || $1 || '\"%') \
                      + (SELECT count(*) FROM chips.lift_route_cache WHERE find_cuid = $1) \
                      + (SELECT count(*) FROM chips.lifts WHERE find->>'cuid' = $1)",
                &[&cuid],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(stored, 0, "site {k} stored the payee's cuid");
    }
}

/// Payment `l` of `units` from `payer` to `to`, once every site settled: good at its origin
/// (site 0), which holds its only row of that uuid (its parts have their own).
async fn paid_at_origin(net: &Net, payer: &User, to: &Value, units: i64) -> Uuid {
    let l = pay_address(payer, to, units).await.unwrap();
    net.settle_all().await;
    assert_eq!(
        net.lift_status(l).await,
        vec![(0, "good".to_string(), "origin".to_string())]
    );
    l
}

/// The parts of split payment `l` at its origin (site 0): units and status, widest first.
async fn parts(net: &Net, l: Uuid) -> Vec<(i64, String)> {
    net.sites[0]
        .admin
        .query(
            "SELECT units, status FROM chips.lifts WHERE parent = $1 ORDER BY units DESC",
            &[&l],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test]
async fn a_payment_no_one_route_carries_goes_split_over_two() {
    // through A 600, through B 500: 1,000 goes only over both
    let net = Net::diamond("split", 600, 500, [47160, 47161, 47162, 47163]).await;
    let (payer, payee) = (&net.users[0][0], &net.users[3][0]);
    let to = chad(&net.sites[3], payee);
    let before = net.positions().await;

    let l = paid_at_origin(&net, payer, &to, 1000).await;
    assert_eq!(
        parts(&net, l).await,
        vec![(600, "good".to_string()), (400, "good".to_string())],
        "the widest route takes all it can, the other the rest"
    );
    net.check_consistent().await;
    let after = net.positions().await;
    let moved: Vec<i64> = (0..4).map(|k| after[k][0] - before[k][0]).collect();
    assert_eq!(moved, [-1000, 0, 0, 1000], "A and B only pass it on");
    // the payer sees one payment, whatever its parts
    let listed: Vec<Uuid> = payer
        .db
        .query("SELECT DISTINCT lift FROM chips.lifts_list()", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(listed, [l]);
    // its queries named the payee blinded, at every site
    route_queries_hide_the_payee(&net, &payee.cuid, &[]).await;

    // what is left (through B 100) does not carry 101: void (or refused at once), nothing moves
    match pay_address(payer, &to, 101).await {
        Ok(l) => {
            net.settle_all().await;
            assert!(net.lift_status(l).await.iter().all(|(_, s, _)| s == "void"));
        }
        Err(e) => assert_eq!(sqlstate(&e), "55000", "{e}"),
    }
    net.check_consistent().await;
    assert_eq!(net.positions().await, after);
    // and with splitting off, a single route only: 100 still goes
    net.sites[0]
        .admin
        .execute("SELECT chips.lift_configure(parts => 1)", &[])
        .await
        .unwrap();
    let l = pay_address(payer, &to, 100).await.unwrap();
    net.settle_all().await;
    assert_eq!(net.lift_status(l).await[0].1, "good");
    assert!(parts(&net, l).await.is_empty(), "one route: no parts");
    net.check_consistent().await;
}

#[tokio::test]
async fn a_payment_splits_beyond_the_first_site_it_reaches() {
    // P (site 0) has one way out, to R (site 1, up to 1,000); R's ways on go through A (site
    // 2, 600) or B (site 3, 500) to Q (site 4): no one way carries 1,000, R's two together do
    let net = Net::graph(
        "splitfar",
        &[47210, 47211, 47212, 47213, 47214],
        &[&["P"], &["R"], &["A"], &["B"], &["Q"]],
        &[
            ((0, 0), (1, 0), 1000),
            ((1, 0), (2, 0), 600),
            ((1, 0), (3, 0), 500),
            ((2, 0), (4, 0), 600),
            ((3, 0), (4, 0), 500),
        ],
        1000,
    )
    .await;
    let (payer, payee) = (&net.users[0][0], &net.users[4][0]);
    let to = chad(&net.sites[4], payee);
    let before = net.positions().await;

    let l = paid_at_origin(&net, payer, &to, 1000).await;
    // R answered what its ways carry together, so the origin sent two parts over its one way
    // out, each no more than one way beyond carries; R passed each on a way of its own
    assert_eq!(
        parts(&net, l).await,
        vec![(600, "good".to_string()), (400, "good".to_string())]
    );
    let total: Option<i64> = net.sites[0]
        .admin
        .query_one(
            "SELECT total FROM chips.lift_routes WHERE dir = 'out' AND status = 'found' \
             AND query = (SELECT query FROM chips.lifts WHERE lift_uuid = $1)",
            &[&l],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        total,
        Some(1000),
        "R's answer: 600 and 500, no more than P -> R carries"
    );
    let ways: Vec<Uuid> = net.sites[1]
        .admin
        .query(
            "SELECT tally_out FROM chips.lifts WHERE status = 'good' AND role = 'relay' ORDER BY units DESC",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        ways,
        [net.tallies[1][0], net.tallies[1][1]],
        "through A, then B"
    );
    net.check_consistent().await;
    let after = net.positions().await;
    let moved: Vec<i64> = (0..5).map(|k| after[k][0] - before[k][0]).collect();
    assert_eq!(moved, [-1000, 0, 0, 0, 1000], "R, A and B only pass it on");

    // what is left (through B 100; P -> R is used up) carries nothing more: void, nothing moves
    match pay_address(payer, &to, 101).await {
        Ok(l) => {
            net.settle_all().await;
            assert!(net.lift_status(l).await.iter().all(|(_, s, _)| s == "void"));
        }
        Err(e) => assert_eq!(sqlstate(&e), "55000", "{e}"),
    }
    net.check_consistent().await;
    assert_eq!(net.positions().await, after);
}

#[tokio::test]
async fn a_one_unit_lift_the_way_no_longer_carries_is_rejected_not_refused() {
    // P (site 0) pays Q (site 1) through T, Q's neighbour there: P -> T, T -> Q, 1 unit each
    let net = Net::graph(
        "oneunit",
        &[47215, 47216],
        &[&["P"], &["T", "Q"]],
        &[((0, 0), (1, 0), 1), ((1, 0), (1, 1), 1)],
        1000,
    )
    .await;
    // (a lift lives long enough here that no step of the test outlasts it)
    for s in &net.sites {
        s.admin
            .execute("SELECT chips.lift_configure(life => '60 seconds')", &[])
            .await
            .unwrap();
    }
    let (payer, payee) = (&net.users[0][0], &net.users[1][1]);
    let before = net.positions().await;
    let l = pay_address(payer, &chad(&net.sites[1], payee), 1)
        .await
        .unwrap();
    // discovery only; then T pays Q (both at site 1) the unit the way had left
    while relay_round(&net, |m| m["action"] == "prepare", false)
        .await
        .0
        > 0
    {}
    net.users[1][0]
        .pay(net.tallies[1][0], 1, "direct")
        .await
        .unwrap();
    // the prepare reaches the payee's site, whose way from T to Q carries nothing now: it
    // rejects it (what would get through instead of a 1-unit lift is 0; asking for a way of
    // half a unit was an error that refused the message, and a sender retries a refused
    // message for ever, holding up the messages behind it)
    net.settle_all().await;
    assert!(net.lift_status(l).await.iter().all(|(_, s, _)| s == "void"));
    assert_eq!(held(&net).await, [0, 0], "nothing of it held anywhere");
    net.check_consistent().await;
    let after = net.positions().await;
    assert_eq!(after[0][0], before[0][0], "the payer paid nothing");
    assert_eq!(after[1][0] - before[1][0], -1, "T paid Q directly");
}

#[tokio::test]
async fn a_part_refused_mid_prepare_voids_the_whole_payment_at_once() {
    let net = Net::diamond("splitdie", 600, 500, [47170, 47171, 47172, 47173]).await;
    let (payer, payee) = (&net.users[0][0], &net.users[3][0]);
    let to = chad(&net.sites[3], payee);
    let before = net.positions().await;

    let l = pay_address(payer, &to, 1000).await.unwrap();
    // discovery only: the prepares stay in the origin's outbox
    for _ in 0..20 {
        relay_except(&net, |m| m["action"] == "prepare").await;
    }
    assert_eq!(parts(&net, l).await.len(), 2, "split in two");
    // meanwhile B pays Q directly all the way through B could carry
    let (b, bq) = (&net.users[2][0], net.tallies[2][0]);
    b.pay(bq, 500, "direct").await.unwrap();
    // the part through B is refused at B's site; the origin voids the payment at once, and
    // every site the other part reached releases what it reserved: no waiting for the expiry
    net.settle().await;
    let st = net.lift_status(l).await;
    assert_eq!(st, vec![(0, "void".to_string(), "origin".to_string())]);
    let reason: String = net.sites[0]
        .admin
        .query_one("SELECT reason FROM chips.lifts WHERE lift_uuid = $1", &[&l])
        .await
        .unwrap()
        .get(0);
    assert_eq!(reason, "no route on from here carries the lift");
    assert!(parts(&net, l).await.iter().all(|(_, s)| s == "void"));
    assert_eq!(
        held(&net).await,
        [0, 0, 0, 0],
        "no site still holds a part of the payment"
    );
    net.check_consistent().await;
    let after = net.positions().await;
    let moved: Vec<i64> = (0..4).map(|k| after[k][0] - before[k][0]).collect();
    assert_eq!(moved, [0, 0, -500, 500], "only B's own payment moved");
    // what the dead attempt held is free at once: 600 goes through A alone
    let l = pay_address(payer, &to, 600).await.unwrap();
    net.settle_all().await;
    assert_eq!(net.lift_status(l).await[0].1, "good");
    net.check_consistent().await;
}

/// The site whose relay the origin's lift `l` (or its one live part) went to, in a diamond:
/// 1 (through A) or 2 (through B).
async fn diamond_way(net: &Net, l: Uuid) -> usize {
    let out: Uuid = net.sites[0]
        .admin
        .query_one(
            "SELECT tally_out FROM chips.lifts
             WHERE (lift_uuid = $1 OR parent = $1) AND role = 'origin' AND tally_out IS NOT NULL
               AND status <> 'void'",
            &[&l],
        )
        .await
        .unwrap()
        .get(0);
    if out == net.tallies[0][0] {
        1
    } else {
        2
    }
}

/// Pending chits a lift holds at any site (each must be 0 once lifts are decided).
async fn held(net: &Net) -> Vec<i64> {
    let mut v = Vec::new();
    for s in &net.sites {
        v.push(
            s.admin
                .query_one(
                    "SELECT count(*) FROM chips.chits WHERE status = 'pend' AND lift_id IS NOT NULL",
                    &[],
                )
                .await
                .unwrap()
                .get(0),
        );
    }
    v
}

#[tokio::test]
async fn a_refused_way_is_replaced_by_another_and_holds_nothing() {
    // through A 600, through B 500: 400 goes whole on either way
    let net = Net::diamond("replace", 600, 500, [47190, 47191, 47192, 47193]).await;
    let (payer, payee) = (&net.users[0][0], &net.users[3][0]);
    let to = chad(&net.sites[3], payee);
    let before = net.positions().await;

    let l = pay_address(payer, &to, 400).await.unwrap();
    // discovery only: the prepare stays in the origin's outbox
    for _ in 0..20 {
        relay_except(&net, |m| m["action"] == "prepare").await;
    }
    assert!(parts(&net, l).await.is_empty(), "sent whole");
    // meanwhile the relay it went to pays Q directly all its way could carry: refused there
    let k = diamond_way(&net, l).await;
    let cap = if k == 1 { 600 } else { 500 };
    net.users[k][0]
        .pay(net.tallies[k][0], cap, "direct")
        .await
        .unwrap();
    net.settle_all().await;
    // the payment went on over the other way, as a part of it; the refused way holds nothing
    assert_eq!(
        net.lift_status(l).await,
        vec![(0, "good".to_string(), "origin".to_string())],
        "the payment's own lift uuid went no further than the site that refused it"
    );
    assert_eq!(parts(&net, l).await, vec![(400, "good".to_string())]);
    assert_eq!(diamond_way(&net, l).await, 3 - k, "the other way");
    assert_eq!(held(&net).await, [0, 0, 0, 0]);
    let row = net.sites[0]
        .admin
        .query_one(
            "SELECT l.tally_out, (SELECT count(*) FROM chips.chits c WHERE c.lift_id = l.id AND c.status = 'void')
             FROM chips.lifts l WHERE l.lift_uuid = $1 AND l.role = 'origin'",
            &[&l],
        )
        .await
        .unwrap();
    let (out, released): (Option<Uuid>, i64) = (row.get(0), row.get(1));
    assert_eq!(
        out, None,
        "the payment itself is no longer out on the refused way"
    );
    assert_eq!(released, 1, "its chit on the refused way was released");
    // the payer's list shows the payment once, for what it did: 400 paid
    let listed: Vec<(Uuid, i64)> = payer
        .db
        .query(
            "SELECT lift, sum(change)::bigint FROM chips.lifts_list() GROUP BY lift",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(listed, [(l, -400)]);
    net.check_consistent().await;
    let after = net.positions().await;
    let moved: Vec<i64> = (0..4).map(|k| after[k][0] - before[k][0]).collect();
    let mut want = [-400, 0, 0, 400 + cap];
    want[k] = -cap;
    assert_eq!(moved, want, "the payment once, and the relay's own payment");
}

#[tokio::test]
async fn a_payment_refused_everywhere_seeks_again_and_goes_when_a_way_frees() {
    // through A 600, through B 500: 550 goes only through A
    let net = Net::diamond("again", 600, 500, [47194, 47195, 47196, 47197]).await;
    // (time for a second query: it asks again only with a query's life and a hop left)
    net.sites[0]
        .admin
        .execute("SELECT chips.lift_configure(life => '10 seconds')", &[])
        .await
        .unwrap();
    let (payer, payee) = (&net.users[0][0], &net.users[3][0]);
    let to = chad(&net.sites[3], payee);
    let before = net.positions().await;

    let l = pay_address(payer, &to, 550).await.unwrap();
    for _ in 0..20 {
        relay_except(&net, |m| m["action"] == "prepare").await;
    }
    assert_eq!(diamond_way(&net, l).await, 1);
    // A pays Q all its way carries: the prepare is refused at A, and the reject held back
    // while Q pays A back (the way through A carries 600 again)
    let (a, q) = (&net.users[1][0], &net.users[3][0]);
    a.pay(net.tallies[1][0], 600, "direct").await.unwrap();
    for _ in 0..20 {
        relay_except(&net, |m| m["action"] == "reject").await;
    }
    q.pay(net.tallies[1][0], 600, "back").await.unwrap();
    net.settle_all().await;
    // no other way carried it: the payment asked again, found A's way free and went, in a part
    // (its own lift uuid stays with the way that refused it)
    let queries: i64 = net.sites[0]
        .admin
        .query_one(
            "SELECT count(*) FROM chips.lift_routes WHERE lift = $1 AND dir = 'in'",
            &[&l],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(queries, 2, "a second route query");
    assert_eq!(
        net.lift_status(l).await,
        vec![(0, "good".to_string(), "origin".to_string())]
    );
    assert_eq!(parts(&net, l).await, vec![(550, "good".to_string())]);
    assert_eq!(held(&net).await, [0, 0, 0, 0]);
    net.check_consistent().await;
    let after = net.positions().await;
    let moved: Vec<i64> = (0..4).map(|k| after[k][0] - before[k][0]).collect();
    assert_eq!(moved, [-550, 0, 0, 550], "A's own payments cancel out");

    // with nothing free anywhere it gives up after `tries` queries: void, nothing held
    net.sites[0]
        .admin
        .execute("SELECT chips.lift_configure(tries => 2)", &[])
        .await
        .unwrap();
    let l = pay_address(payer, &to, 500).await.unwrap();
    for _ in 0..20 {
        relay_except(&net, |m| m["action"] == "prepare").await;
    }
    // (A has 50 left: it goes whole through B, which then pays Q all of it)
    assert_eq!(diamond_way(&net, l).await, 2);
    net.users[2][0]
        .pay(net.tallies[2][0], 500, "direct")
        .await
        .unwrap();
    net.settle_all().await;
    assert!(net.lift_status(l).await.iter().all(|(_, s, _)| s == "void"));
    let queries: i64 = net.sites[0]
        .admin
        .query_one(
            "SELECT count(*) FROM chips.lift_routes WHERE lift = $1 AND dir = 'in'",
            &[&l],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(queries, 2, "tries => 2");
    assert_eq!(held(&net).await, [0, 0, 0, 0]);
    net.check_consistent().await;
}

/// Three sites whose only way from `payer` to `payee` (site, user) is the line of tallies
/// `tallies` (800 each): 500 goes whole, the lift's rows (site, status, role, sorted) are
/// `rows`, and no one but the payer and the payee moved. Returns the payee's address.
async fn pays_500_along(
    tag: &str,
    ports: &[u16],
    users: &[&[&str]],
    tallies: &[(Who, Who, i64)],
    (payer, payee): (Who, Who),
    rows: &[(usize, &str, &str)],
    why: &str,
) -> (Net, Value) {
    let net = Net::graph(tag, ports, users, tallies, 1000).await;
    let to = chad(&net.sites[payee.0], &net.users[payee.0][payee.1]);
    let before = net.positions().await;
    let l = pay_address(&net.users[payer.0][payer.1], &to, 500)
        .await
        .unwrap();
    net.settle_all().await;
    let mut st = net.lift_status(l).await;
    st.sort();
    assert_eq!(
        st.iter()
            .map(|(k, s, r)| (*k, s.as_str(), r.as_str()))
            .collect::<Vec<_>>(),
        rows,
        "{why}"
    );
    net.check_consistent().await;
    let after = net.positions().await;
    for (k, us) in after.iter().enumerate() {
        for (i, p) in us.iter().enumerate() {
            let want = match (k, i) {
                w if w == payer => -500,
                w if w == payee => 500,
                _ => 0,
            };
            assert_eq!(p - before[k][i], want, "site {k} user {i}");
        }
    }
    (net, to)
}

#[tokio::test]
async fn a_way_that_leaves_the_payees_site_and_comes_back_is_found() {
    // P (site 0) -> Y (site 2) -> X (site 1) -> Q (site 2): the query reaches Q's site first at
    // Y, who has no tally with Q; it goes on from there and comes back to Q
    pays_500_along(
        "back",
        &[47198, 47199, 47200],
        &[&["P"], &["X"], &["Y", "Q"]],
        &[
            ((0, 0), (2, 0), 800),
            ((2, 0), (1, 0), 800),
            ((1, 0), (2, 1), 800),
        ],
        ((0, 0), (2, 1)),
        &[
            (0, "good", "origin"),
            (1, "good", "relay"),
            (2, "good", "relay"),
            (2, "good", "terminus"),
        ],
        "Q's site passes it on once, then ends it",
    )
    .await;
}

#[tokio::test]
async fn a_payment_passes_a_site_twice_over_distinct_tallies() {
    // P (site 0) -> X (site 1) -> Y (site 0) -> Q (site 2): the only way from P to Q leaves
    // site 0 and comes back to it; P and Y have no tally between them
    let (net, to) = pays_500_along(
        "twice",
        &[47180, 47181, 47182],
        &[&["P", "Y"], &["X"], &["Q"]],
        &[
            ((0, 0), (1, 0), 800),
            ((1, 0), (0, 1), 800),
            ((0, 1), (2, 0), 800),
        ],
        ((0, 0), (2, 0)),
        &[
            (0, "good", "origin"),
            (0, "good", "relay"),
            (1, "good", "relay"),
            (2, "good", "terminus"),
        ],
        "one row at site 0 for each way the lift passes it",
    )
    .await;
    let payer = &net.users[0][0];
    // a second payment finds the way again, and more than is left is refused, nothing moves
    let l = pay_address(payer, &to, 300).await.unwrap();
    net.settle_all().await;
    assert_eq!(net.lift_status(l).await[0].1, "good");
    match pay_address(payer, &to, 1).await {
        Ok(l) => {
            net.settle_all().await;
            assert!(net.lift_status(l).await.iter().all(|(_, s, _)| s == "void"));
        }
        Err(e) => assert_eq!(sqlstate(&e), "55000", "{e}"),
    }
    net.check_consistent().await;
}

/// `chips.route_check(address, units)`: (query, status, carries, max).
async fn route_check(
    u: &chips_tests::User,
    to: &Value,
    units: i64,
) -> (Option<String>, String, bool, i64) {
    let r =
        u.db.query_one("SELECT * FROM chips.route_check($1, $2)", &[to, &units])
            .await
            .unwrap();
    (r.get(0), r.get(1), r.get(2), r.get(3))
}

/// How many route rows a site holds.
async fn routes_at(s: &chips_tests::Site) -> i64 {
    s.admin
        .query_one("SELECT count(*) FROM chips.lift_routes", &[])
        .await
        .unwrap()
        .get(0)
}

/// `chips.route_check_result(query)`: (status, carries, max).
async fn route_check_result(u: &chips_tests::User, query: &str) -> (String, bool, i64) {
    let r =
        u.db.query_one("SELECT * FROM chips.route_check_result($1)", &[&query])
            .await
            .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

#[tokio::test]
async fn a_route_check_says_what_a_route_carries_and_holds_nothing() {
    // the tightest hop: site 1's u2 -> u3 (u3 offers 300); every other hop 500
    let net = Net::build(
        "check",
        500,
        Some(((1, 2), 300)),
        [47140, 47141, 47142, 47143],
    )
    .await;
    let before = net.positions().await;

    // at the payer's own site: answered at once, the widest route over its tallies
    let u00 = &net.users[0][0];
    let at_home = chad(&net.sites[0], &net.users[0][3]);
    assert_eq!(
        route_check(u00, &at_home, 500).await,
        (None, "found".into(), true, 500)
    );
    assert_eq!(
        route_check(u00, &at_home, 501).await,
        (None, "none".into(), false, 500)
    );
    let u10 = &net.users[1][0];
    let over_tight = chad(&net.sites[1], &net.users[1][3]);
    assert_eq!(
        route_check(u10, &over_tight, 1).await,
        (None, "found".into(), true, 300)
    );
    let back = chad(&net.sites[0], u00);
    assert_eq!(
        route_check(&net.users[0][3], &back, 1).await,
        (None, "none".into(), false, 0),
        "tallies carry value one way: u3 has no route back to u0 here"
    );

    // across three sites: a route query, as a payment's; answered as the sites answer
    let payee = &net.users[2][3];
    let far = chad(&net.sites[2], payee);
    for (units, status, carries, max) in [
        (300, "found", true, 300),
        (1, "found", true, 300),
        (301, "none", false, 0),
    ] {
        let (query, first, _, _) = route_check(u00, &far, units).await;
        let query = query.expect("a query across sites");
        assert_eq!(
            first, "seek",
            "{units}: the answer comes from the other sites"
        );
        net.settle().await;
        assert_eq!(
            route_check_result(u00, &query).await,
            (status.to_string(), carries, max),
            "{units} units"
        );
    }
    // its queries, like a payment's, never named the payee beyond its own site
    route_queries_hide_the_payee(&net, &payee.cuid, &[1]).await;

    // nothing was reserved or moved anywhere: no lift, no lift chit, the same positions
    for (k, s) in net.sites.iter().enumerate() {
        let (lifts, chits): (i64, i64) = {
            let r = s
                .admin
                .query_one(
                    "SELECT (SELECT count(*) FROM chips.lifts),
                            (SELECT count(*) FROM chips.chits WHERE chit_type = 'lift')",
                    &[],
                )
                .await
                .unwrap();
            (r.get(0), r.get(1))
        };
        assert_eq!((lifts, chits), (0, 0), "site {k} holds nothing for a check");
    }
    assert_eq!(net.positions().await, before);
    // and a payment of what the check found goes through
    let l = pay_address(u00, &far, 300).await.unwrap();
    net.settle_all().await;
    assert!(net.lift_status(l).await.iter().all(|(_, s, _)| s == "good"));

    // bad input: a clear SQLSTATE, and nothing written
    let stored = routes_at(&net.sites[0]).await;
    for (to, units, code) in [
        (far.clone(), 0, "22023"),
        (json!({"cuid": "u23"}), 5, "22023"),
        (back.clone(), 5, "22023"), // to oneself
        (
            json!({"cuid": "nobody", "agent": net.sites[0].agent_id()}),
            5,
            "42704",
        ),
    ] {
        let e = u00
            .db
            .query_one(
                "SELECT * FROM chips.route_check($1, $2)",
                &[&to, &(units as i64)],
            )
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e), code, "{to} {units}: {e}");
    }
    let (query, _, _, _) = route_check(u00, &far, 1).await;
    let query = query.unwrap();
    for (who, q) in [(&net.users[0][1], query.as_str()), (u00, "no-such-query")] {
        let e = who
            .db
            .query_one("SELECT * FROM chips.route_check_result($1)", &[&q])
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e), "42704", "{e}");
    }
    assert_eq!(
        routes_at(&net.sites[0]).await,
        stored + 2,
        "only the last check's rows (in, out)"
    );
}
