//! Outbound: claim outbox messages (woken by `chips_agent` notifications, and by a poll), send
//! them to their peers in order, and acknowledge what the peers applied. A message a peer
//! refuses, or one that cannot be sent, stays in the outbox: its claim is given back and it is
//! sent again after a back-off for that peer (if this sidecar dies, its lease runs out).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::Value;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::channel::Channel;
use crate::config::Config;
use crate::db;
use crate::error::{Error, Result};

/// A claimed outbox message.
struct Outgoing {
    id: i64,
    host: Option<String>,
    port: Option<i32>,
    msg: Value,
}

struct Peer {
    channel: Option<Channel>,
    failures: u32,
    next_try: Instant,
}

pub async fn run(cfg: Arc<Config>, seed: [u8; 32], token: CancellationToken) -> Result<()> {
    let agent = chips_core::peer::agent_id(&seed);
    let (client, mut wake) = db::listen(&cfg.db, "chips_agent").await?;
    let mut peers: HashMap<String, Peer> = HashMap::new();
    let mut last_sync = Instant::now();
    info!(%agent, "sender running");
    loop {
        let wait = Duration::from_millis(cfg.reply_timeout_ms);
        if let Err(e) = drain(&client, &agent, &seed, &mut peers, wait).await {
            warn!(error = %e, "sending failed");
        }
        if last_sync.elapsed() >= Duration::from_secs(cfg.sync_secs) {
            last_sync = Instant::now();
            if let Err(e) = client.execute("SELECT chips.chain_sync()", &[]).await {
                warn!(error = %e, "chain sync failed");
            }
        }
        if client.is_closed() {
            // the database went away (a restart): the caller connects again
            return Err(Error::Protocol("the database connection was lost".into()));
        }
        tokio::select! {
            _ = token.cancelled() => break,
            w = wake.recv() => if w.is_none() {
                return Err(Error::Protocol("the listening connection ended".into()));
            },
            _ = tokio::time::sleep(Duration::from_millis(cfg.poll_ms)) => {}
        }
    }
    info!("sender stopped");
    Ok(())
}

/// Sends everything claimable now.
async fn drain(
    client: &Client,
    agent: &str,
    seed: &[u8; 32],
    peers: &mut HashMap<String, Peer>,
    wait: Duration,
) -> Result<()> {
    loop {
        let rows = client
            .query(
                "SELECT id, to_agent, host, port, msg FROM chips.outbox_claim(100, '10 seconds', ARRAY[$1])",
                &[&agent],
            )
            .await?;
        if rows.is_empty() {
            return Ok(());
        }
        // Group by peer, keeping each peer's messages in order.
        let mut order: Vec<String> = Vec::new();
        let mut groups: HashMap<String, Vec<Outgoing>> = HashMap::new();
        for r in &rows {
            let to: String = r.get(1);
            if !groups.contains_key(&to) {
                order.push(to.clone());
            }
            groups.entry(to).or_default().push(Outgoing {
                id: r.get(0),
                host: r.get(2),
                port: r.get(3),
                msg: r.get(4),
            });
        }
        let mut acked: Vec<i64> = Vec::new();
        let mut tried: Vec<i64> = Vec::new(); // the message each failing peer stopped at
        let mut stalled = false;
        let mut due: Vec<(String, Peer)> = Vec::new();
        for to in order {
            let peer = peers.remove(&to).unwrap_or(Peer {
                channel: None,
                failures: 0,
                next_try: Instant::now(),
            });
            if Instant::now() < peer.next_try {
                stalled = true;
                peers.insert(to, peer);
            } else {
                due.push((to, peer));
            }
        }
        // all peers at once (each in order): their receivers' commits overlap
        let sent = join_all(due.into_iter().map(|(to, mut peer)| {
            let msgs = &groups[&to];
            async move {
                let mut done = Vec::new();
                let r = send_all(&mut peer, &to, msgs, seed, &mut done, wait).await;
                (to, peer, msgs, done, r)
            }
        }))
        .await;
        for (to, mut peer, msgs, done, r) in sent {
            match r {
                Ok(()) => peer.failures = 0,
                Err(e) => {
                    stalled = true;
                    tried.extend(msgs.iter().map(|m| m.id).find(|id| !done.contains(id)));
                    peer.channel = None;
                    peer.failures += 1;
                    let wait = Duration::from_millis(200 * 2u64.pow(peer.failures.min(8)))
                        .min(Duration::from_secs(60));
                    peer.next_try = Instant::now() + wait;
                    warn!(peer = %to, error = %e, retry_in = ?wait, "delivery stopped");
                }
            }
            acked.extend(done);
            peers.insert(to, peer);
        }
        if !acked.is_empty() {
            client
                .execute("SELECT chips.outbox_ack($1)", &[&acked])
                .await?;
        }
        if stalled {
            // what was claimed and not delivered goes back at once: it waits for its peer's
            // back-off, not for a lease
            let unsent: Vec<i64> = groups
                .values()
                .flatten()
                .map(|m| m.id)
                .filter(|id| !acked.contains(id) && !tried.contains(id))
                .collect();
            client
                .execute("SELECT chips.outbox_release($1, $2)", &[&unsent, &tried])
                .await?;
            return Ok(());
        }
    }
}

/// Sends one peer its messages in order, stopping at the first it refuses.
async fn send_all(
    peer: &mut Peer,
    to: &str,
    msgs: &[Outgoing],
    seed: &[u8; 32],
    acked: &mut Vec<i64>,
    wait: Duration,
) -> Result<()> {
    for Outgoing {
        id,
        host,
        port,
        msg,
    } in msgs
    {
        if peer.channel.is_none() {
            let (Some(host), Some(port)) = (host, port) else {
                return Err(Error::Protocol(format!("no address known for agent {to}")));
            };
            let addr = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            peer.channel = Some(Channel::connect(&addr, seed, to, wait).await?);
            info!(peer = %to, %addr, "peer session open");
        }
        let ch = peer.channel.as_mut().expect("just opened");
        ch.send(&serde_json::to_vec(msg).expect("messages serialize"))
            .await?;
        let reply = ch
            .recv(wait)
            .await?
            .ok_or_else(|| Error::Protocol("the peer closed the session".into()))?;
        let reply: Value = serde_json::from_slice(&reply)
            .map_err(|e| Error::Protocol(format!("bad reply: {e}")))?;
        if reply.get("id") != msg.get("id") {
            return Err(Error::Protocol(format!(
                "reply for another message: {reply}"
            )));
        }
        if let Some(result) = reply.get("result") {
            debug!(peer = %to, id = %msg["id"], %result, "delivered");
            crate::metrics::METRICS
                .peer_messages
                .get_or_create(&crate::metrics::Kind { kind: "out" })
                .inc();
            acked.push(*id);
        } else {
            return Err(Error::Protocol(format!(
                "refused ({}): {}",
                reply["sqlstate"].as_str().unwrap_or(""),
                reply["error"].as_str().unwrap_or("")
            )));
        }
    }
    Ok(())
}
