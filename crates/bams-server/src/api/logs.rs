//! Service logs (docs/design.md §5 appliance routes): a filtered read, and a WebSocket follower.
//! Only services in the `logs.services` allow-list are readable. Followers are limited in
//! number (`logs.max_stream_clients`, 429 beyond) and backpressured: a slow client makes its
//! reader wait instead of growing a buffer.

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bams_appliance::logs::{self, LogEntry, LogQuery};
use bams_appliance::runner::SystemRunner;
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Json, Path, Query};
use crate::state::AppState;

/// Filters.
#[derive(Deserialize, utoipa::IntoParams)]
pub struct LogParams {
    /// Last this many entries (default 200, at most 10000).
    pub lines: Option<usize>,
    /// Only entries since this time: RFC 3339, or a duration back from now (`15m`, `2h`, `7d`).
    pub since: Option<String>,
    /// Only entries containing this text (case-insensitive, at most 200 characters).
    pub grep: Option<String>,
}

/// Entries, oldest first.
#[derive(Serialize, utoipa::ToSchema)]
pub struct LogList {
    /// The service.
    pub service: String,
    /// Entries.
    pub items: Vec<LogEntry>,
    /// Always null: `lines` bounds the answer.
    pub next_cursor: Option<String>,
}

fn grep_of(g: Option<String>) -> ApiResult<Option<String>> {
    match g {
        Some(g) if g.chars().count() > 200 => Err(ApiError::bad_request("grep is limited to 200 characters")),
        Some(g) if g.is_empty() => Ok(None),
        other => Ok(other),
    }
}

/// A service's recent log.
#[utoipa::path(get, path = "/api/v1/logs/{service}", tag = "appliance", params(("service" = String, Path), LogParams), responses((status = 200, body = LogList)))]
pub async fn read_log(
    State(st): State<AppState>,
    _caller: Caller,
    Path(service): Path<String>,
    Query(p): Query<LogParams>,
) -> ApiResult<Json<LogList>> {
    let lines = p.lines.unwrap_or(200);
    if lines == 0 || lines > logs::MAX_LINES {
        return Err(ApiError::bad_request(format!("lines must be 1-{}", logs::MAX_LINES)));
    }
    let now = chrono::Utc::now().timestamp_micros();
    let since_micros = p.since.as_deref().map(|s| logs::parse_since(s, now)).transpose()?;
    let q = LogQuery { lines, since_micros, grep: grep_of(p.grep)? };
    let items = logs::read(&SystemRunner, &st.config.logs, &service, &q).await?;
    Ok(Json(LogList { service, items, next_cursor: None }))
}

/// Follow a service's log over WebSocket: one JSON entry per text message.
#[utoipa::path(get, path = "/api/v1/logs/{service}/stream", tag = "appliance", params(("service" = String, Path), LogParams), responses((status = 101, description = "WebSocket of log entries"), (status = 429, description = "too many followers")))]
pub async fn stream_log(
    State(st): State<AppState>,
    _caller: Caller,
    Path(service): Path<String>,
    Query(p): Query<LogParams>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    logs::source(&st.config.logs, &service)?;
    let grep = grep_of(p.grep)?;
    let Ok(ws) = ws else {
        return Err(ApiError::bad_request("this route needs a WebSocket upgrade"));
    };
    let permit = follower_permit(&st)?;
    Ok(ws
        .on_upgrade(move |socket| async move {
            follow(st, service, grep, socket).await;
            drop(permit);
        })
        .into_response())
}

/// A place among the WebSocket log followers (service logs and run logs share the limit).
pub(crate) fn follower_permit(st: &AppState) -> ApiResult<tokio::sync::OwnedSemaphorePermit> {
    st.log_followers.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "too_many_followers",
            format!("at most {} log followers at once", st.config.logs.max_stream_clients),
        )
    })
}

/// A running reader of a service's log; dropping it stops the reader (journalctl is killed,
/// the file poll ends) even while the log is quiet.
struct Reader(tokio::task::JoinHandle<()>);

impl Drop for Reader {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Start following `service`: its entries arrive on the receiver while the `Reader` lives.
fn start_reader(
    st: &AppState,
    service: String,
    grep: Option<String>,
) -> (Reader, tokio::sync::mpsc::Receiver<LogEntry>) {
    let (tx, rx) = tokio::sync::mpsc::channel::<LogEntry>(256);
    let cfg = st.config.clone();
    let task = tokio::spawn(async move {
        let runner: std::sync::Arc<dyn bams_appliance::runner::CommandRunner> = std::sync::Arc::new(SystemRunner);
        if let Err(e) = logs::follow(runner, &cfg.logs, &service, grep, tx).await {
            tracing::warn!(error = %e, service, "log follower stopped");
        }
    });
    (Reader(task), rx)
}

async fn follow(st: AppState, service: String, grep: Option<String>, mut socket: WebSocket) {
    let (_reader, mut rx) = start_reader(&st, service, grep);
    loop {
        tokio::select! {
            entry = rx.recv() => {
                let Some(entry) = entry else { break };
                let text = serde_json::to_string(&entry).unwrap_or_default();
                if socket.send(Message::Text(text.into())).await.is_err() {
                    break;
                }
            }
            msg = socket.recv() => match msg {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                _ => {}
            }
        }
    }
}

/// Follow a service's log as Server-Sent Events: one `entry` event (a JSON log entry) per
/// line. The same as the WebSocket follower, for clients that cannot open WebSockets (the
/// Cockpit bridge).
#[utoipa::path(get, path = "/api/v1/logs/{service}/events", tag = "appliance", params(("service" = String, Path), LogParams), responses((status = 200, description = "text/event-stream of `entry` events", content_type = "text/event-stream"), (status = 429, description = "too many followers")))]
pub async fn follow_log_events(
    State(st): State<AppState>,
    _caller: Caller,
    Path(service): Path<String>,
    Query(p): Query<LogParams>,
) -> ApiResult<Response> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures_util::StreamExt;
    logs::source(&st.config.logs, &service)?;
    let grep = grep_of(p.grep)?;
    let permit = follower_permit(&st)?;
    let (reader, rx) = start_reader(&st, service, grep);
    // The permit and the reader live as long as the stream: a client that goes away frees
    // its place and stops the reader.
    let stream = super::receiver_stream(rx).map(move |entry| {
        let _held = (&permit, &reader);
        Ok::<_, std::convert::Infallible>(
            Event::default().event("entry").data(serde_json::to_string(&entry).unwrap_or_default()),
        )
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}
