//! `prune`: remove data no snapshot references, under an exclusive lock.
//!
//! Crash-safe order: (1) repack partly-used packs into new packs, indexed by new index files;
//! (2) write index files for the packs kept as they are; (3) delete the old index files;
//! (4) delete obsolete packs. Stopping anywhere leaves every snapshot readable: before (3) old
//! and new indexes both point at existing packs; after (3) only unreferenced packs remain,
//! which the next prune deletes.
//!
//! Two-phase by age: a pack no snapshot references is deleted (or, partly used, repacked) only
//! when it is older than a grace period, whether an index lists it or not. A running backup
//! indexes its packs every 32 packs but references them only when its snapshot is written at
//! the end, so its young packs look unreferenced; they are kept until they are old enough that
//! their writer, had it still been running, would have refreshed a lock prune waits for. Ages
//! are read on the backend's clock (against prune's own lock object), not the local one.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};
use crate::id::Id;
use crate::index::{IndexFile, MasterIndex};
use crate::pack::{pack_key, BlobKind, PackEntry};
use crate::pipeline::{BlobWriter, PipelineOptions};
use crate::repo::Repository;

/// Prune settings.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// Only report.
    pub dry_run: bool,
    /// Repack a pack when more than this share of it (percent) is unused.
    pub max_unused_percent: f64,
    /// Keep packs younger than this (indexed or not) whatever their use: they may belong to
    /// a backup still writing.
    pub grace: Duration,
    /// Wait this long for backups holding shared locks.
    pub lock_wait: Duration,
}

impl Default for PruneOptions {
    fn default() -> Self {
        Self {
            dry_run: false,
            max_unused_percent: 5.0,
            grace: Duration::from_secs(3600),
            lock_wait: Duration::from_secs(300),
        }
    }
}

/// What prune did (or would do).
#[derive(Debug, Default, Serialize)]
pub struct PruneReport {
    /// Dry run?
    pub dry_run: bool,
    /// Packs before.
    pub packs_before: usize,
    /// Packs deleted whole (no used blob).
    pub packs_deleted: usize,
    /// Packs rewritten.
    pub packs_repacked: usize,
    /// Unindexed leftovers deleted.
    pub unindexed_deleted: usize,
    /// Unreferenced or partly used packs kept because they are younger than the grace period.
    pub packs_too_young: usize,
    /// Blobs copied into new packs.
    pub blobs_repacked: usize,
    /// Bytes freed (stored size).
    pub bytes_freed: u64,
    /// Bytes that remain referenced.
    pub bytes_used: u64,
}

/// Every blob id any snapshot references (trees and data).
pub fn used_blobs(repo: &Repository, index: &MasterIndex) -> Result<HashSet<Id>> {
    let (snapshots, errors) = repo.snapshots()?;
    if let Some(e) = errors.into_iter().next() {
        return Err(Error::new(ErrorKind::Corrupt, format!("refusing to prune: {e}")));
    }
    let mut used = HashSet::new();
    let mut trees = HashSet::new();
    for s in &snapshots {
        repo.walk_trees(index, &s.snapshot.tree, &mut trees, &mut |_, _, tree| {
            for n in &tree.nodes {
                used.extend(n.content.iter().copied());
            }
        })
        .map_err(|e| Error::new(ErrorKind::Corrupt, format!("refusing to prune: snapshot {}: {e}", s.id)))?;
    }
    used.extend(trees);
    Ok(used)
}

/// Run prune.
pub fn prune(repo: &Repository, opts: &PruneOptions) -> Result<PruneReport> {
    let lock = crate::lock::acquire(repo, true, "prune", opts.lock_wait)?;
    let now = lock.backend_now().unwrap_or_else(SystemTime::now);
    let ages: HashMap<Id, Option<Duration>> = repo
        .list_packs()?
        .into_iter()
        .map(|(pid, info)| (pid, info.modified.map(|m| now.duration_since(m).unwrap_or_default())))
        .collect();
    // Unknown age (a backend without times) counts as old only when nothing else is known.
    let old = |pid: &Id| ages.get(pid).copied().flatten().is_none_or(|age| age > opts.grace);
    let files = repo.load_index_files()?;
    let mut index = MasterIndex::default();
    for (_, f) in &files {
        index.add_file(f);
    }
    index.finalize();
    let used = used_blobs(repo, &index)?;

    // Decide per pack; a blob stored twice counts as used only in the first pack seen.
    let mut packs: HashMap<Id, Vec<PackEntry>> = HashMap::new();
    for (_, f) in &files {
        for (p, e) in &f.packs {
            packs.entry(*p).or_insert_with(|| e.clone());
        }
    }
    let mut pack_ids: Vec<Id> = packs.keys().copied().collect();
    pack_ids.sort();
    let mut claimed: HashSet<Id> = HashSet::new();
    let mut keep = IndexFile::default();
    let mut repack: Vec<(Id, Vec<PackEntry>)> = Vec::new();
    let mut delete: Vec<Id> = Vec::new();
    let mut report = PruneReport { dry_run: opts.dry_run, packs_before: pack_ids.len(), ..Default::default() };
    for pid in pack_ids {
        let entries = &packs[&pid];
        let live: Vec<PackEntry> =
            entries.iter().filter(|e| used.contains(&e.id) && claimed.insert(e.id)).copied().collect();
        let total: u64 = entries.iter().map(|e| u64::from(e.length)).sum();
        let live_bytes: u64 = live.iter().map(|e| u64::from(e.length)).sum();
        let unused_pct = if total == 0 { 100.0 } else { (total - live_bytes) as f64 * 100.0 / total as f64 };
        if (live.is_empty() || unused_pct > opts.max_unused_percent) && !old(&pid) {
            report.packs_too_young += 1;
            report.bytes_used += total;
            keep.packs.push((pid, entries.clone()));
        } else if live.is_empty() {
            delete.push(pid);
            report.packs_deleted += 1;
            report.bytes_freed += total;
        } else if unused_pct > opts.max_unused_percent {
            report.packs_repacked += 1;
            report.blobs_repacked += live.len();
            report.bytes_freed += total - live_bytes;
            report.bytes_used += live_bytes;
            repack.push((pid, live));
        } else {
            report.bytes_used += live_bytes;
            keep.packs.push((pid, entries.clone()));
        }
    }
    let mut unindexed = Vec::new();
    for (pid, info) in repo.list_packs()? {
        // Unindexed packs need a known age: they may be a running backup's newest.
        let known_old = ages.get(&pid).copied().flatten().is_some_and(|age| age > opts.grace);
        if !packs.contains_key(&pid) && known_old {
            unindexed.push(pid);
            report.bytes_freed += info.size;
        }
    }
    report.unindexed_deleted = unindexed.len();
    if opts.dry_run {
        return Ok(report);
    }

    // (1) repack
    if !repack.is_empty() {
        let empty = MasterIndex::default();
        std::thread::scope(|scope| -> Result<()> {
            let mut writer = BlobWriter::start(scope, repo, &empty, PipelineOptions::default());
            let result = (|| -> Result<()> {
                for (pid, live) in &repack {
                    // Open every live blob first (reading the pack again if it arrives
                    // damaged), so a repack never stores half of a pack it could not read.
                    let blobs = repo.verified(&format_args!("pack {pid}"), || {
                        let data = repo.get(&pack_key(pid))?;
                        live.iter()
                            .map(|e| {
                                let sealed = data
                                    .get(e.offset as usize..(e.offset + e.length) as usize)
                                    .ok_or_else(|| Error::corrupt(format!("pack {pid}: blob {} beyond end", e.id)))?;
                                Ok((e, repo.open_blob(sealed, &e.id, pid)?))
                            })
                            .collect::<Result<Vec<_>>>()
                    })?;
                    for (e, plain) in blobs {
                        let kind = if e.kind == BlobKind::Tree { BlobKind::Tree } else { BlobKind::Data };
                        writer.add_with_id(kind, e.id, plain)?;
                    }
                }
                Ok(())
            })();
            let stats = writer.finish();
            result?;
            stats.map(|_| ())
        })?;
    }
    // (2) index for kept packs, (3) drop old index files, (4) delete packs.
    crate::consolidate::save_split(repo, keep.packs)?;
    repo.delete_indexes(&files.iter().map(|(id, _)| *id).collect::<Vec<_>>())?;
    // File heads of deleted blobs would only be tried and rejected by image backups: drop them.
    crate::heads::retain_used(repo, &used)?;
    for pid in delete.iter().chain(repack.iter().map(|(p, _)| p)).chain(unindexed.iter()) {
        repo.delete(&pack_key(pid))?;
    }
    drop(lock);
    crate::lock::remove_stale(repo)?;
    Ok(report)
}
