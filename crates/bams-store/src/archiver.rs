//! Backup: walk sources, reuse unchanged files from the parent snapshot, chunk and hash the
//! rest on this thread, and feed new blobs to the [`pipeline`](crate::pipeline).
//!
//! Order of writes (the crash-safety argument): packs → index files → snapshot. A snapshot is
//! only written after every blob it references is in a pack listed by an index file, so a
//! crash at any point leaves at worst unreferenced packs, which the next backup re-indexes
//! ([`Repository::recover_unindexed_packs`]) and reuses. The crashed run's lock is what tells
//! the next backup to look for them.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::exclude::PathMatcher;
use crate::fsmeta::{node_from_metadata, node_from_parts, Extras, NameCache};
use crate::heads::{HeadRecord, HeadTable};
use crate::id::Id;
use crate::image::{CutError, Piece};
use crate::index::MasterIndex;
use crate::pack::BlobKind;
use crate::pipeline::{BlobWriter, PipelineOptions};
use crate::repo::{ChunkerParams, Repository};
use crate::scan::{FileOpener, Scanner};
use crate::snapshot::{Snapshot, SnapshotEntry, Summary};
use crate::tree::{Node, NodeKind, Tree};

/// Callbacks for progress display; all optional.
pub trait Progress: Send + Sync {
    /// A file is being read.
    fn file(&self, _path: &Path) {}
    /// Bytes processed (read, or skipped as unchanged).
    fn bytes(&self, _n: u64) {}
    /// One file finished.
    fn file_done(&self) {}
    /// A non-fatal problem (unreadable file…).
    fn warn(&self, _msg: &str) {}
    /// Polled before each file: `true` stops the backup at that point. Packs already written
    /// are indexed (a checkpoint the next run reuses); no snapshot is written.
    fn cancelled(&self) -> bool {
        false
    }
}

/// No progress output.
pub struct NoProgress;
impl Progress for NoProgress {}

/// Where a snapshot's data comes from.
pub enum Source {
    /// Files, directories and block devices.
    Paths(Vec<PathBuf>),
    /// A stream (e.g. `pg_dump | bams backup --stdin`) stored as one file.
    Stdin {
        /// The stream.
        reader: Box<dyn Read + Send>,
        /// File name in the snapshot.
        name: String,
    },
}

/// How to pick the parent snapshot.
#[derive(Debug, Clone, Default)]
pub enum ParentChoice {
    /// Latest snapshot of the same host and paths.
    #[default]
    Auto,
    /// This one.
    Id(Id),
    /// None: read everything.
    None,
}

/// Everything `backup` needs to know.
pub struct BackupOptions {
    /// What to back up.
    pub source: Source,
    /// Exclude patterns.
    pub excludes: Vec<String>,
    /// Do not cross filesystem boundaries.
    pub one_file_system: bool,
    /// Treat regular files named as sources as disk images (finer chunks, sparse restore).
    /// Block devices named as sources are always imaged.
    pub image: bool,
    /// Tags to attach.
    pub tags: Vec<String>,
    /// Host name to record (default: this host).
    pub host: Option<String>,
    /// Parent selection.
    pub parent: ParentChoice,
    /// Job that runs this backup.
    pub job: Option<String>,
    /// Pipeline tuning.
    pub pipeline: PipelineOptions,
    /// How long to wait for an exclusive lock (prune) to go away.
    pub lock_wait: Duration,
}

impl BackupOptions {
    /// Options for backing up `paths` with defaults elsewhere.
    pub fn paths(paths: Vec<PathBuf>) -> Self {
        Self {
            source: Source::Paths(paths),
            excludes: Vec::new(),
            one_file_system: false,
            image: false,
            tags: Vec::new(),
            host: None,
            parent: ParentChoice::Auto,
            job: None,
            pipeline: PipelineOptions::default(),
            lock_wait: Duration::from_secs(60),
        }
    }
}

/// What a backup produced.
#[derive(Debug)]
pub struct BackupResult {
    /// New snapshot id.
    pub id: Id,
    /// The snapshot.
    pub snapshot: Snapshot,
    /// Warnings (unreadable files…); non-empty means the snapshot is partial.
    pub warnings: Vec<String>,
    /// Packs recovered from an interrupted earlier run.
    pub recovered_packs: usize,
}

/// Run a backup into `repo`.
pub fn backup(repo: &Repository, opts: BackupOptions, progress: &dyn Progress) -> Result<BackupResult> {
    let started = Instant::now();
    let time = chrono::Local::now();
    let host = opts.host.clone().unwrap_or_else(crate::host::hostname);
    let excluder = PathMatcher::new(&opts.excludes)?;
    let paths = match &opts.source {
        Source::Paths(p) => {
            if p.is_empty() {
                return Err(Error::invalid("nothing to back up: give at least one path or --stdin"));
            }
            p.iter().map(|p| absolute(p)).collect::<Result<Vec<_>>>()?
        }
        Source::Stdin { name, .. } => {
            if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                return Err(Error::invalid(format!("--stdin-name {name:?} must be a plain file name")));
            }
            vec![PathBuf::from(format!("/{name}"))]
        }
    };
    let path_strings: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();

    let mut lock = crate::lock::acquire(repo, false, "backup", opts.lock_wait)?;
    let mut index = repo.load_index()?;
    // Packs without an index are left only by a writer that died (its lock is still there) or
    // one still running; listing every pack costs many requests on object storage, so only
    // look when another lock was seen.
    let recovered_packs = if lock.others_seen() {
        let n = repo.recover_unindexed_packs(&mut index)?;
        lock.clear_stale();
        n
    } else {
        0
    };

    let parent = match &opts.parent {
        ParentChoice::None => None,
        ParentChoice::Id(id) => Some(repo.find_snapshot(&id.to_hex())?),
        ParentChoice::Auto => find_parent(repo, &host, &path_strings)?,
    };
    let parent_root = parent.as_ref().and_then(|p| repo.load_tree(&index, &p.snapshot.tree).ok());

    let mut warnings = Vec::new();
    let (tree, summary) = std::thread::scope(|scope| -> Result<(Id, Summary)> {
        let writer = BlobWriter::start(scope, repo, &index, opts.pipeline);
        let mut walker = Walker {
            repo,
            index: &index,
            writer,
            excluder,
            one_file_system: opts.one_file_system,
            image: opts.image,
            progress,
            summary: Summary::default(),
            warnings: &mut warnings,
            hardlinks: HashMap::new(),
            names: NameCache::default(),
            buf: Vec::new(),
            prefetch: crate::prefetch::Prefetcher::start(prefetch_bytes()),
            scanner: None,
            opener: FileOpener::default(),
            heads: None,
            new_heads: Vec::new(),
            image_at: 0,
        };
        let root = match opts.source {
            Source::Stdin { mut reader, name } => walker.stdin_tree(&mut reader, &name),
            Source::Paths(_) => walker.virtual_root(&paths, parent_root),
        };
        let Walker { writer, mut summary, new_heads, .. } = walker;
        let root = match root {
            Ok(root) => root,
            Err(e) => {
                // Drain the pipeline so threads exit, but report the walker's error.
                let _ = writer.finish();
                return Err(e);
            }
        };
        summary.data_blobs_added = writer.added.0;
        summary.tree_blobs_added = writer.added.1;
        summary.data_added = writer.added_bytes;
        let stats = writer.finish()?;
        summary.data_added_packed = stats.packed_bytes;
        save_heads(repo, &new_heads);
        Ok((root, summary))
    })?;

    let mut summary = summary;
    summary.errors = warnings.len() as u64;
    summary.duration_secs = started.elapsed().as_secs_f64();
    let snapshot = Snapshot {
        time,
        host,
        username: crate::host::username(),
        paths: path_strings,
        tags: opts.tags,
        parent: parent.map(|p| p.id),
        tree,
        partial: !warnings.is_empty(),
        job: opts.job,
        origin: None,
        program: format!("bams {}", env!("CARGO_PKG_VERSION")),
        summary,
    };
    // A lock that could not be refreshed may look stale to a prune by now: do not publish a
    // snapshot that depends on packs such a prune may have judged unreferenced.
    lock.ensure_held()?;
    let id = repo.save_snapshot(&snapshot)?;
    Ok(BackupResult { id, snapshot, warnings, recovered_packs })
}

/// Read a file listed at `listed` bytes (< `min`) into `data`, at most `min` bytes. A read
/// that returns exactly the listed size into a buffer one byte larger has met the end of a
/// regular file, so most small files take one `read` instead of two (a second read returning 0
/// was ~1 % of a first backup's CPU); anything else reads on until the end or `min`.
fn read_small(file: &mut File, data: &mut Vec<u8>, listed: u64, min: u64) -> std::io::Result<()> {
    let want = usize::try_from(listed.min(min)).unwrap_or(0) + 1;
    data.resize(want, 0);
    let n = loop {
        match file.read(&mut data[..want]) {
            Ok(n) => break n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    };
    data.truncate(n);
    if n as u64 == listed {
        return Ok(());
    }
    file.take(min - n as u64).read_to_end(data).map(|_| ())
}

/// Save file heads ([`crate::heads`]). They only let later disk images share blobs, so a
/// failure (an older server refusing the object kind) is logged, not fatal.
fn save_heads(repo: &Repository, records: &[HeadRecord]) {
    if records.is_empty() {
        return;
    }
    if let Err(e) = crate::heads::save(repo, records) {
        tracing::warn!("file heads not saved (disk images backed up later will share less): {e}");
    }
}

/// Latest snapshot with the same host and path set.
fn find_parent(repo: &Repository, host: &str, paths: &[String]) -> Result<Option<SnapshotEntry>> {
    let (all, _) = repo.snapshots()?;
    let mut want = paths.to_vec();
    want.sort();
    Ok(all.into_iter().rev().find(|s| {
        let mut p = s.snapshot.paths.clone();
        p.sort();
        s.snapshot.host == host && p == want
    }))
}

/// Make a path absolute and lexically normal without following a final symlink.
fn absolute(p: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(p).map_err(|e| Error::io(p.display(), e))?;
    let mut out = PathBuf::from("/");
    for c in abs.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Whether a file's metadata says it is the parent snapshot's `parent` unchanged (its
/// content is then taken from the parent without reading, if its blobs are all stored).
fn unchanged(parent: Option<&Node>, meta: &fs::Metadata) -> bool {
    parent.is_some_and(|p| {
        p.kind == NodeKind::File
            && p.size == meta.len()
            && p.mtime_ns == crate::fsmeta::ns(meta.mtime(), meta.mtime_nsec())
            && p.ctime_ns == crate::fsmeta::ns(meta.ctime(), meta.ctime_nsec())
            && p.inode == meta.ino()
    })
}

/// Intermediate directories between `/` and the backup targets.
#[derive(Default)]
struct VirtualDir {
    children: BTreeMap<OsString, VirtualEntry>,
}

enum VirtualEntry {
    Target(PathBuf),
    Dir(VirtualDir),
}

impl VirtualDir {
    fn insert(&mut self, parts: &[&OsStr], full: &Path) {
        let Some((first, rest)) = parts.split_first() else {
            return;
        };
        if rest.is_empty() {
            self.children.insert((*first).to_owned(), VirtualEntry::Target(full.to_path_buf()));
            return;
        }
        let entry =
            self.children.entry((*first).to_owned()).or_insert_with(|| VirtualEntry::Dir(VirtualDir::default()));
        if let VirtualEntry::Dir(d) = entry {
            d.insert(rest, full);
        } // else: an ancestor is itself a target and covers this path
    }
}

struct Walker<'a, 'scope, 'env> {
    repo: &'env Repository,
    index: &'env MasterIndex,
    writer: BlobWriter<'scope, 'env>,
    excluder: PathMatcher,
    one_file_system: bool,
    image: bool,
    progress: &'a dyn Progress,
    summary: Summary,
    warnings: &'a mut Vec<String>,
    hardlinks: HashMap<(u64, u64), Vec<Id>>,
    names: NameCache,
    buf: Vec<u8>,
    prefetch: crate::prefetch::Prefetcher,
    /// Reads directories ahead of the walker while it is inside a target directory.
    scanner: Option<Scanner>,
    /// Opens files relative to their directory.
    opener: FileOpener,
    /// Heads of the files the repository holds, loaded for the first disk image.
    heads: Option<HeadTable>,
    /// Heads of this run's new single-blob files, not yet saved.
    new_heads: Vec<HeadRecord>,
    /// Offset in the disk image being read of the next piece queued.
    image_at: u64,
}

/// How far the prefetcher may run ahead of the walker, unless `BAMS_READAHEAD_MIB` says
/// otherwise (0 turns it off; the benchmark compares settings with it).
fn prefetch_bytes() -> u64 {
    std::env::var("BAMS_READAHEAD_MIB").ok().and_then(|v| v.parse::<u64>().ok()).map_or(128 << 20, |m| m << 20)
}

impl Walker<'_, '_, '_> {
    fn warn(&mut self, msg: String) {
        self.progress.warn(&msg);
        tracing::warn!("{msg}");
        self.warnings.push(msg);
    }

    fn save_tree(&mut self, mut tree: Tree) -> Result<Id> {
        tree.sort();
        self.writer.add(BlobKind::Tree, tree.encode()?)
    }

    fn parent_subtree(&self, parent: Option<&Node>) -> Option<Tree> {
        let id = parent?.subtree?;
        self.repo.load_tree(self.index, &id).ok()
    }

    fn virtual_root(&mut self, paths: &[PathBuf], parent: Option<Tree>) -> Result<Id> {
        if paths.iter().any(|p| p == Path::new("/")) {
            let meta = fs::symlink_metadata("/").map_err(|e| Error::io("/", e))?;
            return self.dir_tree(Path::new("/"), meta.dev(), parent);
        }
        let mut root = VirtualDir::default();
        for p in paths {
            let parts: Vec<&OsStr> =
                p.components().filter_map(|c| if let Component::Normal(n) = c { Some(n) } else { None }).collect();
            root.insert(&parts, p);
        }
        self.virtual_tree(Path::new("/"), &root, parent)
    }

    fn virtual_tree(&mut self, path: &Path, dir: &VirtualDir, mut parent: Option<Tree>) -> Result<Id> {
        let mut tree = Tree::default();
        for (name, entry) in &dir.children {
            let child_path = path.join(name);
            let parent_node = parent.as_mut().and_then(|t| t.find_mut(name.as_encoded_bytes()));
            match entry {
                VirtualEntry::Target(full) => {
                    let meta = match fs::symlink_metadata(full) {
                        Ok(m) => m,
                        Err(e) => {
                            self.warn(format!("{}: {e}", full.display()));
                            continue;
                        }
                    };
                    let root_dev = meta.dev();
                    if let Some(node) = self.entry(full, name, &meta, None, parent_node, root_dev, true)? {
                        tree.nodes.push(node);
                    }
                }
                VirtualEntry::Dir(sub) => {
                    let meta = fs::symlink_metadata(&child_path).map_err(|e| Error::io(child_path.display(), e))?;
                    let mut node = node_from_metadata(name, &child_path, &meta, &mut self.names);
                    let parent_sub = self.parent_subtree(parent_node.as_deref());
                    node.subtree = Some(self.virtual_tree(&child_path, sub, parent_sub)?);
                    self.summary.dirs += 1;
                    tree.nodes.push(node);
                }
            }
        }
        self.save_tree(tree)
    }

    /// A directory's tree. The parent snapshot's tree of it is taken by value: it is dropped
    /// once its entries are matched, before the new tree is encoded, so a directory of many
    /// thousand entries does not hold both decoded trees and the encoding at once.
    fn dir_tree(&mut self, path: &Path, root_dev: u64, parent: Option<Tree>) -> Result<Id> {
        // The outermost directory of a target starts the scanner for everything below it.
        if self.scanner.is_some() {
            return self.scanned_dir_tree(path, root_dev, parent);
        }
        self.scanner = Some(Scanner::start(path.to_owned(), root_dev, self.excluder.clone(), self.one_file_system));
        let tree = self.scanned_dir_tree(path, root_dev, parent);
        self.scanner = None;
        tree
    }

    fn scanned_dir_tree(&mut self, path: &Path, root_dev: u64, mut parent: Option<Tree>) -> Result<Id> {
        let scan = self
            .scanner
            .as_mut()
            .and_then(|s| s.next(path))
            .unwrap_or_else(|| crate::scan::scan_dir(path, &self.excluder));
        for w in scan.warnings {
            self.warn(w);
        }
        let entries = match scan.entries {
            Ok(entries) => entries,
            Err(msg) => {
                self.warn(msg);
                return self.save_tree(Tree::default());
            }
        };
        let mut tree = Tree { nodes: Vec::with_capacity(entries.len()) };
        // Each entry's node in the parent snapshot, by position: the walk takes what it can
        // reuse (content, attributes) out of them instead of copying.
        let parents: Vec<Option<usize>> =
            entries.iter().map(|e| parent.as_ref().and_then(|t| t.position(e.name.as_encoded_bytes()))).collect();
        let to_read: Vec<bool> = entries
            .iter()
            .zip(&parents)
            .map(|(e, at)| {
                let parent_node = parent.as_ref().zip(*at).map(|(t, i)| &t.nodes[i]);
                e.meta.is_file() && e.meta.len() > 0 && !unchanged(parent_node, &e.meta)
            })
            .collect();
        // The files this directory will have read, announced before the first is opened.
        self.prefetch
            .announce(entries.iter().zip(&to_read).filter(|(_, r)| **r).map(|(e, _)| (e.path.clone(), e.meta.len())));
        for ((e, read), at) in entries.into_iter().zip(to_read).zip(parents) {
            let len = e.meta.len();
            let parent_node = parent.as_mut().zip(at).map(|(t, i)| &mut t.nodes[i]);
            let node = self.entry(&e.path, &e.name, &e.meta, Some(e.extras), parent_node, root_dev, false);
            if read {
                self.prefetch.consumed(len);
            }
            if let Some(node) = node? {
                tree.nodes.push(node);
            }
        }
        drop(parent);
        self.save_tree(tree)
    }

    /// One filesystem entry (`extras` when already read). `Ok(None)` = skipped with a warning.
    #[allow(clippy::too_many_arguments)]
    fn entry(
        &mut self,
        path: &Path,
        name: &OsStr,
        meta: &fs::Metadata,
        extras: Option<Extras>,
        parent: Option<&mut Node>,
        root_dev: u64,
        top: bool,
    ) -> Result<Option<Node>> {
        let extras = extras.unwrap_or_else(|| Extras::read(path, meta));
        let xattrs_pending = extras.xattrs_pending;
        let mut node = node_from_parts(name, meta, extras, &mut self.names);
        match node.kind {
            NodeKind::Dir => {
                self.summary.dirs += 1;
                let sub = if !crate::scan::descends(self.one_file_system, meta, root_dev) {
                    self.save_tree(Tree::default())?
                } else {
                    let parent_sub = self.parent_subtree(parent.as_deref());
                    self.dir_tree(path, root_dev, parent_sub)?
                };
                node.subtree = Some(sub);
            }
            NodeKind::File if top && self.image => {
                let readable = self.image_content(path, &mut node)?;
                if !readable {
                    return Ok(None);
                }
            }
            NodeKind::File => {
                let readable = self.file_content(path, &mut node, meta, parent, xattrs_pending)?;
                if !readable {
                    return Ok(None);
                }
            }
            NodeKind::Blockdev if top => {
                // A device named on the command line is imaged: its bytes become a file.
                node.kind = NodeKind::File;
                node.rdev = None;
                let readable = self.image_content(path, &mut node)?;
                if !readable {
                    return Ok(None);
                }
            }
            _ if xattrs_pending => node.xattrs = crate::fsmeta::read_xattrs(path),
            _ => {}
        }
        Ok(Some(node))
    }

    /// Read a disk image (block device or `--image` file): cut with the file chunker, new
    /// pieces cut again with the image chunker ([`Self::queue_chunk`]); its holes and zero
    /// runs are restored as holes.
    fn image_content(&mut self, path: &Path, node: &mut Node) -> Result<bool> {
        node.sparse = true;
        // A regular file may have holes to skip; a block device has none to find.
        let regular = fs::metadata(path).is_ok_and(|m| m.is_file());
        let config = self.repo.config();
        let (chunker, image_chunker) = (config.chunker, config.image_chunker);
        if self.heads.is_none() {
            let table = HeadTable::load(self.repo).unwrap_or_else(|e| {
                tracing::warn!("file heads not loaded (this image shares only whole chunks): {e}");
                HeadTable::default()
            });
            self.heads = Some(table);
        }
        if !self.read_content(path, node, chunker, Some(image_chunker), regular, false)? {
            return Ok(false);
        }
        self.summary.total_bytes += node.size;
        self.summary.files_new += 1;
        Ok(true)
    }

    /// Fill a regular file's content (and its extended attributes when `xattrs_pending`);
    /// `false` when it could not be read. What an unchanged file reuses is taken out of its
    /// `parent` node, which the walk does not look at again.
    fn file_content(
        &mut self,
        path: &Path,
        node: &mut Node,
        meta: &fs::Metadata,
        parent: Option<&mut Node>,
        mut xattrs_pending: bool,
    ) -> Result<bool> {
        self.summary.total_bytes += node.size;
        let had_parent = parent.is_some();
        let unchanged_parent = parent.filter(|p| unchanged(Some(&**p), meta));
        if let Some(p) = unchanged_parent {
            if xattrs_pending {
                // Setting or removing an attribute changes the ctime: an unchanged file has
                // the parent snapshot's.
                node.xattrs = std::mem::take(&mut p.xattrs);
                xattrs_pending = false;
            }
            let same = (p.size == 0 || !p.content.is_empty()) && p.content.iter().all(|id| self.writer.has(id));
            if same {
                node.content = std::mem::take(&mut p.content);
                self.summary.files_unmodified += 1;
                self.progress.bytes(node.size);
                self.progress.file_done();
                return Ok(true);
            }
        }
        let hardlink_key = (meta.nlink() > 1).then(|| (meta.dev(), meta.ino()));
        if let Some(content) = hardlink_key.and_then(|k| self.hardlinks.get(&k)) {
            if xattrs_pending {
                node.xattrs = crate::fsmeta::read_xattrs(path);
            }
            node.content = content.clone();
            self.progress.bytes(node.size);
            self.progress.file_done();
            return Ok(true);
        }
        if !self.read_content(path, node, self.repo.config().chunker, None, false, xattrs_pending)? {
            return Ok(false);
        }
        if had_parent {
            self.summary.files_changed += 1;
        } else {
            self.summary.files_new += 1;
        }
        if let Some(k) = hardlink_key {
            self.hardlinks.insert(k, node.content.clone());
        }
        Ok(true)
    }

    /// Chunk a file or device into blobs (`sparse`: a disk image file whose holes are not
    /// read, giving the same chunks; `recut`: see [`Self::queue_chunk`]; `xattrs`: read the
    /// extended attributes through the open file too). Read errors skip the file with a
    /// warning.
    fn read_content(
        &mut self,
        path: &Path,
        node: &mut Node,
        chunker: ChunkerParams,
        recut: Option<ChunkerParams>,
        sparse: bool,
        xattrs: bool,
    ) -> Result<bool> {
        if self.progress.cancelled() {
            return Err(Error::new(crate::ErrorKind::Cancelled, "backup cancelled"));
        }
        self.progress.file(path);
        self.image_at = 0;
        let mut file = match self.opener.open(path) {
            Ok(f) => f,
            Err(e) => {
                self.warn(format!("{}: {e}", path.display()));
                return Ok(false);
            }
        };
        if xattrs {
            node.xattrs = crate::fsmeta::read_file_xattrs(&file);
        }
        let cut = if sparse {
            self.chunk_sparse(&file, chunker, recut)
        } else if recut.is_none() && node.size < u64::from(chunker.min_size) {
            self.small_file(&mut file, node.size, chunker)
        } else {
            self.chunk_stream(&mut file, chunker, recut)
        };
        match cut {
            Ok((content, size)) => {
                node.content = content;
                node.size = size;
                self.progress.file_done();
                Ok(true)
            }
            Err(CutError::Read(e)) => {
                self.warn(format!("{}: read error: {e}", path.display()));
                Ok(false)
            }
            Err(CutError::Each(e)) => Err(e),
        }
    }

    /// Cut a disk image file without reading its holes (`image::cut_sparse_file`) and queue
    /// the chunks; the zero chunk is hashed once.
    fn chunk_sparse(
        &mut self,
        file: &File,
        c: ChunkerParams,
        recut: Option<ChunkerParams>,
    ) -> std::result::Result<(Vec<Id>, u64), CutError<Error>> {
        let mut buf = std::mem::take(&mut self.buf);
        let mut content = Vec::new();
        let mut zero_id: Option<(u64, Id)> = None;
        let cut = crate::image::cut_sparse_file(file, c, &mut buf, |piece| {
            match piece {
                Piece::Data(chunk) => self.queue_chunk(chunk, recut, &mut content)?,
                Piece::Zeros { len, count } => {
                    let id = match zero_id {
                        Some((l, id)) if l == len => id,
                        _ => {
                            let id = self.writer.add(BlobKind::Data, vec![0u8; usize::try_from(len).unwrap_or(0)])?;
                            zero_id = Some((len, id));
                            id
                        }
                    };
                    content.extend(std::iter::repeat_n(id, usize::try_from(count).unwrap_or(0)));
                    self.image_at += len * count;
                    self.summary.bytes_read += len * count;
                    self.progress.bytes(len * count);
                }
            }
            Ok(())
        });
        self.buf = buf;
        cut.map(|size| (content, size))
    }

    /// A file shorter than the chunker's minimum is one blob: it is read into a buffer of its
    /// own that the pipeline takes over, not copied out of the shared read buffer (half of a
    /// typical tree's bytes are in such files).
    fn small_file(
        &mut self,
        file: &mut File,
        listed: u64,
        c: ChunkerParams,
    ) -> std::result::Result<(Vec<Id>, u64), CutError<Error>> {
        let min = u64::from(c.min_size);
        let listed = listed.min(min);
        // One spare byte: a file that grew since it was listed shows in the same read.
        let mut data = Vec::with_capacity(usize::try_from(listed).unwrap_or(0) + 1);
        read_small(file, &mut data, listed, min).map_err(CutError::Read)?;
        if data.len() as u64 >= min {
            // It grew past the minimum since it was listed: cut it as a stream.
            let mut rest = std::io::Cursor::new(data).chain(file);
            return self.chunk_stream(&mut rest, c, None);
        }
        let size = data.len() as u64;
        let mut content = Vec::new();
        if size > 0 {
            self.queue_file_chunk(Cow::Owned(data), &mut content).map_err(CutError::Each)?;
        }
        Ok((content, size))
    }

    /// Cut a stream into content-defined chunks and queue them. The buffer is reused across
    /// files (a fresh multi-MiB buffer per small file would dominate the cost of a tree backup).
    fn chunk_stream(
        &mut self,
        reader: &mut dyn Read,
        c: ChunkerParams,
        recut: Option<ChunkerParams>,
    ) -> std::result::Result<(Vec<Id>, u64), CutError<Error>> {
        let mut buf = std::mem::take(&mut self.buf);
        let mut content = Vec::new();
        let cut = crate::image::cut_stream(reader, c, &mut buf, |chunk| self.queue_chunk(chunk, recut, &mut content));
        self.buf = buf;
        cut.map(|size| (content, size))
    }

    /// Queue one chunk of content. With `recut` (disk images), a chunk cut by the file chunker
    /// is kept whole when the repository already has it (the image holds a copy of a file
    /// backed up as a file, and shares its blobs) or when it is all zeros. Otherwise
    /// it is cut again with the small image chunker, so that the image's next version stores
    /// little more than the blocks that changed.
    fn queue_chunk(&mut self, chunk: &[u8], recut: Option<ChunkerParams>, content: &mut Vec<Id>) -> Result<()> {
        let Some(small) = recut else {
            return self.queue_file_chunk(Cow::Borrowed(chunk), content);
        };
        self.summary.bytes_read += chunk.len() as u64;
        self.progress.bytes(chunk.len() as u64);
        let at = self.image_at;
        self.image_at += chunk.len() as u64;
        let whole = self.repo.key().blob_id(chunk);
        // Zeros stay whole too: a hole skipped without reading gives that same blob.
        let known = self.writer.has(&whole);
        if known || chunk.iter().all(|&b| b == 0) {
            if !known {
                self.writer.add_with_id(BlobKind::Data, whole, chunk)?;
            }
            content.push(whole);
            return Ok(());
        }
        // Small files the repository holds (backed up as files) are referred to, not stored.
        let found = match &self.heads {
            Some(table) => crate::heads::find_files(chunk, at, self.repo.key(), table, |id| self.writer.has(id)),
            None => Vec::new(),
        };
        let mut pos = 0;
        for f in found {
            self.queue_new_image_data(&chunk[pos..f.offset], small, content)?;
            content.push(f.id);
            self.summary.image_bytes_shared += f.len as u64;
            pos = f.offset + f.len;
        }
        self.queue_new_image_data(&chunk[pos..], small, content)
    }

    /// Queue one chunk of a file's content, and record its head when it is a whole new file.
    fn queue_file_chunk(&mut self, chunk: Cow<'_, [u8]>, content: &mut Vec<Id>) -> Result<()> {
        let len = chunk.len();
        self.summary.bytes_read += len as u64;
        self.progress.bytes(len as u64);
        let first = content.is_empty();
        let id = self.repo.key().blob_id(&chunk);
        // Shorter than the chunker's minimum, the first chunk is the whole file.
        let whole_file = first && len < self.repo.config().chunker.min_size as usize;
        let head = whole_file.then(|| HeadRecord::of(&chunk, &id)).flatten();
        let new = self.writer.add_with_id(BlobKind::Data, id, chunk)?;
        content.push(id);
        if let Some(head) = head.filter(|_| new) {
            self.new_heads.push(head);
            if self.new_heads.len() >= crate::heads::RECORDS_PER_FILE {
                save_heads(self.repo, &std::mem::take(&mut self.new_heads));
            }
        }
        Ok(())
    }

    /// Queue image bytes no blob holds: zeros (the padding after a file) as one blob, the rest
    /// cut with the image chunker.
    fn queue_new_image_data(&mut self, data: &[u8], small: ChunkerParams, content: &mut Vec<Id>) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if data.iter().all(|&b| b == 0) {
            content.push(self.writer.add(BlobKind::Data, data.to_vec())?);
            return Ok(());
        }
        for piece in fastcdc::v2020::FastCDC::new(data, small.min_size, small.avg_size, small.max_size) {
            let piece = data[piece.offset..piece.offset + piece.length].to_vec();
            content.push(self.writer.add(BlobKind::Data, piece)?);
        }
        Ok(())
    }

    fn stdin_tree(&mut self, reader: &mut dyn Read, name: &str) -> Result<Id> {
        let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
        let (content, size) = match self.chunk_stream(reader, self.repo.config().chunker, None) {
            Ok(r) => r,
            Err(CutError::Read(e)) => {
                return Err(Error::new(crate::error::ErrorKind::Io, format!("reading stdin: {e}")))
            }
            Err(CutError::Each(e)) => return Err(e),
        };
        self.summary.files_new += 1;
        self.summary.total_bytes += size;
        let node = Node {
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            user: Some(crate::host::username()),
            ..Node::plain_file(name, content, size, now)
        };
        self.save_tree(Tree { nodes: vec![node] })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_file_reads_whole_whatever_it_did_since_it_was_listed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let read = |body: &[u8], listed: u64, min: u64| {
            std::fs::write(&path, body).expect("write");
            let mut data = Vec::new();
            read_small(&mut File::open(&path).expect("open"), &mut data, listed, min).expect("read");
            data
        };
        assert_eq!(read(b"hello", 5, 100), b"hello"); // as listed
        assert_eq!(read(b"hello world", 5, 100), b"hello world"); // grew
        assert_eq!(read(b"he", 5, 100), b"he"); // shrank
        assert_eq!(read(b"", 0, 100), b"");
        assert_eq!(read(&[1u8; 300], 5, 100), vec![1u8; 100]); // grew past the minimum: stops there
    }
}
