//! # bams-images: the bare-metal image service
//!
//! Users own **images**; each image has numbered **versions** (1, 2, …), each a snapshot in
//! the image repository (a normal BAMS repository, so check, verify, copy and prune apply).
//! A version's snapshot holds the raw disk and its chunk manifest
//! ([`bams_store::image`]): uploads of whole disks cost only their new chunks in storage;
//! machines flashing a version fetch only the chunks their disk lacks, and syncing a disk back
//! sends only the chunks the previous version lacks. **Image sets** freeze lists of (image,
//! version, update). **Machines** network-boot: an unknown MAC registers itself and waits to
//! be accepted; an accepted machine with a queued boot gets the management OS with a one-time
//! token, which `bams flash --server` uses to ask for its [`Task`] and report back.
//!
//! Who may do what is the server's policy; this crate keeps the model consistent.

pub mod boot;
pub mod names;

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bams_catalog::{
    BootEntry, BootPlan, Catalog, CatalogError, Image, ImageKind, ImageSet, ImageVersion, Machine, MachineState,
    NewImage, NewImageVersion,
};
use bams_director::{RepoPool, RepoPoolError};
use bams_store::image::{BlobCache, Manifest, OpenedImage, PlainHash, VersionMeta};
use bams_store::index::MasterIndex;
use bams_store::{Id, Repository};
use serde::{Deserialize, Serialize};

pub use boot::{BootAnswer, BootSite, PixiecoreAnswer};

/// Why an image operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Catalog problem.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// Repository problem.
    #[error(transparent)]
    Repo(#[from] RepoPoolError),
    /// Engine problem (a truncated upload, a corrupt version…).
    #[error(transparent)]
    Store(#[from] bams_store::Error),
    /// Bad input.
    #[error("{0}")]
    Invalid(String),
    /// No such thing.
    #[error("{0} not found")]
    NotFound(String),
    /// The request clashes with the current state.
    #[error("{0}")]
    Conflict(String),
    /// A boot token was refused.
    #[error("{0}")]
    Unauthorized(String),
    /// A worker thread failed.
    #[error("{0}")]
    Internal(String),
}

/// Result of image operations.
pub type Result<T, E = ImageError> = std::result::Result<T, E>;

/// The image service's settings (`images:` in the server config).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImagesConfig {
    /// Registered repository holding the versions; made at `<data_dir>/images` as `images`
    /// on first use when it does not exist.
    pub repository: String,
    /// Size of a new image's empty first version, in bytes (6 GiB).
    pub default_size: u64,
    /// Largest size a new image may ask for.
    pub max_size: u64,
    /// How long a boot token stays valid, in seconds.
    pub boot_token_ttl_secs: u64,
    /// Where the management OS's `vmlinuz` and `initrd.img` are (`scripts/build-netboot.sh`).
    pub netboot_dir: Option<PathBuf>,
    /// The server's URL as machines reach it, for boot scripts (default: the `Host` the boot
    /// ROM asked).
    pub public_url: Option<String>,
    /// Extra kernel arguments for the management OS.
    pub kernel_cmdline: String,
    /// Seconds between checks for temporal images past their expiry.
    pub expire_every_secs: u64,
}

impl Default for ImagesConfig {
    fn default() -> Self {
        Self {
            repository: "images".into(),
            default_size: 6 << 30,
            max_size: 16 << 40,
            boot_token_ttl_secs: 4 * 3600,
            netboot_dir: None,
            public_url: None,
            kernel_cmdline: "console=tty0 console=ttyS0,115200".into(),
            expire_every_secs: 60,
        }
    }
}

/// A new image as asked for.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateImage {
    /// Name, unique per owner.
    pub name: String,
    /// What it is for (default `system`).
    #[serde(default)]
    pub kind: Option<ImageKind>,
    /// Target device on machines (default `/dev/sda`).
    #[serde(default)]
    pub disk: Option<String>,
    /// Size of the empty first version (default 6 GiB).
    #[serde(default)]
    pub size: Option<u64>,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Temporal images: seconds until their versions are forgotten.
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
    /// The seed's `DiskUUID`.
    #[serde(default)]
    pub disk_uuid: Option<String>,
}

/// What a booted management OS is to do, in order: sync disks back, then flash.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Task {
    /// The machine.
    pub machine: String,
    /// Disks to send back first, each as a new version of its image.
    pub sync: Vec<TaskDisk>,
    /// Disks to flash.
    pub flash: Vec<TaskDisk>,
    /// The plan being flashed (reported back when done).
    pub plan: BootPlan,
    /// `reboot` or `poweroff` when done.
    pub after: String,
    /// Chunking the server expects for sync (min, avg, max bytes).
    pub chunker: [u32; 3],
}

/// One disk of a task.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskDisk {
    /// Image UUID.
    pub image: String,
    /// Image name.
    pub name: String,
    /// Version to flash, or the version a sync starts from.
    pub version: i64,
    /// Device on the machine.
    pub disk: String,
    /// Size of the version in bytes.
    pub size: i64,
}

/// An opened version, ready to stream.
pub struct VersionData {
    /// The version row.
    pub version: ImageVersion,
    repo: Arc<Repository>,
    index: Arc<MasterIndex>,
    opened: Arc<OpenedImage>,
    cache: Arc<BlobCache>,
}

impl VersionData {
    /// Disk size.
    pub fn size(&self) -> u64 {
        self.opened.size()
    }

    /// The chunk manifest's bytes.
    pub fn manifest_bytes(&self) -> Vec<u8> {
        self.opened.manifest.encode()
    }

    /// Write bytes `start..end` to `out` (blocking: run on a blocking thread).
    pub fn write_range(&self, start: u64, end: u64, out: &mut dyn std::io::Write) -> Result<u64> {
        Ok(self.opened.write_range(&self.repo, &self.index, Some(&self.cache), start, end, out)?)
    }

    /// Write each range's bytes to `out`, back to back (blocking).
    pub fn write_ranges(&self, ranges: &[(u64, u64)], out: &mut dyn std::io::Write) -> Result<u64> {
        Ok(self.opened.write_ranges(&self.repo, &self.index, Some(&self.cache), ranges, out)?)
    }
}

/// Indexes of the image repository kept briefly: 20 machines flashing at once share one.
type IndexCache = Mutex<HashMap<i64, (Arc<MasterIndex>, Instant)>>;
/// Opened versions by snapshot id.
type OpenCache = Mutex<HashMap<String, Arc<OpenedImage>>>;

/// The image service.
pub struct ImageService {
    catalog: Catalog,
    repos: Arc<RepoPool>,
    config: ImagesConfig,
    data_dir: PathBuf,
    indexes: IndexCache,
    opened: OpenCache,
    chunks: Arc<BlobCache>,
}

/// Plaintext chunks kept for concurrent readers of the same versions.
const CHUNK_CACHE_BYTES: usize = 128 << 20;

/// How long an index read stays fresh for versions written by another server.
const INDEX_TTL: Duration = Duration::from_secs(30);

impl ImageService {
    /// The service over the catalog and repositories of this server.
    pub fn new(catalog: Catalog, repos: Arc<RepoPool>, config: ImagesConfig, data_dir: PathBuf) -> Self {
        Self {
            catalog,
            repos,
            config,
            data_dir,
            indexes: Mutex::default(),
            opened: Mutex::default(),
            chunks: Arc::new(BlobCache::new(CHUNK_CACHE_BYTES)),
        }
    }

    /// The settings.
    pub fn config(&self) -> &ImagesConfig {
        &self.config
    }

    /// The repository holding versions (registered on first use).
    pub async fn repository_id(&self) -> Result<i64> {
        let name = &self.config.repository;
        if let Ok(r) = self.catalog.get_repository_by_name(name).await {
            return Ok(r.id);
        }
        let url = self.data_dir.join(name).display().to_string();
        Ok(self.repos.ensure(name, &url).await?.id)
    }

    async fn index(&self, repo_id: i64, fresh: bool) -> Result<(Arc<Repository>, Arc<MasterIndex>)> {
        let repo = self.repos.get(repo_id).await?;
        if !fresh {
            let hit =
                self.lock_indexes().get(&repo_id).filter(|(_, t)| t.elapsed() < INDEX_TTL).map(|(i, _)| i.clone());
            if let Some(index) = hit {
                return Ok((repo, index));
            }
        }
        let r = repo.clone();
        let index = Arc::new(blocking(move || Ok(r.load_index()?)).await?);
        self.lock_indexes().insert(repo_id, (index.clone(), Instant::now()));
        Ok((repo, index))
    }

    fn lock_indexes(&self) -> std::sync::MutexGuard<'_, HashMap<i64, (Arc<MasterIndex>, Instant)>> {
        self.indexes.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Create an image owned by `owner` whose version 1 is an empty (sparse) disk.
    pub async fn create_image(&self, req: &CreateImage, owner_id: i64, who: &str) -> Result<Image> {
        names::check_name("image", &req.name)?;
        let disk = req.disk.clone().unwrap_or_else(|| "/dev/sda".into());
        names::check_disk(&disk)?;
        let size = req.size.unwrap_or(self.config.default_size);
        if size == 0 || size > self.config.max_size || !size.is_multiple_of(512) {
            return Err(ImageError::Invalid(format!(
                "image size {size} must be a positive multiple of 512 bytes up to {}",
                self.config.max_size
            )));
        }
        if req.description.len() > 4096 {
            return Err(ImageError::Invalid("description is longer than 4096 bytes".into()));
        }
        if let Some(d) = &req.disk_uuid {
            if d.len() > 128 || d.chars().any(char::is_control) {
                return Err(ImageError::Invalid(
                    "DiskUUID is longer than 128 characters or has control characters".into(),
                ));
            }
        }
        let kind = req.kind.unwrap_or(ImageKind::System);
        let expires_at = match (kind, req.expires_in_secs) {
            (ImageKind::Temporal, Some(s)) => {
                Some(bams_catalog::now_ms().saturating_add(i64::try_from(s.min(1 << 40)).unwrap_or(i64::MAX) * 1000))
            }
            (ImageKind::Temporal, None) => {
                return Err(ImageError::Invalid("a temporal image needs expires_in_secs".into()))
            }
            (_, Some(_)) => return Err(ImageError::Invalid("only temporal images expire".into())),
            (_, None) => None,
        };
        let repository_id = self.repository_id().await?;
        let image = self
            .catalog
            .create_image(&NewImage {
                uuid: names::new_uuid(),
                name: req.name.clone(),
                owner_id,
                kind,
                disk,
                disk_uuid: req.disk_uuid.clone(),
                size: size as i64,
                description: req.description.clone(),
                expires_at,
                repository_id,
            })
            .await?;
        let stored = self.store_empty(&image, size, who).await;
        if let Err(e) = stored {
            let _ = self.catalog.delete_image(&image.uuid).await;
            return Err(e);
        }
        Ok(self.catalog.get_image(&image.uuid).await?)
    }

    async fn store_empty(&self, image: &Image, size: u64, who: &str) -> Result<ImageVersion> {
        let repo = self.repos.get(image.repository).await?;
        let meta = version_meta(image, None);
        let stored = blocking(move || Ok(bams_store::image::store_zeros(&repo, size, meta)?)).await?;
        self.record(image, &stored, 0, "empty", who).await
    }

    /// Store a whole disk read from `body` as the image's next version (blocking reads on a
    /// worker thread; nothing is buffered beyond a few chunks). A body that fails midway
    /// stores no version.
    pub async fn upload(&self, image: &Image, mut body: Box<dyn Read + Send>, who: &str) -> Result<ImageVersion> {
        let repo = self.repos.get(image.repository).await?;
        let parent = self.latest_snapshot(image).await?;
        let meta = version_meta(image, parent);
        let stored = blocking(move || {
            let stored = bams_store::image::store_stream(&repo, &mut body, meta, &|_| {})?;
            if stored.size == 0 {
                let _ = repo.delete_snapshot(&stored.id);
                return Err(ImageError::Invalid(
                    "the upload is empty: an image version needs at least one byte".into(),
                ));
            }
            Ok(stored)
        })
        .await?;
        // The whole disk crossed the network.
        self.record(image, &stored, stored.size, "upload", who).await
    }

    async fn record(
        &self,
        image: &Image,
        stored: &bams_store::image::StoredImage,
        sent: u64,
        source: &str,
        who: &str,
    ) -> Result<ImageVersion> {
        self.lock_indexes().remove(&image.repository);
        let v = self
            .catalog
            .add_image_version(
                image.id,
                &NewImageVersion {
                    snapshot_id: stored.id.to_hex(),
                    size: stored.size as i64,
                    bytes_added: stored.bytes_added as i64,
                    bytes_sent: sent as i64,
                    source: source.into(),
                    created_by: who.into(),
                },
            )
            .await;
        match v {
            Ok(v) => Ok(v),
            Err(e) => {
                // The image went away meanwhile: do not leave an orphan snapshot.
                self.forget_snapshot(image.repository, &stored.id.to_hex()).await;
                Err(e.into())
            }
        }
    }

    async fn latest_snapshot(&self, image: &Image) -> Result<Option<Id>> {
        let versions = self.catalog.list_image_versions(image.id).await?;
        Ok(versions.last().and_then(|v| Id::from_hex(&v.snapshot_id).ok()))
    }

    /// A version (`None` = the latest), opened for streaming.
    pub async fn open_version(&self, image: &Image, number: Option<i64>) -> Result<VersionData> {
        let version = match number {
            Some(n) => self.catalog.get_image_version(image.id, n).await?,
            None => self
                .catalog
                .list_image_versions(image.id)
                .await?
                .pop()
                .ok_or_else(|| ImageError::NotFound(format!("a version of image {}", image.uuid)))?,
        };
        let snapshot = version.snapshot_id.clone();
        let cached = self.lock_opened().get(&snapshot).cloned();
        let (mut repo, mut index) = self.index(image.repository, false).await?;
        let opened = match cached {
            Some(opened) => {
                // Our index predates chunks this version uses (written by another server):
                // read it again.
                if !opened.layout.iter().all(|(id, _, _)| index.contains(id)) {
                    (repo, index) = self.index(image.repository, true).await?;
                }
                opened
            }
            None => {
                let opened = match open_snapshot(&repo, &index, &snapshot).await {
                    Err(ImageError::Store(e)) if e.kind() == bams_store::ErrorKind::NotFound => {
                        (repo, index) = self.index(image.repository, true).await?;
                        open_snapshot(&repo, &index, &snapshot).await?
                    }
                    r => r?,
                };
                let opened = Arc::new(opened);
                let mut cache = self.lock_opened();
                if cache.len() > 64 {
                    cache.clear();
                }
                cache.insert(snapshot, opened.clone());
                opened
            }
        };
        Ok(VersionData { version, repo, index, opened, cache: self.chunks.clone() })
    }

    fn lock_opened(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<OpenedImage>>> {
        self.opened.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Which chunks of a machine's disk (its manifest) a sync from version `parent` must send.
    pub async fn sync_needed(&self, image: &Image, parent: i64, manifest: &[u8]) -> Result<Vec<usize>> {
        let manifest = self.parse_manifest(image, manifest).await?;
        let known = self.known(image, parent).await?;
        Ok(bams_store::image::needed(&manifest, &known))
    }

    async fn parse_manifest(&self, image: &Image, bytes: &[u8]) -> Result<Manifest> {
        let repo = self.repos.get(image.repository).await?;
        let max = repo.config().image_chunker.max_size;
        let m = Manifest::decode(bytes, max)?;
        if m.chunks.is_empty() {
            return Err(ImageError::Invalid("the manifest lists no chunks: a disk has at least one byte".into()));
        }
        Ok(m)
    }

    async fn known(&self, image: &Image, parent: i64) -> Result<HashMap<PlainHash, Id>> {
        Ok(self.open_version(image, Some(parent)).await?.opened.known())
    }

    /// Store a machine's disk as the image's next version from its manifest and the chunks
    /// [`ImageService::sync_needed`] named, read from `data` (blocking, on a worker thread).
    pub async fn store_sync(
        &self,
        image: &Image,
        parent: i64,
        manifest: &[u8],
        data: Box<dyn Read + Send>,
        who: &str,
    ) -> Result<ImageVersion> {
        let manifest = self.parse_manifest(image, manifest).await?;
        let parent_data = self.open_version(image, Some(parent)).await?;
        let known = parent_data.opened.known();
        let parent_id = Id::from_hex(&parent_data.version.snapshot_id).ok();
        let repo = parent_data.repo.clone();
        let meta = version_meta(image, parent_id);
        let counted = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut reader = CountingReader { inner: data, n: counted.clone() };
        let stored =
            blocking(move || Ok(bams_store::image::store_delta(&repo, &manifest, &known, &mut reader, meta)?)).await?;
        let sent = counted.load(std::sync::atomic::Ordering::Relaxed);
        self.record(image, &stored, sent, "sync", who).await
    }

    /// Delete one version: its row, then its snapshot (the data goes at the next prune of
    /// the image repository).
    pub async fn delete_version(&self, image: &Image, number: i64) -> Result<()> {
        let v = self.catalog.get_image_version(image.id, number).await?;
        self.catalog.delete_image_version(image.id, number).await?;
        self.forget_snapshot(image.repository, &v.snapshot_id).await;
        Ok(())
    }

    /// Delete an image, its versions and their snapshots. Refused while a machine's queued
    /// boot uses it.
    pub async fn delete_image(&self, image: &Image) -> Result<()> {
        for m in self.catalog.list_machines().await? {
            if m.next.as_ref().is_some_and(|p| p.entries.iter().any(|e| e.image == image.uuid)) {
                return Err(ImageError::Conflict(format!(
                    "machine {} has a boot of this image queued; clear it first",
                    m.name
                )));
            }
        }
        let versions = self.catalog.list_image_versions(image.id).await?;
        self.catalog.delete_image(&image.uuid).await?;
        for v in versions {
            self.forget_snapshot(image.repository, &v.snapshot_id).await;
        }
        Ok(())
    }

    async fn forget_snapshot(&self, repo_id: i64, snapshot: &str) {
        let Ok(id) = Id::from_hex(snapshot) else { return };
        match self.repos.get(repo_id).await {
            Ok(repo) => {
                if let Err(e) = blocking(move || Ok(repo.delete_snapshot(&id)?)).await {
                    tracing::warn!("forgetting image snapshot {snapshot}: {e}");
                }
            }
            Err(e) => tracing::warn!("forgetting image snapshot {snapshot}: {e}"),
        }
        self.lock_opened().remove(snapshot);
    }

    /// Forget every version of temporal images past their expiry; returns how many.
    pub async fn expire(&self) -> Result<usize> {
        let mut n = 0;
        for image in self.catalog.expired_images(bams_catalog::now_ms()).await? {
            for v in self.catalog.list_image_versions(image.id).await? {
                self.delete_version(&image, v.number).await?;
                n += 1;
            }
            tracing::info!(image = %image.uuid, "temporal image expired: its versions are forgotten");
        }
        Ok(n)
    }

    /// Check boot entries: each image exists and has that version.
    pub async fn check_entries(&self, entries: &[BootEntry]) -> Result<Vec<Image>> {
        if entries.is_empty() || entries.len() > 16 {
            return Err(ImageError::Invalid("a boot needs 1 to 16 images".into()));
        }
        let mut images = Vec::new();
        let mut disks = std::collections::HashSet::new();
        for e in entries {
            let uuid = names::check_uuid(&e.image)?;
            let image = self.catalog.get_image(&uuid).await?;
            self.catalog
                .get_image_version(image.id, e.version)
                .await
                .map_err(|_| ImageError::NotFound(format!("version {} of image {}", e.version, image.uuid)))?;
            if !disks.insert(image.disk.clone()) {
                return Err(ImageError::Invalid(format!("two images of this boot go to {}", image.disk)));
            }
            images.push(image);
        }
        Ok(images)
    }

    /// Make an image set.
    pub async fn create_set(
        &self,
        name: &str,
        owner_id: i64,
        entries: &[BootEntry],
        description: &str,
    ) -> Result<ImageSet> {
        names::check_name("image set", name)?;
        if name.parse::<i64>().is_ok() {
            return Err(ImageError::Invalid("an image set name cannot be only digits".into()));
        }
        self.check_entries(entries).await?;
        let entries: Vec<BootEntry> = entries
            .iter()
            .map(|e| Ok(BootEntry { image: names::check_uuid(&e.image)?, ..e.clone() }))
            .collect::<Result<_>>()?;
        Ok(self.catalog.create_image_set(name, owner_id, &entries, description).await?)
    }

    /// Queue a boot of `entries` on a machine (it must be managed).
    pub async fn queue_boot(
        &self,
        machine: &Machine,
        set: Option<String>,
        entries: Vec<BootEntry>,
        who: &str,
    ) -> Result<Machine> {
        if !machine.managed {
            return Err(ImageError::Conflict(format!("machine {} is not accepted yet", machine.name)));
        }
        self.check_entries(&entries).await?;
        let entries: Vec<BootEntry> = entries
            .into_iter()
            .map(|e| Ok(BootEntry { image: names::check_uuid(&e.image)?, ..e }))
            .collect::<Result<_>>()?;
        let plan = BootPlan { set, entries, queued_by: who.into(), queued_at: bams_catalog::now_ms() };
        Ok(self.catalog.set_next_boot(machine.id, Some(&plan)).await?)
    }

    /// A boot ROM asks what `mac` should boot: register unknown machines, and hand a fresh
    /// one-time token to a managed machine with a boot queued.
    pub async fn boot_answer(&self, raw_mac: &str) -> Result<(Option<Machine>, BootAnswer)> {
        let mac = names::normalize_mac(raw_mac)?;
        let machine = match self.catalog.machine_by_mac(&mac).await? {
            Some(m) => m,
            None => {
                let name = format!("mac-{}", mac.replace(':', ""));
                match self.catalog.register_machine(&name, &mac, "x86_64", false).await {
                    Ok(m) => {
                        tracing::info!(%mac, "unknown machine registered; it waits to be accepted");
                        m
                    }
                    // Two boots of one new machine at once: the other registered it.
                    Err(CatalogError::Conflict(_)) => self
                        .catalog
                        .machine_by_mac(&mac)
                        .await?
                        .ok_or_else(|| ImageError::Conflict(format!("machine name {name} is taken")))?,
                    Err(e) => return Err(e.into()),
                }
            }
        };
        self.catalog.touch_machine(machine.id).await?;
        if !machine.managed {
            return Ok((Some(machine), BootAnswer::Wait));
        }
        if machine.next.is_none() {
            if machine.state == MachineState::Registered {
                self.catalog
                    .set_machine_state(machine.id, MachineState::Neutral, None, "booted its local disk", None)
                    .await?;
            }
            return Ok((Some(machine), BootAnswer::LocalDisk));
        }
        let token = hex::encode(rand::random::<[u8; 32]>());
        let expires = bams_catalog::now_ms() + i64::try_from(self.config.boot_token_ttl_secs).unwrap_or(3600) * 1000;
        self.catalog.set_boot_token(machine.id, Some(&token_hash(&token)), Some(expires)).await?;
        Ok((Some(machine), BootAnswer::Manage { token }))
    }

    /// The machine a boot token belongs to.
    pub async fn machine_for_token(&self, token: &str) -> Result<Machine> {
        if token.len() != 64 || !token.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(ImageError::Unauthorized("not a boot token".into()));
        }
        self.catalog
            .machine_by_token(&token_hash(token), bams_catalog::now_ms())
            .await?
            .ok_or_else(|| ImageError::Unauthorized("the boot token is unknown, spent or expired".into()))
    }

    /// What the management OS with this token is to do.
    pub async fn task(&self, machine: &Machine) -> Result<Task> {
        let plan = machine
            .next
            .clone()
            .ok_or_else(|| ImageError::Conflict(format!("nothing is queued for machine {}", machine.name)))?;
        let mut sync = Vec::new();
        if let Some(cur) = &machine.current {
            for e in cur.entries.iter().filter(|e| e.update) {
                match self.task_disk(e).await {
                    Ok(d) => sync.push(d),
                    Err(err) => tracing::warn!(machine = %machine.name, "cannot sync {} back: {err}", e.image),
                }
            }
        }
        let mut flash = Vec::new();
        for e in &plan.entries {
            flash.push(self.task_disk(e).await?);
        }
        let repo = self.repos.get(self.repository_id().await?).await?;
        let c = repo.config().image_chunker;
        self.catalog.touch_machine(machine.id).await?;
        Ok(Task {
            machine: machine.name.clone(),
            sync,
            flash,
            plan,
            after: machine.after_flash.clone(),
            chunker: [c.min_size, c.avg_size, c.max_size],
        })
    }

    async fn task_disk(&self, e: &BootEntry) -> Result<TaskDisk> {
        let image = self.catalog.get_image(&e.image).await?;
        let v = self.catalog.get_image_version(image.id, e.version).await?;
        Ok(TaskDisk { image: image.uuid, name: image.name, version: e.version, disk: image.disk, size: v.size })
    }

    /// Whether a boot token may read `image` (it is in the plan being flashed) or sync it
    /// back (`sync`: it is in the current plan with `update`).
    pub fn token_allows(machine: &Machine, image: &str, version: i64, sync: bool) -> bool {
        let plan = if sync { machine.current.as_ref() } else { machine.next.as_ref() };
        plan.is_some_and(|p| p.entries.iter().any(|e| e.image == image && e.version == version && (!sync || e.update)))
    }

    /// A sync back finished: the current plan no longer asks for it (a second boot does not
    /// send the same disk again).
    pub async fn synced(&self, machine: &Machine, image: &str, version: &ImageVersion) -> Result<()> {
        if let Some(mut cur) = machine.current.clone() {
            for e in cur.entries.iter_mut().filter(|e| e.image == image) {
                e.update = false;
            }
            self.catalog.set_current_boot(machine.id, &cur).await?;
        }
        self.catalog
            .set_machine_state(
                machine.id,
                MachineState::Syncing,
                None,
                &format!("synced {image} back as version {}", version.number),
                Some(&serde_json::json!({"image": image, "version": version.number, "bytes_sent": version.bytes_sent,
                    "bytes_added": version.bytes_added, "size": version.size})),
            )
            .await?;
        Ok(())
    }

    /// The management OS reports progress or the outcome. `booted` makes the flashed plan
    /// the machine's current one and spends the token; `failed` keeps the boot queued so the
    /// next network boot tries again.
    pub async fn report(&self, machine: &Machine, report: &BootReport) -> Result<()> {
        let details = report.details.as_ref();
        match report.state {
            MachineState::Booted => {
                let plan = report
                    .plan
                    .as_ref()
                    .ok_or_else(|| ImageError::Invalid("a booted report carries the plan it flashed".into()))?;
                if machine.next.as_ref() != Some(plan) {
                    return Err(ImageError::Conflict("the queued boot changed while flashing; boot again".into()));
                }
                self.catalog
                    .set_machine_state(machine.id, MachineState::Booted, None, &report.message, details)
                    .await?;
                self.catalog.complete_boot(machine.id, plan).await?;
            }
            MachineState::Failed => {
                let error =
                    if report.message.is_empty() { "the management OS reported a failure" } else { &report.message };
                self.catalog.set_machine_state(machine.id, MachineState::Failed, Some(error), error, details).await?;
            }
            MachineState::Flashing | MachineState::Syncing => {
                self.catalog.set_machine_state(machine.id, report.state, None, &report.message, details).await?;
            }
            MachineState::Registered | MachineState::Neutral => {
                return Err(ImageError::Invalid("a boot reports flashing, syncing, booted or failed".into()))
            }
        }
        Ok(())
    }
}

/// What the management OS reports.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BootReport {
    /// `flashing`, `syncing`, `booted` or `failed`.
    pub state: MachineState,
    /// What happened.
    #[serde(default)]
    pub message: String,
    /// Numbers (bytes read, fetched, written, seconds).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
    /// With `booted`: the plan the task gave.
    #[serde(default)]
    pub plan: Option<BootPlan>,
}

fn version_meta(image: &Image, parent: Option<Id>) -> VersionMeta {
    VersionMeta { host: image.uuid.clone(), tags: vec!["bams-image".into(), format!("image={}", image.name)], parent }
}

/// Hash of a boot token as stored (the token itself is only in the boot answer).
fn token_hash(token: &str) -> String {
    blake3::hash(token.as_bytes()).to_hex().to_string()
}

/// Counts bytes read (what a sync really sent).
struct CountingReader {
    inner: Box<dyn Read + Send>,
    n: Arc<std::sync::atomic::AtomicU64>,
}

impl Read for CountingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

/// Open a version's snapshot on a blocking thread.
async fn open_snapshot(repo: &Arc<Repository>, index: &Arc<MasterIndex>, snapshot: &str) -> Result<OpenedImage> {
    let (repo, index, snapshot) = (repo.clone(), index.clone(), snapshot.to_string());
    blocking(move || Ok(bams_store::image::open(&repo, &index, &snapshot)?)).await
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ImageError::Internal(format!("image worker failed: {e}")))?
}
