//! Distributed lifts over real sidecars: four sites, each its own database and chipsd on
//! loopback. A payment two sites away commits at every site; a sidecar killed (SIGKILL) in the
//! middle of a lift and restarted leaves the lift good everywhere or void everywhere, and both
//! halves of every tally agree.

use std::time::Duration;

use chips_tests::ring::{chad, pay_address, Net};
use chips_tests::{free_port, Sidecar};
use uuid::Uuid;

const CHIPSD: &str = env!("CARGO_BIN_EXE_chipsd");

async fn settled(net: &Net, lift: Uuid, sites: usize) -> bool {
    let st = net.lift_status(lift).await;
    st.len() >= sites
        && st
            .iter()
            .all(|(_, s, _)| s == &st[0].1 && (s == "good" || s == "void"))
}

async fn quiet(net: &Net) -> bool {
    let mut n = net.open_lifts().await;
    for s in &net.sites {
        n += s.undelivered().await.unwrap();
    }
    n == 0
}

#[tokio::test]
async fn lifts_over_four_sidecars_survive_a_sidecar_killed_mid_lift() {
    let ports = [free_port(), free_port(), free_port(), free_port()];
    let net = Net::build("sidecars", 10_000, None, ports).await;
    let dir = chips_tests::scratch_dir("lifts");
    let mut cars: Vec<Sidecar> = net
        .sites
        .iter()
        .zip(ports)
        .map(|(s, p)| {
            Sidecar::start(
                std::path::Path::new(CHIPSD),
                s,
                p,
                &dir,
                &[
                    "--poll-ms",
                    "100",
                    "--reply-timeout-ms",
                    "1500",
                    "--lift-tick-ms",
                    "100",
                ],
                "warn",
            )
            .unwrap()
        })
        .collect();
    let payer = &net.users[0][0];
    let wait = |what: &'static str, lift: Uuid, sites: usize| {
        let net = &net;
        async move {
            chips_tests::eventually(
                what,
                Duration::from_secs(30),
                Duration::from_millis(20),
                || settled(net, lift, sites),
            )
            .await
            .unwrap()
        }
    };

    // two sites away, then all four
    let l = pay_address(payer, &chad(&net.sites[2], &net.users[2][3]), 25)
        .await
        .unwrap();
    wait("a payment to site 2", l, 3).await;
    assert!(net.lift_status(l).await.iter().all(|(_, s, _)| s == "good"));
    let l = pay_address(payer, &chad(&net.sites[3], &net.users[3][3]), 25)
        .await
        .unwrap();
    wait("a payment to site 3", l, 4).await;
    assert!(net.lift_status(l).await.iter().all(|(_, s, _)| s == "good"));

    // kill each sidecar (the origin's too) right after a payment starts; restart it a second later
    for (k, car) in cars.iter_mut().enumerate() {
        let l = pay_address(payer, &chad(&net.sites[3], &net.users[3][3]), 5)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5 * k as u64)).await;
        car.kill9();
        tokio::time::sleep(Duration::from_millis(1000)).await;
        car.restart().unwrap();
        chips_tests::eventually(
            "the sites go quiet",
            Duration::from_secs(40),
            Duration::from_millis(50),
            || quiet(&net),
        )
        .await
        .unwrap();
        let st = net.lift_status(l).await;
        assert!(
            st.iter().all(|(_, s, _)| s == &st[0].1),
            "sidecar {k} killed: {st:?}"
        );
        net.check_consistent().await;
    }
    for c in &mut cars {
        c.stop(Duration::from_secs(5));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
