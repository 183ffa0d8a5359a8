//! File operations confined to one directory: the restore target.
//!
//! A restore writes names that come from a snapshot into a directory that may already hold
//! files, some of them symlinks planted by an earlier restore or by a hostile local user. A
//! path-based `create_dir_all` or `open` follows those links and writes wherever they point.
//! [`TargetDir`] holds the target open and resolves every path beneath it with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`: no component of a resolved path may be a
//! symlink or `..`, so nothing is ever read, written, created, chmod-ed or chown-ed outside
//! the target, even if entries inside it are swapped while the restore runs. Final
//! components are handled with the `*at` calls and `NOFOLLOW` flags; an existing symlink
//! where a directory or file is to be restored is removed (the link, not what it points to).

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timestamps};

use crate::tree::{Node, NodeKind};

/// A directory inside the target held open, for creating many entries in it without resolving
/// its path each time. Only for directories this restore created, below directories it
/// created: nobody else can move those elsewhere (moving a directory to another parent needs
/// write permission on it, and they are 0700 until the restore ends), so the handle stays
/// inside the target.
pub struct HeldDir(OwnedFd);

/// The parent an operation works in: a held directory, or one opened for it.
enum Parent<'h> {
    Held(&'h OwnedFd),
    Opened(OwnedFd),
}

impl AsFd for Parent<'_> {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Parent::Held(fd) => fd.as_fd(),
            Parent::Opened(fd) => fd.as_fd(),
        }
    }
}

/// The one directory a restore may write into, held open.
pub struct TargetDir {
    root: OwnedFd,
    path: PathBuf,
}

const BENEATH: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_SYMLINKS).union(ResolveFlags::NO_MAGICLINKS);

fn errno(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

/// Split a relative path into (parent, final name); the name must be one plain component.
fn split(rel: &Path) -> io::Result<(&Path, &OsStr)> {
    match (rel.parent(), rel.file_name()) {
        (Some(parent), Some(name)) if rel.components().all(|c| matches!(c, Component::Normal(_))) => Ok((parent, name)),
        _ => Err(io::Error::new(io::ErrorKind::InvalidInput, format!("not a relative path: {}", rel.display()))),
    }
}

impl TargetDir {
    /// Create `path` if missing and open it. The target itself is the operator's choice, so
    /// links in `path` are followed; nothing beneath it is.
    pub fn open(path: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(path)?;
        let root = rustix::fs::open(path, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
            .map_err(errno)?;
        Ok(Self { root, path: path.to_path_buf() })
    }

    /// The full path of `rel`, for messages.
    pub fn display(&self, rel: &Path) -> PathBuf {
        self.path.join(rel)
    }

    fn resolve(&self, rel: &Path, flags: OFlags) -> io::Result<OwnedFd> {
        let rel: &Path = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
        rustix::fs::openat2(&self.root, rel, flags | OFlags::CLOEXEC | OFlags::NOFOLLOW, Mode::empty(), BENEATH)
            .map_err(errno)
    }

    fn dir(&self, rel: &Path) -> io::Result<OwnedFd> {
        self.resolve(rel, OFlags::DIRECTORY | OFlags::RDONLY)
    }

    /// Hold the directory `rel` open (see [`HeldDir`] for when that is safe).
    pub fn hold_dir(&self, rel: &Path) -> io::Result<HeldDir> {
        self.dir(rel).map(HeldDir)
    }

    /// The parent of `rel` and the final name: `held` when given (it must be that parent).
    fn parent<'h>(&self, rel: &'h Path, held: Option<&'h HeldDir>) -> io::Result<(Parent<'h>, &'h OsStr)> {
        let (parent, name) = split(rel)?;
        match held {
            Some(h) => Ok((Parent::Held(&h.0), name)),
            None => Ok((Parent::Opened(self.dir(parent)?), name)),
        }
    }

    /// Remove whatever non-directory entry sits at `name` (a link is removed, not followed).
    fn clear_entry(parent: &impl AsFd, name: &OsStr) -> io::Result<()> {
        match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                Err(io::Error::new(io::ErrorKind::AlreadyExists, "a directory is in the way of a non-directory entry"))
            }
            Ok(_) => rustix::fs::unlinkat(parent, name, AtFlags::empty()).map_err(errno),
            Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(errno(e)),
        }
    }

    /// Make `rel` a directory: keep an existing one, replace a file or symlink in the way.
    /// True when it made a new one. `held` is the parent, when held (so for all of these).
    pub fn ensure_dir(&self, rel: &Path, held: Option<&HeldDir>) -> io::Result<bool> {
        let (parent, name) = self.parent(rel, held)?;
        match rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o700)) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::EXIST) => {
                let st = rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW).map_err(errno)?;
                if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                    return Ok(false);
                }
                rustix::fs::unlinkat(&parent, name, AtFlags::empty()).map_err(errno)?;
                rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o700)).map_err(errno)?;
                Ok(true)
            }
            Err(e) => Err(errno(e)),
        }
    }

    /// Remove the directory `rel` if empty (a directory created for nothing selected).
    pub fn remove_empty_dir(&self, rel: &Path) {
        if let Ok((parent, name)) = split(rel) {
            if let Ok(parent) = self.dir(parent) {
                let _ = rustix::fs::unlinkat(&parent, name, AtFlags::REMOVEDIR);
            }
        }
    }

    /// A new regular file for `size` bytes, replacing a non-directory in the way, open for
    /// writing; a sparse one gets its size now (it may end in a hole), others from their
    /// content writes.
    pub fn create_file(&self, rel: &Path, size: u64, sparse: bool, held: Option<&HeldDir>) -> io::Result<File> {
        let (parent, name) = self.parent(rel, held)?;
        let create = || {
            rustix::fs::openat(
                &parent,
                name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
        };
        // Into an empty target the name is free: try first, clear what is in the way after.
        let fd = match create() {
            Err(rustix::io::Errno::EXIST) => {
                Self::clear_entry(&parent, name)?;
                create()
            }
            other => other,
        }
        .map_err(errno)?;
        let file = File::from(fd);
        // Content writes give a dense file its size; a sparse one may end in a hole.
        if sparse {
            file.set_len(size)?;
        }
        Ok(file)
    }

    /// Create the regular file `rel` (it must not exist) and open it for writing. For files
    /// whose creation the restore left to their one content write, in a directory it made.
    pub fn create_new(&self, rel: &Path) -> io::Result<File> {
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC | OFlags::NOFOLLOW;
        rustix::fs::openat2(&self.root, rel, flags, Mode::from_raw_mode(0o600), BENEATH).map(File::from).map_err(errno)
    }

    /// Open an existing regular file beneath the target for writing.
    pub fn open_write(&self, rel: &Path) -> io::Result<File> {
        Ok(File::from(self.resolve(rel, OFlags::WRONLY)?))
    }

    /// Open an existing regular file beneath the target for reading.
    pub fn open_read(&self, rel: &Path) -> io::Result<File> {
        Ok(File::from(self.resolve(rel, OFlags::RDONLY)?))
    }

    /// A symlink at `rel` pointing at `target` (stored as is: a link is data, not followed).
    pub fn symlink(&self, target: &OsStr, rel: &Path, held: Option<&HeldDir>) -> io::Result<()> {
        let (parent, name) = self.parent(rel, held)?;
        Self::clear_entry(&parent, name)?;
        rustix::fs::symlinkat(target, &parent, name).map_err(errno)
    }

    /// A hard link at `rel` to `existing`, both beneath the target.
    pub fn hard_link(&self, existing: &Path, rel: &Path, held: Option<&HeldDir>) -> io::Result<()> {
        let (old_parent, old_name) = split(existing)?;
        let old_parent = self.dir(old_parent)?;
        let (parent, name) = self.parent(rel, held)?;
        Self::clear_entry(&parent, name)?;
        rustix::fs::linkat(&old_parent, old_name, &parent, name, AtFlags::empty()).map_err(errno)
    }

    /// A device node or FIFO at `rel`.
    pub fn make_special(&self, rel: &Path, node: &Node, held: Option<&HeldDir>) -> io::Result<()> {
        let kind = match node.kind {
            NodeKind::Blockdev => FileType::BlockDevice,
            NodeKind::Chardev => FileType::CharacterDevice,
            NodeKind::Fifo => FileType::Fifo,
            _ => return Ok(()),
        };
        let (parent, name) = self.parent(rel, held)?;
        Self::clear_entry(&parent, name)?;
        rustix::fs::mknodat(&parent, name, kind, Mode::from_raw_mode(node.mode & 0o777), node.rdev.unwrap_or(0))
            .map_err(errno)
    }

    /// Rename `rel` to the same name with `suffix` appended, in the same directory.
    pub fn add_suffix(&self, rel: &Path, suffix: &str) -> io::Result<PathBuf> {
        let (parent_rel, name) = split(rel)?;
        let parent = self.dir(parent_rel)?;
        let mut marked = OsString::from(name);
        marked.push(suffix);
        rustix::fs::renameat(&parent, name, &parent, &marked).map_err(errno)?;
        Ok(parent_rel.join(marked))
    }

    /// Apply owner, xattrs (ACLs), mode and times to `rel` without following links; returns
    /// warnings. Files and directories are changed through a descriptor whose type was
    /// checked, links and special files by name relative to their parent's descriptor.
    pub fn apply_metadata(&self, rel: &Path, node: &Node, opts: crate::fsmeta::ApplyOptions) -> Vec<String> {
        let shown = self.display(rel);
        let mut warnings = Vec::new();
        let mut warn =
            |what: &str, e: &dyn std::fmt::Display| warnings.push(format!("{}: {what}: {e}", shown.display()));
        if matches!(node.kind, NodeKind::File | NodeKind::Dir) {
            let want = if node.kind == NodeKind::Dir { FileType::Directory } else { FileType::RegularFile };
            let fd = match self.resolve(rel, OFlags::RDONLY | OFlags::NONBLOCK) {
                Ok(fd) => fd,
                Err(e) => {
                    warn("open for metadata", &e);
                    return warnings;
                }
            };
            match rustix::fs::fstat(&fd) {
                Ok(st) if FileType::from_raw_mode(st.st_mode) == want => {}
                _ => {
                    warn("metadata", &"not the restored entry any more; left alone");
                    return warnings;
                }
            }
            warnings.extend(Self::apply_to_open_file(&shown, &File::from(fd), node, opts));
            return warnings;
        }
        let (uid, gid) = if opts.owners { crate::fsmeta::owner_ids(node, opts) } else { (None, None) };
        let times = Timestamps { last_access: timespec(node.atime_ns), last_modification: timespec(node.mtime_ns) };
        let mode = Mode::from_raw_mode(node.mode & 0o7777);
        let Ok((parent_rel, name)) = split(rel) else { return warnings };
        let parent = match self.dir(parent_rel) {
            Ok(p) => p,
            Err(e) => {
                warn("open parent for metadata", &e);
                return warnings;
            }
        };
        if uid.is_some() || gid.is_some() {
            if let Err(e) = rustix::fs::chownat(&parent, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW) {
                if e != rustix::io::Errno::PERM {
                    warn("chown", &errno(e));
                }
            }
        }
        // l*xattr by a path through the parent's descriptor: the last component is not followed.
        let by_parent = Path::new("/proc/self/fd").join(parent.as_fd().as_raw_fd().to_string()).join(name);
        for (xname, value) in node_xattrs(node) {
            if let Err(e) = xattr::set(&by_parent, xname, &value) {
                warn(&format!("xattr {}", xname.to_string_lossy()), &e);
            }
        }
        if node.kind != NodeKind::Symlink {
            // chmod has no no-follow form on Linux: open the node itself (O_PATH, no follow),
            // check it is still the special file, and chmod it through its descriptor's link.
            match rustix::fs::openat(&parent, name, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty()) {
                Ok(fd) => match rustix::fs::fstat(&fd) {
                    Ok(st) if !matches!(FileType::from_raw_mode(st.st_mode), FileType::Symlink) => {
                        let via = Path::new("/proc/self/fd").join(fd.as_raw_fd().to_string());
                        if let Err(e) = rustix::fs::chmod(&via, mode) {
                            warn("chmod", &errno(e));
                        }
                    }
                    _ => warn("chmod", &"not the restored entry any more; left alone"),
                },
                Err(e) => warn("chmod", &errno(e)),
            }
        }
        if let Err(e) = rustix::fs::utimensat(&parent, name, &times, AtFlags::SYMLINK_NOFOLLOW) {
            warn("set times", &errno(e));
        }
        warnings
    }

    /// Owner, extended attributes, mode and times of `node` on a file or directory already
    /// open (the restore applies them with the handle of a file's last content write).
    pub fn apply_file_metadata(
        &self,
        rel: &Path,
        file: &File,
        node: &Node,
        opts: crate::fsmeta::ApplyOptions,
    ) -> Vec<String> {
        Self::apply_to_open_file(&self.display(rel), file, node, opts)
    }

    fn apply_to_open_file(shown: &Path, file: &File, node: &Node, opts: crate::fsmeta::ApplyOptions) -> Vec<String> {
        let mut warnings = Vec::new();
        let mut warn =
            |what: &str, e: &dyn std::fmt::Display| warnings.push(format!("{}: {what}: {e}", shown.display()));
        let (uid, gid) = if opts.owners { crate::fsmeta::owner_ids(node, opts) } else { (None, None) };
        if uid.is_some() || gid.is_some() {
            if let Err(e) = rustix::fs::fchown(file, uid, gid) {
                if e != rustix::io::Errno::PERM {
                    warn("chown", &errno(e));
                }
            }
        }
        for (name, value) in node_xattrs(node) {
            if let Err(e) = xattr::FileExt::set_xattr(file, name, &value) {
                warn(&format!("xattr {}", name.to_string_lossy()), &e);
            }
        }
        if let Err(e) = rustix::fs::fchmod(file, Mode::from_raw_mode(node.mode & 0o7777)) {
            warn("chmod", &errno(e));
        }
        let times = Timestamps { last_access: timespec(node.atime_ns), last_modification: timespec(node.mtime_ns) };
        if let Err(e) = rustix::fs::futimens(file, &times) {
            warn("set times", &errno(e));
        }
        warnings
    }
}

fn timespec(ns: i64) -> rustix::fs::Timespec {
    rustix::fs::Timespec { tv_sec: ns.div_euclid(1_000_000_000), tv_nsec: ns.rem_euclid(1_000_000_000) as _ }
}

fn node_xattrs(node: &Node) -> impl Iterator<Item = (&OsStr, Vec<u8>)> {
    node.xattrs.iter().filter_map(|x| Some((OsStr::from_bytes(&x.name.0), hex::decode(&x.value).ok()?)))
}
