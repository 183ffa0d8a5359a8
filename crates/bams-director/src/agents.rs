//! Runs executed by agents (docs/design.md §1). An agent connects out: it long-polls the server
//! for work (`/api/v1/agent/poll`), reports progress, log lines and heartbeats while it works
//! (`…/runs/{id}/events`, whose answer carries a cancel request) and the outcome at the end
//! (`…/runs/{id}/finish`). Every step goes through the catalog, so any server of a scale-out
//! group can answer any agent request, and an agent's run survives a server restart: it is
//! claimed for the agent (not for a server) and failed only when its heartbeats stop.
//!
//! The protocol types live here, shared by the server's handlers and `bams agent`.

use std::sync::{Arc, Mutex};

use bams_catalog::{Agent, Job, JobKind, Run, RunStats, RunStatus, SnapshotSummary};
use bams_store::snapshot::SnapshotEntry;
use serde::{Deserialize, Serialize};

use crate::exec::{apply_retention, choose_parent};
use crate::runner::{stamp, Director};

/// What an agent says when it asks for work.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Poll {
    /// Its host name.
    pub hostname: String,
    /// Its BAMS version.
    pub version: String,
    /// Seconds it is willing to wait for work (capped by the server).
    #[serde(default)]
    pub wait_secs: u64,
}

/// Work for an agent.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Assignment {
    /// The run to report on.
    pub run_id: i64,
    /// `backup`.
    pub kind: String,
    /// Repository name: the agent writes through `bams://SERVER/NAME` with its credential.
    pub repository: String,
    /// The repository's key material (hex), for client-side encryption on the agent.
    pub key_hex: String,
    /// Paths to back up.
    pub paths: Vec<String>,
    /// Exclude patterns.
    pub excludes: Vec<String>,
    /// Stay on the filesystems of the paths.
    pub one_file_system: bool,
    /// Tags for the snapshot.
    pub tags: Vec<String>,
    /// Job name recorded in the snapshot.
    pub job: String,
    /// Parent snapshot (Incremental/Differential), by id.
    pub parent: Option<String>,
    /// Upload limit in bytes per second (0: none).
    pub bandwidth_limit: u64,
    /// Restore: the snapshot (full id).
    #[serde(default)]
    pub snapshot: Option<String>,
    /// Restore: the directory to restore into, on the agent.
    #[serde(default)]
    pub target: Option<String>,
    /// Restore: only these paths (patterns); empty = everything.
    #[serde(default)]
    pub include: Vec<String>,
    /// Restore: re-read every file and compare it with the snapshot.
    #[serde(default)]
    pub verify: bool,
    /// Commands before and after the backup, and a command whose output is backed up.
    #[serde(default)]
    pub hooks: Hooks,
}

/// A command the agent runs: an argument vector (never a shell string) and a time limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Command {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Seconds before it is killed (default 600).
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
}

fn default_timeout() -> u64 {
    600
}

/// A command whose standard output is the backup (a database dump).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StdinCommand {
    /// The command.
    #[serde(flatten)]
    pub command: Command,
    /// File name of the stream in the snapshot.
    pub name: String,
}

/// A backup job's commands (`options.hooks`), as Bareos' RunBeforeJob/RunAfterJob and bpipe.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Hooks {
    /// Run in order before the backup; one that fails (or times out) fails the run.
    pub before: Vec<Command>,
    /// Run in order after it, whatever happened (`BAMS_RUN_STATUS` is `ok` or `failed`); a
    /// failure is a warning.
    pub after: Vec<Command>,
    /// Back up this command's output instead of paths.
    pub stdin: Option<StdinCommand>,
}

impl Hooks {
    /// A job's `options.hooks`, checked.
    pub fn from_options(o: &serde_json::Map<String, serde_json::Value>, paths: &[String]) -> Result<Self, String> {
        let Some(v) = o.get("hooks") else { return Ok(Self::default()) };
        let h: Self = serde_json::from_value(v.clone()).map_err(|e| format!("options.hooks: {e}"))?;
        let all = h.before.iter().chain(&h.after).chain(h.stdin.iter().map(|s| &s.command));
        for c in all {
            if c.argv.is_empty() || c.argv[0].is_empty() {
                return Err("options.hooks: a command needs argv: [program, args…]".into());
            }
            if c.timeout_secs == 0 || c.timeout_secs > 86_400 {
                return Err("options.hooks: timeout_secs must be 1-86400".into());
            }
        }
        if let Some(s) = &h.stdin {
            if !paths.is_empty() {
                return Err("options.hooks.stdin backs up a command's output: the job takes no paths".into());
            }
            if s.name.is_empty() || s.name.contains('/') {
                return Err("options.hooks.stdin.name must be a file name".into());
            }
        }
        Ok(h)
    }
}

/// A restore job's options (`options` of a `restore` job for an agent).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreSpec {
    /// Snapshot id (or prefix), or `latest`: the newest snapshot of the source machine.
    pub snapshot: String,
    /// Absolute directory on the agent.
    pub target: String,
    /// Only these paths.
    #[serde(default)]
    pub include: Vec<String>,
    /// Verify what was written.
    #[serde(default)]
    pub verify: bool,
    /// Whose snapshots `latest` means (another agent's: a cross-machine restore); default the
    /// agent that restores.
    #[serde(default)]
    pub source_agent: Option<i64>,
}

impl RestoreSpec {
    /// Parse and check a restore job's options (on create, and again when it runs).
    pub fn from_options(o: &serde_json::Map<String, serde_json::Value>) -> Result<Self, String> {
        let spec: Self = serde_json::from_value(serde_json::Value::Object(o.clone()))
            .map_err(|e| format!("restore options: {e} (snapshot, target, include, verify, source_agent)"))?;
        let target = std::path::Path::new(&spec.target);
        if !target.is_absolute() || target.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            return Err(format!("options.target {:?} must be an absolute path without '..'", spec.target));
        }
        if spec.snapshot.is_empty() {
            return Err("options.snapshot must be a snapshot id or \"latest\"".into());
        }
        Ok(spec)
    }
}

/// The answer to a poll.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PollReply {
    /// Runs to start now.
    pub assignments: Vec<Assignment>,
}

/// Progress, log lines and a heartbeat from a running run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Events {
    /// Files done so far.
    #[serde(default)]
    pub files: u64,
    /// Bytes read so far.
    #[serde(default)]
    pub bytes: u64,
    /// New log lines.
    #[serde(default)]
    pub log: Vec<String>,
}

/// The answer to events.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventsReply {
    /// Stop the run at its next checkpoint.
    pub cancel: bool,
}

/// How a run ended on the agent.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Finish {
    /// Whether it succeeded (a partial backup succeeds, with `errors`).
    pub ok: bool,
    /// Whether it stopped because of a cancel.
    #[serde(default)]
    pub cancelled: bool,
    /// Snapshot written.
    pub snapshot_id: Option<String>,
    /// Files.
    #[serde(default)]
    pub files: i64,
    /// Bytes.
    #[serde(default)]
    pub bytes: i64,
    /// Bytes newly stored.
    #[serde(default)]
    pub new_bytes: i64,
    /// Unreadable files.
    #[serde(default)]
    pub errors: i64,
    /// Outcome in one line.
    pub message: String,
}

/// Why an agent request was refused.
#[derive(Debug, thiserror::Error)]
pub enum AgentRunError {
    /// The run is not running on this agent (ended, cancelled, another agent's).
    #[error("run {0} is not running on this agent")]
    NotYours(i64),
    /// Catalog trouble.
    #[error(transparent)]
    Catalog(#[from] bams_catalog::CatalogError),
}

/// Every snapshot of `repo` (read on a blocking thread).
async fn all_snapshots(repo: Arc<bams_store::Repository>) -> Result<Vec<SnapshotEntry>, String> {
    let (snaps, _) = tokio::task::spawn_blocking(move || repo.snapshots())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok(snaps)
}

/// The newest of `snaps` taken on `agent`'s machine (its reported host name).
fn newest_of<'a>(snaps: &'a [SnapshotEntry], agent: &Agent) -> Option<&'a SnapshotEntry> {
    let host = agent.hostname.as_deref().unwrap_or_default();
    snaps.iter().filter(|s| s.snapshot.host == host).max_by_key(|s| s.snapshot.time)
}

/// The repository an agent works in, with the key it is given, and the repository its job
/// names (where other machines' snapshots are looked up from).
pub(crate) struct AgentRepo {
    named: bams_catalog::Repository,
    rec: bams_catalog::Repository,
    key: Vec<u8>,
    repo: Arc<bams_store::Repository>,
}

impl Assignment {
    /// Work that reads snapshot `snapshot` of a repository (restore, verify); the caller sets
    /// target, include and verify.
    fn reading(kind: &str, run_id: i64, repository: String, key: &[u8], job: &str, snapshot: String) -> Self {
        Self {
            run_id,
            kind: kind.into(),
            repository,
            key_hex: hex::encode(key),
            paths: Vec::new(),
            excludes: Vec::new(),
            one_file_system: false,
            tags: Vec::new(),
            job: job.to_string(),
            parent: None,
            bandwidth_limit: 0,
            snapshot: Some(snapshot),
            target: None,
            include: Vec::new(),
            verify: false,
            hooks: Hooks::default(),
        }
    }
}

impl Director {
    /// Claim the next queued run of `agent` and turn it into an assignment (the level is
    /// mapped onto a parent here, as for local runs). A run that cannot be prepared ends as
    /// failed and the next one is tried.
    pub async fn next_agent_assignment(&self, agent: &Agent) -> Result<Option<Assignment>, bams_catalog::CatalogError> {
        loop {
            let Some(run) = self.catalog().claim_agent_run(agent.id, self.server_id()).await? else {
                return Ok(None);
            };
            match self.prepare(agent, &run).await {
                Ok(a) => return Ok(Some(a)),
                Err(message) => {
                    let cat = self.catalog();
                    let _ = cat.append_log(run.id, &format!("{} failed: {message}\n", stamp())).await;
                    cat.finish_run(run.id, RunStatus::Failed, &RunStats::default(), &message).await?;
                }
            }
        }
    }

    async fn prepare(&self, agent: &Agent, run: &Run) -> Result<Assignment, String> {
        let cat = self.catalog();
        let job_id = run.job_id.ok_or("the run's job was deleted")?;
        let job = cat.get_job(job_id).await.map_err(|e| e.to_string())?;
        if !matches!(job.kind, JobKind::Backup | JobKind::Restore | JobKind::Verify) {
            return Err(format!(
                "agents run backup, restore and verify jobs; {} jobs run on the server",
                job.kind.as_str()
            ));
        }
        let own = self.agent_repo(job.repository, agent).await?;
        if job.kind == JobKind::Restore {
            return self.prepare_restore(agent, run, &job, own).await;
        }
        if job.kind == JobKind::Verify {
            return self.prepare_verify(agent, run, &job, own).await;
        }
        if let Some(pool) = self.pool_of(&job).await? {
            self.ensure_room(&pool, job.repository).await?;
        }
        let lines = Mutex::new(vec![format!(
            "backup job {:?} assigned to agent {}, into repository {}",
            job.name, agent.name, own.rec.name
        )]);
        let log = |l: String| lines.lock().map(|mut v| v.push(l)).unwrap_or(());
        let (parent, level) = choose_parent(self, run, &job, &own.repo, &log).await;
        if Some(level) != run.level {
            let _ = cat.set_run_level(run.id, level).await;
        }
        let text: String =
            lines.into_inner().unwrap_or_default().iter().map(|l| format!("{} {l}\n", stamp())).collect();
        let _ = cat.append_log(run.id, &text).await;
        let opt = |k: &str| job.options.get(k);
        Ok(Assignment {
            run_id: run.id,
            kind: "backup".into(),
            repository: own.rec.name,
            key_hex: hex::encode(own.key),
            paths: job.paths.clone(),
            excludes: job.excludes.clone(),
            one_file_system: opt("one_file_system").and_then(serde_json::Value::as_bool).unwrap_or(false),
            tags: opt("tags").and_then(|t| serde_json::from_value(t.clone()).ok()).unwrap_or_default(),
            job: job.name.clone(),
            parent: match parent {
                bams_store::archiver::ParentChoice::Id(id) => Some(id.to_hex()),
                _ => None,
            },
            bandwidth_limit: opt("bandwidth_limit").and_then(serde_json::Value::as_u64).unwrap_or(0),
            snapshot: None,
            target: None,
            include: Vec::new(),
            verify: false,
            hooks: Hooks::from_options(&job.options, &job.paths)?,
        })
    }

    /// Make the own repository of `job`'s agent now, in the background, when the job is
    /// saved: its first run then finds it ready instead of making it while the agent's poll
    /// waits (a thousand new agents' first runs due in the same minute queued on it). A
    /// failure is only logged: the first run tries again and reports it.
    pub fn prepare_agent_repository(self: &Arc<Self>, job: &Job) {
        let Some(agent_id) = job.agent else { return };
        if !matches!(job.kind, JobKind::Backup | JobKind::Restore | JobKind::Verify) {
            return;
        }
        let (me, repository) = (self.clone(), job.repository);
        tokio::spawn(async move {
            let made = match me.catalog().get_agent(agent_id).await {
                Ok(agent) => me.agent_repo(repository, &agent).await.map(drop),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = made {
                tracing::warn!(agent = agent_id, repository, error = %e, "preparing the agent's repository");
            }
        });
    }

    /// The repository `agent` works in for a job on repository `job_repository`: its own
    /// under it (made on first use), or that repository itself when its pool shares one
    /// across machines (`shared_dedup`) or it already is the agent's own.
    pub(crate) async fn agent_repo(&self, job_repository: i64, agent: &Agent) -> Result<AgentRepo, String> {
        let cat = self.catalog();
        let named = cat.get_repository(job_repository).await.map_err(|e| e.to_string())?;
        let shared = cat.pool_of_repository(named.id).await.map_err(|e| e.to_string())?.is_some_and(|p| p.shared_dedup);
        let rec = match named.agent {
            Some(owner) if owner != agent.id => {
                return Err(format!("repository {} is another agent's own; name its parent in the job", named.name))
            }
            Some(_) => named.clone(),
            None if shared => named.clone(),
            None => self.repos.agent_repository(&named, agent).await.map_err(|e| e.to_string())?,
        };
        let key = crate::RepoPool::key_of(&rec).map_err(|e| e.to_string())?;
        let repo = self.repos.get(rec.id).await.map_err(|e| e.to_string())?;
        Ok(AgentRepo { named, key, rec, repo })
    }

    /// Find snapshot `spec` (an id or prefix, or `latest` of `source`'s machine) where
    /// `source`'s backups are: its own repository under the job's, then the job's repository
    /// itself (shared pools, and backups from before agents had their own).
    async fn locate(
        &self,
        named: &bams_catalog::Repository,
        source: &Agent,
        spec: &str,
    ) -> Result<(bams_catalog::Repository, Arc<bams_store::Repository>, SnapshotEntry), String> {
        let cat = self.catalog();
        let mut candidates = Vec::new();
        if named.agent.is_none() {
            candidates.extend(cat.agent_repository(named.id, source.id).await.map_err(|e| e.to_string())?);
        }
        candidates.push(named.clone());
        for rec in candidates {
            let repo = self.repos.get(rec.id).await.map_err(|e| e.to_string())?;
            let snaps = all_snapshots(repo.clone()).await?;
            let found = if spec == "latest" {
                newest_of(&snaps, source).cloned()
            } else {
                match bams_store::repo::resolve_snapshot(&snaps, spec) {
                    Ok(e) => Some(e.clone()),
                    Err(e) if e.kind() == bams_store::ErrorKind::NotFound => None,
                    Err(e) => return Err(e.to_string()),
                }
            };
            if let Some(entry) = found {
                return Ok((rec, repo, entry));
            }
        }
        Err(if spec == "latest" {
            format!(
                "agent {} (host {}) has no snapshot in repository {}",
                source.name,
                source.hostname.as_deref().unwrap_or_default(),
                named.name
            )
        } else {
            format!("no snapshot {spec} of agent {} in repository {}", source.name, named.name)
        })
    }

    /// Bring snapshot `entry` of `from` into the agent's own repository and return its id
    /// there. The server holds every key and re-encrypts on the way, so an agent restoring
    /// another machine's backup never gets that machine's key or repository.
    async fn bring(
        &self,
        run: &Run,
        from: (&bams_catalog::Repository, Arc<bams_store::Repository>),
        to: &AgentRepo,
        entry: SnapshotEntry,
    ) -> Result<String, String> {
        if from.0.id == to.rec.id {
            return Ok(entry.id.to_hex());
        }
        let (src, dst, wanted) = (from.1, to.repo.clone(), entry.id);
        let (id, bytes) = tokio::task::spawn_blocking(move || {
            let report = bams_store::copy::copy(
                &src,
                &dst,
                std::slice::from_ref(&entry),
                Default::default(),
                &bams_store::archiver::NoProgress,
            )?;
            if let Some((_, new)) = report.copied.first() {
                return Ok((*new, report.bytes_added));
            }
            let (all, _) = dst.snapshots()?;
            let copy = all.iter().find(|e| e.snapshot.origin == Some(wanted));
            copy.map(|e| (e.id, 0)).ok_or_else(|| bams_store::Error::not_found("the copied snapshot"))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("copying snapshot {} into repository {}: {e}", wanted.short(), to.rec.name))?;
        let _ = self.repos.refresh_snapshots(to.rec.id).await;
        let text = format!(
            "{} snapshot {} of repository {} copied into repository {} as {} ({bytes} bytes added)\n",
            stamp(),
            wanted.short(),
            from.0.name,
            to.rec.name,
            id.short()
        );
        let _ = self.catalog().append_log(run.id, &text).await;
        Ok(id.to_hex())
    }

    /// A restore for `agent`: the snapshot is resolved here (`latest` of the source machine),
    /// and brought into the agent's own repository when it is elsewhere, so the run log names
    /// exactly what was restored where.
    async fn prepare_restore(&self, agent: &Agent, run: &Run, job: &Job, own: AgentRepo) -> Result<Assignment, String> {
        let spec = RestoreSpec::from_options(&job.options)?;
        let source = match spec.source_agent {
            Some(id) => self.catalog().get_agent(id).await.map_err(|e| format!("source agent: {e}"))?,
            None => agent.clone(),
        };
        let (from, from_repo, snap) = self.locate(&own.named, &source, &spec.snapshot).await?;
        let cross = snap.snapshot.host != agent.hostname.clone().unwrap_or_default() || source.id != agent.id;
        let text = format!(
            "{} restore of snapshot {} (host {}) to agent {}:{}{}\n",
            stamp(),
            snap.id.short(),
            snap.snapshot.host,
            agent.name,
            spec.target,
            if cross { " (cross-machine)" } else { "" }
        );
        let _ = self.catalog().append_log(run.id, &text).await;
        let id = self.bring(run, (&from, from_repo), &own, snap).await?;
        Ok(Assignment {
            target: Some(spec.target),
            include: spec.include,
            verify: spec.verify,
            ..Assignment::reading("restore", run.id, own.rec.name, &own.key, &job.name, id)
        })
    }

    /// A verify on `agent`: the agent restores the snapshot into scratch space of its own,
    /// re-reads every file against the snapshot, and removes the copy. The snapshot is the
    /// last backup of `options.job`, or the agent's newest.
    async fn prepare_verify(&self, agent: &Agent, run: &Run, job: &Job, own: AgentRepo) -> Result<Assignment, String> {
        let (spec, source) = match crate::VerifyMode::from_options(&job.options)? {
            crate::VerifyMode::Restore(Some(name)) => {
                let (snapshot, source_job) = self.last_snapshot_of_job(&name).await?;
                let source = match source_job.agent {
                    Some(id) => self.catalog().get_agent(id).await.map_err(|e| e.to_string())?,
                    None => agent.clone(),
                };
                (snapshot, source)
            }
            crate::VerifyMode::Restore(None) => ("latest".to_string(), agent.clone()),
            crate::VerifyMode::ReadDataSubset(_) => {
                return Err("re-hashing packs runs on the server (\"agent\": null)".into());
            }
        };
        let (from, from_repo, snap) = self.locate(&own.named, &source, &spec).await.map_err(|e| {
            if spec == "latest" {
                format!("agent {} has no snapshot to verify ({e})", agent.name)
            } else {
                e
            }
        })?;
        let text = format!(
            "{} agent {} restores snapshot {} into scratch space and compares it\n",
            stamp(),
            agent.name,
            snap.id.short()
        );
        let _ = self.catalog().append_log(run.id, &text).await;
        let id = self.bring(run, (&from, from_repo), &own, snap).await?;
        Ok(Assignment { verify: true, ..Assignment::reading("verify", run.id, own.rec.name, &own.key, &job.name, id) })
    }

    /// Progress and log lines of a running agent run; answers whether to cancel.
    pub async fn agent_events(&self, agent: &Agent, run: i64, ev: &Events) -> Result<EventsReply, AgentRunError> {
        let cat = self.catalog();
        let cancel = cat.agent_heartbeat(run, agent.id).await?.ok_or(AgentRunError::NotYours(run))?;
        if ev.files > 0 || ev.bytes > 0 {
            let (files, bytes) =
                (i64::try_from(ev.files).unwrap_or(i64::MAX), i64::try_from(ev.bytes).unwrap_or(i64::MAX));
            cat.run_progress(run, files, bytes).await?;
        }
        if !ev.log.is_empty() {
            let text: String = ev.log.iter().map(|l| format!("{} {}\n", stamp(), l.trim_end())).collect();
            cat.append_log(run, &text).await?;
        }
        Ok(EventsReply { cancel })
    }

    /// The end of an agent run: record its snapshot in the catalog, apply the job's
    /// retention, and end the run.
    pub async fn agent_finished(self: &Arc<Self>, agent: &Agent, run: i64, f: &Finish) -> Result<(), AgentRunError> {
        let cat = self.catalog();
        cat.agent_heartbeat(run, agent.id).await?.ok_or(AgentRunError::NotYours(run))?;
        let r = cat.get_run(run).await?;
        let mut message = f.message.clone();
        let status = if f.cancelled {
            RunStatus::Cancelled
        } else if !f.ok {
            RunStatus::Failed
        } else if r.kind != JobKind::Backup {
            RunStatus::Succeeded
        } else {
            match self.record_agent_snapshot(agent, &r, f).await {
                Ok(extra) => {
                    if !extra.is_empty() {
                        message = format!("{message}; {extra}");
                    }
                    RunStatus::Succeeded
                }
                Err(e) => {
                    message = format!("{message}; but {e}");
                    RunStatus::Failed
                }
            }
        };
        let stats = RunStats {
            files: f.files,
            bytes: f.bytes,
            new_bytes: f.new_bytes,
            errors: f.errors,
            snapshot_id: f.snapshot_id.clone().filter(|_| status == RunStatus::Succeeded),
        };
        cat.append_log(run, &format!("{} {}: {message}\n", stamp(), status.as_str())).await?;
        cat.finish_run(run, status, &stats, &message).await?;
        self.notify_ended(run);
        metrics::counter!("bams_runs_total", "kind" => r.kind.as_str(), "status" => status.as_str()).increment(1);
        Ok(())
    }

    async fn record_agent_snapshot(&self, agent: &Agent, run: &Run, f: &Finish) -> Result<String, String> {
        let job: Job =
            self.catalog().get_job(run.job_id.ok_or("the run's job was deleted")?).await.map_err(|e| e.to_string())?;
        let id = f.snapshot_id.clone().ok_or("the agent reported no snapshot")?;
        let own = self.agent_repo(job.repository, agent).await?;
        let snap = {
            let (repo, wanted) = (own.repo.clone(), id.clone());
            tokio::task::spawn_blocking(move || repo.find_snapshot(&wanted))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("snapshot {id} is not in repository {}: {e}", own.rec.name))?
        };
        let summary = SnapshotSummary::from_snapshot(own.rec.id, &snap.id, &snap.snapshot);
        self.catalog().add_snapshot(&summary).await.map_err(|e| e.to_string())?;
        match self.retention_of(&job).await? {
            Some(ret) => {
                let within = Job { repository: own.rec.id, ..job.clone() };
                let removed = apply_retention(self, &within, &own.repo, &ret, Some(job.name.clone())).await?;
                Ok(format!("retention removed {removed} snapshot(s)"))
            }
            None => Ok(String::new()),
        }
    }

    /// Queue again assignments never acknowledged (an agent acknowledges with its first
    /// report, at once: one silent for `silent_ms` since it was claimed went to an agent that
    /// died), fail agent runs whose agent went silent (killed, hung, disconnected), and fail
    /// queued agent runs whose agent never came for them.
    pub(crate) async fn reap_agent_runs(&self, silent_ms: i64, wait_ms: i64) -> Result<(), bams_catalog::CatalogError> {
        let cat = self.catalog();
        let line = "the agent did not acknowledge the assignment (it went away): queued again";
        let requeued = cat.requeue_unacknowledged(silent_ms, &format!("{} {line}\n", stamp())).await?;
        if !requeued.is_empty() {
            self.agent_bells().kick();
        }
        for r in cat.silent_agent_runs(silent_ms).await? {
            let msg = format!("agent lost: no heartbeat for {} s (killed, hung or cut off)", silent_ms / 1000);
            let _ = cat.append_log(r.id, &format!("{} failed: {msg}\n", stamp())).await;
            cat.finish_run(r.id, RunStatus::Failed, &RunStats::default(), &msg).await?;
            self.notify_ended(r.id);
        }
        for r in cat.stale_agent_runs(wait_ms).await? {
            let name = match r.agent_id {
                Some(a) => cat.get_agent(a).await.map(|a| a.name).unwrap_or_else(|_| format!("#{a}")),
                None => continue,
            };
            let msg = format!("agent {name} did not come for the run within {} s (offline?)", wait_ms / 1000);
            let _ = cat.append_log(r.id, &format!("{} failed: {msg}\n", stamp())).await;
            cat.finish_run(r.id, RunStatus::Failed, &RunStats::default(), &msg).await?;
            self.notify_ended(r.id);
        }
        Ok(())
    }
}
