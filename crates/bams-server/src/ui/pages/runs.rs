//! Runs: the history with filters and pages, one run with its live log, the log as a file.

use askama::Template;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use bams_catalog::RunFilter;
use serde::Deserialize;

use super::{job_names, RunRow};
use crate::error::{ApiResult, Path};
use crate::policy::Privs;
use crate::state::AppState;
use crate::ui::{respond, Ctx, Frame};

/// Filters of the run list.
#[derive(Deserialize, Default)]
pub struct RunQuery {
    #[serde(default)]
    job: Option<i64>,
    #[serde(default)]
    status: String,
    #[serde(default)]
    cursor: Option<String>,
}

/// A job in the filter's select.
pub struct JobChoice {
    id: i64,
    name: String,
    selected: bool,
}

#[derive(Template)]
#[template(path = "runs.html")]
struct RunsPage {
    frame: Frame,
    runs: Vec<RunRow>,
    jobs: Vec<JobChoice>,
    status: String,
    statuses: &'static [&'static str],
    next: Option<String>,
    job_param: String,
}

const STATUSES: &[&str] = &["queued", "running", "succeeded", "failed", "cancelled", "interrupted"];

/// `GET /runs`.
pub async fn list(State(st): State<AppState>, ctx: Ctx, Query(q): Query<RunQuery>) -> Response {
    let build = async {
        let names = job_names(&st).await?;
        let filter = RunFilter {
            job: q.job,
            status: Some(q.status.clone()).filter(|s| !s.is_empty()),
            limit: Some(50),
            cursor: q.cursor.clone(),
        };
        let page = st.catalog.list_runs(&filter).await?;
        let mut jobs: Vec<JobChoice> = names
            .iter()
            .map(|(id, name)| JobChoice { id: *id, name: name.clone(), selected: q.job == Some(*id) })
            .collect();
        jobs.sort_by(|a, b| a.name.cmp(&b.name));
        let job_param = q.job.map(|j| j.to_string()).unwrap_or_default();
        let next = page
            .next_cursor
            .as_ref()
            .map(|c| crate::ui::next_page("/runs", c, &[("job", job_param.clone()), ("status", q.status.clone())]));
        ApiResult::Ok(RunsPage {
            frame: ctx.frame("Runs"),
            runs: page.items.iter().map(|r| RunRow::new(r, &names, ctx.now)).collect(),
            jobs,
            status: q.status.clone(),
            statuses: STATUSES,
            next,
            job_param,
        })
    };
    respond(build.await)
}

#[derive(Template)]
#[template(path = "run.html")]
struct RunPage {
    frame: Frame,
    run: RunRow,
    active: bool,
    log: String,
    server: String,
    agent: String,
    snapshot: String,
    scheduled: crate::ui::fmt::When,
    finished: crate::ui::fmt::When,
    errors: i64,
    rate: String,
    eta: String,
    may_run: bool,
}

/// `GET /runs/{id}`.
pub async fn show(State(st): State<AppState>, ctx: Ctx, Path(id): Path<i64>) -> Response {
    let build = async {
        let run = st.catalog.get_run(id).await?;
        let names = job_names(&st).await?;
        let active = matches!(run.status.as_str(), "queued" | "running");
        // A live run's log comes through the event stream (from its start); an ended one's
        // is in the page.
        let log = if active { String::new() } else { st.catalog.run_log(id).await? };
        let agent = match run.agent_id {
            Some(a) => st.catalog.get_agent(a).await.map(|a| a.name).unwrap_or_else(|_| format!("agent #{a}")),
            None => String::new(),
        };
        let expected = match run.job_id {
            Some(j) => st.catalog.last_successful_bytes(j).await?,
            None => None,
        };
        let (rate, eta) = crate::ui::fmt::rate_and_eta(&run, expected, ctx.now);
        ApiResult::Ok(RunPage {
            frame: ctx.frame(format!("Run #{id}")),
            active,
            log,
            server: run.server_id.clone().unwrap_or_default(),
            agent,
            snapshot: run.snapshot_id.clone().unwrap_or_default(),
            scheduled: crate::ui::fmt::When::maybe(run.scheduled_for, ctx.now),
            finished: crate::ui::fmt::When::maybe(run.finished_at, ctx.now),
            errors: run.errors,
            rate,
            eta: if active { eta } else { String::new() },
            may_run: ctx.may(Privs::JOBS_RUN, "/jobs"),
            run: RunRow::new(&run, &names, ctx.now),
        })
    };
    respond(build.await)
}

/// `GET /runs/{id}/log.txt`: the whole log as a file.
pub async fn log_text(State(st): State<AppState>, _ctx: Ctx, Path(id): Path<i64>) -> Response {
    let build = async {
        st.catalog.get_run(id).await?;
        ApiResult::Ok(st.catalog.run_log(id).await?)
    };
    match build.await {
        Ok(log) => {
            let mut r = log.into_response();
            let h = r.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
            if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"run-{id}.log\"")) {
                h.insert(header::CONTENT_DISPOSITION, v);
            }
            r
        }
        Err(e) => e.into_response(),
    }
}
