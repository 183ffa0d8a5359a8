//! Users (admin), tokens (own; admins see all), audit (admin).

use axum::extract::State;
use axum::http::StatusCode;
use bams_catalog::{AuditEntry, AuditFilter, AuthToken, Page, Role, TokenKind, TokenScope, User};
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Json, Path, Query};
use crate::policy::Privs;
use crate::state::AppState;

/// New user.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// Login name.
    pub username: String,
    /// Password (8+ characters).
    pub password: String,
    /// Role.
    pub role: Role,
    /// E-mail address.
    #[serde(default)]
    pub email: Option<String>,
}

/// Changes to a user.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserPatch {
    /// New role.
    pub role: Option<Role>,
    /// Disable or enable.
    pub disabled: Option<bool>,
    /// New password.
    pub password: Option<String>,
    /// Your current password: needed to change your own.
    pub current_password: Option<String>,
    /// `false` turns the user's TOTP second factor off (an admin, for a lost device).
    pub totp: Option<bool>,
    /// E-mail address (empty clears it).
    pub email: Option<String>,
}

/// List users.
#[utoipa::path(get, path = "/api/v1/users", tag = "users", responses((status = 200, body = [User])))]
pub async fn list_users(State(st): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<User>>> {
    caller.require_on(Privs::SYS_ADMIN, "/system")?;
    Ok(Json(st.catalog.list_users().await?))
}

/// Create a user.
#[utoipa::path(post, path = "/api/v1/users", tag = "users", request_body = NewUser, responses((status = 201, body = User)))]
pub async fn create_user(
    State(st): State<AppState>,
    caller: Caller,
    Json(u): Json<NewUser>,
) -> ApiResult<(StatusCode, Json<User>)> {
    caller.require_on(Privs::SYS_ADMIN, "/system")?;
    let user = st.catalog.create_user(&u.username, &u.password, u.role).await?;
    let user = match u.email.as_deref().filter(|e| !e.is_empty()) {
        Some(e) => match st.catalog.set_email(user.id, Some(e)).await {
            Ok(user) => user,
            Err(err) => {
                let _ = st.catalog.delete_user(user.id).await;
                return Err(ApiError::from(err).at_field("email"));
            }
        },
        None => user,
    };
    Ok((StatusCode::CREATED, Json(user)))
}

/// One user (admins, or yourself).
#[utoipa::path(get, path = "/api/v1/users/{id}", tag = "users", params(("id" = i64, Path)), responses((status = 200, body = User)))]
pub async fn get_user(State(st): State<AppState>, caller: Caller, Path(id): Path<i64>) -> ApiResult<Json<User>> {
    if caller.user.id != id {
        caller.require_on(Privs::SYS_ADMIN, "/system")?;
    }
    Ok(Json(st.catalog.get_user(id).await?))
}

/// Change role, disabled flag (admins) or password (admins, or yourself).
#[utoipa::path(patch, path = "/api/v1/users/{id}", tag = "users", params(("id" = i64, Path)), request_body = UserPatch, responses((status = 200, body = User)))]
pub async fn update_user(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    Json(p): Json<UserPatch>,
) -> ApiResult<Json<User>> {
    let own_password_only = caller.user.id == id && p.role.is_none() && p.disabled.is_none() && p.totp.is_none();
    // Everyone may set their own e-mail address along with their password.
    if !own_password_only {
        caller.require_on(Privs::SYS_ADMIN, "/system")?;
    }
    let user = st.catalog.get_user(id).await?;
    if let Some(pw) = &p.password {
        if caller.is_self(id) {
            // A stolen session must not be enough to take the account over.
            let current = p.current_password.as_deref().unwrap_or_default();
            if st.catalog.check_login(&user.username, current).await?.is_none() {
                return Err(ApiError::forbidden("give your current password (current_password) to change it"));
            }
        }
        st.catalog.set_password(&user.username, pw).await?;
        // Every other session of that user ends; API tokens stay (revoke them separately).
        let keep = caller.is_self(id).then_some(caller.token_id);
        st.catalog.revoke_sessions(id, keep).await?;
        st.auth_cache.clear();
    }
    match p.totp {
        Some(true) => return Err(ApiError::bad_request("users turn TOTP on themselves (POST /api/v1/auth/totp)")),
        Some(false) => {
            st.catalog.disable_totp(id).await?;
            st.auth_cache.clear();
        }
        None => {}
    }
    if let Some(e) = &p.email {
        st.catalog
            .set_email(id, Some(e.as_str()).filter(|e| !e.is_empty()))
            .await
            .map_err(|e| ApiError::from(e).at_field("email"))?;
    }
    Ok(Json(st.catalog.update_user(id, p.role, p.disabled).await?))
}

/// Delete a user and their tokens.
#[utoipa::path(delete, path = "/api/v1/users/{id}", tag = "users", params(("id" = i64, Path)), responses((status = 204)))]
pub async fn delete_user(State(st): State<AppState>, caller: Caller, Path(id): Path<i64>) -> ApiResult<StatusCode> {
    caller.require_on(Privs::SYS_ADMIN, "/system")?;
    st.catalog.delete_user(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// New API token.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// Label.
    pub name: String,
    /// `full` (default) or `append-only` (repository endpoint, no deletes).
    #[serde(default)]
    pub scope: TokenScope,
    /// Lifetime in days (none = no expiry).
    pub expires_in_days: Option<u32>,
    /// Owner (admins only; default yourself).
    pub user_id: Option<i64>,
}

/// A created token: the secret is shown once.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CreatedToken {
    /// Record.
    #[serde(flatten)]
    pub token: AuthToken,
    /// Secret for `Authorization: Bearer`; not retrievable later.
    pub secret: String,
}

/// List API tokens (yours; admins see everyone's).
#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens", responses((status = 200, body = [AuthToken])))]
pub async fn list_tokens(State(st): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<AuthToken>>> {
    let who = if caller.privs_at("/system").any_of(Privs::SYS_ADMIN) { None } else { Some(caller.user.id) };
    Ok(Json(st.catalog.list_tokens(who).await?))
}

/// Create an API token.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", request_body = NewToken, responses((status = 201, body = CreatedToken)))]
pub async fn create_token(
    State(st): State<AppState>,
    caller: Caller,
    Json(t): Json<NewToken>,
) -> ApiResult<(StatusCode, Json<CreatedToken>)> {
    if caller.scope != TokenScope::Full {
        return Err(ApiError::forbidden("a restricted token cannot create tokens"));
    }
    if t.scope == TokenScope::Agent {
        return Err(ApiError::bad_request("agent credentials come from enrollment (POST /api/v1/agents)"));
    }
    let owner = match t.user_id {
        Some(u) if u != caller.user.id => {
            caller.require_on(Privs::SYS_ADMIN, "/system")?;
            st.catalog.get_user(u).await?.id
        }
        _ => caller.user.id,
    };
    let expires = t.expires_in_days.map(|d| bams_catalog::now_ms() + i64::from(d.max(1)) * 86_400_000);
    let (token, secret, _) = st.catalog.create_token(owner, TokenKind::Api, &t.name, t.scope, expires).await?;
    Ok((StatusCode::CREATED, Json(CreatedToken { token, secret })))
}

/// Revoke a token (yours; admins any).
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "tokens", params(("id" = i64, Path)), responses((status = 204)))]
pub async fn revoke_token(State(st): State<AppState>, caller: Caller, Path(id): Path<i64>) -> ApiResult<StatusCode> {
    let t = st.catalog.get_token(id).await?;
    if t.user_id != caller.user.id {
        caller.require_on(Privs::SYS_ADMIN, "/system")?;
    }
    st.catalog.revoke_token(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The audit log, newest first.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(AuditFilter), responses((status = 200, body = Page<AuditEntry>)))]
pub async fn list_audit(
    State(st): State<AppState>,
    caller: Caller,
    Query(f): Query<AuditFilter>,
) -> ApiResult<Json<Page<AuditEntry>>> {
    caller.require_on(Privs::SYS_ADMIN, "/system")?;
    Ok(Json(st.catalog.list_audit(&f).await?))
}
