//! Filesystems for disk repositories: a file formatted as ext4, xfs or btrfs and mounted
//! through a loop device, capacity from `statvfs`, and the mount table from
//! `/proc/self/mountinfo`. The OS work goes through the [`CommandRunner`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::io;
use crate::runner::{Cmd, CommandRunner};
use crate::ApplianceError;

/// Filesystems BAMS can create.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FsKind {
    /// ext4 (`mkfs.ext4`).
    Ext4,
    /// XFS (`mkfs.xfs`).
    Xfs,
    /// Btrfs (`mkfs.btrfs`).
    Btrfs,
}

impl FsKind {
    /// Name as `mount` and `/proc/self/mountinfo` spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ext4 => "ext4",
            Self::Xfs => "xfs",
            Self::Btrfs => "btrfs",
        }
    }

    /// The smallest filesystem its mkfs accepts (XFS refuses under 300 MiB).
    pub fn min_size(self) -> u64 {
        match self {
            Self::Ext4 => 16 << 20,
            Self::Xfs => 300 << 20,
            Self::Btrfs => 128 << 20,
        }
    }

    /// The mkfs command for `target` (quiet, no prompt; `target` is a file BAMS just created).
    pub fn mkfs(self, target: &Path) -> Cmd {
        let t = target.display().to_string();
        match self {
            Self::Ext4 => Cmd::new("mkfs.ext4", ["-q".to_string(), "-F".into(), t]),
            Self::Xfs => Cmd::new("mkfs.xfs", ["-q".to_string(), "-f".into(), t]),
            Self::Btrfs => Cmd::new("mkfs.btrfs", ["-q".to_string(), "-f".into(), t]),
        }
    }
}

/// Space on a filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Capacity {
    /// Size of the filesystem.
    pub total_bytes: u64,
    /// Bytes in use.
    pub used_bytes: u64,
    /// Bytes an unprivileged writer can still use.
    pub available_bytes: u64,
}

/// Capacity of the filesystem holding `path`.
pub fn capacity(path: &Path) -> Result<Capacity, ApplianceError> {
    let st = nix::sys::statvfs::statvfs(path)
        .map_err(|e| ApplianceError::Io { what: format!("statvfs {}", path.display()), source: e.into() })?;
    let frag = st.fragment_size() as u64;
    let total = st.blocks() as u64 * frag;
    let free = st.blocks_free() as u64 * frag;
    Ok(Capacity {
        total_bytes: total,
        used_bytes: total.saturating_sub(free),
        available_bytes: st.blocks_available() as u64 * frag,
    })
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Filesystem type.
    pub fstype: String,
    /// Device or source.
    pub source: String,
}

/// Parse `/proc/self/mountinfo` (proc(5)): field 5 is the mount point, then after the `-`
/// separator the type and the source; spaces and such are octal escapes (`\040`).
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            Some(MountEntry {
                mount_point: PathBuf::from(unescape(fields.get(4)?)),
                fstype: (*fields.get(sep + 1)?).to_string(),
                source: unescape(fields.get(sep + 2)?),
            })
        })
        .collect()
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push(d.iter().fold(0u8, |acc, c| acc.wrapping_mul(8).wrapping_add(c - b'0')));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The current mount table.
pub fn mounts() -> Vec<MountEntry> {
    std::fs::read_to_string("/proc/self/mountinfo").map(|t| parse_mountinfo(&t)).unwrap_or_default()
}

/// The mount at exactly `path`, if any.
pub fn mount_at(path: &Path) -> Option<MountEntry> {
    mounts().into_iter().rev().find(|m| m.mount_point == path)
}

/// The mount that holds `path` (longest mount point that is a prefix of it).
pub fn filesystem_of(path: &Path) -> Option<MountEntry> {
    mounts().into_iter().filter(|m| path.starts_with(&m.mount_point)).max_by_key(|m| m.mount_point.as_os_str().len())
}

/// Create `image` (`size` bytes, sparse), format it as `kind` and mount it at `mountpoint`.
/// Refuses to touch an existing image: BAMS only formats files it creates.
pub async fn create_loop_filesystem(
    runner: &dyn CommandRunner,
    image: &Path,
    size: u64,
    kind: FsKind,
    mountpoint: &Path,
) -> Result<(), ApplianceError> {
    if size < kind.min_size() {
        return Err(ApplianceError::Invalid(format!(
            "{} needs at least {} MiB, asked for {} MiB",
            kind.as_str(),
            kind.min_size() >> 20,
            size >> 20
        )));
    }
    let file = std::fs::OpenOptions::new().write(true).create_new(true).open(image).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            ApplianceError::Invalid(format!("{} already exists; refusing to format it", image.display()))
        } else {
            ApplianceError::Io { what: format!("creating {}", image.display()), source: e }
        }
    })?;
    file.set_len(size).map_err(io(format!("sizing {}", image.display())))?;
    drop(file);
    let made = async {
        runner.run(&kind.mkfs(image).timeout(std::time::Duration::from_secs(300))).await?;
        mount_loop(runner, image, mountpoint).await
    }
    .await;
    if made.is_err() {
        let _ = std::fs::remove_file(image);
    }
    made
}

/// Mount `image` at `mountpoint` through a loop device; nothing to do when already mounted
/// (the server calls this at start for every filesystem repository).
pub async fn mount_loop(runner: &dyn CommandRunner, image: &Path, mountpoint: &Path) -> Result<(), ApplianceError> {
    mount_loop_or_device(runner, image, mountpoint, true).await
}

/// Mount `source` (an image file through a loop device when `loop_file`, else a block
/// device) at `mountpoint`, unless something is mounted there already.
pub async fn mount_loop_or_device(
    runner: &dyn CommandRunner,
    source: &Path,
    mountpoint: &Path,
    loop_file: bool,
) -> Result<(), ApplianceError> {
    std::fs::create_dir_all(mountpoint).map_err(io(format!("creating {}", mountpoint.display())))?;
    if mount_at(mountpoint).is_some() {
        return Ok(());
    }
    let mut args: Vec<String> = if loop_file { vec!["-o".into(), "loop".into()] } else { Vec::new() };
    args.extend([source.display().to_string(), mountpoint.display().to_string()]);
    runner.run(&Cmd::new("mount", args)).await?;
    Ok(())
}

/// Unmount `mountpoint` (the loop device is released with it).
pub async fn unmount(runner: &dyn CommandRunner, mountpoint: &Path) -> Result<(), ApplianceError> {
    if mount_at(mountpoint).is_none() {
        return Ok(());
    }
    runner.run(&Cmd::new("umount", [mountpoint.display().to_string()])).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_are_parsed_with_escapes() {
        // Recorded from /proc/self/mountinfo on Debian 12 (a loop-mounted image with a space).
        let text = "22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro\n\
                    120 22 7:0 / /var/lib/bams/disks/a\\040b rw,relatime shared:64 - xfs /dev/loop0 rw,attr2\n\
                    121 22 0:45 / /run/user/0 rw,nosuid shared:70 - tmpfs tmpfs rw,size=1000k\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].mount_point, PathBuf::from("/var/lib/bams/disks/a b"));
        assert_eq!((m[1].fstype.as_str(), m[1].source.as_str()), ("xfs", "/dev/loop0"));
        assert_eq!(m[0].mount_point, PathBuf::from("/"));
    }

    #[test]
    fn mkfs_vectors_are_exact() {
        let p = Path::new("/var/lib/bams/disks/x.img");
        assert_eq!(FsKind::Xfs.mkfs(p).argv(), ["mkfs.xfs", "-q", "-f", "/var/lib/bams/disks/x.img"]);
        assert_eq!(FsKind::Btrfs.mkfs(p).argv(), ["mkfs.btrfs", "-q", "-f", "/var/lib/bams/disks/x.img"]);
    }
}
