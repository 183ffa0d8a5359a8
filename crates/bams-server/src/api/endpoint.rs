//! The repository endpoint: remote clients (`bams -r bams://host:4848/<name>`) read and write
//! a registered repository's objects through the server. Objects arrive sealed, so the server
//! never sees plaintext. An append-only token may add objects but never delete or overwrite
//! them (lock files excepted, which clients must create, refresh and remove), so a compromised
//! client cannot destroy the backups it made.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Json, Path, Query};
use crate::policy::Privs;
use crate::state::AppState;

/// Object key parameter.
#[derive(Deserialize, utoipa::IntoParams)]
pub struct KeyParam {
    /// Object key, e.g. `data/ab/<id>`, `snapshots/<id>`, `config`.
    pub key: String,
}

/// Listing prefix parameter.
#[derive(Deserialize, utoipa::IntoParams)]
pub struct PrefixParam {
    /// Key prefix (`data/`, `index/`, …); empty = everything.
    #[serde(default)]
    pub prefix: String,
}

/// A listed object.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ListedObject {
    /// Key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Modification time (Unix ms).
    pub modified_ms: Option<i64>,
}

/// Reading objects serves backup clients (index, keys, parent trees) and restores.
const READ: Privs = Privs::DATASTORE_BACKUP.union(Privs::DATASTORE_READ);

const TOP_LEVEL: &[&str] = &["config", "keys/", "data/", "index/", "snapshots/", "locks/"];

fn check_key(key: &str) -> ApiResult<()> {
    let ok = key.len() <= 512
        && TOP_LEVEL
            .iter()
            .any(|t| if t.ends_with('/') { key.starts_with(t) && key.len() > t.len() } else { key == *t })
        && key.split('/').all(|c| !c.is_empty() && c != "." && c != ".." && !c.starts_with(".tmp-"))
        && key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!("invalid object key {key:?}")))
    }
}

/// The named repository's backend, once the caller holds one of `privs` on it.
async fn backend(
    st: &AppState,
    caller: &Caller,
    name: &str,
    privs: Privs,
) -> ApiResult<(i64, bams_store::backend::DynBackend)> {
    let rec = st.catalog.get_repository_by_name(name).await?;
    caller.require_repository(st, privs, &rec).await?;
    Ok((rec.id, bams_store::backend::from_location(&rec.url)?))
}

fn parse_range(headers: &HeaderMap) -> ApiResult<Option<(u64, u64)>> {
    let Some(v) = headers.get(header::RANGE) else { return Ok(None) };
    let bad = || {
        ApiError::new(StatusCode::RANGE_NOT_SATISFIABLE, "bad_range", "only single `bytes=a-b` ranges are supported")
    };
    let spec = v.to_str().map_err(|_| bad())?.strip_prefix("bytes=").ok_or_else(bad)?;
    let (a, b) = spec.split_once('-').ok_or_else(bad)?;
    let (a, b): (u64, u64) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
    if b < a {
        return Err(bad());
    }
    Ok(Some((a, b - a + 1)))
}

/// Refresh the snapshot cache after a client added or removed a snapshot (best effort).
fn resync(st: &AppState, id: i64, key: &str) {
    if !key.starts_with("snapshots/") {
        return;
    }
    let st = st.clone();
    tokio::spawn(async move {
        let _ = st.repos.refresh_snapshots(id).await;
    });
}

/// List objects.
#[utoipa::path(get, path = "/api/v1/repo/{name}/list", tag = "repository endpoint", params(("name" = String, Path), PrefixParam), responses((status = 200, body = [ListedObject])))]
pub async fn list_objects(
    State(st): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(p): Query<PrefixParam>,
) -> ApiResult<Json<Vec<ListedObject>>> {
    if p.prefix.contains("..") {
        return Err(ApiError::bad_request("invalid prefix"));
    }
    let (_, b) = backend(&st, &caller, &name, READ).await?;
    let items = b.list(&p.prefix).await?;
    Ok(Json(
        items
            .into_iter()
            .map(|o| ListedObject {
                key: o.key,
                size: o.size,
                modified_ms: o
                    .modified
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_millis() as i64),
            })
            .collect(),
    ))
}

/// Read an object (whole, or one `Range: bytes=a-b`).
#[utoipa::path(get, path = "/api/v1/repo/{name}/object", tag = "repository endpoint", params(("name" = String, Path), KeyParam), responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>), (status = 206, body = Vec<u8>), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get_object(
    State(st): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(k): Query<KeyParam>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    check_key(&k.key)?;
    let (_, b) = backend(&st, &caller, &name, READ).await?;
    let (status, data) = match parse_range(&headers)? {
        Some((offset, len)) => (StatusCode::PARTIAL_CONTENT, b.get_range(&k.key, offset, len).await?),
        None => (StatusCode::OK, b.get(&k.key).await?),
    };
    Ok((status, [(header::CONTENT_TYPE, "application/octet-stream")], Body::from(data)).into_response())
}

/// Size and time of an object.
#[utoipa::path(head, path = "/api/v1/repo/{name}/object", tag = "repository endpoint", params(("name" = String, Path), KeyParam), responses((status = 200), (status = 404)))]
pub async fn head_object(
    State(st): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(k): Query<KeyParam>,
) -> ApiResult<Response> {
    check_key(&k.key)?;
    let (_, b) = backend(&st, &caller, &name, READ).await?;
    let Some(info) = b.head(&k.key).await? else {
        return Ok(StatusCode::NOT_FOUND.into_response());
    };
    let ms = info.modified.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_millis());
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_LENGTH, info.size.to_string()),
            (header::HeaderName::from_static("x-bams-modified-ms"), ms.to_string()),
        ],
    )
        .into_response())
}

/// Store an object (atomically, durably).
#[utoipa::path(put, path = "/api/v1/repo/{name}/object", tag = "repository endpoint", params(("name" = String, Path), KeyParam), request_body(content = Vec<u8>, content_type = "application/octet-stream"), responses((status = 201), (status = 409, body = crate::error::ErrorBody)))]
pub async fn put_object(
    State(st): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(k): Query<KeyParam>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    check_key(&k.key)?;
    let (id, b) = backend(&st, &caller, &name, Privs::DATASTORE_BACKUP).await?;
    if caller.scope.append_only() && !k.key.starts_with("locks/") && b.head(&k.key).await?.is_some() {
        return Err(ApiError::conflict(format!("append-only token: {} exists and cannot be overwritten", k.key)));
    }
    b.put(&k.key, body).await?;
    resync(&st, id, &k.key);
    Ok(StatusCode::CREATED)
}

/// Delete an object (refused for append-only tokens, except lock files).
#[utoipa::path(delete, path = "/api/v1/repo/{name}/object", tag = "repository endpoint", params(("name" = String, Path), KeyParam), responses((status = 204), (status = 403, body = crate::error::ErrorBody)))]
pub async fn delete_object(
    State(st): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(k): Query<KeyParam>,
) -> ApiResult<StatusCode> {
    check_key(&k.key)?;
    if caller.scope.append_only() && !k.key.starts_with("locks/") {
        return Err(ApiError::forbidden(format!("append-only token: deleting {} is not allowed", k.key)));
    }
    // Backup clients remove their own locks; removing anything else is pruning.
    let needs = if k.key.starts_with("locks/") {
        Privs::DATASTORE_BACKUP.union(Privs::DATASTORE_PRUNE)
    } else {
        Privs::DATASTORE_PRUNE
    };
    let (id, b) = backend(&st, &caller, &name, needs).await?;
    b.delete(&k.key).await?;
    resync(&st, id, &k.key);
    Ok(StatusCode::NO_CONTENT)
}
