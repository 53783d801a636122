//! A real chips client over tokio-postgres, shared by the integration tests and the demo.
//!
//! * [`Cluster`]: a PostgreSQL cluster with chips installed (from `CHIPS_TEST_DSN`).
//! * [`Site`]: one database = one chips site, with its own agent.
//! * [`User`]: a person at a site, holding an Ed25519 key the database never sees, acting through
//!   its own role (`SET ROLE`), as a phone app would through the sidecar.
//! * [`relay`]: carries outbox messages from one site to another through `chips.peer_receive`,
//!   standing in for the sidecar's transport.

use chips_core::canon;
use chips_core::sign::KeyPair;
use serde_json::Value;
use tokio_postgres::{Client, NoTls};
use uuid::Uuid;

pub type Error = tokio_postgres::Error;
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Connects and drives the connection on a background task.
pub mod faults;
pub mod load;
pub mod oracle;
pub mod ring;

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

/// A cluster with the chips extension installed, reached with a superuser DSN (no dbname).
#[derive(Clone)]
pub struct Cluster {
    pub dsn: String,
}

impl Cluster {
    pub fn new(dsn: impl Into<String>) -> Self {
        Cluster { dsn: dsn.into() }
    }

    /// From `CHIPS_TEST_DSN` (set by scripts/test.sh).
    pub fn from_env() -> Self {
        let dsn = std::env::var("CHIPS_TEST_DSN")
            .expect("CHIPS_TEST_DSN is not set: run the integration tests through scripts/test.sh");
        Cluster::new(dsn)
    }

    pub fn db_dsn(&self, db: &str) -> String {
        format!("{} dbname={db}", self.dsn)
    }

    /// Creates (or re-creates) database `db` with chips installed.
    pub async fn fresh_db(&self, db: &str) -> Result<Client> {
        self.fresh_db_at(db, None).await
    }

    /// Creates (or re-creates) database `db` with chips `version` installed (None: the default
    /// version, this tree's).
    pub async fn fresh_db_at(&self, db: &str, version: Option<&str>) -> Result<Client> {
        let admin = connect(&self.db_dsn("postgres")).await?;
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
            .await?;
        admin
            .batch_execute(&format!("CREATE DATABASE \"{db}\""))
            .await?;
        let c = connect(&self.db_dsn(db)).await?;
        match version {
            None => c.batch_execute("CREATE EXTENSION chips").await?,
            Some(v) => {
                let sql: String = c
                    .query_one(
                        "SELECT format('CREATE EXTENSION chips VERSION %L', $1::text)",
                        &[&v],
                    )
                    .await?
                    .get(0);
                c.batch_execute(&sql).await?
            }
        }
        Ok(c)
    }

    pub async fn drop_db(&self, db: &str) -> Result<()> {
        let admin = connect(&self.db_dsn("postgres")).await?;
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
            .await
    }

    /// A new site in a fresh database `db`: its agent (key derived from `db`, listening on
    /// 127.0.0.1:`port`) and a default contract.
    pub async fn site(&self, db: &str, port: u16) -> Result<Site> {
        self.site_at(db, port, None).await
    }

    /// A new site as `site` makes it, with chips `version` installed (None: this tree's).
    pub async fn site_at(&self, db: &str, port: u16, version: Option<&str>) -> Result<Site> {
        let admin = self.fresh_db_at(db, version).await?;
        let agent = KeyPair::from_phrase(&format!("agent of {db}"));
        admin
            .execute(
                "SELECT chips.agent_register($1, '127.0.0.1', $2, local => true)",
                &[&agent.public_b64(), &(port as i32)],
            )
            .await?;
        let contract: String = admin
            .query_one(
                "SELECT chips.contract_add($1)",
                &[&serde_json::json!({
                    "title": "Tally contract",
                    "version": 1,
                    "text": "The parties agree to honour the chits of this tally as IOUs in CHIPs."
                })],
            )
            .await?
            .get(0);
        Ok(Site {
            db: db.into(),
            dsn: self.db_dsn(db),
            admin,
            agent,
            contract,
        })
    }
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

/// What a relay pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Relayed {
    pub applied: usize,
    pub duplicates: usize,
    pub failed: usize,
}

/// Carries every deliverable outbox message of `from` addressed to `to`'s agent into `to`
/// (`chips.peer_receive`), acknowledging each one `to` applied or already had. Messages `to`
/// refuses stay in `from`'s outbox (their lease expires and they are retried).
pub async fn relay(from: &Site, to: &Site) -> Result<Relayed> {
    let mut done = Relayed::default();
    let rows = from
        .admin
        .query(
            "SELECT id, from_agent, msg, to_agent = $1 FROM chips.outbox_claim(1000, '1 second')",
            &[&to.agent_id()],
        )
        .await?;
    // what is for other sites goes back at once (its lease would hold it up for a second)
    let others: Vec<i64> = rows
        .iter()
        .filter(|r| !r.get::<_, bool>(3))
        .map(|r| r.get(0))
        .collect();
    from.admin
        .execute(
            "UPDATE chips.outbox SET claimed_until = NULL WHERE id = ANY ($1)",
            &[&others],
        )
        .await?;
    let rows: Vec<_> = rows.into_iter().filter(|r| r.get::<_, bool>(3)).collect();
    let mut acked = Vec::new();
    for row in rows {
        let (id, from_agent, msg): (i64, String, Value) = (row.get(0), row.get(1), row.get(2));
        match to
            .admin
            .query_one("SELECT chips.peer_receive($1, $2)", &[&from_agent, &msg])
            .await
        {
            Ok(r) => {
                let result: String = r.get(0);
                if result == "duplicate" {
                    done.duplicates += 1;
                } else {
                    done.applied += 1;
                }
                acked.push(id);
            }
            Err(_) => done.failed += 1,
        }
    }
    from.admin
        .execute("SELECT chips.outbox_ack($1)", &[&acked])
        .await?;
    Ok(done)
}

/// Does a site's work on clearing rounds, as chipsd does when woken (`CALL chips.round_work()`):
/// how many pieces.
pub async fn round_work(site: &Site) -> Result<usize> {
    let mut pieces = 0;
    for m in site.admin.simple_query("CALL chips.round_work()").await? {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            pieces += r.get(0).and_then(|n| n.parse().ok()).unwrap_or(0);
        }
    }
    Ok(pieces)
}

/// Relays between every pair of sites, and does their round work, until no message moves and
/// no piece is left; returns the total. With one site (or none) there is nothing to relay.
pub async fn relay_all(sites: &[&Site]) -> Result<Relayed> {
    let mut total = Relayed::default();
    loop {
        let mut moved = 0;
        for s in sites {
            moved += round_work(s).await?;
        }
        for from in sites {
            for to in sites {
                if from.db != to.db {
                    let r = relay(from, to).await?;
                    moved += r.applied + r.duplicates;
                    total.applied += r.applied;
                    total.duplicates += r.duplicates;
                    total.failed += r.failed;
                }
            }
        }
        if moved == 0 {
            return Ok(total);
        }
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

/// A scratch directory for one test process, `$TMPDIR/chipsd-<tag>-<pid>`, created if missing;
/// the test removes it when done.
pub fn scratch_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("chipsd-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory under the temp dir");
    dir
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Waits until something accepts connections on 127.0.0.1:`port`; false after `limit`.
pub fn wait_port(port: u16, limit: std::time::Duration) -> bool {
    let t = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if t.elapsed() > limit {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    true
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

/// Waits until `f` holds, checking every `every`; an error naming `what` after `limit`.
pub async fn eventually<F, Fut>(
    what: &str,
    limit: std::time::Duration,
    every: std::time::Duration,
    f: F,
) -> Result<(), String>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t = std::time::Instant::now();
    while !f().await {
        if t.elapsed() > limit {
            return Err(format!("timed out after {limit:?} waiting for: {what}"));
        }
        tokio::time::sleep(every).await;
    }
    Ok(())
}

/// For benchmarks: waits (up to 60 s, checking every millisecond) until `f` holds; panics after.
pub async fn until<F, Fut>(f: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually(
        "the benchmark",
        std::time::Duration::from_secs(60),
        std::time::Duration::from_millis(1),
        f,
    )
    .await
    .unwrap();
}

/// The `p` quantile (0..=1, nearest rank) of `v`, which it sorts.
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// A running `chipsd`, killed (SIGKILL) when dropped.
pub struct Sidecar {
    pub child: std::process::Child,
    program: std::path::PathBuf,
    args: Vec<String>,
    log: String,
    port: u16,
}

impl Sidecar {
    /// `chipsd run` for `site` on 127.0.0.1:`port`, its agent key written into `dir`, with
    /// `extra` flags; returns once it listens. `log` is its `CHIPSD_LOG`.
    pub fn start(
        chipsd: &std::path::Path,
        site: &Site,
        port: u16,
        dir: &std::path::Path,
        extra: &[&str],
        log: &str,
    ) -> std::io::Result<Sidecar> {
        let key = site.write_agent_key(dir)?;
        let mut args: Vec<String> = vec![
            "run".into(),
            "--db".into(),
            site.dsn.clone(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--key".into(),
            key.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Sidecar::spawn(chipsd, args, port, log)
    }

    /// The process id of the running chipsd.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Any `chipsd` command line that listens on 127.0.0.1:`port`; returns once it listens.
    pub fn spawn(
        chipsd: &std::path::Path,
        args: Vec<String>,
        port: u16,
        log: &str,
    ) -> std::io::Result<Sidecar> {
        let child = Self::launch(chipsd, &args, log)?;
        let mut s = Sidecar {
            child,
            program: chipsd.to_path_buf(),
            args,
            log: log.to_string(),
            port,
        };
        s.wait_listening()?;
        Ok(s)
    }

    fn launch(
        chipsd: &std::path::Path,
        args: &[String],
        log: &str,
    ) -> std::io::Result<std::process::Child> {
        std::process::Command::new(chipsd)
            .args(args)
            .env("CHIPSD_LOG", log)
            .stdout(std::process::Stdio::null())
            .spawn()
    }

    fn wait_listening(&mut self) -> std::io::Result<()> {
        let t = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if self.child.try_wait()?.is_some() {
                return Err(std::io::Error::other("chipsd exited before listening"));
            }
            if t.elapsed() > std::time::Duration::from_secs(20) {
                return Err(std::io::Error::other("chipsd did not listen within 20 s"));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(())
    }

    /// SIGKILL, and reap it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again with the same command line.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.child = Self::launch(&self.program, &self.args, &self.log)?;
        self.wait_listening()
    }

    /// SIGTERM, then up to `grace` for it to exit; its exit status, or None when it had to be
    /// killed.
    pub fn stop(&mut self, grace: std::time::Duration) -> Option<std::process::ExitStatus> {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let t = std::time::Instant::now();
        while t.elapsed() < grace {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        self.kill9();
        None
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A PostgreSQL 15 cluster of a test's own (initdb in a scratch directory), for tests that crash
/// the server: they must not take the shared test cluster down with them. Stopped and removed
/// when dropped.
pub struct PrivateCluster {
    pub dir: std::path::PathBuf,
    pub port: u16,
}

/// A PostgreSQL 15 program: in `PG_BIN` (scripts/test.sh sets it), else Debian's directory.
pub fn pg_tool(name: &str) -> String {
    let bin = std::env::var("PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
    format!("{bin}/{name}")
}

/// Runs a PostgreSQL program as the postgres user (initdb refuses root).
fn as_postgres(program: &str, args: &[&str]) -> std::io::Result<std::process::Output> {
    let path = pg_tool(program);
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false);
    let mut cmd = if root {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--", &path]);
        c
    } else {
        std::process::Command::new(&path)
    };
    let out = cmd.args(args).output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "{program} {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(out)
}

impl PrivateCluster {
    /// initdb and start, on a free port of 127.0.0.1.
    pub fn start(tag: &str) -> std::io::Result<PrivateCluster> {
        let dir = std::env::temp_dir().join(format!("chips-pg-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sock"))?;
        let _ = std::process::Command::new("chown")
            .args(["-R", "postgres:", &dir.display().to_string()])
            .status();
        let data = dir.join("data").display().to_string();
        as_postgres(
            "initdb",
            &[
                "-D",
                &data,
                "--auth=trust",
                "--username=postgres",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
            ],
        )?;
        let c = PrivateCluster {
            dir,
            port: free_port(),
        };
        c.run()?;
        Ok(c)
    }

    /// Starts the (stopped or crashed) server again; returns when it accepts connections
    /// (after crash recovery).
    pub fn run(&self) -> std::io::Result<()> {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=100",
            self.port,
            self.dir.join("sock").display()
        );
        as_postgres(
            "pg_ctl",
            &[
                "-D",
                &self.dir.join("data").display().to_string(),
                "-l",
                &self.dir.join("server.log").display().to_string(),
                "-w",
                "-t",
                "120",
                "-o",
                &opts,
                "start",
            ],
        )
        .map(|_| ())
    }

    /// The server dies at once, as in a power cut (`pg_ctl stop -m immediate`: no checkpoint,
    /// every backend gone mid-transaction; the next start recovers from the WAL).
    pub fn crash(&self) -> std::io::Result<()> {
        as_postgres(
            "pg_ctl",
            &[
                "-D",
                &self.dir.join("data").display().to_string(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        )
        .map(|_| ())
    }

    pub fn dsn(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres", self.port)
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = self.crash();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
