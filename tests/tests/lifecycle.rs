//! Tally lifecycle through the SQL API, as real clients: one site, two sites, every transition.

use chips_tests::{relay_all, sqlstate, Cluster, Site, User};
use serde_json::json;
use uuid::Uuid;

async fn site(db: &str) -> Site {
    Cluster::from_env().site(db, 65430).await.expect("site")
}

/// Ann (stock, vendor) drafts a tally, Bob redeems her ticket; returns its uuid in P.draft.
async fn drafted(ann: &User, bob: &User) -> Uuid {
    let t = ann.draft("stock", json!({"limit": 50_000}), json!({}), "groceries").await.unwrap();
    let ticket = ann.ticket(t, false).await.unwrap();
    assert_eq!(bob.redeem(&ticket).await.unwrap(), Some(t));
    t
}

async fn digest_of(site: &Site, tally: Uuid, side: &str) -> Vec<u8> {
    site.admin
        .query_one("SELECT digest FROM chips.tallies WHERE tally_uuid = $1 AND side = $2", &[&tally, &side])
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
    assert_eq!(bob.state(t).await.unwrap(), None, "Bob holds no half before the offer");

    assert_eq!(ann.offer(t).await.unwrap(), "H.offer");
    assert_eq!(bob.state(t).await.unwrap().as_deref(), Some("P.offer"));
    // Both halves build the same document.
    assert_eq!(ann.doc(t).await.unwrap(), bob.doc(t).await.unwrap());

    assert_eq!(bob.accept(t).await.unwrap(), "open");
    assert_eq!(ann.state(t).await.unwrap().as_deref(), Some("open"));
    let (d1, d2) = (digest_of(&s, t, "stock").await, digest_of(&s, t, "foil").await);
    assert_eq!(d1.len(), 32);
    assert_eq!(d1, d2, "block 0 of the chain is the same on both halves");
    let expect = chips_core::canon::digest(&ann.doc(t).await.unwrap()).unwrap();
    assert_eq!(d1, expect.to_vec());
    // No peer traffic for a tally inside one site.
    let n: i64 = s.admin.query_one("SELECT count(*) FROM chips.outbox", &[]).await.unwrap().get(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn cross_site_tally_through_outbox_and_peer_receive() {
    let cl = Cluster::from_env();
    let a = cl.site("t_cross_a", 65431).await.unwrap();
    let b = cl.site("t_cross_b", 65432).await.unwrap();
    let ann = a.user("Ann Vendor", "ann").await.unwrap();
    let eve = b.user("Eve Client", "eve").await.unwrap();

    let t = ann.draft("stock", json!({"limit": 10_000}), json!({}), "cross-site").await.unwrap();
    let ticket = ann.ticket(t, false).await.unwrap();
    assert_eq!(eve.redeem(&ticket).await.unwrap(), None, "a remote ticket is redeemed by message");
    let queued: i64 = b.admin.query_one("SELECT count(*) FROM chips.outbox", &[]).await.unwrap().get(0);
    assert_eq!(queued, 1);
    relay_all(&[&a, &b]).await.unwrap();
    assert_eq!(ann.state(t).await.unwrap().as_deref(), Some("P.draft"));

    assert_eq!(ann.offer(t).await.unwrap(), "H.offer");
    assert_eq!(eve.state(t).await.unwrap(), None, "nothing arrives before the relay");
    relay_all(&[&a, &b]).await.unwrap();
    assert_eq!(eve.state(t).await.unwrap().as_deref(), Some("P.offer"));
    assert_eq!(ann.doc(t).await.unwrap(), eve.doc(t).await.unwrap());

    assert_eq!(eve.accept(t).await.unwrap(), "open");
    let r = relay_all(&[&a, &b]).await.unwrap();
    assert_eq!((r.applied, r.failed), (1, 0));
    assert_eq!(ann.state(t).await.unwrap().as_deref(), Some("open"));
    assert_eq!(digest_of(&a, t, "stock").await, digest_of(&b, t, "foil").await);
}
