//! A snapshot's folder as a tar stream (what the web UI downloads), and the name search
//! across snapshots.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;

use bams_store::archiver::{self, BackupOptions, NoProgress};
use bams_store::browse::{self, Lookup};

#[test]
fn a_folder_exports_as_tar_with_its_files_links_and_modes_and_names_are_found_across_snapshots() {
    let f = common::fixture();
    let src = f.dir.path().join("src");
    std::fs::create_dir_all(src.join("docs/deep")).unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    std::fs::write(src.join("docs/big.bin"), &big).unwrap();
    std::fs::write(src.join("docs/deep/Report-2026.txt"), "numbers\n").unwrap();
    std::os::unix::fs::symlink("deep/Report-2026.txt", src.join("docs/latest")).unwrap();
    std::fs::set_permissions(src.join("docs/big.bin"), std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    let first = archiver::backup(&f.repo, BackupOptions::paths(vec![src.clone()]), &NoProgress).unwrap();
    std::fs::write(src.join("docs/report-2027.txt"), "more\n").unwrap();
    let second = archiver::backup(&f.repo, BackupOptions::paths(vec![src.clone()]), &NoProgress).unwrap();

    let index = f.repo.load_index().unwrap();
    let snap = f.repo.find_snapshot(&second.id.to_hex()).unwrap();
    let docs = format!("{}/docs", src.display());
    let Lookup::Node(node) = browse::lookup(&f.repo, &index, &snap.snapshot.tree, &docs).unwrap() else {
        panic!("docs is a node")
    };
    let tar_bytes = bams_store::export::write_tar(&f.repo, &index, &node.subtree.unwrap(), &docs, Vec::new()).unwrap();
    let mut archive = tar::Archive::new(&tar_bytes[..]);
    let mut seen = Vec::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().display().to_string();
        match path.as_str() {
            "docs/big.bin" => {
                assert_eq!(e.header().mode().unwrap(), 0o640);
                let mut content = Vec::new();
                e.read_to_end(&mut content).unwrap();
                assert!(content == big, "big.bin differs after the round trip");
            }
            "docs/latest" => assert_eq!(e.link_name().unwrap().unwrap().display().to_string(), "deep/Report-2026.txt"),
            "docs/deep/Report-2026.txt" => {
                let mut s = String::new();
                e.read_to_string(&mut s).unwrap();
                assert_eq!(s, "numbers\n");
            }
            _ => {}
        }
        seen.push(path);
    }
    seen.sort();
    assert_eq!(seen, ["docs/big.bin", "docs/deep", "docs/deep/Report-2026.txt", "docs/latest", "docs/report-2027.txt"]);

    // Newest first, case-insensitive; a tree shared by both snapshots is read once (the root
    // of an unchanged backup), so searching the same snapshot twice finds nothing more.
    let first_tree = f.repo.find_snapshot(&first.id.to_hex()).unwrap().snapshot.tree;
    let snaps = [(second.id, snap.snapshot.tree), (first.id, first_tree)];
    let hits = browse::search(&f.repo, &index, &snaps, "REPORT", 100).unwrap();
    assert!(hits[..2].iter().all(|h| h.snapshot == second.id), "the newest snapshot is searched first");
    let mut names: Vec<String> = hits.iter().map(|h| h.path.rsplit('/').next().unwrap().to_string()).collect();
    names.dedup();
    names.sort();
    names.dedup();
    assert_eq!(names, ["Report-2026.txt", "report-2027.txt"]);
    let twice = [(second.id, snap.snapshot.tree), (second.id, snap.snapshot.tree)];
    assert_eq!(browse::search(&f.repo, &index, &twice, "report", 100).unwrap().len(), 2);
    assert_eq!(browse::search(&f.repo, &index, &snaps, "report", 1).unwrap().len(), 1, "stops at the limit");
    assert!(browse::search(&f.repo, &index, &snaps, "nothing-like-it", 10).unwrap().is_empty());
}
