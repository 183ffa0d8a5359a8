//! The bare-metal image service through a real `bams server`: the seed's compatibility
//! walkthrough on SQLite and PostgreSQL, permissions between image users, hostile input, and
//! the boot API end to end without a VM (`bams flash` with a boot token against image files:
//! sync back and delta flash, with the bytes that travel measured).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use bams_testkit::server::ServerProcess;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

struct Lab {
    dir: tempfile::TempDir,
    server: ServerProcess,
    http: reqwest::Client,
    admin: String,
}

impl Lab {
    fn start(catalog: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut env = vec![("BAMS_IMAGES_DEFAULT_SIZE", "8388608"), ("BAMS_IMAGES_EXPIRE_EVERY_SECS", "1")];
        if let Some(c) = catalog {
            env.push(("BAMS_CATALOG", c));
        }
        let server = ServerProcess::start(Path::new(env!("CARGO_BIN_EXE_bams")), dir.path(), &env);
        let pw = std::fs::read_to_string(dir.path().join("data/initial-admin-password")).unwrap();
        let admin = server.login("admin", pw.trim());
        Self { dir, server, http: reqwest::Client::new(), admin }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.server.port)
    }

    async fn call(&self, token: Option<&str>, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut r = self.http.request(method, self.url(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let st = resp.status();
        let text = resp.text().await.unwrap_or_default();
        (st, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn ok(&self, token: &str, method: Method, path: &str, body: Option<Value>) -> Value {
        let (st, v) = self.call(Some(token), method.clone(), path, body).await;
        assert!(st.is_success(), "{method} {path}: {st} {v}");
        v
    }

    async fn bytes(&self, token: Option<&str>, path: &str) -> (StatusCode, reqwest::header::HeaderMap, Vec<u8>) {
        let mut r = self.http.get(self.url(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let resp = r.send().await.unwrap();
        (resp.status(), resp.headers().clone(), resp.bytes().await.unwrap().to_vec())
    }

    /// A user of `role` with a password, logged in.
    async fn user(&self, name: &str, role: &str) -> String {
        self.ok(
            &self.admin,
            Method::POST,
            "/api/v1/users",
            Some(json!({"username": name, "password": "long-password", "role": role})),
        )
        .await;
        self.server.login(name, "long-password")
    }

    /// `curl -F file=@path` as the seed's scripts upload: (status, body).
    fn curl_upload(&self, token: &str, uuid: &str, file: &Path) -> (u16, String) {
        let out = Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}", "-H", &format!("Authorization: Bearer {token}")])
            .args(["-F", &format!("file=@{}", file.display())])
            .arg(self.url(&format!("/image/{uuid}")))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.parse().unwrap(), body.to_string())
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn flash(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_bams"))
            .arg("flash")
            .args(["--server", &self.url("")])
            .args(args)
            .env_remove("BAMS_TOKEN")
            .env_remove("BAMS_BOOT_TOKEN")
            .output()
            .unwrap()
    }

    /// Ask for a machine's boot script as its ROM would; the token when it is to flash.
    async fn boot(&self, mac: &str) -> (String, Option<String>) {
        let (st, _, script) = self.bytes(None, &format!("/boot/{mac}.ipxe")).await;
        assert_eq!(st, StatusCode::OK);
        let script = String::from_utf8(script).unwrap();
        let token = script.split_whitespace().find_map(|w| w.strip_prefix("bams.token=")).map(str::to_string);
        (script, token)
    }
}

/// A disk with a few regions rewritten, as files changing inside a filesystem do.
fn changed(v1: &[u8], regions: &[(usize, usize)], seed: u64) -> Vec<u8> {
    let mut v2 = v1.to_vec();
    for (i, (at, len)) in regions.iter().enumerate() {
        v2[*at..at + len].copy_from_slice(&bams_testkit::random_bytes(*len, seed + i as u64));
    }
    v2
}

async fn seed_walkthrough(lab: &Lab) {
    // The seed's script: create a user, an image, download it, upload a changed version.
    let (st, user) = lab
        .call(
            Some(&lab.admin),
            Method::POST,
            "/user",
            Some(json!({"Name": "alice", "EMAIL": "alice@lab.example", "role": "user"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{user}");
    assert_eq!(user["Name"], "alice");
    let (st, again) = lab.call(Some(&lab.admin), Method::POST, "/user", Some(json!({"name": "alice"}))).await;
    assert_eq!(st, StatusCode::CONFLICT, "{again}");
    let (st, image) = lab
        .call(
            Some(&lab.admin),
            Method::POST,
            "/user/alice/image",
            Some(json!({"NAME": "ubuntu-lab", "diskuuid": "7a3c-11"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{image}");
    let uuid = image["UUID"].as_str().unwrap().to_string();
    assert_eq!(image["Name"], "ubuntu-lab");
    assert_eq!(image["Versions"].as_array().unwrap().len(), 1, "a new image is version 1, an empty disk");
    let (st, headers, v1) = lab.bytes(Some(&lab.admin), &format!("/image/{uuid}/latest")).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v1, vec![0u8; 8 << 20], "the empty disk of the configured default size");
    assert_eq!(headers["content-type"], "application/octet-stream");
    assert!(headers["content-disposition"].to_str().unwrap().contains(&format!("{uuid}-1.img")));
    // Upload a changed disk as the seed does (multipart, part `file`); the answer's 4th word.
    let v2 = changed(&bams_testkit::random_bytes(8 << 20, 11), &[], 0);
    std::fs::write(lab.path("v2.img"), &v2).unwrap();
    let (code, text) = lab.curl_upload(&lab.admin, &uuid, &lab.path("v2.img"));
    assert_eq!(code, 200, "{text}");
    assert_eq!(text.split_whitespace().nth(3), Some("2"), "{text}");
    let (st, headers, back) = lab.bytes(Some(&lab.admin), &format!("/image/{uuid}/2")).await;
    assert_eq!(st, StatusCode::OK);
    assert!(back == v2, "version 2 comes back byte-identical");
    assert!(headers["content-disposition"].to_str().unwrap().contains(&format!("{uuid}-2.img")));
    // A third version changing 1 MiB costs about that in the repository.
    let v3 = changed(&v2, &[(3 << 20, 1 << 20)], 5);
    std::fs::write(lab.path("v3.img"), &v3).unwrap();
    let (code, text) = lab.curl_upload(&lab.admin, &uuid, &lab.path("v3.img"));
    assert_eq!((code, text.as_str()), (200, "Successfully uploaded image: 3"));
    let versions = lab.ok(&lab.admin, Method::GET, &format!("/api/v1/images/{uuid}/versions"), None).await;
    let added = versions[2]["bytes_added"].as_u64().unwrap();
    assert!(added < (1 << 20) * 13 / 10 + 64 * 1024, "version 3 stored {added} bytes for 1 MiB changed");
    // Queue a boot: an unknown MAC needs an administrator, who adds the machine.
    let (st, m) = lab
        .call(
            Some(&lab.admin),
            Method::POST,
            "/machine/52:54:00:AA:BB:01/boot",
            Some(json!({"Version": 3, "ImageUUID": uuid, "update": true})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{m}");
    assert_eq!(m["next"]["entries"][0]["version"], 3);
    assert_eq!(m["next"]["entries"][0]["update"], true);
    let listed = lab.ok(&lab.admin, Method::GET, "/machines", None).await;
    assert!(listed.as_array().unwrap().iter().any(|x| x["macs"][0] == "52:54:00:aa:bb:01"), "{listed}");
    let one = lab.ok(&lab.admin, Method::GET, "/machine/52-54-00-aa-bb-01", None).await;
    assert_eq!(one["managed"], true);
    let (script, token) = lab.boot("52:54:00:aa:bb:01").await;
    assert!(script.starts_with("#!ipxe\n") && script.contains("/boot/files/vmlinuz"), "{script}");
    assert!(token.is_some());
    // Range reads serve the delta flash.
    let r = lab
        .http
        .get(lab.url(&format!("/api/v1/images/{uuid}/versions/3")))
        .bearer_auth(&lab.admin)
        .header("range", "bytes=3145728-3145827")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.unwrap().to_vec(), v3[3 << 20..(3 << 20) + 100].to_vec());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_walkthrough_works_on_sqlite() {
    seed_walkthrough(&Lab::start(None)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_walkthrough_works_on_postgres() {
    let pg = bams_testkit::PgCluster::start();
    let url = pg.new_database("images");
    seed_walkthrough(&Lab::start(Some(&url))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_users_manage_only_their_own_images() {
    let lab = Lab::start(None);
    let alice = lab.user("alice", "user").await;
    let bob = lab.user("bob", "user").await;
    let viewer = lab.user("vera", "viewer").await;
    let operator = lab.user("otto", "operator").await;
    let img = lab.ok(&alice, Method::POST, "/api/v1/images", Some(json!({"name": "a", "size": 1048576}))).await;
    let uuid = img["uuid"].as_str().unwrap();
    assert_eq!(img["owner"], "alice");
    // Bob sees it in the catalogue but may not read, change, upload or delete it.
    let list = lab.ok(&bob, Method::GET, "/api/v1/images", None).await;
    assert!(list.as_array().unwrap().iter().any(|i| i["uuid"] == uuid));
    for (m, p) in [
        (Method::GET, format!("/image/{uuid}/latest")),
        (Method::GET, format!("/api/v1/images/{uuid}/versions/1")),
        (Method::GET, format!("/api/v1/images/{uuid}/versions/1/manifest")),
        (Method::DELETE, format!("/api/v1/images/{uuid}")),
        (Method::DELETE, format!("/api/v1/images/{uuid}/versions/1")),
    ] {
        let (st, b) = lab.call(Some(&bob), m.clone(), &p, None).await;
        assert_eq!(st, StatusCode::FORBIDDEN, "bob {m} {p}: {b}");
    }
    let (st, b) =
        lab.call(Some(&bob), Method::PATCH, &format!("/api/v1/images/{uuid}"), Some(json!({"name": "mine"}))).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{b}");
    let (st, b) = lab.call(Some(&bob), Method::POST, "/user/alice/image", Some(json!({"name": "x"}))).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "bob making images for alice: {b}");
    std::fs::write(lab.path("x.img"), vec![1u8; 4096]).unwrap();
    assert_eq!(lab.curl_upload(&bob, uuid, &lab.path("x.img")).0, 403);
    // Bob cannot freeze alice's image into his set, nor boot it.
    let (st, b) = lab
        .call(
            Some(&bob),
            Method::POST,
            "/api/v1/image-sets",
            Some(json!({"name": "s", "entries": [{"image": uuid, "version": 1}]})),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{b}");
    let m = lab
        .ok(&lab.admin, Method::POST, "/api/v1/machines", Some(json!({"name": "lab1", "macs": ["52:54:00:00:00:01"]})))
        .await;
    let (st, b) = lab
        .call(
            Some(&bob),
            Method::POST,
            &format!("/api/v1/machines/{}/boot", m["id"]),
            Some(json!({"entries": [{"image": uuid, "version": 1}]})),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{b}");
    // A viewer reads the catalogue, not the disks; an operator reads disks but changes none.
    assert_eq!(lab.bytes(Some(&viewer), &format!("/image/{uuid}/1")).await.0, StatusCode::FORBIDDEN);
    assert_eq!(lab.call(Some(&viewer), Method::GET, &format!("/api/v1/images/{uuid}"), None).await.0, StatusCode::OK);
    assert_eq!(lab.bytes(Some(&operator), &format!("/image/{uuid}/1")).await.0, StatusCode::OK);
    assert_eq!(
        lab.call(Some(&operator), Method::DELETE, &format!("/api/v1/images/{uuid}"), None).await.0,
        StatusCode::FORBIDDEN
    );
    // Image users see nothing of the backups.
    for p in ["/api/v1/jobs", "/api/v1/snapshots", "/api/v1/repositories", "/api/v1/agents"] {
        assert_eq!(lab.call(Some(&alice), Method::GET, p, None).await.0, StatusCode::FORBIDDEN, "{p}");
    }
    // Alice manages hers: a set, a boot on the accepted machine, a rename, a deletion.
    let set = lab
        .ok(
            &alice,
            Method::POST,
            "/api/v1/image-sets",
            Some(json!({"name": "course", "entries": [{"image": uuid, "version": 1, "update": true}]})),
        )
        .await;
    let m2 = lab
        .ok(&alice, Method::POST, &format!("/api/v1/machines/{}/boot", m["id"]), Some(json!({"set": "course"})))
        .await;
    assert_eq!(m2["next"]["set"], "course");
    assert_eq!(m2["next"]["queued_by"], "alice");
    let (st, b) = lab.call(Some(&alice), Method::DELETE, &format!("/api/v1/images/{uuid}"), None).await;
    assert_eq!(st, StatusCode::CONFLICT, "a queued boot holds the image: {b}");
    lab.ok(&alice, Method::DELETE, &format!("/api/v1/machines/{}/boot", m["id"]), None).await;
    assert_eq!(
        lab.call(Some(&alice), Method::DELETE, &format!("/api/v1/machines/{}", m["id"]), None).await.0,
        StatusCode::FORBIDDEN
    );
    lab.ok(&alice, Method::PATCH, &format!("/api/v1/images/{uuid}"), Some(json!({"name": "a2"}))).await;
    assert_eq!(
        lab.call(Some(&bob), Method::DELETE, &format!("/api/v1/image-sets/{}", set["id"]), None).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        lab.call(Some(&alice), Method::DELETE, &format!("/api/v1/images/{uuid}"), None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        lab.call(Some(&alice), Method::GET, &format!("/api/v1/images/{uuid}"), None).await.0,
        StatusCode::NOT_FOUND
    );
    // A temporal image loses its versions at its expiry.
    let tmp = lab
        .ok(
            &alice,
            Method::POST,
            "/api/v1/images",
            Some(json!({"name": "scratch", "kind": "temporal", "size": 1048576, "expires_in_secs": 1})),
        )
        .await;
    assert_eq!(tmp["versions"], 1);
    let tmp_uuid = tmp["uuid"].as_str().unwrap();
    let started = std::time::Instant::now();
    loop {
        let v = lab.ok(&alice, Method::GET, &format!("/api/v1/images/{tmp_uuid}/versions"), None).await;
        if v.as_array().unwrap().is_empty() {
            break;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "the temporal image kept its versions: {v}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(lab.bytes(Some(&alice), &format!("/image/{tmp_uuid}/latest")).await.0, StatusCode::NOT_FOUND);
    // Unknown machines register themselves and wait; accepted with nothing queued, local disk.
    let (script, token) = lab.boot("52:54:00:00:00:99").await;
    assert!(script.contains("waits for an administrator") && token.is_none(), "{script}");
    let all = lab.ok(&lab.admin, Method::GET, "/api/v1/machines", None).await;
    let new = all.as_array().unwrap().iter().find(|x| x["macs"][0] == "52:54:00:00:00:99").unwrap().clone();
    assert_eq!(new["managed"], false);
    assert_eq!(
        lab.call(Some(&alice), Method::POST, &format!("/api/v1/machines/{}/accept", new["id"]), None).await.0,
        StatusCode::FORBIDDEN
    );
    lab.ok(&lab.admin, Method::POST, &format!("/api/v1/machines/{}/accept", new["id"]), None).await;
    let (script, token) = lab.boot("52:54:00:00:00:99").await;
    assert!(script.contains("\nexit\n") && token.is_none(), "{script}");
    assert_eq!(lab.call(None, Method::GET, "/v1/boot/52:54:00:00:00:99", None).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_is_refused_and_stores_nothing() {
    use tokio::io::AsyncWriteExt;
    let lab = Lab::start(None);
    let a = &lab.admin;
    let img = lab.ok(a, Method::POST, "/api/v1/images", Some(json!({"name": "h", "size": 1048576}))).await;
    let uuid = img["uuid"].as_str().unwrap().to_string();
    for mac in ["zz:zz:zz:zz:zz:zz", "52:54:00:12:34", "..%2F..%2Fetc%2Fpasswd", "52:54:00:12:34:56:78", "%00"] {
        let (st, _, body) = lab.bytes(None, &format!("/boot/{mac}.ipxe")).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{mac}: {}", String::from_utf8_lossy(&body));
        assert_eq!(
            lab.call(None, Method::GET, &format!("/v1/boot/{mac}"), None).await.0,
            StatusCode::BAD_REQUEST,
            "{mac}"
        );
    }
    assert_eq!(lab.call(Some(a), Method::GET, "/api/v1/machines", None).await.1.as_array().unwrap().len(), 0);
    for v in ["-1", "0", "99999999999999", "1e3", "latest%00"] {
        let (st, _, _) = lab.bytes(Some(a), &format!("/image/{uuid}/{v}")).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "version {v}");
    }
    assert_eq!(lab.bytes(Some(a), &format!("/image/{uuid}/7")).await.0, StatusCode::NOT_FOUND);
    assert_eq!(lab.bytes(Some(a), "/image/../etc/passwd").await.0, StatusCode::NOT_FOUND);
    assert_eq!(lab.bytes(Some(a), "/image/not-a-uuid/latest").await.0, StatusCode::NOT_FOUND);
    for name in ["..%2F..%2Fetc%2Fpasswd", "..", "x%2Fy", "vmlinuz.bak"] {
        assert_eq!(lab.bytes(None, &format!("/boot/files/{name}")).await.0, StatusCode::NOT_FOUND, "{name}");
    }
    for (body, field) in [
        (json!({"name": "../../etc"}), "name"),
        (json!({"name": "ok", "disk": "/dev/../etc/shadow"}), "disk"),
        (json!({"name": "ok", "size": 1000}), "size"),
        (json!({"name": "ok", "size": -5}), ""),
        (json!({"name": "ok", "size": 1u64 << 62}), "size"),
        (json!({"name": "ok", "kind": "temporal"}), ""),
        (json!({"name": "h"}), "name"),
    ] {
        let (st, b) = lab.call(Some(a), Method::POST, "/api/v1/images", Some(body.clone())).await;
        assert!(
            st == StatusCode::BAD_REQUEST || st == StatusCode::CONFLICT || st == StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {st} {b}"
        );
        if !field.is_empty() {
            assert_eq!(b["error"]["details"]["field"], field, "{body}: {b}");
        }
    }
    // An upload of 0 bytes, a multipart form without `file`, and a truncated body: no version.
    let (st, b) = lab.call(Some(a), Method::POST, &format!("/api/v1/images/{uuid}/versions"), None).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{b}");
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            &format!("Authorization: Bearer {a}"),
            "-F",
            "other=x",
        ])
        .arg(lab.url(&format!("/image/{uuid}")))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "400");
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", lab.server.port)).await.unwrap();
    let head = format!(
        "POST /api/v1/images/{uuid}/versions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {a}\r\nContent-Type: application/octet-stream\r\nContent-Length: 10485760\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&bams_testkit::random_bytes(3 << 20, 9)).await.unwrap();
    drop(conn);
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let versions = lab.ok(a, Method::GET, &format!("/api/v1/images/{uuid}/versions"), None).await;
    assert_eq!(versions.as_array().unwrap().len(), 1, "only the empty first version: {versions}");
    // Boot routes without, or with a wrong, token.
    for (m, p) in [
        (Method::GET, "/api/v1/boot/task".to_string()),
        (Method::GET, format!("/api/v1/boot/images/{uuid}/1/raw")),
        (Method::POST, format!("/api/v1/boot/images/{uuid}/1/sync")),
    ] {
        assert_eq!(lab.call(None, m.clone(), &p, None).await.0, StatusCode::UNAUTHORIZED, "{p}");
        assert_eq!(lab.call(Some(&"0".repeat(64)), m.clone(), &p, None).await.0, StatusCode::UNAUTHORIZED, "{p}");
        assert_eq!(
            lab.call(Some(a), m, &p, None).await.0,
            StatusCode::UNAUTHORIZED,
            "an API token is no boot token: {p}"
        );
    }
    // Field names match case-insensitively; bad values are refused with the field named.
    let (st, b) =
        lab.call(Some(a), Method::POST, "/machine/nonsense/boot", Some(json!({"ImageUUID": uuid, "Version": 1}))).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{b}");
    let (st, b) = lab
        .call(Some(a), Method::POST, "/machine/52:54:00:00:00:01/boot", Some(json!({"imageuuid": uuid, "version": -3})))
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{b}");
    let (st, b) = lab.call(Some(a), Method::POST, "/user", Some(json!({"name": "x y"}))).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{b}");
    let (st, b) = lab.call(Some(a), Method::POST, "/user", Some(json!({"name": "eve", "email": "no-at-sign"}))).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{b}");
    let (st, b) = lab.call(Some(a), Method::POST, "/user", Some(json!({"name": "eve", "role": "root"}))).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_syncs_its_disk_back_and_is_flashed_with_only_the_changed_chunks() {
    let lab = Lab::start(None);
    let a = lab.admin.clone();
    let img = lab
        .ok(&a, Method::POST, "/api/v1/images", Some(json!({"name": "sys", "size": 1048576, "disk": "/dev/vda"})))
        .await;
    let uuid = img["uuid"].as_str().unwrap().to_string();
    let v1 = bams_testkit::random_bytes(24 << 20, 21);
    std::fs::write(lab.path("v1.img"), &v1).unwrap();
    assert_eq!(lab.curl_upload(&a, &uuid, &lab.path("v1.img")).1, "Successfully uploaded image: 2");
    let mac = "52:54:00:12:34:56";
    let m = lab.ok(&a, Method::POST, "/api/v1/machines", Some(json!({"name": "vm1", "macs": [mac]}))).await;
    let id = m["id"].as_i64().unwrap();
    // Nothing queued yet: local disk.
    assert!(lab.boot(mac).await.0.contains("\nexit\n"));
    lab.ok(
        &a,
        Method::POST,
        &format!("/api/v1/machines/{id}/boot"),
        Some(json!({"entries": [{"image": uuid, "version": 2, "update": true}]})),
    )
    .await;

    // First boot: a disk holding unrelated data gets every chunk.
    let disk = lab.path("disk.img");
    std::fs::write(&disk, bams_testkit::random_bytes(24 << 20, 99)).unwrap();
    let (_, token) = lab.boot(mac).await;
    let token = token.expect("a boot token");
    let map = format!("/dev/vda={}", disk.display());
    let out = lab.flash(&["--boot-token", &token, "--device-map", &map, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read(&disk).unwrap() == v1, "the disk holds version 2");
    let m = lab.ok(&a, Method::GET, &format!("/api/v1/machines/{id}"), None).await;
    assert_eq!(m["state"], "booted", "{m}");
    assert!(m["next"].is_null() && m["current"]["entries"][0]["version"] == 2, "{m}");
    let hist = lab.ok(&a, Method::GET, &format!("/api/v1/machines/{id}/history"), None).await;
    let fetched = hist[0]["details"]["flashed"][0]["report"]["bytes_fetched"].as_u64().unwrap();
    assert!(fetched >= (24 << 20) * 9 / 10, "unrelated data: a full flash ({fetched})");
    // The token is spent.
    assert_eq!(lab.call(Some(&token), Method::GET, "/api/v1/boot/task", None).await.0, StatusCode::UNAUTHORIZED);

    // The machine changes 3 regions of its disk; it is reclaimed with the same version.
    let regions = [(2 << 20, 512 << 10), (9 << 20, 1 << 20), (20 << 20, 256 << 10)];
    let changed_bytes: u64 = regions.iter().map(|(_, l)| *l as u64).sum();
    let used = changed(&v1, &regions, 40);
    std::fs::write(&disk, &used).unwrap();
    lab.ok(
        &a,
        Method::POST,
        &format!("/api/v1/machines/{id}/boot"),
        Some(json!({"entries": [{"image": uuid, "version": 2}]})),
    )
    .await;
    let (_, token) = lab.boot(mac).await;
    let out = lab.flash(&["--boot-token", &token.unwrap(), "--device-map", &map]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Synced back as version 3, equal to the used disk; only about the changed bytes travelled.
    let versions = lab.ok(&a, Method::GET, &format!("/api/v1/images/{uuid}/versions"), None).await;
    let v3 = &versions[2];
    assert_eq!((v3["number"].as_i64(), v3["source"].as_str()), (Some(3), Some("sync")), "{versions}");
    let manifest_bytes = 16 + 36 * (24 << 20) / (32 << 10) * 2;
    let sent = v3["bytes_sent"].as_u64().unwrap();
    assert!(sent <= changed_bytes * 13 / 10 + manifest_bytes, "sync sent {sent} for {changed_bytes} changed");
    assert!(lab.bytes(Some(&a), &format!("/image/{uuid}/3")).await.2 == used, "version 3 is the used disk");
    // ... and the disk is back at version 2, fetching only the changed chunks.
    assert!(std::fs::read(&disk).unwrap() == v1, "the disk is version 2 again");
    let hist = lab.ok(&a, Method::GET, &format!("/api/v1/machines/{id}/history"), None).await;
    let fetched = hist[0]["details"]["flashed"][0]["report"]["bytes_fetched"].as_u64().unwrap();
    assert!(fetched <= changed_bytes * 13 / 10, "the delta flash fetched {fetched} for {changed_bytes} changed");
    let m = lab.ok(&a, Method::GET, &format!("/api/v1/machines/{id}"), None).await;
    assert_eq!(m["current"]["entries"][0]["update"], false, "synced once: {m}");

    // By hand with an API token: version 3 onto a disk at version 2.
    let out =
        lab.flash(&["--image", &format!("{uuid}@3"), "--device", disk.to_str().unwrap(), "--token", &a, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r["bytes_fetched"].as_u64().unwrap() <= changed_bytes * 13 / 10, "{r}");
    assert!(std::fs::read(&disk).unwrap() == used);
    // A wrong token or image fails with a message and a non-zero exit.
    let out = lab.flash(&["--image", &uuid, "--device", disk.to_str().unwrap(), "--token", "nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A tiny boot sector that writes a line to the first serial port and halts: what a VM
/// booting its local disk prints.
fn boot_sector() -> Vec<u8> {
    let mut code = vec![
        0xFC, // cld
        0x31, 0xC0, // xor ax, ax
        0x8E, 0xD8, // mov ds, ax
        0xBE, 0x15, 0x7C, // mov si, 0x7c15
        0xAC, // lodsb
        0x08, 0xC0, // or al, al
        0x74, 0x06, // jz halt
        0xBA, 0xF8, 0x03, // mov dx, 0x3f8
        0xEE, // out dx, al
        0xEB, 0xF5, // jmp lodsb
        0xFA, 0xF4, // halt: cli; hlt
    ];
    code.extend_from_slice(b"BAMS-LOCAL-DISK-BOOTED\r\n\0");
    code.resize(510, 0);
    code.extend_from_slice(&[0x55, 0xAA]);
    code
}

/// Bytes of 4 KiB blocks that differ between two disks.
fn changed_blocks(a: &[u8], b: &[u8]) -> u64 {
    a.chunks(4096).zip(b.chunks(4096)).filter(|(x, y)| x != y).count() as u64 * 4096
}

fn sh(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e} (bash scripts/setup-dev.sh installs it)"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// One network boot of the test VM: qemu (TCG) whose NIC's iPXE ROM asks the server for its
/// script; ends when the VM reboots (`-no-reboot`), or once `until` shows on its serial
/// console. Returns the console output.
fn boot_vm(lab: &Lab, disk: &Path, mac: &str, until: Option<&str>) -> String {
    let serial = lab.path("serial.log");
    let _ = std::fs::remove_file(&serial);
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-machine", "accel=tcg", "-m", "512", "-display", "none", "-monitor", "none", "-no-reboot"])
        .args(["-serial", &format!("file:{}", serial.display())])
        .args(["-netdev", &format!("user,id=n0,bootfile=http://10.0.2.2:{}/boot/{mac}.ipxe", lab.server.port)])
        .args(["-device", &format!("virtio-net-pci,netdev=n0,mac={mac},bootindex=1")])
        .args(["-drive", &format!("file={},format=raw,if=none,id=d0", disk.display())])
        .args(["-device", "virtio-blk-pci,drive=d0,bootindex=2"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64 (bash scripts/setup-dev.sh installs it)");
    let started = std::time::Instant::now();
    loop {
        let text = String::from_utf8_lossy(&std::fs::read(&serial).unwrap_or_default()).to_string();
        if until.is_some_and(|u| text.contains(u)) {
            let _ = child.kill();
            let _ = child.wait();
            return text;
        }
        if let Ok(Some(_)) = child.try_wait() {
            return text;
        }
        if started.elapsed() > std::time::Duration::from_secs(600) {
            let _ = child.kill();
            panic!("the VM did not finish in 10 minutes:\n{text}");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// A real network boot: the VM's iPXE ROM fetches its script from the server, boots the
/// management OS (scripts/build-netboot.sh: Debian's kernel, busybox, bams), which flashes
/// the queued version onto the VM's disk; a boot with nothing queued boots that disk; a disk
/// changed inside is synced back as a new version, sending about the changed bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_network_boots_is_flashed_boots_its_disk_and_syncs_back() {
    let lab = Lab::start(None);
    let netboot = lab.path("netboot");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-netboot.sh");
    sh(Command::new("bash").arg(&script).arg(&netboot).arg(env!("CARGO_BIN_EXE_bams")));
    // Point the server at the boot files (restart it with the setting).
    drop(lab.server);
    let lab = Lab {
        server: ServerProcess::start(
            Path::new(env!("CARGO_BIN_EXE_bams")),
            lab.dir.path(),
            &[("BAMS_IMAGES_NETBOOT_DIR", netboot.to_str().unwrap())],
        ),
        ..lab
    };
    // A 64 MiB disk: ext4 with a file, and a boot sector.
    let src = lab.path("src.img");
    std::fs::File::create(&src).unwrap().set_len(64 << 20).unwrap();
    sh(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&src));
    std::fs::write(lab.path("data.bin"), bams_testkit::random_bytes(6 << 20, 1)).unwrap();
    sh(Command::new("debugfs")
        .args(["-w", "-R", &format!("write {} data.bin", lab.path("data.bin").display())])
        .arg(&src));
    {
        use std::os::unix::fs::FileExt;
        std::fs::OpenOptions::new().write(true).open(&src).unwrap().write_all_at(&boot_sector(), 0).unwrap();
    }
    let v = std::fs::read(&src).unwrap();
    let a = lab.admin.clone();
    let img = lab
        .ok(&a, Method::POST, "/api/v1/images", Some(json!({"name": "vm", "size": 1048576, "disk": "/dev/vda"})))
        .await;
    let uuid = img["uuid"].as_str().unwrap().to_string();
    assert_eq!(lab.curl_upload(&a, &uuid, &src).1, "Successfully uploaded image: 2");
    let mac = "52:54:00:12:34:56";
    let m = lab.ok(&a, Method::POST, "/api/v1/machines", Some(json!({"name": "vm1", "macs": [mac]}))).await;
    let id = m["id"].as_i64().unwrap();
    let disk = lab.path("vm-disk.img");
    std::fs::File::create(&disk).unwrap().set_len(64 << 20).unwrap();

    // 1. Flash version 2 (with `update`: the machine's changes come back at its next reclaim).
    lab.ok(
        &a,
        Method::POST,
        &format!("/api/v1/machines/{id}/boot"),
        Some(json!({"entries": [{"image": uuid, "version": 2, "update": true}]})),
    )
    .await;
    let console = boot_vm(&lab, &disk, mac, None);
    assert!(console.contains("bams: machine vm1"), "{console}");
    assert!(std::fs::read(&disk).unwrap() == v, "the VM's disk is version 2, byte for byte:\n{console}");
    let m = lab.ok(&a, Method::GET, &format!("/api/v1/machines/{id}"), None).await;
    assert_eq!(m["state"], "booted", "{m}");

    // 2. Nothing queued: the boot script sends it to its local disk, which boots.
    let console = boot_vm(&lab, &disk, mac, Some("BAMS-LOCAL-DISK-BOOTED"));
    assert!(console.contains("BAMS-LOCAL-DISK-BOOTED"), "{console}");
    assert!(!console.contains("bams: machine"), "no management OS without a queued boot");

    // 3. A file inside the disk changes; reclaimed with version 2, the disk goes back as
    //    version 3 (only the changed chunks travel), then version 2 is flashed again.
    std::fs::write(lab.path("new.bin"), bams_testkit::random_bytes(3 << 20, 2)).unwrap();
    sh(Command::new("debugfs").args(["-w", "-R", "rm data.bin"]).arg(&disk));
    sh(Command::new("debugfs")
        .args(["-w", "-R", &format!("write {} data.bin", lab.path("new.bin").display())])
        .arg(&disk));
    let used = std::fs::read(&disk).unwrap();
    let changed = changed_blocks(&v, &used);
    assert!(changed >= 3 << 20, "{changed}");
    lab.ok(
        &a,
        Method::POST,
        &format!("/api/v1/machines/{id}/boot"),
        Some(json!({"entries": [{"image": uuid, "version": 2}]})),
    )
    .await;
    let console = boot_vm(&lab, &disk, mac, None);
    assert!(console.contains("synced /dev/vda back as version 3"), "{console}");
    let versions = lab.ok(&a, Method::GET, &format!("/api/v1/images/{uuid}/versions"), None).await;
    let sent = versions[2]["bytes_sent"].as_u64().unwrap();
    let manifest = 16 + 36 * (64 << 20) / (8 << 10);
    assert!(sent <= changed * 13 / 10 + manifest, "the sync sent {sent} bytes for {changed} changed");
    assert!(lab.bytes(Some(&a), &format!("/image/{uuid}/3")).await.2 == used, "version 3 is the changed disk");
    assert!(std::fs::read(&disk).unwrap() == v, "and the disk is version 2 again");
    let hist = lab.ok(&a, Method::GET, &format!("/api/v1/machines/{id}/history"), None).await;
    let fetched = hist[0]["details"]["flashed"][0]["report"]["bytes_fetched"].as_u64().unwrap();
    assert!(fetched <= changed * 13 / 10, "the flash fetched {fetched} bytes for {changed} changed");
}
