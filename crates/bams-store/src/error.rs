//! The engine's one public error type.
//!
//! Rules (after rustic_core's): every error carries a [`ErrorKind`] that callers match on to
//! choose an exit code or an HTTP status; a human message that names the object or path
//! involved; and the underlying source when there is one. Module-level code builds errors with
//! the small constructors below instead of inventing new variants, so the kind set stays small.

use std::fmt;

/// What went wrong, coarsely: what a caller can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The object, snapshot, path or key slot does not exist.
    NotFound,
    /// No key slot opens with the given password or key file.
    WrongPassword,
    /// Stored data failed authentication, hashing or parsing.
    Corrupt,
    /// Another process holds a conflicting lock, or the object already exists.
    Conflict,
    /// A network or backend hiccup that may succeed when retried.
    Transient,
    /// The caller asked for something invalid (bad argument, not a repository, bad pattern).
    InvalidInput,
    /// Local I/O failed (source files, restore targets).
    Io,
    /// The operation was cancelled (by a user or a shutdown) at a safe point.
    Cancelled,
    /// Anything else: a bug or an unexpected state.
    Other,
}

/// The engine's error: a kind, a message with context, and an optional source.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

/// Result alias used throughout the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind` with a message that names what was involved.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), source: None }
    }

    /// Attach the underlying cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// What the caller can match on.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Shorthand for a [`ErrorKind::Corrupt`] error.
    pub fn corrupt(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Corrupt, message)
    }

    /// Shorthand for a [`ErrorKind::NotFound`] error.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    /// Shorthand for a [`ErrorKind::InvalidInput`] error.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }

    /// An I/O error with the path or object it concerns.
    pub fn io(context: impl fmt::Display, err: std::io::Error) -> Self {
        let kind = match err.kind() {
            std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            std::io::ErrorKind::AlreadyExists => ErrorKind::Conflict,
            _ => ErrorKind::Io,
        };
        Self::new(kind, format!("{context}: {err}")).with_source(err)
    }

    /// Prefix the message with more context, keeping kind and source.
    #[must_use]
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<serde_json::Error> for Error {
    fn from(err: serde_json::Error) -> Self {
        Self::corrupt(format!("malformed JSON: {err}")).with_source(err)
    }
}
