//! Index consolidation: many small index files become few, nothing is lost (check passes and
//! every snapshot restores), unreadable files are left alone, a crash between writing and
//! deleting leaves a repository that checks and the next run folds, and merged files are split
//! at the size limit.

use bams_store::archiver::{self, BackupOptions, NoProgress};
use bams_store::check::{self, ReadData};
use bams_store::consolidate::{self, ConsolidateOptions, MAX_BLOBS_PER_FILE};
use bams_store::index::IndexFile;
use bams_store::pack::{BlobKind, PackEntry};
use bams_store::restorer::{self, RestoreOptions};
use bams_store::Id;

mod common;
use common::fixture;

fn index_count(f: &common::Fixture) -> usize {
    f.repo.index_ids().expect("list").len()
}

fn assert_checks(f: &common::Fixture) {
    let report = check::check(&f.repo, ReadData::All, &|| {}).expect("check");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[test]
fn many_small_index_files_become_one_and_every_snapshot_survives() {
    let f = fixture();
    let src = f.dir.path().join("src");
    std::fs::create_dir_all(&src).expect("src");
    let mut snaps = Vec::new();
    for i in 0..24 {
        std::fs::write(src.join(format!("f{i}")), format!("version {i} of a file").repeat(50)).expect("write");
        snaps.push(archiver::backup(&f.repo, BackupOptions::paths(vec![src.clone()]), &NoProgress).expect("backup").id);
    }
    let before = index_count(&f);
    assert!(before >= 24, "each backup added an index file: {before}");
    let blobs_before = f.repo.load_index().expect("index").len();
    // A damaged index file is left where it is and reported.
    let junk = b"not an index";
    let junk_id = blake3::hash(junk).to_hex().to_string();
    f.repo.put(&format!("index/{junk_id}"), junk.to_vec()).expect("plant");

    // Below the threshold nothing happens.
    let none = consolidate::consolidate(&f.repo, &ConsolidateOptions { min_files: 1000, ..Default::default() })
        .expect("consolidate");
    assert_eq!((none.files_merged, none.files_written), (0, 0));

    let r = consolidate::consolidate(&f.repo, &ConsolidateOptions::default()).expect("consolidate");
    assert_eq!(r.files_before, before + 1);
    assert_eq!((r.files_merged, r.files_written, r.files_after), (before, 1, 2));
    assert_eq!(r.unreadable, vec![junk_id.clone()]);
    assert_eq!(index_count(&f), 2);
    f.repo.delete(&format!("index/{junk_id}")).expect("rm junk");
    assert_eq!(f.repo.load_index().expect("index").len(), blobs_before, "every blob still indexed");
    assert_checks(&f);
    let index = f.repo.load_index().expect("index");
    for (i, id) in snaps.iter().enumerate() {
        let target = f.dir.path().join(format!("restore{i}"));
        let entry = f.repo.find_snapshot(&id.to_hex()).expect("snapshot");
        let (root, root_path) = restorer::resolve_subtree(&f.repo, &index, &entry.snapshot.tree, None).expect("tree");
        restorer::restore(&f.repo, &index, &root, &root_path, &RestoreOptions::new(target.clone()), &NoProgress)
            .expect("restore");
        let restored = target.join(src.strip_prefix("/").expect("absolute")).join(format!("f{i}"));
        assert_eq!(std::fs::read(restored).expect("read"), format!("version {i} of a file").repeat(50).into_bytes());
    }
    // One file left: nothing to merge.
    let again = consolidate::consolidate(&f.repo, &ConsolidateOptions::default()).expect("again");
    assert_eq!((again.files_merged, again.files_after), (0, 1));
}

#[test]
fn a_crash_between_writing_and_deleting_leaves_duplicates_that_check_and_fold() {
    let f = fixture();
    let src = f.dir.path().join("src");
    std::fs::create_dir_all(&src).expect("src");
    for i in 0..5 {
        std::fs::write(src.join(format!("f{i}")), format!("content {i}")).expect("write");
        archiver::backup(&f.repo, BackupOptions::paths(vec![src.clone()]), &NoProgress).expect("backup");
    }
    // What consolidation writes before it deletes: every pack listed a second time.
    let ids = f.repo.index_ids().expect("ids");
    let packs: Vec<_> =
        f.repo.load_index_files_by_id(&ids).into_iter().flat_map(|file| file.expect("load").packs).collect();
    let n_packs = packs.len();
    consolidate::save_split(&f.repo, packs).expect("write merged");
    assert_eq!(index_count(&f), ids.len() + 1);
    assert_checks(&f);
    let r = consolidate::consolidate(&f.repo, &ConsolidateOptions::default()).expect("consolidate");
    assert_eq!((r.files_after, r.packs), (1, n_packs), "duplicates folded");
    assert_checks(&f);
}

#[test]
fn merged_files_are_split_at_the_blob_limit() {
    let f = fixture();
    let entry = |i: usize| PackEntry {
        kind: BlobKind::Data,
        id: Id(*blake3::hash(&i.to_le_bytes()).as_bytes()),
        offset: 0,
        length: 1,
        raw_len: 1,
    };
    let big = (Id([1; 32]), (0..MAX_BLOBS_PER_FILE - 1).map(entry).collect::<Vec<_>>());
    let small = (Id([2; 32]), vec![entry(MAX_BLOBS_PER_FILE), entry(MAX_BLOBS_PER_FILE + 1)]);
    assert_eq!(consolidate::save_split(&f.repo, vec![big, small]).expect("save"), 2, "a pack's entries stay together");
    let files: Vec<IndexFile> = f
        .repo
        .load_index_files_by_id(&f.repo.index_ids().expect("ids"))
        .into_iter()
        .map(|r| r.expect("load"))
        .collect();
    let mut counts: Vec<usize> = files.iter().map(IndexFile::blob_count).collect();
    counts.sort_unstable();
    assert_eq!(counts, vec![2, MAX_BLOBS_PER_FILE - 1]);
}
