//! The network, the trading agents, the last clearing pass and the summary.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chips_core::clearing::{solve, Edge};
use chips_tests::ring::{chad, pay_address_as};
use chips_tests::{errmsg, free_port, oracle, percentile, sqlstate, Cluster, Sidecar, Site, User};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use uuid::Uuid;

use crate::report::{self, LiftRow, Report, Sample, TallyRow};
use crate::Args;

type Res<T> = Result<T, String>;

fn db(e: tokio_postgres::Error) -> String {
    format!("{} ({})", errmsg(&e), sqlstate(&e))
}

const SITE_NAMES: [&str; 12] = [
    "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa",
    "lambda", "mu",
];
const FIRST: [&str; 16] = [
    "Ann", "Bob", "Cat", "Dan", "Eve", "Gus", "Hal", "Ida", "Jon", "Kim", "Lea", "Max", "Nia",
    "Oli", "Pat", "Ray",
];
const TRADE: [&str; 12] = [
    "Bakery",
    "Mill",
    "Farm",
    "Grocery",
    "Garage",
    "Tailor",
    "Dairy",
    "Books",
    "Repairs",
    "Cafe",
    "Print",
    "Carpentry",
];

/// A person: the site they live on and their client (their own keys and connection).
pub struct Person {
    pub site: usize,
    pub user: User,
}

/// A tally: `client` buys from `vendor` on credit up to `limit`.
pub struct Tally {
    pub uuid: Uuid,
    pub vendor: usize,
    pub client: usize,
}

pub struct Net {
    pub names: Vec<String>,
    pub sites: Vec<Site>,
    pub people: Vec<Person>,
    pub tallies: Vec<Tally>,
}

#[derive(Default)]
struct Stats {
    paid: AtomicUsize,
    refunds: AtomicUsize,
    refused: AtomicUsize,
    addr_good: AtomicUsize,
    addr_void: AtomicUsize,
    addr_none: AtomicUsize,
    /// Every payment to a CHIP address: whether the whole network could have carried it when
    /// it started (the oracle's max flow), and how it ended (good, or why not).
    addr: Mutex<Vec<(bool, String)>>,
    errors: Mutex<HashMap<String, usize>>,
    /// Payments the network could have carried when they started, failed, that it could no
    /// longer carry when they failed (the oracle asked again then).
    addr_gone: AtomicUsize,
    /// `--explain`: say why each payment the network could have carried failed.
    explain: bool,
    /// The checks of failed payments under way (awaited when trading ends).
    checks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    tally_ms: Mutex<Vec<f64>>,
    addr_ms: Mutex<Vec<f64>>,
}

impl Stats {
    fn error(&self, what: String) {
        *self.errors.lock().expect("stats").entry(what).or_default() += 1;
    }
}

pub async fn run(args: Args, stop: Arc<AtomicBool>) -> Res<()> {
    let chipsd = match &args.chipsd {
        Some(p) => p.clone(),
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
    let keys = chips_tests::scratch_dir("demo");
    let mut cars = Vec::new();
    let result = go(&args, &stop, &chipsd, &keys, &mut cars).await;
    for c in &mut cars {
        c.stop(Duration::from_secs(5)); // gracefully, before the cluster goes
    }
    let _ = std::fs::remove_dir_all(&keys);
    result
}

fn interrupted(stop: &AtomicBool) -> Res<()> {
    if stop.load(Ordering::SeqCst) {
        Err("interrupted".into())
    } else {
        Ok(())
    }
}

fn bar(args: &Args, len: u64, what: &str) -> ProgressBar {
    if args.quiet {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(len);
    b.set_style(
        ProgressStyle::with_template("  {prefix:<10} [{bar:40.cyan/blue}] {pos}/{len} {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    b.set_prefix(what.to_string());
    b
}

/// The demo, phase by phase.
async fn go(
    args: &Args,
    stop: &AtomicBool,
    chipsd: &std::path::Path,
    keys: &std::path::Path,
    cars: &mut Vec<Sidecar>,
) -> Res<()> {
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(args.seed);
    let up = start_sites(args, stop, chipsd, keys, cars).await?;
    join_rounds(args, stop, &up).await?;
    let people = people_join(args, stop, &up).await?;
    let tallies = open_tallies(args, stop, &up.sites, &people, &mut rng).await?;
    let net = Arc::new(Net {
        names: up.names,
        sites: up.sites,
        people,
        tallies,
    });
    let mut trading = trade(args, stop, &net).await?;
    quiesce(stop, &net, &mut trading).await?;
    let last = last_clearing(stop, &net, &mut trading).await?;
    finish(args, stop, &net, trading, last, started).await
}

/// The sites the demo runs: each a database with its own chipsd (peers over Noise, the user
/// gateway on), automatic clearing on.
struct Sites {
    names: Vec<String>,
    sites: Vec<Site>,
    gateways: Vec<String>,
    ports: Vec<u16>,
}

/// Phase 1: the sites, each its own database and chipsd.
async fn start_sites(
    args: &Args,
    stop: &AtomicBool,
    chipsd: &std::path::Path,
    keys: &std::path::Path,
    cars: &mut Vec<Sidecar>,
) -> Res<Sites> {
    let cluster = Cluster::new(&args.dsn);
    println!(
        "== {} sites, each its own database and chipsd (peers over Noise, user gateway on)",
        args.sites
    );
    let (mut names, mut sites, mut gateways, mut ports) = (vec![], vec![], vec![], vec![]);
    for name in SITE_NAMES.iter().take(args.sites as usize) {
        interrupted(stop)?;
        let name = name.to_string();
        let port = free_port();
        let s = cluster
            .site(&format!("{}_{name}", args.prefix), port)
            .await
            .map_err(|e| format!("creating site {name}: {e}"))?;
        let gw_port = free_port();
        let gw_dsn = s.gateway_dsn().await.map_err(db)?;
        let gw_listen = format!("127.0.0.1:{gw_port}");
        let every = args.clear_every.to_string();
        cars.push(
            Sidecar::start(
                chipsd,
                &s,
                port,
                keys,
                &[
                    "--poll-ms",
                    "100",
                    "--clearing-secs",
                    "1",
                    "--gateway-listen",
                    &gw_listen,
                    "--gateway-db",
                    &gw_dsn,
                ],
                &args.chipsd_log,
            )
            .map_err(|e| format!("chipsd of {name} ({}): {e}", chipsd.display()))?,
        );
        s.admin
            .execute(
                "SELECT chips.clearing_configure(enabled => true, every => ($1 || ' seconds')::interval)",
                &[&every],
            )
            .await
            .map_err(db)?;
        let admin: serde_json::Value = s
            .admin
            .query_one("SELECT chips.admin_ticket('1 day')", &[])
            .await
            .map_err(db)?
            .get(0);
        println!(
            "  {name:<8} database {:<22} agent {}…  peers 127.0.0.1:{port}  gateway http://{gw_listen}",
            s.db,
            &s.agent_id()[..12]
        );
        println!(
            "           admin view (open it in a browser while the demo runs): http://{gw_listen}/admin#token={}",
            admin["token"].as_str().unwrap_or("?")
        );
        names.push(name);
        sites.push(s);
        gateways.push(format!("http://{gw_listen}"));
        ports.push(port);
    }

    Ok(Sites {
        names,
        sites,
        gateways,
        ports,
    })
}

/// Phase 2: clearing rounds: the first site coordinates, every site (itself too) takes part.
async fn join_rounds(args: &Args, stop: &AtomicBool, up: &Sites) -> Res<()> {
    let (names, sites, ports) = (&up.names, &up.sites, &up.ports);
    let coordinator = format!("{}@127.0.0.1:{}", sites[0].agent_id(), ports[0]);
    let every = args.clear_every.to_string();
    sites[0]
        .admin
        .execute(
            "SELECT * FROM chips.round_configure(coordinate => true, every => ($1 || ' seconds')::interval)",
            &[&every],
        )
        .await
        .map_err(db)?;
    for s in sites {
        s.admin
            .execute(
                "SELECT * FROM chips.round_configure(coordinator => $1)",
                &[&coordinator],
            )
            .await
            .map_err(db)?;
    }
    quiet(sites, stop, false).await?;
    let members: i64 = sites[0]
        .admin
        .query_one("SELECT count(*) FROM chips.round_members", &[])
        .await
        .map_err(db)?
        .get(0);
    println!(
        "  clearing rounds: {} coordinates them for {members} site(s) (every {} s)",
        names[0], args.clear_every
    );

    Ok(())
}

/// Phase 3: people join each site, each with their own signing key; the first of each site
/// gets a login link for the app.
async fn people_join(args: &Args, stop: &AtomicBool, up: &Sites) -> Res<Vec<Person>> {
    let (names, sites, gateways) = (&up.names, &up.sites, &up.gateways);
    println!(
        "\n== {} people per site join (each with their own signing key)",
        args.users
    );
    let mut people = Vec::new();
    for (i, s) in sites.iter().enumerate() {
        for k in 0..args.users as usize {
            interrupted(stop)?;
            let n = i * args.users as usize + k;
            let name = format!(
                "{} {}",
                FIRST[n % FIRST.len()],
                TRADE[(n / FIRST.len() + n) % TRADE.len()]
            );
            let cuid = format!("{}{k}", FIRST[n % FIRST.len()].to_lowercase());
            let user = s.user(&name, &cuid).await.map_err(db)?;
            people.push(Person { site: i, user });
        }
        let first = &people[i * args.users as usize].user;
        let ticket: serde_json::Value = s
            .admin
            .query_one("SELECT chips.login_ticket($1)", &[&first.ent])
            .await
            .map_err(db)?
            .get(0);
        println!(
            "  {:<8} {} people; a login link for {} (the app registers its key with it): {}/login?ent={}&token={}",
            names[i],
            args.users,
            first.name,
            gateways[i],
            first.ent,
            ticket["token"].as_str().unwrap_or("?")
        );
    }

    Ok(people)
}

/// Phase 4: who buys from whom (each person picks vendors, some on other sites), and their
/// tallies opened through tickets, offers and acceptances.
async fn open_tallies(
    args: &Args,
    stop: &AtomicBool,
    sites: &[Site],
    people: &[Person],
    rng: &mut StdRng,
) -> Res<Vec<Tally>> {
    let mut plan: Vec<(usize, usize, i64)> = Vec::new();
    for c in 0..people.len() {
        let mut chosen = vec![];
        let mut tries = 0;
        while chosen.len() < args.vendors as usize && tries < 100 {
            tries += 1;
            let other_site = sites.len() > 1 && rng.gen_bool(args.cross);
            let candidates: Vec<usize> = (0..people.len())
                .filter(|&v| {
                    v != c
                        && (people[v].site != people[c].site) == other_site
                        && !chosen.contains(&v)
                        && !plan.iter().any(|&(pv, pc, _)| pv == c && pc == v)
                })
                .collect();
            if candidates.is_empty() {
                continue;
            }
            let v = candidates[rng.gen_range(0..candidates.len())];
            chosen.push(v);
            plan.push((v, c, rng.gen_range(5..=20) * 10_000));
        }
    }
    let cross = plan
        .iter()
        .filter(|&&(v, c, _)| people[v].site != people[c].site)
        .count();
    println!(
        "\n== {} tallies open through tickets, offers and acceptances ({} local, {cross} across sites)",
        plan.len(),
        plan.len() - cross
    );
    let b = bar(args, 3 * plan.len() as u64, "tallies");
    let mut tallies = Vec::new();
    for &(v, c, limit) in &plan {
        interrupted(stop)?;
        let (vendor, client) = (&people[v].user, &people[c].user);
        let memo = format!("{} buys from {}", client.name, vendor.name);
        let t = vendor
            .draft("stock", json!({ "limit": limit }), json!({}), &memo)
            .await
            .map_err(db)?;
        let ticket = vendor.ticket(t, false).await.map_err(db)?;
        client.redeem(&ticket).await.map_err(db)?;
        tallies.push(Tally {
            uuid: t,
            vendor: v,
            client: c,
        });
        b.inc(1);
    }
    quiet(sites, stop, false).await?;
    for t in &tallies {
        interrupted(stop)?;
        people[t.vendor].user.offer(t.uuid).await.map_err(db)?;
        b.inc(1);
    }
    quiet(sites, stop, false).await?;
    for t in &tallies {
        interrupted(stop)?;
        people[t.client].user.accept(t.uuid).await.map_err(db)?;
        b.inc(1);
    }
    quiet(sites, stop, false).await?;
    b.finish_and_clear();
    let mut open = 0;
    for s in sites {
        let n: i64 = s
            .admin
            .query_one(
                "SELECT count(*) FROM chips.tallies WHERE status = 'open' AND side = 'stock'",
                &[],
            )
            .await
            .map_err(db)?
            .get(0);
        open += n;
    }
    println!("  {open} of {} tallies open on both halves", tallies.len());
    if open as usize != tallies.len() {
        return Err("not every tally opened".into());
    }
    Ok(tallies)
}

/// What the trading phase leaves: the agents' figures, the network sampled every half second,
/// when trading started and how long it ran.
struct Trading {
    stats: Arc<Stats>,
    samples: Vec<Sample>,
    t0: Instant,
    traded: Duration,
}

/// Phase 5: trading, with automatic clearing running at every site.
async fn trade(args: &Args, stop: &AtomicBool, net: &Arc<Net>) -> Res<Trading> {
    println!(
        "\n== trading for {} s: {} agents pay on credit, refund, and pay people on other sites; clearing runs every {} s",
        args.duration, args.agents, args.clear_every
    );
    let t0 = Instant::now();
    let trading_ends = t0 + Duration::from_secs(args.duration);
    let stats = Arc::new(Stats {
        explain: args.explain,
        ..Stats::default()
    });
    let done = Arc::new(AtomicBool::new(false));
    let stop_flag = Arc::new(AtomicBool::new(false));
    let mut tasks = vec![];
    for w in 0..args.agents as u64 {
        let (net, stats, done, stop_flag) =
            (net.clone(), stats.clone(), done.clone(), stop_flag.clone());
        let seed = args.seed ^ (w + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed);
            while !done.load(Ordering::SeqCst) && !stop_flag.load(Ordering::SeqCst) {
                act(&net, &stats, &mut rng).await;
                let pause = rng.gen_range(5..40);
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        }));
    }
    let b = bar(args, args.duration, "trading");
    let mut samples: Vec<Sample> = vec![];
    loop {
        let now = Instant::now();
        if stop.load(Ordering::SeqCst) {
            stop_flag.store(true, Ordering::SeqCst);
        }
        if now >= trading_ends || stop_flag.load(Ordering::SeqCst) {
            done.store(true, Ordering::SeqCst);
            break;
        }
        let s = sample(net, t0).await?;
        b.set_position(t0.elapsed().as_secs().min(args.duration));
        b.set_message(format!(
            "{} payments, {} lifts, {} rounds, debt {}",
            stats.paid.load(Ordering::Relaxed) + stats.refunds.load(Ordering::Relaxed),
            s.lifts_local + s.lifts_cross,
            s.lifts_round,
            chips(s.outstanding)
        ));
        samples.push(s);
        tokio::time::sleep(Duration::from_millis(500).min(trading_ends - now)).await;
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())?;
    }
    let checks = std::mem::take(&mut *stats.checks.lock().expect("stats"));
    for t in checks {
        t.await.map_err(|e| e.to_string())?;
    }
    b.finish_and_clear();
    interrupted(stop)?;
    let traded = t0.elapsed();

    Ok(Trading {
        stats,
        samples,
        t0,
        traded,
    })
}

/// Phase 6: automatic clearing stops and the network quiesces (every message delivered, every
/// lift decided).
async fn quiesce(stop: &AtomicBool, net: &Net, trading: &mut Trading) -> Res<()> {
    let (t0, samples) = (trading.t0, &mut trading.samples);
    println!("\n== the network quiesces (every message delivered, every lift decided)");
    let q = Instant::now();
    for s in &net.sites {
        s.admin
            .execute("SELECT chips.clearing_configure(enabled => false)", &[])
            .await
            .map_err(db)?;
    }
    net.sites[0]
        .admin
        .execute(
            "SELECT * FROM chips.round_configure(coordinate => false)",
            &[],
        )
        .await
        .map_err(db)?;
    quiet(&net.sites, stop, true).await?;
    samples.push(sample(net, t0).await?);
    println!("  quiet after {:.1} s", q.elapsed().as_secs_f64());

    Ok(())
}

/// What the last clearing measured: the debt before it, the whole network's graph and the
/// optimum the solver finds for it.
struct LastClearing {
    before_pass: i64,
    graph: Vec<Debt>,
    optimum: i64,
}

/// Phase 7: a last clearing round over the federation, then each site's own pass and route
/// discovery for anything the round could not take, against the whole network's optimum.
async fn last_clearing(stop: &AtomicBool, net: &Net, trading: &mut Trading) -> Res<LastClearing> {
    let (t0, samples) = (trading.t0, &mut trading.samples);
    println!(
        "\n== a last clearing round over the federation, against the optimum for the whole network"
    );
    let before_pass = samples.last().expect("a sample").outstanding;
    let graph = network(net).await?;
    let optimum = optimum(&graph)?;
    let coord = &net.sites[0].admin;
    coord
        .execute(
            "SELECT * FROM chips.round_configure(coordinate => true, every => '1 day')",
            &[],
        )
        .await
        .map_err(db)?;
    let round: Uuid = coord
        .query_one("SELECT chips.round_open()", &[])
        .await
        .map_err(db)?
        .get(0);
    quiet(&net.sites, stop, true).await?;
    coord
        .execute(
            "SELECT * FROM chips.round_configure(coordinate => false)",
            &[],
        )
        .await
        .map_err(db)?;
    let r = coord
        .query_one(
            "SELECT status, attempt, coalesce(reason, ''),
                    extract(epoch FROM decided - created)::float8 * 1000,
                    (SELECT count(*) FROM chips.round_sites s WHERE s.round_id = r.id AND s.status = 'ready'),
                    (SELECT count(*) FROM chips.round_arcs a WHERE a.round_id = r.id)
             FROM chips.rounds r WHERE round_uuid = $1",
            &[&round],
        )
        .await
        .map_err(db)?;
    let s = sample(net, t0).await?;
    println!(
        "  round {}: {} after {} attempt(s) in {:.0} ms, {} sites ready, {} arcs; debt {} -> {}{}",
        &round.to_string()[..8],
        r.get::<_, String>(0),
        r.get::<_, i32>(1),
        r.get::<_, Option<f64>>(3).unwrap_or(0.0),
        r.get::<_, i64>(4),
        r.get::<_, i64>(5),
        chips(before_pass),
        chips(s.outstanding),
        match r.get::<_, String>(2) {
            x if x.is_empty() => String::new(),
            x => format!(" ({x})"),
        }
    );
    let mut last = s.outstanding;
    samples.push(s);
    // then each site's own pass and route discovery, for anything the round could not take
    for _round in 0..4 {
        interrupted(stop)?;
        for s in &net.sites {
            s.admin
                .batch_execute("CALL chips.clearing_run(); SELECT chips.lift_circles();")
                .await
                .map_err(db)?;
        }
        quiet(&net.sites, stop, true).await?;
        let s = sample(net, t0).await?;
        let now = s.outstanding;
        samples.push(s);
        if now >= last {
            break;
        }
        last = now;
    }

    Ok(LastClearing {
        before_pass,
        graph,
        optimum,
    })
}

/// Phase 8: every invariant checked (chipsd check, no lift left undecided), the summary and the
/// HTML report.
async fn finish(
    args: &Args,
    stop: &AtomicBool,
    net: &Net,
    trading: Trading,
    last: LastClearing,
    started: Instant,
) -> Res<()> {
    let Trading {
        stats,
        samples,
        t0,
        traded,
    } = trading;
    let LastClearing {
        before_pass,
        graph,
        optimum,
    } = last;
    let fin = samples.last().expect("a sample").clone();
    let pass_cleared = before_pass - fin.outstanding;

    // Checks: chipsd check over every site, and no lift left undecided.
    let dsns: Vec<String> = net.sites.iter().map(|s| s.dsn.clone()).collect();
    let (check_ok, check_text) = match chipsd::check::check(&dsns).await {
        Ok(r) => (r.problems.is_empty(), r.text()),
        Err(e) => (false, format!("chipsd check: {e}")),
    };
    let mut open_lifts = 0i64;
    let (mut users, mut chit_rows, mut messages, mut payment_lifts) = (0i64, 0i64, 0i64, 0i64);
    for s in &net.sites {
        let r = s
            .admin
            .query_one(
                "SELECT (SELECT count(*) FROM chips.lifts WHERE status IN ('seek', 'pend'))
                      + (SELECT count(*) FROM chips.chits WHERE status = 'pend' AND lift_id IS NOT NULL),
                        (SELECT count(*) FROM chips.users),
                        (SELECT count(*) FROM chips.chits WHERE status = 'good'),
                        (SELECT count(*) FROM chips.inbox),
                        (SELECT count(*) FROM chips.lifts WHERE kind = 'linear' AND role = 'origin' AND parent IS NULL AND status = 'good')",
                &[],
            )
            .await
            .map_err(db)?;
        open_lifts += r.get::<_, i64>(0);
        users += r.get::<_, i64>(1);
        chit_rows += r.get::<_, i64>(2);
        messages += r.get::<_, i64>(3);
        payment_lifts += r.get::<_, i64>(4);
    }

    let cleared = fin.cleared_local + fin.cleared_cross + fin.cleared_round;
    let before = fin.outstanding + cleared;
    let share = |a: i64, b: i64| {
        if b == 0 {
            100.0
        } else {
            a as f64 * 100.0 / b as f64
        }
    };
    let mut tally_ms = stats.tally_ms.lock().expect("stats").clone();
    let mut addr_ms = stats.addr_ms.lock().expect("stats").clone();
    let errors = stats.errors.lock().expect("stats").clone();
    let lat = |v: &mut Vec<f64>| {
        if v.is_empty() {
            "none".to_string()
        } else {
            format!(
                "p50 {:.1} ms, p99 {:.1} ms ({})",
                percentile(v, 0.5),
                percentile(v, 0.99),
                v.len()
            )
        }
    };
    let paid = stats.paid.load(Ordering::Relaxed);
    let refunds = stats.refunds.load(Ordering::Relaxed);
    let cross_tallies = net
        .tallies
        .iter()
        .filter(|t| net.people[t.vendor].site != net.people[t.client].site)
        .count();
    let after_ok = fin.outstanding <= before;

    println!("\n== summary");
    println!(
        "  sites: {}   users: {users}   tallies: {} ({} local, {cross_tallies} across sites)   good chit rows: {chit_rows}",
        net.sites.len(),
        net.tallies.len(),
        net.tallies.len() - cross_tallies
    );
    println!(
        "  payments in {:.0} s: {paid} on credit and {refunds} refunds; {} refused over a credit limit",
        traded.as_secs_f64(),
        stats.refused.load(Ordering::Relaxed)
    );
    println!(
        "  payments to people on other sites (lifts through intermediaries): {} good, {} void, {} found no route",
        stats.addr_good.load(Ordering::Relaxed),
        stats.addr_void.load(Ordering::Relaxed),
        stats.addr_none.load(Ordering::Relaxed)
    );
    {
        // the oracle: how many of them the whole network could have carried when they started
        let addr = stats.addr.lock().expect("stats").clone();
        let could = addr.iter().filter(|(c, _)| *c).count();
        let good_could = addr.iter().filter(|(c, h)| *c && h == "good").count();
        println!(
            "  payments to CHIP addresses: {} attempted, {} good; the network could have carried {could} of them (oracle: max flow over every site's tallies); good among those: {good_could} ({:.1} %)",
            addr.len(),
            addr.iter().filter(|(_, h)| h == "good").count(),
            share(good_could as i64, could as i64)
        );
        let mut why: Vec<(String, usize, usize)> = Vec::new();
        for (c, h) in addr.iter().filter(|(_, h)| h != "good") {
            match why.iter_mut().find(|w| &w.0 == h) {
                Some(w) => {
                    w.1 += 1;
                    w.2 += usize::from(*c);
                }
                None => why.push((h.clone(), 1, usize::from(*c))),
            }
        }
        why.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        for (h, n, c) in why {
            println!("    failed, {h}: {n} ({c} of them the network could have carried)");
        }
        if could > good_could {
            println!(
                "    of the {} failed that the network could have carried, it could no longer carry {} when they failed and held nothing (capacity taken meanwhile by other payments, lifts and clearing)",
                could - good_could,
                stats.addr_gone.load(Ordering::Relaxed)
            );
        }
    }
    println!(
        "  total debt before clearing: {}   after: {}   cleared: {} ({:.1} %)",
        chips(before),
        chips(fin.outstanding),
        chips(cleared),
        share(cleared, before)
    );
    println!(
        "  lifts: {} local (cleared {}), {} across sites (cleared {}), {} clearing rounds (cleared {}), {payment_lifts} payment lifts",
        fin.lifts_local,
        chips(fin.cleared_local),
        fin.lifts_cross,
        chips(fin.cleared_cross),
        fin.lifts_round,
        chips(fin.cleared_round)
    );
    println!(
        "  last pass: debt {} -> {}: cleared {} of the {} the solver finds for the whole network ({:.1} % of the optimum)",
        chips(before_pass),
        chips(fin.outstanding),
        chips(pass_cleared),
        chips(optimum),
        share(pass_cleared, optimum)
    );
    println!("  peer messages carried by chipsd: {messages}");
    println!(
        "  payment latency across sites: on a tally {}; to a CHIP address {}",
        lat(&mut tally_ms),
        lat(&mut addr_ms)
    );
    if !errors.is_empty() {
        println!("  other errors: {errors:?}");
    }
    println!(
        "  checks: debt after <= before: {}; lifts left undecided: {open_lifts}; chipsd check (halves agree, audits, net positions): {}",
        yes(after_ok),
        yes(check_ok)
    );
    if !check_ok {
        println!("{check_text}");
    }

    let tallies = graph
        .iter()
        .map(|g| TallyRow {
            from: g.debtor,
            to: g.creditor,
            debt: g.debt,
        })
        .collect();
    let mut lifts = vec![];
    for (i, s) in net.sites.iter().enumerate() {
        for r in s
            .admin
            .query(
                "SELECT kind, status, units, cardinality(tallies), extract(epoch FROM created)::float8
                 FROM chips.lifts WHERE kind IN ('local', 'round') OR (role = 'origin' AND parent IS NULL) ORDER BY created",
                &[],
            )
            .await
            .map_err(db)?
        {
            lifts.push(LiftRow {
                site: net.names[i].clone(),
                kind: r.get(0),
                status: r.get(1),
                units: r.get(2),
                tallies: r.get(3),
                at: r.get(4),
            });
        }
    }
    let path = report::write(
        &args.report,
        &Report {
            sites: net.names.clone(),
            people: net
                .people
                .iter()
                .map(|p| (p.site, p.user.name.clone()))
                .collect(),
            tallies,
            samples,
            lifts,
            started_epoch: epoch_of(t0),
            summary: vec![
                ("sites".into(), net.sites.len().to_string()),
                ("users".into(), users.to_string()),
                ("tallies".into(), net.tallies.len().to_string()),
                ("debt before clearing".into(), chips(before)),
                ("debt after clearing".into(), chips(fin.outstanding)),
                (
                    "cleared".into(),
                    format!("{} ({:.1} %)", chips(cleared), share(cleared, before)),
                ),
                (
                    "last pass vs optimum".into(),
                    format!(
                        "{} of {} ({:.1} %)",
                        chips(pass_cleared),
                        chips(optimum),
                        share(pass_cleared, optimum)
                    ),
                ),
                (
                    "clearing rounds".into(),
                    format!(
                        "{} good, cleared {}",
                        fin.lifts_round,
                        chips(fin.cleared_round)
                    ),
                ),
                ("peer messages".into(), messages.to_string()),
            ],
        },
    )
    .map_err(|e| format!("writing the report: {e}"))?;
    println!("  report: {}", path.display());
    println!("  finished in {:.1} s", started.elapsed().as_secs_f64());
    if args.linger > 0 {
        println!(
            "\n== the sites stay up for {} s (Ctrl-C stops them): the admin views above are live",
            args.linger
        );
        let until = Instant::now() + Duration::from_secs(args.linger);
        while Instant::now() < until && !stop.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    if check_ok && after_ok && open_lifts == 0 {
        Ok(())
    } else {
        Err("a check failed (see above)".into())
    }
}

fn epoch_of(t: Instant) -> f64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    now.as_secs_f64() - t.elapsed().as_secs_f64()
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "NO"
    }
}

pub fn chips(milli: i64) -> String {
    let sign = if milli < 0 { "-" } else { "" };
    let m = milli.unsigned_abs();
    format!("{sign}{}.{:03} CHIP", m / 1000, m % 1000)
}

/// One agent's action: pay on credit, refund, or pay someone on another site.
async fn act(net: &Arc<Net>, stats: &Arc<Stats>, rng: &mut StdRng) {
    let roll: f64 = rng.gen();
    if roll < 0.9 || net.sites.len() < 2 {
        let t = &net.tallies[rng.gen_range(0..net.tallies.len())];
        let refund = roll >= 0.75;
        let (payer, payee) = if refund {
            (&net.people[t.vendor], &net.people[t.client])
        } else {
            (&net.people[t.client], &net.people[t.vendor])
        };
        let units = if refund {
            rng.gen_range(100..=2_000)
        } else {
            rng.gen_range(500..=8_000)
        };
        let start = Instant::now();
        match payer.user.pay(t.uuid, units, "").await {
            Ok(chit) => {
                let n = if refund { &stats.refunds } else { &stats.paid };
                n.fetch_add(1, Ordering::Relaxed);
                if payer.site != payee.site {
                    // until the payment is recorded at the payee's site
                    loop {
                        match payee.user.chit_state(t.uuid, chit).await {
                            Ok(Some(_)) => break,
                            Ok(None) if start.elapsed() < Duration::from_secs(30) => {
                                tokio::time::sleep(Duration::from_millis(2)).await
                            }
                            Ok(None) => {
                                stats.error("a payment did not reach its payee in 30 s".into());
                                return;
                            }
                            Err(e) => return stats.error(db(e)),
                        }
                    }
                    let ms = start.elapsed().as_secs_f64() * 1e3;
                    stats.tally_ms.lock().expect("stats").push(ms);
                }
            }
            Err(e) if sqlstate(&e) == "23514" => {
                stats.refused.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => stats.error(db(e)),
        }
    } else {
        let payer = &net.people[rng.gen_range(0..net.people.len())];
        let others: Vec<&Person> = net.people.iter().filter(|p| p.site != payer.site).collect();
        let payee = others[rng.gen_range(0..others.len())];
        let to = chad(&net.sites[payee.site], &payee.user);
        let units = rng.gen_range(100..=3_000);
        // the oracle: could the network as it is now carry the payment at all?
        let sites: Vec<&tokio_postgres::Client> = net.sites.iter().map(|s| &s.admin).collect();
        let (from_node, to_node) = (
            oracle::node(&chad(&net.sites[payer.site], &payer.user)),
            oracle::node(&to),
        );
        let graph = match oracle::Graph::read(&sites).await {
            Ok(g) => g,
            Err(e) => return stats.error(db(e)),
        };
        let could = graph.max_flow(&from_node, &to_node) >= units;
        let end = |how: &str| {
            stats
                .addr
                .lock()
                .expect("stats")
                .push((could, how.to_string()))
        };
        // (after a failure the network could have carried, on a task of its own: the agent goes
        // on paying meanwhile)
        let check_failure = |lift: Option<Uuid>, how: String| {
            if !could {
                return;
            }
            let (net, stats, graph) = (net.clone(), stats.clone(), graph.clone());
            let (from_node, to_node) = (from_node.clone(), to_node.clone());
            let checks = stats.clone();
            let task = tokio::spawn(async move {
                // could the network still carry it when it failed, once nothing of it holds
                // capacity anywhere (its releases travel as messages)?
                if let Some(lift) = lift {
                    released(&net, lift).await;
                }
                let sites: Vec<&tokio_postgres::Client> =
                    net.sites.iter().map(|s| &s.admin).collect();
                if let Ok(g) = oracle::Graph::read(&sites).await {
                    if g.max_flow(&from_node, &to_node) < units {
                        stats.addr_gone.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if stats.explain {
                    println!(
                        "{}",
                        explain(&net, &graph, &from_node, &to_node, units, lift, &how).await
                    );
                }
            });
            checks.checks.lock().expect("stats").push(task);
        };
        let start = Instant::now();
        match pay_address_as(&payer.user.db, &payer.user.key, &to, units).await {
            Ok(lift) => loop {
                let status: Result<(String, Option<String>), _> = net.sites[payer.site]
                    .admin
                    .query_one(
                        "SELECT status, reason FROM chips.lifts WHERE lift_uuid = $1 AND role = 'origin'",
                        &[&lift],
                    )
                    .await
                    .map(|r| (r.get(0), r.get(1)));
                match status.as_ref().map(|(s, r)| (s.as_str(), r.as_deref())) {
                    Ok(("good", _)) => {
                        end("good");
                        stats.addr_good.fetch_add(1, Ordering::Relaxed);
                        let ms = start.elapsed().as_secs_f64() * 1e3;
                        stats.addr_ms.lock().expect("stats").push(ms);
                        return;
                    }
                    Ok(("void", reason)) => {
                        end(reason.unwrap_or("void"));
                        check_failure(Some(lift), reason.unwrap_or("void").to_string());
                        stats.addr_void.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Ok(_) if start.elapsed() < Duration::from_secs(60) => {
                        tokio::time::sleep(Duration::from_millis(2)).await
                    }
                    Ok((s, _)) => {
                        return stats.error(format!("a payment lift still {s} after 60 s"))
                    }
                    Err(e) => return stats.error(errmsg(e)),
                }
            },
            Err(e) if sqlstate(&e) == "55000" => {
                end("no tally of the payer's leads out");
                check_failure(None, errmsg(&e));
                stats.addr_none.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => stats.error(db(e)),
        }
    }
}

/// Payment `lift` and its parts (each a lift of its own uuid at the sites it passes), as the
/// origin's rows name them.
async fn payment_lifts(net: &Net, lift: Uuid) -> Vec<Uuid> {
    let mut ids = vec![lift];
    for s in &net.sites {
        if let Ok(rows) = s
            .admin
            .query(
                "SELECT lift_uuid FROM chips.lifts WHERE parent = $1",
                &[&lift],
            )
            .await
        {
            ids.extend(rows.iter().map(|r| r.get::<_, Uuid>(0)));
        }
    }
    ids
}

/// Waits (up to 5 s, looking every 100 ms) until no site holds a pending chit of payment `lift`
/// or of its parts.
async fn released(net: &Net, lift: Uuid) {
    let ids = payment_lifts(net, lift).await;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        let mut held = 0i64;
        for s in &net.sites {
            held += s
                .admin
                .query_one(
                    "SELECT count(*) FROM chips.chits c JOIN chips.lifts l ON l.id = c.lift_id
                     WHERE l.lift_uuid = ANY ($1) AND c.status = 'pend'",
                    &[&ids],
                )
                .await
                .map_or(1, |r| r.get::<_, i64>(0));
        }
        if held == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `--explain`: why a payment the network could have carried failed. The routes the oracle's
/// flow takes (users as `site:cuid`, with what each route carries) and, for each route query
/// the payment sent, every row it left at every site: which tally it went out or came in on,
/// what was answered, when (ms after the query started at the payer's site).
async fn explain(
    net: &Net,
    graph: &oracle::Graph,
    from: &str,
    to: &str,
    units: i64,
    lift: Option<Uuid>,
    how: &str,
) -> String {
    let site_of = |node: &str| -> String {
        let (cuid, agent) = node.split_once('@').unwrap_or((node, ""));
        let site = net
            .sites
            .iter()
            .position(|s| s.agent_id() == agent)
            .and_then(|i| net.names.get(i).cloned())
            .unwrap_or_else(|| "?".into());
        format!("{site}:{cuid}")
    };
    let (flow, paths) = graph.flow_paths(from, to);
    let mut out = format!(
        "explain: {} pays {} {units} units: {how}; the oracle's flow {flow}",
        site_of(from),
        site_of(to)
    );
    for (path, carried) in paths {
        let names: Vec<String> = path.iter().map(|n| site_of(n)).collect();
        out += &format!("\n  route carrying {carried}: {}", names.join(" -> "));
    }
    let Some(lift) = lift else {
        return out;
    };
    let mut queries: Vec<String> = vec![];
    for s in &net.sites {
        if let Ok(rows) = s
            .admin
            .query(
                "SELECT query FROM chips.lift_routes WHERE lift = $1 AND dir = 'in' ORDER BY id",
                &[&lift],
            )
            .await
        {
            queries.extend(rows.iter().map(|r| r.get::<_, String>(0)));
        }
    }
    // the payment and its parts at the payer's site, and what its own ways carry now
    let payer_site = net
        .sites
        .iter()
        .position(|s| from.ends_with(&format!("@{}", s.agent_id())))
        .unwrap_or(0);
    if let Ok(rows) = net.sites[payer_site]
        .admin
        .query(
            "SELECT l.units, l.status, coalesce(l.reason, '-'), coalesce(left(l.tally_out::text, 8), '-'),
                    coalesce(t.ent, '-'),
                    CASE WHEN l.parent IS NULL THEN 'payment' ELSE 'part' END,
                    coalesce((SELECT chips._route_widest(a.payers, a.receivers, a.caps, l.payer, t.ent)
                              FROM chips._local_arcs() a)::text, '-'),
                    coalesce(chips._send_capacity(t)::text, '-')
             FROM chips.lifts l
             LEFT JOIN chips.tallies t ON t.tally_uuid = l.tally_out AND t.part_ent IS NULL
             WHERE (l.lift_uuid = $1 OR l.parent = $1) AND l.role = 'origin' ORDER BY l.id",
            &[&lift],
        )
        .await
    {
        for r in rows {
            out += &format!(
                "\n  {} of {} units: {} ({}); out on {} of {}; now: widest way there {}, the tally out {}",
                r.get::<_, String>(5),
                r.get::<_, i64>(0),
                r.get::<_, String>(1),
                r.get::<_, String>(2),
                r.get::<_, String>(3),
                r.get::<_, String>(4),
                r.get::<_, String>(6),
                r.get::<_, String>(7),
            );
        }
    }
    // the refusals sent about it or its parts, by any site (a part's uuid is its own at the
    // sites it passes: only the origin knows which payment it belongs to)
    let ids: Vec<String> = payment_lifts(net, lift)
        .await
        .iter()
        .map(Uuid::to_string)
        .collect();
    for (k, s) in net.sites.iter().enumerate() {
        let Ok(rows) = s
            .admin
            .query(
                "SELECT o.msg->'object'->>'reason', coalesce(o.msg->'object'->>'max', '-'),
                        coalesce(o.msg->'object'->>'lift', '-')
                 FROM chips.outbox o
                 WHERE o.target = 'lift' AND o.action = 'reject'
                   AND o.msg->'object'->>'lift' = ANY ($1)
                 ORDER BY o.id",
                &[&ids],
            )
            .await
        else {
            continue;
        };
        for r in rows {
            out += &format!(
                "\n  {} refused {}: {} (max {})",
                net.names[k],
                &r.get::<_, String>(2)[..8.min(r.get::<_, String>(2).len())],
                r.get::<_, String>(0),
                r.get::<_, String>(1)
            );
        }
    }
    for (i, q) in queries.iter().enumerate() {
        out += &format!("\n  query {}:", i + 1);
        let mut rows = vec![];
        for (k, s) in net.sites.iter().enumerate() {
            let Ok(found) = s
                .admin
                .query(
                    "SELECT r.dir, coalesce(left(r.tally::text, 8), '-'), r.status,
                            coalesce(r.max::text, '-') || '/' || coalesce(r.total::text, '-'),
                            coalesce(r.hops::text, '-'), r.units,
                            coalesce(t.ent, '-'),
                            extract(epoch FROM r.created)::float8 * 1000
                     FROM chips.lift_routes r
                     LEFT JOIN chips.tallies t ON t.tally_uuid = r.tally AND t.part_ent IS NULL
                     WHERE r.query = $1",
                    &[q],
                )
                .await
            else {
                continue;
            };
            for r in found {
                rows.push((
                    r.get::<_, f64>(7),
                    format!(
                        "{} {} {} tally {} of {} units {} max/total {} hops {}",
                        net.names[k],
                        r.get::<_, String>(0),
                        r.get::<_, String>(2),
                        r.get::<_, String>(1),
                        r.get::<_, String>(6),
                        r.get::<_, i64>(5),
                        r.get::<_, String>(3),
                        r.get::<_, String>(4),
                    ),
                ));
            }
        }
        rows.sort_by(|a, b| a.0.total_cmp(&b.0));
        let t0 = rows.first().map(|r| r.0).unwrap_or_default();
        for (t, line) in rows {
            out += &format!("\n    {:7.1} ms {line}", t - t0);
        }
    }
    out
}

/// Waits until every site's outbox is delivered (and, with `lifts`, no lift is undecided),
/// three polls in a row.
async fn quiet(sites: &[Site], stop: &AtomicBool, lifts: bool) -> Res<()> {
    let t = Instant::now();
    let mut calm = 0;
    while calm < 3 {
        interrupted(stop)?;
        let mut pending = 0i64;
        for s in sites {
            pending += s
                .admin
                .query_one(
                    "SELECT (SELECT count(*) FROM chips.outbox WHERE delivered IS NULL)
                          + CASE WHEN $1 THEN (SELECT count(*) FROM chips.lifts
                                               WHERE status IN ('seek', 'pend')
                                                  OR (kind = 'round' AND status = 'draft'))
                                            + (SELECT count(*) FROM chips.rounds
                                               WHERE status IN ('collect', 'prepare')) ELSE 0 END",
                    &[&lifts],
                )
                .await
                .map_err(db)?
                .get::<_, i64>(0);
        }
        calm = if pending == 0 { calm + 1 } else { 0 };
        if t.elapsed() > Duration::from_secs(120) {
            return Err(format!(
                "{pending} message(s) or lift(s) still under way after 120 s"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Outstanding debt, debt cleared by lifts (local, across sites, rounds) and lifts so far.
async fn sample(net: &Net, t0: Instant) -> Res<Sample> {
    let mut s = Sample {
        t: t0.elapsed().as_secs_f64(),
        ..Sample::default()
    };
    for site in &net.sites {
        // each tally has one stock half somewhere: count debt and lift chits there
        let r = site
            .admin
            .query_one(
                "SELECT (SELECT coalesce(sum(abs(net_good)), 0)::bigint FROM chips.tallies
                         WHERE side = 'stock' AND status IN ('open', 'closing')),
                        (SELECT coalesce(sum(abs(c.units)) FILTER (WHERE l.kind = 'local'), 0)::bigint
                         FROM chips.chits c JOIN chips.tallies t ON t.id = c.tally_id
                         JOIN chips.lifts l ON l.id = c.lift_id
                         WHERE t.side = 'stock' AND c.status = 'good'),
                        (SELECT coalesce(sum(abs(c.units)) FILTER (WHERE l.kind = 'circular'), 0)::bigint
                         FROM chips.chits c JOIN chips.tallies t ON t.id = c.tally_id
                         JOIN chips.lifts l ON l.id = c.lift_id
                         WHERE t.side = 'stock' AND c.status = 'good'),
                        (SELECT count(*) FROM chips.lifts WHERE kind = 'local' AND status = 'good'),
                        (SELECT count(*) FROM chips.lifts
                         WHERE kind = 'circular' AND role = 'origin' AND status = 'good'),
                        (SELECT coalesce(sum(abs(c.units)) FILTER (WHERE l.kind = 'round'), 0)::bigint
                         FROM chips.chits c JOIN chips.tallies t ON t.id = c.tally_id
                         JOIN chips.lifts l ON l.id = c.lift_id
                         WHERE t.side = 'stock' AND c.status = 'good'),
                        (SELECT count(*) FROM chips.rounds WHERE status = 'good')",
                &[],
            )
            .await
            .map_err(db)?;
        s.outstanding += r.get::<_, i64>(0);
        s.cleared_local += r.get::<_, i64>(1);
        s.cleared_cross += r.get::<_, i64>(2);
        s.lifts_local += r.get::<_, i64>(3);
        s.lifts_cross += r.get::<_, i64>(4);
        s.cleared_round += r.get::<_, i64>(5);
        s.lifts_round += r.get::<_, i64>(6);
    }
    Ok(s)
}

/// A debt of the whole network: `debtor` owes `creditor` (people indexes).
pub struct Debt {
    pub debtor: usize,
    pub creditor: usize,
    pub debt: i64,
}

/// Every tally's debt, read from its stock half wherever it is.
async fn network(net: &Net) -> Res<Vec<Debt>> {
    let person: HashMap<(usize, String), usize> = net
        .people
        .iter()
        .enumerate()
        .map(|(i, p)| ((p.site, p.user.cuid.clone()), i))
        .collect();
    let site_of: HashMap<String, usize> = net
        .sites
        .iter()
        .enumerate()
        .map(|(i, s)| (s.agent_id(), i))
        .collect();
    let mut out = vec![];
    for (i, s) in net.sites.iter().enumerate() {
        for r in s
            .admin
            .query(
                "SELECT hold_cert->'chad'->>'cuid', part_cert->'chad'->>'agent',
                        part_cert->'chad'->>'cuid', net_good
                 FROM chips.tallies WHERE side = 'stock' AND status IN ('open', 'closing')",
                &[],
            )
            .await
            .map_err(db)?
        {
            let (hold, part_agent, part, net_good): (String, String, String, i64) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            let vendor = person.get(&(i, hold)).copied();
            let client = site_of
                .get(&part_agent)
                .and_then(|&ps| person.get(&(ps, part)).copied());
            let (Some(vendor), Some(client)) = (vendor, client) else {
                return Err("a tally with someone the demo does not know".into());
            };
            // positive: the client owes the vendor
            let (debtor, creditor) = if net_good >= 0 {
                (client, vendor)
            } else {
                (vendor, client)
            };
            out.push(Debt {
                debtor,
                creditor,
                debt: net_good.abs(),
            });
        }
    }
    Ok(out)
}

/// The most debt any set of lifts could clear on this network (the core solver, as if one
/// site held every tally).
fn optimum(graph: &[Debt]) -> Res<i64> {
    let n = graph
        .iter()
        .map(|d| d.debtor.max(d.creditor) + 1)
        .max()
        .unwrap_or(0);
    let edges: Vec<Edge> = graph
        .iter()
        .filter(|d| d.debt > 0)
        .map(|d| Edge {
            from: d.debtor as u32,
            to: d.creditor as u32,
            cap: d.debt,
            cost: -1,
        })
        .collect();
    let c = solve(n, &edges).map_err(|e| e.to_string())?;
    i64::try_from(c.cleared).map_err(|e| e.to_string())
}
