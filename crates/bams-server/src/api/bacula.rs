//! Bacula storage daemon (docs/design.md §5 appliance routes): generated config from the disk
//! repositories, validation with the real `bacula-sd -t` before install, status, inventory
//! and restart through the command runner.

use axum::extract::State;
use axum::http::StatusCode;
use bams_appliance::bacula::{self, Installed, SdIdentity};
use bams_appliance::runner::{Cmd, CommandRunner, RunError, SystemRunner};
use bams_appliance::ApplianceError;
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Json};
use crate::state::AppState;

/// The live config and what BAMS would generate now, secrets shown as `"***"`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct BaculaConfig {
    /// Path of the storage daemon's config.
    pub path: String,
    /// Its current text (`null` when there is none), passwords as `"***"`.
    pub content: Option<String>,
    /// A config generated from the disk repositories, passwords as `"***"`.
    pub generated: String,
}

/// Install a config.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewBaculaConfig {
    /// Text to install; omitted = the generated config. Secrets left as `"***"` (as
    /// `GET` shows them) keep their installed values; the director's `Password` takes the
    /// one BAMS manages.
    pub content: Option<String>,
}

/// Storage daemon status.
#[derive(Serialize, utoipa::ToSchema)]
pub struct BaculaStatus {
    /// `bacula-sd` is installed.
    pub installed: bool,
    /// Its version line.
    pub version: Option<String>,
    /// `systemctl is-active bacula-sd` (`unknown` without systemd).
    pub service: String,
    /// Config path.
    pub config_path: String,
    /// Devices in the live config.
    pub devices: Vec<String>,
}

fn identity(st: &AppState) -> ApiResult<SdIdentity> {
    // The director password is made once and kept 0600 under the data dir, never logged.
    let file = st.config.data_dir.join("bacula-director.password");
    let password = match std::fs::read_to_string(&file) {
        Ok(p) => p.trim().to_string(),
        Err(_) => {
            use rand::Rng;
            let p: String =
                rand::thread_rng().sample_iter(&rand::distributions::Alphanumeric).take(32).map(char::from).collect();
            bams_appliance::files::write_private(&file, p.as_bytes())
                .map_err(|e| ApiError::internal(format!("{}: {e}", file.display())))?;
            p
        }
    };
    Ok(SdIdentity {
        storage_name: "bams-sd".into(),
        director_name: "bams-dir".into(),
        director_password: password,
        address: "127.0.0.1".into(),
    })
}

async fn generated(st: &AppState) -> ApiResult<String> {
    let disks = st.catalog.list_disk_repositories().await?;
    let tape = &st.config.tape;
    let lib = match tape.library.as_str() {
        "mtx" => bacula::BaculaTape::Mtx { changer: tape.changer.clone(), drives: tape.drives.clone() },
        "virtual" => match &st.tape {
            Some(c) => bacula::BaculaTape::Virtual {
                dir: tape.dir.clone().unwrap_or_else(|| st.config.data_dir.join("vtl")),
                drives: c.status().await?.drives.len() as u32,
            },
            None => bacula::BaculaTape::None,
        },
        _ => bacula::BaculaTape::None,
    };
    Ok(bacula::generate_sd_config(&identity(st)?, &disks, &lib)?)
}

/// The storage daemon's config, and the one BAMS would generate.
#[utoipa::path(get, path = "/api/v1/bacula/config", tag = "appliance", responses((status = 200, body = BaculaConfig)))]
pub async fn get_config(State(st): State<AppState>, _caller: Caller) -> ApiResult<Json<BaculaConfig>> {
    let path = st.config.bacula_sd_config.clone();
    Ok(Json(BaculaConfig {
        content: std::fs::read_to_string(&path).ok().map(|t| bacula::redact_secrets(&t)),
        path: path.display().to_string(),
        generated: bacula::redact_secrets(&generated(&st).await?),
    }))
}

/// Validate with `bacula-sd -t` and install (the previous file is kept); a config the daemon
/// rejects is answered 422 with its message and changes nothing.
#[utoipa::path(post, path = "/api/v1/bacula/config", tag = "appliance", request_body = NewBaculaConfig, responses((status = 200, body = Installed)))]
pub async fn post_config(
    State(st): State<AppState>,
    _caller: Caller,
    Json(req): Json<NewBaculaConfig>,
) -> ApiResult<Json<Installed>> {
    let text = match req.content {
        Some(t) => {
            let current = std::fs::read_to_string(&st.config.bacula_sd_config).unwrap_or_default();
            bacula::restore_secrets(&t, &current, &identity(&st)?.director_password)?
        }
        None => generated(&st).await?,
    };
    match bacula::install(&SystemRunner, &st.config.bacula_sd_config, &text).await {
        Ok(done) => Ok(Json(done)),
        Err(ApplianceError::Command(RunError::Failed { stderr, .. })) => {
            let mut e =
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_config", "bacula-sd rejected the config");
            e.details = Some(serde_json::json!({"stderr": stderr}));
            Err(e)
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether the daemon is installed and running, and its devices.
#[utoipa::path(get, path = "/api/v1/bacula/status", tag = "appliance", responses((status = 200, body = BaculaStatus)))]
pub async fn status(State(st): State<AppState>, _caller: Caller) -> ApiResult<Json<BaculaStatus>> {
    let runner = SystemRunner;
    // `bacula-sd -?` prints its version and exits non-zero; only a missing program matters.
    let probe = runner.output(&Cmd::new("bacula-sd", ["-?"])).await;
    let version = probe.as_ref().ok().and_then(|o| {
        o.stdout.lines().chain(o.stderr.lines()).find(|l| l.starts_with("Version:")).map(|l| l.trim().to_string())
    });
    // Without a running systemd, systemctl prints nothing useful: say "unknown", not "".
    let service = match runner.output(&Cmd::new("systemctl", ["is-active", "bacula-sd"])).await {
        Ok(o) if !o.stdout.trim().is_empty() => o.stdout.trim().to_string(),
        _ => "unknown".into(),
    };
    let path = st.config.bacula_sd_config.clone();
    let devices = std::fs::read_to_string(&path).map(|t| bacula::device_names(&t)).unwrap_or_default();
    Ok(Json(BaculaStatus {
        installed: !matches!(probe, Err(RunError::NotInstalled { .. })),
        version,
        service,
        config_path: path.display().to_string(),
        devices,
    }))
}

async fn run_or_502(cmd: Cmd) -> ApiResult<Json<serde_json::Value>> {
    let out = SystemRunner.run(&cmd).await.map_err(ApplianceError::from)?;
    Ok(Json(serde_json::json!({"command": cmd.to_string(), "output": out.stdout})))
}

/// `update slots` through bconsole (needs a director that knows this storage daemon).
#[utoipa::path(post, path = "/api/v1/bacula/inventory", tag = "appliance", responses((status = 200, body = Object)))]
pub async fn inventory(_st: State<AppState>, _caller: Caller) -> ApiResult<Json<serde_json::Value>> {
    run_or_502(Cmd::new("bconsole", [""; 0]).stdin("update slots\nquit\n")).await
}

/// Restart the storage daemon (systemd).
#[utoipa::path(post, path = "/api/v1/bacula/restart", tag = "appliance", responses((status = 200, body = Object)))]
pub async fn restart(_st: State<AppState>, _caller: Caller) -> ApiResult<Json<serde_json::Value>> {
    run_or_502(Cmd::new("systemctl", ["restart", "bacula-sd"])).await
}
