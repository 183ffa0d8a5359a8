//! Locks judged on the backend's clock, unreadable locks skipped, and prune's grace period
//! protecting young packs whether an index lists them or not.

use std::time::{Duration, SystemTime};

use bams_store::archiver::{self, BackupOptions, NoProgress};
use bams_store::lock::{self, LockInfo};
use bams_store::pack::BlobKind;
use bams_store::pipeline::{BlobWriter, PipelineOptions};
use bams_store::prune::{self, PruneOptions};

mod common;
use common::{fixture, Fixture};

fn info(time: chrono::DateTime<chrono::Utc>, exclusive: bool, host: &str, pid: u32) -> LockInfo {
    LockInfo { time, exclusive, host: host.into(), pid, user: "someone".into(), purpose: "backup".into() }
}

impl Fixture {
    fn plant_lock(&self, l: &LockInfo) -> std::path::PathBuf {
        let id = self.repo.save_sealed("locks", &serde_json::to_vec(l).expect("json")).expect("lock");
        self.dir.path().join(format!("repo/locks/{id}"))
    }

    fn set_age(path: &std::path::Path, age: Duration) {
        let t = SystemTime::now() - age;
        std::fs::File::options().write(true).open(path).expect("open").set_modified(t).expect("mtime");
    }
}

#[test]
fn lock_ages_come_from_the_backend_not_the_holders_clock() {
    let f = fixture();
    let wait = Duration::from_millis(300);
    // A holder on another host whose clock runs three hours behind: its lock is fresh.
    let behind = f.plant_lock(&info(chrono::Utc::now() - chrono::Duration::hours(3), false, "elsewhere", 1));
    let e = lock::acquire(&f.repo, true, "prune", wait).err().expect("the fresh lock conflicts");
    assert!(e.to_string().contains("locked"), "{e}");
    // The same lock, its object last written an hour ago (no refresh since): stale.
    Fixture::set_age(&behind, Duration::from_secs(3600));
    drop(lock::acquire(&f.repo, true, "prune", wait).expect("stale lock ignored"));
    assert!(!behind.exists(), "the exclusive locker removed the stale lock");
    // A holder whose clock runs ahead, with an old object, is stale too.
    let ahead = f.plant_lock(&info(chrono::Utc::now() + chrono::Duration::hours(5), false, "elsewhere", 1));
    Fixture::set_age(&ahead, Duration::from_secs(3600));
    drop(lock::acquire(&f.repo, true, "prune", wait).expect("stale lock ignored"));
}

#[test]
fn processes_on_this_host_count_as_alive_unless_they_are_gone() {
    let f = fixture();
    let wait = Duration::from_millis(300);
    let host = bams_store::host::hostname();
    // pid 1 always exists (and belongs to root: EPERM for other users, which means alive).
    f.plant_lock(&info(chrono::Utc::now(), false, &host, 1));
    assert!(lock::acquire(&f.repo, true, "prune", wait).is_err(), "a live holder blocks prune");
    for l in lock::list_locks(&f.repo).expect("list") {
        f.repo.delete(&format!("locks/{}", l.id)).expect("rm");
    }
    // A pid above the kernel's limit cannot exist.
    f.plant_lock(&info(chrono::Utc::now(), false, &host, 4_194_305));
    drop(lock::acquire(&f.repo, true, "prune", wait).expect("a dead holder's lock is stale"));
    // A holder that died but was not reaped yet (a zombie) holds nothing either.
    let mut child = std::process::Command::new("true").spawn().expect("spawn");
    std::thread::sleep(Duration::from_millis(200));
    f.plant_lock(&info(chrono::Utc::now(), false, &host, child.id()));
    drop(lock::acquire(&f.repo, true, "prune", wait).expect("a zombie's lock is stale"));
    child.wait().expect("reap");
}

#[test]
fn unreadable_locks_are_reported_and_skipped() {
    let f = fixture();
    let junk = b"not a lock at all";
    let id = blake3::hash(junk).to_hex().to_string();
    f.repo.put(&format!("locks/{id}"), junk.to_vec()).expect("plant");
    let src = f.dir.path().join("src");
    std::fs::create_dir_all(&src).expect("src");
    std::fs::write(src.join("a"), b"data").expect("a");
    archiver::backup(&f.repo, BackupOptions::paths(vec![src]), &NoProgress).expect("backup beside junk");
    drop(lock::acquire(&f.repo, true, "prune", Duration::from_millis(300)).expect("exclusive beside junk"));
    let seen = lock::list_locks(&f.repo).expect("list");
    assert!(seen.iter().any(|l| l.info.is_none()), "the junk is listed as unreadable");
}

#[test]
fn prune_keeps_young_packs_whether_indexed_or_not() {
    let f = fixture();
    // What a running backup leaves before its snapshot: packs and an index, no snapshot.
    let index = f.repo.load_index().expect("index");
    std::thread::scope(|s| {
        let mut w = BlobWriter::start(s, &f.repo, &index, PipelineOptions::default());
        for i in 0..64u32 {
            let data: Vec<u8> = (0..64 * 1024u32).map(|j| ((i * 31 + j) % 251) as u8).collect();
            w.add(BlobKind::Data, data).expect("add");
        }
        w.finish().expect("finish");
    });
    let packs = || f.repo.list_packs().expect("packs").len();
    let before = packs();
    assert!(before > 0);
    let r = prune::prune(&f.repo, &PruneOptions::default()).expect("prune");
    assert!(r.packs_too_young > 0, "{r:?}");
    assert_eq!(packs(), before, "young unreferenced packs are kept");
    assert_eq!(f.repo.load_index().expect("index").len(), 64, "and stay indexed");
    let r = prune::prune(&f.repo, &PruneOptions { grace: Duration::ZERO, ..Default::default() }).expect("prune");
    assert_eq!(r.packs_deleted, before, "{r:?}");
    assert_eq!(packs(), 0);
}
