//! One drive of a library as the tape tier uses it: which cartridges the robot can reach,
//! "put this cartridge in the drive and open it", and "put it back". [`VtlDrives`] does it on
//! the built-in virtual library; [`ChangerDrives`] on any [`Changer`] (a real library through
//! mtx) with a device opener — [`st_opener`] for `/dev/nst*` drives.

use std::sync::Arc;

use super::device::{TapeDevice, VirtualDrive};
use super::st::{StDrive, StFile};
use super::vtl::VirtualLibrary;
use super::{Changer, Source};
use crate::ApplianceError;

/// A cartridge the robot can put into the drive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CartridgeInfo {
    /// Its barcode.
    pub barcode: String,
    /// Known blank (`Some(true)`), known written, or unknown until read (a real library).
    pub blank: Option<bool>,
    /// The write-protect tab, when the library knows it before loading.
    pub write_protected: bool,
}

/// One drive of a library, for writing and reading tape sets.
pub trait Drives {
    /// Cartridges in storage slots or in this drive (not cleaning cartridges, not the mail
    /// slots, not cartridges held by other drives).
    fn cartridges(&mut self) -> Result<Vec<CartridgeInfo>, ApplianceError>;
    /// Put `barcode` into the drive (unloading what it held) and open it.
    fn mount(&mut self, barcode: &str) -> Result<Box<dyn TapeDevice>, ApplianceError>;
    /// Put whatever the drive holds back into its slot.
    fn release(&mut self) -> Result<(), ApplianceError>;
}

impl<D: Drives + ?Sized> Drives for Box<D> {
    fn cartridges(&mut self) -> Result<Vec<CartridgeInfo>, ApplianceError> {
        (**self).cartridges()
    }

    fn mount(&mut self, barcode: &str) -> Result<Box<dyn TapeDevice>, ApplianceError> {
        (**self).mount(barcode)
    }

    fn release(&mut self) -> Result<(), ApplianceError> {
        (**self).release()
    }
}

/// A drive of the built-in virtual library.
pub struct VtlDrives {
    lib: VirtualLibrary,
    drive: u32,
}

impl VtlDrives {
    /// Drive `drive` of `lib`.
    pub fn new(lib: VirtualLibrary, drive: u32) -> Self {
        Self { lib, drive }
    }
}

/// Barcodes in storage slots and in `drive`, from an element status.
fn reachable(lib: &super::Library, drive: u32) -> Vec<String> {
    let mut out: Vec<String> = lib
        .slots
        .iter()
        .filter(|s| s.full && !s.import_export && !s.cleaning)
        .filter_map(|s| s.barcode.clone())
        .collect();
    if let Some(b) = lib.drives.iter().find(|d| d.id == drive).and_then(|d| d.loaded.as_ref()?.barcode.clone()) {
        out.push(b);
    }
    out
}

impl Drives for VtlDrives {
    fn cartridges(&mut self) -> Result<Vec<CartridgeInfo>, ApplianceError> {
        let reach = reachable(&self.lib.library()?, self.drive);
        Ok(self
            .lib
            .cartridges()?
            .into_iter()
            .filter(|(b, _, _)| reach.contains(b))
            .map(|(barcode, c, used)| CartridgeInfo {
                barcode,
                blank: Some(used == 0),
                write_protected: c.write_protected,
            })
            .collect())
    }

    fn mount(&mut self, barcode: &str) -> Result<Box<dyn TapeDevice>, ApplianceError> {
        self.lib.swap_into(self.drive, barcode)?;
        Ok(Box::new(VirtualDrive::open(&self.lib, self.drive)?))
    }

    fn release(&mut self) -> Result<(), ApplianceError> {
        self.lib.return_to_slot(self.drive)
    }
}

/// Opens a drive (as the changer reports it, with its device path such as `/dev/nst0`)
/// holding a cartridge.
pub type DeviceOpener = Arc<dyn Fn(&super::Drive, &str) -> Result<Box<dyn TapeDevice>, ApplianceError> + Send + Sync>;

/// Real drives through the SCSI tape driver.
pub fn st_opener() -> DeviceOpener {
    Arc::new(|drive: &super::Drive, barcode: &str| {
        let device = drive.device.as_deref().ok_or_else(|| {
            ApplianceError::NotFound(format!("device of drive {} (set tape.drives in the config)", drive.id))
        })?;
        let (io, read_only) = StFile::open(device)?;
        Ok(Box::new(StDrive::new(io, barcode, read_only)) as Box<dyn TapeDevice>)
    })
}

/// A drive of any [`Changer`], used from a blocking thread (robot moves run on `handle`).
pub struct ChangerDrives {
    changer: Arc<dyn Changer>,
    handle: tokio::runtime::Handle,
    drive: u32,
    open: DeviceOpener,
}

impl ChangerDrives {
    /// Drive `drive` of `changer`; `open` opens its device.
    pub fn new(changer: Arc<dyn Changer>, handle: tokio::runtime::Handle, drive: u32, open: DeviceOpener) -> Self {
        Self { changer, handle, drive, open }
    }
}

impl Drives for ChangerDrives {
    fn cartridges(&mut self) -> Result<Vec<CartridgeInfo>, ApplianceError> {
        let lib = self.handle.block_on(self.changer.status())?;
        Ok(reachable(&lib, self.drive)
            .into_iter()
            .map(|barcode| CartridgeInfo { barcode, blank: None, write_protected: false })
            .collect())
    }

    fn mount(&mut self, barcode: &str) -> Result<Box<dyn TapeDevice>, ApplianceError> {
        let lib = self.handle.block_on(self.changer.status())?;
        let d = lib.drive(self.drive)?;
        let holds = d.loaded.as_ref().map(|l| l.barcode.as_deref() == Some(barcode));
        if holds == Some(false) {
            self.handle.block_on(super::unload(self.changer.as_ref(), self.drive, None))?;
        }
        let lib = if holds == Some(true) {
            lib
        } else {
            self.handle.block_on(super::load(self.changer.as_ref(), self.drive, &Source::Barcode(barcode.into())))?
        };
        (self.open)(lib.drive(self.drive)?, barcode)
    }

    fn release(&mut self) -> Result<(), ApplianceError> {
        let lib = self.handle.block_on(self.changer.status())?;
        if lib.drive(self.drive)?.loaded.is_some() {
            self.handle.block_on(super::unload(self.changer.as_ref(), self.drive, None))?;
        }
        Ok(())
    }
}
