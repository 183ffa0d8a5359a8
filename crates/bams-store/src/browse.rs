//! Reading snapshots as trees: path lookup, listing (`ls`), and comparison (`diff`).

use std::collections::HashSet;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::MasterIndex;
use crate::repo::Repository;
use crate::tree::{Node, NodeKind, Tree};

/// Split a snapshot path into components, refusing `..` and empty names.
pub fn path_components(path: &str) -> Result<Vec<&str>> {
    let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    if parts.contains(&"..") {
        return Err(Error::invalid(format!("path {path:?} must not contain `..`")));
    }
    Ok(parts)
}

/// Find the node at `path` below tree `root`; `None` path = the root itself (as a tree id).
pub fn lookup(repo: &Repository, index: &MasterIndex, root: &Id, path: &str) -> Result<Lookup> {
    let parts = path_components(path)?;
    let mut tree_id = *root;
    let mut node: Option<Node> = None;
    for (i, part) in parts.iter().enumerate() {
        let tree = repo.load_tree(index, &tree_id)?;
        let n = tree
            .find(part.as_bytes())
            .cloned()
            .ok_or_else(|| Error::not_found(format!("{path}: no such file or directory in the snapshot")))?;
        if i + 1 < parts.len() {
            tree_id = n.subtree.ok_or_else(|| Error::not_found(format!("{path}: {part} is not a directory")))?;
        }
        node = Some(n);
    }
    Ok(match node {
        None => Lookup::Root(tree_id),
        Some(n) => Lookup::Node(Box::new(n)),
    })
}

/// Result of [`lookup`].
pub enum Lookup {
    /// The snapshot root tree.
    Root(Id),
    /// A node inside it.
    Node(Box<Node>),
}

/// Every entry below `root`, depth first, with its path (`/a/b`); `recursive=false` lists one level.
pub fn list(
    repo: &Repository,
    index: &MasterIndex,
    root: &Id,
    base: &str,
    recursive: bool,
    out: &mut dyn FnMut(&str, &Node),
) -> Result<()> {
    let tree = repo.load_tree(index, root)?;
    for n in &tree.nodes {
        let path = format!("{}/{}", base.trim_end_matches('/'), n.name.display());
        out(&path, n);
        if recursive {
            if let Some(sub) = n.subtree {
                list(repo, index, &sub, &path, true, out)?;
            }
        }
    }
    Ok(())
}

/// A snapshot entry as listings show it (`bams ls --json`, the REST browse route).
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// Path inside the snapshot.
    pub path: String,
    /// `file`, `dir`, `symlink`, `blockdev`, `chardev`, `fifo`, `socket`.
    #[serde(rename = "type")]
    pub kind: NodeKind,
    /// Permission bits.
    pub mode: u32,
    /// Owner id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Owner name.
    pub user: Option<String>,
    /// Group name.
    pub group: Option<String>,
    /// Size in bytes.
    pub size: u64,
    /// Modification time (RFC 3339).
    pub mtime: String,
    /// Symlink target.
    pub link_target: Option<String>,
}

impl Entry {
    /// The entry for `node` at `path`.
    pub fn new(path: &str, n: &Node) -> Self {
        Self {
            path: path.to_string(),
            kind: n.kind,
            mode: n.mode,
            uid: n.uid,
            gid: n.gid,
            user: n.user.clone(),
            group: n.group.clone(),
            size: n.size,
            mtime: chrono::DateTime::from_timestamp_nanos(n.mtime_ns).to_rfc3339(),
            link_target: n.link_target.as_ref().map(crate::tree::RawName::display),
        }
    }
}

/// One difference between two snapshots.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    /// `+` added, `-` removed, `M` content changed, `U` metadata only, `T` type changed.
    pub change: &'static str,
    /// Path.
    pub path: String,
}

/// Compare two trees recursively.
pub fn diff(repo: &Repository, index: &MasterIndex, a: &Id, b: &Id) -> Result<Vec<Change>> {
    let mut out = Vec::new();
    diff_trees(repo, index, Some(*a), Some(*b), "", &mut out)?;
    Ok(out)
}

fn load(repo: &Repository, index: &MasterIndex, id: Option<Id>) -> Result<Tree> {
    id.map_or_else(|| Ok(Tree::default()), |id| repo.load_tree(index, &id))
}

fn all_paths(
    repo: &Repository,
    index: &MasterIndex,
    node: &Node,
    path: &str,
    sign: &'static str,
    out: &mut Vec<Change>,
) -> Result<()> {
    out.push(Change { change: sign, path: path.to_string() });
    if let Some(sub) = node.subtree {
        list(repo, index, &sub, path, true, &mut |p, _| out.push(Change { change: sign, path: p.to_string() }))?;
    }
    Ok(())
}

fn diff_trees(
    repo: &Repository,
    index: &MasterIndex,
    a: Option<Id>,
    b: Option<Id>,
    base: &str,
    out: &mut Vec<Change>,
) -> Result<()> {
    if a == b {
        return Ok(());
    }
    let ta = load(repo, index, a)?;
    let tb = load(repo, index, b)?;
    let names: std::collections::BTreeSet<&[u8]> =
        ta.nodes.iter().chain(&tb.nodes).map(|n| n.name.0.as_slice()).collect();
    for name in names {
        let na = ta.find(name);
        let nb = tb.find(name);
        let path = format!("{base}/{}", String::from_utf8_lossy(name));
        match (na, nb) {
            (Some(x), None) => all_paths(repo, index, x, &path, "-", out)?,
            (None, Some(y)) => all_paths(repo, index, y, &path, "+", out)?,
            (Some(x), Some(y)) => {
                if x.kind != y.kind {
                    out.push(Change { change: "T", path: path.clone() });
                } else if x.kind == NodeKind::Dir {
                    if x.mode != y.mode || x.uid != y.uid || x.gid != y.gid || x.xattrs != y.xattrs {
                        out.push(Change { change: "U", path: path.clone() });
                    }
                    diff_trees(repo, index, x.subtree, y.subtree, &path, out)?;
                } else if x.content != y.content || x.link_target != y.link_target || x.rdev != y.rdev {
                    out.push(Change { change: "M", path });
                } else if x.mode != y.mode
                    || x.uid != y.uid
                    || x.gid != y.gid
                    || x.mtime_ns != y.mtime_ns
                    || x.xattrs != y.xattrs
                {
                    out.push(Change { change: "U", path });
                }
            }
            (None, None) => {}
        }
    }
    Ok(())
}

/// Repository-wide numbers for `stats`.
#[derive(Debug, Default, Serialize)]
pub struct RepoStats {
    /// Snapshots.
    pub snapshots: usize,
    /// Packs in the index.
    pub packs: usize,
    /// Distinct blobs.
    pub blobs: usize,
    /// Sum of blob plaintext sizes (deduplicated data).
    pub raw_bytes: u64,
    /// Stored bytes of all packs.
    pub stored_bytes: u64,
    /// Sum of file sizes over all snapshots (what restoring everything would write).
    pub restore_size: u64,
    /// Files over all snapshots.
    pub files: u64,
    /// restore_size / stored_bytes.
    pub dedup_compression_ratio: f64,
}

/// Compute stats; walks every snapshot.
pub fn stats(repo: &Repository, index: &MasterIndex) -> Result<RepoStats> {
    let (snaps, _) = repo.snapshots()?;
    let mut s =
        RepoStats { snapshots: snaps.len(), packs: index.packs().len(), blobs: index.len(), ..Default::default() };
    for loc in index.locations() {
        s.raw_bytes += u64::from(loc.raw_len);
    }
    let listed: HashSet<Id> = index.packs().iter().copied().collect();
    s.stored_bytes = repo.list_packs()?.iter().filter(|(id, _)| listed.contains(id)).map(|(_, o)| o.size).sum();
    for snap in &snaps {
        s.restore_size += snap.snapshot.summary.total_bytes;
        s.files += snap.snapshot.summary.files_new
            + snap.snapshot.summary.files_changed
            + snap.snapshot.summary.files_unmodified;
    }
    if s.stored_bytes > 0 {
        s.dedup_compression_ratio = s.restore_size as f64 / s.stored_bytes as f64;
    }
    Ok(s)
}

/// An entry a name search found.
#[derive(Debug, Clone)]
pub struct Hit {
    /// The newest searched snapshot that holds it.
    pub snapshot: Id,
    /// Its path in that snapshot.
    pub path: String,
    /// The entry.
    pub node: Node,
}

/// Entries whose name contains `needle` (case-insensitive) in `snapshots` (`(snapshot id,
/// root tree)`, newest first). Each tree is read once: an unchanged folder shared by many
/// snapshots is searched in the newest and its entries are reported there. Stops at `limit`
/// hits.
pub fn search(
    repo: &Repository,
    index: &MasterIndex,
    snapshots: &[(Id, Id)],
    needle: &str,
    limit: usize,
) -> Result<Vec<Hit>> {
    let needle = needle.to_lowercase();
    let mut seen = std::collections::HashSet::new();
    let mut hits = Vec::new();
    for (snap, root) in snapshots {
        let mut stack = vec![(*root, String::new())];
        while let Some((tree_id, base)) = stack.pop() {
            if !seen.insert(tree_id) {
                continue;
            }
            let tree = repo.load_tree(index, &tree_id)?;
            for n in &tree.nodes {
                let name = n.name.display();
                let path = format!("{base}/{name}");
                if name.to_lowercase().contains(&needle) {
                    hits.push(Hit { snapshot: *snap, path: path.clone(), node: n.clone() });
                    if hits.len() >= limit {
                        return Ok(hits);
                    }
                }
                if let Some(sub) = n.subtree {
                    stack.push((sub, path));
                }
            }
        }
    }
    Ok(hits)
}
