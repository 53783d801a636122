//! Hostile peers: a site that completed the Noise handshake with its own valid key (so the
//! receiving site knows which agent is talking: `chips.peer_receive(from_agent, msg)` is what
//! chipsd calls with the agent the handshake proved) and then lies. Each lie is a genuine
//! message of a real exchange, caught on its way and rewritten. The receiving site refuses it,
//! and every table of its state is as it was (a digest of each chips table before and after;
//! the message queues apart: the inbox records a message id so that a replay is answered
//! `duplicate`, and a refused prepare goes back upstream as a `reject`). Then the exchange
//! finishes as the protocol says, every lift good everywhere or void everywhere.

use chips_core::sign::KeyPair;
use chips_tests::ring::{chad, pay_address, Net};
use chips_tests::{sqlstate, Site};
use serde_json::{json, Value};
use uuid::Uuid;

/// A digest of every chips table but the message queues, by table.
async fn state(s: &Site) -> Vec<(String, String)> {
    let tables: Vec<String> = s
        .admin
        .query(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'chips'
               AND tablename NOT IN ('inbox', 'outbox') ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut out = Vec::new();
    for t in tables {
        let d: String = s
            .admin
            .query_one(
                &format!(
                    "SELECT md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) FROM chips.\"{t}\" x"
                ),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        out.push((t, d));
    }
    out
}

/// What a site does with a message from `from_agent`: its answer, or the SQLSTATE and message
/// it refused it with.
async fn deliver(to: &Site, from_agent: &str, msg: &Value) -> Result<String, (String, String)> {
    match to
        .admin
        .query_one("SELECT chips.peer_receive($1, $2)", &[&from_agent, msg])
        .await
    {
        Ok(r) => Ok(r.get(0)),
        Err(e) => Err((sqlstate(&e), chips_tests::errmsg(&e))),
    }
}

/// Relays (and ticks) until a message `want` picks is waiting in some site's outbox; returns
/// it, left undelivered, with the index of the site it goes to.
async fn catch(net: &Net, want: impl Fn(&Value) -> bool) -> (usize, i64, Value) {
    for _ in 0..40 {
        let mut moved = 0;
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
                let to = net
                    .sites
                    .iter()
                    .position(|s| s.agent_id() == msg["to"]["agent"].as_str().unwrap())
                    .unwrap();
                if want(&msg) {
                    return (to, id, msg);
                }
                let from_agent = msg["from"]["agent"].as_str().unwrap().to_string();
                deliver(&net.sites[to], &from_agent, &msg).await.unwrap();
                from.admin
                    .execute("SELECT chips.outbox_ack(ARRAY[$1::bigint])", &[&id])
                    .await
                    .unwrap();
                moved += 1;
            }
        }
        if moved == 0 {
            for s in &net.sites {
                s.admin
                    .execute("SELECT chips.lift_tick()", &[])
                    .await
                    .unwrap();
            }
        }
    }
    panic!("the message never came");
}

fn is(msg: &Value, target_action: &str, to: &Site) -> bool {
    format!(
        "{}/{}",
        msg["target"].as_str().unwrap_or(""),
        msg["action"].as_str().unwrap_or("")
    ) == target_action
        && msg["to"]["agent"] == json!(to.agent_id())
}

/// Delivers the rewritten `lie` (a new message id, as a sender would make up) to site `to`
/// and checks it changed nothing there; returns the site's answer.
async fn refused(net: &Net, to: usize, lie: &Value) -> Result<String, (String, String)> {
    let site = &net.sites[to];
    let before = state(site).await;
    let mut lie = lie.clone();
    lie["id"] = json!(Uuid::new_v4().to_string());
    let from_agent = lie["from"]["agent"].as_str().unwrap().to_string();
    let r = deliver(site, &from_agent, &lie).await;
    assert_eq!(state(site).await, before, "{lie}: {r:?} changed the site");
    r
}

/// The reject a site sent back for lift `lift`, if any.
async fn rejected(site: &Site, lift: &str) -> Option<String> {
    site.admin
        .query_opt(
            "SELECT msg->'object'->>'reason' FROM chips.outbox
             WHERE action = 'reject' AND msg->'object'->>'lift' = $1 ORDER BY id DESC LIMIT 1",
            &[&lift],
        )
        .await
        .unwrap()
        .map(|r| r.get(0))
}

#[tokio::test]
async fn a_lying_relay_is_refused_and_the_payment_ends_alike_everywhere() {
    let net = Net::build("liar", 500, None, [47160, 47161, 47162, 47163]).await;
    let (payer, payee) = (&net.users[0][0], &net.users[2][3]);
    let to = chad(&net.sites[2], payee);
    let before = net.positions().await;
    let stranger = KeyPair::from_phrase("not the payer");

    // site 1 relays a payment to site 2 (the payee's) and rewrites the prepare: each lie alone
    let l = pay_address(payer, &to, 300).await.unwrap();
    let (at, id, prepare) = catch(&net, |m| is(m, "lift/prepare", &net.sites[2])).await;
    assert_eq!(at, 2);
    // the liar sends its lies instead: the true prepare never leaves it
    net.sites[1]
        .admin
        .execute("SELECT chips.outbox_ack(ARRAY[$1::bigint])", &[&id])
        .await
        .unwrap();
    let lift = prepare["object"]["lift"].as_str().unwrap().to_string();
    let mut lies: Vec<(&str, Value)> = Vec::new();
    let mut m = prepare.clone();
    let doc = m["object"]["pay"]["doc"].clone();
    m["object"]["pay"]["sign"] = json!(stranger.sign_json(&doc).unwrap());
    lies.push(("the payer's signature forged", m));
    let mut m = prepare.clone();
    m["object"]["units"] = json!(400);
    m["object"]["chit"]["units"] = json!(400);
    lies.push(("units inflated", m));
    let mut m = prepare.clone();
    m["object"]["condition"] = json!(chips_core::codec::b64url_encode(&[7u8; 32]));
    lies.push(("the hash lock rewritten", m));
    let mut m = prepare.clone();
    m["object"]["void"] = json!(chips_core::codec::b64url_encode(&[8u8; 32]));
    lies.push(("the void lock rewritten", m));
    let mut m = prepare.clone();
    m["object"]["pay"]["doc"]["units"] = json!(400);
    m["object"]["units"] = json!(400);
    m["object"]["chit"]["units"] = json!(400);
    lies.push(("the signed payment document rewritten", m));
    let mut m = prepare.clone();
    m["object"]["expires"] = json!(4_102_444_800_000i64); // the year 2100
    lies.push(("the expiry pushed past the lift's life", m));
    for (what, lie) in &lies {
        let r = refused(&net, 2, lie).await;
        assert!(
            matches!(&r, Ok(s) if s.starts_with("rejected")) || r.is_err(),
            "{what}: {r:?}"
        );
    }
    // the first lie that went back as a reject tells the relay, which releases at once
    assert!(
        rejected(&net.sites[2], &lift).await.is_some(),
        "a refused prepare goes back upstream"
    );
    // the origin hears of the refusal and sends the payment again on its way (a new part: the
    // relay, honest this time, passes it): one decision, alike everywhere, and only the payer
    // and the payee moved, by the payment or not at all
    net.settle_all().await;
    net.check_consistent().await;
    let st = net.lift_status(l).await;
    let paid = st
        .iter()
        .any(|(k, s, r)| *k == 0 && r == "origin" && s == "good");
    let after = net.positions().await;
    for k in 0..4 {
        for i in 0..4 {
            let want = match ((k, i), paid) {
                ((0, 0), true) => -300,
                ((2, 3), true) => 300,
                _ => 0,
            };
            assert_eq!(
                after[k][i] - before[k][i],
                want,
                "site {k} user {i} ({st:?})"
            );
        }
    }
}

#[tokio::test]
async fn a_decision_without_the_secret_and_a_replayed_prepare_change_nothing() {
    let net = Net::build("liar2", 500, None, [47164, 47165, 47166, 47167]).await;
    let (payer, payee) = (&net.users[0][0], &net.users[2][3]);
    let to = chad(&net.sites[2], payee);
    let before = net.positions().await;

    // the commit the origin sends to site 1, with a secret that does not open the lock
    let l = pay_address(payer, &to, 200).await.unwrap();
    let (_, _, prepare) = catch(&net, |m| is(m, "lift/prepare", &net.sites[2])).await;
    let (at, _, commit) = catch(&net, |m| is(m, "lift/commit", &net.sites[1])).await;
    assert_eq!(at, 1);
    let mut lie = commit.clone();
    lie["object"]["secret"] = json!(chips_core::codec::b64url_encode(&[9u8; 32]));
    let r = refused(&net, 1, &lie).await;
    assert!(
        matches!(&r, Ok(s) if s.starts_with("refused")) || r.is_err(),
        "{r:?}"
    );
    // a secret of the wrong length, and none
    for secret in [json!("AAAA"), Value::Null] {
        let mut lie = commit.clone();
        lie["object"]["secret"] = secret;
        let r = refused(&net, 1, &lie).await;
        assert!(
            matches!(&r, Ok(s) if s.starts_with("refused")) || r.is_err(),
            "{r:?}"
        );
    }
    // the true decision goes on: good everywhere
    net.settle_all().await;
    let st = net.lift_status(l).await;
    assert!(st.iter().all(|(_, s, _)| s == "good"), "{st:?}");
    let after = net.positions().await;
    assert_eq!(after[0][0] - before[0][0], -200);
    assert_eq!(after[2][3] - before[2][3], 200);

    // the same prepare again, as a new message: the payee's site does not pay twice
    let r = refused(&net, 2, &prepare).await;
    assert!(matches!(&r, Ok(s) if s == "ignored") || r.is_err(), "{r:?}");
    // and a copy of it under a lift id of its own (a replay dressed as another lift): the
    // payer's signature names the first lift, so it is refused
    let mut copy = prepare.clone();
    copy["object"]["lift"] = json!(Uuid::new_v4().to_string());
    copy["object"]["chit"]["reference"] = json!({"lift": copy["object"]["lift"]});
    let r = refused(&net, 2, &copy).await;
    assert!(
        matches!(&r, Ok(s) if s.starts_with("rejected")) || r.is_err(),
        "{r:?}"
    );
    net.settle_all().await;
    net.check_consistent().await;
    assert_eq!(net.positions().await, after, "a replay moves nothing");
}

#[tokio::test]
async fn chits_and_chains_from_a_site_that_is_no_party_are_refused() {
    let net = Net::build("liar3", 500, None, [47168, 47169, 47170, 47171]).await;
    // a payment on the tally between site 0's u3 and site 1's u0 (u30 pays its vendor u01)
    let (u3, t) = (&net.users[0][3], net.tallies[0][3]);
    u3.pay(t, 40, "bread").await.unwrap();
    let (at, _, good) = catch(&net, |m| is(m, "chit/good", &net.sites[1])).await;
    assert_eq!(at, 1);
    // site 3 sends site 1 that chit as its own: no party to the tally
    let mut lie = good.clone();
    lie["from"] = json!({"cuid": "u33", "agent": net.sites[3].agent_id()});
    let r = refused(&net, 1, &lie).await;
    assert_eq!(r.as_ref().map_err(|e| e.0.as_str()), Err("42501"), "{r:?}");
    // site 0 itself, but the chit rewritten after signing (more units): the signature fails
    let mut lie = good.clone();
    lie["object"]["chit"]["units"] = json!(4_000);
    let r = refused(&net, 1, &lie).await;
    assert!(r.is_err(), "{r:?}");
    // the true chit goes through; then a chain message that rewrites the history
    net.settle_all().await;
    net.check_consistent().await;
    u3.pay(t, 5, "jam").await.unwrap();
    let (_, _, chain) = catch(&net, |m| {
        m["target"] == json!("chit")
            && (m["action"] == json!("chain") || m["action"] == json!("chains"))
            && m["to"]["agent"] == json!(net.sites[1].agent_id())
    })
    .await;
    let mut lie = chain.clone();
    // every 43-character base64url hash in its object replaced: blocks that do not chain
    lie["object"] = serde_json::from_str(&replace_hashes(&chain["object"].to_string())).unwrap();
    assert_ne!(lie, chain, "a chain message carries the blocks' hashes");
    let r = refused(&net, 1, &lie).await;
    assert!(
        r.is_err() || matches!(&r, Ok(s) if s != "good" && s != "applied"),
        "{r:?}"
    );
    net.settle_all().await;
    net.check_consistent().await;
}

/// Replaces every JSON string of 43 base64url characters (a SHA-256 in base64url) with another.
fn replace_hashes(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('"') {
        out.push_str(&rest[..=i]);
        rest = &rest[i + 1..];
        let Some(j) = rest.find('"') else { break };
        let s = &rest[..j];
        if s.len() == 43
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            out.push_str(&chips_core::codec::b64url_encode(&[0x5a; 32]));
        } else {
            out.push_str(s);
        }
        out.push('"');
        rest = &rest[j + 1..];
    }
    out.push_str(rest);
    out
}

#[tokio::test]
async fn a_ticket_redeemed_with_someone_elses_certificate_is_refused() {
    let net = Net::build("liar4", 500, None, [47172, 47173, 47174, 47175]).await;
    let vendor = &net.users[0][0];
    let t = vendor
        .draft("stock", json!({"limit": 100}), json!({}), "a new client")
        .await
        .unwrap();
    let ticket = vendor.ticket(t, false).await.unwrap();
    net.users[1][1].redeem(&ticket).await.unwrap();
    let (at, _, redeem) = catch(&net, |m| is(m, "tally/ticket", &net.sites[0])).await;
    assert_eq!(at, 0);
    // the certificate of a user at another site, and of another user of the sending site
    for other in [&net.users[2][2], &net.users[1][2]] {
        let mut lie = redeem.clone();
        lie["object"]["cert"] = other
            .db
            .query_one("SELECT chips.user_cert()", &[])
            .await
            .unwrap()
            .get::<_, Value>(0);
        let r = refused(&net, 0, &lie).await;
        assert!(r.is_err(), "{}: {r:?}", other.cuid);
    }
    // the true redemption goes through: the vendor's draft has its partner
    net.settle_all().await;
    let state: String = vendor
        .db
        .query_one(
            "SELECT state FROM chips.tallies_v WHERE tally_uuid = $1",
            &[&t],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "P.draft");
}
