//! Database connections.

use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use crate::error::Result;

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
