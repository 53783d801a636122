//! Automatic clearing: calls `chips.clearing_tick()` every `clearing_secs`. The database decides
//! whether a pass is due (`chips.clearing_configure`) and runs it; this task only keeps time, on
//! its own connection so that a long pass never holds up peer traffic.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::db;

pub async fn run(cfg: Arc<Config>, token: CancellationToken) {
    if cfg.clearing_secs == 0 {
        return;
    }
    let every = Duration::from_secs(cfg.clearing_secs);
    let mut client = None;
    loop {
        tokio::select! {
            _ = token.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
        if client.is_none() {
            match db::connect(&cfg.db).await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    warn!(error = %e, "clearing: cannot connect");
                    continue;
                }
            }
        }
        let Some(c) = &client else { continue };
        // simple_query: the procedure commits as it goes, and its INOUT results come as text
        match c.simple_query("CALL chips.clearing_tick()").await {
            Ok(msgs) => {
                for m in msgs {
                    if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
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
            }
            Err(e) => {
                warn!(error = %e, "clearing tick failed");
                if c.is_closed() {
                    client = None;
                }
            }
        }
    }
}

/// The timer of distributed lifts: calls `chips.lift_tick()` every `lift_tick_ms` (route
/// queries past their time, lifts past their expiry, sites asking the origin for a decision).
/// The database keeps every deadline; this task only keeps time.
pub async fn lift_timer(cfg: Arc<Config>, token: CancellationToken) {
    if cfg.lift_tick_ms == 0 {
        return;
    }
    let every = Duration::from_millis(cfg.lift_tick_ms);
    let mut client = None;
    loop {
        tokio::select! {
            _ = token.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
        if client.is_none() {
            match db::connect(&cfg.db).await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    warn!(error = %e, "lift timer: cannot connect");
                    continue;
                }
            }
        }
        let Some(c) = &client else { continue };
        match c.query_one("SELECT * FROM chips.lift_tick()", &[]).await {
            Ok(r) => {
                let (q, v, a): (i32, i32, i32) = (r.get(0), r.get(1), r.get(2));
                if q + v + a > 0 {
                    info!(queries = q, voided = v, asked = a, "lift timer");
                }
            }
            Err(e) => {
                warn!(error = %e, "lift tick failed");
                if c.is_closed() {
                    client = None;
                }
            }
        }
    }
}
