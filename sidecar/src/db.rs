//! Database connections.

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

/// A connection that LISTENs on `channel`; each notification sends `()` (a wake-up: the
/// payload is only a hint, the outbox is the truth).
pub async fn listen(dsn: &str, channel: &str) -> Result<(Client, mpsc::Receiver<()>)> {
    use futures_util::StreamExt;
    let (client, mut conn) = tokio_postgres::connect(dsn, NoTls).await?;
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(_)) => {
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
    Ok((client, rx))
}
