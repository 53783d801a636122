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
}

impl FileConfig {
    pub fn load(path: &std::path::Path) -> Result<FileConfig, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Overrides this file's values with `other`'s (environment and flags), and fills defaults.
    pub fn merge(self, other: FileConfig) -> Result<Config, String> {
        Ok(Config {
            db: other
                .db
                .or(self.db)
                .ok_or("no database: give --db, CHIPSD_DB or db in the config file")?,
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
