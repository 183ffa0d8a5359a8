//! The diagnostics bundle (docs/design.md §5 `GET /api/v1/diagnostics/bundle`): one tar.gz an
//! operator can attach to a support request — version, the effective config with secrets
//! redacted, recent logs of every allow-listed service, catalog statistics, disk, tape and
//! iSCSI state, system facts. It is compressed while it is sent (no temp file, constant
//! memory for the archive), and it never contains a secret: passwords in URLs, keys named
//! like secrets, CHAP secrets and the Bacula director password stay out; webhook URLs keep
//! only their host (their path is often the secret); and every file, logs included, passes
//! through [`redact_text`] before it is packed (URL credentials and secret-like query
//! parameters, `Bearer`/`Basic` credentials, `key=value` pairs whose key names a secret, and
//! BAMS tokens).

use axum::extract::State;

use axum::response::Response;
use bams_appliance::logs::{self, LogQuery};
use bams_appliance::runner::SystemRunner;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Lines of each service's log in the bundle.
const LOG_LINES: usize = 1000;

/// Replace the password of `scheme://user:password@host` with `***`.
pub fn redact_url(s: &str) -> String {
    let Some((scheme, rest)) = s.split_once("://") else { return s.to_string() };
    let Some((auth, host)) = rest.rsplit_once('@') else { return s.to_string() };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => s.to_string(),
    }
}

/// Redact every secret in a config tree: values under keys that name a secret, webhook URLs
/// down to their host, and secrets inside any other string.
pub fn redact(v: &mut serde_yaml::Value) {
    redact_under(v, "");
}

fn redact_under(v: &mut serde_yaml::Value, parent: &str) {
    match v {
        serde_yaml::Value::Mapping(m) => {
            for (k, val) in m.iter_mut() {
                let key = k.as_str().unwrap_or_default().to_lowercase();
                if ["password", "secret", "token", "credential"].iter().any(|w| key.contains(w)) && !val.is_null() {
                    *val = serde_yaml::Value::String("***".into());
                } else {
                    redact_under(val, &key);
                }
            }
        }
        serde_yaml::Value::Sequence(s) => s.iter_mut().for_each(|x| redact_under(x, parent)),
        serde_yaml::Value::String(s) if parent.contains("webhook") => *s = url_host_only(s),
        serde_yaml::Value::String(s) => *s = redact_text(s),
        _ => {}
    }
}

/// `https://hooks.example/services/T0/B0/XYZ?x=1` → `https://hooks.example/***`.
fn url_host_only(s: &str) -> String {
    match s.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
            let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
            format!("{scheme}://{host}/***")
        }
        None => "***".into(),
    }
}

/// Secret-shaped text in free text (log lines, configs, command output), replaced by `***`.
pub fn redact_text(s: &str) -> String {
    let mut out = std::borrow::Cow::Borrowed(s);
    for (re, with) in redaction_rules() {
        if let std::borrow::Cow::Owned(changed) = re.replace_all(&out, *with) {
            out = std::borrow::Cow::Owned(changed);
        }
    }
    out.into_owned()
}

/// The patterns of [`redact_text`] (compiled once; a pattern that does not compile is a bug
/// the unit test catches).
fn redaction_rules() -> &'static [(regex::Regex, &'static str)] {
    use std::sync::OnceLock;
    static RULES: OnceLock<Vec<(regex::Regex, &'static str)>> = OnceLock::new();
    RULES.get_or_init(|| {
        let secretish = r"(?:pass(?:word|wd|phrase)?|pwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|credential|auth|signature|sig|session)";
        [
            // scheme://user:password@host
            (r"([A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]+):[^@\s/]+@", "$1:***@"),
            // ?token=… &api_key=… (query strings, form bodies)
            (&format!(r"(?i)([?&;][A-Za-z0-9_.-]*{secretish}[A-Za-z0-9_.-]*=)[^&\s#;]*"), "${1}***"),
            // Authorization: Bearer … / Basic …
            (r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}", "$1 ***"),
            // password=…, "secret": "…", token: …
            (&format!(r#"(?i)([A-Za-z0-9_.-]*{secretish}[A-Za-z0-9_.-]*["']?\s*[=:]\s*["']?)[^\s"',;&]+"#), "${1}***"),
            // BAMS session, API and enrollment tokens
            (r"\bbams_[tse]_[0-9a-f]{16,}", "bams_***"),
        ]
        .into_iter()
        .filter_map(|(re, with)| regex::Regex::new(re).ok().map(|r| (r, with)))
        .collect()
    })
}

fn json(v: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec_pretty(v).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}").into_bytes())
}

fn or_error<T: serde::Serialize, E: std::fmt::Display>(r: Result<T, E>) -> Vec<u8> {
    match r {
        Ok(v) => json(&v),
        Err(e) => json(&serde_json::json!({"error": e.to_string()})),
    }
}

fn system_facts(st: &AppState) -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_else(|e| format!("({e})\n"));
    let uname = read("/proc/version");
    let data = bams_appliance::disk::capacity(&st.config.data_dir)
        .map(|c| format!("{} of {} bytes used", c.used_bytes, c.total_bytes))
        .unwrap_or_else(|e| e.to_string());
    format!(
        "kernel: {uname}uptime: {}loadavg: {}data dir {}: {data}\n\n/proc/meminfo:\n{}\n/proc/mounts:\n{}",
        read("/proc/uptime"),
        read("/proc/loadavg"),
        st.config.data_dir.display(),
        read("/proc/meminfo").lines().take(8).collect::<Vec<_>>().join("\n"),
        read("/proc/mounts")
    )
}

/// Gather every file of the bundle (each small and bounded).
async fn gather(st: &AppState) -> ApiResult<Vec<(String, Vec<u8>)>> {
    let mut files = Vec::new();
    files.push((
        "version.txt".to_string(),
        format!(
            "bams {}\nhost {}\ngenerated {}\n",
            env!("CARGO_PKG_VERSION"),
            bams_store::host::hostname(),
            chrono::Utc::now().to_rfc3339()
        )
        .into_bytes(),
    ));
    let mut cfg = serde_yaml::to_value(st.config.as_ref()).map_err(|e| ApiError::internal(e.to_string()))?;
    redact(&mut cfg);
    files.push(("config.yaml".into(), serde_yaml::to_string(&cfg).unwrap_or_default().into_bytes()));
    for service in st.config.logs.services.keys() {
        let q = LogQuery { lines: LOG_LINES, since_micros: None, grep: None };
        let text = match logs::read(&SystemRunner, &st.config.logs, service, &q).await {
            Ok(entries) => entries
                .iter()
                .map(|e| format!("{} {}\n", e.time.as_deref().unwrap_or("-"), e.message))
                .collect::<String>(),
            Err(e) => format!("(not available: {e})\n"),
        };
        files.push((format!("logs/{service}.log"), text.into_bytes()));
    }
    let catalog = serde_json::json!({
        "repositories": st.catalog.list_repositories().await.map(|r| r.len()).ok(),
        "jobs": st.catalog.list_jobs().await.map(|j| j.len()).ok(),
        "disk_repositories": st.catalog.list_disk_repositories().await.map(|d| d.len()).ok(),
        "iscsi_targets": st.catalog.list_iscsi_targets().await.map(|t| t.len()).ok(),
        "dashboard": st.catalog.dashboard().await.ok(),
    });
    files.push(("catalog.json".into(), json(&catalog)));
    files.push(("disks.json".into(), or_error(st.catalog.list_disk_repositories().await)));
    let tape = match &st.tape {
        Some(c) => or_error(c.status().await),
        None => json(&serde_json::json!({"library": "none"})),
    };
    files.push(("tape.json".into(), tape));
    if let Some(db) = st.tape_media.clone() {
        let media = tokio::task::spawn_blocking(move || {
            let now = chrono::Utc::now();
            Ok::<_, bams_appliance::ApplianceError>(
                serde_json::json!({"pools": db.pools(now)?, "volumes": db.volumes(now)?, "sets": db.sets(now)?}),
            )
        })
        .await;
        let media = media.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string()));
        files.push(("tape-media.json".into(), or_error(media)));
    }
    // The same views the API answers: LUNs, ACLs, CHAP users, drift; never CHAP secrets.
    let targets = crate::api::iscsi::list_views(st).await;
    files.push(("iscsi.json".into(), or_error(targets.map_err(|e| e.message))));
    files.push(("iscsi-sessions.json".into(), or_error(st.iscsi.sessions().await)));
    files.push(("system.txt".into(), system_facts(st).into_bytes()));
    // A last pass over everything: logs and command output carry whatever was written there.
    Ok(files
        .into_iter()
        .map(|(name, data)| (name, redact_text(&String::from_utf8_lossy(&data)).into_bytes()))
        .collect())
}

/// The bundle as a tar.gz into `out`, compressed on a blocking thread and sent a piece at a
/// time.
fn write_archive(files: Vec<(String, Vec<u8>)>, out: super::ChannelWriter) -> std::io::Result<()> {
    let gz = flate2::write::GzEncoder::new(out, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let mtime = chrono::Utc::now().timestamp().max(0) as u64;
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o600);
        h.set_mtime(mtime);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, format!("bams-diagnostics/{name}"), data.as_slice())?;
    }
    let mut out = tar.into_inner()?.finish()?;
    std::io::Write::flush(&mut out)
}

/// Download the diagnostics bundle (tar.gz).
#[utoipa::path(get, path = "/api/v1/diagnostics/bundle", tag = "appliance", responses((status = 200, description = "tar.gz", content_type = "application/gzip")))]
pub async fn bundle(State(st): State<AppState>, _caller: Caller) -> ApiResult<Response> {
    let files = gather(&st).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let err_tx = tx.clone();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = write_archive(files, super::ChannelWriter::new(tx)) {
            // The client went away, or writing failed: end the body with an error.
            let _ = err_tx.blocking_send(Err(e));
        }
    });
    let name = format!("bams-diagnostics-{}.tar.gz", chrono::Utc::now().format("%Y%m%dT%H%M%SZ"));
    Ok(super::attachment(rx, "application/gzip", &name, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_from_config_trees() {
        let mut v: serde_yaml::Value = serde_yaml::from_str(
            "catalog: postgres://bams:hunter2@db:5432/bams\nrepository: s3://bucket/x\nsmtp:\n  password: p4ss\n  api_token: t0k\n  user: me\nlist: [\"https://u:pw@h/\"]\n",
        )
        .expect("yaml");
        redact(&mut v);
        let text = serde_yaml::to_string(&v).expect("yaml");
        for secret in ["hunter2", "p4ss", "t0k", ":pw@"] {
            assert!(!text.contains(secret), "{secret} left in {text}");
        }
        assert!(text.contains("postgres://bams:***@db:5432/bams") && text.contains("user: me"), "{text}");
        assert_eq!(redact_url("s3://bucket/x"), "s3://bucket/x");
    }

    #[test]
    fn secrets_in_free_text_are_redacted() {
        assert_eq!(redaction_rules().len(), 5, "every redaction pattern compiles");
        let cases = [
            ("postgres://bams:Pg-s3cret@db/bams", "Pg-s3cret"),
            ("GET /hook?user=x&access_token=Tok3n-value&x=1", "Tok3n-value"),
            ("Authorization: Bearer abcdefgh12345678", "abcdefgh12345678"),
            ("login ok password=Hunter2-pass user=admin", "Hunter2-pass"),
            (r#"{"smtp_password": "Mail-s3cret"}"#, "Mail-s3cret"),
            ("enrolled with bams_e_0123456789abcdef0123", "0123456789abcdef0123"),
            ("BAMS_PASSWORD=Env-secret-1 bams backup", "Env-secret-1"),
        ];
        for (text, secret) in cases {
            let out = redact_text(text);
            assert!(!out.contains(secret), "{text} -> {out}");
            assert!(out.contains("***"), "{out}");
        }
        assert_eq!(redact_text("backup of /etc finished: 12 files"), "backup of /etc finished: 12 files");
        assert_eq!(
            url_host_only("https://u:p@hooks.example:8443/services/T0/B0/XYZ?a=b"),
            "https://hooks.example:8443/***"
        );
    }
}

/// The appliance's health: the checks, tools, tape devices and free space of `bams doctor`.
#[utoipa::path(get, path = "/api/v1/system", tag = "appliance", responses((status = 200, body = crate::system::SystemReport)))]
pub async fn system(State(st): State<AppState>, _caller: Caller) -> ApiResult<axum::Json<crate::system::SystemReport>> {
    Ok(axum::Json(system_report(&st, std::time::Duration::ZERO).await))
}

/// A system report at most `max_age` old (made now when the last one is older).
pub async fn system_report(st: &AppState, max_age: std::time::Duration) -> crate::system::SystemReport {
    let mut last = st.system_report.lock().await;
    if let Some((at, r)) = last.as_ref() {
        if at.elapsed() <= max_age {
            return r.clone();
        }
    }
    let probe =
        crate::system::Probe { catalog: Ok(&st.catalog), runner: &SystemRunner, root: std::path::PathBuf::from("/") };
    let r = crate::system::report(&st.config, probe).await;
    *last = Some((std::time::Instant::now(), r.clone()));
    r
}
