//! The extension's one error type and its SQLSTATEs.

use chips_core::ErrorKind;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::PgSqlErrorCode;

#[derive(Debug)]
pub enum ChipsError {
    /// A rule of the domain refused the input (see [`chips_core::Error`]).
    Core(chips_core::Error),
    /// An argument names something that is not of the expected kind.
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
}

impl From<ChipsError> for ErrorReport {
    fn from(e: ChipsError) -> Self {
        ErrorReport::new(e.sqlstate(), e.message(), "chips")
    }
}

/// What every `#[pg_extern]` of chips returns: a value or an error with its SQLSTATE.
pub type SqlResult<T> = Result<T, ErrorReport>;

/// Converts a core result, mapping its error to the right SQLSTATE.
pub fn sql<T>(r: chips_core::Result<T>) -> SqlResult<T> {
    r.map_err(|e| ChipsError::from(e).into())
}
