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
        match c
            .query_one(
                "SELECT ran, lifts, units::text FROM chips.clearing_tick()",
                &[],
            )
            .await
        {
            Ok(r) if r.get::<_, bool>(0) => info!(
                lifts = r.get::<_, i32>(1),
                units = r.get::<_, String>(2),
                "clearing pass"
            ),
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, "clearing tick failed");
                if c.is_closed() {
                    client = None;
                }
            }
        }
    }
}
