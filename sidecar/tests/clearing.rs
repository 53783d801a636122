//! Automatic clearing driven by chipsd: the site turns it on, the sidecar's clock calls
//! `chips.clearing_tick()`, and the circle of debt goes without anyone asking.

use std::time::Duration;

use chips_tests::{eventually, free_port, Cluster, Sidecar};

const CHIPSD: &str = env!("CARGO_BIN_EXE_chipsd");

#[tokio::test]
async fn chipsd_drives_automatic_clearing() {
    let s = Cluster::from_env()
        .site("t_chipsd_clearing", 65430)
        .await
        .unwrap();
    let u = [
        s.user("Ann", "ann").await.unwrap(),
        s.user("Bob", "bob").await.unwrap(),
        s.user("Cat", "cat").await.unwrap(),
    ];
    // a owes b, b owes c, c owes a: 3 each.
    for (creditor, debtor) in [(1, 0), (2, 1), (0, 2)] {
        let t = u[creditor]
            .open_with(&u[debtor], 10_000, &[])
            .await
            .unwrap();
        u[debtor].pay(t, 3_000, "").await.unwrap();
    }
    let debt = || async {
        s.admin
            .query_one(
                "SELECT sum(abs(net_good))::bigint FROM chips.tallies WHERE side = 'stock'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    assert_eq!(debt().await, 9_000);
    let dir = chips_tests::scratch_dir("clearing");
    let port = free_port();
    let mut sc = Sidecar::start(
        std::path::Path::new(CHIPSD),
        &s,
        port,
        &dir,
        &["--clearing-secs", "1"],
        "warn",
    )
    .unwrap();
    // Off until the site says so: two ticks pass and nothing moves.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(debt().await, 9_000);
    s.admin
        .execute(
            "SELECT chips.clearing_configure(enabled => true, every => '1 second')",
            &[],
        )
        .await
        .unwrap();
    eventually(
        "chipsd's clearing tick clears the circle",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || async { debt().await == 0 },
    )
    .await
    .unwrap();
    let (lifts, last): (i64, i32) = {
        let r = s
            .admin
            .query_one(
                "SELECT (SELECT count(*) FROM chips.lifts), last_lifts FROM chips.clearing_settings",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(lifts, 1);
    assert!(last <= 1);
    assert!(sc
        .stop(Duration::from_secs(10))
        .is_some_and(|st| st.success()));
    let _ = std::fs::remove_dir_all(&dir);
}
