//! Database connections.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use crate::error::Result;

/// A pool of up to `size` connections to `dsn`, opened as they are first needed and kept
/// (a connection found closed, after a database restart, is replaced). `what` names it in
/// errors.
pub fn pool(dsn: &str, size: usize, what: &str) -> std::result::Result<Pool, String> {
    let pg: tokio_postgres::Config = dsn.parse().map_err(|e| format!("{what}: {e}"))?;
    let manager = Manager::from_config(
        pg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size.max(1))
        .wait_timeout(Some(Duration::from_secs(10)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| format!("{what} pool: {e}"))
}

/// A connection whose driver runs on its own task.
pub async fn connect(dsn: &str) -> Result<Client> {
    let (client, conn) = tokio_postgres::connect(dsn, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(error = %e, "database connection ended");
        }
    });
    Ok(client)
}

/// Notifications heard on a LISTENed channel, as wake-ups: [`Notes::recv`] returns when any
/// arrived since the last call, with their payloads (a payload is only a hint: the tables are
/// the truth).
pub struct Notes {
    wake: mpsc::Receiver<()>,
    kept: Arc<Mutex<Kept>>,
}

/// Payloads not taken yet; `overflow` when more arrived than are kept.
#[derive(Default)]
struct Kept {
    payloads: Vec<String>,
    overflow: bool,
}

/// The most payloads kept between two [`Notes::recv`] calls; past it they count as "anything".
const KEPT_MAX: usize = 4096;

impl Notes {
    /// Waits for notifications: `None` when the listening connection ended, else their payloads
    /// (`None` inside when too many came to keep; possibly empty when they were taken with the
    /// previous call's).
    pub async fn recv(&mut self) -> Option<Option<Vec<String>>> {
        self.wake.recv().await?;
        let mut k = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        let k = std::mem::take(&mut *k);
        Some((!k.overflow).then_some(k.payloads))
    }
}

/// A connection that LISTENs on `channel`, and what it hears.
pub async fn listen(dsn: &str, channel: &str) -> Result<(Client, Notes)> {
    use futures_util::StreamExt;
    let (client, mut conn) = tokio_postgres::connect(dsn, NoTls).await?;
    let (tx, wake) = mpsc::channel(1);
    let kept = Arc::new(Mutex::new(Kept::default()));
    let heard = kept.clone();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(n)) => {
                    {
                        let mut k = heard.lock().unwrap_or_else(|e| e.into_inner());
                        if k.payloads.len() < KEPT_MAX {
                            k.payloads.push(n.payload().to_string());
                        } else {
                            k.overflow = true;
                        }
                    }
                    let _ = tx.try_send(()); // one pending wake-up is enough
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "listening connection ended");
                    break;
                }
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN \"{channel}\""))
        .await?;
    Ok((client, Notes { wake, kept }))
}
