//! The director: turns schedules into queued runs, claims runs from the catalog's queue and
//! executes those that belong to the server host (backup of local paths, forget, prune,
//! check, copy), recording status, counters and logs. Several servers can share one catalog: the
//! catalog's claim queries make sure each schedule fires once and each run runs once.

pub mod agents;
pub mod bells;
mod exec;
pub mod notify;
mod pools;
mod repos;
mod runner;
pub mod schedule;

pub use pools::PoolUsage;
pub use repos::{RepoPool, RepoPoolError};
pub use runner::{Director, DirectorOptions};

/// Runs a job type the director does not implement itself: the server plugs in what lives in
/// crates the director must not depend on (the tape tier of bams-appliance). Called on a
/// blocking thread with the job's opened repository; `log` appends to the run's log.
pub trait KindExecutor: Send + Sync {
    /// Check a job's options when it is created (the API answers 400 with the message).
    fn validate(&self, job: &bams_catalog::JobSpec) -> Result<(), String>;
    /// Run it: the counters to record and a one-line summary, or why it failed.
    fn run(
        &self,
        job: &bams_catalog::Job,
        repo: &bams_store::Repository,
        log: &(dyn Fn(String) + Send + Sync),
    ) -> Result<(bams_catalog::RunStats, String), String>;
}

/// Job types this server can execute today (restore: on agents); the API refuses others.
pub const SUPPORTED_JOB_KINDS: &[bams_catalog::JobKind] = &[
    bams_catalog::JobKind::Backup,
    bams_catalog::JobKind::Restore,
    bams_catalog::JobKind::Verify,
    bams_catalog::JobKind::Forget,
    bams_catalog::JobKind::Prune,
    bams_catalog::JobKind::Check,
    bams_catalog::JobKind::Copy,
];

/// How a verify job verifies (`options`): `{"mode": "read-data-subset", "percent": 10}` re-reads
/// and re-hashes a random share of the packs; `{"mode": "restore", "job": NAME}` restores the
/// latest snapshot of backup job NAME (default: the newest snapshot) into scratch space on the
/// server, re-reading every file against the snapshot, then deletes it.
#[derive(Debug, Clone, PartialEq)]
pub enum VerifyMode {
    /// Re-hash `percent` % of the packs.
    ReadDataSubset(f64),
    /// Restore and compare.
    Restore(Option<String>),
}

impl VerifyMode {
    /// A verify job's options, checked.
    pub fn from_options(o: &serde_json::Map<String, serde_json::Value>) -> Result<Self, String> {
        for k in o.keys() {
            if !matches!(k.as_str(), "mode" | "percent" | "job" | "notify") {
                return Err(format!("verify options: unknown key {k:?} (mode, percent, job)"));
            }
        }
        match o.get("mode").and_then(serde_json::Value::as_str).unwrap_or("read-data-subset") {
            "read-data-subset" => {
                let p = o.get("percent").map_or(Some(10.0), serde_json::Value::as_f64);
                match p {
                    Some(p) if p > 0.0 && p <= 100.0 => Ok(Self::ReadDataSubset(p)),
                    _ => Err("options.percent must be a number in (0, 100]".into()),
                }
            }
            "restore" => match o.get("job") {
                None => Ok(Self::Restore(None)),
                Some(serde_json::Value::String(j)) => Ok(Self::Restore(Some(j.clone()))),
                Some(_) => Err("options.job must be a backup job's name".into()),
            },
            other => Err(format!("options.mode must be read-data-subset or restore, not {other:?}")),
        }
    }
}

/// The destination of a copy job, as its options name it: `options.target_pool` (a pool's id
/// or name: its limits and retention apply) or `options.target_repository` (a repository id).
#[derive(Debug, Clone, PartialEq)]
pub enum CopyTarget {
    /// A registered repository.
    Repository(i64),
    /// A pool.
    Pool(bams_catalog::PoolRef),
}

/// Read a copy job's destination from its options; refused when missing, when both are
/// given, or when it is the source repository itself.
pub fn copy_target(
    source: Option<i64>,
    options: &serde_json::Map<String, serde_json::Value>,
) -> Result<CopyTarget, String> {
    match (options.get("target_repository"), options.get("target_pool")) {
        (Some(_), Some(_)) => Err("a copy job names target_repository or target_pool, not both".into()),
        (None, None) => Err(
            "a copy job needs options.target_pool (a pool's id or name) or options.target_repository (a repository id)"
                .into(),
        ),
        (Some(r), None) => {
            let r = r.as_i64().ok_or("options.target_repository must be a repository id")?;
            if Some(r) == source {
                return Err("a copy job's target_repository must differ from its repository".into());
            }
            Ok(CopyTarget::Repository(r))
        }
        (None, Some(p)) => serde_json::from_value(p.clone())
            .map(CopyTarget::Pool)
            .map_err(|_| "options.target_pool must be a pool's id or name".into()),
    }
}
