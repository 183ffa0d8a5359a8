//! Access control entries (`/api/v1/acl`): a role for a user on an object path, and what the
//! caller may do where (`/api/v1/auth/permissions`, for the web UI to show only what works).

use axum::extract::State;
use axum::http::StatusCode;
use bams_catalog::AclEntry;
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Json, Path};
use crate::policy::{self, RoleInfo};
use crate::state::AppState;

/// A new entry (replaces the user's role on that path).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAcl {
    /// Object path: `/`, `/repositories/NAME`, `/pools/NAME`, `/jobs`, `/agents`,
    /// `/appliance/{disks,bacula,tape,iscsi,logs}`, `/system`.
    pub path: String,
    /// User name or id.
    pub user: UserRef,
    /// Role (`GET /api/v1/acl/roles`).
    pub role: String,
    /// Also applies below the path (default true).
    #[serde(default = "yes")]
    pub propagate: bool,
}

fn yes() -> bool {
    true
}

/// A user by id or by name.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum UserRef {
    /// Numeric id.
    Id(i64),
    /// Login name.
    Name(String),
}

/// List every entry.
#[utoipa::path(get, path = "/api/v1/acl", tag = "users", responses((status = 200, body = [AclEntry])))]
pub async fn list_acl(State(st): State<AppState>, _caller: Caller) -> ApiResult<Json<Vec<AclEntry>>> {
    Ok(Json(st.catalog.list_acl(None).await?))
}

/// Give a user a role on a path.
#[utoipa::path(post, path = "/api/v1/acl", tag = "users", request_body = NewAcl, responses((status = 201, body = AclEntry), (status = 400, body = crate::error::ErrorBody)))]
pub async fn set_acl(
    State(st): State<AppState>,
    _caller: Caller,
    Json(req): Json<NewAcl>,
) -> ApiResult<(StatusCode, Json<AclEntry>)> {
    policy::validate_path(&req.path).map_err(ApiError::bad_request)?;
    if policy::role_privs(&req.role).is_none() {
        let names: Vec<&str> = policy::ROLES.iter().map(|(n, _, _)| *n).collect();
        return Err(ApiError::bad_request(format!("unknown role {:?} ({})", req.role, names.join(", "))));
    }
    let user = match req.user {
        UserRef::Id(id) => st.catalog.get_user(id).await?,
        UserRef::Name(name) => st.catalog.get_user_by_name(&name).await?,
    };
    let entry = st.catalog.set_acl(&req.path, user.id, &req.role, req.propagate).await?;
    st.auth_cache.clear();
    Ok((StatusCode::CREATED, Json(entry)))
}

/// Remove an entry.
#[utoipa::path(delete, path = "/api/v1/acl/{id}", tag = "users", params(("id" = i64, Path)), responses((status = 204)))]
pub async fn delete_acl(State(st): State<AppState>, _caller: Caller, Path(id): Path<i64>) -> ApiResult<StatusCode> {
    st.catalog.delete_acl(id).await?;
    st.auth_cache.clear();
    Ok(StatusCode::NO_CONTENT)
}

/// The roles an entry may give.
#[utoipa::path(get, path = "/api/v1/acl/roles", tag = "users", responses((status = 200, body = [RoleInfo])))]
pub async fn list_roles(_caller: Caller) -> Json<Vec<RoleInfo>> {
    Json(policy::roles())
}

/// The caller's privileges on one object.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ObjectPermissions {
    /// Object path.
    pub path: String,
    /// Privileges held there.
    pub privileges: Vec<&'static str>,
}

/// What the caller may do: on the fixed paths and on every repository and pool.
#[utoipa::path(get, path = "/api/v1/auth/permissions", tag = "auth", responses((status = 200, body = [ObjectPermissions])))]
pub async fn my_permissions(State(st): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<ObjectPermissions>>> {
    let mut out: Vec<ObjectPermissions> = [
        "/system",
        "/jobs",
        "/agents",
        "/repositories",
        "/pools",
        "/appliance/disks",
        "/appliance/bacula",
        "/appliance/tape",
        "/appliance/iscsi",
        "/appliance/logs",
    ]
    .iter()
    .map(|p| ObjectPermissions { path: (*p).to_string(), privileges: caller.privs_at(p).names() })
    .collect();
    for repo in st.catalog.list_repositories().await? {
        let (path, privileges) = caller.repository_access(&st, &repo).await?;
        out.push(ObjectPermissions { path, privileges: privileges.names() });
    }
    for pool in st.catalog.list_pools().await? {
        let privileges = caller.pool_privs(&st, &pool).await?.names();
        out.push(ObjectPermissions { path: policy::pool_path(&pool.name), privileges });
    }
    Ok(Json(out))
}
