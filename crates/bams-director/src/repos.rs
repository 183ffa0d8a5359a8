//! Opening the repositories the catalog lists. Each repository's secret is a random key in a
//! 0600 file under `<data_dir>/keys/` (or a password given at registration), never in the
//! database. Opened repositories are cached: opening costs an Argon2id derivation.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bams_catalog::Catalog;
use bams_store::crypto::SlotKind;
use bams_store::repo::InitOptions;
use bams_store::Repository;

/// Why a repository could not be registered or opened.
#[derive(Debug, thiserror::Error)]
pub enum RepoPoolError {
    /// Catalog problem (not found, conflict…).
    #[error(transparent)]
    Catalog(#[from] bams_catalog::CatalogError),
    /// Engine problem (wrong password, not a repository…).
    #[error(transparent)]
    Store(#[from] bams_store::Error),
    /// Bad registration request.
    #[error("{0}")]
    Invalid(String),
    /// Local file problem (key files).
    #[error("{0}")]
    Io(String),
}

/// Opened repositories by catalog id.
pub struct RepoPool {
    catalog: Catalog,
    keys_dir: PathBuf,
    open: Mutex<HashMap<i64, Arc<Repository>>>,
    /// One lock per repository name being made, so two runs of one agent make one while a
    /// thousand agents' first runs make theirs side by side (one lock for all made them
    /// queue: in `bench/agents.sh` the last ones waited past their poll's HTTP timeout).
    making: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl RepoPool {
    /// A pool keeping key files in `<data_dir>/keys`.
    pub fn new(catalog: Catalog, data_dir: &Path) -> Self {
        Self {
            catalog,
            keys_dir: data_dir.join("keys"),
            open: Mutex::new(HashMap::new()),
            making: Mutex::new(HashMap::new()),
        }
    }

    /// Scratch space of the server (restore-and-compare verify jobs), under the data dir.
    pub fn scratch_dir(&self) -> PathBuf {
        self.keys_dir.parent().unwrap_or(Path::new(".")).join("scratch")
    }

    /// The catalog this pool reads.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Register a repository: with `password`, open an existing one (or create it when
    /// `create`); without, create a new one protected by a generated key file.
    pub async fn register(
        &self,
        name: &str,
        url: &str,
        password: Option<&str>,
        create: bool,
    ) -> Result<bams_catalog::Repository, RepoPoolError> {
        // Names become key file paths: check everything before touching the file system.
        bams_catalog::validate_name("repository", name)?;
        check_location(url)?;
        let backend = bams_store::backend::from_location(url)?;
        if self.catalog.get_repository_by_name(name).await.is_ok() {
            return Err(bams_catalog::CatalogError::Conflict(format!("repository {name:?} already exists")).into());
        }
        let (secret, kind) = match password {
            Some(p) if !p.is_empty() => (p.as_bytes().to_vec(), SlotKind::Password),
            Some(_) => return Err(RepoPoolError::Invalid("empty repository password".into())),
            None if create => (random_key(), SlotKind::Keyfile),
            None => return Err(RepoPoolError::Invalid("an existing repository needs its password".into())),
        };
        let key_file = self.write_key(name, &secret)?;
        let exists = backend.head("config").await?.is_some();
        let opened = {
            let secret = secret.clone();
            let rt = tokio::runtime::Handle::current();
            let shown = url.to_string();
            tokio::task::spawn_blocking(move || {
                if exists {
                    Repository::open(backend, rt, &secret)
                } else if create {
                    Repository::init(backend, rt, &secret, kind, &InitOptions::default())
                } else {
                    Err(bams_store::Error::invalid(format!("{shown} is not a BAMS repository")))
                }
            })
            .await
            .map_err(|e| RepoPoolError::Io(format!("repository task: {e}")))?
        };
        let repo = match opened {
            Ok(r) => r,
            Err(e) => {
                let _ = std::fs::remove_file(&key_file);
                return Err(e.into());
            }
        };
        let rec = self.catalog.add_repository(name, url, &key_file.display().to_string()).await;
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                let _ = std::fs::remove_file(&key_file);
                return Err(e.into());
            }
        };
        self.lock().insert(rec.id, Arc::new(repo));
        Ok(rec)
    }

    /// Make sure the default repository exists (first start): registered as `default`.
    pub async fn ensure_default(&self, url: &str) -> Result<bams_catalog::Repository, RepoPoolError> {
        self.ensure("default", url).await
    }

    /// Make sure repository `name` exists, creating it at `url` with a key file when it does
    /// not (the default repository, the image repository).
    pub async fn ensure(&self, name: &str, url: &str) -> Result<bams_catalog::Repository, RepoPoolError> {
        bams_catalog::validate_name("repository", name)?;
        let making = self.making_lock(name);
        let _making = making.lock().await;
        if let Ok(r) = self.catalog.get_repository_by_name(name).await {
            return Ok(r);
        }
        let key = self.keys_dir.join(format!("{name}.key"));
        if key.exists() {
            // A catalog rebuilt next to an existing repository: reuse its key.
            let secret = std::fs::read(&key).map_err(|e| RepoPoolError::Io(format!("{}: {e}", key.display())))?;
            let secret = String::from_utf8(secret).map_err(|_| RepoPoolError::Io(format!("{name} key is not text")))?;
            return self.register(name, url, Some(secret.trim()), true).await;
        }
        self.register(name, url, None, true).await
    }

    /// Agent `agent`'s own repository under `parent`, made on first use: at
    /// `<parent location>/agents/<agent>`, registered as `parent@agent`, with a random key of
    /// its own in a key file here. The agent gets only this key, so a compromised machine can
    /// read and write its own backups and nobody else's.
    pub async fn agent_repository(
        &self,
        parent: &bams_catalog::Repository,
        agent: &bams_catalog::Agent,
    ) -> Result<bams_catalog::Repository, RepoPoolError> {
        if let Some(r) = self.catalog.agent_repository(parent.id, agent.id).await? {
            return Ok(r);
        }
        let name = bams_catalog::agent_repository_name(&parent.name, &agent.name);
        let making = self.making_lock(&name);
        let _making = making.lock().await;
        if let Some(r) = self.catalog.agent_repository(parent.id, agent.id).await? {
            return Ok(r);
        }
        let url = format!("{}/agents/{}", parent.url.trim_end_matches('/'), agent.name);
        check_location(&url)?;
        let backend = bams_store::backend::from_location(&url)?;
        let key_path = self.keys_dir.join(format!("{name}.key"));
        let exists = backend.head("config").await?.is_some();
        let secret = if exists {
            // Made before, and the catalog was rebuilt since: its key file is still here.
            let key = std::fs::read(&key_path).map_err(|e| {
                RepoPoolError::Io(format!(
                    "{url} is a repository but its key file {} is unreadable: {e}",
                    key_path.display()
                ))
            })?;
            trim_newline(key)
        } else {
            let key = random_key();
            self.write_key(&name, &key)?;
            key
        };
        let rt = tokio::runtime::Handle::current();
        let repo = tokio::task::spawn_blocking(move || {
            if exists {
                Repository::open(backend, rt, &secret)
            } else {
                let opts = InitOptions { kdf: bams_store::crypto::KdfParams::RANDOM_KEY, ..InitOptions::default() };
                Repository::init(backend, rt, &secret, SlotKind::Keyfile, &opts)
            }
        })
        .await
        .map_err(|e| RepoPoolError::Io(format!("repository task: {e}")))??;
        let rec = match self.catalog.add_agent_repository(parent, agent, &url, &key_path.display().to_string()).await {
            Ok(rec) => rec,
            // Another server of the group registered it first.
            Err(bams_catalog::CatalogError::Conflict(_)) => {
                self.catalog
                    .agent_repository(parent.id, agent.id)
                    .await?
                    .ok_or_else(|| RepoPoolError::Invalid(format!("repository name {name:?} is taken")))?
            }
            Err(e) => return Err(e.into()),
        };
        self.lock().insert(rec.id, Arc::new(repo));
        Ok(rec)
    }

    /// The repository `id` and the agents' repositories under it, opened: what the jobs on a
    /// repository (forget, prune, check, copy) and its pool's limits cover.
    pub async fn family(&self, id: i64) -> Result<Vec<(bams_catalog::Repository, Arc<Repository>)>, RepoPoolError> {
        let mut out = vec![(self.catalog.get_repository(id).await?, self.get(id).await?)];
        for child in self.catalog.child_repositories(id).await? {
            let repo = self.get(child.id).await?;
            out.push((child, repo));
        }
        Ok(out)
    }

    /// The secret that opens registered repository `rec` (its key file, without the newline).
    pub fn key_of(rec: &bams_catalog::Repository) -> Result<Vec<u8>, RepoPoolError> {
        let key =
            std::fs::read(&rec.key_file).map_err(|e| RepoPoolError::Io(format!("key file of {}: {e}", rec.name)))?;
        Ok(trim_newline(key))
    }

    /// The opened repository with catalog id `id`.
    pub async fn get(&self, id: i64) -> Result<Arc<Repository>, RepoPoolError> {
        if let Some(r) = self.lock().get(&id) {
            return Ok(r.clone());
        }
        let rec = self.catalog.get_repository(id).await?;
        check_location(&rec.url)?;
        let backend = bams_store::backend::from_location(&rec.url)?;
        let secret = Self::key_of(&rec)?;
        let rt = tokio::runtime::Handle::current();
        let repo = tokio::task::spawn_blocking(move || Repository::open(backend, rt, &secret))
            .await
            .map_err(|e| RepoPoolError::Io(format!("repository task: {e}")))??;
        let repo = Arc::new(repo);
        self.lock().insert(id, repo.clone());
        Ok(repo)
    }

    /// Replace the catalog's snapshot cache of repository `id` with what the repository itself
    /// holds (it is the source of truth). Returns the snapshots cached and the snapshot files
    /// that could not be read.
    pub async fn refresh_snapshots(&self, id: i64) -> Result<(usize, Vec<bams_store::Error>), RepoPoolError> {
        let repo = self.get(id).await?;
        let (all, errors) = tokio::task::spawn_blocking(move || repo.snapshots())
            .await
            .map_err(|e| RepoPoolError::Io(format!("repository task: {e}")))??;
        let rows: Vec<_> =
            all.iter().map(|e| bams_catalog::SnapshotSummary::from_snapshot(id, &e.id, &e.snapshot)).collect();
        self.catalog.sync_snapshots(id, &rows).await?;
        Ok((rows.len(), errors))
    }

    /// Forget a cached handle (after unregistering).
    pub fn evict(&self, id: i64) {
        self.lock().remove(&id);
    }

    /// The lock held while repository `name` is made (dropped from the map once unused).
    fn making_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.making.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(name.to_string()).or_default().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Arc<Repository>>> {
        self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write_key(&self, name: &str, secret: &[u8]) -> Result<PathBuf, RepoPoolError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.keys_dir)
            .map_err(|e| RepoPoolError::Io(format!("{}: {e}", self.keys_dir.display())))?;
        let path = self.keys_dir.join(format!("{name}.key"));
        let tmp = self.keys_dir.join(format!(".{name}.key.tmp"));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| RepoPoolError::Io(format!("{}: {e}", tmp.display())))?;
        f.write_all(secret)
            .and_then(|()| f.sync_all())
            .map_err(|e| RepoPoolError::Io(format!("{}: {e}", tmp.display())))?;
        std::fs::rename(&tmp, &path).map_err(|e| RepoPoolError::Io(format!("{}: {e}", path.display())))?;
        Ok(path)
    }
}

fn trim_newline(mut v: Vec<u8>) -> Vec<u8> {
    while v.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        v.pop();
    }
    v
}

fn random_key() -> Vec<u8> {
    let id = bams_store::Id::random();
    id.to_hex().into_bytes()
}

/// Local repositories must be absolute paths without `..`; `s3://bucket/prefix` takes its
/// credentials from the server's environment (`AWS_*`).
fn check_location(url: &str) -> Result<(), RepoPoolError> {
    if url.is_empty() || url.len() > 1024 || url.chars().any(char::is_control) {
        return Err(RepoPoolError::Invalid(format!(
            "repository URL {url:?}: 1-1024 characters, no control characters"
        )));
    }
    if url.starts_with("s3://") {
        return Ok(());
    }
    if url.contains("://") {
        return Err(RepoPoolError::Invalid(format!(
            "repository URL {url:?}: use an absolute local path or s3://bucket/prefix"
        )));
    }
    let p = PathBuf::from(url);
    if !p.is_absolute() || p.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return Err(RepoPoolError::Invalid(format!("repository path {url:?} must be absolute without '..'")));
    }
    Ok(())
}
