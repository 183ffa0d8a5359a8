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
