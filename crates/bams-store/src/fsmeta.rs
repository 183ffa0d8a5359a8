//! Reading and applying POSIX metadata: owners, modes, times, xattrs/ACLs, device numbers.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::Metadata;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use crate::tree::{Node, NodeKind, RawName, Xattr};

/// Caches uid/gid → name lookups (NSS calls are slow).
#[derive(Default)]
pub struct NameCache {
    users: HashMap<u32, Option<String>>,
    groups: HashMap<u32, Option<String>>,
}

impl NameCache {
    fn user(&mut self, uid: u32) -> Option<String> {
        self.users
            .entry(uid)
            .or_insert_with(|| nix::unistd::User::from_uid(uid.into()).ok().flatten().map(|u| u.name))
            .clone()
    }
    fn group(&mut self, gid: u32) -> Option<String> {
        self.groups
            .entry(gid)
            .or_insert_with(|| nix::unistd::Group::from_gid(gid.into()).ok().flatten().map(|g| g.name))
            .clone()
    }
}

/// Node kind from file type.
pub fn kind_of(meta: &Metadata) -> NodeKind {
    let ft = meta.file_type();
    if ft.is_dir() {
        NodeKind::Dir
    } else if ft.is_symlink() {
        NodeKind::Symlink
    } else if ft.is_block_device() {
        NodeKind::Blockdev
    } else if ft.is_char_device() {
        NodeKind::Chardev
    } else if ft.is_fifo() {
        NodeKind::Fifo
    } else if ft.is_socket() {
        NodeKind::Socket
    } else {
        NodeKind::File
    }
}

/// Seconds and nanoseconds as nanoseconds since the epoch, as nodes store times.
pub(crate) fn ns(secs: i64, nsec: i64) -> i64 {
    secs.saturating_mul(1_000_000_000).saturating_add(nsec)
}

/// What a node needs besides `lstat`: the symlink's target and the extended attributes
/// (read by the directory scanner, off the walker's thread).
#[derive(Debug, Default, Clone)]
pub struct Extras {
    /// Target of a symlink.
    pub link_target: Option<RawName>,
    /// Extended attributes, sorted by name.
    pub xattrs: Vec<Xattr>,
    /// A regular file's attributes are left to the backup ([`Self::for_regular_file`]).
    pub xattrs_pending: bool,
}

impl Extras {
    /// A regular file's extras: none read yet. The backup takes its attributes from the
    /// parent snapshot when the file is unchanged (setting one changes the ctime), or from the
    /// descriptor it reads the file through; listing them by path cost a lookup of every
    /// component per file (2.5 % of a first backup's CPU).
    pub fn for_regular_file() -> Self {
        Self { xattrs_pending: true, ..Self::default() }
    }

    /// Read them for the entry at `path` whose `lstat` is `meta`.
    pub fn read(path: &Path, meta: &Metadata) -> Self {
        let link_target = if meta.file_type().is_symlink() {
            std::fs::read_link(path).ok().map(|t| RawName::from(t.as_os_str()))
        } else {
            None
        };
        Self { link_target, xattrs: read_xattrs(path), xattrs_pending: false }
    }
}

/// A node with everything but content/subtree filled from `lstat` + xattrs.
pub fn node_from_metadata(name: &OsStr, path: &Path, meta: &Metadata, names: &mut NameCache) -> Node {
    node_from_parts(name, meta, Extras::read(path, meta), names)
}

/// [`node_from_metadata`] with the extras already read.
pub fn node_from_parts(name: &OsStr, meta: &Metadata, extras: Extras, names: &mut NameCache) -> Node {
    let kind = kind_of(meta);
    let rdev = matches!(kind, NodeKind::Blockdev | NodeKind::Chardev).then(|| meta.rdev());
    let link_target = if kind == NodeKind::Symlink { extras.link_target } else { None };
    let is_file = kind == NodeKind::File;
    Node {
        name: RawName::from(name),
        kind,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        user: names.user(meta.uid()),
        group: names.group(meta.gid()),
        size: if is_file { meta.size() } else { 0 },
        mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
        atime_ns: ns(meta.atime(), meta.atime_nsec()),
        ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
        inode: meta.ino(),
        device_id: meta.dev(),
        links: meta.nlink(),
        rdev,
        link_target,
        content: Vec::new(),
        subtree: None,
        xattrs: extras.xattrs,
        sparse: is_file && meta.blocks().saturating_mul(512) < meta.size(),
    }
}

/// Extended attributes of `path` without following symlinks. Unsupported filesystems give none.
pub fn read_xattrs(path: &Path) -> Vec<Xattr> {
    match xattr::list(path) {
        Ok(names) => sorted_xattrs(names, |n| xattr::get(path, n)),
        Err(_) => Vec::new(),
    }
}

/// [`read_xattrs`] of a file the backup has open: no path to look up again.
pub fn read_file_xattrs(file: &std::fs::File) -> Vec<Xattr> {
    use xattr::FileExt;
    match file.list_xattr() {
        Ok(names) => sorted_xattrs(names, |n| file.get_xattr(n)),
        Err(_) => Vec::new(),
    }
}

fn sorted_xattrs(
    names: impl Iterator<Item = std::ffi::OsString>,
    get: impl Fn(&OsStr) -> std::io::Result<Option<Vec<u8>>>,
) -> Vec<Xattr> {
    let mut out: Vec<Xattr> = names
        .filter_map(|n| {
            let value = get(&n).ok().flatten()?;
            Some(Xattr { name: RawName::from(n.as_os_str()), value: hex::encode(value) })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// What metadata restore should apply.
#[derive(Debug, Clone, Copy)]
pub struct ApplyOptions<'a> {
    /// Try chown (only root can give files away).
    pub owners: bool,
    /// Prefer numeric ids over names.
    pub numeric_owner: bool,
    /// This restore's lookups of owner names.
    pub names: &'a OwnerIds,
}

/// User and group names of one restore, looked up once each: every lookup reads
/// /etc/passwd or /etc/group (or asks NSS), and a restore of 100,000 files owned by a few
/// users would otherwise make 200,000 of them. Kept per restore, not for the process, so a
/// long-running server sees users added since.
#[derive(Debug, Default)]
pub struct OwnerIds {
    users: std::sync::Mutex<HashMap<String, Option<u32>>>,
    groups: std::sync::Mutex<HashMap<String, Option<u32>>>,
}

impl OwnerIds {
    fn cached(
        map: &std::sync::Mutex<HashMap<String, Option<u32>>>,
        name: &str,
        look_up: impl FnOnce(&str) -> Option<u32>,
    ) -> Option<u32> {
        let mut map = map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(id) = map.get(name) {
            return *id;
        }
        let id = look_up(name);
        map.insert(name.to_owned(), id);
        id
    }

    fn uid(&self, name: &str) -> Option<u32> {
        Self::cached(&self.users, name, |n| nix::unistd::User::from_name(n).ok().flatten().map(|u| u.uid.as_raw()))
    }

    fn gid(&self, name: &str) -> Option<u32> {
        Self::cached(&self.groups, name, |n| nix::unistd::Group::from_name(n).ok().flatten().map(|g| g.gid.as_raw()))
    }
}

/// Resolve `node`'s owner names to this machine's ids now and drop the names (and the entry
/// name): a restore holds thousands of planned files at once, and these strings were a fifth
/// of their memory. [`owner_ids`] of the result is what it was of the original.
pub fn settle_owner(node: &mut Node, opts: ApplyOptions) {
    let (uid, gid) = owner_ids(node, opts);
    node.uid = uid.map_or(node.uid, rustix::fs::Uid::as_raw);
    node.gid = gid.map_or(node.gid, rustix::fs::Gid::as_raw);
    node.user = None;
    node.group = None;
    node.name = crate::tree::RawName(Vec::new());
}

/// The owner to restore for `node`: names first (the ids may differ on this machine), the
/// numeric ids when a name is unknown here or `numeric_owner` is set.
pub fn owner_ids(node: &Node, opts: ApplyOptions) -> (Option<rustix::fs::Uid>, Option<rustix::fs::Gid>) {
    let by_name = !opts.numeric_owner;
    let uid = node.user.as_deref().filter(|_| by_name).and_then(|u| opts.names.uid(u)).unwrap_or(node.uid);
    let gid = node.group.as_deref().filter(|_| by_name).and_then(|g| opts.names.gid(g)).unwrap_or(node.gid);
    (Some(rustix::fs::Uid::from_raw(uid)), Some(rustix::fs::Gid::from_raw(gid)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned_by(user: &str, group: &str) -> Node {
        Node {
            uid: 4242,
            gid: 4343,
            user: Some(user.into()),
            group: Some(group.into()),
            ..Node::plain_file("f", Vec::new(), 0, 0)
        }
    }

    #[test]
    fn settling_the_owner_keeps_what_would_be_restored() {
        let names = OwnerIds::default();
        for numeric_owner in [false, true] {
            let opts = ApplyOptions { owners: true, numeric_owner, names: &names };
            for (user, group) in [("root", "root"), ("no-such-user-bams", "no-such-group-bams")] {
                let node = owned_by(user, group);
                let before = owner_ids(&node, opts);
                let mut settled = node.clone();
                settle_owner(&mut settled, opts);
                assert_eq!(owner_ids(&settled, opts), before, "{user} numeric={numeric_owner}");
                assert!(settled.user.is_none() && settled.group.is_none() && settled.name.0.is_empty());
            }
        }
        // Names win over ids unless numeric ids are asked for.
        let opts = ApplyOptions { owners: true, numeric_owner: false, names: &names };
        let mut node = owned_by("root", "root");
        settle_owner(&mut node, opts);
        assert_eq!((node.uid, node.gid), (0, 0));
    }
}
