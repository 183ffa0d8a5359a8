//! The pages, one module per screen. Each handler gathers what its screen shows through the
//! catalog and director (with the same per-object checks as the API's GET routes) and fills a
//! template; the frame comes from [`super::Ctx::frame`].

pub mod admin;
pub mod agents;
pub mod dashboard;
pub mod images;
pub mod jobs;
pub mod logs;
pub mod repositories;
pub mod runs;
pub mod snapshots;
pub mod storage;

use askama::Template;
use axum::response::Response;

use super::{assets, render};

/// An error, as a whole page.
#[derive(Template)]
#[template(path = "error.html")]
pub struct ErrorPage {
    /// Heading.
    pub title: String,
    /// What went wrong.
    pub message: String,
    /// Stylesheet URL.
    pub css: String,
    /// Icon URL.
    pub favicon: String,
}

/// The login form.
#[derive(Template)]
#[template(path = "login.html")]
pub struct LoginPage {
    css: String,
    js: String,
    favicon: String,
}

/// `GET /login`.
pub async fn login() -> Response {
    render(&LoginPage { css: assets::url("bams.css"), js: assets::url("bams.js"), favicon: assets::url("favicon.svg") })
}

/// A run as the tables show it.
pub struct RunRow {
    /// Id.
    pub id: i64,
    /// Job name (or `#id` when the job is gone).
    pub job: String,
    /// Job id, when it still exists.
    pub job_id: Option<i64>,
    /// Type.
    pub kind: &'static str,
    /// Level of a backup.
    pub level: String,
    /// Status.
    pub status: &'static str,
    /// Who or what started it.
    pub triggered_by: String,
    /// Queued.
    pub queued: super::fmt::When,
    /// Started.
    pub started: super::fmt::When,
    /// How long it ran (or runs).
    pub duration: String,
    /// Files.
    pub files: i64,
    /// Bytes read.
    pub bytes: String,
    /// Bytes newly stored.
    pub new_bytes: String,
    /// Outcome.
    pub message: String,
}

impl RunRow {
    /// A row for `run`; `jobs` names jobs by id.
    pub fn new(run: &bams_catalog::Run, jobs: &std::collections::HashMap<i64, String>, now: i64) -> Self {
        use super::fmt::{bytes, duration_ms, When};
        let duration = match (run.started_at, run.finished_at) {
            (Some(s), Some(f)) => duration_ms(f - s),
            (Some(s), None) => duration_ms(now - s),
            _ => String::new(),
        };
        Self {
            id: run.id,
            job: run
                .job_id
                .map(|j| jobs.get(&j).cloned().unwrap_or_else(|| format!("job #{j}")))
                .unwrap_or_else(|| "(deleted job)".into()),
            job_id: run.job_id.filter(|j| jobs.contains_key(j)),
            kind: run.kind.as_str(),
            level: run.level.map(|l| l.as_str().to_string()).unwrap_or_default(),
            status: run.status.as_str(),
            triggered_by: run.triggered_by.clone(),
            queued: When::at(run.queued_at, now),
            started: When::maybe(run.started_at, now),
            duration,
            files: run.files,
            bytes: bytes(run.bytes),
            new_bytes: bytes(run.new_bytes),
            message: run.message.clone().unwrap_or_default(),
        }
    }
}

/// Job names by id, for naming runs.
pub async fn job_names(st: &crate::state::AppState) -> crate::error::ApiResult<std::collections::HashMap<i64, String>> {
    Ok(st.catalog.list_jobs().await?.into_iter().map(|j| (j.id, j.name)).collect())
}
