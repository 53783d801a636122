//! The extension's one error type and its SQLSTATEs.
//!
//! Functions raise with [`ChipsError::raise`] (a Postgres ERROR with the mapped SQLSTATE; it
//! never returns), so SQL callers get `22P02`, `22023`, `28000` or `55000`, never a bare `XX000`.

use chips_core::ErrorKind;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

#[derive(Debug)]
pub enum ChipsError {
    /// A rule of the domain refused the input (see [`chips_core::Error`]).
    Core(chips_core::Error),
    /// An argument is not of the expected shape.
    Invalid(String),
}

impl From<chips_core::Error> for ChipsError {
    fn from(e: chips_core::Error) -> Self {
        ChipsError::Core(e)
    }
}

impl ChipsError {
    pub fn sqlstate(&self) -> PgSqlErrorCode {
        match self {
            ChipsError::Core(e) => match e.kind() {
                ErrorKind::Malformed => PgSqlErrorCode::ERRCODE_INVALID_TEXT_REPRESENTATION,
                ErrorKind::InvalidValue => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                ErrorKind::Signature => PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
                ErrorKind::State => PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            },
            ChipsError::Invalid(_) => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        }
    }

    pub fn message(&self) -> String {
        match self {
            ChipsError::Core(e) => e.to_string(),
            ChipsError::Invalid(m) => m.clone(),
        }
    }

    /// Raises this error as a Postgres ERROR (the transaction is aborted; nothing it wrote stays).
    pub fn raise(self) -> ! {
        ErrorReport::new(self.sqlstate(), self.message(), "chips").report(PgLogLevel::ERROR);
        unreachable!("a Postgres ERROR does not return")
    }
}

/// The value of a core result, or the error raised with its SQLSTATE.
pub fn ok<T>(r: chips_core::Result<T>) -> T {
    r.unwrap_or_else(|e| ChipsError::from(e).raise())
}
