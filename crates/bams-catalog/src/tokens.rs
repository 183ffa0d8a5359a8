//! Login sessions and API tokens. The secret is shown once; only its BLAKE3 hash is stored
//! (secrets are 256 random bits, so a fast hash is enough and lookups stay O(1)).

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;

use crate::error::{CatalogError, Result};
use crate::row::{Arg, Filter, RowExt};
use crate::users::User;
use crate::{now_ms, Catalog};

/// Session (from a login) or long-lived API token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// Created by `POST /auth/login`; carries a CSRF token for cookie use.
    Session,
    /// Created by `POST /tokens`.
    Api,
}

/// What a token may do on top of its user's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, Default)]
#[serde(rename_all = "kebab-case")]
pub enum TokenScope {
    /// Everything the user's role allows.
    #[default]
    Full,
    /// Repository endpoint only, and only adding objects: it cannot delete or overwrite, so a
    /// compromised client cannot destroy its backups.
    AppendOnly,
    /// An agent's credential: the repository endpoint (append-only) and the agent session
    /// routes, nothing else.
    Agent,
}

impl TokenScope {
    /// Whether the repository endpoint refuses deletes and overwrites for this scope.
    pub fn append_only(self) -> bool {
        matches!(self, Self::AppendOnly | Self::Agent)
    }
}

impl TokenScope {
    fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::AppendOnly => "append-only",
            Self::Agent => "agent",
        }
    }
    fn parse(s: &str) -> Result<Self> {
        match s {
            "full" => Ok(Self::Full),
            "append-only" => Ok(Self::AppendOnly),
            "agent" => Ok(Self::Agent),
            _ => Err(CatalogError::Invalid(format!("unknown token scope {s:?}"))),
        }
    }
}

/// A token's public record.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AuthToken {
    /// Numeric id (for revocation).
    pub id: i64,
    /// Owner.
    pub user_id: i64,
    /// Session or API token.
    pub kind: TokenKind,
    /// Label given at creation.
    pub name: String,
    /// Scope.
    pub scope: TokenScope,
    /// Creation time.
    #[serde(with = "crate::time_ms")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    /// Expiry, if any.
    #[serde(with = "crate::time_ms::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<i64>,
    /// Last use (updated at most once a minute).
    #[serde(with = "crate::time_ms::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_used_at: Option<i64>,
    /// Set when revoked.
    #[serde(with = "crate::time_ms::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub revoked_at: Option<i64>,
}

impl AuthToken {
    fn from_row(r: &AnyRow) -> Result<Self> {
        Ok(Self {
            id: r.i64("id")?,
            user_id: r.i64("user_id")?,
            kind: if r.str("kind")? == "session" { TokenKind::Session } else { TokenKind::Api },
            name: r.str("name")?,
            scope: TokenScope::parse(&r.str("scope")?)?,
            created_at: r.i64("created_at")?,
            expires_at: r.opt_i64("expires_at")?,
            last_used_at: r.opt_i64("last_used_at")?,
            revoked_at: r.opt_i64("revoked_at")?,
        })
    }
}

/// Who a presented secret belongs to.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// The user.
    pub user: User,
    /// The token used.
    pub token: AuthToken,
    /// CSRF token of a session (cookie-authenticated mutations must echo it).
    pub csrf: Option<String>,
}

fn random_secret(prefix: &str) -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    format!("{prefix}{}", hex::encode(b))
}

fn secret_hash(secret: &str) -> String {
    blake3::hash(secret.as_bytes()).to_hex().to_string()
}

const TOKEN_COLS: &str =
    "t.id, t.user_id, t.kind, t.name, t.scope, t.created_at, t.expires_at, t.last_used_at, t.revoked_at";

impl Catalog {
    /// Issue a token; returns its record, the secret (shown once) and, for sessions, the CSRF token.
    pub async fn create_token(
        &self,
        user_id: i64,
        kind: TokenKind,
        name: &str,
        scope: TokenScope,
        expires_at: Option<i64>,
    ) -> Result<(AuthToken, String, Option<String>)> {
        if name.len() > 128 {
            return Err(CatalogError::Invalid("token name longer than 128 characters".into()));
        }
        if expires_at.is_some_and(|e| e <= now_ms()) {
            return Err(CatalogError::Invalid("token expiry is in the past".into()));
        }
        let secret = random_secret(match kind {
            TokenKind::Session => "bams_s_",
            TokenKind::Api => "bams_t_",
        });
        let csrf = (kind == TokenKind::Session).then(|| random_secret(""));
        let row = sqlx::query(
            "INSERT INTO tokens (user_id, kind, name, secret_hash, scope, csrf, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             RETURNING id, user_id, kind, name, scope, created_at, expires_at, last_used_at, revoked_at",
        )
        .bind(user_id)
        .bind(match kind {
            TokenKind::Session => "session",
            TokenKind::Api => "api",
        })
        .bind(name)
        .bind(secret_hash(&secret))
        .bind(scope.as_str())
        .bind(csrf.clone())
        .bind(now_ms())
        .bind(expires_at)
        .fetch_one(&self.pool)
        .await?;
        Ok((AuthToken::from_row(&row)?, secret, csrf))
    }

    /// Resolve a presented secret: `None` if unknown, revoked, expired or its user is disabled.
    pub async fn authenticate(&self, secret: &str) -> Result<Option<Authenticated>> {
        let row = sqlx::query(&format!(
            "SELECT {TOKEN_COLS}, t.csrf, u.username, u.role, u.email, u.disabled, u.created_at AS user_created_at, \
             CAST(CASE WHEN u.totp_secret IS NULL THEN 0 ELSE 1 END AS BIGINT) AS user_totp \
             FROM tokens t JOIN users u ON u.id = t.user_id WHERE t.secret_hash = $1"
        ))
        .bind(secret_hash(secret))
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let token = AuthToken::from_row(&row)?;
        let user = User {
            id: token.user_id,
            username: row.str("username")?,
            role: row.str("role")?.parse()?,
            email: row.opt_str("email")?,
            disabled: row.flag("disabled")?,
            totp: row.flag("user_totp")?,
            created_at: row.i64("user_created_at")?,
        };
        let now = now_ms();
        if token.revoked_at.is_some() || token.expires_at.is_some_and(|e| e <= now) || user.disabled {
            return Ok(None);
        }
        if token.last_used_at.is_none_or(|t| now - t > 60_000) {
            sqlx::query("UPDATE tokens SET last_used_at = $1 WHERE id = $2")
                .bind(now)
                .bind(token.id)
                .execute(&self.pool)
                .await?;
        }
        Ok(Some(Authenticated { user, token, csrf: row.opt_str("csrf")? }))
    }

    /// API tokens of one user (or of everyone when `user_id` is `None`); sessions are not listed.
    pub async fn list_tokens(&self, user_id: Option<i64>) -> Result<Vec<AuthToken>> {
        let mut f = Filter::default();
        f.push("t.kind = {}", Arg::Str("api".into()));
        if let Some(u) = user_id {
            f.push("t.user_id = {}", Arg::I64(u));
        }
        let sql = format!("SELECT {TOKEN_COLS} FROM tokens t{} ORDER BY t.id", f.where_sql());
        let rows = f.bind(sqlx::query(&sql)).fetch_all(&self.pool).await?;
        rows.iter().map(AuthToken::from_row).collect()
    }

    /// One token by id.
    pub async fn get_token(&self, id: i64) -> Result<AuthToken> {
        self.one_by_id(&format!("SELECT {TOKEN_COLS} FROM tokens t WHERE t.id = $1"), id, "token", AuthToken::from_row)
            .await
    }

    /// Revoke a token (it stops working at once; the record stays for the audit trail).
    pub async fn revoke_token(&self, id: i64) -> Result<()> {
        let n = sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if n == 0 {
            self.get_token(id).await?;
        }
        Ok(())
    }

    /// Drop expired and revoked sessions (housekeeping).
    /// End every session of a user but `keep` (after a password change).
    pub async fn revoke_sessions(&self, user_id: i64, keep: Option<i64>) -> Result<u64> {
        Ok(sqlx::query(
            "UPDATE tokens SET revoked_at = $1 WHERE user_id = $2 AND kind = 'session' AND revoked_at IS NULL AND id <> $3",
        )
        .bind(now_ms())
        .bind(user_id)
        .bind(keep.unwrap_or(-1))
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Remove sessions that expired or were revoked; returns how many.
    pub async fn purge_sessions(&self) -> Result<u64> {
        Ok(sqlx::query("DELETE FROM tokens WHERE kind = 'session' AND (revoked_at IS NOT NULL OR expires_at <= $1)")
            .bind(now_ms())
            .execute(&self.pool)
            .await?
            .rows_affected())
    }
}
