//! `bams tape …`: the tape tier on the built-in virtual library (bams-appliance::tape).

use anyhow::{bail, Context, Result};
use std::sync::Arc;

use bams_appliance::tape::drives::{st_opener, ChangerDrives, Drives, VtlDrives};
use bams_appliance::tape::media::{MediaDb, PoolPolicy, VolumeStatus};
use bams_appliance::tape::mtx::MtxChanger;
use bams_appliance::tape::set::{self, Media, PoolMedia};
use bams_appliance::tape::volume;
use bams_appliance::tape::vtl::{VirtualLibrary, VtlShape};
use bams_appliance::tape::Changer;
use bams_store::archiver::Progress;
use bams_store::snapshot::SnapshotEntry;

use crate::cli::{Global, TapeCmd, TapeLibraryArgs, TapePoolCmd, TapePoolPolicyArgs};
use crate::output::{human_bytes, Bar, Out};
use crate::session;

fn library(a: &TapeLibraryArgs) -> Result<VirtualLibrary> {
    VirtualLibrary::open_or_create(&a.library, &VtlShape::default())
        .with_context(|| format!("opening the tape library {}", a.library.display()))
}

fn media_db(a: &TapeLibraryArgs) -> Result<MediaDb> {
    Ok(MediaDb::open(&a.library)?)
}

/// The drive the command uses: of the virtual library, or of a real one (mtx robot, st
/// drive) whose robot commands run on the returned runtime (keep it while the drive is used).
fn drive(a: &TapeLibraryArgs) -> Result<(Box<dyn Drives>, Option<tokio::runtime::Runtime>)> {
    let Some(changer) = &a.changer else {
        return Ok((Box::new(VtlDrives::new(library(a)?, a.drive)), None));
    };
    if !changer.starts_with("/dev/") || a.devices.iter().any(|d| !d.starts_with("/dev/")) {
        bail!("--changer and --device must be devices under /dev");
    }
    if a.drive as usize >= a.devices.len() {
        bail!("drive {} has no --device (give one per drive, in element order)", a.drive);
    }
    // A worker thread drives the robot commands: Handle::block_on alone does not drive the
    // I/O of a current-thread runtime.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let runner = Arc::new(bams_appliance::runner::SystemRunner);
    let changer: Arc<dyn Changer> = Arc::new(MtxChanger::new(runner, changer, a.devices.clone()));
    let drives = ChangerDrives::new(changer, rt.handle().clone(), a.drive, st_opener());
    Ok((Box::new(drives), Some(rt)))
}

fn policy(p: &TapePoolPolicyArgs) -> PoolPolicy {
    PoolPolicy { retention_days: p.retention_days, max_volumes: p.max_volumes, recycle: !p.no_recycle }
}

fn when(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M").to_string()).unwrap_or_else(|| "forever".into())
}

fn pool_cmd(out: Out, cmd: TapePoolCmd) -> Result<u8> {
    let now = chrono::Utc::now();
    match cmd {
        TapePoolCmd::Create { library: a, name, policy: p } => {
            media_db(&a)?.create_pool(&name, policy(&p))?;
            out.info(format!("created pool {name}"));
        }
        TapePoolCmd::Update { library: a, name, policy: p } => {
            media_db(&a)?.update_pool(&name, policy(&p))?;
            out.info(format!("updated pool {name}"));
        }
        TapePoolCmd::Delete { library: a, name } => {
            media_db(&a)?.delete_pool(&name)?;
            out.info(format!("deleted pool {name}"));
        }
        TapePoolCmd::List { library: a } => {
            let pools = media_db(&a)?.pools(now)?;
            if out.json {
                out.json(&pools)?;
            } else {
                println!(
                    "{:<20} {:>9} {:>8} {:>7} {:>8} {:>10} {:>5} {:>12}",
                    "pool", "retention", "max vols", "recycle", "volumes", "recyclable", "sets", "size"
                );
                for p in pools {
                    println!(
                        "{:<20} {:>9} {:>8} {:>7} {:>8} {:>10} {:>5} {:>12}",
                        p.name,
                        p.policy.retention_days.map(|d| format!("{d}d")).unwrap_or_else(|| "forever".into()),
                        p.policy.max_volumes.map(|m| m.to_string()).unwrap_or_else(|| "-".into()),
                        if p.policy.recycle { "yes" } else { "no" },
                        p.volumes,
                        p.recyclable_volumes,
                        p.sets,
                        human_bytes(p.bytes)
                    );
                }
            }
        }
    }
    Ok(0)
}

fn parse_status(s: &str) -> Result<VolumeStatus> {
    Ok(match s {
        "append" => VolumeStatus::Append,
        "full" => VolumeStatus::Full,
        "archive" => VolumeStatus::Archive,
        "error" => VolumeStatus::Error,
        other => bail!("volume status {other:?} must be append, full, archive or error"),
    })
}

/// Run a tape command.
pub fn run(g: &Global, out: Out, cmd: TapeCmd) -> Result<u8> {
    match cmd {
        TapeCmd::Label { library: a, barcode, pool, force } => {
            let (mut drives, _rt) = drive(&a)?;
            let mut dev = drives.mount(&barcode)?;
            let label = volume::label(dev.as_mut(), &pool, force);
            drop(dev);
            drives.release()?;
            let label = label?;
            let forgotten = media_db(&a)?.labeled(&label, false)?;
            if !forgotten.is_empty() {
                out.info(format!("relabeling erased tape set(s) {}", forgotten.join(", ")));
            }
            if out.json {
                out.json(&label)?;
            } else {
                out.info(format!("labeled {} for pool {} (volume {})", label.barcode, label.pool, label.volume_id));
            }
        }
        TapeCmd::Write { library: a, pool, snapshots } => {
            let s = session::open(g)?;
            let (all, _) = s.repo.snapshots()?;
            let selection: Vec<SnapshotEntry> = if snapshots.is_empty() {
                all
            } else {
                snapshots
                    .iter()
                    .map(|spec| bams_store::repo::resolve_snapshot(&all, spec).cloned())
                    .collect::<Result<_, _>>()?
            };
            if selection.is_empty() {
                bail!("the repository has no snapshot to write");
            }
            let (drives, _rt) = drive(&a)?;
            let mut media = PoolMedia::new(drives, media_db(&a)?);
            let bar = Bar::new(out, "tape write");
            let written = set::write_set(&s.repo, &selection, &pool, &mut media, &mut |n| bar.bytes(n));
            bar.finish();
            // The cartridge goes back to its slot, as after a job, whatever happened.
            let released = media.release();
            let catalog = written?;
            released?;
            if out.json {
                out.json(&catalog)?;
            } else {
                out.info(format!(
                    "wrote set {}: {} snapshot(s), {} object(s), {} on {}",
                    catalog.set_id,
                    catalog.snapshots.len(),
                    catalog.objects.len(),
                    human_bytes(catalog.bytes),
                    catalog.volumes.join(", ")
                ));
            }
        }
        TapeCmd::Restore { library: a, set: set_id, target } => {
            let (drives, _rt) = drive(&a)?;
            let mut media = PoolMedia::new(drives, media_db(&a)?);
            let bar = Bar::new(out, "tape restore");
            let read = set::read_set(&set_id, &target, &mut media, &mut |n| bar.bytes(n));
            bar.finish();
            let released = media.release();
            let catalog = read?;
            released?;
            // The index is rebuilt from the packs that came back, so the repository lists
            // exactly what the tape held.
            let location = target.to_str().context("target path is not UTF-8")?;
            let s = session::open_at(g, location, &session::secret_from(g, None)?)?;
            let packs = s.repo.recover_unindexed_packs(&mut Default::default())?;
            if out.json {
                out.json(&serde_json::json!({"catalog": catalog, "packs_indexed": packs, "repository": location}))?;
            } else {
                out.info(format!(
                    "restored set {} ({} snapshot(s), {}) into {location}; restore files with bams restore -r {location}",
                    catalog.set_id,
                    catalog.snapshots.len(),
                    human_bytes(catalog.bytes)
                ));
            }
        }
        TapeCmd::Pool(cmd) => return pool_cmd(out, cmd),
        TapeCmd::Volumes { library: a, barcode, status } => {
            let db = media_db(&a)?;
            if let (Some(b), Some(st)) = (barcode, status) {
                let v = db.set_status(&b, parse_status(&st)?)?;
                out.info(format!("{} is now {st}", v.barcode));
                return Ok(0);
            }
            let vols = db.volumes(chrono::Utc::now())?;
            if out.json {
                out.json(&vols)?;
            } else {
                println!(
                    "{:<10} {:<16} {:<8} {:>12} {:>5} {:<16} {:<10}",
                    "barcode", "pool", "status", "size", "sets", "retained until", "recyclable"
                );
                for v in vols {
                    println!(
                        "{:<10} {:<16} {:<8} {:>12} {:>5} {:<16} {:<10}",
                        v.volume.barcode,
                        v.volume.pool,
                        serde_json::to_value(v.volume.status)?.as_str().unwrap_or(""),
                        human_bytes(v.volume.bytes),
                        v.sets.len(),
                        if v.sets.is_empty() { "-".to_string() } else { when(v.retained_until) },
                        if v.recyclable { "yes" } else { "no" }
                    );
                }
            }
        }
        TapeCmd::Sets { library: a } => {
            let sets = media_db(&a)?.sets(chrono::Utc::now())?;
            if out.json {
                out.json(&sets)?;
            } else {
                println!(
                    "{:<16} {:<16} {:<16} {:>9} {:>12} {:<16} volumes",
                    "set", "pool", "written", "snapshots", "size", "expires"
                );
                for t in sets {
                    println!(
                        "{:<16} {:<16} {:<16} {:>9} {:>12} {:<16} {}{}",
                        t.set.set_id,
                        t.set.pool,
                        t.set.written_at.format("%Y-%m-%d %H:%M"),
                        t.set.snapshots.len(),
                        human_bytes(t.set.bytes),
                        if t.expired { "expired".to_string() } else { when(t.expires_at) },
                        t.set.volumes.join(","),
                        if t.set.complete { "" } else { " (incomplete)" }
                    );
                }
            }
        }
    }
    Ok(0)
}
