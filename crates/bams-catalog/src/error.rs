//! Catalog errors, with kinds the server maps onto HTTP statuses.

/// What went wrong in the catalog.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// No such row.
    #[error("{0} not found")]
    NotFound(String),
    /// A unique name is taken, or the row is in use.
    #[error("{0}")]
    Conflict(String),
    /// The request is malformed (bad cron, unknown role, …).
    #[error("{0}")]
    Invalid(String),
    /// A credential (e.g. an enrollment token) was refused.
    #[error("{0}")]
    Unauthorized(String),
    /// The database cannot be reached or migrated.
    #[error("catalog unavailable: {0}")]
    Unavailable(String),
    /// Any other database error.
    #[error("catalog: {0}")]
    Db(#[source] sqlx::Error),
}

impl From<sqlx::Error> for CatalogError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::RowNotFound => Self::NotFound("row".into()),
            sqlx::Error::Database(d) if d.is_unique_violation() => Self::Conflict("already exists".into()),
            sqlx::Error::Database(d) if d.is_foreign_key_violation() => {
                Self::Conflict("referenced by or referring to another record".into())
            }
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                Self::Unavailable(e.to_string())
            }
            _ => Self::Db(e),
        }
    }
}

/// Catalog result.
pub type Result<T, E = CatalogError> = std::result::Result<T, E>;

/// Turn a generic unique violation into a message naming what clashed.
pub(crate) fn named_conflict<T>(r: Result<T>, what: impl FnOnce() -> String) -> Result<T> {
    r.map_err(|e| match e {
        CatalogError::Conflict(_) => CatalogError::Conflict(what()),
        other => other,
    })
}
