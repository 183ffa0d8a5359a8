//! Delta flash (the bare-metal image service's core, without a VM): a disk holding version 1
//! of an image gets version 2 by fetching only the chunks that differ at their place; a disk
//! holding unrelated data gets every chunk; the result is byte-identical either way.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;

use bams_store::id::Id;
use bams_store::image::{self, OpenedImage, VersionMeta};
use bams_store::index::MasterIndex;

/// Store `bytes` as an image version and open it.
fn version(f: &common::Fixture, bytes: &[u8]) -> OpenedImage {
    let meta = VersionMeta { host: "img".into(), tags: vec![], parent: None };
    let s = image::store_stream(&f.repo, &mut &bytes[..], meta, &|_| {}).unwrap();
    image::open(&f.repo, &f.repo.load_index().unwrap(), &s.id.to_hex()).unwrap()
}

/// Flash `v` onto `disk`, fetching from the repository; the report and the progress total.
fn flash(
    f: &common::Fixture,
    index: &MasterIndex,
    v: &OpenedImage,
    disk: &std::fs::File,
) -> (bams_store::flash::FlashReport, u64) {
    let done = std::sync::atomic::AtomicU64::new(0);
    let mut fetch = |ranges: &[(u64, u64)], sink: &mut dyn FnMut(&[u8]) -> bams_store::Result<()>| {
        let mut buf = Vec::new();
        v.write_ranges(&f.repo, index, None, ranges, &mut buf)?;
        sink(&buf)
    };
    let r = bams_store::flash::flash_manifest(&v.manifest, disk, &mut fetch, &|n| {
        done.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    })
    .unwrap();
    (r, done.into_inner())
}

fn open(path: &std::path::Path) -> std::fs::File {
    std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap()
}

#[test]
fn a_disk_with_the_old_version_fetches_only_changed_chunks_and_ends_identical() {
    let f = common::fixture();
    let v1 = bams_testkit::random_bytes(16 << 20, 7);
    let o1 = version(&f, &v1);
    // Version 2: a few scattered in-place changes, as a filesystem makes them.
    let mut v2 = v1.clone();
    for at in [1 << 20, 5 << 20, 9 << 20, 9 << 20 | 4096, 15 << 20] {
        v2[at..at + 64].copy_from_slice(&bams_testkit::random_bytes(64, at as u64));
    }
    let o2 = version(&f, &v2);
    let index = f.repo.load_index().unwrap();
    let l1: HashSet<(Id, u64)> = o1.layout.iter().map(|(id, off, _)| (*id, *off)).collect();
    let changed: u64 = o2.layout.iter().filter(|(id, off, _)| !l1.contains(&(*id, *off))).map(|(_, _, len)| len).sum();
    // Five 64-byte changes touch a few 32 KiB-average chunks each, not the image.
    assert!(changed > 0 && changed < (v2.len() as u64) / 16, "a few chunks changed: {changed} bytes");

    // The disk holds v1: only the changed chunks travel.
    let disk_path = f.dir.path().join("target.img");
    std::fs::write(&disk_path, &v1).unwrap();
    let disk = open(&disk_path);
    let (r, done) = flash(&f, &index, &o2, &disk);
    assert_eq!(std::fs::read(&disk_path).unwrap(), v2, "the disk is version 2");
    assert_eq!(r.bytes_fetched, changed, "fetched exactly the chunks that differ at their place");
    assert!(r.bytes_fetched * 16 <= r.bytes_total, "{r:?}");
    assert_eq!(done, r.bytes_total);

    // Flashing again fetches nothing.
    let (again, _) = flash(&f, &index, &o2, &disk);
    assert_eq!((again.bytes_fetched, again.bytes_written), (0, 0));

    // Unrelated data, and an empty file: every chunk, and the same bytes in the end.
    std::fs::write(&disk_path, bams_testkit::random_bytes(16 << 20, 99)).unwrap();
    let (full, _) = flash(&f, &index, &o2, &open(&disk_path));
    assert_eq!(full.bytes_fetched, full.bytes_total);
    assert_eq!(std::fs::read(&disk_path).unwrap(), v2);
    let empty_path = f.dir.path().join("empty.img");
    drop(std::fs::File::create_new(&empty_path).unwrap());
    flash(&f, &index, &o2, &open(&empty_path));
    assert_eq!(std::fs::read(&empty_path).unwrap(), v2, "a short file grows to the image");

    // A chunk the index does not know is a clear error, before anything is written.
    let err = bams_store::flash::layout(&index, &[Id([7; 32])]).unwrap_err();
    assert!(err.to_string().contains("not indexed"), "{err}");
}
