//! Registered repositories. The catalog keeps where a repository is and which key file opens
//! it; the key itself lives in a 0600 file under the server's data dir, never in the database.

use serde::Serialize;
use sqlx::any::AnyRow;

use crate::error::{named_conflict, CatalogError, Result};
use crate::row::RowExt;
use crate::{now_ms, Catalog};

/// A repository the server knows.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Repository {
    /// Numeric id.
    pub id: i64,
    /// Unique name (used in `bams://host:4848/<name>` URLs).
    pub name: String,
    /// Local path or `s3://bucket/prefix`.
    pub url: String,
    /// File holding the repository password (mode 0600).
    #[serde(skip)]
    pub key_file: String,
    /// Registration time.
    #[serde(with = "crate::time_ms")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    /// For an agent's own repository: the repository its jobs name (retention, pools,
    /// permissions and snapshot lists of the parent cover it).
    pub parent: Option<i64>,
    /// For an agent's own repository: the agent that writes into it (and no other).
    pub agent: Option<i64>,
}

impl Repository {
    fn from_row(r: &AnyRow) -> Result<Self> {
        Ok(Self {
            id: r.i64("id")?,
            name: r.str("name")?,
            url: r.str("url")?,
            key_file: r.str("key_file")?,
            created_at: r.i64("created_at")?,
            parent: r.opt_i64("parent_id")?,
            agent: r.opt_i64("agent_id")?,
        })
    }
}

/// Names of repositories (and disk repositories) appear in URLs and file names.
pub fn validate_name(kind: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(CatalogError::Invalid(format!(
            "invalid {kind} name {name:?}: 1-64 letters, digits, '.', '_', '-', not starting with '.'"
        )))
    }
}

const REPO_COLS: &str = "id, name, url, key_file, created_at, parent_id, agent_id";

/// The name of agent `agent`'s own repository under `parent`: `parent@agent`. No registered
/// name holds an `@`, so it can never collide with one.
pub fn agent_repository_name(parent: &str, agent: &str) -> String {
    format!("{parent}@{agent}")
}

impl Catalog {
    /// Register a repository.
    pub async fn add_repository(&self, name: &str, url: &str, key_file: &str) -> Result<Repository> {
        validate_name("repository", name)?;
        let r = sqlx::query(&format!(
            "INSERT INTO repositories (name, url, key_file, created_at) VALUES ($1, $2, $3, $4) RETURNING {REPO_COLS}"
        ))
        .bind(name)
        .bind(url)
        .bind(key_file)
        .bind(now_ms())
        .fetch_one(&self.pool)
        .await;
        let row = named_conflict(r.map_err(Into::into), || format!("repository {name:?} already exists"))?;
        Repository::from_row(&row)
    }

    /// All repositories by name.
    pub async fn list_repositories(&self) -> Result<Vec<Repository>> {
        let rows =
            sqlx::query(&format!("SELECT {REPO_COLS} FROM repositories ORDER BY name")).fetch_all(&self.pool).await?;
        rows.iter().map(Repository::from_row).collect()
    }

    /// One repository by id.
    pub async fn get_repository(&self, id: i64) -> Result<Repository> {
        self.one_by_id(
            &format!("SELECT {REPO_COLS} FROM repositories WHERE id = $1"),
            id,
            "repository",
            Repository::from_row,
        )
        .await
    }

    /// One repository by name.
    pub async fn get_repository_by_name(&self, name: &str) -> Result<Repository> {
        let row = sqlx::query(&format!("SELECT {REPO_COLS} FROM repositories WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| CatalogError::NotFound(format!("repository {name:?}")))?;
        Repository::from_row(&row)
    }

    /// Register agent `agent`'s own repository under `parent` (named
    /// [`agent_repository_name`]). A conflict means another server made it first.
    pub async fn add_agent_repository(
        &self,
        parent: &Repository,
        agent: &crate::Agent,
        url: &str,
        key_file: &str,
    ) -> Result<Repository> {
        if parent.parent.is_some() {
            return Err(CatalogError::Invalid(format!("{} is already an agent's repository", parent.name)));
        }
        let name = agent_repository_name(&parent.name, &agent.name);
        let r = sqlx::query(&format!(
            "INSERT INTO repositories (name, url, key_file, created_at, parent_id, agent_id) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING {REPO_COLS}"
        ))
        .bind(&name)
        .bind(url)
        .bind(key_file)
        .bind(now_ms())
        .bind(parent.id)
        .bind(agent.id)
        .fetch_one(&self.pool)
        .await;
        let row = named_conflict(r.map_err(Into::into), || format!("repository {name:?} already exists"))?;
        Repository::from_row(&row)
    }

    /// Agent `agent`'s own repository under `parent`, if it was made.
    pub async fn agent_repository(&self, parent: i64, agent: i64) -> Result<Option<Repository>> {
        let row = sqlx::query(&format!("SELECT {REPO_COLS} FROM repositories WHERE parent_id = $1 AND agent_id = $2"))
            .bind(parent)
            .bind(agent)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Repository::from_row).transpose()
    }

    /// The agents' own repositories under `parent`, by name.
    pub async fn child_repositories(&self, parent: i64) -> Result<Vec<Repository>> {
        let rows = sqlx::query(&format!("SELECT {REPO_COLS} FROM repositories WHERE parent_id = $1 ORDER BY name"))
            .bind(parent)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(Repository::from_row).collect()
    }

    /// Unregister a repository and the agents' repositories under it (their data is
    /// untouched). Refused while jobs use it.
    pub async fn delete_repository(&self, id: i64) -> Result<()> {
        self.get_repository(id).await?;
        let (jobs,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM jobs WHERE repository_id = $1").bind(id).fetch_one(&self.pool).await?;
        if jobs > 0 {
            return Err(CatalogError::Conflict(format!("repository {id} is used by {jobs} job(s)")));
        }
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "DELETE FROM snapshots WHERE repository_id = $1 \
             OR repository_id IN (SELECT id FROM repositories WHERE parent_id = $1)",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM repositories WHERE parent_id = $1").bind(id).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM repositories WHERE id = $1").bind(id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Lock rows older than this are leftovers of crashed clients (a held lock is rewritten,
/// under a new name, every few minutes).
const ENDPOINT_LOCK_TTL_MS: i64 = 24 * 3600 * 1000;

impl Catalog {
    /// Remember that `token_id` wrote lock object `key` in a repository.
    pub async fn record_endpoint_lock(&self, repository: i64, key: &str, token_id: i64) -> Result<()> {
        let now = now_ms();
        sqlx::query("DELETE FROM endpoint_locks WHERE created_at < $1")
            .bind(now - ENDPOINT_LOCK_TTL_MS)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM endpoint_locks WHERE repository_id = $1 AND lock_key = $2")
            .bind(repository)
            .bind(key)
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO endpoint_locks (repository_id, lock_key, token_id, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(repository)
        .bind(key)
        .bind(token_id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Did `token_id` write lock object `key`?
    pub async fn endpoint_lock_owned(&self, repository: i64, key: &str, token_id: i64) -> Result<bool> {
        let row: Option<(i64,)> =
            sqlx::query_as("SELECT token_id FROM endpoint_locks WHERE repository_id = $1 AND lock_key = $2")
                .bind(repository)
                .bind(key)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.is_some_and(|(t,)| t == token_id))
    }

    /// Forget a lock object once it is deleted.
    pub async fn forget_endpoint_lock(&self, repository: i64, key: &str) -> Result<()> {
        sqlx::query("DELETE FROM endpoint_locks WHERE repository_id = $1 AND lock_key = $2")
            .bind(repository)
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
