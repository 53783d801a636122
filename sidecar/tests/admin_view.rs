//! The admin view in a real browser: headless Chromium (driven over the DevTools protocol) opens
//! the admin link chipsd's `admin-ticket` prints, logs in, sees the site's users and tallies as a
//! graph, adds a user and gets a login ticket with its QR code; a screenshot is saved to
//! target/admin-view.png. The admin calls themselves are checked by the database: a used ticket,
//! a session-less call and a session passed by the client are refused.

mod browser;

use std::process::Command;
use std::time::Duration;

use browser::chromium;
use chips_tests::{free_port, relay_all, Cluster, Sidecar};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const CHIPSD: &str = env!("CARGO_BIN_EXE_chipsd");

#[tokio::test]
async fn the_admin_view_logs_in_draws_the_network_and_adds_a_user() {
    let cl = Cluster::from_env();
    let a = cl.site("t_admin_a", free_port()).await.unwrap();
    let b = cl.site("t_admin_b", free_port()).await.unwrap();
    let ann = a.user("Ann Baker", "ann").await.unwrap();
    let bob = a.user("Bob Miller", "bob").await.unwrap();
    let eve = b.user("Eve Grocer", "eve").await.unwrap();
    let local = ann.open_with(&bob, 50_000, &[]).await.unwrap();
    let cross = ann.open_with(&eve, 50_000, &[&a, &b]).await.unwrap();
    bob.pay(local, 12_000, "bread").await.unwrap();
    eve.pay(cross, 3_000, "cakes").await.unwrap();
    relay_all(&[&a, &b]).await.unwrap();

    let dir = chips_tests::scratch_dir("admin-view");
    let gw_port = free_port();
    let gw_dsn = a.gateway_dsn().await.unwrap();
    let url = format!("http://127.0.0.1:{gw_port}");
    let peer_port = free_port();
    let _chipsd = Sidecar::start(
        std::path::Path::new(CHIPSD),
        &a,
        peer_port,
        &dir,
        &[
            "--gateway-listen",
            &format!("127.0.0.1:{gw_port}"),
            "--gateway-db",
            &gw_dsn,
        ],
        "warn",
    )
    .unwrap();
    assert!(
        chips_tests::wait_port(gw_port, Duration::from_secs(20)),
        "the gateway listens"
    );

    // a clears its own users in rounds it coordinates (its chipsd carries the messages to
    // itself): one round, good, before the page opens
    a.admin
        .execute(
            "SELECT * FROM chips.round_configure(coordinate => true, coordinator => $1)",
            &[&format!("{}@127.0.0.1:{peer_port}", a.agent_id())],
        )
        .await
        .unwrap();
    assert!(
        chips_tests::wait_port(peer_port, Duration::from_secs(20)),
        "chipsd listens for peers"
    );
    let mut joined = false;
    for _ in 0..100 {
        let n: i64 = a
            .admin
            .query_one("SELECT count(*) FROM chips.round_members", &[])
            .await
            .unwrap()
            .get(0);
        if n == 1 {
            joined = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(joined, "a joins its own rounds");
    let round: uuid::Uuid = a
        .admin
        .query_one("SELECT chips.round_open()", &[])
        .await
        .unwrap()
        .get(0);
    let mut status = String::new();
    for _ in 0..100 {
        status = a
            .admin
            .query_one(
                "SELECT status FROM chips.rounds WHERE round_uuid = $1",
                &[&round],
            )
            .await
            .unwrap()
            .get(0);
        if status == "good" || status == "void" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, "good");

    // the admin link, as a DBA gets it
    let out = Command::new(CHIPSD)
        .args(["admin-ticket", "--db", &a.dsn, "--url", &url, "--no-qr"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let link = stdout.lines().next().unwrap().to_string();
    assert!(link.starts_with(&format!("{url}/admin#token=")), "{stdout}");

    let browser = chromium();
    let mut page = browser.open(&link).await;

    // logged in: the graph shows both users here, Eve at the other site, and three tallies' arrows
    page.wait_for("document.getElementById('main').hidden === false")
        .await;
    page.wait_for("document.querySelectorAll('#graph circle.user').length === 2")
        .await;
    assert_eq!(
        page.eval("document.querySelectorAll('#graph circle.partner').length")
            .await,
        json!(1)
    );
    assert_eq!(
        page.eval("document.querySelectorAll('#graph line.tally').length")
            .await,
        json!(2)
    );
    let users = page
        .eval("document.getElementById('users').innerText")
        .await;
    assert!(users.as_str().unwrap().contains("Bob Miller"), "{users}");
    let rounds = page
        .eval("document.getElementById('roundset').textContent + ' | ' + document.getElementById('rounds').innerText")
        .await;
    let rounds = rounds.as_str().unwrap();
    assert!(
        rounds.contains("coordinates rounds every 00:01:00 for 1 site(s)")
            && rounds.contains("good"),
        "{rounds}"
    );
    assert_eq!(
        page.eval("location.hash").await,
        json!(""),
        "the used ticket leaves the address bar"
    );

    // click a person: their tallies (with a user here and with Eve at the other site) and
    // their recent lifts; their node and tallies stand out
    let circle = format!(
        "document.querySelector('#graph circle[data-key=\"local:{}\"]')",
        ann.ent
    );
    page.eval(&format!(
        "{circle}.dispatchEvent(new MouseEvent('click', {{bubbles: true}})); true"
    ))
    .await;
    page.wait_for("document.getElementById('person').hidden === false")
        .await;
    let person = page
        .eval("document.getElementById('person').innerText")
        .await;
    let person = person.as_str().unwrap();
    assert!(
        person.contains("Ann Baker")
            && person.contains("Bob Miller")
            && person.contains("12.000")
            && person.contains("Eve Grocer")
            && person.contains("3.000"),
        "{person}"
    );
    assert_eq!(
        page.eval("document.querySelectorAll('#graph line.tally.chosen').length")
            .await,
        json!(2)
    );
    // zoom with the button and the wheel, pan by dragging: the drawing's transform follows,
    // and survives the view's refresh (every 2 s), as does the person shown
    let transform = "document.getElementById('view').getAttribute('transform')";
    page.eval("document.getElementById('zin').click(); true")
        .await;
    assert_eq!(
        page.eval(transform).await,
        json!("translate(-102.5,-80) scale(1.25)")
    );
    page.eval(
        "(() => { const r = document.getElementById('graph').getBoundingClientRect();          document.getElementById('graph').dispatchEvent(new WheelEvent('wheel',            {deltaY: -100, clientX: r.left, clientY: r.top, bubbles: true, cancelable: true})); return true; })()",
    )
    .await;
    page.eval(
        "(() => { const g = document.getElementById('graph'), r = g.getBoundingClientRect();          g.dispatchEvent(new PointerEvent('pointerdown', {clientX: r.left + 10, clientY: r.top + 10, bubbles: true}));          window.dispatchEvent(new PointerEvent('pointermove', {clientX: r.left + 60, clientY: r.top + 30}));          window.dispatchEvent(new PointerEvent('pointerup', {})); return true; })()",
    )
    .await;
    let moved = page.eval(transform).await;
    assert!(
        moved.as_str().unwrap().ends_with("scale(1.5)")
            && moved != json!("translate(-123,-96) scale(1.5)"),
        "zoomed at the corner and dragged: {moved}"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(page.eval(transform).await, moved, "kept across a refresh");
    page.wait_for("document.getElementById('person').hidden === false")
        .await;
    page.eval("document.getElementById('zreset').click(); true")
        .await;
    assert_eq!(page.eval(transform).await, json!("translate(0,0) scale(1)"));
    page.eval(&format!(
        "{circle}.dispatchEvent(new MouseEvent('click', {{bubbles: true}})); true"
    ))
    .await;
    page.wait_for("document.getElementById('person').hidden === true")
        .await;

    // add a user: the database has them, the graph and table show them, a ticket with a QR code
    page.eval(
        "document.getElementById('newname').value = 'Zoe Added'; \
         document.getElementById('add').click(); true",
    )
    .await;
    page.wait_for("document.getElementById('addmsg').textContent.startsWith('added Zoe Added')")
        .await;
    page.wait_for("document.querySelectorAll('#graph circle.user').length === 3")
        .await;
    page.wait_for("document.querySelector('#tqr svg') !== null")
        .await;
    let link = page
        .eval("document.getElementById('tlink').textContent")
        .await;
    assert!(
        link.as_str()
            .unwrap()
            .starts_with(&format!("{url}/login?ent=p")),
        "{link}"
    );
    let n: i64 = a
        .admin
        .query_one(
            "SELECT count(*) FROM chips.users WHERE name = 'Zoe Added'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);

    page.screenshot("admin-view.png").await;
    drop(browser);

    // the same ticket a second time, a call without a session, a session from the client
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{gw_port}/ws"))
        .await
        .unwrap();
    let token = stdout
        .lines()
        .next()
        .unwrap()
        .split("token=")
        .nth(1)
        .unwrap();
    for (req, code) in [
        (
            json!({"method": "admin.login", "params": {"token": token}}),
            "28000",
        ),
        (json!({"method": "admin.overview"}), "28000"),
        (
            json!({"method": "admin.qr", "params": {"text": "x"}}),
            "28000",
        ),
    ] {
        let mut req = req;
        req["jsonrpc"] = json!("2.0");
        req["id"] = json!(1);
        ws.send(Message::Text(req.to_string().into()))
            .await
            .unwrap();
        let Some(Ok(Message::Text(t))) = ws.next().await else {
            panic!("no answer")
        };
        let v: Value = serde_json::from_str(t.as_str()).unwrap();
        assert_eq!(v["error"]["data"]["sqlstate"], json!(code), "{req}: {v}");
    }
    let ticket: Value = a
        .admin
        .query_one("SELECT chips.admin_ticket()", &[])
        .await
        .unwrap()
        .get(0);
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "admin.login", "params": {"token": ticket["token"]}});
    ws.send(Message::Text(call.to_string().into()))
        .await
        .unwrap();
    let _ = ws.next().await;
    let call = json!({"jsonrpc": "2.0", "id": 3, "method": "admin.overview", "params": {"session": "forged"}});
    ws.send(Message::Text(call.to_string().into()))
        .await
        .unwrap();
    let Some(Ok(Message::Text(t))) = ws.next().await else {
        panic!("no answer")
    };
    let v: Value = serde_json::from_str(t.as_str()).unwrap();
    assert_eq!(v["error"]["code"], json!(-32602), "{v}");
    let _ = std::fs::remove_dir_all(&dir);
}
