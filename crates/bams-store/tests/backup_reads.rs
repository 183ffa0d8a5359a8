//! How a backup reads files: extended attributes of regular files come through the open file
//! (first backup) or from the parent snapshot (unchanged files), and a changed attribute is
//! seen again because setting it changes the file's ctime.

use std::path::Path;

use bams_store::archiver::{self, BackupOptions, NoProgress};
use bams_store::browse::{self, Lookup};
use bams_store::repo::Repository;

mod common;
use common::fixture;

/// The attributes stored for `path` (absolute, as backed up) in snapshot `snap`.
fn stored_xattrs(repo: &Repository, snap: &str, path: &Path) -> Vec<(String, String)> {
    let index = repo.load_index().expect("index");
    let entry = repo.find_snapshot(snap).expect("snapshot");
    let Lookup::Node(node) =
        browse::lookup(repo, &index, &entry.snapshot.tree, &path.display().to_string()).expect("lookup")
    else {
        panic!("{} is the root", path.display())
    };
    node.xattrs.iter().map(|x| (String::from_utf8_lossy(&x.name.0).into_owned(), x.value.clone())).collect()
}

fn backup(repo: &Repository, src: &Path) -> String {
    archiver::backup(repo, BackupOptions::paths(vec![src.to_path_buf()]), &NoProgress).expect("backup").id.to_hex()
}

#[test]
fn extended_attributes_of_files_are_read_and_followed_across_backups() {
    let f = fixture();
    let src = f.dir.path().join("src");
    std::fs::create_dir_all(src.join("dir")).expect("mkdir");
    let big = vec![7u8; 600 << 10]; // above the chunker's minimum: read as a stream
    for (name, body) in [("small", b"small file".as_slice()), ("empty", b"".as_slice()), ("big", &big)] {
        std::fs::write(src.join(name), body).expect("write");
    }
    std::fs::hard_link(src.join("small"), src.join("dir/linked")).expect("hard link");
    if let Err(e) = xattr::set(src.join("small"), "user.origin", b"one") {
        // tmpfs before 6.6 and some container overlays refuse user attributes.
        assert!(std::env::var_os("CI").is_none(), "this filesystem takes no user xattrs ({e})");
        eprintln!("no user xattrs here ({e}): nothing to test");
        return;
    }
    xattr::set(src.join("empty"), "user.empty", b"").expect("set");
    xattr::set(src.join("big"), "user.big", b"\x00\xff").expect("set");
    xattr::set(src.join("dir"), "user.dir", b"d").expect("set");
    let want = |name: &str, value: &[u8]| vec![(name.to_owned(), hex::encode(value))];

    let first = backup(&f.repo, &src);
    assert_eq!(stored_xattrs(&f.repo, &first, &src.join("small")), want("user.origin", b"one"));
    assert_eq!(stored_xattrs(&f.repo, &first, &src.join("dir/linked")), want("user.origin", b"one"));
    assert_eq!(stored_xattrs(&f.repo, &first, &src.join("empty")), want("user.empty", b""));
    assert_eq!(stored_xattrs(&f.repo, &first, &src.join("big")), want("user.big", b"\x00\xff"));
    assert_eq!(stored_xattrs(&f.repo, &first, &src.join("dir")), want("user.dir", b"d"));

    // Unchanged: the parent's attributes.
    let second = backup(&f.repo, &src);
    assert_eq!(stored_xattrs(&f.repo, &second, &src.join("small")), want("user.origin", b"one"));
    assert_eq!(stored_xattrs(&f.repo, &second, &src.join("big")), want("user.big", b"\x00\xff"));

    // An attribute changed, another removed, content untouched: seen by the next backup.
    xattr::set(src.join("big"), "user.big", b"two").expect("set");
    xattr::remove(src.join("empty"), "user.empty").expect("remove");
    let third = backup(&f.repo, &src);
    assert_eq!(stored_xattrs(&f.repo, &third, &src.join("big")), want("user.big", b"two"));
    assert_eq!(stored_xattrs(&f.repo, &third, &src.join("empty")), vec![]);
    assert_eq!(stored_xattrs(&f.repo, &third, &src.join("small")), want("user.origin", b"one"));
}
