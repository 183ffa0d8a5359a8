//! Pools: named backup targets (a repository, the retention its jobs inherit, limits).

use axum::extract::State;
use axum::http::StatusCode;
use bams_catalog::{Pool, PoolSpec};
use bams_director::PoolUsage;
use serde::Serialize;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Json, Path};
use crate::policy::Privs;
use crate::state::AppState;

/// A pool with its usage, read from its repository.
#[derive(Serialize, utoipa::ToSchema)]
pub struct PoolStatus {
    /// The pool.
    #[serde(flatten)]
    pub pool: Pool,
    /// Bytes and snapshots in its repository now.
    pub usage: PoolUsage,
    /// Why it refuses new data, when it is at a limit.
    pub full: Option<String>,
}

fn check_retention(spec: &PoolSpec) -> ApiResult<()> {
    if let Some(r) = &spec.retention {
        let ret: bams_store::forget::Retention =
            serde_json::from_value(r.clone()).map_err(|e| ApiError::bad_request(format!("retention: {e}")))?;
        ret.to_policy()?;
    }
    Ok(())
}

/// List pools.
#[utoipa::path(get, path = "/api/v1/pools", tag = "pools", responses((status = 200, body = [Pool])))]
pub async fn list_pools(State(st): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<Pool>>> {
    let mut out = Vec::new();
    for pool in st.catalog.list_pools().await? {
        if caller.pool_privs(&st, &pool).await?.any_of(Privs::DATASTORE_AUDIT) {
            out.push(pool);
        }
    }
    Ok(Json(out))
}

/// Create a pool on a registered repository.
#[utoipa::path(post, path = "/api/v1/pools", tag = "pools", request_body = PoolSpec, responses((status = 201, body = Pool), (status = 400, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
pub async fn create_pool(
    State(st): State<AppState>,
    caller: Caller,
    Json(spec): Json<PoolSpec>,
) -> ApiResult<(StatusCode, Json<Pool>)> {
    check_retention(&spec)?;
    caller.require_repository(&st, Privs::DATASTORE_MODIFY, &st.catalog.get_repository(spec.repository).await?).await?;
    Ok((StatusCode::CREATED, Json(st.catalog.create_pool(&spec).await?)))
}

/// One pool with its usage.
#[utoipa::path(get, path = "/api/v1/pools/{id}", tag = "pools", params(("id" = i64, Path)), responses((status = 200, body = PoolStatus)))]
pub async fn get_pool(State(st): State<AppState>, caller: Caller, Path(id): Path<i64>) -> ApiResult<Json<PoolStatus>> {
    let pool = st.catalog.get_pool(id).await?;
    caller.require_pool(&st, Privs::DATASTORE_AUDIT, &pool).await?;
    let usage = PoolUsage::of_family(&st.repos, pool.repository).await?;
    let full = usage.full_reason(&pool);
    Ok(Json(PoolStatus { pool, usage, full }))
}

/// Replace a pool (moving it to another repository moves its jobs).
#[utoipa::path(put, path = "/api/v1/pools/{id}", tag = "pools", params(("id" = i64, Path)), request_body = PoolSpec, responses((status = 200, body = Pool)))]
pub async fn update_pool(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    Json(spec): Json<PoolSpec>,
) -> ApiResult<Json<Pool>> {
    check_retention(&spec)?;
    caller.require_pool(&st, Privs::DATASTORE_MODIFY, &st.catalog.get_pool(id).await?).await?;
    caller.require_repository(&st, Privs::DATASTORE_MODIFY, &st.catalog.get_repository(spec.repository).await?).await?;
    Ok(Json(st.catalog.update_pool(id, &spec).await?))
}

/// Delete a pool (refused while jobs use it; its repository stays).
#[utoipa::path(delete, path = "/api/v1/pools/{id}", tag = "pools", params(("id" = i64, Path)), responses((status = 204), (status = 409, body = crate::error::ErrorBody)))]
pub async fn delete_pool(State(st): State<AppState>, caller: Caller, Path(id): Path<i64>) -> ApiResult<StatusCode> {
    caller.require_pool(&st, Privs::DATASTORE_MODIFY, &st.catalog.get_pool(id).await?).await?;
    st.catalog.delete_pool(id).await?;
    Ok(StatusCode::NO_CONTENT)
}
