//! Extension upgrades, as a DBA runs them: a site on the oldest released version
//! (extension/released/), filled through the API (users, open tallies with chits, a clearing
//! lift), then `ALTER EXTENSION chips UPDATE`. The updated database must have exactly the schema
//! of a fresh install of this tree's version (functions, tables, indexes, triggers, views,
//! grants, row-level security: `pg_dump --schema-only --binary-upgrade`, which writes out an
//! extension's objects one by one), and its data must still audit clean. So a change to the
//! install SQL without the matching upgrade script fails here.

use chips_tests::{free_port, Cluster, Site};
use tokio_postgres::Client;

/// The oldest version whose install script is kept (extension/released/).
const OLDEST: &str = "0.1.0";

/// This tree's version (the extension's default_version is the workspace version).
const CURRENT: &str = env!("CARGO_PKG_VERSION");

/// The schema of database `db`, every object of the extension written out, without the object
/// ids and file numbers that differ between any two databases.
fn schema(cl: &Cluster, db: &str) -> Vec<String> {
    let pg_bin = std::env::var("PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
    let mut args: Vec<String> = vec![
        "--schema-only".into(),
        "--binary-upgrade".into(),
        "--no-comments".into(),
    ];
    for kv in cl.dsn.split_whitespace() {
        match kv.split_once('=') {
            Some(("host", v)) => args.extend(["-h".into(), v.into()]),
            Some(("port", v)) => args.extend(["-p".into(), v.into()]),
            Some(("user", v)) => args.extend(["-U".into(), v.into()]),
            _ => {}
        }
    }
    args.push(db.into());
    let out = std::process::Command::new(format!("{pg_bin}/pg_dump"))
        .args(&args)
        .output()
        .expect("pg_dump runs");
    assert!(
        out.status.success(),
        "pg_dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("pg_dump writes UTF-8")
        .lines()
        .filter(|l| {
            // object ids, transaction ids and the dump's one-time restrict key
            !l.contains("binary_upgrade_set_next_")
                && !l.contains("relfrozenxid")
                && !l.starts_with("WHERE oid = '")
                && !l.starts_with("\\restrict")
                && !l.starts_with("\\unrestrict")
                && !l.starts_with("-- Dumped")
                // sequence positions are data (the sequences are configuration tables)
                && !l.starts_with("SELECT pg_catalog.setval(")
        })
        .map(|l| {
            if l.contains("binary_upgrade_create_empty_extension") {
                // the version and the ids of its configuration tables: numbers only
                l.chars()
                    .map(|c| if c.is_ascii_digit() { 'N' } else { c })
                    .collect()
            } else {
                l.to_string()
            }
        })
        .collect()
}

/// The lines only in `a` and only in `b` (each with its line number), at most `n` of each.
fn differences(a: &[String], b: &[String], n: usize) -> (Vec<String>, Vec<String>) {
    let only = |x: &[String], y: &[String]| -> Vec<String> {
        let mut rest: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        for l in y {
            *rest.entry(l.as_str()).or_default() += 1;
        }
        x.iter()
            .enumerate()
            .filter(|(_, l)| match rest.get_mut(l.as_str()) {
                Some(k) if *k > 0 => {
                    *k -= 1;
                    false
                }
                _ => true,
            })
            .take(n)
            .map(|(i, l)| format!("{:>6}: {l}", i + 1))
            .collect()
    };
    (only(a, b), only(b, a))
}

async fn version(c: &Client) -> String {
    c.query_one(
        "SELECT extversion FROM pg_extension WHERE extname = 'chips'",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// Every user's events (user, number, kind, body) from `relation`, in order.
async fn feed(site: &Site, relation: &str) -> Vec<(String, i64, String, serde_json::Value)> {
    site.admin
        .query(
            &format!("SELECT ent, seq, kind, body FROM {relation} ORDER BY ent, seq"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

/// Every tally half with its balances and chain, in a stable order.
async fn ledger(site: &Site) -> Vec<(String, String, i64, i64, i32)> {
    site.admin
        .query(
            "SELECT tally_uuid::text, side, net_good, net_pend, chain_len
             FROM chips.tallies ORDER BY tally_uuid, side",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect()
}

#[tokio::test]
async fn a_site_updated_from_the_oldest_release_equals_a_fresh_install_and_keeps_its_data() {
    let cl = Cluster::from_env();
    assert_ne!(
        OLDEST, CURRENT,
        "bump the version when the install SQL changes"
    );
    let old = cl
        .site_at("t_upgrade_old", free_port(), Some(OLDEST))
        .await
        .unwrap();
    assert_eq!(version(&old.admin).await, OLDEST);

    // Filled through the API: a circle of three custodial users, payments, a lift.
    let ann = old.user("Ann", "ann").await.unwrap();
    let bob = old.user("Bob", "bob").await.unwrap();
    let cat = old.user("Cat", "cat").await.unwrap();
    let ab = ann.open_with(&bob, 1_000_000, &[]).await.unwrap();
    let bc = bob.open_with(&cat, 1_000_000, &[]).await.unwrap();
    let ca = cat.open_with(&ann, 1_000_000, &[]).await.unwrap();
    bob.pay(ab, 500, "bread").await.unwrap();
    cat.pay(bc, 400, "flour").await.unwrap();
    ann.pay(ca, 300, "rent").await.unwrap();
    let lifted: i64 = old
        .admin
        .query_one(
            "SELECT count(*) FROM chips.clear(execute => true) WHERE status = 'good'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(lifted, 1, "the circle is lifted before the update");
    let before = ledger(&old).await;
    let events_before = feed(&old, "chips.events").await;
    assert!(
        events_before.len() >= 9,
        "tallies, payments and the lift made events"
    );

    old.admin
        .batch_execute("ALTER EXTENSION chips UPDATE")
        .await
        .unwrap();
    assert_eq!(version(&old.admin).await, CURRENT);

    let fresh = cl.fresh_db("t_upgrade_fresh").await.unwrap();
    assert_eq!(version(&fresh).await, CURRENT);
    let (updated, installed) = (schema(&cl, "t_upgrade_old"), schema(&cl, "t_upgrade_fresh"));
    let (only_updated, only_installed) = differences(&updated, &installed, 40);
    assert!(
        only_updated.is_empty() && only_installed.is_empty(),
        "{OLDEST} updated to {CURRENT} differs from a fresh {CURRENT} install: write the change into \
         extension/sql/chips--{OLDEST}--{CURRENT}.sql (or the latest upgrade script)\n\
         only after the update:\n{}\nonly in a fresh install:\n{}",
        only_updated.join("\n"),
        only_installed.join("\n")
    );

    // The data is as it was, audits clean, and the updated site goes on working.
    assert_eq!(ledger(&old).await, before);
    assert_eq!(
        feed(&old, "chips.events_v").await,
        events_before,
        "every user's events, numbers and bodies, as before the update"
    );
    for t in [ab, bc, ca] {
        assert_eq!(old.audit_failures(t).await.unwrap(), Vec::<String>::new());
    }
    bob.pay(ab, 25, "after the update").await.unwrap();
    assert_eq!(ann.balance(ab).await.unwrap().0, 500 - 300 + 25);
    // its events follow the old ones, with the chit's body read from the chit
    let after = feed(&old, "chips.events_v").await;
    let new: Vec<_> = after
        .iter()
        .filter(|e| !events_before.contains(e))
        .collect();
    assert_eq!(
        new.len(),
        2,
        "one event for each of the payment's users: {new:?}"
    );
    for (ent, seq, kind, body) in new {
        let last = events_before
            .iter()
            .filter(|e| &e.0 == ent)
            .map(|e| e.1)
            .max();
        assert_eq!(
            Some(*seq - 1),
            last,
            "{ent}'s numbers go on from the old ones"
        );
        assert_eq!(kind, "chit");
        assert_eq!(body["units"], 25);
        assert_eq!(body["memo"], "after the update");
        assert_eq!(body["status"], "good");
    }
    let claimed: i64 = old
        .admin
        .query_one(
            "SELECT count(*) FROM chips.outbox_claim(10, '1 second', NULL, ARRAY['nobody'])",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(claimed, 0, "nothing to send: all three users are local");
    cl.drop_db("t_upgrade_old").await.unwrap();
    cl.drop_db("t_upgrade_fresh").await.unwrap();
}
