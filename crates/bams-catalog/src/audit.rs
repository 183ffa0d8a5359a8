//! The audit log: every mutating request, who made it, from where, and how it ended.

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;

use crate::error::{CatalogError, Result};
use crate::row::{Arg, Filter, RowExt};
use crate::{Catalog, Page};

/// A request to record.
#[derive(Debug, Clone)]
pub struct NewAudit {
    /// When (Unix ms).
    pub time: i64,
    /// Authenticated user, if any.
    pub username: Option<String>,
    /// HTTP method.
    pub method: String,
    /// Route pattern (e.g. `/api/v1/jobs/{id}`).
    pub route: String,
    /// Concrete target (the request path).
    pub target: Option<String>,
    /// HTTP status.
    pub status: u16,
    /// `ok`, `denied`, `error`.
    pub result: String,
    /// Client address.
    pub remote_addr: Option<String>,
    /// The object the request created, changed or removed.
    pub object: Option<AuditObject>,
}

/// What a mutating request acted on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AuditObject {
    /// Kind (`user`, `job`, `repository`, …).
    #[serde(rename = "type")]
    pub kind: String,
    /// Its id, when it has one.
    pub id: Option<String>,
    /// Its name, when it has one.
    pub name: Option<String>,
    /// Fields the request set (names only: values, secrets among them, are never recorded).
    pub changes: Vec<String>,
}

/// A recorded request.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// Numeric id.
    pub id: i64,
    /// When.
    #[serde(with = "crate::time_ms")]
    #[schema(value_type = String, format = DateTime)]
    pub time: i64,
    /// User.
    pub username: Option<String>,
    /// HTTP method.
    pub method: String,
    /// Route pattern.
    pub route: String,
    /// Request path.
    pub target: Option<String>,
    /// HTTP status.
    pub status: i64,
    /// `ok`, `denied`, `error`.
    pub result: String,
    /// Client address.
    pub remote_addr: Option<String>,
    /// The object acted on.
    pub object: Option<AuditObject>,
}

impl AuditEntry {
    fn from_row(r: &AnyRow) -> Result<Self> {
        Ok(Self {
            id: r.i64("id")?,
            time: r.i64("time")?,
            username: r.opt_str("username")?,
            method: r.str("method")?,
            route: r.str("route")?,
            target: r.opt_str("target")?,
            status: r.i64("status")?,
            result: r.str("result")?,
            remote_addr: r.opt_str("remote_addr")?,
            object: match r.opt_str("object_type")? {
                Some(kind) => Some(AuditObject {
                    kind,
                    id: r.opt_str("object_id")?,
                    name: r.opt_str("object_name")?,
                    changes: r.opt_str("changes")?.and_then(|c| serde_json::from_str(&c).ok()).unwrap_or_default(),
                }),
                None => None,
            },
        })
    }
}

/// Filters for `GET /audit`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
pub struct AuditFilter {
    /// Only this user.
    pub user: Option<String>,
    /// Only this result (`ok`, `denied`, `error`).
    pub result: Option<String>,
    /// Only routes starting with this prefix.
    pub route: Option<String>,
    /// Not before (RFC 3339).
    pub since: Option<String>,
    /// Not after (RFC 3339).
    pub until: Option<String>,
    /// Page size (default 100, max 1000).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

fn parse_time(name: &str, s: &str) -> Result<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|e| CatalogError::Invalid(format!("{name}: not an RFC 3339 time: {e}")))
}

const AUDIT_COLS: &str =
    "id, time, username, method, route, target, status, result, remote_addr, object_type, object_id, object_name, changes";

impl Catalog {
    /// Record a request.
    pub async fn audit(&self, e: &NewAudit) -> Result<()> {
        let o = e.object.clone().unwrap_or_default();
        let some = |v: String| (!v.is_empty()).then_some(v);
        sqlx::query(
            "INSERT INTO audit (time, username, method, route, target, status, result, remote_addr, \
             object_type, object_id, object_name, changes) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(e.time)
        .bind(e.username.clone())
        .bind(&e.method)
        .bind(&e.route)
        .bind(e.target.clone())
        .bind(i64::from(e.status))
        .bind(&e.result)
        .bind(e.remote_addr.clone())
        .bind(some(o.kind))
        .bind(o.id)
        .bind(o.name)
        .bind((!o.changes.is_empty()).then(|| serde_json::to_string(&o.changes).unwrap_or_default()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Remove audit entries older than `before` (Unix ms); returns how many.
    pub async fn purge_audit(&self, before: i64) -> Result<u64> {
        Ok(sqlx::query("DELETE FROM audit WHERE time < $1").bind(before).execute(&self.pool).await?.rows_affected())
    }

    /// Audit entries, newest first.
    pub async fn list_audit(&self, filter: &AuditFilter) -> Result<Page<AuditEntry>> {
        let limit = filter.limit.unwrap_or(100).clamp(1, 1000);
        let mut f = Filter::default();
        if let Some(u) = &filter.user {
            f.push("username = {}", Arg::Str(u.clone()));
        }
        if let Some(r) = &filter.result {
            f.push("result = {}", Arg::Str(r.clone()));
        }
        if let Some(r) = &filter.route {
            f.push("route LIKE {} ESCAPE '\\'", Arg::Str(format!("{}%", r.replace('%', "\\%").replace('_', "\\_"))));
        }
        if let Some(s) = &filter.since {
            f.push("time >= {}", Arg::I64(parse_time("since", s)?));
        }
        if let Some(s) = &filter.until {
            f.push("time <= {}", Arg::I64(parse_time("until", s)?));
        }
        if let Some(c) = &filter.cursor {
            let c: i64 = c.parse().map_err(|_| CatalogError::Invalid(format!("bad cursor {c:?}")))?;
            f.push("id < {}", Arg::I64(c));
        }
        let lim = f.next_arg(Arg::I64(limit + 1));
        let sql = format!("SELECT {AUDIT_COLS} FROM audit{} ORDER BY id DESC LIMIT {lim}", f.where_sql());
        let rows = f.bind(sqlx::query(&sql)).fetch_all(&self.pool).await?;
        let items = rows.iter().map(AuditEntry::from_row).collect::<Result<Vec<_>>>()?;
        Ok(Page::from_rows(items, limit, |e| e.id.to_string()))
    }
}
