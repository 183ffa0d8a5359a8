//! Administration: users, API tokens (the secret shown once), the audit log with filters, and
//! the notification settings with a test button.

use askama::Template;
use axum::extract::{Query, State};
use axum::response::Response;
use bams_catalog::AuditFilter;
use serde::Deserialize;

use crate::api::notifications::NotificationSettings;
use crate::error::ApiResult;
use crate::policy::Privs;
use crate::state::AppState;
use crate::ui::fmt::When;
use crate::ui::{render, respond, Ctx, Frame};

/// A user row.
pub struct UserRow {
    id: i64,
    username: String,
    role: &'static str,
    disabled: bool,
    totp: bool,
    created: When,
    is_self: bool,
}

#[derive(Template)]
#[template(path = "users.html")]
struct UsersPage {
    frame: Frame,
    users: Vec<UserRow>,
    roles: &'static [&'static str],
}

/// `GET /admin/users`.
pub async fn users(State(st): State<AppState>, ctx: Ctx) -> Response {
    let build = async {
        let users = st
            .catalog
            .list_users()
            .await?
            .into_iter()
            .map(|u| UserRow {
                id: u.id,
                role: u.role.as_str(),
                disabled: u.disabled,
                totp: u.totp,
                created: When::at(u.created_at, ctx.now),
                is_self: ctx.caller.is_self(u.id),
                username: u.username,
            })
            .collect();
        ApiResult::Ok(UsersPage { frame: ctx.frame("Users"), users, roles: &["admin", "operator", "viewer", "user"] })
    };
    respond(build.await)
}

/// A token row.
pub struct TokenRow {
    id: i64,
    name: String,
    owner: String,
    kind: String,
    scope: String,
    created: When,
    expires: When,
    last_used: When,
    revoked: bool,
    current: bool,
}

#[derive(Template)]
#[template(path = "tokens.html")]
struct TokensPage {
    frame: Frame,
    tokens: Vec<TokenRow>,
}

/// `GET /admin/tokens`: the caller's tokens (an admin sees everyone's).
pub async fn tokens(State(st): State<AppState>, ctx: Ctx) -> Response {
    let build = async {
        let all = ctx.may(Privs::SYS_ADMIN, "/system");
        let names: std::collections::HashMap<i64, String> = if all {
            st.catalog.list_users().await?.into_iter().map(|u| (u.id, u.username)).collect()
        } else {
            std::collections::HashMap::from([(ctx.caller.user.id, ctx.caller.user.username.clone())])
        };
        let tokens = st
            .catalog
            .list_tokens(if all { None } else { Some(ctx.caller.user.id) })
            .await?
            .into_iter()
            .map(|t| TokenRow {
                id: t.id,
                owner: names.get(&t.user_id).cloned().unwrap_or_else(|| format!("user #{}", t.user_id)),
                kind: serde_json::to_value(t.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                scope: serde_json::to_value(t.scope)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                created: When::at(t.created_at, ctx.now),
                expires: When::maybe(t.expires_at, ctx.now),
                last_used: When::maybe(t.last_used_at, ctx.now),
                revoked: t.revoked_at.is_some(),
                current: t.id == ctx.caller.token_id,
                name: t.name,
            })
            .collect();
        ApiResult::Ok(TokensPage { frame: ctx.frame("API tokens"), tokens })
    };
    respond(build.await)
}

/// Filters of the audit page.
#[derive(Deserialize, Default)]
pub struct AuditQuery {
    #[serde(default)]
    user: String,
    #[serde(default)]
    result: String,
    #[serde(default)]
    route: String,
    #[serde(default)]
    cursor: Option<String>,
}

/// An audit row.
pub struct AuditRow {
    time: When,
    user: String,
    action: String,
    object: String,
    status: i64,
    result: String,
    remote: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    frame: Frame,
    entries: Vec<AuditRow>,
    user: String,
    result: String,
    route: String,
    next: Option<String>,
}

/// `GET /admin/audit`.
pub async fn audit(State(st): State<AppState>, ctx: Ctx, Query(q): Query<AuditQuery>) -> Response {
    let build = async {
        let f = AuditFilter {
            user: Some(q.user.clone()).filter(|s| !s.is_empty()),
            result: Some(q.result.clone()).filter(|s| !s.is_empty()),
            route: Some(q.route.clone()).filter(|s| !s.is_empty()),
            since: None,
            until: None,
            limit: Some(100),
            cursor: q.cursor.clone(),
        };
        let page = st.catalog.list_audit(&f).await?;
        let next = page.next_cursor.as_ref().map(|c| {
            crate::ui::next_page(
                "/admin/audit",
                c,
                &[("user", q.user.clone()), ("result", q.result.clone()), ("route", q.route.clone())],
            )
        });
        let entries = page
            .items
            .into_iter()
            .map(|e| AuditRow {
                time: When::at(e.time, ctx.now),
                user: e.username.unwrap_or_default(),
                action: format!("{} {}", e.method, e.target.unwrap_or(e.route)),
                object: e
                    .object
                    .map(|o| {
                        let mut s = o.kind;
                        if let Some(name) = o.name.or(o.id) {
                            s.push(' ');
                            s.push_str(&name);
                        }
                        if !o.changes.is_empty() {
                            s.push_str(&format!(" ({})", o.changes.join(", ")));
                        }
                        s
                    })
                    .unwrap_or_default(),
                status: e.status,
                result: e.result,
                remote: e.remote_addr.unwrap_or_default(),
            })
            .collect();
        ApiResult::Ok(AuditPage {
            frame: ctx.frame("Audit log"),
            entries,
            user: q.user.clone(),
            result: q.result.clone(),
            route: q.route.clone(),
            next,
        })
    };
    respond(build.await)
}

#[derive(Template)]
#[template(path = "notifications.html")]
struct NotificationsPage {
    frame: Frame,
    s: NotificationSettings,
}

/// `GET /admin/notifications`.
pub async fn notifications(State(st): State<AppState>, ctx: Ctx) -> Response {
    render(&NotificationsPage { frame: ctx.frame("Notifications"), s: st.director.notifier().settings().into() })
}

#[derive(Template)]
#[template(path = "account.html")]
struct AccountPage {
    frame: Frame,
    user_id: i64,
    totp: bool,
    local: bool,
    permissions: Vec<(String, String)>,
}

/// `GET /account`: your password, your second factor, and what you may do where.
pub async fn account(State(st): State<AppState>, ctx: Ctx) -> Response {
    let build = async {
        let local = ctx.caller.user.id < 0;
        let totp = !local && st.catalog.totp_state(ctx.caller.user.id).await?.secret.is_some();
        let perms = crate::api::acl::my_permissions(State(st.clone()), ctx.caller.clone()).await?.0;
        let permissions = serde_json::to_value(&perms)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|p| {
                let privs = p["privileges"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(", "));
                (p["path"].as_str().unwrap_or_default().to_string(), privs.unwrap_or_default())
            })
            .collect();
        ApiResult::Ok(AccountPage {
            frame: ctx.frame("Your account"),
            user_id: ctx.caller.user.id,
            totp,
            local,
            permissions,
        })
    };
    respond(build.await)
}

#[derive(Template)]
#[template(path = "permissions.html")]
struct PermissionsPage {
    frame: Frame,
    entries: Vec<bams_catalog::AclEntry>,
    users: Vec<String>,
    roles: Vec<(&'static str, String)>,
}

/// `GET /admin/permissions`: ACL entries per repository, pool or area.
pub async fn permissions(State(st): State<AppState>, ctx: Ctx) -> Response {
    let build = async {
        ApiResult::Ok(PermissionsPage {
            frame: ctx.frame("Permissions"),
            entries: st.catalog.list_acl(None).await?,
            users: st.catalog.list_users().await?.into_iter().map(|u| u.username).collect(),
            roles: crate::policy::roles().into_iter().map(|r| (r.name, r.description.to_string())).collect(),
        })
    };
    respond(build.await)
}
