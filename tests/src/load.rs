//! Obligation networks loaded straight into sites' tables, the way the clearing benchmarks load
//! them: for each obligation a tally whose stock half is at the creditor's site and whose foil
//! half is at the debtor's (both open, the same digest, the partner named by its CHIP address;
//! one site holds both when both firms live there). Firm `n` is user `u{n}`. Fast enough for
//! hundreds of thousands of tallies; the tallies carry no signatures, so they are for clearing
//! (benchmarks, and tests that need many tallies), not for audits.

use tokio_postgres::Error;
use uuid::Uuid;

use crate::Site;

/// One obligation: `debtor` owes `creditor` `amount`.
#[derive(Clone, Copy, Debug)]
pub struct Obl {
    pub debtor: u32,
    pub creditor: u32,
    pub amount: i64,
}

/// Loads `obls` into `sites`, firm `f` living on site `site_of(f)`; every site learns every
/// other site's agent at `127.0.0.1:ports[j]`. Returns each obligation's tally uuid.
pub async fn load(
    sites: &[Site],
    ports: &[u16],
    obls: &[Obl],
    site_of: impl Fn(u32) -> usize,
) -> Result<Vec<Uuid>, Error> {
    let agents: Vec<String> = sites.iter().map(Site::agent_id).collect();
    let uuids: Vec<Uuid> = (0..obls.len()).map(|_| Uuid::new_v4()).collect();
    for (k, s) in sites.iter().enumerate() {
        for (j, a) in agents.iter().enumerate() {
            if j != k {
                s.admin
                    .execute(
                        "SELECT chips.agent_register($1, '127.0.0.1', $2)",
                        &[a, &(ports[j] as i32)],
                    )
                    .await?;
            }
        }
        // the firms of this site, and the halves of tallies they hold
        let mut firms: Vec<String> = obls
            .iter()
            .flat_map(|o| [o.debtor, o.creditor])
            .filter(|&f| site_of(f) == k)
            .map(|f| format!("u{f}"))
            .collect();
        firms.sort();
        firms.dedup();
        let (mut ent, mut part, mut part_agent, mut id, mut side, mut net) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        let mut local = vec![];
        for (o, u) in obls.iter().zip(&uuids) {
            let (sc, sd) = (site_of(o.creditor), site_of(o.debtor));
            for (holder, partner, ps, sd_, value) in [
                (o.creditor, o.debtor, sd, "stock", o.amount),
                (o.debtor, o.creditor, sc, "foil", -o.amount),
            ] {
                if site_of(holder) != k {
                    continue;
                }
                ent.push(format!("u{holder}"));
                part.push(format!("u{partner}"));
                part_agent.push(agents[ps].clone());
                local.push(ps == k);
                id.push(*u);
                side.push(sd_);
                net.push(value);
            }
        }
        s.admin
            .batch_execute("SET session_replication_role = replica")
            .await?;
        s.admin
            .execute(
                "INSERT INTO chips.users (ent, cuid, agent, name, username)
                 SELECT f, f, $2, f, 'bench_' || f FROM unnest($1::text[]) f",
                &[&firms, &agents[k]],
            )
            .await?;
        s.admin
            .execute(
                "INSERT INTO chips.tallies (ent, part_ent, tally_uuid, side, status, contract,
                     hold_cert, part_cert, hold_sig, part_sig, digest, chain_tip, hold_terms,
                     part_terms, net_good, net_pend)
                 SELECT x.ent, CASE WHEN x.local THEN x.part END, x.id, x.side, 'open', 'bench',
                        jsonb_build_object('chad', jsonb_build_object('cuid', x.ent, 'agent', $7::text)),
                        jsonb_build_object('chad', jsonb_build_object('cuid', x.part, 'agent', x.agent)),
                        'x', 'x', sha256(x.id::text::bytea), sha256(x.id::text::bytea),
                        CASE WHEN x.side = 'stock' THEN jsonb_build_object('limit', x.net) ELSE '{}' END,
                        CASE WHEN x.side = 'foil' THEN jsonb_build_object('limit', -x.net) ELSE '{}' END,
                        x.net, x.net
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::uuid[], $5::text[], $6::bigint[],
                             $8::boolean[]) x(ent, part, agent, id, side, net, local)",
                &[
                    &ent,
                    &part,
                    &part_agent,
                    &id,
                    &side,
                    &net,
                    &agents[k],
                    &local,
                ],
            )
            .await?;
        s.admin
            .batch_execute("RESET session_replication_role; ANALYZE chips.users, chips.tallies")
            .await?;
    }
    Ok(uuids)
}
