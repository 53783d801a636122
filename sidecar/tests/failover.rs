//! A site as a high-availability formation (scripts/formation.sh: pg_auto_failover's monitor, a
//! primary and a synchronous secondary, on loopback) loses its primary's machine (its keeper
//! and postmaster SIGKILLed) while four sessions pay a person at another site and chipsd
//! carries the payments there. The formation promotes the secondary; the sessions and chipsd,
//! connected with a multi-host connection string (`target_session_attrs=read-write`), reconnect
//! and carry on. Every payment acknowledged to its session before or after the kill is on the
//! new primary and, relayed, at the other site; the tally's halves agree and audit clean and
//! chipsd check passes across the two sites; the
//! time from the kill to the first payment committed after it is printed. Then the old primary
//! rejoins as the secondary and holds every acknowledged payment too.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chips_tests::{connect, free_port, Cluster, Sidecar};
use serde_json::json;
use uuid::Uuid;

const CHIPSD: &str = env!("CARGO_BIN_EXE_chipsd");

/// The formation, stopped (and its directory removed) when dropped.
struct Formation {
    dir: std::path::PathBuf,
    dsn: String,
    ports: [u16; 3],
}

/// scripts/formation.sh with `args`.
fn formation_run(args: &[&str]) -> std::process::Output {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/formation.sh");
    Command::new("bash")
        .arg(script)
        .args(args)
        .output()
        .unwrap()
}

/// scripts/formation.sh with `args`, which must succeed: what it printed.
fn formation(args: &[&str]) -> String {
    let out = formation_run(args);
    assert!(
        out.status.success(),
        "formation.sh {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Formation {
    fn start() -> Formation {
        // three free ports in a row: the monitor's and the two nodes'
        let base = (0..200u16)
            .map(|i| 41000 + (std::process::id() as u16 % 50) * 300 + i * 3)
            .find(|b| (0..3).all(|k| std::net::TcpListener::bind(("127.0.0.1", b + k)).is_ok()))
            .expect("three free ports");
        let dir = std::env::temp_dir().join(format!("chips-formation-{}", std::process::id()));
        let d = dir.display().to_string();
        let dsn = formation(&["start", &d, &base.to_string()]);
        let dsn = dsn.lines().last().unwrap().to_string();
        Formation {
            dir,
            dsn,
            ports: [base, base + 1, base + 2],
        }
    }

    fn run(&self, cmd: &str, node: &str) -> String {
        formation(&[cmd, &self.dir.display().to_string(), node])
    }
}

impl Drop for Formation {
    fn drop(&mut self) {
        formation_run(&["stop", &self.dir.display().to_string()]);
    }
}

async fn eventually<F, Fut>(what: &str, secs: u64, f: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    chips_tests::eventually(
        what,
        Duration::from_secs(secs),
        Duration::from_millis(100),
        f,
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_that_loses_its_primary_loses_no_acknowledged_payment() {
    let fo = Formation::start();
    let db = "chips_fo_a";
    let site_dsn = format!("{} dbname={db}", fo.dsn);
    // site a in the formation (set up on the primary, node1), site b on the test cluster
    let (pa, pb) = (free_port(), free_port());
    let a = Cluster::new(format!("host=127.0.0.1 port={} user=postgres", fo.ports[1]))
        .site(db, pa)
        .await
        .unwrap();
    let b = Cluster::from_env().site("t_fo_b", pb).await.unwrap();
    let ann = a.custodial_user("Ann Baker", "ann").await.unwrap();
    let ann_role = a.role_of(&ann).await.unwrap();
    let eve = b.user("Eve Grocer", "eve").await.unwrap();

    let dir = chips_tests::scratch_dir("failover");
    let key = a.write_agent_key(&dir).unwrap();
    let flags = [
        "--poll-ms",
        "100",
        "--sync-secs",
        "2",
        "--reply-timeout-ms",
        "2000",
    ];
    let mut args: Vec<String> = vec![
        "run".into(),
        "--db".into(),
        site_dsn.clone(),
        "--listen".into(),
        format!("127.0.0.1:{pa}"),
        "--key".into(),
        key.display().to_string(),
    ];
    args.extend(flags.iter().map(|s| s.to_string()));
    let _sa = Sidecar::spawn(std::path::Path::new(CHIPSD), args, pa, "warn").unwrap();
    let _sb = Sidecar::start(std::path::Path::new(CHIPSD), &b, pb, &dir, &flags, "warn").unwrap();

    // a tally across the sites: Eve the vendor, Ann her client
    let t = eve
        .draft("stock", json!({"limit": 1_000_000}), json!({}), "groceries")
        .await
        .unwrap();
    let ticket = eve.ticket(t, false).await.unwrap();
    let ann_db = a.connect_as(&ann).await.unwrap();
    ann_db
        .execute("SELECT chips.ticket_redeem($1)", &[&ticket])
        .await
        .unwrap();
    eventually("the ticket reaches Eve", 30, || async {
        eve.state(t).await.unwrap().as_deref() == Some("P.draft")
    })
    .await;
    eve.offer(t).await.unwrap();
    eventually("the offer reaches Ann", 30, || async {
        ann_db
            .query_one(
                "SELECT state FROM chips.tallies_v WHERE tally_uuid = $1",
                &[&t],
            )
            .await
            .map(|r| r.get::<_, String>(0) == "P.offer")
            .unwrap_or(false)
    })
    .await;
    ann_db
        .execute("SELECT chips.tally_accept($1)", &[&t])
        .await
        .unwrap();
    eventually("the tally opens at Eve", 30, || async {
        eve.state(t).await.unwrap().as_deref() == Some("open")
    })
    .await;

    // four sessions pay Eve 1 unit at a time; each payment acknowledged is recorded
    let acked: Arc<Mutex<Vec<(Uuid, Instant)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut payers = Vec::new();
    for _ in 0..4 {
        let (acked, stop, dsn, role) = (
            acked.clone(),
            stop.clone(),
            site_dsn.clone(),
            ann_role.clone(),
        );
        payers.push(tokio::spawn(async move {
            let mut failed = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let Ok(c) = connect(&dsn).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                if c.batch_execute(&format!("SET ROLE \"{role}\""))
                    .await
                    .is_err()
                {
                    continue;
                }
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    match c
                        .query_one("SELECT chips.pay($1, 1, 'through a failover')", &[&t])
                        .await
                    {
                        Ok(r) => acked.lock().unwrap().push((r.get(0), Instant::now())),
                        Err(_) => {
                            failed += 1;
                            break; // the primary went away: connect again (to the new one)
                        }
                    }
                }
            }
            failed
        }));
    }
    // traffic before the kill and after the first commit on the new primary: 3 s each here
    // (CHIPS_FAILOVER_SECS for a longer run, docs/reliability.md)
    let secs: u64 = std::env::var("CHIPS_FAILOVER_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let before_kill = acked.lock().unwrap().len();
    assert!(before_kill > 0, "payments flow before the kill");
    assert_eq!(fo.run("primary", ""), "node1");
    fo.run("kill", "node1");
    // (from here on the old primary is gone: a payment acknowledged now committed elsewhere)
    let killed = Instant::now();
    eventually("the secondary is promoted", 60, || async {
        // (no primary at all while the formation decides: the command fails then)
        let out = formation_run(&["primary", &fo.dir.display().to_string()]);
        String::from_utf8_lossy(&out.stdout).trim() == "node2"
    })
    .await;
    eventually("payments commit again", 60, || async {
        acked.lock().unwrap().iter().any(|(_, at)| *at > killed)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut failed = 0;
    for p in payers {
        failed += p.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let first_after = acked
        .iter()
        .filter(|(_, at)| *at > killed)
        .map(|(_, at)| at.duration_since(killed))
        .min()
        .unwrap();
    println!(
        "failover: {} payments acknowledged ({before_kill} before the kill), {failed} calls failed at the kill; \
         first payment committed {:.1} ms after the primary's machine was lost",
        acked.len(),
        first_after.as_secs_f64() * 1000.0
    );

    // every acknowledged payment is on the new primary, and at Eve's site once chipsd relayed it
    let ids: Vec<Uuid> = acked.iter().map(|(u, _)| *u).collect();
    let present = |dsn: String, ids: Vec<Uuid>| async move {
        let c = connect(&dsn).await.unwrap();
        c.query_one(
            "SELECT count(DISTINCT chit_uuid) FROM chips.chits WHERE chit_uuid = ANY ($1) AND status = 'good'",
            &[&ids],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
    };
    assert_eq!(
        present(site_dsn.clone(), ids.clone()).await,
        ids.len() as i64,
        "an acknowledged payment was lost"
    );
    eventually("every payment reaches Eve's site", 90, || async {
        present(b.dsn.clone(), ids.clone()).await == ids.len() as i64
    })
    .await;
    // the tally's halves agree (balance, chain) and audit clean, at both sites
    eventually("the halves agree", 60, || async {
        let c = connect(&site_dsn).await.unwrap();
        let at_a: (i64, i32, Vec<u8>) = c
            .query_one(
                "SELECT net_good, chain_len, chain_tip FROM chips.tallies WHERE tally_uuid = $1",
                &[&t],
            )
            .await
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .unwrap();
        let at_b: (i64, i32, Vec<u8>) = b
            .admin
            .query_one(
                "SELECT net_good, chain_len, chain_tip FROM chips.tallies WHERE tally_uuid = $1",
                &[&t],
            )
            .await
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .unwrap();
        at_a.0 == -at_b.0 && at_a.1 == at_b.1 && at_a.2 == at_b.2
    })
    .await;
    let c = connect(&site_dsn).await.unwrap();
    for (site, client) in [("a", &c), ("b", &b.admin)] {
        let bad: i64 = client
            .query_one(
                "SELECT count(*) FROM chips.tally_audit($1) WHERE NOT ok",
                &[&t],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(bad, 0, "tally audit at site {site}");
    }
    let balance: i64 = b
        .admin
        .query_one(
            "SELECT net_good FROM chips.tallies WHERE tally_uuid = $1",
            &[&t],
        )
        .await
        .unwrap()
        .get(0);
    // every acknowledged payment, and no more than one a failed call: a call whose connection
    // dropped may have committed before its answer was lost (in doubt, as with any database)
    let in_doubt = balance - ids.len() as i64;
    assert!(
        (0..=i64::from(failed)).contains(&in_doubt),
        "Eve is owed {balance} for {} acknowledged payments and {failed} failed calls",
        ids.len()
    );

    // and chipsd check, the invariant checker, passes across the two sites
    let report = chipsd::check::check(&[site_dsn.clone(), b.dsn.clone()])
        .await
        .unwrap();
    assert!(
        report.problems.is_empty(),
        "chipsd check: {}",
        report.text()
    );

    // the old primary rejoins as the secondary, with every acknowledged payment
    fo.run("rejoin", "node1");
    let old = format!(
        "host=127.0.0.1 port={} user=postgres dbname={db}",
        fo.ports[1]
    );
    eventually("the old primary has every payment", 60, || async {
        match connect(&old).await {
            Ok(c) => c
                .query_one(
                    "SELECT count(DISTINCT chit_uuid) FROM chips.chits WHERE chit_uuid = ANY ($1)",
                    &[&ids],
                )
                .await
                .map(|r| r.get::<_, i64>(0) == ids.len() as i64)
                .unwrap_or(false),
            Err(_) => false,
        }
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}
