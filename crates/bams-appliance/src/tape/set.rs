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

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ObjectHeader {
    path: String,
    offset: u64,
    total: u64,
    blake3: String,
}

/// Last record of a part: the set goes on in the next volume, or here is its catalog.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
enum Trailer {
    Continues { set_id: String, next_part: u32 },
    Catalog(SetCatalog),
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

/// Where the volumes of a set come from: the changer side of writing and reading.
pub trait Media {
    /// A volume of `pool` with room to append (labeling a blank one into the pool when needed),
    /// never one of `exclude`; the head is at its end of data.
    fn next_writable(&mut self, pool: &str, exclude: &[String]) -> Result<Box<dyn TapeDevice + '_>, ApplianceError>;
    /// The volume holding `part` of `set_id`, with the head at the start of that part.
    fn find_part(&mut self, set_id: &str, part: u32) -> Result<Box<dyn TapeDevice + '_>, ApplianceError>;
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

/// Write `snapshots` of `repo` as a new set on volumes of `pool`.
pub fn write_set(
    repo: &Repository,
    snapshots: &[SnapshotEntry],
    pool: &str,
    media: &mut dyn Media,
    progress: &mut dyn FnMut(u64),
) -> Result<SetCatalog, ApplianceError> {
    let objects = objects_for(repo, snapshots)?;
    let set_id = {
        use rand::Rng;
        format!("{:016x}", rand::thread_rng().gen::<u64>())
    };
    let header = |part: u32| PartHeader {
        kind: "set-part".into(),
        set_id: set_id.clone(),
        part,
        snapshots: snapshots.iter().map(|s| s.id.to_string()).collect(),
        pool: pool.into(),
        written_at: chrono::Utc::now().to_rfc3339(),
    };
    let mut catalog = SetCatalog {
        set_id: set_id.clone(),
        snapshots: snapshots.iter().map(|s| s.id.to_string()).collect(),
        volumes: Vec::new(),
        objects: BTreeMap::new(),
        bytes: 0,
    };
    let mut part = 1;
    let mut dev = media.next_writable(pool, &catalog.volumes)?;
    catalog.volumes.push(dev.barcode().to_string());
    dev.write(&json(&header(part)))?;
    for path in &objects {
        let data = repo.get(path).map_err(|e| ApplianceError::Invalid(format!("reading {path}: {e}")))?;
        let digest = blake3::hash(&data).to_hex().to_string();
        let mut offset = 0usize;
        loop {
            // As much of the object as fits before the reserve kept for the trailer; a
            // cartridge with too little room left moves the set to the next volume.
            let left = data.len() - offset;
            let room = dev.remaining().saturating_sub(RESERVE + RECORD_OVERHEAD) as usize;
            let take = left.min(CHUNK).min(room);
            if take < left.min(MIN_PIECE) || (left == 0 && room == 0) {
                part += 1;
                let cont = Trailer::Continues { set_id: set_id.clone(), next_part: part };
                dev.write(&json(&cont))?;
                dev.write_filemark()?;
                drop(dev);
                dev = media.next_writable(pool, &catalog.volumes)?;
                catalog.volumes.push(dev.barcode().to_string());
                dev.write(&json(&header(part)))?;
                continue;
            }
            let rec = record(
                &ObjectHeader {
                    path: path.clone(),
                    offset: offset as u64,
                    total: data.len() as u64,
                    blake3: digest.clone(),
                },
                &data[offset..offset + take],
            );
            dev.write(&rec)?;
            progress(take as u64);
            offset += take;
            if offset >= data.len() {
                break;
            }
        }
        catalog.bytes += data.len() as u64;
        catalog.objects.insert(path.clone(), data.len() as u64);
    }
    dev.write(&json(&Trailer::Catalog(catalog.clone())))?;
    dev.write_filemark()?;
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
                return Err(ApplianceError::Invalid(format!(
                    "part {part} of set {set_id} on {} ends early",
                    dev.barcode()
                )));
            };
            let hlen = rec.get(..4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
            let parsed =
                hlen.and_then(|n| rec.get(4..4 + n)).and_then(|h| serde_json::from_slice::<ObjectHeader>(h).ok());
            let Some(h) = parsed else {
                match serde_json::from_slice::<Trailer>(&rec) {
                    Ok(Trailer::Continues { next_part, .. }) => {
                        part = next_part;
                        break;
                    }
                    Ok(Trailer::Catalog(c)) => {
                        if open.is_some() {
                            return Err(ApplianceError::Invalid("the set ends inside an object".into()));
                        }
                        return Ok(c);
                    }
                    Err(_) => return Err(ApplianceError::Invalid(format!("unreadable record on {}", dev.barcode()))),
                }
            };
            let data = &rec[4 + hlen.unwrap_or(0)..];
            if !safe_object_path(&h.path) {
                return Err(ApplianceError::Invalid(format!(
                    "object path {:?} on tape is not a repository path",
                    h.path
                )));
            }
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

/// The virtual library as [`Media`]: volumes are chosen from its cartridges and moved into
/// one drive by its robot.
pub struct VtlMedia {
    lib: super::vtl::VirtualLibrary,
    drive: u32,
}

impl VtlMedia {
    /// Use `drive` of `lib`.
    pub fn new(lib: super::vtl::VirtualLibrary, drive: u32) -> Self {
        Self { lib, drive }
    }

    fn mount(&self, barcode: &str) -> Result<super::device::VirtualDrive, ApplianceError> {
        self.lib.swap_into(self.drive, barcode)?;
        super::device::VirtualDrive::open(&self.lib, self.drive)
    }
}

impl Media for VtlMedia {
    fn next_writable(&mut self, pool: &str, exclude: &[String]) -> Result<Box<dyn TapeDevice + '_>, ApplianceError> {
        let mut scratch = None;
        for (barcode, cart, used) in self.lib.cartridges()? {
            if exclude.contains(&barcode) || cart.write_protected || barcode.starts_with("CLN") {
                continue;
            }
            if used == 0 {
                scratch.get_or_insert(barcode);
                continue;
            }
            if cart.capacity_bytes.saturating_sub(used) < RESERVE + RECORD_OVERHEAD + MIN_PIECE as u64 {
                continue; // full
            }
            let mut dev = self.mount(&barcode)?;
            if let Ok(Some(l)) = super::volume::read_label(&mut dev) {
                if l.pool == pool {
                    dev.to_end_of_data()?;
                    return Ok(Box::new(dev));
                }
            }
        }
        let barcode = scratch.ok_or_else(|| {
            ApplianceError::Conflict(format!("no writable volume for pool {pool}: import or label a cartridge"))
        })?;
        let mut dev = self.mount(&barcode)?;
        super::volume::label(&mut dev, pool, false)?;
        Ok(Box::new(dev))
    }

    fn find_part(&mut self, set_id: &str, part: u32) -> Result<Box<dyn TapeDevice + '_>, ApplianceError> {
        for (barcode, _, used) in self.lib.cartridges()? {
            if used == 0 {
                continue;
            }
            let mut dev = self.mount(&barcode)?;
            if !matches!(super::volume::read_label(&mut dev), Ok(Some(_))) {
                continue;
            }
            // The label is file 0; each set part is a later file.
            loop {
                match dev.read()? {
                    Record::Filemark => {}
                    Record::EndOfData => break,
                    Record::Data(_) => continue,
                }
                // Not it: the loop reads on to the next filemark.
                if read_part_header(&mut dev)?.is_some_and(|h| h.set_id == set_id && h.part == part) {
                    return Ok(Box::new(dev));
                }
            }
        }
        Err(ApplianceError::NotFound(format!(
            "the volume with part {part} of set {set_id} (insert it into the library and run inventory)"
        )))
    }
}
