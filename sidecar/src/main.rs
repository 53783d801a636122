//! `chipsd`, the chips sidecar: relays a site's peer traffic (Noise over TCP) into the chips
//! extension and back. It holds no state the database does not hold: kill it at any moment and
//! nothing is lost (the outbox is durable, receivers are idempotent).
//!
//! * `chipsd run`: serve the site (listener + sender), until SIGINT/SIGTERM.
//! * `chipsd keygen`, `chipsd pubkey`: agent (or user) keys.
//! * `chipsd sign`: sign a JSON document's canonical form with a key file.

use chipsd::{clearing, config, gateway, sender, server};

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;

use chips_core::sign::KeyPair;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "chipsd",
    version,
    about = "chips sidecar: peer relay for a chips site"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the site: listen for peers, send the outbox. Settings from flags, the environment
    /// (CHIPSD_*) and a TOML file (--config), in that order of precedence.
    Run(Box<config::Config>),
    /// Verify the invariants of a chips network across its sites (balances and chains of both
    /// halves of every tally, audits, net positions, lifts and rounds decided alike
    /// everywhere); exit status 1 when one fails, 2 when a site cannot be read.
    Check {
        /// One site's database (libpq connection string of a superuser or chips_admin role),
        /// once per site.
        #[arg(long = "dsn", required = true)]
        dsns: Vec<String>,
    },
    /// Write a new agent key file (Ed25519 seed, base64url, mode 0600) and print the agent id.
    Keygen {
        /// Where to write the key; refused if the file exists.
        #[arg(long, default_value = "agent.key")]
        out: PathBuf,
    },
    /// Sign the canonical JSON of the document read from stdin; prints the base64url signature.
    Sign {
        /// A key file written by `chipsd keygen`.
        #[arg(long)]
        key: PathBuf,
    },
    /// Print the public key (base64url) of a key file.
    Pubkey {
        #[arg(long)]
        key: PathBuf,
    },
    /// Issue a one-time login ticket for a user (chips.login_ticket, as an admin) and print it
    /// as a link and as a QR code to scan with the app.
    LoginTicket {
        /// libpq connection string of an admin role.
        #[arg(long, env = "CHIPSD_DB")]
        db: String,
        /// The user's entity id (chips.users.ent).
        #[arg(long)]
        ent: String,
        /// The gateway's public URL (as clients reach it).
        #[arg(long, env = "CHIPSD_GATEWAY_PUBLIC_URL")]
        url: String,
        /// How long the ticket is good for (a PostgreSQL interval).
        #[arg(long, default_value = "24 hours")]
        lifetime: String,
        /// Print the link only.
        #[arg(long)]
        no_qr: bool,
    },
    /// Issue a one-time admin ticket (chips.admin_ticket, as a database admin) and print the
    /// admin view's link (`<url>/admin#token=…`), and its QR code.
    AdminTicket {
        /// libpq connection string of an admin role.
        #[arg(long, env = "CHIPSD_DB")]
        db: String,
        /// The gateway's public URL (as the admin's browser reaches it).
        #[arg(long, env = "CHIPSD_GATEWAY_PUBLIC_URL")]
        url: String,
        /// How long the ticket is good for (a PostgreSQL interval, at most 7 days).
        #[arg(long, default_value = "1 hour")]
        lifetime: String,
        /// Print the link only.
        #[arg(long)]
        no_qr: bool,
    },
}

fn run(cfg: config::Config) -> Result<(), String> {
    let seed = read_key(&cfg.key)?.seed();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CHIPSD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    rt.block_on(serve(std::sync::Arc::new(cfg), seed))
}

async fn serve(cfg: std::sync::Arc<config::Config>, seed: [u8; 32]) -> Result<(), String> {
    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.listen))?;
    let agent = chips_core::peer::agent_id(&seed);
    tracing::info!(%agent, listen = %cfg.listen, "chipsd serving");
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    tracker.spawn(server::serve(
        listener,
        cfg.clone(),
        seed,
        token.clone(),
        tracker.clone(),
    ));
    {
        let (cfg, token) = (cfg.clone(), token.clone());
        tracker.spawn(async move {
            // The database may not be up yet (or restarts): keep trying until told to stop.
            loop {
                match sender::run(cfg.clone(), seed, token.clone()).await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "sender stopped; restarting in 1 s");
                        tokio::select! {
                            _ = token.cancelled() => break,
                            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                        }
                    }
                }
            }
        });
    }
    tracker.spawn(clearing::run(cfg.clone(), token.clone()));
    tracker.spawn(clearing::lift_timer(cfg.clone(), token.clone()));
    tracker.spawn(clearing::continuous(cfg.clone(), token.clone()));
    tracker.spawn(clearing::round_worker(cfg.clone(), token.clone()));
    if let Some(g) = cfg.gateway() {
        let listener = tokio::net::TcpListener::bind(g.listen)
            .await
            .map_err(|e| format!("cannot listen on {} (gateway): {e}", g.listen))?;
        let gw = gateway::Gateway::new(g.settings.clone(), token.clone(), tracker.clone())?;
        tracker.spawn(gateway::serve(gw, listener));
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down: finishing in-flight messages");
    token.cancel();
    tracker.close();
    if tokio::time::timeout(std::time::Duration::from_secs(10), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "in-flight work did not finish in 10 s; abandoning it (the outbox keeps it)"
        );
    }
    Ok(())
}

fn read_key(path: &PathBuf) -> Result<KeyPair, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let seed = chips_core::codec::b64url_decode_array::<32>(text.trim(), "key file")
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(KeyPair::from_seed(&seed))
}

fn sign_stdin(key: &PathBuf) -> Result<String, String> {
    let kp = read_key(key)?;
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .map_err(|e| format!("reading stdin: {e}"))?;
    let doc: serde_json::Value =
        serde_json::from_str(&input).map_err(|e| format!("stdin is not JSON: {e}"))?;
    kp.sign_json(&doc).map_err(|e| e.to_string())
}

/// `chipsd login-ticket`: the link is `<url>/login?ent=<ent>&token=<token>`; the app opens the
/// websocket at `<url>/ws` and calls login.register with the token and its new key.
fn login_ticket(
    db: &str,
    ent: &str,
    url: &str,
    lifetime: &str,
    qr: bool,
) -> Result<String, String> {
    let ticket = issue(
        db,
        "SELECT chips.login_ticket($1, $2::text::interval)",
        &[&ent, &lifetime],
    )?;
    let token = ticket["token"].as_str().unwrap_or_default();
    let link = format!(
        "{}/login?ent={ent}&token={token}",
        url.trim_end_matches('/')
    );
    show_link(&link, &ticket, qr)
}

/// `chipsd admin-ticket`: the link is `<url>/admin#token=<token>` (a fragment: browsers do not
/// send it to the server); the admin view logs in with it over the websocket.
fn admin_ticket(db: &str, url: &str, lifetime: &str, qr: bool) -> Result<String, String> {
    let ticket = issue(
        db,
        "SELECT chips.admin_ticket($1::text::interval)",
        &[&lifetime],
    )?;
    let token = ticket["token"].as_str().unwrap_or_default();
    let link = format!("{}/admin#token={token}", url.trim_end_matches('/'));
    show_link(&link, &ticket, qr)
}

/// One call returning a ticket (jsonb), as the admin role of `db`.
fn issue(
    db: &str,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<serde_json::Value, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let client = chipsd::db::connect(db).await.map_err(|e| e.to_string())?;
        let row = client
            .query_one(sql, params)
            .await
            .map_err(|e| match e.as_db_error() {
                Some(d) => format!("{} ({})", d.message(), d.code().code()),
                None => e.to_string(),
            })?;
        Ok(row.get(0))
    })
}

/// The link, when it expires, and (with `qr`) its QR code above.
fn show_link(link: &str, ticket: &serde_json::Value, qr: bool) -> Result<String, String> {
    let mut out = format!(
        "{link}\nexpires {}",
        ticket["expires"].as_str().unwrap_or("?")
    );
    if qr {
        let code = qrcode::QrCode::new(link.as_bytes()).map_err(|e| e.to_string())?;
        let art = code
            .render::<qrcode::render::unicode::Dense1x2>()
            .quiet_zone(true)
            .build();
        out = format!("{art}\n{out}");
    }
    Ok(out)
}

/// `chipsd check`: prints the report; 0 when every invariant holds, 1 when one fails, 2 when a
/// site cannot be read.
fn check(dsns: &[String]) -> ExitCode {
    let report = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| rt.block_on(chipsd::check::check(dsns)));
    match report {
        Ok(r) => {
            print!("{}", r.text());
            if r.problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("chipsd check: {e}");
            ExitCode::from(2)
        }
    }
}

fn print_or_fail(r: Result<String, String>, what: &str) -> ExitCode {
    match r {
        Ok(s) => {
            println!("{s}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("chipsd {what}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = config::parse::<Cli>(&args).unwrap_or_else(|e| e.exit());
    match cli.command {
        Command::Run(args) => match run(*args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("chipsd run: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Check { dsns } => check(&dsns),
        Command::Sign { key } => print_or_fail(sign_stdin(&key), "sign"),
        Command::Pubkey { key } => print_or_fail(read_key(&key).map(|k| k.public_b64()), "pubkey"),
        Command::LoginTicket {
            db,
            ent,
            url,
            lifetime,
            no_qr,
        } => print_or_fail(
            login_ticket(&db, &ent, &url, &lifetime, !no_qr),
            "login-ticket",
        ),
        Command::AdminTicket {
            db,
            url,
            lifetime,
            no_qr,
        } => print_or_fail(admin_ticket(&db, &url, &lifetime, !no_qr), "admin-ticket"),
        Command::Keygen { out } => {
            let kp = KeyPair::generate();
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&out);
            let result = file
                .and_then(|mut f| writeln!(f, "{}", chips_core::codec::b64url_encode(&kp.seed())));
            match result {
                Ok(()) => {
                    println!("{}", kp.public_b64());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("chipsd keygen: cannot write {}: {e}", out.display());
                    ExitCode::FAILURE
                }
            }
        }
    }
}
