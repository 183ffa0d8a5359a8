//! A snapshot's folder as a tar stream: what a browser downloads. Written as it is read, one
//! blob at a time, so neither side holds the folder in memory or on disk.

use std::io::{Read, Write};

use crate::browse;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::MasterIndex;
use crate::repo::Repository;
use crate::tree::{Node, NodeKind};

/// Reads a file's content blob by blob.
struct Content<'a> {
    repo: &'a Repository,
    index: &'a MasterIndex,
    blobs: std::slice::Iter<'a, Id>,
    current: Vec<u8>,
    at: usize,
}

impl Read for Content<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.current.len() {
            match self.blobs.next() {
                Some(id) => {
                    self.current = self.repo.read_blob(self.index, id).map_err(std::io::Error::other)?;
                    self.at = 0;
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.at);
        buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

fn header(n: &Node, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(n.mode & 0o7777);
    h.set_uid(u64::from(n.uid));
    h.set_gid(u64::from(n.gid));
    h.set_mtime(u64::try_from(n.mtime_ns / 1_000_000_000).unwrap_or(0));
    h.set_size(size);
    if let Some(u) = &n.user {
        let _ = h.set_username(u);
    }
    if let Some(g) = &n.group {
        let _ = h.set_groupname(g);
    }
    h
}

/// Write the tree `root` (whose path in the snapshot is `base`) into `out` as a tar
/// archive: entries are named relative to `base`'s parent, so the folder itself is the top
/// entry. Devices, pipes and sockets are left out (a download cannot recreate them).
pub fn write_tar<W: Write>(repo: &Repository, index: &MasterIndex, root: &Id, base: &str, out: W) -> Result<W> {
    let top = base.trim_matches('/').rsplit('/').next().unwrap_or_default().to_string();
    let mut b = tar::Builder::new(out);
    b.mode(tar::HeaderMode::Complete);
    let mut failure: Option<Error> = None;
    let prefix = base.trim_end_matches('/').to_string();
    browse::list(repo, index, root, &prefix, true, &mut |path, n| {
        if failure.is_some() {
            return;
        }
        let rel = path.strip_prefix(&prefix).unwrap_or(path).trim_start_matches('/');
        let name = if top.is_empty() { rel.to_string() } else { format!("{top}/{rel}") };
        let r = match n.kind {
            NodeKind::Dir => b.append_data(&mut header(n, tar::EntryType::Directory, 0), &name, std::io::empty()),
            NodeKind::File => {
                let content = Content { repo, index, blobs: n.content.iter(), current: Vec::new(), at: 0 };
                b.append_data(&mut header(n, tar::EntryType::Regular, n.size), &name, content)
            }
            NodeKind::Symlink => {
                let target = n.link_target.as_ref().map(|t| t.display()).unwrap_or_default();
                b.append_link(&mut header(n, tar::EntryType::Symlink, 0), &name, target)
            }
            _ => Ok(()),
        };
        if let Err(e) = r {
            failure = Some(Error::io(path, e));
        }
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    b.into_inner().map_err(|e| Error::io("finishing the archive", e))
}
