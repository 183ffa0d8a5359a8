//! Tape sets: snapshots of a repository written to tape volumes of a media pool, spanning as
//! many cartridges as they need, and read back without the catalog database.
//!
//! A set is the repository objects the snapshots need — `config`, `keys/*`, the snapshot
//! files and the packs their trees and data live in — copied as stored (still encrypted; the
//! tape never sees plaintext or keys in clear). Index files stay behind: a restore rebuilds the
//! index from the pack headers, so the restored repository lists exactly what is on tape and
//! passes `bams check`.
//!
//! On tape, each volume's part of a set is one tape file after the label:
//! `[part header][object records…][continues | catalog]` then a filemark. An object record is
//! `[u32 LE header length][header JSON: path, offset, total, blake3 of the whole object][bytes]`,
//! so a pack larger than a record (or cut by the end of a cartridge) is carried in pieces.
//! The last part ends with the set's catalog: every object and which volumes hold the set.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use bams_store::repo::Repository;
use bams_store::snapshot::SnapshotEntry;
use serde::{Deserialize, Serialize};

use super::device::{Record, TapeDevice, TapeError};
use super::drives::{CartridgeInfo, Drives};
use super::media::{MediaDb, TapeSet};
use crate::ApplianceError;

/// Bytes of object data per tape record.
const CHUNK: usize = 1 << 20;
/// Room kept at the end of a cartridge for the part trailer.
const RESERVE: u64 = 256 << 10;
/// Tape record header + object header (generous: paths are short).
const RECORD_OVERHEAD: u64 = 1024;
/// Smallest piece worth starting on a nearly full cartridge.
const MIN_PIECE: usize = 64 << 10;

/// First record of each part of a set on a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartHeader {
    /// Always `set-part`.
    pub kind: String,
    /// The set.
    pub set_id: String,
    /// 1 for the first volume of the set, then 2, 3…
    pub part: u32,
    /// Snapshot ids in the set.
    pub snapshots: Vec<String>,
    /// Media pool.
    pub pool: String,
    /// When the set was started (RFC 3339).
    pub written_at: String,
}

/// Where a piece of a repository object belongs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObjectHeader {
    /// Repository path (`data/ab/<id>`, `config`, …).
    pub path: String,
    /// Byte offset of this piece in the object.
    pub offset: u64,
    /// The object's size.
    pub total: u64,
    /// BLAKE3 of the whole object, hex.
    pub blake3: String,
}

/// Last record of a part: the set goes on in the next volume, or here is its catalog.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Trailer {
    /// The set goes on in part `next_part`.
    Continues {
        /// The set.
        set_id: String,
        /// Its next part.
        next_part: u32,
    },
    /// The set ends here.
    Catalog(SetCatalog),
}

/// One data record of a set part, decoded.
#[derive(Debug)]
pub enum SetRecord<'a> {
    /// A piece of an object: `[u32 LE header length][JSON header][bytes]`.
    Piece(ObjectHeader, &'a [u8]),
    /// The part's last record.
    Trailer(Trailer),
}

/// Decode a data record read from tape (untrusted: whatever is on the cartridge). Refuses
/// object paths that could leave the restore directory.
pub fn parse_record(rec: &[u8]) -> Result<SetRecord<'_>, ApplianceError> {
    let hlen = rec.get(..4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    let piece = hlen
        .and_then(|n| Some((n, rec.get(4..4usize.checked_add(n)?)?)))
        .and_then(|(n, h)| serde_json::from_slice::<ObjectHeader>(h).ok().map(|h| (h, &rec[4 + n..])));
    match piece {
        Some((h, data)) => {
            if !safe_object_path(&h.path) {
                return Err(ApplianceError::Invalid(format!(
                    "object path {:?} on tape is not a repository path",
                    h.path
                )));
            }
            Ok(SetRecord::Piece(h, data))
        }
        None => serde_json::from_slice::<Trailer>(rec)
            .map(SetRecord::Trailer)
            .map_err(|_| ApplianceError::Invalid("unreadable record".into())),
    }
}

/// What a set holds and where (written at its end, and returned by [`write_set`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SetCatalog {
    /// The set.
    pub set_id: String,
    /// Snapshot ids.
    pub snapshots: Vec<String>,
    /// Volumes in part order (barcodes).
    pub volumes: Vec<String>,
    /// Repository objects and their sizes.
    pub objects: BTreeMap<String, u64>,
    /// Bytes of objects.
    pub bytes: u64,
}

/// Where the volumes of a set come from, and where what was written is recorded: the
/// changer side of writing and reading.
pub trait Media {
    /// A volume of `pool` with room to append (labeling a blank one into the pool, or
    /// recycling an expired one, when needed), never one of `exclude`; the head is at its end
    /// of data.
    fn next_writable(&mut self, pool: &str, exclude: &[String]) -> Result<Box<dyn TapeDevice>, ApplianceError>;
    /// The volume holding `part` of `set_id`, with the head at the start of that part.
    fn find_part(&mut self, set_id: &str, part: u32) -> Result<Box<dyn TapeDevice>, ApplianceError>;
    /// A set is being written.
    fn set_started(&mut self, set: &TapeSet) -> Result<(), ApplianceError>;
    /// A part was written (`full`: the volume reached its end).
    fn part_written(&mut self, set_id: &str, barcode: &str, bytes: u64, full: bool) -> Result<(), ApplianceError>;
    /// The set's catalog is on tape.
    fn set_finished(&mut self, catalog: &SetCatalog) -> Result<(), ApplianceError>;
    /// Put the cartridge in the drive back into its slot.
    fn release(&mut self) -> Result<(), ApplianceError>;
}

/// The repository objects `snapshots` need.
pub fn objects_for(repo: &Repository, snapshots: &[SnapshotEntry]) -> Result<Vec<String>, ApplianceError> {
    let store = |e: bams_store::error::Error| ApplianceError::Invalid(format!("repository: {e}"));
    let index = repo.load_index().map_err(store)?;
    let mut packs = HashSet::new();
    let mut seen = HashSet::new();
    for s in snapshots {
        let mut missing = None;
        repo.walk_trees(&index, &s.snapshot.tree, &mut seen, &mut |_, id, tree| {
            for blob in std::iter::once(id).chain(tree.nodes.iter().flat_map(|n| n.content.iter())) {
                match index.get(blob) {
                    Some(loc) => {
                        packs.insert(loc.pack);
                    }
                    None => missing = Some(*blob),
                }
            }
        })
        .map_err(store)?;
        if let Some(b) = missing {
            return Err(ApplianceError::Invalid(format!("blob {b} of snapshot {} is not in the index", s.id)));
        }
    }
    let mut out = vec!["config".to_string()];
    out.extend(repo.list("keys/").map_err(store)?.into_iter().map(|o| o.key));
    out.extend(snapshots.iter().map(|s| format!("snapshots/{}", s.id)));
    let mut packs: Vec<String> = packs.iter().map(bams_store::pack::pack_key).collect();
    packs.sort();
    out.extend(packs);
    Ok(out)
}

fn record(header: &ObjectHeader, data: &[u8]) -> Vec<u8> {
    let h = serde_json::to_vec(header).unwrap_or_default();
    let mut r = Vec::with_capacity(4 + h.len() + data.len());
    r.extend_from_slice(&(h.len() as u32).to_le_bytes());
    r.extend_from_slice(&h);
    r.extend_from_slice(data);
    r
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// A full volume's part may end without its trailer when even the early-warning room was
/// used; the reader then goes on with the next part. Anything but end of medium is an error.
fn allow_end_of_medium(r: Result<(), TapeError>) -> Result<bool, ApplianceError> {
    match r {
        Ok(()) => Ok(true),
        Err(TapeError::EndOfMedium { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The volume a set is being written to, and moving on to the next one.
struct PartWriter<'m> {
    media: &'m mut dyn Media,
    /// `None` only between volumes (the old cartridge is closed before the robot moves).
    current: Option<Box<dyn TapeDevice>>,
    pool: String,
    header: PartHeader,
    bytes: u64,
    volumes: Vec<String>,
}

impl<'m> PartWriter<'m> {
    fn start(media: &'m mut dyn Media, pool: &str, header: PartHeader) -> Result<Self, ApplianceError> {
        let mut dev = media.next_writable(pool, &[])?;
        dev.write(&json(&header))?;
        let volumes = vec![dev.barcode().to_string()];
        Ok(Self { media, current: Some(dev), pool: pool.into(), header, bytes: 0, volumes })
    }

    fn dev(&mut self) -> Result<&mut Box<dyn TapeDevice>, ApplianceError> {
        self.current.as_mut().ok_or_else(|| ApplianceError::Invalid("no volume is mounted".into()))
    }

    /// Room for object data before the reserve kept for the trailer (unbounded on a device
    /// that only reports the end when it gets there).
    fn room(&self) -> usize {
        self.current
            .as_ref()
            .and_then(|d| d.remaining())
            .map(|r| r.saturating_sub(RESERVE + RECORD_OVERHEAD) as usize)
            .unwrap_or(usize::MAX)
    }

    /// Close this volume's part with a continuation record and open the next part on the
    /// next writable volume of the pool.
    fn span(&mut self) -> Result<(), ApplianceError> {
        let next_part = self.header.part + 1;
        let cont = Trailer::Continues { set_id: self.header.set_id.clone(), next_part };
        let dev = self.dev()?;
        if allow_end_of_medium(dev.write(&json(&cont)))? {
            allow_end_of_medium(dev.write_filemark())?;
        }
        let barcode = dev.barcode().to_string();
        // The full cartridge is closed before the robot takes the next one.
        self.current = None;
        self.media.part_written(&self.header.set_id, &barcode, self.bytes, true)?;
        self.header.part = next_part;
        self.bytes = 0;
        let mut dev = self.media.next_writable(&self.pool, &self.volumes)?;
        self.volumes.push(dev.barcode().to_string());
        dev.write(&json(&self.header))?;
        self.current = Some(dev);
        Ok(())
    }

    /// Write a record, moving to the next volume when this one reports its end.
    fn write(&mut self, rec: &[u8], data_bytes: u64) -> Result<(), ApplianceError> {
        loop {
            if allow_end_of_medium(self.dev()?.write(rec))? {
                self.bytes += data_bytes;
                return Ok(());
            }
            self.span()?;
        }
    }
}

/// Write `snapshots` of `repo` as a new set on volumes of `pool`, recording the set and its
/// volumes through `media` as it goes.
pub fn write_set(
    repo: &Repository,
    snapshots: &[SnapshotEntry],
    pool: &str,
    media: &mut dyn Media,
    progress: &mut dyn FnMut(u64),
) -> Result<SetCatalog, ApplianceError> {
    super::volume::validate_pool(pool).map_err(ApplianceError::Invalid)?;
    let objects = objects_for(repo, snapshots)?;
    let set_id = {
        use rand::Rng;
        format!("{:016x}", rand::thread_rng().gen::<u64>())
    };
    let started = chrono::Utc::now();
    let snapshot_ids: Vec<String> = snapshots.iter().map(|s| s.id.to_string()).collect();
    media.set_started(&TapeSet {
        set_id: set_id.clone(),
        pool: pool.into(),
        snapshots: snapshot_ids.clone(),
        volumes: Vec::new(),
        bytes: 0,
        objects: 0,
        written_at: started,
        complete: false,
    })?;
    let header = PartHeader {
        kind: "set-part".into(),
        set_id: set_id.clone(),
        part: 1,
        snapshots: snapshot_ids.clone(),
        pool: pool.into(),
        written_at: started.to_rfc3339(),
    };
    let mut catalog =
        SetCatalog { set_id, snapshots: snapshot_ids, volumes: Vec::new(), objects: BTreeMap::new(), bytes: 0 };
    let mut w = PartWriter::start(media, pool, header)?;
    for path in &objects {
        let data = repo.get(path).map_err(|e| ApplianceError::Invalid(format!("reading {path}: {e}")))?;
        let digest = blake3::hash(&data).to_hex().to_string();
        let mut offset = 0usize;
        loop {
            // As much of the object as fits before the reserve kept for the trailer; a
            // cartridge with too little room left moves the set to the next volume.
            let left = data.len() - offset;
            let room = w.room();
            let take = left.min(CHUNK).min(room);
            if take < left.min(MIN_PIECE) || (left == 0 && room == 0) {
                w.span()?;
                continue;
            }
            let header = ObjectHeader {
                path: path.clone(),
                offset: offset as u64,
                total: data.len() as u64,
                blake3: digest.clone(),
            };
            w.write(&record(&header, &data[offset..offset + take]), take as u64)?;
            progress(take as u64);
            offset += take;
            if offset >= data.len() {
                break;
            }
        }
        catalog.bytes += data.len() as u64;
        catalog.objects.insert(path.clone(), data.len() as u64);
    }
    // The catalog names every volume, including one the catalog itself may spill onto.
    loop {
        catalog.volumes = w.volumes.clone();
        if allow_end_of_medium(w.dev()?.write(&json(&Trailer::Catalog(catalog.clone()))))? {
            break;
        }
        w.span()?;
    }
    let dev = w.dev()?;
    let full = !allow_end_of_medium(dev.write_filemark())?;
    let barcode = dev.barcode().to_string();
    w.current = None;
    w.media.part_written(&catalog.set_id, &barcode, w.bytes, full)?;
    w.media.set_finished(&catalog)?;
    Ok(catalog)
}

/// Read a part header at the head, if the next record is one.
pub fn read_part_header(dev: &mut dyn TapeDevice) -> Result<Option<PartHeader>, TapeError> {
    match dev.read()? {
        Record::Data(b) => Ok(serde_json::from_slice::<PartHeader>(&b).ok().filter(|h| h.kind == "set-part")),
        _ => Ok(None),
    }
}

/// Read set `set_id` back into `target` (a new directory), loading its volumes through
/// `media`, then rebuild the index: the result is a complete repository holding the set.
pub fn read_set(
    set_id: &str,
    target: &Path,
    media: &mut dyn Media,
    progress: &mut dyn FnMut(u64),
) -> Result<SetCatalog, ApplianceError> {
    if target.exists() && std::fs::read_dir(target).map(|mut d| d.next().is_some()).unwrap_or(true) {
        return Err(ApplianceError::Conflict(format!("{} exists and is not empty", target.display())));
    }
    let mut part = 1;
    let mut open: Option<(String, std::fs::File, blake3::Hasher, u64)> = None;
    loop {
        let mut dev = media.find_part(set_id, part)?;
        loop {
            let Record::Data(rec) = dev.read()? else {
                // A part cut by the end of its cartridge before its trailer: the set goes on
                // in the next part (or, if there is none, the set was never finished).
                part += 1;
                break;
            };
            let (h, data) = match parse_record(&rec) {
                Ok(SetRecord::Piece(h, data)) => (h, data),
                Ok(SetRecord::Trailer(Trailer::Continues { next_part, .. })) => {
                    // Parts only go forward: a tape pointing back would loop forever.
                    if next_part != part + 1 {
                        return Err(ApplianceError::Invalid(format!(
                            "part {part} on {} continues in part {next_part}, not {}",
                            dev.barcode(),
                            part + 1
                        )));
                    }
                    part = next_part;
                    break;
                }
                Ok(SetRecord::Trailer(Trailer::Catalog(c))) => {
                    if open.is_some() {
                        return Err(ApplianceError::Invalid("the set ends inside an object".into()));
                    }
                    return Ok(c);
                }
                Err(ApplianceError::Invalid(m)) if m == "unreadable record" => {
                    return Err(ApplianceError::Invalid(format!("unreadable record on {}", dev.barcode())))
                }
                Err(e) => return Err(e),
            };
            if h.offset == 0 {
                let path = target.join(&h.path);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(crate::error::io(format!("creating {}", parent.display())))?;
                }
                let f =
                    std::fs::File::create(&path).map_err(crate::error::io(format!("writing {}", path.display())))?;
                open = Some((h.path.clone(), f, blake3::Hasher::new(), 0));
            }
            let Some((path, f, hasher, done)) = open.as_mut() else {
                return Err(ApplianceError::Invalid(format!("piece of {} without its start", h.path)));
            };
            if *path != h.path || *done != h.offset {
                return Err(ApplianceError::Invalid(format!(
                    "{} continues at {} but {done} bytes were read",
                    h.path, h.offset
                )));
            }
            use std::io::Write;
            f.write_all(data).map_err(crate::error::io(format!("writing {path}")))?;
            hasher.update(data);
            *done += data.len() as u64;
            progress(data.len() as u64);
            if *done == h.total {
                if hasher.finalize().to_hex().as_str() != h.blake3 {
                    return Err(ApplianceError::Invalid(format!(
                        "{path} read from tape does not match what was written"
                    )));
                }
                f.sync_all().map_err(crate::error::io(format!("syncing {path}")))?;
                open = None;
            }
        }
    }
}

/// Only the repository paths a set can hold: no absolute paths, no `..`.
fn safe_object_path(p: &str) -> bool {
    !p.is_empty() && !p.starts_with('/') && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Skip from the label to the start of `part` of `set_id` on the volume in `dev`.
fn seek_part(dev: &mut dyn TapeDevice, set_id: &str, part: u32) -> Result<bool, ApplianceError> {
    if !matches!(super::volume::read_label(dev), Ok(Some(_))) {
        return Ok(false);
    }
    // The label is file 0; each set part is a later file.
    loop {
        match dev.read()? {
            Record::Filemark => {}
            Record::EndOfData => return Ok(false),
            Record::Data(_) => continue,
        }
        if read_part_header(dev)?.is_some_and(|h| h.set_id == set_id && h.part == part) {
            return Ok(true);
        }
    }
}

/// Volumes of a library drive chosen and recorded through the media database: appendable
/// volumes of the pool first (fullest first), then blank cartridges (while the pool is under
/// its volume limit), then the pool's recyclable volumes. A known volume is used only after
/// its label, read back from the tape, matches the database.
pub struct PoolMedia<D: Drives> {
    drives: D,
    db: MediaDb,
}

impl<D: Drives> PoolMedia<D> {
    /// Use `drives` and record in `db`.
    pub fn new(drives: D, db: MediaDb) -> Self {
        Self { drives, db }
    }

    /// Mount a known volume and check its label; a mismatch marks it `error`.
    fn mount_known(&mut self, barcode: &str, volume_id: &str) -> Result<Option<Box<dyn TapeDevice>>, ApplianceError> {
        let mut dev = self.drives.mount(barcode)?;
        if dev.write_protected() {
            return Ok(None);
        }
        let why = match super::volume::read_label(dev.as_mut()) {
            Ok(Some(l)) if l.volume_id == volume_id => return Ok(Some(dev)),
            Ok(Some(l)) => {
                format!("its label names volume {} of pool {}, not the recorded {volume_id}", l.volume_id, l.pool)
            }
            Ok(None) => "it is blank although the database records it as labeled".to_string(),
            Err(e) => e.to_string(),
        };
        tracing::warn!(barcode, %why, "tape volume set aside");
        self.db.mark_error(barcode, &why)?;
        Ok(None)
    }
}

impl<D: Drives> Media for PoolMedia<D> {
    fn next_writable(&mut self, pool: &str, exclude: &[String]) -> Result<Box<dyn TapeDevice>, ApplianceError> {
        let plan = self.db.plan_write(pool, chrono::Utc::now())?;
        let present = self.drives.cartridges()?;
        let usable: Vec<&CartridgeInfo> =
            present.iter().filter(|c| !c.write_protected && !exclude.contains(&c.barcode)).collect();
        let here = |b: &str| usable.iter().any(|c| c.barcode == b);
        for (barcode, volume_id) in plan.append.iter().filter(|(b, _)| here(b)) {
            if let Some(mut dev) = self.mount_known(barcode, volume_id)? {
                dev.to_end_of_data()?;
                return Ok(dev);
            }
        }
        if plan.may_take_blank {
            let mut unknown: Vec<&&CartridgeInfo> =
                usable.iter().filter(|c| !plan.known.contains(&c.barcode) && c.blank != Some(false)).collect();
            unknown.sort_by_key(|c| (c.blank != Some(true), c.barcode.clone()));
            for c in unknown {
                let mut dev = self.drives.mount(&c.barcode)?;
                if dev.write_protected() {
                    continue;
                }
                match super::volume::read_label(dev.as_mut()) {
                    Ok(None) => {
                        let label = super::volume::label(dev.as_mut(), pool, false)?;
                        self.db.labeled(&label, false)?;
                        return Ok(dev);
                    }
                    // A BAMS volume the database did not know: recorded, never overwritten.
                    Ok(Some(l)) => self.db.adopt(&l)?,
                    Err(e) => tracing::warn!(barcode = %c.barcode, error = %e, "cartridge with foreign data skipped"),
                }
            }
        }
        for (barcode, volume_id) in plan.recycle.iter().filter(|(b, _)| here(b)) {
            if let Some(mut dev) = self.mount_known(barcode, volume_id)? {
                let label = super::volume::label(dev.as_mut(), pool, true)?;
                let gone = self.db.labeled(&label, true)?;
                tracing::info!(barcode, pool, expired_sets = ?gone, "recycled tape volume");
                return Ok(dev);
            }
        }
        Err(ApplianceError::Conflict(format!(
            "no writable volume for pool {pool}: {} appendable in the library, {} full or archived and still retained, \
             blank cartridges {}; import or label a cartridge, or shorten the pool's retention",
            plan.append.iter().filter(|(b, _)| here(b)).count(),
            plan.retained,
            if plan.may_take_blank { "none left" } else { "not taken (the pool is at max_volumes)" },
        )))
    }

    fn find_part(&mut self, set_id: &str, part: u32) -> Result<Box<dyn TapeDevice>, ApplianceError> {
        let now = chrono::Utc::now();
        let recorded = self.db.set(set_id, now).ok().and_then(|s| s.set.volumes.get(part as usize - 1).cloned());
        let present = self.drives.cartridges()?;
        if let Some(b) = recorded.as_ref().filter(|b| present.iter().any(|c| &c.barcode == *b)) {
            let mut dev = self.drives.mount(b)?;
            if seek_part(dev.as_mut(), set_id, part)? {
                return Ok(dev);
            }
        }
        // Without a record (or with a wrong one), read the labels of every written cartridge.
        for c in present.iter().filter(|c| c.blank != Some(true) && Some(&c.barcode) != recorded.as_ref()) {
            let mut dev = self.drives.mount(&c.barcode)?;
            if seek_part(dev.as_mut(), set_id, part)? {
                return Ok(dev);
            }
        }
        Err(ApplianceError::NotFound(format!(
            "the volume with part {part} of set {set_id}{} (insert it into the library and run inventory; \
             if the set's write failed, it has no part {part})",
            recorded.map(|b| format!(", {b} by the media database")).unwrap_or_default()
        )))
    }

    fn set_started(&mut self, set: &TapeSet) -> Result<(), ApplianceError> {
        self.db.set_started(set.clone())
    }

    fn part_written(&mut self, set_id: &str, barcode: &str, bytes: u64, full: bool) -> Result<(), ApplianceError> {
        self.db.part_written(set_id, barcode, bytes, full)
    }

    fn set_finished(&mut self, catalog: &SetCatalog) -> Result<(), ApplianceError> {
        self.db.set_finished(catalog)
    }

    fn release(&mut self) -> Result<(), ApplianceError> {
        self.drives.release()
    }
}
