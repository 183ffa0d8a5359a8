//! File heads: how a disk image shares blobs with the files it holds.
//!
//! A filesystem stores each file's data from a block boundary and pads the file's last block
//! with zeros. A file shorter than the file chunker's minimum is a single blob in a tree
//! backup, so when the same file sits inside a disk image its bytes start at a 4 KiB-aligned
//! offset of the image and hash to that blob. The image chunker cannot find such a file by
//! content-defined cutting (small files are shorter than its pieces), so:
//!
//! * a tree backup records, for every new single-blob file of at least [`MIN_LEN`] bytes, a
//!   [`HeadRecord`]: a hash of its first [`BLOCK`] bytes (zero-padded, as the filesystem pads
//!   them), its length and its blob id's first 128 bits, in `heads/<id>` objects;
//! * an image backup looks up every aligned block of the data it does not already have
//!   ([`find_files`]); where a head matches and the next `len` bytes hash to the recorded blob,
//!   which the repository holds, the image refers to that blob instead of storing the bytes
//!   again.
//!
//! Records are hints, never trusted: a match is confirmed by hashing the bytes and finding the
//! blob in the index, so a stale record (its blob pruned) or a damaged heads object costs only
//! sharing, never correctness. Prune drops the records of blobs it deletes.

use crate::crypto::MasterKey;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::repo::Repository;

/// Filesystem block size the lookups assume (ext4, XFS, NTFS and FAT all default to 4 KiB
/// clusters at 4 KiB-aligned partition offsets).
pub const BLOCK: usize = 4096;

/// Smaller files are not recorded: sharing one saves less than the two content entries (the
/// file and the padding after it) its image then lists.
pub const MIN_LEN: usize = 1024;

/// Records per `heads/` object: a first backup of millions of files writes one object per
/// this many new files instead of holding all its records until the end.
pub const RECORDS_PER_FILE: usize = 1 << 18;

const MAGIC: &[u8; 9] = b"BAMSHEAD\x01";
const RECORD_BYTES: usize = 28;
const DIR: &str = "heads";

/// One single-blob file: where an image block that hashes to `head` starts `len` bytes of
/// blob `id_prefix…`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HeadRecord {
    /// [`head_of`] the file.
    pub head: u64,
    /// File (and blob) length.
    pub len: u32,
    /// First 128 bits of the blob id.
    pub id_prefix: [u8; 16],
}

impl HeadRecord {
    /// The record of a single-blob file with content `data` and blob `id`, if it is worth one.
    pub fn of(data: &[u8], id: &Id) -> Option<Self> {
        if data.len() < MIN_LEN {
            return None;
        }
        let len = u32::try_from(data.len()).ok()?;
        Some(Self { head: head_of(data), len, id_prefix: id.prefix16() })
    }
}

/// The head hash of content starting with `data`: XXH3-64 of its first [`BLOCK`] bytes,
/// zero-padded. An image backup computes one per block of its new data on its one reading
/// thread, where a keyed BLAKE3 per block cost a tenth of the run; a head is only a hint
/// (every match is confirmed with the keyed blob id) and is stored encrypted.
pub fn head_of(data: &[u8]) -> u64 {
    if data.len() >= BLOCK {
        xxhash_rust::xxh3::xxh3_64(&data[..BLOCK])
    } else {
        let mut block = [0u8; BLOCK];
        block[..data.len()].copy_from_slice(data);
        xxhash_rust::xxh3::xxh3_64(&block)
    }
}

/// Plaintext of a `heads/` object: magic, then 28-byte records (head, len, id prefix; LE).
pub fn encode(records: &[HeadRecord]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAGIC.len() + records.len() * RECORD_BYTES);
    out.extend_from_slice(MAGIC);
    for r in records {
        out.extend_from_slice(&r.head.to_le_bytes());
        out.extend_from_slice(&r.len.to_le_bytes());
        out.extend_from_slice(&r.id_prefix);
    }
    out
}

/// Parse a `heads/` object's plaintext; `name` names it in errors.
pub fn decode(data: &[u8], name: &str) -> Result<Vec<HeadRecord>> {
    let body = data
        .strip_prefix(MAGIC.as_slice())
        .ok_or_else(|| Error::corrupt(format!("heads {name}: not a heads file (bad magic or version)")))?;
    if body.len() % RECORD_BYTES != 0 {
        return Err(Error::corrupt(format!("heads {name}: truncated record")));
    }
    Ok(body
        .chunks_exact(RECORD_BYTES)
        .map(|r| {
            let mut head = [0u8; 8];
            let mut len = [0u8; 4];
            let mut id_prefix = [0u8; 16];
            head.copy_from_slice(&r[..8]);
            len.copy_from_slice(&r[8..12]);
            id_prefix.copy_from_slice(&r[12..]);
            HeadRecord { head: u64::from_le_bytes(head), len: u32::from_le_bytes(len), id_prefix }
        })
        .collect())
}

/// Store `records` as one `heads/` object.
pub fn save(repo: &Repository, records: &[HeadRecord]) -> Result<Id> {
    repo.save_sealed(DIR, &encode(records))
}

/// The `heads/` objects with their stored sizes.
fn listed(repo: &Repository) -> Result<Vec<(Id, u64)>> {
    Ok(repo
        .list("heads/")?
        .iter()
        .filter_map(|o| Id::from_hex(o.key.trim_start_matches("heads/")).ok().map(|id| (id, o.size)))
        .collect())
}

/// Ids of the `heads/` objects.
pub fn ids(repo: &Repository) -> Result<Vec<Id>> {
    Ok(listed(repo)?.into_iter().map(|(id, _)| id).collect())
}

/// Heads objects that could not be read, with why.
pub type Unreadable = Vec<(Id, Error)>;

/// The records of every readable heads object, and the objects that could not be read.
pub fn load_all(repo: &Repository) -> Result<(Vec<HeadRecord>, Unreadable)> {
    Ok(load(repo, &ids(repo)?))
}

/// The records of the heads objects `ids`, and those that could not be read.
fn load(repo: &Repository, ids: &[Id]) -> (Vec<HeadRecord>, Unreadable) {
    let mut records = Vec::new();
    let mut failed = Vec::new();
    for (id, plain) in ids.iter().zip(repo.load_many_sealed(DIR, ids)) {
        match plain.and_then(|p| decode(&p, &id.to_hex())) {
            Ok(r) => records.extend(r),
            Err(e) => failed.push((*id, e)),
        }
    }
    (records, failed)
}

/// The lookup an image backup uses: every record, sorted by head.
#[derive(Debug, Default)]
pub struct HeadTable {
    records: Vec<HeadRecord>,
}

impl HeadTable {
    /// Load every heads object. One that cannot be read is skipped with a warning: it only
    /// means less sharing.
    pub fn load(repo: &Repository) -> Result<Self> {
        let (records, failed) = load_all(repo)?;
        for (id, e) in failed {
            tracing::warn!("skipping heads file {id}: {e}");
        }
        Ok(Self::from_records(records))
    }

    /// A table over `records`.
    pub fn from_records(mut records: Vec<HeadRecord>) -> Self {
        records.sort_unstable();
        records.dedup();
        records.shrink_to_fit();
        Self { records }
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// No records.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    fn matches(&self, head: u64) -> &[HeadRecord] {
        let lo = self.records.partition_point(|r| r.head < head);
        let hi = lo + self.records[lo..].partition_point(|r| r.head == head);
        &self.records[lo..hi]
    }
}

/// A file found inside image data: `data[offset..offset + len]` is blob `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// Start within the searched data.
    pub offset: usize,
    /// Length.
    pub len: usize,
    /// The blob those bytes are.
    pub id: Id,
}

/// Files of `table` whose blobs `has` knows, inside `data` (which starts at byte `at` of the
/// image), in order and not overlapping. Only [`BLOCK`]-aligned image offsets are tried.
pub fn find_files(data: &[u8], at: u64, key: &MasterKey, table: &HeadTable, has: impl Fn(&Id) -> bool) -> Vec<Found> {
    let mut found = Vec::new();
    if table.is_empty() {
        return found;
    }
    let block = BLOCK as u64;
    // First aligned offset within `data`; always < BLOCK, so it fits usize.
    let mut b = usize::try_from((block - at % block) % block).unwrap_or(usize::MAX);
    while b.saturating_add(BLOCK) <= data.len() {
        let first = &data[b..b + BLOCK];
        if first.iter().all(|&x| x == 0) {
            b += BLOCK;
            continue;
        }
        // Longest first: a file whose start equals a shorter file matches that one too.
        let hit = table.matches(head_of(first)).iter().rev().find_map(|r| {
            let end = b.checked_add(r.len as usize).filter(|&e| e <= data.len())?;
            let id = key.blob_id(&data[b..end]);
            (id.prefix16() == r.id_prefix && has(&id)).then_some(Found { offset: b, len: r.len as usize, id })
        });
        match hit {
            Some(f) => {
                found.push(f);
                // The next file starts at the next block boundary.
                b += f.len.div_ceil(BLOCK) * BLOCK;
            }
            None => b += BLOCK,
        }
    }
    found
}

/// Records per merged heads object (28 MiB of plaintext, above
/// [`crate::consolidate::SMALL_FILE_BYTES`] sealed even when compressed, so a merged object is
/// not merged again).
const MERGED_RECORDS: usize = 1 << 20;

/// Merge the small heads objects (below [`crate::consolidate::SMALL_FILE_BYTES`], as for index
/// files: about 300,000 records) into few large ones (consolidation: every backup of new files
/// adds one). Returns (objects merged away, objects written).
pub fn merge_small(repo: &Repository, min_files: usize) -> Result<(usize, usize)> {
    let small: Vec<Id> = listed(repo)?
        .into_iter()
        .filter(|(_, size)| *size < crate::consolidate::SMALL_FILE_BYTES)
        .map(|(id, _)| id)
        .collect();
    if small.len() < min_files.max(2) {
        return Ok((0, 0));
    }
    rewrite(repo, &small, &|_| true)
}

/// Keep only the records of blobs in `used` (prune, after deleting the rest), rewriting every
/// heads object. Returns (objects before, objects written).
pub fn retain_used(repo: &Repository, used: &std::collections::HashSet<Id>) -> Result<(usize, usize)> {
    let all = ids(repo)?;
    if all.is_empty() {
        return Ok((0, 0));
    }
    let prefixes: std::collections::HashSet<[u8; 16]> = used.iter().map(Id::prefix16).collect();
    rewrite(repo, &all, &|p| prefixes.contains(p))
}

/// Replace the objects `ids` with as few as hold their records that `keep` accepts.
/// Crash-safe order: the new objects first, then the old ones deleted (records seen twice
/// meanwhile are harmless). Objects that cannot be read are deleted too: they hold only hints.
fn rewrite(repo: &Repository, ids: &[Id], keep: &dyn Fn(&[u8; 16]) -> bool) -> Result<(usize, usize)> {
    let (records, failed) = load(repo, ids);
    for (id, e) in failed {
        if e.kind() != crate::ErrorKind::NotFound {
            // (NotFound: merged away meanwhile.)
            tracing::warn!("dropping unreadable heads file {id}: {e}");
        }
    }
    let kept: Vec<HeadRecord> =
        HeadTable::from_records(records).records.into_iter().filter(|r| keep(&r.id_prefix)).collect();
    let mut written = 0;
    for part in kept.chunks(MERGED_RECORDS) {
        save(repo, part)?;
        written += 1;
    }
    for id in ids {
        repo.delete(&format!("{DIR}/{id}"))?;
    }
    Ok((ids.len(), written))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> MasterKey {
        MasterKey::generate()
    }

    #[test]
    fn records_round_trip_and_damage_is_named() {
        let k = key();
        let data = vec![5u8; 3000];
        let id = k.blob_id(&data);
        let r = HeadRecord::of(&data, &id).expect("recorded");
        assert_eq!(r.len, 3000);
        let enc = encode(&[r, r]);
        assert_eq!(decode(&enc, "x").expect("decodes"), vec![r, r]);
        let err = decode(&enc[..enc.len() - 1], "x").expect_err("truncated");
        assert!(err.to_string().contains("heads x"), "{err}");
        assert!(decode(b"BAMSHEAD\x02", "x").is_err());
        assert!(HeadRecord::of(&data[..MIN_LEN - 1], &id).is_none());
    }

    #[test]
    fn files_are_found_at_block_boundaries_only() {
        let k = key();
        let file: Vec<u8> = (0..5000u32).map(|i| (i * 7 + 3) as u8).collect();
        let id = k.blob_id(&file);
        let table = HeadTable::from_records(vec![HeadRecord::of(&file, &id).expect("record")]);
        // An "image": a metadata block, the file, zero padding to the block end, the file again
        // at an unaligned offset (not a filesystem's layout, so not looked for).
        let mut image = vec![9u8; BLOCK];
        image.extend_from_slice(&file);
        image.resize(3 * BLOCK, 0);
        image.extend_from_slice(&[1u8; 100]);
        image.extend_from_slice(&file);
        image.resize(image.len() + 2 * BLOCK, 0);
        let found = find_files(&image, 0, &k, &table, |_| true);
        assert_eq!(found, vec![Found { offset: BLOCK, len: 5000, id }]);
        // The same data seen from image offset 1000: the aligned file is at data offset 3096.
        let found = find_files(&image[1000..], 1000, &k, &table, |_| true);
        assert_eq!(found.iter().map(|f| f.offset).collect::<Vec<_>>(), vec![BLOCK - 1000]);
        // A blob the repository lacks, or bytes that differ after the head, are not used.
        assert!(find_files(&image, 0, &k, &table, |_| false).is_empty());
        image[BLOCK + 4500] ^= 1;
        assert!(find_files(&image, 0, &k, &table, |_| true).is_empty());
    }
}
