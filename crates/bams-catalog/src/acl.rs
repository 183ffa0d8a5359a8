//! Access control entries: which role a user holds on an object path. The catalog stores them;
//! the server's policy decides what the paths and roles mean.

use serde::Serialize;
use sqlx::any::AnyRow;

use crate::error::{CatalogError, Result};
use crate::row::RowExt;
use crate::{now_ms, Catalog};

/// One access control entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AclEntry {
    /// Numeric id.
    pub id: i64,
    /// Object path, e.g. `/repositories/daily`.
    pub path: String,
    /// The user it applies to.
    pub user_id: i64,
    /// That user's name.
    pub username: String,
    /// Role name (see `GET /api/v1/acl/roles`).
    pub role: String,
    /// Also applies below `path`.
    pub propagate: bool,
    /// Creation time.
    #[serde(with = "crate::time_ms")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
}

impl AclEntry {
    fn from_row(r: &AnyRow) -> Result<Self> {
        Ok(Self {
            id: r.i64("id")?,
            path: r.str("path")?,
            user_id: r.i64("user_id")?,
            username: r.str("username")?,
            role: r.str("role")?,
            propagate: r.flag("propagate")?,
            created_at: r.i64("created_at")?,
        })
    }
}

const ACL_SELECT: &str = "SELECT a.id, a.path, a.user_id, u.username, a.role, a.propagate, a.created_at \
                          FROM acl_entries a JOIN users u ON u.id = a.user_id";

impl Catalog {
    /// Every entry, or one user's.
    pub async fn list_acl(&self, user_id: Option<i64>) -> Result<Vec<AclEntry>> {
        let rows = match user_id {
            Some(u) => {
                sqlx::query(&format!("{ACL_SELECT} WHERE a.user_id = $1 ORDER BY a.path, a.id"))
                    .bind(u)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => sqlx::query(&format!("{ACL_SELECT} ORDER BY a.path, u.username")).fetch_all(&self.pool).await?,
        };
        rows.iter().map(AclEntry::from_row).collect()
    }

    /// Give `user_id` `role` on `path`, replacing the role that user had on that path.
    pub async fn set_acl(&self, path: &str, user_id: i64, role: &str, propagate: bool) -> Result<AclEntry> {
        if path.is_empty() || path.len() > 512 || role.is_empty() || role.len() > 64 {
            return Err(CatalogError::Invalid("ACL path or role is empty or too long".into()));
        }
        self.get_user(user_id).await?;
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM acl_entries WHERE path = $1 AND user_id = $2")
            .bind(path)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO acl_entries (path, user_id, role, propagate, created_at) VALUES ($1, $2, $3, $4, $5) \
             RETURNING id",
        )
        .bind(path)
        .bind(user_id)
        .bind(role)
        .bind(i64::from(propagate))
        .bind(now_ms())
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        self.one_by_id(&format!("{ACL_SELECT} WHERE a.id = $1"), id, "ACL entry", AclEntry::from_row).await
    }

    /// Remove one entry.
    pub async fn delete_acl(&self, id: i64) -> Result<()> {
        let n =
            sqlx::query("DELETE FROM acl_entries WHERE id = $1").bind(id).execute(&self.pool).await?.rows_affected();
        if n == 0 {
            return Err(CatalogError::NotFound(format!("ACL entry {id}")));
        }
        Ok(())
    }
}
