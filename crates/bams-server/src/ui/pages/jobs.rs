//! Jobs: the list, one job with its schedules and runs, and the form that creates or edits
//! one (it sends the API's `JobSpec`; the API's validation messages appear at their field).

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use bams_catalog::{Job, JobKind, RunFilter};
use serde::Deserialize;

use super::RunRow;
use crate::error::{ApiResult, Path};
use crate::policy::Privs;
use crate::state::AppState;
use crate::ui::fmt::When;
use crate::ui::{render, respond, Ctx, Frame};

/// A job as the list shows it.
pub struct JobRow {
    id: i64,
    name: String,
    kind: &'static str,
    target: String,
    agent: String,
    schedules: String,
    enabled: bool,
    last_status: String,
}

/// Names of repositories, pools and agents by id, for showing jobs.
pub struct Names {
    repositories: HashMap<i64, String>,
    pools: HashMap<i64, String>,
    agents: HashMap<i64, String>,
}

impl Names {
    /// Read them from the catalog.
    pub async fn load(st: &AppState) -> ApiResult<Self> {
        Ok(Self {
            repositories: st.catalog.list_repositories().await?.into_iter().map(|r| (r.id, r.name)).collect(),
            pools: st.catalog.list_pools().await?.into_iter().map(|p| (p.id, p.name)).collect(),
            agents: st.catalog.list_agents().await?.into_iter().map(|a| (a.id, a.name)).collect(),
        })
    }

    fn target(&self, job: &Job) -> String {
        match job.pool.and_then(|p| self.pools.get(&p)) {
            Some(p) => format!("pool {p}"),
            None => self.repositories.get(&job.repository).cloned().unwrap_or_else(|| format!("#{}", job.repository)),
        }
    }

    fn agent(&self, job: &Job) -> String {
        job.agent.map_or_else(
            || "this server".to_string(),
            |a| self.agents.get(&a).cloned().unwrap_or_else(|| format!("agent #{a}")),
        )
    }
}

/// Filters of the job list.
#[derive(Deserialize, Default)]
pub struct JobQuery {
    /// Part of the name.
    #[serde(default)]
    q: String,
    /// Job type.
    #[serde(default, rename = "type")]
    kind: String,
}

#[derive(Template)]
#[template(path = "jobs.html")]
struct JobsPage {
    frame: Frame,
    jobs: Vec<JobRow>,
    q: String,
    kind: String,
    kinds: &'static [&'static str],
    may_run: bool,
    may_modify: bool,
}

const KINDS: &[&str] = &["backup", "restore", "verify", "copy", "prune", "check", "forget", "tape"];

/// `GET /jobs`.
pub async fn list(State(st): State<AppState>, ctx: Ctx, Query(q): Query<JobQuery>) -> Response {
    let build = async {
        let names = Names::load(&st).await?;
        let schedules = st.catalog.list_schedules(None).await?;
        let activity: HashMap<i64, bams_catalog::JobActivity> =
            st.catalog.job_activity().await?.into_iter().map(|a| (a.job_id, a)).collect();
        let needle = q.q.to_lowercase();
        let jobs = st
            .catalog
            .list_jobs()
            .await?
            .into_iter()
            .filter(|j| needle.is_empty() || j.name.to_lowercase().contains(&needle))
            .filter(|j| q.kind.is_empty() || j.kind.as_str() == q.kind)
            .map(|j| JobRow {
                id: j.id,
                target: names.target(&j),
                agent: names.agent(&j),
                schedules: schedules
                    .iter()
                    .filter(|s| s.job == j.id)
                    .map(|s| s.cron.clone())
                    .collect::<Vec<_>>()
                    .join(", "),
                enabled: j.enabled,
                last_status: activity.get(&j.id).and_then(|a| a.last_status.clone()).unwrap_or_default(),
                kind: j.kind.as_str(),
                name: j.name,
            })
            .collect();
        ApiResult::Ok(JobsPage {
            frame: ctx.frame("Jobs"),
            jobs,
            q: q.q.clone(),
            kind: q.kind.clone(),
            kinds: KINDS,
            may_run: ctx.may(Privs::JOBS_RUN, "/jobs"),
            may_modify: ctx.may(Privs::JOBS_MODIFY, "/jobs"),
        })
    };
    respond(build.await)
}

/// A schedule and its next due times.
pub struct ScheduleView {
    id: i64,
    cron: String,
    timezone: String,
    level: String,
    enabled: bool,
    upcoming: Vec<When>,
    last: When,
    /// The `ScheduleSpec` that flips `enabled` (what the toggle sends).
    toggle_body: String,
}

#[derive(Template)]
#[template(path = "job.html")]
struct JobPage {
    frame: Frame,
    job: Job,
    target: String,
    agent: String,
    retention: String,
    options: String,
    schedules: Vec<ScheduleView>,
    runs: Vec<RunRow>,
    toggle_body: String,
    may_run: bool,
    may_modify: bool,
    is_backup: bool,
}

/// `GET /jobs/{id}`.
pub async fn show(State(st): State<AppState>, ctx: Ctx, Path(id): Path<i64>) -> Response {
    let build = async {
        let job = st.catalog.get_job(id).await?;
        let names = Names::load(&st).await?;
        let schedules = st
            .catalog
            .list_schedules(Some(id))
            .await?
            .into_iter()
            .map(|s| ScheduleView {
                toggle_body: serde_json::json!({
                    "job": s.job, "cron": s.cron, "timezone": s.timezone,
                    "level": s.level.map(|l| l.as_str()), "enabled": !s.enabled,
                })
                .to_string(),
                upcoming: bams_director::schedule::upcoming(&s.cron, &s.timezone, ctx.now, 5)
                    .into_iter()
                    .map(|t| When::at(t, ctx.now))
                    .collect(),
                last: When::maybe(s.last_run_at, ctx.now),
                id: s.id,
                cron: s.cron,
                timezone: s.timezone,
                level: s.level.map(|l| l.as_str().to_string()).unwrap_or_default(),
                enabled: s.enabled,
            })
            .collect();
        let jobs = HashMap::from([(job.id, job.name.clone())]);
        let runs = st
            .catalog
            .list_runs(&RunFilter { job: Some(id), limit: Some(20), ..Default::default() })
            .await?
            .items
            .iter()
            .map(|r| RunRow::new(r, &jobs, ctx.now))
            .collect();
        let mut spec = spec_of(&job);
        spec["enabled"] = serde_json::Value::Bool(!job.enabled);
        ApiResult::Ok(JobPage {
            frame: ctx.frame(format!("Job {}", job.name)),
            target: names.target(&job),
            agent: names.agent(&job),
            retention: job.retention.as_ref().map(|r| r.to_string()).unwrap_or_default(),
            options: if job.options.is_empty() {
                String::new()
            } else {
                serde_json::to_string_pretty(&job.options).unwrap_or_default()
            },
            schedules,
            runs,
            toggle_body: spec.to_string(),
            may_run: ctx.may(Privs::JOBS_RUN, "/jobs"),
            may_modify: ctx.may(Privs::JOBS_MODIFY, "/jobs"),
            is_backup: job.kind == JobKind::Backup,
            job,
        })
    };
    respond(build.await)
}

/// The `JobSpec` that recreates `job` (what PUT takes).
fn spec_of(job: &Job) -> serde_json::Value {
    let mut v = serde_json::json!({
        "name": job.name,
        "type": job.kind.as_str(),
        "agent": job.agent,
        "paths": job.paths,
        "excludes": job.excludes,
        "level": job.level.as_str(),
        "retention": job.retention,
        "options": job.options,
        "enabled": job.enabled,
    });
    match job.pool {
        Some(p) => v["pool"] = p.into(),
        None => v["repository"] = job.repository.into(),
    }
    v
}

/// A choice in a select.
pub struct Choice {
    value: String,
    label: String,
    selected: bool,
}

#[derive(Template)]
#[template(path = "job_form.html")]
struct JobForm {
    frame: Frame,
    /// `POST /api/v1/jobs` or `PUT /api/v1/jobs/{id}`.
    api: String,
    then: String,
    editing: bool,
    name: String,
    kinds: Vec<Choice>,
    agents: Vec<Choice>,
    targets: Vec<Choice>,
    levels: Vec<Choice>,
    paths: String,
    excludes: String,
    keep: Vec<(&'static str, &'static str, String)>,
    options: String,
    enabled: bool,
}

fn choices(items: impl IntoIterator<Item = (String, String)>, selected: &str) -> Vec<Choice> {
    items.into_iter().map(|(value, label)| Choice { selected: value == selected, value, label }).collect()
}

async fn form(st: &AppState, ctx: &Ctx, job: Option<&Job>) -> ApiResult<JobForm> {
    let agents = st.catalog.list_agents().await?;
    let repos = st.catalog.list_repositories().await?;
    let pools = st.catalog.list_pools().await?;
    let kind = job.map_or("backup", |j| j.kind.as_str());
    let agent = job.and_then(|j| j.agent).map(|a| a.to_string()).unwrap_or_default();
    let target = match job {
        Some(j) => match j.pool {
            Some(p) => format!("pool:{p}"),
            None => format!("repository:{}", j.repository),
        },
        None => repos.iter().find(|r| r.name == "default").map(|r| format!("repository:{}", r.id)).unwrap_or_default(),
    };
    let mut targets: Vec<(String, String)> = Vec::new();
    for p in &pools {
        targets.push((format!("pool:{}", p.id), format!("pool {}", p.name)));
    }
    for r in repos.iter().filter(|r| r.parent.is_none()) {
        targets.push((format!("repository:{}", r.id), format!("repository {}", r.name)));
    }
    let retention = job.and_then(|j| j.retention.clone()).unwrap_or_default();
    let keep = [
        ("keep_last", "Last"),
        ("keep_hourly", "Hourly"),
        ("keep_daily", "Daily"),
        ("keep_weekly", "Weekly"),
        ("keep_monthly", "Monthly"),
        ("keep_yearly", "Yearly"),
    ]
    .into_iter()
    .map(|(k, label)| (k, label, retention.get(k).and_then(|v| v.as_i64()).map(|v| v.to_string()).unwrap_or_default()))
    .collect();
    let level = job.map_or("incremental", |j| j.level.as_str());
    Ok(JobForm {
        frame: ctx.frame(match job {
            Some(j) => format!("Edit job {}", j.name),
            None => "New job".to_string(),
        }),
        api: match job {
            Some(j) => format!("PUT /api/v1/jobs/{}", j.id),
            None => "POST /api/v1/jobs".into(),
        },
        then: "go:/jobs/{id}".into(),
        editing: job.is_some(),
        name: job.map(|j| j.name.clone()).unwrap_or_default(),
        kinds: choices(KINDS.iter().map(|k| (k.to_string(), k.to_string())), kind),
        agents: choices(
            std::iter::once((String::new(), "this server".to_string())).chain(
                agents
                    .iter()
                    .filter(|a| a.status != bams_catalog::AgentStatus::Revoked)
                    .map(|a| (a.id.to_string(), a.name.clone())),
            ),
            &agent,
        ),
        targets: choices(targets, &target),
        levels: choices(["full", "incremental", "differential"].iter().map(|l| (l.to_string(), l.to_string())), level),
        paths: job.map(|j| j.paths.join("\n")).unwrap_or_default(),
        excludes: job.map(|j| j.excludes.join("\n")).unwrap_or_default(),
        keep,
        options: job
            .filter(|j| !j.options.is_empty())
            .map(|j| serde_json::to_string_pretty(&j.options).unwrap_or_default())
            .unwrap_or_default(),
        enabled: job.is_none_or(|j| j.enabled),
    })
}

/// A new job prefilled from a snapshot page: a restore of that snapshot.
#[derive(Deserialize, Default)]
pub struct NewQuery {
    /// Snapshot to restore.
    #[serde(default)]
    restore: Option<String>,
    /// Its repository (or, alone, the repository a maintenance job works on).
    #[serde(default)]
    repository: Option<i64>,
    /// The job type to start with.
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

/// `GET /jobs/new`.
pub async fn new(State(st): State<AppState>, ctx: Ctx, Query(q): Query<NewQuery>) -> Response {
    match form(&st, &ctx, None).await {
        Ok(mut p) => {
            if let Some(kind) = q.kind.as_deref().filter(|k| KINDS.contains(k)) {
                p.kinds = choices(KINDS.iter().map(|k| (k.to_string(), k.to_string())), kind);
                p.name =
                    match q.repository.and_then(|r| p.targets.iter().find(|c| c.value == format!("repository:{r}"))) {
                        Some(c) => format!("{kind}-{}", c.label.trim_start_matches("repository ")),
                        None => kind.to_string(),
                    };
            }
            if let Some(r) = q.repository {
                let target = format!("repository:{r}");
                for c in &mut p.targets {
                    c.selected = c.value == target;
                }
            }
            if let Some(snap) = q.restore.filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_hexdigit())) {
                let kind = "restore";
                p.kinds = choices(KINDS.iter().map(|k| (k.to_string(), k.to_string())), kind);
                p.name = format!("restore-{}", &snap[..snap.len().min(8)]);
                p.options = serde_json::to_string_pretty(&serde_json::json!({
                    "snapshot": snap,
                    "target": "/var/tmp/bams-restore",
                    "include": [],
                    "verify": true
                }))
                .unwrap_or_default();
            }
            render(&p)
        }
        Err(e) => e.into_response(),
    }
}

/// `GET /jobs/{id}/edit`.
pub async fn edit(State(st): State<AppState>, ctx: Ctx, Path(id): Path<i64>) -> Response {
    let build = async {
        let job = st.catalog.get_job(id).await?;
        form(&st, &ctx, Some(&job)).await
    };
    respond(build.await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_shown_as_text() {
        let page = JobsPage {
            frame: crate::ui::tests::frame(),
            jobs: vec![JobRow {
                id: 1,
                name: "<script>alert('job')</script>".into(),
                kind: "backup",
                target: "<img src=x onerror=alert(1)>".into(),
                agent: "a\" onmouseover=\"alert(1)".into(),
                schedules: "0 2 * * *".into(),
                enabled: true,
                last_status: "failed\"><script>".into(),
            }],
            q: "\"><script>alert(2)</script>".into(),
            kind: String::new(),
            kinds: KINDS,
            may_run: true,
            may_modify: true,
        };
        let html = page.render().expect("render");
        for raw in ["<script>alert", "<img src=x", "\" onmouseover=", "\"><script>"] {
            assert!(!html.contains(raw), "{raw} came through unescaped");
        }
        assert!(html.contains("&#60;script&#62;alert(&#39;job&#39;)&#60;/script&#62;"));
        assert!(html.contains("&#60;img src=x onerror=alert(1)&#62;"));
    }
}
