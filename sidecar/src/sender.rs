//! Outbound: claim outbox messages (woken by `chips_agent` notifications, and by a poll), send
//! them to their peers, each peer's in order, and acknowledge what the peers applied. Every peer
//! is sent to by a task of its own: a peer that is slow, down or behind a dead link holds up only
//! its own messages (while one is being sent to, or backing off, its messages are not claimed).
//! Each lane of a peer (`chips_core::peer::Lane`) has its own task, session and back-off: route
//! discovery's queries and answers, which a payment waits for, do not wait behind a peer's
//! ordered messages (a chain update whose reply was lost holds those up for the reply wait).
//! A message a peer refuses, or one that cannot be sent, stays in the outbox: its claim is given
//! back and it is sent again after a back-off for that peer (if this sidecar dies, its lease runs
//! out).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chips_core::peer::{Lane, Reply};
use serde_json::Value;
use tokio::task::JoinSet;
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

/// A peer between sends: its open session, if any, its back-off, and how many messages may go
/// out ahead of their replies (see [`send_all`]).
struct Peer {
    channel: Option<Channel>,
    failures: u32,
    next_try: Instant,
    window: usize,
}

impl Peer {
    fn new() -> Peer {
        Peer {
            channel: None,
            failures: 0,
            next_try: Instant::now(),
            window: 1,
        }
    }
}

/// A peer's lane: what one send task serves.
type Link = (String, Lane);

/// What a peer's send task hands back: the peer's lane, its state, the messages it was given
/// (ids, in order), those the peer applied, and how it ended.
struct Sent {
    link: Link,
    peer: Peer,
    ids: Vec<i64>,
    done: Vec<i64>,
    result: Result<()>,
}

/// The sender's state: idle peers' lanes, and the lanes being sent to (their claimed messages).
struct Sender {
    agent: String,
    seed: [u8; 32],
    /// The reply wait of the ordered lane and of the route lane.
    wait: Duration,
    route_wait: Duration,
    idle: HashMap<Link, Peer>,
    busy: HashMap<Link, Vec<i64>>,
    tasks: JoinSet<Sent>,
    /// The peer's lane each send task serves.
    task_peer: HashMap<tokio::task::Id, Link>,
    /// Lanes to claim at the next turn: a claim costs a query, so a lane is claimed when a
    /// notification names it (unless that peer's lane is being sent to: its send's end claims
    /// it), when a send on it ends, when a back-off on it runs out, and at every poll.
    due: HashSet<Lane>,
}

pub async fn run(cfg: Arc<Config>, seed: [u8; 32], token: CancellationToken) -> Result<()> {
    let agent = chips_core::peer::agent_id(&seed);
    let (client, mut wake) = db::listen(&cfg.db, "chips_agent").await?;
    let mut s = Sender {
        agent: agent.clone(),
        seed,
        wait: Duration::from_millis(cfg.reply_timeout_ms),
        route_wait: Duration::from_millis(cfg.route_reply_timeout_ms),
        idle: HashMap::new(),
        busy: HashMap::new(),
        tasks: JoinSet::new(),
        task_peer: HashMap::new(),
        due: Lane::ALL.into_iter().collect(),
    };
    let mut last_sync = Instant::now();
    info!(%agent, "sender running");
    let ended = loop {
        if let Err(e) = s.claim(&client).await {
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
            break Err(Error::Protocol("the database connection was lost".into()));
        }
        let (retry, retry_lane) = s.next_retry(Duration::from_millis(cfg.poll_ms));
        tokio::select! {
            _ = token.cancelled() => break Ok(()),
            Some(sent) = s.tasks.join_next_with_id() => {
                if let Err(e) = s.settle(&client, sent).await {
                    warn!(error = %e, "acknowledging failed");
                }
            }
            w = wake.recv() => match w {
                None => break Err(Error::Protocol("the listening connection ended".into())),
                Some(payloads) => s.heard(payloads),
            },
            _ = tokio::time::sleep_until(retry.into()) => match retry_lane {
                Some(lane) => { s.due.insert(lane); }
                None => s.due.extend(Lane::ALL),
            },
        }
    };
    s.stop(&client).await;
    info!("sender stopped");
    ended
}

impl Sender {
    /// Claims what is claimable now, lane by lane (nothing for a peer's lane being sent to or
    /// backing off), and starts a send task for each peer's lane in it. A lane is claimed again
    /// only when a claim came back full: one that came back short took all there was (claiming
    /// until one came back empty was most of the sidecar's claims, each a database query).
    async fn claim(&mut self, client: &Client) -> Result<()> {
        for lane in Lane::ALL {
            if self.due.remove(&lane) {
                loop {
                    match self.claim_lane(client, lane).await {
                        Ok(CLAIM_MAX) => continue,
                        Ok(_) => break,
                        Err(e) => {
                            self.due.insert(lane); // tried again at the next turn
                            return Err(e);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Notes the lanes that `chips_agent` notifications name (`None`: too many to keep, so
    /// every lane); a message to a peer's lane being sent to waits for that send's end.
    fn heard(&mut self, payloads: Option<Vec<String>>) {
        let Some(payloads) = payloads else {
            self.due.extend(Lane::ALL);
            return;
        };
        for p in payloads {
            let note: Value = serde_json::from_str(&p).unwrap_or(Value::Null);
            let (to, lane) = (note["to"].as_str(), note["lane"].as_str());
            match (to, lane.and_then(|l| l.parse::<Lane>().ok())) {
                (Some(to), Some(lane)) => {
                    if !self.busy.contains_key(&(to.to_string(), lane)) {
                        self.due.insert(lane);
                    }
                }
                // a payload without a lane (a database before 0.2.0): any lane
                _ => self.due.extend(Lane::ALL),
            }
        }
    }

    /// When the sender next looks at the outbox unasked: at the first back-off that runs out
    /// (for its lane), else after `poll` (every lane).
    fn next_retry(&self, poll: Duration) -> (Instant, Option<Lane>) {
        let now = Instant::now();
        self.idle
            .iter()
            .filter(|(_, p)| p.next_try > now && p.next_try < now + poll)
            .min_by_key(|(_, p)| p.next_try)
            .map_or((now + poll, None), |((_, lane), p)| {
                (p.next_try, Some(*lane))
            })
    }

    /// One claim of a lane's messages (at most [`CLAIM_MAX`]); how many it claimed.
    async fn claim_lane(&mut self, client: &Client, lane: Lane) -> Result<usize> {
        let now = Instant::now();
        let skip: Vec<&str> = self
            .busy
            .keys()
            .filter(|(_, l)| *l == lane)
            .map(|(to, _)| to.as_str())
            .chain(
                self.idle
                    .iter()
                    .filter(|((_, l), p)| *l == lane && p.next_try > now)
                    .map(|((to, _), _)| to.as_str()),
            )
            .collect();
        let rows = client
            .query(
                "SELECT id, to_agent, host, port, msg
                 FROM chips.outbox_claim($4, '10 seconds', ARRAY[$1], $2, $3)",
                &[&self.agent, &skip, &lane.as_str(), &(CLAIM_MAX as i32)],
            )
            .await?;
        let n = rows.len();
        // by peer, each peer's messages in order
        let mut groups: HashMap<String, Vec<Outgoing>> = HashMap::new();
        for r in &rows {
            groups.entry(r.get(1)).or_default().push(Outgoing {
                id: r.get(0),
                host: r.get(2),
                port: r.get(3),
                msg: r.get(4),
            });
        }
        for (to, msgs) in groups {
            let link = (to, lane);
            let mut peer = self.idle.remove(&link).unwrap_or_else(Peer::new);
            let ids: Vec<i64> = msgs.iter().map(|m| m.id).collect();
            self.busy.insert(link.clone(), ids.clone());
            let task_link = link.clone();
            let wait = match lane {
                Lane::Ordered => self.wait,
                Lane::Route => self.route_wait,
            };
            let seed = self.seed;
            let task = self.tasks.spawn(async move {
                let mut done = Vec::new();
                let result = send_all(&mut peer, &link.0, &msgs, &seed, &mut done, wait).await;
                Sent {
                    link,
                    peer,
                    ids,
                    done,
                    result,
                }
            });
            self.task_peer.insert(task.id(), task_link);
        }
        Ok(n)
    }

    /// Records how a peer's send task ended: what the peer applied is acknowledged; on a
    /// failure the rest is given back (the message it stopped at counts as an attempt) and the
    /// peer backs off.
    async fn settle(
        &mut self,
        client: &Client,
        sent: std::result::Result<(tokio::task::Id, Sent), tokio::task::JoinError>,
    ) -> Result<()> {
        let Sent {
            link,
            mut peer,
            ids,
            done,
            result,
        } = match sent {
            Ok((task, sent)) => {
                self.task_peer.remove(&task);
                sent
            }
            Err(e) => {
                // a send task that panicked or was stopped: its peer starts afresh and its
                // claims are given back
                let link = self.task_peer.remove(&e.id());
                if let Some((_, lane)) = &link {
                    self.due.insert(*lane); // its messages, once given back
                }
                let ids = link
                    .and_then(|link| self.busy.remove(&link))
                    .unwrap_or_default();
                warn!(error = %e, "a send task ended early");
                client
                    .execute("SELECT chips.outbox_release($1, '{}')", &[&ids])
                    .await?;
                return Ok(());
            }
        };
        self.busy.remove(&link);
        // the rest of that peer's lane, and what came for it meanwhile
        self.due.insert(link.1);
        if !done.is_empty() {
            client
                .execute("SELECT chips.outbox_ack($1)", &[&done])
                .await?;
        }
        match result {
            Ok(()) => {
                peer.failures = 0;
                peer.window = (peer.window * 2).min(MAX_WINDOW);
            }
            Err(e) => {
                peer.window = (peer.window / 2).max(1);
                let tried: Vec<i64> = ids
                    .iter()
                    .copied()
                    .find(|id| !done.contains(id))
                    .into_iter()
                    .collect();
                let unsent: Vec<i64> = ids
                    .iter()
                    .copied()
                    .filter(|id| !done.contains(id) && !tried.contains(id))
                    .collect();
                peer.channel = None;
                // back off from a peer that is down, not from one that just answered: a peer
                // that applied some of this batch is sent the rest at once, on a new session
                // (a lost frame broke the last one; waiting would hold route queries past their
                // life); one that applied nothing waits (`backoff`)
                let wait = if done.is_empty() {
                    peer.failures += 1;
                    backoff(link.1, peer.failures)
                } else {
                    peer.failures = 0;
                    Duration::ZERO
                };
                peer.next_try = Instant::now() + wait;
                warn!(peer = %link.0, lane = link.1.as_str(), error = %e, retry_in = ?wait,
                      "delivery stopped");
                // given back at once: it waits for its peer's back-off, not for a lease
                client
                    .execute("SELECT chips.outbox_release($1, $2)", &[&unsent, &tried])
                    .await?;
            }
        }
        self.idle.insert(link, peer);
        Ok(())
    }

    /// Stops the sends under way; what they had not delivered is given back (a message the
    /// peer applied but did not answer yet is sent again and answered `duplicate`).
    async fn stop(&mut self, client: &Client) {
        self.tasks.abort_all();
        while let Some(sent) = self.tasks.join_next_with_id().await {
            if client.is_closed() {
                continue; // the claims lapse with their lease
            }
            if let Err(e) = self.settle(client, sent).await {
                warn!(error = %e, "giving back claims failed");
            }
        }
    }
}

/// How long a peer's lane waits after `failures` sends in a row that delivered nothing: the
/// ordered lane 0.4 s doubling to 51.2 s (a peer that is down is not hammered); the route lane
/// 0.1 s doubling to 0.8 s, since its messages live a few seconds (a query past its life is
/// worth nothing) and trying a peer that is down costs one refused connection.
fn backoff(lane: Lane, failures: u32) -> Duration {
    match lane {
        Lane::Ordered => Duration::from_millis(200 * 2u64.pow(failures.min(8))),
        Lane::Route => Duration::from_millis(50 * 2u64.pow(failures.min(4))),
    }
}

/// The most messages a sender has sent to a peer ahead of their replies.
const MAX_WINDOW: usize = 32;

/// The most messages one claim takes (`chips.outbox_claim`'s `max_messages`).
const CLAIM_MAX: usize = 100;

/// Sends one peer its messages in order, stopping at the first it refuses. To a peer that ends
/// a session at a refusal, up to `peer.window` messages go out before their replies are read: a
/// frame lost on the way shows at once (the next one fails to decrypt and the session closes)
/// instead of after a reply wait, and a round trip is paid once a window. The window doubles
/// (to [`MAX_WINDOW`]) with every batch delivered whole and halves (to 1) with every session
/// that broke: on a link that loses frames, what was sent ahead of the loss is sent again, so
/// the window stays small there (an older peer is sent one message at a time).
async fn send_all(
    peer: &mut Peer,
    to: &str,
    msgs: &[Outgoing],
    seed: &[u8; 32],
    acked: &mut Vec<i64>,
    wait: Duration,
) -> Result<()> {
    let Some(first) = msgs.first() else {
        return Ok(());
    };
    if peer.channel.is_none() {
        let (Some(host), Some(port)) = (&first.host, first.port) else {
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
    let ahead = if ch.welcome.ends_at_refusal {
        peer.window
    } else {
        1
    };
    let mut sent = 0;
    for (k, Outgoing { id, msg, .. }) in msgs.iter().enumerate() {
        while sent < msgs.len() && sent < k + ahead {
            ch.send(&serde_json::to_vec(&msgs[sent].msg).expect("messages serialize"))
                .await?;
            sent += 1;
        }
        let reply = ch.reply(wait).await?;
        let reply: Reply = serde_json::from_slice(&reply)
            .map_err(|e| Error::Protocol(format!("bad reply: {e}")))?;
        if reply.id() != msg.get("id").and_then(Value::as_str) {
            return Err(Error::Protocol(format!(
                "reply for another message: {reply:?}"
            )));
        }
        match reply {
            Reply::Applied { result, .. } => {
                debug!(peer = %to, id = %msg["id"], %result, "delivered");
                crate::metrics::METRICS
                    .peer_messages
                    .get_or_create(&crate::metrics::Kind { kind: "out" })
                    .inc();
                acked.push(*id);
            }
            Reply::Refused {
                error, sqlstate, ..
            } => {
                return Err(Error::Protocol(format!("refused ({sqlstate}): {error}")));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sender() -> Sender {
        Sender {
            agent: "me".into(),
            seed: [0; 32],
            wait: Duration::from_secs(1),
            route_wait: Duration::from_secs(1),
            idle: HashMap::new(),
            busy: HashMap::new(),
            tasks: JoinSet::new(),
            task_peer: HashMap::new(),
            due: HashSet::new(),
        }
    }

    fn note(to: &str, lane: &str) -> String {
        serde_json::json!({"outbox": 1, "from": "me", "to": to, "lane": lane}).to_string()
    }

    #[test]
    fn a_notification_makes_its_lane_due_unless_that_peers_lane_is_being_sent_to() {
        let mut s = sender();
        s.busy.insert(("bob".into(), Lane::Route), vec![7]);
        s.heard(Some(vec![note("bob", "route")]));
        assert!(
            s.due.is_empty(),
            "bob's route lane is claimed when its send ends"
        );
        s.heard(Some(vec![note("bob", "ordered")]));
        assert_eq!(s.due, HashSet::from([Lane::Ordered]));
        s.due.clear();
        s.heard(Some(vec![note("eve", "route")]));
        assert_eq!(s.due, HashSet::from([Lane::Route]));
    }

    #[test]
    fn a_notification_without_a_lane_or_too_many_make_every_lane_due() {
        let mut s = sender();
        s.heard(Some(vec![r#"{"outbox":1,"from":"me","to":"bob"}"#.into()]));
        assert_eq!(s.due, HashSet::from(Lane::ALL));
        s.due.clear();
        s.heard(Some(vec!["not json".into()]));
        assert_eq!(s.due, HashSet::from(Lane::ALL));
        s.due.clear();
        s.heard(None);
        assert_eq!(s.due, HashSet::from(Lane::ALL));
    }

    #[test]
    fn the_sender_looks_again_when_a_back_off_runs_out_else_at_the_poll() {
        let mut s = sender();
        let poll = Duration::from_secs(1);
        let (at, lane) = s.next_retry(poll);
        assert_eq!(lane, None);
        assert!(at > Instant::now() + poll / 2);
        let mut p = Peer::new();
        p.next_try = Instant::now() + Duration::from_millis(100);
        s.idle.insert(("bob".into(), Lane::Route), p);
        let (at, lane) = s.next_retry(poll);
        assert_eq!(lane, Some(Lane::Route));
        assert!(at <= Instant::now() + Duration::from_millis(100));
    }
}
