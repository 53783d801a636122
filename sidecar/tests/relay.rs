//! Two sites, each its own database and its own chipsd on loopback: a tally and chits end to
//! end over Noise; a sidecar killed (SIGKILL) mid-stream and restarted loses nothing; an
//! impostor is refused before anything reaches SQL.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chips_tests::{Cluster, Site, User};
use serde_json::json;

struct Sidecar {
    child: Child,
    args: Vec<String>,
}

impl Sidecar {
    fn start(site: &Site, port: u16, dir: &std::path::Path) -> Sidecar {
        let key = dir.join(format!("{}.key", site.db));
        std::fs::write(&key, chips_core::codec::b64url_encode(&site.agent.seed())).unwrap();
        let args = vec![
            "run".into(),
            "--db".into(),
            site.dsn.clone(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--key".into(),
            key.display().to_string(),
            "--poll-ms".into(),
            "100".into(),
            "--sync-secs".into(),
            "2".into(),
        ];
        let mut s = Sidecar {
            child: spawn(&args),
            args,
        };
        s.wait_listening(port);
        s
    }

    fn wait_listening(&mut self, port: u16) {
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "chipsd did not start listening"
            );
            assert!(self.child.try_wait().unwrap().is_none(), "chipsd exited");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill9(&mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }

    fn restart(&mut self, port: u16) {
        self.child = spawn(&self.args);
        self.wait_listening(port);
    }
}

fn spawn(args: &[String]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_chipsd"))
        .args(args)
        .env("CHIPSD_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (up to 30 s) until `f` holds.
async fn eventually<F, Fut>(what: &str, f: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t = Instant::now();
    while !f().await {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn state_is(u: &User, t: uuid::Uuid, want: &str) -> bool {
    u.state(t).await.unwrap().as_deref() == Some(want)
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
    let dir = std::env::temp_dir().join(format!("chipsd-relay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _sa = Sidecar::start(&a, pa, &dir);
    let mut sb = Sidecar::start(&b, pb, &dir);
    let ann = a.user("Ann", "ann").await.unwrap();
    let eve = b.user("Eve", "eve").await.unwrap();

    // A tally negotiated across the sites: ticket -> offer -> open, all by chipsd.
    let t = ann
        .draft("stock", json!({"limit": 100_000}), json!({}), "over noise")
        .await
        .unwrap();
    assert_eq!(
        eve.redeem(&ann.ticket(t, false).await.unwrap())
            .await
            .unwrap(),
        None
    );
    eventually("the ticket reaches Ann", || state_is(&ann, t, "P.draft")).await;
    ann.offer(t).await.unwrap();
    eventually("the offer reaches Eve", || state_is(&eve, t, "P.offer")).await;
    eve.accept(t).await.unwrap();
    eventually("the tally opens at Ann", || state_is(&ann, t, "open")).await;

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
    sb.restart(pb);
    eventually("everything arrives once the sidecar is back", || {
        converged(&a, &b, &ann, &eve, t, 9)
    })
    .await;
    assert_eq!(
        eve.balance(t).await.unwrap().0,
        -(1_000 - 300 + 200 + 15 - 7)
    );
    let pending: i64 = b
        .admin
        .query_one(
            "SELECT count(*) FROM chips.outbox WHERE delivered IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(pending, 0, "every message delivered and acknowledged");
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
    let dir = std::env::temp_dir().join(format!("chipsd-impostor-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _sc = Sidecar::start(&s, port, &dir);

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
