//! Invitation tickets: one-time, reusable, expired, reused, unknown, cross-site.

use chips_tests::{errmsg, relay_all, sqlstate, Cluster, Site};
use serde_json::json;

async fn site(db: &str) -> Site {
    Cluster::from_env().site(db, 65430).await.expect("site")
}

#[tokio::test]
async fn one_time_ticket_cannot_be_reused() {
    let s = site("t_ticket_once").await;
    let ann = s.user("Ann", "ann").await.unwrap();
    let bob = s.user("Bob", "bob").await.unwrap();
    let cat = s.user("Cat", "cat").await.unwrap();
    let t = ann.draft("stock", json!({}), json!({}), "").await.unwrap();
    let ticket = ann.ticket(t, false).await.unwrap();
    assert_eq!(ticket["chad"]["cuid"], "ann");
    assert_eq!(ticket["chad"]["agent"], s.agent_id());
    assert_eq!(ticket["token"].as_str().unwrap().len(), 32);
    assert_eq!(bob.redeem(&ticket).await.unwrap(), Some(t));
    let e = cat.redeem(&ticket).await.unwrap_err();
    assert_eq!(sqlstate(&e), "55000", "{e}");
    let e = bob.redeem(&ticket).await.unwrap_err();
    assert_eq!(sqlstate(&e), "55000");
    let part: String = s
        .admin
        .query_one(
            "SELECT part_cert->'chad'->>'cuid' FROM chips.tallies WHERE tally_uuid = $1",
            &[&t],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(part, "bob", "the failed redemptions changed nothing");
}

#[tokio::test]
async fn reusable_ticket_makes_one_draft_per_redeemer() {
    let s = site("t_ticket_reuse").await;
    let shop = s.user("Corner Shop", "shop").await.unwrap();
    let bob = s.user("Bob", "bob").await.unwrap();
    let cat = s.user("Cat", "cat").await.unwrap();
    let template = shop
        .draft(
            "stock",
            json!({"limit": 2000}),
            json!({}),
            "customer account",
        )
        .await
        .unwrap();
    let ticket = shop.ticket(template, true).await.unwrap();
    let tb = bob.redeem(&ticket).await.unwrap().unwrap();
    let tc = cat.redeem(&ticket).await.unwrap().unwrap();
    assert!(tb != tc && tb != template && tc != template);
    assert_eq!(
        shop.state(template).await.unwrap().as_deref(),
        Some("draft"),
        "the template stays"
    );
    for t in [tb, tc] {
        assert_eq!(shop.state(t).await.unwrap().as_deref(), Some("P.draft"));
        assert_eq!(shop.doc(t).await.unwrap()["stock"]["terms"]["limit"], 2000);
    }
    shop.offer(tc).await.unwrap();
    assert_eq!(cat.accept(tc).await.unwrap(), "open");
    let uses: i32 = s
        .admin
        .query_one("SELECT uses FROM chips.tickets", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(uses, 2);
}

#[tokio::test]
async fn expired_unknown_and_own_tickets_refused() {
    let s = site("t_ticket_bad").await;
    let ann = s.user("Ann", "ann").await.unwrap();
    let bob = s.user("Bob", "bob").await.unwrap();
    let t = ann.draft("stock", json!({}), json!({}), "").await.unwrap();
    let ticket = ann.ticket(t, false).await.unwrap();

    let e = ann.redeem(&ticket).await.unwrap_err();
    assert_eq!(sqlstate(&e), "22023", "own ticket: {e}");

    let mut unknown = ticket.clone();
    unknown["token"] = json!("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    assert_eq!(sqlstate(&bob.redeem(&unknown).await.unwrap_err()), "42704");

    s.admin
        .execute(
            "UPDATE chips.tickets SET expires = now() - interval '1 second'",
            &[],
        )
        .await
        .unwrap();
    let e = bob.redeem(&ticket).await.unwrap_err();
    assert_eq!(sqlstate(&e), "55000");
    assert!(errmsg(&e).contains("expired"), "{}", errmsg(&e));
    assert_eq!(ann.state(t).await.unwrap().as_deref(), Some("draft"));

    for lifetime in ["0 seconds", "-1 hour", "91 days"] {
        let e = ann
            .db
            .execute(
                &format!("SELECT chips.ticket_create($1, lifetime => '{lifetime}')"),
                &[&t],
            )
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e), "22023", "{lifetime}");
    }
}

#[tokio::test]
async fn remote_ticket_refusals_reach_no_tally() {
    let cl = Cluster::from_env();
    let a = cl.site("t_ticket_ra", 65441).await.unwrap();
    let b = cl.site("t_ticket_rb", 65442).await.unwrap();
    let ann = a.user("Ann", "ann").await.unwrap();
    let eve = b.user("Eve", "eve").await.unwrap();
    let fay = b.user("Fay", "fay").await.unwrap();
    let t = ann.draft("stock", json!({}), json!({}), "").await.unwrap();
    let ticket = ann.ticket(t, false).await.unwrap();
    eve.redeem(&ticket).await.unwrap();
    fay.redeem(&ticket).await.unwrap();
    let r = relay_all(&[&a, &b]).await.unwrap();
    assert_eq!(
        (r.applied, r.failed),
        (1, 1),
        "the second redemption of a one-time ticket is refused"
    );
    let part: String = a
        .admin
        .query_one(
            "SELECT part_cert->'chad'->>'cuid' FROM chips.tallies WHERE tally_uuid = $1",
            &[&t],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(part, "eve");
}
