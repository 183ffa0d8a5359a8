//! Read-ahead for a backup's files. The walker reads one file at a time; on a cold cache each
//! read waits for the disk, which then has one request at a time to serve. The prefetcher is
//! told which files the walker is about to read (those of the directory it entered that it
//! will not take from the parent snapshot) and asks the kernel to start reading them
//! (`posix_fadvise(WILLNEED)`) from a helper thread, at most `budget` bytes ahead of what
//! the walker has consumed, so the disk always has several requests queued and the walker
//! finds most data already in the page cache.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};

#[derive(Default)]
struct State {
    queue: VecDeque<(PathBuf, u64)>,
    /// Bytes announced to the kernel so far.
    issued: u64,
    /// Bytes the walker has read (or skipped) so far.
    consumed: u64,
    done: bool,
    /// The helper is asleep: only then is a wake-up worth a syscall (the walker calls
    /// `consumed` once per file).
    asleep: bool,
}

/// The helper thread and its queue; stops when dropped.
pub struct Prefetcher {
    shared: Arc<(Mutex<State>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Prefetcher {
    /// Start a helper that stays at most `budget` bytes ahead of the walker (0: none).
    pub fn start(budget: u64) -> Self {
        let shared = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let s = shared.clone();
        let thread = (budget > 0)
            .then(|| std::thread::Builder::new().name("bams-prefetch".into()).spawn(move || run(&s, budget)).ok())
            .flatten();
        Self { shared, thread }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Files the walker will read next, in order, with their sizes.
    pub fn announce(&self, files: impl IntoIterator<Item = (PathBuf, u64)>) {
        if self.thread.is_none() {
            return;
        }
        let mut g = self.lock();
        let before = g.queue.len();
        g.queue.extend(files);
        if g.asleep && g.queue.len() > before {
            drop(g);
            self.shared.1.notify_all();
        }
    }

    /// The walker is done with `bytes` of announced data.
    pub fn consumed(&self, bytes: u64) {
        if self.thread.is_none() {
            return;
        }
        let mut g = self.lock();
        g.consumed += bytes;
        if g.asleep && !g.queue.is_empty() {
            drop(g);
            self.shared.1.notify_all();
        }
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        self.lock().done = true;
        self.shared.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Files checked in a row found already cached before the prefetcher stands down.
const CACHED_IN_ROW: u32 = 64;
/// Files it then lets pass without opening them, before it checks again.
const STAND_DOWN_FILES: u32 = 1024;

fn run(shared: &(Mutex<State>, Condvar), budget: u64) {
    let (lock, cv) = shared;
    // On a warm cache the open/fadvise/close per file is pure cost: after CACHED_IN_ROW
    // files whose last byte was already in memory, skip the next STAND_DOWN_FILES.
    let mut cached_in_row = 0u32;
    let mut skip = 0u32;
    loop {
        let (path, size) = {
            let mut g = lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            loop {
                if g.done {
                    return;
                }
                if !g.queue.is_empty() && g.issued.saturating_sub(g.consumed) < budget {
                    break;
                }
                g.asleep = true;
                g = cv.wait(g).unwrap_or_else(std::sync::PoisonError::into_inner);
                g.asleep = false;
            }
            let Some(next) = g.queue.pop_front() else { continue };
            g.issued += next.1;
            next
        };
        if skip > 0 {
            skip -= 1;
            continue;
        }
        // Best effort: a file that cannot be opened is the walker's to report.
        let Ok(f) = std::fs::File::open(&path) else { continue };
        if is_cached(&f, size) {
            cached_in_row += 1;
            if cached_in_row >= CACHED_IN_ROW {
                cached_in_row = 0;
                skip = STAND_DOWN_FILES;
            }
            continue;
        }
        cached_in_row = 0;
        let len = i64::try_from(size).unwrap_or(0);
        let _ = nix::fcntl::posix_fadvise(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            0,
            len,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_WILLNEED,
        );
    }
}

/// Whether the file's last byte is in the page cache (a read that may not wait succeeds).
fn is_cached(f: &std::fs::File, size: u64) -> bool {
    let mut byte = [0u8; 1];
    let mut bufs = [std::io::IoSliceMut::new(&mut byte)];
    rustix::io::preadv2(f, &mut bufs, size.saturating_sub(1), rustix::io::ReadWriteFlags::NOWAIT) == Ok(1)
}
