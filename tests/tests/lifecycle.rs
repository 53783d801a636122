//! Tally lifecycle through the SQL API, as real clients: one site, two sites, every transition.

use chips_tests::{relay, relay_all, sqlstate, Cluster, Site, User};
use serde_json::json;
use uuid::Uuid;

async fn site(db: &str) -> Site {
    Cluster::from_env().site(db, 65430).await.expect("site")
}

/// Ann (stock, vendor) drafts a tally, Bob redeems her ticket; returns its uuid in P.draft.
async fn drafted(ann: &User, bob: &User) -> Uuid {
    let t = ann
        .draft("stock", json!({"limit": 50_000}), json!({}), "groceries")
        .await
        .unwrap();
    let ticket = ann.ticket(t, false).await.unwrap();
    assert_eq!(bob.redeem(&ticket).await.unwrap(), Some(t));
    t
}

async fn digest_of(site: &Site, tally: Uuid, side: &str) -> Vec<u8> {
    site.admin
        .query_one(
            "SELECT digest FROM chips.tallies WHERE tally_uuid = $1 AND side = $2",
            &[&tally, &side],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn local_tally_opens_on_both_halves() {
    let s = site("t_local_open").await;
    let ann = s.user("Ann Vendor", "ann").await.unwrap();
    let bob = s.user("Bob Client", "bob").await.unwrap();
    let t = drafted(&ann, &bob).await;
    assert_eq!(ann.state(t).await.unwrap().as_deref(), Some("P.draft"));
    assert_eq!(
        bob.state(t).await.unwrap(),
        None,
        "Bob holds no half before the offer"
    );

    assert_eq!(ann.offer(t).await.unwrap(), "H.offer");
    assert_eq!(bob.state(t).await.unwrap().as_deref(), Some("P.offer"));
    // Both halves build the same document.
    assert_eq!(ann.doc(t).await.unwrap(), bob.doc(t).await.unwrap());

    assert_eq!(bob.accept(t).await.unwrap(), "open");
    assert_eq!(ann.state(t).await.unwrap().as_deref(), Some("open"));
    let (d1, d2) = (
        digest_of(&s, t, "stock").await,
        digest_of(&s, t, "foil").await,
    );
    assert_eq!(d1.len(), 32);
    assert_eq!(d1, d2, "block 0 of the chain is the same on both halves");
    let expect = chips_core::canon::digest(&ann.doc(t).await.unwrap()).unwrap();
    assert_eq!(d1, expect.to_vec());
    // No peer traffic for a tally inside one site.
    let n: i64 = s
        .admin
        .query_one("SELECT count(*) FROM chips.outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn cross_site_tally_through_outbox_and_peer_receive() {
    let cl = Cluster::from_env();
    let a = cl.site("t_cross_a", 65431).await.unwrap();
    let b = cl.site("t_cross_b", 65432).await.unwrap();
    let ann = a.user("Ann Vendor", "ann").await.unwrap();
    let eve = b.user("Eve Client", "eve").await.unwrap();

    let t = ann
        .draft("stock", json!({"limit": 10_000}), json!({}), "cross-site")
        .await
        .unwrap();
    let ticket = ann.ticket(t, false).await.unwrap();
    assert_eq!(
        eve.redeem(&ticket).await.unwrap(),
        None,
        "a remote ticket is redeemed by message"
    );
    let queued: i64 = b
        .admin
        .query_one("SELECT count(*) FROM chips.outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(queued, 1);
    relay_all(&[&a, &b]).await.unwrap();
    assert_eq!(ann.state(t).await.unwrap().as_deref(), Some("P.draft"));

    assert_eq!(ann.offer(t).await.unwrap(), "H.offer");
    assert_eq!(
        eve.state(t).await.unwrap(),
        None,
        "nothing arrives before the relay"
    );
    relay_all(&[&a, &b]).await.unwrap();
    assert_eq!(eve.state(t).await.unwrap().as_deref(), Some("P.offer"));
    assert_eq!(ann.doc(t).await.unwrap(), eve.doc(t).await.unwrap());

    assert_eq!(eve.accept(t).await.unwrap(), "open");
    let r = relay_all(&[&a, &b]).await.unwrap();
    assert_eq!((r.applied, r.failed), (1, 0));
    assert_eq!(ann.state(t).await.unwrap().as_deref(), Some("open"));
    assert_eq!(
        digest_of(&a, t, "stock").await,
        digest_of(&b, t, "foil").await
    );
}

#[tokio::test]
async fn counter_offer_then_accept() {
    let s = site("t_counter").await;
    let ann = s.user("Ann Vendor", "ann").await.unwrap();
    let bob = s.user("Bob Client", "bob").await.unwrap();
    let t = drafted(&ann, &bob).await;
    ann.offer(t).await.unwrap();
    // Bob wants a higher limit: back to draft at revision 2, change, offer back.
    assert_eq!(bob.counter(t).await.unwrap(), "P.draft");
    bob.db
        .execute(
            "SELECT chips.tally_update($1, part_terms => $2)",
            &[&t, &json!({"limit": 80_000})],
        )
        .await
        .unwrap();
    assert_eq!(
        ann.state(t).await.unwrap().as_deref(),
        Some("H.offer"),
        "Ann waits for the counter-offer"
    );
    assert_eq!(bob.offer(t).await.unwrap(), "H.offer");
    assert_eq!(ann.state(t).await.unwrap().as_deref(), Some("P.offer"));
    let doc = ann.doc(t).await.unwrap();
    assert_eq!(doc["revision"], 2);
    assert_eq!(
        doc["stock"]["terms"]["limit"], 80_000,
        "Bob's half is foil: his part_terms are Ann's grant"
    );
    assert_eq!(ann.accept(t).await.unwrap(), "open");
    assert_eq!(bob.state(t).await.unwrap().as_deref(), Some("open"));
    assert_eq!(bob.doc(t).await.unwrap(), doc);
}

#[tokio::test]
async fn void_a_draft_an_offer_and_a_received_offer() {
    let s = site("t_void").await;
    let ann = s.user("Ann Vendor", "ann").await.unwrap();
    let bob = s.user("Bob Client", "bob").await.unwrap();
    // A draft never offered: only Ann has it.
    let t1 = drafted(&ann, &bob).await;
    assert_eq!(ann.void(t1).await.unwrap(), "void");
    assert_eq!(bob.state(t1).await.unwrap(), None);
    // Ann withdraws her offer: Bob's half goes void too.
    let t2 = drafted(&ann, &bob).await;
    ann.offer(t2).await.unwrap();
    assert_eq!(ann.void(t2).await.unwrap(), "void");
    assert_eq!(bob.state(t2).await.unwrap().as_deref(), Some("void"));
    // Bob refuses Ann's offer: Ann's half goes void.
    let t3 = drafted(&ann, &bob).await;
    ann.offer(t3).await.unwrap();
    assert_eq!(bob.void(t3).await.unwrap(), "void");
    assert_eq!(ann.state(t3).await.unwrap().as_deref(), Some("void"));
    // A voided tally cannot be accepted.
    let e = bob.accept(t3).await.unwrap_err();
    assert_eq!(sqlstate(&e), "55000");
}

#[tokio::test]
async fn close_an_open_tally_with_zero_balance() {
    let s = site("t_close").await;
    let ann = s.user("Ann Vendor", "ann").await.unwrap();
    let bob = s.user("Bob Client", "bob").await.unwrap();
    let t = drafted(&ann, &bob).await;
    ann.offer(t).await.unwrap();
    bob.accept(t).await.unwrap();
    assert_eq!(bob.close(t).await.unwrap(), "closed");
    assert_eq!(ann.state(t).await.unwrap().as_deref(), Some("closed"));
    assert_eq!(sqlstate(&ann.close(t).await.unwrap_err()), "55000");
}

#[tokio::test]
async fn close_waits_for_a_zero_balance() {
    let s = site("t_closing").await;
    let ann = s.user("Ann Vendor", "ann").await.unwrap();
    let bob = s.user("Bob Client", "bob").await.unwrap();
    let t = drafted(&ann, &bob).await;
    ann.offer(t).await.unwrap();
    bob.accept(t).await.unwrap();
    // Balances arrive with chits; set one by hand to see closing wait for zero.
    s.admin
        .execute(
            "UPDATE chips.tallies SET net_good = 500 WHERE tally_uuid = $1",
            &[&t],
        )
        .await
        .unwrap();
    assert_eq!(bob.close(t).await.unwrap(), "closing");
    assert_eq!(ann.state(t).await.unwrap().as_deref(), Some("closing"));
}

/// Ann withdraws her offer while Eve, on another site, accepts it: the messages cross. A tally
/// both parties signed wins over the void: both halves end open with the same digest.
#[tokio::test]
async fn crossing_void_and_accept_converge_to_open() {
    let cl = Cluster::from_env();
    let a = cl.site("t_crossing_a", 65433).await.unwrap();
    let b = cl.site("t_crossing_b", 65434).await.unwrap();
    let ann = a.user("Ann Vendor", "ann").await.unwrap();
    let eve = b.user("Eve Client", "eve").await.unwrap();
    let t = ann.draft("stock", json!({}), json!({}), "").await.unwrap();
    eve.redeem(&ann.ticket(t, false).await.unwrap())
        .await
        .unwrap();
    relay_all(&[&a, &b]).await.unwrap();
    ann.offer(t).await.unwrap();
    relay_all(&[&a, &b]).await.unwrap();
    assert_eq!(ann.void(t).await.unwrap(), "void");
    assert_eq!(eve.accept(t).await.unwrap(), "open");
    relay_all(&[&a, &b]).await.unwrap();
    assert_eq!(ann.state(t).await.unwrap().as_deref(), Some("open"));
    assert_eq!(eve.state(t).await.unwrap().as_deref(), Some("open"));
    assert_eq!(
        digest_of(&a, t, "stock").await,
        digest_of(&b, t, "foil").await
    );
}

/// Messages delivered twice, and out of order, still converge.
#[tokio::test]
async fn duplicated_and_reordered_messages_converge() {
    let cl = Cluster::from_env();
    let a = cl.site("t_reorder_a", 65435).await.unwrap();
    let b = cl.site("t_reorder_b", 65436).await.unwrap();
    let ann = a.user("Ann Vendor", "ann").await.unwrap();
    let eve = b.user("Eve Client", "eve").await.unwrap();
    let t = ann
        .draft("foil", json!({}), json!({"limit": 7_000}), "")
        .await
        .unwrap();
    eve.redeem(&ann.ticket(t, false).await.unwrap())
        .await
        .unwrap();
    relay_all(&[&a, &b]).await.unwrap();
    ann.offer(t).await.unwrap();

    // Deliver the offer twice (the first acknowledgement was "lost").
    let (id, from, msg): (i64, String, serde_json::Value) = {
        let r = a
            .admin
            .query_one(
                "SELECT id, from_agent, msg FROM chips.outbox WHERE delivered IS NULL",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    for expect in ["offer", "duplicate"] {
        let got: String = b
            .admin
            .query_one("SELECT chips.peer_receive($1, $2)", &[&from, &msg])
            .await
            .unwrap()
            .get(0);
        assert_eq!(got, expect);
    }
    // The same offer resent under a new message id changes nothing either.
    let mut resent = msg.clone();
    resent["id"] = json!(Uuid::new_v4());
    let got: String = b
        .admin
        .query_one("SELECT chips.peer_receive($1, $2)", &[&from, &resent])
        .await
        .unwrap()
        .get(0);
    assert_eq!(got, "offer");
    assert_eq!(eve.state(t).await.unwrap().as_deref(), Some("P.offer"));
    a.admin
        .execute("SELECT chips.outbox_ack($1)", &[&vec![id]])
        .await
        .unwrap();

    // Eve accepts; the open message reaches Ann twice and once more after she is open.
    eve.accept(t).await.unwrap();
    let r = relay(&b, &a).await.unwrap();
    assert_eq!((r.applied, r.failed), (1, 0));
    let open_msg: serde_json::Value = b
        .admin
        .query_one("SELECT msg FROM chips.outbox WHERE action = 'open'", &[])
        .await
        .unwrap()
        .get(0);
    let got: String = a
        .admin
        .query_one(
            "SELECT chips.peer_receive($1, $2)",
            &[&b.agent_id(), &open_msg],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(got, "duplicate");
    assert_eq!(ann.state(t).await.unwrap().as_deref(), Some("open"));

    // Reordered: Ann offers and withdraws; the void overtakes the offer. Eve's site remembers
    // the void, so the late offer is ignored and both sides agree the tally is gone.
    let t2 = ann.draft("foil", json!({}), json!({}), "").await.unwrap();
    eve.redeem(&ann.ticket(t2, false).await.unwrap())
        .await
        .unwrap();
    relay_all(&[&a, &b]).await.unwrap();
    ann.offer(t2).await.unwrap();
    ann.void(t2).await.unwrap();
    let queued = a
        .admin
        .query(
            "SELECT action, msg FROM chips.outbox WHERE delivered IS NULL ORDER BY id DESC",
            &[],
        )
        .await
        .unwrap();
    let actions: Vec<String> = queued.iter().map(|r| r.get(0)).collect();
    assert_eq!(actions, ["void", "offer"]);
    for row in &queued {
        let msg: serde_json::Value = row.get(1);
        b.admin
            .query_one("SELECT chips.peer_receive($1, $2)", &[&a.agent_id(), &msg])
            .await
            .unwrap();
    }
    assert_eq!(eve.state(t2).await.unwrap(), None);
    assert_eq!(ann.state(t2).await.unwrap().as_deref(), Some("void"));
}
