//! Disk repositories (docs/design.md §5 appliance routes): create, list, inspect, delete.

use axum::extract::State;
use axum::http::StatusCode;
use bams_appliance::diskrepo::{DiskStatus, NewDisk};
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Json, Path, Query};
use crate::state::AppState;

/// Who uses a disk repository.
#[derive(Serialize, utoipa::ToSchema)]
pub struct UsedBy {
    /// Registered BAMS repositories inside it: `{"id", "name"}`.
    #[schema(value_type = Vec<Object>)]
    pub repositories: Vec<serde_json::Value>,
    /// Jobs writing to those repositories: `{"id", "name"}`.
    #[schema(value_type = Vec<Object>)]
    pub jobs: Vec<serde_json::Value>,
}

/// A disk repository, its state and its users.
#[derive(Serialize, utoipa::ToSchema)]
pub struct DiskView {
    /// Record and live state.
    #[serde(flatten)]
    pub disk: DiskStatus,
    /// What uses it.
    pub used_by: UsedBy,
}

/// Listing.
#[derive(Serialize, utoipa::ToSchema)]
pub struct DiskList {
    /// Disk repositories by name.
    pub items: Vec<DiskView>,
    /// Always null: the list is complete.
    pub next_cursor: Option<String>,
}

/// `DELETE` options.
#[derive(Deserialize, utoipa::IntoParams)]
pub struct DeleteDisk {
    /// Also unregister the BAMS repositories inside (refused while jobs use them).
    #[serde(default)]
    pub force: bool,
}

fn inside(url: &str, path: &str) -> bool {
    url == path || url.strip_prefix(path).is_some_and(|rest| rest.starts_with('/'))
}

/// Who uses `path`, from the registered repositories and jobs (fetched once per request).
fn used_by(repos: &[bams_catalog::Repository], jobs: &[bams_catalog::Job], path: &str) -> UsedBy {
    let inside: Vec<_> = repos.iter().filter(|r| inside(&r.url, path)).collect();
    UsedBy {
        jobs: jobs
            .iter()
            .filter(|j| inside.iter().any(|r| r.id == j.repository))
            .map(|j| serde_json::json!({"id": j.id, "name": j.name}))
            .collect(),
        repositories: inside.iter().map(|r| serde_json::json!({"id": r.id, "name": r.name})).collect(),
    }
}

/// The users of every disk repository come from one read of repositories and jobs.
async fn views(st: &AppState, recs: Vec<bams_catalog::DiskRecord>) -> ApiResult<Vec<DiskView>> {
    let repos = st.catalog.list_repositories().await?;
    let jobs = st.catalog.list_jobs().await?;
    let disks = st.disks.clone();
    let statuses =
        tokio::task::spawn_blocking(move || recs.into_iter().map(|r| disks.status(r)).collect::<Vec<_>>()).await?;
    Ok(statuses
        .into_iter()
        .map(|disk| {
            let used_by = used_by(&repos, &jobs, &disk.record.path);
            DiskView { disk, used_by }
        })
        .collect())
}

async fn view(st: &AppState, rec: bams_catalog::DiskRecord) -> ApiResult<DiskView> {
    views(st, vec![rec]).await?.pop().ok_or_else(|| ApiError::internal("no view"))
}

/// List disk repositories with capacity, health and users.
#[utoipa::path(get, path = "/api/v1/disk/repositories", tag = "appliance", responses((status = 200, body = DiskList)))]
pub async fn list_disks(State(st): State<AppState>, _caller: Caller) -> ApiResult<Json<DiskList>> {
    let items = views(&st, st.catalog.list_disk_repositories().await?).await?;
    Ok(Json(DiskList { items, next_cursor: None }))
}

/// Create a disk repository (and, with `init_repository`, a BAMS repository inside it).
#[utoipa::path(post, path = "/api/v1/disk/repositories", tag = "appliance", request_body = NewDisk, responses((status = 201, body = DiskView)))]
pub async fn create_disk(
    State(st): State<AppState>,
    _caller: Caller,
    Json(spec): Json<NewDisk>,
) -> ApiResult<(StatusCode, Json<DiskView>)> {
    let rec = st.disks.create(&spec).await?;
    if spec.init_repository {
        let url = format!("{}/repo", rec.path);
        if let Err(e) = st.repos.register(&spec.name, &url, None, true).await {
            // All or nothing: without its repository the disk repository is not wanted.
            let _ = st.disks.remove(&rec).await;
            return Err(e.into());
        }
    }
    Ok((StatusCode::CREATED, Json(view(&st, rec).await?)))
}

/// One disk repository.
#[utoipa::path(get, path = "/api/v1/disk/repositories/{id}", tag = "appliance", params(("id" = i64, Path)), responses((status = 200, body = DiskView)))]
pub async fn get_disk(State(st): State<AppState>, _caller: Caller, Path(id): Path<i64>) -> ApiResult<Json<DiskView>> {
    let rec = st.catalog.get_disk_repository(id).await?;
    Ok(Json(view(&st, rec).await?))
}

/// Delete a disk repository: removes only what BAMS created (its directory, loop image,
/// subvolume). Refused while BAMS repositories live in it, unless `force` (then they are
/// unregistered; never while jobs still use them).
#[utoipa::path(delete, path = "/api/v1/disk/repositories/{id}", tag = "appliance", params(("id" = i64, Path), DeleteDisk), responses((status = 204)))]
pub async fn delete_disk(
    State(st): State<AppState>,
    _caller: Caller,
    Path(id): Path<i64>,
    Query(q): Query<DeleteDisk>,
) -> ApiResult<StatusCode> {
    let rec = st.catalog.get_disk_repository(id).await?;
    let used = used_by(&st.catalog.list_repositories().await?, &st.catalog.list_jobs().await?, &rec.path);
    if !used.jobs.is_empty() {
        let mut e = ApiError::conflict(format!("disk repository {} is used by {} job(s)", rec.name, used.jobs.len()));
        e.details = Some(serde_json::json!({"jobs": used.jobs, "repositories": used.repositories}));
        return Err(e);
    }
    if !used.repositories.is_empty() {
        if !q.force {
            let mut e = ApiError::conflict(format!(
                "disk repository {} holds {} registered repository(ies); delete with force=true to remove them too",
                rec.name,
                used.repositories.len()
            ));
            e.details = Some(serde_json::json!({"repositories": used.repositories}));
            return Err(e);
        }
        for r in &used.repositories {
            if let Some(rid) = r["id"].as_i64() {
                st.catalog.delete_repository(rid).await?;
                st.repos.evict(rid);
            }
        }
    }
    st.disks.remove(&rec).await?;
    Ok(StatusCode::NO_CONTENT)
}
