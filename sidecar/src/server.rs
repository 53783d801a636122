//! Inbound: accept peer connections (at most `max_connections` at once), open their sessions,
//! and apply every message they send through `chips.peer_receive`, one transaction each.

use std::sync::Arc;
use std::time::Duration;

use chips_core::peer::{Envelope, Reply};
use deadpool_postgres::Pool;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_postgres::error::SqlState;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::channel::Channel;
use crate::channel::CLOSED_EARLY;
use crate::config::Config;
use crate::db;
use crate::error::{Error, Result};

pub async fn serve(
    listener: TcpListener,
    cfg: Arc<Config>,
    seed: [u8; 32],
    token: CancellationToken,
    tracker: TaskTracker,
) {
    let limit = Arc::new(Semaphore::new(cfg.max_connections));
    // the database connections messages are applied on: shared by the sessions, each message
    // takes one for its transaction, so a session that opens and breaks (a lossy link) costs no
    // new database connection
    let pool = match db::pool(&cfg.db, cfg.max_connections, "peer database") {
        Ok(p) => p,
        Err(e) => {
            warn!(error = %e, "the listener cannot start");
            return;
        }
    };
    loop {
        let (stream, addr) = tokio::select! {
            _ = token.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            warn!(%addr, "too many peer connections: refused");
            continue; // dropping the stream closes it
        };
        let (cfg, token, pool) = (cfg.clone(), token.clone(), pool.clone());
        tracker.spawn(async move {
            match handle(stream, &cfg, &pool, &seed, &token).await {
                Ok(()) => debug!(%addr, "peer connection closed"),
                // a probe or a port scan: nothing was said
                Err(Error::Protocol(m)) if m == CLOSED_EARLY => {
                    debug!(%addr, "closed before its hello")
                }
                Err(e) => warn!(%addr, error = %e, "peer connection refused or ended"),
            }
            drop(permit);
        });
    }
    info!("listener stopped");
}

async fn handle(
    stream: TcpStream,
    cfg: &Config,
    pool: &Pool,
    seed: &[u8; 32],
    token: &CancellationToken,
) -> Result<()> {
    let idle = Duration::from_secs(cfg.idle_timeout_secs);
    let mut ch = Channel::accept(stream, seed, Duration::from_millis(cfg.reply_timeout_ms)).await?;
    info!(peer = %ch.peer_agent, "peer session open");
    loop {
        let msg = tokio::select! {
            _ = token.cancelled() => return Ok(()),
            r = ch.recv(idle) => match r? {
                Some(m) => m,
                None => return Ok(()),
            },
        };
        if msg.is_empty() {
            // a ping (our welcome offers them): answered at once, nothing applied
            ch.send(&[]).await?;
            continue;
        }
        let reply = match pool.get().await {
            Ok(client) => {
                let reply = apply(&client, &ch.peer_agent, &msg).await;
                if matches!(reply, Reply::Refused { .. }) {
                    // (a connection that failed a message is not kept: it may be one to a
                    // server that is gone or no longer the primary)
                    drop(deadpool_postgres::Object::take(client));
                }
                reply
            }
            Err(e) => Reply::Refused {
                id: Envelope::from_slice(&msg).ok().map(|m| m.id),
                error: format!("the database cannot be reached: {e}"),
                sqlstate: "08006".into(),
            },
        };
        ch.send(&serde_json::to_vec(&reply).expect("replies serialize"))
            .await?;
        if matches!(reply, Reply::Refused { .. }) {
            // the session ends at a refusal (our welcome says so): what the peer sent after
            // it is not applied, so it comes again, in order, after the refused message
            debug!(peer = %ch.peer_agent, "session ended at a refused message");
            return Ok(());
        }
    }
}

/// How often a message is applied again after a deadlock or serialization failure.
const TRANSIENT_RETRIES: u64 = 5;

/// Applies one message; the reply names it and says what happened.
async fn apply(client: &tokio_postgres::Client, peer: &str, msg: &[u8]) -> Reply {
    let env = match Envelope::from_slice(msg) {
        Ok(e) => e,
        Err(e) => {
            return Reply::Refused {
                id: None,
                error: e.to_string(),
                sqlstate: "22023".into(),
            }
        }
    };
    let doc: Value = serde_json::to_value(&env).expect("envelopes serialize");
    let mut tries = 0;
    let applied = loop {
        let r = client
            .query_one("SELECT chips.peer_receive($1, $2)", &[&peer, &doc])
            .await;
        // a deadlock or serialization failure rolled the transaction back: applying the
        // message again is safe and almost always succeeds
        let transient = r.as_ref().err().and_then(|e| e.code()).is_some_and(|c| {
            *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
        });
        if !transient || tries == TRANSIENT_RETRIES {
            break r;
        }
        tries += 1;
        debug!(id = %env.id, tries, "transient failure, applying again");
        tokio::time::sleep(Duration::from_millis(5 * tries)).await;
    };
    match applied {
        Ok(row) => {
            let result: String = row.get(0);
            debug!(id = %env.id, target = %env.target, action = %env.action, %result, "applied");
            crate::metrics::METRICS
                .peer_messages
                .get_or_create(&crate::metrics::Kind { kind: "in" })
                .inc();
            Reply::Applied { id: env.id, result }
        }
        Err(e) => {
            let (code, text) = match e.as_db_error() {
                Some(d) => (d.code().code().to_string(), d.message().to_string()),
                None => (String::new(), e.to_string()),
            };
            warn!(id = %env.id, sqlstate = %code, error = %text, "refused");
            Reply::Refused {
                id: Some(env.id),
                error: text,
                sqlstate: code,
            }
        }
    }
}
