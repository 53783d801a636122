//! The demo runs inside the test suite (small sizes) and checks its own summary; Ctrl-C stops
//! everything it started, and it runs again afterwards.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn demo(dsn: &str, report: &std::path::Path, duration: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_chips-demo"));
    c.args(["--dsn", dsn, "--prefix", "t_demo", "--users", "4"])
        .args(["--duration", duration, "--quiet", "--report"])
        .arg(report);
    c
}

/// The first number (CHIPs) after `label` in `text`.
fn chips_after(text: &str, label: &str) -> f64 {
    let rest = &text[text
        .find(label)
        .unwrap_or_else(|| panic!("no {label:?} in {text}"))
        + label.len()..];
    rest.split_whitespace()
        .next()
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no amount after {label:?}"))
}

#[test]
fn interrupted_then_run_again_to_a_summary_that_checks_out() {
    let dsn = std::env::var("CHIPS_TEST_DSN").expect("run through scripts/test.sh");
    let report = std::env::temp_dir().join(format!("chips-demo-report-{}", std::process::id()));

    // Ctrl-C while trading: it stops its agents and sidecars and says so.
    let mut child = demo(&dsn, &report, "60")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("demo starts");
    let pid = child.id();
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    loop {
        let line = lines
            .next()
            .expect("the demo reaches trading")
            .expect("a line");
        if line.starts_with("== trading") {
            break;
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    let t = Instant::now();
    assert!(Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .expect("kill")
        .success());
    let out = child.wait_with_output().expect("the demo exits");
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "stopping took {:?}",
        t.elapsed()
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("interrupted"), "{stderr}");
    // none of its chipsd is left (their key files live in its scratch directory)
    let left = Command::new("pgrep")
        .args(["-f", &format!("chipsd-demo-{pid}")])
        .output()
        .expect("pgrep");
    assert!(
        left.stdout.is_empty(),
        "chipsd left running: {}",
        String::from_utf8_lossy(&left.stdout)
    );

    // The same databases again, to the end.
    let out = demo(&dsn, &report, "6").output().expect("demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("sites: 3   users: 12"), "{stdout}");
    let before = chips_after(&stdout, "total debt before clearing:");
    let after = chips_after(&stdout, "after:");
    assert!(before > 0.0 && after <= before, "{stdout}");
    assert!(
        stdout.contains("checks: debt after <= before: yes; lifts left undecided: 0; chipsd check (halves agree, audits, net positions): yes"),
        "{stdout}"
    );
    assert!(
        stdout.contains("payment latency across sites: on a tally p50"),
        "{stdout}"
    );
    let html = std::fs::read_to_string(report.join("index.html")).expect("the report");
    assert!(html.contains("<svg") && html.contains("Debt over time"));
    let _ = std::fs::remove_dir_all(&report);
}
