//! Sequential tape I/O: records, filemarks, end of data and end of medium — the semantics the
//! tape tier writes volumes with. [`VirtualDrive`] gives the virtual library's cartridges
//! exactly these semantics (writing erases everything after the head, a full cartridge
//! refuses the record that does not fit, a write-protected one refuses every write), so the
//! tape tier is tested on what a real drive does.
//!
//! Cartridge file format: a sequence of `[kind: u8][len: u32 LE][len bytes]`, kind 1 = data
//! record, 2 = filemark; the end of the file is the end of data.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};

use super::vtl::{Cartridge, Position, VirtualLibrary};
use crate::ApplianceError;

const DATA: u8 = 1;
const FILEMARK: u8 = 2;
const HEADER: u64 = 5;
/// Largest record (variable block mode on LTO drives allows up to 8 MiB; keep to 4 MiB).
pub const MAX_RECORD: usize = 4 << 20;

/// Why a tape operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TapeError {
    /// The cartridge is full: the record was not written.
    #[error("end of medium on {barcode}")]
    EndOfMedium {
        /// The full cartridge.
        barcode: String,
    },
    /// The write-protect tab is set.
    #[error("{barcode} is write-protected")]
    WriteProtected {
        /// The cartridge.
        barcode: String,
    },
    /// What was read is not a valid record (damaged cartridge or not a BAMS tape).
    #[error("{barcode}: {what}")]
    Corrupt {
        /// The cartridge.
        barcode: String,
        /// What is wrong.
        what: String,
    },
    /// Anything else (no cartridge, I/O).
    #[error(transparent)]
    Appliance(#[from] ApplianceError),
}

impl From<TapeError> for ApplianceError {
    fn from(e: TapeError) -> Self {
        match e {
            TapeError::Appliance(a) => a,
            other => ApplianceError::Conflict(other.to_string()),
        }
    }
}

/// What a read returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A data record.
    Data(Vec<u8>),
    /// A filemark (the head is now at the start of the next file).
    Filemark,
    /// Nothing was ever written here.
    EndOfData,
}

/// A drive with a cartridge loaded.
pub trait TapeDevice {
    /// The loaded cartridge.
    fn barcode(&self) -> &str;
    /// Back to the beginning of tape.
    fn rewind(&mut self) -> Result<(), TapeError>;
    /// Write one record at the head; everything after it is gone.
    fn write(&mut self, data: &[u8]) -> Result<(), TapeError>;
    /// Write a filemark at the head.
    fn write_filemark(&mut self) -> Result<(), TapeError>;
    /// Read the next record.
    fn read(&mut self) -> Result<Record, TapeError>;
    /// Skip forward past `n` filemarks (mt `fsf`).
    fn forward_filemarks(&mut self, n: u64) -> Result<(), TapeError>;
    /// Move to the end of data, to append (mt `eod`).
    fn to_end_of_data(&mut self) -> Result<(), TapeError>;
    /// Where the head is.
    fn position(&self) -> Position;
    /// Bytes the cartridge can still take, when the device knows (a virtual cartridge does;
    /// a real drive only reports the early-warning point, as a failed write).
    fn remaining(&self) -> Option<u64>;
    /// Whether the cartridge's write-protect tab is set.
    fn write_protected(&self) -> bool;
}

/// A virtual drive with its cartridge file open (and locked) for I/O.
pub struct VirtualDrive {
    lib: VirtualLibrary,
    drive: u32,
    barcode: String,
    cart: Cartridge,
    file: File,
    pos: Position,
}

impl VirtualDrive {
    /// Open the cartridge loaded in `drive` of `lib`; the head is where the last user left it.
    pub fn open(lib: &VirtualLibrary, drive: u32) -> Result<Self, ApplianceError> {
        let (barcode, cart, pos) = lib.mounted(drive)?;
        let path = lib.cartridge_path(&barcode);
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(crate::error::io(format!("opening cartridge {}", path.display())))?;
        // One process at a time per cartridge, as with a real drive.
        file.try_lock().map_err(|_| ApplianceError::Conflict(format!("cartridge {barcode} is in use")))?;
        Ok(Self { lib: lib.clone(), drive, barcode, cart, file, pos })
    }

    fn len(&self) -> Result<u64, TapeError> {
        Ok(self.file.metadata().map_err(self.io("size"))?.len())
    }

    fn io(&self, what: &str) -> impl FnOnce(std::io::Error) -> TapeError {
        let what = format!("{what} cartridge {}", self.barcode);
        move |source| TapeError::Appliance(ApplianceError::Io { what, source })
    }

    fn append(&mut self, kind: u8, data: &[u8]) -> Result<(), TapeError> {
        if self.cart.write_protected {
            return Err(TapeError::WriteProtected { barcode: self.barcode.clone() });
        }
        if data.len() > MAX_RECORD {
            return Err(ApplianceError::Invalid(format!("record of {} bytes exceeds {MAX_RECORD}", data.len())).into());
        }
        let need = HEADER + data.len() as u64;
        if self.pos.offset + need > self.cart.capacity_bytes {
            return Err(TapeError::EndOfMedium { barcode: self.barcode.clone() });
        }
        let mut buf = Vec::with_capacity(need as usize);
        buf.push(kind);
        buf.extend_from_slice(&(data.len() as u32).to_le_bytes());
        buf.extend_from_slice(data);
        // Writing in the middle erases the rest, as on tape.
        self.file.set_len(self.pos.offset).map_err(self.io("truncating"))?;
        self.file.seek(SeekFrom::Start(self.pos.offset)).map_err(self.io("seeking"))?;
        self.file.write_all(&buf).map_err(self.io("writing"))?;
        self.pos.offset += need;
        if kind == FILEMARK {
            self.pos.file += 1;
            self.pos.block = 0;
        } else {
            self.pos.block += 1;
        }
        Ok(())
    }

    /// Flush to disk and record the head position in the library (also done on drop).
    pub fn close(mut self) -> Result<(), ApplianceError> {
        self.sync()
    }

    fn sync(&mut self) -> Result<(), ApplianceError> {
        self.file.sync_all().map_err(crate::error::io(format!("syncing cartridge {}", self.barcode)))?;
        self.lib.set_position(self.drive, self.pos)
    }
}

impl Drop for VirtualDrive {
    fn drop(&mut self) {
        if let Err(e) = self.sync() {
            tracing::warn!(error = %e, barcode = %self.barcode, "could not save the tape position");
        }
    }
}

impl TapeDevice for VirtualDrive {
    fn barcode(&self) -> &str {
        &self.barcode
    }

    fn rewind(&mut self) -> Result<(), TapeError> {
        self.pos = Position::default();
        Ok(())
    }

    fn write(&mut self, data: &[u8]) -> Result<(), TapeError> {
        self.append(DATA, data)
    }

    fn write_filemark(&mut self) -> Result<(), TapeError> {
        self.append(FILEMARK, &[])
    }

    fn read(&mut self) -> Result<Record, TapeError> {
        let len = self.len()?;
        if self.pos.offset >= len {
            return Ok(Record::EndOfData);
        }
        let corrupt = |what: &str| TapeError::Corrupt { barcode: self.barcode.clone(), what: what.to_string() };
        if self.pos.offset + HEADER > len {
            return Err(corrupt("a record header is cut short"));
        }
        self.file.seek(SeekFrom::Start(self.pos.offset)).map_err(self.io("seeking"))?;
        let mut head = [0u8; HEADER as usize];
        self.file.read_exact(&mut head).map_err(self.io("reading"))?;
        let size = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as u64;
        match head[0] {
            FILEMARK if size == 0 => {
                self.pos.offset += HEADER;
                self.pos.file += 1;
                self.pos.block = 0;
                Ok(Record::Filemark)
            }
            DATA if size as usize <= MAX_RECORD && self.pos.offset + HEADER + size <= len => {
                let mut data = vec![0u8; size as usize];
                self.file.read_exact(&mut data).map_err(self.io("reading"))?;
                self.pos.offset += HEADER + size;
                self.pos.block += 1;
                Ok(Record::Data(data))
            }
            _ => Err(corrupt(&format!("bad record at byte {}", self.pos.offset))),
        }
    }

    fn forward_filemarks(&mut self, n: u64) -> Result<(), TapeError> {
        let mut left = n;
        while left > 0 {
            match self.read()? {
                Record::Filemark => left -= 1,
                Record::Data(_) => {}
                Record::EndOfData => {
                    return Err(ApplianceError::Conflict(format!(
                        "{}: end of data after {} of {n} filemarks",
                        self.barcode,
                        n - left
                    ))
                    .into())
                }
            }
        }
        Ok(())
    }

    fn to_end_of_data(&mut self) -> Result<(), TapeError> {
        while self.read()? != Record::EndOfData {}
        Ok(())
    }

    fn position(&self) -> Position {
        self.pos
    }

    fn remaining(&self) -> Option<u64> {
        Some(self.cart.capacity_bytes.saturating_sub(self.pos.offset))
    }

    fn write_protected(&self) -> bool {
        self.cart.write_protected
    }
}
