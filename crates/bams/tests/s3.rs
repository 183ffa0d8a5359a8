//! Object storage under faults and crashes: the `bams` binary against a real S3 server (moto)
//! through the test kit's fault-injecting proxy. Every loop is bounded in count and time, and
//! every random choice comes from a fixed seed so a failure repeats.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use bams_testkit::faultproxy::{Fault, FaultPlan, FaultProxy};
use bams_testkit::S3Server;
use rand::{Rng, SeedableRng};

/// One bucket behind a proxy, a password, and a scratch directory.
struct Rig {
    s3: S3Server,
    proxy: FaultProxy,
    dir: tempfile::TempDir,
    url: String,
}

impl Rig {
    fn new(bucket: &str, seed: u64) -> Self {
        let s3 = S3Server::start(bucket);
        let proxy = FaultProxy::start(&format!("http://127.0.0.1:{}", s3.port()), seed);
        Self { s3, proxy, dir: tempfile::tempdir().unwrap(), url: format!("s3://{bucket}/repo") }
    }

    /// `bams` through the proxy, with short retry delays and timeouts so faults cost seconds.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_bams"));
        c.arg("-r").arg(&self.url).args(args);
        for (k, v) in self.s3.env() {
            c.env(k, v);
        }
        c.env("AWS_ENDPOINT_URL", self.proxy.url())
            .env("BAMS_PASSWORD", "s3-fault-pass")
            .env("BAMS_CACHE_DIR", self.dir.path().join("cache"))
            .env("BAMS_RETRY_BASE_MS", "20")
            .env("BAMS_RETRY_MAX_MS", "300")
            .env("BAMS_RETRY_ATTEMPTS", "10")
            .env("BAMS_S3_TIMEOUT_SECS", "1")
            .env_remove("BAMS_REPOSITORY");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "bams {args:?}: {}{}", text(&out.stdout), text(&out.stderr));
        text(&out.stdout)
    }

    fn init(&self) {
        self.ok(&["repo", "init", "--pack-size-mib", "1"]);
    }

    /// Snapshot ids with their first tag (the version of the tree they hold).
    fn snapshots(&self) -> Vec<(String, String)> {
        let v: serde_json::Value = serde_json::from_str(&self.ok(&["snapshots", "--json"])).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| (s["id"].as_str().unwrap().to_string(), s["tags"][0].as_str().unwrap_or("").to_string()))
            .collect()
    }

    /// Restore every snapshot and compare it with the tree version its tag names.
    fn verify_all(&self, src: &Path, versions: &BTreeMap<String, BTreeMap<String, Vec<u8>>>) {
        for (id, tag) in self.snapshots() {
            let want = versions.get(&tag).unwrap_or_else(|| panic!("snapshot {id} has unknown tag {tag:?}"));
            let target = self.dir.path().join(format!("restore-{id}"));
            self.ok(&["restore", &id, "--target", target.to_str().unwrap()]);
            let got = read_tree(&target.join(src.strip_prefix("/").unwrap()));
            assert!(got == *want, "snapshot {id} ({tag}) does not restore byte-identical");
            std::fs::remove_dir_all(&target).unwrap();
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Deterministic file contents: incompressible enough to fill packs.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.gen()).collect()
}

/// Write version `v` of the source tree (files of earlier versions stay, one file changes).
fn write_version(src: &Path, v: u64) -> BTreeMap<String, Vec<u8>> {
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join(format!("d/v{v}.bin")), bytes(v, 700_000 + (v as usize % 5) * 100_000)).unwrap();
    std::fs::write(src.join("changing.txt"), format!("version {v}\n").repeat(1000)).unwrap();
    read_tree(src)
}

fn read_tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(p.strip_prefix(root).unwrap().display().to_string(), std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn src_dir(rig: &Rig) -> PathBuf {
    let src = rig.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    src
}

#[test]
fn every_fault_is_retried_or_fails_clearly_and_never_leaves_a_bad_snapshot() {
    let rig = Rig::new("bams-faults", 7);
    rig.init();
    let src = src_dir(&rig);
    let mut versions = BTreeMap::new();
    let faults = [
        FaultPlan::new(Fault::ServerError, 0.25),
        FaultPlan::new(Fault::SlowDown, 0.25),
        FaultPlan::new(Fault::Reset, 0.2),
        FaultPlan { stall: Duration::from_secs(3), ..FaultPlan::new(Fault::Stall, 0.1) },
        FaultPlan::new(Fault::Truncate, 0.3).method("GET"),
        FaultPlan::new(Fault::FlipBits, 0.3).method("GET"),
    ];
    let started = Instant::now();
    for (v, plan) in (1u64..).zip(faults) {
        let tag = format!("v{v}");
        versions.insert(tag.clone(), write_version(&src, v));
        let fault = plan.fault;
        rig.proxy.set_plan(Some(plan));
        let before = rig.proxy.counts().faults;
        let backup = rig.run(&["backup", "--tag", &tag, src.to_str().unwrap()]);
        // A restore under the same faults: byte-identical or a clear failure, never wrong data.
        let target = rig.dir.path().join(format!("faulty-restore-{v}"));
        let restore = rig.run(&["restore", "latest", "--target", target.to_str().unwrap()]);
        rig.proxy.set_plan(None);
        let injected = rig.proxy.counts().faults - before;
        assert!(injected > 0, "{fault:?}: no fault was injected; the test proves nothing");
        if !backup.status.success() {
            let err = text(&backup.stderr);
            assert!(err.contains("failed after") || err.contains("error:"), "{fault:?}: unclear failure: {err}");
        }
        if restore.status.success() {
            let (id, tag) = rig.snapshots().pop().unwrap();
            let got = read_tree(&target.join(src.strip_prefix("/").unwrap()));
            assert!(got == versions[&tag], "{fault:?}: restore of {id} under faults succeeded with wrong data");
        } else {
            let err = text(&restore.stderr);
            assert!(err.contains("error"), "{fault:?}: restore failed without an error: {err}");
        }
        // Whatever happened, the repository is whole and every snapshot restores.
        rig.ok(&["check", "--read-data"]);
        rig.verify_all(&src, &versions);
        assert!(started.elapsed() < Duration::from_secs(300), "fault loop over its time bound");
    }
    // Through all of that, at least the clean-ish runs produced snapshots.
    assert!(!rig.snapshots().is_empty());
}

#[test]
fn flipped_bits_are_detected_named_and_never_restored() {
    let rig = Rig::new("bams-flips", 11);
    rig.init();
    let src = src_dir(&rig);
    write_version(&src, 1);
    rig.ok(&["backup", "--tag", "v1", src.to_str().unwrap()]);
    // Every pack read arrives damaged: nothing may be restored from it, and the error names
    // the damaged object.
    rig.proxy.set_plan(Some(FaultPlan::new(Fault::FlipBits, 1.0).method("GET").path_contains("/data/")));
    let target = rig.dir.path().join("restore");
    let out = rig.run(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert!(!out.status.success(), "restore from damaged packs must fail");
    let err = text(&out.stderr);
    assert!(err.contains("pack ") && (err.contains("blob ") || err.contains("authentication")), "{err}");
    let restored = read_tree(&target);
    let original = read_tree(&src);
    assert!(err.contains(".bams-incomplete"), "damaged files must be marked: {err}");
    for (path, data) in &restored {
        if path.ends_with(".bams-incomplete") {
            continue;
        }
        let name = path.rsplit('/').next().unwrap();
        let same = original.iter().any(|(p, d)| p.ends_with(name) && d == data);
        assert!(same || data.is_empty(), "{path} restored with content that is not the original");
    }
    let check = rig.run(&["check", "--read-data"]);
    assert!(!check.status.success(), "check must report damaged reads");
    assert!(text(&check.stdout).contains("pack ") || text(&check.stderr).contains("pack "));
    rig.proxy.set_plan(None);
    rig.ok(&["check", "--read-data"]);
}

#[test]
fn kill9_of_backup_and_prune_at_random_points_loses_nothing() {
    let rig = Rig::new("bams-kill", 3);
    rig.init();
    let src = src_dir(&rig);
    let mut versions = BTreeMap::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(20261123);
    let started = Instant::now();
    let mut killed = 0;
    for i in 1u64..=20 {
        let prune_round = i % 2 == 0;
        let args: Vec<String> = if prune_round {
            rig.ok(&["forget", "--keep-last", "3"]);
            vec!["prune".into(), "--max-unused".into(), "0".into()]
        } else {
            let tag = format!("v{i}");
            versions.insert(tag.clone(), write_version(&src, i));
            vec!["backup".into(), "--tag".into(), tag, src.to_str().unwrap().into()]
        };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child = rig.cmd(&args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let delay = Duration::from_millis(rng.gen_range(10..450));
        let until = Instant::now() + delay;
        while Instant::now() < until && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(10));
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            killed += 1;
        }
        child.wait().unwrap();
        rig.ok(&["check", "--read-data"]);
        rig.verify_all(&src, &versions);
        assert!(started.elapsed() < Duration::from_secs(400), "kill loop over its time bound");
    }
    assert!(killed >= 5, "only {killed} of 20 runs were killed mid-way; the delays are too long");
    // The next backup after all that still works and resumes.
    versions.insert("final".into(), write_version(&src, 99));
    rig.ok(&["backup", "--tag", "final", src.to_str().unwrap()]);
    rig.ok(&["check", "--read-data"]);
    rig.verify_all(&src, &versions);
}

#[test]
fn two_clients_at_once_and_prune_beside_a_backup_lose_nothing() {
    let rig = Rig::new("bams-two", 5);
    rig.init();
    let a = rig.dir.path().join("a");
    let b = rig.dir.path().join("b");
    let mut va = BTreeMap::new();
    let mut vb = BTreeMap::new();
    for round in 1u64..=3 {
        va.insert(format!("a{round}"), write_version(&a, round));
        vb.insert(format!("b{round}"), write_version(&b, round + 100));
        let ta = format!("a{round}");
        let tb = format!("b{round}");
        let quiet = |args: &[&str]| rig.cmd(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let mut first = quiet(&["backup", "--host", "alpha", "--tag", &ta, a.to_str().unwrap()]);
        let mut second = quiet(&["backup", "--host", "beta", "--tag", &tb, b.to_str().unwrap()]);
        assert!(first.wait().unwrap().success() && second.wait().unwrap().success());
    }
    // Prune (exclusive) next to a backup (shared): one waits for the other; both succeed.
    rig.ok(&["forget", "--keep-last", "2", "--host", "alpha"]);
    va.insert("a4".into(), write_version(&a, 4));
    let quiet = |args: &[&str]| rig.cmd(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let mut backup = quiet(&["backup", "--host", "alpha", "--tag", "a4", a.to_str().unwrap()]);
    let mut prune = quiet(&["prune", "--max-unused", "0"]);
    assert!(backup.wait().unwrap().success() && prune.wait().unwrap().success());
    rig.ok(&["check", "--read-data"]);
    for (id, tag) in rig.snapshots() {
        let (root, want) = if tag.starts_with('a') { (&a, &va[&tag]) } else { (&b, &vb[&tag]) };
        let target = rig.dir.path().join(format!("r-{id}"));
        rig.ok(&["restore", &id, "--target", target.to_str().unwrap()]);
        assert!(read_tree(&target.join(root.strip_prefix("/").unwrap())) == *want, "{tag} differs");
    }
    let tags: Vec<String> = rig.snapshots().into_iter().map(|s| s.1).collect();
    for t in ["a3", "a4", "b1", "b2", "b3"] {
        assert!(tags.iter().any(|x| x == t), "snapshot {t} lost: {tags:?}");
    }
}

#[test]
fn requests_are_counted_and_listings_come_from_the_cache() {
    let rig = Rig::new("bams-count", 1);
    rig.init();
    let src = src_dir(&rig);
    write_version(&src, 1);
    rig.ok(&["backup", src.to_str().unwrap()]);
    // An unchanged re-backup reads no index, snapshot or data from the bucket: they are cached
    // locally, and the tree comes from the parent's one tree pack.
    rig.proxy.reset_counts();
    let out = rig.run(&["backup", "--json", src.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let seen = rig.proxy.counts();
    let counted = v["requests"]["get"].as_u64().unwrap()
        + v["requests"]["range_get"].as_u64().unwrap()
        + v["requests"]["list"].as_u64().unwrap()
        + v["requests"]["put"].as_u64().unwrap()
        + v["requests"]["delete"].as_u64().unwrap()
        + v["requests"]["head"].as_u64().unwrap();
    assert_eq!(counted, seen.total, "bams's own count differs from the proxy's: {v} vs {seen:?}");
    assert!(seen.total <= 14, "an unchanged backup should take a handful of requests: {seen:?}");
    // The summary line names the requests.
    let out = rig.run(&["snapshots"]);
    assert!(text(&out.stderr).contains("requests (GET"), "{}", text(&out.stderr));
    // Deleting the cache is safe: the next run downloads what it needs again.
    std::fs::remove_dir_all(rig.dir.path().join("cache")).unwrap();
    rig.ok(&["backup", src.to_str().unwrap()]);
    rig.ok(&["check", "--read-data"]);
    // A missing bucket is a clear error at once, not a retried hiccup.
    rig.proxy.reset_counts();
    let mut c = Command::new(env!("CARGO_BIN_EXE_bams"));
    for (k, v) in rig.s3.env() {
        c.env(k, v);
    }
    let out = c
        .args(["-r", "s3://no-such-bucket/x", "snapshots"])
        .env("AWS_ENDPOINT_URL", rig.proxy.url())
        .env("BAMS_PASSWORD", "x")
        .output()
        .unwrap();
    assert!(!out.status.success() && text(&out.stderr).contains("NoSuchBucket"), "{}", text(&out.stderr));
    assert!(rig.proxy.counts().total <= 2, "a 404 was retried: {:?}", rig.proxy.counts());
    // Objects above the multipart threshold go up in parts (create, parts, complete) and read
    // back whole.
    write_version(&src, 2);
    rig.proxy.reset_counts();
    let out = rig
        .cmd(&["backup", "--tag", "v2", src.to_str().unwrap()])
        .env("BAMS_S3_MULTIPART_MIB", "0.5")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(rig.proxy.counts().post >= 2, "no multipart upload seen: {:?}", rig.proxy.counts());
    rig.ok(&["check", "--read-data"]);
    let target = rig.dir.path().join("multipart-restore");
    rig.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert!(read_tree(&target.join(src.strip_prefix("/").unwrap())) == read_tree(&src));
}

#[test]
fn copy_sends_only_missing_data_offsite_and_back_with_other_keys() {
    let rig = Rig::new("bams-copy", 9);
    rig.init();
    let src = src_dir(&rig);
    let local = rig.dir.path().join("local-repo");
    let local_pw = rig.dir.path().join("local.pw");
    std::fs::write(&local_pw, "local-password\n").unwrap();
    let local_cmd = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_bams"))
            .arg("-r")
            .arg(&local)
            .arg("--password-file")
            .arg(&local_pw)
            .args(args)
            .env_remove("BAMS_PASSWORD")
            .output()
            .unwrap();
        assert!(out.status.success(), "local {args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    local_cmd(&["repo", "init"]);
    let v1 = write_version(&src, 1);
    local_cmd(&["backup", "--tag", "v1", src.to_str().unwrap()]);
    let copy = |from: &str, to: &str, from_pw: &Path, extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["copy", "--json", "--from", from, "--to", to];
        args.extend_from_slice(extra);
        let out = rig.cmd(&args).env("BAMS_FROM_PASSWORD_FILE", from_pw).output().unwrap();
        assert!(out.status.success(), "copy {from} -> {to}: {}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let s3pw = rig.dir.path().join("s3.pw");
    std::fs::write(&s3pw, "s3-fault-pass\n").unwrap();
    let first = copy(local.to_str().unwrap(), &rig.url, &local_pw, &[]);
    assert_eq!(first["rehashed"], true, "{first}");
    assert_eq!(first["copied"].as_array().unwrap().len(), 1);
    // Copying again finds the copy by its origin and transfers nothing.
    let again = copy(local.to_str().unwrap(), &rig.url, &local_pw, &[]);
    assert_eq!(again["skipped"].as_array().unwrap().len(), 1, "{again}");
    assert_eq!(again["blobs_added"], 0);
    // A second version: only its new data goes up.
    let v2 = write_version(&src, 2);
    local_cmd(&["backup", "--tag", "v2", src.to_str().unwrap()]);
    let second = copy(local.to_str().unwrap(), &rig.url, &local_pw, &["--tag", "v2"]);
    let added = second["bytes_added"].as_u64().unwrap();
    let new_file = std::fs::metadata(src.join("d/v2.bin")).unwrap().len();
    assert!(added >= new_file && added < new_file + 200_000, "copied {added} bytes for a {new_file}-byte change");
    // The offsite copies restore byte-identical and record where they came from.
    let mut versions = BTreeMap::new();
    versions.insert("v1".to_string(), v1);
    versions.insert("v2".to_string(), v2);
    rig.ok(&["check", "--read-data"]);
    rig.verify_all(&src, &versions);
    let snaps: serde_json::Value = serde_json::from_str(&rig.ok(&["snapshots", "--json"])).unwrap();
    assert!(snaps.as_array().unwrap().iter().all(|s| s["origin"].is_string()), "{snaps}");
    // Recovery: S3 back into a fresh local repository with yet another key.
    let back = rig.dir.path().join("recovered");
    let back_pw = rig.dir.path().join("back.pw");
    std::fs::write(&back_pw, "recovered-password\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bams"))
        .args(["-r", back.to_str().unwrap(), "repo", "init"])
        .env("BAMS_PASSWORD", "recovered-password")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = rig
        .cmd(&["copy", "--from", &rig.url, "--to", back.to_str().unwrap(), "latest"])
        .env("BAMS_TO_PASSWORD_FILE", &back_pw)
        .output()
        .unwrap();
    assert!(out.status.success(), "copy back: {}", text(&out.stderr));
    let target = rig.dir.path().join("recovered-restore");
    let out = Command::new(env!("CARGO_BIN_EXE_bams"))
        .args(["-r", back.to_str().unwrap(), "restore", "latest", "--target", target.to_str().unwrap()])
        .env("BAMS_PASSWORD", "recovered-password")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(read_tree(&target.join(src.strip_prefix("/").unwrap())) == versions["v2"]);
    // A copy target that shares blob ids with its source: dedup by lookup, nothing re-hashed,
    // data still sealed with the target's own key (its password alone opens it).
    let twin = rig.dir.path().join("twin");
    let out = Command::new(env!("CARGO_BIN_EXE_bams"))
        .args(["-r", twin.to_str().unwrap(), "repo", "init", "--copy-ids-from", local.to_str().unwrap()])
        .env("BAMS_PASSWORD", "twin-password")
        .env("BAMS_FROM_PASSWORD_FILE", &local_pw)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let twin_copy = |tag: &str| -> serde_json::Value {
        let out = Command::new(env!("CARGO_BIN_EXE_bams"))
            .args(["copy", "--json", "--from", local.to_str().unwrap(), "--to", twin.to_str().unwrap(), "--tag", tag])
            .env("BAMS_PASSWORD", "twin-password")
            .env("BAMS_FROM_PASSWORD_FILE", &local_pw)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let t1 = twin_copy("v1");
    assert_eq!(t1["rehashed"], false, "{t1}");
    let t2 = twin_copy("v2");
    let added = t2["bytes_added"].as_u64().unwrap();
    assert!(added >= new_file && added < new_file + 200_000, "twin copy sent {added} bytes");
    let target = rig.dir.path().join("twin-restore");
    let out = Command::new(env!("CARGO_BIN_EXE_bams"))
        .args(["-r", twin.to_str().unwrap(), "restore", "latest", "--target", target.to_str().unwrap()])
        .env("BAMS_PASSWORD", "twin-password")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(read_tree(&target.join(src.strip_prefix("/").unwrap())) == versions["v2"]);
    let out = Command::new(env!("CARGO_BIN_EXE_bams"))
        .args(["-r", twin.to_str().unwrap(), "snapshots"])
        .env("BAMS_PASSWORD", "local-password")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the source's password must not open the twin");
    // Bad input: an unknown snapshot is a clear error.
    let out = rig
        .cmd(&["copy", "--from", &rig.url, "--to", back.to_str().unwrap(), "ffffffff"])
        .env("BAMS_TO_PASSWORD_FILE", &back_pw)
        .output()
        .unwrap();
    assert!(!out.status.success() && text(&out.stderr).contains("no snapshot"), "{}", text(&out.stderr));
}
