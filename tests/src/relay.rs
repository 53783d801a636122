//! Carrying outbox messages between sites through `chips.peer_receive`, standing in for the
//! sidecar's transport, and doing their round work as chipsd does.

use serde_json::Value;

use crate::*;

/// What a relay pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Relayed {
    pub applied: usize,
    pub duplicates: usize,
    pub failed: usize,
}

/// Carries every deliverable outbox message of `from` addressed to `to`'s agent into `to`
/// (`chips.peer_receive`), acknowledging each one `to` applied or already had. Messages `to`
/// refuses stay in `from`'s outbox (their lease expires and they are retried).
pub async fn relay(from: &Site, to: &Site) -> Result<Relayed> {
    let mut done = Relayed::default();
    let rows = from
        .admin
        .query(
            "SELECT id, from_agent, msg, to_agent = $1 FROM chips.outbox_claim(1000, '1 second')",
            &[&to.agent_id()],
        )
        .await?;
    // what is for other sites goes back at once (its lease would hold it up for a second)
    let others: Vec<i64> = rows
        .iter()
        .filter(|r| !r.get::<_, bool>(3))
        .map(|r| r.get(0))
        .collect();
    from.admin
        .execute(
            "UPDATE chips.outbox SET claimed_until = NULL WHERE id = ANY ($1)",
            &[&others],
        )
        .await?;
    let rows: Vec<_> = rows.into_iter().filter(|r| r.get::<_, bool>(3)).collect();
    let mut acked = Vec::new();
    for row in rows {
        let (id, from_agent, msg): (i64, String, Value) = (row.get(0), row.get(1), row.get(2));
        match to
            .admin
            .query_one("SELECT chips.peer_receive($1, $2)", &[&from_agent, &msg])
            .await
        {
            Ok(r) => {
                let result: String = r.get(0);
                if result == "duplicate" {
                    done.duplicates += 1;
                } else {
                    done.applied += 1;
                }
                acked.push(id);
            }
            Err(_) => done.failed += 1,
        }
    }
    from.admin
        .execute("SELECT chips.outbox_ack($1)", &[&acked])
        .await?;
    Ok(done)
}

/// Does a site's work on clearing rounds, as chipsd does when woken (`CALL chips.round_work()`):
/// how many pieces.
pub async fn round_work(site: &Site) -> Result<usize> {
    let mut pieces = 0;
    for m in site.admin.simple_query("CALL chips.round_work()").await? {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            pieces += r.get(0).and_then(|n| n.parse().ok()).unwrap_or(0);
        }
    }
    Ok(pieces)
}

/// Relays between every pair of sites, and does their round work, until no message moves and
/// no piece is left; returns the total. With one site (or none) there is nothing to relay.
pub async fn relay_all(sites: &[&Site]) -> Result<Relayed> {
    let mut total = Relayed::default();
    loop {
        let mut moved = 0;
        for s in sites {
            moved += round_work(s).await?;
        }
        for from in sites {
            for to in sites {
                if from.db != to.db {
                    let r = relay(from, to).await?;
                    moved += r.applied + r.duplicates;
                    total.applied += r.applied;
                    total.duplicates += r.duplicates;
                    total.failed += r.failed;
                }
            }
        }
        if moved == 0 {
            return Ok(total);
        }
    }
}
