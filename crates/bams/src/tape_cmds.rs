//! `bams tape …`: the tape tier on the built-in virtual library (bams-appliance::tape).

use anyhow::{bail, Context, Result};
use bams_appliance::tape::device::VirtualDrive;
use bams_appliance::tape::set::{self, VtlMedia};
use bams_appliance::tape::volume;
use bams_appliance::tape::vtl::{VirtualLibrary, VtlShape};
use bams_store::archiver::Progress;
use bams_store::snapshot::SnapshotEntry;

use crate::cli::{Global, TapeCmd, TapeLibraryArgs};
use crate::output::{human_bytes, Bar, Out};
use crate::session;

fn library(a: &TapeLibraryArgs) -> Result<VirtualLibrary> {
    VirtualLibrary::open_or_create(&a.library, &VtlShape::default())
        .with_context(|| format!("opening the tape library {}", a.library.display()))
}

/// Run a tape command.
pub fn run(g: &Global, out: Out, cmd: TapeCmd) -> Result<u8> {
    match cmd {
        TapeCmd::Label { library: a, barcode, pool, force } => {
            let lib = library(&a)?;
            lib.swap_into(a.drive, &barcode)?;
            let mut dev = VirtualDrive::open(&lib, a.drive)?;
            let label = volume::label(&mut dev, &pool, force)?;
            dev.close()?;
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
            let lib = library(&a)?;
            let mut media = VtlMedia::new(lib.clone(), a.drive);
            let bar = Bar::new(out, "tape write");
            let catalog = set::write_set(&s.repo, &selection, &pool, &mut media, &mut |n| bar.bytes(n))?;
            bar.finish();
            // The cartridge goes back to its slot, as after a job.
            lib.return_to_slot(a.drive)?;
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
            let lib = library(&a)?;
            let mut media = VtlMedia::new(lib.clone(), a.drive);
            let bar = Bar::new(out, "tape restore");
            let catalog = set::read_set(&set_id, &target, &mut media, &mut |n| bar.bytes(n))?;
            bar.finish();
            lib.return_to_slot(a.drive)?;
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
    }
    Ok(0)
}
