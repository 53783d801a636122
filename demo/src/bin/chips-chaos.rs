//! `chips-chaos`: four sites, each its own PostgreSQL cluster, database and chipsd, under
//! continuous random traffic (payments, refunds, invoices, setting changes, payments to people
//! on other sites, automatic local and cross-site clearing, clearing rounds that site 0
//! coordinates for all four every few seconds) while a fault-injecting proxy in front
//! of every chipsd drops, duplicates, delays and reorders frames and cuts connections, and a
//! chaos driver SIGKILLs sidecars and crashes PostgreSQL clusters at random moments. Then the
//! faults stop, the network quiesces, and `chipsd check` verifies every invariant across the four
//! sites. Bounded in time; prints what it attempted, committed and injected, and how long the
//! network took to converge. Exit status 0 only if every invariant holds.
//!
//! ```text
//! cargo run -p chips-demo --bin chips-chaos -- --duration 600      # the long run
//! ```

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chips_core::sign::KeyPair;
use chips_tests::faults::FaultyProxy;
use chips_tests::ring::pay_address_as;
use chips_tests::{
    connect, eventually, free_port, oracle, sqlstate, Cluster, PrivateCluster, Sidecar, User,
};
use clap::Parser;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::sync::Mutex;
use uuid::Uuid;

#[derive(Parser)]
#[command(about = "Random traffic and faults on four sites, then check every invariant")]
struct Args {
    /// Seconds of traffic under faults.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Seed of the traffic, the faults and the chaos driver.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Trading agents acting at once.
    #[arg(long, default_value_t = 3)]
    agents: usize,
    /// The chipsd binary (default: the one built next to this program).
    #[arg(long, env = "CHIPSD_BIN")]
    chipsd: Option<std::path::PathBuf>,
    /// Seconds the network gets to converge once the faults stop.
    #[arg(long, default_value_t = 300)]
    converge: u64,
    /// When chipsd check finds a problem, keep the sites up this many seconds before stopping
    /// them (their connection strings are printed).
    #[arg(long, default_value_t = 0)]
    hold: u64,
    /// chipsd's log filter (CHIPSD_LOG), written to this program's standard error.
    #[arg(long, default_value = "error")]
    chipsd_log: String,
    /// Keep the sites up for `--hold` seconds whatever the check found (to look at a run's rows).
    #[arg(long)]
    keep: bool,
}

const SITES: usize = 4;
const MINUTE: Duration = Duration::from_secs(60);
const TICK: Duration = Duration::from_millis(100);

/// What the traffic needs of a person: enough to connect again after a crash.
#[derive(Clone)]
struct Person {
    site: usize,
    ent: String,
    cuid: String,
    name: String,
    role: String,
    seed: [u8; 32],
}

struct Tally {
    uuid: Uuid,
    vendor: usize,
    client: usize,
}

/// One site: its cluster (crashed and restarted), its chipsd (killed and restarted), the proxy
/// in front of chipsd.
struct Site {
    pg: PrivateCluster,
    dsn: String,
    agent: String,
    /// The port peers reach it on (its proxy's).
    port: u16,
    car: Mutex<Sidecar>,
    proxy: FaultyProxy,
}

#[derive(Default)]
struct Outcomes {
    attempted: AtomicUsize,
    committed: AtomicUsize,
    refused: AtomicUsize,
    failed: AtomicUsize,
}

#[derive(Default)]
struct Stats {
    ops: BTreeMap<&'static str, Outcomes>,
    chipsd_kills: AtomicUsize,
    pg_crashes: AtomicUsize,
    chipsd_restarts: AtomicUsize,
    /// Payments to CHIP addresses that started: the payer's site, the lift, and whether the
    /// whole network could have carried it then (None: a site was down, nobody knows).
    payments: std::sync::Mutex<Vec<(usize, Uuid, Option<bool>)>>,
}

impl Stats {
    fn new() -> Stats {
        let mut s = Stats::default();
        for k in ["pay", "refund", "invoice", "settings", "pay_address"] {
            s.ops.insert(k, Outcomes::default());
        }
        s
    }
}

type Res<T> = Result<T, String>;

fn e(x: tokio_postgres::Error) -> String {
    format!("{} ({})", chips_tests::errmsg(&x), sqlstate(&x))
}

/// The oracle: whether the whole network (every site's tallies, read by their DBA) could carry
/// `units` from `from` to `to` now; None when a site cannot be read (it is down).
async fn could_carry(sites: &[Site], from: &Person, to: &Person, units: i64) -> Option<bool> {
    let mut dbs = Vec::new();
    for s in sites {
        dbs.push(connect(&s.dsn).await.ok()?);
    }
    let g = oracle::Graph::read(&dbs.iter().collect::<Vec<_>>())
        .await
        .ok()?;
    let node = |p: &Person| oracle::node(&json!({"cuid": p.cuid, "agent": sites[p.site].agent}));
    Some(g.max_flow(&node(from), &node(to)) >= units)
}

/// `person` as a client of their site (a fresh connection: the last may have died in a crash).
async fn login(sites: &[Site], p: &Person) -> Res<User> {
    let db = connect(&sites[p.site].dsn).await.map_err(e)?;
    db.batch_execute(&format!("SET ROLE \"{}\"", p.role))
        .await
        .map_err(e)?;
    Ok(User {
        ent: p.ent.clone(),
        cuid: p.cuid.clone(),
        name: p.name.clone(),
        role: p.role.clone(),
        key: KeyPair::from_seed(&p.seed),
        db,
    })
}

async fn state(u: &User, t: Uuid) -> Option<String> {
    u.state(t).await.ok().flatten()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    // on Ctrl-C the run is dropped: its sidecars and clusters stop as they are dropped
    let r = tokio::select! {
        r = run(Args::parse()) => r,
        _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
    };
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(x) => {
            eprintln!("chips-chaos failed: {x}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> Res<bool> {
    let chipsd = match &args.chipsd {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .map_err(|x| x.to_string())?
            .with_file_name("chipsd"),
    };
    let keys = chips_tests::scratch_dir("chaos");
    let mut rng = StdRng::seed_from_u64(args.seed);

    println!(
        "== {SITES} sites: each its own PostgreSQL cluster, database, chipsd, and faulty proxy"
    );
    let mut sites: Vec<Site> = vec![];
    let mut people: Vec<Person> = vec![];
    let mut users: Vec<User> = vec![];
    for k in 0..SITES {
        let pg = PrivateCluster::start(&format!("chaos{k}")).map_err(|x| x.to_string())?;
        let (real, advertised) = (free_port(), free_port());
        let s = Cluster::new(pg.dsn())
            .site(&format!("chaos_{k}"), advertised)
            .await
            .map_err(e)?;
        s.admin
            .batch_execute(
                "SELECT chips.clearing_configure(enabled => true, every => '2 seconds');
                 SELECT chips.lift_configure(life => '10 seconds', hop_step => '2 seconds');",
            )
            .await
            .map_err(e)?;
        let proxy = FaultyProxy::start(advertised, real, args.seed ^ k as u64, usize::MAX).await;
        proxy.set(false);
        let car = Sidecar::start(
            &chipsd,
            &s,
            real,
            &keys,
            &[
                "--poll-ms",
                "100",
                "--clearing-secs",
                "1",
                "--sync-secs",
                "2",
            ],
            &args.chipsd_log,
        )
        .map_err(|x| format!("chipsd: {x}"))?;
        for i in 0..3 {
            let u = s
                .user(&format!("Person {k}.{i}"), &format!("p{k}{i}"))
                .await
                .map_err(e)?;
            people.push(Person {
                site: k,
                ent: u.ent.clone(),
                cuid: u.cuid.clone(),
                name: u.name.clone(),
                role: u.role.clone(),
                seed: u.key.seed(),
            });
            users.push(u);
        }
        println!(
            "  site {k}: cluster on 127.0.0.1:{}, chipsd on {real}, its proxy on {advertised}",
            pg.port
        );
        sites.push(Site {
            dsn: s.dsn.clone(),
            agent: s.agent_id(),
            port: advertised,
            pg,
            car: Mutex::new(car),
            proxy,
        });
    }

    // Tallies: inside each site p0 owes p1 owes p2; across, p2 of site k buys from p0 of k+1.
    let mut plan = vec![];
    for k in 0..SITES {
        plan.push((3 * k + 1, 3 * k));
        plan.push((3 * k + 2, 3 * k + 1));
        plan.push((3 * ((k + 1) % SITES), 3 * k + 2));
    }
    let mut tallies = vec![];
    for &(v, c) in &plan {
        let t = users[v]
            .draft("stock", json!({"limit": 2_000_000}), json!({}), "chaos")
            .await
            .map_err(e)?;
        let ticket = users[v].ticket(t, false).await.map_err(e)?;
        users[c].redeem(&ticket).await.map_err(e)?;
        tallies.push(Tally {
            uuid: t,
            vendor: v,
            client: c,
        });
    }
    for t in &tallies {
        let v = &users[t.vendor];
        eventually("tickets arrive", MINUTE, TICK, || async {
            state(v, t.uuid).await.as_deref() == Some("P.draft")
        })
        .await?;
        v.offer(t.uuid).await.map_err(e)?;
    }
    for t in &tallies {
        let c = &users[t.client];
        eventually("offers arrive", MINUTE, TICK, || async {
            state(c, t.uuid).await.as_deref() == Some("P.offer")
        })
        .await?;
        c.accept(t.uuid).await.map_err(e)?;
    }
    for t in &tallies {
        let v = &users[t.vendor];
        eventually("tallies open", MINUTE, TICK, || async {
            state(v, t.uuid).await.as_deref() == Some("open")
        })
        .await?;
    }
    drop(users);
    println!(
        "  {} people, {} tallies open (a circle through all four sites)",
        people.len(),
        tallies.len()
    );
    // clearing rounds: site 0 coordinates every site (itself too), a round every 3 s
    let coordinator = format!("{}@127.0.0.1:{}", sites[0].agent, sites[0].port);
    let admin0 = connect(&sites[0].dsn).await.map_err(e)?;
    admin0
        .batch_execute(
            "SELECT chips.round_configure(coordinate => true, every => '3 seconds', life => '45 seconds')",
        )
        .await
        .map_err(e)?;
    for s in &sites {
        connect(&s.dsn)
            .await
            .map_err(e)?
            .execute(
                "SELECT chips.round_configure(coordinator => $1)",
                &[&coordinator],
            )
            .await
            .map_err(e)?;
    }
    eventually("every site joins the rounds", MINUTE, TICK, || async {
        admin0
            .query_one("SELECT count(*) FROM chips.round_members", &[])
            .await
            .is_ok_and(|r| r.get::<_, i64>(0) == SITES as i64)
    })
    .await?;
    drop(admin0);
    println!("  site 0 coordinates clearing rounds for all {SITES} sites, one every 3 s");

    println!(
        "\n== {} s of traffic ({} agents) under faults: proxies on, sidecars SIGKILLed, clusters crashed",
        args.duration, args.agents
    );
    for s in &sites {
        s.proxy.set(true);
    }
    let sites = Arc::new(sites);
    let people = Arc::new(people);
    let tallies = Arc::new(tallies);
    let stats = Arc::new(Stats::new());
    let done = Arc::new(AtomicBool::new(false));
    let mut tasks = vec![];
    for a in 0..args.agents {
        let (sites, people, tallies, stats, done) = (
            sites.clone(),
            people.clone(),
            tallies.clone(),
            stats.clone(),
            done.clone(),
        );
        let seed = args.seed.wrapping_mul(1000) + a as u64;
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed);
            while !done.load(Ordering::SeqCst) {
                traffic(&sites, &people, &tallies, &stats, &mut rng).await;
                tokio::time::sleep(Duration::from_millis(rng.gen_range(5..50))).await;
            }
        }));
    }
    // the chaos driver (and supervisor: a chipsd that died on its own is restarted too)
    let end = Instant::now() + Duration::from_secs(args.duration);
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(1_000..3_000))).await;
        let k = rng.gen_range(0..SITES);
        if rng.gen_bool(0.6) {
            let mut car = sites[k].car.lock().await;
            car.kill9();
            stats.chipsd_kills.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(rng.gen_range(200..2_000))).await;
            car.restart()
                .map_err(|x| format!("restarting chipsd: {x}"))?;
        } else {
            sites[k].pg.crash().map_err(|x| x.to_string())?;
            stats.pg_crashes.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(rng.gen_range(200..2_000))).await;
            sites[k].pg.run().map_err(|x| x.to_string())?;
        }
        supervise(&sites, &stats).await?;
    }
    done.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.map_err(|x| x.to_string())?;
    }

    println!("\n== faults stop; the network converges");
    for s in sites.iter() {
        s.proxy.set(false);
    }
    supervise(&sites, &stats).await?;
    // no new rounds: the ones under way end
    eventually("site 0 stops opening rounds", MINUTE, TICK, || async {
        match connect(&sites[0].dsn).await {
            Ok(db) => db
                .batch_execute("SELECT chips.round_configure(coordinate => false)")
                .await
                .is_ok(),
            Err(_) => false,
        }
    })
    .await?;
    let t = Instant::now();
    let calm = quiesce(&sites, &stats, Duration::from_secs(args.converge)).await?;
    let converged = t.elapsed();

    // one more round on the quiet network: every site must take part and it must commit
    let last_round = last_round(&sites).await?;
    let calm = calm && quiesce(&sites, &stats, Duration::from_secs(args.converge)).await?;
    // the sidecars' chain resync runs every 2 s: give it one more round after the last message
    tokio::time::sleep(Duration::from_secs(3)).await;

    let dsns: Vec<String> = sites.iter().map(|s| s.dsn.clone()).collect();
    let (checked, report) = match chipsd::check::check(&dsns).await {
        Ok(r) => (r.problems.is_empty(), r.text()),
        Err(e) => (false, format!("chipsd check: {e}")),
    };

    println!("\n== figures");
    let (mut att, mut com, mut refd, mut fail) = (0, 0, 0, 0);
    let mut adds_up = true;
    for (k, t) in &stats.ops {
        let (a, c, r, f) = (
            t.attempted.load(Ordering::SeqCst),
            t.committed.load(Ordering::SeqCst),
            t.refused.load(Ordering::SeqCst),
            t.failed.load(Ordering::SeqCst),
        );
        (att, com, refd, fail) = (att + a, com + c, refd + r, fail + f);
        adds_up &= a == c + r + f;
        println!(
            "  {k:<12} attempted {a:>5}  committed {c:>5}  refused {r:>4}  failed (a fault) {f:>4}"
        );
    }
    // every operation ends one way: the figures add up, or this run is not to be reported
    println!(
        "  operations: {att} attempted = {com} committed + {refd} refused + {fail} failed: {}",
        if adds_up && att == com + refd + fail {
            "adds up"
        } else {
            "DOES NOT ADD UP"
        }
    );
    {
        // how the payments to CHIP addresses ended, against what the network could carry
        let payments = stats.payments.lock().expect("stats").clone();
        let mut dbs = Vec::new();
        for s in sites.iter() {
            dbs.push(connect(&s.dsn).await.map_err(e)?);
        }
        let (mut good, mut could, mut good_could, mut unknown) = (0, 0, 0, 0);
        let mut why: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for (k, lift, c) in &payments {
            let r = dbs[*k]
                .query_one(
                    "SELECT status, coalesce(reason, status) FROM chips.lifts WHERE lift_uuid = $1 AND role = 'origin'",
                    &[lift],
                )
                .await
                .map_err(e)?;
            let (st, reason): (String, String) = (r.get(0), r.get(1));
            let c = match c {
                Some(c) => *c,
                None => {
                    unknown += 1;
                    false
                }
            };
            could += usize::from(c);
            if st == "good" {
                good += 1;
                good_could += usize::from(c);
            } else {
                let w = why.entry(reason).or_default();
                w.0 += 1;
                w.1 += usize::from(c);
            }
        }
        println!(
            "  payments to CHIP addresses that started: {}, {good} good; the network could have carried {could} of them (oracle; {unknown} unknown: a site was down); good among those: {good_could}",
            payments.len()
        );
        for (reason, (n, c)) in why {
            println!("    failed, {reason}: {n} ({c} of them the network could have carried)");
        }
    }
    let mut frames = 0;
    for (k, s) in sites.iter().enumerate() {
        frames += s.proxy.injected();
        println!("  proxy of site {k}: {}", s.proxy.counts().describe());
    }
    println!(
        "  faults: {frames} frame faults, {} sidecars SIGKILLed, {} PostgreSQL crashes, {} sidecars found dead and restarted",
        stats.chipsd_kills.load(Ordering::SeqCst),
        stats.pg_crashes.load(Ordering::SeqCst),
        stats.chipsd_restarts.load(Ordering::SeqCst)
    );
    println!(
        "  converged {:.1} s after the faults stopped",
        converged.as_secs_f64()
    );
    let rounds = connect(&sites[0].dsn)
        .await
        .map_err(e)?
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE status = 'good'),
                    count(*) FILTER (WHERE status = 'void'),
                    coalesce(sum(attempt - 1), 0)::bigint
             FROM chips.rounds",
            &[],
        )
        .await
        .map_err(e)?;
    let (opened, good, void, again): (i64, i64, i64, i64) =
        (rounds.get(0), rounds.get(1), rounds.get(2), rounds.get(3));
    println!(
        "  clearing rounds: {opened} opened, {good} committed, {void} void, {again} solved again"
    );
    println!("  the last round, after the faults: {last_round}");
    println!("\n== chipsd check across the four sites\n{report}");
    if args.hold > 0 && (!checked || args.keep) {
        // keep the evidence: the sites stay up (sidecars too) for a look with psql
        println!("== the sites stay up {} s for a look:", args.hold);
        for s in sites.iter() {
            println!("  psql \"{}\"", s.dsn);
        }
        tokio::time::sleep(Duration::from_secs(args.hold)).await;
    }

    for s in sites.iter() {
        s.car.lock().await.stop(Duration::from_secs(5));
    }
    let _ = std::fs::remove_dir_all(&keys);
    Ok(checked && calm && last_round.starts_with("good") && adds_up)
}

/// Waits (up to `limit`) until no site has a message undelivered, a lift or a round under way,
/// five checks in a row; restarts dead sidecars meanwhile. False if it did not.
async fn quiesce(sites: &[Site], stats: &Stats, limit: Duration) -> Res<bool> {
    let t = Instant::now();
    let mut calm = 0;
    let mut last = String::new();
    while calm < 5 {
        if t.elapsed() > limit {
            println!("  did not converge in {} s: {last}", limit.as_secs());
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        supervise(sites, stats).await?;
        let mut busy = 0i64;
        let mut parts = vec![];
        for (k, s) in sites.iter().enumerate() {
            let Ok(db) = connect(&s.dsn).await else {
                busy += 1;
                continue;
            };
            let r = db
                .query_one(
                    "SELECT (SELECT count(*) FROM chips.outbox WHERE delivered IS NULL),
                            (SELECT count(*) FROM chips.lifts
                             WHERE status IN ('seek', 'pend') OR (kind = 'round' AND status = 'draft'))
                          + (SELECT count(*) FROM chips.rounds WHERE status IN ('collect', 'prepare'))",
                    &[],
                )
                .await
                .map_err(e)?;
            let (o, l): (i64, i64) = (r.get(0), r.get(1));
            busy += o + l;
            parts.push(format!("site {k}: {o} undelivered, {l} lifts under way"));
        }
        last = parts.join("; ");
        calm = if busy == 0 { calm + 1 } else { 0 };
    }
    Ok(true)
}

/// Opens one round at site 0 and waits for its decision: "good, N sites took part, M units
/// moved" (or what went wrong).
async fn last_round(sites: &[Site]) -> Res<String> {
    let db = connect(&sites[0].dsn).await.map_err(e)?;
    db.batch_execute("SELECT chips.round_configure(coordinate => true)")
        .await
        .map_err(e)?;
    let round: Uuid = db
        .query_one("SELECT chips.round_open()", &[])
        .await
        .map_err(e)?
        .get(0);
    db.batch_execute("SELECT chips.round_configure(coordinate => false)")
        .await
        .map_err(e)?;
    let decided = eventually("the last round is decided", MINUTE, TICK, || async {
        db.query_one(
            "SELECT status IN ('good', 'void') FROM chips.rounds WHERE round_uuid = $1",
            &[&round],
        )
        .await
        .is_ok_and(|r| r.get(0))
    })
    .await;
    let r = db
        .query_one(
            "SELECT r.status, coalesce(r.reason, ''),
                    (SELECT count(*) FROM chips.round_sites y WHERE y.round_id = r.id AND y.status = 'ready')
             FROM chips.rounds r WHERE r.round_uuid = $1",
            &[&round],
        )
        .await
        .map_err(e)?;
    let (status, reason, ready): (String, String, i64) = (r.get(0), r.get(1), r.get(2));
    if decided.is_err() || status != "good" || ready != SITES as i64 {
        return Ok(format!(
            "{status} {reason} ({ready} of {SITES} sites ready)"
        ));
    }
    // every member settles its part
    let mut units = 0i64;
    for s in sites {
        let db = connect(&s.dsn).await.map_err(e)?;
        eventually(
            "every member settles the last round",
            MINUTE,
            TICK,
            || async {
                db.query_one(
                    "SELECT status = 'good' FROM chips.lifts WHERE lift_uuid = $1",
                    &[&round],
                )
                .await
                .is_ok_and(|r| r.get(0))
            },
        )
        .await?;
        units += db
            .query_one(
                "SELECT units FROM chips.lifts WHERE lift_uuid = $1",
                &[&round],
            )
            .await
            .map_err(e)?
            .get::<_, i64>(0);
    }
    Ok(format!(
        "good, all {SITES} sites took part, {units} units moved over their tallies"
    ))
}

/// Restarts any chipsd that is not running (killed by a fault, or exited when its database
/// went away).
async fn supervise(sites: &[Site], stats: &Stats) -> Res<()> {
    for s in sites {
        let mut car = s.car.lock().await;
        if car.child.try_wait().map_err(|x| x.to_string())?.is_some() {
            stats.chipsd_restarts.fetch_add(1, Ordering::SeqCst);
            car.restart()
                .map_err(|x| format!("restarting chipsd: {x}"))?;
        }
    }
    Ok(())
}

/// One random operation by a random person; counted by kind and outcome.
async fn traffic(
    sites: &[Site],
    people: &[Person],
    tallies: &[Tally],
    stats: &Stats,
    rng: &mut StdRng,
) {
    let t = &tallies[rng.gen_range(0..tallies.len())];
    let roll: f64 = rng.gen();
    let (kind, who) = match roll {
        r if r < 0.5 => ("pay", t.client),
        r if r < 0.65 => ("refund", t.vendor),
        r if r < 0.75 => ("invoice", t.vendor),
        r if r < 0.85 => (
            "settings",
            if rng.gen_bool(0.5) {
                t.vendor
            } else {
                t.client
            },
        ),
        _ => ("pay_address", rng.gen_range(0..people.len())),
    };
    let n = &stats.ops[kind];
    n.attempted.fetch_add(1, Ordering::SeqCst);
    let p = &people[who];
    let u = match login(sites, p).await {
        Ok(u) => u,
        Err(_) => {
            n.failed.fetch_add(1, Ordering::SeqCst);
            return;
        }
    };
    let local = people[t.vendor].site == people[t.client].site;
    let r: Result<(), tokio_postgres::Error> = match kind {
        "pay" => u
            .pay(t.uuid, rng.gen_range(1..=5_000), "")
            .await
            .map(|_| ()),
        "refund" => u
            .pay(t.uuid, rng.gen_range(1..=1_000), "")
            .await
            .map(|_| ()),
        "invoice" if local => {
            // the client signs it at once (both on one site)
            match u.invoice(t.uuid, rng.gen_range(1..=2_000), "").await {
                Ok(chit) => match login(sites, &people[t.client]).await {
                    Ok(c) => c.sign_invoice(t.uuid, chit).await.map(|_| ()),
                    Err(_) => Ok(()),
                },
                Err(x) => Err(x),
            }
        }
        "invoice" => u
            .invoice(t.uuid, rng.gen_range(1..=2_000), "")
            .await
            .map(|_| ()),
        "settings" => {
            let target = rng.gen_range(0..50_000i64);
            u.settings(
                t.uuid,
                json!({"target": target, "bound": target + rng.gen_range(0..100_000i64)}),
            )
            .await
            .map(|_| ())
        }
        _ => {
            let to = loop {
                let q = &people[rng.gen_range(0..people.len())];
                if q.site != p.site {
                    break q;
                }
            };
            let addr = json!({"cuid": to.cuid, "agent": sites[to.site].agent});
            let units = rng.gen_range(1..=3_000);
            let could = could_carry(sites, p, to, units).await;
            pay_address_as(&u.db, &u.key, &addr, units)
                .await
                .map(|lift| {
                    let mut v = stats.payments.lock().expect("stats");
                    v.push((p.site, lift, could));
                })
        }
    };
    match r {
        Ok(()) => n.committed.fetch_add(1, Ordering::SeqCst),
        // refusals the API documents: over a limit, nothing to pay through, a state that moved
        Err(x)
            if x.as_db_error().is_some() && !matches!(&sqlstate(&x)[..2], "57" | "08" | "40") =>
        {
            n.refused.fetch_add(1, Ordering::SeqCst)
        }
        Err(_) => n.failed.fetch_add(1, Ordering::SeqCst),
    };
}
