//! The sidecar's one error type.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("network: {0}")]
    Io(#[from] std::io::Error),
    #[error("noise: {0}")]
    Noise(#[from] snow::Error),
    #[error("{0}")]
    Core(#[from] chips_core::Error),
    #[error("database: {}", db_text(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("protocol: {0}")]
    Protocol(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A database error as a person reads it: the server's message and SQLSTATE (tokio-postgres
/// shows a server's error as only "db error").
fn db_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} ({})", d.message(), d.code().code()),
        None => e.to_string(),
    }
}
