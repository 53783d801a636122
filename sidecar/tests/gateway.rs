//! The user gateway, driven by a client we did not write (Python `websockets`, in
//! tests/ws_client.py, run by the interpreter in `CHIPS_PYTHON`): login, who sees what,
//! malformed and unauthenticated calls, subscriptions across a disconnect and a chipsd restart,
//! HTTP documents/health/metrics; and, over TLS, the rate, size, connection and idle limits.

use std::process::Command;

use chips_tests::{free_port, Cluster, Sidecar, Site};
use serde_json::{json, Value};

const CHIPSD: &str = env!("CARGO_BIN_EXE_chipsd");

fn python(phase: &str, cfg: &Value) -> Value {
    let python = std::env::var("CHIPS_PYTHON").expect(
        "CHIPS_PYTHON names a python with the websockets package (scripts/test.sh sets it)",
    );
    let out = Command::new(python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ws_client.py"))
        .arg(phase)
        .arg(cfg.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ws_client.py {phase} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap()
}

async fn custodial(site: &Site, name: &str) -> (String, String) {
    let ent: String = site
        .admin
        .query_one(
            "SELECT chips.user_create($1, cuid => lower($1), custodial => true)",
            &[&name],
        )
        .await
        .unwrap()
        .get(0);
    let ticket: Value = site
        .admin
        .query_one("SELECT chips.login_ticket($1)", &[&ent])
        .await
        .unwrap()
        .get(0);
    (ent, ticket["token"].as_str().unwrap().to_string())
}

fn start(site: &Site, dsn: &str, dir: &std::path::Path, extra: &[&str]) -> (Sidecar, u16) {
    let gw = free_port();
    let mut args = vec![
        "--gateway-listen".to_string(),
        format!("127.0.0.1:{gw}"),
        "--gateway-db".to_string(),
        dsn.to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let sc = Sidecar::start(
        std::path::Path::new(CHIPSD),
        site,
        free_port(),
        dir,
        &args,
        "warn",
    )
    .unwrap();
    // the peer port listens first; wait for the gateway too
    assert!(
        chips_tests::wait_port(gw, std::time::Duration::from_secs(20)),
        "the gateway did not listen"
    );
    (sc, gw)
}

#[tokio::test]
async fn a_python_client_logs_in_subscribes_and_sees_only_its_own() {
    let s = Cluster::from_env().site("t_gateway", 65430).await.unwrap();
    let dsn = s.gateway_dsn().await.unwrap();
    let (ann, ann_ticket) = custodial(&s, "Ann").await;
    let (bob, bob_ticket) = custodial(&s, "Bob").await;
    let (eve, eve_ticket) = custodial(&s, "Eve").await;
    let file: String = s
        .admin
        .query_one(
            "SELECT chips.file_add(convert_to('hello, chips' || chr(10), 'UTF8'), 'text/plain')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let dir = chips_tests::scratch_dir("gateway");
    let (mut sc, port) = start(&s, &dsn, &dir, &[]);
    let mut cfg = json!({
        "ws": format!("ws://127.0.0.1:{port}/ws"),
        "http": format!("http://127.0.0.1:{port}"),
        "ents": {"ann": ann, "bob": bob, "eve": eve},
        "tickets": {"ann": ann_ticket, "bob": bob_ticket, "eve": eve_ticket},
        "contract": s.contract,
        "file": file,
    });
    let state = python("phase1", &cfg);

    // Ann is gone; chipsd dies and comes back; Bob pays three times meanwhile (straight SQL,
    // as his role: no gateway, no session needed).
    sc.kill9();
    let bob_role = s.role_of(&bob).await.unwrap();
    let tally = state["tally"]
        .as_str()
        .unwrap()
        .parse::<uuid::Uuid>()
        .unwrap();
    for units in [1i64, 2, 3] {
        s.admin
            .batch_execute(&format!("SET ROLE \"{bob_role}\""))
            .await
            .unwrap();
        s.admin
            .execute("SELECT chips.pay($1, $2)", &[&tally, &units])
            .await
            .unwrap();
        s.admin.batch_execute("RESET ROLE").await.unwrap();
    }
    sc.restart().unwrap();
    assert!(
        chips_tests::wait_port(port, std::time::Duration::from_secs(20)),
        "the gateway did not listen again"
    );
    cfg["state"] = state;
    assert_eq!(python("phase2", &cfg)["ok"], true);

    // The gateway's role alone reaches no user's rows: without a session, user calls fail.
    let gw = chips_tests::connect(&dsn).await.unwrap();
    let ann_role = s.role_of(&ann).await.unwrap();
    gw.batch_execute(&format!("SET ROLE \"{ann_role}\""))
        .await
        .unwrap();
    let e = gw
        .query_one("SELECT chips.user_cert()", &[])
        .await
        .unwrap_err();
    assert_eq!(chips_tests::sqlstate(&e), "42501", "{e}");
    let n: i64 = gw
        .query_one("SELECT count(*) FROM chips.tallies", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "no session: row-level security shows nothing");
    // nor with a made-up session id
    gw.batch_execute("SET chips.session = 'made-up'")
        .await
        .unwrap();
    let e = gw
        .query_one("SELECT chips.pay($1, 1)", &[&tally])
        .await
        .unwrap_err();
    assert_eq!(chips_tests::sqlstate(&e), "42501", "{e}");
}

#[tokio::test]
async fn the_gateway_bounds_rate_size_connections_and_idleness_over_tls() {
    let s = Cluster::from_env()
        .site("t_gateway_limits", 65430)
        .await
        .unwrap();
    let dsn = s.gateway_dsn().await.unwrap();
    let dir = chips_tests::scratch_dir("gateway-tls");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_pem, key_pem) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_pem, cert.cert.pem()).unwrap();
    std::fs::write(&key_pem, cert.signing_key.serialize_pem()).unwrap();
    let (_sc, port) = start(
        &s,
        &dsn,
        &dir,
        &[
            "--tls-cert",
            cert_pem.to_str().unwrap(),
            "--tls-key",
            key_pem.to_str().unwrap(),
            "--gateway-rate-per-sec",
            "5",
            "--gateway-rate-burst",
            "10",
            "--gateway-max-message-bytes",
            "4096",
            "--gateway-max-connections",
            "3",
            "--gateway-idle-secs",
            "2",
        ],
    );
    let out = python(
        "limits",
        &json!({
            "ws": format!("wss://localhost:{port}/ws"),
            "http": format!("https://localhost:{port}"),
            "ca": cert_pem,
        }),
    );
    assert_eq!(out["ok"], true, "{out}");
}

/// `chipsd login-ticket` prints a QR code and the link; the link's token registers a key once.
#[tokio::test]
async fn login_ticket_prints_a_link_and_a_qr_code_that_work() {
    let s = Cluster::from_env()
        .site("t_gateway_ticket", 65430)
        .await
        .unwrap();
    let (ann, _) = custodial(&s, "Ann").await;
    let out = Command::new(CHIPSD)
        .args(["login-ticket", "--db", &s.dsn, "--ent", &ann])
        .args(["--url", "https://chips.example.org/"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains('█') && text.contains('▀'),
        "a QR code: {text}"
    );
    let link = text
        .lines()
        .find(|l| l.starts_with("https://chips.example.org/login?ent="))
        .unwrap_or_else(|| panic!("no link in {text}"));
    let token = link.rsplit_once("token=").unwrap().1;
    let key = chips_core::sign::KeyPair::from_phrase("ann's phone");
    let ent: String = s
        .admin
        .query_one(
            "SELECT chips.login_register($1, $2)",
            &[&token, &key.public_b64()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ent, ann);
    let again = s
        .admin
        .query_one(
            "SELECT chips.login_register($1, $2)",
            &[&token, &key.public_b64()],
        )
        .await
        .unwrap_err();
    assert_eq!(chips_tests::sqlstate(&again), "28000");
    // an unknown user: a clear error, a failing exit
    let out = Command::new(CHIPSD)
        .args([
            "login-ticket",
            "--db",
            &s.dsn,
            "--ent",
            "p999999",
            "--url",
            "http://x",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no user p999999 (42704)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A certificate chipsd cannot read stops it at start, saying which file, rather than leaving
/// it running without its gateway.
#[tokio::test]
async fn an_unreadable_tls_certificate_stops_chipsd_at_start() {
    let s = Cluster::from_env()
        .site("t_gateway_badtls", 65430)
        .await
        .unwrap();
    let dir = chips_tests::scratch_dir("gateway-badtls");
    let key = s.write_agent_key(&dir).unwrap();
    let out = Command::new(CHIPSD)
        .args(["run", "--db", &s.dsn, "--key", key.to_str().unwrap()])
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--gateway-listen", &format!("127.0.0.1:{}", free_port())])
        .args([
            "--tls-cert",
            "/nonexistent/cert.pem",
            "--tls-key",
            "/nonexistent/key.pem",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/cert.pem"), "{err}");
}
