//! The director loop: fire due schedules, claim queued runs up to the concurrency limit,
//! execute them, and on shutdown let them finish or checkpoint within a deadline.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bams_catalog::{Catalog, Run, RunStats, RunStatus};
use tokio::sync::{Notify, Semaphore};
use tracing::{info, warn};

use crate::exec::{self, Outcome};
use crate::repos::RepoPool;
use crate::schedule;

/// Tunables of the director.
#[derive(Debug, Clone)]
pub struct DirectorOptions {
    /// This server's name in the run queue (must differ between servers sharing a catalog).
    pub server_id: String,
    /// Runs executed at once by this server.
    pub max_concurrent: usize,
    /// Runs at once on one repository, across servers (0: no limit).
    pub max_concurrent_per_repository: usize,
    /// How often schedules and the queue are polled.
    pub tick: Duration,
    /// Fire schedules missed while the server was down (once) instead of skipping them.
    pub run_missed: bool,
    /// An agent run without a heartbeat for this long has failed (agent killed or hung).
    pub agent_silence: Duration,
    /// A server run whose server has not heartbeat for this long is lost (server killed, hung
    /// or cut off): any server marks it interrupted and queues it again.
    pub server_silence: Duration,
    /// A queued agent run whose agent does not come for it within this fails.
    pub agent_wait: Duration,
    /// Who hears about ended runs.
    pub notifications: crate::notify::NotifyConfig,
}

/// Cancellation state of one executing run.
#[derive(Default)]
pub(crate) struct RunControl {
    pub(crate) cancel: AtomicBool,
    pub(crate) shutdown: AtomicBool,
}

/// The director of one server process.
pub struct Director {
    pub(crate) repos: Arc<RepoPool>,
    opts: DirectorOptions,
    slots: Arc<Semaphore>,
    running: Mutex<HashMap<i64, Arc<RunControl>>>,
    stopping: AtomicBool,
    wake: Notify,
    agent_bells: crate::bells::AgentBells,
    idle: Notify,
    extra: std::sync::RwLock<HashMap<&'static str, Arc<dyn crate::KindExecutor>>>,
    notifier: Arc<crate::notify::Notifier>,
}

impl Director {
    /// Who gets told when runs end (the test button and settings page use it).
    pub fn notifier(&self) -> &crate::notify::Notifier {
        &self.notifier
    }

    /// A director over `repos` (and its catalog).
    pub fn new(repos: Arc<RepoPool>, opts: DirectorOptions) -> Arc<Self> {
        let notifier = Arc::new(crate::notify::Notifier::new(opts.notifications.clone(), &opts.server_id));
        Arc::new(Self {
            repos,
            slots: Arc::new(Semaphore::new(opts.max_concurrent.max(1))),
            opts,
            running: Mutex::new(HashMap::new()),
            stopping: AtomicBool::new(false),
            wake: Notify::new(),
            agent_bells: crate::bells::AgentBells::default(),
            idle: Notify::new(),
            extra: std::sync::RwLock::new(HashMap::new()),
            notifier,
        })
    }

    /// Let `exec` run jobs of `kind` (before `start`).
    pub fn register(&self, kind: bams_catalog::JobKind, exec: Arc<dyn crate::KindExecutor>) {
        self.extra.write().unwrap_or_else(std::sync::PoisonError::into_inner).insert(kind.as_str(), exec);
    }

    /// The executor plugged in for `kind`, if any.
    pub fn executor(&self, kind: bams_catalog::JobKind) -> Option<Arc<dyn crate::KindExecutor>> {
        self.extra.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(kind.as_str()).cloned()
    }

    /// Whether this server runs jobs of `kind`.
    pub fn supports(&self, kind: bams_catalog::JobKind) -> bool {
        crate::SUPPORTED_JOB_KINDS.contains(&kind) || self.executor(kind).is_some()
    }

    /// Tell the configured webhooks and mailboxes that run `id` ended (in the background: a
    /// slow mail server never holds up the director).
    pub fn notify_ended(&self, id: i64) {
        let (cat, notifier) = (self.catalog().clone(), self.notifier.clone());
        tokio::spawn(async move {
            let Ok(run) = cat.get_run(id).await else { return };
            let job = match run.job_id {
                Some(j) => cat.get_job(j).await.ok(),
                None => None,
            };
            notifier.run_ended(&run, job.as_ref()).await;
        });
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        self.repos.catalog()
    }

    /// The repositories.
    pub fn repos(&self) -> &Arc<RepoPool> {
        &self.repos
    }

    /// This server's id.
    pub fn server_id(&self) -> &str {
        &self.opts.server_id
    }

    /// Recover from a previous life and start the loop.
    pub async fn start(self: &Arc<Self>) -> Result<tokio::task::JoinHandle<()>, bams_catalog::CatalogError> {
        let ended = self
            .catalog()
            .mark_interrupted(&self.opts.server_id, "the server stopped while this run was active")
            .await?;
        for (run, again) in ended {
            warn!(run, requeued_as = ?again, "marked a run of a previous server process as interrupted");
            self.log_requeue(run, again, "this server restarted while it ran").await;
        }
        if !self.opts.run_missed {
            self.skip_missed().await?;
        }
        tokio::spawn(self.clone().dispatch_loop());
        let me = self.clone();
        Ok(tokio::spawn(async move { me.run_loop().await }))
    }

    /// Claim queued work now instead of at the next tick (after `POST /jobs/{id}/run`).
    pub fn wake(&self) {
        self.wake.notify_one();
        self.agent_bells.kick();
    }

    /// The agents' long-poll bells: a poll waits on its agent's bell, rung when that agent
    /// has queued work (at once when this server queued it, within a second otherwise).
    pub fn agent_bells(&self) -> &crate::bells::AgentBells {
        &self.agent_bells
    }

    /// Ring the bells of the waiting agents that have queued runs, once per kick or second.
    async fn dispatch_loop(self: Arc<Self>) {
        while !self.stopping.load(Ordering::SeqCst) {
            self.agent_bells.next_round().await;
            if self.agent_bells.waiting().is_empty() {
                continue;
            }
            match self.catalog().agents_with_queued_runs().await {
                Ok(agents) => self.agent_bells.ring(&agents),
                Err(e) => warn!(error = %e, "looking for agents with queued runs"),
            }
        }
    }

    /// Stop claiming; wait up to `deadline` for running jobs, then ask them to checkpoint
    /// and stop, and mark what is still running as interrupted.
    pub async fn shutdown(&self, deadline: Duration) {
        self.stopping.store(true, Ordering::SeqCst);
        self.wake.notify_one();
        if !self.wait_idle(deadline).await {
            let ids: Vec<i64> = self.controls().keys().copied().collect();
            warn!(runs = ?ids, "shutdown deadline passed: stopping running jobs at a checkpoint");
            for c in self.controls().values() {
                c.shutdown.store(true, Ordering::SeqCst);
            }
            if !self.wait_idle(Duration::from_secs(10)).await {
                for id in ids {
                    let _ = self
                        .catalog()
                        .finish_run(id, RunStatus::Interrupted, &RunStats::default(), "server shut down")
                        .await;
                }
            }
        }
    }

    /// Export the stored size of the job's repository (sum of its packs) as a gauge.
    async fn record_repository_size(&self, job_id: i64) {
        let Ok(job) = self.catalog().get_job(job_id).await else { return };
        let Ok(rec) = self.catalog().get_repository(job.repository).await else { return };
        let Ok(repo) = self.repos.get(job.repository).await else { return };
        let size =
            tokio::task::spawn_blocking(move || repo.list_packs().map(|p| p.iter().map(|(_, o)| o.size).sum::<u64>()));
        if let Ok(Ok(bytes)) = size.await {
            metrics::gauge!("bams_repository_stored_bytes", "repository" => rec.name).set(bytes as f64);
        }
    }

    async fn wait_idle(&self, deadline: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.idle.notified();
                if self.controls().is_empty() {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(deadline, wait).await.is_ok()
    }

    fn controls(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Arc<RunControl>>> {
        self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn skip_missed(&self) -> Result<(), bams_catalog::CatalogError> {
        let now = bams_catalog::now_ms();
        for s in self.catalog().due_schedules(now).await? {
            let next = schedule::next_after(&s.cron, &s.timezone, now).ok();
            self.catalog().reschedule(s.id, s.next_run_at, next).await?;
        }
        Ok(())
    }

    async fn run_loop(self: Arc<Self>) {
        while !self.stopping.load(Ordering::SeqCst) {
            if let Err(e) = self.tick().await {
                warn!(error = %e, "director tick failed");
            }
            // Sleep one tick, or less when a schedule falls due sooner: schedules fire on
            // time whatever the polling interval (multi-server: another server's new schedule
            // is seen at the next tick at the latest).
            let nap = match self.catalog().next_schedule_due().await {
                Ok(Some(due)) => {
                    let ms = u64::try_from(due - bams_catalog::now_ms()).unwrap_or(0);
                    self.opts.tick.min(Duration::from_millis(ms))
                }
                _ => self.opts.tick,
            };
            tokio::select! {
                () = tokio::time::sleep(nap) => {}
                () = self.wake.notified() => {}
            }
        }
    }

    async fn tick(self: &Arc<Self>) -> Result<(), bams_catalog::CatalogError> {
        let now = bams_catalog::now_ms();
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        self.reap_agent_runs(ms(self.opts.agent_silence), ms(self.opts.agent_wait)).await?;
        // One run per job and tick: schedules due together fire as one, at the highest level.
        let mut by_job: std::collections::BTreeMap<i64, Vec<_>> = std::collections::BTreeMap::new();
        for s in self.catalog().due_schedules(now).await? {
            let next = match schedule::next_after(&s.cron, &s.timezone, now) {
                Ok(t) => Some(t),
                Err(e) => {
                    warn!(schedule = s.id, error = %e, "schedule cannot fire; disabling its next run");
                    None
                }
            };
            by_job.entry(s.job).or_default().push((s, next));
        }
        // All jobs due in this tick fire in one transaction (a thousand agents' jobs due in the
        // same second: one commit, not a thousand).
        let groups: Vec<_> = by_job.into_values().collect();
        let mut fired = false;
        for (due, run) in groups.iter().zip(self.catalog().fire_many(&groups, now).await?) {
            if let (Some(run), Some((s, _))) = (run, due.first()) {
                info!(job = s.job, run, schedules = due.len(), "schedule fired");
                fired = true;
            }
        }
        fired |= self.heartbeat_and_recover(ms(self.opts.server_silence)).await?;
        if fired {
            self.agent_bells.kick();
        }
        // Pass cancel requests to what we run.
        let ids: Vec<i64> = self.controls().keys().copied().collect();
        for id in ids {
            if self.catalog().get_run(id).await.is_ok_and(|r| r.cancel_requested) {
                if let Some(c) = self.controls().get(&id) {
                    c.cancel.store(true, Ordering::SeqCst);
                }
            }
        }
        while !self.stopping.load(Ordering::SeqCst) {
            let Ok(permit) = self.slots.clone().try_acquire_owned() else { break };
            let per_repo = i64::try_from(self.opts.max_concurrent_per_repository).unwrap_or(0);
            let Some(run) = self.catalog().claim_run_limited(&self.opts.server_id, per_repo).await? else { break };
            let ctl = Arc::new(RunControl::default());
            self.controls().insert(run.id, ctl.clone());
            let me = self.clone();
            tokio::spawn(async move {
                me.execute(run, ctl).await;
                drop(permit);
            });
        }
        Ok(())
    }

    /// Tell the catalog this server still runs its runs, stop those another server has taken
    /// over meanwhile (fencing: this server was cut off long enough to be declared lost), and
    /// interrupt and re-queue the runs of servers that went silent. Returns whether runs were
    /// queued.
    async fn heartbeat_and_recover(&self, silent_ms: i64) -> Result<bool, bams_catalog::CatalogError> {
        let mine: Vec<i64> = self.controls().keys().copied().collect();
        if !mine.is_empty() {
            let still = self.catalog().server_heartbeat(&self.opts.server_id).await?;
            for id in mine.iter().filter(|id| !still.contains(id)) {
                let Some(ctl) = self.controls().get(id).cloned() else { continue };
                let taken = self.catalog().get_run(*id).await.is_ok_and(|r| {
                    r.server_id.as_deref() != Some(self.opts.server_id.as_str()) || r.status == RunStatus::Interrupted
                });
                if taken && !ctl.cancel.swap(true, Ordering::SeqCst) {
                    warn!(run = id, "this run was declared lost and queued again elsewhere; stopping it here");
                }
            }
        }
        let mut queued = false;
        for lost in self.catalog().lost_server_runs(silent_ms).await? {
            let silent_s = (bams_catalog::now_ms() - lost.heartbeat_at.unwrap_or(0)) / 1000;
            let why =
                format!("server {} gave no sign of life for {silent_s} s (killed, hung or cut off)", lost.server_id);
            if let Some(again) = self.catalog().interrupt_lost_run(&lost, &why).await? {
                warn!(run = lost.id, server = %lost.server_id, requeued_as = ?again, "recovered a lost run");
                self.log_requeue(lost.id, again, &why).await;
                queued |= again.is_some();
            }
        }
        Ok(queued)
    }

    /// Note in both runs' logs that `run` was interrupted (and why) and queued again as `again`.
    async fn log_requeue(&self, run: i64, again: Option<i64>, why: &str) {
        let cat = self.catalog();
        let next = match again {
            Some(n) => format!("; queued again as run {n}"),
            None => "; not queued again (it was a re-queue itself, or its job is gone)".into(),
        };
        let _ = cat.append_log(run, &format!("{} interrupted: {why}{next}\n", stamp())).await;
        if let Some(n) = again {
            let _ = cat.append_log(n, &format!("{} queued again: run {run} was interrupted ({why})\n", stamp())).await;
        }
        self.notify_ended(run);
    }

    async fn execute(self: Arc<Self>, run: Run, ctl: Arc<RunControl>) {
        let started = std::time::Instant::now();
        info!(run = run.id, kind = run.kind.as_str(), "run started");
        // A panic inside the job must still end the run (as failed), never leave it running.
        let outcome = {
            let (me, r, c) = (self.clone(), run.clone(), ctl.clone());
            match tokio::spawn(async move { exec::execute(&me, &r, &c).await }).await {
                Ok(o) => o,
                Err(e) => Err(format!("the job crashed: {e}")),
            }
        };
        let (status, stats, message) = match outcome {
            Ok(Outcome { stats, message }) => (RunStatus::Succeeded, stats, message),
            Err(e) if ctl.shutdown.load(Ordering::SeqCst) => {
                (RunStatus::Interrupted, RunStats::default(), format!("stopped by server shutdown: {e}"))
            }
            Err(e) if ctl.cancel.load(Ordering::SeqCst) => {
                (RunStatus::Cancelled, RunStats::default(), format!("cancelled: {e}"))
            }
            Err(e) => (RunStatus::Failed, RunStats::default(), e.to_string()),
        };
        let cat = self.catalog();
        let _ = cat.append_log(run.id, &format!("{} {}: {message}\n", stamp(), status.as_str())).await;
        if let Err(e) = cat.finish_run(run.id, status, &stats, &message).await {
            warn!(run = run.id, error = %e, "could not record the end of a run");
        }
        self.notify_ended(run.id);
        metrics::counter!("bams_runs_total", "kind" => run.kind.as_str(), "status" => status.as_str()).increment(1);
        metrics::histogram!("bams_run_duration_seconds", "kind" => run.kind.as_str())
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("bams_run_bytes_total", "kind" => run.kind.as_str()).increment(stats.bytes.max(0) as u64);
        metrics::counter!("bams_run_new_bytes_total", "kind" => run.kind.as_str())
            .increment(stats.new_bytes.max(0) as u64);
        info!(run = run.id, status = status.as_str(), "run ended");
        if let Some(job) = run.job_id {
            self.record_repository_size(job).await;
        }
        self.controls().remove(&run.id);
        self.idle.notify_waiters();
    }
}

/// A log line timestamp.
pub(crate) fn stamp() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
