//! The director: turns schedules into queued runs, claims runs from the catalog's queue and
//! executes those that belong to the server host (backup of local paths, forget, prune,
//! check), recording status, counters and logs. Several servers can share one catalog: the
//! catalog's claim queries make sure each schedule fires once and each run runs once.

mod exec;
mod repos;
mod runner;
pub mod schedule;

pub use repos::{RepoPool, RepoPoolError};
pub use runner::{Director, DirectorOptions};

/// Job types this server can execute today; the API refuses to create others.
pub const SUPPORTED_JOB_KINDS: &[bams_catalog::JobKind] = &[
    bams_catalog::JobKind::Backup,
    bams_catalog::JobKind::Forget,
    bams_catalog::JobKind::Prune,
    bams_catalog::JobKind::Check,
];
