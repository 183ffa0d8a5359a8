//! Shared server state handed to every handler.

use std::sync::Arc;

use bams_catalog::Catalog;
use bams_director::{Director, RepoPool};

use crate::auth::{AuthCache, LoginLimiter};
use crate::config::Config;

/// What handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// Loaded configuration.
    pub config: Arc<Config>,
    /// The catalog.
    pub catalog: Catalog,
    /// Opened repositories.
    pub repos: Arc<RepoPool>,
    /// Job execution.
    pub director: Arc<Director>,
    /// Disk repositories (appliance).
    pub disks: Arc<bams_appliance::diskrepo::DiskRepositories>,
    /// The tape library (`None` when `tape.library` is `none`).
    pub tape: Option<Arc<dyn bams_appliance::tape::Changer>>,
    /// The library's media database: pools, volumes, sets (`None` without a library).
    pub tape_media: Option<bams_appliance::tape::media::MediaDb>,
    /// Tape jobs and labeling on the library (`None` without a library).
    pub tape_jobs: Option<Arc<crate::tape_job::TapeJobs>>,
    /// The iSCSI target backend.
    pub iscsi: Arc<dyn bams_appliance::iscsi::IscsiBackend>,
    /// Where LUN backing files and devices may come from.
    pub iscsi_policy: Arc<bams_appliance::iscsi::PathPolicy>,
    /// The last system report and when it was made: the dashboard shows it without running
    /// every tool on each refresh.
    pub system_report: Arc<tokio::sync::Mutex<Option<(std::time::Instant, crate::system::SystemReport)>>>,
    /// Permits for WebSocket log followers (`logs.max_stream_clients`).
    pub log_followers: Arc<tokio::sync::Semaphore>,
    /// Recently verified credentials.
    pub auth_cache: Arc<AuthCache>,
    /// Password-guessing brake.
    pub limiter: Arc<LoginLimiter>,
    /// The bare-metal image service.
    pub images: Arc<bams_images::ImageService>,
    /// Prometheus exposition.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}
