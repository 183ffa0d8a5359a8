//! Real components for tests: a throwaway PostgreSQL cluster on a temp dir and a random
//! 127.0.0.1 port (initdb + pg_ctl, as ENVIRONMENT.md measured), and free-port helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod faultproxy;
pub mod server;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `n` bytes of xorshift noise from `seed`: deterministic, and incompressible enough that
/// dedup and compression tests see what they store.
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").local_addr().expect("addr").port()
}

fn pg_bin(tool: &str) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin").join(tool))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found.pop()
}

/// A running PostgreSQL cluster, stopped and deleted on drop.
pub struct PgCluster {
    dir: tempfile::TempDir,
    port: u16,
    pg_ctl: PathBuf,
}

fn as_postgres(tool: &Path) -> Command {
    // initdb refuses to run as root; the Debian package provides the `postgres` user.
    let root = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap_or(false);
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(tool);
        c
    } else {
        Command::new(tool)
    }
}

impl PgCluster {
    /// Start a cluster. Panics with a clear message when PostgreSQL is not installed
    /// (`scripts/setup-dev.sh` installs it), so a missing database never passes silently.
    pub fn start() -> Self {
        let initdb = pg_bin("initdb").expect("PostgreSQL not installed: run scripts/setup-dev.sh");
        let pg_ctl = pg_bin("pg_ctl").expect("pg_ctl");
        let dir = tempfile::Builder::new().prefix("bams-pg-").tempdir().expect("tempdir");
        let _ = Command::new("chown").arg("postgres:postgres").arg(dir.path()).status();
        let data = dir.path().join("data");
        let out = as_postgres(&initdb)
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "bams", "--no-sync", "-E", "UTF8"])
            .output()
            .expect("run initdb");
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        for _ in 0..5 {
            let port = free_port();
            let opts = format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
                dir.path().display()
            );
            let out = as_postgres(&pg_ctl)
                .arg("-D")
                .arg(&data)
                .args(["-o", &opts, "-l"])
                .arg(dir.path().join("log"))
                .args(["-w", "-t", "30", "start"])
                .output()
                .expect("run pg_ctl");
            if out.status.success() {
                let c = Self { dir, port, pg_ctl };
                let created = c.psql("postgres", "CREATE DATABASE bams");
                assert!(created, "CREATE DATABASE failed");
                return c;
            }
        }
        let log = std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
        panic!("PostgreSQL did not start: {log}");
    }

    /// Run one SQL statement with psql; true on success.
    pub fn psql(&self, db: &str, sql: &str) -> bool {
        let psql = pg_bin("psql").unwrap_or_else(|| PathBuf::from("psql"));
        Command::new(psql)
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "bams", "-d", db, "-qc", sql])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// `postgres://` URL of the `bams` database.
    pub fn url(&self) -> String {
        format!("postgres://bams@127.0.0.1:{}/bams", self.port)
    }

    /// A fresh database in this cluster (for tests that must not share state).
    pub fn new_database(&self, name: &str) -> String {
        assert!(self.psql("postgres", &format!("CREATE DATABASE {name}")), "CREATE DATABASE {name}");
        format!("postgres://bams@127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = as_postgres(&self.pg_ctl)
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

/// A real S3-compatible server (moto's server mode) on 127.0.0.1 with one bucket, stopped on
/// drop. `scripts/setup-dev.sh` installs moto into `/opt/bams-venv`.
pub struct S3Server {
    child: std::process::Child,
    port: u16,
}

fn moto_python() -> PathBuf {
    let venv = PathBuf::from("/opt/bams-venv/bin/python3");
    if venv.exists() {
        return venv;
    }
    let ok = Command::new("python3").args(["-c", "import moto.server"]).output().is_ok_and(|o| o.status.success());
    assert!(ok, "moto is not installed: run scripts/setup-dev.sh");
    PathBuf::from("python3")
}

impl S3Server {
    /// Start moto and create `bucket`. A port taken by a parallel test makes moto exit; it is
    /// then started again on another port.
    pub fn start(bucket: &str) -> Self {
        for _ in 0..5 {
            if let Some(s) = Self::try_start(bucket, free_port()) {
                return s;
            }
        }
        panic!("moto did not start in 5 attempts");
    }

    fn try_start(bucket: &str, port: u16) -> Option<Self> {
        use std::io::{Read, Write};
        let child = Command::new(moto_python())
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start moto");
        let mut s = Self { child, port };
        let start = std::time::Instant::now();
        loop {
            if let Ok(Some(_)) = s.child.try_wait() {
                return None;
            }
            if let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                let req = format!("PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                let mut resp = String::new();
                if c.write_all(req.as_bytes()).is_ok()
                    && c.read_to_string(&mut resp).is_ok()
                    && resp.starts_with("HTTP/1.1 200")
                {
                    return Some(s);
                }
            }
            assert!(start.elapsed() < std::time::Duration::from_secs(60), "moto did not start on port {port}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Port moto listens on (tests put a proxy in front of it).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Environment for clients: endpoint, region and (moto's accepted) credentials.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".into(), format!("http://127.0.0.1:{}", self.port)),
            ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "testing".into()),
            ("AWS_REGION".into(), "us-east-1".into()),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real tgtd (Linux SCSI target daemon) on a private management port and an iSCSI portal
/// on 127.0.0.1, stopped on drop. Needs root (ENVIRONMENT.md: tgt runs on these machines).
pub struct TgtDaemon {
    child: std::process::Child,
    control_port: u16,
    portal_port: u16,
}

impl TgtDaemon {
    /// Start tgtd; a port or management socket taken by a parallel test makes tgtd exit, and
    /// it is started again on fresh numbers.
    pub fn start() -> Self {
        for _ in 0..5 {
            // tgtd accepts management ports up to about 16k; the number only names a socket.
            let control = 1000 + free_port() % 15000;
            if let Some(t) = Self::try_start(control, free_port()) {
                return t;
            }
        }
        panic!("tgtd did not start in 5 attempts");
    }

    fn try_start(control_port: u16, portal_port: u16) -> Option<Self> {
        let child = Command::new("tgtd")
            .args(["-f", "-C", &control_port.to_string(), "--iscsi", &format!("portal=127.0.0.1:{portal_port}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start tgtd (run scripts/setup-dev.sh)");
        let mut t = Self { child, control_port, portal_port };
        let start = std::time::Instant::now();
        loop {
            if let Ok(Some(_)) = t.child.try_wait() {
                return None;
            }
            let ready = Command::new("tgtadm")
                .args(["-C", &control_port.to_string(), "--mode", "sys", "--op", "show"])
                .output()
                .is_ok_and(|o| o.status.success())
                && std::net::TcpStream::connect(("127.0.0.1", portal_port)).is_ok();
            if ready {
                return Some(t);
            }
            assert!(start.elapsed() < std::time::Duration::from_secs(30), "tgtd did not become ready");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// tgtd's management port (`tgtadm -C`).
    pub fn control_port(&self) -> u16 {
        self.control_port
    }

    /// The iSCSI portal's port on 127.0.0.1.
    pub fn portal_port(&self) -> u16 {
        self.portal_port
    }
}

impl Drop for TgtDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real SMTP server (aiosmtpd, Debian's python3-aiosmtpd) on 127.0.0.1 that requires
/// STARTTLS with the given certificate and stores what it receives in a Maildir.
pub struct SmtpServer {
    child: std::process::Child,
    port: u16,
    maildir: std::path::PathBuf,
}

impl SmtpServer {
    /// Start it with `cert`/`key` (PEM), delivering into `maildir`.
    pub fn start(cert: &std::path::Path, key: &std::path::Path, maildir: &std::path::Path) -> Self {
        for _ in 0..5 {
            let port = free_port();
            let child = Command::new("/usr/bin/python3")
                .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}"), "-c", "aiosmtpd.handlers.Mailbox"])
                .arg("--tlscert")
                .arg(cert)
                .arg("--tlskey")
                .arg(key)
                .arg(maildir)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("start aiosmtpd (run scripts/setup-dev.sh)");
            let mut s = Self { child, port, maildir: maildir.to_path_buf() };
            let start = std::time::Instant::now();
            while start.elapsed() < std::time::Duration::from_secs(20) {
                if let Ok(Some(_)) = s.child.try_wait() {
                    break; // the port was taken: try another
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return s;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            let _ = s.child.kill();
            let _ = s.child.wait();
        }
        panic!("aiosmtpd did not start in 5 attempts");
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The messages received so far (raw RFC 5322 text).
    pub fn messages(&self) -> Vec<String> {
        std::fs::read_dir(self.maildir.join("new"))
            .map(|d| d.flatten().filter_map(|e| std::fs::read_to_string(e.path()).ok()).collect())
            .unwrap_or_default()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
