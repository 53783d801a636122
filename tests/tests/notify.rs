//! NOTIFY, received by a real LISTEN client: one channel per user, one for the site's agent.

use std::time::Duration;

use chips_tests::{drain, listen, Cluster};
use serde_json::json;

#[tokio::test]
async fn users_hear_every_state_change_of_their_tallies() {
    let s = Cluster::from_env().site("t_notify", 65461).await.unwrap();
    let ann = s.user("Ann", "ann").await.unwrap();
    let bob = s.user("Bob", "bob").await.unwrap();
    let (ann_ch, bob_ch) = (
        format!("chips_user_{}", ann.ent),
        format!("chips_user_{}", bob.ent),
    );
    let (_l, mut rx) = listen(&s.dsn, &[&ann_ch, &bob_ch, "chips_agent"])
        .await
        .unwrap();

    let t = ann.draft("stock", json!({}), json!({}), "").await.unwrap();
    bob.redeem(&ann.ticket(t, false).await.unwrap())
        .await
        .unwrap();
    ann.offer(t).await.unwrap();
    bob.accept(t).await.unwrap();

    let notes = drain(&mut rx, Duration::from_millis(500)).await;
    let states = |ch: &str| -> Vec<String> {
        notes
            .iter()
            .filter(|(c, _)| c == ch)
            .map(|(_, p)| {
                assert_eq!(p["target"], "tally");
                assert_eq!(p["uuid"], t.to_string());
                p["state"].as_str().unwrap().to_string()
            })
            .collect()
    };
    assert_eq!(states(&ann_ch), ["draft", "P.draft", "H.offer", "open"]);
    assert_eq!(states(&bob_ch), ["P.offer", "open"]);
    assert!(
        notes.iter().all(|(c, _)| c != "chips_agent"),
        "a local tally needs no agent"
    );
    assert!(
        notes.iter().all(|(_, p)| p.to_string().len() < 200),
        "payloads are small: ids, not objects"
    );
}

#[tokio::test]
async fn the_agent_hears_of_every_outbox_message() {
    let cl = Cluster::from_env();
    let a = cl.site("t_notify_a", 65462).await.unwrap();
    let b = cl.site("t_notify_b", 65463).await.unwrap();
    let ann = a.user("Ann", "ann").await.unwrap();
    let eve = b.user("Eve", "eve").await.unwrap();
    let (_l, mut rx) = listen(&b.dsn, &["chips_agent"]).await.unwrap();
    let t = ann.draft("stock", json!({}), json!({}), "").await.unwrap();
    eve.redeem(&ann.ticket(t, false).await.unwrap())
        .await
        .unwrap();
    let notes = drain(&mut rx, Duration::from_millis(500)).await;
    assert_eq!(notes.len(), 1);
    let (ch, p) = &notes[0];
    assert_eq!(ch, "chips_agent");
    assert_eq!(p["from"], b.agent_id());
    assert_eq!(p["to"], a.agent_id());
    // the lane the sidecar claims it in (an offer is a tally message: the ordered lane)
    assert_eq!(p["lane"], "ordered");
    let id: i64 = b
        .admin
        .query_one("SELECT id FROM chips.outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(p["outbox"], id);
}

#[tokio::test]
async fn nothing_is_announced_for_a_refused_change() {
    let s = Cluster::from_env()
        .site("t_notify_refused", 65464)
        .await
        .unwrap();
    let ann = s.user("Ann", "ann").await.unwrap();
    let t = ann.draft("stock", json!({}), json!({}), "").await.unwrap();
    let ch = format!("chips_user_{}", ann.ent);
    let (_l, mut rx) = listen(&s.dsn, &[&ch]).await.unwrap();
    assert!(ann.call("tally_offer", t, Some("AAAA")).await.is_err());
    assert!(ann.close(t).await.is_err());
    assert!(drain(&mut rx, Duration::from_millis(300)).await.is_empty());
}

/// A user cannot make a notification oversized (PostgreSQL refuses payloads over 8,000 bytes,
/// which would abort the change): an invoice with the longest memo and a 100 kB reference
/// notifies its payer with ids and units only.
#[tokio::test]
async fn an_invoice_with_a_huge_reference_notifies_in_a_few_bytes() {
    let s = Cluster::from_env()
        .site("t_notify_huge", 65465)
        .await
        .unwrap();
    let ann = s.user("Ann", "ann").await.unwrap();
    let bob = s.user("Bob", "bob").await.unwrap();
    let t = ann.open_with(&bob, 10_000, &[]).await.unwrap();
    let ch = format!("chips_user_{}", bob.ent);
    let (_l, mut rx) = listen(&s.dsn, &[&ch]).await.unwrap();
    let reference = json!({"lines": "x".repeat(100_000)});
    let memo = "m".repeat(1000);
    let chit: uuid::Uuid = ann
        .db
        .query_one(
            "SELECT chips.chit_invoice($1, 500, $2, $3)",
            &[&t, &memo, &reference],
        )
        .await
        .unwrap()
        .get(0);
    let notes = drain(&mut rx, Duration::from_millis(500)).await;
    let asks: Vec<_> = notes
        .iter()
        .filter(|(_, p)| p["uuid"] == chit.to_string())
        .collect();
    assert_eq!(asks.len(), 1, "{notes:?}");
    assert_eq!(asks[0].1["action"], "sign");
    assert!(asks[0].1.to_string().len() < 300, "{}", asks[0].1);
}
