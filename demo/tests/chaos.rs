//! The short chaos run: four sites (each its own cluster and chipsd) under random traffic and
//! clearing rounds while frames are dropped, duplicated, delayed and reordered, sidecars
//! SIGKILLed and clusters crashed; after the faults stop the network must converge and
//! chipsd check find nothing.

use std::process::Command;

#[test]
fn four_sites_under_traffic_and_faults_converge_with_every_invariant_holding() {
    let out = Command::new(env!("CARGO_BIN_EXE_chips-chaos"))
        .args(["--duration", "20", "--seed", "7", "--converge", "180"])
        .output()
        .expect("chips-chaos runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "chaos run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("all invariants hold"), "{stdout}");
    // the run did what it says: faults of every kind the driver injects, and committed traffic
    let faults = stdout
        .lines()
        .find(|l| l.contains("frame faults"))
        .expect("a faults line");
    let n = |label: &str| -> u64 {
        let before = &faults[..faults.find(label).expect(label)];
        before
            .split_whitespace()
            .last()
            .and_then(|w| w.parse().ok())
            .expect("a count")
    };
    assert!(n("frame faults") > 0, "{faults}");
    assert!(n("sidecars SIGKILLed") > 0, "{faults}");
    assert!(n("PostgreSQL crashes") > 0, "{faults}");
    assert!(stdout.contains("converged"), "{stdout}");
    // clearing rounds ran under the faults (chipsd check found each whole or void everywhere)
    let rounds = stdout
        .lines()
        .find(|l| l.contains("clearing rounds:"))
        .expect("a rounds line");
    let opened: u64 = rounds
        .split_whitespace()
        .nth(2)
        .and_then(|w| w.parse().ok())
        .expect("rounds opened");
    assert!(opened > 0, "{rounds}");
    // and once the faults stop, a round that every site takes part in commits
    assert!(
        stdout.contains("the last round, after the faults: good, all 4 sites took part"),
        "{stdout}"
    );
}
