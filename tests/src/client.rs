//! The client an integrator would write: connections, one [`Site`] (a database with its agent)
//! and its [`User`]s, each holding a key the database never sees and acting through their own
//! role (`SET ROLE`), as a phone app does through the sidecar; LISTEN helpers.

use chips_core::canon;
use chips_core::sign::KeyPair;
use serde_json::Value;
use tokio_postgres::{Client, NoTls};
use uuid::Uuid;

use crate::*;

pub async fn connect(dsn: &str) -> Result<Client> {
    let (client, conn) = tokio_postgres::connect(dsn, NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// The SQLSTATE of a database error ("" when the error did not come from the server).
pub fn sqlstate(e: &Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_default()
}

/// The server's message of a database error (the error's own text when it has none).
pub fn errmsg(e: &Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string())
}

/// One chips site: a database with its agent.
pub struct Site {
    pub db: String,
    pub dsn: String,
    /// A superuser connection (the DBA).
    pub admin: Client,
    pub agent: KeyPair,
    pub contract: String,
}

impl Site {
    pub fn agent_id(&self) -> String {
        self.agent.public_b64()
    }

    /// The role that acts for the user `ent`.
    pub async fn role_of(&self, ent: &str) -> Result<String> {
        Ok(self
            .admin
            .query_one(
                "SELECT username::text FROM chips.users WHERE ent = $1",
                &[&ent],
            )
            .await?
            .get(0))
    }

    /// A connection acting as the user `ent` (SET ROLE to the role that acts for it).
    pub async fn connect_as(&self, ent: &str) -> Result<Client> {
        let role = self.role_of(ent).await?;
        self.connect_role(&role).await
    }

    async fn connect_role(&self, role: &str) -> Result<Client> {
        let c = connect(&self.dsn).await?;
        c.batch_execute(&format!("SET ROLE \"{role}\"")).await?;
        Ok(c)
    }

    /// Messages in this site's outbox not delivered yet.
    pub async fn undelivered(&self) -> Result<i64> {
        Ok(self
            .admin
            .query_one(
                "SELECT count(*) FROM chips.outbox WHERE delivered IS NULL",
                &[],
            )
            .await?
            .get(0))
    }

    /// A libpq connection string for chipsd's user gateway: the login role `chips_test_gateway`,
    /// a member of chips_gateway and nothing else, so that the database holds it to sessions.
    /// Roles are cluster-wide: made once.
    pub async fn gateway_dsn(&self) -> Result<String> {
        self.admin
            .batch_execute(
                "DO $$ BEGIN
                   IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'chips_test_gateway') THEN
                     CREATE ROLE chips_test_gateway LOGIN IN ROLE chips_gateway;
                   END IF;
                 END $$",
            )
            .await?;
        Ok(self.dsn.replace("user=postgres", "user=chips_test_gateway"))
    }

    /// Writes this site's agent key file (as `chipsd keygen` would) into `dir`.
    pub fn write_agent_key(&self, dir: &std::path::Path) -> std::io::Result<std::path::PathBuf> {
        let path = dir.join(format!("{}.key", self.db));
        std::fs::write(&path, chips_core::codec::b64url_encode(&self.agent.seed()))?;
        Ok(path)
    }

    /// Every audit row of a tally that is not ok, as "ent side check: detail".
    pub async fn audit_failures(&self, tally: Uuid) -> Result<Vec<String>> {
        Ok(self
            .admin
            .query(
                "SELECT ent, side, check_name, detail FROM chips.tally_audit($1) WHERE NOT ok",
                &[&tally],
            )
            .await?
            .iter()
            .map(|r| {
                format!(
                    "{} {} {}: {}",
                    r.get::<_, String>(0),
                    r.get::<_, String>(1),
                    r.get::<_, String>(2),
                    r.get::<_, String>(3)
                )
            })
            .collect())
    }

    /// The chain of one half: (index, chit uuid, hash), in order.
    pub async fn chain(&self, tally: Uuid, side: &str) -> Result<Vec<(i32, Uuid, Vec<u8>)>> {
        Ok(self
            .admin
            .query(
                "SELECT c.chain_idx, c.chit_uuid, c.chain_hash FROM chips.chits c JOIN chips.tallies t ON t.id = c.tally_id
                 WHERE t.tally_uuid = $1 AND t.side = $2 AND c.chain_idx IS NOT NULL ORDER BY c.chain_idx",
                &[&tally, &side],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    /// Creates a user with a fresh key and connects as that user's role.
    pub async fn user(&self, name: &str, cuid: &str) -> Result<User> {
        self.user_on(name, cuid, None).await
    }

    /// The key of this site's test user `name` (derived from both, so any client can make it).
    pub fn user_key(&self, name: &str) -> KeyPair {
        KeyPair::from_phrase(&format!("{name} at {}", self.db))
    }

    /// A custodial user (the site signs for them; no key in the test): their ent.
    pub async fn custodial_user(&self, name: &str, cuid: &str) -> Result<String> {
        Ok(self
            .admin
            .query_one(
                "SELECT chips.user_create($1, cuid => $2, custodial => true)",
                &[&name, &cuid],
            )
            .await?
            .get(0))
    }

    /// [`Site::user`] on a given local agent (for a site serving several).
    pub async fn user_on(&self, name: &str, cuid: &str, agent: Option<&str>) -> Result<User> {
        let key = self.user_key(name);
        let ent: String = self
            .admin
            .query_one(
                "SELECT chips.user_create($1, cuid => $2, pubkey => $3, agent => $4)",
                &[&name, &cuid, &key.public_b64(), &agent],
            )
            .await?
            .get(0);
        let role = self.role_of(&ent).await?;
        let db = self.connect_role(&role).await?;
        Ok(User {
            ent,
            cuid: cuid.into(),
            name: name.into(),
            role,
            key,
            db,
        })
    }
}

/// A person at a site: holds its key, acts through its own role.
pub struct User {
    pub ent: String,
    pub cuid: String,
    pub name: String,
    pub role: String,
    pub key: KeyPair,
    pub db: Client,
}

impl User {
    /// A draft tally on `side` ("stock": I extend credit; "foil": I am the client).
    pub async fn draft(
        &self,
        side: &str,
        hold_terms: Value,
        part_terms: Value,
        memo: &str,
    ) -> Result<Uuid> {
        Ok(self
            .db
            .query_one(
                "SELECT chips.tally_create($1, hold_terms => $2, part_terms => $3, memo => $4)",
                &[&side, &hold_terms, &part_terms, &memo],
            )
            .await?
            .get(0))
    }

    pub async fn ticket(&self, tally: Uuid, reusable: bool) -> Result<Value> {
        Ok(self
            .db
            .query_one(
                "SELECT chips.ticket_create($1, reusable => $2)",
                &[&tally, &reusable],
            )
            .await?
            .get(0))
    }

    pub async fn redeem(&self, ticket: &Value) -> Result<Option<Uuid>> {
        Ok(self
            .db
            .query_one("SELECT chips.ticket_redeem($1)", &[ticket])
            .await?
            .get(0))
    }

    /// The tally document of my half, as the database builds it.
    pub async fn doc(&self, tally: Uuid) -> Result<Value> {
        Ok(self
            .db
            .query_one("SELECT chips.tally_json($1)", &[&tally])
            .await?
            .get(0))
    }

    /// My signature over the tally document (computed here, never in the database).
    pub async fn sign(&self, tally: Uuid) -> Result<String> {
        let doc = self.doc(tally).await?;
        Ok(self.key.sign(
            canon::canonical(&doc)
                .expect("documents are valid JSON")
                .as_bytes(),
        ))
    }

    pub async fn offer(&self, tally: Uuid) -> Result<String> {
        let sig = self.sign(tally).await?;
        self.call("tally_offer", tally, Some(&sig)).await
    }

    pub async fn accept(&self, tally: Uuid) -> Result<String> {
        let sig = self.sign(tally).await?;
        self.call("tally_accept", tally, Some(&sig)).await
    }

    pub async fn counter(&self, tally: Uuid) -> Result<String> {
        self.call("tally_counter", tally, None).await
    }

    pub async fn void(&self, tally: Uuid) -> Result<String> {
        self.call("tally_void", tally, None).await
    }

    pub async fn close(&self, tally: Uuid) -> Result<String> {
        self.call("tally_close", tally, None).await
    }

    /// A payment: the database prepares the chit, this user signs it, the database verifies.
    pub async fn pay(&self, tally: Uuid, units: i64, memo: &str) -> Result<Uuid> {
        let doc: Value = self
            .db
            .query_one(
                "SELECT chips.chit_json($1, $2, $3)",
                &[&tally, &units, &memo],
            )
            .await?
            .get(0);
        self.issue(&doc).await?;
        Ok(Uuid::parse_str(doc["uuid"].as_str().expect("chit uuid")).expect("uuid"))
    }

    /// A setting chit (`{"target": .., "bound": .., "reward": .., "clutch": ..}` or
    /// `{"close": true}`), signed by this user.
    pub async fn settings(&self, tally: Uuid, settings: Value) -> Result<String> {
        let doc: Value = self
            .db
            .query_one(
                "SELECT chips.chit_json($1, NULL, NULL, $2)",
                &[&tally, &settings],
            )
            .await?
            .get(0);
        self.issue(&doc).await
    }

    /// Signs a chit document and issues it.
    pub async fn issue(&self, doc: &Value) -> Result<String> {
        let sig = self.key.sign_json(doc).expect("documents are valid JSON");
        Ok(self
            .db
            .query_one("SELECT chips.chit_issue($1, $2)", &[doc, &sig])
            .await?
            .get(0))
    }

    pub async fn invoice(&self, tally: Uuid, units: i64, memo: &str) -> Result<Uuid> {
        Ok(self
            .db
            .query_one(
                "SELECT chips.chit_invoice($1, $2, $3)",
                &[&tally, &units, &memo],
            )
            .await?
            .get(0))
    }

    /// Signs an invoice the partner sent (the chit document is read from my half).
    pub async fn sign_invoice(&self, tally: Uuid, chit: Uuid) -> Result<String> {
        let doc: Value = self
            .db
            .query_one(
                "SELECT doc FROM chips.chits_v WHERE tally_uuid = $1 AND chit_uuid = $2",
                &[&tally, &chit],
            )
            .await?
            .get(0);
        let sig = self.key.sign_json(&doc).expect("documents are valid JSON");
        Ok(self
            .db
            .query_one("SELECT chips.chit_sign($1, $2, $3)", &[&tally, &chit, &sig])
            .await?
            .get(0))
    }

    pub async fn decline(&self, tally: Uuid, chit: Uuid) -> Result<String> {
        Ok(self
            .db
            .query_one("SELECT chips.chit_decline($1, $2)", &[&tally, &chit])
            .await?
            .get(0))
    }

    /// My half's (net_good, net_pend) of a tally.
    pub async fn balance(&self, tally: Uuid) -> Result<(i64, i64)> {
        let r = self
            .db
            .query_one(
                "SELECT net_good, net_pend FROM chips.tallies WHERE tally_uuid = $1",
                &[&tally],
            )
            .await?;
        Ok((r.get(0), r.get(1)))
    }

    /// The state of one of my chits (`L.good`, `A.pend`, ...).
    pub async fn chit_state(&self, tally: Uuid, chit: Uuid) -> Result<Option<String>> {
        Ok(self
            .db
            .query_opt(
                "SELECT state FROM chips.chits_v WHERE tally_uuid = $1 AND chit_uuid = $2",
                &[&tally, &chit],
            )
            .await?
            .map(|r| r.get(0)))
    }

    /// Opens a tally with `client` (this user is the vendor, granting `limit`), relaying through
    /// `sites` when the two are on different sites.
    pub async fn open_with(&self, client: &User, limit: i64, sites: &[&Site]) -> Result<Uuid> {
        let t = self
            .draft(
                "stock",
                serde_json::json!({"limit": limit}),
                serde_json::json!({}),
                "",
            )
            .await?;
        client.redeem(&self.ticket(t, false).await?).await?;
        relay_all(sites).await?;
        self.offer(t).await?;
        relay_all(sites).await?;
        client.accept(t).await?;
        relay_all(sites).await?;
        Ok(t)
    }

    /// Calls `chips.<function>(tally[, signature])` and returns the new state.
    pub async fn call(
        &self,
        function: &str,
        tally: Uuid,
        signature: Option<&str>,
    ) -> Result<String> {
        let row = match signature {
            Some(s) => {
                self.db
                    .query_one(&format!("SELECT chips.{function}($1, $2)"), &[&tally, &s])
                    .await?
            }
            None => {
                self.db
                    .query_one(&format!("SELECT chips.{function}($1)"), &[&tally])
                    .await?
            }
        };
        Ok(row.get(0))
    }

    /// The state of my half of a tally (`P.offer`, `open`, ...), or None when I hold none.
    pub async fn state(&self, tally: Uuid) -> Result<Option<String>> {
        Ok(self
            .db
            .query_opt(
                "SELECT state FROM chips.tallies_v WHERE tally_uuid = $1",
                &[&tally],
            )
            .await?
            .map(|r| r.get(0)))
    }

    /// My tallies: (uuid, state), oldest first.
    pub async fn tallies(&self) -> Result<Vec<(Uuid, String)>> {
        Ok(self
            .db
            .query(
                "SELECT tally_uuid, state FROM chips.tallies_v ORDER BY id",
                &[],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }
}

/// A notification received on a LISTEN connection: (channel, payload as JSON).
pub type Note = (String, Value);

/// Opens a connection that LISTENs on `channels`; notifications arrive on the returned receiver.
pub async fn listen(
    dsn: &str,
    channels: &[&str],
) -> Result<(Client, tokio::sync::mpsc::UnboundedReceiver<Note>)> {
    use futures_util::StreamExt;
    let (client, mut conn) = tokio_postgres::connect(dsn, NoTls).await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(msg)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = msg {
                let payload = serde_json::from_str(n.payload()).unwrap_or(Value::Null);
                if tx.send((n.channel().to_string(), payload)).is_err() {
                    break;
                }
            }
        }
    });
    for ch in channels {
        client.batch_execute(&format!("LISTEN \"{ch}\"")).await?;
    }
    Ok((client, rx))
}

/// Takes every notification that arrives within `wait`.
pub async fn drain(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Note>,
    wait: std::time::Duration,
) -> Vec<Note> {
    let mut out = Vec::new();
    while let Ok(Some(n)) = tokio::time::timeout(wait, rx.recv()).await {
        out.push(n);
    }
    out
}

/// Every user's net position (the sum of their halves' good balances, 0 for a user with no
/// tally), by ent: what a lift must leave as it was.
pub async fn net_positions(db: &Client) -> Vec<(String, i64)> {
    db.query(
        "SELECT u.ent, coalesce(sum(t.net_good), 0)::bigint FROM chips.users u
         LEFT JOIN chips.tallies t ON t.ent = u.ent GROUP BY u.ent ORDER BY u.ent",
        &[],
    )
    .await
    .expect("net positions")
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}
