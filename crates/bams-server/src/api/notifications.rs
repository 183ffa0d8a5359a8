//! Notification settings (read-only: they live in the config file) and a test send.

use axum::extract::State;
use bams_director::notify::{ChannelResult, NotifyConfig};
use serde::Serialize;

use crate::auth::Caller;
use crate::error::{ApiResult, Json};
use crate::state::AppState;

/// The notification settings, SMTP password hidden.
#[derive(Serialize, utoipa::ToSchema)]
pub struct NotificationSettings {
    /// Which run endings notify (`failure`, `success`, `warning`).
    pub on: Vec<String>,
    /// Webhook URLs.
    pub webhooks: Vec<String>,
    /// SMTP server (empty: no e-mail).
    pub smtp_host: String,
    /// SMTP port.
    pub smtp_port: u16,
    /// `starttls`, `tls` or `none`.
    pub security: String,
    /// Sender.
    pub from: String,
    /// Recipients.
    pub to: Vec<String>,
    /// Whether an SMTP password is set (never the password).
    pub password_set: bool,
}

impl From<NotifyConfig> for NotificationSettings {
    fn from(c: NotifyConfig) -> Self {
        Self {
            on: c
                .on
                .iter()
                .map(|e| serde_json::to_value(e).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default())
                .collect(),
            webhooks: c.webhooks,
            password_set: !c.email.password.is_empty(),
            smtp_host: c.email.smtp_host,
            smtp_port: c.email.smtp_port,
            security: c.email.security,
            from: c.email.from,
            to: c.email.to,
        }
    }
}

/// Where notifications go (`notifications` in the config file).
#[utoipa::path(get, path = "/api/v1/notifications", tag = "notifications", responses((status = 200, body = NotificationSettings)))]
pub async fn settings(State(st): State<AppState>, _caller: Caller) -> ApiResult<Json<NotificationSettings>> {
    Ok(Json(st.director.notifier().settings().into()))
}

/// What a test send did, channel by channel.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TestResult {
    /// One entry per webhook and one for e-mail (none: nothing is configured).
    pub results: Vec<ChannelResult>,
}

/// Send a test notification through every configured channel, once each.
#[utoipa::path(post, path = "/api/v1/notifications/test", tag = "notifications", responses((status = 200, body = TestResult)))]
pub async fn test(State(st): State<AppState>, caller: Caller) -> ApiResult<Json<TestResult>> {
    Ok(Json(TestResult { results: st.director.notifier().test(&caller.user.username).await }))
}
