//! Distributed lifts on loopback: four sites in a ring, each with its own database and chipsd.
//! Latency (p50, p99) of a payment to a CHIP address across 2 sites (one tally between them) and
//! across 4 sites (three intermediaries' sites), from the payer's call until the origin has
//! decided good, against a baseline measured in the same run: one chit across one tally (commit
//! at the payer to the chit at the payee). Then, on four other sites in a diamond (the payer's,
//! two intermediaries' and the payee's), a payment one route carries against one split over
//! both routes. Then lifts per second with concurrent payers.
//!
//! ```text
//! bash scripts/bench-lifts.sh
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chips_core::sign::KeyPair;
use chips_tests::ring::{chad, pay_address_as, Net};
use chips_tests::User;
use chips_tests::{free_port, percentile, until, Sidecar};
use serde_json::Value;
use tokio_postgres::Client;

/// Pays `to` `units` and waits for the origin's decision: (milliseconds, "good" or "void", the
/// lift).
async fn pay_once(
    db: &Client,
    admin: &Client,
    key: &KeyPair,
    to: &Value,
    units: i64,
) -> (f64, String, uuid::Uuid) {
    let t = Instant::now();
    let lift = pay_address_as(db, key, to, units).await.unwrap();
    loop {
        let s: String = admin
            .query_one(
                "SELECT status FROM chips.lifts WHERE lift_uuid = $1 AND role = 'origin'",
                &[&lift],
            )
            .await
            .unwrap()
            .get(0);
        if s == "good" || s == "void" {
            return (t.elapsed().as_secs_f64() * 1e3, s, lift);
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "lift {lift} undecided after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let dsn = args
        .next()
        .expect("usage: bench_lifts DSN CHIPSD [payments]");
    let chipsd = args
        .next()
        .expect("usage: bench_lifts DSN CHIPSD [payments]");
    let n: usize = args.next().map(|s| s.parse().unwrap()).unwrap_or(100);
    std::env::set_var("CHIPS_TEST_DSN", &dsn);
    let ports = [free_port(), free_port(), free_port(), free_port()];
    let net = Net::build("bench", 1_000_000, None, ports).await;
    let dir = chips_tests::scratch_dir("bench-lifts");
    let mut cars = sidecars(&net, &ports, &chipsd, &dir).await;

    // baseline: one chit over the tally from site 0 to site 1
    let (a, b, t) = (&net.users[0][3], &net.users[1][0], net.tallies[0][3]);
    let mut base = Vec::new();
    for _ in 0..n {
        let start = Instant::now();
        let chit = a.pay(t, 1, "").await.unwrap();
        until(|| async { b.chit_state(t, chit).await.unwrap().is_some() }).await;
        base.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let admin = &net.sites[0].admin;
    let cases = [
        (
            "2 sites",
            &net.users[0][3],
            chad(&net.sites[1], &net.users[1][0]),
        ),
        (
            "4 sites",
            &net.users[0][0],
            chad(&net.sites[3], &net.users[3][3]),
        ),
    ];
    let (b50, b99) = (percentile(&mut base, 0.5), percentile(&mut base, 0.99));
    println!(
        "baseline (one chit, one tally, 2 sites): p50 {b50:.2} ms  p99 {b99:.2} ms  ({n} runs)"
    );
    for (name, payer, to) in &cases {
        let mut runs = Vec::new();
        for _ in 0..=n {
            let (ms, status, _) = pay_once(&payer.db, admin, &payer.key, to, 1).await;
            assert_eq!(status, "good", "a payment across {name} was voided");
            runs.push(ms);
        }
        let cold = runs.remove(0);
        let (p50, p99) = (percentile(&mut runs, 0.5), percentile(&mut runs, 0.99));
        println!(
            "payment across {name}: p50 {p50:.2} ms  p99 {p99:.2} ms  (first, with route discovery: {cold:.2} ms)  ratio to baseline p50 {:.2}",
            p50 / b50
        );
    }
    split_vs_single(&chipsd, &dir, n).await;
    // throughput: concurrent payers on site 0, each paying site 3's u3 one at a time; only
    // good lifts count, voided ones are reported
    for clients in [1usize, 4] {
        let (good, void) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let secs = 5.0;
        let start = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..clients {
            let (good, void) = (good.clone(), void.clone());
            let to = chad(&net.sites[3], &net.users[3][3]);
            let u = &net.users[0][c % 4];
            let db = net.sites[0].connect_as(&u.ent).await.unwrap();
            let admin = chips_tests::connect(&net.sites[0].dsn).await.unwrap();
            let key = net.sites[0].user_key(&u.name);
            tasks.push(tokio::spawn(async move {
                while start.elapsed().as_secs_f64() < secs {
                    let (_, status, _) = pay_once(&db, &admin, &key, &to, 1).await;
                    let n = if status == "good" { &good } else { &void };
                    n.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let elapsed = start.elapsed().as_secs_f64();
        println!(
            "4-site lifts per second, {clients} concurrent payer(s): {:.1} good ({} voided in {elapsed:.1} s)",
            good.load(Ordering::Relaxed) as f64 / elapsed,
            void.load(Ordering::Relaxed)
        );
    }
    for c in &mut cars {
        c.stop(Duration::from_secs(5));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The lift settings of a benchmark (a 30 s life, 2 s less per site) at every site of `net`,
/// and a chipsd for each, on `ports`.
async fn sidecars(net: &Net, ports: &[u16], chipsd: &str, dir: &std::path::Path) -> Vec<Sidecar> {
    for s in &net.sites {
        s.admin
            .execute(
                "SELECT chips.lift_configure(life => '30 seconds', hop_step => '2 seconds')",
                &[],
            )
            .await
            .unwrap();
    }
    net.sites
        .iter()
        .zip(ports)
        .map(|(s, &p)| {
            Sidecar::start(std::path::Path::new(chipsd), s, p, dir, &[], "error").unwrap()
        })
        .collect()
}

/// Four sites in a diamond (P pays Q through A or through B), each way offering 1,000 afresh
/// before every payment: 500 goes over one way, 1,500 only split over both. Latency of each, in
/// turns, from the payer's call until the origin has decided good.
async fn split_vs_single(chipsd: &str, dir: &std::path::Path, n: usize) {
    let ports = [free_port(), free_port(), free_port(), free_port()];
    let net = Net::diamond("bench", 1000, 1000, ports).await;
    let mut cars = sidecars(&net, &ports, chipsd, dir).await;
    let (p, q) = (&net.users[0][0], &net.users[3][0]);
    let to = chad(&net.sites[3], q);
    let admin = &net.sites[0].admin;
    // (vendor's site, vendor, tally, the site holding the paying half)
    let ways: [(usize, &User, uuid::Uuid, usize); 4] = [
        (1, &net.users[1][0], net.tallies[0][0], 0),
        (2, &net.users[2][0], net.tallies[0][1], 0),
        (3, q, net.tallies[1][0], 1),
        (3, q, net.tallies[2][0], 2),
    ];
    let (mut single, mut split) = (Vec::new(), Vec::new());
    for i in 0..2 * (n + 1) {
        // every way offers 1,000 again: each vendor's target 1,000 past what it is owed (its
        // site may not have settled the last payment yet: pending counts), and the paying side
        // has heard of it
        for (site, vendor, t, payer_site) in ways {
            let owed: i64 = net.sites[site]
                .admin
                .query_one(
                    "SELECT greatest(net_good, net_pend) FROM chips.tallies WHERE tally_uuid = $1 AND ent = $2",
                    &[&t, &vendor.ent],
                )
                .await
                .unwrap()
                .get(0);
            let target = owed.max(0) + 1000;
            vendor
                .settings(t, serde_json::json!({"target": target, "bound": target}))
                .await
                .unwrap();
            let paying = &net.sites[payer_site].admin;
            let mut cap = 0;
            for _ in 0..10_000 {
                cap = paying
                    .query_one(
                        "SELECT chips._send_capacity(t) FROM chips.tallies t \
                         WHERE t.tally_uuid = $1 AND t.part_ent IS NULL",
                        &[&t],
                    )
                    .await
                    .unwrap()
                    .get::<_, i64>(0);
                if cap == 1000 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            assert_eq!(
                cap, 1000,
                "way {t}: the vendor is owed {owed}, target {target}"
            );
        }
        let units = if i % 2 == 0 { 500 } else { 1500 };
        let (ms, status, lift) = pay_once(&p.db, admin, &p.key, &to, units).await;
        assert_eq!(
            status, "good",
            "a payment of {units} in the diamond was voided"
        );
        let parts: i64 = admin
            .query_one(
                "SELECT count(*) FROM chips.lifts WHERE parent = $1",
                &[&lift],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            parts,
            if units > 1000 { 2 } else { 0 },
            "{units} split in {parts}"
        );
        if i >= 2 {
            // (the first of each: routes found cold)
            if units > 1000 {
                &mut split
            } else {
                &mut single
            }
            .push(ms);
        }
    }
    let (s50, s99) = (percentile(&mut single, 0.5), percentile(&mut single, 0.99));
    let (x50, x99) = (percentile(&mut split, 0.5), percentile(&mut split, 0.99));
    println!(
        "diamond, 4 sites: one route p50 {s50:.2} ms  p99 {s99:.2} ms; split over 2 routes p50 {x50:.2} ms  p99 {x99:.2} ms  ({n} each, in turns); split / one route p50 {:.2}",
        x50 / s50
    );
    for c in &mut cars {
        c.stop(Duration::from_secs(5));
    }
}
