//! The database's timers, kept by chipsd: `chips.clearing_tick()` every `clearing_secs` (the
//! database decides whether a clearing pass is due, `chips.clearing_configure`, and runs it),
//! `chips.clearing_continuous()` every `continuous_ms` (continuous clearing, when the site turned
//! it on; its session keeps the site's graph between ticks) and `chips.lift_tick()` every
//! `lift_tick_ms` (the timers of distributed lifts), and `CALL chips.round_work()` when the
//! database says a clearing round has work for this site (`chips_round`). Each runs on its own
//! connection, so that a long clearing pass never holds up peer traffic or lift timers.

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::{Client, SimpleQueryMessage};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::db;

/// Calls `tick` on a connection of its own every `every` until cancelled (never when `every` is
/// zero), connecting again when the connection is lost.
async fn every<F>(dsn: &str, every: Duration, what: &str, token: CancellationToken, tick: F)
where
    F: AsyncFn(&Client) -> Result<(), tokio_postgres::Error>,
{
    if every.is_zero() {
        return;
    }
    let mut client: Option<Client> = None;
    loop {
        tokio::select! {
            _ = token.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
        if client.is_none() {
            match db::connect(dsn).await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    warn!(error = %e, "{what}: cannot connect");
                    continue;
                }
            }
        }
        let Some(c) = &client else { continue };
        if let Err(e) = tick(c).await {
            warn!(error = %crate::error::Error::from(e), "{what} failed");
            if c.is_closed() {
                client = None;
            }
        }
    }
}

/// Automatic clearing.
pub async fn run(cfg: Arc<Config>, token: CancellationToken) {
    every(
        &cfg.db,
        Duration::from_secs(cfg.clearing_secs),
        "clearing tick",
        token,
        async |c| {
            // simple_query: the procedure commits as it goes, and its INOUT results come as text
            for m in c.simple_query("CALL chips.clearing_tick()").await? {
                if let SimpleQueryMessage::Row(r) = m {
                    if r.get(0) == Some("t") {
                        if let Some(n) = r.get(1).and_then(|n| n.parse::<u64>().ok()) {
                            crate::metrics::METRICS.lifts.inc_by(n);
                        }
                        info!(
                            lifts = r.get(1).unwrap_or("?"),
                            units = r.get(2).unwrap_or("?"),
                            "clearing pass"
                        );
                    }
                }
            }
            Ok(())
        },
    )
    .await
}

/// Continuous clearing: a tick that clears only where tallies changed since the last one.
pub async fn continuous(cfg: Arc<Config>, token: CancellationToken) {
    every(
        &cfg.db,
        Duration::from_millis(cfg.continuous_ms),
        "continuous clearing",
        token,
        async |c| {
            let r = c
                .query_one("SELECT * FROM chips.clearing_continuous()", &[])
                .await?;
            let lifts: i32 = r.get(0);
            if lifts > 0 {
                crate::metrics::METRICS.lifts.inc_by(lifts as u64);
            }
            Ok(())
        },
    )
    .await
}

/// The timers of distributed lifts: route queries past their time, lifts past their expiry,
/// sites asking the origin for a decision. The database keeps every deadline; this only keeps
/// time.
pub async fn lift_timer(cfg: Arc<Config>, token: CancellationToken) {
    every(
        &cfg.db,
        Duration::from_millis(cfg.lift_tick_ms),
        "lift tick",
        token,
        async |c| {
            let r = c.query_one("SELECT * FROM chips.lift_tick()", &[]).await?;
            let (q, v, a): (i32, i32, i32) = (r.get(0), r.get(1), r.get(2));
            if q + v + a > 0 {
                info!(queries = q, voided = v, asked = a, "lift timer");
            }
            Ok(())
        },
    )
    .await
}

/// A member's work on clearing rounds (`CALL chips.round_work()`: reserving, settling or
/// releasing its part piece by piece, each piece its own transaction), woken on channel
/// `chips_round` and every second (work a restart left).
pub async fn round_worker(cfg: Arc<Config>, token: CancellationToken) {
    loop {
        let (client, mut wake) = match db::listen(&cfg.db, "chips_round").await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "round work: cannot connect");
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        loop {
            match client.simple_query("CALL chips.round_work()").await {
                Ok(msgs) => {
                    for m in msgs {
                        if let SimpleQueryMessage::Row(r) = m {
                            if r.get(0).is_some_and(|n| n != "0") {
                                tracing::debug!(pieces = r.get(0).unwrap_or("?"), "round work");
                            }
                        }
                    }
                }
                Err(e) => {
                    warn!(error = %e, "round work failed");
                    if client.is_closed() {
                        break;
                    }
                }
            }
            tokio::select! {
                _ = token.cancelled() => return,
                w = wake.recv() => if w.is_none() { break },
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}
