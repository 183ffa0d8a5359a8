//! A run's log, live, over WebSocket: what is already written, then each new part as the job
//! (on this server, another one, or an agent) appends it, then the run's outcome. The log is
//! read from the catalog, so it works whichever server runs the job.

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Path};
use crate::state::AppState;

/// One WebSocket message: new log text, or (last) the outcome.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum RunLogEvent {
    /// Text appended to the log since the previous message.
    Log {
        /// New lines.
        log: String,
    },
    /// The run ended; the socket closes after this.
    End {
        /// Final status.
        status: String,
        /// Outcome in one line.
        message: Option<String>,
    },
}

/// Follow a run's log (text as it is appended, then `{"status", "message"}`).
#[utoipa::path(get, path = "/api/v1/runs/{id}/log/stream", tag = "runs", params(("id" = i64, Path)), responses((status = 101, description = "WebSocket of RunLogEvent messages"), (status = 429, description = "too many followers")))]
pub async fn stream(
    State(st): State<AppState>,
    _caller: Caller,
    Path(id): Path<i64>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    st.catalog.get_run(id).await?;
    let Ok(ws) = ws else {
        return Err(ApiError::bad_request("this route needs a WebSocket upgrade"));
    };
    let permit = super::logs::follower_permit(&st)?;
    Ok(ws
        .on_upgrade(move |socket| async move {
            follow(st, id, socket).await;
            drop(permit);
        })
        .into_response())
}

async fn send(socket: &mut WebSocket, ev: &RunLogEvent) -> bool {
    let text = serde_json::to_string(ev).unwrap_or_default();
    socket.send(Message::Text(text.into())).await.is_ok()
}

/// Where a follower is in a run's log (the WebSocket and the event stream share it).
#[derive(Default)]
struct LogCursor {
    sent: usize,
}

impl LogCursor {
    /// The run now, and the text appended to its log since the last poll. The status is read
    /// first: a log read after it holds every line written before the end.
    async fn poll(&mut self, st: &AppState, id: i64) -> Option<(bams_catalog::Run, Option<String>)> {
        let run = st.catalog.get_run(id).await.ok()?;
        let mut new = None;
        if let Ok(log) = st.catalog.run_log(id).await {
            // A very long log has its middle dropped by the catalog: start over from its tail.
            if log.len() < self.sent {
                self.sent = 0;
            }
            if log.len() > self.sent && log.is_char_boundary(self.sent) {
                new = Some(log[self.sent..].to_string());
                self.sent = log.len();
            }
        }
        Some((run, new))
    }
}

fn has_ended(run: &bams_catalog::Run) -> bool {
    !matches!(run.status.as_str(), "queued" | "running")
}

async fn follow(st: AppState, id: i64, mut socket: WebSocket) {
    let mut cursor = LogCursor::default();
    loop {
        let Some((run, new)) = cursor.poll(&st, id).await else { break };
        let ended = has_ended(&run);
        if let Some(log) = new {
            if !send(&mut socket, &RunLogEvent::Log { log }).await {
                return;
            }
        }
        if ended {
            let end = RunLogEvent::End { status: run.status.as_str().to_string(), message: run.message.clone() };
            let _ = send(&mut socket, &end).await;
            let _ = socket.send(Message::Close(None)).await;
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
            msg = socket.recv() => match msg {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                _ => {}
            }
        }
    }
}

/// Progress of a running run, as the `progress` event carries it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct RunProgressEvent {
    /// Status now.
    pub status: String,
    /// Files done.
    pub files: i64,
    /// Bytes read (human-readable).
    pub bytes: String,
    /// Average rate since the start (human-readable), empty before any data.
    pub rate: String,
    /// Time left if the run moves as much data as the job's last successful run, or empty.
    pub eta: String,
}

/// Follow a run as Server-Sent Events: `log` events (the appended text, as a JSON string),
/// `progress` events (a RunProgressEvent) while it runs, then one `end` event
/// (`{"status", "message"}`) and the stream closes. The same as the WebSocket follower, for
/// clients that cannot open WebSockets (the Cockpit bridge) and for EventSource.
#[utoipa::path(get, path = "/api/v1/runs/{id}/events", tag = "runs", params(("id" = i64, Path)), responses((status = 200, description = "text/event-stream of log, progress and end events", content_type = "text/event-stream"), (status = 429, description = "too many followers")))]
pub async fn events(State(st): State<AppState>, _caller: Caller, Path(id): Path<i64>) -> ApiResult<Response> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let run = st.catalog.get_run(id).await?;
    let expected = match run.job_id {
        Some(j) => st.catalog.last_successful_bytes(j).await?,
        None => None,
    };
    let permit = super::logs::follower_permit(&st)?;
    struct Follow {
        st: AppState,
        cursor: LogCursor,
        pending: std::collections::VecDeque<Event>,
        done: bool,
        first: bool,
        last_progress: (i64, i64),
    }
    let init = Follow {
        st,
        cursor: LogCursor::default(),
        pending: Default::default(),
        done: false,
        first: true,
        last_progress: (-1, -1),
    };
    let stream = futures_util::stream::unfold((init, permit), move |(mut f, permit)| async move {
        loop {
            if let Some(ev) = f.pending.pop_front() {
                return Some((Ok::<_, std::convert::Infallible>(ev), (f, permit)));
            }
            if f.done {
                return None;
            }
            if !f.first {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            f.first = false;
            let (run, new) = f.cursor.poll(&f.st, id).await?;
            let ended = has_ended(&run);
            if let Some(log) = new {
                let text = serde_json::to_string(&log).unwrap_or_default();
                f.pending.push_back(Event::default().event("log").data(text));
            }
            if (run.files, run.bytes) != f.last_progress || ended {
                f.last_progress = (run.files, run.bytes);
                let (rate, eta) = crate::ui::fmt::rate_and_eta(&run, expected, bams_catalog::now_ms());
                let p = RunProgressEvent {
                    status: run.status.as_str().to_string(),
                    files: run.files,
                    bytes: crate::ui::fmt::bytes(run.bytes),
                    rate,
                    eta: if ended { String::new() } else { eta },
                };
                f.pending
                    .push_back(Event::default().event("progress").data(serde_json::to_string(&p).unwrap_or_default()));
            }
            if ended {
                let end = serde_json::json!({ "status": run.status.as_str(), "message": run.message });
                f.pending.push_back(Event::default().event("end").data(end.to_string()));
                f.done = true;
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}
