//! The user gateway under 1,000 subscribed websocket clients (one per user, each logged in with
//! its own key): latency from a payment's commit to its event at the payee's client (p50/p99,
//! one payment at a time), and events per second delivered to the clients while payments
//! stream in from several database connections. Baselines from the same run: the websocket
//! round trip of a trivial call, and the rate at which the database commits the events.
//!
//! ```text
//! bash scripts/bench-gateway.sh          # builds in release, starts a private cluster
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chips_core::sign::KeyPair;
use chips_tests::{free_port, percentile, Cluster, Sidecar};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn call(ws: &mut Ws, id: u64, method: &str, params: Value) -> Value {
    let req = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
    ws.send(Message::Text(req.to_string().into()))
        .await
        .unwrap();
    loop {
        let m = ws.next().await.expect("connection open").unwrap();
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["id"] == json!(id) {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }
}

/// Logs in as `ent` with a fresh key (registered with `ticket`), subscribes from `cursor`.
async fn client(url: &str, ent: &str, ticket: &str, cursor: i64) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let key = KeyPair::generate();
    call(
        &mut ws,
        1,
        "login.register",
        json!({"token": ticket, "pubkey": key.public_b64()}),
    )
    .await;
    let doc = call(
        &mut ws,
        2,
        "login.challenge",
        json!({"ent": ent, "pubkey": key.public_b64()}),
    )
    .await;
    let sig = key.sign_json(&doc).unwrap();
    call(
        &mut ws,
        3,
        "login.finish",
        json!({"challenge": doc["challenge"], "signature": sig}),
    )
    .await;
    call(&mut ws, 4, "subscribe", json!({"cursor": cursor})).await;
    ws
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|n| n.parse::<f64>().ok())
            })
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(f64::NAN)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let usage = "usage: bench_gateway DSN CHIPSD [clients] [payments]";
    let mut args = std::env::args().skip(1);
    let dsn = args.next().expect(usage);
    let chipsd = args.next().expect(usage);
    let clients: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let payments: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let poll_ms = std::env::var("POLL_MS").unwrap_or_else(|_| "50".into());
    let pairs = clients / 2;

    let cl = Cluster::new(dsn.clone());
    let site = cl.site("bench_gateway", free_port()).await.unwrap();
    let admin = &site.admin;
    let gw_dsn = site.gateway_dsn().await.unwrap();
    let t0 = Instant::now();
    // users 2i (stock) and 2i+1 (foil) share tally i; custodial, so SQL alone opens them
    let mut ents = Vec::with_capacity(clients);
    let mut roles = Vec::with_capacity(clients);
    for i in 0..pairs * 2 {
        let ent: String = admin
            .query_one(
                "SELECT chips.user_create($1, custodial => true)",
                &[&format!("user {i}")],
            )
            .await
            .unwrap()
            .get(0);
        roles.push(site.role_of(&ent).await.unwrap());
        ents.push(ent);
    }
    let as_role = |r: &str| format!("SET ROLE \"{r}\"");
    let mut tallies = Vec::with_capacity(pairs);
    for i in 0..pairs {
        let (a, b) = (&roles[2 * i], &roles[2 * i + 1]);
        admin.batch_execute(&as_role(a)).await.unwrap();
        let t: uuid::Uuid = admin
            .query_one(
                "SELECT chips.tally_create('stock', hold_terms => '{\"limit\": 1000000000}', part_terms => '{\"limit\": 1000000000}')",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        let ticket: Value = admin
            .query_one("SELECT chips.ticket_create($1)", &[&t])
            .await
            .unwrap()
            .get(0);
        admin.batch_execute(&as_role(b)).await.unwrap();
        admin
            .execute("SELECT chips.ticket_redeem($1)", &[&ticket])
            .await
            .unwrap();
        admin.batch_execute(&as_role(a)).await.unwrap();
        admin
            .execute("SELECT chips.tally_offer($1)", &[&t])
            .await
            .unwrap();
        admin.batch_execute(&as_role(b)).await.unwrap();
        admin
            .execute("SELECT chips.tally_accept($1)", &[&t])
            .await
            .unwrap();
        admin.batch_execute("RESET ROLE").await.unwrap();
        tallies.push(t);
    }
    let setup = t0.elapsed().as_secs_f64();

    let dir = std::env::temp_dir().join(format!("bench-gateway-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let gw_port = free_port();
    let max = (clients + 100).to_string();
    let sc = Sidecar::start(
        std::path::Path::new(&chipsd),
        &site,
        free_port(),
        &dir,
        &[
            "--gateway-listen",
            &format!("127.0.0.1:{gw_port}"),
            "--gateway-db",
            &gw_dsn,
            "--gateway-max-connections",
            &max,
            "--gateway-rate-per-sec",
            "1000000",
            "--gateway-rate-burst",
            "1000000",
            "--gateway-poll-ms",
            &poll_ms,
            "--clearing-secs",
            "0",
        ],
        "error",
    )
    .unwrap();
    assert!(
        chips_tests::wait_port(gw_port, Duration::from_secs(20)),
        "the gateway listens"
    );
    let url = format!("ws://127.0.0.1:{gw_port}/ws");

    // every client logs in with its own key and subscribes from its current head
    let heads: HashMap<String, i64> = admin
        .query("SELECT ent, seq FROM chips.event_heads", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let t1 = Instant::now();
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, String, Instant)>();
    let gate = Arc::new(Semaphore::new(32));
    let mut joins = Vec::new();
    for (i, ent) in ents.iter().enumerate() {
        let ticket: Value = admin
            .query_one("SELECT chips.login_ticket($1)", &[ent])
            .await
            .unwrap()
            .get(0);
        let (url, ent, tx, gate) = (url.clone(), ent.clone(), tx.clone(), gate.clone());
        let cursor = heads.get(&ent).copied().unwrap_or(0);
        joins.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await.unwrap();
            let mut ws = client(&url, &ent, ticket["token"].as_str().unwrap(), cursor).await;
            drop(permit);
            let ready = tx.send((i, String::new(), Instant::now()));
            assert!(ready.is_ok());
            while let Some(Ok(m)) = ws.next().await {
                if let Message::Text(t) = m {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["method"] == "event" && v["params"]["kind"] == "chit" {
                        let chit = v["params"]["data"]["chit"]
                            .as_str()
                            .unwrap_or("")
                            .to_string();
                        if tx.send((i, chit, Instant::now())).is_err() {
                            return;
                        }
                    }
                }
            }
        }));
    }
    for _ in 0..clients {
        rx.recv().await.unwrap();
    }
    let login = t1.elapsed().as_secs_f64();
    let rss = rss_mib(sc.child.id());

    // baseline: a trivial call's websocket round trip, on one more connection
    let (mut probe, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let mut rtt = Vec::new();
    for id in 0..200u64 {
        let t = Instant::now();
        call(&mut probe, id, "rpc.methods", json!({})).await;
        rtt.push(t.elapsed().as_secs_f64() * 1e3);
    }

    // one payment at a time: from its commit (pay returned) to the event at the payee's client
    let payer = chips_tests::connect(&site.dsn).await.unwrap();
    let one = 300.min(payments);
    let mut lat = Vec::with_capacity(one);
    let poll: u64 = poll_ms.parse().unwrap_or(50);
    for k in 0..one {
        let i = (k * 7919) % pairs;
        // commits land anywhere in the poll period, not just after the tick that woke us
        let jitter = (k as u64 * 7919 % 1000) * poll / 1000;
        tokio::time::sleep(Duration::from_millis(jitter)).await;
        payer
            .batch_execute(&as_role(&roles[2 * i + 1]))
            .await
            .unwrap();
        let chit: uuid::Uuid = payer
            .query_one("SELECT chips.pay($1, 1)", &[&tallies[i]])
            .await
            .unwrap()
            .get(0);
        let committed = Instant::now();
        let chit = chit.to_string();
        loop {
            let (who, c, at) = rx.recv().await.unwrap();
            if who == 2 * i && c == chit {
                lat.push(at.duration_since(committed).as_secs_f64() * 1e3);
                break;
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    while rx.try_recv().is_ok() {}

    // a stream: 4 connections pay as fast as they can; every payment is 2 events (one per half)
    let writers = 4;
    let t2 = Instant::now();
    let mut payers = Vec::new();
    for w in 0..writers {
        let (dsn, roles, tallies) = (site.dsn.clone(), roles.clone(), tallies.clone());
        payers.push(tokio::spawn(async move {
            let c = chips_tests::connect(&dsn).await.unwrap();
            for k in (w..payments).step_by(writers) {
                let i = (k * 104_729) % tallies.len();
                let payer = if k % 2 == 0 {
                    &roles[2 * i + 1]
                } else {
                    &roles[2 * i]
                };
                c.batch_execute(&format!("SET ROLE \"{payer}\""))
                    .await
                    .unwrap();
                c.execute("SELECT chips.pay($1, 1)", &[&tallies[i]])
                    .await
                    .unwrap();
            }
        }));
    }
    let mut got = 0usize;
    let mut committed_after = 0.0;
    let expected = 2 * payments;
    let deadline = Instant::now() + Duration::from_secs(300);
    while got < expected && Instant::now() < deadline {
        if committed_after == 0.0 && payers.iter().all(|p| p.is_finished()) {
            committed_after = t2.elapsed().as_secs_f64();
        }
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(10), rx.recv()).await {
            got += 1;
        }
    }
    let delivered_after = t2.elapsed().as_secs_f64();
    if committed_after == 0.0 {
        committed_after = delivered_after;
    }
    for p in payers {
        p.await.unwrap();
    }

    println!("user gateway: {clients} websocket clients, one user each, logged in by signed challenge and subscribed; chipsd polls event heads every {poll_ms} ms");
    println!("  setup: {clients} users and {pairs} open tallies in {setup:.1} s; {clients} logins + subscriptions in {login:.1} s; chipsd RSS {rss:.0} MiB");
    println!(
        "  baseline, websocket round trip of rpc.methods: p50 {:.2} ms, p99 {:.2} ms",
        percentile(&mut rtt, 0.5),
        percentile(&mut rtt, 0.99)
    );
    let (p50, p99) = (percentile(&mut lat, 0.5), percentile(&mut lat, 0.99));
    println!("  payment commit -> its event at the payee's client ({one} one at a time, at random points of the poll period): p50 {p50:.2} ms, p99 {p99:.2} ms");
    let committed_rate = expected as f64 / committed_after;
    let delivered_rate = got as f64 / delivered_after;
    println!("  stream: {payments} payments from {writers} connections = {expected} events; committed in {committed_after:.2} s ({committed_rate:.0} events/s); {got} delivered in {delivered_after:.2} s ({delivered_rate:.0} events/s)");
    println!(
        "  ratio delivered/committed rate: {:.2}",
        delivered_rate / committed_rate
    );
    drop(sc);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(got, expected, "every event delivered");
    for j in joins {
        j.abort();
    }
}
