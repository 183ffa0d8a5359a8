//! Executing one claimed run on the server host. The engine is synchronous, so each
//! operation runs on a blocking thread; warnings and progress lines stream into the run log.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bams_catalog::{Job, JobKind, Level, Run, RunStats, SnapshotSummary};
use bams_store::archiver::{BackupOptions, ParentChoice, Progress};
use bams_store::check::ReadData;
use bams_store::forget::{ForgetRequest, Retention};
use bams_store::prune::PruneOptions;
use bams_store::Repository;
use tokio::sync::mpsc;

use crate::runner::{stamp, Director, RunControl};

/// What a successful run reports.
pub(crate) struct Outcome {
    pub(crate) stats: RunStats,
    pub(crate) message: String,
}

type ExecResult<T> = Result<T, String>;

/// A repository and the agents' repositories under it ([`crate::RepoPool::family`]): what
/// forget, prune, check, verify and copy jobs on it cover.
type Family = [(bams_catalog::Repository, Arc<Repository>)];

/// A line about one repository of `family`: named when there is more than one.
fn about(family: &Family, rec: &bams_catalog::Repository, line: String) -> String {
    if family.len() > 1 {
        format!("repository {}: {line}", rec.name)
    } else {
        line
    }
}

/// Streams log lines into the catalog, counts files and bytes for the live progress, and
/// tells the engine when to stop.
struct RunProgress {
    ctl: Arc<RunControl>,
    log: mpsc::UnboundedSender<String>,
    counts: Arc<Counts>,
}

/// Files and bytes done so far, written to the run's row every second.
#[derive(Default)]
struct Counts {
    files: std::sync::atomic::AtomicU64,
    bytes: std::sync::atomic::AtomicU64,
}

impl Progress for RunProgress {
    fn bytes(&self, n: u64) {
        self.counts.bytes.fetch_add(n, Ordering::Relaxed);
    }
    fn file_done(&self) {
        self.counts.files.fetch_add(1, Ordering::Relaxed);
    }
    fn warn(&self, msg: &str) {
        let _ = self.log.send(format!("{} warning: {msg}\n", stamp()));
    }
    fn cancelled(&self) -> bool {
        self.ctl.cancel.load(Ordering::SeqCst) || self.ctl.shutdown.load(Ordering::SeqCst)
    }
}

pub(crate) async fn execute(d: &Arc<Director>, run: &Run, ctl: &Arc<RunControl>) -> ExecResult<Outcome> {
    let cat = d.catalog().clone();
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let run_id = run.id;
    let log_cat = cat.clone();
    let logger = tokio::spawn(async move {
        while let Some(line) = rx.recv().await {
            let _ = log_cat.append_log(run_id, &line).await;
        }
    });
    let log = |s: String| {
        let _ = tx.send(format!("{} {s}\n", stamp()));
    };
    // Progress for the dashboard and run pages (on any server): what is done, each second.
    let counts = Arc::new(Counts::default());
    let reporter = {
        let (cat, counts) = (cat.clone(), counts.clone());
        tokio::spawn(async move {
            let mut last = (0, 0);
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                let now = (counts.files.load(Ordering::Relaxed), counts.bytes.load(Ordering::Relaxed));
                if now != last {
                    last = now;
                    let (files, bytes) =
                        (i64::try_from(now.0).unwrap_or(i64::MAX), i64::try_from(now.1).unwrap_or(i64::MAX));
                    let _ = cat.run_progress(run_id, files, bytes).await;
                }
            }
        })
    };
    let result = async {
        let job_id = run.job_id.ok_or("the run's job was deleted")?;
        let job = cat.get_job(job_id).await.map_err(|e| e.to_string())?;
        log(format!("{} job {:?} on server {}", job.kind.as_str(), job.name, d.server_id()));
        let progress = RunProgress { ctl: ctl.clone(), log: tx.clone(), counts: counts.clone() };
        let family = || async { d.repos.family(job.repository).await.map_err(|e| e.to_string()) };
        match job.kind {
            JobKind::Backup => {
                let repo = d.repos.get(job.repository).await.map_err(|e| e.to_string())?;
                backup(d, run, &job, repo, progress, &log).await
            }
            JobKind::Forget => forget(d, &job, &family().await?, &log).await,
            JobKind::Prune => prune(&family().await?, &log).await,
            JobKind::Check => check(&job, &family().await?, &log).await,
            JobKind::Verify => verify(d, run, &job, &family().await?, &log).await,
            JobKind::Copy => copy(d, &job, &family().await?, progress, &log).await,
            other => match d.executor(other) {
                Some(exec) => {
                    let repo = d.repos.get(job.repository).await.map_err(|e| e.to_string())?;
                    plugged(exec, job, repo, tx.clone()).await
                }
                None => Err(format!("job type {} is not executed by this server version", other.as_str())),
            },
        }
    }
    .await;
    reporter.abort();
    drop(tx);
    let _ = logger.await;
    result
}

/// A job type plugged in by the server ([`crate::KindExecutor`]), on a blocking thread.
async fn plugged(
    exec: Arc<dyn crate::KindExecutor>,
    job: Job,
    repo: Arc<Repository>,
    tx: mpsc::UnboundedSender<String>,
) -> ExecResult<Outcome> {
    let joined = tokio::task::spawn_blocking(move || {
        let log = move |s: String| {
            let _ = tx.send(format!("{} {s}\n", stamp()));
        };
        exec.run(&job, &repo, &log)
    })
    .await
    .map_err(|e| format!("task failed: {e}"))?;
    let (stats, message) = joined?;
    Ok(Outcome { stats, message })
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> bams_store::Result<T> + Send + 'static) -> ExecResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| format!("task failed: {e}"))?.map_err(|e| e.to_string())
}

/// Map the level onto a parent: Full = none, Incremental = the job's last snapshot,
/// Differential = the job's last Full. Without the needed predecessor the run is a Full.
pub(crate) async fn choose_parent(
    d: &Director,
    run: &Run,
    job: &Job,
    repo: &Arc<Repository>,
    log: &impl Fn(String),
) -> (ParentChoice, Level) {
    let level = run.level.unwrap_or(job.level);
    let base = match level {
        Level::Full => return (ParentChoice::None, Level::Full),
        Level::Incremental => d.catalog().last_successful_backup(job.id, false).await,
        Level::Differential => d.catalog().last_successful_backup(job.id, true).await,
    };
    let snapshot = base.ok().flatten().and_then(|r| r.snapshot_id);
    let Some(snap) = snapshot else {
        log(format!(
            "no earlier {} of this job: running a Full",
            if level == Level::Differential { "Full" } else { "backup" }
        ));
        return (ParentChoice::None, Level::Full);
    };
    let exists = {
        let (repo, snap) = (repo.clone(), snap.clone());
        blocking(move || repo.find_snapshot(&snap).map(|_| ())).await.is_ok()
    };
    match bams_store::Id::from_hex(&snap).ok().filter(|_| exists) {
        Some(id) => {
            log(format!("{} based on snapshot {}", level.as_str(), &snap[..12.min(snap.len())]));
            (ParentChoice::Id(id), level)
        }
        None => {
            log(format!("parent snapshot {snap} is gone (forgotten?): running a Full"));
            (ParentChoice::None, Level::Full)
        }
    }
}

async fn backup(
    d: &Arc<Director>,
    run: &Run,
    job: &Job,
    repo: Arc<Repository>,
    progress: RunProgress,
    log: &impl Fn(String),
) -> ExecResult<Outcome> {
    if let Some(pool) = d.pool_of(job).await? {
        d.ensure_room(&pool, job.repository).await?;
    }
    let (parent, level) = choose_parent(d, run, job, &repo, log).await;
    if Some(level) != run.level {
        let _ = d.catalog().set_run_level(run.id, level).await;
    }
    let mut opts = BackupOptions::paths(job.paths.iter().map(PathBuf::from).collect());
    opts.excludes = job.excludes.clone();
    opts.one_file_system = job.options.get("one_file_system").and_then(serde_json::Value::as_bool).unwrap_or(false);
    opts.tags =
        job.options.get("tags").and_then(|t| serde_json::from_value::<Vec<String>>(t.clone()).ok()).unwrap_or_default();
    opts.job = Some(job.name.clone());
    opts.parent = parent;
    let r = {
        let repo = repo.clone();
        blocking(move || bams_store::archiver::backup(&repo, opts, &progress)).await?
    };
    let s = &r.snapshot;
    let summary = SnapshotSummary::from_snapshot(job.repository, &r.id, s);
    let _ = d.catalog().add_snapshot(&summary).await;
    let mut message = format!(
        "snapshot {} ({}): {} files, {} bytes, {} new",
        r.id.short(),
        level.as_str(),
        summary.files,
        summary.bytes,
        s.summary.data_added
    );
    if !r.warnings.is_empty() {
        message = format!("partial: {} file(s) unreadable; {message}", r.warnings.len());
    }
    log(message.clone());
    if let Some(ret) = d.retention_of(job).await? {
        let removed = apply_retention(d, job, &repo, &ret, Some(job.name.clone())).await?;
        log(format!("retention removed {removed} snapshot(s)"));
    }
    Ok(Outcome {
        stats: RunStats {
            files: summary.files,
            bytes: summary.bytes,
            new_bytes: i64::try_from(s.summary.data_added).unwrap_or(i64::MAX),
            errors: r.warnings.len() as i64,
            snapshot_id: Some(r.id.to_hex()),
        },
        message,
    })
}

pub(crate) async fn apply_retention(
    d: &Director,
    job: &Job,
    repo: &Arc<Repository>,
    retention: &serde_json::Value,
    only_job: Option<String>,
) -> ExecResult<usize> {
    let ret: Retention = serde_json::from_value(retention.clone()).map_err(|e| format!("retention: {e}"))?;
    let policy = ret.to_policy().map_err(|e| e.to_string())?;
    if policy.is_empty() {
        return Ok(0);
    }
    let req = ForgetRequest {
        policy,
        host: job.options.get("host").and_then(|v| v.as_str()).map(str::to_string),
        tag: job.options.get("tag").and_then(|v| v.as_str()).map(str::to_string),
        job: only_job,
        snapshots: Vec::new(),
        dry_run: false,
    };
    let report = {
        let repo = repo.clone();
        blocking(move || bams_store::forget::forget(&repo, &req)).await?
    };
    d.repos.refresh_snapshots(job.repository).await.map_err(|e| e.to_string())?;
    Ok(report.removed.len())
}

async fn forget(d: &Arc<Director>, job: &Job, family: &Family, log: &impl Fn(String)) -> ExecResult<Outcome> {
    let ret = d.retention_of(job).await?.ok_or("a forget job needs a retention policy (its own or its pool's)")?;
    let only = job.options.get("job").and_then(|v| v.as_str()).map(str::to_string);
    let mut removed = 0;
    for (rec, repo) in family {
        let within = Job { repository: rec.id, ..job.clone() };
        let n = apply_retention(d, &within, repo, &ret, only.clone()).await?;
        if family.len() > 1 {
            log(about(family, rec, format!("removed {n} snapshot(s)")));
        }
        removed += n;
    }
    let message = format!("removed {removed} snapshot(s)");
    log(message.clone());
    Ok(Outcome { stats: RunStats::default(), message })
}

async fn prune(family: &Family, log: &impl Fn(String)) -> ExecResult<Outcome> {
    let (mut freed, mut deleted, mut used) = (0u64, 0usize, 0u64);
    let mut message = String::new();
    for (rec, repo) in family {
        let repo = repo.clone();
        let r = blocking(move || bams_store::prune::prune(&repo, &PruneOptions::default())).await?;
        message = format!(
            "deleted {} pack(s), repacked {}, freed {} bytes, {} bytes in use",
            r.packs_deleted, r.packs_repacked, r.bytes_freed, r.bytes_used
        );
        log(about(family, rec, message.clone()));
        (freed, deleted, used) = (freed + r.bytes_freed, deleted + r.packs_deleted, used + r.bytes_used);
    }
    if family.len() > 1 {
        message = format!(
            "{} repositories: deleted {deleted} pack(s), freed {freed} bytes, {used} bytes in use",
            family.len()
        );
        log(message.clone());
    }
    Ok(Outcome { stats: RunStats { bytes: i64::try_from(freed).unwrap_or(i64::MAX), ..Default::default() }, message })
}

/// Copy the job's snapshots (all, or those of `options.host` / `options.tag`) from its
/// repository and the agents' repositories under it to `options.target_repository`;
/// already copied ones are skipped.
async fn copy(
    d: &Arc<Director>,
    job: &Job,
    family: &Family,
    progress: RunProgress,
    log: &impl Fn(String),
) -> ExecResult<Outcome> {
    let (target, pool) = match crate::copy_target(Some(job.repository), &job.options)? {
        crate::CopyTarget::Repository(r) => (r, d.catalog().pool_of_repository(r).await.map_err(|e| e.to_string())?),
        crate::CopyTarget::Pool(p) => {
            let pool = d.catalog().find_pool(&p).await.map_err(|e| e.to_string())?;
            (pool.repository, Some(pool))
        }
    };
    if family.iter().any(|(rec, _)| rec.id == target) {
        return Err("the copy's target is its source repository".into());
    }
    let dst = d.repos.get(target).await.map_err(|e| e.to_string())?;
    if let Some(pool) = &pool {
        d.ensure_room(pool, target).await?;
        log(format!("copying into pool {:?} (repository {target})", pool.name));
    }
    let dst_for_retention = dst.clone();
    let host = job.options.get("host").and_then(|v| v.as_str()).map(str::to_string);
    let tag = job.options.get("tag").and_then(|v| v.as_str()).map(str::to_string);
    let sources: Vec<Arc<Repository>> = family.iter().map(|(_, r)| r.clone()).collect();
    let report = blocking(move || {
        let mut total = bams_store::copy::CopyReport::default();
        for src in &sources {
            let (all, _) = src.snapshots()?;
            let selection: Vec<_> = all
                .into_iter()
                .filter(|e| host.as_ref().is_none_or(|h| &e.snapshot.host == h))
                .filter(|e| tag.as_ref().is_none_or(|t| e.snapshot.tags.contains(t)))
                .collect();
            let r = bams_store::copy::copy(src, &dst, &selection, Default::default(), &progress)?;
            total.copied.extend(r.copied);
            total.skipped.extend(r.skipped);
            total.blobs_added += r.blobs_added;
            total.bytes_added += r.bytes_added;
            total.rehashed |= r.rehashed;
        }
        Ok(total)
    })
    .await?;
    d.repos.refresh_snapshots(target).await.map_err(|e| e.to_string())?;
    let message = format!(
        "copied {} snapshot(s), {} already there; {} blob(s), {} bytes added{}",
        report.copied.len(),
        report.skipped.len(),
        report.blobs_added,
        report.bytes_added,
        if report.rehashed { " (re-hashed)" } else { "" }
    );
    log(message.clone());
    if let Some(ret) = pool.and_then(|p| p.retention) {
        let mut target_job = job.clone();
        target_job.repository = target;
        let removed = apply_retention(d, &target_job, &dst_for_retention, &ret, None).await?;
        log(format!("the target pool's retention removed {removed} snapshot(s)"));
    }
    Ok(Outcome {
        stats: RunStats { bytes: i64::try_from(report.bytes_added).unwrap_or(i64::MAX), ..Default::default() },
        message,
    })
}

async fn check(job: &Job, family: &Family, log: &impl Fn(String)) -> ExecResult<Outcome> {
    let read = if job.options.get("read_data").and_then(serde_json::Value::as_bool) == Some(true) {
        ReadData::All
    } else if let Some(p) = job.options.get("read_data_subset").and_then(serde_json::Value::as_f64) {
        ReadData::Subset(p.clamp(0.0, 100.0))
    } else {
        ReadData::None
    };
    check_family(family, read, log).await
}

/// Check every repository of `family`; the run fails if any has an error.
async fn check_family(family: &Family, read: ReadData, log: &impl Fn(String)) -> ExecResult<Outcome> {
    let mut lines = Vec::new();
    let mut failed = false;
    let mut problems = 0;
    for (rec, repo) in family {
        let named = |l: String| log(about(family, rec, l));
        match check_with(repo.clone(), read, &named).await {
            Ok(o) => {
                problems += o.stats.errors;
                lines.push(about(family, rec, o.message));
            }
            Err(e) => {
                failed = true;
                lines.push(about(family, rec, e));
            }
        }
    }
    let message = lines.join("; ");
    if failed {
        return Err(message);
    }
    Ok(Outcome { stats: RunStats { errors: problems, ..Default::default() }, message })
}

/// Verify job: re-hash a share of the packs, or restore a snapshot to scratch space and
/// compare every file with it.
async fn verify(d: &Director, run: &Run, job: &Job, family: &Family, log: &impl Fn(String)) -> ExecResult<Outcome> {
    match crate::VerifyMode::from_options(&job.options)? {
        crate::VerifyMode::ReadDataSubset(p) => {
            log(format!("re-reading {p}% of the packs"));
            check_family(family, ReadData::Subset(p), log).await
        }
        crate::VerifyMode::Restore(source) => {
            let snap = match source {
                Some(name) => d.last_snapshot_of_job(&name).await?.0,
                None => "latest".to_string(),
            };
            let scratch = d.repos.scratch_dir().join(format!("verify-run-{}", run.id));
            log(format!("restoring snapshot {} into {} to compare it", &snap[..snap.len().min(12)], scratch.display()));
            let target = scratch.clone();
            let repos: Vec<Arc<Repository>> = family.iter().map(|(_, r)| r.clone()).collect();
            let r = blocking(move || {
                // The snapshot is in one repository of the family; `latest` is the newest of all.
                let mut found: Option<(Arc<Repository>, bams_store::snapshot::SnapshotEntry)> = None;
                for repo in &repos {
                    let Ok(entry) = repo.find_snapshot(&snap) else { continue };
                    if found.as_ref().is_none_or(|(_, f)| snap == "latest" && entry.snapshot.time > f.snapshot.time) {
                        found = Some((repo.clone(), entry));
                    }
                }
                let (repo, entry) = found.ok_or_else(|| bams_store::Error::not_found(format!("snapshot {snap}")))?;
                let _lock = bams_store::lock::acquire(&repo, false, "verify", std::time::Duration::from_secs(60))?;
                let index = repo.load_index()?;
                let (root, root_path) =
                    bams_store::restorer::resolve_subtree(&repo, &index, &entry.snapshot.tree, None)?;
                let mut opts = bams_store::restorer::RestoreOptions::new(&target);
                opts.verify = true;
                opts.owners = false;
                let r = bams_store::restorer::restore(
                    &repo,
                    &index,
                    &root,
                    &root_path,
                    &opts,
                    &bams_store::archiver::NoProgress,
                )?;
                Ok((entry.id, r))
            })
            .await;
            // The scratch copy goes whatever happened.
            let _ = std::fs::remove_dir_all(&scratch);
            let (id, r) = r?;
            for e in &r.errors {
                log(format!("error: {e}"));
            }
            let message = format!(
                "snapshot {} restored and compared: {} files, {} bytes, {} verified, {} error(s)",
                id.short(),
                r.files,
                r.bytes,
                r.verified,
                r.errors.len()
            );
            if !r.errors.is_empty() {
                return Err(message);
            }
            Ok(Outcome {
                stats: RunStats {
                    files: i64::try_from(r.files).unwrap_or(i64::MAX),
                    bytes: i64::try_from(r.bytes).unwrap_or(i64::MAX),
                    ..Default::default()
                },
                message,
            })
        }
    }
}

impl Director {
    /// The snapshot of the last successful backup of the job named `name` (verify jobs), and
    /// that job.
    pub(crate) async fn last_snapshot_of_job(&self, name: &str) -> ExecResult<(String, Job)> {
        let jobs = self.catalog().list_jobs().await.map_err(|e| e.to_string())?;
        let src = jobs.into_iter().find(|j| j.name == name).ok_or(format!("no job named {name:?}"))?;
        let last = self.catalog().last_successful_backup(src.id, false).await.map_err(|e| e.to_string())?;
        let snap = last.and_then(|r| r.snapshot_id).ok_or(format!("job {name:?} has no successful backup yet"))?;
        Ok((snap, src))
    }
}

async fn check_with(repo: Arc<Repository>, read: ReadData, log: &impl Fn(String)) -> ExecResult<Outcome> {
    let r = blocking(move || bams_store::check::check(&repo, read, &|| {})).await?;
    for p in &r.problems {
        log(format!("{}: {}: {}", p.severity, p.object, p.message));
    }
    let errors = r.problems.iter().filter(|p| p.severity == "error").count();
    let message = format!(
        "{} snapshot(s), {} pack(s) ({} read), {} problem(s)",
        r.snapshots,
        r.packs,
        r.packs_read,
        r.problems.len()
    );
    if errors > 0 {
        return Err(format!("check found {errors} error(s): {message}"));
    }
    Ok(Outcome { stats: RunStats { errors: r.problems.len() as i64, ..Default::default() }, message })
}
