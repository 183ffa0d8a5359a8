//! Repositories: register (local path now; S3 with its backend), list, stats, unregister.

use axum::extract::State;
use axum::http::StatusCode;
use bams_catalog::Repository;
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::error::{ApiResult, Json, Path};
use crate::policy::Privs;
use crate::state::AppState;

/// Register or create a repository.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRepository {
    /// Unique name.
    pub name: String,
    /// Absolute local path, or `s3://bucket/prefix` (credentials from the server's `AWS_*`
    /// environment).
    pub url: String,
    /// Password of an existing repository; omitted = create one with a generated key.
    pub password: Option<String>,
    /// Create the repository when it does not exist yet (default true).
    #[serde(default = "yes")]
    pub create: bool,
}

fn yes() -> bool {
    true
}

/// Repository usage.
#[derive(Serialize, utoipa::ToSchema)]
pub struct RepositoryStats {
    /// The repository.
    #[serde(flatten)]
    pub repository: Repository,
    /// Snapshots.
    pub snapshots: usize,
    /// Packs.
    pub packs: usize,
    /// Distinct blobs.
    pub blobs: usize,
    /// Deduplicated plaintext bytes.
    pub raw_bytes: u64,
    /// Bytes stored (compressed, encrypted).
    pub stored_bytes: u64,
    /// Bytes a restore of every snapshot would write.
    pub restore_size: u64,
    /// restore_size / stored_bytes.
    pub dedup_compression_ratio: f64,
}

/// List repositories.
#[utoipa::path(get, path = "/api/v1/repositories", tag = "repositories", responses((status = 200, body = [Repository])))]
pub async fn list_repositories(State(st): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<Repository>>> {
    let mut out = Vec::new();
    for repo in st.catalog.list_repositories().await? {
        if caller.repository_privs(&st, &repo).await?.any_of(Privs::DATASTORE_AUDIT) {
            out.push(repo);
        }
    }
    Ok(Json(out))
}

/// Register (and by default create) a repository.
#[utoipa::path(post, path = "/api/v1/repositories", tag = "repositories", request_body = NewRepository, responses((status = 201, body = Repository)))]
pub async fn create_repository(
    State(st): State<AppState>,
    _caller: Caller,
    Json(r): Json<NewRepository>,
) -> ApiResult<(StatusCode, Json<Repository>)> {
    let rec = st.repos.register(&r.name, &r.url, r.password.as_deref(), r.create).await?;
    Ok((StatusCode::CREATED, Json(rec)))
}

/// One repository.
#[utoipa::path(get, path = "/api/v1/repositories/{id}", tag = "repositories", params(("id" = i64, Path)), responses((status = 200, body = Repository)))]
pub async fn get_repository(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> ApiResult<Json<Repository>> {
    let repo = st.catalog.get_repository(id).await?;
    caller.require_repository(&st, Privs::DATASTORE_AUDIT, &repo).await?;
    Ok(Json(repo))
}

/// Unregister a repository and the agents' repositories under it (their data and key files
/// stay on disk). Refused while jobs use it.
#[utoipa::path(delete, path = "/api/v1/repositories/{id}", tag = "repositories", params(("id" = i64, Path)), responses((status = 204), (status = 409, body = crate::error::ErrorBody)))]
pub async fn delete_repository(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> ApiResult<StatusCode> {
    caller.require_repository(&st, Privs::DATASTORE_MODIFY, &st.catalog.get_repository(id).await?).await?;
    let children = st.catalog.child_repositories(id).await?;
    st.catalog.delete_repository(id).await?;
    st.repos.evict(id);
    for child in children {
        st.repos.evict(child.id);
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Usage of a repository (reads its index).
#[utoipa::path(get, path = "/api/v1/repositories/{id}/stats", tag = "repositories", params(("id" = i64, Path)), responses((status = 200, body = RepositoryStats)))]
pub async fn repository_stats(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> ApiResult<Json<RepositoryStats>> {
    let rec = st.catalog.get_repository(id).await?;
    caller.require_repository(&st, Privs::DATASTORE_AUDIT, &rec).await?;
    let repo = st.repos.get(id).await?;
    let s = tokio::task::spawn_blocking(move || {
        let index = repo.load_index()?;
        bams_store::browse::stats(&repo, &index)
    })
    .await??;
    crate::metrics::set_repository_bytes(&rec.name, s.stored_bytes);
    Ok(Json(RepositoryStats {
        repository: rec,
        snapshots: s.snapshots,
        packs: s.packs,
        blobs: s.blobs,
        raw_bytes: s.raw_bytes,
        stored_bytes: s.stored_bytes,
        restore_size: s.restore_size,
        dedup_compression_ratio: s.dedup_compression_ratio,
    }))
}
