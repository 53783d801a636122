//! Roles, row-level security, grants, SECURITY DEFINER settings, and the checks on peer messages.

use chips_tests::{connect, errmsg, sqlstate, Cluster, Site};
use serde_json::json;
use uuid::Uuid;

async fn site(db: &str) -> Site {
    Cluster::from_env().site(db, 65430).await.expect("site")
}

#[tokio::test]
async fn users_see_and_touch_only_their_own_rows() {
    let s = site("t_rls").await;
    let ann = s.user("Ann", "ann").await.unwrap();
    let bob = s.user("Bob", "bob").await.unwrap();
    let cat = s.user("Cat", "cat").await.unwrap();
    let secret = ann
        .draft(
            "stock",
            json!({"limit": 99}),
            json!({}),
            "Ann's private draft",
        )
        .await
        .unwrap();
    let shared = ann.draft("stock", json!({}), json!({}), "").await.unwrap();
    bob.redeem(&ann.ticket(shared, false).await.unwrap())
        .await
        .unwrap();
    ann.offer(shared).await.unwrap();

    // Bob sees his half of the shared tally, nothing of Ann's.
    let rows = bob
        .db
        .query("SELECT tally_uuid, ent FROM chips.tallies", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, Uuid>(0), shared);
    assert_eq!(rows[0].get::<_, String>(1), bob.ent);
    let n: i64 = cat
        .db
        .query_one("SELECT count(*) FROM chips.tallies_v", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    let n: i64 = bob
        .db
        .query_one("SELECT count(*) FROM chips.users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "Bob sees only his own user row");
    let n: i64 = bob
        .db
        .query_one("SELECT count(*) FROM chips.tickets", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "tickets are their issuer's");

    // Guessing ids does not help: another user's tally is "no such tally".
    for f in ["tally_json", "tally_void", "tally_counter", "ticket_create"] {
        let e = bob
            .db
            .execute(&format!("SELECT chips.{f}($1)"), &[&secret])
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e), "42704", "{f}");
    }
    let e = bob
        .call("tally_offer", secret, Some("x"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42704");
    // Cat cannot act on Ann and Bob's tally either.
    assert_eq!(sqlstate(&cat.accept(shared).await.unwrap_err()), "42704");

    // No direct writes.
    for q in [
        "UPDATE chips.tallies SET status = 'open'",
        "DELETE FROM chips.tallies",
        "INSERT INTO chips.agents (agent) VALUES ('x')",
        "UPDATE chips.users SET name = 'Mallory'",
        "SELECT * FROM chips.outbox",
        "SELECT * FROM chips.inbox",
    ] {
        let e = bob.db.execute(q, &[]).await.unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{q}");
    }
    let memo: String = s
        .admin
        .query_one(
            "SELECT memo FROM chips.tallies WHERE tally_uuid = $1",
            &[&secret],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(memo, "Ann's private draft");
}

#[tokio::test]
async fn admin_and_agent_functions_are_not_for_users_or_public() {
    let s = site("t_grants").await;
    let bob = s.user("Bob", "bob").await.unwrap();
    for q in [
        "SELECT chips.user_create('Mallory')",
        "SELECT chips.agent_register('x')",
        "SELECT chips.user_set_key('p1000', 'x')",
        "SELECT chips.user_set_status('p1000', 'off')",
        "SELECT chips.contract_add('{}')",
        "SELECT chips.peer_receive('x', '{}')",
        "SELECT * FROM chips.outbox_claim()",
        "SELECT chips.outbox_ack('{1}')",
        "SELECT chips.outbox_release('{1}')",
        "SELECT chips.admin_ticket()",
        "SELECT chips.admin_login('x')",
        "SELECT chips.admin_overview('x')",
        "SELECT chips.admin_user_add('x', 'Mallory')",
        "SELECT chips._send('{}', '{}', 'tally', 'void', '{}')",
        "SELECT chips._ticket_use('x', '{}')",
        "SELECT chips.new_token()",
    ] {
        let e = bob.db.execute(q, &[]).await.unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{q}: {e}");
    }
    // What PUBLIC may execute is exactly the pure helpers.
    let rows = s
        .admin
        .query(
            "SELECT p.proname::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname = 'chips' AND has_function_privilege('public', p.oid, 'EXECUTE')
             ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let public: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        public,
        [
            "address_check",
            "address_parse",
            "agent_check",
            "b64url_decode",
            "b64url_encode",
            "canonical_json",
            "cert_check",
            "chit_chain_hash",
            "chit_doc_check",
            "chit_doc_make",
            "chit_transition_allowed",
            "chit_value",
            "chit_verify",
            "cuid_check",
            "json_digest",
            "pubkey_check",
            "settings_check",
            "tally_doc_check",
            "tally_state",
            "tally_transition_allowed",
            "tally_verify",
            "terms_check",
            "trading_check",
            "verify_signature"
        ]
    );
    // Every SECURITY DEFINER function pins its search_path.
    let n: i64 = s
        .admin
        .query_one(
            "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname = 'chips' AND p.prosecdef
               AND NOT EXISTS (SELECT 1 FROM unnest(p.proconfig) c WHERE c LIKE 'search_path=%')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    // Nobody but the owner may create objects in the schema.
    let ok: bool = s
        .admin
        .query_one(
            "SELECT has_schema_privilege('chips_user', 'chips', 'CREATE')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!ok);
}

#[tokio::test]
async fn roles_that_are_not_active_users_are_refused() {
    let s = site("t_roles").await;
    let bob = s.user("Bob", "bob").await.unwrap();
    // A role in chips_user that acts for no user.
    s.admin
        .batch_execute(
            "DROP ROLE IF EXISTS t_roles_stray; CREATE ROLE t_roles_stray IN ROLE chips_user",
        )
        .await
        .unwrap();
    let stray = connect(&s.dsn).await.unwrap();
    stray.batch_execute("SET ROLE t_roles_stray").await.unwrap();
    let e = stray
        .execute("SELECT chips.tally_create('stock')", &[])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    // A locked user.
    s.admin
        .execute("SELECT chips.user_set_status($1, 'locked')", &[&bob.ent])
        .await
        .unwrap();
    let e = bob
        .draft("stock", json!({}), json!({}), "")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    assert!(errmsg(&e).contains("locked"), "{}", errmsg(&e));
    // A superuser cannot be mapped to a user (it would bypass row-level security).
    let e = s
        .admin
        .execute(
            "SELECT chips.user_create('Root', username => 'postgres')",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "22023");
    // A user without a key cannot sign anything yet.
    let ent: String = s
        .admin
        .query_one("SELECT chips.user_create('Keyless')", &[])
        .await
        .unwrap()
        .get(0);
    let c = s.connect_as(&ent).await.unwrap();
    let e = c
        .execute("SELECT chips.tally_create('stock')", &[])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "55000");
}

#[tokio::test]
async fn peer_messages_are_checked_before_they_change_anything() {
    let cl = Cluster::from_env();
    let a = cl.site("t_peer_a", 65451).await.unwrap();
    let b = cl.site("t_peer_b", 65452).await.unwrap();
    let ann = a.user("Ann", "ann").await.unwrap();
    let eve = b.user("Eve", "eve").await.unwrap();
    let t = ann.draft("stock", json!({}), json!({}), "").await.unwrap();
    eve.redeem(&ann.ticket(t, false).await.unwrap())
        .await
        .unwrap();
    chips_tests::relay_all(&[&a, &b]).await.unwrap();
    ann.offer(t).await.unwrap();
    let offer: serde_json::Value = a
        .admin
        .query_one("SELECT msg FROM chips.outbox WHERE action = 'offer'", &[])
        .await
        .unwrap()
        .get(0);
    let recv = |from: String, msg: serde_json::Value| {
        let c = &b.admin;
        async move {
            c.query_one("SELECT chips.peer_receive($1, $2)", &[&from, &msg])
                .await
        }
    };

    // An impostor agent relaying Ann's offer.
    let impostor = chips_core::sign::KeyPair::from_phrase("impostor").public_b64();
    assert_eq!(
        sqlstate(&recv(impostor.clone(), offer.clone()).await.unwrap_err()),
        "42501"
    );
    // A message whose `from` is rewritten to the impostor: the tally's party is not the sender.
    let mut m = offer.clone();
    m["from"]["agent"] = json!(impostor);
    assert_eq!(sqlstate(&recv(impostor, m).await.unwrap_err()), "42501");
    // A forged offer: the document changed after Ann signed it.
    let mut m = offer.clone();
    m["id"] = json!(Uuid::new_v4());
    m["object"]["tally"]["stock"]["terms"] = json!({"limit": 1_000_000});
    assert_eq!(sqlstate(&recv(a.agent_id(), m).await.unwrap_err()), "28000");
    // Missing signature.
    let mut m = offer.clone();
    m["id"] = json!(Uuid::new_v4());
    m["object"]["sign"] = json!({});
    assert_eq!(sqlstate(&recv(a.agent_id(), m).await.unwrap_err()), "22023");
    // Addressed to an agent this site does not serve.
    let mut m = offer.clone();
    m["to"]["agent"] = json!(a.agent_id());
    assert_eq!(sqlstate(&recv(a.agent_id(), m).await.unwrap_err()), "22023");
    // Malformed envelopes.
    for (m, code) in [
        (json!([1, 2]), "22023"),
        (json!({"id": "x"}), "22023"),
        (
            json!({"id": "nope", "target": "tally", "action": "offer", "from": {"agent": a.agent_id()}, "to": {}, "object": {}}),
            "22P02",
        ),
    ] {
        assert_eq!(sqlstate(&recv(a.agent_id(), m).await.unwrap_err()), code);
    }
    let mut m = offer.clone();
    m["action"] = json!("explode");
    assert_eq!(sqlstate(&recv(a.agent_id(), m).await.unwrap_err()), "22023");

    assert_eq!(
        eve.state(t).await.unwrap(),
        None,
        "no refused message left a trace"
    );
    let n: i64 = b
        .admin
        .query_one("SELECT count(*) FROM chips.inbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "no refused message was recorded as received");
    // The genuine message still goes through.
    let got: String = recv(a.agent_id(), offer).await.unwrap().get(0);
    assert_eq!(got, "offer");
    assert_eq!(eve.state(t).await.unwrap().as_deref(), Some("P.offer"));
}
