//! Repositories and pools: where backups go, their limits, and their usage measured on
//! request (reading a repository's index takes longer than a page may).

use std::collections::HashMap;

use askama::Template;
use axum::extract::State;
use axum::response::Response;

use crate::error::ApiResult;
use crate::policy::Privs;
use crate::state::AppState;
use crate::ui::fmt::{bytes, When};
use crate::ui::{respond, Ctx, Frame};

/// A repository row.
pub struct RepoRow {
    id: i64,
    name: String,
    url: String,
    agents: usize,
    created: When,
    pool: String,
    /// The caller may unregister it.
    may_modify: bool,
    /// The caller may reread its snapshot list (a backup writer's right).
    may_sync: bool,
    /// Check, prune, verify, copy and forget jobs on it: (id, name, type, last status).
    upkeep: Vec<(i64, String, &'static str, String)>,
}

/// A pool row.
pub struct PoolRow {
    id: i64,
    repository_id: i64,
    keep: Vec<(&'static str, String)>,
    max_bytes_raw: String,
    may_modify: bool,
    name: String,
    repository: String,
    retention: String,
    max_bytes: String,
    max_snapshots: String,
    jobs: i64,
    snapshots: i64,
    shared_dedup: bool,
    description: String,
}

#[derive(Template)]
#[template(path = "repositories.html")]
struct RepositoriesPage {
    frame: Frame,
    may_add_repository: bool,
    may_add_pool: bool,
    keep_labels: &'static [(&'static str, &'static str)],
    may_run: bool,
    may_create: bool,
    repositories: Vec<RepoRow>,
    pools: Vec<PoolRow>,
}

/// The keep rules a pool's form offers, with their labels.
const KEEP: &[(&str, &str)] = &[
    ("keep_last", "Last"),
    ("keep_daily", "Daily"),
    ("keep_weekly", "Weekly"),
    ("keep_monthly", "Monthly"),
    ("keep_yearly", "Yearly"),
];

/// `GET /repositories`.
pub async fn list(State(st): State<AppState>, ctx: Ctx) -> Response {
    let build = async {
        let all = st.catalog.list_repositories().await?;
        let pools = st.catalog.list_pools().await?;
        let pool_of: HashMap<i64, String> = pools.iter().map(|p| (p.repository, p.name.clone())).collect();
        let jobs = st.catalog.list_jobs().await?;
        let activity: HashMap<i64, bams_catalog::JobActivity> =
            st.catalog.job_activity().await?.into_iter().map(|a| (a.job_id, a)).collect();
        let mut repositories = Vec::new();
        let mut names = HashMap::new();
        for r in &all {
            let privs = ctx.caller.repository_privs(&st, r).await?;
            if r.parent.is_some() || !privs.any_of(Privs::DATASTORE_AUDIT) {
                continue;
            }
            names.insert(r.id, r.name.clone());
            repositories.push(RepoRow {
                id: r.id,
                name: r.name.clone(),
                url: r.url.clone(),
                agents: all.iter().filter(|c| c.parent == Some(r.id)).count(),
                created: When::at(r.created_at, ctx.now),
                pool: pool_of.get(&r.id).cloned().unwrap_or_default(),
                may_modify: privs.any_of(Privs::DATASTORE_MODIFY),
                may_sync: privs.any_of(Privs::DATASTORE_BACKUP),
                upkeep: jobs
                    .iter()
                    .filter(|j| {
                        j.repository == r.id
                            && j.kind != bams_catalog::JobKind::Backup
                            && j.kind != bams_catalog::JobKind::Restore
                    })
                    .map(|j| {
                        let last = activity.get(&j.id).and_then(|a| a.last_status.clone()).unwrap_or_default();
                        (j.id, j.name.clone(), j.kind.as_str(), last)
                    })
                    .collect(),
            });
        }
        let mut rows = Vec::new();
        for p in &pools {
            let privs = ctx.caller.pool_privs(&st, p).await?;
            if !privs.any_of(Privs::DATASTORE_AUDIT) {
                continue;
            }
            let kept = |k: &str| {
                p.retention
                    .as_ref()
                    .and_then(|r| r.get(k))
                    .and_then(serde_json::Value::as_i64)
                    .map(|v| v.to_string())
                    .unwrap_or_default()
            };
            rows.push(PoolRow {
                id: p.id,
                repository_id: p.repository,
                keep: KEEP.iter().map(|(k, _)| (*k, kept(k))).collect(),
                max_bytes_raw: p.max_bytes.map(|b| b.to_string()).unwrap_or_default(),
                may_modify: privs.any_of(Privs::DATASTORE_MODIFY),
                name: p.name.clone(),
                repository: names.get(&p.repository).cloned().unwrap_or_else(|| format!("#{}", p.repository)),
                retention: p.retention.as_ref().map(|r| r.to_string()).unwrap_or_default(),
                max_bytes: p.max_bytes.map(bytes).unwrap_or_default(),
                max_snapshots: p.max_snapshots.map(|n| n.to_string()).unwrap_or_default(),
                jobs: p.jobs,
                snapshots: p.snapshots,
                shared_dedup: p.shared_dedup,
                description: p.description.clone(),
            });
        }
        ApiResult::Ok(RepositoriesPage {
            frame: ctx.frame("Repositories & pools"),
            may_add_repository: ctx.may(Privs::DATASTORE_MODIFY, "/repositories"),
            may_add_pool: ctx.may(Privs::DATASTORE_MODIFY, "/pools"),
            keep_labels: KEEP,
            may_run: ctx.may(Privs::JOBS_RUN, "/jobs"),
            may_create: ctx.may(Privs::JOBS_MODIFY, "/jobs"),
            repositories,
            pools: rows,
        })
    };
    respond(build.await)
}
