//! `chipsd check`: verifies the invariants of a chips network across all its sites (an
//! operator's tool; the demo, the chaos run and the tests run it too).
//!
//! ```text
//! chipsd check --dsn "host=127.0.0.1 port=54320 user=postgres dbname=site_a" --dsn "...dbname=site_b"
//! ```
//!
//! Checks, and reports every failure (exit status 1 if any, 2 if a site cannot be read):
//! - every tally half passes `chips.tally_audit` (balances equal the sum of its chits, every
//!   chain block links and hashes, every good chit and the tally itself are signed);
//! - the two halves of every open (or closing, closed) tally, wherever they are, have the same
//!   digest, the same chain (index, chit, hash) and mirrored balances; a half whose partner site
//!   was not given is counted, not failed;
//! - every user's net position (the sum of their halves' balances) equals the sum of their own
//!   good transaction chits and of the payments they made and received through intermediaries
//!   (good linear lifts): nothing else (a circular lift, a relay, a bug) moved it;
//! - every distributed lift decided at several sites is good everywhere or void everywhere;
//! - every clearing round whose coordinator's database is given is decided as the coordinator
//!   decided it at every member whose share the decision needed, and is good at no other member
//!   (a member left out of the round, absent or too late, ends its part void);
//! - no lift is still reserving capacity (`seek` or `pend`, or a round's `draft`) past its
//!   expiry, no coordinator's round is undecided past its expiry, and no lift chit is pending
//!   under a lift already decided.

use std::collections::BTreeMap;

use tokio_postgres::Client;
use uuid::Uuid;

/// A clearing round as the checker sees it: its coordinator's decision and the members whose
/// shares it needed (when the coordinator's database is given), and each member's part (site,
/// its agents, status, reason).
#[derive(Default)]
struct Round {
    decided: Option<String>,
    needed: Vec<String>,
    parts: Vec<(String, Vec<String>, String, String)>,
}

/// One half as the checker sees it.
struct Half {
    site: String,
    side: String,
    status: String,
    net_good: i64,
    digest: Option<Vec<u8>>,
    chain: Vec<(i32, Uuid, Vec<u8>)>,
}

async fn halves(db: &Client, site: &str) -> Result<Vec<(Uuid, Half)>, tokio_postgres::Error> {
    let mut out = Vec::new();
    for r in db
        .query(
            "SELECT id, tally_uuid, side, status, net_good, digest FROM chips.tallies ORDER BY id",
            &[],
        )
        .await?
    {
        let id: i64 = r.get(0);
        let chain = db
            .query(
                "SELECT chain_idx, chit_uuid, chain_hash FROM chips.chits WHERE tally_id = $1 AND chain_idx IS NOT NULL ORDER BY chain_idx",
                &[&id],
            )
            .await?
            .iter()
            .map(|c| (c.get(0), c.get(1), c.get(2)))
            .collect();
        out.push((
            r.get(1),
            Half {
                site: site.to_string(),
                side: r.get(2),
                status: r.get(3),
                net_good: r.get(4),
                digest: r.get(5),
                chain,
            },
        ));
    }
    Ok(out)
}

/// What the check found: a summary line and every problem (none: every invariant holds).
pub struct Report {
    pub summary: String,
    pub problems: Vec<String>,
}

impl Report {
    /// The report as `chipsd check` prints it: the summary, then every problem or "all
    /// invariants hold".
    pub fn text(&self) -> String {
        let mut out = format!("{}\n", self.summary);
        if self.problems.is_empty() {
            out.push_str("all invariants hold\n");
        } else {
            for p in &self.problems {
                out.push_str(&format!("FAIL {p}\n"));
            }
            out.push_str(&format!("{} problem(s)\n", self.problems.len()));
        }
        out
    }
}

/// Checks the sites whose databases `dsns` name (one libpq connection string each, a role that
/// reads every row: a superuser or chips_admin). Errs when a site cannot be read.
pub async fn check(dsns: &[String]) -> Result<Report, String> {
    let e = |e: tokio_postgres::Error| crate::error::Error::from(e).to_string();
    let mut problems = Vec::new();
    let mut tallies: BTreeMap<Uuid, Vec<Half>> = BTreeMap::new();
    let (mut chits, mut users) = (0i64, 0usize);
    let mut lifts: BTreeMap<Uuid, Vec<(String, String)>> = BTreeMap::new();
    let mut rounds: BTreeMap<Uuid, Round> = BTreeMap::new();
    for dsn in dsns {
        let db = crate::db::connect(dsn)
            .await
            .map_err(|x| format!("{dsn}: {x}"))?;
        let site: String = db
            .query_one("SELECT current_database()::text", &[])
            .await
            .map_err(e)?
            .get(0);
        for (t, h) in halves(&db, &site).await.map_err(e)? {
            tallies.entry(t).or_default().push(h);
        }
        // Audits of every half held here.
        for r in db
            .query(
                "SELECT t.tally_uuid, a.ent, a.side, a.check_name, a.detail
                 FROM (SELECT DISTINCT tally_uuid FROM chips.tallies) t, chips.tally_audit(t.tally_uuid) a
                 WHERE NOT a.ok",
                &[],
            )
            .await
            .map_err(e)?
        {
            let (t, ent, side, check, detail): (Uuid, String, String, String, String) =
                (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
            problems.push(format!("{site}: tally {t} {side} half of {ent}: {check}: {detail}"));
        }
        // Net positions move only by the users' own transactions: their chits, and the payments
        // they made or received through other people's tallies (good linear lifts; a split
        // payment once, not again for each of its parts).
        for r in db
            .query(
                "SELECT u.ent,
                        coalesce((SELECT sum(t.net_good) FROM chips.tallies t WHERE t.ent = u.ent), 0)::bigint,
                        (coalesce((SELECT sum(c.value) FROM chips.chits c JOIN chips.tallies t ON t.id = c.tally_id
                                   WHERE t.ent = u.ent AND c.status = 'good' AND c.chit_type IN ('tran', 'set')), 0)
                         + coalesce((SELECT sum(CASE WHEN l.payee = u.ent THEN l.units ELSE 0 END)
                                          - sum(CASE WHEN l.payer = u.ent THEN l.units ELSE 0 END)
                                     FROM chips.lifts l
                                     WHERE l.kind = 'linear' AND l.status = 'good' AND l.parent IS NULL
                                       AND u.ent IN (l.payer, l.payee)), 0))::bigint
                 FROM chips.users u",
                &[],
            )
            .await
            .map_err(e)?
        {
            users += 1;
            let (ent, net, own): (String, i64, i64) = (r.get(0), r.get(1), r.get(2));
            if net != own {
                problems.push(format!("{site}: user {ent} stands at {net} but their own chits sum to {own}"));
            }
        }
        for r in db
            .query(
                "SELECT l.lift_uuid::text, l.status, 'past its expiry' FROM chips.lifts l
                 WHERE (l.status IN ('seek', 'pend') OR (l.kind = 'round' AND l.status = 'draft'))
                   AND l.expires < now() - interval '5 seconds'
                 UNION ALL
                 SELECT r.round_uuid::text, r.status, 'past its expiry (the round, at its coordinator)'
                 FROM chips.rounds r
                 WHERE r.status IN ('collect', 'prepare') AND r.expires < now() - interval '5 seconds'
                 UNION ALL
                 SELECT l.lift_uuid::text, l.status, 'with a pending chit' FROM chips.lifts l
                 WHERE l.status IN ('good', 'void')
                   AND EXISTS (SELECT 1 FROM chips.chits c WHERE c.lift_id = l.id AND c.status = 'pend')",
                &[],
            )
            .await
            .map_err(e)?
        {
            let (lift, status, what): (String, String, String) = (r.get(0), r.get(1), r.get(2));
            problems.push(format!("{site}: lift {lift} is {status} {what}"));
        }
        // (a payment sent whole, refused on the way and sent again in parts: its origin row is
        // the payment's, good or void, while the way its own uuid took is dead, void at every
        // site it reached; chips._lift_dead is the origin's word on that)
        for r in db
            .query(
                "SELECT l.lift_uuid,
                        CASE WHEN l.role = 'origin' AND chips._lift_dead(l) THEN 'void' ELSE l.status END
                 FROM chips.lifts l
                 WHERE l.kind NOT IN ('local', 'round') AND l.status IN ('good', 'void')",
                &[],
            )
            .await
            .map_err(e)?
        {
            lifts
                .entry(r.get(0))
                .or_default()
                .push((site.clone(), r.get(1)));
        }
        // Clearing rounds: the coordinator's decision and whose shares it needed; each member's
        // part, under this site's agent(s).
        for r in db
            .query(
                "SELECT r.round_uuid, r.status,
                        coalesce(array_agg(y.agent) FILTER (WHERE y.status NOT IN ('absent', 'invited')), '{}')
                 FROM chips.rounds r LEFT JOIN chips.round_sites y ON y.round_id = r.id
                 WHERE r.status IN ('good', 'void') GROUP BY r.id",
                &[],
            )
            .await
            .map_err(e)?
        {
            let round = rounds.entry(r.get(0)).or_default();
            round.decided = Some(r.get(1));
            round.needed = r.get(2);
        }
        for r in db
            .query(
                "SELECT l.lift_uuid, l.status, coalesce(l.reason, ''),
                        ARRAY(SELECT a.agent FROM chips.agents a WHERE a.local)
                 FROM chips.lifts l WHERE l.kind = 'round' AND l.status IN ('good', 'void')",
                &[],
            )
            .await
            .map_err(e)?
        {
            rounds.entry(r.get(0)).or_default().parts.push((
                site.clone(),
                r.get(3),
                r.get(1),
                r.get(2),
            ));
        }
        let n: i64 = db
            .query_one("SELECT count(*) FROM chips.chits", &[])
            .await
            .map_err(e)?
            .get(0);
        chits += n;
    }
    for (l, seen) in &lifts {
        if seen.iter().any(|(_, st)| st != &seen[0].1) {
            problems.push(format!(
                "lift {l} is not decided alike everywhere: {seen:?}"
            ));
        }
    }
    let (mut decided, mut parts) = (0, [0usize; 2]);
    let mut why: BTreeMap<&str, usize> = BTreeMap::new();
    for (id, round) in &rounds {
        for (_, _, status, reason) in &round.parts {
            parts[usize::from(status == "void")] += 1;
            if status == "void" {
                *why.entry(reason.as_str()).or_default() += 1;
            }
        }
        let Some(decision) = &round.decided else {
            continue; // its coordinator's database was not given
        };
        decided += 1;
        for (site, agents, status, reason) in &round.parts {
            let needed = agents.iter().any(|a| round.needed.contains(a));
            if (needed && status != decision) || (!needed && status == "good") {
                problems.push(format!(
                    "round {id}: {site}'s part is {status} ({reason}) where the coordinator decided {decision}{}",
                    if needed { "" } else { " without it" }
                ));
            }
        }
    }
    println!(
        "checked {decided} clearing round(s) against their coordinator; members' parts: {} good, {} void{}",
        parts[0],
        parts[1],
        why.iter()
            .map(|(r, n)| format!("; {n} {r}"))
            .collect::<String>()
    );
    let (mut pairs, mut alone) = (0, 0);
    for (t, hs) in &tallies {
        let signed: Vec<&Half> = hs
            .iter()
            .filter(|h| ["open", "closing", "closed"].contains(&h.status.as_str()))
            .collect();
        match signed.as_slice() {
            [a, b] => {
                pairs += 1;
                if a.side == b.side {
                    problems.push(format!(
                        "tally {t}: two {} halves ({} and {})",
                        a.side, a.site, b.site
                    ));
                }
                if a.digest != b.digest {
                    problems.push(format!(
                        "tally {t}: the halves at {} and {} have different digests",
                        a.site, b.site
                    ));
                }
                if a.net_good != -b.net_good {
                    problems.push(format!(
                        "tally {t}: balances {} ({}) and {} ({}) do not mirror",
                        a.net_good, a.site, b.net_good, b.site
                    ));
                }
                if a.chain != b.chain {
                    problems.push(format!(
                        "tally {t}: chains differ ({} blocks at {}, {} at {})",
                        a.chain.len(),
                        a.site,
                        b.chain.len(),
                        b.site
                    ));
                }
            }
            [_] => alone += 1,
            [] => {}
            more => problems.push(format!("tally {t}: {} signed halves", more.len())),
        }
    }
    let summary = format!(
        "checked {} site(s): {users} users, {} tallies ({pairs} with both halves here, {alone} with the partner's half elsewhere), {chits} chit rows",
        dsns.len(),
        tallies.len()
    );
    Ok(Report { summary, problems })
}
