//! The user app in a real browser (headless Chromium over the DevTools protocol), as a person
//! uses it: they open the login link `chipsd login-ticket` printed; the page makes its key,
//! registers it with the ticket and logs in; they see their tally with its balance and limits and
//! a request to pay, pay on the tally, see the payment's event arrive, decline the request, see a
//! refusal in the database's words, reload and stay logged in, and get a payment live. A second
//! person whose signing key is the browser's key pays with a chit signed in the page. Screenshot:
//! target/user-app.png.

mod browser;

use std::process::Command;
use std::time::Duration;

use browser::{chromium, Page};
use chips_tests::{free_port, Cluster, Sidecar, Site};
use serde_json::{json, Value};

const CHIPSD: &str = env!("CARGO_BIN_EXE_chipsd");

/// A login link for `ent`, as a DBA gets it.
fn login_link(site: &Site, ent: &str, url: &str) -> String {
    let out = Command::new(CHIPSD)
        .args([
            "login-ticket",
            "--db",
            &site.dsn,
            "--ent",
            ent,
            "--url",
            url,
            "--no-qr",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let link = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap()
        .to_string();
    assert!(
        link.starts_with(&format!("{url}/login?ent={ent}&token=")),
        "{link}"
    );
    link
}

/// Types into the inputs (`id` = value) and clicks `button`.
async fn fill_and_click(page: &mut Page, fields: &[(&str, &str)], button: &str) {
    let mut js = String::new();
    for (id, v) in fields {
        js += &format!(
            "document.getElementById({}).value = {};",
            json!(id),
            json!(v)
        );
    }
    js += &format!("document.getElementById({}).click(); true", json!(button));
    page.eval(&js).await;
}

async fn text_of(page: &mut Page, id: &str) -> String {
    page.eval(&format!("document.getElementById('{id}').innerText"))
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// A user's open tally with Bob (the vendor, granting `limit`), for a user whose site signs
/// for them (custodial) or with `signature` over the tally document.
async fn open_with_bob(
    site: &Site,
    bob: &chips_tests::User,
    ent: &str,
    limit: i64,
    signer: Option<&mut Page>,
) -> uuid::Uuid {
    let t = bob
        .draft("stock", json!({"limit": limit}), json!({}), "bakery")
        .await
        .unwrap();
    let ticket = bob.ticket(t, false).await.unwrap();
    let me = site.connect_as(ent).await.unwrap();
    me.execute("SELECT chips.ticket_redeem($1)", &[&ticket])
        .await
        .unwrap();
    bob.offer(t).await.unwrap();
    let sig: Option<String> = match signer {
        None => None,
        Some(page) => {
            let doc: Value = me
                .query_one("SELECT chips.tally_json($1)", &[&t])
                .await
                .unwrap()
                .get(0);
            // signed in the browser, with the key it keeps (never exported)
            let s = page.eval(&format!("chipsApp.sign({doc})")).await;
            Some(s.as_str().unwrap().to_string())
        }
    };
    let state: String = me
        .query_one("SELECT chips.tally_accept($1, $2)", &[&t, &sig])
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "open");
    t
}

#[tokio::test]
async fn a_person_logs_in_from_the_link_pays_declines_and_stays_logged_in() {
    let cl = Cluster::from_env();
    let a = cl.site("t_user_app", free_port()).await.unwrap();
    let bob = a.user("Bob Miller", "bob").await.unwrap();
    let ann = a.custodial_user("Ann Baker", "ann").await.unwrap();
    let t = open_with_bob(&a, &bob, &ann, 50_000, None).await;
    let request = bob.invoice(t, 2_000, "delivery").await.unwrap();

    let dir = chips_tests::scratch_dir("user-app");
    let gw_port = free_port();
    let gw_dsn = a.gateway_dsn().await.unwrap();
    let url = format!("http://127.0.0.1:{gw_port}");
    let _chipsd = Sidecar::start(
        std::path::Path::new(CHIPSD),
        &a,
        free_port(),
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

    // the link logs Ann in: her tally with Bob, its limits, and Bob's request
    let browser = chromium();
    let mut page = browser.open(&login_link(&a, &ann, &url)).await;
    page.wait_for("document.getElementById('main').hidden === false")
        .await;
    assert_eq!(
        page.eval("location.pathname + location.search").await,
        json!("/app"),
        "the used ticket leaves the address bar"
    );
    assert!(text_of(&mut page, "who").await.contains("Ann Baker"));
    let tallies = text_of(&mut page, "tallies").await;
    assert!(
        tallies.contains("Bob Miller") && tallies.contains("open") && tallies.contains("50.000"),
        "{tallies}"
    );
    let waiting = text_of(&mut page, "invoices").await;
    assert!(
        waiting.contains("2.000") && waiting.contains("delivery"),
        "{waiting}"
    );

    // she pays 1.5 CHIPs on it; the payment's event arrives on her feed
    fill_and_click(&mut page, &[("punits", "1.5"), ("pmemo", "coffee")], "pay").await;
    page.wait_for("document.getElementById('msg').textContent.startsWith('paid 1.500')")
        .await;
    assert_eq!(bob.balance(t).await.unwrap().0, 1_500);
    page.wait_for("document.getElementById('activity').innerText.includes('coffee')")
        .await;
    page.wait_for("document.getElementById('tallies').innerText.includes('-1.500')")
        .await;

    // she declines Bob's request: void in the database, gone from the page
    page.eval(
        "[...document.querySelectorAll('#invoices button')].find(b => b.textContent === 'Decline').click(); true",
    )
    .await;
    page.wait_for("document.getElementById('msg').textContent.startsWith('declined')")
        .await;
    let st: String = a
        .admin
        .query_one(
            "SELECT string_agg(DISTINCT status, ',') FROM chips.chits WHERE chit_uuid = $1",
            &[&request],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(st, "void");
    assert_eq!(text_of(&mut page, "invoices").await.trim(), "none");

    // Bob asks again; she pays this one from the page
    let second = bob.invoice(t, 700, "flour").await.unwrap();
    page.wait_for("document.getElementById('invoices').innerText.includes('flour')")
        .await;
    page.eval(
        "[...document.querySelectorAll('#invoices button')].find(b => b.textContent === 'Pay it').click(); true",
    )
    .await;
    page.wait_for("document.getElementById('msg').textContent.startsWith('paid 0.700')")
        .await;
    assert_eq!(bob.balance(t).await.unwrap().0, 2_200);
    let st: String = a
        .admin
        .query_one(
            "SELECT string_agg(DISTINCT status, ',') FROM chips.chits WHERE chit_uuid = $1",
            &[&second],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(st, "good");

    // she asks Bob to pay her: a request waiting for his signature
    fill_and_click(
        &mut page,
        &[("punits", "0.3"), ("pmemo", "returned cups")],
        "request",
    )
    .await;
    page.wait_for(
        "document.getElementById('msg').textContent.startsWith('asked Bob Miller for 0.300')",
    )
    .await;
    let asked: i64 = a
        .admin
        .query_one(
            "SELECT count(*) FROM chips.chits_v WHERE ent = $1 AND memo = 'returned cups' AND state = 'L.pend'",
            &[&bob.ent],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(asked, 1, "Bob has her request to sign");

    // a route check to Bob's address before paying it there (answered at once: he is at this
    // site): a payment to an address is a lift, and Bob takes none (his lift target is 0)
    fill_and_click(
        &mut page,
        &[("acuid", "bob"), ("aagent", &a.agent_id()), ("aunits", "1")],
        "acheck",
    )
    .await;
    page.wait_for(
        "document.getElementById('amsg').textContent === 'no single route carries 1.000 CHIPs now'",
    )
    .await;

    // past her credit limit: refused, in the database's words, and nothing changes
    fill_and_click(&mut page, &[("punits", "999"), ("pmemo", "")], "pay").await;
    page.wait_for("document.getElementById('msg').textContent.includes('(23514)')")
        .await;
    assert!(text_of(&mut page, "msg").await.contains("credit limit"));
    assert_eq!(bob.balance(t).await.unwrap().0, 2_200);

    // a reload logs her in again with the key the browser kept; a payment to her shows live
    page.reload().await;
    page.wait_for("document.getElementById('status').textContent === 'live'")
        .await;
    assert!(text_of(&mut page, "who").await.contains("Ann Baker"));
    let before = page
        .eval("document.querySelectorAll('#activity li').length")
        .await;
    assert_eq!(before, json!(0), "a reload starts from the kept cursor");
    bob.pay(t, 250, "change").await.unwrap();
    page.wait_for("document.getElementById('activity').innerText.includes('change')")
        .await;
    page.wait_for("document.getElementById('tallies').innerText.includes('-1.950')")
        .await;
    page.screenshot("user-app.png").await;

    // a person whose signing key is this browser's: the page signs her chits
    let dee: String = a
        .admin
        .query_one("SELECT chips.user_create('Dee Potter', cuid => 'dee')", &[])
        .await
        .unwrap()
        .get(0);
    page.goto(&login_link(&a, &dee, &url)).await;
    page.wait_for(&format!(
        "document.getElementById('status').textContent === 'live' && chipsApp.ent === {}",
        json!(dee)
    ))
    .await;
    let key = page.eval("chipsApp.key.pub").await;
    a.admin
        .execute(
            "SELECT chips.user_set_key($1, $2)",
            &[&dee, &key.as_str().unwrap()],
        )
        .await
        .unwrap();
    let t2 = open_with_bob(&a, &bob, &dee, 10_000, Some(&mut page)).await;
    page.reload().await;
    page.wait_for(
        "document.getElementById('status').textContent === 'live' && chipsApp.deviceSigns",
    )
    .await;
    page.wait_for("document.getElementById('ptally').options.length === 1")
        .await;
    fill_and_click(&mut page, &[("punits", "0.5"), ("pmemo", "cups")], "pay").await;
    page.wait_for("document.getElementById('msg').textContent.startsWith('paid 0.500')")
        .await;
    assert_eq!(bob.balance(t2).await.unwrap().0, 500);
    let signed: bool = a
        .admin
        .query_one(
            "SELECT signature IS NOT NULL AND chips.verify_signature($2, doc, signature)
             FROM chips.chits_v WHERE tally_uuid = $1 AND memo = 'cups' AND ent = $3",
            &[&t2, &key.as_str().unwrap(), &dee],
        )
        .await
        .unwrap()
        .get(0);
    assert!(signed, "Dee's chit carries the browser's signature");
    drop(browser);
    let _ = std::fs::remove_dir_all(&dir);
}
