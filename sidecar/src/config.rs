//! Configuration of `chipsd run`: one struct, [`Config`], whose every setting is written once,
//! with its flag, environment variable (`CHIPSD_*`), built-in default and meaning. A TOML file
//! (`--config` or `CHIPSD_CONFIG`) whose keys are the field names may give any of them. Flags
//! win over the environment, the environment over the file, the file over the defaults: clap
//! reads flags and environment, and [`parse`] gives it the file's values as the defaults.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::error::ErrorKind;
use clap::ArgMatches;

/// What `chipsd run` needs.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// A TOML file with any of the settings below, by their field names (db, listen, key,
    /// max_connections, ...); the environment and flags override it.
    #[arg(long, env = "CHIPSD_CONFIG")]
    pub config: Option<PathBuf>,
    /// libpq connection string of the site's database (a role with chips_agent).
    #[arg(long, env = "CHIPSD_DB")]
    pub db: String,
    /// Where to listen for peers.
    #[arg(long, env = "CHIPSD_LISTEN", default_value = "127.0.0.1:65430")]
    pub listen: SocketAddr,
    /// The agent key file (`chipsd keygen`).
    #[arg(long, env = "CHIPSD_KEY")]
    pub key: PathBuf,
    /// Most peer connections served at once.
    #[arg(long, env = "CHIPSD_MAX_CONNECTIONS", default_value_t = 256)]
    pub max_connections: usize,
    /// A peer connection with no frame for this many seconds is closed.
    #[arg(long, env = "CHIPSD_IDLE_TIMEOUT_SECS", default_value_t = 60)]
    pub idle_timeout_secs: u64,
    /// How often the outbox is polled besides notifications, in ms.
    #[arg(long, env = "CHIPSD_POLL_MS", default_value_t = 1000)]
    pub poll_ms: u64,
    /// How often `chips.chain_sync()` runs, in seconds.
    #[arg(long, env = "CHIPSD_SYNC_SECS", default_value_t = 30)]
    pub sync_secs: u64,
    /// How long to wait to connect, for a handshake, or for a peer's reply, in ms.
    #[arg(long, env = "CHIPSD_REPLY_TIMEOUT_MS", default_value_t = 10_000)]
    pub reply_timeout_ms: u64,
    /// The same for route discovery's messages (the route lane), in ms: a route query lives a
    /// few seconds, so a lost frame is given up on and sent again sooner.
    #[arg(long, env = "CHIPSD_ROUTE_REPLY_TIMEOUT_MS", default_value_t = 1_000)]
    pub route_reply_timeout_ms: u64,
    /// How often `chips.clearing_tick()` is called, in seconds (0: never). The site's
    /// chips.clearing_configure decides whether and how often a pass actually runs.
    #[arg(long, env = "CHIPSD_CLEARING_SECS", default_value_t = 5)]
    pub clearing_secs: u64,
    /// How often `chips.lift_tick()` is called (timers of distributed lifts), in ms (0: never).
    #[arg(long, env = "CHIPSD_LIFT_TICK_MS", default_value_t = 500)]
    pub lift_tick_ms: u64,
    /// How often `chips.clearing_continuous()` is called, in ms (0: never). It clears only when
    /// the site turned continuous clearing on (chips.clearing_configure).
    #[arg(long, env = "CHIPSD_CONTINUOUS_MS", default_value_t = 100)]
    pub continuous_ms: u64,
    /// Serve the user gateway (websocket API, /doc, /health, /metrics) here; off if not given.
    #[arg(long, env = "CHIPSD_GATEWAY_LISTEN")]
    pub gateway_listen: Option<SocketAddr>,
    /// libpq connection string of the gateway's role (a member of chips_gateway); default: db.
    #[arg(long, env = "CHIPSD_GATEWAY_DB")]
    pub gateway_db: Option<String>,
    /// The URL clients reach the gateway at, for login links (default http(s)://gateway_listen).
    #[arg(long, env = "CHIPSD_GATEWAY_PUBLIC_URL")]
    pub gateway_public_url: Option<String>,
    /// Most websocket connections served at once.
    #[arg(long, env = "CHIPSD_GATEWAY_MAX_CONNECTIONS", default_value_t = 1024)]
    pub gateway_max_connections: usize,
    /// Largest websocket message accepted, in bytes.
    #[arg(long, env = "CHIPSD_GATEWAY_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024)]
    pub gateway_max_message_bytes: usize,
    /// A websocket connection silent this many seconds is closed (at least 2).
    #[arg(long, env = "CHIPSD_GATEWAY_IDLE_SECS", default_value_t = 120)]
    pub gateway_idle_secs: u64,
    /// Calls a user may make a second, sustained.
    #[arg(long, env = "CHIPSD_GATEWAY_RATE_PER_SEC", default_value_t = 20)]
    pub gateway_rate_per_sec: u32,
    /// Calls a user may make at once above the sustained rate.
    #[arg(long, env = "CHIPSD_GATEWAY_RATE_BURST", default_value_t = 50)]
    pub gateway_rate_burst: u32,
    /// Database connections of the gateway's pool.
    #[arg(long, env = "CHIPSD_GATEWAY_POOL_SIZE", default_value_t = 8)]
    pub gateway_pool_size: usize,
    /// How often subscribed users' event heads are read, in ms (at least 1).
    #[arg(long, env = "CHIPSD_GATEWAY_POLL_MS", default_value_t = 50)]
    pub gateway_poll_ms: u64,
    /// PEM certificate chain for the gateway (TLS on when given with tls_key).
    #[arg(long, env = "CHIPSD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for the gateway.
    #[arg(long, env = "CHIPSD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// The user gateway's part of the configuration, when it is on.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    /// The URL clients reach the gateway at (login links); default http(s)://listen.
    pub public_url: String,
    pub settings: crate::gateway::Settings,
}

impl Config {
    /// The gateway's settings, or None when `gateway_listen` is not given.
    pub fn gateway(&self) -> Option<GatewayConfig> {
        let listen = self.gateway_listen?;
        let tls = self.tls_cert.clone().zip(self.tls_key.clone());
        let scheme = if tls.is_some() { "https" } else { "http" };
        Some(GatewayConfig {
            listen,
            public_url: self
                .gateway_public_url
                .clone()
                .unwrap_or_else(|| format!("{scheme}://{listen}")),
            settings: crate::gateway::Settings {
                db: self.gateway_db.clone().unwrap_or_else(|| self.db.clone()),
                max_connections: self.gateway_max_connections,
                max_message_bytes: self.gateway_max_message_bytes,
                idle_timeout: Duration::from_secs(self.gateway_idle_secs.max(2)),
                rate_per_sec: self.gateway_rate_per_sec,
                rate_burst: self.gateway_rate_burst,
                pool_size: self.gateway_pool_size,
                poll: Duration::from_millis(self.gateway_poll_ms.max(1)),
                tls,
            },
        })
    }
}

/// Parses a command line (`args`, the program's name first) whose subcommand `run` flattens
/// [`Config`]: if `run` names a configuration file, its values become the defaults and the
/// line is parsed again, so flags and environment override the file. Errors as clap's (a bad
/// file, an unknown key or a value of the wrong type included), to print or `exit()` with.
pub fn parse<P: clap::Parser>(args: &[OsString]) -> Result<P, clap::Error> {
    let mut cmd = P::command();
    // first only to find the file: what is missing may be in it, errors wait for the real parse
    let first = cmd
        .clone()
        .ignore_errors(true)
        .try_get_matches_from(args)
        .ok();
    let path = first
        .as_ref()
        .and_then(run_matches)
        .and_then(|m| m.get_one::<PathBuf>("config"));
    if let Some(path) = path {
        let table = load(path)?;
        let run = cmd
            .find_subcommand("run")
            .expect("the command has a run subcommand");
        let mut defaults = Vec::new();
        for (key, value) in table {
            let known = key != "config" && run.get_arguments().any(|a| a.get_id() == key.as_str());
            if !known {
                return Err(file_error(path, format!("unknown setting `{key}`")));
            }
            let text = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                other => {
                    return Err(file_error(
                        path,
                        format!(
                            "`{key}` is a {}: give a string or a number",
                            other.type_str()
                        ),
                    ))
                }
            };
            defaults.push((key, text));
        }
        cmd = cmd.mut_subcommand("run", |mut run| {
            for (key, text) in defaults {
                run = run.mut_arg(key, |a| a.default_value(text).required(false));
            }
            run
        });
    }
    let matches = cmd.try_get_matches_from(args)?;
    P::from_arg_matches(&matches)
}

fn run_matches(matches: &ArgMatches) -> Option<&ArgMatches> {
    match matches.subcommand() {
        Some(("run", m)) => Some(m),
        _ => None,
    }
}

fn load(path: &Path) -> Result<toml::Table, clap::Error> {
    let text = std::fs::read_to_string(path).map_err(|e| file_error(path, e.to_string()))?;
    toml::from_str(&text).map_err(|e| file_error(path, e.to_string()))
}

fn file_error(path: &Path, message: String) -> clap::Error {
    clap::Error::raw(
        ErrorKind::InvalidValue,
        format!("configuration file {}: {message}\n", path.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(clap::Subcommand, Debug)]
    enum Command {
        Run(Box<Config>),
    }

    fn run(args: &[&str]) -> Result<Config, clap::Error> {
        let args: Vec<OsString> = ["chipsd", "run"]
            .iter()
            .chain(args)
            .map(Into::into)
            .collect();
        parse::<Cli>(&args).map(|c| match c.command {
            Command::Run(c) => *c,
        })
    }

    /// The test's own scratch directory (removed at its end).
    fn scratch() -> PathBuf {
        std::env::temp_dir().join(format!("chipsd-config-{}", std::process::id()))
    }

    fn file(name: &str, text: &str) -> PathBuf {
        std::fs::create_dir_all(scratch()).unwrap();
        let path = scratch().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    }

    // One test, because the environment is the process's: no other test here sets CHIPSD_*.
    #[test]
    fn flags_override_the_environment_which_overrides_the_file_and_defaults_fill_in() {
        let f = file(
            "layers",
            "db = 'host=file'\nkey = 'file.key'\nlisten = '127.0.0.1:1'\npoll_ms = 7\nsync_secs = 8",
        );
        let f = f.to_str().unwrap();

        let c = run(&["--config", f]).unwrap();
        assert_eq!(
            (c.db.as_str(), c.key.to_str(), c.listen.port()),
            ("host=file", Some("file.key"), 1)
        );
        assert_eq!(
            (c.poll_ms, c.sync_secs, c.max_connections),
            (7, 8, 256),
            "the file, then defaults"
        );

        std::env::set_var("CHIPSD_POLL_MS", "70");
        std::env::set_var("CHIPSD_LISTEN", "127.0.0.1:2");
        let c = run(&["--config", f, "--listen", "127.0.0.1:3"]).unwrap();
        assert_eq!(c.poll_ms, 70, "the environment over the file");
        assert_eq!(
            c.listen.port(),
            3,
            "a flag over the environment and the file"
        );
        assert_eq!(
            c.sync_secs, 8,
            "the file where the environment says nothing"
        );

        std::env::set_var("CHIPSD_CONFIG", f);
        let c = run(&[]).unwrap();
        assert_eq!(
            (c.db.as_str(), c.poll_ms, c.listen.port()),
            ("host=file", 70, 2),
            "CHIPSD_CONFIG names the file"
        );
        std::env::set_var("CHIPSD_POLL_MS", "soon");
        let e = run(&[]).unwrap_err();
        assert!(e.to_string().contains("soon"), "{e}");
        for var in ["CHIPSD_POLL_MS", "CHIPSD_LISTEN", "CHIPSD_CONFIG"] {
            std::env::remove_var(var);
        }

        let e = run(&["--key", "k"]).unwrap_err();
        assert!(e.to_string().contains("--db"), "db is required: {e}");
        let e = run(&["--config", file("unknown", "dbb = 'x'").to_str().unwrap()]).unwrap_err();
        assert!(e.to_string().contains("unknown setting `dbb`"), "{e}");
        let e = run(&[
            "--config",
            file("type", "db = 'x'\nkey = 'k'\npoll_ms = true")
                .to_str()
                .unwrap(),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("`poll_ms` is a boolean"), "{e}");
        let e = run(&[
            "--config",
            file("value", "db = 'x'\nkey = 'k'\npoll_ms = -1")
                .to_str()
                .unwrap(),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("-1"), "{e}");
        let e = run(&["--config", "/nonexistent/chipsd.toml"]).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/chipsd.toml"), "{e}");
        let e = run(&["--db", "x", "--key", "k", "--tls-cert", "c.pem"]).unwrap_err();
        assert!(e.to_string().contains("--tls-key"), "TLS needs both: {e}");

        let c = run(&[
            "--db",
            "host=a",
            "--key",
            "k",
            "--gateway-listen",
            "127.0.0.1:4",
        ])
        .unwrap();
        let g = c.gateway().unwrap();
        assert_eq!(g.public_url, "http://127.0.0.1:4");
        assert_eq!(
            g.settings.db, "host=a",
            "the gateway's database defaults to db"
        );
        assert!(run(&["--db", "x", "--key", "k"])
            .unwrap()
            .gateway()
            .is_none());
        std::fs::remove_dir_all(scratch()).unwrap();
    }
}
