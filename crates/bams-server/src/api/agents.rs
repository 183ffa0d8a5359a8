//! Agents (docs/design.md §1, §5): admins create them (getting a one-time enrollment token), list,
//! disable, enable and revoke them; `bams agent enroll` exchanges the token for a credential;
//! agents then long-poll for work and report on it under `/api/v1/agent/…`, which only an
//! agent credential may use.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use bams_catalog::{Agent, TokenScope};
use bams_director::agents::{Events, EventsReply, Finish, Poll, PollReply};
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Json, Path};
use crate::state::AppState;

/// An agent that asked for work within this long is online.
const ONLINE_MS: i64 = 90_000;
/// Longest long-poll.
const MAX_WAIT: Duration = Duration::from_secs(25);

/// An agent with whether it is connected now.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AgentView {
    /// The record.
    #[serde(flatten)]
    pub agent: Agent,
    /// It asked for work in the last 90 seconds.
    pub online: bool,
}

impl From<Agent> for AgentView {
    fn from(agent: Agent) -> Self {
        let online = agent.last_seen_at.is_some_and(|t| bams_catalog::now_ms() - t < ONLINE_MS);
        Self { agent, online }
    }
}

/// Agents.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AgentList {
    /// By id.
    pub items: Vec<AgentView>,
    /// Always null: the list is complete.
    pub next_cursor: Option<String>,
}

/// A new agent.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAgent {
    /// Unique name (letters, digits, `.`, `-`, `_`).
    pub name: String,
}

/// A created agent and its one-time enrollment token (shown once).
#[derive(Serialize, utoipa::ToSchema)]
pub struct CreatedAgent {
    /// Numeric id (jobs name it in `agent`).
    pub id: i64,
    /// The agent.
    #[serde(flatten)]
    pub agent: AgentView,
    /// For `bams agent enroll --token`; valid 24 hours, once.
    pub enrollment_token: String,
}

/// What `bams agent enroll` sends.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The enrollment token.
    pub token: String,
    /// The machine's host name.
    pub hostname: String,
    /// The agent's BAMS version.
    pub version: String,
}

/// The agent's credential (shown once; the agent keeps it 0600).
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct Enrolled {
    /// Agent id.
    pub agent_id: i64,
    /// Agent name.
    pub name: String,
    /// Bearer credential for the agent routes and the repository endpoint.
    pub credential: String,
}

/// Create an agent and its enrollment token.
#[utoipa::path(post, path = "/api/v1/agents", tag = "agents", request_body = NewAgent, responses((status = 201, body = CreatedAgent)))]
pub async fn create(
    State(st): State<AppState>,
    _caller: Caller,
    Json(req): Json<NewAgent>,
) -> ApiResult<(StatusCode, Json<CreatedAgent>)> {
    let (agent, token) = st.catalog.create_agent(&req.name).await?;
    Ok((StatusCode::CREATED, Json(CreatedAgent { id: agent.id, agent: agent.into(), enrollment_token: token })))
}

/// Agents with their state.
#[utoipa::path(get, path = "/api/v1/agents", tag = "agents", responses((status = 200, body = AgentList)))]
pub async fn list(State(st): State<AppState>, _caller: Caller) -> ApiResult<Json<AgentList>> {
    let items = st.catalog.list_agents().await?.into_iter().map(AgentView::from).collect();
    Ok(Json(AgentList { items, next_cursor: None }))
}

/// One agent.
#[utoipa::path(get, path = "/api/v1/agents/{id}", tag = "agents", params(("id" = i64, Path)), responses((status = 200, body = AgentView)))]
pub async fn get(State(st): State<AppState>, _caller: Caller, Path(id): Path<i64>) -> ApiResult<Json<AgentView>> {
    Ok(Json(st.catalog.get_agent(id).await?.into()))
}

/// Refuse the agent until it is enabled again.
#[utoipa::path(post, path = "/api/v1/agents/{id}/disable", tag = "agents", params(("id" = i64, Path)), responses((status = 200, body = AgentView)))]
pub async fn disable(State(st): State<AppState>, _caller: Caller, Path(id): Path<i64>) -> ApiResult<Json<AgentView>> {
    let a = st.catalog.set_agent_enabled(id, false).await?;
    st.auth_cache.clear();
    Ok(Json(a.into()))
}

/// Let a disabled agent connect again.
#[utoipa::path(post, path = "/api/v1/agents/{id}/enable", tag = "agents", params(("id" = i64, Path)), responses((status = 200, body = AgentView)))]
pub async fn enable(State(st): State<AppState>, _caller: Caller, Path(id): Path<i64>) -> ApiResult<Json<AgentView>> {
    let a = st.catalog.set_agent_enabled(id, true).await?;
    st.auth_cache.clear();
    Ok(Json(a.into()))
}

/// Revoke the agent for good (its credential stops working at once).
#[utoipa::path(post, path = "/api/v1/agents/{id}/revoke", tag = "agents", params(("id" = i64, Path)), responses((status = 200, body = AgentView)))]
pub async fn revoke(State(st): State<AppState>, _caller: Caller, Path(id): Path<i64>) -> ApiResult<Json<AgentView>> {
    let a = st.catalog.revoke_agent(id).await?;
    st.auth_cache.clear();
    Ok(Json(a.into()))
}

/// Exchange an enrollment token for the agent's credential (no other authentication).
#[utoipa::path(post, path = "/api/v1/agents/enroll", tag = "agents", request_body = EnrollRequest, responses((status = 200, body = Enrolled)))]
pub async fn enroll(State(st): State<AppState>, Json(req): Json<EnrollRequest>) -> ApiResult<Json<Enrolled>> {
    if req.hostname.len() > 255 || req.version.len() > 64 {
        return Err(ApiError::bad_request("hostname or version too long"));
    }
    let (agent, credential) = st.catalog.enroll_agent(&req.token, &req.hostname, &req.version).await?;
    tracing::info!(agent = %agent.name, hostname = %req.hostname, "agent enrolled");
    Ok(Json(Enrolled { agent_id: agent.id, name: agent.name, credential }))
}

/// The agent behind an agent credential.
async fn calling_agent(st: &AppState, caller: &Caller) -> ApiResult<Agent> {
    if caller.scope != TokenScope::Agent {
        return Err(ApiError::forbidden("only an agent credential may use /api/v1/agent/"));
    }
    st.catalog
        .agent_by_token(caller.token_id)
        .await?
        .ok_or_else(|| ApiError::forbidden("the agent is disabled or revoked"))
}

/// Ask for work: answers at once when a run is queued for this agent, else within
/// `wait_secs` (at most 25) with none. Each poll is also the agent's sign of life.
#[utoipa::path(post, path = "/api/v1/agent/poll", tag = "agents", request_body = Poll, responses((status = 200, body = PollReply)))]
pub async fn poll(State(st): State<AppState>, caller: Caller, Json(p): Json<Poll>) -> ApiResult<Json<PollReply>> {
    let agent = calling_agent(&st, &caller).await?;
    st.catalog.agent_seen(&agent, &p.hostname, &p.version).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(p.wait_secs).min(MAX_WAIT);
    // Rung when this agent has queued work: at once when this server queued it, within a
    // second when another server of the group did (see `bams_director::bells`).
    let bell = st.director.agent_bells().bell(agent.id);
    loop {
        // Registered before looking, so work queued while we look still wakes us.
        let woken = bell.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        if let Some(a) = st.director.next_agent_assignment(&agent).await? {
            tracing::info!(agent = %agent.name, run = a.run_id, "run assigned to agent");
            return Ok(Json(PollReply { assignments: vec![a] }));
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Ok(Json(PollReply::default()));
        }
        tokio::select! {
            () = woken => {}
            () = tokio::time::sleep(deadline - now) => {}
        }
    }
}

fn not_yours(e: bams_director::agents::AgentRunError) -> ApiError {
    match e {
        bams_director::agents::AgentRunError::NotYours(_) => ApiError::conflict(e.to_string()),
        bams_director::agents::AgentRunError::Catalog(c) => c.into(),
    }
}

/// Progress, log lines and heartbeat of a running run; the answer says whether to cancel.
#[utoipa::path(post, path = "/api/v1/agent/runs/{id}/events", tag = "agents", params(("id" = i64, Path)), request_body = Events, responses((status = 200, body = EventsReply)))]
pub async fn events(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    Json(ev): Json<Events>,
) -> ApiResult<Json<EventsReply>> {
    let agent = calling_agent(&st, &caller).await?;
    Ok(Json(st.director.agent_events(&agent, id, &ev).await.map_err(not_yours)?))
}

/// The outcome of a run.
#[utoipa::path(post, path = "/api/v1/agent/runs/{id}/finish", tag = "agents", params(("id" = i64, Path)), request_body = Finish, responses((status = 204)))]
pub async fn finish(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    Json(f): Json<Finish>,
) -> ApiResult<StatusCode> {
    let agent = calling_agent(&st, &caller).await?;
    st.director.agent_finished(&agent, id, &f).await.map_err(not_yours)?;
    Ok(StatusCode::NO_CONTENT)
}
