//! Clearing inside one site: the optimal plan over local tallies, executed atomically as lifts
//! with one lift chit on both halves of every tally of each circle.

use chips_tests::{net_positions, sqlstate, Cluster, Site, User};
use uuid::Uuid;

/// `debtor` owes `creditor` `units` on a new tally (the creditor is the vendor).
async fn owe(creditor: &User, debtor: &User, units: i64) -> Uuid {
    let t = creditor.open_with(debtor, 1_000_000, &[]).await.unwrap();
    debtor.pay(t, units, "").await.unwrap();
    t
}

/// Three users of `s`: Ann (p1000), Bob (p1001), Cat (p1002).
async fn ann_bob_cat(s: &Site) -> (User, User, User) {
    (
        s.user("Ann", "ann").await.unwrap(),
        s.user("Bob", "bob").await.unwrap(),
        s.user("Cat", "cat").await.unwrap(),
    )
}

/// What all debtors owe (each tally's stock half is owed its balance).
async fn total_debt(s: &Site) -> i64 {
    s.admin
        .query_one(
            "SELECT sum(net_good)::bigint FROM chips.tallies WHERE side = 'stock'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_triangle_is_cleared_by_one_lift_and_net_positions_stay() {
    let s = Cluster::from_env()
        .site("t_clear_triangle", 65430)
        .await
        .unwrap();
    let (a, b, c) = ann_bob_cat(&s).await;
    let ab = owe(&b, &a, 5_000).await; // Ann owes Bob 5
    let bc = owe(&c, &b, 3_000).await; // Bob owes Cat 3
    let ca = owe(&a, &c, 7_000).await; // Cat owes Ann 7
    let before = net_positions(&s.admin).await;

    // A dry run plans and changes nothing.
    let plan = s
        .admin
        .query(
            "SELECT lift, units, tallies, status FROM chips.clear()",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(plan.len(), 1);
    assert_eq!(
        (
            plan[0].get::<_, i64>(1),
            plan[0].get::<_, i32>(2),
            plan[0].get::<_, String>(3)
        ),
        (3_000, 3, "planned".into())
    );
    assert_eq!(a.balance(ab).await.unwrap().0, -5_000);

    let done = s
        .admin
        .query(
            "SELECT lift, units, status FROM chips.clear(execute => true)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].get::<_, String>(2), "good");
    let lift: Uuid = done[0].get(0);
    // Each debt is 3 lower; nobody's net position moved.
    assert_eq!(a.balance(ab).await.unwrap().0, -2_000);
    assert_eq!(b.balance(bc).await.unwrap().0, 0);
    assert_eq!(c.balance(ca).await.unwrap().0, -4_000);
    assert_eq!(net_positions(&s.admin).await, before);
    // One lift chit on both halves of each tally, chained, and every half still audits clean.
    let n: i64 = s
        .admin
        .query_one(
            "SELECT count(*) FROM chips.chits c JOIN chips.lifts l ON l.id = c.lift_id
             WHERE l.lift_uuid = $1 AND c.chit_type = 'lift' AND c.chain_idx IS NOT NULL",
            &[&lift],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 6);
    for t in [ab, bc, ca] {
        assert!(s.audit_failures(t).await.unwrap().is_empty());
        assert_eq!(
            s.chain(t, "stock").await.unwrap(),
            s.chain(t, "foil").await.unwrap()
        );
    }
    // Nothing is left to clear.
    let again = s
        .admin
        .query("SELECT * FROM chips.clear(execute => true)", &[])
        .await
        .unwrap();
    assert!(again.is_empty());
}

#[tokio::test]
async fn overlapping_circles_clear_the_optimum() {
    let s = Cluster::from_env()
        .site("t_clear_optimum", 65430)
        .await
        .unwrap();
    let u: Vec<User> =
        futures_util::future::join_all(["a", "b", "c", "d"].iter().map(|n| s.user(n, n)))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    // Two circles share the debt a->b: a->b->a (4) and a->b->c->a (4) with a->b = 6.
    owe(&u[1], &u[0], 6_000).await; // a owes b 6
    owe(&u[0], &u[1], 4_000).await; // b owes a 4
    owe(&u[2], &u[1], 4_000).await; // b owes c 4
    owe(&u[0], &u[2], 4_000).await; // c owes a 4
    let total_before = total_debt(&s).await;
    let before = net_positions(&s.admin).await;
    s.admin
        .execute("SELECT * FROM chips.clear(execute => true)", &[])
        .await
        .unwrap();
    let total_after = total_debt(&s).await;
    // x on a->b->a and y on a->b->c->a, with x + y <= 6 (a->b), x <= 4, y <= 4: the most debt
    // cleared, 2x + 3y, is 16 at y = 4, x = 2 (a greedy lift of the 2-circle first clears 14).
    assert_eq!(total_before - total_after, 16_000);
    assert_eq!(net_positions(&s.admin).await, before);
    let e = s
        .admin
        .execute("SELECT * FROM chips.clear(min_units => 0)", &[])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "22023");
    // Users may not clear; the plan is not theirs to run.
    let e = u[0]
        .db
        .execute("SELECT * FROM chips.clear()", &[])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
}

/// Debt left on the site: sum over tallies of |balance|.
async fn abs_debt(s: &Site) -> i64 {
    s.admin
        .query_one(
            "SELECT coalesce(sum(abs(net_good)), 0)::bigint FROM chips.tallies WHERE side = 'stock'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

async fn stock_balance(s: &Site, t: Uuid) -> i64 {
    s.admin
        .query_one(
            "SELECT net_good FROM chips.tallies WHERE tally_uuid = $1 AND side = 'stock'",
            &[&t],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn trading_variables_limits_and_the_margin_policy_shape_the_lifts() {
    let s = Cluster::from_env()
        .site("t_clear_vars", 65430)
        .await
        .unwrap();
    let (a, b, c) = ann_bob_cat(&s).await;
    let ab = owe(&b, &a, 10_000).await; // Ann owes Bob 10
    let bc = owe(&c, &b, 10_000).await; // Bob owes Cat 10
    let ca = c.open_with(&a, 1_000_000, &[]).await.unwrap(); // Cat vendor to Ann, at zero
    let before = net_positions(&s.admin).await;
    let plan = |max_margin: f64| {
        let s = &s;
        async move {
            s.admin
                .query(
                    "SELECT debtor, creditor, units, costed, margin
                     FROM chips.clearing_plan(max_margin => $1) ORDER BY circle, step",
                    &[&max_margin],
                )
                .await
                .unwrap()
        }
    };
    // Closing the circle needs Ann to end up owing Cat: Cat has not said it wants that.
    assert!(plan(0.0).await.is_empty());
    // Cat will hold 4 of Ann's credit free, up to 10 at a 1 % reward.
    c.settings(
        ca,
        serde_json::json!({"target": 4_000, "bound": 10_000, "reward": 0.01, "clutch": 0.0}),
    )
    .await
    .unwrap();
    let free = plan(0.0).await;
    assert_eq!(free.len(), 3);
    assert!(free
        .iter()
        .all(|r| r.get::<_, i64>(2) == 4_000 && !r.get::<_, bool>(3)));
    let costed = plan(0.02).await;
    assert_eq!(costed.len(), 3);
    assert!(costed.iter().all(|r| r.get::<_, i64>(2) == 10_000));
    let step_ca = costed
        .iter()
        .find(|r| r.get::<_, String>(0) == c.ent)
        .expect("a step from Cat");
    assert_eq!(step_ca.get::<_, String>(1), a.ent);
    assert!(step_ca.get::<_, bool>(3), "beyond Cat's target: costed");
    assert!((step_ca.get::<_, f64>(4) - 0.01).abs() < 1e-9);
    // A bad policy is refused.
    let e = s
        .admin
        .query("SELECT * FROM chips.clearing_plan(max_margin => 2)", &[])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "22023");

    // The site accepts margins up to 2 %: the pass lifts 10 (Cat at its bound), nothing more.
    s.admin
        .execute("SELECT chips.clearing_configure(max_margin => 0.02)", &[])
        .await
        .unwrap();
    let done = s
        .admin
        .query(
            "SELECT units, status FROM chips.clear(execute => true)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].get::<_, i64>(0), 10_000);
    assert_eq!(stock_balance(&s, ab).await, 0);
    assert_eq!(stock_balance(&s, bc).await, 0);
    assert_eq!(stock_balance(&s, ca).await, 10_000, "Ann now owes Cat 10");
    assert_eq!(abs_debt(&s).await, 10_000);
    assert_eq!(net_positions(&s.admin).await, before);
    for t in [ab, bc, ca] {
        assert!(s.audit_failures(t).await.unwrap().is_empty());
    }
    assert!(s
        .admin
        .query("SELECT * FROM chips.clear(execute => true)", &[])
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn a_lift_through_one_user_and_who_sees_it() {
    let s = Cluster::from_env()
        .site("t_clear_through", 65430)
        .await
        .unwrap();
    let u: Vec<User> =
        futures_util::future::join_all(["a", "b", "c", "d", "e", "f"].iter().map(|n| s.user(n, n)))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    // Two separate circles: a->b->c->a and d->e->f->d.
    owe(&u[1], &u[0], 3_000).await;
    owe(&u[2], &u[1], 3_000).await;
    owe(&u[0], &u[2], 3_000).await;
    let de = owe(&u[4], &u[3], 5_000).await; // d owes e 5
    let ef = owe(&u[5], &u[4], 6_000).await; // e owes f 6
    owe(&u[3], &u[5], 7_000).await; // f owes d 7

    // e asks for the lifts through itself: only its own circle moves.
    let e = &u[4];
    let planned =
        e.db.query("SELECT units, status FROM chips.lift_through_me()", &[])
            .await
            .unwrap();
    assert_eq!(planned.len(), 1);
    assert_eq!(planned[0].get::<_, String>(1), "planned");
    let done =
        e.db.query(
            "SELECT lift, units, tallies, status FROM chips.lift_through_me(execute => true)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(
        (done[0].get::<_, i64>(1), done[0].get::<_, i32>(2)),
        (5_000, 3)
    );
    let lift: Uuid = done[0].get(0);
    assert_eq!(stock_balance(&s, de).await, 0);
    assert_eq!(stock_balance(&s, ef).await, 1_000);
    assert_eq!(abs_debt(&s).await, 9_000 + 1_000 + 2_000);

    // e sees the lift on its two tallies: owed 5 less by d, owing 5 less to f.
    let mine =
        e.db.query(
            "SELECT tally, change, through FROM chips.lifts_v WHERE lift = $1 ORDER BY change",
            &[&lift],
        )
        .await
        .unwrap();
    let changes: Vec<(Uuid, i64)> = mine.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(changes, vec![(de, -5_000), (ef, 5_000)]);
    assert_eq!(mine[0].get::<_, Option<String>>(2), Some(e.ent.clone()));
    // a, not on the circle, sees neither the lift nor its chits.
    for sql in [
        "SELECT count(*) FROM chips.lifts_v",
        "SELECT count(*) FROM chips.lifts",
        "SELECT count(*) FROM chips.chits WHERE chit_type = 'lift'",
    ] {
        let n: i64 = u[0].db.query_one(sql, &[]).await.unwrap().get(0);
        assert_eq!(n, 0, "{sql}");
    }
    let n: i64 =
        e.db.query_one("SELECT count(*) FROM chips.lifts", &[])
            .await
            .unwrap()
            .get(0);
    assert_eq!(n, 1);
    // The admin may ask through anyone, but only an existing user.
    let err = s
        .admin
        .query("SELECT * FROM chips.clear(through => 'nobody')", &[])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "42704");
    let through_a = s
        .admin
        .query(
            "SELECT units FROM chips.clear(execute => true, through => $1)",
            &[&u[0].ent],
        )
        .await
        .unwrap();
    assert_eq!(through_a.len(), 1);
    assert_eq!(abs_debt(&s).await, 3_000);
}

#[tokio::test]
async fn a_payment_during_the_pass_shrinks_the_lift() {
    let s = Cluster::from_env()
        .site("t_clear_stale", 65430)
        .await
        .unwrap();
    let (a, b, c) = ann_bob_cat(&s).await;
    let ab = owe(&b, &a, 10_000).await;
    let bc = owe(&c, &b, 10_000).await;
    let ca = owe(&a, &c, 10_000).await;
    let before = net_positions(&s.admin).await;
    // Bob pays Ann 4 (lowering what she owes him) in a transaction still open when the pass
    // starts: the pass plans 10 on the balances it sees, waits for the tally's lock, then
    // re-checks and lifts only 6.
    b.db.batch_execute("BEGIN").await.unwrap();
    b.pay(ab, 4_000, "during the pass").await.unwrap();
    let dsn = s.dsn.clone();
    let pass = tokio::spawn(async move {
        let admin = chips_tests::connect(&dsn).await.unwrap();
        admin
            .query(
                "SELECT units, status FROM chips.clear(execute => true)",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get::<_, i64>(0), r.get::<_, String>(1)))
            .collect::<Vec<_>>()
    });
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert!(
        !pass.is_finished(),
        "the pass waits for the paying transaction"
    );
    b.db.batch_execute("COMMIT").await.unwrap();
    let done = pass.await.unwrap();
    assert_eq!(done, vec![(6_000, "good".to_string())]);
    assert_eq!(stock_balance(&s, ab).await, 0);
    assert_eq!(stock_balance(&s, bc).await, 4_000);
    assert_eq!(stock_balance(&s, ca).await, 4_000);
    // Bob paid 4 of his own: his and Ann's positions moved by exactly that, no one else's.
    let after = net_positions(&s.admin).await;
    for ((ent, x), (_, y)) in before.iter().zip(&after) {
        let moved = if *ent == a.ent {
            4_000
        } else if *ent == b.ent {
            -4_000
        } else {
            0
        };
        assert_eq!(y - x, moved, "{ent}");
    }
}

#[tokio::test]
async fn automatic_clearing_runs_when_due_and_tells_the_users() {
    let s = Cluster::from_env()
        .site("t_clear_auto", 65430)
        .await
        .unwrap();
    let (a, b, c) = ann_bob_cat(&s).await;
    owe(&b, &a, 2_000).await;
    owe(&c, &b, 2_000).await;
    owe(&a, &c, 2_000).await;
    let tick = || async {
        // simple_query: the procedure's INOUT results as text (units is numeric)
        let rows = s
            .admin
            .simple_query("CALL chips.clearing_tick()")
            .await
            .unwrap();
        let r = rows
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
                _ => None,
            })
            .expect("CALL returns its INOUT values");
        (
            r.get(0) == Some("t"),
            r.get(1).unwrap().parse::<i32>().unwrap(),
            r.get(2).unwrap().parse::<i64>().unwrap(),
        )
    };
    // Off by default.
    assert_eq!(tick().await, (false, 0, 0));
    assert_eq!(abs_debt(&s).await, 6_000);
    let (_l, mut notes) = chips_tests::listen(&s.dsn, &[&format!("chips_user_{}", a.ent)])
        .await
        .unwrap();
    s.admin
        .execute(
            "SELECT chips.clearing_configure(enabled => true, every => '1 hour', min_units => 1000)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(tick().await, (true, 1, 6_000));
    assert_eq!(abs_debt(&s).await, 0);
    // Not due again for an hour.
    owe(&b, &a, 2_000).await;
    owe(&a, &b, 2_000).await;
    assert_eq!(tick().await, (false, 0, 0));
    let got = chips_tests::drain(&mut notes, std::time::Duration::from_millis(500)).await;
    // Ann hears of the pass once, for both of her tallies it moved.
    let lifts: Vec<_> = got.iter().filter(|(_, p)| p["target"] == "lift").collect();
    assert_eq!(lifts.len(), 1, "one note per user and pass: {got:?}");
    assert_eq!(
        (&lifts[0].1["tallies"], &lifts[0].1["units"]),
        (&2.into(), &4_000.into())
    );
    // ...and so does her event feed: one lift event for both tallies, her position unmoved.
    let events = s
        .admin
        .query(
            "SELECT body FROM chips.events_v WHERE ent = $1 AND kind = 'lift'",
            &[&a.ent],
        )
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    let body: serde_json::Value = events[0].get(0);
    assert_eq!(body["tallies"], 2);
    assert_eq!(
        (&body["change"], &body["units"]),
        (&0.into(), &4_000.into())
    );
    // Bad settings are refused and change nothing.
    let e = s
        .admin
        .execute("SELECT chips.clearing_configure(every => '0 seconds')", &[])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "22023");
    let e =
        a.db.execute("SELECT chips.clearing_configure(enabled => false)", &[])
            .await
            .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
}

/// One continuous-clearing tick: (circles lifted, units moved).
async fn continuous_tick(db: &tokio_postgres::Client) -> (i32, i64) {
    let r = db
        .query_one(
            "SELECT lifts, units::bigint FROM chips.clearing_continuous()",
            &[],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1))
}

#[tokio::test]
async fn continuous_clearing_lifts_the_circle_a_payment_closes() {
    let s = Cluster::from_env()
        .site("t_clear_continuous", 65430)
        .await
        .unwrap();
    let (a, b, c) = ann_bob_cat(&s).await;
    // one session ticks, as chipsd's continuous timer does (it keeps the graph between ticks)
    let ticker = chips_tests::connect(&s.dsn).await.unwrap();
    let ab = owe(&b, &a, 5_000).await; // Ann owes Bob 5
    let bc = owe(&c, &b, 3_000).await; // Bob owes Cat 3
    let ca = a.open_with(&c, 1_000_000, &[]).await.unwrap(); // Ann vendor to Cat
                                                             // Off until the site turns it on.
    assert_eq!(continuous_tick(&ticker).await, (0, 0));
    s.admin
        .execute(
            "SELECT chips.clearing_configure(enabled => true, continuous => true)",
            &[],
        )
        .await
        .unwrap();
    // The first tick reads the site: no circle yet.
    assert_eq!(continuous_tick(&ticker).await, (0, 0));
    // Cat's payment to Ann (Cat owes Ann 2) closes a circle; it commits after the tick that
    // followed its write, and the next tick still sees it.
    c.db.batch_execute("BEGIN").await.unwrap();
    c.pay(ca, 2_000, "closes the circle").await.unwrap();
    assert_eq!(continuous_tick(&ticker).await, (0, 0), "not committed yet");
    c.db.batch_execute("COMMIT").await.unwrap();
    let before = net_positions(&s.admin).await;
    assert_eq!(continuous_tick(&ticker).await, (1, 6_000));
    assert_eq!(stock_balance(&s, ab).await, 3_000);
    assert_eq!(stock_balance(&s, bc).await, 1_000);
    assert_eq!(stock_balance(&s, ca).await, 0);
    assert_eq!(net_positions(&s.admin).await, before);
    for t in [ab, bc, ca] {
        assert!(s.audit_failures(t).await.unwrap().is_empty());
    }
    // Nothing changed since but the lift's own chits: nothing to do.
    assert_eq!(continuous_tick(&ticker).await, (0, 0));
    let n: i64 = s
        .admin
        .query_one("SELECT count(*) FROM chips.lifts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}
