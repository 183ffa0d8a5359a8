//! Agents (file daemons on protected machines). An admin creates an agent and gets a one-time
//! enrollment token (only its hash is kept, it expires); `bams agent enroll` exchanges it for
//! the agent's credential: an API token of the agent's own user, with scope `agent` (the
//! repository endpoint, append-only, and the agent session routes). Disabling or revoking the
//! agent disables that user and revokes the token, so it is refused at once.

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;

use crate::error::{named_conflict, CatalogError, Result};
use crate::row::RowExt;
use crate::tokens::{TokenKind, TokenScope};
use crate::{now_ms, Catalog};

/// Where an agent stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AgentStatus {
    /// Created; waiting for `bams agent enroll`.
    Pending,
    /// Enrolled and allowed to connect.
    Active,
    /// Refused until enabled again.
    Disabled,
    /// Refused for good; its credential is revoked.
    Revoked,
}

impl AgentStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Active => "active",
            Self::Disabled => "disabled",
            Self::Revoked => "revoked",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "pending" => Self::Pending,
            "active" => Self::Active,
            "disabled" => Self::Disabled,
            "revoked" => Self::Revoked,
            other => return Err(CatalogError::Invalid(format!("unknown agent status {other:?}"))),
        })
    }
}

/// An agent's record.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Agent {
    /// Numeric id (jobs name it in `agent`).
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// Where it stands.
    pub status: AgentStatus,
    /// When the enrollment token expires (pending agents).
    #[serde(with = "crate::time_ms::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub enroll_expires_at: Option<i64>,
    /// Host name it reported.
    pub hostname: Option<String>,
    /// BAMS version it reported.
    pub version: Option<String>,
    /// Last request from it.
    #[serde(with = "crate::time_ms::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_seen_at: Option<i64>,
    /// Creation time.
    #[serde(with = "crate::time_ms")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    /// Enrollment time.
    #[serde(with = "crate::time_ms::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub enrolled_at: Option<i64>,
    /// The agent's user (owner of its credential).
    #[serde(skip)]
    pub user_id: Option<i64>,
    /// Its credential's token id.
    #[serde(skip)]
    pub token_id: Option<i64>,
}

impl Agent {
    fn from_row(r: &AnyRow) -> Result<Self> {
        Ok(Self {
            id: r.i64("id")?,
            name: r.str("name")?,
            status: AgentStatus::parse(&r.str("status")?)?,
            enroll_expires_at: r.opt_i64("enroll_expires_at")?,
            hostname: r.opt_str("hostname")?,
            version: r.opt_str("version")?,
            last_seen_at: r.opt_i64("last_seen_at")?,
            created_at: r.i64("created_at")?,
            enrolled_at: r.opt_i64("enrolled_at")?,
            user_id: r.opt_i64("user_id")?,
            token_id: r.opt_i64("token_id")?,
        })
    }
}

const COLS: &str = "id, name, status, enroll_expires_at, hostname, version, last_seen_at, created_at, enrolled_at, \
                    user_id, token_id";

/// How fresh an agent's `last_seen_at` is kept (it is not rewritten more often).
pub const SEEN_RESOLUTION_MS: i64 = 10_000;

/// An enrollment token lives this long.
pub const ENROLL_TTL_MS: i64 = 24 * 3_600_000;

fn hash(secret: &str) -> String {
    blake3::hash(secret.as_bytes()).to_hex().to_string()
}

/// Agent names: 1-64 letters, digits, `.`, `-`, `_` (they become part of a user name).
fn validate_agent_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 64
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        || name.starts_with('.')
    {
        return Err(CatalogError::Invalid(format!(
            "agent name {name:?} must be 1-64 letters, digits, '.', '-' or '_'"
        )));
    }
    Ok(())
}

impl Catalog {
    /// Create an agent waiting for enrollment; returns it and the one-time enrollment token.
    pub async fn create_agent(&self, name: &str) -> Result<(Agent, String)> {
        validate_agent_name(name)?;
        let mut b = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut b);
        let token = format!("bams_e_{}", hex::encode(b));
        let now = now_ms();
        let r = sqlx::query(&format!(
            "INSERT INTO agents (name, status, enroll_hash, enroll_expires_at, created_at) \
             VALUES ($1, 'pending', $2, $3, $4) RETURNING {COLS}"
        ))
        .bind(name)
        .bind(hash(&token))
        .bind(now + ENROLL_TTL_MS)
        .bind(now)
        .fetch_one(&self.pool)
        .await;
        let row = named_conflict(r.map_err(Into::into), || format!("an agent named {name} already exists"))?;
        Ok((Agent::from_row(&row)?, token))
    }

    /// Exchange an enrollment token for the agent's credential (once; an expired, used or
    /// unknown token is refused with the same answer).
    pub async fn enroll_agent(&self, token: &str, hostname: &str, version: &str) -> Result<(Agent, String)> {
        let refused = || CatalogError::Unauthorized("unknown, used or expired enrollment token".into());
        let now = now_ms();
        // Taking the token is one conditional update, so two enrollments cannot both win.
        let row = sqlx::query(&format!(
            "UPDATE agents SET enroll_hash = NULL, status = 'active', enrolled_at = $1, hostname = $2, version = $3, \
             last_seen_at = $1 WHERE enroll_hash = $4 AND status = 'pending' AND enroll_expires_at > $1 RETURNING {COLS}"
        ))
        .bind(now)
        .bind(hostname)
        .bind(version)
        .bind(hash(token))
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(refused)?;
        let agent = Agent::from_row(&row)?;
        // Its user cannot log in: the password hash is not a hash.
        let user = sqlx::query(
            "INSERT INTO users (username, password_hash, role, disabled, created_at) VALUES ($1, '!agent', 'operator', 0, $2) \
             RETURNING id",
        )
        .bind(format!("agent.{}", agent.name))
        .bind(now)
        .fetch_one(&self.pool)
        .await?
        .i64("id")?;
        let (tok, secret, _) =
            self.create_token(user, TokenKind::Api, &format!("agent {}", agent.name), TokenScope::Agent, None).await?;
        let row = sqlx::query(&format!("UPDATE agents SET user_id = $1, token_id = $2 WHERE id = $3 RETURNING {COLS}"))
            .bind(user)
            .bind(tok.id)
            .bind(agent.id)
            .fetch_one(&self.pool)
            .await?;
        Ok((Agent::from_row(&row)?, secret))
    }

    /// All agents by id.
    pub async fn list_agents(&self) -> Result<Vec<Agent>> {
        let rows = sqlx::query(&format!("SELECT {COLS} FROM agents ORDER BY id")).fetch_all(&self.pool).await?;
        rows.iter().map(Agent::from_row).collect()
    }

    /// One agent.
    pub async fn get_agent(&self, id: i64) -> Result<Agent> {
        self.one_by_id(&format!("SELECT {COLS} FROM agents WHERE id = $1"), id, "agent", Agent::from_row).await
    }

    /// The agent a credential (token id) belongs to, if it is allowed to connect.
    pub async fn agent_by_token(&self, token_id: i64) -> Result<Option<Agent>> {
        let row = sqlx::query(&format!("SELECT {COLS} FROM agents WHERE token_id = $1 AND status = 'active'"))
            .bind(token_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Agent::from_row).transpose()
    }

    /// Record a request from `agent` (what it reports about itself). Skipped when nothing
    /// changed and it was seen within `SEEN_RESOLUTION_MS`: an agent polls again as soon as a
    /// run ends, and a thousand agents ending their runs together need not write a thousand
    /// rows to say they are alive.
    pub async fn agent_seen(&self, agent: &Agent, hostname: &str, version: &str) -> Result<()> {
        let now = now_ms();
        let fresh = agent.last_seen_at.is_some_and(|t| (0..SEEN_RESOLUTION_MS).contains(&(now - t)));
        if fresh && agent.hostname.as_deref() == Some(hostname) && agent.version.as_deref() == Some(version) {
            return Ok(());
        }
        let id = agent.id;
        sqlx::query("UPDATE agents SET last_seen_at = $1, hostname = $2, version = $3 WHERE id = $4")
            .bind(now)
            .bind(hostname)
            .bind(version)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Disable (`enabled = false`) or enable an enrolled agent: its user is disabled too, so its
    /// credential stops working at once.
    pub async fn set_agent_enabled(&self, id: i64, enabled: bool) -> Result<Agent> {
        let agent = self.get_agent(id).await?;
        if !matches!(agent.status, AgentStatus::Active | AgentStatus::Disabled) {
            return Err(CatalogError::Conflict(format!(
                "agent {} is {}: only an enrolled agent can be enabled or disabled",
                agent.name,
                agent.status.as_str()
            )));
        }
        let status = if enabled { AgentStatus::Active } else { AgentStatus::Disabled };
        sqlx::query("UPDATE agents SET status = $1 WHERE id = $2")
            .bind(status.as_str())
            .bind(id)
            .execute(&self.pool)
            .await?;
        if let Some(u) = agent.user_id {
            sqlx::query("UPDATE users SET disabled = $1 WHERE id = $2")
                .bind(i64::from(!enabled))
                .bind(u)
                .execute(&self.pool)
                .await?;
        }
        self.get_agent(id).await
    }

    /// Revoke an agent for good: its credential and enrollment token stop working at once.
    pub async fn revoke_agent(&self, id: i64) -> Result<Agent> {
        let agent = self.get_agent(id).await?;
        sqlx::query("UPDATE agents SET status = 'revoked', enroll_hash = NULL WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        if let Some(t) = agent.token_id {
            self.revoke_token(t).await?;
        }
        if let Some(u) = agent.user_id {
            sqlx::query("UPDATE users SET disabled = 1 WHERE id = $1").bind(u).execute(&self.pool).await?;
        }
        self.get_agent(id).await
    }
}

impl Catalog {
    /// Repositories an agent's credential may reach through the repository endpoint: its own
    /// repositories, and those of its jobs that sit in a pool sharing one repository across
    /// machines (`shared_dedup`); nothing else.
    pub async fn agent_repositories(&self, agent_user_id: i64) -> Result<Vec<i64>> {
        let rows: Vec<(i64,)> = sqlx::query_as(
            "SELECT r.id FROM repositories r JOIN agents a ON a.id = r.agent_id WHERE a.user_id = $1 \
             UNION SELECT j.repository_id FROM jobs j JOIN agents a ON a.id = j.agent_id \
             JOIN pools p ON p.repository_id = j.repository_id \
             WHERE a.user_id = $1 AND p.shared_dedup <> 0",
        )
        .bind(agent_user_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }
}
