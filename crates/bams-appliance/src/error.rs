//! The one error type of the appliance: each variant maps to one HTTP status in the server
//! (400, 409, 404, 422, 502, 500), so every module reports failures the same way.

use crate::runner::RunError;

/// Why an appliance operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplianceError {
    /// Bad request (size, path, device not allowed…).
    #[error("{0}")]
    Invalid(String),
    /// The target exists, is mounted or is in use.
    #[error("{0}")]
    Conflict(String),
    /// No such object (disk repository, drive, slot, target…).
    #[error("{0} not found")]
    NotFound(String),
    /// Not available in this version.
    #[error("{0}")]
    Unsupported(String),
    /// The catalog failed.
    #[error("catalog: {0}")]
    Catalog(String),
    /// A command failed.
    #[error(transparent)]
    Command(#[from] RunError),
    /// Local I/O.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ApplianceError {
    let what = what.into();
    move |source| ApplianceError::Io { what, source }
}
