//! Clearing rounds across a federation, against the central optimum and against route discovery.
//!
//! An obligation network (`debtor,creditor,amount`, header skipped) is cut across SITES sites
//! (default 8), each its own database and chipsd on one private cluster: every firm goes to the
//! site a hash of its number picks, so a tally between firms of two sites has its stock half at
//! the creditor's site and its foil half at the debtor's, both loaded directly (the same digest,
//! the partner named by its CHIP address), the way the clearing benchmark loads tallies. Then:
//!
//! 1. One clearing round, coordinated by the first site, every site a member. Printed: the
//!    share of tallies that cross sites; what the round cleared against the optimum core's
//!    solver finds on the whole CSV (they must be equal); the round's time end to end and per
//!    phase (from the coordinator's and members' timestamps); messages and bytes each site sent
//!    and received; the peak memory of the coordinator (its chipsd, and the private memory of
//!    its database backends, sampled every 20 ms); and that every tally's halves agree after.
//! 2. Payments while a round runs: the partition loaded again; at site 1, PAYERS (4) custodial
//!    creditors of local tallies pay 1 back in a loop, PAY_SECS (10) seconds with no round,
//!    then while a round runs: the payments' p50, p99 and longest wait in each, failures and
//!    their errors, and what the payers' backends waited on (sampled every 5 ms). STEPS=2 runs
//!    this step alone (STEPS=1: the first step alone). The payers' sessions log their lock
//!    waits past 1 ms, read back from the server log (BENCH_LOG, MEMBER_LOG): the longest wait
//!    on a lock the round's work held, against the longest on one another payer held. With
//!    MEMBER_DSN (MEMBER_CLUSTER=1 in the script), site 1 lives on a cluster of its own, so its
//!    commits flush its own WAL, not the other sites' too.
//! 3. The same partition, loaded again into fresh sites, cleared the way sites clear without a
//!    coordinator (automatic clearing every second: each site's own pass and route-discovery
//!    circular lifts) for the same wall time as the round took: its share of the optimum.
//!
//! ```text
//! bash scripts/bench-rounds.sh [FILE.csv ...]     # default: MTCS network 01
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chips_core::clearing::{solve, Edge};
use chips_tests::load::{load, Obl};
use chips_tests::{free_port, Cluster, Sidecar, Site};
use tokio_postgres::Client;
use uuid::Uuid;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A tally half as compared: its balance (the stock half's sign), chain length and tip.
type Half = (i64, i32, Option<Vec<u8>>);

/// The site a firm lives on: a hash of its number (splitmix64), modulo the number of sites.
fn site_of(firm: u32, sites: usize) -> usize {
    let mut z = u64::from(firm).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z % sites as u64) as usize
}

fn read_csv(path: &str) -> Res<Vec<Obl>> {
    let text = std::fs::read_to_string(path)?;
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let mut f = line.split(',');
        let (Some(d), Some(c), Some(a)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let (d, c, a): (u32, u32, i64) = (d.trim().parse()?, c.trim().parse()?, a.trim().parse()?);
        if d != c && a > 0 {
            out.push(Obl {
                debtor: d,
                creditor: c,
                amount: a,
            });
        }
    }
    Ok(out)
}

/// The optimum of the whole network: what one solve over every obligation clears, and the flow
/// on each obligation.
fn optimum(obls: &[Obl]) -> Res<(i64, Vec<i64>)> {
    let n = obls
        .iter()
        .map(|o| o.debtor.max(o.creditor) as usize + 1)
        .max()
        .unwrap_or(0);
    let edges: Vec<Edge> = obls
        .iter()
        .map(|o| Edge {
            from: o.debtor,
            to: o.creditor,
            cap: o.amount,
            cost: -1,
        })
        .collect();
    let c = solve(n, &edges)?;
    Ok((i64::try_from(c.cleared)?, c.flow))
}

/// The federation: its sites and their chipsd.
struct Fed {
    sites: Vec<Site>,
    /// Each obligation's tally.
    uuids: Vec<Uuid>,
    ports: Vec<u16>,
    cars: Vec<Sidecar>,
}

impl Fed {
    /// Sites `{prefix}_0..` with the partition loaded, each with its chipsd; site 1 on `apart`
    /// when given (a cluster of its own), every other site on `cl`.
    #[allow(clippy::too_many_arguments)]
    async fn build(
        cl: &Cluster,
        apart: Option<&Cluster>,
        prefix: &str,
        obls: &[Obl],
        n: usize,
        chipsd: &str,
        dir: &std::path::Path,
    ) -> Res<Fed> {
        let mut sites = Vec::new();
        let mut ports = Vec::new();
        for k in 0..n {
            let port = free_port();
            let on = match apart {
                Some(a) if k == 1 => a,
                _ => cl,
            };
            sites.push(on.site(&format!("{prefix}_{k}"), port).await?);
            ports.push(port);
        }
        let uuids = load(&sites, &ports, obls, |f| site_of(f, n)).await?;
        let mut cars = Vec::new();
        for (s, &p) in sites.iter().zip(&ports) {
            cars.push(Sidecar::start(
                std::path::Path::new(chipsd),
                s,
                p,
                dir,
                &["--lift-tick-ms", "200", "--clearing-secs", "1"],
                "error",
            )?);
        }
        Ok(Fed {
            sites,
            uuids,
            ports,
            cars,
        })
    }

    /// What every debtor owes, over every tally (its stock half).
    async fn debt(&self) -> Res<i64> {
        self.total(
            "SELECT coalesce(sum(abs(net_good)), 0)::bigint FROM chips.tallies WHERE side = 'stock'",
            &[],
        )
        .await
    }

    /// The sum over every site of `sql`'s one bigint.
    async fn total(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Res<i64> {
        let mut n = 0;
        for s in &self.sites {
            n += s.admin.query_one(sql, params).await?.get::<_, i64>(0);
        }
        Ok(n)
    }

    /// Messages not yet delivered, at every site.
    async fn backlog(&self) -> Res<i64> {
        let mut d = 0;
        for s in &self.sites {
            d += s.undelivered().await?;
        }
        Ok(d)
    }

    /// Tallies whose two halves disagree on the balance or the chain (every site's rows).
    async fn disagreeing(&self) -> Res<usize> {
        let mut halves: HashMap<Uuid, Vec<Half>> = HashMap::new();
        for s in &self.sites {
            for r in s
                .admin
                .query(
                    "SELECT tally_uuid, net_good, chain_len, chain_tip FROM chips.tallies",
                    &[],
                )
                .await?
            {
                halves
                    .entry(r.get(0))
                    .or_default()
                    .push((r.get(1), r.get(2), r.get(3)));
            }
        }
        Ok(halves
            .values()
            .filter(|h| h.len() != 2 || h[0].0 != -h[1].0 || h[0].1 != h[1].1 || h[0].2 != h[1].2)
            .count())
    }

    /// Opens a round at the coordinator (site 0) and waits until it is decided there and
    /// settled at every member: the round and its status.
    async fn round(&self) -> Res<(Uuid, String)> {
        let t0 = Instant::now();
        let round: Uuid = self.sites[0]
            .admin
            .query_one("SELECT chips.round_open()", &[])
            .await?
            .get(0);
        let status = loop {
            let s: String = self.sites[0]
                .admin
                .query_one(
                    "SELECT status FROM chips.rounds WHERE round_uuid = $1",
                    &[&round],
                )
                .await?
                .get(0);
            if s == "good" || s == "void" {
                break s;
            }
            if t0.elapsed() > Duration::from_secs(3600) {
                return Err("the round was not decided in an hour".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        loop {
            let open = self
                .total(
                    "SELECT count(*) FROM chips.lifts WHERE lift_uuid = $1 AND status NOT IN ('good', 'void')",
                    &[&round],
                )
                .await?;
            if open == 0 {
                break;
            }
            if t0.elapsed() > Duration::from_secs(3600) {
                return Err("the round was not settled at every member in an hour".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok((round, status))
    }

    /// Site 0 coordinates rounds for every site; returns once all have joined.
    async fn federate(&self) -> Res<()> {
        let coordinator = format!("{}@127.0.0.1:{}", self.sites[0].agent_id(), self.ports[0]);
        self.sites[0]
            .admin
            .execute(
                "SELECT * FROM chips.round_configure(coordinate => true, every => '1 day', life => '1 hour')",
                &[],
            )
            .await?;
        for s in &self.sites {
            s.admin
                .execute(
                    "SELECT * FROM chips.round_configure(coordinator => $1)",
                    &[&coordinator],
                )
                .await?;
        }
        let t = Instant::now();
        loop {
            let m: i64 = self.sites[0]
                .admin
                .query_one("SELECT count(*) FROM chips.round_members", &[])
                .await?
                .get(0);
            if m == self.sites.len() as i64 && self.backlog().await? == 0 {
                return Ok(());
            }
            if t.elapsed() > Duration::from_secs(60) {
                return Err("the sites did not all join the coordinator in 60 s".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(mut self) {
        for c in &mut self.cars {
            c.stop(Duration::from_secs(5));
        }
    }
}

/// Private memory (kB) of the coordinator's chipsd and its database's backends now, and the
/// chipsd's own peak.
async fn coordinator_memory(coord: &Client, db: &str, chipsd_pid: u32) -> (u64, u64) {
    let field = |pid: u32, name: &str| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with(name))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0)
    };
    let mut backends = 0;
    if let Ok(rows) = coord
        .query(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1",
            &[&db],
        )
        .await
    {
        for r in rows {
            backends += field(r.get::<_, i32>(0) as u32, "RssAnon:");
        }
    }
    (
        backends + field(chipsd_pid, "RssAnon:"),
        field(chipsd_pid, "VmHWM:"),
    )
}

/// One payment: its tally, when it started, how long it took, and its error if it failed.
type Sample = (Uuid, Instant, Duration, Option<String>);

/// `who` (a payer scripts/bench/payers.sql made) pays 1 back on `tally`, again and again until
/// `stop`.
/// Its session logs every lock wait past 1 ms (`log_lock_waits`), which `lock_waits` reads back.
async fn pay_loop(
    dsn: String,
    who: String,
    tally: Uuid,
    stop: Arc<AtomicBool>,
) -> (i32, Vec<Sample>) {
    let Ok(c) = chips_tests::connect(&dsn).await else {
        return (0, vec![]);
    };
    let Ok(pid) = c.query_one("SELECT pg_backend_pid()", &[]).await else {
        return (0, vec![]);
    };
    if c.batch_execute(&format!(
        "SET application_name = 'bench_payer'; SET deadlock_timeout = '1ms';
         SET log_lock_waits = on; SET ROLE \"{who}\""
    ))
    .await
    .is_err()
    {
        return (0, vec![]);
    }
    let mut out = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let t = Instant::now();
        let r = c
            .query_one("SELECT chips.pay($1, 1, 'bench')", &[&tally])
            .await;
        let err = r.err().map(|e| match e.as_db_error() {
            Some(d) => format!("{}: {}", d.code().code(), d.message()),
            None => e.to_string(),
        });
        out.push((tally, t, t.elapsed(), err));
    }
    (pid.get(0), out)
}

/// The lock waits past 1 ms that the server log `log` holds between byte offsets `from` and
/// `to` (the payers' sessions log them, see `pay_loop`): the longest wait on a lock another
/// payer held, the longest on one anything else held (the round's work, chipsd), and how many
/// of each (past 1 ms, past 10 ms). Each wait is the log's "acquired ... after N ms" line; who
/// held the lock is the "still waiting" line's detail before it.
fn lock_waits(log: &str, from: u64, to: u64, payers: &[i32]) -> [(usize, usize, f64); 2] {
    use std::io::{Read, Seek, SeekFrom};
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(log) {
        if f.seek(SeekFrom::Start(from)).is_ok() {
            let _ = f.take(to.saturating_sub(from)).read_to_string(&mut text);
        }
    }
    let mut holders: HashMap<String, Vec<i32>> = HashMap::new();
    let mut out = [(0usize, 0usize, 0f64); 2];
    for line in text.lines() {
        let Some(pid) = line.split('[').nth(1).and_then(|r| r.split(']').next()) else {
            continue;
        };
        if let Some(d) = line
            .split("holding the lock: ")
            .nth(1)
            .and_then(|r| r.split('.').next())
        {
            let pids = d
                .split(", ")
                .filter_map(|x| x.trim().parse().ok())
                .collect();
            holders.insert(pid.to_string(), pids);
        } else if line.contains("LOG:  process ") && line.contains(" acquired ") {
            let ms: f64 = line
                .rsplit(" after ")
                .next()
                .and_then(|r| r.trim_end_matches(" ms").parse().ok())
                .unwrap_or(0.0);
            let by = holders.remove(pid).unwrap_or_default();
            let k = usize::from(!by.iter().all(|h| payers.contains(h)));
            out[k].0 += 1;
            out[k].1 += usize::from(ms > 10.0);
            out[k].2 = out[k].2.max(ms);
        }
    }
    out
}

/// What the payers' backends were doing, sampled every 5 ms until `stop`: how many times each
/// (wait event, and the start of what the backends blocking them ran) was seen, and how many
/// samples found a payment under way.
async fn waits(dsn: String, stop: Arc<AtomicBool>) -> (HashMap<String, usize>, usize) {
    let mut seen = HashMap::new();
    let mut busy = 0;
    let Ok(c) = chips_tests::connect(&dsn).await else {
        return (seen, busy);
    };
    while !stop.load(Ordering::SeqCst) {
        if let Ok(rows) = c
            .query(
                "SELECT coalesce(a.wait_event_type || ':' || a.wait_event, 'on CPU'),
                        (SELECT string_agg(DISTINCT left(regexp_replace(b.query, '\\s+', ' ', 'g'), 70), ' | ')
                         FROM pg_stat_activity b WHERE b.pid = ANY (pg_blocking_pids(a.pid)))
                 FROM pg_stat_activity a
                 WHERE a.application_name = 'bench_payer' AND a.state = 'active'",
                &[],
            )
            .await
        {
            for r in rows {
                busy += 1;
                let (ev, by): (String, Option<String>) = (r.get(0), r.get(1));
                let key = match by {
                    Some(b) => format!("{ev}, blocked by: {b}"),
                    None => ev,
                };
                *seen.entry(key).or_insert(0) += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (seen, busy)
}

/// The most frequent of what `waits` saw, one line each.
fn print_waits(label: &str, (seen, busy): &(HashMap<String, usize>, usize)) {
    let mut v: Vec<_> = seen.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1));
    println!("    what the payers' backends did ({label}; {busy} samples of a payment under way, every 5 ms):");
    for (k, n) in v.into_iter().take(8) {
        println!(
            "      {n:>6} ({:.1} %) {k}",
            *n as f64 * 100.0 / (*busy).max(1) as f64
        );
    }
}

/// Payments paid by a bench payer, sampled: every payment's sample, the payers' waits and their
/// backends' pids.
type Paid = (Vec<Sample>, (HashMap<String, usize>, usize), Vec<i32>);

/// `payers` clients paying at `site` for as long as `f` runs: every payment's sample, and what
/// their backends waited on.
async fn paying<F: std::future::Future>(
    site: &Site,
    list: &[(Uuid, String)],
    f: F,
) -> (F::Output, Paid) {
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = list
        .iter()
        .map(|(t, who)| tokio::spawn(pay_loop(site.dsn.clone(), who.clone(), *t, stop.clone())))
        .collect();
    let sampler = tokio::spawn(waits(site.dsn.clone(), stop.clone()));
    let out = f.await;
    stop.store(true, Ordering::SeqCst);
    let (mut pids, mut samples) = (Vec::new(), Vec::new());
    for t in tasks {
        let (pid, s) = t.await.unwrap_or_default();
        pids.push(pid);
        samples.extend(s);
    }
    let w = sampler.await.unwrap_or_default();
    (out, (samples, w, pids))
}

/// n, p50, p99 and max (ms) of the committed payments that started in [from, to], and how many
/// failed.
fn latency<'a>(
    samples: impl Iterator<Item = &'a Sample> + Clone,
    from: Instant,
    to: Instant,
) -> (usize, f64, f64, f64, usize) {
    let mut ms: Vec<f64> = samples
        .clone()
        .filter(|(_, t, _, e)| e.is_none() && *t >= from && *t <= to)
        .map(|(_, _, d, _)| d.as_secs_f64() * 1e3)
        .collect();
    let failed = samples
        .filter(|(_, t, _, e)| e.is_some() && *t >= from && *t <= to)
        .count();
    if ms.is_empty() {
        return (0, 0.0, 0.0, 0.0, failed);
    }
    ms.sort_by(f64::total_cmp);
    let max = ms[ms.len() - 1];
    (
        ms.len(),
        chips_tests::percentile(&mut ms.clone(), 0.50),
        chips_tests::percentile(&mut ms, 0.99),
        max,
        failed,
    )
}

/// The partition loaded again; at site 1 (a member, not the coordinator) `payers` custodial
/// creditors of local tallies pay 1 back in a loop: PAY_SECS seconds with no round, then while a
/// round runs, in the same run. The payments move debt, so this round is not held to the
/// optimum; it must end good with every tally's halves agreeing.
async fn payments_during_a_round(
    cl: &Cluster,
    chipsd: &str,
    dir: &std::path::Path,
    obls: &[Obl],
    flows: &[i64],
    n: usize,
    payers: usize,
) -> Res<()> {
    let secs: u64 = std::env::var("PAY_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    // MEMBER_DSN: site 1 on a cluster of its own, so its commits flush only its own WAL
    let apart = std::env::var("MEMBER_DSN").ok().map(Cluster::new);
    let fed = Fed::build(cl, apart.as_ref(), "bench_pay", obls, n, chipsd, dir).await?;
    fed.federate().await?;
    let site = &fed.sites[1];
    // half the payers on local tallies the optimum of the whole network moves, half on others
    let moves: Vec<Uuid> = obls
        .iter()
        .zip(flows)
        .zip(&fed.uuids)
        .filter(|((o, &f), _)| f > 0 && site_of(o.debtor, n) == 1 && site_of(o.creditor, n) == 1)
        .map(|(_, u)| *u)
        .collect();
    site.admin
        .batch_execute("CREATE TABLE public.bench_candidates (tally uuid, creditor text)")
        .await?;
    site.admin
        .execute(
            "WITH c AS (
                 SELECT DISTINCT ON (t.ent) t.tally_uuid AS tally, t.ent AS creditor,
                        t.tally_uuid = ANY ($1) AS moves
                 FROM chips.tallies t
                 WHERE t.side = 'stock' AND t.part_ent IS NOT NULL AND t.net_good > 0
                 ORDER BY t.ent, t.tally_uuid = ANY ($1) DESC, t.net_good DESC)
             INSERT INTO public.bench_candidates
             (SELECT tally, creditor FROM c WHERE moves ORDER BY random() LIMIT $2)
             UNION ALL
             (SELECT tally, creditor FROM c WHERE NOT moves ORDER BY random() LIMIT $3)",
            &[
                &moves,
                &((payers / 2) as i64),
                &((payers - payers / 2) as i64),
            ],
        )
        .await?;
    site.admin
        .batch_execute(include_str!("../../scripts/bench/payers.sql"))
        .await?;
    let list: Vec<(Uuid, String)> = site
        .admin
        .query("SELECT tally, who FROM public.bench_pay ORDER BY n", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    // the server log of site 1's cluster (BENCH_LOG, or MEMBER_LOG with MEMBER_DSN), where the
    // payers' lock waits go
    let log = std::env::var(if apart.is_some() {
        "MEMBER_LOG"
    } else {
        "BENCH_LOG"
    })
    .ok();
    let at = || {
        log.as_deref()
            .and_then(|l| std::fs::metadata(l).ok())
            .map_or(0, |m| m.len())
    };
    let w0 = wal_bytes(&site.admin).await?;
    let (l0, t0) = (at(), Instant::now());
    let ((), (idle, idle_waits, idle_pids)) =
        paying(site, &list, tokio::time::sleep(Duration::from_secs(secs))).await;
    let (l1, t1) = (at(), Instant::now());
    let w1 = wal_bytes(&site.admin).await?;
    let (round, (during, during_waits, during_pids)) = paying(site, &list, async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let from = Instant::now();
        let r = fed.round().await;
        (r, from, Instant::now())
    })
    .await;
    let ((round, status), from, to) = (round.0?, round.1, round.2);
    let l2 = at();
    let w2 = wal_bytes(&site.admin).await?;
    let (attempt, cleared): (i32, i64) = {
        let r = fed.sites[0]
            .admin
            .query_one(
                "SELECT attempt, coalesce(-cost, 0)::bigint FROM chips.rounds WHERE round_uuid = $1",
                &[&round],
            )
            .await?;
        (r.get(0), r.get(1))
    };
    let moved: Vec<Uuid> = site
        .admin
        .query(
            "SELECT DISTINCT t.tally_uuid FROM chips.chits c JOIN chips.lifts l ON l.id = c.lift_id
             JOIN chips.tallies t ON t.id = c.tally_id
             WHERE l.lift_uuid = $1 AND c.status = 'good'
               AND t.tally_uuid IN (SELECT tally FROM public.bench_pay)",
            &[&round],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let (i_n, i50, i99, imax, ifail) = latency(idle.iter(), t0, t1);
    let (d_n, d50, d99, dmax, dfail) = latency(during.iter(), from, to);
    println!(
        "  payments at site 1 ({payers} payers, each paying 1 back on a local tally; {} of those tallies moved by the round; site 1 on {}):",
        moved.len(),
        if apart.is_some() { "a cluster of its own" } else { "the cluster of every site" }
    );
    println!(
        "    no round ({secs} s): n={i_n} p50 {i50:.2} ms, p99 {i99:.2} ms, max {imax:.2} ms, failed {ifail}; site 1's cluster wrote {:.1} MB/s of WAL",
        (w1 - w0) / 1e6 / (t1 - t0).as_secs_f64()
    );
    println!(
        "    the round: {status}, attempt {attempt}, cleared {cleared}; site 1's cluster wrote {:.1} MB/s of WAL while it ran",
        (w2 - w1) / 1e6 / (to - t1).as_secs_f64()
    );
    println!(
        "    during the round ({status}, {:.1} s open to settled): n={d_n} p50 {d50:.2} ms, p99 {d99:.2} ms, max {dmax:.2} ms, failed {dfail}; p99 during / idle {:.2}",
        (to - from).as_secs_f64(),
        d99 / i99
    );
    for (label, on) in [("moved by the round", true), ("not moved", false)] {
        let (n, p50, p99, max, failed) = latency(
            during.iter().filter(|s| moved.contains(&s.0) == on),
            from,
            to,
        );
        println!(
            "      on tallies {label}: n={n} p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms, failed {failed}"
        );
    }
    print_waits("no round", &idle_waits);
    print_waits("during the round", &during_waits);
    if let Some(log) = &log {
        for (label, (a, b), pids) in [
            ("no round", (l0, l1), &idle_pids),
            (
                "during the round (and the payers' last payments after it)",
                (l1, l2),
                &during_pids,
            ),
        ] {
            let [payer, other] = lock_waits(log, a, b, pids);
            println!(
                "    lock waits past 1 ms ({label}): on a lock another payer held {} ({} past 10 ms, longest {:.3} ms); on one anything else held (the round's work, chipsd) {} ({} past 10 ms, longest {:.3} ms)",
                payer.0, payer.1, payer.2, other.0, other.1, other.2
            );
        }
    }
    let mut errors: HashMap<&str, usize> = HashMap::new();
    for (_, _, _, e) in &during {
        if let Some(e) = e {
            *errors.entry(e.as_str()).or_insert(0) += 1;
        }
    }
    for (e, k) in errors {
        println!("    failed {k} x: {e}");
    }
    // the chain updates of the payments and the round delivered, then every tally agrees
    let t = Instant::now();
    while fed.backlog().await? > 0 && t.elapsed() < Duration::from_secs(300) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let bad = fed.disagreeing().await?;
    println!("    tallies whose halves disagree after: {bad}");
    fed.stop().await;
    if status != "good" || bad != 0 || dfail != 0 {
        return Err("payments during a round: the round did not commit, a payment failed or halves disagree (databases bench_pay_* kept)".into());
    }
    for k in 0..n {
        let on = match &apart {
            Some(a) if k == 1 => a,
            _ => cl,
        };
        on.drop_db(&format!("bench_pay_{k}")).await?;
    }
    Ok(())
}

/// Where the WAL of `c`'s cluster stands, in bytes.
async fn wal_bytes(c: &Client) -> Res<f64> {
    let r = c
        .query_one("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::float8", &[])
        .await?;
    Ok(r.get(0))
}

/// What each site sent (messages, bytes, by target) and received since the marks.
async fn traffic(fed: &Fed, marks: &[(i64, i64)]) -> Res<Vec<(i64, i64, i64, String)>> {
    let mut out = Vec::new();
    for (s, &(o, i)) in fed.sites.iter().zip(marks) {
        let r = s
            .admin
            .query_one(
                "SELECT (SELECT count(*) FROM chips.outbox WHERE id > $1),
                        (SELECT coalesce(sum(octet_length(msg::text)), 0)::bigint FROM chips.outbox WHERE id > $1),
                        (SELECT count(*) FROM chips.inbox WHERE received > to_timestamp($2::float8 / 1e6)),
                        (SELECT coalesce(string_agg(x.t || ' ' || x.n, ', ' ORDER BY x.t), '')
                         FROM (SELECT target || '/' || action AS t, count(*) AS n FROM chips.outbox
                               WHERE id > $1 GROUP BY 1) x)",
                &[&o, &(i as f64)],
            )
            .await?;
        out.push((r.get(0), r.get(1), r.get(2), r.get(3)));
    }
    Ok(out)
}

async fn marks(fed: &Fed) -> Res<Vec<(i64, i64)>> {
    let mut m = Vec::new();
    for s in &fed.sites {
        let r = s
            .admin
            .query_one(
                "SELECT coalesce(max(id), 0), (extract(epoch FROM clock_timestamp()) * 1e6)::bigint
                 FROM chips.outbox",
                &[],
            )
            .await?;
        m.push((r.get(0), r.get(1)));
    }
    Ok(m)
}

async fn run(cl: &Cluster, chipsd: &str, csv: &str, n: usize) -> Res<()> {
    let name = std::path::Path::new(csv)
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    println!("== {name}: {n} sites");
    let obls = read_csv(csv)?;
    let cross = obls
        .iter()
        .filter(|o| site_of(o.debtor, n) != site_of(o.creditor, n))
        .count();
    let t = Instant::now();
    let (opt, flows) = optimum(&obls)?;
    println!(
        "  tallies {}, across sites {cross} ({:.1} %); optimum of the whole network {opt} (core solve {:.1} ms, outside the database)",
        obls.len(),
        cross as f64 * 100.0 / obls.len() as f64,
        t.elapsed().as_secs_f64() * 1e3
    );
    let dir = chips_tests::scratch_dir("bench-rounds");
    let payers: usize = std::env::var("PAYERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    if std::env::var("STEPS").as_deref() == Ok("2") {
        return payments_during_a_round(cl, chipsd, &dir, &obls, &flows, n, payers).await;
    }

    // 1. one round
    let t = Instant::now();
    let fed = Fed::build(cl, None, "bench_round", &obls, n, chipsd, &dir).await?;
    println!(
        "  loaded {} sites and started their chipsd in {:.1} s",
        n,
        t.elapsed().as_secs_f64()
    );
    fed.federate().await?;
    let before = fed.debt().await?;
    let mk = marks(&fed).await?;

    // the coordinator's memory, sampled while the round runs
    let coord_db = fed.sites[0].db.clone();
    let chipsd_pid = fed.cars[0].pid();
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        let dsn = fed.sites[0].dsn.clone();
        tokio::spawn(async move {
            let Ok(c) = chips_tests::connect(&dsn).await else {
                return 0;
            };
            let mut hwm = 0;
            while !stop.load(Ordering::SeqCst) {
                let (now, h) = coordinator_memory(&c, &coord_db, chipsd_pid).await;
                peak.fetch_max(now, Ordering::SeqCst);
                hwm = h;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            hwm
        })
    };

    let wal0 = wal_bytes(&fed.sites[0].admin).await?;
    let t0 = Instant::now();
    let (round, status) = fed.round().await?;
    let settled = t0.elapsed();
    // every chain update delivered and confirmed
    loop {
        let waiting = fed.backlog().await?
            + fed
                .total(
                    "SELECT count(*) FROM chips.tallies
                     WHERE part_ent IS NULL AND ((side = 'foil' AND chain_conf < chain_len)
                                                 OR (side = 'stock' AND chain_seen > chain_len))",
                    &[],
                )
                .await?;
        if waiting == 0 {
            break;
        }
        if t0.elapsed() > Duration::from_secs(3600) {
            return Err("chains not confirmed in an hour".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let chained = t0.elapsed();
    let wal = wal_bytes(&fed.sites[0].admin).await? - wal0;
    stop.store(true, Ordering::SeqCst);
    let chipsd_hwm = sampler.await.unwrap_or(0);
    let after = fed.debt().await?;
    let cleared = before - after;

    let r = fed.sites[0]
        .admin
        .query_one(
            "SELECT attempt, coalesce(reason, ''),
                    extract(epoch FROM solved - created)::float8 * 1000,
                    extract(epoch FROM decided - solved)::float8 * 1000,
                    (stats->>'read_ms')::float8, (stats->>'solve_ms')::float8,
                    (stats->>'arcs')::bigint, (stats->>'arcs_with_flow')::bigint,
                    extract(epoch FROM decided)::float8
             FROM chips.rounds WHERE round_uuid = $1",
            &[&round],
        )
        .await?;
    let (attempt, reason): (i32, String) = (r.get(0), r.get(1));
    let decided: f64 = r.get(8);
    let mut last_settle = decided;
    for s in &fed.sites {
        let d: Option<f64> = s
            .admin
            .query_one(
                "SELECT extract(epoch FROM max(decided))::float8 FROM chips.lifts WHERE lift_uuid = $1",
                &[&round],
            )
            .await?
            .get(0);
        last_settle = last_settle.max(d.unwrap_or(decided));
    }
    println!(
        "  round: {status} (attempt {attempt}{}); cleared {cleared} of the optimum {opt}: {} ({:.4} %)",
        if reason.is_empty() {
            String::new()
        } else {
            format!(", {reason}")
        },
        if cleared == opt { "exact" } else { "NOT the optimum" },
        cleared as f64 * 100.0 / opt as f64
    );
    println!(
        "  round time: end to end (open to settled at every site) {:.1} ms; chains confirmed at {:.1} ms",
        settled.as_secs_f64() * 1e3,
        chained.as_secs_f64() * 1e3
    );
    println!(
        "    WAL the cluster (every site) wrote from the open to the chains confirmed: {:.1} MB",
        wal / 1e6
    );
    println!(
        "    collect (open to solved: graphs in, read {:.1} ms, solve {:.1} ms over {} arcs, {} with flow) {:.1} ms",
        r.get::<_, f64>(4),
        r.get::<_, f64>(5),
        r.get::<_, i64>(6),
        r.get::<_, i64>(7),
        r.get::<_, f64>(2)
    );
    println!(
        "    prepare (solved to decided: flows out, checks, reservations, agreements, ready) {:.1} ms",
        r.get::<_, f64>(3)
    );
    println!(
        "    commit (decided to the last site's lift good) {:.1} ms",
        (last_settle - decided) * 1e3
    );
    println!(
        "  coordinator memory: peak {:.1} MiB private (its chipsd and database backends, sampled every 20 ms); chipsd's own peak RSS {:.1} MiB",
        peak.load(Ordering::SeqCst) as f64 / 1024.0,
        chipsd_hwm as f64 / 1024.0
    );
    println!("  per site (sent messages, bytes; received messages; sent by kind):");
    for (k, (sent, bytes, recv, kinds)) in traffic(&fed, &mk).await?.into_iter().enumerate() {
        println!(
            "    site {k}{}: sent {sent} ({:.1} kB), received {recv}; {kinds}",
            if k == 0 { " (coordinator)" } else { "" },
            bytes as f64 / 1024.0
        );
    }
    let bad = fed.disagreeing().await?;
    println!("  tallies whose halves disagree after the round: {bad}");
    fed.stop().await;
    if status != "good" || cleared != opt || bad != 0 {
        return Err(
            "the round did not clear exactly the optimum with every tally agreeing (databases bench_round_* kept)"
                .into(),
        );
    }
    for k in 0..n {
        cl.drop_db(&format!("bench_round_{k}")).await?;
    }

    if std::env::var("STEPS").as_deref() == Ok("1") {
        return Ok(());
    }

    // 2. payments at a member while a round runs
    if payers > 0 {
        payments_during_a_round(cl, chipsd, &dir, &obls, &flows, n, payers).await?;
    }

    // 3. route discovery, on the same partition, for the same wall time
    let budget = settled;
    let fed = Fed::build(cl, None, "bench_route", &obls, n, chipsd, &dir).await?;
    let before = fed.debt().await?;
    let t = Instant::now();
    for s in &fed.sites {
        s.admin
            .execute(
                "SELECT chips.clearing_configure(enabled => true, every => '1 second')",
                &[],
            )
            .await?;
    }
    tokio::time::sleep(budget).await;
    let after = fed.debt().await?;
    let lifts = fed
        .total(
            "SELECT count(*) FROM chips.lifts WHERE kind = 'circular' AND role = 'origin' AND status = 'good'",
            &[],
        )
        .await?;
    println!(
        "  route discovery (each site's own pass and circular lifts every second) in the same {:.1} s: cleared {} ({:.1} % of the optimum), {lifts} circular lifts",
        t.elapsed().as_secs_f64(),
        before - after,
        (before - after) as f64 * 100.0 / opt as f64
    );
    for s in &fed.sites {
        s.admin
            .execute("SELECT chips.clearing_configure(enabled => false)", &[])
            .await?;
    }
    fed.stop().await;
    for k in 0..n {
        cl.drop_db(&format!("bench_route_{k}")).await?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let usage = "usage: bench_rounds DSN CHIPSD SITES FILE.csv...";
    let mut args = std::env::args().skip(1);
    let dsn = args.next().expect(usage);
    let chipsd = args.next().expect(usage);
    let n: usize = args.next().expect(usage).parse().expect(usage);
    let cl = Cluster::new(dsn);
    let mut failed = false;
    for csv in args {
        if let Err(e) = run(&cl, &chipsd, &csv, n).await {
            eprintln!("{csv}: {e}");
            failed = true;
        }
    }
    if failed {
        std::process::exit(1);
    }
}
