//! A local cache of the repository's immutable metadata objects (index files and snapshots),
//! so runs against object storage list them but do not download them again. One directory per
//! repository id; every entry is verified like a download (content hash, then AEAD), so a
//! damaged entry is dropped and fetched again, and deleting the cache at any time is safe.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::id::Id;

/// Object directories whose objects never change once written (named by content hash).
pub const CACHED_DIRS: [&str; 3] = ["index", "snapshots", "heads"];

/// The cache of one repository.
#[derive(Debug)]
pub struct ObjectCache {
    dir: PathBuf,
}

impl ObjectCache {
    /// Open (creating) `base/<repository id>`.
    pub fn open(base: &Path, repo_id: &Id) -> Result<Self> {
        let dir = base.join(repo_id.to_hex());
        for sub in CACHED_DIRS {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(|e| Error::io(format_args!("creating cache {}", dir.display()), e))?;
        }
        // Backup tools skip directories tagged like this (https://bford.info/cachedir/).
        let tag = base.join("CACHEDIR.TAG");
        if !tag.exists() {
            let _ = std::fs::write(&tag, "Signature: 8a477f597d28d172789f06886806bc55\n# bams object cache\n");
        }
        Ok(Self { dir })
    }

    /// Where `key` (`index/<id>`) lives, or `None` for keys that are not cached.
    fn path(&self, key: &str) -> Option<PathBuf> {
        let (dir, name) = key.split_once('/')?;
        (CACHED_DIRS.contains(&dir) && Id::from_hex(name).is_ok()).then(|| self.dir.join(dir).join(name))
    }

    /// The cached bytes of `key`, if any.
    pub fn get(&self, key: &str) -> Option<Bytes> {
        std::fs::read(self.path(key)?).ok().map(Bytes::from)
    }

    /// Remember `key`. Failures only cost a later download, so they are logged, not returned.
    pub fn put(&self, key: &str, data: &[u8]) {
        let Some(path) = self.path(key) else { return };
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let written =
            std::fs::File::create(&tmp).and_then(|mut f| f.write_all(data)).and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            tracing::debug!("not caching {key}: {e}");
        }
    }

    /// Forget `key`.
    pub fn remove(&self, key: &str) {
        if let Some(p) = self.path(key) {
            let _ = std::fs::remove_file(p);
        }
    }

    /// Drop entries of `dir` that the repository no longer has (`live` = listed names).
    pub fn retain(&self, dir: &str, live: &HashSet<String>) {
        let Ok(entries) = std::fs::read_dir(self.dir.join(dir)) else { return };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !live.contains(&name) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// The default cache base: `$BAMS_CACHE_DIR`, `$XDG_CACHE_HOME/bams` or `~/.cache/bams`.
pub fn default_base() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("BAMS_CACHE_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d).join("bams"));
    }
    std::env::var_os("HOME").filter(|d| !d.is_empty()).map(|h| PathBuf::from(h).join(".cache/bams"))
}
