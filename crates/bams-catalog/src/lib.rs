//! The BAMS catalog: what the server knows besides the repositories themselves — users and
//! their tokens, registered repositories, jobs and schedules, run history with logs, a cache
//! of snapshot summaries and the audit log.
//!
//! One set of queries runs on SQLite (the zero-config default) and PostgreSQL (scale-out)
//! through sqlx's `Any` driver. To keep the SQL portable, times are Unix milliseconds in
//! BIGINT columns, flags are 0/1 BIGINTs and lists are JSON text; each backend has its own
//! migration directory only because identity columns are spelled differently.

mod acl;
mod agents;
mod audit;
mod disks;
mod error;
mod images;
mod iscsi;
mod jobs;
mod pools;
mod repos;
mod row;
mod runs;
mod snapshots;
mod tokens;
mod users;

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};

pub use acl::AclEntry;
pub use agents::{Agent, AgentStatus, ENROLL_TTL_MS};
pub use audit::{AuditEntry, AuditFilter, AuditObject, NewAudit};
pub use disks::DiskRecord;
pub use error::{CatalogError, Result};
pub use images::{
    BootEntry, BootPlan, Image, ImageChange, ImageKind, ImageSet, ImageVersion, Machine, MachineChange, MachineEvent,
    MachineState, NewImage, NewImageVersion,
};
pub use iscsi::IscsiRecord;
pub use jobs::{Job, JobKind, JobSpec, Level, Schedule, ScheduleSpec, PRIORITY_RANGE};
pub use pools::{Pool, PoolRef, PoolSpec};
pub use repos::{agent_repository_name, validate_name, Repository};
pub use row::time_ms;
pub use runs::{Dashboard, JobActivity, LostRun, NewRun, Run, RunFilter, RunStats, RunStatus};
pub use snapshots::{SnapshotFilter, SnapshotSummary};
pub use tokens::{AuthToken, Authenticated, TokenKind, TokenScope};
pub use users::{hash_password, verify_password, Role, TotpState, User};

/// Which database a catalog lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite file (default).
    Sqlite,
    /// PostgreSQL server (scale-out: several `bams server` processes share it).
    Postgres,
}

/// A page of results: `next_cursor` is passed back as `cursor` to get the next page.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    /// The items of this page.
    pub items: Vec<T>,
    /// Opaque cursor for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// Build a page from `limit + 1` fetched rows: the extra row only says "there is more".
    fn from_rows(mut items: Vec<T>, limit: i64, cursor_of: impl Fn(&T) -> String) -> Self {
        let more = items.len() as i64 > limit;
        items.truncate(limit.max(0) as usize);
        let next_cursor = if more { items.last().map(cursor_of) } else { None };
        Self { items, next_cursor }
    }
}

/// Connection to the catalog database.
#[derive(Clone)]
pub struct Catalog {
    pool: AnyPool,
    backend: Backend,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").field("backend", &self.backend).finish_non_exhaustive()
    }
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

impl Catalog {
    /// Open (creating a SQLite file if needed) and migrate the catalog at `url`:
    /// `sqlite:///path/catalog.db` or `postgres://user:pass@host/db`.
    pub async fn open(url: &str) -> Result<Self> {
        let catalog = Self::connect_within(url, Duration::from_secs(30)).await?;
        catalog.migrate().await?;
        Ok(catalog)
    }

    /// Apply the migrations this version knows and the catalog lacks.
    pub async fn migrate(&self) -> Result<()> {
        self.migrator().run(&self.pool).await.map_err(|e| CatalogError::Unavailable(format!("catalog migration: {e}")))
    }

    /// Connect to the catalog at `url` without migrating it, waiting at most `wait` for a
    /// connection (`bams doctor` reports pending migrations instead of applying them, and an
    /// unreachable database quickly).
    pub async fn connect_within(url: &str, wait: Duration) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(CatalogError::Invalid(format!(
                "catalog URL must start with sqlite: or postgres:, got {:?}",
                redact_url(url)
            )));
        };
        let url = match backend {
            Backend::Sqlite => sqlite_url(url)?,
            Backend::Postgres => url.to_string(),
        };
        let opts = AnyConnectOptions::from_str(&url)
            .map_err(|e| CatalogError::Invalid(format!("catalog URL {:?}: {e}", redact_url(&url))))?;
        let pool = AnyPoolOptions::new()
            .max_connections(match backend {
                Backend::Sqlite => 8,
                // Measured (bench/api.sh): on a small appliance more connections only add
                // contention in PostgreSQL; requests queue briefly for one of 8 instead.
                Backend::Postgres => 8,
            })
            .acquire_timeout(wait)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                             PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;",
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(opts)
            .await
            .map_err(|e| CatalogError::Unavailable(format!("cannot connect to {}: {e}", redact_url(&url))))?;
        Ok(Self { pool, backend })
    }

    fn migrator(&self) -> &'static sqlx::migrate::Migrator {
        match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        }
    }

    /// Migrations applied to this catalog, and migrations this version knows.
    pub async fn migration_status(&self) -> Result<(usize, usize)> {
        let known = self.migrator().iter().count();
        let applied: Result<Vec<(i64,)>> = sqlx::query_as("SELECT version FROM _sqlx_migrations WHERE success = TRUE")
            .fetch_all(&self.pool)
            .await
            .map_err(Into::into);
        // A catalog never migrated has no table yet.
        Ok((applied.map(|v| v.len()).unwrap_or(0), known))
    }

    /// The database's clock in ms since the epoch (PostgreSQL; SQLite is this machine's).
    pub async fn database_now_ms(&self) -> Result<Option<i64>> {
        match self.backend {
            Backend::Sqlite => Ok(None),
            Backend::Postgres => {
                let (ms,): (i64,) =
                    sqlx::query_as("SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)")
                        .fetch_one(&self.pool)
                        .await?;
                Ok(Some(ms))
            }
        }
    }

    /// The one row `sql` (with `$1` = `id`) selects, mapped by `map`; `NotFound("{what} {id}")`
    /// when there is none.
    pub(crate) async fn one_by_id<T>(
        &self,
        sql: &str,
        id: i64,
        what: &str,
        map: fn(&sqlx::any::AnyRow) -> Result<T>,
    ) -> Result<T> {
        let row = sqlx::query(sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| CatalogError::NotFound(format!("{what} {id}")))?;
        map(&row)
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Close all connections (graceful shutdown).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// `sqlite:///abs/path` → a URL that creates the file when missing (and its directory).
fn sqlite_url(url: &str) -> Result<String> {
    let path = url.trim_start_matches("sqlite:").trim_start_matches("//");
    let file = path.split('?').next().unwrap_or_default();
    if file.is_empty() {
        return Err(CatalogError::Invalid("sqlite catalog URL has no file path".into()));
    }
    if file != ":memory:" {
        if let Some(dir) = std::path::Path::new(file).parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| CatalogError::Unavailable(format!("cannot create {}: {e}", dir.display())))?;
        }
    }
    Ok(if path.contains("mode=") {
        format!("sqlite://{path}")
    } else if path.contains('?') {
        format!("sqlite://{path}&mode=rwc")
    } else {
        format!("sqlite://{path}?mode=rwc")
    })
}

/// A URL with its password replaced, for messages and logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            match userinfo.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &userinfo[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Now as Unix milliseconds, the catalog's time unit.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted_and_sqlite_urls_create_files() {
        assert_eq!(redact_url("postgres://bams:secret@db/bams"), "postgres://bams:***@db/bams");
        assert_eq!(redact_url("postgres://db/bams"), "postgres://db/bams");
        let dir = tempfile::tempdir().expect("tempdir");
        let u = sqlite_url(&format!("sqlite://{}/x/c.db", dir.path().display())).expect("url");
        assert!(u.ends_with("/x/c.db?mode=rwc"), "{u}");
        assert!(dir.path().join("x").is_dir());
        assert!(sqlite_url("sqlite://").is_err());
    }
}
