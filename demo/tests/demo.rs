//! The demo runs inside the test suite and checks its own summary.

use std::process::Command;

#[test]
fn demo_runs_and_both_halves_of_every_tally_agree() {
    let dsn = std::env::var("CHIPS_TEST_DSN").expect("run through scripts/test.sh");
    let out = Command::new(env!("CARGO_BIN_EXE_chips-demo"))
        .args(["--dsn", &dsn, "--prefix", "t_demo"])
        .output()
        .expect("demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("sites: 3"), "{stdout}");
    assert!(stdout.contains("tallies opened: 6"), "{stdout}");
    assert!(stdout.contains("crossed sites: latency p50"), "{stdout}");
    assert!(
        stdout.contains("agree (digest, chain, balances, audit): yes"),
        "{stdout}"
    );
    assert!(
        stdout.contains("23514"),
        "the over-limit payment is refused: {stdout}"
    );
    assert!(
        stdout.contains("28000"),
        "the forged offer is refused: {stdout}"
    );
}
