//! `check`: structure (every snapshot's trees and blobs are indexed, indexed packs exist with
//! the right size) and optionally data (re-read packs: hash matches the name, every blob
//! authenticates and matches its id, the header matches the index).

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::error::Result;
use crate::id::Id;
use crate::index::MasterIndex;
use crate::pack::{header_range, pack_key, parse_header};
use crate::repo::Repository;

/// How much data to read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReadData {
    /// Structure only.
    None,
    /// Every pack.
    All,
    /// A random share of packs (0–100 %).
    Subset(f64),
}

/// One problem found.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// `error` (data loss) or `warning` (harmless leftovers).
    pub severity: &'static str,
    /// The object concerned: `pack <id>`, `snapshot <id>`, `blob <id>`…
    pub object: String,
    /// What is wrong.
    pub message: String,
}

/// Result of a check.
#[derive(Debug, Default, Serialize)]
pub struct CheckReport {
    /// Snapshots checked.
    pub snapshots: usize,
    /// Trees walked.
    pub trees: usize,
    /// Packs known to the index.
    pub packs: usize,
    /// Packs whose data was read.
    pub packs_read: usize,
    /// Blobs indexed.
    pub blobs: usize,
    /// What is wrong.
    pub problems: Vec<Problem>,
}

impl CheckReport {
    /// True when no error-level problem was found.
    pub fn ok(&self) -> bool {
        !self.problems.iter().any(|p| p.severity == "error")
    }
    fn error(&mut self, object: String, message: String) {
        self.problems.push(Problem { severity: "error", object, message });
    }
    fn warning(&mut self, object: String, message: String) {
        self.problems.push(Problem { severity: "warning", object, message });
    }
}

/// Check the repository; `on_pack` is called per pack read (progress).
pub fn check(repo: &Repository, read: ReadData, on_pack: &dyn Fn()) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    let mut index = MasterIndex::default();
    let mut indexed_packs: HashMap<Id, Vec<crate::pack::PackEntry>> = HashMap::new();
    let index_ids = repo.index_ids()?;
    let raws = repo.get_many(index_ids.iter().map(|i| format!("index/{i}")).collect());
    for (id, raw) in index_ids.iter().zip(raws) {
        let parsed = raw.and_then(|raw| {
            if Id::hash_of(&raw) != *id {
                return Err(crate::error::Error::corrupt("content does not match its name"));
            }
            let plain = repo.key().open(&raw, &format_args!("index {id}"))?;
            crate::index::IndexFile::decode(&plain, &id.to_hex())
        });
        match parsed {
            Ok(f) => {
                index.add_file(&f);
                for (pack, entries) in f.packs {
                    indexed_packs.insert(pack, entries);
                }
            }
            Err(e) => report.error(format!("index {id}"), e.to_string()),
        }
    }
    index.finalize();
    report.blobs = index.len();
    report.packs = indexed_packs.len();

    let stored: HashMap<Id, u64> = repo.list_packs()?.into_iter().map(|(id, o)| (id, o.size)).collect();
    for (pack, entries) in &indexed_packs {
        let expected_min = entries.iter().map(|e| u64::from(e.offset) + u64::from(e.length)).max().unwrap_or(0);
        match stored.get(pack) {
            None => report.error(format!("pack {pack}"), "listed in the index but missing".into()),
            Some(&size) if size < expected_min + 4 => report.error(
                format!("pack {pack}"),
                format!("truncated: {size} bytes, index needs more than {expected_min}"),
            ),
            _ => {}
        }
    }
    for pack in stored.keys() {
        if !indexed_packs.contains_key(pack) {
            report.warning(
                format!("pack {pack}"),
                "not in any index (left by an interrupted backup or prune; the next backup or prune handles it)".into(),
            );
        }
    }

    let (snapshots, errors) = repo.snapshots()?;
    for e in errors {
        report.error("snapshot".into(), e.to_string());
    }
    report.snapshots = snapshots.len();
    let mut seen_trees = HashSet::new();
    let mut missing_blobs: HashSet<Id> = HashSet::new();
    for snap in &snapshots {
        let mut problems = Vec::new();
        let walk = repo.walk_trees(&index, &snap.snapshot.tree, &mut seen_trees, &mut |path, _id, tree| {
            for node in &tree.nodes {
                for blob in &node.content {
                    if !index.contains(blob) && missing_blobs.insert(*blob) {
                        problems.push(format!("{path}/{}: data blob {blob} is not in the index", node.name.display()));
                    }
                }
            }
        });
        if let Err(e) = walk {
            report.error(format!("snapshot {}", snap.id), format!("tree walk failed: {e}"));
        }
        for p in problems {
            report.error(format!("snapshot {}", snap.id), p);
        }
    }
    report.trees = seen_trees.len();
    // File heads are hints for disk images: a damaged one loses sharing, not data.
    let (_, unreadable) = crate::heads::load_all(repo)?;
    for (id, e) in unreadable {
        report.warning(
            format!("heads {id}"),
            format!("{e} (it only lets disk images share file blobs; the next prune or consolidation drops it)"),
        );
    }

    let to_read: Vec<&Id> = match read {
        ReadData::None => Vec::new(),
        ReadData::All => indexed_packs.keys().collect(),
        ReadData::Subset(pct) => {
            let mut all: Vec<&Id> = indexed_packs.keys().collect();
            all.sort();
            let n = ((all.len() as f64) * pct.clamp(0.0, 100.0) / 100.0).ceil() as usize;
            let mut rng = rand::thread_rng();
            rand::seq::SliceRandom::shuffle(all.as_mut_slice(), &mut rng);
            all.truncate(n);
            all
        }
    };
    for pack in to_read {
        if !stored.contains_key(pack) {
            continue;
        }
        report.packs_read += 1;
        for msg in read_pack(repo, pack, &indexed_packs[pack]) {
            report.error(format!("pack {pack}"), msg);
        }
        on_pack();
    }
    Ok(report)
}

/// Verify one pack completely; returns problems. A pack that fails is read a second time
/// before it is reported, so damage on the wire is not mistaken for damage at rest.
fn read_pack(repo: &Repository, pack: &Id, indexed: &[crate::pack::PackEntry]) -> Vec<String> {
    let first = read_pack_once(repo, pack, indexed);
    if first.is_empty() {
        return first;
    }
    tracing::warn!("pack {pack}: {}; reading it again", first.join("; "));
    read_pack_once(repo, pack, indexed)
}

fn read_pack_once(repo: &Repository, pack: &Id, indexed: &[crate::pack::PackEntry]) -> Vec<String> {
    let mut problems = Vec::new();
    let data = match repo.get(&pack_key(pack)) {
        Ok(d) => d,
        Err(e) => return vec![e.to_string()],
    };
    if Id::hash_of(&data) != *pack {
        problems.push("content hash does not match the pack name (corrupted or truncated)".into());
    }
    match data.len().checked_sub(4).map(|t| header_range(data.len() as u64, &data[t..], pack)) {
        Some(Ok((off, len))) => {
            let header = repo
                .key()
                .open(&data[off as usize..(off + len) as usize], &format_args!("pack {pack} header"))
                .and_then(|p| parse_header(&p, pack));
            match header {
                Ok(entries) if entries.as_slice() != indexed => {
                    problems.push("pack header differs from the index".into())
                }
                Ok(_) => {}
                Err(e) => problems.push(e.to_string()),
            }
        }
        Some(Err(e)) => problems.push(e.to_string()),
        None => problems.push("pack is shorter than its trailer".into()),
    }
    for e in indexed {
        let (o, l) = (e.offset as usize, e.length as usize);
        match data.get(o..o + l) {
            Some(sealed) => {
                if let Err(err) = repo.open_blob(sealed, &e.id, pack) {
                    problems.push(err.to_string());
                }
            }
            None => problems.push(format!("blob {} in pack {pack}: beyond the end of the pack", e.id)),
        }
    }
    problems
}
