//! The built-in virtual tape library: a directory holding `library.json` (drives, slots,
//! which cartridge is where, each cartridge's capacity and write-protect tab) and one file per
//! cartridge under `cartridges/`. Every change happens under an exclusive lock on
//! `library.json.lock` ([`JsonState`]) and is written with write-to-temp + fsync + rename, so two processes (the
//! server and `bams tape`) never see a half-moved cartridge and a crash never loses one.
//! It behaves like a real changer where an operator would notice: elements are numbered like
//! mtx, a loaded cartridge leaves its slot empty and remembers its home slot, cleaning
//! cartridges are refused, and the drive reports BOT/EOD/WR_PROT/DR_OPEN like mt-st.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{Changer, Drive, DriveStatus, Library, Loaded, Slot};
use crate::error::io;
use crate::files::JsonState;
use crate::ApplianceError;

/// The shape of a new virtual library (config key `tape.virtual`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VtlShape {
    /// Drives.
    pub drives: u32,
    /// Storage slots.
    pub slots: u32,
    /// Import/export (mail) slots, numbered after the storage slots.
    pub import_export: u32,
    /// Blank cartridges put in the first storage slots at creation.
    pub cartridges: u32,
    /// Capacity of each cartridge in MiB.
    pub cartridge_capacity_mib: u64,
    /// First letters of the generated barcodes (`VT0001L8`, …).
    pub barcode_prefix: String,
}

impl Default for VtlShape {
    fn default() -> Self {
        Self {
            drives: 2,
            slots: 16,
            import_export: 2,
            cartridges: 12,
            cartridge_capacity_mib: 256,
            barcode_prefix: "VT".into(),
        }
    }
}

/// A cartridge's physical properties.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Cartridge {
    /// Bytes it holds before end of medium.
    pub capacity_bytes: u64,
    /// The write-protect tab.
    pub write_protected: bool,
}

/// Where a drive's head is, for the cartridge it holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Filemarks passed since BOT.
    pub file: u64,
    /// Records passed since the last filemark.
    pub block: u64,
    /// Byte offset in the cartridge file.
    pub offset: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct VDrive {
    loaded: Option<Loaded>,
    #[serde(default)]
    position: Position,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct VSlot {
    number: u32,
    import_export: bool,
    barcode: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct VtlState {
    drives: Vec<VDrive>,
    slots: Vec<VSlot>,
    cartridges: BTreeMap<String, Cartridge>,
}

/// The virtual library rooted at a directory.
#[derive(Debug, Clone)]
pub struct VirtualLibrary {
    dir: PathBuf,
}

/// A barcode as real libraries print them: 1–16 upper-case letters and digits.
pub fn validate_barcode(b: &str) -> Result<(), ApplianceError> {
    if b.is_empty() || b.len() > 16 || !b.bytes().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()) {
        return Err(ApplianceError::Invalid(format!("barcode {b:?} must be 1-16 characters A-Z and 0-9")));
    }
    Ok(())
}

impl VirtualLibrary {
    /// Open the library in `dir`, creating it with `shape` the first time. An existing library
    /// keeps its shape (cartridges never vanish because the config changed).
    pub fn open_or_create(dir: &Path, shape: &VtlShape) -> Result<Self, ApplianceError> {
        let lib = Self { dir: dir.to_path_buf() };
        std::fs::create_dir_all(lib.dir.join("cartridges")).map_err(io(format!("creating {}", dir.display())))?;
        let state_file = lib.state();
        let _guard = state_file.lock()?;
        if !state_file.exists() {
            if shape.drives == 0 || shape.slots == 0 || shape.cartridges > shape.slots || shape.drives > 64 {
                return Err(ApplianceError::Invalid(format!(
                    "virtual library needs 1-64 drives, at least one slot and no more cartridges than slots: {shape:?}"
                )));
            }
            validate_barcode(&format!("{}0001L8", shape.barcode_prefix))?;
            let capacity_bytes = shape.cartridge_capacity_mib.max(1) << 20;
            let mut state = VtlState {
                drives: vec![VDrive::default(); shape.drives as usize],
                slots: (1..=shape.slots + shape.import_export)
                    .map(|number| VSlot { number, import_export: number > shape.slots, barcode: None })
                    .collect(),
                cartridges: BTreeMap::new(),
            };
            for i in 0..shape.cartridges {
                let barcode = format!("{}{:04}L8", shape.barcode_prefix, i + 1);
                state.slots[i as usize].barcode = Some(barcode.clone());
                state.cartridges.insert(barcode, Cartridge { capacity_bytes, write_protected: false });
            }
            state_file.save(&state)?;
        }
        Ok(lib)
    }

    /// The library's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file holding a cartridge's records.
    pub fn cartridge_path(&self, barcode: &str) -> PathBuf {
        self.dir.join("cartridges").join(format!("{barcode}.tape"))
    }

    fn state(&self) -> JsonState {
        JsonState::new(&self.dir, "library.json")
    }

    /// Read-modify-write the state under the library lock.
    fn update<T>(&self, f: impl FnOnce(&mut VtlState) -> Result<T, ApplianceError>) -> Result<T, ApplianceError> {
        self.state().update(f)
    }

    fn read<T>(&self, f: impl FnOnce(&VtlState) -> T) -> Result<T, ApplianceError> {
        self.state().read(f)
    }

    fn view(&self, state: &VtlState) -> Library {
        Library {
            kind: "virtual".into(),
            changer: self.dir.display().to_string(),
            drives: state
                .drives
                .iter()
                .enumerate()
                .map(|(i, d)| Drive { id: i as u32, device: None, loaded: d.loaded.clone() })
                .collect(),
            slots: state
                .slots
                .iter()
                .map(|s| match &s.barcode {
                    Some(b) => Slot::full(s.number, s.import_export, Some(b.clone())),
                    None => Slot::empty(s.number, s.import_export),
                })
                .collect(),
        }
    }

    /// The current element status (synchronous form of [`Changer::status`]).
    pub fn library(&self) -> Result<Library, ApplianceError> {
        self.read(|s| self.view(s))
    }

    /// Put a new blank cartridge into the first empty import/export slot (else storage slot),
    /// as an operator does through the mail slot.
    pub fn add_cartridge(&self, barcode: &str, capacity_bytes: u64) -> Result<u32, ApplianceError> {
        validate_barcode(barcode)?;
        if capacity_bytes < 1 << 20 {
            return Err(ApplianceError::Invalid("a cartridge holds at least 1 MiB".into()));
        }
        self.update(|state| {
            if state.cartridges.contains_key(barcode) {
                return Err(ApplianceError::Conflict(format!("cartridge {barcode} already exists")));
            }
            let slot = state
                .slots
                .iter_mut()
                .filter(|s| s.barcode.is_none())
                .min_by_key(|s| !s.import_export)
                .ok_or_else(|| ApplianceError::Conflict("no empty slot for a new cartridge".into()))?;
            slot.barcode = Some(barcode.to_string());
            state.cartridges.insert(barcode.to_string(), Cartridge { capacity_bytes, write_protected: false });
            Ok(slot.number)
        })
    }

    /// Set or clear a cartridge's write-protect tab.
    pub fn set_write_protected(&self, barcode: &str, on: bool) -> Result<(), ApplianceError> {
        self.update(|state| {
            let c = state
                .cartridges
                .get_mut(barcode)
                .ok_or_else(|| ApplianceError::NotFound(format!("cartridge {barcode}")))?;
            c.write_protected = on;
            Ok(())
        })
    }

    /// A cartridge's properties.
    pub fn cartridge(&self, barcode: &str) -> Result<Cartridge, ApplianceError> {
        self.read(|s| s.cartridges.get(barcode).cloned())?
            .ok_or_else(|| ApplianceError::NotFound(format!("cartridge {barcode}")))
    }

    /// The cartridge in `drive` and the head position.
    pub fn mounted(&self, drive: u32) -> Result<(String, Cartridge, Position), ApplianceError> {
        self.read(|s| {
            let d = s.drives.get(drive as usize).ok_or_else(|| ApplianceError::NotFound(format!("drive {drive}")))?;
            let barcode = d
                .loaded
                .as_ref()
                .and_then(|l| l.barcode.clone())
                .ok_or_else(|| ApplianceError::Conflict(format!("drive {drive} is empty")))?;
            let c = s.cartridges.get(&barcode).cloned().ok_or_else(|| ApplianceError::NotFound(barcode.clone()))?;
            Ok((barcode, c, d.position))
        })?
    }

    /// Record where the head of `drive` is after a tape operation.
    pub fn set_position(&self, drive: u32, position: Position) -> Result<(), ApplianceError> {
        self.update(|s| {
            let d =
                s.drives.get_mut(drive as usize).ok_or_else(|| ApplianceError::NotFound(format!("drive {drive}")))?;
            d.position = position;
            Ok(())
        })
    }

    fn move_to_drive(&self, slot: u32, drive: u32) -> Result<(), ApplianceError> {
        self.update(|state| {
            // The same checks as before a real robot moves, against the locked state: another
            // process may have moved a cartridge since the caller looked.
            self.view(state).plan_load(drive, &super::Source::Slot(slot))?;
            let s = state.slots.iter_mut().find(|s| s.number == slot).expect("plan_load checked the slot");
            let barcode = s.barcode.take();
            state.drives[drive as usize] =
                VDrive { loaded: Some(Loaded { barcode, home_slot: Some(slot) }), position: Position::default() };
            Ok(())
        })
    }

    fn move_between_slots(&self, from: u32, to: u32) -> Result<(), ApplianceError> {
        self.update(|state| {
            self.view(state).plan_transfer(from, to)?;
            let barcode = state.slots.iter_mut().find(|s| s.number == from).and_then(|s| s.barcode.take());
            if let Some(s) = state.slots.iter_mut().find(|s| s.number == to) {
                s.barcode = barcode;
            }
            Ok(())
        })
    }

    fn move_to_slot(&self, drive: u32, slot: u32) -> Result<(), ApplianceError> {
        self.update(|state| {
            self.view(state).plan_unload(drive, Some(slot))?;
            // A drive in the middle of I/O keeps its cartridge, like a real drive holding the
            // medium while it is in use.
            if let Some(b) = state.drives[drive as usize].loaded.as_ref().and_then(|l| l.barcode.as_ref()) {
                if let Ok(f) = File::open(self.cartridge_path(b)) {
                    if f.try_lock_shared().is_err() {
                        return Err(ApplianceError::Conflict(format!("cartridge {b} in drive {drive} is in use")));
                    }
                }
            }
            let loaded = std::mem::take(&mut state.drives[drive as usize]).loaded;
            let s = state.slots.iter_mut().find(|s| s.number == slot).expect("plan_unload checked the slot");
            s.barcode = loaded.and_then(|l| l.barcode);
            Ok(())
        })
    }

    /// Load `barcode` into `drive`, unloading whatever the drive held (synchronous form, for
    /// the tape tier's volume selection).
    pub fn swap_into(&self, drive: u32, barcode: &str) -> Result<(), ApplianceError> {
        let lib = self.library()?;
        if lib.drive(drive)?.loaded.as_ref().and_then(|l| l.barcode.as_deref()) == Some(barcode) {
            return Ok(());
        }
        if lib.drive(drive)?.loaded.is_some() {
            let slot = lib.plan_unload(drive, None)?;
            self.move_to_slot(drive, slot)?;
        }
        let slot = self.library()?.plan_load(drive, &super::Source::Barcode(barcode.to_string()))?;
        self.move_to_drive(slot, drive)
    }

    /// Put the cartridge in `drive` back into its home slot (else the first empty one); an
    /// empty drive is left alone.
    pub fn return_to_slot(&self, drive: u32) -> Result<(), ApplianceError> {
        let lib = self.library()?;
        if lib.drive(drive)?.loaded.is_none() {
            return Ok(());
        }
        let slot = lib.plan_unload(drive, None)?;
        self.move_to_slot(drive, slot)
    }

    /// Every cartridge, its properties and bytes written (for choosing volumes).
    pub fn cartridges(&self) -> Result<Vec<(String, Cartridge, u64)>, ApplianceError> {
        let all = self.read(|s| s.cartridges.clone())?;
        Ok(all
            .into_iter()
            .map(|(b, c)| {
                let used = std::fs::metadata(self.cartridge_path(&b)).map(|m| m.len()).unwrap_or(0);
                (b, c, used)
            })
            .collect())
    }

    fn status_of(&self, drive: u32) -> Result<DriveStatus, ApplianceError> {
        let loaded = self.read(|s| s.drives.get(drive as usize).map(|d| d.loaded.is_some()))?;
        match loaded {
            None => Err(ApplianceError::NotFound(format!("drive {drive}"))),
            Some(false) => Ok(DriveStatus { flags: vec!["DR_OPEN".into()], ..DriveStatus::default() }),
            Some(true) => {
                let (barcode, c, pos) = self.mounted(drive)?;
                let used = std::fs::metadata(self.cartridge_path(&barcode)).map(|m| m.len()).unwrap_or(0);
                let mut flags = Vec::new();
                if pos.offset == 0 {
                    flags.push("BOT".to_string());
                }
                if pos.offset >= used && used > 0 {
                    flags.push("EOD".to_string());
                }
                if used >= c.capacity_bytes {
                    flags.push("EOT".to_string());
                }
                if c.write_protected {
                    flags.push("WR_PROT".to_string());
                }
                flags.push("ONLINE".to_string());
                Ok(DriveStatus {
                    online: true,
                    file_number: Some(pos.file as i64),
                    block_number: Some(pos.block as i64),
                    block_size: Some(0),
                    density: Some("virtual".into()),
                    flags,
                    write_protected: c.write_protected,
                    used_bytes: Some(used),
                    capacity_bytes: Some(c.capacity_bytes),
                })
            }
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(Self) -> Result<T, ApplianceError> + Send + 'static,
    ) -> Result<T, ApplianceError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(me))
            .await
            .map_err(|e| ApplianceError::Io { what: "virtual library task".into(), source: std::io::Error::other(e) })?
    }
}

#[async_trait]
impl Changer for VirtualLibrary {
    async fn status(&self) -> Result<Library, ApplianceError> {
        self.blocking(|l| l.library()).await
    }

    async fn inventory(&self) -> Result<Library, ApplianceError> {
        // The virtual robot always knows its barcodes: an inventory is a status read.
        self.status().await
    }

    async fn load_unchecked(&self, slot: u32, drive: u32) -> Result<(), ApplianceError> {
        self.blocking(move |l| l.move_to_drive(slot, drive)).await
    }

    async fn unload_unchecked(&self, drive: u32, slot: u32) -> Result<(), ApplianceError> {
        self.blocking(move |l| l.move_to_slot(drive, slot)).await
    }

    async fn transfer_unchecked(&self, from: u32, to: u32) -> Result<(), ApplianceError> {
        self.blocking(move |l| l.move_between_slots(from, to)).await
    }

    async fn drive_status(&self, drive: u32) -> Result<DriveStatus, ApplianceError> {
        self.blocking(move |l| l.status_of(drive)).await
    }
}
