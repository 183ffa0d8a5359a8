//! Repository locks: shared for backup/restore/check, exclusive for prune and forget.
//!
//! A lock is an immutable sealed object `locks/<id>` saying who holds it and since when. The
//! holder refreshes it every [`REFRESH`] by writing a new lock and deleting the old one; a lock
//! not refreshed for [`STALE_AFTER`], or held by a process on this host that no longer exists,
//! is stale and ignored (and removed by the next exclusive locker). Acquiring = write own
//! lock, then list: on a conflict, withdraw and retry until the deadline, so two lockers never
//! both win.
//!
//! Ages are measured on the backend's clock, not the holders': a lock's age is how much older
//! its object is than the locker's own, just written, object — so a holder whose clock runs
//! hours behind does not look stale, and one whose clock runs ahead does not look fresh. A lock
//! object that cannot be read (damaged, or planted by a hostile client) is reported and
//! skipped, not taken for a holder that blocks everyone. A holder that cannot refresh its lock
//! for [`STALE_AFTER`]/2 must assume others now see it stale: [`LockGuard::ensure_held`] fails
//! and writers stop before they write their snapshot.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::id::Id;
use crate::repo::Repository;

/// How often a held lock is rewritten.
pub const REFRESH: Duration = Duration::from_secs(5 * 60);
/// Age after which an unrefreshed lock is ignored.
pub const STALE_AFTER: Duration = Duration::from_secs(30 * 60);

/// The contents of a lock object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockInfo {
    /// Last refresh.
    pub time: DateTime<Utc>,
    /// Exclusive (prune) or shared.
    pub exclusive: bool,
    /// Holder's host.
    pub host: String,
    /// Holder's pid.
    pub pid: u32,
    /// Holder's user.
    pub user: String,
    /// What the holder is doing (`backup`, `prune`…).
    pub purpose: String,
}

impl LockInfo {
    /// Whether this lock no longer counts, given its object's age on the backend's clock
    /// (`None` when the backend keeps no times: then the holder's own time is all there is).
    pub fn is_stale(&self, age: Option<Duration>) -> bool {
        self.stale_with(age, STALE_AFTER)
    }

    fn stale_with(&self, age: Option<Duration>, limit: Duration) -> bool {
        let age = age.unwrap_or_else(|| Utc::now().signed_duration_since(self.time).to_std().unwrap_or_default());
        if age > limit {
            return true;
        }
        if self.host == crate::host::hostname() && self.pid != std::process::id() {
            // Signal 0 probes for the process without touching it. Only "no such process"
            // means dead: EPERM is a live process of another user.
            let probe = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid as i32), None);
            return probe == Err(nix::errno::Errno::ESRCH) || is_zombie(self.pid);
        }
        false
    }
}

/// A process that has exited but was not yet reaped by its parent still answers signal 0; it
/// holds nothing any more.
fn is_zombie(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // `pid (comm) S ...`: the state follows the last ')' (comm may contain anything).
    stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) == Some("Z")
}

/// A lock object seen while listing.
#[derive(Debug, Clone)]
pub struct SeenLock {
    /// Object id.
    pub id: Id,
    /// Its contents; `None` when it cannot be read.
    pub info: Option<LockInfo>,
    /// How much older it is than the reference object (the lister's own lock), on the
    /// backend's clock.
    pub age: Option<Duration>,
}

impl SeenLock {
    /// Whether it no longer counts (an unreadable lock counts for nothing once it is old).
    pub fn is_stale(&self) -> bool {
        self.stale_with(STALE_AFTER)
    }

    fn stale_with(&self, limit: Duration) -> bool {
        match &self.info {
            Some(i) => i.stale_with(self.age, limit),
            None => self.age.is_some_and(|a| a > limit),
        }
    }
}

/// A held lock; released on drop.
pub struct LockGuard<'a> {
    repo: &'a Repository,
    others_seen: bool,
    stale_seen: Vec<Id>,
    current: Arc<Mutex<Id>>,
    refreshed: Arc<Mutex<Instant>>,
    /// Dropped to stop the refresher at once (it waits on the other end, not in a sleep: a
    /// command would otherwise end up to one sleep late).
    stop: Option<std::sync::mpsc::Sender<()>>,
    refresher: Option<std::thread::JoinHandle<()>>,
    timing: Timing,
}

/// How often a lock is refreshed and when it counts as stale (shortened in tests).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub(crate) refresh: Duration,
    pub(crate) stale_after: Duration,
}

const TIMING: Timing = Timing { refresh: REFRESH, stale_after: STALE_AFTER };

fn write_lock(repo: &Repository, info: &LockInfo) -> Result<Id> {
    repo.save_sealed("locks", &serde_json::to_vec(info)?)
}

/// All locks, with their contents (unreadable ones as `None`), aged against the newest lock.
pub fn list_locks(repo: &Repository) -> Result<Vec<SeenLock>> {
    scan_locks(repo, None).map(|(v, _)| v)
}

/// All locks except `own` (not even read: one request less per lock taken), with their ages
/// relative to `own`'s object time (or the newest lock's, without `own`).
fn scan_locks(repo: &Repository, own: Option<Id>) -> Result<(Vec<SeenLock>, bool)> {
    let listed = repo.list("locks/")?;
    let own_time = own.and_then(|o| listed.iter().find(|x| x.key == format!("locks/{o}")).and_then(|x| x.modified));
    let reference = own_time.or_else(|| listed.iter().filter_map(|x| x.modified).max());
    let mut out = Vec::new();
    for obj in listed {
        let Ok(id) = Id::from_hex(obj.key.trim_start_matches("locks/")) else {
            continue;
        };
        if Some(id) == own {
            continue;
        }
        let info =
            match repo.load_sealed("locks", &id).and_then(|plain| Ok(serde_json::from_slice::<LockInfo>(&plain)?)) {
                Ok(i) => Some(i),
                Err(e) if e.kind() == ErrorKind::NotFound => continue, // released meanwhile
                Err(e) => {
                    tracing::warn!("skipping unreadable lock {id}: {e}");
                    None
                }
            };
        let age = match (reference, obj.modified) {
            (Some(r), Some(m)) => Some(r.duration_since(m).unwrap_or_default()),
            _ => None,
        };
        out.push(SeenLock { id, info, age });
    }
    Ok((out, own_time.is_some()))
}

/// Take a lock, waiting up to `wait` for conflicting holders to finish.
pub fn acquire<'a>(repo: &'a Repository, exclusive: bool, purpose: &str, wait: Duration) -> Result<LockGuard<'a>> {
    acquire_with(repo, exclusive, purpose, wait, TIMING)
}

pub(crate) fn acquire_with<'a>(
    repo: &'a Repository,
    exclusive: bool,
    purpose: &str,
    wait: Duration,
    timing: Timing,
) -> Result<LockGuard<'a>> {
    let deadline = Instant::now() + wait;
    let purpose = purpose.to_string();
    let info = move || LockInfo {
        time: Utc::now(),
        exclusive,
        host: crate::host::hostname(),
        pid: std::process::id(),
        user: crate::host::username(),
        purpose: purpose.clone(),
    };
    loop {
        let own = write_lock(repo, &info())?;
        let mut conflict = None;
        let mut others_seen = false;
        let mut stale_seen = Vec::new();
        let (seen, _) = scan_locks(repo, Some(own))?;
        for other in seen {
            others_seen = true;
            let stale = other.stale_with(timing.stale_after);
            match &other.info {
                _ if stale => {
                    if exclusive {
                        let _ = repo.delete(&format!("locks/{}", other.id));
                    } else {
                        stale_seen.push(other.id);
                    }
                }
                Some(o) if exclusive || o.exclusive => {
                    conflict = Some(format!("{} by {}@{} (pid {}) since {}", o.purpose, o.user, o.host, o.pid, o.time))
                }
                // Readable shared locks do not conflict; unreadable ones were reported.
                _ => {}
            }
        }
        let Some(conflict) = conflict else {
            let current = Arc::new(Mutex::new(own));
            let refreshed = Arc::new(Mutex::new(Instant::now()));
            let (stop, stopped) = std::sync::mpsc::channel();
            let refresher =
                spawn_refresher(repo, current.clone(), refreshed.clone(), stopped, info.clone(), timing.refresh);
            let stop = Some(stop);
            return Ok(LockGuard { repo, others_seen, stale_seen, current, refreshed, stop, refresher, timing });
        };
        let _ = repo.delete(&format!("locks/{own}"));
        if Instant::now() >= deadline {
            return Err(Error::new(ErrorKind::Conflict, format!("repository is locked: {conflict}")));
        }
        let jitter = u64::from(rand::random::<u16>() % 500);
        std::thread::sleep(Duration::from_millis(500 + jitter));
    }
}

fn spawn_refresher(
    repo: &Repository,
    current: Arc<Mutex<Id>>,
    refreshed: Arc<Mutex<Instant>>,
    stopped: std::sync::mpsc::Receiver<()>,
    info: impl Fn() -> LockInfo + Send + 'static,
    every: Duration,
) -> Option<std::thread::JoinHandle<()>> {
    // The refresher needs its own handle on the backend; a Repository clone is cheap to fake
    // with the pieces it uses.
    let backend = repo.backend().clone();
    let rt = repo.runtime().clone();
    let key = repo.key().clone();
    std::thread::Builder::new()
        .name("bams-lock-refresh".into())
        .spawn(move || {
            let mut last = Instant::now();
            loop {
                let wait = every.saturating_sub(last.elapsed());
                match stopped.recv_timeout(wait) {
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return, // the guard was dropped
                }
                if last.elapsed() < every {
                    continue;
                }
                last = Instant::now();
                let Ok(plain) = serde_json::to_vec(&info()) else {
                    continue;
                };
                let Ok(sealed) = key.seal(&plain, None) else {
                    continue;
                };
                let id = Id::hash_of(&sealed);
                if rt.block_on(backend.put(&format!("locks/{id}"), sealed.into())).is_ok() {
                    *refreshed.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
                    let old = {
                        let mut cur = current.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        std::mem::replace(&mut *cur, id)
                    };
                    let _ = rt.block_on(backend.delete(&format!("locks/{old}")));
                }
            }
        })
        .ok()
}

impl LockGuard<'_> {
    /// Whether other locks existed when this one was taken: another client may be writing,
    /// or one died mid-run and left packs no index lists (see `archiver`).
    pub fn others_seen(&self) -> bool {
        self.others_seen
    }

    /// Fail when the lock has not been refreshed for half the stale time: other clients may
    /// soon (or already) ignore it, and a prune would no longer wait for this writer. Writers
    /// call this before the step that makes their work visible (a snapshot).
    pub fn ensure_held(&self) -> Result<()> {
        let since = self.refreshed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).elapsed();
        if since > self.timing.stale_after / 2 {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "the repository lock could not be refreshed for {} s; stopping before anything \
                     depends on it (the data written so far is kept and reused by the next run)",
                    since.as_secs()
                ),
            ));
        }
        Ok(())
    }

    /// The backend's time now, read off this lock's object (written at most one refresh
    /// interval ago, so it errs young, the safe side for age checks); `None` without times.
    pub fn backend_now(&self) -> Option<std::time::SystemTime> {
        let id = *self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = format!("locks/{id}");
        let written = self.repo.runtime().block_on(self.repo.backend().head(&key)).ok()??.modified?;
        let since = self.refreshed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).elapsed();
        Some(written + since)
    }

    /// Remove the stale locks seen when this one was taken, once their leftovers are handled.
    pub fn clear_stale(&mut self) {
        for id in std::mem::take(&mut self.stale_seen) {
            let _ = self.repo.delete(&format!("locks/{id}"));
        }
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.refresher.take() {
            let _ = t.join();
        }
        let id = *self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = self.repo.delete(&format!("locks/{id}"));
    }
}

/// Remove stale locks (`bams unlock`-style cleanup); returns how many. Ages are taken against
/// a probe lock written for the purpose (the backend's clock), removed again afterwards.
pub fn remove_stale(repo: &Repository) -> Result<usize> {
    let probe = write_lock(
        repo,
        &LockInfo {
            time: Utc::now(),
            exclusive: false,
            host: crate::host::hostname(),
            pid: std::process::id(),
            user: crate::host::username(),
            purpose: "unlock".into(),
        },
    )?;
    let scanned = scan_locks(repo, Some(probe));
    let mut n = 0;
    let result = scanned.and_then(|(seen, _)| {
        for l in seen.into_iter().filter(SeenLock::is_stale) {
            repo.delete(&format!("locks/{}", l.id))?;
            n += 1;
        }
        Ok(n)
    });
    let _ = repo.delete(&format!("locks/{probe}"));
    result
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use async_trait::async_trait;
    use bytes::Bytes;

    use super::*;
    use crate::backend::local::LocalBackend;
    use crate::backend::{ObjectInfo, ReadBackend, WriteBackend};
    use crate::crypto::{KdfParams, SlotKind};
    use crate::repo::InitOptions;

    /// A local backend whose writes fail while `broken` is set (a lost connection).
    struct Breakable {
        inner: LocalBackend,
        broken: Arc<AtomicBool>,
    }

    #[async_trait]
    impl ReadBackend for Breakable {
        fn location(&self) -> String {
            self.inner.location()
        }
        async fn get(&self, key: &str) -> Result<Bytes> {
            self.inner.get(key).await
        }
        async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes> {
            self.inner.get_range(key, offset, len).await
        }
        async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
            self.inner.list(prefix).await
        }
        async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
            self.inner.head(key).await
        }
    }

    #[async_trait]
    impl WriteBackend for Breakable {
        async fn put(&self, key: &str, data: Bytes) -> Result<()> {
            if self.broken.load(Ordering::Relaxed) {
                return Err(Error::new(ErrorKind::Transient, "connection lost"));
            }
            self.inner.put(key, data).await
        }
        async fn delete(&self, key: &str) -> Result<()> {
            self.inner.delete(key).await
        }
    }

    #[test]
    fn a_holder_that_cannot_refresh_its_lock_is_told_before_it_publishes() {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let broken = Arc::new(AtomicBool::new(false));
        let backend = Arc::new(Breakable { inner: LocalBackend::new(dir.path()), broken: broken.clone() });
        let opts = InitOptions { kdf: KdfParams { m_cost: 64, t_cost: 1, p_cost: 1 }, ..InitOptions::default() };
        let repo = Repository::init(backend, rt.handle().clone(), b"pw", SlotKind::Password, &opts).expect("init");
        let timing = Timing { refresh: Duration::from_millis(100), stale_after: Duration::from_millis(800) };
        let guard = acquire_with(&repo, false, "backup", Duration::from_secs(1), timing).expect("lock");
        std::thread::sleep(Duration::from_millis(500));
        guard.ensure_held().expect("refreshed while the backend works");
        broken.store(true, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(700));
        let e = guard.ensure_held().expect_err("refresh failed for longer than half the stale time");
        assert_eq!(e.kind(), ErrorKind::Conflict);
        assert!(e.to_string().contains("could not be refreshed"), "{e}");
        broken.store(false, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(300));
        guard.ensure_held().expect("held again once a refresh went through");
    }
}
