//! Distributed lifts on loopback: four sites in a ring, each with its own database and chipsd.
//! Latency (p50, p99) of a payment to a CHIP address across 2 sites (one tally between them) and
//! across 4 sites (three intermediaries' sites), from the payer's call until the origin has
//! decided good, against a baseline measured in the same run: one chit across one tally (commit
//! at the payer to the chit at the payee). Then lifts per second with concurrent payers.
//!
//! ```text
//! bash scripts/bench-lifts.sh
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chips_tests::ring::{chad, pay_address, Net};
use chips_tests::{free_port, Sidecar, User};
use serde_json::Value;
use uuid::Uuid;

async fn until<F, Fut>(f: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    chips_tests::eventually(
        "the benchmark",
        Duration::from_secs(60),
        Duration::from_millis(1),
        f,
    )
    .await
    .unwrap();
}

async fn decided(u: &User, lift: Uuid) -> bool {
    let r =
        u.db.query_opt(
            "SELECT status FROM chips.lifts_v WHERE lift = $1 LIMIT 1",
            &[&lift],
        )
        .await
        .unwrap();
    match r {
        Some(r) => {
            let s: String = r.get(0);
            assert_ne!(s, "void", "lift {lift} was voided");
            s == "good"
        }
        None => false,
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p).round() as usize]
}

async fn pay_and_wait(payer: &User, to: &Value, units: i64) -> f64 {
    let t = Instant::now();
    let l = pay_address(payer, to, units).await.unwrap();
    until(|| decided(payer, l)).await;
    t.elapsed().as_secs_f64() * 1e3
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
    for s in &net.sites {
        s.admin
            .execute(
                "SELECT chips.lift_configure(life => '30 seconds', hop_step => '2 seconds')",
                &[],
            )
            .await
            .unwrap();
    }
    let dir = chips_tests::scratch_dir("bench-lifts");
    let mut cars: Vec<Sidecar> = net
        .sites
        .iter()
        .zip(ports)
        .map(|(s, p)| {
            Sidecar::start(std::path::Path::new(&chipsd), s, p, &dir, &[], "error").unwrap()
        })
        .collect();

    // baseline: one chit over the tally from site 0 to site 1
    let (a, b, t) = (&net.users[0][3], &net.users[1][0], net.tallies[0][3]);
    let mut base = Vec::new();
    for _ in 0..n {
        let start = Instant::now();
        let chit = a.pay(t, 1, "").await.unwrap();
        until(|| async { b.chit_state(t, chit).await.unwrap().is_some() }).await;
        base.push(start.elapsed().as_secs_f64() * 1e3);
    }
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
    let (b50, b99) = (pct(&mut base, 0.5), pct(&mut base, 0.99));
    println!(
        "baseline (one chit, one tally, 2 sites): p50 {b50:.2} ms  p99 {b99:.2} ms  ({n} runs)"
    );
    for (name, payer, to) in &cases {
        let cold = pay_and_wait(payer, to, 1).await;
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(pay_and_wait(payer, to, 1).await);
        }
        let (p50, p99) = (pct(&mut v, 0.5), pct(&mut v, 0.99));
        println!(
            "payment across {name}: p50 {p50:.2} ms  p99 {p99:.2} ms  (first, with route discovery: {cold:.2} ms)  ratio to baseline p50 {:.2}",
            p50 / b50
        );
    }
    // throughput: concurrent payers on site 0, each paying site 3's u3 one at a time
    for clients in [1usize, 4] {
        let done = Arc::new(AtomicUsize::new(0));
        let secs = 5.0;
        let start = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..clients {
            let done = done.clone();
            let to = chad(&net.sites[3], &net.users[3][3]);
            let u = &net.users[0][c % 4];
            let user = net.sites[0].connect_as(&u.ent).await.unwrap();
            let key = chips_core::sign::KeyPair::from_phrase(&format!(
                "{} at {}",
                u.name, net.sites[0].db
            ));
            tasks.push(tokio::spawn(async move {
                let t0 = Instant::now();
                while t0.elapsed().as_secs_f64() < secs {
                    let lift: Uuid = user
                        .query_one("SELECT chips.pay_address($1, 1)", &[&to])
                        .await
                        .unwrap()
                        .get(0);
                    let doc: Value = user
                        .query_one("SELECT chips.pay_address_json($1)", &[&lift])
                        .await
                        .unwrap()
                        .get(0);
                    let sig = key.sign_json(&doc).unwrap();
                    user.query_one("SELECT chips.pay_address_sign($1, $2)", &[&lift, &sig])
                        .await
                        .unwrap();
                    loop {
                        let s: Option<String> = user
                            .query_opt(
                                "SELECT status FROM chips.lifts WHERE lift_uuid = $1",
                                &[&lift],
                            )
                            .await
                            .unwrap()
                            .map(|r| r.get(0));
                        if matches!(s.as_deref(), Some("good") | Some("void")) {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let n = done.load(Ordering::Relaxed);
        println!(
            "4-site lifts per second, {clients} concurrent payer(s): {:.1}",
            n as f64 / start.elapsed().as_secs_f64()
        );
    }
    for c in &mut cars {
        c.stop(Duration::from_secs(5));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
