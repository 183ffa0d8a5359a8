//! Config files the appliance installs: written private (they may hold passwords or CHAP
//! secrets), and replaced only after the daemon accepted the new text, keeping the old one.

use std::path::Path;

/// Write `data` to `path` readable by its owner only (0600), synced.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// Move an accepted `staged` file to `target`, first copying the current `target` (if any) to
/// `previous`. Returns whether there was a previous file.
pub(crate) fn install_keeping(staged: &Path, target: &Path, previous: &Path) -> Result<bool, crate::ApplianceError> {
    let kept = target.exists();
    if kept {
        std::fs::copy(target, previous).map_err(crate::error::io(format!("keeping {}", target.display())))?;
    }
    std::fs::rename(staged, target).map_err(crate::error::io(format!("installing {}", target.display())))?;
    Ok(kept)
}

/// A small JSON state file (the virtual library's element state, the media database) changed
/// by several processes — the server, `bams tape` — under one exclusive lock: every change is
/// read-modify-write under the lock, written to a temporary file, synced and renamed into
/// place, so a crash leaves the old state or the new one, never half of either.
#[derive(Debug, Clone)]
pub struct JsonState {
    path: std::path::PathBuf,
    lock_path: std::path::PathBuf,
}

impl JsonState {
    /// The state in `dir/name` (locked through `dir/name.lock`).
    pub fn new(dir: &Path, name: &str) -> Self {
        Self { path: dir.join(name), lock_path: dir.join(format!("{name}.lock")) }
    }

    /// Whether the state was ever written.
    pub fn exists(&self) -> bool {
        self.path.exists()
    }

    /// Hold the lock while the guard lives (for callers that check and create).
    pub fn lock(&self) -> Result<std::fs::File, crate::ApplianceError> {
        let f = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock_path)
            .map_err(crate::error::io(format!("opening {}", self.lock_path.display())))?;
        f.lock().map_err(crate::error::io(format!("locking {}", self.lock_path.display())))?;
        Ok(f)
    }

    /// Read the state (the caller holds the lock); a missing file is `T::default()`.
    pub fn load<T: serde::de::DeserializeOwned + Default>(&self) -> Result<T, crate::ApplianceError> {
        match std::fs::read(&self.path) {
            Ok(text) => serde_json::from_slice(&text)
                .map_err(|e| crate::ApplianceError::Invalid(format!("{}: {e}", self.path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
            Err(e) => Err(crate::error::io(format!("reading {}", self.path.display()))(e)),
        }
    }

    /// Replace the state atomically (the caller holds the lock).
    pub fn save<T: serde::Serialize>(&self, state: &T) -> Result<(), crate::ApplianceError> {
        use std::io::Write;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = std::path::PathBuf::from(tmp);
        let text = serde_json::to_vec_pretty(state).map_err(|e| crate::ApplianceError::Invalid(e.to_string()))?;
        let mut f = std::fs::File::create(&tmp).map_err(crate::error::io(format!("writing {}", tmp.display())))?;
        f.write_all(&text)
            .and_then(|_| f.sync_all())
            .map_err(crate::error::io(format!("writing {}", tmp.display())))?;
        std::fs::rename(&tmp, &self.path).map_err(crate::error::io(format!("installing {}", self.path.display())))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(crate::error::io(format!("syncing {}", dir.display())))
    }

    /// Read-modify-write under the lock.
    pub fn update<T, R>(
        &self,
        f: impl FnOnce(&mut T) -> Result<R, crate::ApplianceError>,
    ) -> Result<R, crate::ApplianceError>
    where
        T: serde::de::DeserializeOwned + serde::Serialize + Default,
    {
        let _guard = self.lock()?;
        let mut state = self.load()?;
        let out = f(&mut state)?;
        self.save(&state)?;
        Ok(out)
    }

    /// Read under the lock.
    pub fn read<T: serde::de::DeserializeOwned + Default, R>(
        &self,
        f: impl FnOnce(&T) -> R,
    ) -> Result<R, crate::ApplianceError> {
        let _guard = self.lock()?;
        Ok(f(&self.load()?))
    }
}
