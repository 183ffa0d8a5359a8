//! Copy snapshots between repositories (local → S3 for offsite, S3 → local for recovery).
//!
//! Only blobs the destination lacks are uploaded, always sealed with the destination's key.
//! Repositories that share the id key (`repo init --copy-ids-from`) share blob ids, so "lacks"
//! is an index lookup and trees are copied as they are. Otherwise every
//! blob of the selection is read, authenticated, hashed with the destination's key and
//! re-encrypted, and trees are rewritten to the new ids. Writes follow the backup order
//! (packs → index → snapshot) under a shared lock on each side, so an interrupted copy leaves
//! both repositories valid and the next copy skips snapshots already copied (matched by
//! `origin`).

use std::collections::{HashMap, HashSet};

use crate::archiver::Progress;
use crate::error::Result;
use crate::id::Id;
use crate::index::{BlobLocation, MasterIndex};
use crate::pack::{pack_key, BlobKind};
use crate::pipeline::{BlobWriter, PipelineOptions};
use crate::repo::Repository;
use crate::snapshot::{Snapshot, SnapshotEntry};
use crate::tree::Tree;

/// What a copy did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct CopyReport {
    /// (source id, new destination id) of each snapshot copied.
    pub copied: Vec<(Id, Id)>,
    /// Source snapshots the destination already had a copy of.
    pub skipped: Vec<Id>,
    /// Blobs uploaded to the destination.
    pub blobs_added: u64,
    /// Plaintext bytes of those blobs.
    pub bytes_added: u64,
    /// Whether blob ids differ between the repositories, so every blob of the selection was
    /// read and re-hashed (repositories made with `repo init --copy-ids-from` share ids).
    /// Blobs are always re-encrypted with the destination's key.
    pub rehashed: bool,
}

/// A pack is read whole when at least this share of it is needed, else blob by blob.
const WHOLE_PACK_SHARE: f64 = 0.5;

/// Copy `selection` (snapshots of `src`) into `dst`.
pub fn copy(
    src: &Repository,
    dst: &Repository,
    selection: &[SnapshotEntry],
    pipeline: PipelineOptions,
    progress: &dyn Progress,
) -> Result<CopyReport> {
    let _src_lock = crate::lock::acquire(src, false, "copy (source)", std::time::Duration::from_secs(60))?;
    let _dst_lock = crate::lock::acquire(dst, false, "copy", std::time::Duration::from_secs(60))?;
    let probe = b"bams copy: do the keys agree?";
    let same_key = src.key().blob_id(probe) == dst.key().blob_id(probe);
    let mut report = CopyReport { rehashed: !same_key, ..CopyReport::default() };

    let (existing, _) = dst.snapshots()?;
    let already: HashSet<Id> = existing.iter().filter_map(|e| e.snapshot.origin).collect();
    let todo: Vec<&SnapshotEntry> = selection
        .iter()
        .filter(|e| {
            let done = already.contains(&e.id);
            if done {
                report.skipped.push(e.id);
            }
            !done
        })
        .collect();
    if todo.is_empty() {
        return Ok(report);
    }
    let src_index = src.load_index()?;
    let dst_index = dst.load_index()?;

    // (1) Every tree of the selection, and the data blobs they reference.
    let mut trees: HashMap<Id, Tree> = HashMap::new();
    let mut data: Vec<Id> = Vec::new();
    let mut seen_data = HashSet::new();
    for e in &todo {
        let mut stack = vec![e.snapshot.tree];
        while let Some(id) = stack.pop() {
            if trees.contains_key(&id) {
                continue;
            }
            let tree = src.load_tree(&src_index, &id)?;
            for n in &tree.nodes {
                stack.extend(n.subtree);
                data.extend(n.content.iter().filter(|c| seen_data.insert(**c)));
            }
            trees.insert(id, tree);
        }
    }

    let mut roots: HashMap<Id, Id> = HashMap::new();
    std::thread::scope(|scope| -> Result<()> {
        let mut writer = BlobWriter::start(scope, dst, &dst_index, pipeline);
        let result = (|| -> Result<()> {
            // (2) Data blobs: the missing ones (same key) or all (new ids), read pack by pack.
            let needed: Vec<Id> = if same_key { data.into_iter().filter(|d| !writer.has(d)).collect() } else { data };
            let mut new_ids: HashMap<Id, Id> = HashMap::new();
            for_each_blob(src, &src_index, &needed, |id, plain| {
                progress.bytes(plain.len() as u64);
                report.bytes_added += plain.len() as u64;
                if same_key {
                    writer.add_with_id(BlobKind::Data, id, plain)?;
                } else {
                    let len = plain.len() as u64;
                    let new = dst.key().blob_id(&plain);
                    if !writer.add_with_id(BlobKind::Data, new, plain)? {
                        report.bytes_added -= len;
                    }
                    new_ids.insert(id, new);
                }
                Ok(())
            })?;
            report.blobs_added = writer.added.0;
            // (3) Trees, children first, rewritten to the destination's ids.
            let mut tree_ids: HashMap<Id, Id> = HashMap::new();
            for e in &todo {
                let root = copy_tree(&e.snapshot.tree, &trees, same_key, &new_ids, &mut tree_ids, &mut writer)?;
                roots.insert(e.snapshot.tree, root);
            }
            Ok(())
        })();
        let stats = writer.finish();
        result?;
        stats.map(|_| ())
    })?;

    // (4) Snapshots last: everything they reference is stored and indexed.
    for e in todo {
        let tree = *roots.get(&e.snapshot.tree).ok_or_else(|| crate::Error::not_found("copied root tree"))?;
        let snap = Snapshot { tree, origin: Some(e.id), ..e.snapshot.clone() };
        let id = dst.save_snapshot(&snap)?;
        report.copied.push((e.id, id));
    }
    Ok(report)
}

/// Store `id`'s tree (after its subtrees) in the destination; returns its destination id.
fn copy_tree(
    id: &Id,
    trees: &HashMap<Id, Tree>,
    same_key: bool,
    data_ids: &HashMap<Id, Id>,
    done: &mut HashMap<Id, Id>,
    writer: &mut BlobWriter<'_, '_>,
) -> Result<Id> {
    if let Some(d) = done.get(id) {
        return Ok(*d);
    }
    let mut tree = trees.get(id).cloned().ok_or_else(|| crate::Error::not_found(format!("tree {id}")))?;
    for n in &mut tree.nodes {
        if let Some(sub) = n.subtree {
            n.subtree = Some(copy_tree(&sub, trees, same_key, data_ids, done, writer)?);
        }
        if !same_key {
            for c in &mut n.content {
                *c =
                    *data_ids.get(c).ok_or_else(|| crate::Error::not_found(format!("data blob {c} was not copied")))?;
            }
        }
    }
    let new = if same_key {
        writer.add_with_id(BlobKind::Tree, *id, tree.encode()?)?;
        *id
    } else {
        writer.add(BlobKind::Tree, tree.encode()?)?
    };
    done.insert(*id, new);
    Ok(new)
}

/// Call `f(id, plaintext)` for every blob in `ids`, reading each pack once: whole when most of
/// it is needed, else blob by blob. Every blob is authenticated and its id checked.
fn for_each_blob(
    src: &Repository,
    index: &MasterIndex,
    ids: &[Id],
    mut f: impl FnMut(Id, Vec<u8>) -> Result<()>,
) -> Result<()> {
    let mut by_pack: HashMap<Id, Vec<(Id, BlobLocation)>> = HashMap::new();
    for id in ids {
        let loc = index.get(id).ok_or_else(|| crate::Error::not_found(format!("blob {id} is not in the index")))?;
        by_pack.entry(loc.pack).or_default().push((*id, loc));
    }
    let mut packs: Vec<_> = by_pack.into_iter().collect();
    packs.sort_by_key(|(p, _)| *p);
    for (pack, blobs) in packs {
        let needed: u64 = blobs.iter().map(|(_, l)| u64::from(l.length)).sum();
        let end = blobs.iter().map(|(_, l)| u64::from(l.offset) + u64::from(l.length)).max().unwrap_or(0);
        if end > 0 && needed as f64 >= end as f64 * WHOLE_PACK_SHARE {
            let opened = src.verified(&format_args!("pack {pack}"), || {
                let whole = src.get_range(&pack_key(&pack), 0, end)?;
                blobs
                    .iter()
                    .map(|(id, l)| {
                        let sealed = &whole[l.offset as usize..(l.offset + l.length) as usize];
                        Ok((*id, src.open_blob(sealed, id, &pack)?))
                    })
                    .collect::<Result<Vec<_>>>()
            })?;
            for (id, plain) in opened {
                f(id, plain)?;
            }
        } else {
            for (id, l) in blobs {
                f(id, src.read_blob_at(&pack, l.offset, l.length, &id)?)?;
            }
        }
    }
    Ok(())
}
