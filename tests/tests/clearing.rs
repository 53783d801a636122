//! Clearing inside one site: the optimal plan over local tallies, executed atomically as lifts
//! with one lift chit on both halves of every tally of each circle.

use chips_tests::{sqlstate, Cluster, Site, User};
use uuid::Uuid;

/// `debtor` owes `creditor` `units` on a new tally (the creditor is the vendor).
async fn owe(creditor: &User, debtor: &User, units: i64) -> Uuid {
    let t = creditor.open_with(debtor, 1_000_000, &[]).await.unwrap();
    debtor.pay(t, units, "").await.unwrap();
    t
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

async fn positions(s: &Site) -> Vec<(String, i64)> {
    s.admin
        .query(
            "SELECT ent, sum(net_good)::bigint FROM chips.tallies GROUP BY ent ORDER BY ent",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test]
async fn a_triangle_is_cleared_by_one_lift_and_net_positions_stay() {
    let s = Cluster::from_env()
        .site("t_clear_triangle", 65430)
        .await
        .unwrap();
    let (a, b, c) = (
        s.user("Ann", "ann").await.unwrap(),
        s.user("Bob", "bob").await.unwrap(),
        s.user("Cat", "cat").await.unwrap(),
    );
    let ab = owe(&b, &a, 5_000).await; // Ann owes Bob 5
    let bc = owe(&c, &b, 3_000).await; // Bob owes Cat 3
    let ca = owe(&a, &c, 7_000).await; // Cat owes Ann 7
    let before = positions(&s).await;

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
    assert_eq!(positions(&s).await, before);
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
    let before = positions(&s).await;
    s.admin
        .execute("SELECT * FROM chips.clear(execute => true)", &[])
        .await
        .unwrap();
    let total_after = total_debt(&s).await;
    // x on a->b->a and y on a->b->c->a, with x + y <= 6 (a->b), x <= 4, y <= 4: the most debt
    // cleared, 2x + 3y, is 16 at y = 4, x = 2 (a greedy lift of the 2-circle first clears 14).
    assert_eq!(total_before - total_after, 16_000);
    assert_eq!(positions(&s).await, before);
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
