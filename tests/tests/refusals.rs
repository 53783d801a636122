//! Everything the database refuses: every transition of the status table (through direct SQL,
//! so the trigger is what is tested), refused API calls, forged signatures and bad input. Each
//! refusal carries its SQLSTATE and leaves nothing changed.

use chips_core::sign::KeyPair;
use chips_core::tally::{transition_allowed, Status, ALL_STATUSES};
use chips_tests::{sqlstate, Cluster, Site, User};
use serde_json::json;
use uuid::Uuid;

async fn site(db: &str) -> Site {
    Cluster::from_env().site(db, 65430).await.expect("site")
}

async fn pair(s: &Site) -> (User, User) {
    (
        s.user("Ann Vendor", "ann").await.unwrap(),
        s.user("Bob Client", "bob").await.unwrap(),
    )
}

/// A tally between ann and bob in P.draft.
async fn drafted(ann: &User, bob: &User) -> Uuid {
    let t = ann
        .draft("stock", json!({"limit": 1000}), json!({}), "")
        .await
        .unwrap();
    bob.redeem(&ann.ticket(t, false).await.unwrap())
        .await
        .unwrap();
    t
}

/// Ann's half of a tally in each status.
async fn ann_half_in(s: &Site, ann: &User, bob: &User, status: Status) -> Uuid {
    let t = drafted(ann, bob).await;
    match status {
        Status::Draft => {}
        Status::Offer => {
            ann.offer(t).await.unwrap();
        }
        Status::Void => {
            ann.void(t).await.unwrap();
        }
        Status::Open | Status::Closing | Status::Closed => {
            ann.offer(t).await.unwrap();
            bob.accept(t).await.unwrap();
            if status == Status::Closing {
                s.admin
                    .execute(
                        "UPDATE chips.tallies SET net_good = 1 WHERE tally_uuid = $1",
                        &[&t],
                    )
                    .await
                    .unwrap();
                ann.close(t).await.unwrap();
            } else if status == Status::Closed {
                ann.close(t).await.unwrap();
            }
        }
    }
    let st: String = s
        .admin
        .query_one(
            "SELECT status FROM chips.tallies WHERE tally_uuid = $1 AND ent = $2",
            &[&t, &ann.ent],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(st, status.as_str());
    t
}

#[tokio::test]
async fn every_status_transition_through_direct_sql() {
    let s = site("t_matrix").await;
    let (ann, bob) = pair(&s).await;
    let mut checked = 0;
    for from in ALL_STATUSES {
        let t = ann_half_in(&s, &ann, &bob, from).await;
        for to in ALL_STATUSES {
            if from == to {
                continue;
            }
            // Each attempt in its own transaction, rolled back, so every one starts from `from`.
            s.admin.batch_execute("BEGIN").await.unwrap();
            let r = s
                .admin
                .execute(
                    "UPDATE chips.tallies SET status = $1 WHERE tally_uuid = $2 AND ent = $3",
                    &[&to.as_str(), &t, &ann.ent],
                )
                .await;
            s.admin.batch_execute("ROLLBACK").await.unwrap();
            // Opening also needs both signatures: an H.offer half has only its holder's.
            let needs_sigs = to == Status::Open && from != Status::Open;
            let expect = match (transition_allowed(from, to), needs_sigs) {
                (false, _) => Some("55000"),
                (true, true) => Some("28000"),
                (true, false) => None,
            };
            match (&r, expect) {
                (Ok(n), None) => assert_eq!(*n, 1, "{from} -> {to}"),
                (Err(e), Some(code)) => assert_eq!(sqlstate(e), code, "{from} -> {to}: {e}"),
                _ => panic!("{from} -> {to}: got {r:?}, expected {expect:?}"),
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 30);
}

#[tokio::test]
async fn signed_tally_document_cannot_change() {
    let s = site("t_frozen").await;
    let (ann, bob) = pair(&s).await;
    let t = drafted(&ann, &bob).await;
    ann.offer(t).await.unwrap();
    bob.accept(t).await.unwrap();
    for set in [
        "memo = 'changed'",
        "revision = 5",
        "hold_terms = '{\"limit\": 1}'",
        "hold_sig = NULL",
        "digest = NULL",
    ] {
        let e = s
            .admin
            .execute(
                &format!("UPDATE chips.tallies SET {set} WHERE tally_uuid = $1"),
                &[&t],
            )
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e), "55000", "{set}: {e}");
    }
    let e = s
        .admin
        .execute(
            "UPDATE chips.tallies SET ent = 'p1' WHERE tally_uuid = $1",
            &[&t],
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "55000");
}

/// Calls that the state of the tally refuses (55000), each leaving the state as it was.
#[tokio::test]
async fn refused_api_calls_change_nothing() {
    let s = site("t_refused").await;
    let (ann, bob) = pair(&s).await;

    // No partner yet.
    let lonely = ann.draft("stock", json!({}), json!({}), "").await.unwrap();
    let sig = ann.sign(lonely).await.unwrap();
    let e = ann
        .call("tally_offer", lonely, Some(&sig))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "55000");
    assert_eq!(ann.state(lonely).await.unwrap().as_deref(), Some("draft"));

    // Ann's own offer: she cannot accept or counter it, nor change it.
    let t = drafted(&ann, &bob).await;
    ann.offer(t).await.unwrap();
    for r in [
        ann.accept(t).await,
        ann.counter(t).await,
        ann.offer(t).await,
    ] {
        assert_eq!(sqlstate(&r.unwrap_err()), "55000");
    }
    let e = ann
        .db
        .execute("SELECT chips.tally_update($1, memo => 'x')", &[&t])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "55000");
    let e = ann
        .db
        .execute("SELECT chips.ticket_create($1)", &[&t])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "55000");
    assert_eq!(sqlstate(&ann.close(t).await.unwrap_err()), "55000");
    assert_eq!(ann.state(t).await.unwrap().as_deref(), Some("H.offer"));
    assert_eq!(bob.state(t).await.unwrap().as_deref(), Some("P.offer"));

    // Open: no void, counter, offer or accept.
    bob.accept(t).await.unwrap();
    for r in [
        bob.void(t).await,
        bob.counter(t).await,
        bob.accept(t).await,
        bob.offer(t).await,
    ] {
        assert_eq!(sqlstate(&r.unwrap_err()), "55000");
    }
    assert_eq!(bob.state(t).await.unwrap().as_deref(), Some("open"));

    // A tally nobody has.
    let e = ann.void(Uuid::new_v4()).await.unwrap_err();
    assert_eq!(sqlstate(&e), "42704");
}

#[tokio::test]
async fn forged_malformed_and_missing_signatures_refused() {
    let s = site("t_forged").await;
    let (ann, bob) = pair(&s).await;
    let mallory = KeyPair::from_phrase("mallory");
    let t = drafted(&ann, &bob).await;
    let doc = ann.doc(t).await.unwrap();
    let canonical = chips_core::canon::canonical(&doc).unwrap();

    let forged = mallory.sign(canonical.as_bytes());
    let e = ann.call("tally_offer", t, Some(&forged)).await.unwrap_err();
    assert_eq!(sqlstate(&e), "28000", "{e}");
    // Ann's signature over another document (other memo) is no signature over this one.
    let mut other = doc.clone();
    other["memo"] = json!("something else");
    let wrong_doc = ann
        .key
        .sign(chips_core::canon::canonical(&other).unwrap().as_bytes());
    assert_eq!(
        sqlstate(
            &ann.call("tally_offer", t, Some(&wrong_doc))
                .await
                .unwrap_err()
        ),
        "28000"
    );
    assert_eq!(
        sqlstate(
            &ann.call("tally_offer", t, Some("not base64 !"))
                .await
                .unwrap_err()
        ),
        "22P02"
    );
    assert_eq!(
        sqlstate(&ann.call("tally_offer", t, Some("")).await.unwrap_err()),
        "28000"
    );
    let e = ann
        .db
        .query_one("SELECT chips.tally_offer($1, NULL)", &[&t])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "28000");
    assert_eq!(
        ann.state(t).await.unwrap().as_deref(),
        Some("P.draft"),
        "nothing changed"
    );
    assert_eq!(bob.state(t).await.unwrap(), None, "nothing was sent");

    ann.offer(t).await.unwrap();
    let forged = mallory.sign(canonical.as_bytes());
    assert_eq!(
        sqlstate(
            &bob.call("tally_accept", t, Some(&forged))
                .await
                .unwrap_err()
        ),
        "28000"
    );
    // Bob's key over the right document, but with Ann's signature: still not Bob's.
    let anns = ann.key.sign(canonical.as_bytes());
    assert_eq!(
        sqlstate(&bob.call("tally_accept", t, Some(&anns)).await.unwrap_err()),
        "28000"
    );
    assert_eq!(bob.state(t).await.unwrap().as_deref(), Some("P.offer"));
    assert_eq!(ann.state(t).await.unwrap().as_deref(), Some("H.offer"));

    // An admin cannot open it by hand either.
    let e = s
        .admin
        .execute("UPDATE chips.tallies SET status = 'open', hold_sig = $2 WHERE tally_uuid = $1 AND ent = $3", &[&t, &forged, &bob.ent])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "28000");
}

#[tokio::test]
async fn bad_input_gets_a_clear_error() {
    let s = site("t_badinput").await;
    let (ann, _bob) = pair(&s).await;
    let cases: Vec<(&str, &str)> = vec![
        ("SELECT chips.tally_create('vendor')", "22023"),
        ("SELECT chips.tally_create(NULL)", "22023"),
        ("SELECT chips.tally_create('stock', hold_terms => '{\"limit\": -5}')", "22023"),
        ("SELECT chips.tally_create('stock', hold_terms => '{\"limit\": 1.5}')", "22023"),
        ("SELECT chips.tally_create('stock', part_terms => '{\"limitt\": 5}')", "22023"),
        ("SELECT chips.tally_create('stock', part_terms => '[5]')", "22023"),
        ("SELECT chips.tally_create('stock', contract => 'nope')", "42704"),
        ("SELECT chips.tally_create('stock', memo => repeat('x', 1001))", "22023"),
        ("SELECT chips.ticket_redeem('{}')", "22023"),
        ("SELECT chips.ticket_redeem('\"token\"')", "22023"),
        ("SELECT chips.ticket_redeem('{\"token\": \"x\", \"chad\": {\"cuid\": \"a\", \"agent\": \"short\"}}')", "22023"),
        ("SELECT chips.tally_json('00000000-0000-0000-0000-000000000000')", "42704"),
        ("SELECT chips.tally_offer('not-a-uuid', 'x')", "22P02"),
    ];
    for (q, code) in &cases {
        let e = ann.db.execute(*q, &[]).await.unwrap_err();
        assert_eq!(sqlstate(&e), *code, "{q}: {e}");
    }
    let n: i64 = s
        .admin
        .query_one("SELECT count(*) FROM chips.tallies", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "no bad call wrote a tally");

    let admin_cases: Vec<(&str, &str)> = vec![
        ("SELECT chips.user_create('X', cuid => 'bad cuid')", "22023"),
        ("SELECT chips.user_create('X', pubkey => 'AAAA')", "22023"),
        ("SELECT chips.user_create('')", "22023"),
        ("SELECT chips.user_create('X', ent_type => 'q')", "22023"),
        ("SELECT chips.user_create('X', cuid => 'ann')", "23505"),
        ("SELECT chips.user_create('X', agent => 'elsewhere')", "22023"),
        ("SELECT chips.agent_register('short')", "22023"),
        ("SELECT chips.agent_register($$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA$$, port => 0)", "22023"),
        ("SELECT chips.contract_add('[1]')", "22023"),
        ("SELECT chips.contract_add('{\"text\": \"no title\"}')", "22023"),
        ("SELECT chips.user_set_key('p1', 'AAAA')", "22023"),
        ("SELECT chips.user_set_key('nobody', $$11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo$$)", "42704"),
        ("SELECT chips.user_set_status('p1000', 'gone')", "22023"),
        ("SELECT chips.b64url_decode('@@')", "22P02"),
        ("SELECT chips.canonical_json(NULL) IS NULL", ""),
    ];
    for (q, code) in &admin_cases {
        match s.admin.execute(*q, &[]).await {
            Err(e) => assert_eq!(sqlstate(&e), *code, "{q}: {e}"),
            Ok(_) => assert_eq!(*code, "", "{q} was accepted"),
        }
    }
    let n: i64 = s
        .admin
        .query_one("SELECT count(*) FROM chips.users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2, "no bad call wrote a user");
}
