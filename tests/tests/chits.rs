//! Chits: payments, invoices, settings, balances, limits, signatures, and the chain that both
//! halves of a tally must agree on, within one site and across two, under loss, duplication,
//! reordering and concurrency.

use std::time::Duration;

use chips_tests::{
    connect, drain, errmsg, listen, relay, relay_all, sqlstate, Cluster, Site, User,
};
use serde_json::{json, Value};
use uuid::Uuid;

async fn site(db: &str) -> Site {
    Cluster::from_env().site(db, 65430).await.expect("site")
}

/// Ann (vendor, stock) and Bob (client, foil) with an open tally on which Ann grants `limit`.
async fn local_pair(db: &str, limit: i64) -> (Site, User, User, Uuid) {
    let s = site(db).await;
    let ann = s.user("Ann", "ann").await.unwrap();
    let bob = s.user("Bob", "bob").await.unwrap();
    let t = ann.open_with(&bob, limit, &[]).await.unwrap();
    (s, ann, bob, t)
}

async fn count(s: &Site, q: &str) -> i64 {
    s.admin.query_one(q, &[]).await.unwrap().get(0)
}

/// The numbers of a user's events (of `kind`, or all), in order.
async fn feed(s: &Site, ent: &str, kind: Option<&str>) -> Vec<i64> {
    s.admin
        .query(
            "SELECT seq FROM chips.events WHERE ent = $1 AND kind = coalesce($2, kind) ORDER BY seq",
            &[&ent, &kind],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn payments_move_balances_on_both_halves_and_chain_them() {
    let (s, ann, bob, t) = local_pair("t_chit_pay", 10_000).await;
    let c1 = bob.pay(t, 1_500, "bread").await.unwrap();
    bob.pay(t, 2_500, "cake").await.unwrap();
    assert_eq!(bob.balance(t).await.unwrap(), (-4_000, -4_000));
    assert_eq!(ann.balance(t).await.unwrap(), (4_000, 4_000));
    assert_eq!(
        bob.chit_state(t, c1).await.unwrap().as_deref(),
        Some("L.good")
    );
    assert_eq!(
        ann.chit_state(t, c1).await.unwrap().as_deref(),
        Some("A.good")
    );
    // Ann pays some back (she may: Bob owes her more than that).
    ann.pay(t, 1_000, "refund").await.unwrap();
    assert_eq!(bob.balance(t).await.unwrap().0, -3_000);
    let (foil, stock) = (
        s.chain(t, "foil").await.unwrap(),
        s.chain(t, "stock").await.unwrap(),
    );
    assert_eq!(foil.len(), 3);
    assert_eq!(foil, stock, "both halves hold the same chain");
    assert!(s.audit_failures(t).await.unwrap().is_empty());
    assert_eq!(
        count(&s, "SELECT count(*) FROM chips.outbox").await,
        0,
        "a local tally needs no peer traffic"
    );
    assert_eq!(
        count(&s, "SELECT chips.chain_sync()::bigint").await,
        0,
        "nor any sync: both halves chain together (syncing locked the stock half after the foil half, a deadlock with payments)"
    );
    // Both halves are marked updated by the last payment (by the balance update itself, which
    // the tallies_bu trigger's WHEN clause then skips).
    let stamped = count(
        &s,
        &format!(
            "SELECT count(*) FROM chips.tallies x WHERE x.tally_uuid = '{t}'
               AND x.updated = (SELECT max(c.created) FROM chips.chits c WHERE c.tally_id = x.id)"
        ),
    )
    .await;
    assert_eq!(stamped, 2);
}

#[tokio::test]
async fn over_limit_payment_is_refused_and_writes_nothing() {
    let (s, ann, bob, t) = local_pair("t_chit_limit", 5_000).await;
    bob.pay(t, 4_000, "").await.unwrap();
    let e = bob.pay(t, 1_001, "").await.unwrap_err();
    assert_eq!(sqlstate(&e), "23514", "{}", errmsg(&e));
    assert!(
        errmsg(&e).contains("credit limit of 5000"),
        "{}",
        errmsg(&e)
    );
    bob.pay(t, 1_000, "exactly to the limit").await.unwrap();
    assert_eq!(sqlstate(&bob.pay(t, 1, "").await.unwrap_err()), "23514");
    // Ann granted credit; Bob granted none: Ann cannot pay beyond what Bob owes her.
    assert_eq!(sqlstate(&ann.pay(t, 5_001, "").await.unwrap_err()), "23514");
    ann.pay(t, 5_000, "").await.unwrap();
    assert_eq!(ann.balance(t).await.unwrap(), (0, 0));
    assert_eq!(
        count(&s, "SELECT count(*) FROM chips.chits").await,
        6,
        "3 good chits on 2 halves"
    );
    assert!(s.audit_failures(t).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_local_tally_whose_halves_are_out_of_step_refuses_payments_and_writes_nothing() {
    // Both halves of a local tally are written by one statement at the same place in the chain;
    // a stock half whose chain tip differs from the foil half's (here tampered with directly)
    // must refuse the chit rather than chain the two halves differently.
    let (s, _ann, bob, t) = local_pair("t_chit_step", 5_000).await;
    bob.pay(t, 100, "before").await.unwrap();
    s.admin
        .execute(
            "UPDATE chips.tallies SET chain_tip = sha256(chain_tip)
             WHERE tally_uuid = $1 AND side = 'stock'",
            &[&t],
        )
        .await
        .unwrap();
    let chits = count(&s, "SELECT count(*) FROM chips.chits").await;
    let e = bob.pay(t, 200, "after").await.unwrap_err();
    assert_eq!(sqlstate(&e), "55000", "{}", errmsg(&e));
    assert!(errmsg(&e).contains("chain chit"), "{}", errmsg(&e));
    assert_eq!(count(&s, "SELECT count(*) FROM chips.chits").await, chits);
    assert_eq!(bob.balance(t).await.unwrap(), (-100, -100));
}

#[tokio::test]
async fn invoices_are_signed_or_declined() {
    let (s, ann, bob, t) = local_pair("t_chit_invoice", 10_000).await;
    let ch = format!("chips_user_{}", bob.ent);
    let (_l, mut rx) = listen(&s.dsn, &[&ch]).await.unwrap();
    let inv = ann.invoice(t, 2_000, "March delivery").await.unwrap();
    assert_eq!(
        ann.chit_state(t, inv).await.unwrap().as_deref(),
        Some("A.pend")
    );
    assert_eq!(
        bob.chit_state(t, inv).await.unwrap().as_deref(),
        Some("L.pend")
    );
    assert_eq!(
        ann.balance(t).await.unwrap(),
        (0, 2_000),
        "pending until signed"
    );
    let notes = drain(&mut rx, Duration::from_millis(300)).await;
    assert!(notes.iter().any(|(_, p)| p["target"] == "chit"
        && p["action"] == "sign"
        && p["uuid"] == inv.to_string()));
    // Ann cannot sign her own invoice.
    let e = ann
        .db
        .execute("SELECT chips.chit_sign($1, $2, 'x')", &[&t, &inv])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "55000");
    assert_eq!(bob.sign_invoice(t, inv).await.unwrap(), "good");
    assert_eq!(
        ann.chit_state(t, inv).await.unwrap().as_deref(),
        Some("A.good")
    );
    assert_eq!(ann.balance(t).await.unwrap(), (2_000, 2_000));
    // A second invoice, declined by Bob; a third, withdrawn by Ann.
    let inv2 = ann.invoice(t, 500, "").await.unwrap();
    assert_eq!(bob.decline(t, inv2).await.unwrap(), "void");
    assert_eq!(
        ann.chit_state(t, inv2).await.unwrap().as_deref(),
        Some("A.void")
    );
    let inv3 = ann.invoice(t, 700, "").await.unwrap();
    assert_eq!(ann.decline(t, inv3).await.unwrap(), "void");
    assert_eq!(
        bob.chit_state(t, inv3).await.unwrap().as_deref(),
        Some("L.void")
    );
    assert_eq!(
        sqlstate(&bob.sign_invoice(t, inv3).await.unwrap_err()),
        "55000"
    );
    assert_eq!(ann.balance(t).await.unwrap(), (2_000, 2_000));
    // An invoice past the limit cannot be signed.
    let big = ann.invoice(t, 9_000, "").await.unwrap();
    assert_eq!(
        sqlstate(&bob.sign_invoice(t, big).await.unwrap_err()),
        "23514"
    );
    assert!(s.audit_failures(t).await.unwrap().is_empty());
}

#[tokio::test]
async fn forged_tampered_and_malformed_chits_are_refused() {
    let (s, ann, bob, t) = local_pair("t_chit_forged", 10_000).await;
    let doc: Value = bob
        .db
        .query_one("SELECT chips.chit_json($1, 1000, 'x')", &[&t])
        .await
        .unwrap()
        .get(0);
    let mallory = chips_core::sign::KeyPair::from_phrase("mallory");
    let forged = mallory.sign_json(&doc).unwrap();
    let issue = |doc: Value, sig: Option<String>| {
        let db = &bob.db;
        async move {
            db.query_one("SELECT chips.chit_issue($1, $2)", &[&doc, &sig])
                .await
        }
    };
    assert_eq!(
        sqlstate(&issue(doc.clone(), Some(forged)).await.unwrap_err()),
        "28000"
    );
    // Bob signs 1000, someone raises it to 100000.
    let sig = bob.key.sign_json(&doc).unwrap();
    let mut raised = doc.clone();
    raised["units"] = json!(100_000);
    assert_eq!(
        sqlstate(&issue(raised, Some(sig.clone())).await.unwrap_err()),
        "28000"
    );
    assert_eq!(
        sqlstate(&issue(doc.clone(), None).await.unwrap_err()),
        "28000"
    );
    assert_eq!(
        sqlstate(&issue(doc.clone(), Some("short".into())).await.unwrap_err()),
        "22P02"
    );
    // Bob cannot issue a chit in Ann's name, nor a lift chit, nor one dated last year.
    let mut by_ann = doc.clone();
    by_ann["by"] = json!("stock");
    let s_ = bob.key.sign_json(&by_ann).unwrap();
    assert_eq!(
        sqlstate(&issue(by_ann, Some(s_)).await.unwrap_err()),
        "22023"
    );
    let mut old = doc.clone();
    old["date"] = json!("2025-01-01T00:00:00.000Z");
    let s_ = bob.key.sign_json(&old).unwrap();
    assert_eq!(sqlstate(&issue(old, Some(s_)).await.unwrap_err()), "22023");
    for bad in [
        json!({"units": 0}),
        json!({"units": -5}),
        json!({"type": "lift"}),
        json!({"extra": 1}),
    ] {
        let mut d = doc.clone();
        for (k, v) in bad.as_object().unwrap() {
            d[k] = v.clone();
        }
        let s_ = bob.key.sign_json(&d).unwrap();
        assert_eq!(sqlstate(&issue(d, Some(s_)).await.unwrap_err()), "22023");
    }
    assert_eq!(
        count(&s, "SELECT count(*) FROM chips.chits").await,
        0,
        "nothing refused was written"
    );
    // The genuine one goes through; sending it again is a harmless retry; reusing its uuid for
    // other content is refused.
    assert_eq!(
        issue(doc.clone(), Some(sig.clone()))
            .await
            .unwrap()
            .get::<_, String>(0),
        "good"
    );
    assert_eq!(
        issue(doc.clone(), Some(sig))
            .await
            .unwrap()
            .get::<_, String>(0),
        "good"
    );
    let mut other = doc.clone();
    other["memo"] = json!("y");
    let s_ = bob.key.sign_json(&other).unwrap();
    assert_eq!(
        sqlstate(&issue(other, Some(s_)).await.unwrap_err()),
        "23505"
    );
    assert_eq!(bob.balance(t).await.unwrap().0, -1000);
    // Ann on a tally she does not hold, chits on a tally that is not open.
    let draft = ann.draft("stock", json!({}), json!({}), "").await.unwrap();
    let e = ann
        .db
        .execute("SELECT chips.chit_json($1, 5)", &[&draft])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "55000");
}

#[tokio::test]
async fn chit_status_rules_hold_for_direct_sql() {
    let (s, ann, bob, t) = local_pair("t_chit_matrix", 10_000).await;
    let good = bob.pay(t, 100, "").await.unwrap();
    let pend = ann.invoice(t, 200, "").await.unwrap();
    let void = ann.invoice(t, 300, "").await.unwrap();
    bob.decline(t, void).await.unwrap();
    let try_sql = |q: String| {
        let a = &s.admin;
        async move {
            a.batch_execute("BEGIN").await.unwrap();
            let r = a.execute(&q, &[]).await;
            a.batch_execute("ROLLBACK").await.unwrap();
            r
        }
    };
    let upd = |chit: Uuid, set: &str| {
        format!("UPDATE chips.chits SET {set} WHERE chit_uuid = '{chit}' AND tally_id = (SELECT id FROM chips.tallies WHERE tally_uuid = '{t}' AND side = 'foil')")
    };
    for (chit, set, code) in [
        (good, "status = 'void'", "55000"),
        (good, "status = 'pend'", "55000"),
        (void, "status = 'good'", "55000"),
        (void, "status = 'pend'", "55000"),
        (pend, "status = 'good'", "28000"),
        (pend, "status = 'good', signature = 'AAAA'", "22P02"),
        (good, "units = 1", "55000"),
        (good, "memo = 'rewritten'", "55000"),
        (good, "chain_idx = 7", "55000"),
        (good, "signature = NULL", "55000"),
    ] {
        let e = try_sql(upd(chit, set)).await.unwrap_err();
        assert_eq!(sqlstate(&e), code, "{set}: {}", errmsg(&e));
    }
    // Allowed: pend -> void by hand (an administrator cancelling an invoice).
    assert_eq!(try_sql(upd(pend, "status = 'void'")).await.unwrap(), 1);
    // An invented good chit is refused: its signature does not verify.
    let e = try_sql(format!(
        "INSERT INTO chips.chits (tally_id, chit_uuid, chit_type, issuer, units, chit_date, signature, status, value)
         SELECT id, gen_random_uuid(), 'tran', 'foil', 5, now(), '{}', 'good', 5 FROM chips.tallies WHERE tally_uuid = '{t}' AND side = 'stock'",
        "A".repeat(86)
    ))
    .await
    .unwrap_err();
    assert_eq!(sqlstate(&e), "28000", "{}", errmsg(&e));
}

#[tokio::test]
async fn settings_and_closing() {
    let (s, ann, bob, t) = local_pair("t_chit_settings", 10_000).await;
    assert_eq!(
        bob.settings(
            t,
            json!({"target": 3000, "bound": 7000, "reward": 0.02, "clutch": 0.04})
        )
        .await
        .unwrap(),
        "good"
    );
    let r = s
        .admin
        .query_one("SELECT target, bound, reward, clutch FROM chips.tallies WHERE tally_uuid = $1 AND side = 'foil'", &[&t])
        .await
        .unwrap();
    assert_eq!(
        (
            r.get::<_, i64>(0),
            r.get::<_, i64>(1),
            r.get::<_, f64>(2),
            r.get::<_, f64>(3)
        ),
        (3000, 7000, 0.02, 0.04)
    );
    let sets: Value = s
        .admin
        .query_one(
            "SELECT part_sets FROM chips.tallies WHERE tally_uuid = $1 AND side = 'stock'",
            &[&t],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        sets,
        json!({"target": 3000, "bound": 7000, "reward": 0.02, "clutch": 0.04}),
        "Ann's half knows Bob's settings"
    );
    let e = bob.settings(t, json!({"target": 9000})).await.unwrap_err();
    assert_eq!(sqlstate(&e), "22023", "target above bound: {}", errmsg(&e));
    let e = bob.settings(t, json!({"colour": "red"})).await.unwrap_err();
    assert_eq!(sqlstate(&e), "22023");

    // Close with a balance: closing until it is zero, then closed on both halves.
    bob.pay(t, 2_000, "").await.unwrap();
    assert_eq!(
        ann.settings(t, json!({"close": true})).await.unwrap(),
        "good"
    );
    assert_eq!(ann.state(t).await.unwrap().as_deref(), Some("closing"));
    assert_eq!(bob.state(t).await.unwrap().as_deref(), Some("closing"));
    ann.pay(t, 2_000, "settled").await.unwrap();
    assert_eq!(ann.state(t).await.unwrap().as_deref(), Some("closed"));
    assert_eq!(bob.state(t).await.unwrap().as_deref(), Some("closed"));
    assert_eq!(sqlstate(&bob.pay(t, 1, "").await.unwrap_err()), "55000");
    assert!(s.audit_failures(t).await.unwrap().is_empty());
}

/// A custodial user (the database holds their key) and a connection acting as them.
async fn custodial(s: &Site, name: &str, cuid: &str) -> (String, tokio_postgres::Client) {
    let ent: String = s
        .admin
        .query_one(
            "SELECT chips.user_create($1, $2, custodial => true)",
            &[&name, &cuid],
        )
        .await
        .unwrap()
        .get(0);
    let db = s.connect_as(&ent).await.unwrap();
    (ent, db)
}

/// An open tally between two custodial users of one site: `vendor` grants `client` `limit`.
async fn custodial_tally(
    vendor: &tokio_postgres::Client,
    client: &tokio_postgres::Client,
    limit: i64,
) -> Uuid {
    let t: Uuid = vendor
        .query_one(
            "SELECT chips.tally_create('stock', hold_terms => jsonb_build_object('limit', $1::bigint))",
            &[&limit],
        )
        .await
        .unwrap()
        .get(0);
    let ticket: Value = vendor
        .query_one("SELECT chips.ticket_create($1)", &[&t])
        .await
        .unwrap()
        .get(0);
    client
        .execute("SELECT chips.ticket_redeem($1)", &[&ticket])
        .await
        .unwrap();
    vendor
        .execute("SELECT chips.tally_offer($1)", &[&t])
        .await
        .unwrap();
    client
        .execute("SELECT chips.tally_accept($1)", &[&t])
        .await
        .unwrap();
    t
}

#[tokio::test]
async fn custodial_users_pay_through_sql_alone() {
    let s = site("t_chit_custodial").await;
    let (_, shop_db) = custodial(&s, "Shop", "shop").await;
    let (_, cust_db) = custodial(&s, "Cust", "cust").await;
    let t = custodial_tally(&shop_db, &cust_db, 900).await;
    cust_db
        .execute("SELECT chips.pay($1, 600, 'groceries')", &[&t])
        .await
        .unwrap();
    let e = cust_db
        .execute("SELECT chips.pay($1, 301)", &[&t])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "23514");
    assert!(
        s.audit_failures(t).await.unwrap().is_empty(),
        "custodial signatures verify like any other"
    );
    // Nobody but the owner reads the keys.
    let e = cust_db
        .execute("SELECT * FROM chips.custody", &[])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    // A user with their own key cannot use chips.pay.
    let ann = s.user("Ann", "ann").await.unwrap();
    let t2 = ann.draft("foil", json!({}), json!({}), "").await.unwrap();
    let e = ann
        .db
        .execute("SELECT chips.pay($1, 1)", &[&t2])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "55000");
}

/// The set-based writer checks a payment's signature itself and marks its rows so that the row
/// trigger does not verify them again (`chips._chit_checked`): a custodial key that no longer
/// matches the key the tally's halves name must still be refused, by the writer declining and the
/// trigger refusing, and nothing written; a mark cannot be made from SQL.
#[tokio::test]
async fn the_writers_own_signature_check_refuses_a_key_the_tally_does_not_name() {
    let s = site("t_chit_checked").await;
    let (_, shop_db) = custodial(&s, "Shop", "shop").await;
    let (cust, cust_db) = custodial(&s, "Cust", "cust").await;
    let t = custodial_tally(&shop_db, &cust_db, 900).await;
    cust_db
        .execute("SELECT chips.pay($1, 10)", &[&t])
        .await
        .unwrap();
    let chits = "SELECT count(*) FROM chips.chits";
    let before = count(&s, chits).await;
    // the customer's custodial key replaced behind the tally's back
    s.admin
        .execute(
            "UPDATE chips.custody SET seed = chips.new_seed() WHERE ent = $1",
            &[&cust],
        )
        .await
        .unwrap();
    let e = cust_db
        .execute("SELECT chips.pay($1, 10)", &[&t])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "28000", "{}", errmsg(&e));
    let rows = cust_db
        .query(
            "SELECT sqlstate FROM chips.pay_batch($1)",
            &[&json!([{"tally": t, "units": 5}, {"tally": t, "units": 6}])],
        )
        .await
        .unwrap();
    let states: Vec<Option<String>> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        states,
        vec![Some("28000".to_string()), Some("28000".to_string())]
    );
    let e = cust_db
        .query(
            "SELECT * FROM chips.pay_batch($1, all_or_nothing => true)",
            &[&json!([{"tally": t, "units": 5}])],
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "28000", "{}", errmsg(&e));
    assert_eq!(count(&s, chits).await, before, "nothing written");
    // asking whether a row was checked marks nothing: an invented chit is still verified
    let a = &s.admin;
    a.batch_execute("BEGIN").await.unwrap();
    let (half, uuid): (i64, Uuid) = {
        let r = a
            .query_one(
                "SELECT id, gen_random_uuid() FROM chips.tallies WHERE tally_uuid = $1 AND side = 'stock'",
                &[&t],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    let sig = "A".repeat(86);
    let marked: bool = a
        .query_one(
            "SELECT chips._chit_checked($1, $2, $3)",
            &[&half, &uuid, &sig],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!marked);
    let e = a
        .execute(
            "INSERT INTO chips.chits (tally_id, chit_uuid, chit_type, issuer, units, chit_date, signature, status, value)
             VALUES ($1, $2, 'tran', 'foil', 5, now(), $3, 'good', 5)",
            &[&half, &uuid, &sig],
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "28000", "{}", errmsg(&e));
    a.batch_execute("ROLLBACK").await.unwrap();
    assert!(s.audit_failures(t).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_batch_pays_each_item_or_refuses_it_with_its_sqlstate() {
    let s = site("t_chit_batch").await;
    let (shop, shop_db) = custodial(&s, "Shop", "shop").await;
    let (cust, cust_db) = custodial(&s, "Cust", "cust").await;
    let (cust2, cust2_db) = custodial(&s, "Cust2", "cust2").await;
    let t = custodial_tally(&shop_db, &cust_db, 900).await;
    let t2 = custodial_tally(&shop_db, &cust2_db, 900).await;
    let chits = "SELECT count(*) FROM chips.chits";
    let before = count(&s, chits).await;
    let cust_db = &cust_db;
    let batch = |items: Value| async move {
        cust_db
            .query(
                "SELECT item, chit, sqlstate, message FROM chips.pay_batch($1)",
                &[&items],
            )
            .await
            .map(|rows| {
                rows.iter()
                    .map(|r| {
                        (
                            r.get::<_, i32>(0),
                            r.get::<_, Option<Uuid>>(1).is_some(),
                            r.get::<_, Option<String>>(2).unwrap_or_default(),
                        )
                    })
                    .collect::<Vec<_>>()
            })
    };
    // bad items among good ones: each refused with its SQLSTATE, the others applied
    let got = batch(json!([
        {"tally": t, "units": 100, "memo": "one"},
        {"tally": t, "units": "lots"},
        {"tally": Uuid::new_v4(), "units": 1},
        {"tally": t, "units": 10_000},
        {"tally": t2, "units": 5},
        "not a payment",
        {"tally": t, "units": 200, "reference": {"invoice": 7}},
        {"tally": t, "units": 1, "payer": shop},
    ]))
    .await
    .unwrap();
    let states: Vec<(i32, bool, &str)> =
        got.iter().map(|(k, c, st)| (*k, *c, st.as_str())).collect();
    assert_eq!(
        states,
        [
            (1, true, ""),
            (2, false, "22023"),
            (3, false, "42704"),
            (4, false, "23514"),
            (5, false, "42704"),
            (6, false, "22023"),
            (7, true, ""),
            (8, false, "42501"),
        ],
        "cust is not party to t2 and does not act for the shop"
    );
    assert_eq!(
        count(&s, chits).await - before,
        4,
        "two payments, both halves each"
    );
    let owed: i64 = cust_db
        .query_one(
            "SELECT net_good FROM chips.tallies_list() WHERE tally_uuid = $1",
            &[&t],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owed, -300);
    assert!(s.audit_failures(t).await.unwrap().is_empty());

    // all or nothing: one bad item refuses the call, nothing is written
    let before = count(&s, chits).await;
    let e = cust_db
        .query(
            "SELECT * FROM chips.pay_batch($1, all_or_nothing => true)",
            &[&json!([{"tally": t, "units": 10}, {"tally": t, "units": 10_000}])],
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "23514");
    assert_eq!(count(&s, chits).await, before);
    // a call that is no list of payments is refused whole
    for bad in [
        json!({"tally": t}),
        json!([]),
        json!((0..1001).map(|_| json!({})).collect::<Vec<_>>()),
    ] {
        let e = cust_db
            .query("SELECT * FROM chips.pay_batch($1)", &[&bad])
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e), "22023", "{bad}");
    }

    // a payroll role that acts for both customers pays for each of them in one call
    let payroll = format!("payroll_{}", s.db);
    let (r1, r2) = (
        s.role_of(&cust).await.unwrap(),
        s.role_of(&cust2).await.unwrap(),
    );
    s.admin
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS \"{payroll}\"; CREATE ROLE \"{payroll}\" NOLOGIN;
             GRANT \"{r1}\", \"{r2}\" TO \"{payroll}\""
        ))
        .await
        .unwrap();
    let pr = connect(&s.dsn).await.unwrap();
    pr.batch_execute(&format!("SET ROLE \"{payroll}\""))
        .await
        .unwrap();
    let rows = pr
        .query(
            "SELECT item, sqlstate FROM chips.pay_batch($1, true)",
            &[&json!([
                {"tally": t, "units": 11, "payer": cust},
                {"tally": t2, "units": 22, "payer": cust2},
            ])],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.get::<_, Option<String>>(1).is_none()));
    for (item, why) in [
        (
            json!({"tally": t, "units": 1}),
            "no payer: the payroll role is no user",
        ),
        (
            json!({"tally": t, "units": 1, "payer": shop}),
            "not a role the payroll acts for",
        ),
    ] {
        let e: Option<String> = pr
            .query_one(
                "SELECT sqlstate FROM chips.pay_batch($1)",
                &[&json!([item])],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(e.as_deref(), Some("42501"), "{why}");
    }
    assert!(s.audit_failures(t).await.unwrap().is_empty());
    assert!(s.audit_failures(t2).await.unwrap().is_empty());
}

/// A batch of custodial payments that would all be applied is written at once (chips._pay_bulk:
/// one INSERT, one run of the statement trigger), with what paying item by item writes: every
/// chit signed and chained in item order on both halves (several on one tally), the balances,
/// one event per chit for each holder, numbered without a gap. A batch with an item the limit
/// refuses (counting the items before it) is declined by that path with nothing written, and
/// pay_batch pays it item by item, refusing that item alone.
#[tokio::test]
async fn a_clean_batch_is_written_at_once_with_what_item_by_item_writes() {
    let s = site("t_chit_bulk").await;
    let (shop, shop_db) = custodial(&s, "Shop", "shop").await;
    let (cust, cust_db) = custodial(&s, "Cust", "cust").await;
    let t = custodial_tally(&shop_db, &cust_db, 900).await;
    let t3 = custodial_tally(&shop_db, &cust_db, 900).await;
    // the set-based path itself, callable here through a SECURITY DEFINER wrapper (it is
    // internal to chips.pay_batch, revoked from PUBLIC)
    let role = s.role_of(&cust).await.unwrap();
    s.admin
        .batch_execute(&format!(
            "CREATE FUNCTION public.bulk(j jsonb) RETURNS uuid[] LANGUAGE sql SECURITY DEFINER
                 SET search_path = chips, pg_catalog AS 'SELECT chips._pay_bulk(j)';
             GRANT EXECUTE ON FUNCTION public.bulk(jsonb) TO \"{role}\""
        ))
        .await
        .unwrap();
    let chits = "SELECT count(*) FROM chips.chits";
    let before = count(&s, chits).await;
    let written: Option<Vec<Uuid>> = cust_db
        .query_one(
            "SELECT public.bulk($1)",
            &[&json!([
                {"tally": t, "units": 100, "memo": "one"},
                {"tally": t3, "units": 50},
                {"tally": t, "units": 200, "reference": {"invoice": 7}},
                {"tally": t.to_string().to_uppercase(), "units": 1, "payer": cust},
            ])],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(written.map(|w| w.len()), Some(4), "all four at once");
    assert_eq!(count(&s, chits).await - before, 8, "both halves of each");
    let balance = |tally: Uuid| {
        let (s, cust) = (&s, &cust);
        async move {
            let r = s
                .admin
                .query_one(
                    "SELECT net_good, chain_len FROM chips.tallies WHERE tally_uuid = $1 AND ent = $2",
                    &[&tally, cust],
                )
                .await
                .unwrap();
            (r.get::<_, i64>(0), r.get::<_, i32>(1))
        }
    };
    assert_eq!(balance(t).await, (-301, 3));
    assert_eq!(balance(t3).await, (-50, 1));
    for x in [t, t3] {
        assert!(s.audit_failures(x).await.unwrap().is_empty(), "{x}");
    }
    // the memo and reference went where a single payment puts them, in item order
    let rows = s
        .admin
        .query(
            "SELECT c.units, c.memo, c.reference FROM chips.chits c JOIN chips.tallies x ON x.id = c.tally_id
             WHERE x.tally_uuid = $1 AND x.ent = $2 ORDER BY c.chain_idx",
            &[&t, &cust],
        )
        .await
        .unwrap();
    let got: Vec<(i64, Option<String>, Option<Value>)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        got,
        [
            (100, Some("one".to_string()), None),
            (200, None, Some(json!({"invoice": 7}))),
            (1, None, None),
        ]
    );
    // each holder's feed: one event per chit, numbered 1, 2, 3, ... without a gap
    for ent in [&cust, &shop] {
        assert_eq!(feed(&s, ent, Some("chit")).await.len(), 4, "{ent}");
        let all = feed(&s, ent, None).await;
        assert_eq!(all, (1..=all.len() as i64).collect::<Vec<_>>(), "{ent}");
    }

    // 500 fits the room left on t (599), 200 more does not: declined, nothing written
    let over =
        json!([{"tally": t, "units": 500}, {"tally": t, "units": 200}, {"tally": t3, "units": 5}]);
    let before = count(&s, chits).await;
    let declined: Option<Vec<Uuid>> = cust_db
        .query_one("SELECT public.bulk($1)", &[&over])
        .await
        .unwrap()
        .get(0);
    assert!(declined.is_none());
    assert_eq!(count(&s, chits).await, before);
    // pay_batch pays it item by item: the second refused as a single payment would be
    let rows = cust_db
        .query("SELECT item, sqlstate FROM chips.pay_batch($1)", &[&over])
        .await
        .unwrap();
    let states: Vec<(i32, Option<String>)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        states,
        [(1, None), (2, Some("23514".to_string())), (3, None)]
    );
    assert_eq!(balance(t).await, (-801, 4));
    // a user who signs with their own key, and a tally not open, are declined too
    let declined: Option<Vec<Uuid>> = cust_db
        .query_one(
            "SELECT public.bulk($1)",
            &[&json!([{"tally": Uuid::new_v4(), "units": 1}])],
        )
        .await
        .unwrap()
        .get(0);
    assert!(declined.is_none(), "no such tally");
    for x in [t, t3] {
        assert!(s.audit_failures(x).await.unwrap().is_empty(), "{x}");
    }
}

/// Documents their payer signed (`{doc, signature}`: a user who holds their own key) are written
/// at once too, with the uuid and date the payer gave them. A forged one, one already on its
/// tally (a retry), or a batch that also asks the database to sign for a payer who holds their
/// own key, or one dated more than an hour from now, is declined with nothing written, and
/// pay_batch pays it item by item, which says what each item is: the retry good, the forgery
/// 28000, the custodial item 55000, the stale document 22023.
#[tokio::test]
async fn a_batch_of_signed_documents_is_written_at_once_too() {
    let (s, ann, bob, t) = local_pair("t_chit_bulk_signed", 10_000).await;
    let role = s.role_of(&bob.ent).await.unwrap();
    s.admin
        .batch_execute(&format!(
            "CREATE FUNCTION public.bulk(j jsonb) RETURNS uuid[] LANGUAGE sql SECURITY DEFINER
                 SET search_path = chips, pg_catalog AS 'SELECT chips._pay_bulk(j)';
             GRANT EXECUTE ON FUNCTION public.bulk(jsonb) TO \"{role}\""
        ))
        .await
        .unwrap();
    let signed = |units: i64, by: &chips_core::sign::KeyPair| {
        let (db, key) = (&bob.db, by.seed());
        async move {
            let doc: Value = db
                .query_one("SELECT chips.chit_json($1, $2, 'signed')", &[&t, &units])
                .await
                .unwrap()
                .get(0);
            let sig = chips_core::sign::KeyPair::from_seed(&key)
                .sign_json(&doc)
                .unwrap();
            json!({"doc": doc, "signature": sig})
        }
    };
    let uuid_of = |item: &Value| Uuid::parse_str(item["doc"]["uuid"].as_str().unwrap()).unwrap();
    let (a, b) = (signed(100, &bob.key).await, signed(200, &bob.key).await);
    let chits = "SELECT count(*) FROM chips.chits";
    let before = count(&s, chits).await;
    let written: Option<Vec<Uuid>> = bob
        .db
        .query_one("SELECT public.bulk($1)", &[&json!([a, b])])
        .await
        .unwrap()
        .get(0);
    assert_eq!(written, Some(vec![uuid_of(&a), uuid_of(&b)]));
    assert_eq!(count(&s, chits).await - before, 4);
    let owed: i64 = s
        .admin
        .query_one(
            "SELECT net_good FROM chips.tallies WHERE tally_uuid = $1 AND ent = $2",
            &[&t, &bob.ent],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owed, -300);
    assert!(s.audit_failures(t).await.unwrap().is_empty());

    let forged = signed(5, &ann.key).await;
    let mine = signed(7, &bob.key).await;
    // dated two hours ago, and signed so
    let mut stale = signed(9, &bob.key).await;
    let two_hours_ago: String = bob
        .db
        .query_one(
            "SELECT to_char((now() - interval '2 hours') AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    stale["doc"]["date"] = json!(two_hours_ago);
    stale["signature"] = json!(bob.key.sign_json(&stale["doc"]).unwrap());
    for (batch, why) in [
        (json!([a]), "already on the tally"),
        (json!([mine, forged]), "not signed by its payer"),
        (
            json!([mine, {"tally": t, "units": 1}]),
            "bob holds his own key",
        ),
        (json!([mine, stale]), "dated more than an hour from now"),
    ] {
        let got: Option<Vec<Uuid>> = bob
            .db
            .query_one("SELECT public.bulk($1)", &[&batch])
            .await
            .unwrap()
            .get(0);
        assert!(got.is_none(), "{why}");
    }
    assert_eq!(count(&s, chits).await - before, 4, "nothing written");
    let rows = bob
        .db
        .query(
            "SELECT item, chit, sqlstate FROM chips.pay_batch($1)",
            &[&json!([a, forged, {"tally": t, "units": 1}, mine, stale])],
        )
        .await
        .unwrap();
    let got: Vec<(i32, Option<Uuid>, Option<String>)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        got,
        [
            (1, Some(uuid_of(&a)), None),
            (2, None, Some("28000".to_string())),
            (3, None, Some("55000".to_string())),
            (4, Some(uuid_of(&mine)), None),
            (5, None, Some("22023".to_string())),
        ],
        "the retry is good again, once; the stale document is refused"
    );
    assert_eq!(count(&s, chits).await - before, 6);
    assert!(s.audit_failures(t).await.unwrap().is_empty());
}

/// The tally update trigger guarding identity and signed documents names every column but the
/// ones the chits statement trigger moves (sql/finalize.sql): a column added to chips.tallies
/// and left out of its list could change without the trigger seeing it.
#[tokio::test]
async fn the_tally_update_trigger_watches_every_column_but_the_balances() {
    let s = site("t_chit_bu_cols").await;
    let rows = s
        .admin
        .query(
            "SELECT a.attname::text FROM pg_attribute a
             WHERE a.attrelid = 'chips.tallies'::regclass AND a.attnum > 0 AND NOT a.attisdropped
               AND a.attnum <> ALL (ARRAY(SELECT pg_catalog.unnest(t.tgattr::int2[]) FROM pg_trigger t
                                          WHERE t.tgrelid = a.attrelid AND t.tgname = 'tallies_bu'))
             ORDER BY a.attnum",
            &[],
        )
        .await
        .unwrap();
    let unwatched: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        unwatched,
        [
            "net_good",
            "net_pend",
            "net_hold",
            "chain_len",
            "chain_tip",
            "updated"
        ]
    );
}

/// The event feed under concurrency: 16 sessions pay at once on two tallies between the same two
/// users, in both directions (Ann grants Bob credit on one and Bob pays on it, Bob grants Ann
/// credit on the other and Ann pays on it). No
/// payment deadlocks or fails, and each user's feed numbers every payment once, 1, 2, 3, ...
/// without a gap or a duplicate.
#[tokio::test]
async fn sixteen_sessions_paying_between_two_users_leave_each_feed_gapless() {
    let s = site("t_chit_feed").await;
    let (ann, ann_db) = custodial(&s, "Ann", "ann").await;
    let (bob, bob_db) = custodial(&s, "Bob", "bob").await;
    let t1 = custodial_tally(&ann_db, &bob_db, 1_000_000).await;
    let t2 = custodial_tally(&bob_db, &ann_db, 1_000_000).await;
    let (ann0, bob0) = (
        feed(&s, &ann, None).await.len(),
        feed(&s, &bob, None).await.len(),
    );
    const SESSIONS: usize = 16;
    const EACH: usize = 20;
    let mut jobs = Vec::new();
    for k in 0..SESSIONS {
        // (each pays as the client of the tally the other grants credit on)
        let (payer, t) = if k % 2 == 0 { (&ann, t2) } else { (&bob, t1) };
        let db = s.connect_as(payer).await.unwrap();
        jobs.push(tokio::spawn(async move {
            for i in 0..EACH {
                db.execute("SELECT chips.pay($1, $2)", &[&t, &(1 + i as i64)])
                    .await
                    .map_err(|e| format!("{}: {e}", sqlstate(&e)))?;
            }
            Ok::<(), String>(())
        }));
    }
    for j in jobs {
        j.await
            .unwrap()
            .expect("no payment fails (a deadlock would be 40P01)");
    }
    for (who, ent, before) in [("Ann", ann, ann0), ("Bob", bob, bob0)] {
        let seqs = feed(&s, &ent, None).await;
        assert_eq!(
            seqs.len() - before,
            SESSIONS * EACH,
            "{who}: one event per payment"
        );
        assert_eq!(
            seqs,
            (1..=seqs.len() as i64).collect::<Vec<_>>(),
            "{who}: numbered 1, 2, 3, ... without a gap or a duplicate"
        );
    }
    assert!(s.audit_failures(t1).await.unwrap().is_empty());
    assert!(s.audit_failures(t2).await.unwrap().is_empty());
}

/// Batches written at once under concurrency: eight sessions of one payroll role pay, for two
/// payers at once, batches over the same three tallies listed in different orders, while single
/// payments go on the same tallies. The writer locks a batch's tallies in id order, as every
/// writer does: nothing deadlocks or fails, every chit is there once, the balances add up and
/// the chains and feeds are whole.
#[tokio::test]
async fn concurrent_batches_over_the_same_tallies_neither_deadlock_nor_lose_a_chit() {
    let s = site("t_chit_bulk_conc").await;
    let (shop, shop_db) = custodial(&s, "Shop", "shop").await;
    let (a, a_db) = custodial(&s, "A", "ca").await;
    let (b, b_db) = custodial(&s, "B", "cb").await;
    let ta1 = custodial_tally(&shop_db, &a_db, 1_000_000).await;
    let ta2 = custodial_tally(&shop_db, &a_db, 1_000_000).await;
    let tb = custodial_tally(&shop_db, &b_db, 1_000_000).await;
    let payroll = format!("payroll_{}", s.db);
    let (ra, rb) = (s.role_of(&a).await.unwrap(), s.role_of(&b).await.unwrap());
    s.admin
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS \"{payroll}\"; CREATE ROLE \"{payroll}\" NOLOGIN;
             GRANT \"{ra}\", \"{rb}\" TO \"{payroll}\""
        ))
        .await
        .unwrap();
    const SESSIONS: usize = 8;
    const BATCHES: usize = 10;
    let mut jobs = Vec::new();
    for k in 0..SESSIONS {
        let db = connect(&s.dsn).await.unwrap();
        db.batch_execute(&format!("SET ROLE \"{payroll}\""))
            .await
            .unwrap();
        let mut items = vec![
            json!({"tally": ta1, "units": 1, "payer": a}),
            json!({"tally": ta2, "units": 2, "payer": a}),
            json!({"tally": tb, "units": 3, "payer": b}),
            json!({"tally": ta1, "units": 1, "payer": a}),
        ];
        items.rotate_left(k % 4);
        if k % 2 == 1 {
            items.reverse();
        }
        let batch = Value::Array(items);
        jobs.push(tokio::spawn(async move {
            for _ in 0..BATCHES {
                let rows = db
                    .query("SELECT sqlstate FROM chips.pay_batch($1, true)", &[&batch])
                    .await
                    .map_err(|e| format!("{}: {e}", sqlstate(&e)))?;
                if rows.iter().any(|r| r.get::<_, Option<String>>(0).is_some()) {
                    return Err("an item was refused".to_string());
                }
            }
            Ok::<(), String>(())
        }));
    }
    // single payments on the same tallies at the same time
    let single = {
        let db = s.connect_as(&b).await.unwrap();
        tokio::spawn(async move {
            for _ in 0..BATCHES * 2 {
                db.execute("SELECT chips.pay($1, 5)", &[&tb])
                    .await
                    .map_err(|e| format!("{}: {e}", sqlstate(&e)))?;
            }
            Ok::<(), String>(())
        })
    };
    for j in jobs {
        j.await
            .unwrap()
            .expect("no batch fails (a deadlock would be 40P01)");
    }
    single.await.unwrap().expect("no single payment fails");
    let n = (SESSIONS * BATCHES) as i64;
    for (t, owed, chits) in [
        (ta1, -2 * n, 2 * n),
        (ta2, -2 * n, n),
        (tb, -3 * n - 5 * 2 * BATCHES as i64, n + 2 * BATCHES as i64),
    ] {
        let r = s
            .admin
            .query_one(
                "SELECT x.net_good, x.chain_len FROM chips.tallies x
                 WHERE x.tally_uuid = $1 AND x.ent <> $2",
                &[&t, &shop],
            )
            .await
            .unwrap();
        assert_eq!(
            (r.get::<_, i64>(0), i64::from(r.get::<_, i32>(1))),
            (owed, chits),
            "{t}"
        );
        assert!(s.audit_failures(t).await.unwrap().is_empty(), "{t}");
    }
    for ent in [&a, &b, &shop] {
        let seqs = feed(&s, ent, None).await;
        assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>(), "{ent}");
    }
}

/// Two sites: Ann (stock) at a, Eve (foil) at b.
async fn cross(db: &str, limit: i64) -> (Site, Site, User, User, Uuid) {
    let cl = Cluster::from_env();
    let a = cl.site(&format!("{db}_a"), 65481).await.unwrap();
    let b = cl.site(&format!("{db}_b"), 65482).await.unwrap();
    let ann = a.user("Ann", "ann").await.unwrap();
    let eve = b.user("Eve", "eve").await.unwrap();
    let t = ann.open_with(&eve, limit, &[&a, &b]).await.unwrap();
    (a, b, ann, eve, t)
}

async fn assert_converged(a: &Site, b: &Site, ann: &User, eve: &User, t: Uuid) {
    let (stock, foil) = (
        a.chain(t, "stock").await.unwrap(),
        b.chain(t, "foil").await.unwrap(),
    );
    assert_eq!(stock, foil, "both halves hold the same chain");
    let (ga, gb) = (ann.balance(t).await.unwrap(), eve.balance(t).await.unwrap());
    assert_eq!(ga.0, -gb.0, "balances mirror each other");
    assert!(
        a.audit_failures(t).await.unwrap().is_empty(),
        "{:?}",
        a.audit_failures(t).await
    );
    assert!(
        b.audit_failures(t).await.unwrap().is_empty(),
        "{:?}",
        b.audit_failures(t).await
    );
    let foil_conf: i32 = b
        .admin
        .query_one(
            "SELECT chain_conf FROM chips.tallies WHERE tally_uuid = $1",
            &[&t],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        foil_conf as usize,
        foil.len(),
        "the foil half knows the stock half confirmed everything"
    );
}

#[tokio::test]
async fn cross_site_payments_both_ways_converge() {
    let (a, b, ann, eve, t) = cross("t_chit_cross", 50_000).await;
    eve.pay(t, 10_000, "").await.unwrap();
    let inv = ann.invoice(t, 3_000, "invoice").await.unwrap();
    relay_all(&[&a, &b]).await.unwrap();
    eve.sign_invoice(t, inv).await.unwrap();
    // Both pay at the same moment: Ann's chit reaches the foil half after Eve's.
    ann.pay(t, 1_000, "").await.unwrap();
    eve.pay(t, 2_000, "").await.unwrap();
    relay_all(&[&a, &b]).await.unwrap();
    assert_eq!(eve.balance(t).await.unwrap().0, -14_000);
    assert_converged(&a, &b, &ann, &eve, t).await;
    assert_eq!(a.chain(t, "stock").await.unwrap().len(), 4);
}

/// Every message to a peer site goes through its `agents` row: a transaction that has sent one
/// (and not committed) must not hold up another sending to the same peer over another tally.
#[tokio::test]
async fn payments_to_one_peer_site_do_not_wait_for_each_other() {
    let (a, b, ann, eve, t) = cross("t_chit_peer_wait", 50_000).await;
    let bob = a.user("Bob", "bob").await.unwrap();
    let t2 = bob.open_with(&eve, 50_000, &[&a, &b]).await.unwrap();
    eve.pay(t, 1_000, "").await.unwrap();
    eve.pay(t2, 1_000, "").await.unwrap();
    relay_all(&[&a, &b]).await.unwrap();
    ann.db.batch_execute("BEGIN").await.unwrap();
    ann.pay(t, 100, "").await.unwrap(); // queued for eve's site, not committed
    bob.db
        .batch_execute("SET lock_timeout = '3s'")
        .await
        .unwrap();
    bob.pay(t2, 100, "").await.unwrap();
    ann.db.batch_execute("COMMIT").await.unwrap();
    relay_all(&[&a, &b]).await.unwrap();
    assert_converged(&a, &b, &ann, &eve, t).await;
    assert_eq!(eve.balance(t2).await.unwrap().0, -900);
}

/// The outbox messages `db` claims now (ids), for an hour.
async fn claim(db: &tokio_postgres::Client) -> Vec<i64> {
    db.query("SELECT id FROM chips.outbox_claim(10, '1 hour')", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}
/// A sidecar gives back the claims it did not deliver (a peer refused an earlier message): they
/// are claimed again at once, and only the message it tried counts an attempt.
#[tokio::test]
async fn outbox_claims_given_back_are_claimed_again_at_once() {
    let (a, b, ann, eve, t) = cross("t_chit_release", 50_000).await;
    eve.pay(t, 3_000, "").await.unwrap();
    relay_all(&[&a, &b]).await.unwrap();
    for _ in 0..3 {
        ann.pay(t, 100, "").await.unwrap();
    }
    let ids = claim(&a.admin).await;
    assert_eq!(ids.len(), 3);
    assert!(claim(&a.admin).await.is_empty(), "leased");
    let n: i32 = a
        .admin
        .query_one(
            "SELECT chips.outbox_release($1, $2)",
            &[&ids[1..].to_vec(), &vec![ids[0]]],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
    let attempts: Vec<(i64, i32)> = a
        .admin
        .query(
            "SELECT id, attempts FROM chips.outbox WHERE id = ANY ($1) ORDER BY id",
            &[&ids],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(attempts, vec![(ids[0], 1), (ids[1], 0), (ids[2], 0)]);
    // claimed again at once, in order; delivered ones are not given back
    let again = claim(&a.admin).await;
    assert_eq!(again, ids);
    a.admin
        .execute("SELECT chips.outbox_ack($1)", &[&ids])
        .await
        .unwrap();
    let n: i32 = a
        .admin
        .query_one("SELECT chips.outbox_release($1)", &[&ids])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

/// A claim lives as long as the database session that made it: a sidecar killed while it held
/// messages (its connection ends with it) leaves them free at once for the one that restarts,
/// not after its lease; while the session lives, the lease holds them.
#[tokio::test]
async fn outbox_claims_of_an_ended_session_are_free_at_once() {
    let (a, b, ann, eve, t) = cross("t_chit_claim_pid", 50_000).await;
    eve.pay(t, 3_000, "").await.unwrap();
    relay_all(&[&a, &b]).await.unwrap();
    ann.pay(t, 100, "").await.unwrap();
    let first = connect(&a.dsn).await.unwrap();
    let held = claim(&first).await;
    assert!(!held.is_empty());
    assert!(claim(&a.admin).await.is_empty(), "held by a live session");
    drop(first);
    // (the backend of a closed connection goes a moment later)
    let mut again = vec![];
    for _ in 0..100 {
        again = claim(&a.admin).await;
        if !again.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(again, held, "free once the session that claimed them ended");
    let attempts: i32 = a
        .admin
        .query_one(
            "SELECT max(attempts) FROM chips.outbox WHERE id = ANY ($1)",
            &[&held],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(attempts, 2, "each claim counts an attempt");
}

/// A link down while hundreds of chits are chained: the foil half's chain updates stay under the
/// size a peer message may have (they carry the first unconfirmed entries; each ack brings the
/// next), every payment is accepted, and the halves converge once the link is back.
#[tokio::test]
async fn a_long_chain_backlog_travels_in_messages_that_fit() {
    let (a, b, ann, eve, t) = cross("t_chit_backlog", 10_000_000).await;
    for n in 1..=250 {
        eve.pay(
            t,
            n,
            "a memo to make every chit a little larger than it needs to be",
        )
        .await
        .unwrap();
    }
    let biggest: i32 = b
        .admin
        .query_one(
            "SELECT max(octet_length(msg::text)) FROM chips.outbox WHERE action = 'chain'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(biggest <= 60_000, "a chain update of {biggest} bytes");
    for _ in 0..20 {
        relay_all(&[&a, &b]).await.unwrap();
        if ann.balance(t).await.unwrap().0 == (1..=250).sum::<i64>()
            && b.undelivered().await.unwrap() == 0
        {
            break;
        }
    }
    assert_converged(&a, &b, &ann, &eve, t).await;
    assert_eq!(a.chain(t, "stock").await.unwrap().len(), 250);
}

#[tokio::test]
async fn lost_duplicated_and_reordered_chain_messages_converge() {
    let (a, b, ann, eve, t) = cross("t_chit_loss", 50_000).await;
    // Lost: Eve's first payment and every message about it vanish (say, b's outbox was restored
    // from an old backup); her second payment's update carries both entries.
    eve.pay(t, 1_000, "lost").await.unwrap();
    b.admin
        .execute("DELETE FROM chips.outbox WHERE delivered IS NULL", &[])
        .await
        .unwrap();
    eve.pay(t, 2_000, "").await.unwrap();
    relay_all(&[&a, &b]).await.unwrap();
    assert_converged(&a, &b, &ann, &eve, t).await;

    // Lost in the other direction: Ann's payment never reaches Eve; chain_sync re-sends it.
    ann.pay(t, 500, "lost too").await.unwrap();
    a.admin
        .execute("DELETE FROM chips.outbox WHERE delivered IS NULL", &[])
        .await
        .unwrap();
    assert_eq!(
        a.chain(t, "stock").await.unwrap().len(),
        2,
        "not chained until the foil half orders it"
    );
    assert_eq!(
        a.admin
            .query_one("SELECT chips.chain_sync($1)", &[&t])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
    relay_all(&[&a, &b]).await.unwrap();
    assert_converged(&a, &b, &ann, &eve, t).await;
    assert_eq!(eve.balance(t).await.unwrap().0, -2_500);

    // Duplicated and reordered: two updates from the foil half, delivered newest first and
    // then each again.
    eve.pay(t, 100, "").await.unwrap();
    eve.pay(t, 200, "").await.unwrap();
    let msgs = b
        .admin
        .query(
            "SELECT id, msg FROM chips.outbox WHERE delivered IS NULL ORDER BY id DESC",
            &[],
        )
        .await
        .unwrap();
    let mut results = vec![];
    for row in msgs.iter().chain(msgs.iter()) {
        let (msg, from): (Value, String) = (row.get(1), b.agent_id());
        let mut again = msg.clone();
        again["id"] = json!(Uuid::new_v4()); // a retransmission under a new id
        for m in [msg, again] {
            if let Ok(r) = a
                .admin
                .query_one("SELECT chips.peer_receive($1, $2)", &[&from, &m])
                .await
            {
                results.push(r.get::<_, String>(0));
            }
        }
    }
    let ids: Vec<i64> = msgs.iter().map(|r| r.get(0)).collect();
    b.admin
        .execute("SELECT chips.outbox_ack($1)", &[&ids])
        .await
        .unwrap();
    assert!(results.contains(&"duplicate".to_string()), "{results:?}");
    relay_all(&[&a, &b]).await.unwrap();
    assert_converged(&a, &b, &ann, &eve, t).await;
    assert_eq!(eve.balance(t).await.unwrap().0, -2_800);

    // A gap (the stock half sees entry n+2 first) is answered with nak and filled.
    eve.pay(t, 10, "").await.unwrap();
    let first: (i64, Value) = {
        let r = b
            .admin
            .query_one(
                "SELECT id, msg FROM chips.outbox WHERE delivered IS NULL AND action = 'chain'",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    b.admin
        .execute("SELECT chips.outbox_ack($1)", &[&vec![first.0]])
        .await
        .unwrap(); // lost after all
    eve.pay(t, 20, "").await.unwrap();
    let mut gap: Value = b
        .admin
        .query_one(
            "SELECT msg FROM chips.outbox WHERE delivered IS NULL AND action = 'chain'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // keep only the newest entry, as if the update had been cut short
    let last = gap["object"]["chits"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    gap["object"]["chits"] = json!([last]);
    gap["id"] = json!(Uuid::new_v4());
    let r: String = a
        .admin
        .query_one("SELECT chips.peer_receive($1, $2)", &[&b.agent_id(), &gap])
        .await
        .unwrap()
        .get(0);
    assert_eq!(r, "nak");
    relay_all(&[&a, &b]).await.unwrap();
    assert_converged(&a, &b, &ann, &eve, t).await;
    let r = relay(&a, &b).await.unwrap();
    assert_eq!(r.applied + r.failed, 0, "quiet once converged");
}

#[tokio::test]
async fn audit_catches_tampering() {
    let (s, _ann, bob, t) = local_pair("t_chit_audit", 10_000).await;
    bob.pay(t, 1_000, "").await.unwrap();
    bob.pay(t, 2_000, "").await.unwrap();
    assert!(s.audit_failures(t).await.unwrap().is_empty());
    // A superuser bypasses the triggers and rewrites history.
    s.admin
        .batch_execute(&format!(
            "SET session_replication_role = replica;
             UPDATE chips.chits SET units = 10, value = -10 WHERE chain_idx = 1 AND tally_id = (SELECT id FROM chips.tallies WHERE tally_uuid = '{t}' AND side = 'foil');
             SET session_replication_role = origin;"
        ))
        .await
        .unwrap();
    let bad = s.audit_failures(t).await.unwrap();
    for check in ["balance", "chain", "signatures"] {
        assert!(
            bad.iter().any(|b| b.contains(&format!("foil {check}"))),
            "{check} not caught: {bad:?}"
        );
    }
    assert!(
        !bad.iter().any(|b| b.contains("stock")),
        "the untouched half is sound: {bad:?}"
    );
    let e = s
        .admin
        .query("SELECT * FROM chips.tally_audit($1)", &[&Uuid::new_v4()])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42704");
}

#[tokio::test]
async fn concurrent_payments_never_break_a_chain_or_drift_a_balance() {
    let s = site("t_chit_concurrent").await;
    let shop = s.user("Shop", "shop").await.unwrap();
    let mut clients = vec![];
    let mut tallies = vec![];
    for i in 0..4 {
        let c = s
            .user(&format!("Client {i}"), &format!("c{i}"))
            .await
            .unwrap();
        tallies.push(shop.open_with(&c, 1_000_000, &[]).await.unwrap());
        clients.push(c);
    }
    // 16 sessions: four per client, all paying at once (same tally and different tallies);
    // the shop pays back on every tally at the same time.
    let mut tasks = vec![];
    for (i, c) in clients.iter().enumerate() {
        let t = tallies[i];
        for _ in 0..4 {
            let db = connect(&s.dsn).await.unwrap();
            db.batch_execute(&format!("SET ROLE \"{}\"", c.role))
                .await
                .unwrap();
            let key = chips_core::sign::KeyPair::from_seed(&c.key.seed());
            tasks.push(tokio::spawn(async move {
                let mut paid = 0i64;
                for n in 1..=25i64 {
                    let doc: Value = db
                        .query_one("SELECT chips.chit_json($1, $2)", &[&t, &n])
                        .await
                        .unwrap()
                        .get(0);
                    let sig = key.sign_json(&doc).unwrap();
                    db.execute("SELECT chips.chit_issue($1, $2)", &[&doc, &sig])
                        .await
                        .unwrap();
                    paid += n;
                }
                (t, paid)
            }));
        }
    }
    let shop_db = connect(&s.dsn).await.unwrap();
    shop_db
        .batch_execute(&format!("SET ROLE \"{}\"", shop.role))
        .await
        .unwrap();
    let shop_key = chips_core::sign::KeyPair::from_seed(&shop.key.seed());
    let tallies2 = tallies.clone();
    let refunds = tokio::spawn(async move {
        let mut n = 0;
        for round in 0..10 {
            for t in &tallies2 {
                let doc: Value = shop_db
                    .query_one("SELECT chips.chit_json($1, 1)", &[t])
                    .await
                    .unwrap()
                    .get(0);
                let sig = shop_key.sign_json(&doc).unwrap();
                // may be refused early on, before the client owes anything
                if shop_db
                    .execute("SELECT chips.chit_issue($1, $2)", &[&doc, &sig])
                    .await
                    .is_ok()
                {
                    n += 1;
                }
            }
            let _ = round;
        }
        n
    });
    let mut paid_per_tally = std::collections::HashMap::new();
    for task in tasks {
        let (t, paid) = task.await.unwrap();
        *paid_per_tally.entry(t).or_insert(0i64) += paid;
    }
    let refunded = refunds.await.unwrap();
    let mut total_refunds = 0i64;
    for (i, t) in tallies.iter().enumerate() {
        let (good, _) = clients[i].balance(*t).await.unwrap();
        let refunds_here: i64 = s
            .admin
            .query_one(
                "SELECT count(*) FROM chips.chits c JOIN chips.tallies x ON x.id = c.tally_id WHERE x.tally_uuid = $1 AND x.side = 'foil' AND c.issuer = 'stock'",
                &[t],
            )
            .await
            .unwrap()
            .get(0);
        total_refunds += refunds_here;
        assert_eq!(
            good,
            -(paid_per_tally[t] - refunds_here),
            "no payment lost or counted twice"
        );
        assert_eq!(paid_per_tally[t], 4 * (25 * 26 / 2));
        let (foil, stock) = (
            s.chain(*t, "foil").await.unwrap(),
            s.chain(*t, "stock").await.unwrap(),
        );
        assert_eq!(foil.len() as i64, 100 + refunds_here);
        assert_eq!(foil, stock);
        assert!(s.audit_failures(*t).await.unwrap().is_empty());
    }
    assert_eq!(total_refunds, refunded as i64);
}
