//! Media pools (retention, recycling, the media database) and real-drive I/O (`StDrive`)
//! against a simulator of the Linux SCSI tape driver's conventions.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bams_appliance::tape::device::{Record, TapeDevice, TapeError};
use bams_appliance::tape::drives::{CartridgeInfo, Drives, VtlDrives};
use bams_appliance::tape::media::{MediaDb, PoolPolicy, VolumeStatus};
use bams_appliance::tape::set::{self, Media, PoolMedia};
use bams_appliance::tape::st::{MtGet, MtOp, StDrive, StFile, StIo};
use bams_appliance::tape::volume;
use bams_appliance::tape::vtl::{VirtualLibrary, VtlShape};
use bams_appliance::ApplianceError;
use bams_store::archiver::{backup, BackupOptions, NoProgress};
use bams_store::crypto::{KdfParams, SlotKind};
use bams_store::repo::{InitOptions, Repository};
use bams_store::snapshot::SnapshotEntry;

// ---------------------------------------------------------------------------------------------
// A simulator of one cartridge behind the Linux st driver (Documentation/scsi/st.rst).

#[derive(Default)]
struct SimTape {
    /// Records; `None` is a filemark.
    records: Vec<Option<Vec<u8>>>,
    head: usize,
    /// Physical end of medium (bytes of records).
    capacity: u64,
    /// The early-warning point.
    early_warning: u64,
    /// After the early warning, writes fail and succeed in turn.
    refuse_next: bool,
    zero_reads: u8,
    write_protected: bool,
    /// Past the physical end nothing more is written until the tape is repositioned.
    at_physical_end: bool,
}

impl SimTape {
    fn new(capacity: u64, early_warning: u64) -> Arc<Mutex<Self>> {
        Arc::new(Mutex::new(Self { capacity, early_warning, refuse_next: true, ..Self::default() }))
    }

    fn used(&self) -> u64 {
        self.records[..self.head].iter().map(|r| r.as_ref().map_or(0, |d| d.len() as u64)).sum()
    }

    fn errno(n: i32) -> io::Error {
        io::Error::from_raw_os_error(n)
    }
}

struct SimIo(Arc<Mutex<SimTape>>);

impl StIo for SimIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut t = self.0.lock().expect("tape");
        let head = t.head;
        match t.records.get(head).cloned() {
            None => {
                // End of data: zero once, then a blank check.
                t.zero_reads += 1;
                if t.zero_reads > 1 || head == 0 {
                    Err(SimTape::errno(libc::EIO))
                } else {
                    Ok(0)
                }
            }
            Some(None) => {
                t.head += 1;
                t.zero_reads = 1;
                Ok(0)
            }
            Some(Some(d)) if d.len() > buf.len() => Err(SimTape::errno(libc::ENOMEM)),
            Some(Some(d)) => {
                buf[..d.len()].copy_from_slice(&d);
                t.head += 1;
                t.zero_reads = 0;
                Ok(d.len())
            }
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut t = self.0.lock().expect("tape");
        if t.write_protected {
            return Err(SimTape::errno(libc::EROFS));
        }
        let used = t.used();
        // Past the early-warning point the driver fails every other write, starting with the
        // first one there; the physical end stops everything.
        if used >= t.early_warning && !t.at_physical_end {
            t.refuse_next = !t.refuse_next;
            if !t.refuse_next {
                return Err(SimTape::errno(libc::ENOSPC));
            }
        }
        if t.at_physical_end || used + buf.len() as u64 > t.capacity {
            t.at_physical_end = true;
            return Err(SimTape::errno(libc::ENOSPC));
        }
        let head = t.head;
        t.records.truncate(head);
        t.records.push(Some(buf.to_vec()));
        t.head += 1;
        t.zero_reads = 0;
        Ok(buf.len())
    }

    fn op(&mut self, op: MtOp, count: i32) -> io::Result<()> {
        let mut t = self.0.lock().expect("tape");
        t.zero_reads = 0;
        if op != MtOp::Weof {
            t.at_physical_end = false;
        }
        match op {
            MtOp::Weof => {
                if t.write_protected {
                    return Err(SimTape::errno(libc::EROFS));
                }
                if t.at_physical_end {
                    return Err(SimTape::errno(libc::ENOSPC));
                }
                let head = t.head;
                t.records.truncate(head);
                for _ in 0..count {
                    t.records.push(None);
                    t.head += 1;
                }
            }
            MtOp::Rewind => t.head = 0,
            MtOp::Eom => t.head = t.records.len(),
            MtOp::Fsf => {
                let mut left = count;
                while left > 0 {
                    let head = t.head;
                    match t.records.get(head) {
                        None => return Err(SimTape::errno(libc::EIO)),
                        Some(None) => left -= 1,
                        Some(Some(_)) => {}
                    }
                    t.head += 1;
                }
            }
            MtOp::SetBlk => {}
        }
        Ok(())
    }

    fn status(&mut self) -> io::Result<MtGet> {
        let t = self.0.lock().expect("tape");
        let file = t.records[..t.head].iter().filter(|r| r.is_none()).count() as i64;
        let last_fm = t.records[..t.head].iter().rposition(Option::is_none).map_or(0, |i| i + 1);
        Ok(MtGet { file, block: (t.head - last_fm) as i64, write_protected: t.write_protected })
    }
}

/// A one-drive library of simulated cartridges.
struct SimLibrary {
    tapes: BTreeMap<String, Arc<Mutex<SimTape>>>,
}

impl Drives for SimLibrary {
    fn cartridges(&mut self) -> Result<Vec<CartridgeInfo>, ApplianceError> {
        // Like a real library: nothing is known about a cartridge before it is read.
        Ok(self
            .tapes
            .keys()
            .map(|b| CartridgeInfo { barcode: b.clone(), blank: None, write_protected: false })
            .collect())
    }

    fn mount(&mut self, barcode: &str) -> Result<Box<dyn TapeDevice>, ApplianceError> {
        let tape = self.tapes.get(barcode).ok_or_else(|| ApplianceError::NotFound(barcode.into()))?.clone();
        // Loading a cartridge leaves the head at the beginning of tape.
        tape.lock().expect("tape").head = 0;
        tape.lock().expect("tape").at_physical_end = false;
        let read_only = tape.lock().expect("tape").write_protected;
        Ok(Box::new(StDrive::new(SimIo(tape), barcode, read_only)))
    }

    fn release(&mut self) -> Result<(), ApplianceError> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------

fn repo_with_snapshots(dir: &Path, sizes: &[usize]) -> (tokio::runtime::Runtime, Repository, Vec<SnapshotEntry>) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("rt");
    let backend = bams_store::backend::from_location(dir.join("repo").to_str().expect("utf-8")).expect("backend");
    let opts = InitOptions { kdf: KdfParams { m_cost: 64, t_cost: 1, p_cost: 1 }, ..InitOptions::default() };
    let repo = Repository::init(backend, rt.handle().clone(), b"tape-test", SlotKind::Password, &opts).expect("init");
    let src = dir.join("src");
    std::fs::create_dir_all(&src).expect("src");
    for (i, size) in sizes.iter().enumerate() {
        // Incompressible data, so the sizes on tape are the sizes here.
        let data: Vec<u8> =
            (0..*size).map(|j| (j as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15 + i as u64).to_le_bytes()[7]).collect();
        let mut x = 0x2545_F491_4F6C_DD1Du64 ^ i as u64;
        let data: Vec<u8> = data
            .into_iter()
            .map(|b| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b ^ (x as u8)
            })
            .collect();
        std::fs::write(src.join(format!("f{i}")), data).expect("write");
        backup(&repo, BackupOptions::paths(vec![src.clone()]), &NoProgress).expect("backup");
    }
    let (mut snaps, _) = repo.snapshots().expect("snapshots");
    snaps.sort_by_key(|s| s.snapshot.time);
    (rt, repo, snaps)
}

fn restored_files(target: &Path) -> usize {
    walk(&target.join("data"))
}

fn walk(p: &Path) -> usize {
    std::fs::read_dir(p)
        .map(|d| d.flatten().map(|e| if e.path().is_dir() { walk(&e.path()) } else { 1 }).sum())
        .unwrap_or(0)
}

#[test]
fn st_drive_reads_blank_and_labeled_tapes_and_honours_write_protect() {
    let tape = SimTape::new(1 << 20, 1 << 19);
    let mut d = StDrive::new(SimIo(tape.clone()), "REAL01L8", false);
    assert_eq!(volume::read_label(&mut d).expect("blank"), None, "a blank tape reads as end of data at BOT");
    let label = volume::label(&mut d, "offsite", false).expect("label");
    d.write(b"part").expect("write");
    d.write_filemark().expect("fm");
    assert_eq!(volume::read_label(&mut d).expect("label back"), Some(label));
    assert_eq!(d.read().expect("fm after label"), Record::Filemark);
    assert_eq!(d.read().expect("data"), Record::Data(b"part".to_vec()));
    assert_eq!(d.read().expect("fm"), Record::Filemark);
    assert_eq!(d.read().expect("eod"), Record::EndOfData, "two zero reads in a row are end of data");
    d.rewind().expect("rewind");
    d.forward_filemarks(1).expect("fsf");
    assert_eq!(d.position().file, 1);
    assert!(matches!(d.forward_filemarks(5), Err(TapeError::Appliance(ApplianceError::Conflict(_)))));
    d.to_end_of_data().expect("eod");
    assert_eq!(d.position().file, 2, "MTIOCGET after MTEOM");

    // A tape whose first file is empty (starts with a filemark) is not blank.
    let odd = SimTape::new(1 << 20, 1 << 19);
    odd.lock().expect("tape").records = vec![None, Some(b"foreign".to_vec())];
    let mut d = StDrive::new(SimIo(odd), "ODD001L8", false);
    assert!(matches!(volume::read_label(&mut d), Err(TapeError::Corrupt { .. })));
    assert!(volume::label(&mut d, "offsite", false).is_err(), "foreign data needs force");
    d.rewind().expect("rewind");
    assert_eq!(d.read().expect("fm"), Record::Filemark);
    assert_eq!(d.read().expect("data after it"), Record::Data(b"foreign".to_vec()));

    // Write-protected: the driver opens it read-only; writes are refused before they start.
    tape.lock().expect("tape").write_protected = true;
    let mut d = StDrive::new(SimIo(tape.clone()), "REAL01L8", true);
    assert!(d.write_protected());
    assert!(matches!(volume::label(&mut d, "offsite", true), Err(TapeError::WriteProtected { .. })));
    assert!(volume::read_label(&mut d).expect("still readable").is_some());

    // The real ioctl on something that is not a tape drive is a clear error.
    let tmp = tempfile::tempdir().expect("tmp");
    let f = tmp.path().join("not-a-tape");
    std::fs::write(&f, b"x").expect("file");
    let err = StFile::open(f.to_str().expect("utf-8")).err().expect("refused");
    assert!(err.to_string().contains("is not a tape device"), "{err}");
}

#[test]
fn sets_span_real_drives_at_early_warning_and_at_the_physical_end() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (_rt, repo, snaps) = repo_with_snapshots(tmp.path(), &[1_500_000, 1_500_000, 1_500_000]);
    // With early-warning room (more than a record before the physical end, as on real media)
    // the part ends with its trailer; without it (warning at the very
    // end) the part ends where the tape did and the reader goes on with the next part.
    for (case, early_warning) in [("early-warning", 1_300_000u64), ("physical-end", 2_500_000)] {
        let tapes: BTreeMap<String, Arc<Mutex<SimTape>>> =
            (1..=6).map(|i| (format!("R{i:05}L8"), SimTape::new(2_500_000, early_warning))).collect();
        let handles = tapes.clone();
        let db = MediaDb::open(&tmp.path().join(case)).expect("db");
        let mut media = PoolMedia::new(SimLibrary { tapes }, db.clone());
        let catalog = set::write_set(&repo, &snaps, "offsite", &mut media, &mut |_| {}).expect(case);
        assert!(catalog.volumes.len() >= 2, "{case}: 4.5 MB on 2.5 MB cartridges: {:?}", catalog.volumes);
        let recorded = db.set(&catalog.set_id, chrono::Utc::now()).expect("recorded");
        assert!(recorded.set.complete);
        assert_eq!(recorded.set.volumes, catalog.volumes);
        let vols = db.volumes(chrono::Utc::now()).expect("volumes");
        let full: Vec<_> = vols.iter().filter(|v| v.volume.status == VolumeStatus::Full).collect();
        assert_eq!(full.len(), catalog.volumes.len() - 1, "{case}: every volume but the last is full");
        let first = handles[&catalog.volumes[0]].lock().expect("tape").records.clone();
        let ends_with_trailer =
            matches!(first.as_slice(), [.., Some(t), None] if t.starts_with(b"{\"kind\":\"continues\""));
        let tail: Vec<String> = first
            .iter()
            .rev()
            .take(5)
            .map(|r| r.as_ref().map_or("FM".into(), |d| String::from_utf8_lossy(&d[..d.len().min(60)]).into_owned()))
            .collect();
        assert_eq!(
            ends_with_trailer,
            case == "early-warning",
            "{case}: how the first part ends: {} records {tail:?} {:?}",
            first.len(),
            catalog.volumes
        );

        let target = tmp.path().join(format!("{case}-restored"));
        let back = set::read_set(&catalog.set_id, &target, &mut media, &mut |_| {}).expect("read back");
        assert_eq!(back, catalog);
        assert_eq!(restored_files(&target), catalog.objects.keys().filter(|k| k.starts_with("data/")).count());
    }
}

fn vtl(dir: &Path, cartridges: u32, mib: u64) -> VirtualLibrary {
    let shape = VtlShape {
        drives: 1,
        slots: 6,
        import_export: 1,
        cartridges,
        cartridge_capacity_mib: mib,
        ..VtlShape::default()
    };
    VirtualLibrary::open_or_create(dir, &shape).expect("vtl")
}

#[test]
fn pools_keep_sets_for_their_retention_then_recycle_their_volumes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (_rt, repo, snaps) = repo_with_snapshots(tmp.path(), &[300_000, 300_000]);
    let lib = vtl(&tmp.path().join("vtl"), 3, 4);
    let db = MediaDb::open(lib.dir()).expect("db");
    db.create_pool("weekly", PoolPolicy { retention_days: Some(7), max_volumes: Some(1), recycle: true })
        .expect("pool");
    assert!(matches!(db.create_pool("weekly", PoolPolicy::default()), Err(ApplianceError::Conflict(_))));
    assert!(matches!(db.create_pool("../x", PoolPolicy::default()), Err(ApplianceError::Invalid(_))));
    assert!(matches!(
        db.update_pool("weekly", PoolPolicy { max_volumes: Some(0), ..PoolPolicy::default() }),
        Err(ApplianceError::Invalid(_))
    ));
    let mut media = PoolMedia::new(VtlDrives::new(lib.clone(), 0), db.clone());
    let write = |media: &mut PoolMedia<VtlDrives>, s: &[SnapshotEntry]| {
        let r = set::write_set(&repo, s, "weekly", media, &mut |_| {});
        media.release().expect("release");
        r
    };

    let a = write(&mut media, &snaps[..1]).expect("set A");
    let v1 = a.volumes[0].clone();
    let b = write(&mut media, &snaps[1..]).expect("set B appends to the same volume");
    assert_eq!(b.volumes, vec![v1.clone()]);
    let now = chrono::Utc::now();
    let vol = db.volume(&v1, now).expect("volume");
    assert_eq!(vol.sets.len(), 2);
    assert!(!vol.recyclable);
    assert!(vol.retained_until.expect("7 days") > now + chrono::Duration::days(6));
    assert!(db.volume(&v1, now + chrono::Duration::days(8)).expect("later").recyclable, "expired after 7 days");

    // Full, at max_volumes and retained: nothing may be written, and the error says why.
    db.set_status(&v1, VolumeStatus::Full).expect("full");
    let err = write(&mut media, &snaps[..1]).expect_err("no volume");
    assert!(err.to_string().contains("still retained") && err.to_string().contains("max_volumes"), "{err}");
    assert!(db.sets(now).expect("sets").iter().any(|s| !s.set.complete), "the failed write is recorded incomplete");

    // Shorter retention applies to the sets already written: the volume is recycled.
    db.update_pool("weekly", PoolPolicy { retention_days: Some(0), max_volumes: Some(1), recycle: true })
        .expect("update");
    assert_eq!(db.pool("weekly", chrono::Utc::now()).expect("pool").recyclable_volumes, 1);
    let c = write(&mut media, &snaps[1..]).expect("set C on the recycled volume");
    assert_eq!(c.volumes, vec![v1.clone()]);
    let vol = db.volume(&v1, chrono::Utc::now()).expect("volume");
    assert_eq!(vol.volume.recycled, 1);
    assert_eq!(vol.sets, vec![c.set_id.clone()], "the expired sets were forgotten");
    assert!(db.set(&a.set_id, chrono::Utc::now()).is_err());
    let gone = set::read_set(&a.set_id, &tmp.path().join("a"), &mut media, &mut |_| {}).expect_err("overwritten");
    assert!(matches!(gone, ApplianceError::NotFound(_)), "{gone}");
    set::read_set(&c.set_id, &tmp.path().join("c"), &mut media, &mut |_| {}).expect("C reads back");
    media.release().expect("release");

    // Archived volumes are never recycled; without recycling the expired volume stays too.
    db.set_status(&v1, VolumeStatus::Archive).expect("archive");
    assert!(write(&mut media, &snaps[..1]).is_err());
    db.set_status(&v1, VolumeStatus::Full).expect("full");
    db.update_pool("weekly", PoolPolicy { retention_days: Some(0), max_volumes: Some(1), recycle: false })
        .expect("no recycle");
    assert!(write(&mut media, &snaps[..1]).is_err());
    assert!(matches!(db.delete_pool("weekly"), Err(ApplianceError::Conflict(_))));

    // A volume relabeled behind the database's back is set aside, never written over.
    db.update_pool("weekly", PoolPolicy { retention_days: None, max_volumes: None, recycle: true }).expect("open up");
    db.set_status(&v1, VolumeStatus::Append).expect("append");
    lib.swap_into(0, &v1).expect("load");
    let mut dev = bams_appliance::tape::device::VirtualDrive::open(&lib, 0).expect("open");
    volume::label(&mut dev, "weekly", true).expect("relabel outside");
    drop(dev);
    lib.return_to_slot(0).expect("unload");
    let d = write(&mut media, &snaps[..1]).expect("written to a blank cartridge instead");
    assert_ne!(d.volumes[0], v1);
    let vol = db.volume(&v1, chrono::Utc::now()).expect("volume");
    assert_eq!(vol.volume.status, VolumeStatus::Error);
    assert!(vol.volume.note.as_deref().is_some_and(|n| n.contains("not the recorded")), "{:?}", vol.volume.note);

    // A lost database: written cartridges are not taken for blank ones.
    let fresh = MediaDb::open(&tmp.path().join("fresh-db")).expect("db");
    let mut media = PoolMedia::new(VtlDrives::new(lib.clone(), 0), fresh.clone());
    let e = write(&mut media, &snaps[..1]).expect("on the last blank cartridge");
    assert!(!e.volumes.contains(&d.volumes[0]) && !e.volumes.contains(&v1));
    // And sets are still found without a database record, by reading the labels.
    set::read_set(&d.set_id, &tmp.path().join("d"), &mut media, &mut |_| {}).expect("found by scanning");
    media.release().expect("release");
}

#[test]
fn changer_drives_move_cartridges_through_the_robot_and_open_the_drive_device() {
    use bams_appliance::tape::device::VirtualDrive;
    use bams_appliance::tape::drives::{ChangerDrives, DeviceOpener};
    use bams_appliance::tape::Changer;
    let tmp = tempfile::tempdir().expect("tmp");
    let (rt, repo, snaps) = repo_with_snapshots(tmp.path(), &[600_000]);
    let lib = vtl(&tmp.path().join("vtl"), 3, 4);
    // The robot is driven through the async Changer interface, as with mtx; the opener gets
    // the drive element and the barcode the changer loaded.
    let opened: Arc<Mutex<Vec<String>>> = Arc::default();
    let (seen, for_open) = (opened.clone(), lib.clone());
    let open: DeviceOpener = Arc::new(move |drive: &bams_appliance::tape::Drive, barcode: &str| {
        seen.lock().expect("seen").push(format!("{}:{barcode}", drive.id));
        Ok(Box::new(VirtualDrive::open(&for_open, drive.id)?) as Box<dyn TapeDevice>)
    });
    let changer: Arc<dyn Changer> = Arc::new(lib.clone());
    let db = MediaDb::open(lib.dir()).expect("db");
    let handle = rt.handle().clone();
    let back_dir = tmp.path().join("back");
    let catalog = std::thread::spawn(move || {
        let mut media = PoolMedia::new(ChangerDrives::new(changer, handle, 0, open), db);
        let c = set::write_set(&repo, &snaps, "daily", &mut media, &mut |_| {}).expect("write");
        let back = set::read_set(&c.set_id, &back_dir, &mut media, &mut |_| {}).expect("read");
        assert_eq!(back, c);
        media.release().expect("release");
        back
    })
    .join()
    .expect("thread");
    assert_eq!(catalog.volumes, vec!["VT0001L8".to_string()]);
    let opened = opened.lock().expect("opened").clone();
    assert!(opened.iter().all(|o| o == "0:VT0001L8"), "{opened:?}");
    assert!(lib.library().expect("status").drives[0].loaded.is_none(), "released back to its slot");
}
