//! Job runs: the queue every server claims work from, and the history with logs.

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;

use crate::error::{CatalogError, Result};
use crate::jobs::{JobKind, Level};
use crate::row::{json_rows, parse_json_rows, Arg, Filter, RowExt};
use crate::{now_ms, Backend, Catalog, Page};

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Waiting for a free slot on some server.
    Queued,
    /// Being executed.
    Running,
    /// Finished without errors.
    Succeeded,
    /// Finished with an error (or partially: see `errors`).
    Failed,
    /// The server stopped (crash or shutdown) while it ran.
    Interrupted,
    /// Cancelled by a user.
    Cancelled,
}

impl RunStatus {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Interrupted => "interrupted",
            Self::Cancelled => "cancelled",
        }
    }
    /// Parse a stored or query-string name.
    pub fn parse(s: &str) -> Result<Self> {
        serde_json::from_value(serde_json::Value::String(s.into()))
            .map_err(|_| CatalogError::Invalid(format!("unknown run status {s:?}")))
    }
    /// Finished one way or another.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Queued | Self::Running)
    }
}

/// A run of a job (or an ad-hoc operation).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Run {
    /// Numeric id.
    pub id: i64,
    /// Job, if the run belongs to one that still exists.
    pub job_id: Option<i64>,
    /// Operation.
    #[serde(rename = "type")]
    pub kind: JobKind,
    /// Level of a backup.
    pub level: Option<Level>,
    /// Status.
    pub status: RunStatus,
    /// `schedule`, `manual`, `missed`.
    pub triggered_by: String,
    /// Server that claimed it.
    pub server_id: Option<String>,
    /// Agent that executes it (`null`: the server).
    pub agent_id: Option<i64>,
    /// When it was queued.
    #[serde(with = "crate::time_ms")]
    #[schema(value_type = String, format = DateTime)]
    pub queued_at: i64,
    /// When a scheduled run was due (the scheduling delay is `started_at` minus this).
    #[serde(with = "crate::time_ms::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub scheduled_for: Option<i64>,
    /// When it started.
    #[serde(with = "crate::time_ms::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<i64>,
    /// When it ended.
    #[serde(with = "crate::time_ms::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<i64>,
    /// Files processed.
    pub files: i64,
    /// Bytes processed.
    pub bytes: i64,
    /// Bytes newly stored.
    pub new_bytes: i64,
    /// Errors (unreadable files, failed objects).
    pub errors: i64,
    /// Snapshot written by a backup.
    pub snapshot_id: Option<String>,
    /// Outcome in one line.
    pub message: Option<String>,
    /// A cancel was requested.
    pub cancel_requested: bool,
}

/// A run as the JSON aggregation returns it (raw column values).
#[derive(Deserialize)]
struct RunRecord {
    id: i64,
    job_id: Option<i64>,
    kind: String,
    level: Option<String>,
    status: String,
    triggered_by: String,
    server_id: Option<String>,
    #[serde(default)]
    agent_id: Option<i64>,
    queued_at: i64,
    #[serde(default)]
    scheduled_for: Option<i64>,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    files: i64,
    bytes: i64,
    new_bytes: i64,
    errors: i64,
    snapshot_id: Option<String>,
    message: Option<String>,
    cancel_requested: i64,
}

impl TryFrom<RunRecord> for Run {
    type Error = CatalogError;
    fn try_from(r: RunRecord) -> Result<Self> {
        Ok(Self {
            id: r.id,
            job_id: r.job_id,
            kind: JobKind::parse(&r.kind)?,
            level: r.level.map(|l| Level::parse(&l)).transpose()?,
            status: RunStatus::parse(&r.status)?,
            triggered_by: r.triggered_by,
            server_id: r.server_id,
            agent_id: r.agent_id,
            queued_at: r.queued_at,
            scheduled_for: r.scheduled_for,
            started_at: r.started_at,
            finished_at: r.finished_at,
            files: r.files,
            bytes: r.bytes,
            new_bytes: r.new_bytes,
            errors: r.errors,
            snapshot_id: r.snapshot_id,
            message: r.message,
            cancel_requested: r.cancel_requested != 0,
        })
    }
}

const RUN_COL_LIST: &[&str] = &[
    "id",
    "job_id",
    "kind",
    "level",
    "status",
    "triggered_by",
    "server_id",
    "agent_id",
    "queued_at",
    "scheduled_for",
    "started_at",
    "finished_at",
    "files",
    "bytes",
    "new_bytes",
    "errors",
    "snapshot_id",
    "message",
    "cancel_requested",
];

/// Runs from a [`json_rows`] value, newest first.
fn runs_from_json(text: &str) -> Result<Vec<Run>> {
    let mut runs = parse_json_rows::<RunRecord>(text)?.into_iter().map(Run::try_from).collect::<Result<Vec<_>>>()?;
    runs.sort_unstable_by_key(|r| std::cmp::Reverse(r.id));
    Ok(runs)
}

impl Run {
    fn from_row(r: &AnyRow) -> Result<Self> {
        Ok(Self {
            id: r.i64("id")?,
            job_id: r.opt_i64("job_id")?,
            kind: JobKind::parse(&r.str("kind")?)?,
            level: r.opt_str("level")?.map(|l| Level::parse(&l)).transpose()?,
            status: RunStatus::parse(&r.str("status")?)?,
            triggered_by: r.str("triggered_by")?,
            server_id: r.opt_str("server_id")?,
            agent_id: r.opt_i64("agent_id")?,
            queued_at: r.i64("queued_at")?,
            scheduled_for: r.opt_i64("scheduled_for")?,
            started_at: r.opt_i64("started_at")?,
            finished_at: r.opt_i64("finished_at")?,
            files: r.i64("files")?,
            bytes: r.i64("bytes")?,
            new_bytes: r.i64("new_bytes")?,
            errors: r.i64("errors")?,
            snapshot_id: r.opt_str("snapshot_id")?,
            message: r.opt_str("message")?,
            cancel_requested: r.flag("cancel_requested")?,
        })
    }
}

/// A server run whose server went silent ([`Catalog::lost_server_runs`]), with what
/// [`Catalog::interrupt_lost_run`] compares to be sure it is still lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostRun {
    /// The run.
    pub id: i64,
    /// The server that claimed it.
    pub server_id: String,
    /// Its last sign of life (ms since the epoch; none from servers before heartbeats).
    pub heartbeat_at: Option<i64>,
}

/// A run to queue.
#[derive(Debug, Clone)]
pub struct NewRun {
    /// Job.
    pub job_id: i64,
    /// Level override (backup jobs).
    pub level: Option<Level>,
    /// Why: `manual`, `missed`, …
    pub triggered_by: String,
}

/// Counters a finished run records.
#[derive(Debug, Clone, Default)]
pub struct RunStats {
    /// Files processed.
    pub files: i64,
    /// Bytes processed.
    pub bytes: i64,
    /// Bytes newly stored.
    pub new_bytes: i64,
    /// Errors.
    pub errors: i64,
    /// Snapshot written.
    pub snapshot_id: Option<String>,
}

/// Filters for the run history.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
pub struct RunFilter {
    /// Only runs of this job.
    pub job: Option<i64>,
    /// Only runs with this status.
    pub status: Option<String>,
    /// Page size (default 50, max 500).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Counts and recent activity for the dashboard.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Dashboard {
    /// Jobs defined.
    pub jobs: i64,
    /// Repositories registered.
    pub repositories: i64,
    /// Snapshots in the listing cache.
    pub snapshots: i64,
    /// Runs queued or running now.
    pub active_runs: i64,
    /// Runs that ended failed or interrupted in the last 24 hours (hourly totals).
    pub failures_24h: i64,
    /// Runs that ended successfully in the last 24 hours (hourly totals).
    pub successes_24h: i64,
    /// Bytes newly stored by runs that ended in the last 24 hours.
    pub new_bytes_24h: i64,
    /// The ten most recent runs.
    pub last_runs: Vec<Run>,
    /// The five most recent failures.
    pub last_failures: Vec<Run>,
}

const RUN_COLS: &str = "id, job_id, kind, level, status, triggered_by, server_id, agent_id, queued_at, \
                        scheduled_for, started_at, finished_at, files, bytes, new_bytes, errors, snapshot_id, message, cancel_requested";

const HOUR_MS: i64 = 3_600_000;

/// Logs are kept whole up to this size; beyond it the middle is dropped.
const MAX_LOG: usize = 4 << 20;

impl Catalog {
    /// Queue a run of a job now.
    pub async fn queue_run(&self, new: &NewRun) -> Result<Run> {
        let job = self.get_job(new.job_id).await?;
        let row = sqlx::query(&format!(
            "INSERT INTO runs (job_id, kind, level, status, triggered_by, queued_at, agent_id, priority, repository_id) \
             VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7, $8) RETURNING {RUN_COLS}"
        ))
        .bind(job.id)
        .bind(job.kind.as_str())
        .bind((job.kind == JobKind::Backup).then(|| new.level.unwrap_or(job.level).as_str()))
        .bind(&new.triggered_by)
        .bind(now_ms())
        .bind(job.agent)
        .bind(job.priority())
        .bind(job.repository)
        .fetch_one(&self.pool)
        .await?;
        Run::from_row(&row)
    }

    /// Claim the oldest queued run that this server may execute (jobs without an agent).
    /// PostgreSQL: `FOR UPDATE SKIP LOCKED`, so concurrent servers each get a different run;
    /// SQLite serializes writers, and the `status = 'queued'` guard makes the claim exact.
    pub async fn claim_run(&self, server_id: &str) -> Result<Option<Run>> {
        self.claim_run_limited(server_id, 0).await
    }

    /// [`Self::claim_run`] in priority order (higher first, then oldest), skipping runs whose
    /// repository already has `per_repository` running runs (0: no limit).
    pub async fn claim_run_limited(&self, server_id: &str, per_repository: i64) -> Result<Option<Run>> {
        let (lock, greatest) = match self.backend {
            Backend::Postgres => (" FOR UPDATE SKIP LOCKED", "GREATEST"),
            Backend::Sqlite => ("", "MAX"),
        };
        // `$2` is read before the statement runs, which may wait for a finishing run's
        // transaction: a run never starts before the last finish on its repository.
        let sql = format!(
            "UPDATE runs SET status = 'running', server_id = $1, heartbeat_at = $2, started_at = {greatest}($2, \
             COALESCE((SELECT MAX(f.finished_at) FROM runs f WHERE f.repository_id = runs.repository_id), 0)) \
             WHERE status = 'queued' AND id = (SELECT r.id FROM runs r WHERE r.status = 'queued' \
             AND r.agent_id IS NULL AND ($3 = 0 OR r.repository_id IS NULL OR (SELECT COUNT(*) FROM runs x \
             WHERE x.status = 'running' AND x.repository_id = r.repository_id) < $3) \
             ORDER BY r.priority DESC, r.id LIMIT 1{lock}) RETURNING {RUN_COLS}"
        );
        let row =
            sqlx::query(&sql).bind(server_id).bind(now_ms()).bind(per_repository).fetch_optional(&self.pool).await?;
        row.as_ref().map(Run::from_row).transpose()
    }

    /// Claim the oldest queued run of `agent` for it (the agent asked for work through
    /// `server_id`). Its first heartbeat acknowledges it ([`Self::requeue_unacknowledged`]).
    /// A disabled or revoked agent gets nothing, even from a poll that started before it was
    /// revoked.
    pub async fn claim_agent_run(&self, agent: i64, server_id: &str) -> Result<Option<Run>> {
        let lock = match self.backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let now = now_ms();
        let sql = format!(
            "UPDATE runs SET status = 'running', server_id = $1, started_at = $2, heartbeat_at = NULL \
             WHERE status = 'queued' AND id = (SELECT r.id FROM runs r WHERE r.status = 'queued' \
             AND r.agent_id = $3 ORDER BY r.priority DESC, r.id LIMIT 1{lock}) \
             AND EXISTS (SELECT 1 FROM agents a WHERE a.id = $3 AND a.status = 'active') RETURNING {RUN_COLS}"
        );
        let row = sqlx::query(&sql).bind(server_id).bind(now).bind(agent).fetch_optional(&self.pool).await?;
        row.as_ref().map(Run::from_row).transpose()
    }

    /// Agents with a queued run (whose polls should look at the queue): one indexed read,
    /// however many agents wait.
    pub async fn agents_with_queued_runs(&self) -> Result<Vec<i64>> {
        let ids: Vec<(i64,)> =
            sqlx::query_as("SELECT DISTINCT agent_id FROM runs WHERE status = 'queued' AND agent_id IS NOT NULL")
                .fetch_all(&self.pool)
                .await?;
        Ok(ids.into_iter().map(|(id,)| id).collect())
    }

    /// An agent's sign of life for its running run; answers whether a cancel was requested.
    /// `None` when the run is not running on that agent (anymore).
    pub async fn agent_heartbeat(&self, run: i64, agent: i64) -> Result<Option<bool>> {
        let row = sqlx::query(
            "UPDATE runs SET heartbeat_at = $1 WHERE id = $2 AND agent_id = $3 AND status = 'running' \
             RETURNING cancel_requested",
        )
        .bind(now_ms())
        .bind(run)
        .bind(agent)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| r.flag("cancel_requested")).transpose()
    }

    /// Agent runs that stopped giving signs of life `silent_ms` ago (a killed or hung agent).
    pub async fn silent_agent_runs(&self, silent_ms: i64) -> Result<Vec<Run>> {
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLS} FROM runs WHERE status = 'running' AND agent_id IS NOT NULL \
             AND heartbeat_at IS NOT NULL AND heartbeat_at < $1"
        ))
        .bind(now_ms() - silent_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(Run::from_row).collect()
    }

    /// Put back in the queue the agent runs claimed `ack_ms` ago and never acknowledged (the
    /// answer to the poll went to an agent that had died meanwhile); returns their ids.
    /// `note` (a whole log line) is appended in the same statement: appended afterwards, it
    /// could land after the lines of the run's next attempt, which may start at once.
    pub async fn requeue_unacknowledged(&self, ack_ms: i64, note: &str) -> Result<Vec<i64>> {
        let rows: Vec<(i64,)> = sqlx::query_as(
            "UPDATE runs SET status = 'queued', server_id = NULL, started_at = NULL, \
             log = CASE WHEN LENGTH(log) + $2 <= $3 THEN log || $4 ELSE log END \
             WHERE status = 'running' AND agent_id IS NOT NULL AND heartbeat_at IS NULL AND started_at < $1 \
             RETURNING id",
        )
        .bind(now_ms() - ack_ms)
        .bind(note.len() as i64)
        .bind(MAX_LOG as i64)
        .bind(note)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// Queued agent runs older than `waited_ms` (their agent never came to take them).
    pub async fn stale_agent_runs(&self, waited_ms: i64) -> Result<Vec<Run>> {
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLS} FROM runs WHERE status = 'queued' AND agent_id IS NOT NULL AND queued_at < $1"
        ))
        .bind(now_ms() - waited_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(Run::from_row).collect()
    }

    /// A server's sign of life for the runs it executes (agent runs have their own). Returns
    /// the ids still running under `server_id`: a run missing from them was declared lost and
    /// re-queued while this server was cut off, and must stop here (fencing).
    pub async fn server_heartbeat(&self, server_id: &str) -> Result<Vec<i64>> {
        let rows: Vec<(i64,)> = sqlx::query_as(
            "UPDATE runs SET heartbeat_at = $1 WHERE server_id = $2 AND status = 'running' AND agent_id IS NULL \
             RETURNING id",
        )
        .bind(now_ms())
        .bind(server_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// Server runs whose server stopped giving signs of life `silent_ms` ago (killed, hung or
    /// cut off from the catalog). Runs of servers that never heartbeat (older versions) are
    /// left alone.
    pub async fn lost_server_runs(&self, silent_ms: i64) -> Result<Vec<LostRun>> {
        let rows: Vec<(i64, String, Option<i64>)> = sqlx::query_as(
            "SELECT id, server_id, heartbeat_at FROM runs WHERE status = 'running' AND agent_id IS NULL \
             AND server_id IS NOT NULL AND heartbeat_at IS NOT NULL AND heartbeat_at < $1 ORDER BY id",
        )
        .bind(now_ms() - silent_ms)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(id, server_id, heartbeat_at)| LostRun { id, server_id, heartbeat_at }).collect())
    }

    /// End a run its server lost (crash, kill, lost catalog connection) as interrupted and
    /// queue it again, in one transaction, so that exactly one server does it. If the run has
    /// moved on since `lost` was read (ended, or its server's heartbeat came back), nothing
    /// happens and `None` is returned. A run that was itself a re-queue is not queued a third
    /// time (a job that kills its server would loop), nor is a run whose job is gone.
    /// Returns `Some(new run id)`, or `Some(None)` when ended but not re-queued.
    pub async fn interrupt_lost_run(&self, lost: &LostRun, message: &str) -> Result<Option<Option<i64>>> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let ended = sqlx::query(
            "UPDATE runs SET status = 'interrupted', finished_at = $1, message = $2 WHERE id = $3 \
             AND status = 'running' AND server_id = $4 AND COALESCE(heartbeat_at, -1) = $5",
        )
        .bind(now)
        .bind(message)
        .bind(lost.id)
        .bind(&lost.server_id)
        .bind(lost.heartbeat_at.unwrap_or(-1))
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !ended {
            tx.rollback().await?;
            return Ok(None);
        }
        count_hourly(&mut tx, RunStatus::Interrupted, 0).await?;
        let again: Option<(i64,)> = sqlx::query_as(
            "INSERT INTO runs (job_id, kind, level, status, triggered_by, queued_at, priority, repository_id) \
             SELECT r.job_id, r.kind, r.level, 'queued', $1, $2, r.priority, r.repository_id FROM runs r \
             JOIN jobs j ON j.id = r.job_id WHERE r.id = $3 AND r.triggered_by NOT LIKE 'requeue:%' RETURNING id",
        )
        .bind(format!("requeue:{}", lost.id))
        .bind(now)
        .bind(lost.id)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(again.map(|r| r.0)))
    }

    /// Record the end of a run (only a running or queued run can end), and count it in the
    /// hourly totals the dashboard reads.
    pub async fn finish_run(&self, id: i64, status: RunStatus, stats: &RunStats, message: &str) -> Result<()> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let ended = sqlx::query(
            "UPDATE runs SET status = $1, finished_at = $2, files = $3, bytes = $4, new_bytes = $5, errors = $6, \
             snapshot_id = $7, message = $8 WHERE id = $9 AND status IN ('queued', 'running')",
        )
        .bind(status.as_str())
        .bind(now)
        .bind(stats.files)
        .bind(stats.bytes)
        .bind(stats.new_bytes)
        .bind(stats.errors)
        .bind(stats.snapshot_id.clone())
        .bind(message)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if ended {
            count_hourly(&mut tx, status, stats.new_bytes).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Record the level a backup really ran at (an Incremental without a Full becomes a Full).
    pub async fn set_run_level(&self, id: i64, level: Level) -> Result<()> {
        sqlx::query("UPDATE runs SET level = $1 WHERE id = $2")
            .bind(level.as_str())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Append lines to a run's log.
    pub async fn append_log(&self, id: i64, text: &str) -> Result<()> {
        let (len,): (i64,) = sqlx::query_as("SELECT CAST(LENGTH(log) AS BIGINT) FROM runs WHERE id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await?;
        if len as usize + text.len() > MAX_LOG {
            return Ok(());
        }
        sqlx::query("UPDATE runs SET log = log || $1 WHERE id = $2").bind(text).bind(id).execute(&self.pool).await?;
        Ok(())
    }

    /// One run.
    pub async fn get_run(&self, id: i64) -> Result<Run> {
        self.one_by_id(&format!("SELECT {RUN_COLS} FROM runs WHERE id = $1"), id, "run", Run::from_row).await
    }

    /// A run's full log.
    pub async fn run_log(&self, id: i64) -> Result<String> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT log FROM runs WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
        row.map(|r| r.0).ok_or_else(|| CatalogError::NotFound(format!("run {id}")))
    }

    /// Run history, newest first, paged by id.
    pub async fn list_runs(&self, filter: &RunFilter) -> Result<Page<Run>> {
        let limit = filter.limit.unwrap_or(50).clamp(1, 500);
        let mut f = Filter::default();
        if let Some(j) = filter.job {
            f.push("job_id = {}", Arg::I64(j));
        }
        if let Some(s) = &filter.status {
            f.push("status = {}", Arg::Str(RunStatus::parse(s)?.as_str().into()));
        }
        if let Some(c) = &filter.cursor {
            let c: i64 = c.parse().map_err(|_| CatalogError::Invalid(format!("bad cursor {c:?}")))?;
            f.push("id < {}", Arg::I64(c));
        }
        let lim = f.next_arg(Arg::I64(limit + 1));
        let inner = format!("SELECT {RUN_COLS} FROM runs{} ORDER BY id DESC LIMIT {lim}", f.where_sql());
        let runs = match self.backend {
            // SQLite: one JSON value instead of N rows (each row is a thread hand-off in sqlx).
            Backend::Sqlite => {
                let sql = json_rows(self.backend, RUN_COL_LIST, &inner);
                let row = f.bind(sqlx::query(&sql)).fetch_one(&self.pool).await?;
                runs_from_json(&row.str_at(0)?)?
            }
            // PostgreSQL: plain rows are cheaper than building JSON in the server.
            Backend::Postgres => {
                let rows = f.bind(sqlx::query(&inner)).fetch_all(&self.pool).await?;
                rows.iter().map(Run::from_row).collect::<Result<Vec<_>>>()?
            }
        };
        Ok(Page::from_rows(runs, limit, |r| r.id.to_string()))
    }

    /// Ask a run to stop: a queued run is cancelled at once; a running one is flagged and
    /// its runner stops at the next checkpoint.
    pub async fn request_cancel(&self, id: i64) -> Result<Run> {
        let run = self.get_run(id).await?;
        if run.status.is_final() {
            return Err(CatalogError::Conflict(format!("run {id} already {}", run.status.as_str())));
        }
        sqlx::query(
            "UPDATE runs SET status = 'cancelled', finished_at = $1, message = 'cancelled before it started' \
             WHERE id = $2 AND status = 'queued'",
        )
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        sqlx::query("UPDATE runs SET cancel_requested = 1 WHERE id = $1 AND status = 'running'")
            .bind(id)
            .execute(&self.pool)
            .await?;
        self.get_run(id).await
    }

    /// Runs a (re)starting server left running: mark them interrupted and queue them again
    /// ([`Self::interrupt_lost_run`]). Returns (interrupted run, its re-queued run) pairs.
    /// (Runs on agents go on without this server: the agent reports their end to any server;
    /// a silent one is failed by its heartbeat.)
    pub async fn mark_interrupted(&self, server_id: &str, message: &str) -> Result<Vec<(i64, Option<i64>)>> {
        let rows: Vec<(i64, Option<i64>)> = sqlx::query_as(
            "SELECT id, heartbeat_at FROM runs WHERE status = 'running' AND server_id = $1 AND agent_id IS NULL",
        )
        .bind(server_id)
        .fetch_all(&self.pool)
        .await?;
        let mut ended = Vec::new();
        for (id, heartbeat_at) in rows {
            let lost = LostRun { id, server_id: server_id.to_string(), heartbeat_at };
            if let Some(again) = self.interrupt_lost_run(&lost, message).await? {
                ended.push((id, again));
            }
        }
        Ok(ended)
    }

    /// The job's most recent successful backup run (optionally only Full ones), for levels.
    pub async fn last_successful_backup(&self, job_id: i64, full_only: bool) -> Result<Option<Run>> {
        let level = if full_only { " AND level = 'full'" } else { "" };
        let row = sqlx::query(&format!(
            "SELECT {RUN_COLS} FROM runs WHERE job_id = $1 AND status = 'succeeded' AND snapshot_id IS NOT NULL{level} \
             ORDER BY id DESC LIMIT 1"
        ))
        .bind(job_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(Run::from_row).transpose()
    }

    /// Dashboard numbers, in one round trip.
    pub async fn dashboard(&self) -> Result<Dashboard> {
        let now = now_ms();
        let since = now - now.rem_euclid(HOUR_MS) - 23 * HOUR_MS;
        let last =
            json_rows(self.backend, RUN_COL_LIST, &format!("SELECT {RUN_COLS} FROM runs ORDER BY id DESC LIMIT 10"));
        let fails = json_rows(
            self.backend,
            RUN_COL_LIST,
            &format!("SELECT {RUN_COLS} FROM runs WHERE status IN ('failed', 'interrupted') ORDER BY id DESC LIMIT 5"),
        );
        // The last 24 hours come from the hourly totals (at most 25 rows), not from the runs.
        let sql = format!(
            "SELECT (SELECT COUNT(*) FROM jobs) AS jobs, (SELECT COUNT(*) FROM repositories) AS repositories, \
             (SELECT COUNT(*) FROM snapshots) AS snapshots, \
             (SELECT COUNT(*) FROM runs WHERE status IN ('queued', 'running')) AS active, \
             CAST(COALESCE(day.failures, 0) AS BIGINT) AS failures, CAST(COALESCE(day.successes, 0) AS BIGINT) AS successes, \
             CAST(COALESCE(day.new_bytes, 0) AS BIGINT) AS new_bytes, \
             ({last}) AS last_runs, ({fails}) AS last_failures \
             FROM (SELECT SUM(failed) AS failures, SUM(succeeded) AS successes, SUM(new_bytes) AS new_bytes \
                   FROM run_hourly WHERE hour >= $1) AS day"
        );
        let r = sqlx::query(&sql).bind(since).fetch_one(&self.pool).await?;
        Ok(Dashboard {
            jobs: r.i64("jobs")?,
            repositories: r.i64("repositories")?,
            snapshots: r.i64("snapshots")?,
            active_runs: r.i64("active")?,
            failures_24h: r.i64("failures")?,
            successes_24h: r.i64("successes")?,
            new_bytes_24h: r.i64("new_bytes")?,
            last_runs: runs_from_json(&r.str("last_runs")?)?,
            last_failures: runs_from_json(&r.str("last_failures")?)?,
        })
    }
}

impl Catalog {
    /// When each repository's data was last checked: the end of the newest successful
    /// `check` or `verify` run of a job on it (repositories never checked are absent).
    pub async fn last_checks(&self) -> Result<Vec<(i64, i64)>> {
        let rows: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT j.repository_id, MAX(r.finished_at) FROM runs r JOIN jobs j ON j.id = r.job_id \
             WHERE r.kind IN ('check', 'verify') AND r.status = 'succeeded' AND r.finished_at IS NOT NULL \
             AND j.repository_id IS NOT NULL GROUP BY j.repository_id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }
}

/// What the dashboard says about one job: when it last succeeded, how its last run ended,
/// how often it failed in the last day, whether it runs now.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct JobActivity {
    /// The job.
    pub job_id: i64,
    /// End of its newest successful run.
    #[serde(with = "crate::time_ms::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_success_at: Option<i64>,
    /// Status of its newest run.
    pub last_status: Option<String>,
    /// Runs that failed or were interrupted in the last 24 hours.
    pub failures_24h: i64,
    /// Runs queued or running now.
    pub active: i64,
}

impl Catalog {
    /// Every job's recent activity, in one query (the runs index on `(job_id, id)` keeps each
    /// job's part to its own runs).
    pub async fn job_activity(&self) -> Result<Vec<JobActivity>> {
        let rows = sqlx::query(
            "SELECT j.id AS job_id, \
             (SELECT MAX(r.finished_at) FROM runs r WHERE r.job_id = j.id AND r.status = 'succeeded') AS last_success, \
             (SELECT r.status FROM runs r WHERE r.job_id = j.id ORDER BY r.id DESC LIMIT 1) AS last_status, \
             (SELECT COUNT(*) FROM runs r WHERE r.job_id = j.id AND r.status IN ('failed', 'interrupted') \
                AND r.finished_at >= $1) AS failures, \
             (SELECT COUNT(*) FROM runs r WHERE r.job_id = j.id AND r.status IN ('queued', 'running')) AS active \
             FROM jobs j ORDER BY j.id",
        )
        .bind(now_ms() - 24 * HOUR_MS)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(JobActivity {
                    job_id: r.i64("job_id")?,
                    last_success_at: r.opt_i64("last_success")?,
                    last_status: r.opt_str("last_status")?,
                    failures_24h: r.i64("failures")?,
                    active: r.i64("active")?,
                })
            })
            .collect()
    }
}

impl Catalog {
    /// Bytes read by the newest successful run of a job: what the next run is expected to
    /// read, for the time-left estimate of a running one.
    pub async fn last_successful_bytes(&self, job: i64) -> Result<Option<i64>> {
        let row: Option<(i64,)> = sqlx::query_as(
            "SELECT bytes FROM runs WHERE job_id = $1 AND status = 'succeeded' ORDER BY id DESC LIMIT 1",
        )
        .bind(job)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.0))
    }
}

impl Catalog {
    /// Files and bytes a running run has done so far (its final numbers replace them when
    /// it ends); ignored once the run has ended.
    pub async fn run_progress(&self, run: i64, files: i64, bytes: i64) -> Result<()> {
        sqlx::query("UPDATE runs SET files = $1, bytes = $2 WHERE id = $3 AND status = 'running'")
            .bind(files)
            .bind(bytes)
            .bind(run)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

impl Catalog {
    /// Bytes newly stored per repository (the job's repository, so agents' repositories count
    /// for their parent) by runs that succeeded since `since_ms`: the growth the capacity
    /// forecast extrapolates.
    pub async fn growth_since(&self, since_ms: i64) -> Result<Vec<(i64, i64)>> {
        let rows: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT j.repository_id, CAST(COALESCE(SUM(r.new_bytes), 0) AS BIGINT) FROM runs r JOIN jobs j ON j.id = r.job_id \
             WHERE r.status = 'succeeded' AND r.finished_at >= $1 GROUP BY j.repository_id",
        )
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }
}

/// Count an ended run in the hourly totals the dashboard reads (succeeded or failed; other
/// ends are not counted).
async fn count_hourly(tx: &mut sqlx::Transaction<'_, sqlx::Any>, status: RunStatus, new_bytes: i64) -> Result<()> {
    let (ok, failed) = match status {
        RunStatus::Succeeded => (1i64, 0i64),
        RunStatus::Failed | RunStatus::Interrupted => (0, 1),
        _ => return Ok(()),
    };
    let now = now_ms();
    sqlx::query(
        "INSERT INTO run_hourly (hour, succeeded, failed, new_bytes) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (hour) DO UPDATE SET succeeded = run_hourly.succeeded + excluded.succeeded, \
         failed = run_hourly.failed + excluded.failed, new_bytes = run_hourly.new_bytes + excluded.new_bytes",
    )
    .bind(now - now.rem_euclid(HOUR_MS))
    .bind(ok)
    .bind(failed)
    .bind(new_bytes)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
