//! The whole API fuzzed from its own OpenAPI document with schemathesis (from PyPI, installed
//! by `scripts/setup-dev.sh`), as an admin, as a viewer and without credentials, against a
//! throwaway server: no answer is a 5xx other than 503 (a missing service, named), the server
//! never dies, and nothing is written outside its data directory. Alone in its test binary,
//! so no other test writes to the machine while the file system is compared.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use bams_testkit::server::ServerProcess;
use std::time::{Duration, SystemTime};

const SCHEMATHESIS: &str = "/opt/bams-venv/bin/schemathesis";

/// A 5xx other than 503 is a bug; 503 says which service is missing.
const HOOKS: &str = r#"
import schemathesis

@schemathesis.check
def no_server_bug(ctx, response, case):
    if response.status_code >= 500 and response.status_code != 503:
        raise AssertionError(f"{response.status_code}: {response.text[:300]}")
    if response.status_code == 503 and "error" not in response.text:
        raise AssertionError("a 503 without a JSON error saying what is missing")
"#;

/// Files other processes than `server` hold open (the test run's own output log, say).
fn open_elsewhere(server: u32) -> std::collections::HashSet<PathBuf> {
    let mut out = std::collections::HashSet::new();
    for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<u32>() else { continue };
        if pid == server {
            continue;
        }
        for fd in std::fs::read_dir(p.path().join("fd")).into_iter().flatten().flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                out.insert(target);
            }
        }
    }
    out
}

/// Files changed since `since` anywhere on this machine's root file system, except below
/// `allowed`, the places other programs (logs, caches, the build) write to, files other
/// processes than the server hold open, and directories of `/tmp` that existed before (other
/// programs' work areas; new files at the top of `/tmp` and in new directories still count).
fn written_since(since: SystemTime, allowed: &[PathBuf], server: u32, tmp_dirs_before: &[PathBuf]) -> Vec<PathBuf> {
    let others = open_elsewhere(server);
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap();
    let mut skip: Vec<PathBuf> =
        ["/proc", "/sys", "/dev", "/run", "/var/log", "/var/cache", "/var/tmp", "/root/.cache"]
            .iter()
            .map(PathBuf::from)
            .collect();
    skip.push(workspace);
    skip.extend(std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from));
    skip.extend(std::env::var_os("CARGO_HOME").map(PathBuf::from));
    skip.extend(allowed.iter().cloned());
    skip.extend(tmp_dirs_before.iter().cloned());
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::from("/")];
    let root_dev = std::fs::metadata("/").map(|m| std::os::unix::fs::MetadataExt::dev(&m)).unwrap_or(0);
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if skip.iter().any(|s| p.starts_with(s)) {
                continue;
            }
            let Ok(m) = std::fs::symlink_metadata(&p) else { continue };
            if std::os::unix::fs::MetadataExt::dev(&m) != root_dev {
                continue;
            }
            if m.modified().is_ok_and(|t| t > since) && !m.is_dir() && !others.contains(&p) {
                out.push(p.clone());
            }
            if m.is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

/// Fuzz every operation of the saved document (also without credentials, which may not read
/// it) with `token` as the bearer.
fn fuzz(dir: &Path, port: u16, token: Option<&str>, examples: u32, what: &str) {
    let mut cmd = Command::new(SCHEMATHESIS);
    cmd.current_dir(dir)
        .env("PYTHONPATH", dir)
        .env("SCHEMATHESIS_HOOKS", "bams_hooks")
        .arg("run")
        .arg(dir.join("openapi.json"))
        .args(["--url", &format!("http://127.0.0.1:{port}")])
        .args(["--checks", "no_server_bug", "--seed", "20261130", "--no-color", "--workers", "2"])
        .args(["--max-examples", &examples.to_string(), "--phases", "examples,coverage,fuzzing"])
        // Logging out would end the fuzzer's own session.
        .args(["--exclude-path", "/api/v1/auth/logout", "--request-timeout", "30"]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "schemathesis as {what} found problems:\n{text}");
    let generated: u64 = text
        .lines()
        .find_map(|l| l.trim().strip_suffix(" passed").and_then(|l| l.split(" generated").next()?.trim().parse().ok()))
        .unwrap_or(0);
    assert!(generated >= 500, "as {what}, only {generated} cases ran:\n{text}");
}

#[test]
fn every_route_survives_generated_input_as_admin_viewer_and_anonymous() {
    if !Path::new(SCHEMATHESIS).exists() {
        assert!(std::env::var_os("CI").is_none(), "{SCHEMATHESIS} is missing: scripts/setup-dev.sh installs it");
        eprintln!("skipping: {SCHEMATHESIS} is missing (scripts/setup-dev.sh installs it)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().canonicalize().unwrap();
    std::fs::write(dir.join("bams_hooks.py"), HOOKS).unwrap();
    // The fuzzer would otherwise try to sign itself up through the login route.
    std::fs::write(dir.join("schemathesis.toml"), "[auth]\nauto-signup = false\n").unwrap();
    let mut server = ServerProcess::start(Path::new(env!("CARGO_BIN_EXE_bams")), &dir, &[]);
    let port = server.port;
    let data = dir.join("data");
    let admin_pw = std::fs::read_to_string(data.join("initial-admin-password")).unwrap().trim().to_string();
    let admin = server.login("admin", &admin_pw);
    let created = Command::new("curl")
        .args(["-sf", &format!("http://127.0.0.1:{port}/api/v1/users"), "-H", "content-type: application/json"])
        .args(["-H", &format!("Authorization: Bearer {admin}")])
        .args(["-d", r#"{"username":"fuzz-viewer","password":"viewer-password","role":"viewer"}"#])
        .output()
        .unwrap();
    assert!(created.status.success());
    let viewer = server.login("fuzz-viewer", "viewer-password");
    let doc = Command::new("curl")
        .args(["-sf", &format!("http://127.0.0.1:{port}/api/v1/openapi.json"), "-H"])
        .arg(format!("Authorization: Bearer {admin}"))
        .output()
        .unwrap();
    std::fs::write(dir.join("openapi.json"), &doc.stdout).unwrap();

    let tmp_dirs_before: Vec<PathBuf> = std::fs::read_dir("/tmp")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    std::thread::sleep(Duration::from_millis(1100));
    let since = SystemTime::now();
    fuzz(&dir, port, None, 5, "anonymous");
    fuzz(&dir, port, Some(&viewer), 8, "viewer");
    fuzz(&dir, port, Some(&admin), 15, "admin");
    assert!(server.child.try_wait().unwrap().is_none(), "the server died under the fuzzer");
    let health = Command::new("curl").args(["-sf", &format!("http://127.0.0.1:{port}/healthz")]).output().unwrap();
    assert!(health.status.success(), "the server no longer answers /healthz");
    let outside = written_since(since, std::slice::from_ref(&dir), server.child.id(), &tmp_dirs_before);
    assert!(outside.is_empty(), "written outside the data directory: {outside:?}");
}
