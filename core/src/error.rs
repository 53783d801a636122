//! The one error type of `chips-core`.

/// What went wrong, in words a person understands. The extension turns [`Error::kind`] into a
/// SQLSTATE; the message is shown as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Text that should be JSON is not, or a JSON value has the wrong shape.
    #[error("invalid JSON: {0}")]
    Json(String),
    /// Text that should be base64url (no padding) is not, or decodes to the wrong length.
    #[error("invalid encoding: {0}")]
    Encoding(String),
    /// A well-formed signature that does not verify under the given key.
    #[error("signature does not verify: {0}")]
    BadSignature(String),
    /// A value outside what the field allows (negative limit, reward above 1, ...).
    #[error("{0}")]
    InvalidValue(String),
    /// A state change the lifecycle does not allow.
    #[error("a tally cannot go from {from} to {to}")]
    Transition { from: String, to: String },
}

/// Coarse classes of [`Error`], one per SQLSTATE the extension raises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Malformed text: SQLSTATE 22P02 (invalid_text_representation).
    Malformed,
    /// Well-formed but unacceptable value: SQLSTATE 22023 (invalid_parameter_value).
    InvalidValue,
    /// A signature that does not verify: SQLSTATE 28000 (invalid_authorization_specification).
    Signature,
    /// A refused state change: SQLSTATE 55000 (object_not_in_prerequisite_state).
    State,
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Json(_) | Error::Encoding(_) => ErrorKind::Malformed,
            Error::InvalidValue(_) => ErrorKind::InvalidValue,
            Error::BadSignature(_) => ErrorKind::Signature,
            Error::Transition { .. } => ErrorKind::State,
        }
    }

    pub(crate) fn value(msg: impl Into<String>) -> Self {
        Error::InvalidValue(msg.into())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
