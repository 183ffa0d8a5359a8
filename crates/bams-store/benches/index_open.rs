//! Opening a repository written by many writers (issue 18): `cargo bench -p bams-store --bench
//! index_open -- [FILES]` (default 100,000) makes a local repository holding FILES small
//! index files (one per tiny pack, as FILES agent backups would leave), then times reading the
//! whole index (list + read + decrypt + build the lookup) before consolidation, the
//! consolidation itself, and reading it after. Run by `bench/scale.sh`; prints one JSON line.
//! With `BAMS_BENCH_REPO=s3://bucket/prefix` (and the usual `AWS_*` settings) the repository
//! is made on object storage instead (`bench/index-s3.sh` runs it against moto).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::Instant;

use bams_store::backend::local::LocalBackend;
use bams_store::consolidate::{self, ConsolidateOptions};
use bams_store::crypto::{KdfParams, SlotKind};
use bams_store::index::IndexFile;
use bams_store::pack::{pack_key, BlobKind, PackBuilder};
use bams_store::repo::{InitOptions, Repository};

fn main() {
    let files: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(100_000);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let base = std::env::var_os("BAMS_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let dir = tempfile::tempdir_in(base).unwrap();
    let opts = InitOptions { kdf: KdfParams { m_cost: 64, t_cost: 1, p_cost: 1 }, ..InitOptions::default() };
    let backend: bams_store::backend::DynBackend = match std::env::var("BAMS_BENCH_REPO") {
        Ok(location) => bams_store::backend::from_location(&location).unwrap(),
        Err(_) => Arc::new(LocalBackend::new(dir.path().join("repo"))),
    };
    let repo = Repository::init(backend.clone(), rt.handle().clone(), b"pw", SlotKind::Password, &opts).unwrap();
    let made = Instant::now();
    // Each "backup": one pack of four small blobs and the index file naming it.
    for i in 0..files {
        let mut pack = PackBuilder::default();
        for b in 0..4u64 {
            let plain = format!("writer {i} blob {b}").into_bytes();
            let id = repo.key().blob_id(&plain);
            let sealed = repo.key().seal(&plain, None).unwrap();
            pack.add(BlobKind::Data, id, &sealed, plain.len());
        }
        let (pid, bytes, entries) = pack.finish(repo.key()).unwrap();
        repo.put(&pack_key(&pid), bytes).unwrap();
        repo.save_index(&IndexFile { packs: vec![(pid, entries)] }).unwrap();
    }
    let made = made.elapsed().as_secs_f64();
    let open = |repo: &Repository| {
        let t = Instant::now();
        let index = repo.load_index().unwrap();
        (t.elapsed().as_secs_f64(), index.len())
    };
    let (before, blobs) = open(&repo);
    let t = Instant::now();
    let report = consolidate::consolidate(&repo, &ConsolidateOptions::default()).unwrap();
    let consolidate_s = t.elapsed().as_secs_f64();
    // A fresh process's view: a new handle on the same directory.
    let again = Repository::open(backend, rt.handle().clone(), b"pw").unwrap();
    let (after, blobs_after) = open(&again);
    assert_eq!(blobs, blobs_after, "consolidation lost blobs");
    println!(
        "{}",
        serde_json::json!({
            "index_files": files, "blobs": blobs, "make_s": made,
            "open_before_s": before, "consolidate_s": consolidate_s,
            "files_after": report.files_after, "open_after_s": after,
        })
    );
}
