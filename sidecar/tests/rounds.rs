//! Clearing rounds over real sidecars while their coordinator fails: three sites, each its own
//! database and chipsd on loopback, the coordinator (site 0, a member too) on a PostgreSQL
//! cluster of its own. At each phase of a round (collecting graphs, preparing, decided) the
//! coordinator's chipsd is SIGKILLed, or its PostgreSQL crashed, the moment the coordinator's
//! rows show the phase, and restarted a second later. Every round must end as its coordinator
//! decided at every member, clear exactly the optimum (good) or nothing (void), leave nothing
//! pending or undelivered, and both halves of every tally must agree.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chips_tests::load::{load, Obl};
use chips_tests::{connect, eventually, free_port, Cluster, PrivateCluster, Sidecar, Site};
use tokio_postgres::Client;
use uuid::Uuid;

const CHIPSD: &str = env!("CARGO_BIN_EXE_chipsd");
const CIRCLES: u32 = 40;

/// A fresh connection (the last may have died with its server).
async fn db(s: &Site) -> Client {
    let t = Instant::now();
    loop {
        match connect(&s.dsn).await {
            Ok(c) => return c,
            Err(e) if t.elapsed() > Duration::from_secs(60) => panic!("{}: {e}", s.db),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// What every debtor owes (stock halves), over all sites.
async fn debt(sites: &[Site]) -> i64 {
    let mut d = 0;
    for s in sites {
        d += db(s)
            .await
            .query_one(
                "SELECT coalesce(sum(abs(net_good)), 0)::bigint FROM chips.tallies WHERE side = 'stock'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0);
    }
    d
}

/// The round's status at its coordinator.
async fn coordinated(c: &Client, r: Uuid) -> String {
    c.query_one(
        "SELECT status FROM chips.rounds WHERE round_uuid = $1",
        &[&r],
    )
    .await
    .unwrap()
    .get(0)
}

/// The round at the coordinator, and its part at each member (null: it has none).
async fn round_state(sites: &[Site], r: Uuid) -> (String, Vec<Option<String>>) {
    let coord = coordinated(&db(&sites[0]).await, r).await;
    let mut parts = Vec::new();
    for s in sites {
        parts.push(
            db(s)
                .await
                .query_opt("SELECT status FROM chips.lifts WHERE lift_uuid = $1", &[&r])
                .await
                .unwrap()
                .map(|x| x.get(0)),
        );
    }
    (coord, parts)
}

/// Nothing undelivered, no pending chit, the round decided everywhere.
async fn quiet(sites: &[Site], r: Uuid) -> bool {
    let (coord, parts) = round_state(sites, r).await;
    if !matches!(coord.as_str(), "good" | "void")
        || parts
            .iter()
            .any(|p| !matches!(p.as_deref(), Some("good" | "void")))
    {
        return false;
    }
    for s in sites {
        let busy: i64 = db(s)
            .await
            .query_one(
                "SELECT (SELECT count(*) FROM chips.outbox WHERE delivered IS NULL)
                      + (SELECT count(*) FROM chips.chits WHERE status = 'pend')",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if busy > 0 {
            return false;
        }
    }
    true
}

/// Tallies whose two halves differ in balance, chain length or chain tip.
async fn disagreeing(sites: &[Site]) -> Vec<Uuid> {
    type Half = (i64, i32, Option<Vec<u8>>);
    let mut halves: HashMap<Uuid, Vec<Half>> = HashMap::new();
    for s in sites {
        for r in db(s)
            .await
            .query(
                "SELECT tally_uuid, net_good, chain_len, chain_tip FROM chips.tallies",
                &[],
            )
            .await
            .unwrap()
        {
            halves
                .entry(r.get(0))
                .or_default()
                .push((r.get(1), r.get(2), r.get(3)));
        }
    }
    halves
        .into_iter()
        .filter(|(_, h)| h.len() != 2 || h[0].0 != -h[1].0 || h[0].1 != h[1].1 || h[0].2 != h[1].2)
        .map(|(t, _)| t)
        .collect()
}

#[tokio::test]
async fn a_round_ends_alike_everywhere_whatever_happens_to_its_coordinator() {
    let pg = PrivateCluster::start("roundfaults").unwrap();
    let (own, shared) = (Cluster::new(pg.dsn()), Cluster::from_env());
    let dir = chips_tests::scratch_dir("round-faults");
    let flags = ["--poll-ms", "100", "--clearing-secs", "1"];
    let mut outcomes = Vec::new();
    for (i, (phase, crash)) in [
        ("collect", false),
        ("prepare", false),
        ("decided", false),
        ("collect", true),
        ("prepare", true),
        ("decided", true),
    ]
    .into_iter()
    .enumerate()
    {
        let what = format!(
            "{} in {phase}",
            if crash {
                "its PostgreSQL crashed"
            } else {
                "its chipsd SIGKILLed"
            }
        );
        let ports = [free_port(), free_port(), free_port()];
        let sites = vec![
            own.site(&format!("t_rf{i}_0"), ports[0]).await.unwrap(),
            shared.site(&format!("t_rf{i}_1"), ports[1]).await.unwrap(),
            shared.site(&format!("t_rf{i}_2"), ports[2]).await.unwrap(),
        ];
        // circles through the three sites: 100+j (site 0) owes 200+j (site 1), who owes 300+j
        // (site 2), who owes 100+j; each clears its smallest debt three times over
        let mut obls = Vec::new();
        let mut optimum = 0;
        for j in 0..CIRCLES {
            let a = [1_000 + i64::from(j), 700 + 3 * i64::from(j), 900];
            for (k, amount) in a.into_iter().enumerate() {
                let k = k as u32;
                obls.push(Obl {
                    debtor: 100 * (k + 1) + j,
                    creditor: 100 * ((k + 1) % 3 + 1) + j,
                    amount,
                });
            }
            optimum += 3 * a.iter().min().unwrap();
        }
        load(&sites, &ports, &obls, |f| (f / 100 - 1) as usize)
            .await
            .unwrap();
        let mut cars: Vec<Sidecar> = sites
            .iter()
            .zip(ports)
            .map(|(s, p)| {
                Sidecar::start(std::path::Path::new(CHIPSD), s, p, &dir, &flags, "error").unwrap()
            })
            .collect();
        let coordinator = format!("{}@127.0.0.1:{}", sites[0].agent_id(), ports[0]);
        db(&sites[0])
            .await
            .execute(
                // (a third of the life to collect graphs: 30 s outlasts the backoff of a member's
                // sender that found the coordinator's chipsd gone for a second, which with 30 s
                // of life, 10 s to collect, sometimes left members out of the round)
                "SELECT chips.round_configure(coordinate => true, every => '1 day', life => '90 seconds')",
                &[],
            )
            .await
            .unwrap();
        for s in &sites {
            db(s)
                .await
                .execute(
                    "SELECT chips.round_configure(coordinator => $1)",
                    &[&coordinator],
                )
                .await
                .unwrap();
        }
        let c0 = db(&sites[0]).await;
        eventually(
            "every site joins",
            Duration::from_secs(30),
            Duration::from_millis(50),
            || async {
                c0.query_one("SELECT count(*) FROM chips.round_members", &[])
                    .await
                    .is_ok_and(|r| r.get::<_, i64>(0) == 3)
            },
        )
        .await
        .unwrap();
        let before = debt(&sites).await;
        let r: Uuid = c0
            .query_one("SELECT chips.round_open()", &[])
            .await
            .unwrap()
            .get(0);
        // the moment the coordinator's rows show the phase
        let want: &[&str] = match phase {
            "collect" => &["collect"],
            "prepare" => &["prepare"],
            _ => &["good", "void"],
        };
        let t = Instant::now();
        let seen = loop {
            let st = coordinated(&c0, r).await;
            if want.contains(&st.as_str()) || t.elapsed() > Duration::from_secs(30) {
                break st;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        assert!(
            want.contains(&seen.as_str()),
            "{what}: the round was {seen}"
        );
        drop(c0);
        if crash {
            pg.crash().unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
            pg.run().unwrap();
        } else {
            cars[0].kill9();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        // a chipsd whose database went away may have exited: start it again
        if cars[0].child.try_wait().unwrap().is_some() {
            cars[0].restart().unwrap();
        }
        eventually(
            &format!("the round ends everywhere ({what})"),
            Duration::from_secs(150),
            Duration::from_millis(200),
            || quiet(&sites, r),
        )
        .await
        .unwrap();
        let (coord, parts) = round_state(&sites, r).await;
        if !parts.iter().all(|p| p.as_deref() == Some(coord.as_str())) {
            let mut why = Vec::new();
            for s in &sites {
                why.push(
                    db(s)
                        .await
                        .query_opt(
                            "SELECT l.attempt, l.reason, x.ready, x.prepared, x.work
                             FROM chips.lifts l JOIN chips.round_state x ON x.lift_id = l.id
                             WHERE l.lift_uuid = $1",
                            &[&r],
                        )
                        .await
                        .unwrap()
                        .map(|x| {
                            format!(
                                "attempt {:?} reason {:?} ready {:?} prepared {:?} work {:?}",
                                x.get::<_, Option<i32>>(0),
                                x.get::<_, Option<String>>(1),
                                x.get::<_, Option<i32>>(2),
                                x.get::<_, Option<i32>>(3),
                                x.get::<_, Option<String>>(4)
                            )
                        }),
                );
            }
            panic!("{what}: the coordinator decided {coord}, the members {parts:?}: {why:?}");
        }
        let cleared = before - debt(&sites).await;
        assert_eq!(
            cleared,
            if coord == "good" { optimum } else { 0 },
            "{what}: the round ended {coord}"
        );
        assert_eq!(
            disagreeing(&sites).await,
            Vec::<Uuid>::new(),
            "{what}: halves differ"
        );
        outcomes.push(format!("{what}: {coord}"));
        for c in &mut cars {
            c.stop(Duration::from_secs(5));
        }
        for (s, cl) in sites.iter().zip([&own, &shared, &shared]) {
            cl.drop_db(&s.db).await.unwrap();
        }
    }
    println!("{}", outcomes.join("\n"));
    // the coordinator's chipsd or database failing while it collects or prepares need not void
    // a round: once they are back the round goes on
    assert!(
        outcomes.iter().filter(|o| o.ends_with("good")).count() >= 1,
        "{outcomes:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
