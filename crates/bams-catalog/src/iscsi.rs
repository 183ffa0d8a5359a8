//! iSCSI targets: the desired state of each target, as the appliance validated it. The
//! catalog keeps the spec as JSON it does not interpret (bams-appliance owns its shape), so
//! the schema does not change each time a target gains a setting.

use sqlx::any::AnyRow;

use crate::error::{named_conflict, CatalogError, Result};
use crate::row::RowExt;
use crate::{now_ms, Catalog};

/// One target's record.
#[derive(Debug, Clone)]
pub struct IscsiRecord {
    /// Numeric id (also tgt's target id).
    pub id: i64,
    /// The target's IQN.
    pub iqn: String,
    /// Desired state (JSON owned by bams-appliance).
    pub spec: serde_json::Value,
    /// Digest of the CHAP secret last applied to the backend.
    pub applied_chap: Option<String>,
    /// Creation time (ms).
    pub created_at: i64,
    /// Last change of the desired state (ms).
    pub updated_at: i64,
}

impl IscsiRecord {
    fn from_row(r: &AnyRow) -> Result<Self> {
        let spec = r.str("spec")?;
        Ok(Self {
            id: r.i64("id")?,
            iqn: r.str("iqn")?,
            spec: serde_json::from_str(&spec).map_err(|e| CatalogError::Invalid(format!("iscsi spec: {e}")))?,
            applied_chap: r.opt_str("applied_chap")?,
            created_at: r.i64("created_at")?,
            updated_at: r.i64("updated_at")?,
        })
    }
}

const COLS: &str = "id, iqn, spec, applied_chap, created_at, updated_at";

fn taken(iqn: &str) -> impl FnOnce() -> String + '_ {
    move || format!("a target named {iqn} already exists")
}

impl Catalog {
    /// Record a new target.
    pub async fn add_iscsi_target(&self, iqn: &str, spec: &serde_json::Value) -> Result<IscsiRecord> {
        let now = now_ms();
        let r = sqlx::query(&format!(
            "INSERT INTO iscsi_targets (iqn, spec, created_at, updated_at) VALUES ($1, $2, $3, $4) RETURNING {COLS}"
        ))
        .bind(iqn)
        .bind(spec.to_string())
        .bind(now)
        .bind(now)
        .fetch_one(&self.pool)
        .await;
        IscsiRecord::from_row(&named_conflict(r.map_err(Into::into), taken(iqn))?)
    }

    /// All targets by id.
    pub async fn list_iscsi_targets(&self) -> Result<Vec<IscsiRecord>> {
        let rows = sqlx::query(&format!("SELECT {COLS} FROM iscsi_targets ORDER BY id")).fetch_all(&self.pool).await?;
        rows.iter().map(IscsiRecord::from_row).collect()
    }

    /// One target.
    pub async fn get_iscsi_target(&self, id: i64) -> Result<IscsiRecord> {
        self.one_by_id(
            &format!("SELECT {COLS} FROM iscsi_targets WHERE id = $1"),
            id,
            "iscsi target",
            IscsiRecord::from_row,
        )
        .await
    }

    /// Replace a target's IQN and desired state.
    pub async fn update_iscsi_target(&self, id: i64, iqn: &str, spec: &serde_json::Value) -> Result<IscsiRecord> {
        let r = sqlx::query(&format!(
            "UPDATE iscsi_targets SET iqn = $1, spec = $2, updated_at = $3 WHERE id = $4 RETURNING {COLS}"
        ))
        .bind(iqn)
        .bind(spec.to_string())
        .bind(now_ms())
        .bind(id)
        .fetch_optional(&self.pool)
        .await;
        match named_conflict(r.map_err(Into::into), taken(iqn))? {
            Some(row) => IscsiRecord::from_row(&row),
            None => Err(CatalogError::NotFound(format!("iscsi target {id}"))),
        }
    }

    /// Remember the digest of the CHAP secret the backend now has.
    pub async fn set_iscsi_applied_chap(&self, id: i64, digest: Option<&str>) -> Result<()> {
        sqlx::query("UPDATE iscsi_targets SET applied_chap = $1 WHERE id = $2")
            .bind(digest)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Forget a target (the caller has removed it from the backend).
    pub async fn delete_iscsi_target(&self, id: i64) -> Result<()> {
        sqlx::query("DELETE FROM iscsi_targets WHERE id = $1").bind(id).execute(&self.pool).await?;
        Ok(())
    }
}
