//! Logs: one service's recent entries with filters, following it live, and the diagnostics
//! bundle.

use askama::Template;
use axum::extract::{Query, State};
use axum::response::Response;
use serde::Deserialize;

use crate::api::logs::{read_log, LogParams};
use crate::error::Path;
use crate::policy::Privs;
use crate::state::AppState;
use crate::ui::{render, url_encode, Ctx, Frame};

/// Filters of the log page.
#[derive(Deserialize, Default)]
pub struct LogQuery {
    #[serde(default)]
    service: Option<String>,
    #[serde(default)]
    grep: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    lines: Option<usize>,
    #[serde(default)]
    follow: bool,
}

/// One line.
pub struct Line {
    time: String,
    priority: String,
    message: String,
}

#[derive(Template)]
#[template(path = "logs.html")]
struct LogsPage {
    frame: Frame,
    services: Vec<(String, bool)>,
    service: String,
    grep: String,
    since: String,
    lines: usize,
    entries: Vec<Line>,
    error: String,
    follow_url: String,
    follow: bool,
    may_bundle: bool,
}

/// `GET /logs`: the first service unless one is chosen.
pub async fn page(State(st): State<AppState>, ctx: Ctx, Query(q): Query<LogQuery>) -> Response {
    let names: Vec<String> = st.config.logs.services.keys().cloned().collect();
    let service =
        q.service.clone().filter(|s| names.contains(s)).or_else(|| names.first().cloned()).unwrap_or_default();
    let lines = q.lines.unwrap_or(200).clamp(1, bams_appliance::logs::MAX_LINES);
    let params = LogParams {
        lines: Some(lines),
        since: Some(q.since.clone()).filter(|s| !s.is_empty()),
        grep: Some(q.grep.clone()).filter(|s| !s.is_empty()),
    };
    // A service whose journal or file is missing is a finding to show, not a broken page.
    let (entries, error) =
        match read_log(State(st.clone()), ctx.caller.clone(), Path(service.clone()), crate::error::Query(params)).await
        {
            Ok(list) => (
                list.0
                    .items
                    .into_iter()
                    .map(|e| Line {
                        time: e.time.unwrap_or_default(),
                        priority: e.priority.map(|p| p.to_string()).unwrap_or_default(),
                        message: e.message,
                    })
                    .collect(),
                String::new(),
            ),
            Err(e) => (Vec::new(), e.message),
        };
    let mut follow_url = format!("/api/v1/logs/{}/events", url_encode(&service));
    if !q.grep.is_empty() {
        follow_url.push_str(&format!("?grep={}", url_encode(&q.grep)));
    }
    let page = LogsPage {
        frame: ctx.frame("Logs"),
        services: names.iter().map(|n| (n.clone(), *n == service)).collect(),
        service,
        grep: q.grep.clone(),
        since: q.since.clone(),
        lines,
        entries,
        error,
        follow_url,
        follow: q.follow,
        may_bundle: ctx.may(Privs::SYS_ADMIN, "/system"),
    };
    render(&page)
}
