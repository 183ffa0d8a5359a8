//! The write pipeline shared by backup and prune's repacking.
//!
//! Producers (the walker) hash chunks and hand new blobs to [`BlobWriter::add`]; a pool of
//! sealer threads compresses and encrypts them; one packer thread fills packs and uploads them
//! with bounded concurrency, writing an index file every [`INDEX_EVERY`] packs so an
//! interrupted run keeps most of its work. Every channel is bounded, so memory stays at about
//! `(sealers + queue) × max chunk + (uploads + 1) × pack size` whatever the input size.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;
use std::thread::{Scope, ScopedJoinHandle};

use bytes::Bytes;
use crossbeam_channel::{bounded, Receiver, Sender};

use crate::error::{Error, ErrorKind, Result};
use crate::id::Id;
use crate::index::{IndexFile, MasterIndex};
use crate::pack::{pack_key, BlobKind, PackBuilder, PackStream};
use crate::repo::Repository;

/// Packs per intermediate index file.
pub const INDEX_EVERY: usize = 32;
/// Blobs travel between threads in batches of about this many bytes (or [`BATCH_COUNT`]
/// blobs): one channel hand-off per small file costs more than sealing it.
const BATCH_BYTES: usize = 2 * 1024 * 1024;
const BATCH_COUNT: usize = 256;

struct RawBlob {
    kind: BlobKind,
    id: Id,
    data: Vec<u8>,
}

struct SealedBlob {
    kind: BlobKind,
    id: Id,
    sealed: Vec<u8>,
    raw_len: usize,
}

/// What the packer did.
#[derive(Debug, Default, Clone)]
pub struct WriteStats {
    /// Packs uploaded.
    pub packs: u64,
    /// Sealed bytes written into packs.
    pub packed_bytes: u64,
    /// Index files written.
    pub index_files: Vec<Id>,
}

/// Tuning for the pipeline.
#[derive(Debug, Clone, Copy)]
pub struct PipelineOptions {
    /// Sealer threads.
    pub sealers: usize,
    /// Concurrent pack uploads.
    pub uploads: usize,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        Self { sealers: cores, uploads: 2 }
    }
}

/// Front end of the pipeline, owned by the producer thread.
pub struct BlobWriter<'scope, 'env> {
    repo: &'env Repository,
    known: &'env MasterIndex,
    /// 128-bit prefixes of the blobs queued by this writer (as [`MasterIndex`] keeps them):
    /// 16 bytes per new blob instead of 32 — a first backup of 10M files queues 10M.
    new_ids: HashSet<u128>,
    tx: Option<Sender<Vec<RawBlob>>>,
    batch: Vec<RawBlob>,
    batch_bytes: usize,
    sealers: Vec<ScopedJoinHandle<'scope, Result<()>>>,
    packer: Option<ScopedJoinHandle<'scope, Result<WriteStats>>>,
    /// Blobs handed to the pipeline (not deduplicated away), by kind: (data, tree).
    pub added: (u64, u64),
    /// Plaintext bytes handed to the pipeline.
    pub added_bytes: u64,
}

impl<'scope, 'env> BlobWriter<'scope, 'env> {
    /// Start sealers and packer inside `scope`.
    pub fn start(
        scope: &'scope Scope<'scope, 'env>,
        repo: &'env Repository,
        known: &'env MasterIndex,
        opts: PipelineOptions,
    ) -> Self {
        let sealers_n = opts.sealers.max(1);
        // One batch queued per sealer each way keeps every stage busy; more only holds memory.
        let (tx, rx) = bounded::<Vec<RawBlob>>(sealers_n);
        let (ptx, prx) = bounded::<Vec<SealedBlob>>(sealers_n);
        let sealers = (0..sealers_n)
            .map(|_| {
                let rx = rx.clone();
                let ptx = ptx.clone();
                std::thread::Builder::new()
                    .name("bams-seal".into())
                    .spawn_scoped(scope, move || seal_loop(repo, &rx, &ptx))
                    .expect("spawn sealer")
            })
            .collect();
        drop(ptx);
        let uploads = opts.uploads.max(1);
        let packer = std::thread::Builder::new()
            .name("bams-pack".into())
            .spawn_scoped(scope, move || pack_loop(repo, &prx, uploads))
            .expect("spawn packer");
        Self {
            repo,
            known,
            new_ids: HashSet::new(),
            tx: Some(tx),
            batch: Vec::new(),
            batch_bytes: 0,
            sealers,
            packer: Some(packer),
            added: (0, 0),
            added_bytes: 0,
        }
    }

    /// Is the blob already stored or queued?
    pub fn has(&self, id: &Id) -> bool {
        self.known.contains(id) || self.new_ids.contains(&crate::index::key_of(id))
    }

    /// Hash `data` and queue it unless already stored; returns its id.
    pub fn add(&mut self, kind: BlobKind, data: Vec<u8>) -> Result<Id> {
        let id = self.repo.key().blob_id(&data);
        self.add_with_id(kind, id, data)?;
        Ok(id)
    }

    /// Queue a blob whose id the caller computed; returns whether it was new. Borrowed data is
    /// copied only when the blob is new.
    pub fn add_with_id<'a>(&mut self, kind: BlobKind, id: Id, data: impl Into<Cow<'a, [u8]>>) -> Result<bool> {
        if self.known.contains(&id) || !self.new_ids.insert(crate::index::key_of(&id)) {
            return Ok(false);
        }
        let data = data.into().into_owned();
        match kind {
            BlobKind::Data => self.added.0 += 1,
            BlobKind::Tree => self.added.1 += 1,
        }
        self.added_bytes += data.len() as u64;
        self.batch_bytes += data.len();
        self.batch.push(RawBlob { kind, id, data });
        if self.batch_bytes >= BATCH_BYTES || self.batch.len() >= BATCH_COUNT {
            self.flush()?;
        }
        Ok(true)
    }

    fn flush(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        let tx = self.tx.as_ref().ok_or_else(|| Error::new(ErrorKind::Other, "pipeline closed"))?;
        if tx.send(batch).is_err() {
            // A stage died; its error is reported by finish().
            return Err(Error::new(ErrorKind::Other, "write pipeline stopped"));
        }
        Ok(())
    }

    /// Flush everything, wait for uploads and the last index file.
    pub fn finish(mut self) -> Result<WriteStats> {
        let flushed = self.flush();
        self.tx.take();
        let mut first_err = None;
        for s in self.sealers.drain(..) {
            match s.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => first_err = first_err.or(Some(e)),
                Err(_) => first_err = first_err.or(Some(Error::new(ErrorKind::Other, "sealer thread panicked"))),
            }
        }
        let packer = self.packer.take().map(|p| p.join());
        let stats = match packer {
            Some(Ok(Ok(stats))) => Some(stats),
            Some(Ok(Err(e))) => return Err(e),
            _ => return Err(Error::new(ErrorKind::Other, "packer thread panicked")),
        };
        if let Err(e) = flushed {
            first_err = first_err.or(Some(e));
        }
        match (first_err, stats) {
            (Some(e), _) => Err(e),
            (None, Some(s)) => Ok(s),
            (None, None) => Err(Error::new(ErrorKind::Other, "pipeline produced no result")),
        }
    }
}

fn seal_loop(repo: &Repository, rx: &Receiver<Vec<RawBlob>>, ptx: &Sender<Vec<SealedBlob>>) -> Result<()> {
    let level = repo.compression();
    for batch in rx {
        let mut out = Vec::with_capacity(batch.len());
        for raw in batch {
            // Trees are JSON and compress well; data too unless incompressible (seal decides).
            let sealed = repo.key().seal(&raw.data, level)?;
            out.push(SealedBlob { kind: raw.kind, id: raw.id, sealed, raw_len: raw.data.len() });
        }
        if ptx.send(out).is_err() {
            return Ok(()); // packer failed; it reports why
        }
    }
    Ok(())
}

type Upload = tokio::task::JoinHandle<Result<(Id, Vec<crate::pack::PackEntry>)>>;

fn pack_loop(repo: &Repository, rx: &Receiver<Vec<SealedBlob>>, uploads: usize) -> Result<WriteStats> {
    let pack_size = repo.config().pack_size as usize;
    let sem = Arc::new(tokio::sync::Semaphore::new(uploads));
    let mut stats = WriteStats::default();
    let mut pending: Vec<Upload> = Vec::new();
    let mut unindexed = IndexFile::default();
    // Trees and data go to separate packs: tree packs are small and read whole (and cached)
    // when walking snapshots, without touching the data.
    // Packs go straight to the backend where it takes them piece by piece (a local
    // directory): memory then holds no pack at all.
    let fresh_pack = |kind: BlobKind| -> Result<OpenPack> {
        match repo.backend().sink() {
            Some(sink) => Ok(OpenPack::Stream(Box::new(PackStream::new(sink?)))),
            None if kind == BlobKind::Data => {
                Ok(OpenPack::Memory(PackBuilder::with_capacity(pack_size + (pack_size / 4))))
            }
            None => Ok(OpenPack::Memory(PackBuilder::default())),
        }
    };
    let mut packs = [fresh_pack(BlobKind::Data)?, fresh_pack(BlobKind::Tree)?];

    let result = (|| -> Result<()> {
        for blob in rx.iter().flatten() {
            stats.packed_bytes += blob.sealed.len() as u64;
            let pack = &mut packs[blob.kind as usize];
            pack.add(blob.kind, blob.id, &blob.sealed, blob.raw_len)?;
            if pack.size() >= pack_size {
                let full = std::mem::replace(pack, fresh_pack(blob.kind)?);
                pending.push(upload(repo, full, &sem)?);
                stats.packs += 1;
                reap(repo, &mut pending, &mut unindexed, &mut stats, false)?;
            }
        }
        for pack in &mut packs {
            if !pack.is_empty() {
                let last = std::mem::replace(pack, OpenPack::Memory(PackBuilder::default()));
                pending.push(upload(repo, last, &sem)?);
                stats.packs += 1;
            }
        }
        reap(repo, &mut pending, &mut unindexed, &mut stats, true)
    })();
    if let Err(e) = result {
        // Let in-flight uploads finish so nothing is left half-written by us, then report.
        for p in pending {
            let _ = repo.runtime().block_on(p);
        }
        return Err(e);
    }
    Ok(stats)
}

/// A pack being filled: in memory, or streamed to the backend.
enum OpenPack {
    Memory(PackBuilder),
    Stream(Box<PackStream>),
}

impl OpenPack {
    fn add(&mut self, kind: BlobKind, id: Id, sealed: &[u8], raw_len: usize) -> Result<()> {
        match self {
            Self::Memory(p) => {
                p.add(kind, id, sealed, raw_len);
                Ok(())
            }
            Self::Stream(p) => p.add(kind, id, sealed, raw_len),
        }
    }

    fn size(&self) -> usize {
        match self {
            Self::Memory(p) => p.size(),
            Self::Stream(p) => p.size(),
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Self::Memory(p) => p.is_empty(),
            Self::Stream(p) => p.is_empty(),
        }
    }
}

/// Finish `pack` and store it in the background (at most `sem`'s permits at once): upload the
/// bytes, or make a streamed pack durable under its name.
fn upload(repo: &Repository, pack: OpenPack, sem: &Arc<tokio::sync::Semaphore>) -> Result<Upload> {
    let permit = repo
        .runtime()
        .block_on(sem.clone().acquire_owned())
        .map_err(|_| Error::new(ErrorKind::Other, "upload semaphore closed"))?;
    match pack {
        OpenPack::Memory(pack) => {
            let (id, bytes, entries) = pack.finish(repo.key())?;
            let backend = repo.backend().clone();
            Ok(repo.runtime().spawn(async move {
                let _permit = permit;
                backend.put(&pack_key(&id), Bytes::from(bytes)).await?;
                Ok((id, entries))
            }))
        }
        OpenPack::Stream(pack) => {
            let (id, sink, entries) = pack.finish(repo.key())?;
            Ok(repo.runtime().spawn_blocking(move || {
                let _permit = permit;
                sink.install(&pack_key(&id))?;
                Ok((id, entries))
            }))
        }
    }
}

/// Collect finished uploads; write an index file when enough packs (or all, at the end) landed.
fn reap(
    repo: &Repository,
    pending: &mut Vec<Upload>,
    unindexed: &mut IndexFile,
    stats: &mut WriteStats,
    all: bool,
) -> Result<()> {
    let mut still = Vec::new();
    for p in pending.drain(..) {
        if all || p.is_finished() {
            let (id, entries) = repo
                .runtime()
                .block_on(p)
                .map_err(|e| Error::new(ErrorKind::Other, format!("upload task failed: {e}")))??;
            unindexed.packs.push((id, entries));
        } else {
            still.push(p);
        }
    }
    *pending = still;
    if (all && !unindexed.packs.is_empty()) || unindexed.packs.len() >= INDEX_EVERY {
        let id = repo.save_index(unindexed)?;
        stats.index_files.push(id);
        unindexed.packs.clear();
    }
    Ok(())
}
