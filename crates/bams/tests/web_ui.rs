//! The web UI in a real browser (Debian's chromium, driven by Playwright from the venv that
//! `scripts/setup-dev.sh` makes): log in, create a job with the form, run it and follow its
//! live log, browse the snapshot lazily, download a file and restore a folder and compare
//! both, create an agent; every page as admin and as viewer without console errors, CSP
//! violations or requests elsewhere; a viewer offered no action; CSRF enforced; hostile names
//! shown as text. The script is `tests/ui/browser.py`; with `BAMS_SCREENSHOTS=DIR` it also
//! writes the screenshots of the main screens (`scripts/screenshots.sh`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::Path;
use std::process::Command;

use bams_testkit::server::ServerProcess;

const PYTHON: &str = "/opt/bams-venv/bin/python3";
const CHROMIUM: &str = "/usr/bin/chromium";

/// What the browser backs up: a nested folder, a binary file, a hostile file name and a
/// directory larger than one page of the browser.
fn source_tree(dir: &Path) {
    std::fs::create_dir_all(dir.join("sub/deeper")).unwrap();
    std::fs::write(dir.join("sub/a.txt"), "alpha\n").unwrap();
    std::fs::write(dir.join("sub/deeper/b.txt"), "beta\n".repeat(1000)).unwrap();
    let mut data = std::fs::File::create(dir.join("data.bin")).unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut buf = Vec::with_capacity(3 << 20);
    for _ in 0..(3 << 20) / 8 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf.extend_from_slice(&x.to_le_bytes());
    }
    data.write_all(&buf).unwrap();
    std::fs::write(dir.join("<img src=x onerror=alert(1)>.txt"), "hostile\n").unwrap();
    std::fs::create_dir_all(dir.join("many")).unwrap();
    for i in 0..250 {
        std::fs::write(dir.join(format!("many/f{i:04}")), format!("{i}\n")).unwrap();
    }
}

#[test]
fn the_web_ui_works_in_a_real_browser_for_admins_and_viewers() {
    for tool in [PYTHON, CHROMIUM] {
        assert!(Path::new(tool).exists(), "{tool} is missing: run scripts/setup-dev.sh");
    }
    let probe = Command::new(PYTHON).args(["-c", "import playwright"]).status().unwrap();
    assert!(probe.success(), "Playwright is missing from /opt/bams-venv: run scripts/setup-dev.sh");

    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().canonicalize().unwrap();
    let source = dir.join("source");
    source_tree(&source);
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let server = ServerProcess::start(Path::new(env!("CARGO_BIN_EXE_bams")), &dir, &[]);
    let data = dir.join("data");
    let admin_pw = std::fs::read_to_string(data.join("initial-admin-password")).unwrap().trim().to_string();
    let admin = server.login("admin", &admin_pw);
    let created = Command::new("curl")
        .args(["-sf", &format!("http://127.0.0.1:{}/api/v1/users", server.port)])
        .args(["-H", "content-type: application/json", "-H", &format!("Authorization: Bearer {admin}")])
        .args(["-d", r#"{"username":"viewer","password":"viewer-password","role":"viewer"}"#])
        .output()
        .unwrap();
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui/browser.py");
    let mut cmd = Command::new(PYTHON);
    cmd.arg(&script)
        .env("BAMS_URL", format!("http://127.0.0.1:{}", server.port))
        .env("ADMIN_PASSWORD", &admin_pw)
        .env("VIEWER_PASSWORD", "viewer-password")
        .env("SOURCE", &source)
        .env("RESTORE_ROOT", data.join("restores"))
        .env("WORK", &work);
    if let Some(shots) = std::env::var_os("BAMS_SCREENSHOTS") {
        cmd.env("SCREENSHOTS", shots);
    }
    let out = cmd.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        let log = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
            .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
            .collect::<String>();
        panic!("the browser test failed:\n{text}\n--- server log (tail) ---\n{}", tail(&log, 60));
    }
    assert!(text.contains("every check passed"), "{text}");
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}
