//! Tape library (docs/design.md §5 `/api/v1/tape/*`): one changer model — drives, storage slots,
//! import/export slots, barcodes, what is loaded where — behind the [`Changer`] trait, with two
//! implementations: [`mtx::MtxChanger`] for real libraries (mtx and mt-st through the command
//! runner) and [`vtl::VirtualLibrary`], a file-backed library the tests, demos and the default
//! configuration use. The checks an operator expects before a robot moves (slot empty, drive
//! full, unknown element) live here once, in [`Library::plan_load`] / [`Library::plan_unload`].

pub mod device;
pub mod drives;
pub mod media;
pub mod mt;
pub mod mtx;
pub mod set;
pub mod st;
pub mod volume;
pub mod vtl;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::runner::CommandRunner;
use crate::ApplianceError;

/// A changer's view of its elements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Library {
    /// `virtual` or `mtx`.
    pub kind: String,
    /// Changer device (`/dev/sg3`) or the virtual library's directory.
    pub changer: String,
    /// Data transfer elements, numbered from 0 like mtx.
    pub drives: Vec<Drive>,
    /// Storage and import/export slots, numbered from 1 like mtx.
    pub slots: Vec<Slot>,
}

/// A tape drive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Drive {
    /// Element number (0-based).
    pub id: u32,
    /// Its non-rewinding device (`/dev/nst0`), when configured.
    pub device: Option<String>,
    /// The cartridge in it.
    pub loaded: Option<Loaded>,
}

/// A cartridge in a drive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Loaded {
    /// Its barcode, when the library has a reader.
    pub barcode: Option<String>,
    /// The slot it came from (`None` when the library does not know).
    pub home_slot: Option<u32>,
}

/// A slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Slot {
    /// Element number (1-based).
    pub number: u32,
    /// A mail slot for cartridges entering or leaving the library.
    pub import_export: bool,
    /// Holds a cartridge.
    pub full: bool,
    /// The cartridge's barcode.
    pub barcode: Option<String>,
    /// A cleaning cartridge (barcode `CLN…`): never loaded for data.
    pub cleaning: bool,
}

impl Slot {
    /// A slot holding `barcode` (or an unlabeled cartridge).
    pub fn full(number: u32, import_export: bool, barcode: Option<String>) -> Self {
        let cleaning = barcode.as_deref().is_some_and(|b| b.starts_with("CLN"));
        Self { number, import_export, full: true, barcode, cleaning }
    }

    /// An empty slot.
    pub fn empty(number: u32, import_export: bool) -> Self {
        Self { number, import_export, full: false, barcode: None, cleaning: false }
    }
}

/// Where a load takes its cartridge from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A slot number.
    Slot(u32),
    /// Whichever slot holds this barcode.
    Barcode(String),
}

impl Library {
    /// The drive numbered `id`.
    pub fn drive(&self, id: u32) -> Result<&Drive, ApplianceError> {
        self.drives.iter().find(|d| d.id == id).ok_or_else(|| ApplianceError::NotFound(format!("drive {id}")))
    }

    /// The slot numbered `number`.
    pub fn slot(&self, number: u32) -> Result<&Slot, ApplianceError> {
        self.slots.iter().find(|s| s.number == number).ok_or_else(|| ApplianceError::NotFound(format!("slot {number}")))
    }

    /// Check that `source` can go into `drive` and return the slot number: the drive exists
    /// and is empty, the slot exists and holds a data cartridge.
    pub fn plan_load(&self, drive: u32, source: &Source) -> Result<u32, ApplianceError> {
        let d = self.drive(drive)?;
        let slot = match source {
            Source::Slot(n) => self.slot(*n)?,
            Source::Barcode(b) => self
                .slots
                .iter()
                .find(|s| s.barcode.as_deref() == Some(b.as_str()))
                .ok_or_else(|| self.barcode_elsewhere(b))?,
        };
        if let Some(l) = &d.loaded {
            return Err(ApplianceError::Conflict(format!(
                "drive {drive} is full (holds {}); unload it first",
                l.barcode.as_deref().unwrap_or("an unlabeled cartridge")
            )));
        }
        if !slot.full {
            return Err(ApplianceError::Conflict(format!("slot {} is empty", slot.number)));
        }
        if slot.cleaning {
            return Err(ApplianceError::Conflict(format!(
                "slot {} holds cleaning cartridge {}",
                slot.number,
                slot.barcode.as_deref().unwrap_or("")
            )));
        }
        Ok(slot.number)
    }

    fn barcode_elsewhere(&self, barcode: &str) -> ApplianceError {
        match self.drives.iter().find(|d| d.loaded.as_ref().and_then(|l| l.barcode.as_deref()) == Some(barcode)) {
            Some(d) => ApplianceError::Conflict(format!("{barcode} is already in drive {}", d.id)),
            None => ApplianceError::NotFound(format!("cartridge {barcode}")),
        }
    }

    /// Check that `drive` can be unloaded into `to` (default: the cartridge's home slot, else
    /// the first empty storage slot) and return that slot.
    /// Check a slot-to-slot move (e.g. from the mail slot into storage) before the robot
    /// moves: both slots exist, the source holds a cartridge, the target is empty.
    pub fn plan_transfer(&self, from: u32, to: u32) -> Result<(), ApplianceError> {
        let (src, dst) = (self.slot(from)?, self.slot(to)?);
        if from == to {
            return Err(ApplianceError::Invalid(format!("slot {from} is both source and target")));
        }
        if !src.full {
            return Err(ApplianceError::Conflict(format!("slot {from} is empty")));
        }
        if dst.full {
            return Err(ApplianceError::Conflict(format!("slot {to} is full")));
        }
        Ok(())
    }

    pub fn plan_unload(&self, drive: u32, to: Option<u32>) -> Result<u32, ApplianceError> {
        let d = self.drive(drive)?;
        let Some(loaded) = &d.loaded else {
            return Err(ApplianceError::Conflict(format!("drive {drive} is empty")));
        };
        let target = match to.or(loaded.home_slot.filter(|h| self.slot(*h).is_ok_and(|s| !s.full))) {
            Some(n) => self.slot(n)?,
            None => self
                .slots
                .iter()
                .find(|s| !s.full && !s.import_export)
                .ok_or_else(|| ApplianceError::Conflict("no empty storage slot to unload into".into()))?,
        };
        if target.full {
            return Err(ApplianceError::Conflict(format!("slot {} is full", target.number)));
        }
        Ok(target.number)
    }
}

/// What `mt status` (or the virtual drive) says about a drive.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DriveStatus {
    /// A cartridge is loaded and ready.
    pub online: bool,
    /// File number (filemarks passed since BOT); `None` when unknown.
    pub file_number: Option<i64>,
    /// Block number within the file; `None` when unknown.
    pub block_number: Option<i64>,
    /// Fixed block size in bytes; 0 = variable.
    pub block_size: Option<u64>,
    /// Density code and name, e.g. `0x58 (LTO-5)`.
    pub density: Option<String>,
    /// The status bits as mt prints them (`BOT`, `EOF`, `EOD`, `EOT`, `WR_PROT`, `DR_OPEN`…).
    pub flags: Vec<String>,
    /// Write-protected cartridge.
    pub write_protected: bool,
    /// Bytes written on the cartridge (virtual library only).
    pub used_bytes: Option<u64>,
    /// Cartridge capacity (virtual library only).
    pub capacity_bytes: Option<u64>,
}

/// A tape library.
#[async_trait]
pub trait Changer: Send + Sync {
    /// Current element status.
    async fn status(&self) -> Result<Library, ApplianceError>;
    /// Rescan barcodes (mtx `inventory`) and return the new status.
    async fn inventory(&self) -> Result<Library, ApplianceError>;
    /// Move the cartridge in `slot` into `drive` (already checked by [`load`]).
    async fn load_unchecked(&self, slot: u32, drive: u32) -> Result<(), ApplianceError>;
    /// Move the cartridge in `drive` into `slot` (already checked by [`unload`]).
    async fn unload_unchecked(&self, drive: u32, slot: u32) -> Result<(), ApplianceError>;
    /// Move a cartridge from slot to slot (mtx `transfer`); checked by [`transfer`].
    async fn transfer_unchecked(&self, from: u32, to: u32) -> Result<(), ApplianceError>;
    /// The drive's own status.
    async fn drive_status(&self, drive: u32) -> Result<DriveStatus, ApplianceError>;
}

/// Load a cartridge after checking the library's state; returns the state after the move.
pub async fn load(changer: &dyn Changer, drive: u32, source: &Source) -> Result<Library, ApplianceError> {
    let slot = changer.status().await?.plan_load(drive, source)?;
    changer.load_unchecked(slot, drive).await?;
    changer.status().await
}

/// Unload a drive after checking the library's state; returns the state after the move.
/// Move a cartridge between slots after [`Library::plan_transfer`]; returns the new status.
pub async fn transfer(changer: &dyn Changer, from: u32, to: u32) -> Result<Library, ApplianceError> {
    changer.status().await?.plan_transfer(from, to)?;
    changer.transfer_unchecked(from, to).await?;
    changer.status().await
}

pub async fn unload(changer: &dyn Changer, drive: u32, to: Option<u32>) -> Result<Library, ApplianceError> {
    let slot = changer.status().await?.plan_unload(drive, to)?;
    changer.unload_unchecked(drive, slot).await?;
    changer.status().await
}

/// Which library the appliance drives (config key `tape`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TapeConfig {
    /// `virtual` (default), `mtx` or `none`.
    pub library: String,
    /// mtx: the changer's SCSI generic device (`/dev/sg3`).
    pub changer: String,
    /// mtx: non-rewinding drive devices in element order (`/dev/nst0`, …).
    pub drives: Vec<String>,
    /// The virtual library's shape, used when it is first created.
    #[serde(rename = "virtual")]
    pub virtual_library: vtl::VtlShape,
    /// The virtual library's directory; empty = `<data_dir>/vtl`.
    pub dir: Option<PathBuf>,
}

impl Default for TapeConfig {
    fn default() -> Self {
        Self {
            library: "virtual".into(),
            changer: String::new(),
            drives: Vec::new(),
            virtual_library: vtl::VtlShape::default(),
            dir: None,
        }
    }
}

impl TapeConfig {
    /// Open the configured library (`None` when tape is switched off).
    /// Where the library's state and media database live: `tape.dir`, else `<data_dir>/vtl`
    /// for the virtual library and `<data_dir>/tape` for a real one.
    pub fn media_dir(&self, data_dir: &std::path::Path) -> PathBuf {
        self.dir.clone().unwrap_or_else(|| data_dir.join(if self.library == "mtx" { "tape" } else { "vtl" }))
    }

    pub fn open(
        &self,
        data_dir: &std::path::Path,
        runner: Arc<dyn CommandRunner>,
    ) -> Result<Option<Arc<dyn Changer>>, ApplianceError> {
        match self.library.as_str() {
            "none" | "" => Ok(None),
            "virtual" => Ok(Some(Arc::new(vtl::VirtualLibrary::open_or_create(
                &self.media_dir(data_dir),
                &self.virtual_library,
            )?))),
            "mtx" => {
                if !self.changer.starts_with("/dev/") {
                    return Err(ApplianceError::Invalid(format!(
                        "tape.changer must be a device under /dev, not {:?}",
                        self.changer
                    )));
                }
                Ok(Some(Arc::new(mtx::MtxChanger::new(runner, &self.changer, self.drives.clone()))))
            }
            other => Err(ApplianceError::Invalid(format!("tape.library must be virtual, mtx or none, not {other:?}"))),
        }
    }
}
