//! Directory scanning ahead of the walker. A backup's walker spends most of an unchanged
//! re-backup in the kernel: listing directories, `lstat`, extended attributes, symlink
//! targets, each a path lookup. The scanner does that work on its own thread, in the order the
//! walker will ask for it (depth first, names sorted), a bounded number of directories ahead;
//! the walker then only compares, reads changed files and writes trees.
//!
//! The two stay in step because the walker descends exactly where [`descends`] says, using the
//! metadata the scanner read. If a walker ever asks for another directory than the next one
//! scanned, it gets `None` and scans that directory itself ([`scan_dir`]).

use std::ffi::OsString;
use std::fs::{self, File, Metadata};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crossbeam_channel::{bounded, Receiver};
use rustix::fs::{Mode, OFlags};

use crate::exclude::PathMatcher;
use crate::fsmeta::Extras;

/// Directories the scanner may be ahead of the walker.
const AHEAD: usize = 64;

/// One entry of a scanned directory.
pub struct Entry {
    /// File name.
    pub name: OsString,
    /// Full path.
    pub path: PathBuf,
    /// `lstat` of it.
    pub meta: Metadata,
    /// Symlink target and extended attributes (a regular file's are left to the walker).
    pub extras: Extras,
}

/// One directory, entries sorted by name, exclusions removed.
pub struct DirScan {
    /// The directory.
    pub path: PathBuf,
    /// Its entries, or why it could not be listed.
    pub entries: std::result::Result<Vec<Entry>, String>,
    /// Entries that could not be read (reported as warnings, the rest is backed up).
    pub warnings: Vec<String>,
}

/// Whether the walker backs up the inside of directory `meta` (the scanner asks the same).
pub fn descends(one_file_system: bool, meta: &Metadata, root_dev: u64) -> bool {
    meta.is_dir() && !(one_file_system && meta.dev() != root_dev)
}

/// List, sort and `lstat` one directory.
pub fn scan_dir(path: &Path, excluder: &PathMatcher) -> DirScan {
    let mut warnings = Vec::new();
    let listing = match fs::read_dir(path) {
        Ok(l) => l,
        Err(e) => return DirScan { path: path.to_owned(), entries: Err(format!("{}: {e}", path.display())), warnings },
    };
    let mut listed: Vec<(OsString, fs::DirEntry)> = Vec::new();
    for entry in listing {
        match entry {
            Ok(e) => listed.push((e.file_name(), e)),
            Err(e) => warnings.push(format!("{}: {e}", path.display())),
        }
    }
    listed.sort_by(|a, b| a.0.as_encoded_bytes().cmp(b.0.as_encoded_bytes()));
    let mut entries = Vec::with_capacity(listed.len());
    for (name, e) in listed {
        let child = e.path();
        // `lstat` relative to the open directory: one name to look up, not the whole path.
        match e.metadata() {
            Ok(meta) => {
                if !excluder.matches(&child, meta.is_dir()) {
                    let extras = if meta.is_file() { Extras::for_regular_file() } else { Extras::read(&child, &meta) };
                    entries.push(Entry { name, path: child, meta, extras });
                }
            }
            Err(e) => warnings.push(format!("{}: {e}", child.display())),
        }
    }
    DirScan { path: path.to_owned(), entries: Ok(entries), warnings }
}

/// Opens the files the walker reads by name, relative to their directory held open: opening
/// by full path looks up every component again (4.6 % of a first backup's CPU on the bench
/// tree). The last component is never followed: an entry listed as a regular file that became
/// a symlink since is refused, not read through (a user swapping in a link to a file they
/// cannot read must not get its bytes into their backup).
#[derive(Default)]
pub struct FileOpener {
    dir: Option<(PathBuf, OwnedFd)>,
}

impl FileOpener {
    /// Open `path` for reading.
    pub fn open(&mut self, path: &Path) -> std::io::Result<File> {
        let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return rustix::fs::open(path, flags, Mode::empty()).map(File::from).map_err(Into::into);
        };
        let held = self
            .dir
            .as_ref()
            .is_some_and(|(p, _)| p.as_os_str().as_encoded_bytes() == parent.as_os_str().as_encoded_bytes());
        if !held {
            let dir = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
            self.dir = rustix::fs::open(parent, dir, Mode::empty()).ok().map(|fd| (parent.to_owned(), fd));
        }
        match &self.dir {
            Some((_, dir)) => rustix::fs::openat(dir, name, flags, Mode::empty()),
            None => rustix::fs::open(path, flags, Mode::empty()),
        }
        .map(File::from)
        .map_err(Into::into)
    }
}

/// Entries the scanner may be ahead of the walker (beside [`AHEAD`] directories: 64 directories
/// of 10,000 files each held 190 MB). A directory larger than this is still sent alone.
const ENTRIES_AHEAD: usize = 16_384;

/// Entries scanned and not yet taken by the walker, and whether the walker has stopped.
#[derive(Default)]
struct Backlog {
    state: std::sync::Mutex<BacklogState>,
    taken: std::sync::Condvar,
}

#[derive(Default)]
struct BacklogState {
    queued: usize,
    stopped: bool,
}

impl Backlog {
    fn lock(&self) -> std::sync::MutexGuard<'_, BacklogState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Wait until `n` more entries fit (or nothing is queued); `false` once the walker stopped.
    fn admit(&self, n: usize) -> bool {
        let mut state = self.lock();
        while !state.stopped && state.queued > 0 && state.queued + n > ENTRIES_AHEAD {
            state = self.taken.wait(state).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        state.queued += n;
        !state.stopped
    }

    fn take(&self, n: usize) {
        let mut state = self.lock();
        state.queued = state.queued.saturating_sub(n);
        self.taken.notify_one();
    }

    fn stop(&self) {
        self.lock().stopped = true;
        self.taken.notify_one();
    }
}

fn entry_count(scan: &DirScan) -> usize {
    scan.entries.as_ref().map_or(0, Vec::len)
}

/// The scanning thread of one backup target; stops when dropped.
pub struct Scanner {
    rx: Option<Receiver<DirScan>>,
    backlog: std::sync::Arc<Backlog>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Scanner {
    /// Scan the tree under `root` (a directory on device `root_dev`).
    pub fn start(root: PathBuf, root_dev: u64, excluder: PathMatcher, one_file_system: bool) -> Self {
        let (tx, rx) = bounded(AHEAD);
        let backlog = std::sync::Arc::new(Backlog::default());
        let ahead = backlog.clone();
        let thread = std::thread::Builder::new()
            .name("bams-scan".into())
            .spawn(move || {
                // Depth first, pre-order: a directory, then its subdirectories in name order.
                let mut stack = vec![root];
                while let Some(dir) = stack.pop() {
                    let scan = scan_dir(&dir, &excluder);
                    if let Ok(entries) = &scan.entries {
                        let subdirs = entries.iter().filter(|e| descends(one_file_system, &e.meta, root_dev));
                        let start = stack.len();
                        stack.extend(subdirs.map(|e| e.path.clone()));
                        stack[start..].reverse();
                    }
                    if !ahead.admit(entry_count(&scan)) || tx.send(scan).is_err() {
                        return; // the walker stopped
                    }
                }
            })
            .ok();
        // Without a thread the walker scans every directory itself.
        Self { rx: thread.is_some().then_some(rx), backlog, thread }
    }

    /// The scan of `path`, if it is the next one; `None` puts the walker on its own.
    pub fn next(&mut self, path: &Path) -> Option<DirScan> {
        let scan = self.rx.as_ref()?.recv().ok()?;
        self.backlog.take(entry_count(&scan));
        if scan.path == path {
            Some(scan)
        } else {
            tracing::debug!("directory scanner out of step at {}", path.display());
            self.stop();
            None
        }
    }

    fn stop(&mut self) {
        self.backlog.stop();
        self.rx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Scanner {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scanner_waits_for_the_walker_beyond_its_entry_budget() {
        let backlog = std::sync::Arc::new(Backlog::default());
        // A directory larger than the budget still goes alone, the next waits for it.
        assert!(backlog.admit(3 * ENTRIES_AHEAD));
        let ahead = backlog.clone();
        let scanner = std::thread::spawn(move || ahead.admit(10));
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!scanner.is_finished(), "admitted past the budget");
        backlog.take(3 * ENTRIES_AHEAD);
        assert!(scanner.join().expect("scanner thread"));
        // A stopped walker releases a waiting scanner, which then stops.
        backlog.take(10);
        assert!(backlog.admit(ENTRIES_AHEAD));
        let ahead = backlog.clone();
        let scanner = std::thread::spawn(move || ahead.admit(ENTRIES_AHEAD));
        backlog.stop();
        assert!(!scanner.join().expect("scanner thread"));
    }

    #[test]
    fn files_open_by_name_in_any_directory_and_never_through_a_symlink() {
        use std::io::Read;
        let dir = tempfile::tempdir().expect("tempdir");
        for d in ["a", "b"] {
            fs::create_dir(dir.path().join(d)).expect("mkdir");
            fs::write(dir.path().join(d).join("f"), d).expect("write");
        }
        std::os::unix::fs::symlink(dir.path().join("a/f"), dir.path().join("b/link")).expect("symlink");
        let mut opener = FileOpener::default();
        let read = |opener: &mut FileOpener, p: &str| {
            let mut s = String::new();
            opener.open(&dir.path().join(p)).and_then(|mut f| f.read_to_string(&mut s)).map(|_| s)
        };
        // Back and forth between directories: each time the file of the directory asked for.
        for d in ["a", "b", "a", "b"] {
            assert_eq!(read(&mut opener, &format!("{d}/f")).expect("open"), d);
        }
        let err = read(&mut opener, "b/link").expect_err("a symlink is not followed");
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP), "{err}");
        assert!(read(&mut opener, "b/missing").is_err());
        // A directory that went away since the last file: the error, not another directory's file.
        fs::remove_dir_all(dir.path().join("a")).expect("rm");
        assert!(read(&mut opener, "a/f").is_err());
    }

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for d in ["a/x/deep", "a/y", "b", "skip/inner", "z"] {
            fs::create_dir_all(dir.path().join(d)).expect("mkdir");
        }
        for f in ["a/x/deep/1", "a/y/2", "b/3", "skip/inner/4", "top"] {
            fs::write(dir.path().join(f), f).expect("write");
        }
        std::os::unix::fs::symlink("a", dir.path().join("link")).expect("symlink");
        dir
    }

    /// What a walker that scans every directory itself visits, in its order.
    fn walk(path: &Path, excluder: &PathMatcher, out: &mut Vec<PathBuf>) {
        let scan = scan_dir(path, excluder);
        out.push(scan.path.clone());
        for e in scan.entries.expect("listed") {
            if descends(false, &e.meta, 0) {
                walk(&e.path, excluder, out);
            }
        }
    }

    #[test]
    fn scanner_hands_out_directories_in_the_walkers_order() {
        let dir = tree();
        let excluder = PathMatcher::new(&[format!("{}/skip", dir.path().display())]).expect("pattern");
        let mut expected = Vec::new();
        walk(dir.path(), &excluder, &mut expected);
        assert_eq!(expected.len(), 7, "{expected:?}"); // root a a/x a/x/deep a/y b z
        let mut scanner = Scanner::start(dir.path().to_owned(), 0, excluder, false);
        for path in &expected {
            let scan = scanner.next(path).expect("in step");
            assert_eq!(&scan.path, path);
            let names: Vec<_> = scan.entries.expect("listed").into_iter().map(|e| e.name).collect();
            let mut sorted = names.clone();
            sorted.sort();
            assert_eq!(names, sorted);
        }
        let root = scan_dir(dir.path(), &PathMatcher::new(&[]).expect("none")).entries.expect("listed");
        let link = root.iter().find(|e| e.name == "link").expect("symlink listed");
        assert_eq!(link.extras.link_target.as_ref().map(|t| t.0.clone()), Some(b"a".to_vec()));
    }

    #[test]
    fn a_walker_out_of_step_is_told_to_scan_itself() {
        let dir = tree();
        let mut scanner = Scanner::start(dir.path().to_owned(), 0, PathMatcher::new(&[]).expect("none"), false);
        assert!(scanner.next(dir.path()).is_some());
        assert!(scanner.next(&dir.path().join("b")).is_none(), "a/ comes first");
        assert!(scanner.next(&dir.path().join("a")).is_none(), "stopped for good");
    }

    #[test]
    fn unreadable_directories_are_reported_not_fatal() {
        let scan = scan_dir(Path::new("/nonexistent/bams-scan-test"), &PathMatcher::new(&[]).expect("none"));
        assert!(scan.entries.is_err());
    }
}
