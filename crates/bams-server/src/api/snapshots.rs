//! Snapshots: list (catalog cache), rebuild the cache, browse a directory, download a file,
//! diff two snapshots, restore a subtree to a directory on the server.

use std::path::{Component, PathBuf};
use std::sync::Arc;

use axum::extract::State;

use axum::response::Response;
use bams_catalog::{Page, SnapshotFilter, SnapshotSummary};
use bams_store::browse::{self, Entry, Lookup};
use bams_store::restorer::{self, RestoreOptions};
use bams_store::tree::NodeKind;
use bams_store::Repository;
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Json, Path, Query};
use crate::policy::Privs;
use crate::state::AppState;

/// Which repository a snapshot route works on.
#[derive(Deserialize, utoipa::IntoParams)]
pub struct RepoParam {
    /// Repository id (default: the `default` repository).
    pub repository: Option<i64>,
}

/// A path inside a snapshot.
#[derive(Deserialize, utoipa::IntoParams)]
pub struct BrowseParams {
    /// Repository id (default: the `default` repository).
    pub repository: Option<i64>,
    /// Directory or file path inside the snapshot (default `/`).
    pub path: Option<String>,
}

/// Two snapshots to compare.
#[derive(Deserialize, utoipa::IntoParams)]
pub struct DiffParams {
    /// Repository id (default: the `default` repository).
    pub repository: Option<i64>,
    /// Older snapshot (id or unique prefix).
    pub from: String,
    /// Newer snapshot.
    pub to: String,
}

/// A restore request.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    /// Repository id (default: the `default` repository).
    pub repository: Option<i64>,
    /// Directory inside the snapshot to restore (default: all).
    pub path: Option<String>,
    /// Target directory on the server; must be inside a configured restore root.
    pub target: String,
    /// Only paths matching these patterns.
    #[serde(default)]
    pub include: Vec<String>,
    /// Re-read what was written and compare.
    #[serde(default)]
    pub verify: bool,
}

/// What a restore did.
#[derive(Serialize, utoipa::ToSchema)]
pub struct RestoreResponse {
    /// Files restored.
    pub files: u64,
    /// Directories restored.
    pub dirs: u64,
    /// Content bytes written.
    pub bytes: u64,
    /// Files verified.
    pub verified: u64,
    /// Problems (non-empty = partial restore).
    pub errors: Vec<String>,
    /// Target directory.
    pub target: String,
}

/// A directory listing entry.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TreeEntry {
    /// Path inside the snapshot.
    pub path: String,
    /// `file`, `dir`, `symlink`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// Permission bits.
    pub mode: u32,
    /// Size.
    pub size: u64,
    /// Modification time.
    pub mtime: String,
    /// Owner name.
    pub user: Option<String>,
    /// Group name.
    pub group: Option<String>,
    /// Symlink target.
    pub link_target: Option<String>,
}

impl From<Entry> for TreeEntry {
    fn from(e: Entry) -> Self {
        Self {
            path: e.path,
            kind: serde_json::to_value(e.kind).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default(),
            mode: e.mode,
            size: e.size,
            mtime: e.mtime,
            user: e.user,
            group: e.group,
            link_target: e.link_target,
        }
    }
}

/// A change between two snapshots.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ChangeEntry {
    /// `+`, `-`, `M`, `U`, `T`.
    pub change: String,
    /// Path.
    pub path: String,
}

/// The repository a request names (or `default`), once the caller holds `privs` on it.
pub(crate) async fn repo_for(
    st: &AppState,
    caller: &Caller,
    id: Option<i64>,
    privs: Privs,
) -> ApiResult<(i64, Arc<Repository>)> {
    let rec = match id {
        Some(id) => st.catalog.get_repository(id).await?,
        None => st.catalog.get_repository_by_name("default").await?,
    };
    caller.require_repository(st, privs, &rec).await?;
    Ok((rec.id, st.repos.get(rec.id).await?))
}

pub(crate) fn snapshot_id(spec: &str) -> ApiResult<&str> {
    if spec.is_empty() || spec.len() > 64 || !(spec == "latest" || spec.chars().all(|c| c.is_ascii_hexdigit())) {
        return Err(ApiError::bad_request(format!("{spec:?} is not a snapshot id")));
    }
    Ok(spec)
}

/// List snapshots (from the catalog's cache).
#[utoipa::path(get, path = "/api/v1/snapshots", tag = "snapshots", params(SnapshotFilter), responses((status = 200, body = Page<SnapshotSummary>)))]
pub async fn list_snapshots(
    State(st): State<AppState>,
    caller: Caller,
    Query(mut f): Query<SnapshotFilter>,
) -> ApiResult<Json<Page<SnapshotSummary>>> {
    match f.repository {
        // A repository's snapshots include those in the agents' repositories under it (each
        // summary names the repository it is in), as far as the caller may see them.
        Some(id) => {
            caller.require_repository(&st, Privs::DATASTORE_AUDIT, &st.catalog.get_repository(id).await?).await?;
            let mut within = vec![id];
            for child in st.catalog.child_repositories(id).await? {
                if caller.repository_privs(&st, &child).await?.any_of(Privs::DATASTORE_AUDIT) {
                    within.push(child.id);
                }
            }
            if within.len() > 1 {
                f.repository = None;
                f.within = Some(within);
            }
        }
        None => {
            let mut within = Vec::new();
            let all = st.catalog.list_repositories().await?;
            for repo in &all {
                if caller.repository_privs(&st, repo).await?.any_of(Privs::DATASTORE_AUDIT) {
                    within.push(repo.id);
                }
            }
            if within.len() < all.len() {
                f.within = Some(within);
            }
        }
    }
    Ok(Json(st.catalog.list_snapshots(&f).await?))
}

/// Rebuild the snapshot cache of a repository from the repository itself.
#[utoipa::path(post, path = "/api/v1/snapshots/sync", tag = "snapshots", params(RepoParam), responses((status = 200, body = Object)))]
pub async fn sync_snapshots(
    State(st): State<AppState>,
    caller: Caller,
    Query(p): Query<RepoParam>,
) -> ApiResult<Json<serde_json::Value>> {
    let (id, _) = repo_for(&st, &caller, p.repository, Privs::DATASTORE_BACKUP).await?;
    let (n, _) = st.repos.refresh_snapshots(id).await?;
    Ok(Json(serde_json::json!({ "repository": id, "snapshots": n })))
}

/// List one directory of a snapshot (or describe one file).
#[utoipa::path(get, path = "/api/v1/snapshots/{id}/tree", tag = "snapshots", params(("id" = String, Path), BrowseParams), responses((status = 200, body = [TreeEntry])))]
pub async fn browse_tree(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<BrowseParams>,
) -> ApiResult<Json<Vec<TreeEntry>>> {
    let spec = snapshot_id(&id)?.to_string();
    let (_, repo) = repo_for(&st, &caller, q.repository, Privs::DATASTORE_READ).await?;
    let path = q.path.unwrap_or_else(|| "/".into());
    browse::path_components(&path)?;
    let entries = tokio::task::spawn_blocking(move || -> bams_store::Result<Vec<TreeEntry>> {
        let snap = repo.find_snapshot(&spec)?;
        let index = repo.load_index()?;
        let mut out = Vec::new();
        let base = format!("/{}", browse::path_components(&path)?.join("/"));
        let mut push = |p: &str, n: &bams_store::tree::Node| out.push(TreeEntry::from(Entry::new(p, n)));
        match browse::lookup(&repo, &index, &snap.snapshot.tree, &path)? {
            Lookup::Root(root) => browse::list(&repo, &index, &root, "", false, &mut push)?,
            Lookup::Node(n) => match n.subtree {
                Some(sub) => browse::list(&repo, &index, &sub, &base, false, &mut push)?,
                None => push(&base, &n),
            },
        }
        Ok(out)
    })
    .await??;
    Ok(Json(entries))
}

/// Download one file of a snapshot.
#[utoipa::path(get, path = "/api/v1/snapshots/{id}/file", tag = "snapshots", params(("id" = String, Path), BrowseParams), responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>)))]
pub async fn download_file(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<BrowseParams>,
) -> ApiResult<Response> {
    let spec = snapshot_id(&id)?.to_string();
    let (_, repo) = repo_for(&st, &caller, q.repository, Privs::DATASTORE_READ).await?;
    let path = q.path.ok_or_else(|| ApiError::bad_request("give the file's path with ?path="))?;
    let (node, index) = {
        let repo = repo.clone();
        let path = path.clone();
        tokio::task::spawn_blocking(move || -> bams_store::Result<_> {
            let snap = repo.find_snapshot(&spec)?;
            let index = repo.load_index()?;
            match browse::lookup(&repo, &index, &snap.snapshot.tree, &path)? {
                Lookup::Node(n) if n.kind == NodeKind::File => Ok((n, index)),
                _ => Err(bams_store::Error::invalid(format!("{path} is not a regular file"))),
            }
        })
        .await??
    };
    let name = path.rsplit('/').next().unwrap_or("file").to_string();
    let size = node.size;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || {
        for id in &node.content {
            let chunk = repo.read_blob(&index, id).map(bytes::Bytes::from).map_err(std::io::Error::other);
            let failed = chunk.is_err();
            if tx.blocking_send(chunk).is_err() || failed {
                return;
            }
        }
    });
    Ok(super::attachment(rx, "application/octet-stream", &name, Some(size)))
}

/// Compare two snapshots.
#[utoipa::path(get, path = "/api/v1/snapshots/diff", tag = "snapshots", params(DiffParams), responses((status = 200, body = [ChangeEntry])))]
pub async fn diff_snapshots(
    State(st): State<AppState>,
    caller: Caller,
    Query(q): Query<DiffParams>,
) -> ApiResult<Json<Vec<ChangeEntry>>> {
    let (a, b) = (snapshot_id(&q.from)?.to_string(), snapshot_id(&q.to)?.to_string());
    let (_, repo) = repo_for(&st, &caller, q.repository, Privs::DATASTORE_READ).await?;
    let changes = tokio::task::spawn_blocking(move || -> bams_store::Result<Vec<ChangeEntry>> {
        let (sa, sb) = (repo.find_snapshot(&a)?, repo.find_snapshot(&b)?);
        let index = repo.load_index()?;
        let d = browse::diff(&repo, &index, &sa.snapshot.tree, &sb.snapshot.tree)?;
        Ok(d.into_iter().map(|c| ChangeEntry { change: c.change.to_string(), path: c.path }).collect())
    })
    .await??;
    Ok(Json(changes))
}

/// Restore (part of) a snapshot into a directory on the server.
#[utoipa::path(post, path = "/api/v1/snapshots/{id}/restore", tag = "snapshots", params(("id" = String, Path)), request_body = RestoreRequest, responses((status = 200, body = RestoreResponse)))]
pub async fn restore_snapshot(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(r): Json<RestoreRequest>,
) -> ApiResult<Json<RestoreResponse>> {
    let spec = snapshot_id(&id)?.to_string();
    let (_, repo) = repo_for(&st, &caller, r.repository, Privs::DATASTORE_READ).await?;
    let target = restore_target(&st.config.restore_roots, &r.target)?;
    let sub = r.path.clone();
    let tgt = target.clone();
    let result = tokio::task::spawn_blocking(move || -> bams_store::Result<_> {
        let snap = repo.find_snapshot(&spec)?;
        let _lock = bams_store::lock::acquire(&repo, false, "restore", std::time::Duration::from_secs(60))?;
        let index = repo.load_index()?;
        let (root, root_path) = restorer::resolve_subtree(&repo, &index, &snap.snapshot.tree, sub.as_deref())?;
        let mut opts = RestoreOptions::new(&tgt);
        opts.include = r.include;
        opts.verify = r.verify;
        restorer::restore(&repo, &index, &root, &root_path, &opts, &bams_store::archiver::NoProgress)
    })
    .await??;
    Ok(Json(RestoreResponse {
        files: result.files,
        dirs: result.dirs,
        bytes: result.bytes,
        verified: result.verified,
        errors: result.errors,
        target: target.display().to_string(),
    }))
}

/// A restore target must be absolute, free of `..`, and inside a restore root even after
/// resolving symlinks of the part that exists.
pub fn restore_target(roots: &[PathBuf], target: &str) -> ApiResult<PathBuf> {
    let p = PathBuf::from(target);
    if !p.is_absolute() || target.contains('\0') || p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(ApiError::bad_request(format!("restore target {target:?} must be an absolute path without '..'")));
    }
    // Resolve the longest existing ancestor (symlinks included), then re-append the rest.
    let mut existing = p.clone();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.file_name().map(|n| n.to_os_string()), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => break,
        }
    }
    let mut resolved = existing.canonicalize().map_err(|e| ApiError::bad_request(format!("{target}: {e}")))?;
    for name in rest.iter().rev() {
        resolved.push(name);
    }
    let allowed = roots.iter().any(|root| {
        let root = root.canonicalize().unwrap_or_else(|_| root.clone());
        resolved.starts_with(&root) && resolved != root
    });
    if !allowed {
        let roots: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
        return Err(ApiError::forbidden(format!(
            "restore target {target:?} is outside the restore roots ({})",
            roots.join(", ")
        )));
    }
    Ok(resolved)
}
