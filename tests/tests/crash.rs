//! Crash atomicity inside one site: PostgreSQL dies (immediate stop, or a backend killed with
//! SIGKILL, which makes the postmaster reset every backend) during a burst of payments and
//! during a clearing pass. After recovery every acknowledged payment is there, every chain and
//! balance audits clean, both halves of every tally agree, every lift is whole or absent, and no
//! one's net position moved but by their own payments. Each test runs its own cluster.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chips_tests::{connect, net_positions, Cluster, PrivateCluster, Site, User};
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::sync::Mutex;
use tokio_postgres::Client;
use uuid::Uuid;

/// Connects to `db` once the server accepts connections again (crash recovery runs first).
async fn reconnect(pg: &PrivateCluster, db: &str) -> Client {
    let t = Instant::now();
    loop {
        match connect(&format!("{} dbname={db}", pg.dsn())).await {
            Ok(c) => {
                if c.simple_query("SELECT 1").await.is_ok() {
                    return c;
                }
            }
            Err(_) if t.elapsed() < Duration::from_secs(120) => {}
            Err(e) => panic!("the server did not come back: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every audit of every half passes, and the two halves of every (local) tally mirror each
/// other and hold the same chain.
async fn assert_sound(db: &Client) {
    let bad: Vec<String> = db
        .query(
            "SELECT t.tally_uuid::text || ' ' || a.side || ' ' || a.check_name || ': ' || a.detail
             FROM (SELECT DISTINCT tally_uuid FROM chips.tallies) t, chips.tally_audit(t.tally_uuid) a
             WHERE NOT a.ok",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(bad.is_empty(), "audits failed: {bad:?}");
    let skew: i64 = db
        .query_one(
            "SELECT count(*) FROM (SELECT tally_uuid FROM chips.tallies WHERE status = 'open'
               GROUP BY tally_uuid
               HAVING count(*) <> 2 OR sum(net_good) <> 0 OR sum(net_pend) <> 0
                   OR min(chain_len) <> max(chain_len)
                   OR count(DISTINCT coalesce(chain_tip, digest)) <> 1) x",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(skew, 0, "tally halves disagree");
    let pend: i64 = db
        .query_one(
            "SELECT count(*) FROM chips.chits WHERE status = 'pend' AND lift_id IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(pend, 0, "a lift chit is left pending");
}

/// Every half's debt, summed (each tally counted twice).
async fn debt(db: &Client) -> i64 {
    db.query_one("SELECT sum(abs(net_good))::bigint FROM chips.tallies", &[])
        .await
        .unwrap()
        .get(0)
}

async fn users(s: &Site, n: usize) -> Vec<User> {
    let mut out = vec![];
    for i in 0..n {
        out.push(
            s.user(&format!("User {i}"), &format!("u{i}"))
                .await
                .unwrap(),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_during_a_burst_of_payments_loses_no_acknowledged_chit() {
    let pg = PrivateCluster::start("burst").unwrap();
    let s = Cluster::new(pg.dsn())
        .site("crash_burst", 65430)
        .await
        .unwrap();
    let people = users(&s, 5).await;
    let shop = &people[0];
    let mut tallies = vec![];
    for c in &people[1..] {
        tallies.push((c, shop.open_with(c, 100_000_000, &[]).await.unwrap()));
    }
    // eight sessions paying as fast as they can (two per client, same tally and different
    // ones); each remembers the chits the database acknowledged
    let acked = Arc::new(Mutex::new(Vec::<Uuid>::new()));
    let mut tasks = vec![];
    for (c, t) in tallies.iter().flat_map(|x| [*x, *x]) {
        let db = s.connect_as(&c.ent).await.unwrap();
        let key = s.user_key(&c.name);
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            for n in 1..=100_000i64 {
                let Ok(row) = db
                    .query_one("SELECT chips.chit_json($1, $2)", &[&t, &(n % 97 + 1)])
                    .await
                else {
                    return;
                };
                let doc: Value = row.get(0);
                let sig = key.sign_json(&doc).unwrap();
                if db
                    .execute("SELECT chips.chit_issue($1, $2)", &[&doc, &sig])
                    .await
                    .is_err()
                {
                    return; // the server is gone
                }
                let id = Uuid::parse_str(doc["uuid"].as_str().unwrap()).unwrap();
                acked.lock().await.push(id);
            }
        }));
    }
    let t = Instant::now();
    while acked.lock().await.len() < 200 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "payments are too slow"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pg.crash().unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    pg.run().unwrap();
    let db = reconnect(&pg, "crash_burst").await;
    let acked = acked.lock().await.clone();
    let found: i64 = db
        .query_one(
            "SELECT count(DISTINCT chit_uuid) FROM chips.chits WHERE chit_uuid = ANY ($1) AND status = 'good'",
            &[&acked],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        found as usize,
        acked.len(),
        "every payment the database acknowledged survived the crash"
    );
    eprintln!(
        "crash during a burst: {} payments acknowledged before the crash, all there after recovery",
        acked.len()
    );
    assert_sound(&db).await;
    // net positions are the sums of the users' own chits (the shop's is every client's debt)
    let own: i64 = db
        .query_one(
            "SELECT count(*) FROM chips.users u WHERE
               coalesce((SELECT sum(t.net_good) FROM chips.tallies t WHERE t.ent = u.ent), 0)
               <> coalesce((SELECT sum(c.value) FROM chips.chits c JOIN chips.tallies t ON t.id = c.tally_id
                            WHERE t.ent = u.ent AND c.status = 'good'), 0)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(own, 0);
    // and the site goes on
    let c = &people[1];
    let db_c = connect(&s.dsn).await.unwrap();
    db_c.batch_execute(&format!("SET ROLE \"{}\"", c.role))
        .await
        .unwrap();
    let doc: Value = db_c
        .query_one("SELECT chips.chit_json($1, 5)", &[&tallies[0].1])
        .await
        .unwrap()
        .get(0);
    let sig = s.user_key(&c.name).sign_json(&doc).unwrap();
    db_c.execute("SELECT chips.chit_issue($1, $2)", &[&doc, &sig])
        .await
        .unwrap();
    assert_sound(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_killed_during_a_clearing_pass_leaves_every_lift_whole_or_absent() {
    let pg = PrivateCluster::start("clearing").unwrap();
    let s = Cluster::new(pg.dsn())
        .site("crash_clearing", 65430)
        .await
        .unwrap();
    // 24 people, each buying from the next three around a ring, all in debt: many circles
    let people = users(&s, 24).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for i in 0..people.len() {
        for d in 1..=3 {
            let vendor = &people[(i + d) % people.len()];
            let t = vendor.open_with(&people[i], 1_000_000, &[]).await.unwrap();
            people[i]
                .pay(t, rng.gen_range(1_000..50_000), "")
                .await
                .unwrap();
        }
    }
    let admin = connect(&s.dsn).await.unwrap();
    let before = net_positions(&admin).await;
    let debt_before = debt(&admin).await;

    // a pass cut in pieces of at most 3 tallies (about a circle each), each committed as a lift
    // of its own, and the backend running the pass is killed after the first
    let runner = connect(&s.dsn).await.unwrap();
    let pid: i32 = runner
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let pass = tokio::spawn(async move {
        runner
            .batch_execute("CALL chips.clearing_run(piece => 3)")
            .await
    });
    let t = Instant::now();
    loop {
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM chips.lifts WHERE status = 'good'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if n >= 1 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "no lift committed");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let r = pass.await.unwrap();
    assert!(r.is_err(), "the pass was still running when it was killed");

    let db = reconnect(&pg, "crash_clearing").await;
    assert_sound(&db).await;
    // every lift that committed is whole: a good chit on both halves of each of its tallies
    let torn: i64 = db
        .query_one(
            "SELECT count(*) FROM chips.lifts l WHERE l.kind = 'local' AND
               (SELECT count(*) FROM chips.chits c WHERE c.lift_id = l.id AND c.status = 'good')
               <> CASE l.status WHEN 'good' THEN 2 * cardinality(l.tallies) ELSE 0 END",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(torn, 0, "a lift is torn");
    let (lifts, cleared): (i64, i64) = {
        let r = db
            .query_one(
                "SELECT count(*), coalesce(sum(units), 0)::bigint
                 FROM chips.lifts WHERE status = 'good'",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert!(lifts >= 1);
    eprintln!("crash during clearing: {lifts} lift(s) committed before the kill, all whole");
    assert_eq!(
        debt(&db).await,
        debt_before - 2 * cleared,
        "the debt fell by exactly what the committed lifts cleared (both halves)"
    );
    assert_eq!(
        net_positions(&db).await,
        before,
        "no one's net position moved"
    );

    // clearing goes on after recovery
    let after_crash = debt(&db).await;
    db.batch_execute("CALL chips.clearing_run()").await.unwrap();
    assert_sound(&db).await;
    assert_eq!(net_positions(&db).await, before);
    assert!(debt(&db).await <= after_crash);
}
