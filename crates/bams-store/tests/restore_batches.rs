//! A restore of many files plans and writes them in batches (bounded memory): whatever the
//! batch size, the restored tree is the same, hard links stay linked across batches, every
//! file is counted once and verifies.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use bams_store::archiver::{self, BackupOptions, NoProgress};
use bams_store::restorer::{self, RestoreOptions};

mod common;
use common::fixture;

fn tree_of(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).expect("under root").display().to_string();
            let ft = e.file_type().expect("type");
            if ft.is_dir() {
                stack.push(p);
                out.push((rel, b"<dir>".to_vec()));
            } else if ft.is_symlink() {
                out.push((rel, std::fs::read_link(&p).expect("link").display().to_string().into_bytes()));
            } else {
                out.push((rel, std::fs::read(&p).expect("read")));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn batches_of_any_size_restore_the_same_tree() {
    let f = fixture();
    let src = f.dir.path().join("src");
    for d in 0..4 {
        let dir = src.join(format!("d{d}/sub"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        for i in 0..9 {
            std::fs::write(dir.join(format!("f{i}")), format!("dir {d} file {i} ").repeat(i * 40)).expect("write");
        }
    }
    std::fs::hard_link(src.join("d0/sub/f3"), src.join("d3/sub/link-to-d0-f3")).expect("hard link");
    std::os::unix::fs::symlink("../d0/sub/f1", src.join("d1/sub/sym")).expect("symlink");
    // Old times, so that a restore that forgot them (leaving "now") cannot pass.
    let old = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec { tv_sec: 1_000_000_000, tv_nsec: 0 },
        last_modification: rustix::fs::Timespec { tv_sec: 1_000_000_000, tv_nsec: 0 },
    };
    for p in ["d1/sub/f0", "d1/sub/sym", "d2/sub"] {
        rustix::fs::utimensat(rustix::fs::CWD, src.join(p), &old, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
            .expect("set times");
    }
    let snap = archiver::backup(&f.repo, BackupOptions::paths(vec![src.clone()]), &NoProgress).expect("backup");
    let index = f.repo.load_index().expect("index");
    let entry = f.repo.find_snapshot(&snap.id.to_hex()).expect("snapshot");
    let (root, root_path) = restorer::resolve_subtree(&f.repo, &index, &entry.snapshot.tree, None).expect("tree");
    let want = tree_of(&src);
    let want_bytes: u64 =
        (0..4).flat_map(|d| (0..9).map(move |i| format!("dir {d} file {i} ").len() as u64 * i * 40)).sum();
    for batch in [1, 7, restorer::BATCH_FILES] {
        let target = f.dir.path().join(format!("restore-{batch}"));
        let opts = RestoreOptions { verify: true, batch_files: batch, ..RestoreOptions::new(&target) };
        let r = restorer::restore(&f.repo, &index, &root, &root_path, &opts, &NoProgress).expect("restore");
        assert!(r.errors.is_empty(), "batch {batch}: {:?}", r.errors);
        assert_eq!((r.files, r.verified), (36, 36), "batch {batch}: every file once");
        assert_eq!(r.bytes, want_bytes, "batch {batch}: the bytes of every batch counted");
        let restored = target.join(src.strip_prefix("/").expect("absolute"));
        assert_eq!(tree_of(&restored), want, "batch {batch}");
        let ino = |p: &str| std::fs::metadata(restored.join(p)).expect("meta").ino();
        assert_eq!(ino("d0/sub/f3"), ino("d3/sub/link-to-d0-f3"), "batch {batch}: still one inode");
        let mtime = |p: &Path| std::fs::metadata(p).expect("meta").mtime();
        assert_eq!(mtime(&restored.join("d2/sub")), mtime(&src.join("d2/sub")), "batch {batch}: directory times last");
        // Empty files and links get theirs as they are made (no content write follows).
        assert_eq!(mtime(&restored.join("d1/sub/f0")), mtime(&src.join("d1/sub/f0")), "batch {batch}: empty file");
        let link_mtime = |p: &Path| std::fs::symlink_metadata(p).expect("meta").mtime();
        assert_eq!(
            link_mtime(&restored.join("d1/sub/sym")),
            link_mtime(&src.join("d1/sub/sym")),
            "batch {batch}: link"
        );
    }
}
