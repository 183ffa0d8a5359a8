//! Real tape drives through the Linux SCSI tape driver (`/dev/nst*`, the non-rewinding
//! device): one `read(2)`/`write(2)` per record in variable block mode, and the `MTIOCTOP`
//! operations mt-st uses (`weof`, `fsf`, `rewind`, `eod`) as ioctls on the same open file —
//! the driver allows one open at a time, so running `mt` beside an open drive would fail.
//!
//! The system calls sit behind [`StIo`], so [`StDrive`] — the translation of the driver's
//! conventions into [`TapeDevice`] records — is tested against a simulator of those
//! conventions (`tests/tape.rs`), as documented in the kernel's `Documentation/scsi/st.rst`:
//! a read returns one record, 0 at a filemark, and end of data is two zero reads in a row (or
//! a blank check, `EIO`); after the early-warning point a write fails once with `ENOSPC`,
//! then the next write (the trailer) is allowed; opening a write-protected cartridge for
//! writing fails with `EROFS`.

use std::io;

use super::device::{Record, TapeDevice, TapeError, MAX_RECORD};
use super::vtl::Position;
use crate::ApplianceError;

/// The `MTIOCTOP` operations the tape tier uses (values from `<linux/mtio.h>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i16)]
pub enum MtOp {
    /// Forward space over filemarks.
    Fsf = 1,
    /// Write filemarks.
    Weof = 5,
    /// Rewind.
    Rewind = 6,
    /// Space to end of recorded data.
    Eom = 12,
    /// Set the block size (0 = variable).
    SetBlk = 20,
}

/// What `MTIOCGET` reports that the tape tier uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MtGet {
    /// Current file number (-1 when unknown).
    pub file: i64,
    /// Block number in the file (-1 when unknown).
    pub block: i64,
    /// The write-protect tab (`GMT_WR_PROT`).
    pub write_protected: bool,
}

/// The system calls on an open tape device.
pub trait StIo: Send {
    /// `read(2)`: one record, 0 at a filemark or end of data.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// `write(2)`: one record.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize>;
    /// `ioctl(MTIOCTOP)`.
    fn op(&mut self, op: MtOp, count: i32) -> io::Result<()>;
    /// `ioctl(MTIOCGET)`.
    fn status(&mut self) -> io::Result<MtGet>;
}

#[repr(C)]
struct RawMtOp {
    mt_op: i16,
    mt_count: i32,
}

#[repr(C)]
struct RawMtGet {
    mt_type: libc::c_long,
    mt_resid: libc::c_long,
    mt_dsreg: libc::c_long,
    mt_gstat: libc::c_long,
    mt_erreg: libc::c_long,
    mt_fileno: libc::c_int,
    mt_blkno: libc::c_int,
}

nix::ioctl_write_ptr!(mtioctop, b'm', 1, RawMtOp);
nix::ioctl_read!(mtiocget, b'm', 2, RawMtGet);

/// `GMT_WR_PROT` in `mt_gstat`.
const GMT_WR_PROT: libc::c_long = 0x0400_0000;

/// An open `/dev/nst*` device.
pub struct StFile {
    file: std::fs::File,
}

impl StFile {
    /// Open `path` for reading and writing (read-only when the cartridge is write-protected:
    /// the driver refuses the read-write open with `EROFS`) and switch it to variable block
    /// mode. Returns the device and whether it is read-only.
    pub fn open(path: &str) -> Result<(Self, bool), ApplianceError> {
        let ctx = |e: io::Error| ApplianceError::Io { what: format!("opening tape device {path}"), source: e };
        let (file, read_only) = match std::fs::File::options().read(true).write(true).open(path) {
            Ok(f) => (f, false),
            Err(e) if e.raw_os_error() == Some(libc::EROFS) || e.raw_os_error() == Some(libc::EACCES) => {
                (std::fs::File::open(path).map_err(ctx)?, true)
            }
            Err(e) => return Err(ctx(e)),
        };
        let mut dev = Self { file };
        dev.op(MtOp::SetBlk, 0).map_err(|e| match e.raw_os_error() {
            Some(libc::ENOTTY) | Some(libc::EINVAL) => {
                ApplianceError::Invalid(format!("{path} is not a tape device (the MTIOCTOP ioctl is refused)"))
            }
            _ => ApplianceError::Io { what: format!("setting variable block mode on {path}"), source: e },
        })?;
        Ok((dev, read_only))
    }
}

impl StIo for StFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        io::Read::read(&mut self.file, buf)
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        io::Write::write(&mut self.file, buf)
    }

    // The two tape ioctls are the only unsafe code in BAMS: no maintained crate wraps them,
    // and mt-st cannot be run beside an open drive (the driver allows one open).
    #[allow(unsafe_code)]
    fn op(&mut self, op: MtOp, count: i32) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let raw = RawMtOp { mt_op: op as i16, mt_count: count };
        // SAFETY: the fd is open for the lifetime of self and `raw` outlives the call.
        unsafe { mtioctop(self.file.as_raw_fd(), &raw) }.map(|_| ()).map_err(io::Error::from)
    }

    #[allow(unsafe_code)]
    fn status(&mut self) -> io::Result<MtGet> {
        use std::os::fd::AsRawFd;
        let mut raw =
            RawMtGet { mt_type: 0, mt_resid: 0, mt_dsreg: 0, mt_gstat: 0, mt_erreg: 0, mt_fileno: 0, mt_blkno: 0 };
        // SAFETY: as above; the kernel fills `raw`.
        unsafe { mtiocget(self.file.as_raw_fd(), &mut raw) }.map_err(io::Error::from)?;
        Ok(MtGet {
            file: i64::from(raw.mt_fileno),
            block: i64::from(raw.mt_blkno),
            write_protected: raw.mt_gstat & GMT_WR_PROT != 0,
        })
    }
}

/// A real drive with a cartridge loaded, as a [`TapeDevice`].
pub struct StDrive<I: StIo> {
    io: I,
    barcode: String,
    write_protected: bool,
    /// Zero-length reads in a row (two mean end of data).
    zero_reads: u8,
    /// Nothing read since the rewind: a zero read here is a blank tape, not a filemark.
    at_bot: bool,
    /// A record read ahead while telling a blank tape from a leading filemark.
    pending: Option<Record>,
    pos: Position,
}

impl<I: StIo> StDrive<I> {
    /// Wrap an open device holding `barcode` (the changer told which cartridge it loaded).
    pub fn new(mut io: I, barcode: &str, read_only: bool) -> Self {
        let st = io.status().ok();
        let write_protected = read_only || st.is_some_and(|s| s.write_protected);
        let pos = st
            .map(|s| Position { file: s.file.max(0) as u64, block: s.block.max(0) as u64, offset: 0 })
            .unwrap_or_default();
        Self {
            io,
            barcode: barcode.to_string(),
            write_protected,
            zero_reads: 0,
            at_bot: pos == Position::default(),
            pending: None,
            pos,
        }
    }

    fn failed(&self, what: &str, e: io::Error) -> TapeError {
        match e.raw_os_error() {
            Some(libc::ENOSPC) => TapeError::EndOfMedium { barcode: self.barcode.clone() },
            Some(libc::EROFS) | Some(libc::EACCES) => TapeError::WriteProtected { barcode: self.barcode.clone() },
            _ => TapeError::Appliance(ApplianceError::Io { what: format!("{what} on {}", self.barcode), source: e }),
        }
    }

    fn moved(&mut self) {
        self.zero_reads = 0;
        self.pending = None;
        self.at_bot = false;
    }

    fn read_raw(&mut self) -> Result<Record, TapeError> {
        let mut buf = vec![0u8; MAX_RECORD + 1];
        match self.io.read(&mut buf) {
            Ok(0) => Ok(Record::Filemark),
            Ok(n) if n > MAX_RECORD => Err(TapeError::Corrupt {
                barcode: self.barcode.clone(),
                what: format!("a record larger than {MAX_RECORD} bytes (not a BAMS tape?)"),
            }),
            Ok(n) => {
                buf.truncate(n);
                Ok(Record::Data(buf))
            }
            // Blank check: nothing was ever written here.
            Err(e) if e.raw_os_error() == Some(libc::EIO) && (self.zero_reads > 0 || self.at_bot) => {
                Ok(Record::EndOfData)
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOMEM) => Err(TapeError::Corrupt {
                barcode: self.barcode.clone(),
                what: format!("a record larger than {MAX_RECORD} bytes (not a BAMS tape?)"),
            }),
            Err(e) => Err(self.failed("reading", e)),
        }
    }
}

impl<I: StIo> TapeDevice for StDrive<I> {
    fn barcode(&self) -> &str {
        &self.barcode
    }

    fn rewind(&mut self) -> Result<(), TapeError> {
        self.io.op(MtOp::Rewind, 1).map_err(|e| self.failed("rewinding", e))?;
        self.moved();
        self.at_bot = true;
        self.pos = Position::default();
        Ok(())
    }

    fn write(&mut self, data: &[u8]) -> Result<(), TapeError> {
        if self.write_protected {
            return Err(TapeError::WriteProtected { barcode: self.barcode.clone() });
        }
        if data.len() > MAX_RECORD {
            return Err(ApplianceError::Invalid(format!("record of {} bytes exceeds {MAX_RECORD}", data.len())).into());
        }
        let n = self.io.write(data).map_err(|e| self.failed("writing", e))?;
        self.moved();
        if n != data.len() {
            // Variable block mode writes a record whole or not at all; anything else is the
            // physical end of the medium.
            return Err(TapeError::EndOfMedium { barcode: self.barcode.clone() });
        }
        self.pos.block += 1;
        Ok(())
    }

    fn write_filemark(&mut self) -> Result<(), TapeError> {
        if self.write_protected {
            return Err(TapeError::WriteProtected { barcode: self.barcode.clone() });
        }
        self.io.op(MtOp::Weof, 1).map_err(|e| self.failed("writing a filemark", e))?;
        self.moved();
        self.pos.file += 1;
        self.pos.block = 0;
        Ok(())
    }

    fn read(&mut self) -> Result<Record, TapeError> {
        if let Some(r) = self.pending.take() {
            self.at_bot = false;
            if let Record::Data(_) = r {
                self.pos.block += 1;
            }
            return Ok(r);
        }
        let r = self.read_raw()?;
        let r = match r {
            Record::Filemark if self.at_bot => {
                // At the beginning of tape a zero read is a blank tape, unless data follows
                // (a tape that starts with a filemark).
                match self.read_raw()? {
                    Record::Data(d) => {
                        self.pending = Some(Record::Data(d));
                        self.at_bot = false;
                        self.zero_reads = 0;
                        self.pos.file += 1;
                        self.pos.block = 0;
                        return Ok(Record::Filemark);
                    }
                    _ => Record::EndOfData,
                }
            }
            Record::Filemark if self.zero_reads > 0 => Record::EndOfData,
            other => other,
        };
        self.at_bot = false;
        match &r {
            Record::Data(_) => {
                self.zero_reads = 0;
                self.pos.block += 1;
            }
            Record::Filemark => {
                self.zero_reads = 1;
                self.pos.file += 1;
                self.pos.block = 0;
            }
            Record::EndOfData => self.zero_reads = 2,
        }
        Ok(r)
    }

    fn forward_filemarks(&mut self, n: u64) -> Result<(), TapeError> {
        let count = i32::try_from(n).map_err(|_| ApplianceError::Invalid(format!("cannot space {n} filemarks")))?;
        self.io.op(MtOp::Fsf, count).map_err(|e| match e.raw_os_error() {
            Some(libc::EIO) => TapeError::Appliance(ApplianceError::Conflict(format!(
                "{}: end of data before {n} filemarks",
                self.barcode
            ))),
            _ => self.failed("spacing forward", e),
        })?;
        self.moved();
        self.pos.file += n;
        self.pos.block = 0;
        Ok(())
    }

    fn to_end_of_data(&mut self) -> Result<(), TapeError> {
        self.io.op(MtOp::Eom, 1).map_err(|e| self.failed("spacing to end of data", e))?;
        self.moved();
        self.zero_reads = 2;
        if let Ok(s) = self.io.status() {
            self.pos = Position { file: s.file.max(0) as u64, block: s.block.max(0) as u64, offset: 0 };
        }
        Ok(())
    }

    fn position(&self) -> Position {
        self.pos
    }

    fn remaining(&self) -> Option<u64> {
        // A drive reports the end of medium only when it gets there (early warning).
        None
    }

    fn write_protected(&self) -> bool {
        self.write_protected
    }
}
