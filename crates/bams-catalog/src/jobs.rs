//! Job definitions and their schedules. The catalog stores and validates shapes; cron
//! parsing and next-run computation belong to the director, which passes `next_run_at` in.

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;

use crate::error::{named_conflict, CatalogError, Result};
use crate::pools::{Pool, PoolRef};
use crate::repos::validate_name;
use crate::row::{to_json, RowExt};
use crate::{now_ms, Catalog};

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    /// Back up paths into a repository.
    Backup,
    /// Restore a snapshot to a path.
    Restore,
    /// Verify stored data.
    Verify,
    /// Copy snapshots to another repository.
    Copy,
    /// Apply retention and remove unreferenced data.
    Prune,
    /// Check repository structure (and optionally data).
    Check,
    /// Apply retention only.
    Forget,
    /// Write snapshots to tape.
    Tape,
}

impl JobKind {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Backup => "backup",
            Self::Restore => "restore",
            Self::Verify => "verify",
            Self::Copy => "copy",
            Self::Prune => "prune",
            Self::Check => "check",
            Self::Forget => "forget",
            Self::Tape => "tape",
        }
    }
    pub(crate) fn parse(s: &str) -> Result<Self> {
        serde_json::from_value(serde_json::Value::String(s.into()))
            .map_err(|_| CatalogError::Invalid(format!("unknown job type {s:?}")))
    }
}

/// Backup level, mapped onto parent snapshots by the director.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Re-read everything.
    Full,
    /// Parent = the job's last snapshot.
    #[default]
    Incremental,
    /// Parent = the job's last Full.
    Differential,
}

impl Level {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Incremental => "incremental",
            Self::Differential => "differential",
        }
    }
    pub(crate) fn parse(s: &str) -> Result<Self> {
        serde_json::from_value(serde_json::Value::String(s.into()))
            .map_err(|_| CatalogError::Invalid(format!("unknown level {s:?}")))
    }

    /// How much a level reads: Full > Differential > Incremental. When schedules collide
    /// the run takes the highest.
    pub fn rank(self) -> u8 {
        match self {
            Self::Incremental => 0,
            Self::Differential => 1,
            Self::Full => 2,
        }
    }
}

/// A job as created or updated through the API.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Unique name.
    pub name: String,
    /// What it does.
    #[serde(rename = "type")]
    pub kind: JobKind,
    /// Agent that runs it; `null` = the server host itself.
    #[serde(default)]
    pub agent: Option<i64>,
    /// Paths to back up (backup jobs).
    #[serde(default)]
    pub paths: Vec<String>,
    /// Exclude patterns.
    #[serde(default)]
    pub excludes: Vec<String>,
    /// Repository id; may be omitted when `pool` is given (the pool's repository is used).
    #[serde(default)]
    pub repository: Option<i64>,
    /// Pool (id or name) the job writes into: its repository, retention and limits apply.
    #[serde(default)]
    pub pool: Option<PoolRef>,
    /// Cron expression (5 or 6 fields) for a first schedule, optional.
    #[serde(default)]
    pub schedule: Option<String>,
    /// IANA time zone of that schedule (default UTC).
    #[serde(default)]
    pub timezone: Option<String>,
    /// Default level.
    #[serde(default)]
    pub level: Level,
    /// Retention applied after each backup (`keep_last`, `keep_daily`, …).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub retention: Option<serde_json::Value>,
    /// Type-specific options (e.g. `one_file_system`, `tags`, `read_data_subset`).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub options: serde_json::Map<String, serde_json::Value>,
    /// Disabled jobs are not scheduled.
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

/// A stored job.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Job {
    /// Numeric id.
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// What it does.
    #[serde(rename = "type")]
    pub kind: JobKind,
    /// Agent, or `null` for the server host.
    pub agent: Option<i64>,
    /// Paths.
    pub paths: Vec<String>,
    /// Exclude patterns.
    pub excludes: Vec<String>,
    /// Repository id (the pool's when the job has one).
    pub repository: i64,
    /// Pool id, when the job writes into a pool.
    pub pool: Option<i64>,
    /// Default level.
    pub level: Level,
    /// Retention policy.
    #[schema(value_type = Option<Object>)]
    pub retention: Option<serde_json::Value>,
    /// Type-specific options.
    #[schema(value_type = Object)]
    pub options: serde_json::Map<String, serde_json::Value>,
    /// Scheduled when true.
    pub enabled: bool,
    /// Creation time.
    #[serde(with = "crate::time_ms")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    /// Last change.
    #[serde(with = "crate::time_ms")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: i64,
}

/// Priorities a job may have (`options.priority`; higher runs first).
pub const PRIORITY_RANGE: std::ops::RangeInclusive<i64> = -100..=100;

impl Job {
    /// `options.priority` (0 when absent), clamped to [`PRIORITY_RANGE`].
    pub fn priority(&self) -> i64 {
        self.options
            .get("priority")
            .and_then(serde_json::Value::as_i64)
            .unwrap_or(0)
            .clamp(*PRIORITY_RANGE.start(), *PRIORITY_RANGE.end())
    }

    fn from_row(r: &AnyRow) -> Result<Self> {
        Ok(Self {
            id: r.i64("id")?,
            name: r.str("name")?,
            kind: JobKind::parse(&r.str("kind")?)?,
            agent: r.opt_i64("agent_id")?,
            paths: r.json("paths")?,
            excludes: r.json("excludes")?,
            repository: r.i64("repository_id")?,
            pool: r.opt_i64("pool_id")?,
            level: Level::parse(&r.str("level")?)?,
            retention: r.opt_json("retention")?,
            options: r.json("options")?,
            enabled: r.flag("enabled")?,
            created_at: r.i64("created_at")?,
            updated_at: r.i64("updated_at")?,
        })
    }
}

/// A schedule as created through the API.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// Job it triggers.
    pub job: i64,
    /// Cron expression: `min hour dom month dow` (or with leading seconds).
    pub cron: String,
    /// IANA time zone (default UTC).
    #[serde(default)]
    pub timezone: Option<String>,
    /// Level override for runs it starts (e.g. Full monthly, Incremental daily).
    #[serde(default)]
    pub level: Option<Level>,
    /// Disabled schedules do not fire.
    #[serde(default = "yes")]
    pub enabled: bool,
}

/// A stored schedule.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Schedule {
    /// Numeric id.
    pub id: i64,
    /// Job it triggers.
    pub job: i64,
    /// Cron expression.
    pub cron: String,
    /// IANA time zone.
    pub timezone: String,
    /// Level override.
    pub level: Option<Level>,
    /// Fires when true.
    pub enabled: bool,
    /// Next due time.
    #[serde(with = "crate::time_ms::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub next_run_at: Option<i64>,
    /// Last time it fired.
    #[serde(with = "crate::time_ms::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_run_at: Option<i64>,
}

impl Schedule {
    fn from_row(r: &AnyRow) -> Result<Self> {
        Ok(Self {
            id: r.i64("id")?,
            job: r.i64("job_id")?,
            cron: r.str("cron")?,
            timezone: r.str("timezone")?,
            level: r.opt_str("level")?.map(|l| Level::parse(&l)).transpose()?,
            enabled: r.flag("enabled")?,
            next_run_at: r.opt_i64("next_run_at")?,
            last_run_at: r.opt_i64("last_run_at")?,
        })
    }
}

const JOB_COLS: &str = "id, name, kind, agent_id, repository_id, pool_id, paths, excludes, level, retention, options, \
                        enabled, created_at, updated_at";
const SCHEDULE_COLS: &str = "id, job_id, cron, timezone, level, enabled, next_run_at, last_run_at";

fn validate_job(spec: &JobSpec) -> Result<()> {
    validate_name("job", &spec.name)?;
    // A backup reads paths, or the output of its dump command (`options.hooks.stdin`).
    let streams = spec.options.get("hooks").and_then(|h| h.get("stdin")).is_some_and(|s| !s.is_null());
    if spec.kind == JobKind::Backup && spec.paths.is_empty() && !streams {
        return Err(CatalogError::Invalid("a backup job needs at least one path (or options.hooks.stdin)".into()));
    }
    for p in &spec.paths {
        if !p.starts_with('/') || p.split('/').any(|c| c == "..") || p.contains('\0') {
            return Err(CatalogError::Invalid(format!("path {p:?} must be absolute without '..'")));
        }
    }
    if let Some(r) = &spec.retention {
        if !r.is_object() {
            return Err(CatalogError::Invalid("retention must be an object of keep_* rules".into()));
        }
    }
    Ok(())
}

pub(crate) type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// Where a job writes: its repository and, when it names one, its pool.
#[derive(Debug, Clone, Copy)]
struct Target {
    repository: i64,
    pool: Option<i64>,
}

/// Bind a job definition as `$1`..`$11` (the order both INSERT and UPDATE use).
fn bind_spec<'q>(q: AnyQuery<'q>, spec: &'q JobSpec, t: Target) -> AnyQuery<'q> {
    q.bind(&spec.name)
        .bind(spec.kind.as_str())
        .bind(spec.agent)
        .bind(t.repository)
        .bind(t.pool)
        .bind(to_json(&spec.paths))
        .bind(to_json(&spec.excludes))
        .bind(spec.level.as_str())
        .bind(spec.retention.as_ref().map(to_json))
        .bind(to_json(&spec.options))
        .bind(i64::from(spec.enabled))
}

/// Bind a schedule as `$1`..`$6` (the order both INSERT and UPDATE use).
fn bind_schedule<'q>(q: AnyQuery<'q>, spec: &'q ScheduleSpec, next_run_at: Option<i64>) -> AnyQuery<'q> {
    q.bind(spec.job)
        .bind(&spec.cron)
        .bind(spec.timezone.clone().unwrap_or_else(|| "UTC".into()))
        .bind(spec.level.map(|l| l.as_str()))
        .bind(i64::from(spec.enabled))
        .bind(next_run_at)
}

impl Catalog {
    /// The repository (and pool) a job spec writes into: the pool's repository when it names
    /// a pool — a `repository` given as well must be that one.
    pub async fn job_target(&self, spec: &JobSpec) -> Result<(i64, Option<Pool>)> {
        match (&spec.pool, spec.repository) {
            (None, None) => Err(CatalogError::Invalid("a job needs a repository or a pool".into())),
            (None, Some(r)) => {
                self.get_repository(r).await?;
                Ok((r, None))
            }
            (Some(p), r) => {
                let pool = self.find_pool(p).await?;
                if r.is_some_and(|r| r != pool.repository) {
                    return Err(CatalogError::Invalid(format!(
                        "pool {:?} writes into repository {}, not {}: give the pool alone",
                        pool.name,
                        pool.repository,
                        r.unwrap_or_default()
                    )));
                }
                Ok((pool.repository, Some(pool)))
            }
        }
    }

    async fn resolve_target(&self, spec: &JobSpec) -> Result<Target> {
        let (repository, pool) = self.job_target(spec).await?;
        Ok(Target { repository, pool: pool.map(|p| p.id) })
    }

    /// Create a job (the caller adds its schedule, if any, with [`Catalog::create_schedule`]).
    pub async fn create_job(&self, spec: &JobSpec) -> Result<Job> {
        validate_job(spec)?;
        let target = self.resolve_target(spec).await?;
        let now = now_ms();
        let sql = format!(
            "INSERT INTO jobs (name, kind, agent_id, repository_id, pool_id, paths, excludes, level, retention, \
             options, enabled, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12) \
             RETURNING {JOB_COLS}"
        );
        let r = bind_spec(sqlx::query(&sql), spec, target).bind(now).fetch_one(&self.pool).await;
        let row = named_conflict(r.map_err(Into::into), || format!("job {:?} already exists", spec.name))?;
        Job::from_row(&row)
    }

    /// Replace a job's definition.
    pub async fn update_job(&self, id: i64, spec: &JobSpec) -> Result<Job> {
        validate_job(spec)?;
        self.get_job(id).await?;
        let target = self.resolve_target(spec).await?;
        let sql = "UPDATE jobs SET name = $1, kind = $2, agent_id = $3, repository_id = $4, pool_id = $5, paths = $6, \
                   excludes = $7, level = $8, retention = $9, options = $10, enabled = $11, updated_at = $12 \
                   WHERE id = $13";
        let r = bind_spec(sqlx::query(sql), spec, target).bind(now_ms()).bind(id).execute(&self.pool).await;
        named_conflict(r.map_err(Into::into), || format!("job {:?} already exists", spec.name))?;
        self.get_job(id).await
    }

    /// All jobs by name.
    pub async fn list_jobs(&self) -> Result<Vec<Job>> {
        let rows = sqlx::query(&format!("SELECT {JOB_COLS} FROM jobs ORDER BY name")).fetch_all(&self.pool).await?;
        rows.iter().map(Job::from_row).collect()
    }

    /// One job.
    pub async fn get_job(&self, id: i64) -> Result<Job> {
        self.one_by_id(&format!("SELECT {JOB_COLS} FROM jobs WHERE id = $1"), id, "job", Job::from_row).await
    }

    /// Delete a job and its schedules; its runs stay in the history.
    pub async fn delete_job(&self, id: i64) -> Result<()> {
        self.get_job(id).await?;
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM schedules WHERE job_id = $1").bind(id).execute(&mut *tx).await?;
        sqlx::query("UPDATE runs SET job_id = NULL WHERE job_id = $1").bind(id).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM jobs WHERE id = $1").bind(id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Add a schedule; `next_run_at` comes from the director's cron evaluation.
    pub async fn create_schedule(&self, spec: &ScheduleSpec, next_run_at: Option<i64>) -> Result<Schedule> {
        self.get_job(spec.job).await?;
        let sql = format!(
            "INSERT INTO schedules (job_id, cron, timezone, level, enabled, next_run_at) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING {SCHEDULE_COLS}"
        );
        let row = bind_schedule(sqlx::query(&sql), spec, next_run_at).fetch_one(&self.pool).await?;
        Schedule::from_row(&row)
    }

    /// Replace a schedule (cron, time zone, level, enabled; it may move to another job) with
    /// its next due time recomputed by the director.
    pub async fn update_schedule(&self, id: i64, spec: &ScheduleSpec, next_run_at: Option<i64>) -> Result<Schedule> {
        self.get_schedule(id).await?;
        self.get_job(spec.job).await?;
        let sql = "UPDATE schedules SET job_id = $1, cron = $2, timezone = $3, level = $4, enabled = $5, \
                   next_run_at = $6 WHERE id = $7";
        bind_schedule(sqlx::query(sql), spec, next_run_at).bind(id).execute(&self.pool).await?;
        self.get_schedule(id).await
    }

    /// Schedules, all or of one job.
    pub async fn list_schedules(&self, job: Option<i64>) -> Result<Vec<Schedule>> {
        let rows = match job {
            Some(j) => {
                sqlx::query(&format!("SELECT {SCHEDULE_COLS} FROM schedules WHERE job_id = $1 ORDER BY id"))
                    .bind(j)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query(&format!("SELECT {SCHEDULE_COLS} FROM schedules ORDER BY id")).fetch_all(&self.pool).await?
            }
        };
        rows.iter().map(Schedule::from_row).collect()
    }

    /// One schedule.
    pub async fn get_schedule(&self, id: i64) -> Result<Schedule> {
        self.one_by_id(
            &format!("SELECT {SCHEDULE_COLS} FROM schedules WHERE id = $1"),
            id,
            "schedule",
            Schedule::from_row,
        )
        .await
    }

    /// Delete a schedule.
    pub async fn delete_schedule(&self, id: i64) -> Result<()> {
        let n = sqlx::query("DELETE FROM schedules WHERE id = $1").bind(id).execute(&self.pool).await?.rows_affected();
        if n == 0 {
            return Err(CatalogError::NotFound(format!("schedule {id}")));
        }
        Ok(())
    }

    /// Enabled schedules of enabled jobs that are due at `now`.
    pub async fn due_schedules(&self, now: i64) -> Result<Vec<Schedule>> {
        let rows = sqlx::query(
            "SELECT s.id, s.job_id, s.cron, s.timezone, s.level, s.enabled, s.next_run_at, s.last_run_at \
             FROM schedules s JOIN jobs j ON j.id = s.job_id \
             WHERE s.enabled = 1 AND j.enabled = 1 AND s.next_run_at IS NOT NULL AND s.next_run_at <= $1 \
             ORDER BY s.next_run_at",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(Schedule::from_row).collect()
    }

    /// When the next enabled schedule of an enabled job falls due (the director sleeps until
    /// then at most).
    pub async fn next_schedule_due(&self) -> Result<Option<i64>> {
        let (due,): (Option<i64>,) = sqlx::query_as(
            "SELECT MIN(s.next_run_at) FROM schedules s JOIN jobs j ON j.id = s.job_id \
             WHERE s.enabled = 1 AND j.enabled = 1",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(due)
    }

    /// Move a schedule's next run (compare-and-set, like [`Catalog::fire_schedules`]) without
    /// queueing a run: used to skip runs missed while the server was down.
    pub async fn reschedule(&self, id: i64, expected: Option<i64>, next_run_at: Option<i64>) -> Result<bool> {
        Ok(sqlx::query("UPDATE schedules SET next_run_at = $1 WHERE id = $2 AND next_run_at = $3")
            .bind(next_run_at)
            .bind(id)
            .bind(expected)
            .execute(&self.pool)
            .await?
            .rows_affected()
            == 1)
    }

    /// Fire the due schedules of one job exactly once across all servers: advance each one's
    /// `next_run_at` only if it still holds the value this server read (compare-and-set) and
    /// queue one run in the same transaction. Several schedules due together (a monthly Full
    /// and a daily Incremental on the 1st, or runs missed while the server was down) queue a
    /// single run at the highest of their levels, as Bareos does. Returns the queued run's id,
    /// or `None` when another server won.
    pub async fn fire_schedules(&self, due: &[(Schedule, Option<i64>)], now: i64) -> Result<Option<i64>> {
        Ok(self.fire_many(&[due.to_vec()], now).await?.into_iter().next().flatten())
    }

    /// [`Self::fire_schedules`] for the due schedules of many jobs (one group per job) in one
    /// transaction, each group behind a savepoint: a thousand jobs due in the same second fire
    /// in one commit instead of a thousand. Returns, per group, the queued run or `None`
    /// where another server won.
    pub async fn fire_many(&self, groups: &[Vec<(Schedule, Option<i64>)>], now: i64) -> Result<Vec<Option<i64>>> {
        let mut jobs = Vec::with_capacity(groups.len());
        for due in groups {
            let Some((first, _)) = due.first() else {
                jobs.push(None);
                continue;
            };
            if due.iter().any(|(s, _)| s.job != first.job) {
                return Err(CatalogError::Invalid("schedules of different jobs fired together".into()));
            }
            jobs.push(Some(self.get_job(first.job).await?));
        }
        let mut tx = self.pool.begin().await?;
        let mut out = Vec::with_capacity(groups.len());
        for (due, job) in groups.iter().zip(jobs) {
            let Some(job) = job else {
                out.push(None);
                continue;
            };
            let mut sp = sqlx::Acquire::begin(&mut *tx).await?;
            let mut won = true;
            for (s, next_run_at) in due {
                won = sqlx::query(
                    "UPDATE schedules SET next_run_at = $1, last_run_at = $2 WHERE id = $3 AND next_run_at = $4",
                )
                .bind(*next_run_at)
                .bind(now)
                .bind(s.id)
                .bind(s.next_run_at)
                .execute(&mut *sp)
                .await?
                .rows_affected()
                    == 1;
                if !won {
                    break;
                }
            }
            if !won {
                sp.rollback().await?;
                out.push(None);
                continue;
            }
            let level =
                due.iter().map(|(s, _)| s.level.unwrap_or(job.level)).max_by_key(|l| l.rank()).unwrap_or(job.level);
            let scheduled_for = due.iter().filter_map(|(s, _)| s.next_run_at).min();
            let (run_id,): (i64,) = sqlx::query_as(
                "INSERT INTO runs (job_id, kind, level, status, triggered_by, queued_at, scheduled_for, agent_id, \
                 priority, repository_id) VALUES ($1, $2, $3, 'queued', 'schedule', $4, $5, $6, $7, $8) RETURNING id",
            )
            .bind(job.id)
            .bind(job.kind.as_str())
            .bind((job.kind == JobKind::Backup).then(|| level.as_str()))
            .bind(now)
            .bind(scheduled_for)
            .bind(job.agent)
            .bind(job.priority())
            .bind(job.repository)
            .fetch_one(&mut *sp)
            .await?;
            sp.commit().await?;
            out.push(Some(run_id));
        }
        tx.commit().await?;
        Ok(out)
    }
}
