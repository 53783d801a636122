//! `chipsd check` passes on a sound network and reports each kind of broken invariant.

use std::process::Command;

use chips_tests::{relay_all, Cluster};

fn check(dsns: &[String]) -> (bool, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_chipsd"));
    c.arg("check");
    for d in dsns {
        c.args(["--dsn", d]);
    }
    let out = c.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test]
async fn chipsd_check_finds_what_is_broken() {
    let cl = Cluster::from_env();
    let a = cl.site("t_check_a", 65491).await.unwrap();
    let b = cl.site("t_check_b", 65492).await.unwrap();
    let ann = a.user("Ann", "ann").await.unwrap();
    let bob = a.user("Bob", "bob").await.unwrap();
    let eve = b.user("Eve", "eve").await.unwrap();
    let local = ann.open_with(&bob, 10_000, &[]).await.unwrap();
    let cross = ann.open_with(&eve, 10_000, &[&a, &b]).await.unwrap();
    bob.pay(local, 700, "").await.unwrap();
    eve.pay(cross, 900, "").await.unwrap();
    relay_all(&[&a, &b]).await.unwrap();
    let dsns = vec![a.dsn.clone(), b.dsn.clone()];
    let (ok, out) = check(&dsns);
    assert!(ok, "{out}");
    assert!(
        out.contains("2 with both halves here, 0 with the partner's half elsewhere"),
        "{out}"
    );
    // With one site only, the cross-site tally's partner is elsewhere: counted, not failed.
    let (ok, out) = check(&dsns[..1]);
    assert!(
        ok && out.contains("1 with the partner's half elsewhere"),
        "{out}"
    );

    // A chit that reached site a but is lost at site b (relay held back): chains differ.
    eve.pay(cross, 50, "").await.unwrap();
    let (ok, out) = check(&dsns);
    assert!(!ok && out.contains("do not mirror"), "{out}");
    relay_all(&[&a, &b]).await.unwrap();
    assert!(check(&dsns).0);

    // History rewritten by a superuser bypassing the triggers: audit, mirror and net position.
    a.admin
        .batch_execute(&format!(
            "SET session_replication_role = replica;
             UPDATE chips.chits SET units = 1, value = 1 WHERE tally_id = (SELECT id FROM chips.tallies WHERE tally_uuid = '{local}' AND side = 'stock');
             UPDATE chips.tallies SET net_good = net_good + 5 WHERE tally_uuid = '{cross}';
             SET session_replication_role = origin;"
        ))
        .await
        .unwrap();
    let (ok, out) = check(&dsns);
    assert!(!ok);
    for needle in [
        "stock half of",
        "signatures",
        "balance",
        "do not mirror",
        "own chits sum to",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }

    // A lift good at one site and void at the other; one still reserving past its expiry.
    let lift = uuid::Uuid::new_v4();
    for (s, role, status, uuid) in [
        (&a, "origin", "good", lift),
        (&b, "terminus", "void", lift),
        (&b, "relay", "pend", uuid::Uuid::new_v4()),
    ] {
        s.admin
            .execute(
                "INSERT INTO chips.lifts (lift_uuid, kind, status, units, role, origin, find, condition, void_cond, expires)
                 VALUES ($1, 'linear', $2, 1, $3, '{}', '{}', '\\x00', '\\x00', now() - interval '1 minute')",
                &[&uuid, &status, &role],
            )
            .await
            .unwrap();
    }
    let (ok, out) = check(&dsns);
    assert!(!ok);
    assert!(
        out.contains(&format!("lift {lift} is not decided alike everywhere")),
        "{out}"
    );
    assert!(out.contains("is pend past its expiry"), "{out}");
}
