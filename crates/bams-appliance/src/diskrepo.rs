//! Disk repositories (`/api/v1/disk/repositories`): storage the appliance sets up to hold
//! backup repositories — a directory, a filesystem on a new loop-backed file or an allowed
//! block device, or a btrfs subvolume. The catalog records what BAMS created, so removal
//! undoes exactly that and never touches anything else.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use bams_catalog::{Catalog, DiskRecord};
use serde::{Deserialize, Serialize};

use crate::disk::{self, Capacity, FsKind};
use crate::runner::{Cmd, CommandRunner};
use crate::ApplianceError;

/// Kinds of disk repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DiskKind {
    /// An existing or new directory.
    Directory,
    /// A filesystem BAMS makes (mkfs) and mounts under its data dir.
    Filesystem,
    /// A subvolume of a mounted btrfs filesystem.
    BtrfsSubvolume,
    /// An LVM logical volume in an existing volume group, formatted and mounted.
    Lvm,
    /// A ZFS dataset with a quota under an existing dataset.
    Zfs,
}

impl DiskKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Directory => "directory",
            Self::Filesystem => "filesystem",
            Self::BtrfsSubvolume => "btrfs-subvolume",
            Self::Lvm => "lvm",
            Self::Zfs => "zfs",
        }
    }
}

/// A request to create a disk repository.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDisk {
    /// Unique name (letters, digits, `.`, `_`, `-`).
    pub name: String,
    /// What to create.
    pub kind: DiskKind,
    /// Directory kind: where (default `<data_dir>/disks/<name>`).
    pub path: Option<String>,
    /// Filesystem kind: ext4, xfs or btrfs (default ext4).
    pub fs_type: Option<FsKind>,
    /// Filesystem kind on a new loop-backed file: its size in bytes.
    pub size_bytes: Option<u64>,
    /// Filesystem kind on a block device (must match `disk_devices` in the config; it is
    /// formatted).
    pub device: Option<String>,
    /// Btrfs-subvolume kind: a directory on a mounted btrfs filesystem to create it in.
    pub parent: Option<String>,
    /// LVM kind: the volume group to create the logical volume `bams-<name>` in
    /// (`size_bytes` sets its size).
    pub volume_group: Option<String>,
    /// ZFS kind: the parent dataset of the new dataset `bams-<name>` (`size_bytes` is its quota).
    pub dataset: Option<String>,
    /// Also create a BAMS backup repository inside and register it under the same name.
    #[serde(default)]
    pub init_repository: bool,
}

/// A disk repository with its live state.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DiskStatus {
    /// What the catalog recorded.
    #[serde(flatten)]
    pub record: DiskRecord,
    /// `ok`, `unmounted` (a filesystem that is not mounted) or `missing` (the path is gone).
    pub health: String,
    /// Space, when the path is there.
    pub capacity: Option<Capacity>,
}

/// Creates, inspects and removes disk repositories.
pub struct DiskRepositories {
    catalog: Catalog,
    runner: Arc<dyn CommandRunner>,
    root: PathBuf,
    allowed_devices: Vec<String>,
}

/// `path` as an absolute, normalized path with no `.`/`..`, not `/`.
pub fn clean_absolute(path: &str) -> Result<PathBuf, ApplianceError> {
    let p = Path::new(path);
    // Checked on the text: `Path::components` silently drops inner `.` and doubled `/`.
    let ok = p.is_absolute()
        && path.len() > 1
        && path.split('/').skip(1).all(|c| !c.is_empty() && c != "." && c != "..")
        && p.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if ok {
        Ok(p.to_path_buf())
    } else {
        Err(ApplianceError::Invalid(format!(
            "{path:?} must be an absolute path without '.', '..' or '//', other than /"
        )))
    }
}

/// Shell-style `*` matching (the only wildcard the device allow-list needs).
pub(crate) fn glob_match(pattern: &str, s: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == s,
        Some((head, tail)) => {
            s.starts_with(head) && (0..=s.len() - head.len()).any(|i| glob_match(tail, &s[head.len() + i..]))
        }
    }
}

impl DiskRepositories {
    /// Disk repositories under `data_dir/disks`; block devices only when they match one of
    /// `allowed_devices` (e.g. `/dev/sd*`).
    pub fn new(
        catalog: Catalog,
        runner: Arc<dyn CommandRunner>,
        data_dir: &Path,
        allowed_devices: Vec<String>,
    ) -> Self {
        Self { catalog, runner, root: data_dir.join("disks"), allowed_devices }
    }

    /// Create what `spec` asks for and record it. On any failure, what was made is undone.
    pub async fn create(&self, spec: &NewDisk) -> Result<DiskRecord, ApplianceError> {
        let invalid = |m: String| Err(ApplianceError::Invalid(m));
        // Names become file names under the data dir: the catalog's rule, checked before any
        // OS work rather than when the record is inserted.
        bams_catalog::validate_name("disk repository", &spec.name).map_err(catalog)?;
        if self.catalog.list_disk_repositories().await.map_err(catalog)?.iter().any(|d| d.name == spec.name) {
            return Err(ApplianceError::Conflict(format!("a disk repository named {:?} already exists", spec.name)));
        }
        let mut rec = DiskRecord {
            id: 0,
            name: spec.name.clone(),
            kind: spec.kind.as_str().into(),
            path: String::new(),
            fs_type: None,
            source: None,
            created_path: false,
            created_source: false,
            created_at: 0,
        };
        match spec.kind {
            DiskKind::Directory => {
                let path = match &spec.path {
                    Some(p) => clean_absolute(p)?,
                    None => self.root.join(&spec.name),
                };
                if path.exists() && !path.is_dir() {
                    return invalid(format!("{} exists and is not a directory", path.display()));
                }
                rec.created_path = !path.exists();
                std::fs::create_dir_all(&path)
                    .map_err(|e| ApplianceError::Io { what: format!("creating {}", path.display()), source: e })?;
                rec.path = path.display().to_string();
            }
            DiskKind::Filesystem => {
                let fs = spec.fs_type.unwrap_or(FsKind::Ext4);
                let mnt = self.root.join(&spec.name);
                if disk::mount_at(&mnt).is_some() {
                    return Err(ApplianceError::Conflict(format!("{} is already a mount point", mnt.display())));
                }
                rec.fs_type = Some(fs.as_str().into());
                rec.path = mnt.display().to_string();
                rec.created_path = !mnt.exists();
                match (&spec.device, spec.size_bytes) {
                    (Some(dev), None) => {
                        self.check_device(dev)?;
                        self.runner.run(&fs.mkfs(Path::new(dev)).timeout(std::time::Duration::from_secs(600))).await?;
                        disk::mount_loop_or_device(self.runner.as_ref(), Path::new(dev), &mnt, false).await?;
                        rec.source = Some(dev.clone());
                    }
                    (None, Some(size)) => {
                        std::fs::create_dir_all(&self.root).map_err(|e| ApplianceError::Io {
                            what: format!("creating {}", self.root.display()),
                            source: e,
                        })?;
                        let image = self.root.join(format!("{}.img", spec.name));
                        disk::create_loop_filesystem(self.runner.as_ref(), &image, size, fs, &mnt).await?;
                        rec.source = Some(image.display().to_string());
                        rec.created_source = true;
                    }
                    _ => {
                        return invalid(
                            "a filesystem needs either size_bytes (a new loop-backed file) or device".into(),
                        )
                    }
                }
            }
            DiskKind::BtrfsSubvolume => {
                let parent = clean_absolute(spec.parent.as_deref().unwrap_or_default())?;
                let on = disk::filesystem_of(&parent).ok_or_else(|| {
                    ApplianceError::Invalid(format!("{} is not on a mounted filesystem", parent.display()))
                })?;
                if on.fstype != "btrfs" {
                    return invalid(format!("{} is on {}, not btrfs", parent.display(), on.fstype));
                }
                let path = parent.join(&spec.name);
                if path.exists() {
                    return Err(ApplianceError::Conflict(format!("{} already exists", path.display())));
                }
                self.runner
                    .run(&Cmd::new("btrfs", ["subvolume".to_string(), "create".into(), path.display().to_string()]))
                    .await?;
                rec.path = path.display().to_string();
                rec.fs_type = Some("btrfs".into());
                rec.created_path = true;
            }
            DiskKind::Lvm => self.create_lvm(spec, &mut rec).await?,
            DiskKind::Zfs => self.create_zfs(spec, &mut rec).await?,
        }
        match self.catalog.add_disk_repository(&rec).await {
            Ok(r) => Ok(r),
            Err(e) => {
                let _ = self.undo(&rec).await;
                Err(catalog(e))
            }
        }
    }

    async fn create_lvm(&self, spec: &NewDisk, rec: &mut DiskRecord) -> Result<(), ApplianceError> {
        let vg =
            spec.volume_group.as_deref().ok_or_else(|| ApplianceError::Invalid("lvm needs volume_group".into()))?;
        crate::lvm::check_name("volume group", vg)?;
        let size = spec.size_bytes.ok_or_else(|| ApplianceError::Invalid("lvm needs size_bytes".into()))?;
        let fs = spec.fs_type.unwrap_or(FsKind::Ext4);
        if size < fs.min_size() {
            return Err(ApplianceError::Invalid(format!("{} needs at least {} MiB", fs.as_str(), fs.min_size() >> 20)));
        }
        let groups = crate::lvm::parse_vgs(&self.runner.run(&crate::lvm::vgs_cmd(Some(vg))).await?.stdout)?;
        let group = groups
            .iter()
            .find(|g| g.name == vg)
            .ok_or_else(|| ApplianceError::Invalid(format!("no volume group {vg}")))?;
        if group.free < size {
            return Err(ApplianceError::Conflict(format!(
                "volume group {vg} has {} bytes free, {size} asked",
                group.free
            )));
        }
        let lv = format!("bams-{}", spec.name);
        crate::lvm::check_name("logical volume", &lv)?;
        let mnt = self.root.join(&spec.name);
        rec.created_path = !mnt.exists();
        self.runner.run(&crate::lvm::lvcreate_cmd(vg, &lv, size)).await?;
        let dev = format!("/dev/{vg}/{lv}");
        let made = async {
            self.runner.run(&fs.mkfs(Path::new(&dev)).timeout(std::time::Duration::from_secs(600))).await?;
            disk::mount_loop_or_device(self.runner.as_ref(), Path::new(&dev), &mnt, false).await
        }
        .await;
        if let Err(e) = made {
            let _ = self.runner.run(&crate::lvm::lvremove_cmd(vg, &lv)).await;
            return Err(e);
        }
        rec.path = mnt.display().to_string();
        rec.fs_type = Some(fs.as_str().into());
        rec.source = Some(dev);
        rec.created_source = true;
        Ok(())
    }

    async fn create_zfs(&self, spec: &NewDisk, rec: &mut DiskRecord) -> Result<(), ApplianceError> {
        let parent = spec.dataset.as_deref().ok_or_else(|| ApplianceError::Invalid("zfs needs dataset".into()))?;
        crate::zfs::check_dataset(parent)?;
        let quota =
            spec.size_bytes.ok_or_else(|| ApplianceError::Invalid("zfs needs size_bytes (the quota)".into()))?;
        let found = crate::zfs::parse_list(&self.runner.run(&crate::zfs::list_cmd(parent)).await?.stdout)?;
        if !found.iter().any(|d| d.name == parent) {
            return Err(ApplianceError::Invalid(format!("no ZFS dataset {parent}")));
        }
        let ds = format!("{parent}/bams-{}", spec.name);
        crate::zfs::check_dataset(&ds)?;
        let mnt = self.root.join(&spec.name);
        rec.created_path = !mnt.exists();
        self.runner.run(&crate::zfs::create_cmd(&ds, quota, &mnt.display().to_string())).await?;
        rec.path = mnt.display().to_string();
        rec.fs_type = Some("zfs".into());
        rec.source = Some(ds);
        rec.created_source = true;
        Ok(())
    }

    fn check_device(&self, dev: &str) -> Result<(), ApplianceError> {
        let path = clean_absolute(dev)?;
        if !self.allowed_devices.iter().any(|g| glob_match(g, dev)) {
            return Err(ApplianceError::Invalid(format!(
                "{dev} is not an allowed device (config disk_devices: {:?})",
                self.allowed_devices
            )));
        }
        let meta = std::fs::metadata(&path).map_err(|e| ApplianceError::Invalid(format!("{dev}: {e}")))?;
        if !std::os::unix::fs::FileTypeExt::is_block_device(&meta.file_type()) {
            return Err(ApplianceError::Invalid(format!("{dev} is not a block device")));
        }
        if let Some(m) = disk::mounts().into_iter().find(|m| m.source == dev) {
            return Err(ApplianceError::Conflict(format!("{dev} is mounted at {}", m.mount_point.display())));
        }
        Ok(())
    }

    /// Live state of one record.
    pub fn status(&self, rec: DiskRecord) -> DiskStatus {
        let path = Path::new(&rec.path);
        let health = if !path.exists() {
            "missing"
        } else if matches!(rec.kind.as_str(), "filesystem" | "lvm" | "zfs") && disk::mount_at(path).is_none() {
            "unmounted"
        } else {
            "ok"
        };
        let capacity = (health == "ok").then(|| disk::capacity(path).ok()).flatten();
        DiskStatus { record: rec, health: health.into(), capacity }
    }

    /// Undo what BAMS created for `rec` and forget it. The caller checks it is not in use.
    pub async fn remove(&self, rec: &DiskRecord) -> Result<(), ApplianceError> {
        self.undo(rec).await?;
        self.catalog.delete_disk_repository(rec.id).await.map_err(catalog)
    }

    async fn undo(&self, rec: &DiskRecord) -> Result<(), ApplianceError> {
        let path = Path::new(&rec.path);
        match rec.kind.as_str() {
            "filesystem" => {
                disk::unmount(self.runner.as_ref(), path).await?;
                if let (true, Some(src)) = (rec.created_source, &rec.source) {
                    let _ = std::fs::remove_file(src);
                }
                if rec.created_path {
                    let _ = std::fs::remove_dir(path);
                }
            }
            "lvm" => {
                disk::unmount(self.runner.as_ref(), path).await?;
                let lv = rec.source.as_deref().and_then(|s| s.strip_prefix("/dev/")).and_then(|s| s.split_once('/'));
                if let (true, Some((vg, lv))) = (rec.created_source, lv) {
                    self.runner.run(&crate::lvm::lvremove_cmd(vg, lv)).await?;
                }
                if rec.created_path {
                    let _ = std::fs::remove_dir(path);
                }
            }
            "zfs" => {
                if let (true, Some(ds)) = (rec.created_source, &rec.source) {
                    self.runner.run(&crate::zfs::destroy_cmd(ds)).await?;
                }
                if rec.created_path {
                    let _ = std::fs::remove_dir(path);
                }
            }
            "btrfs-subvolume" if rec.created_path && path.exists() => {
                self.runner
                    .run(&Cmd::new("btrfs", ["subvolume".to_string(), "delete".into(), rec.path.clone()]))
                    .await?;
            }
            "directory" if rec.created_path && path.exists() => {
                std::fs::remove_dir_all(path)
                    .map_err(|e| ApplianceError::Io { what: format!("removing {}", path.display()), source: e })?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Mount every recorded filesystem again (at server start); problems are returned as
    /// warnings so one bad disk does not stop the server.
    pub async fn remount_all(&self) -> Vec<String> {
        let Ok(all) = self.catalog.list_disk_repositories().await else { return vec!["catalog unavailable".into()] };
        let mut warnings = Vec::new();
        for rec in all.iter().filter(|r| r.kind == "filesystem" || r.kind == "lvm") {
            let Some(src) = &rec.source else { continue };
            let is_image = rec.kind == "filesystem" && rec.created_source;
            if let Err(e) =
                disk::mount_loop_or_device(self.runner.as_ref(), Path::new(src), Path::new(&rec.path), is_image).await
            {
                warnings.push(format!("disk repository {}: {e}", rec.name));
            }
        }
        warnings
    }
}

fn catalog(e: bams_catalog::CatalogError) -> ApplianceError {
    match e {
        bams_catalog::CatalogError::Conflict(m) => ApplianceError::Conflict(m),
        bams_catalog::CatalogError::Invalid(m) => ApplianceError::Invalid(m),
        bams_catalog::CatalogError::NotFound(m) => ApplianceError::NotFound(m),
        other => ApplianceError::Catalog(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_device_patterns_are_checked() {
        assert!(clean_absolute("/srv/backup").is_ok());
        for bad in ["relative", "/", "/srv/../etc", "/srv/./x", "/srv//x", "/srv/x/"] {
            assert!(clean_absolute(bad).is_err(), "{bad}");
        }
        assert!(glob_match("/dev/sd*", "/dev/sdb"));
        assert!(glob_match("/dev/nvme*n*", "/dev/nvme0n1"));
        assert!(!glob_match("/dev/sd*", "/dev/vda"));
        assert!(!glob_match("/dev/sd*", "/etc/passwd"));
    }
}
