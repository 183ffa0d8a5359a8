//! Index consolidation: every backup (every agent's, every checkpoint) adds small index files,
//! and opening a repository lists and reads them all, so a repository with many writers
//! slows down with its history. Consolidation merges the small index files into a few large
//! ones (at most [`MAX_BLOBS_PER_FILE`] blobs each) and leaves large ones alone, so repeated
//! runs rewrite only what was added since.
//!
//! Crash-safe order: the merged files are written first, then the merged-away files deleted.
//! At every moment the index files together list every pack (some twice after a crash, which
//! readers accept and the next consolidation folds). A shared lock is enough: backups may run
//! meanwhile (their new index files are not among those read, so never deleted), while prune,
//! which rewrites the index under an exclusive lock, waits. An index file that cannot be read
//! is left where it is and reported.

use std::collections::HashSet;
use std::time::Duration;

use crate::index::IndexFile;
use crate::{Id, Repository, Result};

/// Blobs per merged index file: ~45 MB of plaintext, well below object size limits, and
/// small enough that one writer's index never grows a file without bound.
pub const MAX_BLOBS_PER_FILE: usize = 1 << 20;

/// Index objects at least this large (sealed) count as consolidated and are not read.
pub const SMALL_FILE_BYTES: u64 = 8 << 20;

/// What to consolidate.
#[derive(Debug, Clone)]
pub struct ConsolidateOptions {
    /// Do nothing unless at least this many small index files exist.
    pub min_files: usize,
    /// Wait this long for an exclusive holder (prune) to finish.
    pub lock_wait: Duration,
}

impl Default for ConsolidateOptions {
    fn default() -> Self {
        Self { min_files: 2, lock_wait: Duration::from_secs(300) }
    }
}

/// What a consolidation did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ConsolidateReport {
    /// Index files before.
    pub files_before: usize,
    /// Small files read and merged away.
    pub files_merged: usize,
    /// Merged files written.
    pub files_written: usize,
    /// Index files after.
    pub files_after: usize,
    /// Packs the merged files list.
    pub packs: usize,
    /// Blobs the merged files list.
    pub blobs: usize,
    /// Small files that could not be read (left in place).
    pub unreadable: Vec<String>,
    /// Small file-heads objects merged away ([`crate::heads`]).
    pub heads_merged: usize,
    /// File-heads objects written for them.
    pub heads_written: usize,
}

/// Merge the repository's small index files (see the module docs).
pub fn consolidate(repo: &Repository, opts: &ConsolidateOptions) -> Result<ConsolidateReport> {
    let _lock = crate::lock::acquire(repo, false, "consolidate", opts.lock_wait)?;
    let listed = repo.list("index/")?;
    let mut report = ConsolidateReport { files_before: listed.len(), ..Default::default() };
    // Every backup of new files also adds a heads object; merge those the same way.
    (report.heads_merged, report.heads_written) = crate::heads::merge_small(repo, opts.min_files)?;
    let small: Vec<Id> = listed
        .iter()
        .filter(|o| o.size < SMALL_FILE_BYTES)
        .filter_map(|o| Id::from_hex(o.key.trim_start_matches("index/")).ok())
        .collect();
    if small.len() < opts.min_files.max(2) {
        report.files_after = report.files_before;
        return Ok(report);
    }
    let mut merged = Vec::with_capacity(small.len());
    let mut seen = HashSet::new();
    let mut packs = Vec::new();
    for (id, file) in small.iter().zip(repo.load_index_files_by_id(&small)) {
        match file {
            Ok(f) => {
                merged.push(*id);
                packs.extend(f.packs.into_iter().filter(|(pack, _)| seen.insert(*pack)));
            }
            Err(e) => {
                tracing::warn!("consolidate: leaving unreadable index file {id}: {e}");
                report.unreadable.push(id.to_hex());
            }
        }
    }
    report.packs = packs.len();
    report.blobs = packs.iter().map(|(_, e)| e.len()).sum();
    report.files_written = save_split(repo, packs)?;
    repo.delete_indexes(&merged)?;
    report.files_merged = merged.len();
    report.files_after = report.files_before - merged.len() + report.files_written;
    Ok(report)
}

/// Write `packs` as index files of at most [`MAX_BLOBS_PER_FILE`] blobs (a pack's entries
/// stay together). Returns how many files were written.
pub fn save_split(repo: &Repository, packs: Vec<(Id, Vec<crate::pack::PackEntry>)>) -> Result<usize> {
    let mut written = 0;
    let mut file = IndexFile::default();
    let mut blobs = 0;
    for (pack, entries) in packs {
        if blobs > 0 && blobs + entries.len() > MAX_BLOBS_PER_FILE {
            repo.save_index(&std::mem::take(&mut file))?;
            written += 1;
            blobs = 0;
        }
        blobs += entries.len();
        file.packs.push((pack, entries));
    }
    if !file.packs.is_empty() {
        repo.save_index(&file)?;
        written += 1;
    }
    Ok(written)
}
