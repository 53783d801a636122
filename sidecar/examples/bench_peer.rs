//! End to end between two sites on loopback, each with its own database and chipsd: how long a
//! payment takes from its commit at the payer's site to its chit being recorded at the payee's
//! (p50, p99, one at a time), and how many payments per second cross in a burst.
//!
//! ```text
//! bash scripts/bench-peer.sh                 # builds in release, starts a private cluster
//! ```

use std::time::Instant;

use chips_tests::{free_port, until, Cluster, Sidecar, User};
use serde_json::json;
use uuid::Uuid;

async fn arrived(u: &User, t: Uuid, chit: Uuid) -> bool {
    u.chit_state(t, chit).await.unwrap().is_some()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let dsn = args
        .next()
        .expect("usage: bench_peer DSN CHIPSD [payments]");
    let chipsd = args
        .next()
        .expect("usage: bench_peer DSN CHIPSD [payments]");
    let payments: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(500);
    let cl = Cluster::new(dsn);
    let (pa, pb) = (free_port(), free_port());
    let a = cl.site("bench_peer_a", pa).await.unwrap();
    let b = cl.site("bench_peer_b", pb).await.unwrap();
    let dir = std::env::temp_dir().join(format!("bench-peer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let start = |site, port| {
        let flags = ["--poll-ms", "1000"];
        Sidecar::start(
            std::path::Path::new(&chipsd),
            site,
            port,
            &dir,
            &flags,
            "error",
        )
        .unwrap()
    };
    let (_sa, _sb) = (start(&a, pa), start(&b, pb));
    let ann = a.user("Ann", "ann").await.unwrap();
    let eve = b.user("Eve", "eve").await.unwrap();
    let t = ann
        .draft("stock", json!({"limit": 1_000_000_000}), json!({}), "")
        .await
        .unwrap();
    eve.redeem(&ann.ticket(t, false).await.unwrap())
        .await
        .unwrap();
    until(|| async { ann.state(t).await.unwrap().as_deref() == Some("P.draft") }).await;
    ann.offer(t).await.unwrap();
    until(|| async { eve.state(t).await.unwrap().as_deref() == Some("P.offer") }).await;
    eve.accept(t).await.unwrap();
    until(|| async { ann.state(t).await.unwrap().as_deref() == Some("open") }).await;

    // One at a time: commit at b, recorded at a.
    let mut lat = Vec::with_capacity(payments);
    for _ in 0..payments {
        let chit = eve.pay(t, 1, "").await.unwrap();
        let started = Instant::now();
        until(|| arrived(&ann, t, chit)).await;
        lat.push(started.elapsed().as_secs_f64() * 1e3);
    }
    lat.sort_by(|x, y| x.total_cmp(y));
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];

    // A burst: all issued as fast as one client can, then wait for the last to arrive.
    let started = Instant::now();
    let mut last = Uuid::nil();
    for _ in 0..payments {
        last = eve.pay(t, 1, "").await.unwrap();
    }
    let issued = started.elapsed().as_secs_f64();
    until(|| arrived(&ann, t, last)).await;
    let total = started.elapsed().as_secs_f64();
    until(|| async { a.chain(t, "stock").await.unwrap().len() == 2 * payments }).await;
    let chains_agree = a.chain(t, "stock").await.unwrap() == b.chain(t, "foil").await.unwrap();
    println!("payments from site b to site a (Noise; each applied in its own transaction): {payments} one at a time, then {payments} in a burst");
    println!("  one at a time: commit at the payer's site to recorded at the payee's: p50 {:.2} ms, p99 {:.2} ms", pct(0.5), pct(0.99));
    println!(
        "  burst: issued in {issued:.2} s ({:.0}/s), all recorded at the payee's site after {total:.2} s: {:.0} payments/s end to end",
        payments as f64 / issued,
        payments as f64 / total
    );
    println!(
        "  both chains agree: {}",
        if chains_agree { "yes" } else { "NO" }
    );
    std::fs::remove_dir_all(&dir).ok();
    assert!(chains_agree);
}
