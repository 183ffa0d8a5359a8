//! Image versions in the engine: uploads stream into versions whose raw bytes (and any byte
//! range) come back identical; an empty disk is stored without reading zeros and equals a
//! stream of zeros; a machine's delta (its manifest plus the chunks the parent lacks) makes
//! the same version as a whole upload; a truncated or lying upload stores nothing; the
//! manifest-driven flash fetches only runs of differing chunks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;

use bams_store::image::{self, Manifest, VersionMeta};

fn meta(parent: Option<bams_store::Id>) -> VersionMeta {
    VersionMeta { host: "img".into(), tags: vec![], parent }
}

fn raw(f: &common::Fixture, snapshot: &bams_store::Id, start: u64, end: u64) -> Vec<u8> {
    let index = f.repo.load_index().unwrap();
    let opened = image::open(&f.repo, &index, &snapshot.to_hex()).unwrap();
    let mut out = Vec::new();
    opened.write_range(&f.repo, &index, None, start, end, &mut out).unwrap();
    out
}

#[test]
fn versions_round_trip_whole_and_by_range() {
    let f = common::fixture();
    let v1 = bams_testkit::random_bytes(3 << 20, 1);
    let s = image::store_stream(&f.repo, &mut &v1[..], meta(None), &|_| {}).unwrap();
    assert_eq!(s.size, v1.len() as u64);
    assert_eq!(raw(&f, &s.id, 0, u64::MAX), v1);
    for (a, b) in [(0u64, 1u64), (12_345, 400_000), (1 << 20, (1 << 20) + 7), ((3 << 20) - 5, 3 << 20)] {
        assert_eq!(raw(&f, &s.id, a, b), v1[a as usize..b as usize], "{a}..{b}");
    }
    assert!(raw(&f, &s.id, 3 << 20, 4 << 20).is_empty());
    let report = bams_store::check::check(&f.repo, bams_store::check::ReadData::All, &|| {}).unwrap();
    assert!(report.ok(), "{:?}", report.problems);
}

#[test]
fn an_empty_disk_equals_a_stream_of_zeros() {
    let f = common::fixture();
    for size in [512u64, 100_000, 131_072, 262_144 + 4096, 6 << 20, (6 << 20) + 512] {
        let fast = image::store_zeros(&f.repo, size, meta(None)).unwrap();
        let slow = image::store_stream(&f.repo, &mut std::io::repeat(0).take(size), meta(None), &|_| {}).unwrap();
        let index = f.repo.load_index().unwrap();
        let a = image::open(&f.repo, &index, &fast.id.to_hex()).unwrap();
        let b = image::open(&f.repo, &index, &slow.id.to_hex()).unwrap();
        assert_eq!(a.manifest, b.manifest, "size {size}");
        assert_eq!(a.size(), size);
        assert_eq!(raw(&f, &fast.id, 0, size), vec![0u8; size as usize]);
    }
}

#[test]
fn a_delta_makes_the_same_version_and_lies_store_nothing() {
    let f = common::fixture();
    let c = f.repo.config().image_chunker;
    let v1 = bams_testkit::random_bytes(4 << 20, 2);
    let s1 = image::store_stream(&f.repo, &mut &v1[..], meta(None), &|_| {}).unwrap();
    let mut v2 = v1.clone();
    v2[(1 << 20)..(1 << 20) + 300_000].copy_from_slice(&bams_testkit::random_bytes(300_000, 3));
    let index = f.repo.load_index().unwrap();
    let known = image::open(&f.repo, &index, &s1.id.to_hex()).unwrap().known();
    let m2 = image::manifest_of(&mut &v2[..], c).unwrap();
    let needed = image::needed(&m2, &known);
    let places: Vec<(u64, u32)> = m2.places().map(|(o, l, _)| (o, l)).collect();
    let body: Vec<u8> = needed
        .iter()
        .flat_map(|&i| v2[places[i].0 as usize..(places[i].0 + u64::from(places[i].1)) as usize].to_vec())
        .collect();
    assert!(body.len() < 500_000, "only the changed region travels: {}", body.len());
    let snapshots_before = f.repo.snapshots().unwrap().0.len();
    // Lies: a chunk that does not match its hash, a body cut short, a body too long.
    let mut wrong = body.clone();
    wrong[10] ^= 1;
    for bad in [wrong, body[..body.len() - 1].to_vec(), [body.clone(), vec![0]].concat()] {
        assert!(image::store_delta(&f.repo, &m2, &known, &mut &bad[..], meta(Some(s1.id))).is_err());
    }
    assert_eq!(f.repo.snapshots().unwrap().0.len(), snapshots_before, "nothing stored");
    let s2 = image::store_delta(&f.repo, &m2, &known, &mut &body[..], meta(Some(s1.id))).unwrap();
    assert_eq!(raw(&f, &s2.id, 0, u64::MAX), v2);
    assert!(s2.bytes_added < 600_000, "{}", s2.bytes_added);
    // A manifest naming no chunks the parent has, and a huge chunk length, are refused.
    let huge = Manifest { chunks: vec![(u32::MAX, [0; 32])] };
    assert!(Manifest::decode(&huge.encode(), c.max_size).is_err());
    assert!(Manifest::decode(b"BAMSIMG1\xff\xff\xff\xff\xff\xff\xff\x7f", c.max_size).is_err());
}

#[test]
fn a_truncated_stream_stores_no_version() {
    struct Failing(usize);
    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"));
            }
            let n = buf.len().min(self.0);
            buf[..n].fill(7);
            self.0 -= n;
            Ok(n)
        }
    }
    let f = common::fixture();
    assert!(image::store_stream(&f.repo, &mut Failing(5 << 20), meta(None), &|_| {}).is_err());
    assert!(f.repo.snapshots().unwrap().0.is_empty());
}

#[test]
fn the_manifest_flash_fetches_runs_of_differing_chunks() {
    let f = common::fixture();
    let v1 = bams_testkit::random_bytes(8 << 20, 4);
    let mut v2 = v1.clone();
    v2[(2 << 20)..(2 << 20) + (1 << 20)].copy_from_slice(&bams_testkit::random_bytes(1 << 20, 5));
    // And scattered small edits, as files changing all over a filesystem: many runs.
    for i in 0..40usize {
        let at = (4 << 20) + i * 97_000;
        v2[at..at + 100].copy_from_slice(&bams_testkit::random_bytes(100, 100 + i as u64));
    }
    let s2 = image::store_stream(&f.repo, &mut &v2[..], meta(None), &|_| {}).unwrap();
    let index = f.repo.load_index().unwrap();
    let opened = image::open(&f.repo, &index, &s2.id.to_hex()).unwrap();
    // v2's chunks whose bytes v1 does not hold at the same place.
    let differing: u64 = opened
        .manifest
        .places()
        .filter(|(o, l, h)| blake3::hash(&v1[*o as usize..(*o + u64::from(*l)) as usize]).as_bytes() != *h)
        .map(|(_, l, _)| u64::from(l))
        .sum();
    let disk_path = f.dir.path().join("disk.img");
    // A small cache: it must serve right while evicting.
    let cache = image::BlobCache::new(200_000);
    for (start, expect) in [(v1.clone(), Some(differing)), (vec![0u8; 100], None)] {
        std::fs::write(&disk_path, &start).unwrap();
        let disk = std::fs::OpenOptions::new().read(true).write(true).open(&disk_path).unwrap();
        let mut requests = 0;
        let mut fetch = |ranges: &[(u64, u64)], sink: &mut dyn FnMut(&[u8]) -> bams_store::Result<()>| {
            requests += 1;
            let mut buf = Vec::new();
            opened.write_ranges(&f.repo, &index, Some(&cache), ranges, &mut buf)?;
            for piece in buf.chunks(10_000) {
                sink(piece)?;
            }
            Ok(())
        };
        let r = bams_store::flash::flash_manifest(&opened.manifest, &disk, &mut fetch, &|_| {}).unwrap();
        assert!(std::fs::read(&disk_path).unwrap() == v2, "the disk is v2");
        match expect {
            Some(d) => {
                assert_eq!(r.bytes_fetched, d, "exactly the chunks that differ at their place");
                assert!(d < 4 << 20, "1 MiB and 40 small edits touch a few chunks each: {d}");
                assert_eq!(requests, 1, "every run of changed chunks in one request");
            }
            None => assert_eq!(r.bytes_fetched, v2.len() as u64, "unrelated data: every chunk"),
        }
    }
    assert!(opened.write_ranges(&f.repo, &index, None, &[(0, 10), (5, 5)], &mut Vec::new()).is_err());
    assert!(opened.write_ranges(&f.repo, &index, None, &[(0, (8 << 20) + 1)], &mut Vec::new()).is_err());
}

/// The file node backed up at `path` in `snapshot`.
fn node_at(
    f: &common::Fixture,
    snapshot: &bams_store::snapshot::Snapshot,
    path: &std::path::Path,
) -> bams_store::tree::Node {
    let index = f.repo.load_index().unwrap();
    match bams_store::browse::lookup(&f.repo, &index, &snapshot.tree, &path.display().to_string()).unwrap() {
        bams_store::browse::Lookup::Node(n) => *n,
        bams_store::browse::Lookup::Root(_) => panic!("a file"),
    }
}

/// Restore `snapshot` whole into a fresh directory and read back the file backed up at `path`.
fn restored_file(f: &common::Fixture, snapshot: &bams_store::snapshot::Snapshot, path: &std::path::Path) -> Vec<u8> {
    let index = f.repo.load_index().unwrap();
    let target = f.dir.path().join(format!("restored-{}", bams_store::Id::random().short()));
    let opts = bams_store::restorer::RestoreOptions::new(&target);
    let (root, root_path) = bams_store::restorer::resolve_subtree(&f.repo, &index, &snapshot.tree, None).unwrap();
    let r = bams_store::restorer::restore(&f.repo, &index, &root, &root_path, &opts, &bams_store::archiver::NoProgress)
        .unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    std::fs::read(target.join(path.strip_prefix("/").unwrap())).unwrap()
}

fn backup(f: &common::Fixture, path: &std::path::Path, image: bool) -> bams_store::archiver::BackupResult {
    let mut opts = bams_store::archiver::BackupOptions::paths(vec![path.to_owned()]);
    opts.image = image;
    bams_store::archiver::backup(&f.repo, opts, &bams_store::archiver::NoProgress).unwrap()
}

/// An image file's holes are skipped, not read, yet it is cut into exactly the chunks of the
/// same bytes read whole: holes at the start, in the middle, at the end, data runs shorter
/// and longer than a chunk, holes shorter than the zero period.
#[test]
fn a_sparse_image_is_cut_as_if_read_whole() {
    use std::os::unix::fs::FileExt;
    let f = common::fixture();
    let path = f.dir.path().join("sparse.img");
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(40 << 20).unwrap();
    for (at, len, seed) in [
        (1 << 20, 10_000usize, 1u64),
        (5 << 20, 300_000, 2),
        ((5 << 20) + 300_000 + 50_000, 3, 3),
        (12 << 20, 4 << 20, 4),
        ((20 << 20) + 4096, 200_000, 5),
        ((40 << 20) - 5000, 5000, 6),
    ] {
        file.write_all_at(&bams_testkit::random_bytes(len, seed), at).unwrap();
    }
    drop(file);
    // The same bytes with every zero written: nothing for the hole-skipping path to skip.
    let dense = f.dir.path().join("dense.img");
    std::fs::write(&dense, std::fs::read(&path).unwrap()).unwrap();
    let sparse_node = node_at(&f, &backup(&f, &path, true).snapshot, &path);
    let dense_node = node_at(&f, &backup(&f, &dense, true).snapshot, &dense);
    assert_eq!(sparse_node.size, 40 << 20);
    assert_eq!(sparse_node.content, dense_node.content, "the same chunks as reading every byte");
}

/// A disk image holding a copy of a file already backed up shares that file's blobs (as far
/// as content-defined cuts line up: all but the file's first few chunks and its last), restores
/// byte for byte, and its next version with a small change adds only a few small chunks.
#[test]
fn an_image_shares_blobs_with_the_files_it_holds() {
    let f = common::fixture();
    let src = f.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let big = bams_testkit::random_bytes(12 << 20, 7);
    std::fs::write(src.join("big.bin"), &big).unwrap();
    let file_node = node_at(&f, &backup(&f, &src, false).snapshot, &src.join("big.bin"));
    assert!(file_node.content.len() >= 4, "a file of several chunks: {}", file_node.content.len());

    let mut disk = bams_testkit::random_bytes(1 << 20, 8);
    disk.extend_from_slice(&big);
    disk.extend_from_slice(&bams_testkit::random_bytes(1 << 20, 9));
    disk.extend(std::iter::repeat_n(0u8, 3 << 20));
    let img = f.dir.path().join("disk.img");
    std::fs::write(&img, &disk).unwrap();
    let v1 = backup(&f, &img, true);
    let image_node = node_at(&f, &v1.snapshot, &img);
    let shared = file_node.content.iter().filter(|id| image_node.content.contains(id)).count();
    // Cuts line up again within a chunk or two of where the copy starts, and up to its end.
    assert!(shared + 3 >= file_node.content.len(), "{shared} of {} file chunks shared", file_node.content.len());
    assert!(
        v1.snapshot.summary.data_added < 4 << 20,
        "the file's copy not stored again: {}",
        v1.snapshot.summary.data_added
    );

    assert!(restored_file(&f, &v1.snapshot, &img) == disk, "the image restores byte for byte");

    // v2: 100 bytes change outside the file's copy.
    disk[(512 << 10)..(512 << 10) + 100].fill(0xA5);
    std::fs::write(&img, &disk).unwrap();
    let v2 = backup(&f, &img, true);
    let added = v2.snapshot.summary.data_added;
    assert!(added > 0 && added < 256 << 10, "a small change adds small chunks, not a file-sized one: {added}");
}

/// Lay `files` out as a filesystem would in a disk image: each from a 4 KiB boundary, its last
/// block padded with zeros, with metadata-like blocks between some of them.
fn filesystem_image(files: &[Vec<u8>]) -> Vec<u8> {
    let block = bams_store::heads::BLOCK;
    let mut disk = bams_testkit::random_bytes(block, 100);
    for (i, data) in files.iter().enumerate() {
        if i % 7 == 0 {
            disk.extend_from_slice(&bams_testkit::random_bytes(block, 200 + i as u64));
        }
        disk.extend_from_slice(data);
        disk.resize(disk.len().next_multiple_of(block), 0);
    }
    disk.extend_from_slice(&bams_testkit::random_bytes(3 * block, 300));
    disk
}

/// Files backed up as files are found inside a disk image that holds them (small files
/// included, which no content-defined cut can line up with) and not stored again; the image
/// restores byte for byte. Consolidation merges the heads objects, and prune drops the heads of
/// files no snapshot keeps.
#[test]
fn an_image_shares_the_small_files_it_holds() {
    use bams_store::consolidate::{consolidate, ConsolidateOptions};
    use bams_store::heads;
    let f = common::fixture();
    let src = f.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    // 1 KiB .. 200 KiB: below the file chunker's 256 KiB minimum, so each is one blob. Files
    // come in pairs from one seed, so each begins like its neighbour: the longer match must win.
    let files: Vec<Vec<u8>> = (0..120u64)
        .map(|i| bams_testkit::random_bytes(1024 + ((i * 7919) % 200) as usize * 1024, 1000 + i / 2 * 2))
        .collect();
    for (i, data) in files.iter().enumerate() {
        std::fs::write(src.join(format!("f{i:03}")), data).unwrap();
    }
    std::fs::write(src.join("tiny"), b"too small to be looked for").unwrap();
    backup(&f, &src, false);
    let file_bytes: u64 = files.iter().map(|d| d.len() as u64).sum();

    let disk = filesystem_image(&files);
    let img = f.dir.path().join("disk.img");
    std::fs::write(&img, &disk).unwrap();
    let v1 = backup(&f, &img, true);
    let summary = &v1.snapshot.summary;
    // A file is missed only where the file chunker's cut of the image falls inside it.
    assert!(summary.image_bytes_shared * 10 >= file_bytes * 8, "{} of {file_bytes} shared", summary.image_bytes_shared);
    assert!(
        summary.data_added <= disk.len() as u64 - summary.image_bytes_shared,
        "shared bytes are not stored: {} added",
        summary.data_added
    );
    assert!(restored_file(&f, &v1.snapshot, &img) == disk, "the image restores byte for byte");

    // Without the heads, the same image shares nothing of the small files.
    let g = common::fixture();
    let bare = g.dir.path().join("disk.img");
    std::fs::write(&bare, &disk).unwrap();
    let mut opts = bams_store::archiver::BackupOptions::paths(vec![bare.clone()]);
    opts.image = true;
    let alone = bams_store::archiver::backup(&g.repo, opts, &bams_store::archiver::NoProgress).unwrap();
    assert_eq!(alone.snapshot.summary.image_bytes_shared, 0);

    // A second tree backup with new files adds a second heads object; consolidation merges.
    let more = f.dir.path().join("more");
    std::fs::create_dir_all(&more).unwrap();
    std::fs::write(more.join("new"), bams_testkit::random_bytes(5000, 77)).unwrap();
    let second = backup(&f, &more, false);
    assert_eq!(heads::ids(&f.repo).unwrap().len(), 2);
    let r = consolidate(&f.repo, &ConsolidateOptions::default()).unwrap();
    assert_eq!((r.heads_merged, r.heads_written), (2, 1), "{r:?}");
    let records = || heads::load_all(&f.repo).unwrap().0.len();
    assert_eq!(records(), files.len() + 1);

    // Forget the second snapshot and prune: its file's head goes, the others stay.
    f.repo.delete_snapshot(&second.id).unwrap();
    let prune = bams_store::prune::PruneOptions { grace: std::time::Duration::ZERO, ..Default::default() };
    bams_store::prune::prune(&f.repo, &prune).unwrap();
    assert_eq!(records(), files.len());
    let check = bams_store::check::check(&f.repo, bams_store::check::ReadData::None, &|| {}).unwrap();
    assert!(check.ok(), "{:?}", check.problems);
}
