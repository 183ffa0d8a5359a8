//! More on snapshots: a folder as a streamed tar, a file-name search across snapshots, and
//! forgetting snapshots (by id or by keep rules) with a dry run that shows what would go.

use axum::extract::State;
use axum::response::Response;
use bams_store::browse::{self, Lookup};
use bams_store::tree::NodeKind;
use serde::{Deserialize, Serialize};

use super::snapshots::{repo_for, snapshot_id, BrowseParams, TreeEntry};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Json, Path, Query};
use crate::policy::Privs;
use crate::state::AppState;

/// Download a folder (or a file) of a snapshot as a tar stream, written as it is read.
#[utoipa::path(get, path = "/api/v1/snapshots/{id}/archive", tag = "snapshots", params(("id" = String, Path), BrowseParams), responses((status = 200, content_type = "application/x-tar", body = Vec<u8>)))]
pub async fn archive(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<BrowseParams>,
) -> ApiResult<Response> {
    let spec = snapshot_id(&id)?.to_string();
    let (_, repo) = repo_for(&st, &caller, q.repository, Privs::DATASTORE_READ).await?;
    let path = q.path.unwrap_or_else(|| "/".into());
    browse::path_components(&path)?;
    // Resolve first, so a wrong path is a clean 404 rather than a broken download.
    let (root, base, index) = {
        let repo = repo.clone();
        let path = path.clone();
        tokio::task::spawn_blocking(move || -> bams_store::Result<_> {
            let snap = repo.find_snapshot(&spec)?;
            let index = repo.load_index()?;
            let base = format!("/{}", browse::path_components(&path)?.join("/"));
            match browse::lookup(&repo, &index, &snap.snapshot.tree, &path)? {
                Lookup::Root(root) => Ok((root, base, index)),
                Lookup::Node(n) if n.kind == NodeKind::Dir => {
                    let sub = n
                        .subtree
                        .ok_or_else(|| bams_store::Error::corrupt(format!("{path}: a folder without a tree")))?;
                    Ok((sub, base, index))
                }
                Lookup::Node(_) => {
                    Err(bams_store::Error::invalid(format!("{path} is not a folder (download files with /file)")))
                }
            }
        })
        .await??
    };
    let name = match base.rsplit('/').next().filter(|n| !n.is_empty()) {
        Some(n) => format!("{n}.tar"),
        None => format!("snapshot-{}.tar", &id[..id.len().min(12)]),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(8);
    tokio::task::spawn_blocking(move || {
        let out = super::ChannelWriter::new(tx.clone());
        match bams_store::export::write_tar(&repo, &index, &root, &base, out) {
            Ok(mut w) => {
                let _ = std::io::Write::flush(&mut w);
            }
            // The status line is gone; cutting the stream makes the client see a broken
            // download instead of a short archive that looks whole.
            Err(e) => {
                tracing::warn!(error = %e, "archive download failed");
                let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
            }
        }
    });
    Ok(super::attachment(rx, "application/x-tar", &name, None))
}

/// A name search.
#[derive(Deserialize, utoipa::IntoParams)]
pub struct SearchParams {
    /// Repository id (default: the `default` repository).
    pub repository: Option<i64>,
    /// Part of a file or folder name (case-insensitive, 1-200 characters).
    pub name: String,
    /// Search this many of the newest snapshots (default 50, at most 1000).
    pub snapshots: Option<usize>,
    /// Stop after this many matches (default 200, at most 5000).
    pub limit: Option<usize>,
}

/// A match.
#[derive(Serialize, utoipa::ToSchema)]
pub struct SearchHit {
    /// The newest searched snapshot holding it.
    pub snapshot: String,
    /// The entry.
    #[serde(flatten)]
    pub entry: TreeEntry,
}

/// Matches, newest snapshot first.
#[derive(Serialize, utoipa::ToSchema)]
pub struct SearchResult {
    /// Matches.
    pub items: Vec<SearchHit>,
    /// Snapshots searched.
    pub snapshots_searched: usize,
    /// The limit cut the search short.
    pub truncated: bool,
}

/// Find files and folders by name across a repository's snapshots (each unchanged folder is
/// read once, in the newest snapshot that has it).
#[utoipa::path(get, path = "/api/v1/snapshots/search", tag = "snapshots", params(SearchParams), responses((status = 200, body = SearchResult)))]
pub async fn search(
    State(st): State<AppState>,
    caller: Caller,
    Query(p): Query<SearchParams>,
) -> ApiResult<Json<SearchResult>> {
    let needle = p.name.trim().to_string();
    if needle.is_empty() || needle.chars().count() > 200 {
        return Err(ApiError::bad_request("name must be 1-200 characters").at_field("name"));
    }
    let (_, repo) = repo_for(&st, &caller, p.repository, Privs::DATASTORE_READ).await?;
    let count = p.snapshots.unwrap_or(50).clamp(1, 1000);
    let limit = p.limit.unwrap_or(200).clamp(1, 5000);
    let result = tokio::task::spawn_blocking(move || -> bams_store::Result<SearchResult> {
        let (mut all, _) = repo.snapshots()?;
        all.sort_by_key(|e| std::cmp::Reverse(e.snapshot.time));
        all.truncate(count);
        let roots: Vec<_> = all.iter().map(|e| (e.id, e.snapshot.tree)).collect();
        let index = repo.load_index()?;
        let hits = browse::search(&repo, &index, &roots, &needle, limit)?;
        Ok(SearchResult {
            truncated: hits.len() >= limit,
            snapshots_searched: roots.len(),
            items: hits
                .into_iter()
                .map(|h| SearchHit {
                    snapshot: h.snapshot.to_hex(),
                    entry: TreeEntry::from(bams_store::browse::Entry::new(&h.path, &h.node)),
                })
                .collect(),
        })
    })
    .await??;
    Ok(Json(result))
}

/// Snapshots to forget: by id, by keep rules, or both.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForgetBody {
    /// Repository id (default: the `default` repository).
    pub repository: Option<i64>,
    /// Snapshots to remove (ids or unique prefixes).
    #[serde(default)]
    pub snapshots: Vec<String>,
    /// Keep rules (`keep_last`, `keep_daily`, …) applied to the snapshots of `host`/`tag`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub retention: Option<serde_json::Value>,
    /// Only snapshots of this host (for the keep rules).
    pub host: Option<String>,
    /// Only snapshots with this tag (for the keep rules).
    pub tag: Option<String>,
    /// Decide and report, remove nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// One snapshot's fate.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ForgetDecision {
    /// Snapshot id.
    pub id: String,
    /// Kept.
    pub keep: bool,
    /// The rules that keep it.
    pub reasons: Vec<String>,
}

/// What a forget removed (or would, on a dry run).
#[derive(Serialize, utoipa::ToSchema)]
pub struct ForgetResult {
    /// Removed (or to be removed).
    pub removed: Vec<String>,
    /// Each considered snapshot under the keep rules.
    pub decisions: Vec<ForgetDecision>,
    /// Nothing was removed.
    pub dry_run: bool,
}

/// Forget snapshots (their data goes at the next prune). With `dry_run`, only say which.
#[utoipa::path(post, path = "/api/v1/snapshots/forget", tag = "snapshots", request_body = ForgetBody, responses((status = 200, body = ForgetResult)))]
pub async fn forget(
    State(st): State<AppState>,
    caller: Caller,
    Json(b): Json<ForgetBody>,
) -> ApiResult<Json<ForgetResult>> {
    let (repo_id, repo) = repo_for(&st, &caller, b.repository, Privs::DATASTORE_PRUNE).await?;
    let policy = match &b.retention {
        Some(r) => {
            let ret: bams_store::forget::Retention = serde_json::from_value(r.clone())
                .map_err(|e| ApiError::bad_request(format!("retention: {e}")).at_field("retention"))?;
            ret.to_policy().map_err(|e| ApiError::from(e).at_field("retention"))?
        }
        None => bams_store::forget::KeepPolicy::default(),
    };
    for s in &b.snapshots {
        snapshot_id(s)?;
    }
    let req = bams_store::forget::ForgetRequest {
        policy,
        host: b.host.clone(),
        tag: b.tag.clone(),
        job: None,
        snapshots: b.snapshots.clone(),
        dry_run: b.dry_run,
    };
    let report = tokio::task::spawn_blocking(move || bams_store::forget::forget(&repo, &req)).await??;
    if !b.dry_run {
        st.repos.refresh_snapshots(repo_id).await?;
    }
    Ok(Json(ForgetResult {
        removed: report.removed.iter().map(|id| id.to_hex()).collect(),
        decisions: report
            .decisions
            .into_iter()
            .map(|d| ForgetDecision { id: d.id, keep: d.keep, reasons: d.reasons })
            .collect(),
        dry_run: b.dry_run,
    }))
}
