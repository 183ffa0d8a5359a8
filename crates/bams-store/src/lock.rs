//! Repository locks: shared for backup/restore/check, exclusive for prune and forget.
//!
//! A lock is an immutable sealed object `locks/<id>` saying who holds it and since when. The
//! holder refreshes it every [`REFRESH`] by writing a new lock and deleting the old one; a lock
//! not refreshed for [`STALE_AFTER`], or held by a dead process on this host, is stale and
//! ignored (and removed by the next exclusive locker). Acquiring = write own lock, then list:
//! on a conflict, withdraw and retry until the deadline, so two lockers never both win.

use std::sync::atomic::{AtomicBool, Ordering};
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
    /// Whether this lock no longer counts.
    pub fn is_stale(&self) -> bool {
        let age = Utc::now().signed_duration_since(self.time).to_std().unwrap_or_default();
        if age > STALE_AFTER {
            return true;
        }
        if self.host == crate::host::hostname() && self.pid != std::process::id() {
            // Signal 0 probes for the process without touching it.
            let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid as i32), None).is_ok();
            return !alive;
        }
        false
    }
}

/// A held lock; released on drop.
pub struct LockGuard<'a> {
    repo: &'a Repository,
    others_seen: bool,
    stale_seen: Vec<Id>,
    current: Arc<Mutex<Id>>,
    stop: Arc<AtomicBool>,
    refresher: Option<std::thread::JoinHandle<()>>,
}

fn write_lock(repo: &Repository, info: &LockInfo) -> Result<Id> {
    repo.save_sealed("locks", &serde_json::to_vec(info)?)
}

/// All locks, with their contents (unreadable ones as `None`).
pub fn list_locks(repo: &Repository) -> Result<Vec<(Id, Option<LockInfo>)>> {
    list_other_locks(repo, None)
}

/// All locks except `own` (which is not even read: one request less per lock taken).
fn list_other_locks(repo: &Repository, own: Option<Id>) -> Result<Vec<(Id, Option<LockInfo>)>> {
    let mut out = Vec::new();
    for obj in repo.list("locks/")? {
        let Ok(id) = Id::from_hex(obj.key.trim_start_matches("locks/")) else {
            continue;
        };
        if Some(id) == own {
            continue;
        }
        let info =
            repo.load_sealed("locks", &id).ok().and_then(|plain| serde_json::from_slice::<LockInfo>(&plain).ok());
        out.push((id, info));
    }
    Ok(out)
}

/// Take a lock, waiting up to `wait` for conflicting holders to finish.
pub fn acquire<'a>(repo: &'a Repository, exclusive: bool, purpose: &str, wait: Duration) -> Result<LockGuard<'a>> {
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
        for (id, other) in list_other_locks(repo, Some(own))? {
            others_seen = true;
            match other {
                Some(o) if o.is_stale() => {
                    if exclusive {
                        let _ = repo.delete(&format!("locks/{id}"));
                    } else {
                        stale_seen.push(id);
                    }
                }
                Some(o) if exclusive || o.exclusive => {
                    conflict = Some(format!("{} by {}@{} (pid {}) since {}", o.purpose, o.user, o.host, o.pid, o.time))
                }
                Some(_) => {}
                None => conflict = Some(format!("unreadable lock {id}")),
            }
        }
        let Some(conflict) = conflict else {
            let current = Arc::new(Mutex::new(own));
            let stop = Arc::new(AtomicBool::new(false));
            let refresher = spawn_refresher(repo, current.clone(), stop.clone(), info.clone());
            return Ok(LockGuard { repo, others_seen, stale_seen, current, stop, refresher });
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
    stop: Arc<AtomicBool>,
    info: impl Fn() -> LockInfo + Send + 'static,
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
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                if last.elapsed() < REFRESH {
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

    /// Remove the stale locks seen when this one was taken, once their leftovers are handled.
    pub fn clear_stale(&mut self) {
        for id in std::mem::take(&mut self.stale_seen) {
            let _ = self.repo.delete(&format!("locks/{id}"));
        }
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.refresher.take() {
            let _ = t.join();
        }
        let id = *self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = self.repo.delete(&format!("locks/{id}"));
    }
}

/// Remove stale locks (`bams unlock`-style cleanup); returns how many.
pub fn remove_stale(repo: &Repository) -> Result<usize> {
    let mut n = 0;
    for (id, info) in list_locks(repo)? {
        if info.is_some_and(|i| i.is_stale()) {
            repo.delete(&format!("locks/{id}"))?;
            n += 1;
        }
    }
    Ok(n)
}
