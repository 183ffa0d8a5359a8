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
    std::fs::write(dir.join("data.bin"), bams_testkit::random_bytes(3 << 20, 0x9e37_79b9_7f4a_7c15)).unwrap();
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
    browser_home(&mut cmd, &dir);
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
    eprintln!("{text}");
    assert!(text.contains("every check passed"), "{text}");
}

/// The Images and Machines screens (`tests/ui/images.py`): an image user creates an image,
/// uploads a version from a file field, boots it on a machine; an administrator accepts a
/// machine that registered itself by booting, and freezes an image set.
#[test]
fn the_image_screens_work_in_a_real_browser() {
    for tool in [PYTHON, CHROMIUM] {
        assert!(Path::new(tool).exists(), "{tool} is missing: run scripts/setup-dev.sh");
    }
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().canonicalize().unwrap();
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let server = ServerProcess::start(Path::new(env!("CARGO_BIN_EXE_bams")), &dir, &[]);
    let base = format!("http://127.0.0.1:{}", server.port);
    let admin_pw = std::fs::read_to_string(dir.join("data/initial-admin-password")).unwrap().trim().to_string();
    let admin = server.login("admin", &admin_pw);
    let curl = |method: &str, path: &str, body: &str| {
        let out = Command::new("curl")
            .args(["-sf", "-X", method, &format!("{base}{path}")])
            .args(["-H", "content-type: application/json", "-H", &format!("Authorization: Bearer {admin}")])
            .args(["-d", body])
            .output()
            .unwrap();
        assert!(out.status.success(), "{method} {path}: {}", String::from_utf8_lossy(&out.stdout));
    };
    curl("POST", "/api/v1/users", r#"{"username":"alice","password":"alice-password","role":"user"}"#);
    curl("POST", "/api/v1/machines", r#"{"name":"lab1","macs":["52:54:00:00:00:01"]}"#);
    // A machine that booted once and waits to be accepted.
    let booted = Command::new("curl").args(["-sf", &format!("{base}/boot/52:54:00:00:00:02.ipxe")]).output().unwrap();
    assert!(String::from_utf8_lossy(&booted.stdout).contains("waits"), "{booted:?}");

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui/images.py");
    let mut cmd = Command::new(PYTHON);
    browser_home(&mut cmd, &dir);
    cmd.arg(&script)
        .env("BAMS_URL", &base)
        .env("ADMIN_PASSWORD", &admin_pw)
        .env("USER_PASSWORD", "alice-password")
        .env("WORK", &work);
    if let Some(shots) = std::env::var_os("BAMS_SCREENSHOTS") {
        cmd.env("SCREENSHOTS", shots);
    }
    let out = cmd.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("every check passed"), "the image screens failed:\n{text}");
}

/// Chromium keeps crash reports and caches under the user's home: give it the test's own.
fn browser_home(cmd: &mut Command, dir: &Path) {
    for (var, sub) in [("XDG_CONFIG_HOME", "xdg-config"), ("XDG_CACHE_HOME", "xdg-cache")] {
        let d = dir.join(sub);
        std::fs::create_dir_all(&d).unwrap();
        cmd.env(var, d);
    }
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// A Linux user made for the test and removed with everything it left running.
struct LinuxUser {
    name: String,
}

impl LinuxUser {
    fn create(name: &str, group: &str, password: &str) -> Self {
        let _ = Command::new("userdel").args(["-r", "-f", name]).output();
        assert!(Command::new("groupadd").args(["-f", group]).status().unwrap().success());
        let ok = Command::new("useradd").args(["-m", "-s", "/bin/bash", "-G", group, name]).status().unwrap();
        assert!(ok.success(), "useradd {name}");
        let mut chpasswd = Command::new("chpasswd").stdin(std::process::Stdio::piped()).spawn().unwrap();
        chpasswd.stdin.take().unwrap().write_all(format!("{name}:{password}\n").as_bytes()).unwrap();
        assert!(chpasswd.wait().unwrap().success(), "chpasswd {name}");
        Self { name: name.to_string() }
    }

    fn home(&self) -> std::path::PathBuf {
        Path::new("/home").join(&self.name)
    }
}

impl Drop for LinuxUser {
    fn drop(&mut self) {
        // Each Cockpit login leaves a dbus-daemon and an ssh-agent of the user behind.
        let _ = Command::new("pkill").args(["-KILL", "-u", &self.name]).status();
        std::thread::sleep(std::time::Duration::from_millis(200));
        let _ = Command::new("userdel").args(["-r", "-f", &self.name]).output();
    }
}

/// Copy the plugin (`cockpit/` at the repository root, its symlinks followed) into a user's
/// `~/.local/share/cockpit/bams`, pointed at `socket`.
fn install_plugin(user: &LinuxUser, socket: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../cockpit");
    let dst = user.home().join(".local/share/cockpit/bams");
    std::fs::create_dir_all(&dst).unwrap();
    for name in ["manifest.json", "index.html", "bams.js", "bams.css", "favicon.svg"] {
        let text = std::fs::read_to_string(src.join(name)).unwrap();
        let text = if name == "index.html" {
            let replaced = text.replace("/run/bams/api.sock", &socket.display().to_string());
            assert_ne!(replaced, text, "index.html names the socket in its meta tag");
            replaced
        } else {
            text
        };
        std::fs::write(dst.join(name), text).unwrap();
    }
    let owner = format!("{0}:{0}", user.name);
    assert!(Command::new("chown").args(["-R", &owner]).arg(user.home().join(".local")).status().unwrap().success());
}

/// cockpit-ws on a free port of 127.0.0.1, stopped when dropped.
struct CockpitWs {
    child: std::process::Child,
    port: u16,
}

impl Drop for CockpitWs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_cockpit_plugin_reaches_the_server_over_its_socket_as_the_logged_in_linux_user() {
    const WS: &str = "/usr/lib/cockpit/cockpit-ws";
    for tool in [PYTHON, CHROMIUM, WS] {
        assert!(Path::new(tool).exists(), "{tool} is missing: run scripts/setup-dev.sh");
    }
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().canonicalize().unwrap();
    // Users other than root reach the socket: it lives outside the private temp dir.
    let run_dir = Path::new("/run").join(format!("bams-test-{}", std::process::id()));
    let socket = run_dir.join("api.sock");
    let source = dir.join("source");
    std::fs::create_dir_all(source.join("etc")).unwrap();
    std::fs::write(source.join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
    let socket_env = socket.display().to_string();
    let server = ServerProcess::start(Path::new(env!("CARGO_BIN_EXE_bams")), &dir, &[("BAMS_SOCKET", &socket_env)]);
    let admin_pw = std::fs::read_to_string(dir.join("data/initial-admin-password")).unwrap().trim().to_string();
    let admin = server.login("admin", &admin_pw);
    let job = serde_json::json!({"name": "cockpit-files", "type": "backup", "paths": [source], "repository": 1});
    let created = Command::new("curl")
        .args(["-sf", &format!("http://127.0.0.1:{}/api/v1/jobs", server.port)])
        .args(["-H", "content-type: application/json", "-H", &format!("Authorization: Bearer {admin}")])
        .args(["-d", &job.to_string()])
        .output()
        .unwrap();
    assert!(created.status.success(), "creating the job: {}", String::from_utf8_lossy(&created.stdout));

    let pid = std::process::id();
    let viewer = LinuxUser::create(&format!("bv{pid}"), "bams-viewer", "Viewer-pass-1");
    let operator = LinuxUser::create(&format!("ba{pid}"), "bams-admin", "Admin-pass-1");
    install_plugin(&viewer, &socket);
    install_plugin(&operator, &socket);

    let port = bams_testkit::free_port();
    let child = Command::new(WS)
        .args(["--no-tls", "--port", &port.to_string(), "--address", "127.0.0.1"])
        .stdout(std::fs::File::create(dir.join("cockpit-ws.log")).unwrap())
        .stderr(std::fs::File::create(dir.join("cockpit-ws.err")).unwrap())
        .spawn()
        .unwrap();
    let ws = CockpitWs { child, port };
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", ws.port)).is_err() {
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "cockpit-ws did not start");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui/cockpit.py");
    let mut cmd = Command::new(PYTHON);
    browser_home(&mut cmd, &dir);
    cmd.arg(&script)
        .env("COCKPIT_URL", format!("http://127.0.0.1:{}", ws.port))
        .env("VIEWER_USER", &viewer.name)
        .env("VIEWER_PASSWORD", "Viewer-pass-1")
        .env("ADMIN_USER", &operator.name)
        .env("ADMIN_PASSWORD", "Admin-pass-1")
        .env("JOB", "cockpit-files");
    if let Some(shots) = std::env::var_os("BAMS_SCREENSHOTS") {
        cmd.env("SCREENSHOTS", shots);
    }
    let out = cmd.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    drop(ws);
    drop(server);
    // The server removes its socket when it stops.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let _ = std::fs::remove_dir_all(&run_dir);
    if !out.status.success() {
        let log = std::fs::read_to_string(dir.join("cockpit-ws.err")).unwrap_or_default();
        panic!("the Cockpit test failed:\n{text}\n--- cockpit-ws (tail) ---\n{}", tail(&log, 40));
    }
    eprintln!("{text}");
    assert!(text.contains("every check passed"), "{text}");
}
