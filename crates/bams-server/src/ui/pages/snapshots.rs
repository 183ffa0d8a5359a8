//! Snapshots: the list per repository, host and tag; one snapshot with a file browser that
//! loads each directory when opened and a page of entries at a time; file downloads and
//! restores go through the API's routes.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use bams_catalog::{SnapshotFilter, SnapshotSummary};
use serde::Deserialize;

use crate::api::snapshots::{browse_tree, list_snapshots, BrowseParams, TreeEntry};
use crate::error::{ApiError, ApiResult, Path};
use crate::policy::Privs;
use crate::state::AppState;
use crate::ui::fmt::{bytes, When};
use crate::ui::{render, respond, url_encode, Ctx, Frame};

/// Entries per page of a directory in the browser.
pub const DIR_PAGE: usize = 200;

/// A snapshot as the list shows it.
pub struct SnapRow {
    id: String,
    short: String,
    repository: i64,
    repository_name: String,
    time: When,
    host: String,
    paths: String,
    tags: String,
    files: i64,
    size: String,
    new_bytes: String,
    partial: bool,
    job: String,
}

impl SnapRow {
    fn new(s: &SnapshotSummary, repos: &HashMap<i64, String>, now: i64) -> Self {
        Self {
            short: s.id.chars().take(12).collect(),
            id: s.id.clone(),
            repository: s.repository,
            repository_name: repos.get(&s.repository).cloned().unwrap_or_else(|| format!("#{}", s.repository)),
            time: When::at(s.time, now),
            host: s.host.clone(),
            paths: s.paths.join(", "),
            tags: s.tags.join(", "),
            files: s.files,
            size: bytes(s.bytes),
            new_bytes: bytes(s.new_bytes),
            partial: s.partial,
            job: s.job.clone().unwrap_or_default(),
        }
    }
}

/// Filters of the snapshot list.
#[derive(Deserialize, Default)]
pub struct SnapQuery {
    #[serde(default)]
    repository: Option<i64>,
    #[serde(default)]
    host: String,
    #[serde(default)]
    tag: String,
    #[serde(default)]
    cursor: Option<String>,
}

/// A repository in the filter's select.
pub struct RepoChoice {
    id: i64,
    name: String,
    selected: bool,
}

#[derive(Template)]
#[template(path = "snapshots.html")]
struct SnapshotsPage {
    frame: Frame,
    snapshots: Vec<SnapRow>,
    repositories: Vec<RepoChoice>,
    host: String,
    tag: String,
    next: Option<String>,
    filtered: bool,
    may_prune: bool,
}

/// `GET /snapshots`.
pub async fn list(State(st): State<AppState>, ctx: Ctx, Query(q): Query<SnapQuery>) -> Response {
    let build = async {
        let all = st.catalog.list_repositories().await?;
        let repos: HashMap<i64, String> = all.iter().map(|r| (r.id, r.name.clone())).collect();
        let filter = SnapshotFilter {
            repository: q.repository,
            host: Some(q.host.clone()).filter(|h| !h.is_empty()),
            tag: Some(q.tag.clone()).filter(|t| !t.is_empty()),
            limit: Some(100),
            cursor: q.cursor.clone(),
            within: None,
        };
        let page = list_snapshots(State(st.clone()), ctx.caller.clone(), crate::error::Query(filter)).await?.0;
        let mut visible = Vec::new();
        for r in all {
            if r.parent.is_none() && ctx.caller.repository_privs(&st, &r).await?.any_of(Privs::DATASTORE_AUDIT) {
                visible.push(RepoChoice { selected: q.repository == Some(r.id), id: r.id, name: r.name });
            }
        }
        let next = page.next_cursor.as_ref().map(|c| {
            let repository = q.repository.map(|r| r.to_string()).unwrap_or_default();
            crate::ui::next_page(
                "/snapshots",
                c,
                &[("repository", repository), ("host", q.host.clone()), ("tag", q.tag.clone())],
            )
        });
        ApiResult::Ok(SnapshotsPage {
            frame: ctx.frame("Snapshots"),
            snapshots: page.items.iter().map(|s| SnapRow::new(s, &repos, ctx.now)).collect(),
            repositories: visible,
            filtered: q.repository.is_some() || !q.host.is_empty() || !q.tag.is_empty(),
            may_prune: ctx.may_somewhere(Privs::DATASTORE_PRUNE),
            host: q.host.clone(),
            tag: q.tag.clone(),
            next,
        })
    };
    respond(build.await)
}

/// Which copy of a snapshot a page is about.
#[derive(Deserialize, Default)]
pub struct InRepository {
    #[serde(default)]
    repository: Option<i64>,
}

#[derive(Template)]
#[template(path = "snapshot.html")]
struct SnapshotPage {
    frame: Frame,
    snap: SnapRow,
    parent: String,
    may_read: bool,
    may_prune: bool,
    restore_roots: Vec<String>,
    root: Listing,
    browse_error: String,
}

/// The snapshot a page names, in a repository the caller may see (the one asked for, or the
/// first that holds it).
async fn locate(st: &AppState, ctx: &Ctx, id: &str, repository: Option<i64>) -> ApiResult<(SnapshotSummary, Privs)> {
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ApiError::bad_request(format!("{id:?} is not a snapshot id")));
    }
    for s in st.catalog.snapshot_locations(id).await? {
        if repository.is_some_and(|r| r != s.repository) {
            continue;
        }
        let repo = st.catalog.get_repository(s.repository).await?;
        let privs = ctx.caller.repository_privs(st, &repo).await?;
        if privs.any_of(Privs::DATASTORE_AUDIT) {
            return Ok((s, privs));
        }
    }
    Err(ApiError::not_found(format!("no snapshot {id} that you may see")))
}

/// `GET /snapshots/{id}`.
pub async fn show(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    Query(q): Query<InRepository>,
) -> Response {
    let build = async {
        let (s, privs) = locate(&st, &ctx, &id, q.repository).await?;
        let repos: HashMap<i64, String> =
            st.catalog.list_repositories().await?.into_iter().map(|r| (r.id, r.name)).collect();
        let may_read = privs.any_of(Privs::DATASTORE_READ);
        // An unreachable repository still leaves the catalog's facts to show.
        let (root, browse_error) = if may_read {
            match listing(&st, &ctx, &s.id, s.repository, "/", 0).await {
                Ok(l) => (l, String::new()),
                Err(e) => (Listing::default(), e.message),
            }
        } else {
            (Listing::default(), String::new())
        };
        ApiResult::Ok(SnapshotPage {
            frame: ctx.frame(format!("Snapshot {}", &s.id[..s.id.len().min(12)])),
            parent: s.parent.clone().unwrap_or_default(),
            snap: SnapRow::new(&s, &repos, ctx.now),
            may_read,
            may_prune: privs.any_of(Privs::DATASTORE_PRUNE),
            restore_roots: st.config.restore_roots.iter().map(|p| p.display().to_string()).collect(),
            root,
            browse_error,
        })
    };
    respond(build.await)
}

/// One entry of a directory listing.
pub struct EntryView {
    name: String,
    /// A folder's tar download.
    archive: String,
    path: String,
    is_dir: bool,
    is_file: bool,
    kind: String,
    size: String,
    mtime: String,
    link_target: String,
    /// URL of its children (directories) or its content (files).
    href: String,
}

/// A page of one directory.
#[derive(Default)]
pub struct Listing {
    entries: Vec<EntryView>,
    /// URL of the next page, when there is one.
    more: Option<String>,
    remaining: usize,
}

#[derive(Template)]
#[template(path = "tree_items.html")]
struct TreeItems {
    root: Listing,
}

/// Page `offset` of directory `path` of a snapshot, through the API's browse route (same
/// checks, same errors).
async fn listing(st: &AppState, ctx: &Ctx, id: &str, repository: i64, path: &str, offset: usize) -> ApiResult<Listing> {
    let params = BrowseParams { repository: Some(repository), path: Some(path.to_string()) };
    let all: Vec<TreeEntry> =
        browse_tree(State(st.clone()), ctx.caller.clone(), Path(id.to_string()), crate::error::Query(params)).await?.0;
    let total = all.len();
    let entries = all
        .into_iter()
        .skip(offset)
        .take(DIR_PAGE)
        .map(|e| {
            let is_dir = e.kind == "dir";
            let is_file = e.kind == "file";
            let name = e.path.rsplit('/').next().unwrap_or_default().to_string();
            let href = if is_dir {
                format!("/snapshots/{id}/browse?repository={repository}&path={}", url_encode(&e.path))
            } else {
                format!("/api/v1/snapshots/{id}/file?repository={repository}&path={}", url_encode(&e.path))
            };
            EntryView {
                archive: if is_dir {
                    format!("/api/v1/snapshots/{id}/archive?repository={repository}&path={}", url_encode(&e.path))
                } else {
                    String::new()
                },
                name,
                is_dir,
                is_file,
                size: if is_file { bytes(e.size as i64) } else { String::new() },
                mtime: e.mtime.chars().take(19).collect::<String>().replace('T', " "),
                link_target: e.link_target.unwrap_or_default(),
                kind: e.kind,
                path: e.path,
                href,
            }
        })
        .collect();
    let end = offset + DIR_PAGE;
    let more = (end < total)
        .then(|| format!("/snapshots/{id}/browse?repository={repository}&path={}&offset={end}", url_encode(path)));
    Ok(Listing { entries, more, remaining: total.saturating_sub(end) })
}

/// Where in a snapshot the browser is.
#[derive(Deserialize, Default)]
pub struct BrowseQuery {
    #[serde(default)]
    repository: Option<i64>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    offset: usize,
}

/// `GET /snapshots/{id}/browse`: a page of one directory as list items (a fragment the
/// browser inserts under the directory).
pub async fn browse(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    Query(q): Query<BrowseQuery>,
) -> Response {
    let build = async {
        let (s, _) = locate(&st, &ctx, &id, q.repository).await?;
        let path = q.path.clone().unwrap_or_else(|| "/".into());
        listing(&st, &ctx, &s.id, s.repository, &path, q.offset).await
    };
    match build.await {
        Ok(root) => render(&TreeItems { root }),
        Err(e) => e.into_response(),
    }
}

/// What to look for.
#[derive(Deserialize, Default)]
pub struct FindQuery {
    #[serde(default)]
    repository: Option<i64>,
    #[serde(default)]
    name: String,
}

/// A match as the page shows it.
pub struct FoundRow {
    snapshot: String,
    short: String,
    path: String,
    kind: String,
    size: String,
    href: String,
}

#[derive(Template)]
#[template(path = "find.html")]
struct FindPage {
    frame: Frame,
    repositories: Vec<RepoChoice>,
    name: String,
    rows: Vec<FoundRow>,
    searched: usize,
    truncated: bool,
    error: String,
}

/// `GET /snapshots/find`: a file-name search across a repository's snapshots.
pub async fn find(State(st): State<AppState>, ctx: Ctx, Query(q): Query<FindQuery>) -> Response {
    let build = async {
        let mut repositories = Vec::new();
        for r in st.catalog.list_repositories().await? {
            if ctx.caller.repository_privs(&st, &r).await?.any_of(Privs::DATASTORE_READ) {
                repositories.push(RepoChoice { selected: q.repository == Some(r.id), id: r.id, name: r.name });
            }
        }
        let mut page = FindPage {
            frame: ctx.frame("Find files"),
            repositories,
            name: q.name.clone(),
            rows: Vec::new(),
            searched: 0,
            truncated: false,
            error: String::new(),
        };
        if !q.name.trim().is_empty() {
            let params = crate::api::snapshot_ops::SearchParams {
                repository: q.repository,
                name: q.name.clone(),
                snapshots: None,
                limit: None,
            };
            match crate::api::snapshot_ops::search(State(st.clone()), ctx.caller.clone(), crate::error::Query(params))
                .await
            {
                Ok(r) => {
                    let r = r.0;
                    let repo = match q.repository {
                        Some(id) => id,
                        None => st.catalog.get_repository_by_name("default").await?.id,
                    };
                    page.searched = r.snapshots_searched;
                    page.truncated = r.truncated;
                    page.rows = r
                        .items
                        .into_iter()
                        .map(|h| {
                            let is_file = h.entry.kind == "file";
                            let href = if is_file {
                                format!(
                                    "/api/v1/snapshots/{}/file?repository={repo}&path={}",
                                    h.snapshot,
                                    url_encode(&h.entry.path)
                                )
                            } else {
                                format!("/snapshots/{}?repository={repo}", h.snapshot)
                            };
                            FoundRow {
                                short: h.snapshot.chars().take(12).collect(),
                                snapshot: h.snapshot,
                                size: if is_file { bytes(h.entry.size as i64) } else { String::new() },
                                path: h.entry.path,
                                kind: h.entry.kind,
                                href,
                            }
                        })
                        .collect();
                }
                Err(e) => page.error = e.message,
            }
        }
        ApiResult::Ok(page)
    };
    respond(build.await)
}

/// The other side of a comparison.
#[derive(Deserialize, Default)]
pub struct DiffQuery {
    #[serde(default)]
    repository: Option<i64>,
    #[serde(default)]
    with: String,
}

#[derive(Template)]
#[template(path = "diff.html")]
struct DiffPage {
    frame: Frame,
    from: String,
    to: String,
    repository: i64,
    changes: Vec<(String, String)>,
}

/// `GET /snapshots/{id}/diff?with=OLDER`: what changed from `with` to this snapshot.
pub async fn diff(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    Query(q): Query<DiffQuery>,
) -> Response {
    let build = async {
        let (s, _) = locate(&st, &ctx, &id, q.repository).await?;
        let params = crate::api::snapshots::DiffParams {
            repository: Some(s.repository),
            from: q.with.clone(),
            to: s.id.clone(),
        };
        let changes =
            crate::api::snapshots::diff_snapshots(State(st.clone()), ctx.caller.clone(), crate::error::Query(params))
                .await?
                .0
                .into_iter()
                .map(|c| (c.change, c.path))
                .collect();
        ApiResult::Ok(DiffPage {
            frame: ctx.frame(format!("Changes in {}", &s.id[..s.id.len().min(12)])),
            from: q.with.clone(),
            to: s.id.clone(),
            repository: s.repository,
            changes,
        })
    };
    respond(build.await)
}
