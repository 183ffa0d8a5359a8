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
async fn all_snapshots(repo: Arc<bams_store::Repository>) -> Result<Vec<bams_store::snapshot::SnapshotEntry>, String> {
    let (snaps, _) = tokio::task::spawn_blocking(move || repo.snapshots())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok(snaps)
}

/// The newest of `snaps` taken on `agent`'s machine (its reported host name).
fn newest_of<'a>(
    snaps: &'a [bams_store::snapshot::SnapshotEntry],
    agent: &Agent,
) -> Option<&'a bams_store::snapshot::SnapshotEntry> {
    let host = agent.hostname.as_deref().unwrap_or_default();
    snaps.iter().filter(|s| s.snapshot.host == host).max_by_key(|s| s.snapshot.time)
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
        let rec = cat.get_repository(job.repository).await.map_err(|e| e.to_string())?;
        let key = std::fs::read(&rec.key_file).map_err(|e| format!("key file of repository {}: {e}", rec.name))?;
        let key = crate::repos::trim_newline(key);
        let repo = self.repos.get(job.repository).await.map_err(|e| e.to_string())?;
        if job.kind == JobKind::Restore {
            return self.prepare_restore(agent, run, &job, rec.name, key, repo).await;
        }
        if job.kind == JobKind::Verify {
            return self.prepare_verify(agent, run, &job, rec.name, key, repo).await;
        }
        if let Some(pool) = self.pool_of(&job).await? {
            self.ensure_room(&pool, &repo).await?;
        }
        let lines = Mutex::new(vec![format!("backup job {:?} assigned to agent {}", job.name, agent.name)]);
        let log = |l: String| lines.lock().map(|mut v| v.push(l)).unwrap_or(());
        let (parent, level) = choose_parent(self, run, &job, &repo, &log).await;
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
            repository: rec.name,
            key_hex: hex::encode(key),
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

    /// A restore for `agent`: the snapshot is resolved here (`latest` of the source machine),
    /// so the run log names exactly what was restored where.
    async fn prepare_restore(
        &self,
        agent: &Agent,
        run: &Run,
        job: &Job,
        repository: String,
        key: Vec<u8>,
        repo: Arc<bams_store::Repository>,
    ) -> Result<Assignment, String> {
        let spec = RestoreSpec::from_options(&job.options)?;
        let source = match spec.source_agent {
            Some(id) => self.catalog().get_agent(id).await.map_err(|e| format!("source agent: {e}"))?,
            None => agent.clone(),
        };
        let snaps = all_snapshots(repo).await?;
        let snap = if spec.snapshot == "latest" {
            newest_of(&snaps, &source).cloned().ok_or_else(|| {
                format!(
                    "agent {} (host {}) has no snapshot in repository {repository}",
                    source.name,
                    source.hostname.as_deref().unwrap_or_default()
                )
            })?
        } else {
            bams_store::repo::resolve_snapshot(&snaps, &spec.snapshot).cloned().map_err(|e| e.to_string())?
        };
        let cross = snap.snapshot.host != agent.hostname.clone().unwrap_or_default() || source.id != agent.id;
        let text = format!(
            "{} restore of snapshot {} (host {}) to agent {}:{}{}\n",
            crate::runner::stamp(),
            snap.id.short(),
            snap.snapshot.host,
            agent.name,
            spec.target,
            if cross { " (cross-machine)" } else { "" }
        );
        let _ = self.catalog().append_log(run.id, &text).await;
        Ok(Assignment {
            target: Some(spec.target),
            include: spec.include,
            verify: spec.verify,
            ..Assignment::reading("restore", run.id, repository, &key, &job.name, snap.id.to_hex())
        })
    }

    /// A verify on `agent`: the agent restores the snapshot into scratch space of its own,
    /// re-reads every file against the snapshot, and removes the copy. The snapshot is the
    /// last backup of `options.job`, or the agent's newest.
    async fn prepare_verify(
        &self,
        agent: &Agent,
        run: &Run,
        job: &Job,
        repository: String,
        key: Vec<u8>,
        repo: Arc<bams_store::Repository>,
    ) -> Result<Assignment, String> {
        let snapshot = match crate::VerifyMode::from_options(&job.options)? {
            crate::VerifyMode::Restore(Some(name)) => self.last_snapshot_of_job(&name).await?,
            crate::VerifyMode::Restore(None) => {
                let snaps = all_snapshots(repo).await?;
                let newest = newest_of(&snaps, agent);
                newest.map(|s| s.id.to_hex()).ok_or(format!("agent {} has no snapshot to verify", agent.name))?
            }
            crate::VerifyMode::ReadDataSubset(_) => {
                return Err("re-hashing packs runs on the server (\"agent\": null)".into());
            }
        };
        let text = format!(
            "{} agent {} restores snapshot {} into scratch space and compares it\n",
            crate::runner::stamp(),
            agent.name,
            &snapshot[..snapshot.len().min(12)]
        );
        let _ = self.catalog().append_log(run.id, &text).await;
        Ok(Assignment { verify: true, ..Assignment::reading("verify", run.id, repository, &key, &job.name, snapshot) })
    }

    /// Progress and log lines of a running agent run; answers whether to cancel.
    pub async fn agent_events(&self, agent: &Agent, run: i64, ev: &Events) -> Result<EventsReply, AgentRunError> {
        let cat = self.catalog();
        let cancel = cat.agent_heartbeat(run, agent.id).await?.ok_or(AgentRunError::NotYours(run))?;
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
            match self.record_agent_snapshot(&r, f).await {
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

    async fn record_agent_snapshot(&self, run: &Run, f: &Finish) -> Result<String, String> {
        let job: Job =
            self.catalog().get_job(run.job_id.ok_or("the run's job was deleted")?).await.map_err(|e| e.to_string())?;
        let id = f.snapshot_id.clone().ok_or("the agent reported no snapshot")?;
        let repo = self.repos.get(job.repository).await.map_err(|e| e.to_string())?;
        let snap = {
            let (repo, wanted) = (repo.clone(), id.clone());
            tokio::task::spawn_blocking(move || repo.find_snapshot(&wanted))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("snapshot {id} is not in the repository: {e}"))?
        };
        let summary = SnapshotSummary::from_snapshot(job.repository, &snap.id, &snap.snapshot);
        self.catalog().add_snapshot(&summary).await.map_err(|e| e.to_string())?;
        match self.retention_of(&job).await? {
            Some(ret) => {
                let removed = apply_retention(self, &job, &repo, &ret, Some(job.name.clone())).await?;
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
        let requeued = cat.requeue_unacknowledged(silent_ms).await?;
        for id in &requeued {
            let line = "the agent did not acknowledge the assignment (it went away): queued again";
            let _ = cat.append_log(*id, &format!("{} {line}\n", stamp())).await;
        }
        if !requeued.is_empty() {
            self.agent_work().notify_waiters();
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
