//! Disk images stored as versions (the bare-metal image service's engine).
//!
//! A version is a snapshot whose root holds two files: [`DISK`], the raw disk cut by the image
//! chunker and restored sparse, and [`MANIFEST`], the list of each chunk's length and
//! *unkeyed* BLAKE3 hash. The manifest is what lets a machine that holds no repository key
//! take part in deduplication: to flash, it hashes its disk at each chunk's place and asks
//! (by HTTP range) only for the chunks that differ; to sync a disk back, it sends the
//! manifest of its disk and then only the chunks the previous version lacks
//! ([`needed`], [`store_delta`]). Unkeyed hashes of an image tell nothing beyond what the
//! machine flashing that image holds anyway. Keyed blob ids stay the repository's secret, and
//! a manifest copied to another repository stays valid (it names plaintext, not ids).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::MasterIndex;
use crate::pack::BlobKind;
use crate::pipeline::{BlobWriter, PipelineOptions};
use crate::repo::{ChunkerParams, Repository};
use crate::snapshot::{Snapshot, SnapshotEntry, Summary};
use crate::tree::{Node, NodeKind, Tree};

/// Name of the disk file in a version's snapshot.
pub const DISK: &str = "disk.img";
/// Name of the chunk manifest in a version's snapshot.
pub const MANIFEST: &str = "disk.blake3";

const MAGIC: &[u8; 8] = b"BAMSIMG1";
/// Most chunks a manifest may list (16 TiB of 128 KiB chunks); bounds what a hostile upload
/// can make the server allocate.
const MAX_CHUNKS: u64 = 1 << 27;

/// Unkeyed BLAKE3 of a chunk's plaintext.
pub type PlainHash = [u8; 32];

/// Each chunk of a disk, in order: its length and unkeyed hash.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    /// `(length, hash)` per chunk.
    pub chunks: Vec<(u32, PlainHash)>,
}

impl Manifest {
    /// Bytes: magic, chunk count (u64 LE), then per chunk its length (u32 LE) and hash.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.chunks.len() * 36);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(self.chunks.len() as u64).to_le_bytes());
        for (len, hash) in &self.chunks {
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(hash);
        }
        out
    }

    /// Parse [`Manifest::encode`]'s bytes; every length must be 1..=`max_chunk`.
    pub fn decode(data: &[u8], max_chunk: u32) -> Result<Self> {
        let bad = |what: &str| Error::invalid(format!("image manifest: {what}"));
        if data.len() < 16 || &data[..8] != MAGIC {
            return Err(bad("does not start with BAMSIMG1 and a chunk count"));
        }
        let count = u64::from_le_bytes(data[8..16].try_into().map_err(|_| bad("short"))?);
        if count > MAX_CHUNKS || (data.len() as u64 - 16) != count * 36 {
            return Err(bad(&format!("{} bytes cannot hold {count} chunks", data.len())));
        }
        let chunks = data[16..]
            .chunks_exact(36)
            .map(|c| {
                let len = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                if len == 0 || len > max_chunk {
                    return Err(bad(&format!("chunk length {len} is outside 1..={max_chunk}")));
                }
                let mut hash = [0u8; 32];
                hash.copy_from_slice(&c[4..]);
                Ok((len, hash))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { chunks })
    }

    /// The disk's size.
    pub fn size(&self) -> u64 {
        self.chunks.iter().map(|(l, _)| u64::from(*l)).sum()
    }

    /// `(offset, length, hash)` of each chunk.
    pub fn places(&self) -> impl Iterator<Item = (u64, u32, &PlainHash)> + '_ {
        let mut at = 0u64;
        self.chunks.iter().map(move |(len, hash)| {
            let here = at;
            at += u64::from(*len);
            (here, *len, hash)
        })
    }
}

/// What a new version records besides its data.
#[derive(Debug, Clone, Default)]
pub struct VersionMeta {
    /// Host name in the snapshot (the image's UUID).
    pub host: String,
    /// Tags.
    pub tags: Vec<String>,
    /// The previous version.
    pub parent: Option<Id>,
}

/// A stored version.
#[derive(Debug, Clone)]
pub struct StoredImage {
    /// Snapshot id.
    pub id: Id,
    /// Disk size.
    pub size: u64,
    /// Chunks in the disk.
    pub chunks: u64,
    /// Plaintext bytes the repository did not hold before.
    pub bytes_added: u64,
}

/// Cut a chunk-sized piece into a blob: keyed id, unkeyed hash. All-zero chunks (most of a
/// fresh disk) are hashed once per length.
#[derive(Default)]
struct Hasher {
    zeros: HashMap<usize, (Id, PlainHash)>,
}

impl Hasher {
    fn hash(&mut self, repo: &Repository, data: &[u8]) -> (Id, PlainHash) {
        if data.iter().all(|b| *b == 0) {
            return *self
                .zeros
                .entry(data.len())
                .or_insert_with(|| (repo.key().blob_id(data), *blake3::hash(data).as_bytes()));
        }
        (repo.key().blob_id(data), *blake3::hash(data).as_bytes())
    }
}

/// A version's chunk list and manifest as they are built: each chunk hashed (keyed and
/// unkeyed) and queued unless stored already.
#[derive(Default)]
struct Chunks {
    hasher: Hasher,
    content: Vec<Id>,
    manifest: Manifest,
}

impl Chunks {
    fn push(&mut self, repo: &Repository, writer: &mut BlobWriter<'_, '_>, data: &[u8]) -> Result<()> {
        let (id, plain) = self.hasher.hash(repo, data);
        if !writer.has(&id) {
            writer.add_with_id(BlobKind::Data, id, data.to_vec())?;
        }
        self.content.push(id);
        self.manifest.chunks.push((data.len() as u32, plain));
        Ok(())
    }
}

/// Store a version from a raw disk stream (an upload): cut by the image chunker here.
/// `progress` gets the bytes of each chunk. A read error (a truncated upload) stores no
/// version.
pub fn store_stream(
    repo: &Repository,
    reader: &mut dyn Read,
    meta: VersionMeta,
    progress: &dyn Fn(u64),
) -> Result<StoredImage> {
    let params = repo.config().image_chunker;
    write_version(repo, meta, |writer| {
        let mut chunks = Chunks::default();
        cut(reader, params, |chunk| {
            chunks.push(repo, writer, chunk)?;
            progress(chunk.len() as u64);
            Ok(())
        })?;
        Ok((chunks.content, chunks.manifest))
    })
}

/// Store an empty disk of `size` bytes (a new image's first version) without reading
/// `size` zeros: a stream of zeros is cut at the same length over and over, so the chunk
/// list is that one chunk repeated and a tail cut on its own — exactly what
/// [`store_stream`] of the zeros would store.
pub fn store_zeros(repo: &Repository, size: u64, meta: VersionMeta) -> Result<StoredImage> {
    let c = repo.config().image_chunker;
    let period = zero_period(c);
    let probe = vec![0u8; period as usize];
    write_version(repo, meta, |writer| {
        let mut chunks = Chunks::default();
        let whole = size / period;
        let tail = size % period;
        // Any stretch of zeros at least a period long followed by more zeros is cut at
        // `period`; the last stretch (a whole period plus the tail) is cut as FastCDC cuts it.
        let (repeat, last) = if whole > 0 { (whole - 1, period + tail) } else { (0, tail) };
        let chunk = &probe[..period as usize];
        // Known zeros: hashed once, not scanned again per period (a 55 GiB disk is 450,000
        // periods, which took an API request past its client's timeout).
        if repeat > 0 {
            chunks.push(repo, writer, chunk)?;
            // The pushed period's ids, reused rather than hashed again.
            let (Some(&id), Some(&(_, plain))) = (chunks.content.last(), chunks.manifest.chunks.last()) else {
                return Err(crate::Error::new(crate::ErrorKind::Other, "zero period not recorded"));
            };
            for _ in 1..repeat {
                chunks.content.push(id);
                chunks.manifest.chunks.push((period as u32, plain));
            }
        }
        let end = vec![0u8; last as usize];
        for ch in fastcdc::v2020::FastCDC::new(&end, c.min_size, c.avg_size, c.max_size) {
            chunks.push(repo, writer, &end[ch.offset..ch.offset + ch.length])?;
        }
        Ok((chunks.content, chunks.manifest))
    })
}

/// Which chunks of `manifest` a delta upload has to send: those whose hash `known` (the
/// previous version's chunks) lacks, each once.
pub fn needed(manifest: &Manifest, known: &HashMap<PlainHash, Id>) -> Vec<usize> {
    let mut sent = std::collections::HashSet::new();
    manifest
        .chunks
        .iter()
        .enumerate()
        .filter(|(_, (_, h))| !known.contains_key(h) && sent.insert(*h))
        .map(|(i, _)| i)
        .collect()
}

/// Store a version from a machine's manifest and, read from `data` in order, the bytes of
/// the chunks [`needed`] named. Each sent chunk must match its hash and `data` must end
/// after the last; otherwise nothing is stored.
pub fn store_delta(
    repo: &Repository,
    manifest: &Manifest,
    known: &HashMap<PlainHash, Id>,
    data: &mut dyn Read,
    meta: VersionMeta,
) -> Result<StoredImage> {
    let max = repo.config().image_chunker.max_size;
    write_version(repo, meta, |writer| {
        let mut hasher = Hasher::default();
        let mut sent: HashMap<PlainHash, Id> = HashMap::new();
        let mut content = Vec::with_capacity(manifest.chunks.len());
        let mut buf = Vec::new();
        for (i, (len, hash)) in manifest.chunks.iter().enumerate() {
            if *len == 0 || *len > max {
                return Err(Error::invalid(format!("chunk {i}: length {len} is outside 1..={max}")));
            }
            if let Some(id) = known.get(hash).or_else(|| sent.get(hash)) {
                content.push(*id);
                continue;
            }
            buf.resize(*len as usize, 0);
            data.read_exact(&mut buf).map_err(|e| {
                Error::invalid(format!("the upload ended inside chunk {i} of {}: {e}", manifest.chunks.len()))
            })?;
            let (id, plain) = hasher.hash(repo, &buf);
            if plain != *hash {
                return Err(Error::invalid(format!("chunk {i}: the bytes sent do not match the manifest's hash")));
            }
            if !writer.has(&id) {
                writer.add_with_id(BlobKind::Data, id, buf.clone())?;
            }
            sent.insert(plain, id);
            content.push(id);
        }
        let mut extra = [0u8; 1];
        if data.read(&mut extra).map_err(|e| Error::invalid(format!("reading the upload: {e}")))? != 0 {
            return Err(Error::invalid("the upload carries more bytes than the manifest's missing chunks"));
        }
        Ok((content, manifest.clone()))
    })
}

/// Write a version's blobs, tree and snapshot under a shared lock, in the backup's order
/// (packs, index, tree, snapshot): a failure before the snapshot leaves only unreferenced
/// packs that the next writer re-indexes and prune removes.
fn write_version(
    repo: &Repository,
    meta: VersionMeta,
    fill: impl FnOnce(&mut BlobWriter<'_, '_>) -> Result<(Vec<Id>, Manifest)>,
) -> Result<StoredImage> {
    let started = Instant::now();
    let mut lock = crate::lock::acquire(repo, false, "image upload", Duration::from_secs(60))?;
    let mut index = repo.load_index()?;
    if lock.others_seen() {
        repo.recover_unindexed_packs(&mut index)?;
        lock.clear_stale();
    }
    let (tree, summary, size, chunks) = std::thread::scope(|scope| -> Result<(Id, Summary, u64, u64)> {
        let mut writer = BlobWriter::start(scope, repo, &index, PipelineOptions::default());
        let filled = fill(&mut writer);
        let (content, manifest) = match filled {
            Ok(f) => f,
            Err(e) => {
                let _ = writer.finish();
                return Err(e);
            }
        };
        let size = manifest.size();
        let manifest_bytes = manifest.encode();
        let c = repo.config().chunker;
        let mut manifest_content = Vec::new();
        for piece in fastcdc::v2020::FastCDC::new(&manifest_bytes, c.min_size, c.avg_size, c.max_size) {
            let data = manifest_bytes[piece.offset..piece.offset + piece.length].to_vec();
            manifest_content.push(writer.add(BlobKind::Data, data)?);
        }
        let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
        let mut disk = Node::plain_file(DISK, content, size, now);
        disk.sparse = true;
        let listing = Node::plain_file(MANIFEST, manifest_content, manifest_bytes.len() as u64, now);
        let mut root = Tree { nodes: vec![disk, listing] };
        root.sort();
        let tree = writer.add(BlobKind::Tree, root.encode()?)?;
        let mut summary = Summary {
            files_new: 2,
            total_bytes: size,
            bytes_read: size,
            data_blobs_added: writer.added.0,
            tree_blobs_added: writer.added.1,
            data_added: writer.added_bytes,
            ..Summary::default()
        };
        let stats = writer.finish()?;
        summary.data_added_packed = stats.packed_bytes;
        Ok((tree, summary, size, manifest.chunks.len() as u64))
    })?;
    let mut summary = summary;
    summary.duration_secs = started.elapsed().as_secs_f64();
    let bytes_added = summary.data_added;
    let snapshot = Snapshot {
        time: chrono::Local::now(),
        host: meta.host,
        username: crate::host::username(),
        paths: vec![format!("/{DISK}")],
        tags: meta.tags,
        parent: meta.parent,
        tree,
        partial: false,
        job: None,
        origin: None,
        program: format!("bams {}", env!("CARGO_PKG_VERSION")),
        summary,
    };
    lock.ensure_held()?;
    let id = repo.save_snapshot(&snapshot)?;
    Ok(StoredImage { id, size, chunks, bytes_added })
}

/// Why cutting a stream stopped: its reader failed, or what was done with a chunk.
pub(crate) enum CutError<E> {
    /// Reading the stream failed.
    Read(std::io::Error),
    /// The chunk callback failed.
    Each(E),
}

/// Cut a stream into content-defined chunks with `c`, calling `each` with every chunk in
/// order; returns the bytes cut. Reads large slices into `buf` (kept by the caller across
/// files: a fresh multi-MiB buffer per small file would dominate a tree backup), so there are
/// few syscalls even when chunks are small.
pub(crate) fn cut_stream<E>(
    reader: &mut dyn Read,
    c: ChunkerParams,
    buf: &mut Vec<u8>,
    mut each: impl FnMut(&[u8]) -> std::result::Result<(), E>,
) -> std::result::Result<u64, CutError<E>> {
    let cap = (2 * c.max_size as usize).max(4 << 20);
    buf.resize(cap, 0);
    let mut filled = 0usize;
    let mut eof = false;
    let mut total = 0u64;
    loop {
        while !eof && filled < cap {
            match reader.read(&mut buf[filled..]) {
                Ok(0) => eof = true,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(CutError::Read(e)),
            }
        }
        if filled == 0 {
            return Ok(total);
        }
        let mut consumed = 0usize;
        for chunk in fastcdc::v2020::FastCDC::new(&buf[..filled], c.min_size, c.avg_size, c.max_size) {
            let end = chunk.offset + chunk.length;
            if end == filled && !eof {
                break; // may continue past the buffer: cut again after refilling
            }
            each(&buf[chunk.offset..end]).map_err(CutError::Each)?;
            total += chunk.length as u64;
            consumed = end;
        }
        buf.copy_within(consumed..filled, 0);
        filled -= consumed;
        if eof && filled == 0 {
            return Ok(total);
        }
    }
}

/// The length FastCDC cuts a long run of zeros at, from a chunk start: every chunk of the
/// run but the last has this length.
pub(crate) fn zero_period(c: ChunkerParams) -> u64 {
    let probe = vec![0u8; 2 * c.max_size as usize + 1];
    fastcdc::v2020::FastCDC::new(&probe, c.min_size, c.avg_size, c.max_size)
        .next()
        .map_or(u64::from(c.max_size), |ch| ch.length as u64)
}

/// The data extents of a file (`SEEK_DATA`/`SEEK_HOLE`), `[start, end)` in order; the whole
/// file when the filesystem cannot say.
fn data_extents(file: &std::fs::File, size: u64) -> Vec<(u64, u64)> {
    use nix::unistd::{lseek, Whence};
    use std::os::fd::AsRawFd;
    let mut out = Vec::new();
    let mut at = 0i64;
    let size_i = i64::try_from(size).unwrap_or(i64::MAX);
    while at < size_i {
        let data = match lseek(file.as_raw_fd(), at, Whence::SeekData) {
            Ok(d) => d,
            // Only a hole remains.
            Err(nix::errno::Errno::ENXIO) => break,
            // No hole support here: read it all.
            Err(_) => return vec![(0, size)],
        };
        let hole = lseek(file.as_raw_fd(), data, Whence::SeekHole).unwrap_or(size_i).min(size_i);
        if hole <= data {
            break;
        }
        out.push((data as u64, hole as u64));
        at = hole;
    }
    out
}

/// What [`cut_sparse_file`] hands on: a chunk read, or `count` zero chunks of `len` bytes
/// known without reading.
pub(crate) enum Piece<'a> {
    /// A chunk's bytes.
    Data(&'a [u8]),
    /// Zero chunks.
    Zeros {
        /// Length of each.
        len: u64,
        /// How many.
        count: u64,
    },
}

/// Cut a regular file (a disk image) exactly as [`cut_stream`] would, without reading its
/// holes: where a chunk starts inside a hole with at least one zero period left, the zero
/// chunks up to the hole's end are known without reading ([`Piece::Zeros`]); only data
/// extents and the zeros next to them are read and cut. Returns the bytes cut.
pub(crate) fn cut_sparse_file<E>(
    file: &std::fs::File,
    c: ChunkerParams,
    buf: &mut Vec<u8>,
    mut each: impl FnMut(Piece<'_>) -> std::result::Result<(), E>,
) -> std::result::Result<u64, CutError<E>> {
    use std::os::unix::fs::FileExt;
    let size = file.metadata().map_err(CutError::Read)?.len();
    let extents = data_extents(file, size);
    let period = zero_period(c);
    let window = (2 * c.max_size as usize).max(4 << 20) as u64;
    // The hole holding `at`, as its end, when `at` is in one.
    let hole_end = |at: u64| -> Option<u64> {
        let i = extents.partition_point(|(_, e)| *e <= at);
        match extents.get(i) {
            Some((s, _)) if *s <= at => None,
            Some((s, _)) => Some(*s),
            None => Some(size),
        }
    };
    let mut start = 0u64;
    while start < size {
        if let Some(end) = hole_end(start) {
            let k = (end - start) / period;
            if k > 0 {
                each(Piece::Zeros { len: period, count: k }).map_err(CutError::Each)?;
                start += k * period;
                continue;
            }
        }
        // Materialize [start, stop): data read from the file, holes as zeros.
        let stop = (start + window).min(size);
        let len = (stop - start) as usize;
        buf.clear();
        buf.resize(len, 0);
        let first = extents.partition_point(|(_, e)| *e <= start);
        for (s, e) in extents[first..].iter().take_while(|(s, _)| *s < stop) {
            let (a, b) = ((*s).max(start), (*e).min(stop));
            file.read_exact_at(&mut buf[(a - start) as usize..(b - start) as usize], a).map_err(CutError::Read)?;
        }
        let eof = stop == size;
        let mut consumed = 0usize;
        for chunk in fastcdc::v2020::FastCDC::new(&buf[..len], c.min_size, c.avg_size, c.max_size) {
            let end = chunk.offset + chunk.length;
            if end == len && !eof {
                break; // may continue past the window: cut again from its start
            }
            each(Piece::Data(&buf[chunk.offset..end])).map_err(CutError::Each)?;
            consumed = end;
            // A cut inside a long hole: let the fast path take the rest of it.
            let at = start + end as u64;
            if hole_end(at).is_some_and(|e| e - at >= period) {
                break;
            }
        }
        if consumed == 0 && !eof {
            // Not one whole chunk in a window: cannot happen with windows ≥ 2 × max_size.
            return Err(CutError::Read(std::io::Error::other("chunking window too small")));
        }
        start += consumed as u64;
        if eof && consumed == len {
            break;
        }
    }
    Ok(size)
}

/// [`cut_stream`] with the engine's errors: a read failure is invalid input (a truncated
/// upload), a callback failure passes through.
fn cut(reader: &mut dyn Read, c: ChunkerParams, each: impl FnMut(&[u8]) -> Result<()>) -> Result<u64> {
    cut_stream(reader, c, &mut Vec::new(), each).map_err(|e| match e {
        CutError::Read(e) => Error::invalid(format!("reading the image: {e}")),
        CutError::Each(e) => e,
    })
}

/// A stored version, opened for reading.
#[derive(Debug)]
pub struct OpenedImage {
    /// Its snapshot.
    pub snapshot: SnapshotEntry,
    /// `(blob, offset, length)` of each chunk of the disk.
    pub layout: Vec<(Id, u64, u64)>,
    /// The chunk manifest.
    pub manifest: Manifest,
}

/// Open version snapshot `snapshot_id` (a full id or unique prefix).
pub fn open(repo: &Repository, index: &MasterIndex, snapshot_id: &str) -> Result<OpenedImage> {
    let snapshot = repo.find_snapshot(snapshot_id)?;
    let root = repo.load_tree(index, &snapshot.snapshot.tree)?;
    let node = |name: &str| {
        root.nodes
            .iter()
            .find(|n| n.name.0 == name.as_bytes() && n.kind == NodeKind::File)
            .ok_or_else(|| Error::corrupt(format!("snapshot {} holds no {name}: not an image version", snapshot.id)))
    };
    let disk = node(DISK)?;
    let layout = crate::flash::layout(index, &disk.content)?;
    let mut bytes = Vec::with_capacity(usize::try_from(node(MANIFEST)?.size).unwrap_or(0));
    for id in &node(MANIFEST)?.content {
        bytes.extend_from_slice(&repo.read_blob(index, id)?);
    }
    let manifest = Manifest::decode(&bytes, u32::MAX)?;
    if manifest.chunks.len() != layout.len()
        || manifest.chunks.iter().zip(&layout).any(|((len, _), (_, _, l))| u64::from(*len) != *l)
    {
        return Err(Error::corrupt(format!(
            "snapshot {}: the manifest does not describe the disk's chunks",
            snapshot.id
        )));
    }
    Ok(OpenedImage { snapshot, layout, manifest })
}

impl OpenedImage {
    /// Disk size.
    pub fn size(&self) -> u64 {
        self.layout.last().map_or(0, |(_, off, len)| off + len)
    }

    /// Hash → blob of every chunk: what a delta upload with this version as parent need
    /// not send.
    pub fn known(&self) -> HashMap<PlainHash, Id> {
        self.manifest.chunks.iter().zip(&self.layout).map(|((_, h), (id, _, _))| (*h, *id)).collect()
    }

    /// Write the bytes of each `start..end` range of the disk to `out`, back to back (the delta
    /// flash's batched fetch); every range must lie within the disk.
    pub fn write_ranges(
        &self,
        repo: &Repository,
        index: &MasterIndex,
        cache: Option<&BlobCache>,
        ranges: &[(u64, u64)],
        out: &mut dyn Write,
    ) -> Result<u64> {
        let size = self.size();
        if let Some((a, b)) = ranges.iter().find(|(a, b)| a >= b || *b > size) {
            return Err(Error::invalid(format!("range {a}..{b} is not within the image's {size} bytes")));
        }
        ranges.iter().try_fold(0, |n, (a, b)| Ok(n + self.write_range(repo, index, cache, *a, *b, out)?))
    }

    /// Write bytes `start..end` of the disk to `out`. Chunks come from `cache` when it holds
    /// them (machines flashing one version at once share the reads); a chunk repeated back to
    /// back (the zeros of a fresh disk) is read once.
    pub fn write_range(
        &self,
        repo: &Repository,
        index: &MasterIndex,
        cache: Option<&BlobCache>,
        start: u64,
        end: u64,
        out: &mut dyn Write,
    ) -> Result<u64> {
        let end = end.min(self.size());
        if start >= end {
            return Ok(0);
        }
        let first = self.layout.partition_point(|(_, off, len)| off + len <= start);
        let mut last: Option<(Id, Arc<Vec<u8>>)> = None;
        let mut written = 0u64;
        for (id, off, len) in &self.layout[first..] {
            if *off >= end {
                break;
            }
            let data = match &last {
                Some((l, d)) if l == id => d.clone(),
                _ => {
                    let d = match cache {
                        Some(c) => c.get_or_read(id, || repo.read_blob(index, id))?,
                        None => Arc::new(repo.read_blob(index, id)?),
                    };
                    last = Some((*id, d.clone()));
                    d
                }
            };
            if data.len() as u64 != *len {
                return Err(Error::corrupt(format!("chunk {} is not {len} bytes long", id.short())));
            }
            let from = start.saturating_sub(*off) as usize;
            let to = (end - off).min(*len) as usize;
            out.write_all(&data[from..to]).map_err(|e| Error::io("sending the image", e))?;
            written += (to - from) as u64;
        }
        Ok(written)
    }
}

/// Plaintext chunks recently served, shared by everyone reading image versions: 20 machines
/// flashing one version at once decrypt and decompress each chunk about once, not 20 times.
/// Bounded by bytes; the least recently used go first.
pub struct BlobCache {
    budget: usize,
    inner: std::sync::Mutex<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    map: HashMap<Id, (Arc<Vec<u8>>, u64)>,
    bytes: usize,
    tick: u64,
}

impl BlobCache {
    /// A cache of at most `budget` bytes of chunks.
    pub fn new(budget: usize) -> Self {
        Self { budget, inner: std::sync::Mutex::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheInner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The chunk `id`, read with `read` unless cached.
    pub fn get_or_read(&self, id: &Id, read: impl FnOnce() -> Result<Vec<u8>>) -> Result<Arc<Vec<u8>>> {
        {
            let mut g = self.lock();
            g.tick += 1;
            let tick = g.tick;
            if let Some((data, used)) = g.map.get_mut(id) {
                *used = tick;
                return Ok(data.clone());
            }
        }
        let data = Arc::new(read()?);
        let mut g = self.lock();
        g.tick += 1;
        let tick = g.tick;
        if g.map.insert(*id, (data.clone(), tick)).is_none() {
            g.bytes += data.len();
        }
        if g.bytes > self.budget {
            // Drop the least recently used quarter of the budget at once (rarely, in bulk).
            let mut by_age: Vec<(u64, Id, usize)> = g.map.iter().map(|(k, (d, t))| (*t, *k, d.len())).collect();
            by_age.sort_unstable_by_key(|(t, _, _)| *t);
            let target = self.budget / 4 * 3;
            for (_, k, n) in by_age {
                if g.bytes <= target {
                    break;
                }
                g.map.remove(&k);
                g.bytes -= n;
            }
        }
        Ok(data)
    }
}

/// The manifest of a disk as read from `reader`, cut with `c` (a machine syncing its disk
/// back cuts exactly as the server would).
pub fn manifest_of(reader: &mut dyn Read, c: ChunkerParams) -> Result<Manifest> {
    let mut m = Manifest::default();
    let mut zero_hashes: HashMap<usize, PlainHash> = HashMap::new();
    cut(reader, c, |chunk| {
        let hash = if chunk.iter().all(|b| *b == 0) {
            *zero_hashes.entry(chunk.len()).or_insert_with(|| *blake3::hash(chunk).as_bytes())
        } else {
            *blake3::hash(chunk).as_bytes()
        };
        m.chunks.push((chunk.len() as u32, hash));
        Ok(())
    })?;
    Ok(m)
}
