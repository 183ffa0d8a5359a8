//! The dashboard: what an operator checks first each morning. Each section appears only for
//! a caller who may see its data.

use std::collections::HashMap;

use askama::Template;
use axum::extract::State;
use axum::response::Response;
use bams_catalog::{RunFilter, RunStatus};

use super::RunRow;
use crate::policy::Privs;
use crate::state::AppState;
use crate::ui::fmt::{bytes, When};
use crate::ui::{respond, Ctx, Frame};

/// One job's freshness.
pub struct Freshness {
    id: i64,
    name: String,
    kind: &'static str,
    last_success: When,
    last_status: String,
    failures: i64,
    next: When,
    /// `running`, `failed`, `overdue`, `ok`, `never`, `disabled`.
    state: &'static str,
}

/// A running run with its progress.
pub struct Active {
    row: RunRow,
    rate: String,
    eta: String,
}

/// A repository's room and when it runs out at its recent pace.
pub struct CapacityRow {
    name: String,
    location: String,
    meter: &'static str,
    used_text: String,
    percent: u64,
    per_day: String,
    full_by: When,
    note: String,
}

/// A problem the system checks found.
pub struct Problem {
    status: String,
    name: String,
    message: String,
}

#[derive(Template)]
#[template(path = "dashboard.html")]
struct DashboardPage {
    frame: Frame,
    counts: Option<bams_catalog::Dashboard>,
    new_bytes_24h: String,
    freshness: Vec<Freshness>,
    active: Vec<Active>,
    failures: Vec<RunRow>,
    health: Option<(String, Vec<Problem>)>,
    may_create: bool,
    capacity: Vec<CapacityRow>,
}

/// `GET /dashboard`.
pub async fn page(State(st): State<AppState>, ctx: Ctx) -> Response {
    respond(build(&st, &ctx).await)
}

async fn build(st: &AppState, ctx: &Ctx) -> crate::error::ApiResult<DashboardPage> {
    let now = ctx.now;
    let jobs_visible = ctx.may(Privs::JOBS_AUDIT, "/jobs");
    let (mut counts, mut freshness, mut active, mut failures) = (None, Vec::new(), Vec::new(), Vec::new());
    if jobs_visible {
        let d = st.catalog.dashboard().await?;
        let jobs = st.catalog.list_jobs().await?;
        let names: HashMap<i64, String> = jobs.iter().map(|j| (j.id, j.name.clone())).collect();
        let activity: HashMap<i64, bams_catalog::JobActivity> =
            st.catalog.job_activity().await?.into_iter().map(|a| (a.job_id, a)).collect();
        let schedules = st.catalog.list_schedules(None).await?;
        for job in &jobs {
            let a = activity.get(&job.id);
            let mine: Vec<&bams_catalog::Schedule> =
                schedules.iter().filter(|s| s.job == job.id && s.enabled).collect();
            let next = mine.iter().filter_map(|s| s.next_run_at).min();
            let last_fired = mine.iter().filter_map(|s| s.last_run_at).max();
            let last_success = a.and_then(|a| a.last_success_at);
            // Overdue: a schedule fired (or should have, an hour ago) and nothing has
            // succeeded since.
            let due_since = match (last_fired, next) {
                (_, Some(n)) if n < now - 3_600_000 => Some(n),
                (Some(f), _) if f < now - 3_600_000 => Some(f),
                _ => None,
            };
            let overdue = due_since.is_some_and(|d| last_success.is_none_or(|s| s < d));
            let state = if !job.enabled {
                "disabled"
            } else if a.is_some_and(|a| a.active > 0) {
                "running"
            } else if a.and_then(|a| a.last_status.as_deref()).is_some_and(|s| s == "failed" || s == "interrupted") {
                "failed"
            } else if overdue {
                "overdue"
            } else if last_success.is_none() {
                "never"
            } else {
                "ok"
            };
            freshness.push(Freshness {
                id: job.id,
                name: job.name.clone(),
                kind: job.kind.as_str(),
                last_success: When::maybe(last_success, now),
                last_status: a.and_then(|a| a.last_status.clone()).unwrap_or_default(),
                failures: a.map_or(0, |a| a.failures_24h),
                next: When::maybe(next, now),
                state,
            });
        }
        // Problems first: failed, overdue, then the rest by name.
        let rank = |s: &str| match s {
            "failed" => 0,
            "overdue" => 1,
            "running" => 2,
            _ => 3,
        };
        freshness.sort_by(|a, b| rank(a.state).cmp(&rank(b.state)).then_with(|| a.name.cmp(&b.name)));
        let running = st
            .catalog
            .list_runs(&RunFilter {
                status: Some(RunStatus::Running.as_str().into()),
                limit: Some(50),
                ..Default::default()
            })
            .await?;
        for run in &running.items {
            let expected = match run.job_id {
                Some(j) => st.catalog.last_successful_bytes(j).await?,
                None => None,
            };
            let (rate, eta) = crate::ui::fmt::rate_and_eta(run, expected, now);
            active.push(Active { row: RunRow::new(run, &names, now), rate, eta });
        }
        failures = d.last_failures.iter().map(|r| RunRow::new(r, &names, now)).collect();
        counts = Some(d);
    }
    let health = if ctx.may(Privs::SYS_AUDIT, "/system") {
        let r = crate::api::diag::system_report(st, std::time::Duration::from_secs(60)).await;
        let problems = r
            .checks
            .into_iter()
            .filter(|c| c.status != crate::system::Status::Ok)
            .map(|c| Problem { status: c.status.as_str().into(), name: c.name, message: c.detail })
            .collect();
        Some((r.status.as_str().to_string(), problems))
    } else {
        None
    };
    Ok(DashboardPage {
        frame: ctx.frame("Dashboard"),
        new_bytes_24h: counts.as_ref().map(|d| bytes(d.new_bytes_24h)).unwrap_or_default(),
        counts,
        freshness,
        active,
        failures,
        health,
        may_create: ctx.may(Privs::JOBS_MODIFY, "/jobs"),
        capacity: capacity(st, ctx).await?,
    })
}

const DAY_MS: i64 = 86_400_000;

/// Each visible repository's filesystem room, and when it fills at the pace of the last 30
/// days' new data (object stores have no size to run out of).
async fn capacity(st: &AppState, ctx: &Ctx) -> crate::error::ApiResult<Vec<CapacityRow>> {
    if !ctx.may_somewhere(Privs::DATASTORE_AUDIT) {
        return Ok(Vec::new());
    }
    let growth: HashMap<i64, i64> = st.catalog.growth_since(ctx.now - 30 * DAY_MS).await?.into_iter().collect();
    let mut rows = Vec::new();
    for r in st.catalog.list_repositories().await? {
        if r.parent.is_some() || !ctx.caller.repository_privs(st, &r).await?.any_of(Privs::DATASTORE_AUDIT) {
            continue;
        }
        let per_day = growth.get(&r.id).copied().unwrap_or(0) / 30;
        let local = !r.url.contains("://");
        let cap = if local {
            let path = std::path::PathBuf::from(&r.url);
            tokio::task::spawn_blocking(move || bams_appliance::disk::capacity(&path).ok()).await.ok().flatten()
        } else {
            None
        };
        let mut row = CapacityRow {
            name: r.name.clone(),
            location: r.url.clone(),
            meter: "w0",
            used_text: String::new(),
            percent: 0,
            per_day: if per_day > 0 { format!("{}/day", bytes(per_day)) } else { String::new() },
            full_by: When::default(),
            note: String::new(),
        };
        match cap {
            Some(c) => {
                let used = i64::try_from(c.used_bytes).unwrap_or(i64::MAX);
                let total = i64::try_from(c.total_bytes).unwrap_or(i64::MAX);
                row.meter = crate::ui::fmt::meter_class(used, total);
                row.percent = (c.used_bytes * 100).checked_div(c.total_bytes).unwrap_or(0);
                row.used_text =
                    format!("{} free of {}", bytes(i64::try_from(c.available_bytes).unwrap_or(i64::MAX)), bytes(total));
                if per_day > 0 {
                    let days = i64::try_from(c.available_bytes).unwrap_or(i64::MAX) / per_day;
                    if days <= 3650 {
                        row.full_by = When::at(ctx.now.saturating_add(days.saturating_mul(DAY_MS)), ctx.now);
                    } else {
                        row.note = "not within 10 years at this pace".into();
                    }
                } else {
                    row.note = "no growth in 30 days".into();
                }
            }
            None if local => row.note = "not reachable".into(),
            None => row.note = "object storage: no fixed size".into(),
        }
        rows.push(row);
    }
    Ok(rows)
}
