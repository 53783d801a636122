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
    /// Serve the site: listen for peers, send the outbox. Values from --config, then the
    /// environment, then flags.
    Run(Box<RunArgs>),
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

#[derive(clap::Args)]
struct RunArgs {
    /// A TOML file with any of: db, listen, key, max_connections, idle_timeout_secs, poll_ms,
    /// sync_secs, reply_timeout_ms, clearing_secs.
    #[arg(long, env = "CHIPSD_CONFIG")]
    config: Option<PathBuf>,
    /// libpq connection string of the site's database.
    #[arg(long, env = "CHIPSD_DB")]
    db: Option<String>,
    /// Address to listen on for peers (default 127.0.0.1:65430).
    #[arg(long, env = "CHIPSD_LISTEN")]
    listen: Option<std::net::SocketAddr>,
    /// The agent key file.
    #[arg(long, env = "CHIPSD_KEY")]
    key: Option<PathBuf>,
    #[arg(long, env = "CHIPSD_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    #[arg(long, env = "CHIPSD_IDLE_TIMEOUT_SECS")]
    idle_timeout_secs: Option<u64>,
    #[arg(long, env = "CHIPSD_POLL_MS")]
    poll_ms: Option<u64>,
    #[arg(long, env = "CHIPSD_SYNC_SECS")]
    sync_secs: Option<u64>,
    /// How long to wait to connect, for a handshake, or for a peer's reply (default 10000).
    #[arg(long, env = "CHIPSD_REPLY_TIMEOUT_MS")]
    reply_timeout_ms: Option<u64>,
    /// How often to call chips.clearing_tick() (default 5; 0: never). The site's
    /// chips.clearing_configure decides whether and how often a pass actually runs.
    #[arg(long, env = "CHIPSD_CLEARING_SECS")]
    clearing_secs: Option<u64>,
    /// How often to call chips.lift_tick(), the timers of distributed lifts (default 500; 0: never).
    #[arg(long, env = "CHIPSD_LIFT_TICK_MS")]
    lift_tick_ms: Option<u64>,
    /// How often to call chips.clearing_continuous() (default 100; 0: never). It clears only
    /// when the site turned continuous clearing on (chips.clearing_configure).
    #[arg(long, env = "CHIPSD_CONTINUOUS_MS")]
    continuous_ms: Option<u64>,
    /// Serve the user gateway (websocket API, /doc, /health, /metrics) here; off if not given.
    #[arg(long, env = "CHIPSD_GATEWAY_LISTEN")]
    gateway_listen: Option<std::net::SocketAddr>,
    /// libpq connection string of the gateway's role (a member of chips_gateway); default: db.
    #[arg(long, env = "CHIPSD_GATEWAY_DB")]
    gateway_db: Option<String>,
    /// The URL clients reach the gateway at, for login links (default http(s)://gateway_listen).
    #[arg(long, env = "CHIPSD_GATEWAY_PUBLIC_URL")]
    gateway_public_url: Option<String>,
    #[arg(long, env = "CHIPSD_GATEWAY_MAX_CONNECTIONS")]
    gateway_max_connections: Option<usize>,
    #[arg(long, env = "CHIPSD_GATEWAY_MAX_MESSAGE_BYTES")]
    gateway_max_message_bytes: Option<usize>,
    #[arg(long, env = "CHIPSD_GATEWAY_IDLE_SECS")]
    gateway_idle_secs: Option<u64>,
    #[arg(long, env = "CHIPSD_GATEWAY_RATE_PER_SEC")]
    gateway_rate_per_sec: Option<u32>,
    #[arg(long, env = "CHIPSD_GATEWAY_RATE_BURST")]
    gateway_rate_burst: Option<u32>,
    #[arg(long, env = "CHIPSD_GATEWAY_POOL_SIZE")]
    gateway_pool_size: Option<usize>,
    /// How often subscribed users' event heads are read, in ms (default 50).
    #[arg(long, env = "CHIPSD_GATEWAY_POLL_MS")]
    gateway_poll_ms: Option<u64>,
    /// PEM certificate chain for the gateway (TLS on when given with --tls-key).
    #[arg(long, env = "CHIPSD_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for the gateway.
    #[arg(long, env = "CHIPSD_TLS_KEY")]
    tls_key: Option<PathBuf>,
}

fn run(args: RunArgs) -> Result<(), String> {
    let file = match &args.config {
        Some(p) => config::FileConfig::load(p)?,
        None => config::FileConfig::default(),
    };
    let cfg = file.merge(config::FileConfig {
        db: args.db,
        listen: args.listen,
        key: args.key,
        max_connections: args.max_connections,
        idle_timeout_secs: args.idle_timeout_secs,
        poll_ms: args.poll_ms,
        sync_secs: args.sync_secs,
        reply_timeout_ms: args.reply_timeout_ms,
        clearing_secs: args.clearing_secs,
        lift_tick_ms: args.lift_tick_ms,
        continuous_ms: args.continuous_ms,
        gateway_listen: args.gateway_listen,
        gateway_db: args.gateway_db,
        gateway_public_url: args.gateway_public_url,
        gateway_max_connections: args.gateway_max_connections,
        gateway_max_message_bytes: args.gateway_max_message_bytes,
        gateway_idle_secs: args.gateway_idle_secs,
        gateway_rate_per_sec: args.gateway_rate_per_sec,
        gateway_rate_burst: args.gateway_rate_burst,
        gateway_pool_size: args.gateway_pool_size,
        gateway_poll_ms: args.gateway_poll_ms,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
    })?;
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
    if let Some(g) = &cfg.gateway {
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
    match Cli::parse().command {
        Command::Run(args) => match run(*args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("chipsd run: {e}");
                ExitCode::FAILURE
            }
        },
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
