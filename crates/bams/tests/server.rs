//! End-to-end tests of `bams server`: a real server process on 127.0.0.1 and a random port,
//! over SQLite and a throwaway PostgreSQL cluster, driven through its REST API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

struct Server {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    catalog: Option<String>,
    extra_env: Vec<(String, String)>,
}

impl Server {
    fn start(catalog: Option<String>) -> Self {
        Self::start_with(catalog, &[])
    }

    fn start_with(catalog: Option<String>, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Self {
            dir,
            port: bams_testkit::free_port(),
            child: None,
            catalog,
            extra_env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        s.spawn();
        s
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_bams"));
        c.args(args)
            .env("BAMS_DATA_DIR", self.data())
            .env("BAMS_LISTEN", format!("127.0.0.1:{}", self.port))
            .env("BAMS_SCHEDULER_INTERVAL_SECS", "0.2")
            .env("BAMS_CONFIG", self.dir.path().join("none.yaml"))
            // Never the machine's own /etc/bacula/bacula-sd.conf.
            .env("BAMS_BACULA_SD_CONFIG", self.dir.path().join("bacula-sd.conf"))
            .env_remove("BAMS_PASSWORD")
            .env_remove("BAMS_REPOSITORY");
        std::fs::write(self.dir.path().join("none.yaml"), "").unwrap();
        if let Some(c2) = &self.catalog {
            c.env("BAMS_CATALOG", c2);
        }
        for (k, v) in &self.extra_env {
            c.env(k, v);
        }
        c
    }

    /// Starts the server and waits until it reports it is listening. If the port was taken
    /// between `free_port` and the server's bind (other tests run in parallel), the server exits
    /// and is started again on a fresh port, so a test never talks to another test's server.
    fn spawn(&mut self) {
        for _attempt in 0..5 {
            let log = std::fs::File::create(self.dir.path().join(format!("server-{}.log", self.port))).unwrap();
            let out_path = self.dir.path().join(format!("server-{}.out", self.port));
            let out = std::fs::File::create(&out_path).unwrap();
            let mut child = self.cmd(&["server"]).stdout(out).stderr(log).spawn().expect("spawn bams server");
            let start = Instant::now();
            loop {
                if std::fs::read_to_string(&out_path).unwrap_or_default().contains("listening on") {
                    self.child = Some(child);
                    return;
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                assert!(start.elapsed() < Duration::from_secs(60), "server did not start: {}", self.log());
                std::thread::sleep(Duration::from_millis(50));
            }
            let log = self.log();
            assert!(log.contains("in use"), "server exited at start: {log}");
            self.port = bams_testkit::free_port();
        }
        panic!("server could not bind a free port in 5 attempts");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("server-{}.log", self.port))).unwrap_or_default()
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn admin_password(&self) -> String {
        std::fs::read_to_string(self.data().join("initial-admin-password")).unwrap().trim().to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A client holding one bearer token.
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    /// As an admin: create a user and return their logged-in session.
    async fn add_user(&self, s: &Server, name: &str, password: &str, role: &str) -> Api {
        self.ok(Method::POST, "/api/v1/users", Some(json!({"username": name, "password": password, "role": role})))
            .await;
        Api::login(s, name, password).await
    }

    fn anon(s: &Server) -> Self {
        Self { http: reqwest::Client::new(), base: s.url(""), token: None }
    }

    async fn login(s: &Server, user: &str, password: &str) -> Self {
        let mut a = Self::anon(s);
        let (st, body) =
            a.call(Method::POST, "/api/v1/auth/login", Some(json!({"username": user, "password": password}))).await;
        assert_eq!(st, StatusCode::OK, "login {user}: {body}");
        a.token = Some(body["token"].as_str().unwrap().to_string());
        a
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("request");
        let st = resp.status();
        let text = resp.text().await.unwrap_or_default();
        (st, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// A request whose answer is bytes, not JSON (file downloads).
    async fn raw(&self, method: Method, path: &str) -> (StatusCode, Vec<u8>) {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        let resp = r.send().await.expect("request");
        (resp.status(), resp.bytes().await.unwrap_or_default().to_vec())
    }

    async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let (st, v) = self.call(method.clone(), path, body).await;
        assert!(st.is_success(), "{method} {path}: {st} {v}");
        v
    }

    /// Run job `id` now (with `body`, e.g. a level override) and wait for the run to end.
    async fn run_job(&self, id: i64, body: Option<Value>) -> Value {
        let run = self.ok(Method::POST, &format!("/api/v1/jobs/{id}/run"), body).await;
        self.wait_run(run["run_id"].as_i64().unwrap()).await
    }

    async fn wait_run(&self, id: i64) -> Value {
        let start = Instant::now();
        loop {
            let r = self.ok(Method::GET, &format!("/api/v1/runs/{id}"), None).await;
            if !matches!(r["status"].as_str(), Some("queued" | "running")) {
                return r;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "run {id} did not finish: {r}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn assert_error(st: StatusCode, body: &Value, want: StatusCode, what: &str) {
    assert_eq!(st, want, "{what}: {body}");
    assert!(
        body["error"]["code"].is_string() && body["error"]["message"].is_string(),
        "{what}: not a JSON error: {body}"
    );
}

fn write_tree(root: &Path) {
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("a.txt"), b"alpha").unwrap();
    std::fs::write(root.join("sub/b.bin"), (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect::<Vec<_>>()).unwrap();
}

/// The whole API against one server.
async fn scenario(s: &Server) {
    let anon = Api::anon(s);
    let (st, body) = anon.call(Method::GET, "/api/v1/jobs", None).await;
    assert_error(st, &body, StatusCode::UNAUTHORIZED, "no auth");
    assert_eq!(anon.call(Method::GET, "/healthz", None).await.0, StatusCode::OK);
    let (st, body) = anon
        .call(Method::POST, "/api/v1/auth/login", Some(json!({"username": "admin", "password": "nope-nope"})))
        .await;
    assert_error(st, &body, StatusCode::UNAUTHORIZED, "wrong password");
    let admin = Api::login(s, "admin", &s.admin_password()).await;
    let me = admin.ok(Method::GET, "/api/v1/auth/me", None).await;
    assert_eq!(me["role"], "admin");

    // Cookie sessions need the CSRF token on mutations.
    let jar = reqwest::Client::builder().cookie_store(true).build().unwrap();
    let login = jar
        .post(s.url("/api/v1/auth/login"))
        .json(&json!({"username": "admin", "password": s.admin_password()}))
        .send()
        .await
        .unwrap();
    let csrf = login.json::<Value>().await.unwrap()["csrf_token"].as_str().unwrap().to_string();
    assert_eq!(jar.get(s.url("/api/v1/users")).send().await.unwrap().status(), StatusCode::OK, "cookie read");
    let body = json!({"username": "viewer1", "password": "viewer-password", "role": "viewer"});
    let no_csrf = jar.post(s.url("/api/v1/users")).json(&body).send().await.unwrap();
    assert_eq!(no_csrf.status(), StatusCode::FORBIDDEN);
    let with = jar.post(s.url("/api/v1/users")).header("x-csrf-token", &csrf).json(&body).send().await.unwrap();
    assert_eq!(with.status(), StatusCode::CREATED);

    // Users, roles, tokens.
    let op = admin.add_user(s, "op", "operator-pw", "operator").await;
    let viewer = Api::login(s, "viewer1", "viewer-password").await;
    let (st, body) = viewer.call(Method::POST, "/api/v1/jobs/1/run", None).await;
    assert_error(st, &body, StatusCode::FORBIDDEN, "viewer runs a job");
    let tok = op.ok(Method::POST, "/api/v1/tokens", Some(json!({"name": "ci", "expires_in_days": 1}))).await;
    let secret = tok["secret"].as_str().unwrap().to_string();
    let by_token = Api { token: Some(secret), ..anon.clone() };
    assert_eq!(by_token.ok(Method::GET, "/api/v1/auth/me", None).await["username"], "op");
    op.ok(Method::DELETE, &format!("/api/v1/tokens/{}", tok["id"]), None).await;
    assert_eq!(by_token.call(Method::GET, "/api/v1/auth/me", None).await.0, StatusCode::UNAUTHORIZED, "revoked");
    let listed = admin.ok(Method::GET, "/api/v1/tokens", None).await;
    assert!(listed.as_array().unwrap().iter().all(|t| t.get("secret").is_none()), "secrets are never listed");

    // A backup job run now, its snapshot browsed, downloaded, diffed and restored.
    let src = s.dir.path().join("src");
    write_tree(&src);
    let repo = admin.ok(Method::GET, "/api/v1/repositories", None).await[0]["id"].as_i64().unwrap();
    let job = admin
        .ok(
            Method::POST,
            "/api/v1/jobs",
            Some(json!({"name": "src", "type": "backup", "paths": [src], "repository": repo, "retention": {"keep_last": 5}})),
        )
        .await;
    let jid = job["id"].as_i64().unwrap();
    let run = op.ok(Method::POST, &format!("/api/v1/jobs/{jid}/run"), Some(json!({"level": "full"}))).await;
    let r1 = op.wait_run(run["run_id"].as_i64().unwrap()).await;
    assert_eq!(r1["status"], "succeeded", "{r1}");
    assert_eq!(r1["level"], "full");
    std::fs::write(src.join("c.txt"), b"new file").unwrap();
    let run = op.ok(Method::POST, &format!("/api/v1/jobs/{jid}/run"), None).await;
    let r2 = op.wait_run(run["run_id"].as_i64().unwrap()).await;
    assert_eq!((r2["status"].as_str(), r2["level"].as_str()), (Some("succeeded"), Some("incremental")), "{r2}");
    let log = op.ok(Method::GET, &format!("/api/v1/runs/{}/log", r2["id"]), None).await;
    assert!(log["log"].as_str().unwrap().contains("incremental based on snapshot"), "{log}");
    let snaps = viewer.ok(Method::GET, &format!("/api/v1/snapshots?repository={repo}"), None).await;
    assert_eq!(snaps["items"].as_array().unwrap().len(), 2);
    let (s1, s2) = (r1["snapshot_id"].as_str().unwrap(), r2["snapshot_id"].as_str().unwrap());
    let srcs = src.display().to_string();
    // Contents need Datastore.Read: the operator has it, the viewer does not.
    let tree = op.ok(Method::GET, &format!("/api/v1/snapshots/{s2}/tree?path={srcs}"), None).await;
    let names: Vec<&str> = tree.as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap()).collect();
    assert!(names.iter().any(|n| n.ends_with("/c.txt")) && names.iter().any(|n| n.ends_with("/sub")), "{names:?}");
    let file = op
        .http
        .get(s.url(&format!("/api/v1/snapshots/{s2}/file?path={srcs}/sub/b.bin")))
        .bearer_auth(op.token.as_ref().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(file.status(), StatusCode::OK);
    assert!(file.bytes().await.unwrap().as_ref() == std::fs::read(src.join("sub/b.bin")).unwrap().as_slice());
    let diff = op.ok(Method::GET, &format!("/api/v1/snapshots/diff?from={s1}&to={s2}"), None).await;
    assert!(
        diff.as_array().unwrap().iter().any(|c| c["change"] == "+" && c["path"].as_str().unwrap().ends_with("c.txt")),
        "{diff}"
    );
    let target = s.data().join("restores/r1");
    let restored = op
        .ok(
            Method::POST,
            &format!("/api/v1/snapshots/{s2}/restore"),
            Some(json!({"path": srcs, "target": target, "verify": true})),
        )
        .await;
    assert_eq!(restored["errors"].as_array().unwrap().len(), 0, "{restored}");
    // A subtree restores its contents directly into the target.
    assert_eq!(std::fs::read(target.join("c.txt")).unwrap(), b"new file");
    assert_eq!(std::fs::read(target.join("sub/b.bin")).unwrap(), std::fs::read(src.join("sub/b.bin")).unwrap());

    // Bad input: JSON errors, nothing changed.
    let jobs_before = admin.ok(Method::GET, "/api/v1/jobs", None).await;
    for (path, body, want) in [
        (
            "/api/v1/jobs",
            json!({"name": "x", "type": "backup", "paths": ["/etc"], "repository": 999}),
            StatusCode::NOT_FOUND,
        ),
        (
            "/api/v1/jobs",
            json!({"name": "x", "type": "backup", "paths": ["etc/../.."], "repository": repo}),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/v1/jobs",
            json!({"name": "x", "type": "backup", "paths": "/etc", "repository": repo}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/api/v1/jobs",
            json!({"name": "x", "type": "backup", "paths": ["/etc"], "repository": repo, "bogus": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/api/v1/jobs",
            json!({"name": "x", "type": "backup", "paths": ["/etc"], "repository": repo, "schedule": "99 * * * *"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/v1/jobs",
            json!({"name": "src", "type": "backup", "paths": ["/etc"], "repository": repo}),
            StatusCode::CONFLICT,
        ),
    ] {
        let (st, b) = admin.call(Method::POST, path, Some(body.clone())).await;
        assert_error(st, &b, want, &body.to_string());
    }
    let raw = admin
        .http
        .post(s.url("/api/v1/jobs"))
        .bearer_auth(admin.token.as_ref().unwrap())
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), StatusCode::BAD_REQUEST);
    let big = admin
        .http
        .post(s.url("/api/v1/jobs"))
        .bearer_auth(admin.token.as_ref().unwrap())
        .header("content-type", "application/json")
        .body(format!("{{\"name\": \"{}\"}}", "x".repeat(3 << 20)))
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let (st, b) = admin.call(Method::GET, "/api/v1/jobs/abc", None).await;
    assert_error(st, &b, StatusCode::BAD_REQUEST, "non-numeric id");
    let (st, b) = admin.call(Method::GET, "/api/v1/jobs/424242", None).await;
    assert_error(st, &b, StatusCode::NOT_FOUND, "unknown id");
    let (st, b) =
        op.call(Method::POST, &format!("/api/v1/snapshots/{s2}/restore"), Some(json!({"target": "/etc/evil"}))).await;
    assert_error(st, &b, StatusCode::FORBIDDEN, "restore outside the roots");
    let outside = format!("{}/restores/../../escape", s.data().display());
    let (st, b) =
        op.call(Method::POST, &format!("/api/v1/snapshots/{s2}/restore"), Some(json!({"target": outside}))).await;
    assert_error(st, &b, StatusCode::BAD_REQUEST, "restore target with ..");
    let (st, b) = op.call(Method::GET, &format!("/api/v1/snapshots/{s2}/tree?path=/../../etc"), None).await;
    assert_error(st, &b, StatusCode::BAD_REQUEST, "browse traversal");
    let (st, b) = op.call(Method::GET, "/api/v1/snapshots/zz%2F..%2Fetc/tree", None).await;
    assert_error(st, &b, StatusCode::BAD_REQUEST, "bad snapshot id");
    assert_eq!(admin.ok(Method::GET, "/api/v1/jobs", None).await, jobs_before, "bad input changed nothing");
    assert!(!Path::new(&format!("{}/escape", s.dir.path().display())).exists());

    // A schedule fires on its own (6-field cron: every second).
    let sched = admin.ok(Method::POST, "/api/v1/schedules", Some(json!({"job": jid, "cron": "* * * * * *"}))).await;
    let start = Instant::now();
    loop {
        let runs = viewer.ok(Method::GET, &format!("/api/v1/runs?job={jid}&limit=50"), None).await;
        if runs["items"].as_array().unwrap().iter().any(|r| r["triggered_by"] == "schedule") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "schedule never fired: {runs}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    admin.ok(Method::DELETE, &format!("/api/v1/schedules/{}", sched["id"]), None).await;
    // What the schedule queued before it went ends first.
    let runs = viewer.ok(Method::GET, &format!("/api/v1/runs?job={jid}&limit=50"), None).await;
    for r in runs["items"].as_array().unwrap() {
        viewer.wait_run(r["id"].as_i64().unwrap()).await;
    }
    // Retention runs after each backup: keep_last 1 leaves one snapshot of this job.
    let spec =
        json!({"name": "src", "type": "backup", "paths": [src], "repository": repo, "retention": {"keep_last": 1}});
    admin.ok(Method::PUT, &format!("/api/v1/jobs/{jid}"), Some(spec)).await;
    let last = op.ok(Method::POST, &format!("/api/v1/jobs/{jid}/run"), None).await;
    let last = op.wait_run(last["run_id"].as_i64().unwrap()).await;
    assert_eq!(last["status"], "succeeded", "{last}");
    let start = Instant::now();
    loop {
        let snaps = viewer.ok(Method::GET, &format!("/api/v1/snapshots?repository={repo}"), None).await;
        let items = snaps["items"].as_array().unwrap();
        if items.len() == 1 {
            assert_eq!(items[0]["id"], last["snapshot_id"]);
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "retention did not apply: {snaps}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (st, b) = op.call(Method::POST, &format!("/api/v1/runs/{}/cancel", r1["id"]), None).await;
    assert_error(st, &b, StatusCode::CONFLICT, "cancel a finished run");

    // Audit, dashboard, metrics.
    let audit = admin.ok(Method::GET, "/api/v1/audit?user=op&limit=500", None).await;
    let items = audit["items"].as_array().unwrap();
    assert!(
        items
            .iter()
            .any(|e| e["route"] == "/api/v1/jobs/{id}/run" && e["result"] == "ok" && e["remote_addr"] == "127.0.0.1"),
        "{audit}"
    );
    let denied = admin.ok(Method::GET, "/api/v1/audit?result=denied", None).await;
    assert!(!denied["items"].as_array().unwrap().is_empty(), "denied requests are audited");
    let (st, b) = op.call(Method::GET, "/api/v1/audit", None).await;
    assert_error(st, &b, StatusCode::FORBIDDEN, "operator reads audit");
    let dash = viewer.ok(Method::GET, "/api/v1/dashboard", None).await;
    assert!(dash["successes_24h"].as_i64().unwrap() >= 2 && dash["jobs"] == 1, "{dash}");
    let metrics = viewer
        .http
        .get(s.url("/metrics"))
        .bearer_auth(viewer.token.as_ref().unwrap())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for m in [
        "bams_http_request_duration_seconds_bucket",
        "bams_runs_total",
        "bams_run_duration_seconds",
        "bams_repository_stored_bytes",
    ] {
        assert!(metrics.contains(m), "metrics lack {m}");
    }
    // The packaged Grafana dashboard asks only for series this server exports.
    let dashboard = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/grafana/bams-dashboard.json"),
    )
    .unwrap();
    let dashboard: Value = serde_json::from_str(&dashboard).unwrap();
    let mut asked = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for (i, _) in expr.match_indices("bams_") {
                let name: String = expr[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                asked.push(name);
            }
        }
    }
    assert!(asked.len() >= 10, "{asked:?}");
    for name in asked {
        let exported =
            metrics.lines().any(|l| !l.starts_with('#') && l.split(['{', ' ']).next() == Some(name.as_str()));
        assert!(exported, "the Grafana dashboard asks for {name}, which /metrics does not export");
    }

    // Login guessing is braked.
    let mut last = StatusCode::OK;
    for _ in 0..7 {
        last = anon
            .call(Method::POST, "/api/v1/auth/login", Some(json!({"username": "op", "password": "guess-guess"})))
            .await
            .0;
    }
    assert_eq!(last, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_end_to_end_on_sqlite() {
    let s = Server::start(None);
    scenario(&s).await;
    // Offline user management against the same catalog.
    let out = s
        .cmd(&["user", "add", "cli-user", "--role", "operator"])
        .env("BAMS_USER_PASSWORD", "cli-password")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    Api::login(&s, "cli-user", "cli-password").await;
    let out =
        s.cmd(&["user", "add", "bad", "--role", "root"]).env("BAMS_USER_PASSWORD", "cli-password").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let out = s.cmd(&["--json", "user", "list"]).output().unwrap();
    let users: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(users.as_array().unwrap().iter().any(|u| u["username"] == "cli-user"));
    let out = s.cmd(&["--json", "catalog", "rebuild"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let before = report[0]["snapshots"].as_u64().unwrap();
    assert!(before >= 1, "{report}");

    // The repository is the source of truth: a lost catalog comes back from it.
    let mut s = s;
    s.kill9();
    for f in ["catalog.db", "catalog.db-wal", "catalog.db-shm", "initial-admin-password"] {
        let _ = std::fs::remove_file(s.data().join(f));
    }
    s.spawn();
    let admin = Api::login(&s, "admin", &s.admin_password()).await;
    let page = admin.ok(Method::GET, "/api/v1/snapshots?limit=1000", None).await;
    assert_eq!(page["items"].as_array().unwrap().len() as u64, before, "{page}");
}

/// A test CA and a certificate for 127.0.0.1/localhost signed by it, made with openssl in
/// `d`: (cert, key, ca).
fn test_certificates(d: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (cert, key, ca) = (d.join("cert.pem"), d.join("key.pem"), d.join("ca.pem"));
    std::fs::write(d.join("ext.cnf"), "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n")
        .unwrap();
    let steps: [Vec<&str>; 3] = [
        vec![
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=bams test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
        vec![
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "key.pem",
            "-out",
            "req.csr",
        ],
        vec![
            "x509",
            "-req",
            "-in",
            "req.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
            "-out",
            "cert.pem",
        ],
    ];
    for args in steps {
        let out = Command::new("openssl")
            .args(&args)
            .current_dir(d)
            .output()
            .expect("openssl (scripts/setup-dev.sh installs it)");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    (cert, key, ca)
}

/// A server on HTTPS with a certificate of a private CA made in `d`, and a client trusting
/// that CA: (server, client, base URL, CA file).
fn tls_server(d: &Path) -> (Server, reqwest::Client, String, PathBuf) {
    let (cert, key, ca) = test_certificates(d);
    let s =
        Server::start_with(None, &[("BAMS_TLS_CERT", cert.to_str().unwrap()), ("BAMS_TLS_KEY", key.to_str().unwrap())]);
    let pem = std::fs::read(&ca).unwrap();
    let http =
        reqwest::Client::builder().add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap()).build().unwrap();
    let base = format!("https://127.0.0.1:{}", s.port);
    (s, http, base, ca)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_the_api_and_remote_clients() {
    let dir = tempfile::tempdir().unwrap();
    let (s, http, base, ca) = tls_server(dir.path());
    let health = http.get(format!("{base}/healthz")).send().await.expect("https request");
    assert_eq!(health.status(), StatusCode::OK);
    // ALPN picks HTTP/2 over TLS (agents and remote clients use the same reqwest client).
    assert_eq!(health.version(), reqwest::Version::HTTP_2);
    assert!(
        reqwest::get(format!("http://127.0.0.1:{}/healthz", s.port)).await.map_or(true, |r| !r.status().is_success()),
        "plain HTTP must not be served"
    );
    let api = Api { http: http.clone(), base: base.clone(), token: None };
    let (st, body) = api
        .call(Method::POST, "/api/v1/auth/login", Some(json!({"username": "admin", "password": s.admin_password()})))
        .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let admin = Api { token: Some(body["token"].as_str().unwrap().to_string()), ..api };
    admin
        .ok(
            Method::POST,
            "/api/v1/repositories",
            Some(json!({"name": "remote", "url": s.data().join("r"), "password": "remote-pass"})),
        )
        .await;
    let token = admin.ok(Method::POST, "/api/v1/tokens", Some(json!({"name": "tls", "scope": "append-only"}))).await
        ["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let src = s.dir.path().join("src");
    write_tree(&src);
    let out = Command::new(env!("CARGO_BIN_EXE_bams"))
        .arg("-r")
        .arg(format!("bams://127.0.0.1:{}/remote", s.port))
        .args(["backup", src.to_str().unwrap()])
        .env("BAMS_TOKEN", &token)
        .env("BAMS_PASSWORD", "remote-pass")
        .env("BAMS_SERVER_CA", &ca)
        .output()
        .unwrap();
    assert!(out.status.success(), "backup over HTTPS: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_end_to_end_on_postgres() {
    let pg = bams_testkit::PgCluster::start();
    let s = Server::start(Some(pg.url()));
    scenario(&s).await;
    // The health report reads PostgreSQL's clock and this catalog's runs.
    let admin = Api::login(&s, "admin", &s.admin_password()).await;
    let report = admin.ok(Method::GET, "/api/v1/system", None).await;
    let checks = report["checks"].as_array().unwrap();
    let clock = checks.iter().find(|c| c["name"] == "clock").unwrap_or_else(|| panic!("{report}"));
    assert_eq!(clock["status"], "ok", "{report}");
    assert!(clock["detail"].as_str().unwrap().contains(" ms from this machine's"), "{report}");
    let catalog = checks.iter().find(|c| c["name"] == "catalog").unwrap();
    assert_eq!(catalog["status"], "ok", "{report}");
    assert!(checks.iter().any(|c| c["name"] == "checks"), "{report}");
    let out = s.cmd(&["doctor", "--json"]).output().unwrap();
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{out:?}"));
    assert!(cli["checks"].as_array().unwrap().iter().any(|c| c["name"] == "clock" && c["status"] == "ok"), "{cli}");
}

/// Minimum role per documented operation, mirrored from the policy the issue asks for.
/// What the policy table says a request by `role` (`None` = no credentials) gets on a route
/// whose placeholders name nothing that exists (or, for `SelfOr`, another user's object):
/// `Some(true)` allowed (anything but 401/403), `Some(false)` refused (403; 401 without
/// credentials), `None` public.
fn expected(rule: &bams_server::policy::Rule, role: Option<&str>) -> Option<bool> {
    use bams_server::policy::{role_privs, On};
    let privs = role.map(|r| role_privs(r).expect("known role"));
    match (rule.on, privs) {
        (On::Public, _) => None,
        (_, None) => Some(false),
        (On::Agent, Some(_)) => Some(false), // agent credentials only
        (On::Own, Some(_)) => Some(true),
        (On::SelfOr(_) | On::Path(_) | On::Repository | On::Pool | On::Image, Some(p)) => Some(p.any_of(rule.privs)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_follows_the_policy_table_on_every_route() {
    use bams_server::policy::POLICY;
    let s = Server::start(None);
    let admin = Api::login(&s, "admin", &s.admin_password()).await;
    for (u, r) in [("op", "operator"), ("view", "viewer"), ("lab", "user")] {
        admin
            .ok(Method::POST, "/api/v1/users", Some(json!({"username": u, "password": "long-password", "role": r})))
            .await;
    }
    let doc = admin.ok(Method::GET, "/api/v1/openapi.json", None).await;
    let paths = doc["paths"].as_object().expect("paths");
    // Every `.route(` literal in the server's source is documented or deliberately outside the API.
    let src_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bams-server/src");
    let mut sources = String::new();
    for e in walk(&src_dir) {
        // Unit tests below `#[cfg(test)]` may route throwaway handlers; only product code counts.
        let text = std::fs::read_to_string(e).unwrap();
        sources += text.split("#[cfg(test)]").next().unwrap_or_default();
    }
    // Outside the API document: health, metrics, the document itself, and the web UI's pages.
    let mut undocumented = vec!["/healthz", "/metrics", "/api/v1/openapi.json"];
    undocumented.extend_from_slice(bams_server::ui::ROUTES);
    for lit in sources.split(".route(\"").skip(1).filter_map(|r| r.split('"').next()) {
        assert!(
            paths.contains_key(lit) || undocumented.contains(&lit),
            "route {lit} is missing from the OpenAPI document"
        );
    }
    // (a) Every served operation has exactly one rule, and every rule an operation.
    let mut served: Vec<(String, String)> = undocumented.iter().map(|p| ("GET".to_string(), p.to_string())).collect();
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            served.push((method.to_uppercase(), path.clone()));
        }
    }
    for (m, p) in &served {
        let n = POLICY.iter().filter(|r| r.method == m && r.route == p).count();
        assert_eq!(n, 1, "{m} {p} has {n} rules in the policy table");
    }
    for r in POLICY {
        assert!(
            served.iter().any(|(m, p)| m == r.method && p == r.route),
            "rule for {} {} matches no route",
            r.method,
            r.route
        );
    }
    // (b) Real requests as each role get exactly what the rule says.
    let spare = admin.ok(Method::POST, "/api/v1/tokens", Some(json!({"name": "spare"}))).await;
    let admin_id = admin.ok(Method::GET, "/api/v1/auth/me", None).await["id"].as_i64().unwrap();
    let roles = [
        ("admin", admin.clone()),
        ("operator", Api::login(&s, "op", "long-password").await),
        ("viewer", Api::login(&s, "view", "long-password").await),
        ("user", Api::login(&s, "lab", "long-password").await),
    ];
    let anon = Api::anon(&s);
    let mut checked = 0;
    for rule in POLICY {
        let m = Method::from_bytes(rule.method.as_bytes()).unwrap();
        // Placeholders name nothing that exists, except where the rule is about another
        // user's object: then it is the admin's own (so only the admin may touch it).
        let concrete = match rule.route {
            "/api/v1/users/{id}" => rule.route.replace("{id}", &admin_id.to_string()),
            "/api/v1/tokens/{id}" => rule.route.replace("{id}", &spare["id"].to_string()),
            r => r.replace("{id}", "987654").replace("{name}", "no-such-repo"),
        };
        let body = if m == Method::GET || m == Method::DELETE || m == Method::HEAD { None } else { Some(json!({})) };
        let (st, b) = anon.call(m.clone(), &concrete, body.clone()).await;
        assert_ne!(st, StatusCode::METHOD_NOT_ALLOWED, "{} {} not routed", rule.method, rule.route);
        match expected(rule, None) {
            None => continue,
            Some(_) => assert_eq!(st, StatusCode::UNAUTHORIZED, "{} {} without auth: {b}", rule.method, rule.route),
        }
        if rule.route == "/api/v1/auth/logout" {
            continue; // would end the session used for the rest of the matrix
        }
        for (role, api) in &roles {
            let (st, b) = api.call(m.clone(), &concrete, body.clone()).await;
            if expected(rule, Some(role)) == Some(true) {
                assert!(
                    st != StatusCode::FORBIDDEN && st != StatusCode::UNAUTHORIZED,
                    "{role} {} {}: {st} {b}",
                    rule.method,
                    rule.route
                );
            } else {
                assert_eq!(st, StatusCode::FORBIDDEN, "{role} {} {}: {b}", rule.method, rule.route);
            }
            checked += 1;
        }
    }
    assert!(checked >= 300, "the matrix covered only {checked} requests");
}

/// A client that trickles its headers or stalls its body is cut off, not waited on forever;
/// refusals are counted in /metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_refusals_are_counted() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = Server::start_with(None, &[("BAMS_HEADER_TIMEOUT_SECS", "1"), ("BAMS_BODY_IDLE_TIMEOUT_SECS", "1")]);
    let admin = Api::login(&s, "admin", &s.admin_password()).await;
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", s.port)).await.unwrap();
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "a connection trickling its headers was kept open");
    assert!(buf.is_empty() || String::from_utf8_lossy(&buf).contains("408"), "{}", String::from_utf8_lossy(&buf));
    // A body that stalls half-way.
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", s.port)).await.unwrap();
    let head = format!(
        "POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"name\":",
        admin.token.as_ref().unwrap()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf)).await.expect("answered").unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(answer.starts_with("HTTP/1.1 4"), "{answer}");
    // Refusals show in the metrics.
    let anon = Api::anon(&s);
    assert_eq!(anon.call(Method::GET, "/api/v1/jobs", None).await.0, StatusCode::UNAUTHORIZED);
    let metrics = admin.http.get(s.url("/metrics")).bearer_auth(admin.token.as_ref().unwrap()).send().await.unwrap();
    let text = metrics.text().await.unwrap();
    assert!(text.contains("bams_http_rejected_total{reason=\"unauthorized\""), "{text}");
    // Its log, written to a file, carries no terminal colour codes.
    let log = s.log();
    assert!(log.contains("INFO") && !log.contains('\u{1b}'), "escape codes in a log file: {log:?}");
}

/// `bams server --log-format json` writes one JSON object a line (for log shippers).
#[test]
fn the_server_logs_json_lines_on_request() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("none.yaml"), "").unwrap();
    let port = bams_testkit::free_port();
    let err = dir.path().join("stderr");
    let out = dir.path().join("stdout");
    let mut child = Command::new(env!("CARGO_BIN_EXE_bams"))
        .args(["server", "--log-format", "json", "--config"])
        .arg(dir.path().join("none.yaml"))
        .env("BAMS_DATA_DIR", dir.path().join("data"))
        .env("BAMS_LISTEN", format!("127.0.0.1:{port}"))
        .env("BAMS_BACULA_SD_CONFIG", dir.path().join("bacula-sd.conf"))
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !std::fs::read_to_string(&out).unwrap_or_default().contains("listening on") {
        assert!(
            start.elapsed() < Duration::from_secs(60) && child.try_wait().unwrap().is_none(),
            "server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&err).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "no log lines");
    for l in lines {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{l}");
    }
}

/// Password guessing slows the guesser down without locking the account; changing one's own
/// password needs the current one and ends the other sessions; the audit log names what each
/// request changed (never the values); expired sessions and old audit rows are purged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_resist_guessing_and_takeover_and_the_audit_names_objects() {
    let mut s = Server::start(None);
    let admin = Api::login(&s, "admin", &s.admin_password()).await;
    // A guesser at 127.0.0.1 hammers "admin" until delays start...
    let anon = Api::anon(&s);
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let body = json!({"username": "admin", "password": "wrong-guess"});
        statuses.push(anon.call(Method::POST, "/api/v1/auth/login", Some(body)).await.0);
    }
    assert_eq!(statuses[0], StatusCode::UNAUTHORIZED);
    assert_eq!(*statuses.last().unwrap(), StatusCode::TOO_MANY_REQUESTS, "{statuses:?}");
    // ...while the real admin, from another address, logs in at once.
    let elsewhere =
        reqwest::Client::builder().local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap()).build().unwrap();
    let r = elsewhere
        .post(s.url("/api/v1/auth/login"))
        .json(&json!({"username": "admin", "password": s.admin_password()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "the account is not locked for others");

    // Own password: the current one is required, and other sessions end.
    let op = admin.add_user(&s, "op", "operator-pw-1", "operator").await;
    let op2 = Api::login(&s, "op", "operator-pw-1").await;
    let op_id = op.ok(Method::GET, "/api/v1/auth/me", None).await["id"].as_i64().unwrap();
    let me = format!("/api/v1/users/{op_id}");
    let (st, b) = op.call(Method::PATCH, &me, Some(json!({"password": "operator-pw-2"}))).await;
    assert_error(st, &b, StatusCode::FORBIDDEN, "no current password");
    let (st, b) =
        op.call(Method::PATCH, &me, Some(json!({"password": "operator-pw-2", "current_password": "nope-nope"}))).await;
    assert_error(st, &b, StatusCode::FORBIDDEN, "wrong current password");
    op.ok(Method::PATCH, &me, Some(json!({"password": "operator-pw-2", "current_password": "operator-pw-1"}))).await;
    op.ok(Method::GET, "/api/v1/auth/me", None).await;
    assert_eq!(op2.call(Method::GET, "/api/v1/auth/me", None).await.0, StatusCode::UNAUTHORIZED, "other session ended");
    Api::login(&s, "op", "operator-pw-2").await;
    // An admin resets someone else's password without theirs; all their sessions end.
    admin.ok(Method::PATCH, &me, Some(json!({"password": "operator-pw-3"}))).await;
    assert_eq!(op.call(Method::GET, "/api/v1/auth/me", None).await.0, StatusCode::UNAUTHORIZED);

    // An optional TOTP second factor: set up, confirmed, then required; a code works once.
    let op = Api::login(&s, "op", "operator-pw-3").await;
    let setup = op.ok(Method::POST, "/api/v1/auth/totp", None).await;
    let secret = setup["secret"].as_str().unwrap().to_string();
    assert!(setup["otpauth_url"].as_str().unwrap().starts_with("otpauth://totp/BAMS:op?secret="), "{setup}");
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let (st, b) = op.call(Method::POST, "/api/v1/auth/totp/confirm", Some(json!({"code": "000000"}))).await;
    if st != StatusCode::NO_CONTENT {
        assert_error(st, &b, StatusCode::BAD_REQUEST, "wrong confirmation code");
        let code = bams_server::totp::code_at(&secret, now()).unwrap();
        op.ok(Method::POST, "/api/v1/auth/totp/confirm", Some(json!({"code": code}))).await;
    }
    assert_eq!(op.ok(Method::GET, "/api/v1/auth/me", None).await["totp"], true);
    let try_login = |totp: Option<String>| {
        let anon = Api::anon(&s);
        async move {
            let mut body = json!({"username": "op", "password": "operator-pw-3"});
            if let Some(t) = totp {
                body["totp"] = json!(t);
            }
            anon.call(Method::POST, "/api/v1/auth/login", Some(body)).await
        }
    };
    let (st, b) = try_login(None).await;
    assert_eq!((st, b["error"]["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("totp_required")), "{b}");
    let next = bams_server::totp::code_at(&secret, now() + 30).unwrap();
    let (st, b) = try_login(Some(next.clone())).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    let (st, b) = try_login(Some(next)).await;
    assert_eq!((st, b["error"]["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("totp_invalid")), "replayed code");
    admin.ok(Method::PATCH, &me, Some(json!({"totp": false}))).await;
    assert_eq!(try_login(None).await.0, StatusCode::OK, "an admin turned the lost factor off");

    // The audit log names the objects and the fields, never the secrets.
    let job = admin
        .ok(Method::POST, "/api/v1/jobs", Some(json!({"name": "audited", "type": "check", "repository": 1})))
        .await;
    let entries = audited(&admin, "/api/v1/users/{id}").await;
    let patch = entries
        .iter()
        .find(|e| e["method"] == "PATCH" && e["result"] == "ok" && e["object"]["changes"] == json!(["password"]))
        .unwrap();
    assert_eq!(patch["object"]["type"], "user");
    assert_eq!(patch["object"]["id"], op_id.to_string());
    assert_eq!(patch["object"]["name"], "op");
    assert_eq!(patch["object"]["changes"], json!(["password"]));
    let created = audited(&admin, "/api/v1/users").await;
    let created = created.iter().find(|e| e["method"] == "POST").unwrap();
    assert_eq!((created["object"]["name"].as_str(), created["object"]["type"].as_str()), (Some("op"), Some("user")));
    assert_eq!(created["object"]["changes"], json!(["password", "role", "username"]));
    let jobs = audited(&admin, "/api/v1/jobs").await;
    assert_eq!(jobs[0]["object"]["id"], job["id"].to_string());
    assert_eq!(jobs[0]["object"]["name"], "audited");
    let all = admin.ok(Method::GET, "/api/v1/audit?limit=500", None).await.to_string();
    for secret in ["operator-pw-1", "operator-pw-2", "operator-pw-3", "wrong-guess"] {
        assert!(!all.contains(secret), "the audit log holds {secret}");
    }

    // Housekeeping on start: sessions past their expiry and audit rows past the retention go.
    let db = s.data().join("catalog.db");
    s.kill9();
    let sql = "UPDATE audit SET time = time - 400*86400000 WHERE route = '/api/v1/jobs'; \
               UPDATE tokens SET expires_at = 1 WHERE kind = 'session';";
    let out = Command::new("sqlite3").arg(&db).arg(sql).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    s.spawn();
    let count = |q: &str| {
        let out = Command::new("sqlite3").arg(&db).arg(q).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse::<i64>().unwrap()
    };
    let start = Instant::now();
    while count("SELECT COUNT(*) FROM tokens WHERE kind = 'session'") > 0 {
        assert!(start.elapsed() < Duration::from_secs(20), "expired sessions were not purged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(count("SELECT COUNT(*) FROM audit WHERE route = '/api/v1/jobs'"), 0, "old audit rows purged");
    assert!(count("SELECT COUNT(*) FROM audit") > 0, "recent ones kept");
}

/// The reproductions from the security review, and their neighbours, written by hand (not
/// derived from the policy table): a viewer reads no backed-up content and no secret; ACL
/// entries grant and withdraw per repository.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_read_no_backed_up_files_and_no_secrets() {
    let s = Server::start(None);
    let admin = Api::login(&s, "admin", &s.admin_password()).await;
    let viewer = admin.add_user(&s, "view", "long-password", "viewer").await;
    let src = s.dir.path().join("shadow-src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("shadow"), b"root:$6$secret-hash:19000:0:99999:7:::").unwrap();
    admin
        .ok(
            Method::POST,
            "/api/v1/jobs",
            Some(json!({"name": "etc", "type": "backup", "paths": [src.to_str().unwrap()], "repository": 1})),
        )
        .await;
    let run = admin.run_job(1, None).await;
    let snap = run["snapshot_id"].as_str().unwrap().to_string();
    let file = format!("/api/v1/snapshots/{snap}/file?path={}/shadow", src.display());
    let tree = format!("/api/v1/snapshots/{snap}/tree?path={}", src.display());
    // The viewer sees that the snapshot exists, but not what is in it.
    let list = viewer.ok(Method::GET, "/api/v1/snapshots", None).await;
    assert!(list.to_string().contains(&snap));
    for path in [&file, &tree, &format!("/api/v1/snapshots/diff?from={snap}&to={snap}")] {
        let (st, b) = viewer.call(Method::GET, path, None).await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{path}: {b}");
        assert!(b["error"]["message"].as_str().unwrap().contains("Datastore.Read"), "{b}");
    }
    let (st, _) = viewer
        .call(Method::POST, &format!("/api/v1/snapshots/{snap}/restore"), Some(json!({"target": "/tmp/x"})))
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    // A name that would become part of a file name is checked before any file is touched.
    let keys_before = std::fs::read_dir(s.data().join("keys")).map(|d| d.count()).unwrap_or(0);
    for name in ["bad\u{0}name", "../../etc/x", "a/b", ".hidden"] {
        let body = json!({"name": name, "url": s.data().join("nul-repo")});
        let (st, b) = admin.call(Method::POST, "/api/v1/repositories", Some(body)).await;
        assert_error(st, &b, StatusCode::BAD_REQUEST, &format!("repository name {name:?}"));
    }
    assert_eq!(std::fs::read_dir(s.data().join("keys")).map(|d| d.count()).unwrap_or(0), keys_before);
    assert!(!s.data().join("nul-repo").exists(), "nothing was created for a refused name");
    // Bacula: the viewer (and the admin) see the config with its passwords hidden.
    admin.ok(Method::POST, "/api/v1/disk/repositories", Some(json!({"name": "bd", "kind": "directory"}))).await;
    admin.ok(Method::POST, "/api/v1/bacula/config", Some(json!({}))).await;
    let password = std::fs::read_to_string(s.data().join("bacula-director.password")).unwrap();
    for api in [&viewer, &admin] {
        let cfg = api.ok(Method::GET, "/api/v1/bacula/config", None).await;
        assert!(!cfg.to_string().contains(password.trim()), "a GET returned the director password: {cfg}");
        assert!(cfg["content"].as_str().unwrap().contains("Password = \"***\""), "{cfg}");
    }
    // An admin sends the shown config back: the stored password is kept.
    let cfg = admin.ok(Method::GET, "/api/v1/bacula/config", None).await;
    let live = admin.ok(Method::POST, "/api/v1/bacula/config", Some(json!({"content": cfg["content"]}))).await;
    let text = std::fs::read_to_string(live["path"].as_str().unwrap()).unwrap();
    assert!(text.contains(password.trim()) && !text.contains("***"), "{text}");
    // An ACL entry gives this viewer read access to the default repository only.
    let view_id = viewer.ok(Method::GET, "/api/v1/auth/me", None).await["id"].as_i64().unwrap();
    let entry = admin
        .ok(
            Method::POST,
            "/api/v1/acl",
            Some(json!({"path": "/repositories/default", "user": "view", "role": "reader"})),
        )
        .await;
    assert_eq!(entry["user_id"], view_id);
    let (st, body) = viewer.raw(Method::GET, &file).await;
    assert_eq!(st, StatusCode::OK);
    assert!(body.starts_with(b"root:"));
    let perms = viewer.ok(Method::GET, "/api/v1/auth/permissions", None).await;
    let repo_perms = perms.as_array().unwrap().iter().find(|p| p["path"] == "/repositories/default").unwrap().clone();
    assert!(repo_perms["privileges"].to_string().contains("Datastore.Read"), "{perms}");
    // ...and no-access hides the repository from an operator altogether.
    let op = admin.add_user(&s, "op", "long-password", "operator").await;
    admin
        .ok(
            Method::POST,
            "/api/v1/acl",
            Some(json!({"path": "/repositories/default", "user": "op", "role": "no-access"})),
        )
        .await;
    assert_eq!(op.ok(Method::GET, "/api/v1/repositories", None).await, json!([]));
    assert_eq!(op.ok(Method::GET, "/api/v1/snapshots", None).await["items"], json!([]));
    let (st, _) = op.call(Method::GET, &file, None).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    // Bad entries are refused with the reason; removing the entry restores the role.
    for bad in [
        json!({"path": "/repositories/../system", "user": "op", "role": "admin"}),
        json!({"path": "/repositories/default", "user": "op", "role": "root"}),
        json!({"path": "/repositories/default", "user": "nobody", "role": "reader"}),
    ] {
        let (st, b) = admin.call(Method::POST, "/api/v1/acl", Some(bad.clone())).await;
        assert!(st == StatusCode::BAD_REQUEST || st == StatusCode::NOT_FOUND, "{bad}: {st} {b}");
    }
    let entries = admin.ok(Method::GET, "/api/v1/acl", None).await;
    let op_entry = entries.as_array().unwrap().iter().find(|e| e["username"] == "op").unwrap()["id"].clone();
    admin.ok(Method::DELETE, &format!("/api/v1/acl/{op_entry}"), None).await;
    assert_eq!(op.ok(Method::GET, "/api/v1/repositories", None).await.as_array().unwrap().len(), 1);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}

fn random_file(path: &Path, len: usize, seed: u64) {
    std::fs::write(path, bams_testkit::random_bytes(len, seed)).unwrap();
}

async fn start_long_backup(s: &Server) -> (Api, i64, PathBuf) {
    let src = s.dir.path().join("big");
    std::fs::create_dir_all(&src).unwrap();
    // Many medium files: the engine checks for cancellation before each file.
    for i in 0..48 {
        random_file(&src.join(format!("f{i}")), 10 << 20, i + 1);
    }
    let admin = Api::login(s, "admin", &s.admin_password()).await;
    let job = admin
        .ok(
            Method::POST,
            "/api/v1/jobs",
            Some(json!({"name": "big", "type": "backup", "paths": [src], "repository": 1})),
        )
        .await;
    let run =
        admin.ok(Method::POST, &format!("/api/v1/jobs/{}/run", job["id"]), None).await["run_id"].as_i64().unwrap();
    let start = Instant::now();
    loop {
        let r = admin.ok(Method::GET, &format!("/api/v1/runs/{run}"), None).await;
        let packs = std::fs::read_dir(s.data().join("repo/data")).map(|d| d.flatten().count()).unwrap_or(0);
        if r["status"] == "running" && packs >= 2 {
            break;
        }
        assert!(r["status"] != "succeeded", "backup finished before the interruption; make the dataset bigger");
        assert!(start.elapsed() < Duration::from_secs(60), "backup did not start: {r}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (admin, run, src)
}

fn check_repo(s: &Server) {
    check_repo_named(s, "default");
}

/// Where repository `name` of server `s` is, and its key file: `default`, or an agent's own
/// repository `default@AGENT` under it.
fn repo_files(s: &Server, name: &str) -> (PathBuf, PathBuf) {
    let dir = match name.split_once('@') {
        Some((_, agent)) => s.data().join("repo/agents").join(agent),
        None => s.data().join("repo"),
    };
    (dir, s.data().join(format!("keys/{name}.key")))
}

/// `bams check --read-data` on repository `name` of server `s`.
fn check_repo_named(s: &Server, name: &str) {
    let (dir, key) = repo_files(s, name);
    let out = Command::new(env!("CARGO_BIN_EXE_bams"))
        .args(["-r", dir.to_str().unwrap(), "--key-file", key.to_str().unwrap(), "check", "--read-data"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "check of {name} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_a_backup_marks_the_run_interrupted_and_the_repository_checks() {
    let mut s = Server::start(None);
    let (_, run, _) = start_long_backup(&s).await;
    s.kill9();
    check_repo(&s);
    s.spawn();
    let admin = Api::login(&s, "admin", &s.admin_password()).await;
    let r = admin.ok(Method::GET, &format!("/api/v1/runs/{run}"), None).await;
    assert_eq!(r["status"], "interrupted", "{r}");
    // The next run completes and reuses what the interrupted one stored.
    let again = admin.ok(Method::POST, "/api/v1/jobs/1/run", None).await["run_id"].as_i64().unwrap();
    let done = admin.wait_run(again).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    check_repo(&s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_checkpoints_a_running_backup_within_the_timeout() {
    let mut s = Server::start_with(None, &[("BAMS_SHUTDOWN_TIMEOUT_SECS", "0")]);
    let (_, run, _) = start_long_backup(&s).await;
    let child = s.child.take().unwrap();
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "server exit: {:?}", out.status);
    check_repo(&s);
    s.spawn();
    let admin = Api::login(&s, "admin", &s.admin_password()).await;
    let r = admin.ok(Method::GET, &format!("/api/v1/runs/{run}"), None).await;
    assert_eq!(r["status"], "interrupted", "{r}");
    assert!(r["message"].as_str().unwrap().contains("shutdown"), "{r}");
}

fn bams_remote(s: &Server, token: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_bams"))
        .arg("-r")
        .arg(format!("bams+http://127.0.0.1:{}/remote", s.port))
        .args(args)
        .env("BAMS_TOKEN", token)
        .env("BAMS_PASSWORD", "remote-pass")
        .env_remove("BAMS_TOKEN_FILE")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_clients_back_up_through_the_endpoint_and_append_only_tokens_cannot_destroy() {
    let s = Server::start(None);
    let admin = Api::login(&s, "admin", &s.admin_password()).await;
    let repo_dir = s.data().join("remote-repo");
    let repo = admin
        .ok(
            Method::POST,
            "/api/v1/repositories",
            Some(json!({"name": "remote", "url": repo_dir, "password": "remote-pass"})),
        )
        .await;
    let client = admin.add_user(&s, "client", "client-password", "operator").await;
    let looker = admin.add_user(&s, "looker", "looker-password", "viewer").await;
    let append =
        client.ok(Method::POST, "/api/v1/tokens", Some(json!({"name": "host1", "scope": "append-only"}))).await;
    let append = append["secret"].as_str().unwrap().to_string();
    let full = client.ok(Method::POST, "/api/v1/tokens", Some(json!({"name": "admin-ops"}))).await["secret"]
        .as_str()
        .unwrap()
        .to_string();

    let src = s.dir.path().join("client-src");
    write_tree(&src);
    let src_s = src.to_str().unwrap();
    for round in 0..2 {
        std::fs::write(src.join("round.txt"), format!("round {round}")).unwrap();
        let out = bams_remote(&s, &append, &["backup", src_s]);
        assert!(out.status.success(), "remote backup: {}", String::from_utf8_lossy(&out.stderr));
    }
    let out = bams_remote(&s, &append, &["--json", "snapshots"]);
    let snaps: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(snaps.as_array().unwrap().len(), 2, "{snaps}");
    let target = s.dir.path().join("client-restore");
    let out = bams_remote(&s, &append, &["restore", "latest", "--target", target.to_str().unwrap(), "--verify"]);
    assert!(out.status.success(), "remote restore: {}", String::from_utf8_lossy(&out.stderr));
    let restored = target.join(src.strip_prefix("/").unwrap());
    assert_eq!(std::fs::read(restored.join("sub/b.bin")).unwrap(), std::fs::read(src.join("sub/b.bin")).unwrap());
    assert_eq!(std::fs::read_to_string(restored.join("round.txt")).unwrap(), "round 1");

    // The append-only token can neither forget nor prune nor overwrite.
    let out = bams_remote(&s, &append, &["forget", "--keep-last", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("append-only"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = bams_remote(&s, &append, &["prune"]);
    assert_eq!(out.status.code(), Some(1), "prune with an append-only token");
    let raw = Api { token: Some(append.clone()), ..Api::anon(&s) };
    let (st, b) = raw.call(Method::DELETE, "/api/v1/repo/remote/object?key=config", None).await;
    assert_error(st, &b, StatusCode::FORBIDDEN, "append-only delete");
    let put = raw
        .http
        .put(s.url("/api/v1/repo/remote/object?key=config"))
        .bearer_auth(&append)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::FORBIDDEN, "append-only writes config");
    // Overwriting an existing object (same name, same bytes) is refused too.
    let listed = raw.ok(Method::GET, "/api/v1/repo/remote/list?prefix=snapshots/", None).await;
    let key = listed[0]["key"].as_str().unwrap().to_string();
    let (_, bytes) = raw.raw(Method::GET, &format!("/api/v1/repo/remote/object?key={key}")).await;
    let put = raw
        .http
        .put(s.url(&format!("/api/v1/repo/remote/object?key={key}")))
        .bearer_auth(&append)
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::CONFLICT, "append-only overwrite");
    let (st, b) = raw.call(Method::GET, "/api/v1/jobs", None).await;
    assert_error(st, &b, StatusCode::FORBIDDEN, "append-only token outside the endpoint");
    let (st, b) = raw.call(Method::GET, "/api/v1/repo/remote/object?key=../../etc/passwd", None).await;
    assert_error(st, &b, StatusCode::BAD_REQUEST, "key traversal");
    let (st, b) = looker.call(Method::GET, "/api/v1/repo/remote/list", None).await;
    assert_error(st, &b, StatusCode::FORBIDDEN, "viewer on the endpoint");
    let out = bams_remote(&s, &append, &["--json", "snapshots"]);
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap().as_array().unwrap().len(),
        2,
        "nothing was removed"
    );

    // Hostile writes: keys and config are the owner's; a body that is not what its name says
    // is refused; junk under a matching name is skipped by every reader.
    let put_raw = |key: String, body: Vec<u8>, token: String| {
        let http = raw.http.clone();
        let url = s.url(&format!("/api/v1/repo/remote/object?key={key}"));
        async move { http.put(url).bearer_auth(token).body(body).send().await.unwrap() }
    };
    let junk = b"junk that decrypts to nothing".to_vec();
    let junk_id = blake3::hash(&junk).to_hex().to_string();
    for key in [format!("keys/{junk_id}"), "config".to_string()] {
        let r = put_raw(key.clone(), junk.clone(), append.clone()).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "append-only writes {key}");
    }
    let r = put_raw("config".into(), junk.clone(), full.clone()).await;
    assert_eq!(r.status(), StatusCode::CONFLICT, "config is never replaced, whoever asks");
    let wrong = "0".repeat(64);
    for key in [format!("index/{wrong}"), format!("data/ff/{junk_id}"), format!("snapshots/{}", &junk_id[..10])] {
        let r = put_raw(key.clone(), junk.clone(), append.clone()).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{key}");
    }
    for dir in ["index", "snapshots", "locks"] {
        let r = put_raw(format!("{dir}/{junk_id}"), junk.clone(), append.clone()).await;
        assert_eq!(r.status(), StatusCode::CREATED, "a well-named object is stored: {dir}");
    }
    std::fs::write(src.join("round.txt"), "after the junk").unwrap();
    let out = bams_remote(&s, &append, &["backup", src_s]);
    assert!(out.status.success(), "backup beside junk: {}", String::from_utf8_lossy(&out.stderr));
    let out = bams_remote(&s, &append, &["--json", "snapshots"]);
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap().as_array().unwrap().len(), 3);
    // A restricted credential removes only the locks it wrote: not the junk lock of the
    // other... nor one written by the full token.
    let other_lock = b"a lock the full token wrote".to_vec();
    let other_id = blake3::hash(&other_lock).to_hex().to_string();
    assert_eq!(put_raw(format!("locks/{other_id}"), other_lock, full.clone()).await.status(), StatusCode::CREATED);
    let (st, b) = raw.call(Method::DELETE, &format!("/api/v1/repo/remote/object?key=locks/{other_id}"), None).await;
    assert_error(st, &b, StatusCode::FORBIDDEN, "deleting another client's lock");
    let own_lock = b"my own lock".to_vec();
    let own_id = blake3::hash(&own_lock).to_hex().to_string();
    assert_eq!(put_raw(format!("locks/{own_id}"), own_lock, append.clone()).await.status(), StatusCode::CREATED);
    let (st, b) = raw.call(Method::DELETE, &format!("/api/v1/repo/remote/object?key=locks/{own_id}"), None).await;
    assert_eq!(st, StatusCode::NO_CONTENT, "own lock: {b}");
    let full_api = Api { token: Some(full.clone()), ..Api::anon(&s) };
    for key in [
        format!("locks/{other_id}"),
        format!("locks/{junk_id}"),
        format!("index/{junk_id}"),
        format!("snapshots/{junk_id}"),
    ] {
        let (st, b) = full_api.call(Method::DELETE, &format!("/api/v1/repo/remote/object?key={key}"), None).await;
        assert_eq!(st, StatusCode::NO_CONTENT, "{key}: {b}");
    }

    // The server's catalog learned about the client's snapshots.
    let start = Instant::now();
    loop {
        let page = admin.ok(Method::GET, &format!("/api/v1/snapshots?repository={}", repo["id"]), None).await;
        if page["items"].as_array().unwrap().len() == 3 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "catalog never saw the remote snapshots: {page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A full token may forget and prune; the repository still checks.
    let out = bams_remote(&s, &full, &["forget", "--keep-last", "1", "--prune"]);
    assert!(out.status.success(), "forget with a full token: {}", String::from_utf8_lossy(&out.stderr));
    let out = bams_remote(&s, &full, &["check", "--read-data"]);
    assert!(out.status.success(), "remote check: {}", String::from_utf8_lossy(&out.stdout));
    let out = bams_remote(&s, "bams_t_nonsense", &["snapshots"]);
    assert_eq!(out.status.code(), Some(1), "bad token refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_backup_stops_it_at_a_checkpoint() {
    let s = Server::start(None);
    let (admin, run, _) = start_long_backup(&s).await;
    let r = admin.ok(Method::POST, &format!("/api/v1/runs/{run}/cancel"), None).await;
    assert!(r["cancel_requested"] == true || r["status"] != "running", "{r}");
    let done = admin.wait_run(run).await;
    assert_eq!(done["status"], "cancelled", "{done}");
    assert!(done["snapshot_id"].is_null(), "a cancelled backup writes no snapshot: {done}");
    check_repo(&s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_over_one_postgres_fire_each_schedule_once() {
    let pg = bams_testkit::PgCluster::start();
    let a = Server::start_with(Some(pg.url()), &[("BAMS_SERVER_ID", "server-a")]);
    let admin = Api::login(&a, "admin", &a.admin_password()).await;
    // The second server shares the catalog (and so the admin user) but has its own data dir.
    let b = Server::start_with(Some(pg.url()), &[("BAMS_SERVER_ID", "server-b")]);
    let src = a.dir.path().join("src");
    write_tree(&src);
    // Both servers must reach the job's repository: a shared directory, as a shared disk would be.
    let shared = a.dir.path().join("shared-repo");
    let repo = admin
        .ok(
            Method::POST,
            "/api/v1/repositories",
            Some(json!({"name": "shared", "url": shared, "password": "shared-pass"})),
        )
        .await;
    std::fs::create_dir_all(b.data().join("keys")).unwrap();
    std::fs::copy(a.data().join("keys/shared.key"), b.data().join("keys/shared.key")).unwrap();
    let job = admin
        .ok(Method::POST, "/api/v1/jobs", Some(json!({"name": "every-second", "type": "backup", "paths": [src], "repository": repo["id"], "schedule": "* * * * * *"})))
        .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    admin.ok(Method::PUT, &format!("/api/v1/jobs/{}", job["id"]), Some(json!({"name": "every-second", "type": "backup", "paths": [src], "repository": repo["id"], "enabled": false}))).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let runs = admin.ok(Method::GET, &format!("/api/v1/runs?job={}&limit=500", job["id"]), None).await;
    let items = runs["items"].as_array().unwrap();
    assert!(items.len() >= 3, "the schedule fired too rarely: {runs}");
    // One run per firing: never two runs queued for the same second.
    let mut seconds: Vec<String> = items.iter().map(|r| r["queued_at"].as_str().unwrap()[..19].to_string()).collect();
    let n = seconds.len();
    seconds.sort();
    seconds.dedup();
    assert_eq!(seconds.len(), n, "a schedule fired twice in one second: {runs}");
    assert!(items.len() <= 9, "more runs than seconds elapsed: {}", items.len());
    for r in items {
        assert!(matches!(r["server_id"].as_str(), Some("server-a" | "server-b")), "{r}");
    }
    drop(b);
}

/// Holds something that owns a tokio runtime (the fault proxy) and drops it on a plain
/// thread: a runtime may be neither started nor dropped inside an async test.
struct OffRuntime<T: Send + 'static>(Option<T>);

impl<T: Send + 'static> Drop for OffRuntime<T> {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            let _ = std::thread::spawn(move || drop(t)).join();
        }
    }
}

/// Every run of the catalog (up to 500), oldest first.
async fn all_runs(api: &Api) -> Vec<Value> {
    let runs = api.ok(Method::GET, "/api/v1/runs?limit=500", None).await;
    let mut items = runs["items"].as_array().unwrap().clone();
    items.sort_by_key(|r| r["id"].as_i64());
    items
}

/// Scale-out: two servers over one PostgreSQL catalog and one S3 bucket. One is killed (-9)
/// while it runs jobs: the other marks its runs interrupted and queues each again within the
/// heartbeat timeout, runs them and the schedules, no run executes twice, and the repository
/// (every snapshot) passes `check --read-data`. (`bench/failover.sh` times the same with the
/// default 30 s timeout.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_two_servers_requeues_its_runs_on_the_other() {
    let pg = bams_testkit::PgCluster::start();
    let s3 = bams_testkit::S3Server::start("failover");
    let mut env = s3.env();
    env.extend([
        ("BAMS_SERVER_HEARTBEAT_TIMEOUT_SECS".into(), "3".into()),
        ("BAMS_MAX_CONCURRENT_JOBS".into(), "2".into()),
    ]);
    // Server A reaches the bucket over a slow link (each pack upload waits 1.5 s in a proxy),
    // so that its jobs are still running when it is killed.
    let upstream = format!("http://127.0.0.1:{}", s3.port());
    let proxy = OffRuntime(Some(
        std::thread::spawn(move || bams_testkit::faultproxy::FaultProxy::start(&upstream, 7)).join().unwrap(),
    ));
    let proxy = proxy.0.as_ref().unwrap();
    proxy.set_plan(Some(bams_testkit::faultproxy::FaultPlan {
        stall: Duration::from_millis(1500),
        ..bams_testkit::faultproxy::FaultPlan::new(bams_testkit::faultproxy::Fault::Stall, 1.0)
            .method("PUT")
            .path_contains("/data/")
    }));
    let slow = proxy.url();
    let env_a: Vec<(&str, &str)> = env
        .iter()
        .map(|(k, v)| (k.as_str(), if k == "AWS_ENDPOINT_URL" { slow.as_str() } else { v.as_str() }))
        .chain([("BAMS_SERVER_ID", "server-a")])
        .collect();
    let env_b: Vec<(&str, &str)> =
        env.iter().map(|(k, v)| (k.as_str(), v.as_str())).chain([("BAMS_SERVER_ID", "server-b")]).collect();
    let mut a = Server::start_with(Some(pg.url()), &env_a);
    let b = Server::start_with(Some(pg.url()), &env_b);
    let admin_a = Api::login(&a, "admin", &a.admin_password()).await;
    let admin = Api::login(&b, "admin", &a.admin_password()).await;
    let repo = admin_a
        .ok(
            Method::POST,
            "/api/v1/repositories",
            Some(json!({"name": "bucket", "url": "s3://failover/repo", "password": "bucket-pass"})),
        )
        .await;
    // Shared key files, as the docs ask of servers sharing a catalog.
    std::fs::create_dir_all(b.data().join("keys")).unwrap();
    std::fs::copy(a.data().join("keys/bucket.key"), b.data().join("keys/bucket.key")).unwrap();
    // Four big jobs (two per server at most), started on server A.
    let mut big = Vec::new();
    for j in 0..4u64 {
        let src = a.dir.path().join(format!("big{j}"));
        std::fs::create_dir_all(&src).unwrap();
        for i in 0..16 {
            random_file(&src.join(format!("f{i}")), 6 << 20, 100 * j + i + 1);
        }
        let job = admin
            .ok(
                Method::POST,
                "/api/v1/jobs",
                Some(json!({"name": format!("big{j}"), "type": "backup", "paths": [src], "repository": repo["id"]})),
            )
            .await;
        big.push(job["id"].as_i64().unwrap());
    }
    // A small job on a schedule every two seconds: it must go on firing after the kill.
    let small_src = a.dir.path().join("small");
    write_tree(&small_src);
    let small = admin
        .ok(Method::POST, "/api/v1/jobs", Some(json!({"name": "small", "type": "backup", "paths": [small_src], "repository": repo["id"], "schedule": "*/2 * * * * *"})))
        .await;
    for id in &big {
        admin_a.ok(Method::POST, &format!("/api/v1/jobs/{id}/run"), None).await;
    }
    // Kill A once it is writing: its runs are running and the bucket holds data.
    let start = Instant::now();
    loop {
        let runs = all_runs(&admin).await;
        if runs
            .iter()
            .any(|r| r["server_id"] == "server-a" && r["status"] == "running" && r["bytes"].as_i64() > Some(0))
        {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "server A never ran a job: {runs:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.kill9();
    let killed = Instant::now();
    // What A was running when it died (nobody can change it for the 3 s of the timeout).
    let on_a: Vec<i64> = all_runs(&admin)
        .await
        .iter()
        .filter(|r| r["server_id"] == "server-a" && r["status"] == "running")
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert!(!on_a.is_empty());
    // B interrupts and re-queues each of A's runs (3 s timeout here, 30 s by default).
    let requeued: Vec<i64> = loop {
        let runs = all_runs(&admin).await;
        let done: Vec<i64> = on_a
            .iter()
            .filter_map(|id| {
                let r = runs.iter().find(|r| r["id"].as_i64() == Some(*id))?;
                (r["status"] == "interrupted").then_some(())?;
                let again: Vec<&Value> =
                    runs.iter().filter(|n| n["triggered_by"] == format!("requeue:{id}").as_str()).collect();
                assert!(again.len() <= 1, "run {id} was queued again twice: {again:?}");
                again.first().and_then(|n| n["id"].as_i64())
            })
            .collect();
        if done.len() == on_a.len() {
            break done;
        }
        assert!(killed.elapsed() < Duration::from_secs(60), "A's runs were not re-queued within 60 s: {runs:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("{} run(s) of server A re-queued {:?} after the kill", on_a.len(), killed.elapsed());
    let interrupted = admin.ok(Method::GET, &format!("/api/v1/runs/{}", on_a[0]), None).await;
    assert!(interrupted["message"].as_str().unwrap().contains("server-a gave no sign of life"), "{interrupted}");
    let log = admin.ok(Method::GET, &format!("/api/v1/runs/{}/log", on_a[0]), None).await;
    assert!(log["log"].as_str().unwrap().contains("queued again as run"), "{log}");
    // B runs everything to the end, including the schedule fired after the kill.
    let killed_at = chrono::Utc::now() - chrono::Duration::from_std(killed.elapsed()).unwrap();
    let deadline = Instant::now();
    loop {
        let runs = all_runs(&admin).await;
        let requeued_done = requeued.iter().all(|id| {
            runs.iter()
                .any(|r| r["id"].as_i64() == Some(*id) && r["status"] == "succeeded" && r["server_id"] == "server-b")
        });
        let scheduled_on_b = runs.iter().any(|r| {
            r["job_id"] == small["id"]
                && r["status"] == "succeeded"
                && r["server_id"] == "server-b"
                && r["queued_at"]
                    .as_str()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .is_some_and(|t| t > killed_at)
        });
        if requeued_done && scheduled_on_b {
            break;
        }
        assert!(deadline.elapsed() < Duration::from_secs(240), "B did not finish A's work: {runs:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    admin
        .ok(
            Method::PUT,
            &format!("/api/v1/jobs/{}", small["id"]),
            Some(json!({"name": "small", "type": "backup", "paths": [small_src], "repository": repo["id"], "enabled": false})),
        )
        .await;
    let runs = loop {
        let runs = all_runs(&admin).await;
        if runs.iter().all(|r| !matches!(r["status"].as_str(), Some("queued" | "running"))) {
            break runs;
        }
        assert!(deadline.elapsed() < Duration::from_secs(300), "runs never ended: {runs:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // No run executed twice: one snapshot per succeeded run, each run on one named server,
    // and only A's killed runs interrupted.
    let mut snapshots: Vec<&str> = Vec::new();
    for r in &runs {
        assert!(matches!(r["server_id"].as_str(), Some("server-a" | "server-b")), "{r}");
        match r["status"].as_str() {
            Some("succeeded") => snapshots.push(r["snapshot_id"].as_str().expect("a snapshot")),
            Some("interrupted") => assert!(on_a.contains(&r["id"].as_i64().unwrap()), "{r}"),
            _ => panic!("unexpected end: {r}"),
        }
    }
    let n = snapshots.len();
    snapshots.sort_unstable();
    snapshots.dedup();
    assert_eq!(snapshots.len(), n, "two runs wrote the same snapshot");
    let cli = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_bams"));
        c.args(["-r", "s3://failover/repo"]).args(args).env("BAMS_PASSWORD", "bucket-pass");
        for (k, v) in &env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "bams {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    };
    let listed: Value = serde_json::from_slice(&cli(&["snapshots", "--json"])).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), n, "the bucket holds exactly one snapshot per succeeded run");
    cli(&["check", "--read-data"]);
    drop(b);
}

/// The server merges a repository's small index files in the background once enough pile
/// up, and the repository still checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_consolidates_small_index_files_in_the_background() {
    let s = Server::start_with(
        None,
        &[("BAMS_INDEX_CONSOLIDATE_EVERY_SECS", "1"), ("BAMS_INDEX_CONSOLIDATE_MIN_FILES", "4")],
    );
    let admin = Api::login(&s, "admin", &s.admin_password()).await;
    let src = s.dir.path().join("src");
    write_tree(&src);
    let job = admin
        .ok(
            Method::POST,
            "/api/v1/jobs",
            Some(json!({"name": "small", "type": "backup", "paths": [src], "repository": 1})),
        )
        .await["id"]
        .as_i64()
        .unwrap();
    let index_files = || std::fs::read_dir(s.data().join("repo/index")).map(|d| d.count()).unwrap_or(0);
    let mut most = 0;
    for i in 0..6 {
        std::fs::write(src.join(format!("n{i}")), format!("change {i}")).unwrap();
        assert_eq!(admin.run_job(job, None).await["status"], "succeeded");
        most = most.max(index_files());
    }
    assert!(most >= 2, "backups add index files");
    let log = || std::fs::read_to_string(s.dir.path().join(format!("server-{}.log", s.port))).unwrap_or_default();
    let start = Instant::now();
    while index_files() > 3 || !log().contains("merged small index files") {
        assert!(start.elapsed() < Duration::from_secs(30), "never consolidated: {} index files", index_files());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    check_repo(&s);
    let snaps = admin.ok(Method::GET, "/api/v1/snapshots?repository=1", None).await;
    assert_eq!(snaps["items"].as_array().unwrap().len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_concurrency_limit_keeps_extra_runs_queued() {
    let s = Server::start_with(None, &[("BAMS_MAX_CONCURRENT_JOBS", "1")]);
    let (admin, first, _) = start_long_backup(&s).await;
    let second = admin.ok(Method::POST, "/api/v1/jobs/1/run", None).await["run_id"].as_i64().unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (r1, r2) = (
        admin.ok(Method::GET, &format!("/api/v1/runs/{first}"), None).await,
        admin.ok(Method::GET, &format!("/api/v1/runs/{second}"), None).await,
    );
    if r1["status"] == "running" {
        assert_eq!(r2["status"], "queued", "a second run started beside the first: {r2}");
    }
    admin.ok(Method::POST, &format!("/api/v1/runs/{second}/cancel"), None).await;
    let r2 = admin.wait_run(second).await;
    assert_eq!(r2["status"], "cancelled", "{r2}");
    assert!(r2["started_at"].is_null(), "the queued run never started: {r2}");
    let _ = admin.call(Method::POST, &format!("/api/v1/runs/{first}/cancel"), None).await;
    admin.wait_run(first).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_repositories_work_from_the_cli_and_the_server() {
    let s3 = bams_testkit::S3Server::start("bams-test");
    let env = s3.env();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_tree(&src);
    let bams = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_bams"));
        c.args(["-r", "s3://bams-test/cli-repo"]).args(args).env("BAMS_PASSWORD", "s3-pass");
        for (k, v) in &env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    for args in [vec!["repo", "init"], vec!["backup", src.to_str().unwrap()], vec!["check", "--read-data"]] {
        let out = bams(&args);
        assert!(
            out.status.success(),
            "bams {args:?} on S3: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let target = dir.path().join("restore");
    let out = bams(&["restore", "latest", "--target", target.to_str().unwrap(), "--verify"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let restored = target.join(src.strip_prefix("/").unwrap());
    assert_eq!(std::fs::read(restored.join("sub/b.bin")).unwrap(), std::fs::read(src.join("sub/b.bin")).unwrap());

    // The server registers an S3 repository and runs a job into it.
    let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let s = Server::start_with(None, &envs);
    let admin = Api::login(&s, "admin", &s.admin_password()).await;
    let repo = admin
        .ok(Method::POST, "/api/v1/repositories", Some(json!({"name": "offsite", "url": "s3://bams-test/server-repo"})))
        .await;
    let job = admin
        .ok(
            Method::POST,
            "/api/v1/jobs",
            Some(json!({"name": "to-s3", "type": "backup", "paths": [src], "repository": repo["id"]})),
        )
        .await;
    let run =
        admin.ok(Method::POST, &format!("/api/v1/jobs/{}/run", job["id"]), None).await["run_id"].as_i64().unwrap();
    let done = admin.wait_run(run).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let stats = admin.ok(Method::GET, &format!("/api/v1/repositories/{}/stats", repo["id"]), None).await;
    assert_eq!(stats["snapshots"], 1, "{stats}");

    // A copy job brings the offsite snapshots back to a local repository (other key).
    let back_path = dir.path().join("back-repo");
    let back = admin
        .ok(Method::POST, "/api/v1/repositories", Some(json!({"name": "back", "url": back_path.to_str().unwrap()})))
        .await;
    let spec = |target: Value| json!({"name": "fetch", "type": "copy", "repository": repo["id"], "options": target});
    let (st, b) = admin.call(Method::POST, "/api/v1/jobs", Some(spec(json!({})))).await;
    assert_error(st, &b, StatusCode::BAD_REQUEST, "copy without target");
    let (st, b) = admin.call(Method::POST, "/api/v1/jobs", Some(spec(json!({"target_repository": 99999})))).await;
    assert_error(st, &b, StatusCode::NOT_FOUND, "copy to an unknown repository");
    let copy_job = admin.ok(Method::POST, "/api/v1/jobs", Some(spec(json!({"target_repository": back["id"]})))).await;
    for expected_copied in ["copied 1 snapshot", "copied 0 snapshot(s), 1 already there"] {
        let run = admin.ok(Method::POST, &format!("/api/v1/jobs/{}/run", copy_job["id"]), None).await["run_id"]
            .as_i64()
            .unwrap();
        let done = admin.wait_run(run).await;
        assert_eq!(done["status"], "succeeded", "{done}");
        assert!(done["message"].as_str().unwrap_or("").contains(expected_copied), "{done}");
    }
    let stats = admin.ok(Method::GET, &format!("/api/v1/repositories/{}/stats", back["id"]), None).await;
    assert_eq!(stats["snapshots"], 1, "{stats}");

    let (st, b) =
        admin.call(Method::POST, "/api/v1/repositories", Some(json!({"name": "bad", "url": "ftp://x/y"}))).await;
    assert_error(st, &b, StatusCode::BAD_REQUEST, "unsupported URL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_repositories_directories_loop_filesystems_and_subvolumes() {
    let mut s = Server::start(None);
    let admin = Api::login(&s, "admin", &s.admin_password()).await;
    let disks = s.data().join("disks");
    let dir_path = s.dir.path().join("backups/primary");

    // A directory that hosts a BAMS repository.
    let d = admin
        .ok(
            Method::POST,
            "/api/v1/disk/repositories",
            Some(json!({"name": "primary", "kind": "directory", "path": dir_path, "init_repository": true})),
        )
        .await;
    assert_eq!((d["health"].as_str(), d["created_path"].as_bool()), (Some("ok"), Some(true)), "{d}");
    assert!(d["capacity"]["total_bytes"].as_u64().unwrap() > 0, "{d}");
    assert_eq!(d["used_by"]["repositories"][0]["name"], "primary", "{d}");
    assert!(dir_path.join("repo/config").exists(), "the BAMS repository was not created");

    // A btrfs filesystem on a new loop-backed file, and a subvolume in it.
    let fs = admin
        .ok(
            Method::POST,
            "/api/v1/disk/repositories",
            Some(json!({"name": "fast", "kind": "filesystem", "fs_type": "btrfs", "size_bytes": 128u64 << 20})),
        )
        .await;
    assert_eq!((fs["health"].as_str(), fs["fs_type"].as_str()), (Some("ok"), Some("btrfs")), "{fs}");
    let mnt = PathBuf::from(fs["path"].as_str().unwrap());
    assert!(mnt.starts_with(&disks) && disks.join("fast.img").exists());
    let sub = admin
        .ok(
            Method::POST,
            "/api/v1/disk/repositories",
            Some(json!({"name": "vol1", "kind": "btrfs-subvolume", "parent": mnt, "init_repository": true})),
        )
        .await;
    assert_eq!(sub["health"], "ok", "{sub}");
    assert!(mnt.join("vol1/repo/config").exists());

    // Bad input, each a clear error that creates nothing.
    let bad = [
        (
            json!({"name": "tiny", "kind": "filesystem", "fs_type": "xfs", "size_bytes": 1u64 << 20}),
            StatusCode::BAD_REQUEST,
        ),
        (json!({"name": "nothing", "kind": "filesystem"}), StatusCode::BAD_REQUEST),
        (json!({"name": "etc", "kind": "filesystem", "device": "/etc/passwd"}), StatusCode::BAD_REQUEST),
        (json!({"name": "trav", "kind": "directory", "path": "/srv/../etc"}), StatusCode::BAD_REQUEST),
        (json!({"name": "../evil", "kind": "directory"}), StatusCode::BAD_REQUEST),
        (json!({"name": "sub2", "kind": "btrfs-subvolume", "parent": "/tmp"}), StatusCode::BAD_REQUEST),
        (json!({"name": "primary", "kind": "directory"}), StatusCode::CONFLICT),
        (json!({"name": "vg", "kind": "lvm"}), StatusCode::BAD_REQUEST),
        (json!({"name": "vg", "kind": "lvm", "volume_group": "-x", "size_bytes": 1u64 << 30}), StatusCode::BAD_REQUEST),
    ];
    for (body, want) in bad {
        let (st, b) = admin.call(Method::POST, "/api/v1/disk/repositories", Some(body.clone())).await;
        assert_error(st, &b, want, &body.to_string());
    }
    // A device that is mounted (the root filesystem's) is refused before anything touches it.
    if let Some(root_dev) = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/"))
        .and_then(|l| l.split(" - ").nth(1))
        .and_then(|t| t.split(' ').nth(1))
        .filter(|d| d.starts_with("/dev/vd") || d.starts_with("/dev/sd") || d.starts_with("/dev/nvme"))
    {
        let (st, b) = admin
            .call(
                Method::POST,
                "/api/v1/disk/repositories",
                Some(json!({"name": "rootdev", "kind": "filesystem", "device": root_dev})),
            )
            .await;
        assert_error(st, &b, StatusCode::CONFLICT, "mounted device");
    }
    let list = admin.ok(Method::GET, "/api/v1/disk/repositories", None).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 3, "{list}");

    // In use: a job blocks deletion; registered repositories need force.
    let repo_id = d["used_by"]["repositories"][0]["id"].clone();
    let job = admin
        .ok(
            Method::POST,
            "/api/v1/jobs",
            Some(json!({"name": "to-primary", "type": "backup", "paths": ["/etc/hostname"], "repository": repo_id})),
        )
        .await;
    let id = d["id"].as_i64().unwrap();
    let (st, b) = admin.call(Method::DELETE, &format!("/api/v1/disk/repositories/{id}"), None).await;
    assert_error(st, &b, StatusCode::CONFLICT, "in use by a job");
    assert_eq!(b["error"]["details"]["jobs"][0]["name"], "to-primary");
    admin.ok(Method::DELETE, &format!("/api/v1/jobs/{}", job["id"]), None).await;
    let (st, b) = admin.call(Method::DELETE, &format!("/api/v1/disk/repositories/{id}"), None).await;
    assert_error(st, &b, StatusCode::CONFLICT, "holds a repository");
    assert!(dir_path.exists());
    admin.ok(Method::DELETE, &format!("/api/v1/disk/repositories/{id}?force=true"), None).await;
    assert!(!dir_path.exists(), "BAMS created the directory, so it goes");
    assert!(dir_path.parent().unwrap().exists(), "nothing outside what BAMS created is removed");
    let (st, _) = admin.call(Method::GET, &format!("/api/v1/repositories/{repo_id}"), None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    // Filesystems survive a restart: unmounted behind the server's back, mounted again at start.
    let run = |args: &[&str]| assert!(Command::new(args[0]).args(&args[1..]).status().unwrap().success(), "{args:?}");
    run(&["umount", mnt.to_str().unwrap()]);
    let fs_id = fs["id"].as_i64().unwrap();
    let now = admin.ok(Method::GET, &format!("/api/v1/disk/repositories/{fs_id}"), None).await;
    assert_eq!(now["health"], "unmounted", "{now}");
    s.kill9();
    s.spawn();
    let admin = Api::login(&s, "admin", &s.admin_password()).await;
    let now = admin.ok(Method::GET, &format!("/api/v1/disk/repositories/{fs_id}"), None).await;
    assert_eq!(now["health"], "ok", "{now}");
    assert!(mnt.join("vol1/repo/config").exists());

    // Deleting the subvolume (force: it holds a repository), then the filesystem.
    let sub_id = sub["id"].as_i64().unwrap();
    admin.ok(Method::DELETE, &format!("/api/v1/disk/repositories/{sub_id}?force=true"), None).await;
    assert!(!mnt.join("vol1").exists());
    admin.ok(Method::DELETE, &format!("/api/v1/disk/repositories/{fs_id}"), None).await;
    assert!(!disks.join("fast.img").exists() && !mnt.exists(), "loop image and mount point removed");
    let audit = admin.ok(Method::GET, "/api/v1/audit?limit=200", None).await;
    assert!(audit.to_string().contains("/api/v1/disk/repositories"), "mutations are audited");

    // Bacula storage daemon: a config generated from the disk repositories passes the real
    // `bacula-sd -t` and is installed; one it rejects is answered 422 and changes nothing.
    admin
        .ok(Method::POST, "/api/v1/disk/repositories", Some(json!({"name": "bacula-disk", "kind": "directory"})))
        .await;
    let cfg = admin.ok(Method::GET, "/api/v1/bacula/config", None).await;
    assert!(cfg["content"].is_null() && cfg["generated"].as_str().unwrap().contains("bams-bacula-disk"), "{cfg}");
    // The (virtual) tape library becomes an Autochanger with one device per drive.
    assert!(cfg["generated"].as_str().unwrap().contains("Autochanger {"), "{cfg}");
    let installed = admin.ok(Method::POST, "/api/v1/bacula/config", Some(json!({}))).await;
    let live = PathBuf::from(installed["path"].as_str().unwrap());
    let text = std::fs::read_to_string(&live).unwrap();
    let secret = s.data().join("bacula-director.password");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&secret).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the director password file is private");
    let password = std::fs::read_to_string(&secret).unwrap();
    assert!(text.contains(password.trim()) && !s.log().contains(password.trim()), "password in config, never in logs");
    let st = admin.ok(Method::GET, "/api/v1/bacula/status", None).await;
    assert_eq!(st["installed"], true, "{st}");
    assert!(st["version"].as_str().unwrap_or_default().contains("9."), "{st}");
    assert_eq!(st["devices"], json!(["bams-bacula-disk", "bams-tape-drive-0", "bams-tape-drive-1"]), "{st}");
    assert!(!st["service"].as_str().unwrap_or_default().is_empty(), "{st}");
    let (code, b) = admin
        .call(
            Method::POST,
            "/api/v1/bacula/config",
            Some(json!({"content": "Device {\n  Name = x\n  Media Tpye = File\n}\n"})),
        )
        .await;
    assert_error(code, &b, StatusCode::UNPROCESSABLE_ENTITY, "config bacula-sd rejects");
    assert!(b["error"]["details"]["stderr"].as_str().unwrap_or_default().contains("Tpye"), "{b}");
    assert_eq!(std::fs::read_to_string(&live).unwrap(), text, "a rejected config changes nothing");
    let (code, b) = admin.call(Method::POST, "/api/v1/bacula/config", Some(json!({"bogus": 1}))).await;
    assert_error(code, &b, StatusCode::UNPROCESSABLE_ENTITY, "unknown field");
}

/// The audit entries of `route`, newest first.
async fn audited(admin: &Api, route: &str) -> Vec<Value> {
    let audit = admin.ok(Method::GET, "/api/v1/audit?limit=500", None).await;
    audit["items"].as_array().unwrap().iter().filter(|e| e["route"] == route).cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tape_library_on_the_virtual_library_and_a_failing_real_changer() {
    let s = Server::start(None);
    let admin = Api::login(&s, "admin", &s.admin_password()).await;
    let op = admin.add_user(&s, "op", "long-password", "operator").await;
    let viewer = admin.add_user(&s, "view", "long-password", "viewer").await;

    // The default library is the built-in virtual one: 2 drives, 16 + 2 slots, 12 cartridges.
    let lib = viewer.ok(Method::GET, "/api/v1/tape/library", None).await;
    assert_eq!(lib["kind"], "virtual", "{lib}");
    assert_eq!((lib["drives"].as_array().unwrap().len(), lib["slots"].as_array().unwrap().len()), (2, 18));
    let slots = viewer.ok(Method::GET, "/api/v1/tape/slots", None).await;
    assert_eq!(slots["items"][0]["barcode"], "VT0001L8");
    assert_eq!(slots["items"][17]["import_export"], true);

    // An operator loads by barcode; the drive reports a cartridge at BOT.
    let lib = op.ok(Method::POST, "/api/v1/tape/drives/0/load", Some(json!({"barcode": "VT0002L8"}))).await;
    assert_eq!(lib["drives"][0]["loaded"]["barcode"], "VT0002L8", "{lib}");
    assert_eq!(lib["slots"][1]["full"], false);
    let drives = viewer.ok(Method::GET, "/api/v1/tape/drives", None).await;
    let d0 = &drives["items"][0];
    assert_eq!((d0["status"]["online"].as_bool(), d0["loaded"]["home_slot"].as_u64()), (Some(true), Some(2)), "{d0}");
    assert!(d0["status"]["flags"].as_array().unwrap().contains(&json!("BOT")), "{d0}");
    assert_eq!(drives["items"][1]["status"]["flags"], json!(["DR_OPEN"]));

    // Operator mistakes: each a clear error, nothing moves.
    let bad = [
        ("/api/v1/tape/drives/0/load", json!({"slot": 1}), StatusCode::CONFLICT, "drive 0 is full"),
        ("/api/v1/tape/drives/1/load", json!({"slot": 14}), StatusCode::CONFLICT, "slot 14 is empty"),
        ("/api/v1/tape/drives/1/load", json!({"barcode": "VT0002L8"}), StatusCode::CONFLICT, "already in drive 0"),
        ("/api/v1/tape/drives/1/load", json!({"barcode": "NOSUCH"}), StatusCode::NOT_FOUND, "NOSUCH"),
        ("/api/v1/tape/drives/7/load", json!({"slot": 1}), StatusCode::NOT_FOUND, "drive 7"),
        (
            "/api/v1/tape/drives/1/load",
            json!({"slot": 1, "barcode": "VT0001L8"}),
            StatusCode::BAD_REQUEST,
            "exactly one",
        ),
        ("/api/v1/tape/drives/1/load", json!({"slot": -1}), StatusCode::UNPROCESSABLE_ENTITY, ""),
        ("/api/v1/tape/drives/1/unload", json!({}), StatusCode::CONFLICT, "drive 1 is empty"),
        ("/api/v1/tape/drives/0/unload", json!({"slot": 1}), StatusCode::CONFLICT, "slot 1 is full"),
        ("/api/v1/tape/drives/x/unload", json!({}), StatusCode::BAD_REQUEST, ""),
    ];
    for (path, body, want, says) in bad {
        let (st, b) = op.call(Method::POST, path, Some(body.clone())).await;
        assert_error(st, &b, want, &format!("{path} {body}"));
        assert!(b["error"]["message"].as_str().unwrap().contains(says), "{path} {body}: {b}");
    }
    let (st, b) = viewer.call(Method::POST, "/api/v1/tape/drives/1/load", Some(json!({"slot": 1}))).await;
    assert_error(st, &b, StatusCode::FORBIDDEN, "viewer loads a tape");
    let after = viewer.ok(Method::GET, "/api/v1/tape/library", None).await;
    assert_eq!(after["drives"], lib["drives"], "a refused request moved something");

    // Unload without a body goes back to the home slot; inventory answers the element status.
    let r = op
        .http
        .post(s.url("/api/v1/tape/drives/0/unload"))
        .bearer_auth(op.token.as_ref().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Slot to slot: a cartridge imported through the mail slot goes into storage.
    let before = op.ok(Method::GET, "/api/v1/tape/slots", None).await;
    let empty =
        before["items"].as_array().unwrap().iter().find(|s| s["full"] == false && s["import_export"] == false).unwrap()
            ["number"]
            .as_u64()
            .unwrap();
    let lib = op.ok(Method::POST, "/api/v1/tape/transfer", Some(json!({"from": 3, "to": empty}))).await;
    let slot =
        |lib: &Value, n: u64| lib["slots"].as_array().unwrap().iter().find(|s| s["number"] == n).unwrap().clone();
    assert_eq!((slot(&lib, 3)["full"].as_bool(), slot(&lib, empty)["full"].as_bool()), (Some(false), Some(true)));
    for (body, want) in [
        (json!({"from": 3, "to": 4}), StatusCode::CONFLICT),
        (json!({"from": 4, "to": 4}), StatusCode::BAD_REQUEST),
        (json!({"from": 4, "to": 99}), StatusCode::NOT_FOUND),
        (json!({"from": 4}), StatusCode::UNPROCESSABLE_ENTITY),
    ] {
        let (st, b) = op.call(Method::POST, "/api/v1/tape/transfer", Some(body.clone())).await;
        assert_error(st, &b, want, &body.to_string());
    }
    let (st, b) = viewer.call(Method::POST, "/api/v1/tape/transfer", Some(json!({"from": empty, "to": 3}))).await;
    assert_error(st, &b, StatusCode::FORBIDDEN, "viewer moves a cartridge");
    op.ok(Method::POST, "/api/v1/tape/transfer", Some(json!({"from": empty, "to": 3}))).await;
    let inv = op.ok(Method::POST, "/api/v1/tape/inventory", None).await;
    assert_eq!(inv["slots"][1]["barcode"], "VT0002L8", "{inv}");
    assert!(inv["drives"][0]["loaded"].is_null());

    // Every move and every refusal is in the audit log with its result.
    let loads = audited(&admin, "/api/v1/tape/drives/{id}/load").await;
    let results: Vec<&str> = loads.iter().map(|e| e["result"].as_str().unwrap()).collect();
    assert_eq!(results.iter().filter(|r| **r == "ok").count(), 1, "{loads:?}");
    assert_eq!(results.iter().filter(|r| **r == "error").count(), 7, "{loads:?}");
    assert_eq!(results.iter().filter(|r| **r == "denied").count(), 1, "{loads:?}");
    assert_eq!(audited(&admin, "/api/v1/tape/drives/{id}/unload").await.len(), 4);

    // A real changer through mtx whose device is missing: 502 with what mtx printed.
    let real = Server::start_with(None, &[("BAMS_TAPE_LIBRARY", "mtx"), ("BAMS_TAPE_CHANGER", "/dev/sg-bams-missing")]);
    let admin = Api::login(&real, "admin", &real.admin_password()).await;
    let (st, b) = admin.call(Method::GET, "/api/v1/tape/library", None).await;
    assert_error(st, &b, StatusCode::BAD_GATEWAY, "mtx on a missing changer");
    assert_eq!(b["error"]["code"], "command_failed");
    assert!(b["error"]["details"]["command"].as_str().unwrap().contains("/dev/sg-bams-missing"), "{b}");
    assert!(!b["error"]["details"]["stderr"].as_str().unwrap().is_empty(), "{b}");
    let (st, b) = admin.call(Method::POST, "/api/v1/tape/drives/0/load", Some(json!({"slot": 1}))).await;
    assert_error(st, &b, StatusCode::BAD_GATEWAY, "load on a missing changer");
    // Tape jobs on a real library write through its drive devices: a drive without one in
    // tape.drives is refused when the job is created; the media database is there.
    let repo = admin.ok(Method::GET, "/api/v1/repositories", None).await[0]["id"].as_i64().unwrap();
    let (st, b) = admin
        .call(
            Method::POST,
            "/api/v1/jobs",
            Some(json!({"name": "t", "type": "tape", "repository": repo, "options": {"pool": "weekly"}})),
        )
        .await;
    assert_error(st, &b, StatusCode::BAD_REQUEST, "tape job without drive devices");
    assert!(b["error"]["message"].as_str().unwrap().contains("tape.drives"), "{b}");
    let pools = admin.ok(Method::GET, "/api/v1/tape/pools", None).await;
    assert_eq!(pools["items"], json!([]));
    assert!(real.data().join("tape/media.json.lock").exists() || real.data().join("tape").is_dir());
    let off = Server::start_with(None, &[("BAMS_TAPE_LIBRARY", "none")]);
    let admin = Api::login(&off, "admin", &off.admin_password()).await;
    let (st, b) = admin.call(Method::GET, "/api/v1/tape/drives", None).await;
    assert_error(st, &b, StatusCode::NOT_FOUND, "tape switched off");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iscsi_targets_over_a_real_tgtd_with_chap_drift_sessions_and_bad_input() {
    let tgtd = bams_testkit::TgtDaemon::start();
    let port = tgtd.control_port().to_string();
    let s = Server::start_with(None, &[("BAMS_ISCSI_TGT_CONTROL_PORT", &port)]);
    let admin = Api::login(&s, "admin", &s.admin_password()).await;
    let images = s.data().join("luns");
    std::fs::create_dir_all(&images).unwrap();
    let img = images.join("v1.img");
    random_file(&img, 2 << 20, 11);
    let iqn = "iqn.2026-11.io.bams:images";
    let secret = "Sup3r-s3cret-1";

    let t = admin
        .ok(
            Method::POST,
            "/api/v1/iscsi/targets",
            Some(json!({"iqn": iqn, "initiators": ["ALL"], "chap": {"user": "imgreader", "secret": secret}})),
        )
        .await;
    let id = t["id"].as_i64().unwrap();
    assert_eq!((t["backend"].as_str(), t["chap"]["user"].as_str()), (Some("tgt"), Some("imgreader")), "{t}");
    assert!(t["drift"][0].as_str().unwrap().contains("does not exist"), "{t}");
    let t = admin.ok(Method::POST, &format!("/api/v1/iscsi/targets/{id}/luns"), Some(json!({"path": img}))).await;
    assert_eq!((t["luns"][0]["lun"].as_u64(), t["luns"][0]["readonly"].as_bool()), (Some(1), Some(true)), "{t}");

    // Bad input: each a clear error, nothing stored.
    let luns = format!("/api/v1/iscsi/targets/{id}/luns");
    let bad = [
        ("/api/v1/iscsi/targets", json!({"iqn": "iqn.2026-13.io.bams:x"}), StatusCode::BAD_REQUEST, "YYYY-MM"),
        ("/api/v1/iscsi/targets", json!({"iqn": "target1"}), StatusCode::BAD_REQUEST, "iqn."),
        ("/api/v1/iscsi/targets", json!({"iqn": "iqn.2026-11.io.bams:Upper"}), StatusCode::BAD_REQUEST, "lower-case"),
        ("/api/v1/iscsi/targets", json!({"iqn": iqn}), StatusCode::CONFLICT, "already exists"),
        (
            "/api/v1/iscsi/targets",
            json!({"iqn": "iqn.2026-11.io.bams:other", "chap": {"user": "imgreader", "secret": "another-secret"}}),
            StatusCode::CONFLICT,
            "CHAP user",
        ),
        (
            "/api/v1/iscsi/targets",
            json!({"iqn": "iqn.2026-11.io.bams:weak", "chap": {"user": "u", "secret": "short"}}),
            StatusCode::BAD_REQUEST,
            "12-16",
        ),
        (&luns, json!({"lun": 1, "path": img}), StatusCode::CONFLICT, "LUN 1 is taken"),
        (&luns, json!({"lun": 0, "path": img}), StatusCode::BAD_REQUEST, "out of range"),
        (&luns, json!({"lun": 256, "path": img}), StatusCode::BAD_REQUEST, "out of range"),
        (&luns, json!({"path": "/etc/passwd"}), StatusCode::BAD_REQUEST, "outside the allowed"),
        (&luns, json!({"path": format!("{}/../../etc/passwd", images.display())}), StatusCode::BAD_REQUEST, "'..'"),
        (&luns, json!({"path": images.join("missing.img")}), StatusCode::BAD_REQUEST, "No such file"),
    ];
    for (path, body, want, says) in bad {
        let (st, b) = admin.call(Method::POST, path, Some(body.clone())).await;
        assert_error(st, &b, want, &body.to_string());
        assert!(b["error"]["message"].as_str().unwrap().contains(says), "{body}: {b}");
    }
    let list = admin.ok(Method::GET, "/api/v1/iscsi/targets", None).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");

    // Apply, idempotently; the LUN then reads back over iSCSI with CHAP.
    let first = admin.ok(Method::POST, &format!("/api/v1/iscsi/targets/{id}/apply"), None).await;
    assert!(first["changes"].as_array().unwrap().len() >= 3, "{first}");
    let again = admin.ok(Method::POST, &format!("/api/v1/iscsi/targets/{id}/apply"), None).await;
    assert_eq!(again["changes"], json!([]), "{again}");
    let t = admin.ok(Method::GET, &format!("/api/v1/iscsi/targets/{id}"), None).await;
    assert_eq!(t["drift"], json!([]), "{t}");
    let out = s.dir.path().join("read.raw");
    let url = format!("iscsi://imgreader%{secret}@127.0.0.1:{}/{iqn}/1", tgtd.portal_port());
    let r = std::process::Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw", &url])
        .arg(&out)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&img).unwrap());

    // Drift: a LUN removed behind BAMS's back shows up, and apply puts it back.
    let st = std::process::Command::new("tgtadm")
        .args([
            "-C",
            &port,
            "--lld",
            "iscsi",
            "--mode",
            "logicalunit",
            "--op",
            "delete",
            "--tid",
            &id.to_string(),
            "--lun",
            "1",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let t = admin.ok(Method::GET, &format!("/api/v1/iscsi/targets/{id}"), None).await;
    assert!(t["drift"][0].as_str().unwrap().contains("LUN 1"), "{t}");
    admin.ok(Method::POST, &format!("/api/v1/iscsi/targets/{id}/apply"), None).await;

    // A logged-in initiator is listed and blocks a plain delete.
    let mut io = std::process::Command::new("qemu-io")
        .args(["-r", "-f", "raw", &url])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let sessions = loop {
        let v = admin.ok(Method::GET, "/api/v1/iscsi/sessions", None).await;
        if !v["items"].as_array().unwrap().is_empty() || start.elapsed() > Duration::from_secs(15) {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(sessions["items"][0]["target"], iqn, "{sessions}");
    assert_eq!(sessions["items"][0]["address"], "127.0.0.1", "{sessions}");
    let (st, b) = admin.call(Method::DELETE, &format!("/api/v1/iscsi/targets/{id}"), None).await;
    assert_error(st, &b, StatusCode::CONFLICT, "delete with a session");
    let _ = io.kill();
    let _ = io.wait();

    // LUN removal and target deletion; the secret never left the server.
    let t = admin.ok(Method::DELETE, &format!("/api/v1/iscsi/targets/{id}/luns/1"), None).await;
    assert_eq!(t["luns"], json!([]));
    let (st, b) = admin.call(Method::DELETE, &format!("/api/v1/iscsi/targets/{id}/luns/1"), None).await;
    assert_error(st, &b, StatusCode::NOT_FOUND, "LUN gone");
    let (st, _) = admin.call(Method::DELETE, &format!("/api/v1/iscsi/targets/{id}?force=true"), None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let audit = admin.ok(Method::GET, "/api/v1/audit?limit=500", None).await.to_string();
    assert!(audit.contains("/api/v1/iscsi/targets/{id}/apply"), "apply is audited");
    assert!(!audit.contains(secret) && !s.log().contains(secret), "the CHAP secret was logged");
}

/// Write journal entries (export format) into a real journal file with systemd-journal-remote.
fn write_journal(dir: &Path, entries: &[(i64, &str, u8, &str)]) {
    let mut export = String::new();
    for (i, (micros, unit, prio, msg)) in entries.iter().enumerate() {
        export += &format!(
            "__REALTIME_TIMESTAMP={micros}\n__MONOTONIC_TIMESTAMP={}\n_BOOT_ID=0123456789abcdef0123456789abcdef\n\
             _SYSTEMD_UNIT={unit}\nPRIORITY={prio}\n_PID=42\nMESSAGE={msg}\n\n",
            1000 + i
        );
    }
    std::fs::create_dir_all(dir).unwrap();
    let mut child = std::process::Command::new("/lib/systemd/systemd-journal-remote")
        .arg("-o")
        .arg(dir.join("remote.journal"))
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("systemd-journal-remote (scripts/setup-dev.sh installs it)");
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), export.as_bytes()).unwrap();
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
}

async fn ws_connect(
    s: &Server,
    token: &str,
    path: &str,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    tokio_tungstenite::tungstenite::Error,
> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://127.0.0.1:{}{path}", s.port).into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    tokio_tungstenite::connect_async(req).await.map(|(ws, _)| ws)
}

async fn next_entry(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
) -> Value {
    use futures_util::StreamExt;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("no log entry within 10 s");
        if let Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) = msg {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_from_a_real_journal_and_files_streams_and_a_redacted_diagnostics_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let journal = tmp.path().join("journal");
    let base = 1_763_900_000_000_000i64; // 2025-11-23T12:13:20Z
    write_journal(
        &journal,
        &[
            (base, "bacula-sd.service", 6, "bams-sd: Version 9.6.7 started"),
            (base + 60_000_000, "bacula-sd.service", 3, "bams-sd: Error: no appendable volume"),
            (base + 120_000_000, "tgt.service", 6, "tgtd: target 1 created"),
            (base + 180_000_000, "bacula-sd.service", 6, "bams-sd: Sending spooled attrs"),
        ],
    );
    let app_log = tmp.path().join("app.log");
    // Secrets planted where an operator's logs and config carry them.
    let planted = [
        "Log-pass-s3cret",
        "Query-tok3n-value",
        "bams_t_00112233445566778899aabbccddeeff",
        "Smtp-pass-s3cret",
        "T0HOOK/B0HOOK/Hook-s3cret-path",
    ];
    std::fs::write(
        &app_log,
        format!(
            "2026-11-23T10:00:00Z first line\n2026-11-23T10:00:01Z second line\n\
             2026-11-23T10:00:02Z login retry password={} failed\n\
             2026-11-23T10:00:03Z GET /cb?id=7&access_token={} 200\n\
             2026-11-23T10:00:04Z client sent Authorization: Bearer {}\n",
            planted[0], planted[1], planted[2]
        ),
    )
    .unwrap();
    let cfg = tmp.path().join("config.yaml");
    std::fs::write(
        &cfg,
        format!(
            "logs:\n  journal_directory: {}\n  max_stream_clients: 1\n  services:\n    bacula-sd: {{unit: bacula-sd.service}}\n    app: {{file: {}}}\n\
             notifications:\n  webhooks: [\"https://hooks.example.org/services/{}\"]\n  email:\n    smtp_host: mail.example.org\n    password: {}\n",
            journal.display(),
            app_log.display(),
            planted[4],
            planted[3]
        ),
    )
    .unwrap();
    let s = Server::start_with(None, &[("BAMS_CONFIG", cfg.to_str().unwrap())]);
    let admin = Api::login(&s, "admin", &s.admin_password()).await;

    // journald through the real journalctl: unit filter, lines, grep, since.
    let all = admin.ok(Method::GET, "/api/v1/logs/bacula-sd", None).await;
    let msgs: Vec<&str> = all["items"].as_array().unwrap().iter().map(|e| e["message"].as_str().unwrap()).collect();
    assert_eq!(msgs.len(), 3, "{all}");
    assert!(msgs[0].contains("started") && msgs[2].contains("spooled"), "{msgs:?}");
    assert_eq!(all["items"][1]["priority"], 3);
    assert_eq!(all["items"][0]["time"], "2025-11-23T12:13:20.000000Z");
    let last = admin.ok(Method::GET, "/api/v1/logs/bacula-sd?lines=1", None).await;
    assert!(last["items"][0]["message"].as_str().unwrap().contains("spooled"), "{last}");
    let err = admin.ok(Method::GET, "/api/v1/logs/bacula-sd?grep=ERROR", None).await;
    assert_eq!(err["items"].as_array().unwrap().len(), 1, "{err}");
    let since = admin.ok(Method::GET, "/api/v1/logs/bacula-sd?since=2025-11-23T12:14:00Z", None).await;
    assert_eq!(since["items"].as_array().unwrap().len(), 2, "{since}");
    let file = admin.ok(Method::GET, "/api/v1/logs/app?grep=second", None).await;
    assert_eq!(file["items"][0]["time"], "2026-11-23T10:00:01.000000Z", "{file}");
    for (path, want) in [
        ("/api/v1/logs/nginx", StatusCode::NOT_FOUND),
        ("/api/v1/logs/..%2F..%2Fetc%2Fpasswd", StatusCode::NOT_FOUND),
        ("/api/v1/logs/app?lines=0", StatusCode::BAD_REQUEST),
        ("/api/v1/logs/app?lines=20000", StatusCode::BAD_REQUEST),
        ("/api/v1/logs/app?since=yesterday", StatusCode::BAD_REQUEST),
        ("/api/v1/logs/app/stream", StatusCode::BAD_REQUEST),
    ] {
        let (st, b) = admin.call(Method::GET, path, None).await;
        assert_error(st, &b, want, path);
    }

    // Follow the file over WebSocket: only new, matching lines, in order; one follower at most.
    let token = admin.token.clone().unwrap();
    let mut ws = ws_connect(&s, &token, "/api/v1/logs/app/stream?grep=keep").await.expect("connect");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut f = std::fs::OpenOptions::new().append(true).open(&app_log).unwrap();
    std::io::Write::write_all(
        &mut f,
        b"2026-11-23T10:00:02Z keep one\n2026-11-23T10:00:03Z drop me\n2026-11-23T10:00:04Z keep two\n",
    )
    .unwrap();
    assert_eq!(next_entry(&mut ws).await["message"], "2026-11-23T10:00:02Z keep one");
    assert_eq!(next_entry(&mut ws).await["message"], "2026-11-23T10:00:04Z keep two");
    match ws_connect(&s, &token, "/api/v1/logs/app/stream").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS),
        other => panic!("a second follower was not refused: {:?}", other.map(|_| ())),
    }
    drop(ws);
    let start = Instant::now();
    while ws_connect(&s, &token, "/api/v1/logs/app/stream").await.is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "the follower slot was not released");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The same as Server-Sent Events (what Cockpit's bridge carries): only new matching lines,
    // and the follower's place comes back when the client goes away.
    let events = || admin.http.get(s.url("/api/v1/logs/app/events?grep=keep")).bearer_auth(&token).send();
    let start = Instant::now();
    let mut resp = loop {
        let r = events().await.unwrap();
        if r.status() == StatusCode::OK {
            break r;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no place for the event stream: {}", r.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    std::io::Write::write_all(&mut f, b"2026-11-23T10:00:05Z drop again\n2026-11-23T10:00:06Z keep three\n").unwrap();
    let mut text = String::new();
    while !text.contains("keep three") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk()).await.expect("an event").unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk.expect("the stream stays open")));
    }
    assert!(text.contains("event: entry") && !text.contains("drop again") && !text.contains("keep one"), "{text}");
    drop(resp);
    let start = Instant::now();
    while ws_connect(&s, &token, "/api/v1/logs/app/stream").await.is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "the event stream's place was not released");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The diagnostics bundle: the expected files, and no secret anywhere in it.
    let chap_secret = "Bundle-s3cret1";
    admin
        .ok(
            Method::POST,
            "/api/v1/iscsi/targets",
            Some(json!({"iqn": "iqn.2026-11.io.bams:diag", "chap": {"user": "diaguser", "secret": chap_secret}})),
        )
        .await;
    admin.ok(Method::GET, "/api/v1/bacula/config", None).await; // creates the director password
    let resp = admin.http.get(s.url("/api/v1/diagnostics/bundle")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/gzip");
    let bytes = resp.bytes().await.unwrap();
    let mut files = BTreeMap::new();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().display().to_string();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut e, &mut text).unwrap();
        files.insert(name, text);
    }
    for want in [
        "version.txt",
        "config.yaml",
        "logs/bacula-sd.log",
        "logs/app.log",
        "catalog.json",
        "tape.json",
        "tape-media.json",
        "iscsi.json",
        "system.txt",
    ] {
        assert!(files.contains_key(&format!("bams-diagnostics/{want}")), "{want} missing: {:?}", files.keys());
    }
    assert!(files["bams-diagnostics/logs/bacula-sd.log"].contains("no appendable volume"));
    assert!(files["bams-diagnostics/tape.json"].contains("VT0001L8"));
    assert!(files["bams-diagnostics/tape-media.json"].contains("\"pools\""));
    assert!(files["bams-diagnostics/iscsi.json"].contains("diaguser"));
    let director = std::fs::read_to_string(s.data().join("bacula-director.password")).unwrap();
    let everything: String = files.values().cloned().collect();
    for secret in [chap_secret, s.admin_password().as_str(), director.trim()].into_iter().chain(planted) {
        assert!(!everything.contains(secret), "{secret} is in the diagnostics bundle");
    }
    assert!(files["bams-diagnostics/config.yaml"].contains("https://hooks.example.org/***"), "webhook host kept");
    assert!(files["bams-diagnostics/logs/app.log"].contains("second line"), "ordinary lines kept");
    let viewer_token = {
        admin
            .ok(
                Method::POST,
                "/api/v1/users",
                Some(json!({"username": "v", "password": "long-password", "role": "viewer"})),
            )
            .await;
        Api::login(&s, "v", "long-password").await
    };
    let (st, b) = viewer_token.call(Method::GET, "/api/v1/diagnostics/bundle", None).await;
    assert_error(st, &b, StatusCode::FORBIDDEN, "viewer downloads diagnostics");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tape_jobs_write_sets_to_the_virtual_library_and_the_cli_restores_them() {
    let s = Server::start(None);
    let admin = Api::login(&s, "admin", &s.admin_password()).await;
    let src = s.dir.path().join("src");
    write_tree(&src);
    random_file(&src.join("big.bin"), 3 << 20, 5);
    let repo = admin.ok(Method::GET, "/api/v1/repositories", None).await[0]["id"].as_i64().unwrap();
    let job = admin
        .ok(
            Method::POST,
            "/api/v1/jobs",
            Some(json!({"name": "src", "type": "backup", "paths": [src], "repository": repo})),
        )
        .await;
    let run = admin.ok(Method::POST, &format!("/api/v1/jobs/{}/run", job["id"]), None).await;
    let backup = admin.wait_run(run["run_id"].as_i64().unwrap()).await;
    assert_eq!(backup["status"], "succeeded", "{backup}");

    // Bad tape jobs are refused when created.
    for (options, says) in [
        (json!({}), "options.pool"),
        (json!({"pool": "no spaces"}), "options.pool"),
        (json!({"pool": "weekly", "snapshots": "some"}), "latest"),
        (json!({"pool": "weekly", "drive": 9}), "drive 9"),
    ] {
        let (st, b) = admin
            .call(
                Method::POST,
                "/api/v1/jobs",
                Some(json!({"name": "t", "type": "tape", "repository": repo, "options": options})),
            )
            .await;
        assert_error(st, &b, StatusCode::BAD_REQUEST, &options.to_string());
        assert!(b["error"]["message"].as_str().unwrap().contains(says), "{b}");
    }
    let tape = admin
        .ok(
            Method::POST,
            "/api/v1/jobs",
            Some(json!({"name": "weekly-tape", "type": "tape", "repository": repo, "options": {"pool": "weekly"}})),
        )
        .await;
    let run = admin.ok(Method::POST, &format!("/api/v1/jobs/{}/run", tape["id"]), None).await;
    let r = admin.wait_run(run["run_id"].as_i64().unwrap()).await;
    assert_eq!(r["status"], "succeeded", "{r}");
    let log = admin.ok(Method::GET, &format!("/api/v1/runs/{}/log", r["id"]), None).await;
    let log = log["log"].as_str().unwrap();
    let set_id = log.split("wrote tape set ").nth(1).and_then(|t| t.split_whitespace().next()).expect(log).to_string();
    assert!(log.contains("on VT0001L8"), "{log}");
    let lib = admin.ok(Method::GET, "/api/v1/tape/library", None).await;
    assert!(lib["drives"][0]["loaded"].is_null(), "the cartridge went back to its slot: {lib}");

    // The set restores with the CLI from the server's library into a complete repository.
    let target = s.dir.path().join("from-tape");
    let key = s.data().join("keys/default.key");
    let bams = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_bams")).args(args).env_remove("BAMS_PASSWORD").output().unwrap();
        assert!(out.status.success(), "bams {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        out
    };
    let vtl = s.data().join("vtl");
    bams(&[
        "--key-file",
        key.to_str().unwrap(),
        "tape",
        "restore",
        "--library",
        vtl.to_str().unwrap(),
        "--set",
        &set_id,
        "--target",
        target.to_str().unwrap(),
    ]);
    bams(&["-r", target.to_str().unwrap(), "--key-file", key.to_str().unwrap(), "check", "--read-data"]);
    let out_dir = s.dir.path().join("restored");
    let snap = backup["snapshot_id"].as_str().unwrap();
    bams(&[
        "-r",
        target.to_str().unwrap(),
        "--key-file",
        key.to_str().unwrap(),
        "restore",
        snap,
        "--target",
        out_dir.to_str().unwrap(),
    ]);
    let restored = out_dir.join(src.strip_prefix("/").unwrap());
    assert_eq!(std::fs::read(restored.join("big.bin")).unwrap(), std::fs::read(src.join("big.bin")).unwrap());

    // The media database as the API shows it: the set, its volume, the pool made by the job.
    let sets = admin.ok(Method::GET, "/api/v1/tape/sets?pool=weekly", None).await;
    let first = sets["items"].as_array().unwrap().iter().find(|t| t["set_id"] == set_id.as_str()).expect("set");
    assert_eq!((first["complete"].as_bool(), first["volumes"].clone()), (Some(true), json!(["VT0001L8"])));
    let vol = admin.ok(Method::GET, "/api/v1/tape/volumes/VT0001L8", None).await;
    assert_eq!(
        (vol["pool"].as_str(), vol["status"].as_str(), vol["recyclable"].as_bool()),
        (Some("weekly"), Some("append"), Some(false))
    );
    let pool = admin.ok(Method::GET, "/api/v1/tape/pools/weekly", None).await;
    assert_eq!((pool["volumes"].as_u64(), pool["sets"].as_u64()), (Some(1), Some(1)));

    // Pools: admins define them, with checked policies; operators archive or free volumes.
    let op = admin.add_user(&s, "op", "long-password", "operator").await;
    let (st, b) = op.call(Method::POST, "/api/v1/tape/pools", Some(json!({"name": "monthly"}))).await;
    assert_error(st, &b, StatusCode::FORBIDDEN, "operator creates a pool");
    let (st, b) =
        admin.call(Method::POST, "/api/v1/tape/pools", Some(json!({"name": "monthly", "retention_days": 31}))).await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
    assert_eq!((b["retention_days"].as_u64(), b["recycle"].as_bool()), (Some(31), Some(true)));
    for (method, path, body, want) in [
        (Method::POST, "/api/v1/tape/pools", json!({"name": "monthly"}), StatusCode::CONFLICT),
        (Method::POST, "/api/v1/tape/pools", json!({"name": "../etc"}), StatusCode::BAD_REQUEST),
        (Method::POST, "/api/v1/tape/pools", json!({"name": "x", "max_volumes": 0}), StatusCode::BAD_REQUEST),
        (Method::POST, "/api/v1/tape/pools", json!({"name": "x", "colour": "red"}), StatusCode::UNPROCESSABLE_ENTITY),
        (Method::PUT, "/api/v1/tape/pools/nope", json!({}), StatusCode::NOT_FOUND),
        (Method::DELETE, "/api/v1/tape/pools/weekly", json!(null), StatusCode::CONFLICT),
        (Method::PATCH, "/api/v1/tape/volumes/VT0001L8", json!({"status": "gone"}), StatusCode::UNPROCESSABLE_ENTITY),
        (Method::PATCH, "/api/v1/tape/volumes/NOPE01L8", json!({"status": "archive"}), StatusCode::NOT_FOUND),
        (Method::GET, "/api/v1/tape/sets/0123456789abcdef", json!(null), StatusCode::NOT_FOUND),
    ] {
        let body = (!body.is_null()).then_some(body);
        let (st, b) = admin.call(method.clone(), path, body.clone()).await;
        assert_error(st, &b, want, &format!("{method} {path} {body:?}"));
    }
    let (st, _) = admin.call(Method::DELETE, "/api/v1/tape/pools/monthly", None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);

    // Recycling from a job: the pool keeps sets for 0 days and one volume, the volume is full,
    // so the next tape job relabels it and the old set is gone.
    admin
        .ok(
            Method::PUT,
            "/api/v1/tape/pools/weekly",
            Some(json!({"retention_days": 0, "max_volumes": 1, "recycle": true})),
        )
        .await;
    let v = op.ok(Method::PATCH, "/api/v1/tape/volumes/VT0001L8", Some(json!({"status": "full"}))).await;
    assert_eq!((v["status"].as_str(), v["recyclable"].as_bool()), (Some("full"), Some(true)));
    let run = admin.ok(Method::POST, &format!("/api/v1/jobs/{}/run", tape["id"]), None).await;
    let r = admin.wait_run(run["run_id"].as_i64().unwrap()).await;
    assert_eq!(r["status"], "succeeded", "{r}");
    let vol = admin.ok(Method::GET, "/api/v1/tape/volumes/VT0001L8", None).await;
    assert_eq!((vol["recycled"].as_u64(), vol["sets"].as_array().map(Vec::len)), (Some(1), Some(1)), "{vol}");
    let (st, b) = admin.call(Method::GET, &format!("/api/v1/tape/sets/{set_id}"), None).await;
    assert_error(st, &b, StatusCode::NOT_FOUND, "the recycled set");
    // Archived, it is kept: with no other volume allowed, the job fails and says why.
    op.ok(Method::PATCH, "/api/v1/tape/volumes/VT0001L8", Some(json!({"status": "archive"}))).await;
    let run = admin.ok(Method::POST, &format!("/api/v1/jobs/{}/run", tape["id"]), None).await;
    let r = admin.wait_run(run["run_id"].as_i64().unwrap()).await;
    assert_eq!(r["status"], "failed", "{r}");
    let log = admin.ok(Method::GET, &format!("/api/v1/runs/{}/log", r["id"]), None).await;
    assert!(log["log"].as_str().unwrap().contains("no writable volume for pool weekly"), "{log}");
}

/// A `bams agent` process, killed when dropped.
struct AgentProcess(std::process::Child);

impl AgentProcess {
    /// Start `bams agent` with the credential in `state`, logging to `<state>/agent.log`.
    fn start(state: &Path) -> Self {
        Self::start_with(state, &[])
    }

    /// The same with more arguments.
    fn start_with(state: &Path, args: &[&str]) -> Self {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(state.join("agent.log")).unwrap();
        Self(
            Command::new(env!("CARGO_BIN_EXE_bams"))
                .args(["agent", "--state-dir", state.to_str().unwrap()])
                .args(args)
                .stdout(std::process::Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    }
}

/// Create agent `name`, enroll it into `<server dir>/<name>` and start it with `args`.
async fn enrolled_agent(s: &Server, admin: &Api, name: &str, args: &[&str]) -> (i64, PathBuf, AgentProcess) {
    let created = admin.ok(Method::POST, "/api/v1/agents", Some(json!({"name": name}))).await;
    let state = s.dir.path().join(name);
    let out = Command::new(env!("CARGO_BIN_EXE_bams"))
        .args(["agent", "enroll", "--server", &s.url(""), "--state-dir", state.to_str().unwrap()])
        .env("BAMS_ENROLLMENT_TOKEN", created["enrollment_token"].as_str().unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let agent = AgentProcess::start_with(&state, args);
    (created["id"].as_i64().unwrap(), state, agent)
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_enroll_back_up_restore_across_machines_and_revoked_ones_are_refused() {
    let s = Server::start_with(None, &[("BAMS_AGENT_WAIT_SECS", "3"), ("BAMS_AGENT_HEARTBEAT_TIMEOUT_SECS", "5")]);
    let admin = Api::login(&s, "admin", &s.admin_password()).await;
    let op = admin.add_user(&s, "op", "long-password", "operator").await;

    // Creating agents: admin only, unique and well-formed names.
    let (st, b) = op.call(Method::POST, "/api/v1/agents", Some(json!({"name": "web1"}))).await;
    assert_error(st, &b, StatusCode::FORBIDDEN, "operator creates an agent");
    let (st, created) = admin.call(Method::POST, "/api/v1/agents", Some(json!({"name": "web1"}))).await;
    assert_eq!(st, StatusCode::CREATED, "{created}");
    assert_eq!(created["status"], "pending");
    let agent_id = created["id"].as_i64().unwrap();
    let token = created["enrollment_token"].as_str().unwrap().to_string();
    for (body, want) in [
        (json!({"name": "web1"}), StatusCode::CONFLICT),
        (json!({"name": "../x"}), StatusCode::BAD_REQUEST),
        (json!({"name": "a", "extra": 1}), StatusCode::UNPROCESSABLE_ENTITY),
    ] {
        let (st, b) = admin.call(Method::POST, "/api/v1/agents", Some(body.clone())).await;
        assert_error(st, &b, want, &body.to_string());
    }

    // Enrollment: once, with the token; the credential is kept 0600.
    let state = s.dir.path().join("agent-state");
    let enroll = |tok: &str| {
        Command::new(env!("CARGO_BIN_EXE_bams"))
            .args(["agent", "enroll", "--server", &s.url(""), "--token", tok, "--state-dir", state.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let out = enroll("bams_e_wrong");
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("refused"));
    let out = enroll(&token);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(state.join("agent.json")).unwrap().permissions())
            & 0o777;
    assert_eq!(mode, 0o600);
    let again = enroll(&token);
    assert!(!again.status.success(), "an enrollment token works once");
    let credential: Value = serde_json::from_slice(&std::fs::read(state.join("agent.json")).unwrap()).unwrap();
    let credential = credential["credential"].as_str().unwrap().to_string();
    // The credential is for the agent routes and the repository endpoint only.
    let as_agent = Api { http: reqwest::Client::new(), base: s.url(""), token: Some(credential.clone()) };
    let (st, b) = as_agent.call(Method::GET, "/api/v1/jobs", None).await;
    assert_error(st, &b, StatusCode::FORBIDDEN, "agent credential on the jobs API");
    let (st, b) = admin.call(Method::POST, "/api/v1/agent/poll", Some(json!({"hostname": "x", "version": "1"}))).await;
    assert_error(st, &b, StatusCode::FORBIDDEN, "a user polling as an agent");

    let mut agent = AgentProcess::start(&state);

    // Jobs for agents: backup only, and the agent must exist.
    let src = s.dir.path().join("agent-src");
    write_tree(&src);
    random_file(&src.join("big.bin"), 3 << 20, 21);
    let repo = admin.ok(Method::GET, "/api/v1/repositories", None).await[0]["id"].as_i64().unwrap();
    for (body, want) in [
        (
            json!({"name": "p", "type": "prune", "agent": agent_id, "repository": repo}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"name": "p", "type": "backup", "agent": 999, "paths": [src], "repository": repo}),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (st, b) = admin.call(Method::POST, "/api/v1/jobs", Some(body.clone())).await;
        assert_error(st, &b, want, &body.to_string());
    }
    let job = admin
        .ok(
            Method::POST,
            "/api/v1/jobs",
            Some(
                json!({"name": "web1-files", "type": "backup", "agent": agent_id, "paths": [src], "repository": repo}),
            ),
        )
        .await;
    let run_level = |level: &'static str| admin.run_job(job["id"].as_i64().unwrap(), Some(json!({"level": level})));
    let full = run_level("full").await;
    assert_eq!(
        full["status"],
        "succeeded",
        "{full}\n{}",
        std::fs::read_to_string(s.dir.path().join("agent.log")).unwrap()
    );
    assert_eq!((full["level"].as_str(), full["agent_id"].as_i64()), (Some("full"), Some(agent_id)));
    let log = admin.ok(Method::GET, &format!("/api/v1/runs/{}/log", full["id"]), None).await;
    assert!(log["log"].as_str().unwrap().contains("assigned to agent web1"), "{log}");
    assert!(log["log"].as_str().unwrap().contains("into repository default@web1"), "{log}");
    // The agent backed up into a repository of its own under the job's, with a key of its
    // own; its credential reaches that repository and no other, not even the job's.
    let repos = admin.ok(Method::GET, "/api/v1/repositories", None).await;
    let own = repos.as_array().unwrap().iter().find(|r| r["name"] == "default@web1").expect("own repository");
    assert_eq!((own["parent"].as_i64(), own["agent"].as_i64()), (Some(repo), Some(agent_id)), "{own}");
    let key = |name: &str| std::fs::read(s.data().join(format!("keys/{name}.key"))).unwrap();
    assert_ne!(key("default@web1"), key("default"), "the agent's key is not the parent's");
    let other = s.data().join("not-for-agents");
    admin.ok(Method::POST, "/api/v1/repositories", Some(json!({"name": "not-for-agents", "url": other}))).await;
    as_agent.ok(Method::GET, "/api/v1/repo/default@web1/list?prefix=snapshots/", None).await;
    for name in ["not-for-agents", "default"] {
        let (st, b) = as_agent.call(Method::GET, &format!("/api/v1/repo/{name}/list"), None).await;
        assert_error(st, &b, StatusCode::FORBIDDEN, &format!("an agent on repository {name}"));
    }
    let a = admin.ok(Method::GET, &format!("/api/v1/agents/{agent_id}"), None).await;
    assert_eq!((a["status"].as_str(), a["online"].as_bool()), (Some("active"), Some(true)), "{a}");

    // Incremental: based on the Full, only the change travels; its log is followed live.
    std::fs::write(src.join("small.txt"), b"changed on the agent").unwrap();
    let queued =
        admin.ok(Method::POST, &format!("/api/v1/jobs/{}/run", job["id"]), Some(json!({"level": "incremental"}))).await;
    let token = admin.token.clone().unwrap();
    let mut ws = ws_connect(&s, &token, &format!("/api/v1/runs/{}/log/stream", queued["run_id"])).await.unwrap();
    let mut streamed = String::new();
    let end = loop {
        let ev = next_entry(&mut ws).await;
        match ev["log"].as_str() {
            Some(text) => streamed += text,
            None => break ev,
        }
    };
    assert_eq!(end["status"], "succeeded", "{end}");
    assert!(streamed.contains("assigned to agent web1") && streamed.contains("succeeded:"), "{streamed}");
    let incr = admin.wait_run(queued["run_id"].as_i64().unwrap()).await;
    assert_eq!(incr["status"], "succeeded", "{incr}");
    assert_eq!(incr["level"], "incremental");
    assert!(incr["new_bytes"].as_i64().unwrap() < 1 << 20, "only the change is new: {incr}");
    let snaps = admin.ok(Method::GET, &format!("/api/v1/snapshots?repository={repo}"), None).await;
    let ids: Vec<&str> = snaps["items"].as_array().unwrap().iter().filter_map(|s| s["id"].as_str()).collect();
    let snap = incr["snapshot_id"].as_str().unwrap();
    assert!(ids.contains(&snap), "the agent's snapshot is listed with its parent's: {snaps}");
    assert!(snaps["items"].as_array().unwrap().iter().all(|s| s["repository"] == own["id"]), "{snaps}");
    // Its ACL object sits below the parent's: a reader entry there lets a viewer read this
    // machine's backups and no other's.
    let auditor = admin.add_user(&s, "auditor", "long-password", "viewer").await;
    let acl = json!({"path": "/repositories/default/agents/web1", "user": "auditor", "role": "reader"});
    admin.ok(Method::POST, "/api/v1/acl", Some(acl)).await;
    let perms = auditor.ok(Method::GET, "/api/v1/auth/permissions", None).await;
    let privs_at =
        |path: &str| perms.as_array().unwrap().iter().find(|p| p["path"] == path).map(|p| p["privileges"].to_string());
    assert!(privs_at("/repositories/default/agents/web1").is_some_and(|p| p.contains("Datastore.Read")), "{perms}");
    assert!(privs_at("/repositories/default").is_some_and(|p| !p.contains("Datastore.Read")), "{perms}");
    let tree = format!("/api/v1/snapshots/{snap}/tree?repository={}&path=/", own["id"]);
    auditor.ok(Method::GET, &tree, None).await;
    let (st, b) =
        auditor.call(Method::GET, &format!("/api/v1/snapshots/{snap}/tree?repository={repo}&path=/"), None).await;
    assert!(st == StatusCode::FORBIDDEN || st == StatusCode::NOT_FOUND, "{st} {b}");

    // The snapshot restores byte-identical from the agent's repository.
    let target = s.dir.path().join("agent-restore");
    restore_from(&s, "default@web1", snap, &target);
    let root = target.join(src.strip_prefix("/").unwrap());
    assert_eq!(std::fs::read(root.join("big.bin")).unwrap(), std::fs::read(src.join("big.bin")).unwrap());
    assert_eq!(std::fs::read(root.join("small.txt")).unwrap(), b"changed on the agent");
    check_repo_named(&s, "default@web1");

    // Restore jobs run on agents: the agent's own snapshot, verified…
    for (body, want) in [
        (
            json!({"name": "r", "type": "restore", "repository": repo, "options": {"snapshot": "latest", "target": "/tmp/x"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"name": "r", "type": "restore", "agent": agent_id, "repository": repo, "options": {"snapshot": "latest", "target": "rel/x"}}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"name": "r", "type": "restore", "agent": agent_id, "repository": repo, "options": {"snapshot": "latest", "target": "/a/../b"}}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"name": "r", "type": "restore", "agent": agent_id, "repository": repo, "options": {"target": "/tmp/x"}}),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (st, b) = admin.call(Method::POST, "/api/v1/jobs", Some(body.clone())).await;
        assert_error(st, &b, want, &body.to_string());
    }
    let run_job = |id: i64| admin.run_job(id, None);
    let own_target = s.dir.path().join("agent-restore-job");
    let restore_job = admin
        .ok(
            Method::POST,
            "/api/v1/jobs",
            Some(json!({"name": "web1-restore", "type": "restore", "agent": agent_id, "repository": repo,
                        "options": {"snapshot": &snap[..12], "target": own_target, "verify": true}})),
        )
        .await;
    let r = run_job(restore_job["id"].as_i64().unwrap()).await;
    assert_eq!(r["status"], "succeeded", "{r}");
    assert!(r["message"].as_str().unwrap().contains("verified"), "{r}");
    let root = own_target.join(src.strip_prefix("/").unwrap());
    assert_eq!(std::fs::read(root.join("big.bin")).unwrap(), std::fs::read(src.join("big.bin")).unwrap());
    // …and, for an admin, another machine's latest snapshot onto a second agent.
    let (web2, web2_state, web2_process) = enrolled_agent(&s, &admin, "web2", &[]).await;
    let cross_target = s.dir.path().join("cross-restore");
    let cross = admin
        .ok(
            Method::POST,
            "/api/v1/jobs",
            Some(json!({"name": "web1-to-web2", "type": "restore", "agent": web2, "repository": repo,
                        "options": {"snapshot": "latest", "source_agent": agent_id, "target": cross_target}})),
        )
        .await;
    let r = run_job(cross["id"].as_i64().unwrap()).await;
    assert_eq!(r["status"], "succeeded", "{r}");
    let log = admin.ok(Method::GET, &format!("/api/v1/runs/{}/log", r["id"]), None).await;
    assert!(log["log"].as_str().unwrap().contains(&format!("restore of snapshot {}", &snap[..8])), "{log}");
    assert!(log["log"].as_str().unwrap().contains("(cross-machine)"), "{log}");
    // The server brought the snapshot into web2's own repository, re-encrypted: web2 never
    // had web1's key or repository, and still cannot reach it.
    assert!(
        log["log"].as_str().unwrap().contains("of repository default@web1 copied into repository default@web2"),
        "{log}"
    );
    let root = cross_target.join(src.strip_prefix("/").unwrap());
    assert_eq!(std::fs::read(root.join("small.txt")).unwrap(), b"changed on the agent");
    let web2_credential: Value =
        serde_json::from_slice(&std::fs::read(web2_state.join("agent.json")).unwrap()).unwrap();
    let as_web2 = Api {
        http: reqwest::Client::new(),
        base: s.url(""),
        token: Some(web2_credential["credential"].as_str().unwrap().to_string()),
    };
    for path in
        ["/api/v1/repo/default@web1/list", "/api/v1/repo/default@web1/object?key=config", "/api/v1/repo/default/list"]
    {
        let (st, b) = as_web2.call(Method::GET, path, None).await;
        assert_error(st, &b, StatusCode::FORBIDDEN, &format!("web2 on {path}"));
    }
    check_repo_named(&s, "default@web2");

    // A pool of trusted machines may share one repository (and its key) for deduplication
    // across them; it says so, and its agents then write into the pool's repository itself.
    let fleet = admin
        .ok(Method::POST, "/api/v1/repositories", Some(json!({"name": "fleet", "url": s.data().join("fleet")})))
        .await;
    admin
        .ok(
            Method::POST,
            "/api/v1/pools",
            Some(json!({"name": "fleet", "repository": fleet["id"], "shared_dedup": true})),
        )
        .await;
    let shared = admin
        .ok(
            Method::POST,
            "/api/v1/jobs",
            Some(json!({"name": "web2-shared", "type": "backup", "agent": web2, "paths": [src], "pool": "fleet"})),
        )
        .await;
    let r = run_job(shared["id"].as_i64().unwrap()).await;
    assert_eq!(r["status"], "succeeded", "{r}");
    let snaps = admin.ok(Method::GET, &format!("/api/v1/snapshots?repository={}", fleet["id"]), None).await;
    assert_eq!(snaps["items"][0]["repository"], fleet["id"], "{snaps}");
    as_web2.ok(Method::GET, "/api/v1/repo/fleet/list?prefix=snapshots/", None).await;
    let (st, b) = as_agent.call(Method::GET, "/api/v1/repo/fleet/list", None).await;
    assert_error(st, &b, StatusCode::FORBIDDEN, "web1 on the pool of web2's job");
    drop(web2_process);

    // Revoked: refused at once; its queued run fails for want of an agent.
    let r = admin.ok(Method::POST, &format!("/api/v1/agents/{agent_id}/revoke"), None).await;
    assert_eq!(r["status"], "revoked");
    let (st, _) =
        as_agent.call(Method::POST, "/api/v1/agent/poll", Some(json!({"hostname": "x", "version": "1"}))).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, _) = as_agent.call(Method::GET, "/api/v1/repo/default/object?key=config", None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "the repository endpoint refuses it too");
    let orphan = run_level("incremental").await;
    assert_eq!(orphan["status"], "failed", "{orphan}");
    assert!(orphan["message"].as_str().unwrap().contains("did not come"), "{orphan}");
    assert!(agent.0.try_wait().unwrap().is_none(), "the agent keeps running, refused, until an admin acts");
    let (st, b) = admin
        .call(
            Method::POST,
            "/api/v1/jobs",
            Some(json!({"name": "again", "type": "backup", "agent": agent_id, "paths": [src], "repository": repo})),
        )
        .await;
    assert_error(st, &b, StatusCode::BAD_REQUEST, "a job for a revoked agent");
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_killed_or_cut_off_mid_backup_end_their_runs_in_a_defined_state_and_resume() {
    // 20 MB/s: slow enough to interrupt, and the limit is measured.
    const LIMIT: u64 = 20_000_000;
    let mut s = Server::start_with(None, &[("BAMS_AGENT_HEARTBEAT_TIMEOUT_SECS", "4")]);
    let admin = Api::login(&s, "admin", &s.admin_password()).await;
    let (agent_id, state, agent) = enrolled_agent(&s, &admin, "db1", &[]).await;
    let src = s.dir.path().join("db1-src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..24 {
        random_file(&src.join(format!("f{i}")), 10 << 20, i + 100);
    }
    let job = admin
        .ok(
            Method::POST,
            "/api/v1/jobs",
            Some(json!({
                "name": "db1", "type": "backup", "agent": agent_id, "paths": [src], "repository": 1, "level": "full",
                "options": {"bandwidth_limit": LIMIT}
            })),
        )
        .await;
    let start_and_wait_for_data = |admin: Api| {
        let (job, data) = (job["id"].as_i64().unwrap(), s.data().join("repo/agents/db1/data"));
        async move {
            let run =
                admin.ok(Method::POST, &format!("/api/v1/jobs/{job}/run"), None).await["run_id"].as_i64().unwrap();
            let start = Instant::now();
            loop {
                let r = admin.ok(Method::GET, &format!("/api/v1/runs/{run}"), None).await;
                let packs = std::fs::read_dir(&data).map(|d| d.flatten().count()).unwrap_or(0);
                if r["status"] == "running" && packs >= 2 {
                    return run;
                }
                assert!(r["status"] != "succeeded", "the backup ended before the interruption: {r}");
                assert!(start.elapsed() < Duration::from_secs(60), "the agent did not start: {r}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };

    // Killed mid-backup: its heartbeats stop, the run fails with the reason.
    let run = start_and_wait_for_data(admin.clone()).await;
    let stored_before =
        std::fs::read_dir(s.data().join("repo/agents/db1/data")).map(|d| d.flatten().count()).unwrap_or(0);
    drop(agent);
    let r = admin.wait_run(run).await;
    assert_eq!(r["status"], "failed", "{r}");
    assert!(r["message"].as_str().unwrap().contains("agent lost"), "{r}");

    // An assignment that goes to an agent which dies before starting it (here: taken by hand
    // and never acknowledged) is queued again; the restarted agent runs it, reusing the packs
    // that were stored and sending only the rest.
    let run =
        admin.ok(Method::POST, &format!("/api/v1/jobs/{}/run", job["id"]), None).await["run_id"].as_i64().unwrap();
    let credential: Value = serde_json::from_slice(&std::fs::read(state.join("agent.json")).unwrap()).unwrap();
    let as_agent = Api {
        http: reqwest::Client::new(),
        base: s.url(""),
        token: credential["credential"].as_str().map(String::from),
    };
    let poll = json!({"hostname": "h", "version": "v", "wait_secs": 5});
    let taken = as_agent.ok(Method::POST, "/api/v1/agent/poll", Some(poll)).await;
    assert_eq!(taken["assignments"][0]["run_id"].as_i64(), Some(run), "{taken}");
    let agent = AgentProcess::start(&state);
    let r = admin.wait_run(run).await;
    let log = admin.ok(Method::GET, &format!("/api/v1/runs/{run}/log"), None).await;
    assert!(log["log"].as_str().unwrap().contains("did not acknowledge"), "{log}");
    assert_eq!(r["status"], "succeeded", "{r}\n{}", std::fs::read_to_string(state.join("agent.log")).unwrap());
    assert!(r["message"].as_str().unwrap().contains("reused"), "{r}");
    let total = 24 * (10 << 20);
    assert!(stored_before >= 2 && r["new_bytes"].as_i64().unwrap() < total, "stored chunks were not sent again: {r}");
    // The job's bandwidth limit held: never above it, and within 10% of it.
    let message = r["message"].as_str().unwrap();
    let rate: f64 = message.split(" at ").nth(1).and_then(|t| t.split(" B/s").next()).unwrap().parse().unwrap();
    eprintln!("bandwidth-limited agent backup: {message}");
    assert!(
        rate <= LIMIT as f64 * 1.001 && rate >= LIMIT as f64 * 0.9,
        "upload rate {rate} vs limit {LIMIT}: {message}"
    );

    // The server killed mid-backup: the agent keeps its outcome until the server is back, and
    // the run ends succeeded or failed — never left running or marked interrupted.
    std::fs::write(src.join("f0"), b"changed").unwrap();
    let run = start_and_wait_for_data(admin.clone()).await;
    s.kill9();
    tokio::time::sleep(Duration::from_secs(1)).await;
    s.spawn();
    let admin = Api::login(&s, "admin", &s.admin_password()).await;
    let r = admin.wait_run(run).await;
    assert!(matches!(r["status"].as_str(), Some("succeeded" | "failed")), "{r}");
    assert!(!r["message"].as_str().unwrap_or_default().is_empty(), "{r}");
    check_repo_named(&s, "default@db1");
    drop(agent);
}

/// A webhook receiver on 127.0.0.1: answers 500 to the first request and 200 after, and keeps
/// every body it got.
fn webhook_receiver() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = got.clone();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().flatten().enumerate().take(50) {
            let mut reader = BufReader::new(stream);
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; len];
            let _ = reader.read_exact(&mut body);
            seen.lock().unwrap().push(String::from_utf8_lossy(&body).into_owned());
            let status = if n == 0 { "500 Internal Server Error" } else { "200 OK" };
            let _ = reader
                .get_mut()
                .write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes());
        }
    });
    (port, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_sends_the_webhook_with_retries_and_an_email_over_starttls() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca) = test_certificates(dir.path());
    let smtp = bams_testkit::SmtpServer::start(&cert, &key, &dir.path().join("maildir"));
    let (hook_port, hooks) = webhook_receiver();
    let webhooks = format!("[\"http://127.0.0.1:{hook_port}/hook\"]");
    let smtp_port = smtp.port().to_string();
    let s = Server::start_with(
        None,
        &[
            ("BAMS_NOTIFICATIONS_WEBHOOKS", webhooks.as_str()),
            ("BAMS_NOTIFICATIONS_EMAIL_SMTP_HOST", "127.0.0.1"),
            ("BAMS_NOTIFICATIONS_EMAIL_SMTP_PORT", smtp_port.as_str()),
            ("BAMS_NOTIFICATIONS_EMAIL_FROM", "bams@test.local"),
            ("BAMS_NOTIFICATIONS_EMAIL_TO", "[\"ops@test.local\"]"),
            ("BAMS_NOTIFICATIONS_EMAIL_CA_CERT", ca.to_str().unwrap()),
            ("BAMS_AGENT_WAIT_SECS", "2"),
        ],
    );
    let admin = Api::login(&s, "admin", &s.admin_password()).await;
    let (st, b) = admin
        .call(
            Method::POST,
            "/api/v1/jobs",
            Some(json!({"name": "x", "type": "backup", "paths": ["/tmp"], "repository": 1,
                        "options": {"notify": {"webhooks": ["ftp://nope"]}}})),
        )
        .await;
    assert_error(st, &b, StatusCode::BAD_REQUEST, "a webhook that is not http(s)");
    // A job whose agent never comes for it fails (a machine that is switched off).
    let agent = admin.ok(Method::POST, "/api/v1/agents", Some(json!({"name": "laptop"}))).await;
    let job = admin
        .ok(
            Method::POST,
            "/api/v1/jobs",
            Some(json!({"name": "broken", "type": "backup", "agent": agent["id"], "paths": ["/home"], "repository": 1,
                        "options": {"notify": {"email": ["owner@test.local"]}}})),
        )
        .await;
    let run = admin.ok(Method::POST, &format!("/api/v1/jobs/{}/run", job["id"]), None).await;
    let r = admin.wait_run(run["run_id"].as_i64().unwrap()).await;
    assert_eq!(r["status"], "failed", "{r}");
    let start = Instant::now();
    loop {
        let (bodies, mails) = (hooks.lock().unwrap().clone(), smtp.messages());
        if bodies.len() >= 2 && !mails.is_empty() {
            // The first POST was answered 500 and retried with the same notification.
            let n: Value = serde_json::from_str(&bodies[1]).unwrap();
            assert_eq!((n["event"].as_str(), n["job"].as_str()), (Some("failure"), Some("broken")), "{n}");
            assert_eq!(n["run"]["id"], r["id"]);
            assert_eq!(bodies[0], bodies[1]);
            let mail = &mails[0];
            assert!(mail.contains("Subject: [BAMS] broken: run") && mail.contains("FAILED"), "{mail}");
            assert!(mail.contains("ops@test.local") && mail.contains("owner@test.local"), "{mail}");
            assert!(mail.contains("X-Peer") || mail.contains("Received") || mail.contains("Status: failed"), "{mail}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "webhook bodies {bodies:?}, mails {mails:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_jobs_run_commands_around_the_backup_and_back_up_a_dump_stream() {
    let s = Server::start(None);
    let admin = Api::login(&s, "admin", &s.admin_password()).await;
    // This machine runs one job at a time.
    let (agent, _state, _agent) = enrolled_agent(&s, &admin, "db2", &["--max-jobs", "1"]).await;
    let marks = s.dir.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let sh = |script: String| json!({"argv": ["/bin/sh", "-c", script], "timeout_secs": 30});
    let job = |name: &str, hooks: Value| json!({"name": name, "type": "backup", "agent": agent, "paths": [], "repository": 1, "options": {"hooks": hooks}});

    // Bad hooks are refused when the job is created.
    for (body, want) in [
        (
            json!({"name": "h", "type": "backup", "paths": ["/tmp"], "repository": 1, "options": {"hooks": {"before": [{"argv": ["/bin/true"]}]}}}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"name": "h", "type": "backup", "agent": agent, "paths": ["/tmp"], "repository": 1, "options": {"hooks": {"stdin": {"argv": ["/bin/echo"], "name": "x"}}}}),
            StatusCode::BAD_REQUEST,
        ),
        (job("h", json!({"before": [{"argv": []}]})), StatusCode::BAD_REQUEST),
        (job("h", json!({"stdin": {"argv": ["/bin/echo"], "name": "a/b"}})), StatusCode::BAD_REQUEST),
        (job("h", json!({"before": [{"argv": ["/bin/true"], "timeout_secs": 0}]})), StatusCode::BAD_REQUEST),
    ] {
        let (st, b) = admin.call(Method::POST, "/api/v1/jobs", Some(body.clone())).await;
        assert_error(st, &b, want, &body.to_string());
    }
    let run = |id: i64| admin.run_job(id, None);

    // Before, a dump streamed into the snapshot, after (told the outcome).
    let dump = "echo 'CREATE TABLE t (x int);'; echo 'INSERT INTO t VALUES (1);'";
    let good = admin
        .ok(
            Method::POST,
            "/api/v1/jobs",
            Some(job(
                "pg",
                json!({
                    "before": [sh(format!("echo ready > {}/before", marks.display()))],
                    "after": [sh(format!("echo $BAMS_RUN_STATUS > {}/after", marks.display()))],
                    "stdin": {"argv": ["/bin/sh", "-c", dump], "name": "db.sql", "timeout_secs": 60}
                }),
            )),
        )
        .await;
    let r = run(good["id"].as_i64().unwrap()).await;
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(std::fs::read_to_string(marks.join("before")).unwrap(), "ready\n");
    assert_eq!(std::fs::read_to_string(marks.join("after")).unwrap(), "ok\n");
    let log = admin.ok(Method::GET, &format!("/api/v1/runs/{}/log", r["id"]), None).await;
    assert!(log["log"].as_str().unwrap().contains("before command \"/bin/sh\": ok"), "{log}");
    let target = s.dir.path().join("dump-restore");
    restore_from(&s, "default@db2", r["snapshot_id"].as_str().unwrap(), &target);
    assert_eq!(
        std::fs::read_to_string(target.join("db.sql")).unwrap(),
        "CREATE TABLE t (x int);\nINSERT INTO t VALUES (1);\n"
    );

    // A failing command before the backup fails the run (and the after command hears it).
    let bad = admin
        .ok(
            Method::POST,
            "/api/v1/jobs",
            Some(job(
                "pg-bad",
                json!({
                    "before": [sh("echo 'database is down' >&2; exit 3".into())],
                    "after": [sh(format!("echo $BAMS_RUN_STATUS > {}/after-bad", marks.display()))],
                    "stdin": {"argv": ["/bin/echo", "never"], "name": "db.sql"}
                }),
            )),
        )
        .await;
    let r = run(bad["id"].as_i64().unwrap()).await;
    assert_eq!(r["status"], "failed", "{r}");
    let m = r["message"].as_str().unwrap();
    assert!(m.contains("before the backup failed") && m.contains("database is down"), "{r}");
    // A dump that hangs is killed at its time limit and the run fails.
    let hung = admin
        .ok(
            Method::POST,
            "/api/v1/jobs",
            Some(job("pg-hung", json!({"stdin": {"argv": ["/bin/sleep", "30"], "name": "db.sql", "timeout_secs": 1}}))),
        )
        .await;
    let started = Instant::now();
    let r = run(hung["id"].as_i64().unwrap()).await;
    assert_eq!(r["status"], "failed", "{r}");
    assert!(r["message"].as_str().unwrap().contains("timed out"), "{r}");
    assert!(started.elapsed() < Duration::from_secs(25), "the hung dump was not killed");

    // --max-jobs 1: two queued runs of this agent run one after the other.
    let slow = |name: &str| {
        job(name, json!({"before": [sh("sleep 1".into())], "stdin": {"argv": ["/bin/echo", "x"], "name": "x"}}))
    };
    let (a, b) = (make_job(&admin, slow("one")).await, make_job(&admin, slow("two")).await);
    let ra = admin.ok(Method::POST, &format!("/api/v1/jobs/{a}/run"), None).await["run_id"].as_i64().unwrap();
    let rb = admin.ok(Method::POST, &format!("/api/v1/jobs/{b}/run"), None).await["run_id"].as_i64().unwrap();
    let (ra, rb) = (admin.wait_run(ra).await, admin.wait_run(rb).await);
    assert_eq!((ra["status"].as_str(), rb["status"].as_str()), (Some("succeeded"), Some("succeeded")));
    let (first, second) = if ra["started_at"].as_str() < rb["started_at"].as_str() { (&ra, &rb) } else { (&rb, &ra) };
    assert!(second["started_at"].as_str() >= first["finished_at"].as_str(), "ran at once: {ra} {rb}");
}

async fn make_job(admin: &Api, body: Value) -> i64 {
    admin.ok(Method::POST, "/api/v1/jobs", Some(body)).await["id"].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_jobs_rehash_packs_or_restore_and_compare_and_catch_corruption() {
    let s = Server::start(None);
    let admin = Api::login(&s, "admin", &s.admin_password()).await;
    let src = s.dir.path().join("vsrc");
    write_tree(&src);
    random_file(&src.join("big.bin"), 2 << 20, 77);
    let make = |body: Value| {
        let admin = &admin;
        async move { admin.ok(Method::POST, "/api/v1/jobs", Some(body)).await["id"].as_i64().unwrap() }
    };
    let run = |id: i64| admin.run_job(id, None);
    let backup = make(json!({"name": "files", "type": "backup", "paths": [src], "repository": 1})).await;
    assert_eq!(run(backup).await["status"], "succeeded");
    for (options, says) in [
        (json!({"mode": "sideways"}), "options.mode"),
        (json!({"mode": "read-data-subset", "percent": 0}), "options.percent"),
        (json!({"mode": "restore", "job": 5}), "options.job"),
        (json!({"colour": 1}), "unknown key"),
    ] {
        let (st, b) = admin
            .call(
                Method::POST,
                "/api/v1/jobs",
                Some(json!({"name": "v", "type": "verify", "repository": 1, "options": options})),
            )
            .await;
        assert_error(st, &b, StatusCode::BAD_REQUEST, &options.to_string());
        assert!(b["error"]["message"].as_str().unwrap().contains(says), "{b}");
    }
    let subset =
        make(json!({"name": "v-all", "type": "verify", "repository": 1, "options": {"mode": "read-data-subset", "percent": 100}}))
            .await;
    let compare = make(
        json!({"name": "v-cmp", "type": "verify", "repository": 1, "options": {"mode": "restore", "job": "files"}}),
    )
    .await;
    let r = run(subset).await;
    assert_eq!(r["status"], "succeeded", "{r}");
    let r = run(compare).await;
    assert_eq!(r["status"], "succeeded", "{r}");
    assert!(r["message"].as_str().unwrap().contains("restored and compared"), "{r}");
    assert!(r["bytes"].as_i64().unwrap() >= 2 << 20, "{r}");
    assert!(!s.data().join(format!("scratch/verify-run-{}", r["id"])).exists(), "the scratch copy is removed");

    // A damaged pack is caught by both kinds of verify.
    let mut packs = Vec::new();
    for d in std::fs::read_dir(s.data().join("repo/data")).unwrap().flatten() {
        packs.extend(std::fs::read_dir(d.path()).unwrap().flatten().map(|e| e.path()));
    }
    let biggest = packs.iter().max_by_key(|p| std::fs::metadata(p).unwrap().len()).unwrap();
    let mut bytes = std::fs::read(biggest).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(biggest, bytes).unwrap();
    let r = run(subset).await;
    assert_eq!(r["status"], "failed", "{r}");
    let r = run(compare).await;
    assert_eq!(r["status"], "failed", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_enroll_and_back_up_over_tls_trusting_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (s, http, base, ca) = tls_server(dir.path());
    let mut admin = Api { http, base: base.clone(), token: None };
    let login = admin
        .ok(Method::POST, "/api/v1/auth/login", Some(json!({"username": "admin", "password": s.admin_password()})))
        .await;
    admin.token = login["token"].as_str().map(String::from);
    let created = admin.ok(Method::POST, "/api/v1/agents", Some(json!({"name": "tls1"}))).await;
    let state = dir.path().join("tls-agent");
    let enroll = |extra: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_bams"));
        c.args(["agent", "enroll", "--server", &base, "--state-dir", state.to_str().unwrap()])
            .args(extra)
            .env("BAMS_ENROLLMENT_TOKEN", created["enrollment_token"].as_str().unwrap());
        c.output().unwrap()
    };
    // Without the CA the certificate is not trusted, and nothing is sent.
    assert!(!enroll(&[]).status.success(), "an untrusted server must be refused");
    let out = enroll(&["--ca-cert", ca.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let _agent = AgentProcess::start(&state);
    let src = dir.path().join("tls-src");
    write_tree(&src);
    let job = admin
        .ok(
            Method::POST,
            "/api/v1/jobs",
            Some(json!({"name": "tls", "type": "backup", "agent": created["id"], "paths": [src], "repository": 1})),
        )
        .await;
    let run = admin.ok(Method::POST, &format!("/api/v1/jobs/{}/run", job["id"]), None).await;
    let r = admin.wait_run(run["run_id"].as_i64().unwrap()).await;
    assert_eq!(
        r["status"],
        "succeeded",
        "{r}\n{}",
        std::fs::read_to_string(state.join("agent.log")).unwrap_or_default()
    );
    check_repo_named(&s, "default@tls1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_runs_start_by_priority_and_within_the_per_repository_limit() {
    let s = Server::start_with(None, &[("BAMS_MAX_CONCURRENT_JOBS", "2"), ("BAMS_MAX_CONCURRENT_PER_REPOSITORY", "1")]);
    let admin = Api::login(&s, "admin", &s.admin_password()).await;
    let (big, small) = (s.dir.path().join("big"), s.dir.path().join("small"));
    std::fs::create_dir_all(&big).unwrap();
    random_file(&big.join("data.bin"), 100 << 20, 5);
    write_tree(&small);
    let other = admin
        .ok(
            Method::POST,
            "/api/v1/repositories",
            Some(json!({"name": "other", "url": s.data().join("other"), "password": "other-pass"})),
        )
        .await["id"]
        .as_i64()
        .unwrap();
    let (st, b) = admin
        .call(
            Method::POST,
            "/api/v1/jobs",
            Some(
                json!({"name": "p", "type": "backup", "paths": [small], "repository": 1, "options": {"priority": 500}}),
            ),
        )
        .await;
    assert_error(st, &b, StatusCode::BAD_REQUEST, "priority out of range");
    let job = |name: &str, path: &Path, repo: i64, priority: i64| json!({"name": name, "type": "backup", "paths": [path], "repository": repo, "options": {"priority": priority}});
    let blocker = make_job(&admin, job("blocker", &big, 1, 0)).await;
    let low = make_job(&admin, job("low", &small, 1, 0)).await;
    let high = make_job(&admin, job("high", &small, 1, 50)).await;
    let elsewhere = make_job(&admin, job("elsewhere", &small, other, 0)).await;
    let queue = |id: i64| {
        let admin = &admin;
        async move { admin.ok(Method::POST, &format!("/api/v1/jobs/{id}/run"), None).await["run_id"].as_i64().unwrap() }
    };
    let b = queue(blocker).await;
    let start = Instant::now();
    while admin.ok(Method::GET, &format!("/api/v1/runs/{b}"), None).await["status"] != "running" {
        assert!(start.elapsed() < Duration::from_secs(30), "the blocker did not start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (l, h, e) = (queue(low).await, queue(high).await, queue(elsewhere).await);
    let (b, l, h, e) =
        (admin.wait_run(b).await, admin.wait_run(l).await, admin.wait_run(h).await, admin.wait_run(e).await);
    for r in [&b, &l, &h, &e] {
        assert_eq!(r["status"], "succeeded", "{r}");
    }
    let at = |r: &Value, k: &str| r[k].as_str().unwrap().to_string();
    // One run at a time on repository 1: the others waited for the blocker, the higher
    // priority went first; the other repository's run did not wait.
    assert!(
        at(&l, "started_at") >= at(&b, "finished_at") && at(&h, "started_at") >= at(&b, "finished_at"),
        "{b}\n{l}\n{h}"
    );
    assert!(at(&h, "started_at") < at(&l, "started_at"), "priority 50 before 0:\n{h}\n{l}");
    assert!(at(&l, "started_at") >= at(&h, "finished_at"), "one at a time per repository:\n{h}\n{l}");
    assert!(at(&e, "started_at") < at(&b, "finished_at"), "another repository is not held up:\n{e}\n{b}");
}

/// Every regular file under `root`, by relative path, with its content.
fn tree_contents(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    walk_all(root)
        .into_iter()
        .map(|p| (p.strip_prefix(root).unwrap().to_path_buf(), std::fs::read(&p).unwrap()))
        .collect()
}

fn walk_all(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk_all(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Restore `snapshot` of the server's default repository into `target` with the CLI.
/// Restore `snapshot` of repository `name` of server `s` into `target` with the CLI.
fn restore_from(s: &Server, name: &str, snapshot: &str, target: &Path) {
    let (dir, key) = repo_files(s, name);
    let out = Command::new(env!("CARGO_BIN_EXE_bams"))
        .args(["-r", dir.to_str().unwrap(), "--key-file", key.to_str().unwrap()])
        .args(["restore", snapshot, "--target", target.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "restore {snapshot}: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_on_schedules_run_full_incremental_differential_into_a_pool_and_restore_each() {
    let s = Server::start(None);
    let admin = Api::login(&s, "admin", &s.admin_password()).await;
    let repo = admin.ok(Method::GET, "/api/v1/repositories", None).await[0]["id"].as_i64().unwrap();
    let pool = admin
        .ok(
            Method::POST,
            "/api/v1/pools",
            Some(json!({"name": "nightly", "repository": repo, "retention": {"keep_last": 10}})),
        )
        .await;
    let mut agents = Vec::new();
    for (i, name) in ["db1", "web1"].into_iter().enumerate() {
        let (id, _state, process) = enrolled_agent(&s, &admin, name, &[]).await;
        let src = s.dir.path().join(format!("{name}-data"));
        write_tree(&src);
        random_file(&src.join("big.bin"), 2 << 20, 40 + i as u64);
        // One names the pool by name, the other by id.
        let pool_ref = if i == 0 { json!("nightly") } else { pool["id"].clone() };
        let job = admin
            .ok(
                Method::POST,
                "/api/v1/jobs",
                Some(json!({"name": format!("{name}-files"), "type": "backup", "agent": id, "paths": [src], "pool": pool_ref})),
            )
            .await;
        assert_eq!((job["pool"].as_i64(), job["repository"].as_i64()), (pool["id"].as_i64(), Some(repo)));
        agents.push((job["id"].as_i64().unwrap(), src, process));
    }

    // Three nights: Full, then Incremental, then Differential, with changes in between. Each
    // night both jobs get a schedule of that level firing every second, removed once it fired.
    let mut expected: Vec<(String, BTreeMap<PathBuf, Vec<u8>>)> = Vec::new();
    let mut last_run = [0i64; 2];
    let mut full_snapshots = [String::new(), String::new()];
    let mut schedules: Vec<i64> = Vec::new();
    for (night, level) in ["full", "incremental", "differential"].into_iter().enumerate() {
        for (i, (_, src, _)) in agents.iter().enumerate() {
            match night {
                1 => {
                    std::fs::write(src.join("a.txt"), format!("night 1 on agent {i}")).unwrap();
                    random_file(&src.join("sub/new.bin"), 300_000, 60 + i as u64);
                }
                2 => {
                    std::fs::remove_file(src.join("sub/b.bin")).unwrap();
                    std::fs::write(src.join("c.txt"), format!("night 2 on agent {i}")).unwrap();
                }
                _ => {}
            }
        }
        // Night 0 creates each job's schedule; later nights change its level and enable it.
        for (i, (job, _, _)) in agents.iter().enumerate() {
            let spec = json!({"job": job, "cron": "* * * * * *", "level": level});
            if night == 0 {
                let sched = admin.ok(Method::POST, "/api/v1/schedules", Some(spec)).await;
                schedules.push(sched["id"].as_i64().unwrap());
            } else {
                let sched = admin.ok(Method::PUT, &format!("/api/v1/schedules/{}", schedules[i]), Some(spec)).await;
                assert_eq!((sched["level"].as_str(), sched["enabled"].as_bool()), (Some(level), Some(true)));
            }
        }
        // The first run each schedule queued; then the schedules are switched off.
        let mut runs_tonight = Vec::new();
        for (i, (job, _, _)) in agents.iter().enumerate() {
            let start = Instant::now();
            let run = loop {
                let runs = admin.ok(Method::GET, &format!("/api/v1/runs?job={job}"), None).await;
                let first = runs["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|r| r["id"].as_i64())
                    .filter(|&id| id > last_run[i])
                    .min();
                if let Some(id) = first {
                    break id;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "night {night}: the schedule of job {job} did not fire"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            runs_tonight.push(run);
        }
        for (i, id) in schedules.iter().enumerate() {
            let off = json!({"job": agents[i].0, "cron": "* * * * * *", "level": level, "enabled": false});
            admin.ok(Method::PUT, &format!("/api/v1/schedules/{id}"), Some(off)).await;
        }
        for (i, (_, src, _)) in agents.iter().enumerate() {
            let run = runs_tonight[i];
            let r = admin.wait_run(run).await;
            assert_eq!((r["status"].as_str(), r["level"].as_str()), (Some("succeeded"), Some(level)), "{r}");
            assert_eq!(r["triggered_by"], "schedule");
            let due = chrono::DateTime::parse_from_rfc3339(r["scheduled_for"].as_str().unwrap()).unwrap();
            let started = chrono::DateTime::parse_from_rfc3339(r["started_at"].as_str().unwrap()).unwrap();
            assert!(started >= due, "{r}");
            let snap = r["snapshot_id"].as_str().unwrap().to_string();
            let log = admin.ok(Method::GET, &format!("/api/v1/runs/{run}/log"), None).await["log"]
                .as_str()
                .unwrap()
                .to_string();
            match level {
                "full" => full_snapshots[i] = snap.clone(),
                // The Differential's parent is the Full, not the Incremental in between.
                "differential" => assert!(
                    log.contains(&format!("differential based on snapshot {}", &full_snapshots[i][..12])),
                    "{log}"
                ),
                _ => assert!(log.contains("incremental based on snapshot"), "{log}"),
            }
            assert!(log.contains("retention removed 0 snapshot(s)"), "the pool's retention ran: {log}");
            last_run[i] = run;
            expected.push((snap, tree_contents(src)));
        }
        // A second that began before the schedules were deleted may have queued one more run
        // of the same level: it must succeed too before the next night.
        for (i, (job, _, _)) in agents.iter().enumerate() {
            let runs = admin.ok(Method::GET, &format!("/api/v1/runs?job={job}"), None).await;
            let mut newer: Vec<_> =
                runs["items"].as_array().unwrap().iter().filter(|r| r["id"].as_i64().unwrap() > last_run[i]).collect();
            newer.sort_by_key(|r| r["id"].as_i64());
            for r in newer {
                let r = admin.wait_run(r["id"].as_i64().unwrap()).await;
                assert_eq!(r["status"], "succeeded", "{r}");
                last_run[i] = last_run[i].max(r["id"].as_i64().unwrap());
                // A later Full is the one the Differential bases on.
                if r["level"] == "full" {
                    full_snapshots[i] = r["snapshot_id"].as_str().unwrap().to_string();
                }
            }
        }
    }

    // An agent verifies its last backup on its own machine: restore to scratch, compare.
    let db1 = admin.ok(Method::GET, "/api/v1/agents", None).await;
    let db1 = db1["items"].as_array().unwrap().iter().find(|a| a["name"] == "db1").unwrap()["id"].clone();
    let (st, b) = admin
        .call(
            Method::POST,
            "/api/v1/jobs",
            Some(json!({"name": "v", "type": "verify", "agent": db1, "pool": "nightly"})),
        )
        .await;
    assert_error(st, &b, StatusCode::UNPROCESSABLE_ENTITY, "re-hashing packs on an agent");
    let verify = make_job(
        &admin,
        json!({"name": "db1-verify", "type": "verify", "agent": db1, "pool": "nightly",
               "options": {"mode": "restore", "job": "db1-files"}}),
    )
    .await;
    let r = admin.run_job(verify, None).await;
    assert_eq!(r["status"], "succeeded", "{r}");
    let message = r["message"].as_str().unwrap();
    assert!(message.starts_with("compared on the agent") && message.contains("verified"), "{r}");
    assert!(message.contains(&expected[4].0[..8]), "the last backup of db1-files was verified: {r}");

    for (body, path, want) in [
        (
            json!({"job": agents[0].0, "cron": "61 * * * *"}),
            format!("/api/v1/schedules/{}", schedules[0]),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"job": 999, "cron": "0 3 * * *"}),
            format!("/api/v1/schedules/{}", schedules[0]),
            StatusCode::NOT_FOUND,
        ),
        (json!({"job": agents[0].0, "cron": "0 3 * * *"}), "/api/v1/schedules/999".to_string(), StatusCode::NOT_FOUND),
    ] {
        let (st, b) = admin.call(Method::PUT, &path, Some(body.clone())).await;
        assert_error(st, &b, want, &body.to_string());
    }

    // Every snapshot restores byte-identical to the tree as it was that night.
    assert_eq!(expected.len(), 6);
    for (n, (snap, files)) in expected.iter().enumerate() {
        let target = s.dir.path().join(format!("restore-{n}"));
        restore_from(&s, ["default@db1", "default@web1"][n % 2], snap, &target);
        let (_, src, _) = &agents[n % 2];
        let restored = tree_contents(&target.join(src.strip_prefix("/").unwrap()));
        assert_eq!(restored.keys().collect::<Vec<_>>(), files.keys().collect::<Vec<_>>(), "snapshot {n}");
        assert!(restored == *files, "snapshot {n} ({snap}) differs from the tree it was taken of");
    }
    // Each agent wrote into a repository of its own under the pool's; the pool counts both.
    let status = admin.ok(Method::GET, &format!("/api/v1/pools/{}", pool["id"]), None).await;
    assert_eq!((status["snapshots"].as_i64(), status["usage"]["snapshots"].as_u64()), (Some(6), Some(6)), "{status}");
    for name in ["default@db1", "default@web1"] {
        check_repo_named(&s, name);
    }
    // Jobs on the pool cover the agents' repositories under it.
    let check = make_job(&admin, json!({"name": "nightly-check", "type": "check", "pool": "nightly"})).await;
    let r = admin.run_job(check, None).await;
    assert_eq!(r["status"], "succeeded", "{r}");
    for name in ["default@db1", "default@web1"] {
        assert!(r["message"].as_str().unwrap().contains(&format!("repository {name}: 3 snapshot(s)")), "{r}");
    }
    let forget = make_job(
        &admin,
        json!({"name": "nightly-forget", "type": "forget", "pool": "nightly", "retention": {"keep_last": 1}}),
    )
    .await;
    let r = admin.run_job(forget, None).await;
    assert_eq!(
        (r["status"].as_str(), r["message"].as_str()),
        (Some("succeeded"), Some("removed 4 snapshot(s)")),
        "{r}"
    );
    let prune = make_job(&admin, json!({"name": "nightly-prune", "type": "prune", "pool": "nightly"})).await;
    let r = admin.run_job(prune, None).await;
    assert_eq!(r["status"], "succeeded", "{r}");
    assert!(r["message"].as_str().unwrap().starts_with("3 repositories: deleted"), "{r}");
    let status = admin.ok(Method::GET, &format!("/api/v1/pools/{}", pool["id"]), None).await;
    assert_eq!(status["usage"]["snapshots"].as_u64(), Some(2), "{status}");
    // An agent's repository is its own: no pool goes on it, no other agent's job uses it.
    let repos = admin.ok(Method::GET, "/api/v1/repositories", None).await;
    let web1_repo = repos.as_array().unwrap().iter().find(|r| r["name"] == "default@web1").unwrap()["id"].clone();
    let (st, b) = admin.call(Method::POST, "/api/v1/pools", Some(json!({"name": "x", "repository": web1_repo}))).await;
    assert_error(st, &b, StatusCode::BAD_REQUEST, "a pool on an agent's repository");
    let db1_job = make_job(
        &admin,
        json!({"name": "db1-into-web1", "type": "backup", "agent": db1, "paths": [&agents[0].1], "repository": web1_repo}),
    )
    .await;
    let r = admin.run_job(db1_job, None).await;
    assert_eq!(r["status"], "failed", "{r}");
    assert!(r["message"].as_str().unwrap().contains("is another agent's own"), "{r}");
    for name in ["default", "default@db1", "default@web1"] {
        check_repo_named(&s, name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_give_jobs_their_retention_and_limits_and_copy_jobs_a_target() {
    let s = Server::start(None);
    let admin = Api::login(&s, "admin", &s.admin_password()).await;
    let op = admin.add_user(&s, "op", "long-password", "operator").await;
    let repo = admin.ok(Method::GET, "/api/v1/repositories", None).await[0]["id"].as_i64().unwrap();
    let offsite = admin
        .ok(Method::POST, "/api/v1/repositories", Some(json!({"name": "offsite", "url": s.dir.path().join("offsite")})))
        .await["id"]
        .as_i64()
        .unwrap();

    // Bad input is refused with a reason; only admins change pools.
    let (st, b) = op.call(Method::POST, "/api/v1/pools", Some(json!({"name": "daily", "repository": repo}))).await;
    assert_error(st, &b, StatusCode::FORBIDDEN, "operator creates a pool");
    for (body, want) in [
        (json!({"name": "daily", "repository": 999}), StatusCode::NOT_FOUND),
        (json!({"name": "daily", "repository": repo, "retention": {"keep_last": "two"}}), StatusCode::BAD_REQUEST),
        (json!({"name": "daily", "repository": repo, "max_bytes": -1}), StatusCode::BAD_REQUEST),
        (json!({"name": "../daily", "repository": repo}), StatusCode::BAD_REQUEST),
        (json!({"name": "daily", "repository": repo, "volumes": 3}), StatusCode::UNPROCESSABLE_ENTITY),
    ] {
        let (st, b) = admin.call(Method::POST, "/api/v1/pools", Some(body.clone())).await;
        assert_error(st, &b, want, &body.to_string());
    }
    let daily = admin
        .ok(
            Method::POST,
            "/api/v1/pools",
            Some(json!({"name": "daily", "repository": repo, "retention": {"keep_last": 2}, "description": "on-site"})),
        )
        .await;
    let (st, b) = admin.call(Method::POST, "/api/v1/pools", Some(json!({"name": "other", "repository": repo}))).await;
    assert_error(st, &b, StatusCode::CONFLICT, "a second pool on one repository");
    let vault = admin
        .ok(
            Method::POST,
            "/api/v1/pools",
            Some(json!({"name": "vault", "repository": offsite, "retention": {"keep_last": 1}})),
        )
        .await;
    let listed = admin.ok(Method::GET, "/api/v1/pools", None).await;
    assert_eq!(listed.as_array().unwrap().len(), 2);

    // A backup job in the pool inherits its retention.
    let src = s.dir.path().join("src");
    write_tree(&src);
    let job = make_job(&admin, json!({"name": "files", "type": "backup", "paths": [src], "pool": "daily"})).await;
    for (bad, want) in [
        (json!({"name": "x", "type": "backup", "paths": [src], "pool": "nope"}), StatusCode::NOT_FOUND),
        (
            json!({"name": "x", "type": "backup", "paths": [src], "pool": "daily", "repository": offsite}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"name": "x", "type": "copy", "pool": "daily", "options": {"target_pool": "daily"}}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"name": "x", "type": "copy", "pool": "daily", "options": {"target_pool": "vault", "target_repository": offsite}}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"name": "x", "type": "copy", "pool": "daily", "options": {"target_pool": "nope"}}),
            StatusCode::NOT_FOUND,
        ),
        (json!({"name": "x", "type": "backup", "paths": [src]}), StatusCode::BAD_REQUEST),
    ] {
        let (st, b) = admin.call(Method::POST, "/api/v1/jobs", Some(bad.clone())).await;
        assert_error(st, &b, want, &bad.to_string());
    }
    let run = |id: i64| admin.run_job(id, None);
    for n in 0..3 {
        std::fs::write(src.join("a.txt"), format!("version {n}")).unwrap();
        let r = run(job).await;
        assert_eq!(r["status"], "succeeded", "{r}");
    }
    let log = admin.ok(Method::GET, "/api/v1/runs?limit=1", None).await["items"][0]["id"].as_i64().unwrap();
    let log = admin.ok(Method::GET, &format!("/api/v1/runs/{log}/log"), None).await;
    assert!(log["log"].as_str().unwrap().contains("retention removed 1 snapshot(s)"), "{log}");
    let status = admin.ok(Method::GET, &format!("/api/v1/pools/{}", daily["id"]), None).await;
    assert_eq!((status["usage"]["snapshots"].as_u64(), status["jobs"].as_i64()), (Some(2), Some(1)), "{status}");
    assert!(status["usage"]["stored_bytes"].as_u64().unwrap() > 0 && status["full"].is_null(), "{status}");

    // At its snapshot limit the pool refuses the next backup with the reason.
    let mut spec = json!({"name": "daily", "repository": repo, "max_snapshots": 3});
    admin.ok(Method::PUT, &format!("/api/v1/pools/{}", daily["id"]), Some(spec.clone())).await;
    assert_eq!(run(job).await["status"], "succeeded");
    let refused = run(job).await;
    assert_eq!(refused["status"], "failed", "{refused}");
    assert!(
        refused["message"].as_str().unwrap().contains("pool \"daily\" is full: 3 snapshots, max_snapshots 3"),
        "{refused}"
    );
    let status = admin.ok(Method::GET, &format!("/api/v1/pools/{}", daily["id"]), None).await;
    assert!(status["full"].as_str().is_some_and(|f| f.contains("is full")), "{status}");
    spec["max_snapshots"] = json!(10);
    admin.ok(Method::PUT, &format!("/api/v1/pools/{}", daily["id"]), Some(spec)).await;

    // A copy job into the vault pool: the vault's retention applies to what arrived.
    let copy = make_job(
        &admin,
        json!({"name": "offsite", "type": "copy", "pool": "daily", "options": {"target_pool": "vault"}}),
    )
    .await;
    let r = run(copy).await;
    assert_eq!(r["status"], "succeeded", "{r}");
    assert!(r["message"].as_str().unwrap().contains("copied 3 snapshot(s)"), "{r}");
    let log = admin.ok(Method::GET, &format!("/api/v1/runs/{}/log", r["id"]), None).await;
    assert!(log["log"].as_str().unwrap().contains("the target pool's retention removed 2 snapshot(s)"), "{log}");
    let status = admin.ok(Method::GET, &format!("/api/v1/pools/{}", vault["id"]), None).await;
    assert_eq!(status["usage"]["snapshots"], 1, "{status}");

    // Pools in use are not deleted; their repositories survive them.
    for id in [&daily["id"], &vault["id"]] {
        let (st, b) = admin.call(Method::DELETE, &format!("/api/v1/pools/{id}"), None).await;
        assert_error(st, &b, StatusCode::CONFLICT, "a pool in use");
    }
    admin.ok(Method::DELETE, &format!("/api/v1/jobs/{copy}"), None).await;
    admin.ok(Method::DELETE, &format!("/api/v1/pools/{}", vault["id"]), None).await;
    let (st, _) = admin.call(Method::GET, &format!("/api/v1/pools/{}", vault["id"]), None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    admin.ok(Method::GET, &format!("/api/v1/repositories/{offsite}"), None).await;
    check_repo(&s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_missed_while_the_server_was_down_runs_once_on_start_unless_turned_off() {
    for run_missed in [true, false] {
        let flag = run_missed.to_string();
        let mut s = Server::start_with(None, &[("BAMS_RUN_MISSED", flag.as_str())]);
        let admin = Api::login(&s, "admin", &s.admin_password()).await;
        let src = s.dir.path().join("src");
        write_tree(&src);
        let job = make_job(&admin, json!({"name": "nightly", "type": "backup", "paths": [src], "repository": 1})).await;
        // Due once a day, 3 s from now; the server is down at that moment.
        let due = chrono::Utc::now() + chrono::Duration::seconds(3);
        let cron = due.format("%-S %-M %-H * * *").to_string();
        let sched = admin.ok(Method::POST, "/api/v1/schedules", Some(json!({"job": job, "cron": cron}))).await;
        s.kill9();
        tokio::time::sleep(Duration::from_secs(5)).await;
        s.spawn();
        let admin = Api::login(&s, "admin", &s.admin_password()).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let runs = admin.ok(Method::GET, &format!("/api/v1/runs?job={job}"), None).await;
        let runs = runs["items"].as_array().unwrap();
        let after = admin.ok(Method::GET, &format!("/api/v1/schedules/{}", sched["id"]), None).await;
        let next = chrono::DateTime::parse_from_rfc3339(after["next_run_at"].as_str().unwrap()).unwrap();
        assert!(next > chrono::Utc::now() + chrono::Duration::hours(23), "moved to tomorrow: {after}");
        if run_missed {
            assert_eq!(runs.len(), 1, "the missed run, once: {runs:?}");
            let r = admin.wait_run(runs[0]["id"].as_i64().unwrap()).await;
            assert_eq!(
                (r["status"].as_str(), r["triggered_by"].as_str()),
                (Some("succeeded"), Some("schedule")),
                "{r}"
            );
            let due_at = chrono::DateTime::parse_from_rfc3339(r["scheduled_for"].as_str().unwrap()).unwrap();
            assert_eq!(due_at.timestamp(), due.timestamp(), "{r}");
        } else {
            assert!(runs.is_empty(), "run_missed: false skips it: {runs:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_and_the_system_route_explain_the_machine() {
    let s = Server::start(None);
    let admin = Api::login(&s, "admin", &s.admin_password()).await;
    let viewer = admin.add_user(&s, "watcher", "long-password", "viewer").await;
    let anonymous = Api { http: reqwest::Client::new(), base: s.url(""), token: None };
    let (st, _) = anonymous.call(Method::GET, "/api/v1/system", None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);

    let report = viewer.ok(Method::GET, "/api/v1/system", None).await;
    let check = |r: &Value, name: &str| -> (String, String) {
        let c = r["checks"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("{r}"));
        (c["status"].as_str().unwrap().to_string(), c["detail"].as_str().unwrap().to_string())
    };
    let (status, detail) = check(&report, "catalog");
    assert!(status == "ok" && detail.contains("migrations applied"), "{report}");
    assert_eq!(check(&report, "tls").0, "warn", "{report}");
    let (status, detail) = check(&report, "checks");
    assert!(status == "warn" && detail.contains("default (never)"), "{report}");
    assert!(report["space"].as_array().unwrap().iter().any(|s| s["free_bytes"].as_u64() > Some(0)), "{report}");
    // setup-dev.sh installs the tools of the appliance features; they are found with versions.
    for tool in ["mtx", "tgtadm", "bacula-sd", "journalctl"] {
        let t = report["tools"].as_array().unwrap().iter().find(|t| t["name"] == tool).unwrap();
        assert!(t["version"].as_str().is_some_and(|v| v.contains('.') || tool == "journalctl"), "{t}");
    }
    assert_eq!(report["status"], "warn", "{report}");
    // The dashboard shows the same health, next to its counts.
    let dash = viewer.ok(Method::GET, "/api/v1/dashboard", None).await;
    assert_eq!((dash["health"]["status"].as_str(), dash["jobs"].as_i64()), (Some("warn"), Some(0)), "{dash}");
    let problems: Vec<&str> =
        dash["health"]["problems"].as_array().unwrap().iter().filter_map(|c| c["name"].as_str()).collect();
    assert!(problems.contains(&"tls") && problems.contains(&"checks") && !problems.contains(&"catalog"), "{dash}");

    // A check job on the repository clears its warning.
    let job = make_job(&admin, json!({"name": "check", "type": "check", "repository": 1})).await;
    assert_eq!(admin.run_job(job, None).await["status"], "succeeded");
    let report = admin.ok(Method::GET, "/api/v1/system", None).await;
    assert_eq!(check(&report, "checks").0, "ok", "{report}");

    // `bams doctor` says the same without the server, and exits 1 when something is broken.
    let out = s.cmd(&["doctor", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(check(&cli, "checks").0, "ok", "{cli}");
    let certs = s.dir.path().join("tls");
    let made = s.cmd(&["tls", "self-signed", "--dir", certs.to_str().unwrap(), "--days", "10"]).output().unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let out = s
        .cmd(&["doctor", "--json"])
        .env("BAMS_TLS_CERT", certs.join("cert.pem"))
        .env("BAMS_TLS_KEY", certs.join("key.pem"))
        .output()
        .unwrap();
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (status, detail) = check(&cli, "tls");
    assert!(status == "warn" && detail.contains("expires in 9 days"), "{cli}");
    let out = s.cmd(&["doctor"]).env("BAMS_CATALOG", "postgres://bams:secret@127.0.0.1:9/bams").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("FAIL  catalog") && !text.contains("secret"), "{text}");
}
