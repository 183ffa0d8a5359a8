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

async fn follow(st: AppState, id: i64, mut socket: WebSocket) {
    let mut sent = 0usize;
    loop {
        // Read the status first: a log read after it holds every line written before the end.
        let Ok(run) = st.catalog.get_run(id).await else { break };
        let ended = !matches!(run.status.as_str(), "queued" | "running");
        if let Ok(log) = st.catalog.run_log(id).await {
            // A very long log has its middle dropped by the catalog: start over from its tail.
            if log.len() < sent {
                sent = 0;
            }
            if log.len() > sent && log.is_char_boundary(sent) {
                if !send(&mut socket, &RunLogEvent::Log { log: log[sent..].to_string() }).await {
                    return;
                }
                sent = log.len();
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
