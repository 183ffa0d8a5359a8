//! Notifications when runs end: a JSON webhook (retried with backoff) and e-mail over SMTP
//! (STARTTLS or TLS via lettre), on failure, success and/or warnings (a backup that succeeded
//! with unreadable files). Settings are global (`notifications` in the config) and a job may
//! add its own (`options.notify`: `on`, `webhooks`, `email`). Sending never blocks or fails a
//! run: problems are logged.

use std::path::PathBuf;
use std::time::Duration;

use bams_catalog::{Job, Run, RunStatus};
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::{Deserialize, Serialize};

/// Which run endings notify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Event {
    /// Failed, interrupted or cancelled.
    Failure,
    /// Succeeded without warnings.
    Success,
    /// Succeeded with warnings (e.g. unreadable files: a partial snapshot).
    Warning,
    /// A test an administrator sent to check the channels (never sent for a run).
    Test,
}

/// How mail is sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmailConfig {
    /// SMTP server; empty: no e-mail.
    pub smtp_host: String,
    /// Port (587 for STARTTLS, 465 for TLS).
    pub smtp_port: u16,
    /// `starttls` (required), `tls` (implicit) or `none` (only for a relay on localhost).
    pub security: String,
    /// Login, if the server wants one.
    pub username: String,
    /// Password for `username`.
    pub password: String,
    /// Sender.
    pub from: String,
    /// Recipients of every notification.
    pub to: Vec<String>,
    /// PEM file of a CA to trust for the SMTP server (a private relay).
    pub ca_cert: Option<PathBuf>,
}

impl Default for EmailConfig {
    fn default() -> Self {
        Self {
            smtp_host: String::new(),
            smtp_port: 587,
            security: "starttls".into(),
            username: String::new(),
            password: String::new(),
            from: "bams@localhost".into(),
            to: Vec::new(),
            ca_cert: None,
        }
    }
}

/// Global notification settings (config key `notifications`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// Which endings notify.
    pub on: Vec<Event>,
    /// URLs that receive a JSON POST for each notification.
    pub webhooks: Vec<String>,
    /// E-mail.
    pub email: EmailConfig,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self { on: vec![Event::Failure], webhooks: Vec::new(), email: EmailConfig::default() }
    }
}

impl NotifyConfig {
    /// Check the settings at startup.
    pub fn validate(&self) -> Result<(), String> {
        for w in &self.webhooks {
            if !(w.starts_with("http://") || w.starts_with("https://")) {
                return Err(format!("notifications.webhooks: {w:?} is not an http(s) URL"));
            }
        }
        let e = &self.email;
        if !e.smtp_host.is_empty() {
            if !matches!(e.security.as_str(), "starttls" | "tls" | "none") {
                return Err(format!(
                    "notifications.email.security must be starttls, tls or none, not {:?}",
                    e.security
                ));
            }
            e.from.parse::<lettre::message::Mailbox>().map_err(|err| format!("notifications.email.from: {err}"))?;
            for t in &e.to {
                t.parse::<lettre::message::Mailbox>().map_err(|err| format!("notifications.email.to {t:?}: {err}"))?;
            }
        }
        Ok(())
    }
}

/// A job's own notification settings (`options.notify`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobNotify {
    /// Replaces the global `on` for this job.
    pub on: Option<Vec<Event>>,
    /// More webhooks.
    pub webhooks: Vec<String>,
    /// More recipients.
    pub email: Vec<String>,
}

impl JobNotify {
    /// A job's `options.notify`, checked (on create, and when it is used).
    pub fn from_options(o: &serde_json::Map<String, serde_json::Value>) -> Result<Self, String> {
        let Some(v) = o.get("notify") else { return Ok(Self::default()) };
        let n: Self = serde_json::from_value(v.clone()).map_err(|e| format!("options.notify: {e}"))?;
        for w in &n.webhooks {
            if !(w.starts_with("http://") || w.starts_with("https://")) {
                return Err(format!("options.notify.webhooks: {w:?} is not an http(s) URL"));
            }
        }
        for t in &n.email {
            t.parse::<lettre::message::Mailbox>().map_err(|e| format!("options.notify.email {t:?}: {e}"))?;
        }
        Ok(n)
    }
}

/// What a webhook receives.
#[derive(Debug, Clone, Serialize)]
pub struct Notification {
    /// `failure`, `success` or `warning`.
    pub event: Event,
    /// The server that saw the end.
    pub server_id: String,
    /// The job's name (if it still exists).
    pub job: Option<String>,
    /// The run.
    pub run: Run,
}

/// Sends notifications.
pub struct Notifier {
    cfg: NotifyConfig,
    server_id: String,
    http: reqwest::Client,
}

fn event_of(run: &Run) -> Option<Event> {
    match run.status {
        RunStatus::Succeeded if run.errors > 0 => Some(Event::Warning),
        RunStatus::Succeeded => Some(Event::Success),
        RunStatus::Failed | RunStatus::Interrupted | RunStatus::Cancelled => Some(Event::Failure),
        _ => None,
    }
}

impl Notifier {
    /// A notifier with `cfg`.
    pub fn new(cfg: NotifyConfig, server_id: &str) -> Self {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap_or_default();
        Self { cfg, server_id: server_id.to_string(), http }
    }

    /// Notify about a run that ended (if its ending is one to notify).
    pub async fn run_ended(&self, run: &Run, job: Option<&Job>) {
        let Some(event) = event_of(run) else { return };
        let own = job.map(|j| JobNotify::from_options(&j.options).unwrap_or_default()).unwrap_or_default();
        let on = own.on.clone().unwrap_or_else(|| self.cfg.on.clone());
        if !on.contains(&event) {
            return;
        }
        let n = Notification {
            event,
            server_id: self.server_id.clone(),
            job: job.map(|j| j.name.clone()),
            run: run.clone(),
        };
        for url in self.cfg.webhooks.iter().chain(&own.webhooks) {
            self.webhook(url, &n).await;
        }
        let to: Vec<&String> = self.cfg.email.to.iter().chain(&own.email).collect();
        if !self.cfg.email.smtp_host.is_empty() && !to.is_empty() {
            if let Err(e) = self.email(&n, &to).await {
                tracing::warn!(run = run.id, error = %e, "could not send the notification e-mail");
            }
        }
    }

    /// Send a test notification once through every configured channel (no retries) and say
    /// how each went, so an administrator sees a wrong URL or SMTP setting at once. The run
    /// it carries is marked as a test: id 0, no job.
    pub async fn test(&self, requested_by: &str) -> Vec<ChannelResult> {
        let now = bams_catalog::now_ms();
        let run = Run {
            id: 0,
            job_id: None,
            kind: bams_catalog::JobKind::Backup,
            level: None,
            status: RunStatus::Succeeded,
            triggered_by: format!("test:{requested_by}"),
            server_id: Some(self.server_id.clone()),
            agent_id: None,
            queued_at: now,
            scheduled_for: None,
            started_at: Some(now),
            finished_at: Some(now),
            files: 0,
            bytes: 0,
            new_bytes: 0,
            errors: 0,
            snapshot_id: None,
            message: Some(format!("test notification sent by {requested_by}")),
            cancel_requested: false,
        };
        let n = Notification { event: Event::Test, server_id: self.server_id.clone(), job: None, run };
        let mut out = Vec::new();
        for url in &self.cfg.webhooks {
            let outcome = match self.http.post(url).json(&n).send().await {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(format!("answered {}", r.status())),
                Err(e) => Err(format!("unreachable: {e}")),
            };
            out.push(ChannelResult::new(format!("webhook {url}"), outcome));
        }
        if !self.cfg.email.smtp_host.is_empty() && !self.cfg.email.to.is_empty() {
            let to: Vec<&String> = self.cfg.email.to.iter().collect();
            let outcome = self.email(&n, &to).await;
            out.push(ChannelResult::new(format!("e-mail to {}", self.cfg.email.to.join(", ")), outcome));
        }
        out
    }

    /// The settings, with the SMTP password replaced by `(set)`.
    pub fn settings(&self) -> NotifyConfig {
        let mut cfg = self.cfg.clone();
        if !cfg.email.password.is_empty() {
            cfg.email.password = "(set)".into();
        }
        cfg
    }

    /// POST the notification, retrying a failed attempt (network or non-2xx) up to 4 times
    /// with backoff (1, 2, 4 s).
    async fn webhook(&self, url: &str, n: &Notification) {
        let mut delay = Duration::from_secs(1);
        for attempt in 1..=4 {
            match self.http.post(url).json(n).send().await {
                Ok(r) if r.status().is_success() => return,
                Ok(r) => tracing::warn!(url, attempt, status = %r.status(), "webhook refused the notification"),
                Err(e) => tracing::warn!(url, attempt, error = %e, "webhook unreachable"),
            }
            if attempt < 4 {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
        tracing::error!(url, run = n.run.id, "notification webhook gave up after 4 attempts");
    }

    async fn email(&self, n: &Notification, to: &[&String]) -> Result<(), String> {
        let e = &self.cfg.email;
        let what = n.job.as_deref().unwrap_or("(deleted job)");
        let word = match n.event {
            Event::Failure => "FAILED",
            Event::Success => "succeeded",
            Event::Warning => "succeeded with warnings",
            Event::Test => "is a test",
        };
        let mut m = Message::builder()
            .from(e.from.parse().map_err(|err| format!("from: {err}"))?)
            .subject(format!("[BAMS] {what}: run {} {word}", n.run.id));
        for t in to {
            m = m.to(t.parse().map_err(|err| format!("to {t}: {err}"))?);
        }
        let body = format!(
            "Job: {what}\nRun: {}\nStatus: {}\nServer: {}\nMessage: {}\nFiles: {}  Bytes: {}  New bytes: {}  Errors: {}\nSnapshot: {}\n",
            n.run.id,
            n.run.status.as_str(),
            n.server_id,
            n.run.message.as_deref().unwrap_or(""),
            n.run.files,
            n.run.bytes,
            n.run.new_bytes,
            n.run.errors,
            n.run.snapshot_id.as_deref().unwrap_or("-"),
        );
        let msg = m.header(ContentType::TEXT_PLAIN).body(body).map_err(|err| err.to_string())?;
        let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(e.smtp_host.as_str())
            .port(e.smtp_port)
            .timeout(Some(Duration::from_secs(30)));
        if e.security != "none" {
            let mut params = TlsParameters::builder(e.smtp_host.clone());
            if let Some(ca) = &e.ca_cert {
                let pem = std::fs::read(ca).map_err(|err| format!("{}: {err}", ca.display()))?;
                params = params.add_root_certificate(Certificate::from_pem(&pem).map_err(|err| err.to_string())?);
            }
            let params = params.build_rustls().map_err(|err| err.to_string())?;
            b = b.tls(if e.security == "tls" { Tls::Wrapper(params) } else { Tls::Required(params) });
        }
        if !e.username.is_empty() {
            b = b.credentials(Credentials::new(e.username.clone(), e.password.clone()));
        }
        b.build().send(msg).await.map_err(|err| err.to_string())?;
        Ok(())
    }
}

/// How sending through one channel went.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ChannelResult {
    /// `webhook URL` or `e-mail to …`.
    pub channel: String,
    /// Delivered.
    pub ok: bool,
    /// Why not.
    pub error: Option<String>,
}

impl ChannelResult {
    fn new(channel: String, outcome: Result<(), String>) -> Self {
        Self { channel, ok: outcome.is_ok(), error: outcome.err() }
    }
}
