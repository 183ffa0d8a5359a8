//! A `bams server` process on a throwaway data directory and a free 127.0.0.1 port, for tests
//! that drive it from outside (fuzzers, browsers). Killed when dropped.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A running server.
pub struct ServerProcess {
    /// The process.
    pub child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerProcess {
    /// Start `bin server` with its data in `dir/data` and no config file (embedded
    /// defaults, `BAMS_*` variables from `env`); waits until it listens.
    pub fn start(bin: &Path, dir: &Path, env: &[(&str, &str)]) -> Self {
        let data = dir.join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(dir.join("none.yaml"), "").unwrap();
        for _ in 0..5 {
            let port = crate::free_port();
            let out = dir.join(format!("server-{port}.out"));
            let child = Command::new(bin)
                .arg("server")
                .current_dir(&data)
                .env("BAMS_CONFIG", dir.join("none.yaml"))
                .env("BAMS_DATA_DIR", &data)
                .env("BAMS_LISTEN", format!("127.0.0.1:{port}"))
                .env("BAMS_BACULA_SD_CONFIG", data.join("bacula-sd.conf"))
                .env("TMPDIR", dir)
                .env_remove("BAMS_PASSWORD")
                .env_remove("BAMS_REPOSITORY")
                .envs(env.iter().copied())
                .stdout(std::fs::File::create(&out).unwrap())
                .stderr(std::fs::File::create(dir.join(format!("server-{port}.log"))).unwrap())
                .spawn()
                .unwrap();
            let mut s = Self { child, port };
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(60) {
                if std::fs::read_to_string(&out).unwrap_or_default().contains("listening on") {
                    return s;
                }
                if let Ok(Some(_)) = s.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = s.child.kill();
        }
        panic!("the server did not start");
    }

    /// Log in with `curl` and return the session token.
    pub fn login(&self, user: &str, password: &str) -> String {
        let out = Command::new("curl")
            .args(["-sf", &format!("http://127.0.0.1:{}/api/v1/auth/login", self.port)])
            .args(["-H", "content-type: application/json"])
            .args(["-d", &serde_json::json!({"username": user, "password": password}).to_string()])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["token"]
            .as_str()
            .unwrap_or_else(|| panic!("login {user}: {}", String::from_utf8_lossy(&out.stdout)))
            .to_string()
    }
}
