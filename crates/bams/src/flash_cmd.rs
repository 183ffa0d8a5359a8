//! `bams flash`: put a stored image version on a disk over HTTP, fetching only the chunks the
//! disk lacks ([`bams_store::flash::flash_manifest`]), and — run by the management OS with a
//! boot token — do a machine's whole task: send back the disks marked `update` (only the
//! chunks the previous version lacks), flash the queued disks, report the outcome, and reboot
//! or power off. The machine never holds a repository key: it compares unkeyed chunk hashes
//! from the version's manifest.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bams_store::flash::FlashReport;
use bams_store::image::Manifest;
use bams_store::repo::ChunkerParams;
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::cli::FlashArgs;
use crate::exit;
use crate::output::{human_bytes, Bar, Out};

/// The server and the credential a flash uses.
struct Conn {
    http: reqwest::Client,
    server: String,
    token: String,
    rt: tokio::runtime::Handle,
}

impl Conn {
    async fn get(&self, path: &str) -> Result<reqwest::Response> {
        let r = self.http.get(format!("{}{path}", self.server)).bearer_auth(&self.token).send().await?;
        checked(r).await
    }

    /// The bytes of `ranges` of the version at `path` (`…/ranges`), back to back, each piece
    /// handed to `sink` as it arrives.
    fn fetch(
        &self,
        path: &str,
        ranges: &[(u64, u64)],
        sink: &mut dyn FnMut(&[u8]) -> bams_store::Result<()>,
    ) -> bams_store::Result<()> {
        let url = format!("{}{path}", self.server);
        let transient = |e: String| bams_store::Error::new(bams_store::ErrorKind::Transient, e);
        self.rt.block_on(async {
            let r = self
                .http
                .post(&url)
                .bearer_auth(&self.token)
                .json(&json!({ "ranges": ranges }))
                .send()
                .await
                .map_err(|e| transient(format!("fetching {url}: {e}")))?;
            let r = checked(r).await.map_err(|e| transient(e.to_string()))?;
            let mut body = r.bytes_stream();
            while let Some(piece) = body.next().await {
                let piece = piece.map_err(|e| transient(format!("reading {url}: {e}")))?;
                sink(&piece)?;
            }
            Ok(())
        })
    }
}

/// A response, or its JSON error as the error.
async fn checked(r: reqwest::Response) -> Result<reqwest::Response> {
    if r.status().is_success() {
        return Ok(r);
    }
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    let msg = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or(text);
    bail!("the server answered {status}: {msg}")
}

/// `bams.server=` and `bams.token=` from a kernel command line.
fn from_cmdline(line: &str) -> (Option<String>, Option<String>) {
    let mut server = None;
    let mut token = None;
    for word in line.split_whitespace() {
        if let Some(v) = word.strip_prefix("bams.server=") {
            server = Some(v.to_string());
        } else if let Some(v) = word.strip_prefix("bams.token=") {
            token = Some(v.to_string());
        }
    }
    (server, token)
}

/// Run `bams flash`.
pub fn run(out: Out, a: FlashArgs) -> Result<u8> {
    let (mut server, mut boot_token) = (a.server.clone(), a.boot_token.clone());
    if a.from_cmdline {
        let line = std::fs::read_to_string("/proc/cmdline").context("reading /proc/cmdline")?;
        let (s, t) = from_cmdline(&line);
        server = server.or(s);
        boot_token = boot_token.or(t);
    }
    let server = server.ok_or_else(|| anyhow!("--server (or bams.server= on the kernel command line) is required"))?;
    let server = server.trim_end_matches('/').to_string();
    let trust = bams_store::backend::trust::Trust::from_settings(a.ca_cert.as_deref(), a.fingerprint.as_deref())?;
    let http = bams_store::backend::trust::client_builder(&trust)?.connect_timeout(Duration::from_secs(30)).build()?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let maps = device_maps(&a.device_map)?;
    match (&a.image, boot_token) {
        (Some(image), None) => {
            let token =
                a.token.clone().ok_or_else(|| anyhow!("--token (or BAMS_TOKEN) is required to flash an image"))?;
            let device = a.device.clone().ok_or_else(|| anyhow!("--device is required with --image"))?;
            let conn = Arc::new(Conn { http, server, token, rt: rt.handle().clone() });
            let (uuid, version) = match image.split_once('@') {
                Some((u, v)) => (u.to_string(), v.to_string()),
                None => (image.clone(), "latest".to_string()),
            };
            let base = format!("/api/v1/images/{uuid}/versions/{version}");
            let report = rt.block_on(flash_disk(out, conn, &base, &device))?;
            print_report(out, &report.0, &format!("{uuid}@{}", report.1))?;
            Ok(exit::OK)
        }
        (None, Some(token)) => {
            let conn = Arc::new(Conn { http, server, token, rt: rt.handle().clone() });
            let after = rt.block_on(boot_task(out, conn, &maps))?;
            if a.power {
                power(&after)?;
            }
            Ok(exit::OK)
        }
        (Some(_), Some(_)) => bail!("give either --image (with an API token) or a boot token, not both"),
        (None, None) => {
            bail!("give --image UUID[@VERSION] --device DEV, or a boot token (--boot-token, --from-cmdline)")
        }
    }
}

fn device_maps(raw: &[String]) -> Result<Vec<(String, PathBuf)>> {
    raw.iter()
        .map(|m| {
            let (from, to) = m.split_once('=').ok_or_else(|| anyhow!("--device-map {m:?} must be DISK=PATH"))?;
            Ok((from.to_string(), PathBuf::from(to)))
        })
        .collect()
}

fn mapped(maps: &[(String, PathBuf)], disk: &str) -> PathBuf {
    maps.iter().find(|(f, _)| f == disk).map_or_else(|| PathBuf::from(disk), |(_, t)| t.clone())
}

/// Flash one disk from the version at `base` (its `/manifest` and `/ranges`); returns the
/// report and the version number the server resolved.
async fn flash_disk(out: Out, conn: Arc<Conn>, base: &str, device: &Path) -> Result<(FlashReport, i64)> {
    let r = conn.get(&format!("{base}/manifest")).await?;
    let version =
        r.headers().get("x-bams-version").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0);
    let manifest = Manifest::decode(&r.bytes().await?, u32::MAX)?;
    let disk = OpenOptions::new()
        .read(true)
        .write(true)
        .create(false)
        .open(device)
        .with_context(|| format!("opening {}", device.display()))?;
    let bar = Bar::new(out, "flash");
    bar.set_total(manifest.size());
    let ranges = format!("{base}/ranges");
    let started = Instant::now();
    let report = tokio::task::spawn_blocking(move || {
        let progress = |n: u64| bams_store::archiver::Progress::bytes(&*bar, n);
        let mut fetch =
            |r: &[(u64, u64)], sink: &mut dyn FnMut(&[u8]) -> bams_store::Result<()>| conn.fetch(&ranges, r, sink);
        let r = bams_store::flash::flash_manifest(&manifest, &disk, &mut fetch, &progress);
        bar.finish();
        r
    })
    .await??;
    tracing::info!(seconds = started.elapsed().as_secs_f64(), "flashed {}", device.display());
    Ok((report, version))
}

fn print_report(out: Out, r: &FlashReport, what: &str) -> Result<()> {
    if out.json {
        out.json(r)?;
    } else {
        out.info(format!(
            "flashed {what}: {} image, {} read, {} fetched and written ({} of {} chunks)",
            human_bytes(r.bytes_total),
            human_bytes(r.bytes_read),
            human_bytes(r.bytes_fetched),
            r.chunks_fetched,
            r.chunks
        ));
    }
    Ok(())
}

/// The management OS's work: sync back, flash, report. Returns what to do after.
async fn boot_task(out: Out, conn: Arc<Conn>, maps: &[(String, PathBuf)]) -> Result<String> {
    let task: Value = conn.get("/api/v1/boot/task").await?.json().await?;
    let machine = task["machine"].as_str().unwrap_or("?").to_string();
    out.info(format!(
        "bams: machine {machine}: {} disk(s) to sync back, {} to flash",
        len(&task["sync"]),
        len(&task["flash"])
    ));
    match run_task(out, &conn, &task, maps).await {
        Ok(details) => {
            report(
                &conn,
                json!({"state": "booted", "message": format!("flashed {} disk(s)", len(&task["flash"])),
                "details": details, "plan": task["plan"]}),
            )
            .await?;
            Ok(task["after"].as_str().unwrap_or("reboot").to_string())
        }
        Err(e) => {
            let _ = report(&conn, json!({"state": "failed", "message": format!("{e:#}")})).await;
            Err(e)
        }
    }
}

fn len(v: &Value) -> usize {
    v.as_array().map_or(0, Vec::len)
}

async fn report(conn: &Conn, body: Value) -> Result<()> {
    let r = conn
        .http
        .post(format!("{}/api/v1/boot/report", conn.server))
        .bearer_auth(&conn.token)
        .json(&body)
        .send()
        .await?;
    checked(r).await?;
    Ok(())
}

async fn run_task(out: Out, conn: &Arc<Conn>, task: &Value, maps: &[(String, PathBuf)]) -> Result<Value> {
    let c = &task["chunker"];
    let chunker = ChunkerParams {
        min_size: c[0].as_u64().unwrap_or(8192) as u32,
        avg_size: c[1].as_u64().unwrap_or(32768) as u32,
        max_size: c[2].as_u64().unwrap_or(131072) as u32,
    };
    let mut synced = Vec::new();
    for d in task["sync"].as_array().into_iter().flatten() {
        let (uuid, version, disk) = disk_of(d)?;
        let device = mapped(maps, &disk);
        report(
            conn,
            json!({"state": "syncing", "message": format!("sending {} back from {}", d["name"], device.display())}),
        )
        .await?;
        let started = Instant::now();
        let v = sync_disk(conn, &uuid, version, &device, chunker)
            .await
            .with_context(|| format!("syncing {}", device.display()))?;
        out.info(format!(
            "bams: synced {} back as version {} ({} sent, {} new)",
            device.display(),
            v["number"],
            human_bytes(v["bytes_sent"].as_u64().unwrap_or(0)),
            human_bytes(v["bytes_added"].as_u64().unwrap_or(0))
        ));
        synced.push(json!({"image": uuid, "version": v["number"], "bytes_sent": v["bytes_sent"], "seconds": started.elapsed().as_secs_f64()}));
    }
    let mut flashed = Vec::new();
    for d in task["flash"].as_array().into_iter().flatten() {
        let (uuid, version, disk) = disk_of(d)?;
        let device = mapped(maps, &disk);
        report(conn, json!({"state": "flashing", "message": format!("flashing {} version {version} onto {}", d["name"], device.display())})).await?;
        let base = format!("/api/v1/boot/images/{uuid}/{version}");
        let started = Instant::now();
        let (r, _) = flash_disk(out, conn.clone(), &base, &device).await?;
        print_report(out, &r, &format!("{uuid}@{version}"))?;
        flashed.push(json!({"image": uuid, "version": version, "device": device.display().to_string(),
            "report": r, "seconds": started.elapsed().as_secs_f64()}));
    }
    Ok(json!({"synced": synced, "flashed": flashed}))
}

fn disk_of(d: &Value) -> Result<(String, i64, String)> {
    let uuid = d["image"].as_str().ok_or_else(|| anyhow!("task disk without image"))?;
    // The UUID and disk go into URLs and file names: only their own characters pass.
    if !uuid.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        bail!("the task names an odd image {uuid:?}");
    }
    let version = d["version"].as_i64().ok_or_else(|| anyhow!("task disk without version"))?;
    let disk = d["disk"].as_str().ok_or_else(|| anyhow!("task disk without device"))?;
    Ok((uuid.to_string(), version, disk.to_string()))
}

/// Send a disk back: its manifest first, then only the chunks the server lacks.
async fn sync_disk(conn: &Arc<Conn>, uuid: &str, parent: i64, device: &Path, chunker: ChunkerParams) -> Result<Value> {
    let dev = device.to_path_buf();
    let manifest = tokio::task::spawn_blocking(move || -> Result<Manifest> {
        let mut f = File::open(&dev).with_context(|| format!("opening {}", dev.display()))?;
        Ok(bams_store::image::manifest_of(&mut f as &mut dyn Read, chunker)?)
    })
    .await??;
    let encoded = manifest.encode();
    let base = format!("{}/api/v1/boot/images/{uuid}/{parent}", conn.server);
    let r = conn.http.post(format!("{base}/needed")).bearer_auth(&conn.token).body(encoded.clone()).send().await?;
    let needed: Value = checked(r).await?.json().await?;
    let needed: Vec<usize> =
        needed["needed"].as_array().into_iter().flatten().filter_map(|v| v.as_u64()).map(|v| v as usize).collect();
    let places: Vec<(u64, u32)> = manifest.places().map(|(o, l, _)| (o, l)).collect();
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(8);
    let mut head = (encoded.len() as u64).to_le_bytes().to_vec();
    head.extend_from_slice(&encoded);
    let dev = device.to_path_buf();
    let reader = tokio::task::spawn_blocking(move || {
        let send = |item| tx.blocking_send(item).is_ok();
        if !send(Ok(head)) {
            return;
        }
        let file = match File::open(&dev) {
            Ok(f) => f,
            Err(e) => {
                send(Err(e));
                return;
            }
        };
        let mut batch = Vec::with_capacity(1 << 20);
        for i in needed {
            let Some(&(offset, len)) = places.get(i) else {
                send(Err(std::io::Error::other(format!("the server asked for chunk {i} of {}", places.len()))));
                return;
            };
            let at = batch.len();
            batch.resize(at + len as usize, 0);
            if let Err(e) = file.read_exact_at(&mut batch[at..], offset) {
                send(Err(e));
                return;
            }
            if batch.len() >= 1 << 20 && !send(Ok(std::mem::replace(&mut batch, Vec::with_capacity(1 << 20)))) {
                return;
            }
        }
        if !batch.is_empty() {
            send(Ok(batch));
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    let r = conn
        .http
        .post(format!("{base}/sync"))
        .bearer_auth(&conn.token)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await?;
    let v: Value = checked(r).await?.json().await?;
    reader.await?;
    Ok(v)
}

/// Reboot or power off, as the server's task says (the management OS's last step).
fn power(after: &str) -> Result<()> {
    nix::unistd::sync();
    let how = if after == "poweroff" {
        nix::sys::reboot::RebootMode::RB_POWER_OFF
    } else {
        nix::sys::reboot::RebootMode::RB_AUTOBOOT
    };
    nix::sys::reboot::reboot(how).context("rebooting")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::from_cmdline;

    #[test]
    fn the_kernel_command_line_names_server_and_token() {
        let (s, t) =
            from_cmdline("console=ttyS0 bams.server=http://10.0.2.2:4848 bams.token=abc bams.mac=52:54:00:12:34:56\n");
        assert_eq!(s.as_deref(), Some("http://10.0.2.2:4848"));
        assert_eq!(t.as_deref(), Some("abc"));
        assert_eq!(from_cmdline("quiet"), (None, None));
    }
}
