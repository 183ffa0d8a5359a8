//! Index files and the in-memory lookup built from them.
//!
//! An index file (`index/<id>`, sealed) lists packs and the blobs inside them. Plaintext:
//! `b"BIX1"`, then per pack: `pack id (32) || count (u32 LE)` followed by `count` entries of
//! `kind (u8) || blob id (32) || offset (u32 LE) || length (u32 LE) || raw_len (u32 LE)`.
//!
//! In memory, [`MasterIndex`] is one sorted `Vec` of fixed-size 32-byte records plus a table of
//! pack ids and a 2^16-entry table of where each leading 16-bit prefix starts: no per-entry
//! allocation, lookups touch one or two cache lines, 32 MB per million blobs. A record keeps the
//! first 128 bits of the blob id (ids are keyed BLAKE3: two different blobs agreeing on 128
//! bits is a 2^-128 event per pair, as unlikely as a collision of a 128-bit hash); every read
//! checks the whole id of what it decrypted, and the index files keep whole ids.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::id::Id;
use crate::pack::{BlobKind, PackEntry};

const MAGIC: &[u8; 4] = b"BIX1";
const ENTRY_LEN: usize = 1 + 32 + 12;

/// The packs and blobs one index file describes.
#[derive(Debug, Default, Clone)]
pub struct IndexFile {
    /// Packs with their entries.
    pub packs: Vec<(Id, Vec<PackEntry>)>,
}

impl IndexFile {
    /// Serialize to plaintext.
    pub fn encode(&self) -> Vec<u8> {
        let n: usize = self.packs.iter().map(|(_, e)| 36 + e.len() * ENTRY_LEN).sum();
        let mut out = Vec::with_capacity(4 + n);
        out.extend_from_slice(MAGIC);
        for (pack, entries) in &self.packs {
            out.extend_from_slice(&pack.0);
            out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
            for e in entries {
                out.push(e.kind as u8);
                out.extend_from_slice(&e.id.0);
                out.extend_from_slice(&e.offset.to_le_bytes());
                out.extend_from_slice(&e.length.to_le_bytes());
                out.extend_from_slice(&e.raw_len.to_le_bytes());
            }
        }
        out
    }

    /// Parse plaintext; `name` is used in errors.
    pub fn decode(data: &[u8], name: &str) -> Result<Self> {
        let packs = pack_sections(data, name)?
            .into_iter()
            .map(|(pack, entries)| (pack, entries.chunks_exact(ENTRY_LEN).map(entry_at).collect()))
            .collect();
        Ok(Self { packs })
    }

    /// Number of blobs listed.
    pub fn blob_count(&self) -> usize {
        self.packs.iter().map(|(_, e)| e.len()).sum()
    }
}

/// Check an index file's plaintext whole and split it into its packs' entry bytes (each a
/// multiple of `ENTRY_LEN` with valid kinds), so a damaged file is refused before any of it
/// is used, without decoding its entries into memory first.
fn pack_sections<'a>(data: &'a [u8], name: &str) -> Result<Vec<(Id, &'a [u8])>> {
    let bad = |what: &str| Error::corrupt(format!("index {name}: {what}"));
    let mut rest = data.strip_prefix(MAGIC.as_slice()).ok_or_else(|| bad("bad magic"))?;
    let mut packs = Vec::new();
    while !rest.is_empty() {
        let (head, tail) = rest.split_at_checked(36).ok_or_else(|| bad("truncated"))?;
        let pack = Id(head[..32].try_into().map_err(|_| bad("truncated"))?);
        let count = u32::from_le_bytes([head[32], head[33], head[34], head[35]]) as usize;
        let len = count.checked_mul(ENTRY_LEN).ok_or_else(|| bad("truncated entries"))?;
        let (entries, tail) = tail.split_at_checked(len).ok_or_else(|| bad("truncated entries"))?;
        for e in entries.chunks_exact(ENTRY_LEN) {
            BlobKind::from_u8(e[0]).map_err(|err| bad(&err.to_string()))?;
        }
        packs.push((pack, entries));
        rest = tail;
    }
    Ok(packs)
}

/// One entry's bytes (kind already checked by [`pack_sections`]).
fn entry_at(e: &[u8]) -> PackEntry {
    let u32_at = |p: usize| u32::from_le_bytes([e[p], e[p + 1], e[p + 2], e[p + 3]]);
    let mut id = [0u8; 32];
    id.copy_from_slice(&e[1..33]);
    PackEntry {
        kind: if e[0] == BlobKind::Tree as u8 { BlobKind::Tree } else { BlobKind::Data },
        id: Id(id),
        offset: u32_at(33),
        length: u32_at(37),
        raw_len: u32_at(41),
    }
}

/// Fixed-size record in the lookup table (32 bytes).
#[derive(Debug, Clone, Copy)]
struct Record {
    /// First 128 bits of the blob id, big-endian, so integer order is id order.
    key: u128,
    pack: u32,
    offset: u32,
    /// Sealed length; the top bit marks a tree blob.
    length_kind: u32,
    raw_len: u32,
}

const TREE_BIT: u32 = 1 << 31;
/// Leading id bits resolved by the bucket table.
const BUCKET_BITS: u32 = 16;

/// The first 128 bits of a blob id, as the in-memory lookups compare them (a collision among
/// keyed 128-bit prefixes is as unlikely as one among the ids a repository will ever hold).
pub(crate) fn key_of(id: &Id) -> u128 {
    u128::from_be_bytes(id.prefix16())
}

fn record(pack: u32, e: &PackEntry) -> Record {
    Record {
        key: key_of(&e.id),
        pack,
        offset: e.offset,
        // Sealed blobs are at most a pack long, far below 2^31 bytes.
        length_kind: (e.length & !TREE_BIT) | if e.kind == BlobKind::Tree { TREE_BIT } else { 0 },
        raw_len: e.raw_len,
    }
}

fn bucket_of(key: u128) -> usize {
    (key >> (128 - BUCKET_BITS)) as usize
}

impl Record {
    fn kind(&self) -> BlobKind {
        if self.length_kind & TREE_BIT != 0 {
            BlobKind::Tree
        } else {
            BlobKind::Data
        }
    }
}

/// Location of a blob, as answered by [`MasterIndex::get`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLocation {
    /// Pack holding the blob.
    pub pack: Id,
    /// Data or tree.
    pub kind: BlobKind,
    /// Offset of the sealed blob.
    pub offset: u32,
    /// Sealed length.
    pub length: u32,
    /// Plaintext length.
    pub raw_len: u32,
}

/// All blobs of the repository, compactly, for dedup and reads.
#[derive(Debug, Default)]
pub struct MasterIndex {
    packs: Vec<Id>,
    /// Per pack: holds at least one data blob (tree-only packs are read whole and cached).
    pack_has_data: Vec<bool>,
    pack_pos: HashMap<Id, u32>,
    records: Vec<Record>,
    /// `buckets[b]..buckets[b + 1]` are the records whose id starts with the 16 bits `b`
    /// (empty until [`Self::finalize`]).
    buckets: Vec<u32>,
    sorted: bool,
}

impl MasterIndex {
    /// Add every entry of an index file (call [`Self::finalize`] before lookups).
    pub fn add_file(&mut self, file: &IndexFile) {
        for (pack, entries) in &file.packs {
            self.add_pack(*pack, entries);
        }
    }

    /// Add every entry of an index file's plaintext straight from its bytes: loading a
    /// repository's index holds only the lookup table and the file being read, not every file
    /// decoded (48 bytes a blob beside the table's 32). A damaged file adds nothing.
    pub fn add_plaintext(&mut self, data: &[u8], name: &str) -> Result<()> {
        for (pack, entries) in pack_sections(data, name)? {
            let pos = self.pack_position(pack);
            self.records.reserve(entries.len() / ENTRY_LEN);
            for e in entries.chunks_exact(ENTRY_LEN).map(entry_at) {
                self.pack_has_data[pos as usize] |= e.kind == BlobKind::Data;
                self.records.push(record(pos, &e));
            }
        }
        self.sorted = false;
        Ok(())
    }

    fn pack_position(&mut self, pack: Id) -> u32 {
        let next = self.packs.len() as u32;
        let pos = *self.pack_pos.entry(pack).or_insert(next);
        if pos == next {
            self.packs.push(pack);
            self.pack_has_data.push(false);
        }
        pos
    }

    /// Add one pack's entries.
    pub fn add_pack(&mut self, pack: Id, entries: &[PackEntry]) {
        let pos = self.pack_position(pack);
        if entries.iter().any(|e| e.kind == BlobKind::Data) {
            self.pack_has_data[pos as usize] = true;
        }
        self.records.extend(entries.iter().map(|e| record(pos, e)));
        self.sorted = false;
    }

    /// Sort for lookups; a blob stored in several packs keeps one location.
    pub fn finalize(&mut self) {
        self.records.sort_unstable_by(|a, b| a.key.cmp(&b.key).then(a.pack.cmp(&b.pack)));
        self.records.dedup_by(|a, b| a.key == b.key);
        self.records.shrink_to_fit();
        let mut buckets = vec![0u32; (1 << BUCKET_BITS) + 1];
        for r in &self.records {
            buckets[bucket_of(r.key) + 1] += 1;
        }
        for b in 1..buckets.len() {
            buckets[b] += buckets[b - 1];
        }
        self.buckets = buckets;
        self.sorted = true;
    }

    fn find(&self, id: &Id) -> Option<&Record> {
        debug_assert!(self.sorted || self.records.is_empty(), "MasterIndex used before finalize");
        let key = key_of(id);
        let b = bucket_of(key);
        let (Some(&lo), Some(&hi)) = (self.buckets.get(b), self.buckets.get(b + 1)) else {
            return None;
        };
        let slice = self.records.get(lo as usize..hi as usize)?;
        slice.binary_search_by(|r| r.key.cmp(&key)).ok().map(|i| &slice[i])
    }

    /// Is this blob stored?
    pub fn contains(&self, id: &Id) -> bool {
        self.find(id).is_some()
    }

    /// Where the blob is.
    pub fn get(&self, id: &Id) -> Option<BlobLocation> {
        self.find(id).map(|r| self.location(r))
    }

    fn location(&self, r: &Record) -> BlobLocation {
        BlobLocation {
            pack: self.packs[r.pack as usize],
            kind: r.kind(),
            offset: r.offset,
            length: r.length_kind & !TREE_BIT,
            raw_len: r.raw_len,
        }
    }

    /// True when the pack holds only trees.
    pub fn is_tree_pack(&self, pack: &Id) -> bool {
        self.pack_pos.get(pack).is_some_and(|&p| !self.pack_has_data[p as usize])
    }

    /// Is this pack listed in any index?
    pub fn has_pack(&self, pack: &Id) -> bool {
        self.pack_pos.contains_key(pack)
    }

    /// Number of distinct blobs.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// All packs known to the index.
    pub fn packs(&self) -> &[Id] {
        &self.packs
    }

    /// Where every blob is (the whole ids are in the index files).
    pub fn locations(&self) -> impl Iterator<Item = BlobLocation> + '_ {
        self.records.iter().map(|r| self.location(r))
    }

    /// Bytes of memory per blob of the lookup table (the issue-18 figure).
    pub const BYTES_PER_BLOB: usize = std::mem::size_of::<Record>();
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(seed: u8, off: u32) -> PackEntry {
        PackEntry { kind: BlobKind::Data, id: Id([seed; 32]), offset: off, length: 10, raw_len: 20 }
    }

    proptest! {
        #[test]
        fn encode_decode_roundtrip(packs in proptest::collection::vec((any::<[u8; 32]>(), proptest::collection::vec((any::<u8>(), any::<u32>()), 0..10)), 0..8)) {
            let file = IndexFile { packs: packs.iter().map(|(p, es)| (Id(*p), es.iter().map(|(s, o)| entry(*s, *o)).collect())).collect() };
            let back = IndexFile::decode(&file.encode(), "t").unwrap();
            prop_assert_eq!(back.packs.len(), file.packs.len());
            for ((a, ea), (b, eb)) in back.packs.iter().zip(&file.packs) {
                prop_assert_eq!(a, b);
                prop_assert_eq!(ea, eb);
            }
        }
    }

    #[test]
    fn lookup_and_truncation() {
        let mut mi = MasterIndex::default();
        mi.add_pack(Id([9; 32]), &[entry(3, 0), entry(1, 10)]);
        mi.finalize();
        assert!(mi.contains(&Id([1; 32])));
        assert!(!mi.contains(&Id([2; 32])));
        assert_eq!(mi.get(&Id([1; 32])).unwrap().pack, Id([9; 32]));
        let enc = IndexFile { packs: vec![(Id([9; 32]), vec![entry(3, 0)])] }.encode();
        assert!(IndexFile::decode(&enc[..enc.len() - 3], "t").is_err());
    }

    #[test]
    fn records_are_32_bytes_and_keep_kind_and_lengths() {
        assert_eq!(MasterIndex::BYTES_PER_BLOB, 32);
        let mut mi = MasterIndex::default();
        let tree =
            PackEntry { kind: BlobKind::Tree, id: Id([7; 32]), offset: 5, length: (1 << 31) - 1, raw_len: u32::MAX };
        mi.add_pack(Id([1; 32]), &[tree, entry(8, 9)]);
        mi.finalize();
        let loc = mi.get(&Id([7; 32])).unwrap();
        assert_eq!((loc.kind, loc.offset, loc.length, loc.raw_len), (BlobKind::Tree, 5, (1 << 31) - 1, u32::MAX));
        assert_eq!(mi.get(&Id([8; 32])).unwrap().kind, BlobKind::Data);
        assert!(!mi.is_tree_pack(&Id([1; 32])));
    }

    #[test]
    fn plaintext_adds_what_decoding_adds_and_damage_adds_nothing() {
        let tree = PackEntry { kind: BlobKind::Tree, ..entry(3, 7) };
        let file = IndexFile { packs: vec![(Id([1; 32]), vec![entry(1, 0), tree]), (Id([2; 32]), vec![entry(2, 5)])] };
        let plain = file.encode();
        let mut direct = MasterIndex::default();
        direct.add_plaintext(&plain, "t").unwrap();
        direct.finalize();
        let mut decoded = MasterIndex::default();
        decoded.add_file(&IndexFile::decode(&plain, "t").unwrap());
        decoded.finalize();
        for seed in [1, 2, 3, 4] {
            assert_eq!(direct.get(&Id([seed; 32])), decoded.get(&Id([seed; 32])));
        }
        assert_eq!(direct.get(&Id([3; 32])).unwrap().kind, BlobKind::Tree);
        assert!(direct.is_tree_pack(&Id([2; 32])) == decoded.is_tree_pack(&Id([2; 32])));

        // A bad kind in the last pack, or a file cut anywhere, refuses the whole file.
        let mut bad_kind = plain.clone();
        let last_kind = bad_kind.len() - ENTRY_LEN;
        bad_kind[last_kind] = 9;
        let whole_packs = [4, 4 + 36 + 2 * ENTRY_LEN];
        let cuts = (1..plain.len()).filter(|n| !whole_packs.contains(n)).map(|n| plain[..n].to_vec());
        for damaged in std::iter::once(bad_kind).chain(cuts) {
            let mut mi = MasterIndex::default();
            assert!(mi.add_plaintext(&damaged, "t").is_err(), "{} bytes accepted", damaged.len());
            assert!(IndexFile::decode(&damaged, "t").is_err());
            mi.finalize();
            assert_eq!(mi.len(), 0);
        }
    }

    proptest! {
        /// Lookups through the bucket table find exactly the ids added, whatever their
        /// leading bits (ids crowded into few buckets, or spread, or at the extremes).
        #[test]
        fn bucketed_lookup_finds_exactly_what_was_added(
            ids in proptest::collection::hash_set(any::<[u8; 32]>(), 0..300),
            probes in proptest::collection::vec(any::<[u8; 32]>(), 0..50),
            crowd in any::<bool>(),
        ) {
            let ids: std::collections::BTreeSet<[u8; 32]> = ids.into_iter().map(|mut i| { if crowd { i[0] = 0xff; i[1] &= 1; } i }).collect();
            let ids: Vec<[u8; 32]> = ids.into_iter().collect();
            let mut mi = MasterIndex::default();
            for (n, chunk) in ids.chunks(7).enumerate() {
                let entries: Vec<PackEntry> = chunk.iter().enumerate().map(|(k, i)| PackEntry { kind: BlobKind::Data, id: Id(*i), offset: k as u32, length: 1, raw_len: 1 }).collect();
                mi.add_pack(Id([n as u8; 32]), &entries);
            }
            mi.finalize();
            prop_assert_eq!(mi.len(), ids.len());
            for i in &ids {
                prop_assert!(mi.contains(&Id(*i)));
            }
            for p in probes {
                prop_assert_eq!(mi.contains(&Id(p)), ids.iter().any(|i| i[..16] == p[..16]));
            }
        }
    }
}
