//! Disk repositories: the appliance's record of storage it set up for backup repositories.
//! The operating-system side lives in `bams-appliance`; this is only what was made and where.

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;

use crate::error::{named_conflict, Result};
use crate::repos::validate_name;
use crate::row::RowExt;
use crate::{now_ms, Catalog};

/// A disk repository as recorded.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DiskRecord {
    /// Numeric id.
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// `directory`, `filesystem` or `btrfs-subvolume`.
    pub kind: String,
    /// Directory or mount point that holds repositories.
    pub path: String,
    /// Filesystem type (filesystem kind).
    pub fs_type: Option<String>,
    /// Loop image or block device (filesystem kind).
    pub source: Option<String>,
    /// BAMS created `path`.
    pub created_path: bool,
    /// BAMS created `source`.
    pub created_source: bool,
    /// Creation time.
    #[serde(with = "crate::time_ms")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
}

impl DiskRecord {
    fn from_row(r: &AnyRow) -> Result<Self> {
        Ok(Self {
            id: r.i64("id")?,
            name: r.str("name")?,
            kind: r.str("kind")?,
            path: r.str("path")?,
            fs_type: r.opt_str("fs_type")?,
            source: r.opt_str("source")?,
            created_path: r.i64("created_path")? != 0,
            created_source: r.i64("created_source")? != 0,
            created_at: r.i64("created_at")?,
        })
    }
}

const DISK_COLS: &str = "id, name, kind, path, fs_type, source, created_path, created_source, created_at";

impl Catalog {
    /// Record a disk repository (`id` and `created_at` of `d` are ignored).
    pub async fn add_disk_repository(&self, d: &DiskRecord) -> Result<DiskRecord> {
        validate_name("disk repository", &d.name)?;
        let r = sqlx::query(&format!(
            "INSERT INTO disk_repositories (name, kind, path, fs_type, source, created_path, created_source, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {DISK_COLS}"
        ))
        .bind(&d.name)
        .bind(&d.kind)
        .bind(&d.path)
        .bind(d.fs_type.as_deref())
        .bind(d.source.as_deref())
        .bind(i64::from(d.created_path))
        .bind(i64::from(d.created_source))
        .bind(now_ms())
        .fetch_one(&self.pool)
        .await;
        let row = named_conflict(r.map_err(Into::into), || {
            format!("a disk repository named {:?} or at {} already exists", d.name, d.path)
        })?;
        DiskRecord::from_row(&row)
    }

    /// All disk repositories by name.
    pub async fn list_disk_repositories(&self) -> Result<Vec<DiskRecord>> {
        let rows = sqlx::query(&format!("SELECT {DISK_COLS} FROM disk_repositories ORDER BY name"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(DiskRecord::from_row).collect()
    }

    /// One disk repository.
    pub async fn get_disk_repository(&self, id: i64) -> Result<DiskRecord> {
        self.one_by_id(
            &format!("SELECT {DISK_COLS} FROM disk_repositories WHERE id = $1"),
            id,
            "disk repository",
            DiskRecord::from_row,
        )
        .await
    }

    /// Forget a disk repository (the caller has already removed what BAMS created).
    pub async fn delete_disk_repository(&self, id: i64) -> Result<()> {
        sqlx::query("DELETE FROM disk_repositories WHERE id = $1").bind(id).execute(&self.pool).await?;
        Ok(())
    }
}
