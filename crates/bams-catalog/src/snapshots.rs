//! The snapshot listing cache. Repositories stay the source of truth: `sync_snapshots`
//! replaces a repository's rows with what its snapshot files say (`bams catalog rebuild`).

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;

use crate::error::{CatalogError, Result};
use crate::row::{to_json, Arg, Filter, RowExt};
use crate::{Catalog, Page};

/// What the catalog remembers of a snapshot.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SnapshotSummary {
    /// Repository id.
    pub repository: i64,
    /// Snapshot id (64 hex).
    pub id: String,
    /// Snapshot time.
    #[serde(with = "crate::time_ms")]
    #[schema(value_type = String, format = DateTime)]
    pub time: i64,
    /// Host.
    pub host: String,
    /// Paths backed up.
    pub paths: Vec<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Parent snapshot.
    pub parent: Option<String>,
    /// Files.
    pub files: i64,
    /// Bytes of content.
    pub bytes: i64,
    /// Bytes newly stored.
    pub new_bytes: i64,
    /// Some files could not be read.
    pub partial: bool,
    /// Job that made it.
    pub job: Option<String>,
}

impl SnapshotSummary {
    fn from_row(r: &AnyRow) -> Result<Self> {
        Ok(Self {
            repository: r.i64("repository_id")?,
            id: r.str("id")?,
            time: r.i64("time")?,
            host: r.str("host")?,
            paths: r.json("paths")?,
            tags: r.json("tags")?,
            parent: r.opt_str("parent")?,
            files: r.i64("files")?,
            bytes: r.i64("bytes")?,
            new_bytes: r.i64("new_bytes")?,
            partial: r.flag("partial")?,
            job: r.opt_str("job")?,
        })
    }

    /// Summary of a snapshot read from a repository.
    pub fn from_snapshot(repository: i64, id: &bams_store::Id, s: &bams_store::snapshot::Snapshot) -> Self {
        Self {
            repository,
            id: id.to_hex(),
            time: s.time.timestamp_millis(),
            host: s.host.clone(),
            paths: s.paths.clone(),
            tags: s.tags.clone(),
            parent: s.parent.map(|p| p.to_hex()),
            files: i64::try_from(s.summary.files_new + s.summary.files_changed + s.summary.files_unmodified)
                .unwrap_or(i64::MAX),
            bytes: i64::try_from(s.summary.total_bytes).unwrap_or(i64::MAX),
            new_bytes: i64::try_from(s.summary.data_added).unwrap_or(i64::MAX),
            partial: s.partial,
            job: s.job.clone(),
        }
    }
}

/// Filters for snapshot lists.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
pub struct SnapshotFilter {
    /// Only this repository.
    pub repository: Option<i64>,
    /// Only this host.
    pub host: Option<String>,
    /// Only snapshots carrying this tag.
    pub tag: Option<String>,
    /// Page size (default 100, max 1000).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Only these repositories (set by the server from the caller's permissions).
    #[serde(skip)]
    #[param(ignore)]
    pub within: Option<Vec<i64>>,
}

const SNAP_COLS: &str = "repository_id, id, time, host, paths, tags, parent, files, bytes, new_bytes, partial, job";

impl Catalog {
    /// Replace the cached rows of a repository with `snapshots` (one transaction).
    pub async fn sync_snapshots(&self, repository: i64, snapshots: &[SnapshotSummary]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM snapshots WHERE repository_id = $1").bind(repository).execute(&mut *tx).await?;
        for s in snapshots {
            insert(&mut tx, s).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Add one snapshot (after a backup).
    pub async fn add_snapshot(&self, s: &SnapshotSummary) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM snapshots WHERE repository_id = $1 AND id = $2")
            .bind(s.repository)
            .bind(&s.id)
            .execute(&mut *tx)
            .await?;
        insert(&mut tx, s).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Snapshots, newest first, paged by (time, id).
    pub async fn list_snapshots(&self, filter: &SnapshotFilter) -> Result<Page<SnapshotSummary>> {
        let limit = filter.limit.unwrap_or(100).clamp(1, 1000);
        let mut f = Filter::default();
        if let Some(r) = filter.repository {
            f.push("repository_id = {}", Arg::I64(r));
        }
        if let Some(ids) = &filter.within {
            if ids.is_empty() {
                return Ok(Page { items: Vec::new(), next_cursor: None });
            }
            let args: Vec<String> = ids.iter().map(|id| f.next_arg(Arg::I64(*id))).collect();
            f.push_raw(&format!("repository_id IN ({})", args.join(", ")));
        }
        if let Some(h) = &filter.host {
            f.push("host = {}", Arg::Str(h.clone()));
        }
        if let Some(t) = &filter.tag {
            // Tags are a JSON array of strings; match the quoted element.
            f.push(
                "tags LIKE {} ESCAPE '\\'",
                Arg::Str(format!("%{}%", to_json(t).replace('%', "\\%").replace('_', "\\_"))),
            );
        }
        if let Some(c) = &filter.cursor {
            let (t, id) = c.split_once(':').ok_or_else(|| CatalogError::Invalid(format!("bad cursor {c:?}")))?;
            let t: i64 = t.parse().map_err(|_| CatalogError::Invalid(format!("bad cursor {c:?}")))?;
            let a = f.next_arg(Arg::I64(t));
            let b = f.next_arg(Arg::Str(id.to_string()));
            f.push_raw(&format!("(time < {a} OR (time = {a} AND id < {b}))"));
        }
        let lim = f.next_arg(Arg::I64(limit + 1));
        let sql = format!("SELECT {SNAP_COLS} FROM snapshots{} ORDER BY time DESC, id DESC LIMIT {lim}", f.where_sql());
        let rows = f.bind(sqlx::query(&sql)).fetch_all(&self.pool).await?;
        let items = rows.iter().map(SnapshotSummary::from_row).collect::<Result<Vec<_>>>()?;
        Ok(Page::from_rows(items, limit, |s| format!("{}:{}", s.time, s.id)))
    }
}

async fn insert(tx: &mut sqlx::Transaction<'_, sqlx::Any>, s: &SnapshotSummary) -> Result<()> {
    sqlx::query(&format!(
        "INSERT INTO snapshots ({SNAP_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
    ))
    .bind(s.repository)
    .bind(&s.id)
    .bind(s.time)
    .bind(&s.host)
    .bind(to_json(&s.paths))
    .bind(to_json(&s.tags))
    .bind(s.parent.clone())
    .bind(s.files)
    .bind(s.bytes)
    .bind(s.new_bytes)
    .bind(i64::from(s.partial))
    .bind(s.job.clone())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Catalog {
    /// Where a snapshot id is recorded: one row per repository holding it (a copy keeps its
    /// id), so a page may name a snapshot by its id alone.
    pub async fn snapshot_locations(&self, id: &str) -> Result<Vec<SnapshotSummary>> {
        let rows = sqlx::query(&format!("SELECT {SNAP_COLS} FROM snapshots WHERE id = $1 ORDER BY repository_id"))
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(SnapshotSummary::from_row).collect()
    }
}
