//! The repository endpoint: remote clients (`bams -r bams://host:4848/<name>`) read and write
//! a registered repository's objects through the server. Objects arrive sealed, so the server
//! never sees plaintext, but it checks what it can: every object but `config` is named by the
//! BLAKE3 hash of its bytes, so an upload whose bytes do not match its name is refused, and
//! `config` is never replaced. An append-only or agent credential may add objects but never
//! delete or overwrite them, nor write `keys/` or `config`; of the lock files it must create,
//! refresh and remove, it may remove only its own. So a compromised client cannot destroy the
//! backups it made, nor plant objects that break others' reads.
//!
//! Uploads stream into a temporary file under `<data_dir>/uploads` while being hashed, and are
//! handed to the repository from there (a link or in-kernel copy for local repositories):
//! memory stays bounded whatever the object size and the number of uploads at once.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bams_catalog::TokenScope;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

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

const TOP_LEVEL: &[&str] = &["config", "keys/", "data/", "index/", "heads/", "snapshots/", "locks/"];

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
    // An agent reaches only its own repositories (and those of shared-dedup pools it backs
    // up into): a stolen agent credential cannot read or fill any other machine's.
    if caller.scope == TokenScope::Agent && !st.catalog.agent_repositories(caller.user.id).await?.contains(&rec.id) {
        return Err(ApiError::forbidden(format!("repository {name:?} is not this agent's")));
    }
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

/// An upload received into a temporary file: its path (removed on drop), hash and size.
struct Upload {
    file: tempfile::TempPath,
    hash: blake3::Hash,
}

/// Stream a request body into `<data_dir>/uploads`, hashing it; refuse more than `max` bytes.
async fn receive(st: &AppState, body: Body, max: usize) -> ApiResult<Upload> {
    let dir = st.config.data_dir.join("uploads");
    let io = |e: std::io::Error| ApiError::internal(format!("{}: {e}", dir.display()));
    tokio::fs::create_dir_all(&dir).await.map_err(io)?;
    let tmp = tempfile::Builder::new().prefix("upload-").tempfile_in(&dir).map_err(io)?.into_temp_path();
    // Large writes: each write of a tokio file is a hop to a blocking thread.
    let mut out = tokio::io::BufWriter::with_capacity(1 << 20, tokio::fs::File::create(&tmp).await.map_err(io)?);
    let mut hasher = blake3::Hasher::new();
    let mut size = 0usize;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("upload cut short: {e}")))?;
        size += chunk.len();
        if size > max {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("objects are limited to {max} bytes (max_object_bytes)"),
            ));
        }
        hasher.update(&chunk);
        out.write_all(&chunk).await.map_err(io)?;
    }
    out.flush().await.map_err(io)?;
    Ok(Upload { file: tmp, hash: hasher.finalize() })
}

/// Every object but `config` is named by the hash of its bytes (`data/<2 hex>/<id>` with the
/// id's first two digits): refuse an upload that is not what its name says.
fn check_content(key: &str, hash: &blake3::Hash) -> ApiResult<()> {
    if key == "config" {
        return Ok(());
    }
    let (dir, name) = key.rsplit_once('/').unwrap_or(("", key));
    let shaped = name.len() == 64
        && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && match dir.split_once('/') {
            Some(("data", fan)) => fan.len() == 2 && name.starts_with(fan),
            None => matches!(dir, "keys" | "index" | "heads" | "snapshots" | "locks"),
            _ => false,
        };
    if !shaped {
        return Err(ApiError::bad_request(format!("object key {key:?} is not <kind>/<64-hex id>")));
    }
    if hash.to_hex().as_str() != name {
        return Err(ApiError::bad_request(format!("{key}: content does not match its name")));
    }
    Ok(())
}

/// Store an object (atomically, durably).
#[utoipa::path(put, path = "/api/v1/repo/{name}/object", tag = "repository endpoint", params(("name" = String, Path), KeyParam), request_body(content = Vec<u8>, content_type = "application/octet-stream"), responses((status = 201), (status = 400, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody), (status = 413, body = crate::error::ErrorBody)))]
pub async fn put_object(
    State(st): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(k): Query<KeyParam>,
    body: Body,
) -> ApiResult<StatusCode> {
    check_key(&k.key)?;
    let restricted = caller.scope.append_only();
    if restricted && (k.key == "config" || k.key.starts_with("keys/")) {
        return Err(ApiError::forbidden(format!(
            "{} credentials may not write {}: keys and config are the repository owner's",
            if caller.scope == TokenScope::Agent { "agent" } else { "append-only" },
            k.key
        )));
    }
    let (id, b) = backend(&st, &caller, &name, Privs::DATASTORE_BACKUP).await?;
    let exists = b.head(&k.key).await?.is_some();
    if exists && k.key == "config" {
        return Err(ApiError::conflict("the repository's config exists and is never replaced"));
    }
    if exists && restricted && !k.key.starts_with("locks/") {
        return Err(ApiError::conflict(format!("append-only token: {} exists and cannot be overwritten", k.key)));
    }
    let upload = receive(&st, body, st.config.max_object_bytes).await?;
    check_content(&k.key, &upload.hash)?;
    if restricted && k.key.starts_with("locks/") {
        st.catalog.record_endpoint_lock(id, &k.key, caller.token_id).await?;
    }
    b.put_file(&k.key, &upload.file).await?;
    drop(upload);
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
    let restricted = caller.scope.append_only();
    if restricted && !k.key.starts_with("locks/") {
        return Err(ApiError::forbidden(format!("append-only token: deleting {} is not allowed", k.key)));
    }
    // Backup clients remove their own locks; removing anything else is pruning.
    let needs = if k.key.starts_with("locks/") {
        Privs::DATASTORE_BACKUP.union(Privs::DATASTORE_PRUNE)
    } else {
        Privs::DATASTORE_PRUNE
    };
    let (id, b) = backend(&st, &caller, &name, needs).await?;
    if restricted && !st.catalog.endpoint_lock_owned(id, &k.key, caller.token_id).await? {
        return Err(ApiError::forbidden(format!(
            "{}: a restricted credential may remove only the locks it wrote",
            k.key
        )));
    }
    b.delete(&k.key).await?;
    if k.key.starts_with("locks/") {
        st.catalog.forget_endpoint_lock(id, &k.key).await?;
    }
    resync(&st, id, &k.key);
    Ok(StatusCode::NO_CONTENT)
}
