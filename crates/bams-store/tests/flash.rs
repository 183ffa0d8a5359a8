//! Delta flash (the bare-metal image service's core, without a VM): a disk holding version 1
//! of an image gets version 2 by fetching only the chunks that differ at their place; a disk
//! holding unrelated data gets every chunk; the result is byte-identical either way.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;

use bams_store::archiver::{self, BackupOptions, NoProgress};
use bams_store::browse::{self, Lookup};
use bams_store::id::Id;

/// Back up `path` as a disk image (the image chunker, as for a block device) and return the
/// chunk list of the file there.
fn content_of(f: &common::Fixture, path: &std::path::Path) -> Vec<Id> {
    let mut opts = BackupOptions::paths(vec![path.to_path_buf()]);
    opts.image = true;
    let r = archiver::backup(&f.repo, opts, &NoProgress).unwrap();
    let index = f.repo.load_index().unwrap();
    match browse::lookup(&f.repo, &index, &r.snapshot.tree, &path.display().to_string()).unwrap() {
        Lookup::Node(n) => n.content,
        Lookup::Root(_) => panic!("a file"),
    }
}

#[test]
fn a_disk_with_the_old_version_fetches_only_changed_chunks_and_ends_identical() {
    let f = common::fixture();
    let img = f.dir.path().join("disk.img");
    let v1 = bams_testkit::random_bytes(16 << 20, 7);
    std::fs::write(&img, &v1).unwrap();
    let c1 = content_of(&f, &img);
    // Version 2: a few scattered in-place changes, as a filesystem makes them.
    let mut v2 = v1.clone();
    for at in [1 << 20, 5 << 20, 9 << 20, 9 << 20 | 4096, 15 << 20] {
        v2[at..at + 64].copy_from_slice(&bams_testkit::random_bytes(64, at as u64));
    }
    std::fs::write(&img, &v2).unwrap();
    let c2 = content_of(&f, &img);
    let index = f.repo.load_index().unwrap();
    let l1: HashSet<(Id, u64)> =
        bams_store::flash::layout(&index, &c1).unwrap().into_iter().map(|(id, off, _)| (id, off)).collect();
    let l2 = bams_store::flash::layout(&index, &c2).unwrap();
    let changed: u64 = l2.iter().filter(|(id, off, _)| !l1.contains(&(*id, *off))).map(|(_, _, len)| len).sum();
    // Five 64-byte changes touch a few 32 KiB-average chunks each, not the image.
    assert!(changed > 0 && changed < (v2.len() as u64) / 16, "a few chunks changed: {changed} bytes");

    // The disk holds v1: only the changed chunks travel.
    let disk_path = f.dir.path().join("target.img");
    std::fs::write(&disk_path, &v1).unwrap();
    let disk = std::fs::OpenOptions::new().read(true).write(true).open(&disk_path).unwrap();
    let done = std::sync::atomic::AtomicU64::new(0);
    let r = bams_store::flash::flash(&f.repo, &index, &c2, &disk, &|n| {
        done.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    })
    .unwrap();
    assert_eq!(std::fs::read(&disk_path).unwrap(), v2, "the disk is version 2");
    assert_eq!(r.bytes_fetched, changed, "fetched exactly the chunks that differ at their place");
    assert!(r.bytes_fetched * 16 <= r.bytes_total, "{r:?}");
    assert_eq!(done.into_inner(), r.bytes_total);

    // Flashing again fetches nothing.
    let again = bams_store::flash::flash(&f.repo, &index, &c2, &disk, &|_| {}).unwrap();
    assert_eq!((again.bytes_fetched, again.bytes_written), (0, 0));

    // Unrelated data, and an empty file: every chunk, and the same bytes in the end.
    std::fs::write(&disk_path, bams_testkit::random_bytes(16 << 20, 99)).unwrap();
    let disk = std::fs::OpenOptions::new().read(true).write(true).open(&disk_path).unwrap();
    let full = bams_store::flash::flash(&f.repo, &index, &c2, &disk, &|_| {}).unwrap();
    assert_eq!(full.bytes_fetched, full.bytes_total);
    assert_eq!(std::fs::read(&disk_path).unwrap(), v2);
    let empty_path = f.dir.path().join("empty.img");
    let empty = std::fs::File::create_new(&empty_path).unwrap();
    drop(empty);
    let empty = std::fs::OpenOptions::new().read(true).write(true).open(&empty_path).unwrap();
    bams_store::flash::flash(&f.repo, &index, &c2, &empty, &|_| {}).unwrap();
    assert_eq!(std::fs::read(&empty_path).unwrap(), v2, "a short file grows to the image");

    // A chunk the index does not know is a clear error, before anything is written.
    let err = bams_store::flash::flash(&f.repo, &index, &[Id([7; 32])], &disk, &|_| {}).unwrap_err();
    assert!(err.to_string().contains("not indexed"), "{err}");
}
