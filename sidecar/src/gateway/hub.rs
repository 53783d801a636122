//! Wake-ups for subscribers. Every `poll` the hub reads the event heads (`chips.event_heads`:
//! each user's last event number) of the users someone is subscribed to, and bumps the watch
//! channel of each user whose head moved; each subscribed websocket then reads what it has not
//! seen through `chips.events_since`, as its user.
//!
//! Why a poll and not LISTEN: a PostgreSQL transaction that sends NOTIFY holds a cluster-wide
//! lock through its commit, so notifying on every payment would serialize every payment's commit
//! (docs/sql-api.md, Notifications). One indexed read of a few hundred heads every 50 ms costs
//! far less. The events table is the truth; the poll only says when to look.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

struct Watched {
    tx: watch::Sender<u64>,
    /// The head last seen, or -1 before the first poll.
    head: i64,
}

#[derive(Default)]
pub struct Hub {
    users: Mutex<HashMap<String, Watched>>,
}

impl Hub {
    /// A receiver that changes whenever `ent` may have new events.
    pub fn watch(&self, ent: &str) -> watch::Receiver<u64> {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        users
            .entry(ent.to_string())
            .or_insert_with(|| Watched {
                tx: watch::channel(0).0,
                head: -1,
            })
            .tx
            .subscribe()
    }

    /// The users someone watches (forgotten ones are dropped).
    fn watched(&self) -> Vec<String> {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        users.retain(|_, w| w.tx.receiver_count() > 0);
        users.keys().cloned().collect()
    }

    /// Records heads read from the database; wakes the users whose head moved.
    fn heads(&self, heads: &[(String, i64)]) {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        for (ent, head) in heads {
            if let Some(w) = users.get_mut(ent) {
                if w.head != *head {
                    w.head = *head;
                    w.tx.send_modify(|n| *n += 1);
                }
            }
        }
    }

    /// After the database connection was lost: everyone refetches.
    fn forget_heads(&self) {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        for w in users.values_mut() {
            w.head = -1;
        }
    }
}

/// Polls until cancelled, reconnecting when the connection drops.
pub async fn run(dsn: String, hub: Arc<Hub>, poll: Duration, token: CancellationToken) {
    loop {
        match watch_heads(&dsn, &hub, poll, &token).await {
            Ok(()) => return,
            Err(e) => warn!(error = %e, "event poller stopped; reconnecting in 1 s"),
        }
        hub.forget_heads();
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn watch_heads(
    dsn: &str,
    hub: &Hub,
    poll: Duration,
    token: &CancellationToken,
) -> crate::error::Result<()> {
    let client = crate::db::connect(dsn).await?;
    let stmt = client
        .prepare("SELECT h.ent, h.seq FROM chips.event_heads h WHERE h.ent = ANY($1)")
        .await?;
    info!(every_ms = poll.as_millis() as u64, "polling user events");
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = token.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let ents = hub.watched();
        if ents.is_empty() {
            continue;
        }
        let rows = client.query(&stmt, &[&ents]).await?;
        let heads: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        hub.heads(&heads);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_moved_head_wakes_its_watchers() {
        let hub = Hub::default();
        let mut ann = hub.watch("p1");
        let mut bob = hub.watch("p2");
        hub.heads(&[("p1".into(), 0), ("p2".into(), 3)]);
        assert!(ann.has_changed().unwrap() && bob.has_changed().unwrap());
        ann.borrow_and_update();
        bob.borrow_and_update();
        hub.heads(&[("p1".into(), 0), ("p2".into(), 4)]);
        assert!(!ann.has_changed().unwrap());
        assert!(bob.has_changed().unwrap());
        drop(ann);
        assert_eq!(hub.watched(), vec!["p2".to_string()]);
    }
}
