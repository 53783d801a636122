//! `chipsd`, the chips sidecar: relays a site's peer traffic (Noise over TCP) into the chips
//! extension and back. It holds no state the database does not hold: kill it at any moment and
//! nothing is lost (the outbox is durable, receivers are idempotent).
//!
//! * `chipsd run`: serve the site (listener + sender), until SIGINT/SIGTERM.
//! * `chipsd keygen`, `chipsd pubkey`: agent (or user) keys.
//! * `chipsd sign`: sign a JSON document's canonical form with a key file.

use chipsd::{clearing, config, sender, server};

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
    Run(RunArgs),
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
        Command::Run(args) => match run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("chipsd run: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Sign { key } => print_or_fail(sign_stdin(&key), "sign"),
        Command::Pubkey { key } => print_or_fail(read_key(&key).map(|k| k.public_b64()), "pubkey"),
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
