//! Agents: who is enrolled, who is online, and the one-time enrollment command of a new one.

use askama::Template;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::Response;
use bams_catalog::AgentStatus;

use crate::api::agents::AgentView;
use crate::error::ApiResult;
use crate::policy::Privs;
use crate::state::AppState;
use crate::ui::fmt::When;
use crate::ui::{respond, Ctx, Frame};

/// An agent as the list shows it.
pub struct AgentRow {
    id: i64,
    name: String,
    status: &'static str,
    online: bool,
    hostname: String,
    version: String,
    last_seen: When,
    revoked: bool,
    disabled: bool,
}

#[derive(Template)]
#[template(path = "agents.html")]
struct AgentsPage {
    frame: Frame,
    agents: Vec<AgentRow>,
    may_modify: bool,
    server_url: String,
    fingerprint: String,
}

/// `GET /agents`.
pub async fn list(State(st): State<AppState>, ctx: Ctx, headers: HeaderMap) -> Response {
    let build = async {
        let agents = st
            .catalog
            .list_agents()
            .await?
            .into_iter()
            .map(|a| {
                let v = AgentView::from(a);
                AgentRow {
                    id: v.agent.id,
                    status: match v.agent.status {
                        AgentStatus::Pending => "pending",
                        AgentStatus::Active => "active",
                        AgentStatus::Disabled => "disabled",
                        AgentStatus::Revoked => "revoked",
                    },
                    online: v.online,
                    hostname: v.agent.hostname.clone().unwrap_or_default(),
                    version: v.agent.version.clone().unwrap_or_default(),
                    last_seen: When::maybe(v.agent.last_seen_at, ctx.now),
                    revoked: v.agent.status == AgentStatus::Revoked,
                    disabled: v.agent.status == AgentStatus::Disabled,
                    name: v.agent.name,
                }
            })
            .collect();
        ApiResult::Ok(AgentsPage {
            frame: ctx.frame("Agents"),
            agents,
            may_modify: ctx.may(Privs::AGENTS_MODIFY, "/agents"),
            server_url: server_url(&st, &headers),
            fingerprint: st.config.tls.cert.as_deref().and_then(fingerprint).unwrap_or_default(),
        })
    };
    respond(build.await)
}

/// This server's URL as the browser reached it (agents connect to the same name).
fn server_url(st: &AppState, headers: &HeaderMap) -> String {
    let scheme = if st.config.tls.cert.is_some() { "https" } else { "http" };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| h.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']')))
        .map_or_else(|| st.config.listen.clone(), str::to_string);
    format!("{scheme}://{host}")
}

/// SHA-256 fingerprint of the server's certificate, for `bams agent enroll --fingerprint`.
fn fingerprint(cert: &std::path::Path) -> Option<String> {
    let pem = std::fs::read(cert).ok()?;
    let (_, block) = x509_parser::pem::parse_x509_pem(&pem).ok()?;
    let sha = bams_store::backend::trust::fingerprint_of(&block.contents);
    Some(bams_store::backend::trust::format_fingerprint(&sha))
}
