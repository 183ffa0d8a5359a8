//! What a pool means at run time: the retention its jobs inherit, and the limits checked
//! before anything is written into it. Usage is read from the repository itself (pack sizes
//! and snapshot objects), not from the catalog's cache, so snapshots written by the CLI count.

use std::sync::Arc;

use bams_catalog::{Job, Pool};
use bams_store::Repository;
use serde::Serialize;

use crate::repos::{RepoPool, RepoPoolError};
use crate::runner::Director;

/// How full a pool's repository is.
#[derive(Debug, Clone, Copy, Default, Serialize, utoipa::ToSchema)]
pub struct PoolUsage {
    /// Bytes of all packs (compressed, encrypted: what the disk or bucket holds).
    pub stored_bytes: u64,
    /// Snapshots in the repository.
    pub snapshots: u64,
}

impl PoolUsage {
    /// Read the usage of `repo` (two listings, no object reads).
    pub fn of(repo: &Repository) -> bams_store::Result<Self> {
        let stored_bytes = repo.list_packs()?.iter().map(|(_, o)| o.size).sum();
        let snapshots = repo.list("snapshots/")?.len() as u64;
        Ok(Self { stored_bytes, snapshots })
    }

    /// The usage of repository `id` and the agents' repositories under it: what its pool
    /// holds.
    pub async fn of_family(repos: &RepoPool, id: i64) -> Result<Self, RepoPoolError> {
        let repos: Vec<Arc<Repository>> = repos.family(id).await?.into_iter().map(|(_, r)| r).collect();
        let sum = tokio::task::spawn_blocking(move || {
            repos.iter().try_fold(Self::default(), |acc, r| {
                let u = Self::of(r)?;
                Ok::<_, bams_store::Error>(Self {
                    stored_bytes: acc.stored_bytes + u.stored_bytes,
                    snapshots: acc.snapshots + u.snapshots,
                })
            })
        })
        .await
        .map_err(|e| RepoPoolError::Io(format!("task failed: {e}")))??;
        Ok(sum)
    }

    /// Why `pool` takes no more data at this usage, or `None` when it has room.
    pub fn full_reason(&self, pool: &Pool) -> Option<String> {
        let over = |limit: Option<i64>, used: u64| limit.and_then(|l| u64::try_from(l).ok()).filter(|&l| used >= l);
        if let Some(limit) = over(pool.max_bytes, self.stored_bytes) {
            return Some(format!(
                "pool {:?} is full: {} bytes stored, max_bytes {limit}; forget and prune snapshots or raise the limit",
                pool.name, self.stored_bytes
            ));
        }
        if let Some(limit) = over(pool.max_snapshots, self.snapshots) {
            return Some(format!(
                "pool {:?} is full: {} snapshots, max_snapshots {limit}; forget snapshots or raise the limit",
                pool.name, self.snapshots
            ));
        }
        None
    }
}

impl Director {
    /// The pool a job writes into, if it names one.
    pub(crate) async fn pool_of(&self, job: &Job) -> Result<Option<Pool>, String> {
        match job.pool {
            Some(id) => self.catalog().get_pool(id).await.map(Some).map_err(|e| e.to_string()),
            None => Ok(None),
        }
    }

    /// The retention applied after a job's backups: its own, else its pool's.
    pub(crate) async fn retention_of(&self, job: &Job) -> Result<Option<serde_json::Value>, String> {
        if job.retention.is_some() {
            return Ok(job.retention.clone());
        }
        Ok(self.pool_of(job).await?.and_then(|p| p.retention))
    }

    /// Refuse to write into `pool` when it is at one of its limits, counting the pool's
    /// repository `repository` and the agents' repositories under it. A pool without limits
    /// costs nothing here (the usage listing covers every pack).
    pub(crate) async fn ensure_room(&self, pool: &Pool, repository: i64) -> Result<(), String> {
        if pool.max_bytes.is_none() && pool.max_snapshots.is_none() {
            return Ok(());
        }
        let usage = PoolUsage::of_family(&self.repos, repository)
            .await
            .map_err(|e| format!("reading the usage of pool {:?}: {e}", pool.name))?;
        match usage.full_reason(pool) {
            Some(reason) => Err(reason),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(max_bytes: Option<i64>, max_snapshots: Option<i64>) -> Pool {
        Pool {
            id: 1,
            name: "p".into(),
            repository: 1,
            retention: None,
            max_bytes,
            max_snapshots,
            description: String::new(),
            shared_dedup: false,
            jobs: 0,
            snapshots: 0,
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn a_pool_is_full_at_either_limit() {
        let u = PoolUsage { stored_bytes: 1000, snapshots: 5 };
        assert_eq!(u.full_reason(&pool(None, None)), None);
        assert_eq!(u.full_reason(&pool(Some(1001), Some(6))), None);
        assert!(u
            .full_reason(&pool(Some(1000), None))
            .is_some_and(|r| r.contains("1000 bytes stored, max_bytes 1000")));
        assert!(u.full_reason(&pool(None, Some(5))).is_some_and(|r| r.contains("5 snapshots, max_snapshots 5")));
    }
}
