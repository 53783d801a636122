//! PostgreSQL clusters for tests: the shared one with chips installed ([`Cluster`], from
//! `CHIPS_TEST_DSN`), and a test's own private one ([`PrivateCluster`]) for tests that crash the
//! server.

use chips_core::sign::KeyPair;
use tokio_postgres::Client;

use crate::*;

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
