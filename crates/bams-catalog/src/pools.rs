//! Pools: a named target for backups and copies — one repository, the retention every job
//! writing there inherits, and limits that make a full pool refuse new data with a clear
//! reason instead of filling the disk (Bareos' pools, without volumes to label).

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;

use crate::error::{named_conflict, CatalogError, Result};
use crate::jobs::AnyQuery;
use crate::repos::validate_name;
use crate::row::{to_json, RowExt};
use crate::{now_ms, Catalog};

/// A pool named by id or by name, as jobs refer to it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum PoolRef {
    /// Numeric id.
    Id(i64),
    /// Unique name.
    Name(String),
}

/// A pool as created or replaced through the API.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    /// Unique name.
    pub name: String,
    /// Repository id the pool writes into (one pool per repository).
    pub repository: i64,
    /// Retention inherited by jobs without their own (`keep_last`, `keep_daily`, …,
    /// `keep_within`: "30d").
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub retention: Option<serde_json::Value>,
    /// Stored bytes at or above which backups and copies into the pool are refused.
    #[serde(default)]
    pub max_bytes: Option<i64>,
    /// Snapshot count at or above which backups and copies into the pool are refused.
    #[serde(default)]
    pub max_snapshots: Option<i64>,
    /// Free text for operators.
    #[serde(default)]
    pub description: String,
    /// Agents back up into the pool's repository itself, sharing its key, so that data
    /// deduplicates across machines; by default each agent gets a repository and key of its
    /// own (a compromised machine then cannot read or damage the others' backups).
    #[serde(default)]
    pub shared_dedup: bool,
}

/// A stored pool.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Pool {
    /// Numeric id.
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// Repository id.
    pub repository: i64,
    /// Retention policy.
    #[schema(value_type = Option<Object>)]
    pub retention: Option<serde_json::Value>,
    /// Byte limit.
    pub max_bytes: Option<i64>,
    /// Snapshot limit.
    pub max_snapshots: Option<i64>,
    /// Free text.
    pub description: String,
    /// Agents share the pool's repository and key (dedup across machines) instead of
    /// each having its own.
    pub shared_dedup: bool,
    /// Jobs writing into it.
    pub jobs: i64,
    /// Snapshots of its repository and the agents' repositories under it, as the catalog
    /// knows them.
    pub snapshots: i64,
    /// Creation time.
    #[serde(with = "crate::time_ms")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    /// Last change.
    #[serde(with = "crate::time_ms")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: i64,
}

impl Pool {
    fn from_row(r: &AnyRow) -> Result<Self> {
        Ok(Self {
            id: r.i64("id")?,
            name: r.str("name")?,
            repository: r.i64("repository_id")?,
            retention: r.opt_json("retention")?,
            max_bytes: r.opt_i64("max_bytes")?,
            max_snapshots: r.opt_i64("max_snapshots")?,
            description: r.str("description")?,
            shared_dedup: r.i64("shared_dedup")? != 0,
            jobs: r.i64("jobs")?,
            snapshots: r.i64("snapshots")?,
            created_at: r.i64("created_at")?,
            updated_at: r.i64("updated_at")?,
        })
    }
}

const POOL_SELECT: &str = "SELECT p.id, p.name, p.repository_id, p.retention, p.max_bytes, p.max_snapshots, \
     p.description, p.shared_dedup, p.created_at, p.updated_at, \
     (SELECT COUNT(*) FROM jobs j WHERE j.pool_id = p.id) AS jobs, \
     (SELECT COUNT(*) FROM snapshots s WHERE s.repository_id = p.repository_id \
      OR s.repository_id IN (SELECT c.id FROM repositories c WHERE c.parent_id = p.repository_id)) AS snapshots \
     FROM pools p";

fn validate_pool(spec: &PoolSpec) -> Result<()> {
    validate_name("pool", &spec.name)?;
    if spec.name.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CatalogError::Invalid(format!(
            "pool name {:?} must not be a number (jobs name pools by id or name)",
            spec.name
        )));
    }
    if let Some(r) = &spec.retention {
        if !r.is_object() {
            return Err(CatalogError::Invalid("retention must be an object of keep_* rules".into()));
        }
    }
    for (what, v) in [("max_bytes", spec.max_bytes), ("max_snapshots", spec.max_snapshots)] {
        if v.is_some_and(|n| n <= 0) {
            return Err(CatalogError::Invalid(format!("{what} must be positive (omit it for no limit)")));
        }
    }
    if spec.description.len() > 1024 {
        return Err(CatalogError::Invalid("description is longer than 1024 bytes".into()));
    }
    Ok(())
}

/// Bind a pool definition as `$1`..`$7` (the order both INSERT and UPDATE use).
fn bind_pool<'q>(q: AnyQuery<'q>, spec: &'q PoolSpec) -> AnyQuery<'q> {
    q.bind(&spec.name)
        .bind(spec.repository)
        .bind(spec.retention.as_ref().map(to_json))
        .bind(spec.max_bytes)
        .bind(spec.max_snapshots)
        .bind(&spec.description)
        .bind(i64::from(spec.shared_dedup))
}

fn taken(spec: &PoolSpec) -> impl FnOnce() -> String + '_ {
    move || format!("pool {:?} already exists, or repository {} already has a pool", spec.name, spec.repository)
}

impl Catalog {
    /// The repository a pool goes on: registered, and not an agent's own.
    async fn pool_repository(&self, spec: &PoolSpec) -> Result<()> {
        let repo = self.get_repository(spec.repository).await?;
        if repo.parent.is_some() {
            return Err(CatalogError::Invalid(format!(
                "repository {} is agent {}'s own repository; put the pool on its parent",
                repo.name,
                repo.agent.unwrap_or_default()
            )));
        }
        Ok(())
    }

    /// Create a pool on a registered repository.
    pub async fn create_pool(&self, spec: &PoolSpec) -> Result<Pool> {
        validate_pool(spec)?;
        self.pool_repository(spec).await?;
        let now = now_ms();
        let sql = "INSERT INTO pools (name, repository_id, retention, max_bytes, max_snapshots, description, \
                   shared_dedup, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) RETURNING id";
        let r = bind_pool(sqlx::query(sql), spec).bind(now).fetch_one(&self.pool).await;
        let row = named_conflict(r.map_err(Into::into), taken(spec))?;
        self.get_pool(row.i64("id")?).await
    }

    /// Replace a pool. Moving it to another repository moves its jobs with it, in the same
    /// transaction, so no run starts against the old one afterwards.
    pub async fn update_pool(&self, id: i64, spec: &PoolSpec) -> Result<Pool> {
        validate_pool(spec)?;
        self.get_pool(id).await?;
        self.pool_repository(spec).await?;
        let mut tx = self.pool.begin().await?;
        let sql = "UPDATE pools SET name = $1, repository_id = $2, retention = $3, max_bytes = $4, \
                   max_snapshots = $5, description = $6, shared_dedup = $7, updated_at = $8 WHERE id = $9";
        let r = bind_pool(sqlx::query(sql), spec).bind(now_ms()).bind(id).execute(&mut *tx).await;
        named_conflict(r.map_err(Into::into), taken(spec))?;
        sqlx::query("UPDATE jobs SET repository_id = $1 WHERE pool_id = $2")
            .bind(spec.repository)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.get_pool(id).await
    }

    /// All pools by name.
    pub async fn list_pools(&self) -> Result<Vec<Pool>> {
        let rows = sqlx::query(&format!("{POOL_SELECT} ORDER BY p.name")).fetch_all(&self.pool).await?;
        rows.iter().map(Pool::from_row).collect()
    }

    /// One pool by id.
    pub async fn get_pool(&self, id: i64) -> Result<Pool> {
        self.one_by_id(&format!("{POOL_SELECT} WHERE p.id = $1"), id, "pool", Pool::from_row).await
    }

    /// One pool by id or name.
    pub async fn find_pool(&self, r: &PoolRef) -> Result<Pool> {
        match r {
            PoolRef::Id(id) => self.get_pool(*id).await,
            PoolRef::Name(name) => {
                let row = sqlx::query(&format!("{POOL_SELECT} WHERE p.name = $1"))
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await?
                    .ok_or_else(|| CatalogError::NotFound(format!("pool {name:?}")))?;
                Pool::from_row(&row)
            }
        }
    }

    /// The pool writing into `repository`, if any (copy jobs honour the target's limits and
    /// retention through it).
    pub async fn pool_of_repository(&self, repository: i64) -> Result<Option<Pool>> {
        let row = sqlx::query(&format!("{POOL_SELECT} WHERE p.repository_id = $1"))
            .bind(repository)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Pool::from_row).transpose()
    }

    /// Delete a pool. Refused while jobs write into it or copy jobs target it; the
    /// repository and its data stay.
    pub async fn delete_pool(&self, id: i64) -> Result<()> {
        let p = self.get_pool(id).await?;
        if p.jobs > 0 {
            return Err(CatalogError::Conflict(format!("pool {:?} is used by {} job(s)", p.name, p.jobs)));
        }
        let targets = |v: &serde_json::Value| match v {
            serde_json::Value::Number(n) => n.as_i64() == Some(p.id),
            serde_json::Value::String(s) => *s == p.name,
            _ => false,
        };
        let copies = self.list_jobs().await?.into_iter().filter(|j| j.options.get("target_pool").is_some_and(targets));
        let names: Vec<String> = copies.map(|j| j.name).collect();
        if !names.is_empty() {
            return Err(CatalogError::Conflict(format!(
                "pool {:?} is the target of copy job(s) {}",
                p.name,
                names.join(", ")
            )));
        }
        sqlx::query("DELETE FROM pools WHERE id = $1").bind(id).execute(&self.pool).await?;
        Ok(())
    }
}
