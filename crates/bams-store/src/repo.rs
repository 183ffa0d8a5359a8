//! An opened repository: backend + master key + config, with sync helpers over the async
//! backend. Engine code runs on plain threads (CPU work) and calls the backend through the
//! runtime handle; call these methods from outside tokio worker threads (e.g. `spawn_blocking`).

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;

use crate::backend::{DynBackend, ObjectInfo};
use crate::crypto::{KdfParams, KeySlot, MasterKey, SlotKind};
use crate::error::{Error, ErrorKind, Result};
use crate::id::Id;
use crate::index::{IndexFile, MasterIndex};
use crate::pack::{header_range, pack_key, parse_header, BlobKind, PackEntry};
use crate::snapshot::{snapshot_key, Snapshot, SnapshotEntry};
use crate::tree::Tree;

const CONFIG_MAGIC: &[u8; 9] = b"BAMSREPO\x01";
/// Reads that fail verification (a bit flipped or a body cut short on the way) are read again
/// this many times in all before the damage is reported: damage in transit goes away on a
/// second read, damage at rest does not.
const READ_ATTEMPTS: u32 = 3;
/// Repository format version written by this program.
pub const FORMAT_VERSION: u32 = 1;

/// Chunker sizes (bytes). Stored in the config so every client cuts identically.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChunkerParams {
    /// Smallest chunk.
    pub min_size: u32,
    /// Target average.
    pub avg_size: u32,
    /// Largest chunk.
    pub max_size: u32,
}

impl Default for ChunkerParams {
    fn default() -> Self {
        Self { min_size: 256 * 1024, avg_size: 1024 * 1024, max_size: 4 * 1024 * 1024 }
    }
}

impl ChunkerParams {
    /// Chunks for disk images and block devices. A filesystem changes in scattered 4 KiB
    /// blocks (inodes, bitmaps, small files); with 1 MiB chunks each touched block re-stores a
    /// megabyte, so images are cut finer to keep a new version close to the bytes that changed.
    pub fn image() -> Self {
        // Measured on the bench's 3 GiB ext4 image (70 MiB of 4 KiB blocks changed): 16/32/64/128
        // KiB averages add 55/77/105/135 MiB for v2 and 414/408/400/390 MiB for v1. 32 KiB
        // keeps v2 near the changed bytes without quadrupling the index of a large disk.
        Self { min_size: 8 * 1024, avg_size: 32 * 1024, max_size: 128 * 1024 }
    }
}

fn image_chunker_default() -> ChunkerParams {
    ChunkerParams::image()
}

/// Repository-wide settings (`config`, sealed after a plaintext magic).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RepoConfig {
    /// Format version.
    pub version: u32,
    /// Random repository id (keys caches, names the repository in logs).
    pub id: Id,
    /// Content-defined chunking parameters.
    pub chunker: ChunkerParams,
    /// Chunking for new data of block devices and files backed up with `--image` (cut with
    /// `chunker` first; pieces the repository already has stay whole).
    #[serde(default = "image_chunker_default")]
    pub image_chunker: ChunkerParams,
    /// zstd level; 0 disables compression, negative levels are zstd's fast ones.
    pub compression: i32,
    /// Target pack size in bytes.
    pub pack_size: u32,
}

/// Options for `repo init`.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// zstd level (0 = off, negative = zstd's fast levels).
    pub compression: i32,
    /// Target pack size.
    pub pack_size: u32,
    /// Chunker sizes.
    pub chunker: ChunkerParams,
    /// Argon2id costs for the first key slot.
    pub kdf: KdfParams,
    /// Share blob ids (and chunker settings) with this repository, so `bams copy` between
    /// the two finds existing blobs by lookup instead of re-hashing everything.
    pub ids_from: Option<(MasterKey, RepoConfig)>,
}

/// zstd level of new repositories. Level 1 rather than zstd's own default of 3: on the bench's
/// tree (issue 18) it backed up 18 % faster with 5 % more stored (level 3's double hash
/// table was half of a warm backup's CPU), and dedup, not the level, decides most of a
/// repository's size. `repo init --compression` chooses another; zstd's fast levels (-1 to
/// -7) skip the entropy coding of literals and trade size for speed (on the same tree, session
/// 16: -1 stored 12 % more for a backup 5 % shorter, -3 23 % more for 8 %); the default keeps
/// the smaller repository.
pub const DEFAULT_COMPRESSION: i32 = 1;

impl Default for InitOptions {
    fn default() -> Self {
        Self {
            compression: DEFAULT_COMPRESSION,
            pack_size: crate::pack::DEFAULT_PACK_SIZE as u32,
            chunker: ChunkerParams::default(),
            kdf: KdfParams::default(),
            ids_from: None,
        }
    }
}

/// The master key and the slot that yielded it ([`Repository::unlocked`]); its `Debug` shows
/// no key material.
#[derive(Clone)]
pub struct Unlocked {
    key: MasterKey,
    slot: Id,
}

impl std::fmt::Debug for Unlocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unlocked").field("slot", &self.slot).finish_non_exhaustive()
    }
}

/// An open repository.
pub struct Repository {
    tree_packs: std::sync::Mutex<TreePackCache>,
    cache: Option<crate::cache::ObjectCache>,
    backend: DynBackend,
    rt: Handle,
    key: MasterKey,
    config: RepoConfig,
    key_slot: Id,
}

fn key_slot_key(id: &Id) -> String {
    format!("keys/{id}")
}

fn index_key(id: &Id) -> String {
    format!("index/{id}")
}

impl Repository {
    /// Create a new repository with one key slot for `secret`.
    pub fn init(backend: DynBackend, rt: Handle, secret: &[u8], kind: SlotKind, opts: &InitOptions) -> Result<Self> {
        let location = backend.location();
        if rt.block_on(backend.head("config"))?.is_some() {
            return Err(Error::new(ErrorKind::Conflict, format!("{location}: a repository already exists here")));
        }
        if !rt.block_on(backend.list("keys/"))?.is_empty() {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!("{location}: key slots exist but no config; refusing to overwrite"),
            ));
        }
        let key = match &opts.ids_from {
            Some((other, _)) => MasterKey::sharing_ids_with(other),
            None => MasterKey::generate(),
        };
        let slot = KeySlot::wrap(&key, secret, kind, "initial", opts.kdf)?;
        let slot_bytes = serde_json::to_vec_pretty(&slot)?;
        let slot_id = Id::hash_of(&slot_bytes);
        rt.block_on(backend.put(&key_slot_key(&slot_id), Bytes::from(slot_bytes)))?;
        let config = RepoConfig {
            version: FORMAT_VERSION,
            id: Id::random(),
            // Same ids only help when chunks are cut the same way.
            chunker: opts.ids_from.as_ref().map_or(opts.chunker, |(_, c)| c.chunker),
            image_chunker: opts.ids_from.as_ref().map_or_else(ChunkerParams::image, |(_, c)| c.image_chunker),
            compression: opts.compression,
            pack_size: opts.pack_size,
        };
        let mut data = CONFIG_MAGIC.to_vec();
        data.extend(key.seal(&serde_json::to_vec(&config)?, None)?);
        // The config is written last: its presence marks a complete repository.
        rt.block_on(backend.put("config", Bytes::from(data)))?;
        Ok(Self { tree_packs: Default::default(), cache: None, backend, rt, key, config, key_slot: slot_id })
    }

    /// Open with a password or key-file contents, trying every key slot.
    pub fn open(backend: DynBackend, rt: Handle, secret: &[u8]) -> Result<Self> {
        let raw = Self::read_config(&backend, &rt)?;
        let slots = Self::read_slots(&backend, &rt)?;
        for (slot_id, slot) in slots {
            // A slot that cannot be used (unknown KDF, limits exceeded) is skipped, not fatal:
            // another slot may open the repository.
            let unwrapped = match slot.unwrap_key(secret) {
                Ok(k) => k,
                Err(e) => {
                    tracing::warn!("skipping key slot {slot_id}: {e}");
                    None
                }
            };
            if let Some(key) = unwrapped {
                let config = Self::open_config(&key, &raw)?;
                return Ok(Self {
                    tree_packs: Default::default(),
                    cache: None,
                    backend,
                    rt,
                    key,
                    config,
                    key_slot: slot_id,
                });
            }
        }
        Err(Error::new(ErrorKind::WrongPassword, "wrong password or no key slot matches"))
    }

    /// What opening a key slot yielded, for [`Repository::open_unlocked`].
    pub fn unlocked(&self) -> Unlocked {
        Unlocked { key: self.key.clone(), slot: self.key_slot }
    }

    /// Open with what an earlier open unlocked, skipping the key derivation (Argon2id: ~0.1 s
    /// and 32 MiB each time), for long-running clients such as agents. The config is read
    /// afresh and must open with that key: a repository replaced under the same name fails
    /// with `WrongPassword`, and the caller opens it with its secret again.
    pub fn open_unlocked(backend: DynBackend, rt: Handle, unlocked: &Unlocked) -> Result<Self> {
        let raw = Self::read_config(&backend, &rt)?;
        let config = Self::open_config(&unlocked.key, &raw)
            .map_err(|e| Error::new(ErrorKind::WrongPassword, format!("the remembered key no longer opens it: {e}")))?;
        Ok(Self {
            tree_packs: Default::default(),
            cache: None,
            backend,
            rt,
            key: unlocked.key.clone(),
            config,
            key_slot: unlocked.slot,
        })
    }

    fn read_config(backend: &DynBackend, rt: &Handle) -> Result<Bytes> {
        let location = backend.location();
        let raw = match rt.block_on(backend.get("config")) {
            Ok(raw) => raw,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                // The cause tells a missing bucket or directory from an empty one.
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!("{location} is not a BAMS repository (no config); create one with `bams repo init` ({e})"),
                ));
            }
            Err(e) => return Err(e),
        };
        if raw.get(..CONFIG_MAGIC.len()) != Some(CONFIG_MAGIC.as_slice()) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("{location} is not a BAMS repository (unknown config format)"),
            ));
        }
        Ok(raw)
    }

    fn open_config(key: &MasterKey, raw: &[u8]) -> Result<RepoConfig> {
        let plain = key.open(&raw[CONFIG_MAGIC.len()..], &"config")?;
        let config: RepoConfig = serde_json::from_slice(&plain)?;
        if config.version > FORMAT_VERSION {
            return Err(Error::invalid(format!(
                "repository format {} is newer than this program supports ({FORMAT_VERSION})",
                config.version
            )));
        }
        Ok(config)
    }

    fn read_slots(backend: &DynBackend, rt: &Handle) -> Result<Vec<(Id, KeySlot)>> {
        let mut out = Vec::new();
        for obj in rt.block_on(backend.list("keys/"))? {
            let name = obj.key.trim_start_matches("keys/");
            let Ok(id) = Id::from_hex(name) else { continue };
            let bytes = rt.block_on(backend.get(&obj.key))?;
            // Damaged or planted slots are reported and skipped: they must not lock out the
            // slots that work.
            if Id::hash_of(&bytes) != id {
                tracing::warn!("skipping key slot {id}: content does not match its name");
                continue;
            }
            match serde_json::from_slice::<KeySlot>(&bytes) {
                Ok(slot) => out.push((id, slot)),
                Err(e) => tracing::warn!("skipping key slot {id}: {e}"),
            }
        }
        Ok(out)
    }

    /// All key slots.
    pub fn key_slots(&self) -> Result<Vec<(Id, KeySlot)>> {
        Self::read_slots(&self.backend, &self.rt)
    }

    /// The slot that opened this session.
    pub fn current_key_slot(&self) -> Id {
        self.key_slot
    }

    /// Add a key slot for another password or key file.
    pub fn add_key(&self, secret: &[u8], kind: SlotKind, label: &str, params: KdfParams) -> Result<Id> {
        let slot = KeySlot::wrap(&self.key, secret, kind, label, params)?;
        let bytes = serde_json::to_vec_pretty(&slot)?;
        let id = Id::hash_of(&bytes);
        self.put(&key_slot_key(&id), bytes)?;
        Ok(id)
    }

    /// Remove a key slot; refuses the last one and the one in use.
    pub fn remove_key(&self, id: &Id) -> Result<()> {
        let slots = self.key_slots()?;
        if !slots.iter().any(|(s, _)| s == id) {
            return Err(Error::not_found(format!("no key slot {id}")));
        }
        if *id == self.key_slot {
            return Err(Error::new(
                ErrorKind::Conflict,
                "refusing to remove the key slot in use; open with another key to remove it",
            ));
        }
        if slots.len() <= 1 {
            return Err(Error::new(ErrorKind::Conflict, "refusing to remove the last key slot"));
        }
        self.delete(&key_slot_key(id))
    }

    /// Repository settings.
    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    /// The master key (sealing, blob ids).
    pub fn key(&self) -> &MasterKey {
        &self.key
    }

    /// Runtime used to drive the backend.
    pub fn runtime(&self) -> &Handle {
        &self.rt
    }

    /// The backend.
    pub fn backend(&self) -> &DynBackend {
        &self.backend
    }

    /// Where the repository is.
    pub fn location(&self) -> String {
        self.backend.location()
    }

    /// Keep index files and snapshots in a local cache under `base` (worth it for remote
    /// repositories, where each one is a request).
    pub fn enable_cache(&mut self, base: &std::path::Path) -> Result<()> {
        self.cache = Some(crate::cache::ObjectCache::open(base, &self.config.id)?);
        Ok(())
    }

    /// Run `read` again when what it read fails verification, up to [`READ_ATTEMPTS`].
    pub fn verified<T>(&self, what: &dyn std::fmt::Display, mut read: impl FnMut() -> Result<T>) -> Result<T> {
        let mut attempt = 1;
        loop {
            match read() {
                Err(e) if e.kind() == ErrorKind::Corrupt && attempt < READ_ATTEMPTS => {
                    tracing::warn!("{what}: {e}; reading it again");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Compression level as used by `seal`.
    pub fn compression(&self) -> Option<i32> {
        (self.config.compression != 0).then_some(self.config.compression)
    }

    // ---- raw backend helpers (sync) ----

    /// Whole object.
    pub fn get(&self, key: &str) -> Result<Bytes> {
        self.rt.block_on(self.backend.get(key))
    }

    /// Byte range of an object.
    pub fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes> {
        self.rt.block_on(self.backend.get_range(key, offset, len))
    }

    /// Store an object.
    pub fn put(&self, key: &str, data: Vec<u8>) -> Result<()> {
        self.rt.block_on(self.backend.put(key, Bytes::from(data)))
    }

    /// Delete an object.
    pub fn delete(&self, key: &str) -> Result<()> {
        self.rt.block_on(self.backend.delete(key))
    }

    /// List objects under a prefix.
    pub fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.rt.block_on(self.backend.list(prefix))
    }

    /// Fetch many objects concurrently (bounded), preserving order.
    pub fn get_many(&self, keys: Vec<String>) -> Vec<Result<Bytes>> {
        let backend = self.backend.clone();
        self.rt.block_on(async move {
            let sem = Arc::new(tokio::sync::Semaphore::new(16));
            let handles: Vec<_> = keys
                .into_iter()
                .map(|k| {
                    let b = backend.clone();
                    let sem = sem.clone();
                    tokio::spawn(async move {
                        let _permit = sem.acquire_owned().await;
                        b.get(&k).await
                    })
                })
                .collect();
            let mut out = Vec::with_capacity(handles.len());
            for h in handles {
                out.push(h.await.unwrap_or_else(|e| Err(Error::new(ErrorKind::Other, format!("task failed: {e}")))));
            }
            out
        })
    }

    /// Seal `plain` and store it as `<dir>/<hash of stored bytes>`; returns that id.
    pub fn save_sealed(&self, dir: &str, plain: &[u8]) -> Result<Id> {
        let sealed = self.key.seal(plain, self.compression())?;
        let id = Id::hash_of(&sealed);
        let key = format!("{dir}/{id}");
        if let Some(c) = &self.cache {
            c.put(&key, &sealed);
        }
        self.put(&key, sealed)?;
        Ok(id)
    }

    /// Load and open `<dir>/<id>`, checking the content hash against the name.
    pub fn load_sealed(&self, dir: &str, id: &Id) -> Result<Vec<u8>> {
        let key = format!("{dir}/{id}");
        self.verified(&key, || self.open_named(&key, id, &self.get(&key)?))
    }

    /// Load and open many `<dir>/<id>` objects: from the cache when it holds them intact,
    /// the rest downloaded concurrently (and cached), each verified and read again when
    /// damaged on the way. Cache entries of objects no longer listed are dropped.
    pub(crate) fn load_many_sealed(&self, dir: &str, ids: &[Id]) -> Vec<Result<Vec<u8>>> {
        self.retain_cached(dir, ids.iter());
        self.load_sealed_group(dir, ids)
    }

    /// Forget cached copies of `dir` objects that are no longer listed (`live`).
    fn retain_cached<'a>(&self, dir: &str, live: impl Iterator<Item = &'a Id>) {
        if let Some(c) = &self.cache {
            c.retain(dir, &live.map(Id::to_hex).collect());
        }
    }

    /// [`Self::load_many_sealed`] for some of the listed objects (the cache is not trimmed).
    fn load_sealed_group(&self, dir: &str, ids: &[Id]) -> Vec<Result<Vec<u8>>> {
        let key = |id: &Id| format!("{dir}/{id}");
        let mut out: Vec<Option<Result<Vec<u8>>>> = ids
            .iter()
            .map(|id| {
                let c = self.cache.as_ref()?;
                let raw = c.get(&key(id))?;
                match self.open_named(&key(id), id, &raw) {
                    Ok(plain) => Some(Ok(plain)),
                    Err(_) => {
                        c.remove(&key(id));
                        None
                    }
                }
            })
            .collect();
        let missing: Vec<usize> = (0..ids.len()).filter(|&i| out[i].is_none()).collect();
        let raws = self.get_many(missing.iter().map(|&i| key(&ids[i])).collect());
        // Verify a download and remember it.
        let open_and_cache = |k: &str, id: &Id, raw: &[u8]| -> Result<Vec<u8>> {
            let plain = self.open_named(k, id, raw)?;
            if let Some(c) = &self.cache {
                c.put(k, raw);
            }
            Ok(plain)
        };
        for (i, raw) in missing.into_iter().zip(raws) {
            let k = key(&ids[i]);
            let result = match raw.and_then(|raw| open_and_cache(&k, &ids[i], &raw)) {
                Err(e) if e.kind() == ErrorKind::Corrupt => {
                    tracing::warn!("{k}: {e}; reading it again");
                    self.verified(&k, || open_and_cache(&k, &ids[i], &self.get(&k)?))
                }
                other => other,
            };
            out[i] = Some(result);
        }
        out.into_iter().map(|r| r.unwrap_or_else(|| Err(Error::new(ErrorKind::Other, "not loaded")))).collect()
    }

    fn open_named(&self, key: &str, id: &Id, raw: &[u8]) -> Result<Vec<u8>> {
        if Id::hash_of(raw) != *id {
            return Err(Error::corrupt(format!("{key}: content does not match its name")));
        }
        self.key.open(raw, &key)
    }

    // ---- snapshots ----

    /// Every snapshot, sorted by time. Unreadable ones are returned as errors in the second list.
    pub fn snapshots(&self) -> Result<(Vec<SnapshotEntry>, Vec<Error>)> {
        let ids: Vec<Id> = self
            .list("snapshots/")?
            .iter()
            .filter_map(|o| Id::from_hex(o.key.trim_start_matches("snapshots/")).ok())
            .collect();
        let plains = self.load_many_sealed("snapshots", &ids);
        let mut out = Vec::new();
        let mut errors = Vec::new();
        for (id, plain) in ids.into_iter().zip(plains) {
            let parsed = plain.and_then(|plain| Ok(serde_json::from_slice::<Snapshot>(&plain)?));
            match parsed {
                Ok(snapshot) => out.push(SnapshotEntry { id, snapshot }),
                Err(e) => errors.push(e.context(format!("snapshot {id}"))),
            }
        }
        out.sort_by_key(|s| s.snapshot.time);
        Ok((out, errors))
    }

    /// Resolve `latest`, a full id or a unique prefix.
    pub fn find_snapshot(&self, spec: &str) -> Result<SnapshotEntry> {
        let (all, _) = self.snapshots()?;
        resolve_snapshot(&all, spec).cloned()
    }

    /// Write a snapshot object.
    pub fn save_snapshot(&self, snap: &Snapshot) -> Result<Id> {
        self.save_sealed("snapshots", &serde_json::to_vec(snap)?)
    }

    /// Remove a snapshot object.
    pub fn delete_snapshot(&self, id: &Id) -> Result<()> {
        if let Some(c) = &self.cache {
            c.remove(&snapshot_key(id));
        }
        self.delete(&snapshot_key(id))
    }

    // ---- index ----

    /// Ids of all index files.
    pub fn index_ids(&self) -> Result<Vec<Id>> {
        Ok(self.index_listing()?.into_iter().map(|(id, _)| id).collect())
    }

    /// Index file ids with their stored sizes.
    fn index_listing(&self) -> Result<Vec<(Id, u64)>> {
        Ok(self
            .list("index/")?
            .iter()
            .filter_map(|o| Some((Id::from_hex(o.key.trim_start_matches("index/")).ok()?, o.size)))
            .collect())
    }

    /// Load every index file. A damaged index file is an error naming it.
    pub fn load_index_files(&self) -> Result<Vec<(Id, IndexFile)>> {
        let ids = self.index_ids()?;
        self.retain_cached("index", ids.iter());
        let files = self.load_index_files_by_id(&ids);
        ids.into_iter()
            .zip(files)
            .map(|(id, file)| file.map(|f| (id, f)).map_err(|e| e.context(format!("index file {id}"))))
            .collect()
    }

    /// Load the index files `ids`, each on its own (one damaged file fails only its entry).
    /// Cached copies of files not named stay (consolidation reads only the small ones).
    pub fn load_index_files_by_id(&self, ids: &[Id]) -> Vec<Result<IndexFile>> {
        self.load_sealed_group("index", ids)
            .into_iter()
            .zip(ids)
            .map(|(plain, id)| plain.and_then(|p| IndexFile::decode(&p, &id.to_hex())))
            .collect()
    }

    /// The lookup over all index files. An index file that cannot be read or decoded is
    /// reported and skipped (its blobs are then simply unknown: a backup stores them again, a
    /// restore names what it lacks), so one bad object does not stop every reader. Prune and
    /// check use [`Self::load_index_files`], which fails on it instead.
    ///
    /// An index file that vanished between listing and reading was merged away by a
    /// consolidation running meanwhile, which wrote its replacement first: the listing is
    /// read again (a few times at most) so the replacement is found.
    ///
    /// Files are fetched a group at a time (≤ 64 MiB or 16 files) and added to the lookup
    /// straight from their plaintext, so memory holds the lookup (32 bytes a blob) and one
    /// group, not every file at once (a 10-million-blob repository's `ls` peaked at 782 MiB).
    pub fn load_index(&self) -> Result<MasterIndex> {
        const GROUP_BYTES: u64 = 64 << 20;
        const GROUP_FILES: usize = 16;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let listing = self.index_listing()?;
            self.retain_cached("index", listing.iter().map(|(id, _)| id));
            let mut mi = MasterIndex::default();
            let mut vanished = false;
            let mut rest = listing.as_slice();
            while !rest.is_empty() {
                let mut n = 0;
                let mut bytes = 0;
                while n < rest.len() && n < GROUP_FILES && (n == 0 || bytes + rest[n].1 <= GROUP_BYTES) {
                    bytes += rest[n].1;
                    n += 1;
                }
                let (group, tail) = rest.split_at(n);
                rest = tail;
                let ids: Vec<Id> = group.iter().map(|(id, _)| *id).collect();
                for (id, plain) in ids.iter().zip(self.load_sealed_group("index", &ids)) {
                    match plain.and_then(|p| mi.add_plaintext(&p, &id.to_hex())) {
                        Ok(()) => {}
                        Err(e) if e.kind() == crate::ErrorKind::NotFound && attempt <= 3 => vanished = true,
                        Err(e) => tracing::warn!("skipping index file {id}: {e}"),
                    }
                }
            }
            if !vanished {
                mi.finalize();
                return Ok(mi);
            }
        }
    }

    /// Write an index file.
    pub fn save_index(&self, file: &IndexFile) -> Result<Id> {
        self.save_sealed("index", &file.encode())
    }

    /// Delete many index files, 16 at a time (one request each on object stores, where one
    /// after another would take minutes for a many-writer repository).
    pub fn delete_indexes(&self, ids: &[Id]) -> Result<()> {
        if let Some(c) = &self.cache {
            for id in ids {
                c.remove(&index_key(id));
            }
        }
        let backend = self.backend.clone();
        let keys: Vec<String> = ids.iter().map(index_key).collect();
        self.rt.block_on(async move {
            use futures_util::StreamExt;
            let mut done = futures_util::stream::iter(keys)
                .map(|k| {
                    let b = backend.clone();
                    async move { b.delete(&k).await }
                })
                .buffer_unordered(16);
            while let Some(r) = done.next().await {
                r?;
            }
            Ok(())
        })
    }

    /// Read the header of a pack (two range reads), for resume and index repair.
    pub fn read_pack_header(&self, pack: &Id, size: u64) -> Result<Vec<PackEntry>> {
        self.verified(&format_args!("pack {pack} header"), || self.read_pack_header_once(pack, size))
    }

    fn read_pack_header_once(&self, pack: &Id, size: u64) -> Result<Vec<PackEntry>> {
        let key = pack_key(pack);
        if size < 4 {
            return Err(Error::corrupt(format!("pack {pack}: only {size} bytes")));
        }
        let trailer = self.get_range(&key, size - 4, 4)?;
        let (off, len) = header_range(size, &trailer, pack)?;
        let sealed = self.get_range(&key, off, len)?;
        let plain = self.key.open(&sealed, &format_args!("pack {pack} header"))?;
        let entries = parse_header(&plain, pack)?;
        if let Some(last) = entries.last() {
            if u64::from(last.offset) + u64::from(last.length) > off {
                return Err(Error::corrupt(format!("pack {pack}: header points past the data")));
            }
        }
        Ok(entries)
    }

    /// Packs in `data/` with their sizes.
    pub fn list_packs(&self) -> Result<Vec<(Id, ObjectInfo)>> {
        Ok(self
            .list("data/")?
            .into_iter()
            .filter_map(|o| {
                let name = o.key.rsplit('/').next()?;
                Some((Id::from_hex(name).ok()?, o))
            })
            .collect())
    }

    /// Index packs that exist but no index file lists (left by an interrupted backup), so
    /// their blobs are reused instead of stored again. Returns how many packs were recovered.
    pub fn recover_unindexed_packs(&self, index: &mut MasterIndex) -> Result<usize> {
        let mut recovered = IndexFile::default();
        for (pack, info) in self.list_packs()? {
            if index.has_pack(&pack) {
                continue;
            }
            match self.read_pack_header(&pack, info.size) {
                Ok(entries) => recovered.packs.push((pack, entries)),
                Err(e) => tracing::warn!("ignoring unreadable unindexed pack: {e}"),
            }
        }
        let n = recovered.packs.len();
        if n > 0 {
            index.add_file(&recovered);
            index.finalize();
            self.save_index(&recovered)?;
        }
        Ok(n)
    }

    // ---- blobs ----

    /// Read, authenticate and verify one blob. Blobs of tree-only packs come from a cache of
    /// whole packs (one read per pack instead of one per directory).
    pub fn read_blob(&self, index: &MasterIndex, id: &Id) -> Result<Vec<u8>> {
        let loc = index.get(id).ok_or_else(|| Error::not_found(format!("blob {id} is not in the index")))?;
        if !index.is_tree_pack(&loc.pack) {
            return self.read_blob_at(&loc.pack, loc.offset, loc.length, id);
        }
        let (start, end) = (loc.offset as usize, loc.offset as usize + loc.length as usize);
        self.verified(&format_args!("blob {id}"), || {
            let cache = || self.tree_packs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let cached = cache().get(&loc.pack);
            let pack = match cached {
                Some(p) => p,
                None => {
                    let p = self.get(&pack_key(&loc.pack))?;
                    cache().insert(loc.pack, p.clone());
                    p
                }
            };
            let opened = pack
                .get(start..end)
                .ok_or_else(|| Error::corrupt(format!("blob {id} in pack {}: beyond the end of the pack", loc.pack)))
                .and_then(|sealed| self.open_blob(sealed, id, &loc.pack));
            if opened.is_err() {
                // Read the pack afresh next time: the damage may be in this copy only.
                cache().remove(&loc.pack);
            }
            opened
        })
    }

    /// Read one blob by its place in a pack, verified (and read again when damaged in transit).
    pub fn read_blob_at(&self, pack: &Id, offset: u32, length: u32, id: &Id) -> Result<Vec<u8>> {
        self.verified(&format_args!("blob {id}"), || {
            let sealed = self.get_range(&pack_key(pack), u64::from(offset), u64::from(length))?;
            self.open_blob(&sealed, id, pack)
        })
    }

    /// Decrypt a sealed blob and check its id.
    pub fn open_blob(&self, sealed: &[u8], id: &Id, pack: &Id) -> Result<Vec<u8>> {
        let what = format_args!("blob {id} in pack {pack}");
        let plain = self.key.open(sealed, &what)?;
        if self.key.blob_id(&plain) != *id {
            return Err(Error::corrupt(format!("blob {id} in pack {pack}: content hash mismatch")));
        }
        Ok(plain)
    }

    /// Load a tree blob.
    pub fn load_tree(&self, index: &MasterIndex, id: &Id) -> Result<Tree> {
        let loc = index.get(id).ok_or_else(|| Error::not_found(format!("tree {id} is not in the index")))?;
        if loc.kind != BlobKind::Tree {
            return Err(Error::corrupt(format!("blob {id} is not a tree")));
        }
        Tree::decode(&self.read_blob(index, id)?).map_err(|e| e.context(format!("tree {id}")))
    }

    /// Walk every tree reachable from `root`, calling `f(path, tree)`; used by check/prune/stats.
    pub fn walk_trees(
        &self,
        index: &MasterIndex,
        root: &Id,
        seen: &mut HashSet<Id>,
        f: &mut dyn FnMut(&str, &Id, &Tree),
    ) -> Result<()> {
        let mut stack = vec![(String::new(), *root)];
        while let Some((path, id)) = stack.pop() {
            if !seen.insert(id) {
                continue;
            }
            let tree = self.load_tree(index, &id)?;
            f(&path, &id, &tree);
            for node in &tree.nodes {
                if let Some(sub) = node.subtree {
                    stack.push((format!("{path}/{}", node.name.display()), sub));
                }
            }
        }
        Ok(())
    }
}

/// Whole tree packs kept in memory, oldest dropped first past [`TreePackCache::LIMIT`] bytes.
#[derive(Default)]
struct TreePackCache {
    packs: std::collections::VecDeque<(Id, Bytes)>,
    bytes: usize,
}

impl TreePackCache {
    const LIMIT: usize = 32 * 1024 * 1024;

    fn get(&self, id: &Id) -> Option<Bytes> {
        self.packs.iter().find(|(p, _)| p == id).map(|(_, b)| b.clone())
    }

    fn remove(&mut self, id: &Id) {
        if let Some(i) = self.packs.iter().position(|(p, _)| p == id) {
            if let Some((_, old)) = self.packs.remove(i) {
                self.bytes -= old.len();
            }
        }
    }

    fn insert(&mut self, id: Id, data: Bytes) {
        self.bytes += data.len();
        self.packs.push_back((id, data));
        while self.bytes > Self::LIMIT && self.packs.len() > 1 {
            if let Some((_, old)) = self.packs.pop_front() {
                self.bytes -= old.len();
            }
        }
    }
}

/// Resolve `latest`, a full id or a unique prefix within `all`.
pub fn resolve_snapshot<'a>(all: &'a [SnapshotEntry], spec: &str) -> Result<&'a SnapshotEntry> {
    if spec == "latest" {
        return all.last().ok_or_else(|| Error::not_found("the repository has no snapshots"));
    }
    if spec.len() < 4 || !spec.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(Error::invalid(format!("{spec:?} is not a snapshot id (use at least 4 hex digits or `latest`)")));
    }
    let spec = spec.to_ascii_lowercase();
    let mut matches = all.iter().filter(|s| s.id.to_hex().starts_with(&spec));
    match (matches.next(), matches.next()) {
        (Some(s), None) => Ok(s),
        (None, _) => Err(Error::not_found(format!("no snapshot {spec}"))),
        (Some(_), Some(_)) => Err(Error::invalid(format!("snapshot prefix {spec} is ambiguous"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::local::LocalBackend;

    fn fast() -> InitOptions {
        InitOptions { kdf: KdfParams { m_cost: 64, t_cost: 1, p_cost: 1 }, ..InitOptions::default() }
    }

    #[test]
    fn an_unlocked_key_reopens_its_repository_and_no_other() {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let at = |p: &str| -> DynBackend { Arc::new(LocalBackend::new(dir.path().join(p))) };
        let first =
            Repository::init(at("r"), rt.handle().clone(), b"secret", SlotKind::Keyfile, &fast()).expect("init");
        let unlocked = first.unlocked();
        assert!(!format!("{unlocked:?}").contains("key:"), "no key material in Debug");
        let again = Repository::open_unlocked(at("r"), rt.handle().clone(), &unlocked).expect("reopen");
        assert_eq!(again.config().id, first.config().id);
        assert_eq!(again.current_key_slot(), first.current_key_slot());
        // Another repository (say, re-created under the same name) does not open with it.
        Repository::init(at("other"), rt.handle().clone(), b"secret", SlotKind::Keyfile, &fast()).expect("init");
        let e = Repository::open_unlocked(at("other"), rt.handle().clone(), &unlocked).err().expect("refused");
        assert_eq!(e.kind(), ErrorKind::WrongPassword);
        // Nothing there at all is said so, not taken for a wrong key.
        let e = Repository::open_unlocked(at("none"), rt.handle().clone(), &unlocked).err().expect("refused");
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
    }
}
