//! Two sites, each its own database and its own chipsd on loopback: a tally and chits end to
//! end over Noise; a sidecar killed (SIGKILL) mid-stream and restarted loses nothing; an
//! impostor is refused before anything reaches SQL.

use std::process::Command;
use std::time::{Duration, Instant};

use chips_tests::faults::FaultyProxy;
use chips_tests::{free_port, Cluster, Sidecar, Site, User};
use serde_json::json;

const CHIPSD: &str = env!("CARGO_BIN_EXE_chipsd");

/// chipsd for `site` with this file's test settings: fast polls and syncs, short timeouts.
fn sidecar(site: &Site, port: u16, dir: &std::path::Path) -> Sidecar {
    sidecar_with(site, port, dir, &[])
}

/// A chipsd with short timers for tests, and `extra` flags.
fn sidecar_with(site: &Site, port: u16, dir: &std::path::Path, extra: &[&str]) -> Sidecar {
    let mut flags = vec![
        "--poll-ms",
        "100",
        "--sync-secs",
        "2",
        "--reply-timeout-ms",
        "1500",
    ];
    flags.extend_from_slice(extra);
    Sidecar::start(
        std::path::Path::new(CHIPSD),
        site,
        port,
        dir,
        &flags,
        "warn",
    )
    .unwrap()
}

/// Waits (up to 30 s) until `f` holds.
async fn eventually<F, Fut>(what: &str, f: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    chips_tests::eventually(what, Duration::from_secs(30), Duration::from_millis(100), f)
        .await
        .unwrap();
}

async fn state_is(u: &User, t: uuid::Uuid, want: &str) -> bool {
    u.state(t).await.unwrap().as_deref() == Some(want)
}

/// A tally between Ann (the vendor, granting `limit`) and Eve at the other site, negotiated by
/// the sidecars: ticket, offer, accept, until it is open at Ann's site.
async fn open_over_noise(ann: &User, eve: &User, limit: i64, memo: &str) -> uuid::Uuid {
    let t = ann
        .draft("stock", json!({"limit": limit}), json!({}), memo)
        .await
        .unwrap();
    assert_eq!(
        eve.redeem(&ann.ticket(t, false).await.unwrap())
            .await
            .unwrap(),
        None
    );
    eventually("the ticket reaches Ann", || state_is(ann, t, "P.draft")).await;
    ann.offer(t).await.unwrap();
    eventually("the offer reaches Eve", || state_is(eve, t, "P.offer")).await;
    eve.accept(t).await.unwrap();
    eventually("the tally opens at Ann", || state_is(ann, t, "open")).await;
    t
}

async fn converged(
    a: &Site,
    b: &Site,
    ann: &User,
    eve: &User,
    t: uuid::Uuid,
    blocks: usize,
) -> bool {
    let (sa, fb) = (
        a.chain(t, "stock").await.unwrap(),
        b.chain(t, "foil").await.unwrap(),
    );
    let (ga, gb) = (
        ann.balance(t).await.unwrap().0,
        eve.balance(t).await.unwrap().0,
    );
    sa.len() == blocks && sa == fb && ga == -gb
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sites_over_noise_and_a_killed_sidecar_loses_nothing() {
    let cl = Cluster::from_env();
    let (pa, pb) = (free_port(), free_port());
    let a = cl.site("t_relay_a", pa).await.unwrap();
    let b = cl.site("t_relay_b", pb).await.unwrap();
    let dir = chips_tests::scratch_dir("relay");
    let _sa = sidecar(&a, pa, &dir);
    let mut sb = sidecar(&b, pb, &dir);
    let ann = a.user("Ann", "ann").await.unwrap();
    let eve = b.user("Eve", "eve").await.unwrap();

    // A tally negotiated across the sites: ticket -> offer -> open, all by chipsd.
    let t = open_over_noise(&ann, &eve, 100_000, "over noise").await;

    // Chits both ways; the chains converge on both halves.
    eve.pay(t, 1_000, "").await.unwrap();
    eventually("Ann sees Eve's payment", || async {
        ann.balance(t).await.unwrap().0 == 1_000
    })
    .await;
    ann.pay(t, 300, "").await.unwrap();
    let inv = ann.invoice(t, 200, "").await.unwrap();
    eventually("the invoice reaches Eve", || async {
        eve.chit_state(t, inv).await.unwrap().is_some()
    })
    .await;
    eve.sign_invoice(t, inv).await.unwrap();
    eventually("three blocks on both halves", || {
        converged(&a, &b, &ann, &eve, t, 3)
    })
    .await;

    // Kill Eve's sidecar mid-stream: Eve keeps paying (her site queues), then it restarts.
    sb.kill9();
    for n in 1..=5 {
        eve.pay(t, n, "while down").await.unwrap();
    }
    ann.pay(t, 7, "to a dead peer").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    sb.restart().unwrap();
    eventually("everything arrives once the sidecar is back", || {
        converged(&a, &b, &ann, &eve, t, 9)
    })
    .await;
    assert_eq!(
        eve.balance(t).await.unwrap().0,
        -(1_000 - 300 + 200 + 15 - 7)
    );
    // a chain resync may still be on its way (chipsd sends one every few seconds until the
    // partner's acknowledgement is in): every message is delivered and acknowledged in the end
    for s in [&a, &b] {
        eventually("every message delivered and acknowledged", || async {
            s.undelivered().await.unwrap() == 0
        })
        .await;
    }
    assert!(a.audit_failures(t).await.unwrap().is_empty());
    assert!(b.audit_failures(t).await.unwrap().is_empty());
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn an_impostor_and_garbage_are_refused_before_sql() {
    use std::io::{Read, Write};
    let cl = Cluster::from_env();
    let port = free_port();
    let s = cl.site("t_relay_impostor", port).await.unwrap();
    let dir = chips_tests::scratch_dir("impostor");
    let _sc = sidecar(&s, port, &dir);

    // Mallory holds her own key but claims another agent's id in her hello.
    let mallory = chips_core::sign::KeyPair::from_phrase("mallory").seed();
    let claimed = chips_core::sign::KeyPair::from_phrase("someone trusted").public_b64();
    let mut hs = chips_core::peer::initiator(&mallory, &s.agent_id()).unwrap();
    let hello = serde_json::to_vec(&chips_core::peer::Hello {
        agent: claimed,
        version: 1,
    })
    .unwrap();
    let mut buf = vec![0u8; 65535];
    let n = hs.write_message(&hello, &mut buf).unwrap();
    let frame = chips_core::peer::frame(chips_core::peer::FrameType::Hello, &buf[..n]).unwrap();
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    sock.write_all(&(frame.len() as u32).to_be_bytes()).unwrap();
    sock.write_all(&frame).unwrap();
    let mut reply = Vec::new();
    let _ = sock.read_to_end(&mut reply);
    assert!(reply.is_empty(), "no accept frame for an impostor");

    // An oversized frame and plain garbage close only their own connections.
    for junk in [
        (100_000u32).to_be_bytes().to_vec(),
        b"\x00\x00\x00\x05Xhello".to_vec(),
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
    ] {
        let mut sock = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let _ = sock.write_all(&junk);
        let mut reply = Vec::new();
        let _ = sock.read_to_end(&mut reply);
        assert!(reply.is_empty());
    }
    // The sidecar still serves: a real session opens.
    let peer = chips_core::sign::KeyPair::from_phrase("honest peer").seed();
    let mut hs = chips_core::peer::initiator(&peer, &s.agent_id()).unwrap();
    let hello = serde_json::to_vec(&chips_core::peer::Hello {
        agent: chips_core::peer::agent_id(&peer),
        version: 1,
    })
    .unwrap();
    let n = hs.write_message(&hello, &mut buf).unwrap();
    let frame = chips_core::peer::frame(chips_core::peer::FrameType::Hello, &buf[..n]).unwrap();
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    sock.write_all(&(frame.len() as u32).to_be_bytes()).unwrap();
    sock.write_all(&frame).unwrap();
    let mut len = [0u8; 4];
    sock.read_exact(&mut len).unwrap();
    let mut accept = vec![0u8; u32::from_be_bytes(len) as usize];
    sock.read_exact(&mut accept).unwrap();
    assert_eq!(accept[0], b'A');
    hs.read_message(&accept[1..], &mut buf).unwrap();
    let n: i64 = s
        .admin
        .query_one("SELECT count(*) FROM chips.inbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "nothing reached SQL");
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_duplicated_reordered_frames_and_cut_connections_still_converge() {
    let cl = Cluster::from_env();
    // Each site advertises its proxy's port, so all traffic between the sidecars crosses one.
    let (pa, pb, xa, xb) = (free_port(), free_port(), free_port(), free_port());
    let a = cl.site("t_relay_faults_a", xa).await.unwrap();
    let b = cl.site("t_relay_faults_b", xb).await.unwrap();
    let proxy_a = FaultyProxy::start(xa, pa, 7, 8).await;
    let proxy_b = FaultyProxy::start(xb, pb, 11, 8).await;
    let dir = chips_tests::scratch_dir("faults");
    let _sa = sidecar(&a, pa, &dir);
    let _sb = sidecar(&b, pb, &dir);
    let ann = a.user("Ann", "ann").await.unwrap();
    let eve = b.user("Eve", "eve").await.unwrap();

    let t = open_over_noise(&ann, &eve, 1_000_000, "through a bad network").await;
    let mut expect = 0i64;
    for n in 1..=10i64 {
        eve.pay(t, 100 * n, "").await.unwrap();
        expect -= 100 * n;
    }
    eventually("Ann sees Eve's payments", || async {
        ann.balance(t).await.unwrap().0 == 5_500
    })
    .await;
    // Now both pay at the same time.
    for n in 1..=5i64 {
        ann.pay(t, n, "").await.unwrap();
        eve.pay(t, n, "").await.unwrap();
    }
    eventually("both chains agree despite the faults", || {
        converged(&a, &b, &ann, &eve, t, 20)
    })
    .await;
    assert_eq!(eve.balance(t).await.unwrap().0, expect);
    // Retries of messages that later ones already made redundant still go out (and are
    // answered `ignored` or `duplicate`): every outbox drains.
    for s in [&a, &b] {
        assert!(s.audit_failures(t).await.unwrap().is_empty());
        eventually("the outbox drains", || async {
            s.undelivered().await.unwrap() == 0
        })
        .await;
    }
    assert!(
        converged(&a, &b, &ann, &eve, t, 20).await,
        "still converged after the retries"
    );
    let injected = proxy_a.injected() + proxy_b.injected();
    assert!(
        injected > 0,
        "the proxies injected no fault: the test proves nothing"
    );
    eprintln!("faults injected: {injected}");
    std::fs::remove_dir_all(&dir).ok();
}

/// A message lost on the way is found out by a ping, not by the reply wait: through a proxy
/// that drops the message's frame, `Channel::reply` (what chipsd's sender waits with) gives
/// up long before its 60 s wait, because its ping after 0.5 s cannot be decrypted at the site
/// (its nonce follows the lost frame's) and the site closes the session. Without pings it
/// would wait the whole 60 s.
#[tokio::test]
async fn a_lost_message_is_found_out_by_a_ping_not_the_reply_wait() {
    let cl = Cluster::from_env();
    let (port, front) = (free_port(), free_port());
    let s = cl.site("t_relay_ping", front).await.unwrap();
    let ann = s.user("Ann", "ann").await.unwrap();
    let proxy = FaultyProxy::start(front, port, 3, 0).await;
    let dir = chips_tests::scratch_dir("ping");
    let _sc = sidecar(&s, port, &dir);
    let peer = chips_core::sign::KeyPair::from_phrase("a peer on a lossy link");
    let mut ch = session(&s, front, &peer).await;
    proxy.drop_requests(1);
    let lost = envelope(&s, &ann, &peer, "tally", "void", void_object());
    ch.send(&serde_json::to_vec(&lost).unwrap()).await.unwrap();
    let t = Instant::now();
    let r = ch.reply(Duration::from_secs(60)).await;
    assert!(r.is_err(), "no reply to a lost message: {r:?}");
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "found out by the ping, not the 60 s wait ({:?})",
        t.elapsed()
    );
    assert_eq!(
        proxy
            .counts()
            .dropped
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    // nothing reached SQL; the message goes again on a new session and is applied
    let mut ch = session(&s, front, &peer).await;
    ch.send(&serde_json::to_vec(&lost).unwrap()).await.unwrap();
    let reply: chips_core::peer::Reply =
        serde_json::from_slice(&ch.reply(Duration::from_secs(10)).await.unwrap()).unwrap();
    assert!(
        matches!(reply, chips_core::peer::Reply::Applied { ref result, .. } if result == "ignored"),
        "{reply:?}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// A Noise implementation we did not write (PyPI `noiseprotocol`, run by the interpreter in
/// `CHIPS_PYTHON`) completes a handshake with chipsd and exchanges a message.
#[tokio::test]
async fn a_foreign_noise_implementation_talks_to_chipsd() {
    let python = std::env::var("CHIPS_PYTHON").expect(
        "CHIPS_PYTHON names a python with the noiseprotocol package (scripts/test.sh sets it)",
    );
    let cl = Cluster::from_env();
    let port = free_port();
    let s = cl.site("t_relay_interop", port).await.unwrap();
    let _ann = s.user("Ann", "ann").await.unwrap();
    let dir = chips_tests::scratch_dir("interop");
    let _sc = sidecar(&s, port, &dir);
    let peer = chips_core::sign::KeyPair::from_phrase("a python peer");
    let out = Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/interop_noise.py"
        ))
        .args(["127.0.0.1", &port.to_string(), &s.agent_id()])
        .arg(chips_core::codec::b64url_encode(&peer.seed()))
        .args([peer.public_b64(), "ann".to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python peer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["id"], reply["sent_id"], "{reply}");
    assert_eq!(
        reply["result"], "ignored",
        "a void for a tally Ann never saw: {reply}"
    );
    let from: String = s
        .admin
        .query_one("SELECT from_agent FROM chips.inbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        from,
        peer.public_b64(),
        "applied under the key the handshake proved"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn a_silent_connection_is_closed_and_sigterm_stops_chipsd_cleanly() {
    use std::io::Read;
    let cl = Cluster::from_env();
    let port = free_port();
    let s = cl.site("t_relay_lifecycle", port).await.unwrap();
    let dir = chips_tests::scratch_dir("lifecycle");
    let mut sc = sidecar(&s, port, &dir);
    // Half-open: connect and say nothing; chipsd closes it after the handshake timeout (1.5 s).
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 16];
    let n = sock.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "closed without a word");
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "closed by the timeout, not left open"
    );
    // SIGTERM: a clean exit, promptly.
    let status = sc
        .stop(Duration::from_secs(12))
        .expect("chipsd did not stop on SIGTERM within 12 s");
    assert!(status.success(), "exit status {status}");
    std::fs::remove_dir_all(&dir).ok();
}

/// One database serving two agents, each with its own sidecar: each sends only its own agent's
/// messages, and nothing is sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sidecars_serve_one_database_without_sending_anything_twice() {
    let cl = Cluster::from_env();
    let (p1, p2, pb) = (free_port(), free_port(), free_port());
    let a = cl.site("t_relay_two_a", p1).await.unwrap();
    let b = cl.site("t_relay_two_b", pb).await.unwrap();
    let ann = a.user("Ann", "ann").await.unwrap(); // on the first agent
    let second = chips_core::sign::KeyPair::from_phrase("second agent of t_relay_two_a");
    a.admin
        .execute(
            "SELECT chips.agent_register($1, '127.0.0.1', $2, local => true)",
            &[&second.public_b64(), &(p2 as i32)],
        )
        .await
        .unwrap();
    let amy = a
        .user_on("Amy", "amy", Some(&second.public_b64()))
        .await
        .unwrap();
    let eve = b.user("Eve", "eve").await.unwrap();
    let dir = chips_tests::scratch_dir("two");
    let _s1 = sidecar(&a, p1, &dir);
    // the second sidecar of site a, with the second agent's key
    let key2 = dir.join("second.key");
    std::fs::write(&key2, chips_core::codec::b64url_encode(&second.seed())).unwrap();
    let args = [
        "run",
        "--db",
        &a.dsn,
        "--listen",
        &format!("127.0.0.1:{p2}"),
        "--key",
    ]
    .iter()
    .map(|x| x.to_string())
    .chain([key2.display().to_string(), "--poll-ms".into(), "100".into()])
    .collect();
    let _s2 = Sidecar::spawn(std::path::Path::new(CHIPSD), args, p2, "warn").unwrap();
    let _sb = sidecar(&b, pb, &dir);

    let mut tallies = vec![];
    for u in [&ann, &amy] {
        let t = u
            .draft("stock", json!({"limit": 50_000}), json!({}), "")
            .await
            .unwrap();
        eve.redeem(&u.ticket(t, false).await.unwrap())
            .await
            .unwrap();
        eventually("the ticket arrives", || state_is(u, t, "P.draft")).await;
        u.offer(t).await.unwrap();
        eventually("the offer arrives", || state_is(&eve, t, "P.offer")).await;
        eve.accept(t).await.unwrap();
        eventually("the tally opens", || state_is(u, t, "open")).await;
        eve.pay(t, 500, "").await.unwrap();
        tallies.push((u, t));
    }
    for (u, t) in &tallies {
        eventually("the payment arrives", || async {
            u.balance(*t).await.unwrap().0 == 500
        })
        .await;
        u.pay(*t, 100, "").await.unwrap();
    }
    for (u, t) in &tallies {
        eventually("chains agree", || converged(&a, &b, u, &eve, *t, 2)).await;
    }
    for s in [&a, &b] {
        eventually("the outbox drains", || async {
            s.undelivered().await.unwrap() == 0
        })
        .await;
    }
    // Nothing was sent twice: every message of site a was claimed once, and each agent's
    // messages left through that agent's sidecar (site b heard from both agents).
    let twice: i64 = a
        .admin
        .query_one("SELECT count(*) FROM chips.outbox WHERE attempts <> 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(twice, 0);
    let senders: i64 = b
        .admin
        .query_one("SELECT count(DISTINCT from_agent) FROM chips.inbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(senders, 2);
    std::fs::remove_dir_all(&dir).ok();
}

/// A flood of connections that never say anything: chipsd keeps at most `max_connections`
/// (refusing the rest at once, and dropping the silent ones at the handshake timeout), stays up,
/// and a real peer's message gets through once the flood is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_silent_connections_does_not_keep_a_real_peer_out() {
    let cl = Cluster::from_env();
    let (pa, pb) = (free_port(), free_port());
    let a = cl.site("t_relay_flood_a", pa).await.unwrap();
    let b = cl.site("t_relay_flood_b", pb).await.unwrap();
    let dir = chips_tests::scratch_dir("flood");
    let _sa = sidecar(&a, pa, &dir);
    let mut sb = sidecar_with(&b, pb, &dir, &["--max-connections", "4"]);
    let ann = a.user("Ann", "ann").await.unwrap();
    let eve = b.user("Eve", "eve").await.unwrap();
    let t = ann
        .draft("stock", json!({"limit": 1000}), json!({}), "")
        .await
        .unwrap();
    eve.redeem(&ann.ticket(t, false).await.unwrap())
        .await
        .unwrap();
    eventually("the ticket reaches Ann", || state_is(&ann, t, "P.draft")).await;

    // 200 silent connections to Eve's chipsd, then Ann's offer must cross to it
    let mut flood = Vec::new();
    for _ in 0..200 {
        if let Ok(s) = std::net::TcpStream::connect(("127.0.0.1", pb)) {
            flood.push(s);
        }
    }
    ann.offer(t).await.unwrap();
    eventually("the offer reaches Eve despite the flood", || {
        state_is(&eve, t, "P.offer")
    })
    .await;
    assert!(
        sb.child.try_wait().unwrap().is_none(),
        "chipsd is still running"
    );
    drop(flood);
    eve.accept(t).await.unwrap();
    eventually("the tally opens at Ann", || state_is(&ann, t, "open")).await;
    sb.stop(Duration::from_secs(5));
    std::fs::remove_dir_all(&dir).ok();
}

/// A peer that takes connections and never answers (a hung site, a dead link that still
/// accepts) holds up only the messages to it: payments to another peer go on while the sender
/// waits on it. The sender here waits up to ten minutes for an answer, so a sender that finished
/// every peer's sends before claiming again would hold the payments that long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_answers_holds_up_only_its_own_messages() {
    use tokio::io::AsyncReadExt;
    let cl = Cluster::from_env();
    let (pa, pb) = (free_port(), free_port());
    let a = cl.site("t_relay_hol_a", pa).await.unwrap();
    let b = cl.site("t_relay_hol_b", pb).await.unwrap();
    let dir = chips_tests::scratch_dir("relay_hol");
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole_port = i32::from(hole.local_addr().unwrap().port());
    let taken = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = taken.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = hole.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    let patient = |site: &Site, port: u16| {
        Sidecar::start(
            std::path::Path::new(CHIPSD),
            site,
            port,
            &dir,
            &["--poll-ms", "100", "--reply-timeout-ms", "600000"],
            "warn",
        )
        .unwrap()
    };
    let (_sa, _sb) = (patient(&a, pa), patient(&b, pb));
    let ann = a.user("Ann", "ann").await.unwrap();
    let eve = b.user("Eve", "eve").await.unwrap();
    let t = open_over_noise(&ann, &eve, 100_000, "beside a hung peer").await;

    // a message for the hung peer, queued before the payments
    let hung = chips_core::peer::agent_id(&[7u8; 32]);
    b.admin
        .execute(
            "SELECT chips._send(jsonb_build_object('agent', $1::text),
                                jsonb_build_object('agent', $2::text, 'host', '127.0.0.1', 'port', $3::int),
                                'chit', 'chains', '{}')",
            &[&b.agent_id(), &hung, &hole_port],
        )
        .await
        .unwrap();
    eventually("the sender is waiting on the hung peer", || async {
        taken.load(std::sync::atomic::Ordering::SeqCst) > 0
    })
    .await;
    for n in 1..=3 {
        eve.pay(t, n, "beside a hung peer").await.unwrap();
    }
    eventually("Ann has every payment", || async {
        ann.balance(t).await.unwrap().0 == 6
    })
    .await;
    let hung_queue: i64 = b
        .admin
        .query_one(
            "SELECT count(*) FROM chips.outbox WHERE to_agent = $1 AND delivered IS NULL",
            &[&hung],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(hung_queue, 1, "the hung peer's message is still waiting");
    std::fs::remove_dir_all(&dir).ok();
}

/// Route discovery has a lane of its own (`chips_core::peer::Lane`): a route query to a peer
/// does not wait behind that peer's ordered messages. Here Eve's payment to Ann is stuck at
/// Ann's site (a DBA holds Ann's tally row, so its `peer_receive` waits, and Eve's chipsd waits
/// for the reply); Eve's route check to Ann still goes out and is answered. With one queue per
/// peer the query would wait behind the payment and run out its life (`none`).
#[tokio::test]
async fn a_route_query_does_not_wait_behind_a_peers_stuck_message() {
    let cl = Cluster::from_env();
    let (pa, pb) = (free_port(), free_port());
    let a = cl.site("t_relay_lane_a", pa).await.unwrap();
    let b = cl.site("t_relay_lane_b", pb).await.unwrap();
    let dir = chips_tests::scratch_dir("relay_lane");
    let patient = |site: &Site, port: u16| {
        Sidecar::start(
            std::path::Path::new(CHIPSD),
            site,
            port,
            &dir,
            &["--poll-ms", "100", "--reply-timeout-ms", "600000"],
            "warn",
        )
        .unwrap()
    };
    let (_sa, _sb) = (patient(&a, pa), patient(&b, pb));
    let ann = a.user("Ann", "ann").await.unwrap();
    let eve = b.user("Eve", "eve").await.unwrap();
    let t = open_over_noise(&ann, &eve, 100_000, "a lane for routes").await;
    // Ann will be owed up to 1,000 through a lift (her trading variables, known at Eve's site)
    ann.settings(t, json!({"target": 1000, "bound": 1000}))
        .await
        .unwrap();
    eventually("Eve's site knows Ann's target", || async {
        let sets: serde_json::Value = b
            .admin
            .query_one(
                "SELECT part_sets FROM chips.tallies WHERE tally_uuid = $1",
                &[&t],
            )
            .await
            .unwrap()
            .get(0);
        sets["target"] == 1000
    })
    .await;

    // a DBA at Ann's site holds her half of the tally: Eve's payment waits there
    let (dba, conn) = tokio_postgres::connect(&a.dsn, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    dba.batch_execute("BEGIN").await.unwrap();
    dba.execute(
        "SELECT 1 FROM chips.tallies WHERE tally_uuid = $1 FOR UPDATE",
        &[&t],
    )
    .await
    .unwrap();
    eve.pay(t, 5, "stuck").await.unwrap();
    eventually("Eve's payment waits at Ann's site", || async {
        let waiting: i64 = a
            .admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        waiting > 0
    })
    .await;

    // Eve asks whether a route to Ann carries 10: a query to Ann's site, answered from there
    let to_ann = json!({"cuid": ann.cuid, "agent": a.agent_id()});
    let query: String = eve
        .db
        .query_one("SELECT query FROM chips.route_check($1, 10)", &[&to_ann])
        .await
        .unwrap()
        .get(0);
    eventually("the route check is answered", || async {
        let status: String = eve
            .db
            .query_one("SELECT status FROM chips.route_check_result($1)", &[&query])
            .await
            .unwrap()
            .get(0);
        assert_ne!(status, "none", "the query ran out waiting");
        status == "found"
    })
    .await;
    assert_eq!(
        ann.balance(t).await.unwrap().0,
        0,
        "the payment is still held up at Ann's site"
    );

    // once the DBA lets go, the payment goes through
    dba.batch_execute("ROLLBACK").await.unwrap();
    eventually("Ann has the payment", || async {
        ann.balance(t).await.unwrap().0 == 5
    })
    .await;
    std::fs::remove_dir_all(&dir).ok();
}

/// A Noise session to the site's chipsd on `port`, as the agent `peer`.
async fn session(
    s: &Site,
    port: u16,
    peer: &chips_core::sign::KeyPair,
) -> chipsd::channel::Channel {
    chipsd::channel::Channel::connect(
        &format!("127.0.0.1:{port}"),
        &peer.seed(),
        &s.agent_id(),
        Duration::from_secs(10),
    )
    .await
    .unwrap()
}

/// A peer message from `peer` to `to` at site `s`.
fn envelope(
    s: &Site,
    to: &User,
    peer: &chips_core::sign::KeyPair,
    target: &str,
    action: &str,
    object: serde_json::Value,
) -> serde_json::Value {
    json!({
        "id": uuid::Uuid::new_v4().to_string(),
        "target": target,
        "action": action,
        "from": {"cuid": "peer", "agent": peer.public_b64()},
        "to": {"cuid": to.cuid, "agent": s.agent_id()},
        "object": object,
    })
}

/// A tally void for a tally nobody has: applied, answered `ignored`.
fn void_object() -> serde_json::Value {
    json!({"uuid": uuid::Uuid::new_v4(), "revision": 1})
}

/// A sender may send messages ahead of their replies (pipelining) because a site ends the
/// session at the first message it refuses: what was sent after it is not applied, so a peer's
/// order holds. Three messages go out back to back; the second is refused; the third is not
/// applied, and the session is closed.
#[tokio::test]
async fn a_session_ends_at_a_refused_message_so_messages_sent_ahead_keep_their_order() {
    let cl = Cluster::from_env();
    let port = free_port();
    let s = cl.site("t_relay_ahead", port).await.unwrap();
    let ann = s.user("Ann", "ann").await.unwrap();
    let dir = chips_tests::scratch_dir("ahead");
    let _sc = sidecar(&s, port, &dir);
    let peer = chips_core::sign::KeyPair::from_phrase("a pipelining peer");
    let mut ch = session(&s, port, &peer).await;
    assert!(
        ch.welcome.ends_at_refusal && ch.welcome.pings,
        "the site says it ends a session at a refusal and answers pings"
    );
    // a ping (an empty message) is answered at once with an empty message, nothing applied
    ch.send(&[]).await.unwrap();
    assert_eq!(
        ch.recv(Duration::from_secs(10)).await.unwrap(),
        Some(vec![])
    );
    let void = || envelope(&s, &ann, &peer, "tally", "void", void_object());
    // a route query without its fields: refused with 22023
    let bad = envelope(&s, &ann, &peer, "lift", "query", json!({"query": "q"}));
    let (first, third) = (void(), void());
    for m in [&first, &bad, &third] {
        ch.send(&serde_json::to_vec(m).unwrap()).await.unwrap();
    }
    let reply = |b: Vec<u8>| serde_json::from_slice::<chips_core::peer::Reply>(&b).unwrap();
    let r1 = reply(ch.recv(Duration::from_secs(10)).await.unwrap().unwrap());
    assert!(
        matches!(r1, chips_core::peer::Reply::Applied { ref result, .. } if result == "ignored"),
        "{r1:?}"
    );
    let r2 = reply(ch.recv(Duration::from_secs(10)).await.unwrap().unwrap());
    assert!(
        matches!(r2, chips_core::peer::Reply::Refused { ref sqlstate, .. } if sqlstate == "22023"),
        "{r2:?}"
    );
    assert_eq!(r2.id(), bad["id"].as_str());
    assert!(
        ch.recv(Duration::from_secs(10)).await.unwrap().is_none(),
        "the session ends after the refusal's reply"
    );
    let got: Vec<String> = s
        .admin
        .query(
            "SELECT msg_id::text FROM chips.inbox ORDER BY received",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        got,
        vec![first["id"].as_str().unwrap().to_string()],
        "the message sent after the refused one was not applied"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// Peer sessions share the site's database connections: a session that opens after another
/// closed applies its message on a connection the site already had (on a lossy link sessions
/// break every few frames; each used to cost a new database connection).
#[tokio::test]
async fn peer_sessions_reuse_the_sites_database_connections() {
    let cl = Cluster::from_env();
    let port = free_port();
    let s = cl.site("t_relay_pool", port).await.unwrap();
    let ann = s.user("Ann", "ann").await.unwrap();
    let dir = chips_tests::scratch_dir("pool");
    let _sc = sidecar(&s, port, &dir);
    let peer = chips_core::sign::KeyPair::from_phrase("a returning peer");
    let backends = || async {
        let mut pids: Vec<i32> = s
            .admin
            .query(
                "SELECT pid FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        pids.sort();
        pids
    };
    // (the sidecar's own connections are open once it listens)
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut seen = backends().await;
    for round in 0..3 {
        let mut ch = session(&s, port, &peer).await;
        let msg = envelope(&s, &ann, &peer, "tally", "void", void_object());
        ch.send(&serde_json::to_vec(&msg).unwrap()).await.unwrap();
        let reply = ch.recv(Duration::from_secs(10)).await.unwrap().unwrap();
        let reply: chips_core::peer::Reply = serde_json::from_slice(&reply).unwrap();
        assert!(
            matches!(reply, chips_core::peer::Reply::Applied { .. }),
            "{reply:?}"
        );
        let now = backends().await;
        if round == 0 {
            let added: Vec<&i32> = now.iter().filter(|p| !seen.contains(p)).collect();
            assert_eq!(
                added.len(),
                1,
                "one connection applied the message: {seen:?} -> {now:?}"
            );
        } else {
            assert_eq!(now, seen, "session {round} opened no database connection");
        }
        seen = now;
        drop(ch);
    }
    std::fs::remove_dir_all(&dir).ok();
}
