//! The appliance's health at a glance: `bams doctor` and `GET /api/v1/system` build the same
//! report. Each check says ok, warn or fail and why; the tools, tape devices and free space
//! it read are listed too. A `fail` means something the server needs is broken (exit 1 of
//! `bams doctor`); a `warn` needs attention soon (a certificate near expiry, a repository not
//! checked for a month) or a configured feature lacks its tool.

use std::path::{Path, PathBuf};

use bams_appliance::doctor::{ScsiDevice, Space, Tool};
use bams_appliance::runner::CommandRunner;
use bams_catalog::Catalog;
use serde::Serialize;

use crate::config::Config;

/// Days after which a repository whose data was never re-read by a check or verify job is
/// reported.
pub const CHECK_MAX_AGE_DAYS: i64 = 30;
/// Days before a certificate's end from which it is reported.
pub const TLS_WARN_DAYS: i64 = 30;
/// Clock difference with PostgreSQL (ms) from which it is reported: schedules and locks
/// compare times across servers.
pub const SKEW_WARN_MS: i64 = 2_000;
/// Share of a file system (percent) below which free space is reported, and below which it
/// fails.
pub const SPACE_WARN_PERCENT: f64 = 10.0;
/// See [`SPACE_WARN_PERCENT`].
pub const SPACE_FAIL_PERCENT: f64 = 2.0;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Fine.
    Ok,
    /// Needs attention.
    Warn,
    /// Broken.
    Fail,
}

impl Status {
    /// As serialized (`ok`, `warn`, `fail`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warn => "warn",
            Self::Fail => "fail",
        }
    }
}

/// One check.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Check {
    /// What was checked (`catalog`, `tls`, `space`, …).
    pub name: String,
    /// Its outcome.
    pub status: Status,
    /// What was found, in a sentence.
    pub detail: String,
}

/// The report.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SystemReport {
    /// BAMS version.
    pub version: String,
    /// This machine.
    pub hostname: String,
    /// The worst status of all checks.
    pub status: Status,
    /// Every check.
    pub checks: Vec<Check>,
    /// Tools the appliance features run.
    pub tools: Vec<Tool>,
    /// Tape changers and drives the kernel sees.
    pub tape_devices: Vec<ScsiDevice>,
    /// Free space where data is written.
    pub space: Vec<Space>,
}

/// What the report reads besides the config.
pub struct Probe<'a> {
    /// The catalog, or why it could not be opened.
    pub catalog: Result<&'a Catalog, String>,
    /// Runs the tools.
    pub runner: &'a dyn CommandRunner,
    /// `/` (tests: a fixture tree with `sys/class/scsi_generic`).
    pub root: PathBuf,
}

/// Build the report.
pub async fn report(cfg: &Config, probe: Probe<'_>) -> SystemReport {
    let mut checks = Vec::new();
    let mut check = |name: &str, status: Status, detail: String| {
        checks.push(Check { name: name.to_string(), status, detail });
    };
    let mut space = vec![];
    let mut paths: Vec<(String, PathBuf)> = vec![("data directory".into(), cfg.data_dir.clone())];

    // Catalog: reachable, migrated, clock.
    match probe.catalog {
        Err(e) => check("catalog", Status::Fail, format!("cannot open the catalog: {e}")),
        Ok(cat) => {
            let mut current = false;
            match cat.migration_status().await {
                Ok((applied, known)) if applied == known => {
                    current = true;
                    check("catalog", Status::Ok, format!("reachable, {applied} migrations applied"))
                }
                Ok((applied, known)) if applied < known => check(
                    "catalog",
                    Status::Warn,
                    format!("{} migration(s) pending: the server applies them when it starts", known - applied),
                ),
                Ok((applied, known)) => check(
                    "catalog",
                    Status::Fail,
                    format!("{applied} migrations applied but this version knows {known}: a newer BAMS wrote it"),
                ),
                Err(e) => check("catalog", Status::Fail, format!("reading its migrations: {e}")),
            }
            match cat.database_now_ms().await {
                Ok(Some(db)) => {
                    let skew = db - now_ms();
                    let status = if skew.abs() >= SKEW_WARN_MS { Status::Warn } else { Status::Ok };
                    check("clock", status, format!("PostgreSQL's clock is {skew:+} ms from this machine's"));
                }
                Ok(None) => {}
                Err(e) => check("clock", Status::Warn, format!("reading PostgreSQL's clock: {e}")),
            }
            // An older schema cannot answer the newer queries: nothing more to read until the
            // server migrated it.
            if current {
                checks_and_repositories(cat, &mut check, &mut paths).await;
            }
        }
    }
    if let Some(db) = cfg.catalog.strip_prefix("sqlite://") {
        if let Some(dir) = Path::new(db.split('?').next().unwrap_or(db)).parent() {
            paths.push(("catalog".into(), dir.to_path_buf()));
        }
    }

    // Free space, once per directory.
    let mut seen = std::collections::HashSet::new();
    paths.retain(|(_, p)| seen.insert(p.clone()));
    for (what, path) in paths {
        match Space::of(&what, &path) {
            Ok(s) => {
                let pct = s.free_percent();
                let status = if pct < SPACE_FAIL_PERCENT {
                    Status::Fail
                } else if pct < SPACE_WARN_PERCENT {
                    Status::Warn
                } else {
                    Status::Ok
                };
                let detail = format!(
                    "{what} ({}): {:.1} GiB free of {:.1} GiB ({pct:.0}%)",
                    path.display(),
                    gib(s.free_bytes),
                    gib(s.total_bytes)
                );
                check("space", status, detail);
                space.push(s);
            }
            Err(e) => check("space", Status::Warn, format!("{what} ({}): {e}", path.display())),
        }
    }

    // TLS.
    match (&cfg.tls.cert, &cfg.tls.key) {
        (Some(cert), Some(_)) => {
            let (status, detail) = tls_expiry(cert);
            check("tls", status, detail);
        }
        _ => check("tls", Status::Warn, "TLS is off: logins and agents' traffic cross the network in clear".into()),
    }

    // Tools, and the features configured to use them.
    let tools = bams_appliance::doctor::tools(probe.runner).await;
    let has = |name: &str| tools.iter().any(|t| t.name == name && t.version.is_some());
    let tape_devices = bams_appliance::doctor::tape_devices(&probe.root);
    match cfg.tape.library.as_str() {
        "mtx" => {
            let changer = probe.root.join(cfg.tape.changer.trim_start_matches('/'));
            let missing: Vec<&str> = ["mtx", "mt"].into_iter().filter(|t| !has(t)).collect();
            if !missing.is_empty() {
                check("tape", Status::Fail, format!("the mtx library needs {} (not installed)", missing.join(", ")));
            } else if !changer.exists() {
                check("tape", Status::Fail, format!("the changer {} does not exist", cfg.tape.changer));
            } else {
                check(
                    "tape",
                    Status::Ok,
                    format!("mtx library on {}, {} drive(s)", cfg.tape.changer, cfg.tape.drives.len()),
                );
            }
        }
        "virtual" => check("tape", Status::Ok, "virtual tape library (file-backed)".into()),
        _ => {}
    }
    let iscsi_tool = match cfg.iscsi.backend.as_str() {
        "scst" => "scstadmin",
        "lio" => "targetcli",
        _ => "tgtadm",
    };
    if has(iscsi_tool) {
        check("iscsi", Status::Ok, format!("{} backend ({iscsi_tool} found)", cfg.iscsi.backend));
    } else {
        check("iscsi", Status::Warn, format!("{} backend, but {iscsi_tool} is not installed", cfg.iscsi.backend));
    }
    if cfg.bacula_sd_config.exists() && !has("bacula-sd") {
        check(
            "bacula",
            Status::Warn,
            format!("{} exists but bacula-sd is not installed", cfg.bacula_sd_config.display()),
        );
    }

    let status = checks.iter().map(|c| c.status).max().unwrap_or(Status::Ok);
    SystemReport {
        version: env!("CARGO_PKG_VERSION").to_string(),
        hostname: bams_store::host::hostname(),
        status,
        checks,
        tools,
        tape_devices,
        space,
    }
}

/// Repositories whose data was not re-read lately, and the local ones' paths for free space.
async fn checks_and_repositories(
    cat: &Catalog,
    check: &mut impl FnMut(&str, Status, String),
    paths: &mut Vec<(String, PathBuf)>,
) {
    let (repos, last) = match (cat.list_repositories().await, cat.last_checks().await) {
        (Ok(r), Ok(l)) => (r, l),
        (Err(e), _) | (_, Err(e)) => return check("checks", Status::Warn, format!("reading the catalog: {e}")),
    };
    let now = now_ms();
    let mut stale = Vec::new();
    // Agents' repositories are checked by the jobs of their parent.
    for r in repos.iter().filter(|r| r.parent.is_none()) {
        if !r.url.contains("://") {
            paths.push((format!("repository {}", r.name), PathBuf::from(&r.url)));
        }
        match last.iter().find(|(id, _)| *id == r.id) {
            Some((_, at)) if now - at < CHECK_MAX_AGE_DAYS * 86_400_000 => {}
            Some((_, at)) => stale.push(format!("{} (last {} days ago)", r.name, (now - at) / 86_400_000)),
            None => stale.push(format!("{} (never)", r.name)),
        }
    }
    if stale.is_empty() {
        check("checks", Status::Ok, format!("every repository was checked in the last {CHECK_MAX_AGE_DAYS} days"));
    } else {
        check(
            "checks",
            Status::Warn,
            format!("not checked in {CHECK_MAX_AGE_DAYS} days: {}; schedule a check or verify job", stale.join(", ")),
        );
    }
}

/// When the certificate in `path` ends, as a check.
fn tls_expiry(path: &Path) -> (Status, String) {
    let pem = match std::fs::read(path) {
        Ok(p) => p,
        Err(e) => return (Status::Fail, format!("{}: {e}", path.display())),
    };
    let der = match x509_parser::pem::parse_x509_pem(&pem) {
        Ok((_, p)) => p.contents,
        Err(e) => return (Status::Fail, format!("{} is not a PEM certificate: {e}", path.display())),
    };
    let not_after = match x509_parser::parse_x509_certificate(&der) {
        Ok((_, c)) => c.validity().not_after.timestamp(),
        Err(e) => return (Status::Fail, format!("{}: {e}", path.display())),
    };
    let days = (not_after * 1000 - now_ms()).div_euclid(86_400_000);
    let when = chrono::DateTime::from_timestamp(not_after, 0).map(|t| t.to_rfc3339()).unwrap_or_default();
    if days < 0 {
        (Status::Fail, format!("the certificate {} expired on {when}", path.display()))
    } else if days < TLS_WARN_DAYS {
        (Status::Warn, format!("the certificate {} expires in {days} days ({when})", path.display()))
    } else {
        (Status::Ok, format!("certificate valid for {days} more days ({when})"))
    }
}

fn gib(b: u64) -> f64 {
    b as f64 / f64::from(1u32 << 30)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
