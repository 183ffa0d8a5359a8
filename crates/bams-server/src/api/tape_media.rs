//! Media pools, volumes and tape sets (the media database, `bams_appliance::tape::media`):
//! pools with their retention and recycling policy (admin), volumes with their retention and
//! status (operators archive or release them), and the sets written by tape jobs and
//! `bams tape write`, with their expiry and volumes — what an operator needs to know which
//! cartridges to keep, send offsite or put back as scratch.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use bams_appliance::tape::media::{MediaDb, PoolPolicy, PoolView, SetView, VolumeStatus, VolumeView};
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Json, Path};
use crate::state::AppState;

/// Run a media database call off the async threads (it takes a file lock).
async fn with_db<T: Send + 'static>(
    st: &AppState,
    f: impl FnOnce(&MediaDb) -> Result<T, bams_appliance::ApplianceError> + Send + 'static,
) -> ApiResult<T> {
    let db = st
        .tape_media
        .clone()
        .ok_or_else(|| ApiError::not_found("tape library (tape.library is none in the config)"))?;
    let out = tokio::task::spawn_blocking(move || f(&db))
        .await
        .map_err(|e| ApiError::internal(format!("media database task: {e}")))??;
    Ok(out)
}

/// Pools.
#[derive(Serialize, utoipa::ToSchema)]
pub struct PoolList {
    /// By name.
    pub items: Vec<PoolView>,
    /// Always null: the list is complete.
    pub next_cursor: Option<String>,
}

/// Volumes.
#[derive(Serialize, utoipa::ToSchema)]
pub struct VolumeList {
    /// By barcode.
    pub items: Vec<VolumeView>,
    /// Always null: the list is complete.
    pub next_cursor: Option<String>,
}

/// Sets.
#[derive(Serialize, utoipa::ToSchema)]
pub struct SetList {
    /// Oldest first.
    pub items: Vec<SetView>,
    /// Always null: the list is complete.
    pub next_cursor: Option<String>,
}

/// A new pool.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPool {
    /// 1-64 letters, digits, `-` or `_`.
    pub name: String,
    /// Days a set is kept (`null` or absent: forever; 0: expire at once).
    #[serde(default)]
    pub retention_days: Option<u32>,
    /// Most volumes (`null` or absent: no limit).
    #[serde(default)]
    pub max_volumes: Option<u32>,
    /// Relabel volumes whose sets all expired (default true).
    #[serde(default = "yes")]
    pub recycle: bool,
}

fn yes() -> bool {
    true
}

/// A volume status change.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeUpdate {
    /// `append`, `full`, `archive` (never appended to or recycled) or `error`.
    pub status: VolumeStatus,
}

/// Filter by pool.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PoolFilter {
    /// Only this pool.
    pub pool: Option<String>,
}

/// Media pools with their policy and what they hold.
#[utoipa::path(get, path = "/api/v1/tape/pools", tag = "appliance", responses((status = 200, body = PoolList)))]
pub async fn list_pools(State(st): State<AppState>, _caller: Caller) -> ApiResult<Json<PoolList>> {
    let items = with_db(&st, |db| db.pools(chrono::Utc::now())).await?;
    Ok(Json(PoolList { items, next_cursor: None }))
}

/// Create a media pool.
#[utoipa::path(post, path = "/api/v1/tape/pools", tag = "appliance", request_body = NewPool, responses((status = 201, body = PoolView)))]
pub async fn create_pool(
    State(st): State<AppState>,
    _caller: Caller,
    Json(req): Json<NewPool>,
) -> ApiResult<(StatusCode, Json<PoolView>)> {
    let policy = PoolPolicy { retention_days: req.retention_days, max_volumes: req.max_volumes, recycle: req.recycle };
    let view = with_db(&st, move |db| {
        db.create_pool(&req.name, policy)?;
        db.pool(&req.name, chrono::Utc::now())
    })
    .await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// One pool.
#[utoipa::path(get, path = "/api/v1/tape/pools/{name}", tag = "appliance", params(("name" = String, Path)), responses((status = 200, body = PoolView)))]
pub async fn get_pool(
    State(st): State<AppState>,
    _caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<PoolView>> {
    Ok(Json(with_db(&st, move |db| db.pool(&name, chrono::Utc::now())).await?))
}

/// Replace a pool's policy; it applies to the sets already written.
#[utoipa::path(put, path = "/api/v1/tape/pools/{name}", tag = "appliance", params(("name" = String, Path)), request_body = PoolPolicy, responses((status = 200, body = PoolView)))]
pub async fn update_pool(
    State(st): State<AppState>,
    _caller: Caller,
    Path(name): Path<String>,
    Json(policy): Json<PoolPolicy>,
) -> ApiResult<Json<PoolView>> {
    Ok(Json(
        with_db(&st, move |db| {
            db.update_pool(&name, policy)?;
            db.pool(&name, chrono::Utc::now())
        })
        .await?,
    ))
}

/// Delete a pool that holds no volume (409 otherwise).
#[utoipa::path(delete, path = "/api/v1/tape/pools/{name}", tag = "appliance", params(("name" = String, Path)), responses((status = 204)))]
pub async fn delete_pool(
    State(st): State<AppState>,
    _caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    with_db(&st, move |db| db.delete_pool(&name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Volumes with their retention and whether they are recyclable now.
#[utoipa::path(get, path = "/api/v1/tape/volumes", tag = "appliance", params(PoolFilter), responses((status = 200, body = VolumeList)))]
pub async fn list_volumes(
    State(st): State<AppState>,
    _caller: Caller,
    Query(f): Query<PoolFilter>,
) -> ApiResult<Json<VolumeList>> {
    let mut items = with_db(&st, |db| db.volumes(chrono::Utc::now())).await?;
    items.retain(|v| f.pool.as_ref().is_none_or(|p| &v.volume.pool == p));
    Ok(Json(VolumeList { items, next_cursor: None }))
}

/// One volume.
#[utoipa::path(get, path = "/api/v1/tape/volumes/{barcode}", tag = "appliance", params(("barcode" = String, Path)), responses((status = 200, body = VolumeView)))]
pub async fn get_volume(
    State(st): State<AppState>,
    _caller: Caller,
    Path(barcode): Path<String>,
) -> ApiResult<Json<VolumeView>> {
    Ok(Json(with_db(&st, move |db| db.volume(&barcode, chrono::Utc::now())).await?))
}

/// Set a volume's status (e.g. `archive` before it goes offsite).
#[utoipa::path(patch, path = "/api/v1/tape/volumes/{barcode}", tag = "appliance", params(("barcode" = String, Path)), request_body = VolumeUpdate, responses((status = 200, body = VolumeView)))]
pub async fn update_volume(
    State(st): State<AppState>,
    _caller: Caller,
    Path(barcode): Path<String>,
    Json(req): Json<VolumeUpdate>,
) -> ApiResult<Json<VolumeView>> {
    Ok(Json(
        with_db(&st, move |db| {
            db.set_status(&barcode, req.status)?;
            db.volume(&barcode, chrono::Utc::now())
        })
        .await?,
    ))
}

/// Tape sets with their volumes and expiry.
#[utoipa::path(get, path = "/api/v1/tape/sets", tag = "appliance", params(PoolFilter), responses((status = 200, body = SetList)))]
pub async fn list_sets(
    State(st): State<AppState>,
    _caller: Caller,
    Query(f): Query<PoolFilter>,
) -> ApiResult<Json<SetList>> {
    let mut items = with_db(&st, |db| db.sets(chrono::Utc::now())).await?;
    items.retain(|s| f.pool.as_ref().is_none_or(|p| &s.set.pool == p));
    Ok(Json(SetList { items, next_cursor: None }))
}

/// One set.
#[utoipa::path(get, path = "/api/v1/tape/sets/{id}", tag = "appliance", params(("id" = String, Path)), responses((status = 200, body = SetView)))]
pub async fn get_set(State(st): State<AppState>, _caller: Caller, Path(id): Path<String>) -> ApiResult<Json<SetView>> {
    Ok(Json(with_db(&st, move |db| db.set(&id, chrono::Utc::now())).await?))
}

/// How to label a cartridge.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LabelRequest {
    /// Media pool it joins.
    pub pool: String,
    /// Relabel a cartridge that already has a label (its tape sets are forgotten).
    #[serde(default)]
    pub force: bool,
    /// Drive to use (default 0); the cartridge goes back to its slot afterwards.
    #[serde(default)]
    pub drive: u32,
}

/// What labeling did.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Labeled {
    /// Barcode.
    pub barcode: String,
    /// Pool.
    pub pool: String,
    /// The volume id written on the tape.
    pub volume_id: String,
    /// Tape sets the relabel erased.
    pub forgotten_sets: Vec<String>,
}

/// Label a cartridge for a media pool (loads it into a drive, writes the label, puts it
/// back). Erases the cartridge; one already labeled needs `force`.
#[utoipa::path(post, path = "/api/v1/tape/volumes/{barcode}/label", tag = "appliance", params(("barcode" = String, Path)), request_body = LabelRequest, responses((status = 200, body = Labeled), (status = 409, body = crate::error::ErrorBody)))]
pub async fn label(
    State(st): State<AppState>,
    _caller: Caller,
    Path(barcode): Path<String>,
    Json(req): Json<LabelRequest>,
) -> ApiResult<Json<Labeled>> {
    let jobs =
        st.tape_jobs.clone().ok_or_else(|| ApiError::not_found("tape library (tape.library is none in the config)"))?;
    let (label, forgotten) =
        tokio::task::spawn_blocking(move || jobs.label(&barcode, &req.pool, req.force, req.drive)).await??;
    Ok(Json(Labeled {
        barcode: label.barcode,
        pool: label.pool,
        volume_id: label.volume_id,
        forgotten_sets: forgotten,
    }))
}
