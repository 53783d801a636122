//! The main job: a small chips network on a private cluster, driven as real clients would drive
//! it, printing what happens.
//!
//! Today: two sites, each its own database with its own agent. People at site `alpha` open
//! tallies among themselves through tickets, offers, counter-offers and acceptances; one person
//! at site `beta` opens a tally with a vendor at `alpha` through peer messages. Then they pay,
//! invoice and change settings with signed chits, locally and across the sites. Each site has
//! its own `chipsd` on loopback, which carries the peer traffic over Noise.

use std::process::ExitCode;

use std::time::{Duration, Instant};

use chips_tests::{Cluster, Site, User};
use clap::Parser;
use serde_json::json;
use uuid::Uuid;

#[derive(Parser)]
#[command(about = "Run the chips demo network and print what happens")]
struct Args {
    /// Superuser connection to the cluster (without dbname).
    #[arg(
        long,
        env = "CHIPS_DEMO_DSN",
        default_value = "host=127.0.0.1 port=54320 user=postgres"
    )]
    dsn: String,
    /// Prefix of the demo's database names (re-created on every run).
    #[arg(long, default_value = "chips_demo")]
    prefix: String,
    /// The chipsd binary (default: the one built next to this program).
    #[arg(long, env = "CHIPSD_BIN")]
    chipsd: Option<std::path::PathBuf>,
    /// Random payments in the trading phase.
    #[arg(long, default_value_t = 40)]
    payments: usize,
    /// Seed of the trading phase's choices.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

struct Demo {
    cluster: Cluster,
    chipsd: std::path::PathBuf,
    keys: std::path::PathBuf,
    sidecars: Vec<chips_tests::Sidecar>,
    opened: Vec<(String, String, String, Uuid)>,
}

impl Demo {
    /// A site: its database, its agent, and its chipsd listening on a free port.
    async fn site(&mut self, name: &str) -> Result<Site, String> {
        let port = chips_tests::free_port();
        let s = self
            .cluster
            .site(name, port)
            .await
            .map_err(|e| format!("creating site {name}: {e}"))?;
        let sidecar = chips_tests::Sidecar::start(
            &self.chipsd,
            &s,
            port,
            &self.keys,
            &["--poll-ms", "100"],
            "error",
        )
        .map_err(|e| format!("chipsd of {name} ({}): {e}", self.chipsd.display()))?;
        self.sidecars.push(sidecar);
        println!(
            "site {name:<16} agent {}  chipsd on 127.0.0.1:{port}",
            s.agent_id()
        );
        Ok(s)
    }

    /// Waits until the sidecars have delivered every message of every site.
    async fn relay(&mut self, sites: &[&Site]) -> Result<(), String> {
        let t = Instant::now();
        let mut quiet = 0;
        while quiet < 3 {
            let mut pending = 0i64;
            for s in sites {
                pending += s.undelivered().await.map_err(|e| e.to_string())?;
            }
            quiet = if pending == 0 { quiet + 1 } else { 0 };
            if t.elapsed() > Duration::from_secs(30) {
                return Err(format!(
                    "{pending} peer message(s) still undelivered after 30 s"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// `vendor` drafts a tally with a credit limit, invites `client` with a ticket, signs and
    /// offers it; `client` signs and accepts.
    async fn open(
        &mut self,
        vendor: &User,
        client: &User,
        limit: i64,
        memo: &str,
        sites: &[&Site],
    ) -> Result<Uuid, String> {
        let e = |e: tokio_postgres::Error| chips_tests::errmsg(&e);
        let t = vendor
            .draft("stock", json!({"limit": limit}), json!({}), memo)
            .await
            .map_err(e)?;
        let ticket = vendor.ticket(t, false).await.map_err(e)?;
        println!(
            "  {} drafts a tally for {memo:?} (credit limit {}) and gives {} a ticket",
            vendor.name,
            chips(limit),
            client.name
        );
        client.redeem(&ticket).await.map_err(e)?;
        self.relay(sites).await?;
        let st = vendor.offer(t).await.map_err(e)?;
        println!("  {} signs and offers it: {st}", vendor.name);
        self.relay(sites).await?;
        let st = client.accept(t).await.map_err(e)?;
        println!("  {} signs and accepts it: {st}", client.name);
        self.relay(sites).await?;
        self.opened
            .push((vendor.name.clone(), client.name.clone(), memo.into(), t));
        Ok(t)
    }
}

fn chips(milli: i64) -> String {
    let sign = if milli < 0 { "-" } else { "" };
    let m = milli.unsigned_abs();
    format!("{sign}{}.{:03} CHIP", m / 1000, m % 1000)
}

async fn run(args: Args) -> Result<(), String> {
    let chipsd = match args.chipsd {
        Some(p) => p,
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("chipsd"),
    };
    if !chipsd.exists() {
        return Err(format!(
            "no chipsd at {} (build it: cargo build -p chipsd)",
            chipsd.display()
        ));
    }
    let keys = std::env::temp_dir().join(format!("chips-demo-{}", std::process::id()));
    std::fs::create_dir_all(&keys).map_err(|e| e.to_string())?;
    let mut demo = Demo {
        cluster: Cluster::new(&args.dsn),
        chipsd,
        keys: keys.clone(),
        sidecars: vec![],
        opened: vec![],
    };
    let result = scenario(&mut demo, &args.prefix, args.payments, args.seed).await;
    for s in &mut demo.sidecars {
        s.stop(Duration::from_secs(5)); // gracefully, before the cluster goes
    }
    let _ = std::fs::remove_dir_all(&keys);
    result
}

async fn scenario(demo: &mut Demo, prefix: &str, payments: usize, seed: u64) -> Result<(), String> {
    let e = |e: tokio_postgres::Error| chips_tests::errmsg(&e);
    println!("== sites");
    let alpha = demo.site(&format!("{prefix}_alpha")).await?;
    let beta = demo.site(&format!("{prefix}_beta")).await?;
    let gamma = demo.site(&format!("{prefix}_gamma")).await?;
    let sites = [&alpha, &beta, &gamma];

    println!("\n== users");
    let ann = alpha.user("Ann's Bakery", "ann").await.map_err(e)?;
    let bob = alpha.user("Bob Baker", "bob").await.map_err(e)?;
    let cat = alpha.user("Cat Miller", "cat").await.map_err(e)?;
    let dan = alpha.user("Dan Farmer", "dan").await.map_err(e)?;
    let eve = beta.user("Eve Grocer", "eve").await.map_err(e)?;
    let gus = gamma.user("Gus Mill", "gus").await.map_err(e)?;
    for (s, u) in [
        (&alpha, &ann),
        (&alpha, &bob),
        (&alpha, &cat),
        (&alpha, &dan),
        (&beta, &eve),
        (&gamma, &gus),
    ] {
        println!(
            "  {:<14} {}  at {}:{}",
            u.name,
            u.ent,
            u.cuid,
            &s.agent_id()[..8]
        );
    }

    println!("\n== tallies inside site alpha (no peer traffic)");
    demo.open(&ann, &bob, 50_000, "bread on account", &sites)
        .await?;
    demo.open(&cat, &ann, 200_000, "flour", &sites).await?;

    println!("\n== a counter-offer");
    let t = dan
        .draft("stock", json!({"limit": 100_000}), json!({}), "wheat")
        .await
        .map_err(e)?;
    cat.redeem(&dan.ticket(t, false).await.map_err(e)?)
        .await
        .map_err(e)?;
    println!(
        "  Dan offers Cat wheat on 100.000 CHIP of credit: {}",
        dan.offer(t).await.map_err(e)?
    );
    println!("  Cat counters: {}", cat.counter(t).await.map_err(e)?);
    cat.db
        .execute(
            "SELECT chips.tally_update($1, part_terms => $2)",
            &[&t, &json!({"limit": 150_000})],
        )
        .await
        .map_err(e)?;
    println!(
        "  Cat asks for 150.000 CHIP and offers it back: {}",
        cat.offer(t).await.map_err(e)?
    );
    println!(
        "  Dan accepts revision 2: {}",
        dan.accept(t).await.map_err(e)?
    );
    demo.opened
        .push(("Dan Farmer".into(), "Cat Miller".into(), "wheat".into(), t));

    println!("\n== a refused forgery");
    let t2 = ann
        .draft("stock", json!({}), json!({}), "cakes")
        .await
        .map_err(e)?;
    dan.redeem(&ann.ticket(t2, false).await.map_err(e)?)
        .await
        .map_err(e)?;
    let mallory = chips_core::sign::KeyPair::from_phrase("mallory");
    let doc = ann.doc(t2).await.map_err(e)?;
    let forged = mallory.sign_json(&doc).map_err(|x| x.to_string())?;
    match ann.call("tally_offer", t2, Some(&forged)).await {
        Err(err) => println!(
            "  an offer signed with someone else's key: {} {}",
            chips_tests::sqlstate(&err),
            chips_tests::errmsg(&err)
        ),
        Ok(s) => return Err(format!("a forged signature was accepted ({s})")),
    }
    println!("  Ann voids the draft: {}", ann.void(t2).await.map_err(e)?);

    println!("\n== a tally across sites (alpha <-> beta: peer messages carried by the chipsd of each site)");
    demo.open(&bob, &eve, 30_000, "rolls for the grocery", &sites)
        .await?;

    println!(
        "\n== payments and invoices (chits, signed by their issuers, verified by the database)"
    );
    let bread = demo.opened[0].3; // Ann (vendor) and Bob (client)
    bob.pay(bread, 12_500, "a week of bread").await.map_err(e)?;
    println!("  Bob pays Ann 12.500 CHIP on his account");
    let inv = ann
        .invoice(bread, 4_000, "cakes for the party")
        .await
        .map_err(e)?;
    println!(
        "  Ann invoices Bob 4.000 CHIP; Bob signs it: {}",
        bob.sign_invoice(bread, inv).await.map_err(e)?
    );
    match bob.pay(bread, 40_000, "too much").await {
        Err(err) => println!(
            "  Bob tries to pay 40.000 CHIP more: {} {}",
            chips_tests::sqlstate(&err),
            chips_tests::errmsg(&err)
        ),
        Ok(_) => return Err("a payment past the credit limit was accepted".into()),
    }
    println!(
        "  Cat sets her trading variables on the wheat tally: {}",
        cat.settings(demo.opened[2].3, json!({"target": 20_000, "bound": 50_000}))
            .await
            .map_err(e)?
    );
    let rolls = demo.opened[3].3; // Bob (vendor, alpha) and Eve (client, beta)
    eve.pay(rolls, 7_250, "rolls").await.map_err(e)?;
    println!("  across sites: Eve pays Bob 7.250 CHIP");
    demo.relay(&sites).await?;
    bob.pay(rolls, 250, "refund for a stale roll")
        .await
        .map_err(e)?;
    println!("  Bob refunds 0.250 CHIP");
    demo.relay(&sites).await?;
    for (who, u, t) in [
        ("Bob, bread", &bob, bread),
        ("Ann, bread", &ann, bread),
        ("Eve, rolls", &eve, rolls),
        ("Bob, rolls", &bob, rolls),
    ] {
        let (good, _) = u.balance(t).await.map_err(e)?;
        println!("    balance {who:<11} {:>12}", chips(good));
    }

    println!("\n== a ring of tallies across the three sites (alpha -> beta -> gamma -> alpha)");
    demo.open(&eve, &gus, 60_000, "vegetables", &sites).await?;
    demo.open(&gus, &ann, 80_000, "milling", &sites).await?;

    // Who pays on which tally: the client (foil) of each opened tally.
    let everyone = [&ann, &bob, &cat, &dan, &eve, &gus];
    let by_name = |n: &str| *everyone.iter().find(|u| u.name == n).expect("a demo user");
    let trades: Vec<(&User, &User, Uuid)> = demo
        .opened
        .iter()
        .map(|(v, c, _, t)| (by_name(v), by_name(c), *t))
        .collect();
    // Eve lives at beta, Gus at gamma, everyone else at alpha.
    let site_of = |u: &User| -> usize {
        match u.name.as_str() {
            "Eve Grocer" => 1,
            "Gus Mill" => 2,
            _ => 0,
        }
    };
    println!(
        "\n== trading: {payments} random payments (seed {seed}) on the {} tallies",
        trades.len()
    );
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    let (mut made, mut refused) = (0usize, 0usize);
    let mut latencies: Vec<f64> = Vec::new();
    for _ in 0..payments {
        let (vendor, client, t) = trades[rand::Rng::gen_range(&mut rng, 0..trades.len())];
        let units = rand::Rng::gen_range(&mut rng, 1..=3_000i64);
        let started = Instant::now();
        match client.pay(t, units, "").await {
            Ok(chit) => {
                made += 1;
                if site_of(vendor) != site_of(client) {
                    // wait for the payment to reach the vendor's site
                    while vendor.chit_state(t, chit).await.map_err(e)?.is_none() {
                        if started.elapsed() > Duration::from_secs(30) {
                            return Err("a cross-site payment did not arrive in 30 s".into());
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    latencies.push(started.elapsed().as_secs_f64() * 1e3);
                }
            }
            Err(err) if chips_tests::sqlstate(&err) == "23514" => refused += 1,
            Err(err) => return Err(chips_tests::errmsg(&err)),
        }
    }
    demo.relay(&sites).await?;
    latencies.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            0.0
        } else {
            latencies[((latencies.len() - 1) as f64 * p).round() as usize]
        }
    };
    println!(
        "  {made} paid, {refused} refused (over the credit limit); {} crossed sites: latency p50 {:.1} ms, p99 {:.1} ms",
        latencies.len(),
        pct(0.5),
        pct(0.99)
    );

    println!("\n== what each site holds");
    let mut ok = true;
    for s in &sites {
        let rows = s
            .admin
            .query(
                "SELECT t.tally_uuid, u.name, t.side, t.state, coalesce(t.part_name, '-'), coalesce(t.digest, '-')
                 FROM chips.tallies_v t JOIN chips.users u ON u.ent = t.ent ORDER BY t.id",
                &[],
            )
            .await
            .map_err(e)?;
        println!("  site {}", s.db);
        for r in rows {
            let (uuid, name, side, state, part, digest): (
                Uuid,
                String,
                String,
                String,
                String,
                String,
            ) = (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
            println!(
                "    {} {:<14} {:<5} {:<8} with {:<14} digest {}",
                &uuid.to_string()[..8],
                name,
                side,
                state,
                part,
                if digest.len() > 12 {
                    &digest[..12]
                } else {
                    &digest
                }
            );
        }
    }
    // Both halves of every opened tally must agree.
    for (_, _, _, t) in &demo.opened {
        let mut digests = vec![];
        for s in &sites {
            for r in s
                .admin
                .query(
                    "SELECT digest, status FROM chips.tallies WHERE tally_uuid = $1",
                    &[t],
                )
                .await
                .map_err(e)?
            {
                let (d, st): (Option<Vec<u8>>, String) = (r.get(0), r.get(1));
                ok &= st == "open";
                digests.push(d);
            }
        }
        ok &= digests.len() == 2 && digests[0].is_some() && digests[0] == digests[1];
        // every half's balances, chain and signatures check out, and the chains are the same
        let mut chains = vec![];
        for s in &sites {
            for side in ["stock", "foil"] {
                let held = s
                    .admin
                    .query_opt(
                        "SELECT 1 FROM chips.tallies WHERE tally_uuid = $1 AND side = $2",
                        &[t, &side],
                    )
                    .await
                    .map_err(e)?
                    .is_some();
                if held {
                    chains.push(s.chain(*t, side).await.map_err(e)?);
                    ok &= s.audit_failures(*t).await.map_err(e)?.is_empty();
                }
            }
        }
        ok &= chains.len() == 2 && chains[0] == chains[1];
    }

    println!("\n== summary");
    let (mut users, mut messages) = (0i64, 0i64);
    for s in &sites {
        let row = s
            .admin
            .query_one(
                "SELECT (SELECT count(*) FROM chips.users), (SELECT count(*) FROM chips.inbox)",
                &[],
            )
            .await
            .map_err(e)?;
        users += row.get::<_, i64>(0);
        messages += row.get::<_, i64>(1);
    }
    println!(
        "  sites: {}   users: {}   tallies opened: {}   peer messages carried by chipsd: {messages}",
        sites.len(),
        users,
        demo.opened.len(),
    );
    for (v, c, memo, t) in &demo.opened {
        println!("    {v} -> {c}: {memo} ({})", &t.to_string()[..8]);
    }
    let mut chits = 0i64;
    for s in &sites {
        let n: i64 = s
            .admin
            .query_one(
                "SELECT count(*) FROM chips.chits WHERE status = 'good'",
                &[],
            )
            .await
            .map_err(e)?
            .get(0);
        chits += n;
    }
    println!("  good chit rows (one per tally half): {chits}");
    println!(
        "  both halves of every tally agree (digest, chain, balances, audit): {}",
        if ok { "yes" } else { "NO" }
    );
    if ok {
        Ok(())
    } else {
        Err("tally halves disagree".into())
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chips demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}
