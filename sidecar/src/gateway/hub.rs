//! Wake-ups for subscribers. One connection LISTENs on `chips_events` (payload `ent:seq`, sent
//! when a transaction that gave the user events commits) and bumps that user's watch channel;
//! each subscribed websocket then reads what it has not seen through `chips.events_since`, as
//! its user. Notifications are only hints: the events table is the truth, so a lost
//! notification (listener reconnecting) costs a refetch, never an event.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

#[derive(Default)]
pub struct Hub {
    users: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl Hub {
    /// A receiver that changes whenever `ent` may have new events.
    pub fn watch(&self, ent: &str) -> watch::Receiver<u64> {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        users
            .entry(ent.to_string())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    fn bump(&self, ent: &str) {
        let users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = users.get(ent) {
            tx.send_modify(|n| *n += 1);
        }
    }

    /// After the listener reconnects: everyone refetches (and forgotten users are dropped).
    fn bump_all(&self) {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        users.retain(|_, tx| tx.receiver_count() > 0);
        for tx in users.values() {
            tx.send_modify(|n| *n += 1);
        }
    }

    /// Drops channels nobody watches any more.
    fn tidy(&self) {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        users.retain(|_, tx| tx.receiver_count() > 0);
    }
}

/// LISTENs until cancelled, reconnecting (with everyone refetching) when the connection drops.
pub async fn run(dsn: String, hub: Arc<Hub>, token: CancellationToken) {
    let mut tidy = tokio::time::interval(Duration::from_secs(60));
    loop {
        match listen(&dsn, &hub, &token, &mut tidy).await {
            Ok(()) => return,
            Err(e) => warn!(error = %e, "event listener stopped; reconnecting in 1 s"),
        }
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn listen(
    dsn: &str,
    hub: &Hub,
    token: &CancellationToken,
    tidy: &mut tokio::time::Interval,
) -> Result<(), String> {
    let (client, mut conn) = tokio_postgres::connect(dsn, NoTls)
        .await
        .map_err(|e| e.to_string())?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(Some(n.payload().to_string())).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(error = %e, "event listener connection ended");
                    break;
                }
            }
        }
        let _ = tx.send(None);
    });
    client
        .batch_execute("LISTEN chips_events")
        .await
        .map_err(|e| e.to_string())?;
    info!("listening for user events");
    hub.bump_all(); // anything committed while we were not listening
    loop {
        tokio::select! {
            _ = token.cancelled() => { driver.abort(); return Ok(()); }
            _ = tidy.tick() => hub.tidy(),
            m = rx.recv() => match m {
                Some(Some(payload)) => {
                    if let Some((ent, _seq)) = payload.rsplit_once(':') {
                        hub.bump(ent);
                    }
                }
                _ => return Err("the listening connection ended".into()),
            },
        }
    }
}
