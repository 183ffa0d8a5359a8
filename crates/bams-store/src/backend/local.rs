//! A repository in a local directory (or any mounted filesystem).
//!
//! Objects are plain files under the root. `put` writes a temporary file next to the target,
//! fsyncs it, renames it into place and fsyncs the directory, so a crash never leaves a
//! half-written object under its final name. Temporary files start with `.tmp-` and are ignored
//! by `list`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use super::{ObjectInfo, ReadBackend, WriteBackend};
use crate::error::{Error, ErrorKind, Result};

/// Prefix of in-flight files; never listed, removed by `prune`.
pub const TMP_PREFIX: &str = ".tmp-";

/// Local-directory backend.
#[derive(Debug, Clone)]
pub struct LocalBackend {
    root: PathBuf,
}

impl LocalBackend {
    /// A backend rooted at `root` (which need not exist yet for `init`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Filesystem path of `key`, refusing keys that could escape the root.
    fn path(&self, key: &str) -> Result<PathBuf> {
        if key.is_empty() || key.starts_with('/') || key.split('/').any(|c| c == ".." || c == ".") {
            return Err(Error::invalid(format!("invalid object key {key:?}")));
        }
        Ok(self.root.join(key))
    }

    async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| Error::new(ErrorKind::Other, format!("I/O task failed: {e}")))?
    }
}

fn info(key: String, meta: &fs::Metadata) -> ObjectInfo {
    ObjectInfo { key, size: meta.len(), modified: meta.modified().ok() }
}

fn list_dir(root: &Path, dir: &Path, out: &mut Vec<ObjectInfo>) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(dir.display(), e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir.display(), e))?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with(TMP_PREFIX) {
            continue;
        }
        let path = entry.path();
        let meta = match entry.metadata() {
            Ok(m) => m,
            // Removed since the directory was read (another client's lock going away): it is
            // simply not there any more.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(path.display(), e)),
        };
        if meta.is_dir() {
            list_dir(root, &path, out)?;
        } else if let Ok(rel) = path.strip_prefix(root) {
            out.push(info(rel.to_string_lossy().into_owned(), &meta));
        }
    }
    Ok(())
}

#[async_trait]
impl ReadBackend for LocalBackend {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        let path = self.path(key)?;
        Self::blocking(move || fs::read(&path).map(Bytes::from).map_err(|e| Error::io(path.display(), e))).await
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes> {
        let path = self.path(key)?;
        Self::blocking(move || {
            let file = fs::File::open(&path).map_err(|e| Error::io(path.display(), e))?;
            let len = usize::try_from(len).map_err(|_| Error::invalid("range too large"))?;
            let mut buf = vec![0u8; len];
            let mut done = 0;
            while done < len {
                let n =
                    file.read_at(&mut buf[done..], offset + done as u64).map_err(|e| Error::io(path.display(), e))?;
                if n == 0 {
                    return Err(Error::corrupt(format!(
                        "{}: truncated (wanted {len} bytes at offset {offset}, got {done})",
                        path.display()
                    )));
                }
                done += n;
            }
            Ok(Bytes::from(buf))
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let root = self.root.clone();
        let dir = if prefix.is_empty() { root.clone() } else { self.path(prefix.trim_end_matches('/'))? };
        let prefix = prefix.to_string();
        Self::blocking(move || {
            let mut out = Vec::new();
            list_dir(&root, &dir, &mut out)?;
            out.retain(|o| o.key.starts_with(&prefix));
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        let path = self.path(key)?;
        let key = key.to_string();
        Self::blocking(move || match fs::metadata(&path) {
            Ok(m) => Ok(Some(info(key, &m))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path.display(), e)),
        })
        .await
    }
}

#[async_trait]
impl WriteBackend for LocalBackend {
    fn sink(&self) -> Option<Result<Box<dyn super::ObjectSink>>> {
        Some(LocalSink::create(&self.root).map(|s| Box::new(s) as Box<dyn super::ObjectSink>))
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        let path = self.path(key)?;
        Self::blocking(move || {
            install(&path, |tmp| {
                let f = write_new_file(tmp, &data)?;
                f.sync_all()
            })
        })
        .await
    }

    async fn put_file(&self, key: &str, src: &Path) -> Result<()> {
        let path = self.path(key)?;
        let src = src.to_path_buf();
        Self::blocking(move || {
            install(&path, |tmp| {
                // Same filesystem: a second name for the same bytes; else an in-kernel copy.
                if fs::hard_link(&src, tmp).is_err() {
                    fs::copy(&src, tmp)?;
                }
                fs::File::open(tmp)?.sync_all()
            })
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        Self::blocking(move || match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(path.display(), e)),
        })
        .await
    }
}

/// Objects at least this large (packs) are written around the page cache.
const DIRECT_MIN: usize = 1 << 20;
/// Alignment O_DIRECT asks of buffers, offsets and lengths (the largest logical block size).
const DIRECT_ALIGN: usize = 4096;
/// Bytes per `O_DIRECT` write (a multiple of [`DIRECT_ALIGN`]), copied through one aligned
/// buffer per writer thread.
const DIRECT_BOUNCE: usize = 4 << 20;

thread_local! {
    /// An over-allocated buffer that holds an aligned window of [`DIRECT_BOUNCE`] bytes.
    static ALIGNED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Create `path` holding `data`. Large objects are written with `O_DIRECT`: a pack is never
/// read back by the backup that writes it, and copying it into the page cache (then writing
/// that back) cost as much CPU as reading the backed-up files. Filesystems without `O_DIRECT`
/// (tmpfs) get a buffered write.
fn write_new_file(path: &Path, data: &[u8]) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let aligned_len = data.len() / DIRECT_ALIGN * DIRECT_ALIGN;
    if data.len() >= DIRECT_MIN {
        let direct = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
            .open(path);
        match direct {
            Ok(mut f) => {
                ALIGNED.with_borrow_mut(|buf| -> std::io::Result<()> {
                    buf.resize(DIRECT_BOUNCE + DIRECT_ALIGN, 0);
                    let start = buf.as_ptr().align_offset(DIRECT_ALIGN);
                    for piece in data[..aligned_len].chunks(DIRECT_BOUNCE) {
                        let window = buf
                            .get_mut(start..start + piece.len())
                            .ok_or_else(|| std::io::Error::other("aligned buffer too short"))?;
                        window.copy_from_slice(piece);
                        f.write_all(window)?;
                    }
                    Ok(())
                })?;
                // The unaligned tail goes through the page cache.
                rustix::fs::fcntl_setfl(&f, rustix::fs::fcntl_getfl(&f)? - rustix::fs::OFlags::DIRECT)?;
                f.write_all(&data[aligned_len..])?;
                return Ok(f);
            }
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {}
            Err(e) => return Err(e),
        }
    }
    let mut f = fs::File::create(path)?;
    f.write_all(data)?;
    Ok(f)
}

/// Bytes a [`LocalSink`] gathers before each write: a multiple of [`DIRECT_ALIGN`], so every
/// write but the last is an aligned `O_DIRECT` write.
const SINK_STAGE: usize = 1 << 20;

/// A pack streamed to a temporary file under `data/` as it is built, then renamed into place:
/// a backup holds one stage buffer per pack instead of the whole pack (two or three 16 MiB
/// packs were most of a backup's memory). Written with `O_DIRECT` where the filesystem has it.
struct LocalSink {
    root: PathBuf,
    tmp: PathBuf,
    file: Option<fs::File>,
    direct: bool,
    /// Over-allocated so that `stage[start..start + SINK_STAGE]` is aligned.
    stage: Vec<u8>,
    start: usize,
    staged: usize,
}

impl LocalSink {
    fn create(root: &Path) -> Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = root.join("data");
        create_dirs_durably(&dir).map_err(|e| Error::io(dir.display(), e))?;
        let tmp = dir.join(format!("{TMP_PREFIX}{}", crate::id::Id::random().short()));
        let open = |flags: rustix::fs::OFlags| {
            fs::OpenOptions::new().write(true).create_new(true).custom_flags(flags.bits() as i32).open(&tmp)
        };
        let (file, direct) = match open(rustix::fs::OFlags::DIRECT) {
            Ok(f) => (f, true),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                (open(rustix::fs::OFlags::empty()).map_err(|e| Error::io(tmp.display(), e))?, false)
            }
            Err(e) => return Err(Error::io(tmp.display(), e)),
        };
        let stage = vec![0u8; SINK_STAGE + DIRECT_ALIGN];
        let start = stage.as_ptr().align_offset(DIRECT_ALIGN);
        Ok(Self { root: root.to_path_buf(), tmp, file: Some(file), direct, stage, start, staged: 0 })
    }

    /// Write the staged bytes (all of them: the caller makes them aligned unless it is the end).
    fn flush(&mut self) -> std::io::Result<()> {
        let file = self.file.as_mut().ok_or_else(|| std::io::Error::other("sink already closed"))?;
        file.write_all(&self.stage[self.start..self.start + self.staged])?;
        self.staged = 0;
        Ok(())
    }
}

impl super::ObjectSink for LocalSink {
    fn write(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let n = data.len().min(SINK_STAGE - self.staged);
            let at = self.start + self.staged;
            self.stage[at..at + n].copy_from_slice(&data[..n]);
            self.staged += n;
            data = &data[n..];
            if self.staged == SINK_STAGE {
                self.flush().map_err(|e| Error::io(self.tmp.display(), e))?;
            }
        }
        Ok(())
    }

    fn install(mut self: Box<Self>, key: &str) -> Result<()> {
        let path = LocalBackend::new(self.root.clone()).path(key)?;
        let tmp = self.tmp.clone();
        let finish = |sink: &mut Self| -> std::io::Result<()> {
            let aligned = sink.staged / DIRECT_ALIGN * DIRECT_ALIGN;
            let tail = sink.staged - aligned;
            let file = sink.file.as_mut().ok_or_else(|| std::io::Error::other("sink already closed"))?;
            file.write_all(&sink.stage[sink.start..sink.start + aligned])?;
            if sink.direct && tail > 0 {
                // The unaligned tail goes through the page cache.
                rustix::fs::fcntl_setfl(&*file, rustix::fs::fcntl_getfl(&*file)? - rustix::fs::OFlags::DIRECT)?;
            }
            file.write_all(&sink.stage[sink.start + aligned..sink.start + sink.staged])?;
            file.sync_all()?;
            let dir = path.parent().ok_or_else(|| std::io::Error::other("object without directory"))?;
            create_dirs_durably(dir)?;
            fs::rename(&sink.tmp, &path)?;
            fs::File::open(dir)?.sync_all()
        };
        let done = finish(&mut self);
        self.file = None;
        match done {
            Ok(()) => {
                self.tmp = PathBuf::new(); // installed: nothing to clean up
                Ok(())
            }
            Err(e) => Err(Error::io(format_args!("{} (as {})", path.display(), tmp.display()), e)),
        }
    }
}

impl Drop for LocalSink {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Write an object through a temporary file next to it: `fill` writes and syncs the
/// temporary file, which is then renamed into place and the directory synced.
fn install(path: &Path, fill: impl FnOnce(&Path) -> std::io::Result<()>) -> Result<()> {
    let dir = path.parent().ok_or_else(|| Error::invalid("object without directory"))?;
    create_dirs_durably(dir).map_err(|e| Error::io(dir.display(), e))?;
    let tmp = dir.join(format!("{TMP_PREFIX}{}", crate::id::Id::random().short()));
    let write = || -> std::io::Result<()> {
        fill(&tmp)?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::io(path.display(), e)
    })
}

/// `create_dir_all`, then fsync the parent of every directory it created: a new `data/ab/`
/// must itself survive a crash, or the pack inside it is lost while its index survives.
fn create_dirs_durably(dir: &Path) -> std::io::Result<()> {
    let mut missing = Vec::new();
    let mut cur = dir;
    while !cur.exists() {
        missing.push(cur.to_path_buf());
        match cur.parent() {
            Some(p) => cur = p,
            None => break,
        }
    }
    for d in missing.iter().rev() {
        match fs::create_dir(d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
        if let Some(parent) = d.parent() {
            fs::File::open(parent)?.sync_all()?;
        }
    }
    Ok(())
}

/// Remove leftover temporary files older than `max_age` (after crashes); returns how many.
pub fn remove_stale_temp_files(root: &Path, max_age: std::time::Duration) -> usize {
    fn walk(dir: &Path, max_age: std::time::Duration, n: &mut usize) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                walk(&path, max_age, n);
            } else if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                let old = meta.modified().ok().and_then(|m| m.elapsed().ok()).is_some_and(|a| a > max_age);
                if old && fs::remove_file(&path).is_ok() {
                    *n += 1;
                }
            }
        }
    }
    let mut n = 0;
    walk(root, max_age, &mut n);
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Objects written around the page cache (aligned part, then a buffered tail) read back
    /// whole, on a disk filesystem and on tmpfs (which refuses `O_DIRECT`).
    #[test]
    fn large_objects_read_back_exactly() {
        let disk = tempfile::tempdir_in(std::env::temp_dir()).expect("tempdir");
        let shm = Path::new("/dev/shm");
        let shm = shm.is_dir().then(|| tempfile::tempdir_in(shm).expect("tmpfs dir"));
        let sizes = [DIRECT_MIN - 1, DIRECT_MIN, DIRECT_MIN + 1, DIRECT_BOUNCE * 2 + 4095, DIRECT_BOUNCE + 12_345];
        for root in std::iter::once(disk.path()).chain(shm.as_ref().map(tempfile::TempDir::path)) {
            for (n, size) in sizes.into_iter().enumerate() {
                let data: Vec<u8> = (0..size).map(|i| (i * 7 + i / 4096) as u8).collect();
                let path = root.join(format!("obj{n}"));
                write_new_file(&path, &data).expect("write").sync_all().expect("sync");
                assert_eq!(fs::read(&path).expect("read"), data, "size {size} under {}", root.display());
            }
        }
    }
    /// Streamed objects (packs) read back exactly whatever the piece sizes, aligned or not, on
    /// disk and on tmpfs; a sink dropped or refused its key leaves no temporary file.
    #[test]
    fn streamed_objects_read_back_exactly_and_leave_nothing_behind() {
        use crate::backend::WriteBackend;
        let disk = tempfile::tempdir_in(std::env::temp_dir()).expect("tempdir");
        let shm = Path::new("/dev/shm");
        let shm = shm.is_dir().then(|| tempfile::tempdir_in(shm).expect("tmpfs dir"));
        let sizes = [0, 100, SINK_STAGE - 1, SINK_STAGE, SINK_STAGE + 1, 3 * SINK_STAGE + 4097];
        for root in std::iter::once(disk.path()).chain(shm.as_ref().map(tempfile::TempDir::path)) {
            let backend = LocalBackend::new(root);
            for (n, size) in sizes.into_iter().enumerate() {
                let data: Vec<u8> = (0..size).map(|i| (i * 13 + i / 4096) as u8).collect();
                let mut sink = backend.sink().expect("local backends stream").expect("sink");
                let mut rest = data.as_slice();
                for piece in [777usize, 65_536, 1, SINK_STAGE + 3].iter().cycle() {
                    if rest.is_empty() {
                        break;
                    }
                    let (now, later) = rest.split_at((*piece).min(rest.len()));
                    sink.write(now).expect("write");
                    rest = later;
                }
                sink.install(&format!("data/ab/obj{n}")).expect("install");
                let read = fs::read(root.join(format!("data/ab/obj{n}"))).expect("read");
                assert!(read == data, "size {size} under {}", root.display());
            }
            let mut dropped = backend.sink().expect("sink").expect("sink");
            dropped.write(&[1u8; 5000]).expect("write");
            drop(dropped);
            let mut refused = backend.sink().expect("sink").expect("sink");
            refused.write(&[2u8; 10]).expect("write");
            assert!(refused.install("../escape").is_err());
            let left: Vec<_> = fs::read_dir(root.join("data"))
                .expect("data dir")
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(TMP_PREFIX))
                .collect();
            assert!(left.is_empty(), "temporary files left: {left:?}");
            assert!(!root.join("../escape").exists());
        }
    }
}
