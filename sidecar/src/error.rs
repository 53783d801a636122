//! The sidecar's one error type.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("network: {0}")]
    Io(#[from] std::io::Error),
    #[error("noise: {0}")]
    Noise(#[from] snow::Error),
    #[error("{0}")]
    Core(#[from] chips_core::Error),
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("protocol: {0}")]
    Protocol(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
