//! Restore: recreate a snapshot (or the part matching `--include`) under a target directory.
//!
//! One thread walks the trees and creates directories, files, links and special files (links,
//! special and empty files get their metadata at once). It hands the files in batches to a
//! writer that reads their blobs pack by pack (coalesced ranges, several packs in parallel)
//! and writes them at their offsets, leaving zero runs of sparse files as holes; a file's last
//! write applies its metadata. Both run at once, and batches bound the memory. Directories get
//! their metadata at the end, deepest first. A blob that fails to read or authenticate damages
//! only the files that use it: they are reported, the rest is restored.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;

use crate::archiver::Progress;
use crate::error::{Error, ErrorKind, Result};
use crate::exclude::PathMatcher;
use crate::fsmeta::{ApplyOptions, OwnerIds};
use crate::id::Id;
use crate::index::{BlobLocation, MasterIndex};
use crate::pack::pack_key;
use crate::repo::Repository;
use crate::safe_fs::{HeldDir, TargetDir};
use crate::tree::{Node, NodeKind, Tree};

/// What to restore and how.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Directory to restore into (created if missing).
    pub target: PathBuf,
    /// Only paths matching these patterns (and their subtrees); empty = everything.
    pub include: Vec<String>,
    /// Re-read every restored file and compare with the snapshot.
    pub verify: bool,
    /// Restore owners (needs root; default when running as root).
    pub owners: bool,
    /// Use numeric uid/gid instead of names.
    pub numeric_owner: bool,
    /// Parallel pack readers.
    pub readers: usize,
    /// Files planned and written at once ([`BATCH_FILES`] by default): bounds the memory of
    /// restoring millions of files.
    pub batch_files: usize,
}

impl RestoreOptions {
    /// Defaults for restoring into `target`.
    pub fn new(target: impl Into<PathBuf>) -> Self {
        Self {
            target: target.into(),
            include: Vec::new(),
            verify: false,
            owners: nix::unistd::geteuid().is_root(),
            numeric_owner: false,
            readers: std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get).max(2),
            batch_files: BATCH_FILES,
        }
    }
}

/// Outcome of a restore.
#[derive(Debug, Default, serde::Serialize)]
pub struct RestoreResult {
    /// Regular files restored.
    pub files: u64,
    /// Directories restored.
    pub dirs: u64,
    /// Other entries (links, devices, fifos).
    pub others: u64,
    /// Content bytes written.
    pub bytes: u64,
    /// Files verified after writing.
    pub verified: u64,
    /// Problems; non-empty means a partial restore.
    pub errors: Vec<String>,
    /// Metadata warnings (chown, xattrs) that did not damage content.
    pub warnings: Vec<String>,
}

struct PlannedFile {
    /// Relative to the target.
    path: PathBuf,
    /// Boxed: the list holds one entry per file, and growing it moves only pointers.
    node: Box<Node>,
    damaged: bool,
    /// Content writes still to do; the one that brings it to 0 applies the metadata.
    remaining: AtomicU32,
    /// Metadata applied by the last content write.
    meta_done: AtomicBool,
    /// Not created while planning: its one content write creates it (a single-blob file in a
    /// directory this restore made), one open instead of two.
    deferred: bool,
}

/// The tree to restore and its path for `sub` (a directory inside the snapshot, or the whole
/// snapshot for `None`, `""` or `"/"`).
pub fn resolve_subtree(repo: &Repository, index: &MasterIndex, tree: &Id, sub: Option<&str>) -> Result<(Id, String)> {
    match sub {
        None | Some("" | "/") => Ok((*tree, "/".to_string())),
        Some(p) => match crate::browse::lookup(repo, index, tree, p)? {
            crate::browse::Lookup::Root(r) => Ok((r, "/".into())),
            crate::browse::Lookup::Node(n) => {
                let id = n.subtree.ok_or_else(|| {
                    Error::invalid(format!("{p} is not a directory; restore its parent with an include pattern"))
                })?;
                Ok((id, format!("/{}", crate::browse::path_components(p)?.join("/"))))
            }
        },
    }
}

/// Restore `root` (a snapshot's tree, or a subtree) into `opts.target`.
pub fn restore(
    repo: &Repository,
    index: &MasterIndex,
    root: &Id,
    root_path: &str,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreResult> {
    let include = if opts.include.is_empty() { None } else { Some(PathMatcher::new(&opts.include)?) };
    let target = TargetDir::open(&opts.target).map_err(|e| Error::io(opts.target.display(), e))?;
    let names = OwnerIds::default();
    let apply = ApplyOptions { owners: opts.owners, numeric_owner: opts.numeric_owner, names: &names };
    let mut result = RestoreResult::default();
    let mut dirs: Vec<(PathBuf, Node, usize)> = Vec::new();
    let mut hardlinks: HashMap<(u64, u64), PathBuf> = HashMap::new();

    // This thread walks the trees and makes directories and files while another writes the
    // content of the batches planned before: the walk costs one core for as long as the
    // content takes the others, and batches bound the memory of millions of files.
    let (planned, written) = std::thread::scope(|s| {
        let (batches, to_write) = std::sync::mpsc::sync_channel::<Vec<PlannedFile>>(0);
        let target = &target;
        let writer = s.spawn(move || {
            let mut written = RestoreResult::default();
            for mut files in to_write {
                finish_files(repo, index, target, &mut files, opts, apply, progress, &mut written);
            }
            written
        });
        let max_batch = opts.batch_files.max(1);
        let mut planner = Planner {
            target,
            repo,
            index,
            include: include.as_ref(),
            apply,
            files: Vec::new(),
            dirs: &mut dirs,
            hardlinks: &mut hardlinks,
            result: &mut result,
            batches,
            batch_files: FIRST_BATCH_FILES.min(max_batch),
            max_batch,
        };
        let planned = planner.tree(root, Path::new(root_path), Path::new(""), 0, false, true);
        planner.send_batch();
        // Dropping the planner closes the channel: the writer ends after the last batch.
        drop(planner);
        let written = writer.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (planned, written)
    });
    planned?;
    result.files += written.files;
    result.bytes += written.bytes;
    result.verified += written.verified;
    result.errors.extend(written.errors);
    result.warnings.extend(written.warnings);
    result.warnings.extend(apply_dir_metadata(&target, &mut dirs, apply, opts.readers));
    result.dirs = dirs.len() as u64;
    Ok(result)
}

/// Apply the directories' metadata once everything inside them is written: deepest first (a
/// parent's mode may shut out the restore from its children), the directories of one depth on
/// `threads` threads at once.
fn apply_dir_metadata(
    target: &TargetDir,
    dirs: &mut [(PathBuf, Node, usize)],
    apply: ApplyOptions,
    threads: usize,
) -> Vec<String> {
    dirs.sort_by_key(|d| std::cmp::Reverse(d.2));
    let warnings = Mutex::new(Vec::new());
    for level in dirs.chunk_by(|a, b| a.2 == b.2) {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let work = || {
            while let Some((path, node, _)) = level.get(next.fetch_add(1, Ordering::Relaxed)) {
                let w = target.apply_metadata(path, node, apply);
                if !w.is_empty() {
                    warnings.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend(w);
                }
            }
        };
        std::thread::scope(|s| {
            for _ in 1..threads.clamp(1, level.len()) {
                s.spawn(work);
            }
            work();
        });
    }
    warnings.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Files planned before their content is written: a restore of millions of files plans and
/// writes them in batches of at most this many, so its memory does not grow with the snapshot
/// (each planned file holds its node, ~450 bytes with its path, and two batches are alive:
/// one planned, one written). Files of one batch are neighbours in the tree and so mostly in
/// the same packs. 16,384 rather than 32,768: the bench's restore peaked at 81 instead of
/// 93 MiB for ~3 % more time (more batch boundaries, where the writers wait for each other).
pub const BATCH_FILES: usize = 1 << 14;

/// The first batch is small so that writing starts soon; each next one doubles up to
/// [`BATCH_FILES`].
const FIRST_BATCH_FILES: usize = 1 << 10;

/// Write the content of planned `files`, mark the damaged ones, apply their metadata, verify
/// them when asked, count them, and forget them.
#[allow(clippy::too_many_arguments)]
fn finish_files(
    repo: &Repository,
    index: &MasterIndex,
    target: &TargetDir,
    files: &mut Vec<PlannedFile>,
    opts: &RestoreOptions,
    apply: ApplyOptions,
    progress: &dyn Progress,
    result: &mut RestoreResult,
) {
    if files.is_empty() {
        return;
    }
    write_content(repo, index, target, files, opts, apply, progress, result);
    // A file with content that could not be read must not pass for the original: it keeps
    // what was restored (useful for salvage) under a name that says it is incomplete.
    for f in files.iter().filter(|f| f.damaged) {
        let shown = target.display(&f.path);
        if f.deferred {
            // Its write never created it: an empty file stands for what could not be read.
            if let Err(e) = target.create_new(&f.path) {
                if e.kind() != std::io::ErrorKind::AlreadyExists {
                    result.errors.push(format!("{}: {e}", shown.display()));
                }
            }
        }
        match target.add_suffix(&f.path, INCOMPLETE_SUFFIX) {
            Ok(marked) => result.errors.push(format!(
                "{}: content incomplete, kept as {}",
                shown.display(),
                target.display(&marked).display()
            )),
            Err(e) => result.errors.push(format!("{}: content incomplete and not renamed: {e}", shown.display())),
        }
    }
    for f in files.iter().filter(|f| !f.damaged && !f.meta_done.load(Ordering::Relaxed)) {
        result.warnings.extend(target.apply_metadata(&f.path, &f.node, apply));
    }
    if opts.verify {
        for f in files.iter().filter(|f| !f.damaged) {
            match verify_file(repo, index, target, &f.path, &f.node) {
                Ok(()) => result.verified += 1,
                Err(e) => result.errors.push(format!("verify {}: {e}", target.display(&f.path).display())),
            }
        }
    }
    result.files += files.len() as u64;
    files.clear();
}

/// Refuse names that would escape the target directory.
/// Trees are checked when decoded; checked again here because a restore is where a bad name
/// would do harm.
fn safe_name(node: &Node) -> Result<&std::ffi::OsStr> {
    crate::tree::check_name(&node.name)?;
    Ok(node.name.as_os_str())
}

struct Planner<'a> {
    target: &'a TargetDir,
    repo: &'a Repository,
    index: &'a MasterIndex,
    include: Option<&'a PathMatcher>,
    apply: ApplyOptions<'a>,
    /// Files planned since the last batch was sent.
    files: Vec<PlannedFile>,
    dirs: &'a mut Vec<(PathBuf, Node, usize)>,
    hardlinks: &'a mut HashMap<(u64, u64), PathBuf>,
    result: &'a mut RestoreResult,
    /// To the thread that writes the content of planned files.
    batches: std::sync::mpsc::SyncSender<Vec<PlannedFile>>,
    /// Size of the next batch.
    batch_files: usize,
    max_batch: usize,
}

impl Planner<'_> {
    /// Hand the files planned so far to the writer (waiting while it writes the batch before).
    fn send_batch(&mut self) {
        if self.files.is_empty() {
            return;
        }
        let files = std::mem::take(&mut self.files);
        // Fails only if the writer panicked; joining it passes the panic on.
        let _ = self.batches.send(files);
        self.batch_files = (self.batch_files * 2).min(self.max_batch);
    }

    /// Plan one tree; returns whether anything in it was selected. `fresh`: this restore made
    /// `dest` and every directory above it inside the target, so it may be held open.
    fn tree(
        &mut self,
        id: &Id,
        snap_path: &Path,
        dest: &Path,
        depth: usize,
        selected: bool,
        fresh: bool,
    ) -> Result<bool> {
        let tree: Tree = match self.repo.load_tree(self.index, id) {
            Ok(t) => t,
            Err(e) => {
                self.result.errors.push(format!("{}: {e}", snap_path.display()));
                return Ok(false);
            }
        };
        let held = if fresh { self.target.hold_dir(dest).ok() } else { None };
        let held = held.as_ref();
        let mut any = false;
        // Files first, directories after: the listing's buffer (every entry, ~300 bytes each)
        // is freed before descending, where each ancestor's whole listing stayed alive.
        let mut subdirs = Vec::new();
        for node in tree.nodes {
            let name = safe_name(&node)?;
            let sp = snap_path.join(name);
            let dp = dest.join(name);
            let sel = selected || self.include.is_none_or(|inc| inc.matches(&sp, node.kind == NodeKind::Dir));
            if node.kind == NodeKind::Dir {
                subdirs.push((node, sp, dp, sel));
                continue;
            }
            if !sel {
                continue;
            }
            any = true;
            if let Err(e) = self.leaf(&dp, node, held) {
                self.result.errors.push(format!("{}: {e}", self.target.display(&dp).display()));
            }
        }
        for (node, sp, dp, sel) in subdirs {
            let pre = self.dirs.len();
            let created = match self.target.ensure_dir(&dp, held) {
                Ok(created) => created,
                Err(e) => {
                    self.result.errors.push(format!("{}: {e}", self.target.display(&dp).display()));
                    continue;
                }
            };
            let inner = match node.subtree {
                Some(sub) => self.tree(&sub, &sp, &dp, depth + 1, sel, held.is_some() && created)?,
                None => false,
            };
            if sel || inner {
                self.dirs.push((dp, node, depth));
                any = true;
            } else {
                self.target.remove_empty_dir(&dp);
                self.dirs.truncate(pre);
            }
        }
        Ok(any)
    }

    fn leaf(&mut self, dp: &Path, node: Node, held: Option<&HeldDir>) -> std::io::Result<()> {
        match node.kind {
            NodeKind::File => {
                if node.links > 1 {
                    let key = (node.device_id, node.inode);
                    if let Some(first) = self.hardlinks.get(&key) {
                        self.target.hard_link(first, dp, held)?;
                        self.result.others += 1;
                        return Ok(());
                    }
                    self.hardlinks.insert(key, dp.to_path_buf());
                }
                // Hard links need their first name now; sparse and empty files their size.
                let deferred = held.is_some() && node.content.len() == 1 && !node.sparse && node.links <= 1;
                let mut meta_done = false;
                if !deferred {
                    let file = self.target.create_file(dp, node.size, node.sparse, held)?;
                    // No content write will come to apply it: the metadata goes on now.
                    if node.content.is_empty() {
                        self.result.warnings.extend(self.target.apply_file_metadata(dp, &file, &node, self.apply));
                        meta_done = true;
                    }
                }
                let writes = u32::try_from(node.content.len()).unwrap_or(u32::MAX);
                let mut node = node;
                crate::fsmeta::settle_owner(&mut node, self.apply);
                self.files.push(PlannedFile {
                    path: dp.to_path_buf(),
                    node: Box::new(node),
                    damaged: false,
                    remaining: AtomicU32::new(writes),
                    meta_done: AtomicBool::new(meta_done),
                    deferred,
                });
                if self.files.len() >= self.batch_files {
                    self.send_batch();
                }
            }
            // Nothing written later changes links and special files: their metadata goes on
            // as they are made.
            NodeKind::Symlink => {
                let target = node.link_target.clone().unwrap_or_default();
                self.target.symlink(target.as_os_str(), dp, held)?;
                self.result.warnings.extend(self.target.apply_metadata(dp, &node, self.apply));
                self.result.others += 1;
            }
            NodeKind::Blockdev | NodeKind::Chardev | NodeKind::Fifo => {
                self.target.make_special(dp, &node, held)?;
                self.result.warnings.extend(self.target.apply_metadata(dp, &node, self.apply));
                self.result.others += 1;
            }
            NodeKind::Socket | NodeKind::Dir => {}
        }
        Ok(())
    }
}

/// One blob write: which file, at what offset.
#[derive(Clone, Copy)]
struct Placement {
    file: usize,
    offset: u64,
}

/// Blobs of one pack to restore, by offset: (id, location, where to write it).
type PackPlan = BTreeMap<u32, (Id, BlobLocation, Vec<Placement>)>;

const MAX_RANGE: u64 = 4 * 1024 * 1024;

/// Longest coalesced read. On a local disk 4 MiB keeps memory low at no cost; on object
/// storage every range is a billed request, so a whole pack is read at once.
fn max_range(repo: &Repository) -> u64 {
    if repo.location().contains("://") {
        MAX_RANGE.max(u64::from(repo.config().pack_size) * 5 / 4)
    } else {
        MAX_RANGE
    }
}
const MAX_GAP: u64 = 1024 * 1024;

#[allow(clippy::too_many_arguments)]
fn write_content(
    repo: &Repository,
    index: &MasterIndex,
    target: &TargetDir,
    files: &mut [PlannedFile],
    opts: &RestoreOptions,
    apply: ApplyOptions,
    progress: &dyn Progress,
    result: &mut RestoreResult,
) {
    // pack -> blob -> (location, placements)
    let mut plan: HashMap<Id, PackPlan> = HashMap::new();
    for (fi, f) in files.iter_mut().enumerate() {
        let mut offset = 0u64;
        for id in &f.node.content {
            let Some(loc) = index.get(id) else {
                result
                    .errors
                    .push(format!("{}: blob {id} is missing from the index", target.display(&f.path).display()));
                f.damaged = true;
                // Never counts down to its metadata.
                f.remaining.store(u32::MAX, Ordering::Relaxed);
                break;
            };
            plan.entry(loc.pack)
                .or_default()
                .entry(loc.offset)
                .or_insert_with(|| (*id, loc, Vec::new()))
                .2
                .push(Placement { file: fi, offset });
            offset += u64::from(loc.raw_len);
        }
    }
    let packs: Mutex<Vec<(Id, PackPlan)>> = Mutex::new(plan.into_iter().collect());
    let errors: Mutex<Vec<(Option<usize>, String)>> = Mutex::new(Vec::new());
    let bytes = std::sync::atomic::AtomicU64::new(0);
    let warnings: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let files_ro: &[PlannedFile] = files;
    let ctx = PackWriter {
        repo,
        target,
        files: files_ro,
        apply,
        progress,
        bytes: &bytes,
        errors: &errors,
        warnings: &warnings,
    };
    std::thread::scope(|s| {
        for _ in 0..opts.readers.max(1) {
            s.spawn(|| loop {
                let next = packs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop();
                let Some((pack, blobs)) = next else { break };
                ctx.restore_pack(&pack, &blobs);
            });
        }
    });
    for (file, msg) in errors.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner) {
        if let Some(fi) = file {
            files[fi].damaged = true;
        }
        result.errors.push(msg);
    }
    result.bytes += bytes.into_inner();
    result.warnings.extend(warnings.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner));
}

/// What the content writers share.
struct PackWriter<'a> {
    repo: &'a Repository,
    target: &'a TargetDir,
    files: &'a [PlannedFile],
    apply: ApplyOptions<'a>,
    progress: &'a dyn Progress,
    bytes: &'a std::sync::atomic::AtomicU64,
    errors: &'a Mutex<Vec<(Option<usize>, String)>>,
    warnings: &'a Mutex<Vec<String>>,
}

impl PackWriter<'_> {
    fn restore_pack(&self, pack: &Id, blobs: &PackPlan) {
        let Self { repo, target, files, progress, bytes, errors, .. } = *self;
        let fail = |placements: &[Placement], msg: String| {
            let mut errs = errors.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut seen = std::collections::HashSet::new();
            for p in placements {
                if seen.insert(p.file) {
                    errs.push((Some(p.file), format!("{}: {msg}", target.display(&files[p.file].path).display())));
                }
            }
        };
        let entries: Vec<_> = blobs.values().collect();
        let limit = max_range(repo);
        let mut i = 0;
        while i < entries.len() {
            // Coalesce neighbouring blobs into one range read.
            let start = u64::from(entries[i].1.offset);
            let mut end = start + u64::from(entries[i].1.length);
            let mut j = i + 1;
            while j < entries.len() {
                let o = u64::from(entries[j].1.offset);
                let e = o + u64::from(entries[j].1.length);
                if o > end + MAX_GAP || e - start > limit {
                    break;
                }
                end = end.max(e);
                j += 1;
            }
            let range = repo.get_range(&pack_key(pack), start, end - start);
            for (id, loc, placements) in &entries[i..j] {
                let data = match &range {
                    Ok(buf) => {
                        let o = (u64::from(loc.offset) - start) as usize;
                        match repo.open_blob(&buf[o..o + loc.length as usize], id, pack) {
                            // Damage in transit: read this blob alone again (verified, bounded).
                            Err(e) if e.kind() == ErrorKind::Corrupt => {
                                tracing::warn!("{e}; reading it again");
                                repo.read_blob_at(pack, loc.offset, loc.length, id)
                            }
                            other => other,
                        }
                    }
                    Err(e) => Err(Error::new(e.kind(), e.to_string())),
                };
                match data {
                    Ok(data) => {
                        for p in placements {
                            let f = &files[p.file];
                            match write_at(target, &f.path, &data, p.offset, f.node.sparse, f.deferred) {
                                Err(e) => fail(std::slice::from_ref(p), e.to_string()),
                                Ok(file) => {
                                    bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                                    progress.bytes(data.len() as u64);
                                    if f.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                                        self.finish_file(f, &file);
                                    }
                                }
                            }
                        }
                    }
                    Err(e) => fail(placements, e.to_string()),
                }
            }
            i = j;
        }
    }

    /// The file's last content write is done: its metadata goes on with the same handle
    /// (one open, not a second one in the metadata pass).
    fn finish_file(&self, f: &PlannedFile, file: &std::fs::File) {
        let w = self.target.apply_file_metadata(&f.path, file, &f.node, self.apply);
        if !w.is_empty() {
            self.warnings.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend(w);
        }
        f.meta_done.store(true, Ordering::Relaxed);
    }
}

const SPARSE_BLOCK: usize = 4096;

/// Appended to the name of a restored file whose content could not be read completely.
pub const INCOMPLETE_SUFFIX: &str = ".bams-incomplete";

/// Write one blob into its file (creating it when `create`); the open file is returned for
/// the metadata.
fn write_at(
    target: &TargetDir,
    path: &Path,
    data: &[u8],
    offset: u64,
    sparse: bool,
    create: bool,
) -> Result<std::fs::File> {
    let io = |e| Error::io(target.display(path).display(), e);
    let f = if create { target.create_new(path) } else { target.open_write(path) }.map_err(io)?;
    if !sparse {
        f.write_all_at(data, offset).map_err(io)?;
        return Ok(f);
    }
    // Write only non-zero blocks; the file was pre-sized, so skipped blocks stay holes.
    let mut pos = 0;
    while pos < data.len() {
        let end = (pos + SPARSE_BLOCK).min(data.len());
        let block = &data[pos..end];
        if block.iter().any(|&b| b != 0) {
            let mut run_end = end;
            while run_end < data.len() {
                let next = (run_end + SPARSE_BLOCK).min(data.len());
                if data[run_end..next].iter().all(|&b| b == 0) {
                    break;
                }
                run_end = next;
            }
            f.write_all_at(&data[pos..run_end], offset + pos as u64).map_err(io)?;
            pos = run_end;
        } else {
            pos = end;
        }
    }
    Ok(f)
}

/// Re-read a restored file and compare every chunk's keyed hash with the snapshot.
fn verify_file(repo: &Repository, index: &MasterIndex, target: &TargetDir, path: &Path, node: &Node) -> Result<()> {
    let mut f = target.open_read(path).map_err(|e| Error::io(target.display(path).display(), e))?;
    let mut buf = Vec::new();
    for id in &node.content {
        let loc = index.get(id).ok_or_else(|| Error::not_found(format!("blob {id}")))?;
        buf.resize(loc.raw_len as usize, 0);
        f.read_exact(&mut buf).map_err(|e| Error::io(target.display(path).display(), e))?;
        if repo.key().blob_id(&buf) != *id {
            return Err(Error::corrupt("content differs from the snapshot"));
        }
    }
    let mut rest = [0u8; 1];
    if f.read(&mut rest).map_err(|e| Error::io(target.display(path).display(), e))? != 0 {
        return Err(Error::corrupt("file is longer than in the snapshot"));
    }
    Ok(())
}
