//! Jobs, schedules, runs and the dashboard.

use axum::extract::State;
use axum::http::StatusCode;
use bams_catalog::{Dashboard, Job, JobSpec, Level, NewRun, Page, Run, RunFilter, Schedule, ScheduleSpec};
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Json, Path, Query};
use crate::state::AppState;

fn validate_spec(st: &AppState, spec: &JobSpec) -> ApiResult<()> {
    bams_catalog::validate_name("job", &spec.name).map_err(|e| ApiError::from(e).at_field("name"))?;
    if !st.director.supports(spec.kind) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unsupported",
            format!("job type {} is not supported by this server version", spec.kind.as_str()),
        ));
    }
    use bams_catalog::JobKind;
    if spec.agent.is_some() && !matches!(spec.kind, JobKind::Backup | JobKind::Restore | JobKind::Verify) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unsupported",
            format!(
                "agents run backup, restore and verify jobs; a {} job runs on the server (\"agent\": null)",
                spec.kind.as_str()
            ),
        ));
    }
    bams_director::notify::JobNotify::from_options(&spec.options)
        .map_err(|e| ApiError::bad_request(e).at_field("options"))?;
    if let Some(p) = spec.options.get("priority") {
        if !p.as_i64().is_some_and(|p| bams_catalog::PRIORITY_RANGE.contains(&p)) {
            return Err(ApiError::bad_request(
                "options.priority must be an integer from -100 to 100 (higher runs first)",
            )
            .at_field("options"));
        }
    }
    let hooks = bams_director::agents::Hooks::from_options(&spec.options, &spec.paths)
        .map_err(|e| ApiError::bad_request(e).at_field("options"))?;
    if hooks != bams_director::agents::Hooks::default() && spec.agent.is_none() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unsupported",
            "options.hooks run on agents: set \"agent\"",
        ));
    }
    if spec.kind == JobKind::Verify {
        let mode = bams_director::VerifyMode::from_options(&spec.options).map_err(ApiError::bad_request)?;
        if spec.agent.is_some() && matches!(mode, bams_director::VerifyMode::ReadDataSubset(_)) {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unsupported",
                "an agent verifies by restoring and comparing ({\"mode\": \"restore\"}); re-hashing packs runs on the server",
            ));
        }
    }
    if spec.kind == JobKind::Restore {
        if spec.agent.is_none() {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unsupported",
                "a restore job runs on an agent: set \"agent\" (restores on the server host: POST /api/v1/snapshots/{id}/restore)",
            ));
        }
        bams_director::agents::RestoreSpec::from_options(&spec.options).map_err(ApiError::bad_request)?;
    }
    if let Some(r) = &spec.retention {
        let ret: bams_store::forget::Retention = serde_json::from_value(r.clone())
            .map_err(|e| ApiError::bad_request(format!("retention: {e}")).at_field("retention"))?;
        ret.to_policy().map_err(|e| ApiError::from(e).at_field("retention"))?;
    }
    if spec.kind == bams_catalog::JobKind::Copy {
        bams_director::copy_target(spec.repository, &spec.options).map_err(ApiError::bad_request)?;
    }
    if spec.pool.is_some() && matches!(spec.kind, JobKind::Restore) {
        return Err(ApiError::bad_request("a restore job reads a repository: give \"repository\", not \"pool\""));
    }
    if let Some(exec) = st.director.executor(spec.kind) {
        exec.validate(spec).map_err(ApiError::bad_request)?;
    }
    if let Some(cron) = &spec.schedule {
        bams_director::schedule::validate(cron, spec.timezone.as_deref().unwrap_or("UTC"))
            .map_err(|e| ApiError::bad_request(e).at_field("schedule"))?;
    }
    Ok(())
}

/// The job's agent must exist and not be revoked.
async fn check_agent(st: &AppState, spec: &JobSpec) -> ApiResult<()> {
    if let Some(id) = spec.agent {
        let a = st
            .catalog
            .get_agent(id)
            .await
            .map_err(|_| ApiError::bad_request(format!("agent {id} does not exist")).at_field("agent"))?;
        if a.status == bams_catalog::AgentStatus::Revoked {
            return Err(ApiError::bad_request(format!("agent {} is revoked", a.name)).at_field("agent"));
        }
    }
    Ok(())
}

/// The job's repository or pool, and a copy job's destination, must exist (404 otherwise,
/// as for every reference to a missing object).
async fn check_target(st: &AppState, spec: &JobSpec) -> ApiResult<()> {
    let (source, _) = st.catalog.job_target(spec).await?;
    if spec.kind == bams_catalog::JobKind::Copy {
        let target = match bams_director::copy_target(Some(source), &spec.options).map_err(ApiError::bad_request)? {
            bams_director::CopyTarget::Repository(r) => st.catalog.get_repository(r).await?.id,
            bams_director::CopyTarget::Pool(p) => st.catalog.find_pool(&p).await?.repository,
        };
        if target == source {
            return Err(ApiError::bad_request("a copy job's target must differ from its source repository"));
        }
    }
    Ok(())
}

/// When a schedule spec next falls due from now (400 for a bad cron or time zone).
fn next_due(spec: &ScheduleSpec) -> ApiResult<i64> {
    let tz = spec.timezone.as_deref().unwrap_or("UTC");
    bams_director::schedule::next_after(&spec.cron, tz, bams_catalog::now_ms()).map_err(ApiError::bad_request)
}

async fn add_schedule(st: &AppState, spec: &ScheduleSpec) -> ApiResult<Schedule> {
    let next = next_due(spec)?;
    let s = st.catalog.create_schedule(spec, Some(next)).await?;
    st.director.wake();
    Ok(s)
}

/// List jobs.
#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs", responses((status = 200, body = [Job])))]
pub async fn list_jobs(State(st): State<AppState>, _caller: Caller) -> ApiResult<Json<Vec<Job>>> {
    Ok(Json(st.catalog.list_jobs().await?))
}

/// Create a job (and its schedule when `schedule` is given).
#[utoipa::path(post, path = "/api/v1/jobs", tag = "jobs", request_body = JobSpec, responses((status = 201, body = Job)))]
pub async fn create_job(
    State(st): State<AppState>,
    _caller: Caller,
    Json(spec): Json<JobSpec>,
) -> ApiResult<(StatusCode, Json<Job>)> {
    validate_spec(&st, &spec)?;
    check_agent(&st, &spec).await?;
    check_target(&st, &spec).await?;
    let job = st.catalog.create_job(&spec).await.map_err(|e| {
        let e = ApiError::from(e);
        if e.status == StatusCode::CONFLICT {
            e.at_field("name")
        } else {
            e
        }
    })?;
    if let Some(cron) = &spec.schedule {
        let s = ScheduleSpec {
            job: job.id,
            cron: cron.clone(),
            timezone: spec.timezone.clone(),
            level: None,
            enabled: true,
        };
        if let Err(e) = add_schedule(&st, &s).await {
            let _ = st.catalog.delete_job(job.id).await;
            return Err(e);
        }
    }
    st.director.prepare_agent_repository(&job);
    Ok((StatusCode::CREATED, Json(job)))
}

/// One job.
#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "jobs", params(("id" = i64, Path)), responses((status = 200, body = Job)))]
pub async fn get_job(State(st): State<AppState>, _caller: Caller, Path(id): Path<i64>) -> ApiResult<Json<Job>> {
    Ok(Json(st.catalog.get_job(id).await?))
}

/// Replace a job's definition (schedules are managed under `/schedules`).
#[utoipa::path(put, path = "/api/v1/jobs/{id}", tag = "jobs", params(("id" = i64, Path)), request_body = JobSpec, responses((status = 200, body = Job)))]
pub async fn update_job(
    State(st): State<AppState>,
    _caller: Caller,
    Path(id): Path<i64>,
    Json(spec): Json<JobSpec>,
) -> ApiResult<Json<Job>> {
    validate_spec(&st, &spec)?;
    check_agent(&st, &spec).await?;
    if spec.schedule.is_some() {
        return Err(ApiError::bad_request("change schedules through /api/v1/schedules"));
    }
    check_target(&st, &spec).await?;
    let job = st.catalog.update_job(id, &spec).await?;
    st.director.prepare_agent_repository(&job);
    Ok(Json(job))
}

/// Delete a job and its schedules (run history stays).
#[utoipa::path(delete, path = "/api/v1/jobs/{id}", tag = "jobs", params(("id" = i64, Path)), responses((status = 204)))]
pub async fn delete_job(State(st): State<AppState>, _caller: Caller, Path(id): Path<i64>) -> ApiResult<StatusCode> {
    st.catalog.delete_job(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Options of a manual run.
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// Level override for a backup.
    pub level: Option<Level>,
}

/// A queued run.
#[derive(Serialize, utoipa::ToSchema)]
pub struct RunQueued {
    /// Run id; poll `GET /api/v1/runs/{id}`.
    pub run_id: i64,
}

/// Run a job now.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/run", tag = "jobs", params(("id" = i64, Path)), request_body(content = Option<RunRequest>), responses((status = 202, body = RunQueued)))]
pub async fn run_job(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<RunQueued>)> {
    let req: RunRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RunRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?
    };
    let run = st
        .catalog
        .queue_run(&NewRun { job_id: id, level: req.level, triggered_by: format!("manual:{}", caller.user.username) })
        .await?;
    st.director.wake();
    Ok((StatusCode::ACCEPTED, Json(RunQueued { run_id: run.id })))
}

/// Filter for schedules.
#[derive(Deserialize, utoipa::IntoParams)]
pub struct ScheduleFilter {
    /// Only schedules of this job.
    pub job: Option<i64>,
}

/// List schedules.
#[utoipa::path(get, path = "/api/v1/schedules", tag = "schedules", params(ScheduleFilter), responses((status = 200, body = [Schedule])))]
pub async fn list_schedules(
    State(st): State<AppState>,
    _caller: Caller,
    Query(f): Query<ScheduleFilter>,
) -> ApiResult<Json<Vec<Schedule>>> {
    Ok(Json(st.catalog.list_schedules(f.job).await?))
}

/// Add a schedule to a job (e.g. Full monthly, Incremental daily).
#[utoipa::path(post, path = "/api/v1/schedules", tag = "schedules", request_body = ScheduleSpec, responses((status = 201, body = Schedule)))]
pub async fn create_schedule(
    State(st): State<AppState>,
    _caller: Caller,
    Json(spec): Json<ScheduleSpec>,
) -> ApiResult<(StatusCode, Json<Schedule>)> {
    Ok((StatusCode::CREATED, Json(add_schedule(&st, &spec).await?)))
}

/// One schedule.
#[utoipa::path(get, path = "/api/v1/schedules/{id}", tag = "schedules", params(("id" = i64, Path)), responses((status = 200, body = Schedule)))]
pub async fn get_schedule(
    State(st): State<AppState>,
    _caller: Caller,
    Path(id): Path<i64>,
) -> ApiResult<Json<Schedule>> {
    Ok(Json(st.catalog.get_schedule(id).await?))
}

/// Replace a schedule (cron, time zone, level, enabled); its next run is recomputed from now.
#[utoipa::path(put, path = "/api/v1/schedules/{id}", tag = "schedules", params(("id" = i64, Path)), request_body = ScheduleSpec, responses((status = 200, body = Schedule)))]
pub async fn update_schedule(
    State(st): State<AppState>,
    _caller: Caller,
    Path(id): Path<i64>,
    Json(spec): Json<ScheduleSpec>,
) -> ApiResult<Json<Schedule>> {
    let next = next_due(&spec)?;
    let s = st.catalog.update_schedule(id, &spec, Some(next)).await?;
    st.director.wake();
    Ok(Json(s))
}

/// Delete a schedule.
#[utoipa::path(delete, path = "/api/v1/schedules/{id}", tag = "schedules", params(("id" = i64, Path)), responses((status = 204)))]
pub async fn delete_schedule(
    State(st): State<AppState>,
    _caller: Caller,
    Path(id): Path<i64>,
) -> ApiResult<StatusCode> {
    st.catalog.delete_schedule(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Run history, newest first.
#[utoipa::path(get, path = "/api/v1/runs", tag = "runs", params(RunFilter), responses((status = 200, body = Page<Run>)))]
pub async fn list_runs(
    State(st): State<AppState>,
    _caller: Caller,
    Query(f): Query<RunFilter>,
) -> ApiResult<Json<Page<Run>>> {
    Ok(Json(st.catalog.list_runs(&f).await?))
}

/// One run.
#[utoipa::path(get, path = "/api/v1/runs/{id}", tag = "runs", params(("id" = i64, Path)), responses((status = 200, body = Run)))]
pub async fn get_run(State(st): State<AppState>, _caller: Caller, Path(id): Path<i64>) -> ApiResult<Json<Run>> {
    Ok(Json(st.catalog.get_run(id).await?))
}

/// A run's log.
#[derive(Serialize, utoipa::ToSchema)]
pub struct RunLog {
    /// Run id.
    pub id: i64,
    /// Log text, one event per line.
    pub log: String,
}

/// A run's full log.
#[utoipa::path(get, path = "/api/v1/runs/{id}/log", tag = "runs", params(("id" = i64, Path)), responses((status = 200, body = RunLog)))]
pub async fn run_log(State(st): State<AppState>, _caller: Caller, Path(id): Path<i64>) -> ApiResult<Json<RunLog>> {
    Ok(Json(RunLog { id, log: st.catalog.run_log(id).await? }))
}

/// Cancel a queued or running run.
#[utoipa::path(post, path = "/api/v1/runs/{id}/cancel", tag = "runs", params(("id" = i64, Path)), responses((status = 200, body = Run), (status = 409, body = crate::error::ErrorBody)))]
pub async fn cancel_run(State(st): State<AppState>, _caller: Caller, Path(id): Path<i64>) -> ApiResult<Json<Run>> {
    let run = st.catalog.request_cancel(id).await?;
    st.director.wake();
    Ok(Json(run))
}

/// The dashboard: counts, recent runs and failures, and the appliance's health.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DashboardView {
    /// Counts, recent runs and failures.
    #[serde(flatten)]
    pub runs: Dashboard,
    /// The health of `GET /api/v1/system` (at most a minute old): its overall status and the
    /// checks that are not ok. Absent for callers without `Sys.Audit`.
    pub health: Option<Health>,
}

/// The overall status and what needs attention.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// The worst status.
    pub status: crate::system::Status,
    /// Checks that warn or fail.
    pub problems: Vec<crate::system::Check>,
}

/// Counts, recent runs and failures, and the appliance's health.
#[utoipa::path(get, path = "/api/v1/dashboard", tag = "dashboard", responses((status = 200, body = DashboardView)))]
pub async fn dashboard(State(st): State<AppState>, caller: Caller) -> ApiResult<Json<DashboardView>> {
    let runs = st.catalog.dashboard().await?;
    let health = if caller.privs_at("/system").any_of(crate::policy::Privs::SYS_AUDIT) {
        let r = crate::api::diag::system_report(&st, std::time::Duration::from_secs(60)).await;
        let problems = r.checks.into_iter().filter(|c| c.status != crate::system::Status::Ok).collect();
        Some(Health { status: r.status, problems })
    } else {
        None
    };
    Ok(Json(DashboardView { runs, health }))
}

/// A cron expression to preview.
#[derive(Deserialize, utoipa::IntoParams)]
pub struct PreviewParams {
    /// Cron expression (5 or 6 fields).
    pub cron: String,
    /// IANA time zone (default UTC).
    pub timezone: Option<String>,
    /// How many due times (default 5, at most 50).
    pub count: Option<usize>,
}

/// When a schedule would fire.
#[derive(Serialize, utoipa::ToSchema)]
pub struct SchedulePreview {
    /// The next due times (RFC 3339).
    pub next: Vec<String>,
}

/// The next due times of a cron expression, as the scheduler computes them (the schedule
/// editor shows them while one types).
#[utoipa::path(get, path = "/api/v1/schedules/preview", tag = "jobs", params(PreviewParams), responses((status = 200, body = SchedulePreview), (status = 400, body = crate::error::ErrorBody)))]
pub async fn preview_schedule(_caller: Caller, Query(p): Query<PreviewParams>) -> ApiResult<Json<SchedulePreview>> {
    let tz = p.timezone.as_deref().filter(|t| !t.is_empty()).unwrap_or("UTC");
    bams_director::schedule::validate(&p.cron, tz).map_err(|e| ApiError::bad_request(e).at_field("cron"))?;
    let times = bams_director::schedule::upcoming(&p.cron, tz, bams_catalog::now_ms(), p.count.unwrap_or(5).min(50));
    Ok(Json(SchedulePreview { next: times.into_iter().map(bams_catalog::time_ms::rfc3339).collect() }))
}
