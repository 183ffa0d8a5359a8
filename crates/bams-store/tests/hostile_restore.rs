//! Restores of crafted or unlucky snapshots into targets that already hold links: nothing may
//! be written, created or changed outside the target. Run as root (CI does), where a write
//! through a link would reach any file of the machine.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use bams_store::archiver::{self, BackupOptions, NoProgress};
use bams_store::id::Id;
use bams_store::pack::BlobKind;
use bams_store::pipeline::{BlobWriter, PipelineOptions};
use bams_store::restorer::{self, RestoreOptions, RestoreResult};
use bams_store::snapshot::{Snapshot, Summary};
use serde_json::{json, Value};

mod common;
use common::{fixture, Fixture};

impl Fixture {
    fn path(&self, p: &str) -> std::path::PathBuf {
        self.dir.path().join(p)
    }

    fn backup(&self, path: &Path) -> Id {
        archiver::backup(&self.repo, BackupOptions::paths(vec![path.to_path_buf()]), &NoProgress).expect("backup").id
    }

    /// Store the given tree plaintexts (children before parents: each may name the ids
    /// returned for earlier ones through `{"subtree": "$N"}`) and a snapshot of the last.
    fn craft(&self, trees: Vec<Value>) -> Id {
        let index = self.repo.load_index().expect("index");
        let root = std::thread::scope(|s| {
            let mut w = BlobWriter::start(s, &self.repo, &index, PipelineOptions::default());
            let mut ids: Vec<Id> = Vec::new();
            for mut tree in trees {
                for node in tree["nodes"].as_array_mut().expect("nodes") {
                    if let Some(r) = node["subtree"].as_str().and_then(|r| r.strip_prefix('$')) {
                        let n: usize = r.parse().expect("tree ref");
                        node["subtree"] = json!(ids[n].to_string());
                    }
                }
                ids.push(w.add(BlobKind::Tree, serde_json::to_vec(&tree).expect("json")).expect("add"));
            }
            w.finish().expect("finish");
            *ids.last().expect("a tree")
        });
        let snap = Snapshot {
            time: chrono::Local::now(),
            host: "crafted".into(),
            username: String::new(),
            paths: vec!["/".into()],
            tags: vec![],
            parent: None,
            tree: root,
            partial: false,
            job: None,
            origin: None,
            program: "test".into(),
            summary: Summary::default(),
        };
        self.repo.save_snapshot(&snap).expect("snapshot")
    }

    fn restore(&self, snap: &Id, target: &Path) -> bams_store::error::Result<RestoreResult> {
        let index = self.repo.load_index().expect("index");
        let entry = self.repo.find_snapshot(&snap.to_string()).expect("snapshot");
        let (root, root_path) = restorer::resolve_subtree(&self.repo, &index, &entry.snapshot.tree, None)?;
        restorer::restore(&self.repo, &index, &root, &root_path, &RestoreOptions::new(target), &NoProgress)
    }
}

fn node(name: &str, kind: &str) -> Value {
    json!({"name": name, "type": kind, "mode": 0o644, "uid": 0, "gid": 0,
           "mtime_ns": 0, "atime_ns": 0, "ctime_ns": 0})
}

fn dir_node(name: &str, subtree: &str) -> Value {
    let mut n = node(name, "dir");
    n["mode"] = json!(0o755);
    n["subtree"] = json!(subtree);
    n
}

fn symlink_node(name: &str, target: &Path) -> Value {
    let mut n = node(name, "symlink");
    n["link_target"] = json!(target.to_str().expect("utf-8"));
    n
}

/// Names of what is in `dir` (empty when missing).
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| r.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// The reproduction from the security review: back up `src` while `src/x` is a symlink to the
/// victim, then while `x` is a directory holding `file`; restore both into one target.
#[test]
fn symlink_then_directory_across_two_snapshots_stays_in_the_target() {
    let f = fixture();
    let victim = f.path("victim");
    std::fs::create_dir(&victim).expect("victim");
    let src = f.path("src");
    std::fs::create_dir(&src).expect("src");
    std::os::unix::fs::symlink(&victim, src.join("x")).expect("symlink");
    let first = f.backup(&src);
    std::fs::remove_file(src.join("x")).expect("rm link");
    std::fs::create_dir(src.join("x")).expect("dir x");
    std::fs::write(src.join("x/file"), b"planted").expect("file");
    let second = f.backup(&src);

    let target = f.path("restore");
    let r1 = f.restore(&first, &target).expect("first restore");
    assert!(r1.errors.is_empty(), "{:?}", r1.errors);
    let inner = target.join(src.strip_prefix("/").expect("absolute"));
    assert!(std::fs::symlink_metadata(inner.join("x")).expect("x").file_type().is_symlink());
    let r2 = f.restore(&second, &target).expect("second restore");
    assert!(r2.errors.is_empty(), "{:?}", r2.errors);
    assert_eq!(entries(&victim), Vec::<String>::new(), "nothing may land in the link's target");
    assert!(std::fs::symlink_metadata(inner.join("x")).expect("x").is_dir(), "the link was replaced by the directory");
    assert_eq!(std::fs::read(inner.join("x/file")).expect("file"), b"planted");
}

/// One crafted tree with the same name twice (a link, then a directory through it) is refused
/// when decoded, before anything is written.
#[test]
fn duplicate_names_in_one_tree_are_refused() {
    let f = fixture();
    let victim = f.path("victim");
    std::fs::create_dir(&victim).expect("victim");
    let mut file = node("file", "file");
    file["size"] = json!(0);
    let snap =
        f.craft(vec![json!({"nodes": [file]}), json!({"nodes": [symlink_node("x", &victim), dir_node("x", "$0")]})]);
    let target = f.path("restore");
    let outcome = f.restore(&snap, &target);
    let message = match outcome {
        Err(e) => e.to_string(),
        Ok(r) => r.errors.join("; "),
    };
    assert!(message.contains("twice or out of order"), "{message}");
    assert_eq!(entries(&victim), Vec::<String>::new());
}

/// Names that are not one plain path component are refused, whatever their kind.
#[test]
fn unsafe_names_are_refused() {
    let f = fixture();
    let victim = f.path("victim");
    std::fs::create_dir(&victim).expect("victim");
    let escape = format!("../../{}", victim.display());
    for name in ["..", ".", "", "a/b", "/etc", escape.as_str(), "nul\u{0}byte"] {
        let mut file = node(name, "file");
        file["size"] = json!(0);
        let snap = f.craft(vec![json!({"nodes": [file]})]);
        let target = f.path("restore");
        let outcome = f.restore(&snap, &target);
        let message = match outcome {
            Err(e) => e.to_string(),
            Ok(r) => r.errors.join("; "),
        };
        assert!(message.contains("unsafe file name"), "{name:?}: {message}");
    }
    assert_eq!(entries(&victim), Vec::<String>::new());
}

/// A target that already holds a symlink or a hard link where a restored file goes: the link
/// is replaced, the file it points to keeps its content, mode and owner.
#[test]
fn existing_links_in_the_target_are_replaced_not_written_through() {
    let f = fixture();
    let victim = f.path("victim");
    std::fs::create_dir(&victim).expect("victim");
    for name in ["by-symlink", "by-hardlink", "dir-link-target"] {
        std::fs::write(victim.join(name), b"original").expect("victim file");
        std::fs::set_permissions(victim.join(name), std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let src = f.path("src");
    std::fs::create_dir_all(src.join("sub")).expect("src");
    std::fs::write(src.join("by-symlink"), b"from backup").expect("a");
    std::fs::write(src.join("by-hardlink"), b"from backup").expect("b");
    std::fs::write(src.join("sub/dir-link-target"), b"from backup").expect("c");
    for p in ["by-symlink", "by-hardlink", "sub/dir-link-target"] {
        std::fs::set_permissions(src.join(p), std::fs::Permissions::from_mode(0o4777)).expect("chmod");
    }
    let snap = f.backup(&src);

    let target = f.path("restore");
    let inner = target.join(src.strip_prefix("/").expect("absolute"));
    std::fs::create_dir_all(&inner).expect("inner");
    std::os::unix::fs::symlink(victim.join("by-symlink"), inner.join("by-symlink")).expect("symlink");
    std::fs::hard_link(victim.join("by-hardlink"), inner.join("by-hardlink")).expect("hard link");
    std::os::unix::fs::symlink(&victim, inner.join("sub")).expect("dir symlink");
    let r = f.restore(&snap, &target).expect("restore");
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    for name in ["by-symlink", "by-hardlink", "dir-link-target"] {
        let p = victim.join(name);
        assert_eq!(std::fs::read(&p).expect("victim"), b"original", "{name}");
        let m = std::fs::metadata(&p).expect("meta");
        assert_eq!(m.mode() & 0o7777, 0o600, "{name}: mode untouched");
    }
    for p in ["by-symlink", "by-hardlink", "sub/dir-link-target"] {
        let m = std::fs::symlink_metadata(inner.join(p)).expect("restored");
        assert!(m.is_file(), "{p} is a regular file of its own");
        assert_eq!(m.nlink(), 1, "{p}");
        assert_eq!(std::fs::read(inner.join(p)).expect("restored"), b"from backup");
    }
}

/// A restored symlink's metadata (mode, times, owner) is applied to the link, never to what it
/// points at; a hard-link group inside a snapshot stays inside the target.
#[test]
fn restored_links_do_not_carry_metadata_outside() {
    let f = fixture();
    let victim = f.path("victim");
    std::fs::create_dir(&victim).expect("victim");
    std::fs::write(victim.join("secret"), b"original").expect("victim file");
    std::fs::set_permissions(victim.join("secret"), std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let before = std::fs::metadata(victim.join("secret")).expect("meta");

    let mut link = symlink_node("l", &victim.join("secret"));
    link["mode"] = json!(0o4777);
    link["uid"] = json!(4242);
    link["gid"] = json!(4242);
    link["mtime_ns"] = json!(1_000_000_000i64);
    let mut a = node("a", "file");
    a["links"] = json!(2);
    a["inode"] = json!(77);
    a["device_id"] = json!(1);
    let mut b = a.clone();
    b["name"] = json!("b");
    let snap = f.craft(vec![json!({"nodes": [a, b, link]})]);
    let target = f.path("restore");
    let r = f.restore(&snap, &target).expect("restore");
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let after = std::fs::metadata(victim.join("secret")).expect("meta");
    assert_eq!(after.mode(), before.mode());
    assert_eq!((after.uid(), after.gid()), (before.uid(), before.gid()));
    assert_eq!(after.mtime(), before.mtime());
    assert_eq!(std::fs::read(victim.join("secret")).expect("victim"), b"original");
    let a_meta = std::fs::metadata(target.join("a")).expect("a");
    assert_eq!(a_meta.nlink(), 2, "a and b are one file");
    assert_eq!(a_meta.ino(), std::fs::metadata(target.join("b")).expect("b").ino());
    let l = std::fs::symlink_metadata(target.join("l")).expect("link");
    assert!(l.file_type().is_symlink());
    if nix::unistd::geteuid().is_root() {
        assert_eq!(l.uid(), 4242, "the link itself was chowned");
    }
}
