//! pg_dump and pg_restore keep every tally (and the site keeps working afterwards).

use std::process::Command;

use chips_tests::{connect, pg_tool, relay_all, Cluster};
use serde_json::json;

async fn snapshot(c: &tokio_postgres::Client, q: &str) -> Vec<String> {
    c.query(q, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

const TALLIES: &str = "SELECT row_to_json(t)::text FROM (SELECT tally_uuid, ent, side, status, revision, \
     chips.canonical_json(chips._tally_doc(x)) AS doc, hold_sig, part_sig, encode(digest, 'hex') AS digest \
     FROM chips.tallies x ORDER BY id) t";

#[tokio::test]
async fn dump_and_restore_keep_tallies() {
    let cl = Cluster::from_env();
    let a = cl.site("t_dump", 65471).await.unwrap();
    let b = cl.site("t_dump_peer", 65472).await.unwrap();
    let ann = a.user("Ann", "ann").await.unwrap();
    let bob = a.user("Bob", "bob").await.unwrap();
    let eve = b.user("Eve", "eve").await.unwrap();
    // An open local tally, a draft with a live ticket, an offer, and a cross-site open tally.
    let open = ann
        .draft("stock", json!({"limit": 5}), json!({}), "open one")
        .await
        .unwrap();
    bob.redeem(&ann.ticket(open, false).await.unwrap())
        .await
        .unwrap();
    ann.offer(open).await.unwrap();
    bob.accept(open).await.unwrap();
    let draft = ann
        .draft("foil", json!({}), json!({}), "waiting")
        .await
        .unwrap();
    let ticket = ann.ticket(draft, true).await.unwrap();
    let offered = bob.draft("stock", json!({}), json!({}), "").await.unwrap();
    ann.redeem(&bob.ticket(offered, false).await.unwrap())
        .await
        .unwrap();
    bob.offer(offered).await.unwrap();
    let cross = ann
        .draft("stock", json!({}), json!({}), "cross")
        .await
        .unwrap();
    eve.redeem(&ann.ticket(cross, false).await.unwrap())
        .await
        .unwrap();
    relay_all(&[&a, &b]).await.unwrap();
    ann.offer(cross).await.unwrap();
    relay_all(&[&a, &b]).await.unwrap();
    eve.accept(cross).await.unwrap();
    relay_all(&[&a, &b]).await.unwrap();

    let before = snapshot(&a.admin, TALLIES).await;
    assert_eq!(before.len(), 6);

    let dir = std::env::temp_dir().join(format!("chips-dump-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("site.dump");
    let base: Vec<String> = cl.dsn.split_whitespace().map(String::from).collect();
    let arg = |k: &str| {
        base.iter()
            .find_map(|p| p.strip_prefix(&format!("{k}=")))
            .unwrap()
            .to_string()
    };
    let (host, port, user) = (arg("host"), arg("port"), arg("user"));
    let st = Command::new(pg_tool("pg_dump"))
        .args(["-h", &host, "-p", &port, "-U", &user, "-Fc", "-f"])
        .arg(&file)
        .arg("t_dump")
        .status()
        .unwrap();
    assert!(st.success(), "pg_dump failed");

    cl.drop_db("t_dump_restored").await.unwrap();
    let admin = connect(&cl.db_dsn("postgres")).await.unwrap();
    admin
        .batch_execute("CREATE DATABASE t_dump_restored")
        .await
        .unwrap();
    let out = Command::new(pg_tool("pg_restore"))
        .args([
            "-h",
            &host,
            "-p",
            &port,
            "-U",
            &user,
            "--exit-on-error",
            "-d",
            "t_dump_restored",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_restore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&dir).ok();

    let r = connect(&cl.db_dsn("t_dump_restored")).await.unwrap();
    assert_eq!(snapshot(&r, TALLIES).await, before);
    for q in [
        "SELECT count(*)::text FROM chips.users",
        "SELECT count(*)::text FROM chips.tickets",
        "SELECT count(*)::text FROM chips.contracts",
        "SELECT count(*)::text FROM chips.agents",
        "SELECT count(*)::text FROM chips.outbox",
        // each user's event stream, as it was: no event made twice by the reload
        "SELECT ent || ':' || seq || ':' || kind FROM chips.events ORDER BY ent, seq",
        "SELECT ent || ':' || seq FROM chips.event_heads ORDER BY ent",
    ] {
        assert_eq!(snapshot(&r, q).await, snapshot(&a.admin, q).await, "{q}");
    }

    // The restored site works: the reusable ticket still opens tallies, and new users get new ids.
    let cat_ent: String = r
        .query_one(
            "SELECT chips.user_create('Cat', pubkey => $1)",
            &[&chips_core::sign::KeyPair::from_phrase("cat").public_b64()],
        )
        .await
        .unwrap()
        .get(0);
    let before_ents: Vec<String> = snapshot(&a.admin, "SELECT ent FROM chips.users").await;
    assert!(
        !before_ents.contains(&cat_ent),
        "sequences were restored: {cat_ent} is new"
    );
    let role: String = r
        .query_one(
            "SELECT username::text FROM chips.users WHERE ent = $1",
            &[&cat_ent],
        )
        .await
        .unwrap()
        .get(0);
    r.batch_execute(&format!("SET ROLE \"{role}\""))
        .await
        .unwrap();
    let t: Option<uuid::Uuid> = r
        .query_one("SELECT chips.ticket_redeem($1)", &[&ticket])
        .await
        .unwrap()
        .get(0);
    assert!(t.is_some());
    cl.drop_db("t_dump_restored").await.unwrap();
}
