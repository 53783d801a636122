//! Configuration: a TOML file, then the environment (`CHIPSD_*`), then command-line flags, each
//! overriding the one before.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// What `chipsd run` needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// libpq connection string of the site's database (a role with chips_agent).
    pub db: String,
    /// Where to listen for peers.
    pub listen: SocketAddr,
    /// The agent key file (`chipsd keygen`).
    pub key: PathBuf,
    /// Most peer connections served at once.
    pub max_connections: usize,
    /// A peer connection with no frame for this long is closed.
    pub idle_timeout_secs: u64,
    /// How often the outbox is polled besides notifications.
    pub poll_ms: u64,
    /// How often `chips.chain_sync()` runs.
    pub sync_secs: u64,
    /// How long to wait to connect, for a handshake, or for a peer's reply.
    pub reply_timeout_ms: u64,
    /// How often `chips.clearing_tick()` is called (it clears only when the site's settings
    /// say a pass is due); 0: never.
    pub clearing_secs: u64,
    /// How often `chips.lift_tick()` is called (timers of distributed lifts); 0: never.
    pub lift_tick_ms: u64,
    /// How often `chips.clearing_continuous()` is called (it clears only when the site's
    /// settings turn continuous clearing on); 0: never.
    pub continuous_ms: u64,
    /// The user gateway (websocket API, documents, health, metrics); off when None.
    pub gateway: Option<GatewayConfig>,
}

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    /// The URL clients reach the gateway at (login links); default http(s)://listen.
    pub public_url: String,
    pub settings: crate::gateway::Settings,
}

/// The file's form: every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub db: Option<String>,
    pub listen: Option<SocketAddr>,
    pub key: Option<PathBuf>,
    pub max_connections: Option<usize>,
    pub idle_timeout_secs: Option<u64>,
    pub poll_ms: Option<u64>,
    pub sync_secs: Option<u64>,
    pub reply_timeout_ms: Option<u64>,
    pub clearing_secs: Option<u64>,
    pub lift_tick_ms: Option<u64>,
    pub continuous_ms: Option<u64>,
    pub gateway_listen: Option<SocketAddr>,
    pub gateway_db: Option<String>,
    pub gateway_public_url: Option<String>,
    pub gateway_max_connections: Option<usize>,
    pub gateway_max_message_bytes: Option<usize>,
    pub gateway_idle_secs: Option<u64>,
    pub gateway_rate_per_sec: Option<u32>,
    pub gateway_rate_burst: Option<u32>,
    pub gateway_pool_size: Option<usize>,
    pub gateway_poll_ms: Option<u64>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

impl FileConfig {
    pub fn load(path: &std::path::Path) -> Result<FileConfig, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Overrides this file's values with `other`'s (environment and flags), and fills defaults.
    pub fn merge(self, other: FileConfig) -> Result<Config, String> {
        let db = other
            .db
            .or(self.db)
            .ok_or("no database: give --db, CHIPSD_DB or db in the config file")?;
        let tls = match (
            other.tls_cert.or(self.tls_cert),
            other.tls_key.or(self.tls_key),
        ) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => return Err("TLS needs both tls_cert and tls_key".into()),
        };
        let gateway = match other.gateway_listen.or(self.gateway_listen) {
            None => None,
            Some(listen) => Some(GatewayConfig {
                listen,
                public_url: other
                    .gateway_public_url
                    .or(self.gateway_public_url)
                    .unwrap_or_else(|| {
                        format!(
                            "{}://{listen}",
                            if tls.is_some() { "https" } else { "http" }
                        )
                    }),
                settings: crate::gateway::Settings {
                    db: other
                        .gateway_db
                        .or(self.gateway_db)
                        .unwrap_or_else(|| db.clone()),
                    max_connections: other
                        .gateway_max_connections
                        .or(self.gateway_max_connections)
                        .unwrap_or(1024),
                    max_message_bytes: other
                        .gateway_max_message_bytes
                        .or(self.gateway_max_message_bytes)
                        .unwrap_or(64 * 1024),
                    idle_timeout: std::time::Duration::from_secs(
                        other
                            .gateway_idle_secs
                            .or(self.gateway_idle_secs)
                            .unwrap_or(120)
                            .max(2),
                    ),
                    rate_per_sec: other
                        .gateway_rate_per_sec
                        .or(self.gateway_rate_per_sec)
                        .unwrap_or(20),
                    rate_burst: other
                        .gateway_rate_burst
                        .or(self.gateway_rate_burst)
                        .unwrap_or(50),
                    pool_size: other
                        .gateway_pool_size
                        .or(self.gateway_pool_size)
                        .unwrap_or(8),
                    poll: std::time::Duration::from_millis(
                        other
                            .gateway_poll_ms
                            .or(self.gateway_poll_ms)
                            .unwrap_or(50)
                            .max(1),
                    ),
                    tls,
                },
            }),
        };
        Ok(Config {
            db,
            listen: other
                .listen
                .or(self.listen)
                .unwrap_or_else(|| "127.0.0.1:65430".parse().expect("address")),
            key: other
                .key
                .or(self.key)
                .ok_or("no agent key: give --key, CHIPSD_KEY or key in the config file")?,
            max_connections: other
                .max_connections
                .or(self.max_connections)
                .unwrap_or(256),
            idle_timeout_secs: other
                .idle_timeout_secs
                .or(self.idle_timeout_secs)
                .unwrap_or(60),
            poll_ms: other.poll_ms.or(self.poll_ms).unwrap_or(1000),
            sync_secs: other.sync_secs.or(self.sync_secs).unwrap_or(30),
            reply_timeout_ms: other
                .reply_timeout_ms
                .or(self.reply_timeout_ms)
                .unwrap_or(10_000),
            clearing_secs: other.clearing_secs.or(self.clearing_secs).unwrap_or(5),
            lift_tick_ms: other.lift_tick_ms.or(self.lift_tick_ms).unwrap_or(500),
            continuous_ms: other.continuous_ms.or(self.continuous_ms).unwrap_or(100),
            gateway,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_defaults_fill_in() {
        let file: FileConfig =
            toml::from_str("db = 'host=a'\nlisten = '127.0.0.1:1'\nkey = 'k'").unwrap();
        let flags = FileConfig {
            listen: Some("127.0.0.1:2".parse().unwrap()),
            ..Default::default()
        };
        let c = file.merge(flags).unwrap();
        assert_eq!(
            (c.db.as_str(), c.listen.port(), c.max_connections),
            ("host=a", 2, 256)
        );
        assert!(FileConfig::default().merge(FileConfig::default()).is_err());
        assert!(
            toml::from_str::<FileConfig>("dbb = 1").is_err(),
            "unknown keys are refused"
        );
    }
}
