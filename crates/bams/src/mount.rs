//! `bams mount`: snapshots as a read-only FUSE filesystem.
//!
//! The root holds one directory per snapshot (`<local time>_<short id>`) and a `latest`
//! symlink. Inodes are allocated as directories are looked at; file reads fetch the blobs that
//! cover the requested range (with a small cache of recently read blobs).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use bams_store::index::MasterIndex;
use bams_store::snapshot::SnapshotEntry;
use bams_store::tree::{Node, NodeKind};
use bams_store::Id;
use fuser::{FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, Request};

use crate::output::Out;
use crate::session::Session;

const TTL: Duration = Duration::from_secs(60);
const ROOT: u64 = 1;
const LATEST: u64 = 2;

enum Entry {
    Root,
    Latest(String),
    Snapshot { tree: Id, time: SystemTime },
    Node { node: Box<Node>, offsets: Option<Vec<u64>> },
}

struct Inode {
    entry: Entry,
    children: Option<Vec<(Vec<u8>, u64)>>,
}

struct SnapshotFs {
    session: Session,
    index: MasterIndex,
    snapshots: Vec<(String, SnapshotEntry)>,
    inodes: Vec<Inode>,
    blob_cache: Vec<(Id, std::sync::Arc<Vec<u8>>)>,
    uid: u32,
    gid: u32,
}

fn to_time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH
    }
}

fn file_type(k: NodeKind) -> FileType {
    match k {
        NodeKind::Dir => FileType::Directory,
        NodeKind::Symlink => FileType::Symlink,
        NodeKind::Blockdev => FileType::BlockDevice,
        NodeKind::Chardev => FileType::CharDevice,
        NodeKind::Fifo => FileType::NamedPipe,
        NodeKind::Socket => FileType::Socket,
        NodeKind::File => FileType::RegularFile,
    }
}

impl SnapshotFs {
    fn new(session: Session, index: MasterIndex, snaps: Vec<SnapshotEntry>) -> Self {
        let snapshots: Vec<(String, SnapshotEntry)> = snaps
            .into_iter()
            .map(|s| (format!("{}_{}", s.snapshot.time.format("%Y-%m-%dT%H:%M:%S"), s.id.short()), s))
            .collect();
        let latest = snapshots.last().map(|(n, _)| n.clone()).unwrap_or_default();
        let inodes = vec![
            Inode { entry: Entry::Root, children: None }, // ino 0 unused
            Inode { entry: Entry::Root, children: None },
            Inode { entry: Entry::Latest(latest), children: Some(Vec::new()) },
        ];
        Self {
            session,
            index,
            snapshots,
            inodes,
            blob_cache: Vec::new(),
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
        }
    }

    fn alloc(&mut self, entry: Entry) -> u64 {
        self.inodes.push(Inode { entry, children: None });
        (self.inodes.len() - 1) as u64
    }

    /// Make sure a directory's children have inodes.
    fn children(&mut self, ino: u64) -> Option<Vec<(Vec<u8>, u64)>> {
        let inode = self.inodes.get(ino as usize)?;
        if let Some(c) = &inode.children {
            return Some(c.clone());
        }
        let tree_id = match &inode.entry {
            Entry::Root => None,
            Entry::Snapshot { tree, .. } => Some(*tree),
            Entry::Node { node, .. } => Some(node.subtree?),
            Entry::Latest(_) => return None,
        };
        let mut out = Vec::new();
        match tree_id {
            None => {
                if !self.snapshots.is_empty() {
                    out.push((b"latest".to_vec(), LATEST));
                }
                let snaps: Vec<(String, Id, SystemTime)> = self
                    .snapshots
                    .iter()
                    .map(|(n, s)| (n.clone(), s.snapshot.tree, SystemTime::from(s.snapshot.time)))
                    .collect();
                for (name, tree, time) in snaps {
                    let i = self.alloc(Entry::Snapshot { tree, time });
                    out.push((name.into_bytes(), i));
                }
            }
            Some(t) => {
                let tree = self.session.repo.load_tree(&self.index, &t).ok()?;
                for n in tree.nodes {
                    let name = n.name.0.clone();
                    let i = self.alloc(Entry::Node { node: Box::new(n), offsets: None });
                    out.push((name, i));
                }
            }
        }
        self.inodes[ino as usize].children = Some(out.clone());
        Some(out)
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let inode = self.inodes.get(ino as usize)?;
        let now = SystemTime::now();
        let base = FileAttr {
            ino,
            size: 0,
            blocks: 0,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            kind: FileType::Directory,
            perm: 0o555,
            nlink: 2,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        };
        Some(match &inode.entry {
            Entry::Root => base,
            Entry::Latest(target) => {
                FileAttr { kind: FileType::Symlink, perm: 0o777, size: target.len() as u64, nlink: 1, ..base }
            }
            Entry::Snapshot { time, .. } => FileAttr { atime: *time, mtime: *time, ctime: *time, ..base },
            Entry::Node { node, .. } => FileAttr {
                size: node.size,
                blocks: node.size.div_ceil(512),
                atime: to_time(node.atime_ns),
                mtime: to_time(node.mtime_ns),
                ctime: to_time(node.ctime_ns),
                kind: file_type(node.kind),
                perm: (node.mode & 0o7777) as u16,
                nlink: if node.kind == NodeKind::Dir { 2 } else { 1 },
                uid: node.uid,
                gid: node.gid,
                rdev: node.rdev.unwrap_or(0) as u32,
                ..base
            },
        })
    }

    fn blob(&mut self, id: &Id) -> Option<std::sync::Arc<Vec<u8>>> {
        if let Some((_, b)) = self.blob_cache.iter().find(|(i, _)| i == id) {
            return Some(b.clone());
        }
        let data = std::sync::Arc::new(self.session.repo.read_blob(&self.index, id).ok()?);
        if self.blob_cache.len() >= 8 {
            self.blob_cache.remove(0);
        }
        self.blob_cache.push((*id, data.clone()));
        Some(data)
    }

    fn read_file(&mut self, ino: u64, offset: u64, size: usize) -> Option<Vec<u8>> {
        let index = &self.index;
        let inode = self.inodes.get_mut(ino as usize)?;
        let Entry::Node { node, offsets } = &mut inode.entry else {
            return None;
        };
        if offsets.is_none() {
            let mut acc = 0u64;
            let mut v = Vec::with_capacity(node.content.len() + 1);
            for id in &node.content {
                v.push(acc);
                acc += u64::from(index.get(id)?.raw_len);
            }
            v.push(acc);
            *offsets = Some(v);
        }
        let offs = offsets.clone()?;
        let content = node.content.clone();
        let end = (offset + size as u64).min(*offs.last()?);
        let mut out = Vec::with_capacity(size);
        let mut pos = offset;
        while pos < end {
            let i = offs.partition_point(|&o| o <= pos).checked_sub(1)?;
            let blob = self.blob(content.get(i)?)?;
            let start = (pos - offs[i]) as usize;
            let stop = ((end - offs[i]) as usize).min(blob.len());
            out.extend_from_slice(&blob[start..stop]);
            pos = offs[i] + stop as u64;
        }
        Some(out)
    }
}

impl Filesystem for SnapshotFs {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let Some(children) = self.children(parent) else {
            return reply.error(libc::ENOENT);
        };
        let name = name.as_encoded_bytes();
        match children.iter().find(|(n, _)| n == name).and_then(|(_, i)| self.attr(*i)) {
            Some(attr) => reply.entry(&TTL, &attr, 0),
            None => reply.error(libc::ENOENT),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.attr(ino) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(libc::ENOENT),
        }
    }

    fn readlink(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyData) {
        match self.inodes.get(ino as usize).map(|i| &i.entry) {
            Some(Entry::Latest(t)) => reply.data(t.as_bytes()),
            Some(Entry::Node { node, .. }) if node.kind == NodeKind::Symlink => {
                reply.data(&node.link_target.clone().unwrap_or_default().0)
            }
            _ => reply.error(libc::EINVAL),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock: Option<u64>,
        reply: ReplyData,
    ) {
        match self.read_file(ino, offset.max(0) as u64, size as usize) {
            Some(data) => reply.data(&data),
            None => reply.error(libc::EIO),
        }
    }

    fn readdir(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, offset: i64, mut reply: ReplyDirectory) {
        let Some(children) = self.children(ino) else {
            return reply.error(libc::ENOTDIR);
        };
        let mut entries = vec![(ino, FileType::Directory, b".".to_vec()), (ROOT, FileType::Directory, b"..".to_vec())];
        for (name, i) in children {
            let kind = self.attr(i).map_or(FileType::RegularFile, |a| a.kind);
            entries.push((i, kind, name));
        }
        for (k, (i, kind, name)) in entries.into_iter().enumerate().skip(offset.max(0) as usize) {
            if reply.add(i, (k + 1) as i64, kind, OsStr::from_bytes(&name)) {
                break;
            }
        }
        reply.ok();
    }
}

/// Block SIGINT/SIGTERM in this (and future) threads so one thread can wait for them.
pub fn block_signals() -> Result<nix::sys::signal::SigSet> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block().context("blocking signals")?;
    Ok(set)
}

/// Mount until unmounted (`fusermount3 -u`) or interrupted (SIGINT/SIGTERM unmounts cleanly).
pub fn mount(session: Session, mountpoint: &Path, out: Out, signals: nix::sys::signal::SigSet) -> Result<()> {
    if !mountpoint.is_dir() {
        anyhow::bail!("{}: not a directory", mountpoint.display());
    }
    let (snaps, _) = session.repo.snapshots()?;
    let index = session.repo.load_index()?;
    let location = session.repo.location();
    let fs = SnapshotFs::new(session, index, snaps);
    let options =
        [MountOption::RO, MountOption::FSName(format!("bams:{location}")), MountOption::Subtype("bams".into())];
    let mp = mountpoint.to_path_buf();
    std::thread::spawn(move || {
        if signals.wait().is_ok() {
            let _ = std::process::Command::new("fusermount3").args(["-u", "-z"]).arg(&mp).status();
        }
    });
    out.info(format!(
        "mounted at {}; unmount with `fusermount3 -u {}` or Ctrl-C",
        mountpoint.display(),
        mountpoint.display()
    ));
    fuser::mount2(fs, mountpoint, &options).with_context(|| format!("mounting {}", mountpoint.display()))
}
