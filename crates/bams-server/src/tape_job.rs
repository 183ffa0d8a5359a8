//! The `tape` job type (docs/design.md §5): writes snapshots of the job's repository as a tape set
//! to a media pool, through the same code as `bams tape write` — on the built-in virtual
//! library, or on a real library (mtx robot, `/dev/nst*` drives). Volumes are chosen and
//! recorded through the library's media database, so pool retention and recycling apply.
//! Options: `pool` (required), `snapshots` (`latest`, the default, or `all`), `drive`
//! (default 0). The run log names the set id and its volumes, which is what
//! `bams tape restore --set` needs.

use std::sync::Arc;

use bams_appliance::tape::drives::{ChangerDrives, DeviceOpener, Drives, VtlDrives};
use bams_appliance::tape::media::MediaDb;
use bams_appliance::tape::set::{self, Media, PoolMedia};
use bams_appliance::tape::vtl::VirtualLibrary;
use bams_appliance::tape::Changer;
use bams_catalog::{Job, JobSpec, RunStats};
use bams_director::KindExecutor;
use bams_store::Repository;

/// The library tape jobs write to.
pub enum JobLibrary {
    /// The built-in virtual library.
    Virtual(VirtualLibrary),
    /// A real library: its changer, how many drives `tape.drives` names, and how a drive's
    /// device is opened.
    Changer {
        /// The robot.
        changer: Arc<dyn Changer>,
        /// Drives with a configured device.
        drives: u32,
        /// Opens a drive's device.
        open: DeviceOpener,
    },
}

/// Tape jobs on one library.
pub struct TapeJobs {
    library: JobLibrary,
    media: MediaDb,
}

impl TapeJobs {
    /// Jobs writing to `library`, recording in `media`.
    pub fn new(library: JobLibrary, media: MediaDb) -> Self {
        Self { library, media }
    }

    /// Drive `drive`, for a blocking thread of the runtime.
    fn drives(&self, drive: u32) -> Result<Box<dyn Drives>, String> {
        Ok(match &self.library {
            JobLibrary::Virtual(lib) => Box::new(VtlDrives::new(lib.clone(), drive)),
            JobLibrary::Changer { changer, open, .. } => {
                let handle = tokio::runtime::Handle::try_current().map_err(|e| e.to_string())?;
                Box::new(ChangerDrives::new(changer.clone(), handle, drive, open.clone()))
            }
        })
    }
}

impl TapeJobs {
    /// Label the cartridge `barcode` for `pool` in drive `drive` (loaded there and put back),
    /// as `bams tape label` does, and record it in the media database. Returns the label and
    /// the tape sets relabeling erased. Blocking: call it on a blocking thread.
    pub fn label(
        &self,
        barcode: &str,
        pool: &str,
        force: bool,
        drive: u32,
    ) -> Result<(bams_appliance::tape::volume::Label, Vec<String>), bams_appliance::ApplianceError> {
        let mut drives = self.drives(drive).map_err(bams_appliance::ApplianceError::Invalid)?;
        let mut dev = drives.mount(barcode)?;
        let label = bams_appliance::tape::volume::label(dev.as_mut(), pool, force);
        drop(dev);
        drives.release()?;
        let label = label.map_err(bams_appliance::ApplianceError::from)?;
        let forgotten = self.media.labeled(&label, false)?;
        Ok((label, forgotten))
    }
}

fn options(o: &serde_json::Map<String, serde_json::Value>) -> Result<(String, bool, u32), String> {
    let pool = o.get("pool").and_then(|v| v.as_str()).ok_or("a tape job needs options.pool: the media pool")?;
    bams_appliance::tape::volume::validate_pool(pool).map_err(|e| format!("options.{e}"))?;
    let all = match o.get("snapshots").map(|v| v.as_str()) {
        None | Some(Some("latest")) => false,
        Some(Some("all")) => true,
        _ => return Err("options.snapshots must be \"latest\" or \"all\"".into()),
    };
    let drive = match o.get("drive") {
        None => 0,
        Some(v) => v.as_u64().and_then(|d| u32::try_from(d).ok()).ok_or("options.drive must be a drive number")?,
    };
    Ok((pool.to_string(), all, drive))
}

impl KindExecutor for TapeJobs {
    fn validate(&self, job: &JobSpec) -> Result<(), String> {
        let (_, _, drive) = options(&job.options)?;
        match &self.library {
            JobLibrary::Virtual(lib) => {
                lib.library().map_err(|e| e.to_string())?.drive(drive).map_err(|e| e.to_string())?;
            }
            JobLibrary::Changer { drives, .. } if drive >= *drives => {
                return Err(format!("options.drive {drive}: tape.drives names {drives} drive device(s)"));
            }
            JobLibrary::Changer { .. } => {}
        }
        Ok(())
    }

    fn run(
        &self,
        job: &Job,
        repo: &Repository,
        log: &(dyn Fn(String) + Send + Sync),
    ) -> Result<(RunStats, String), String> {
        let (pool, all, drive) = options(&job.options)?;
        let (mut snapshots, _) = repo.snapshots().map_err(|e| e.to_string())?;
        snapshots.sort_by_key(|s| s.snapshot.time);
        if !all {
            snapshots = snapshots.pop().into_iter().collect();
        }
        if snapshots.is_empty() {
            return Err("the repository has no snapshot to write".into());
        }
        log(format!("writing {} snapshot(s) to media pool {pool} on drive {drive}", snapshots.len()));
        let mut media = PoolMedia::new(self.drives(drive)?, self.media.clone());
        let written = set::write_set(repo, &snapshots, &pool, &mut media, &mut |_| {});
        // Whatever happened, the cartridge goes back to its slot for the next job.
        if let Err(e) = media.release() {
            log(format!("warning: could not unload drive {drive}: {e}"));
        }
        let catalog = written.map_err(|e| e.to_string())?;
        let summary = format!(
            "wrote tape set {} ({} snapshot(s), {} bytes) on {}",
            catalog.set_id,
            catalog.snapshots.len(),
            catalog.bytes,
            catalog.volumes.join(", ")
        );
        log(summary.clone());
        let stats = RunStats {
            files: catalog.objects.len() as i64,
            bytes: catalog.bytes as i64,
            new_bytes: catalog.bytes as i64,
            errors: 0,
            snapshot_id: None,
        };
        Ok((stats, summary))
    }
}
