//! Machines and their network boot. Administrators accept machines (an unknown MAC that
//! boots registers itself and waits); operators and image users queue boots of images they
//! may read. The boot ROM and the management OS use the unauthenticated `/boot/…` routes and
//! the `/api/v1/boot/…` routes with the one-time boot token of their boot.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bams_catalog::{BootEntry, Machine, MachineChange, MachineEvent};
use bams_images::{BootAnswer, BootReport, BootSite, ImageService, PixiecoreAnswer, Task};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::images::{image_by_uuid, manifest_response, require_image, stream_version, version_param, Need};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Json, Path, Query};
use crate::state::AppState;

/// A machine added by hand (FOG's "quick registration", done by an administrator).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMachine {
    /// Unique name.
    pub name: String,
    /// Its MAC addresses.
    pub macs: Vec<String>,
    /// CPU architecture (default `x86_64`).
    #[serde(default)]
    pub arch: Option<String>,
    /// `reboot` (default) or `poweroff` after flashing.
    #[serde(default)]
    pub after_flash: Option<String>,
}

fn check_after(a: &Option<String>) -> ApiResult<()> {
    match a.as_deref() {
        None | Some("reboot") | Some("poweroff") => Ok(()),
        Some(o) => {
            Err(ApiError::bad_request(format!("after_flash {o:?} must be reboot or poweroff")).at_field("after_flash"))
        }
    }
}

fn check_arch(a: &Option<String>) -> ApiResult<()> {
    match a.as_deref() {
        None | Some("x86_64") | Some("aarch64") => Ok(()),
        Some(o) => Err(ApiError::bad_request(format!("arch {o:?} must be x86_64 or aarch64")).at_field("arch")),
    }
}

fn macs(raw: &[String]) -> ApiResult<Vec<String>> {
    if raw.is_empty() || raw.len() > 16 {
        return Err(ApiError::bad_request("a machine has 1 to 16 MAC addresses").at_field("macs"));
    }
    raw.iter().map(|m| bams_images::names::normalize_mac(m).map_err(|e| ApiError::from(e).at_field("macs"))).collect()
}

/// Machines.
#[utoipa::path(get, path = "/api/v1/machines", tag = "machines", responses((status = 200, body = [Machine])))]
pub async fn list_machines(State(st): State<AppState>) -> ApiResult<Json<Vec<Machine>>> {
    Ok(Json(st.catalog.list_machines().await?))
}

/// Add a machine by its MAC addresses; it is accepted (managed) at once.
#[utoipa::path(post, path = "/api/v1/machines", tag = "machines", request_body = NewMachine, responses((status = 201, body = Machine), (status = 400, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
pub async fn create_machine(
    State(st): State<AppState>,
    Json(req): Json<NewMachine>,
) -> ApiResult<(StatusCode, Json<Machine>)> {
    bams_images::names::check_machine_name(&req.name).map_err(|e| ApiError::from(e).at_field("name"))?;
    check_arch(&req.arch)?;
    check_after(&req.after_flash)?;
    let macs = macs(&req.macs)?;
    let arch = req.arch.clone().unwrap_or_else(|| "x86_64".into());
    let m = st
        .catalog
        .register_machine(&req.name, &macs[0], &arch, true)
        .await
        .map_err(|e| ApiError::from(e).at_field("name"))?;
    let change = MachineChange { macs: Some(macs), after_flash: req.after_flash, ..MachineChange::default() };
    match st.catalog.update_machine(m.id, &change).await {
        Ok(m) => Ok((StatusCode::CREATED, Json(m))),
        Err(e) => {
            let _ = st.catalog.delete_machine(m.id).await;
            Err(ApiError::from(e).at_field("macs"))
        }
    }
}

/// A machine by id, or by MAC address.
pub(crate) async fn machine(st: &AppState, raw: &str) -> ApiResult<Machine> {
    if let Ok(id) = raw.parse::<i64>() {
        return Ok(st.catalog.get_machine(id).await?);
    }
    let mac = bams_images::names::normalize_mac(raw)?;
    st.catalog.machine_by_mac(&mac).await?.ok_or_else(|| ApiError::not_found(format!("machine {mac} not found")))
}

/// One machine (by id or MAC address).
#[utoipa::path(get, path = "/api/v1/machines/{id}", tag = "machines", params(("id" = String, Path)), responses((status = 200, body = Machine)))]
pub async fn get_machine(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Machine>> {
    Ok(Json(machine(&st, &id).await?))
}

/// Changes to a machine.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MachinePatch {
    /// New name.
    pub name: Option<String>,
    /// New MAC addresses (replacing the old).
    pub macs: Option<Vec<String>>,
    /// Architecture.
    pub arch: Option<String>,
    /// Accepted (managed) or not.
    pub managed: Option<bool>,
    /// `reboot` or `poweroff` after flashing.
    pub after_flash: Option<String>,
}

/// Change a machine.
#[utoipa::path(patch, path = "/api/v1/machines/{id}", tag = "machines", params(("id" = String, Path)), request_body = MachinePatch, responses((status = 200, body = Machine)))]
pub async fn update_machine(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Json(p): Json<MachinePatch>,
) -> ApiResult<Json<Machine>> {
    let m = machine(&st, &id).await?;
    if let Some(n) = &p.name {
        bams_images::names::check_machine_name(n).map_err(|e| ApiError::from(e).at_field("name"))?;
    }
    check_arch(&p.arch)?;
    check_after(&p.after_flash)?;
    let macs = p.macs.as_deref().map(macs).transpose()?;
    let change = MachineChange { name: p.name, arch: p.arch, managed: p.managed, after_flash: p.after_flash, macs };
    Ok(Json(st.catalog.update_machine(m.id, &change).await?))
}

/// Remove a machine and its history.
#[utoipa::path(delete, path = "/api/v1/machines/{id}", tag = "machines", params(("id" = String, Path)), responses((status = 204)))]
pub async fn delete_machine(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let m = machine(&st, &id).await?;
    st.catalog.delete_machine(m.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Accept a machine that registered itself: from now on it boots what is queued for it.
#[utoipa::path(post, path = "/api/v1/machines/{id}/accept", tag = "machines", params(("id" = String, Path)), responses((status = 200, body = Machine)))]
pub async fn accept_machine(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Machine>> {
    let m = machine(&st, &id).await?;
    let change = MachineChange { managed: Some(true), ..MachineChange::default() };
    Ok(Json(st.catalog.update_machine(m.id, &change).await?))
}

/// What to boot: a set (by id or name), a list of entries, or one image.
#[derive(Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BootRequest {
    /// An image set.
    #[serde(default)]
    pub set: Option<String>,
    /// Or the disks themselves.
    #[serde(default)]
    pub entries: Option<Vec<super::images::EntrySpec>>,
    /// Or one image (UUID) ...
    #[serde(default)]
    pub image: Option<String>,
    /// ... at this version (default its latest) ...
    #[serde(default)]
    pub version: Option<i64>,
    /// ... synced back at the next boot.
    #[serde(default)]
    pub update: bool,
}

/// Queue a boot: at its next network boot the machine flashes these disks (after syncing
/// back the disks of its current boot marked `update`).
#[utoipa::path(post, path = "/api/v1/machines/{id}/boot", tag = "machines", params(("id" = String, Path)), request_body = BootRequest, responses((status = 200, body = Machine), (status = 409, body = crate::error::ErrorBody)))]
pub async fn queue_boot(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(req): Json<BootRequest>,
) -> ApiResult<Json<Machine>> {
    let m = machine(&st, &id).await?;
    let (set, entries) = match (req.set, req.entries, req.image) {
        (Some(s), None, None) => {
            let set = st.catalog.get_image_set(&s).await.map_err(|e| ApiError::from(e).at_field("set"))?;
            (Some(set.name), set.entries)
        }
        (None, Some(e), None) => (None, super::images::entries(e)?),
        (None, None, Some(uuid)) => {
            let image = image_by_uuid(&st, &uuid).await.map_err(|e| e.at_field("image"))?;
            let version = match req.version {
                Some(v) => v,
                None => image.latest.ok_or_else(|| ApiError::not_found("a version of that image").at_field("image"))?,
            };
            (None, vec![BootEntry { image: image.uuid, version, update: req.update }])
        }
        _ => return Err(ApiError::bad_request("give one of set, entries or image").at_field("set")),
    };
    queue(&st, &caller, &m, set, entries).await.map(Json)
}

/// Queue entries on a machine after checking the caller may read each image.
pub(crate) async fn queue(
    st: &AppState,
    caller: &Caller,
    m: &Machine,
    set: Option<String>,
    entries: Vec<BootEntry>,
) -> ApiResult<Machine> {
    for image in st.images.check_entries(&entries).await.map_err(|e| ApiError::from(e).at_field("entries"))? {
        require_image(caller, &image, Need::Read)?;
        if entries.iter().any(|e| e.image == image.uuid && e.update) {
            require_image(caller, &image, Need::Write)?;
        }
    }
    Ok(st.images.queue_boot(m, set, entries, &caller.user.username).await?)
}

/// Clear a queued boot.
#[utoipa::path(delete, path = "/api/v1/machines/{id}/boot", tag = "machines", params(("id" = String, Path)), responses((status = 200, body = Machine)))]
pub async fn clear_boot(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Machine>> {
    let m = machine(&st, &id).await?;
    Ok(Json(st.catalog.set_next_boot(m.id, None).await?))
}

/// How many history lines.
#[derive(Deserialize, utoipa::IntoParams)]
pub struct HistoryParams {
    /// At most this many (default 100).
    pub limit: Option<i64>,
}

/// A machine's history, newest first.
#[utoipa::path(get, path = "/api/v1/machines/{id}/history", tag = "machines", params(("id" = String, Path), HistoryParams), responses((status = 200, body = [MachineEvent])))]
pub async fn history(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<HistoryParams>,
) -> ApiResult<Json<Vec<MachineEvent>>> {
    let m = machine(&st, &id).await?;
    Ok(Json(st.catalog.machine_events(m.id, q.limit.unwrap_or(100)).await?))
}

// ---- network boot ----

/// The server's address as the machine used it: `images.public_url`, or the `Host` it
/// asked (only host-name characters pass into the script).
fn base_url(st: &AppState, headers: &HeaderMap) -> ApiResult<String> {
    if let Some(u) = &st.config.images.public_url {
        return Ok(u.trim_end_matches('/').to_string());
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    let ok = !host.is_empty()
        && host.len() <= 255
        && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if !ok {
        return Err(ApiError::bad_request("the request has no usable Host header; set images.public_url"));
    }
    let scheme = if st.config.tls.cert.is_some() { "https" } else { "http" };
    Ok(format!("{scheme}://{host}"))
}

/// The iPXE script for a machine: `GET /boot/{mac}.ipxe` (no login: boot ROMs cannot).
#[utoipa::path(get, path = "/boot/{file}", tag = "boot", params(("file" = String, Path, description = "MAC.ipxe")), responses((status = 200, content_type = "text/plain", body = String)), security(()))]
pub async fn ipxe_script(
    State(st): State<AppState>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let mac = file
        .strip_suffix(".ipxe")
        .ok_or_else(|| ApiError::not_found(format!("/boot/{file}: boot scripts are /boot/MAC.ipxe")))?;
    let base = base_url(&st, &headers)?;
    let (_, answer) = st.images.boot_answer(mac).await?;
    let mac = bams_images::names::normalize_mac(mac)?;
    let site = BootSite { base_url: &base, cmdline: &st.config.images.kernel_cmdline };
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8"), (header::CACHE_CONTROL, "no-store")],
        site.ipxe(&answer, &mac),
    )
        .into_response())
}

/// The boot answer in pixiecore's API-mode shape; 404 tells pixiecore not to boot it.
#[utoipa::path(get, path = "/v1/boot/{mac}", tag = "boot", params(("mac" = String, Path)), responses((status = 200, body = PixiecoreAnswer), (status = 404, body = crate::error::ErrorBody)), security(()))]
pub async fn pixiecore(
    State(st): State<AppState>,
    Path(mac): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<PixiecoreAnswer>> {
    let base = base_url(&st, &headers)?;
    let (_, answer) = st.images.boot_answer(&mac).await?;
    let mac = bams_images::names::normalize_mac(&mac)?;
    let site = BootSite { base_url: &base, cmdline: &st.config.images.kernel_cmdline };
    match site.pixiecore(&answer, &mac) {
        Some(a) => Ok(Json(a)),
        None => Err(ApiError::not_found(match answer {
            BootAnswer::Wait => "this machine waits to be accepted",
            _ => "nothing is queued for this machine: it boots its local disk",
        })),
    }
}

/// The management OS's kernel and initramfs (`scripts/build-netboot.sh`).
#[utoipa::path(get, path = "/boot/files/{name}", tag = "boot", params(("name" = String, Path, description = "vmlinuz or initrd.img")), responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>)), security(()))]
pub async fn boot_file(State(st): State<AppState>, Path(name): Path<String>) -> ApiResult<Response> {
    if name != "vmlinuz" && name != "initrd.img" {
        return Err(ApiError::not_found(format!("boot file {name:?} (there are vmlinuz and initrd.img)")));
    }
    let dir = st.config.images.netboot_dir.clone().unwrap_or_else(|| st.config.data_dir.join("netboot"));
    let path = dir.join(&name);
    let file = std::fs::File::open(&path).map_err(|e| {
        ApiError::not_found(format!("{} ({e}); build it with scripts/build-netboot.sh", path.display()))
    })?;
    let len = file.metadata().map(|m| m.len()).ok();
    let mut file = file;
    let rx = super::written_body("boot file", move |out| std::io::copy(&mut file, out).map(drop));
    Ok(super::attachment(rx, "application/octet-stream", &name, len))
}

/// The machine whose boot token the request carries.
async fn booting(st: &AppState, headers: &HeaderMap) -> ApiResult<Machine> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::unauthorized("send the boot token as Authorization: Bearer TOKEN"))?;
    Ok(st.images.machine_for_token(token.trim()).await?)
}

/// What this boot is to do (boot token).
#[utoipa::path(get, path = "/api/v1/boot/task", tag = "boot", responses((status = 200, body = Task), (status = 401, body = crate::error::ErrorBody)), security(("bearer" = [])))]
pub async fn task(State(st): State<AppState>, headers: HeaderMap) -> ApiResult<Json<Task>> {
    let m = booting(&st, &headers).await?;
    Ok(Json(st.images.task(&m).await?))
}

/// Progress and the outcome of this boot (boot token).
#[utoipa::path(post, path = "/api/v1/boot/report", tag = "boot", request_body = BootReport, responses((status = 204), (status = 401, body = crate::error::ErrorBody)), security(("bearer" = [])))]
pub async fn report(
    State(st): State<AppState>,
    headers: HeaderMap,
    Json(r): Json<BootReport>,
) -> ApiResult<StatusCode> {
    let m = booting(&st, &headers).await?;
    if r.message.len() > 4096 {
        return Err(ApiError::bad_request("message is longer than 4096 bytes"));
    }
    st.images.report(&m, &r).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn boot_image(
    st: &AppState,
    headers: &HeaderMap,
    uuid: &str,
    version: &str,
    sync: bool,
) -> ApiResult<(Machine, bams_catalog::Image, i64)> {
    let m = booting(st, headers).await?;
    let image = image_by_uuid(st, uuid).await?;
    let number = version_param(version)?.ok_or_else(|| ApiError::bad_request("name the version by number"))?;
    if !ImageService::token_allows(&m, &image.uuid, number, sync) {
        return Err(ApiError::forbidden(format!(
            "this boot may not {} version {number} of image {}",
            if sync { "sync back" } else { "read" },
            image.uuid
        )));
    }
    Ok((m, image, number))
}

/// A version's manifest for the flashing machine (boot token).
#[utoipa::path(get, path = "/api/v1/boot/images/{uuid}/{version}/manifest", tag = "boot", params(("uuid" = String, Path), ("version" = i64, Path)), responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>)), security(("bearer" = [])))]
pub async fn boot_manifest(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path((uuid, version)): Path<(String, String)>,
) -> ApiResult<Response> {
    let (_, image, number) = boot_image(&st, &headers, &uuid, &version, false).await?;
    Ok(manifest_response(&st.images.open_version(&image, Some(number)).await?))
}

/// A version's raw bytes (one range) for the flashing machine (boot token).
#[utoipa::path(get, path = "/api/v1/boot/images/{uuid}/{version}/raw", tag = "boot", params(("uuid" = String, Path), ("version" = i64, Path)), responses((status = 206, content_type = "application/octet-stream", body = Vec<u8>)), security(("bearer" = [])))]
pub async fn boot_raw(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path((uuid, version)): Path<(String, String)>,
) -> ApiResult<Response> {
    let (_, image, number) = boot_image(&st, &headers, &uuid, &version, false).await?;
    Ok(stream_version(st.images.open_version(&image, Some(number)).await?, &image.uuid, &headers))
}

/// Many byte ranges of a version for the flashing machine (boot token).
#[utoipa::path(post, path = "/api/v1/boot/images/{uuid}/{version}/ranges", tag = "boot", params(("uuid" = String, Path), ("version" = i64, Path)), request_body = super::images::RangesRequest, responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>)), security(("bearer" = [])))]
pub async fn boot_ranges(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path((uuid, version)): Path<(String, String)>,
    Json(req): Json<super::images::RangesRequest>,
) -> ApiResult<Response> {
    let (_, image, number) = boot_image(&st, &headers, &uuid, &version, false).await?;
    super::images::stream_ranges(st.images.open_version(&image, Some(number)).await?, req)
}

/// Which chunks of the machine's disk a sync back must send: the body is the disk's
/// manifest; the answer lists chunk indexes (boot token).
#[utoipa::path(post, path = "/api/v1/boot/images/{uuid}/{version}/needed", tag = "boot", params(("uuid" = String, Path), ("version" = i64, Path)), request_body(content = Vec<u8>, content_type = "application/octet-stream"), responses((status = 200, body = Needed)), security(("bearer" = [])))]
pub async fn boot_needed(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path((uuid, version)): Path<(String, String)>,
    body: Body,
) -> ApiResult<Json<Needed>> {
    let (_, image, number) = boot_image(&st, &headers, &uuid, &version, true).await?;
    let manifest = read_manifest(body).await?;
    Ok(Json(Needed { needed: st.images.sync_needed(&image, number, &manifest).await? }))
}

/// Chunks a sync must send.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct Needed {
    /// Indexes into the manifest, ascending.
    pub needed: Vec<usize>,
}

/// The largest manifest a sync may send: 7.4 million chunks, a disk of about 230 GiB at the
/// image chunker's 32 KiB average.
const MAX_MANIFEST: usize = 256 << 20;

/// A manifest, read whole.
async fn read_manifest(body: Body) -> ApiResult<Vec<u8>> {
    axum::body::to_bytes(body, MAX_MANIFEST)
        .await
        .map(|b| b.to_vec())
        .map_err(|e| ApiError::bad_request(format!("reading the manifest: {e}")))
}

/// Sync a disk back as the image's next version (boot token): the body is the manifest's
/// length (u64 little-endian), the manifest, then the bytes of the chunks `needed` named.
#[utoipa::path(post, path = "/api/v1/boot/images/{uuid}/{version}/sync", tag = "boot", params(("uuid" = String, Path), ("version" = i64, Path)), request_body(content = Vec<u8>, content_type = "application/octet-stream"), responses((status = 201, body = bams_catalog::ImageVersion)), security(("bearer" = [])))]
pub async fn boot_sync(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path((uuid, version)): Path<(String, String)>,
    body: Body,
) -> ApiResult<(StatusCode, Json<bams_catalog::ImageVersion>)> {
    let (m, image, number) = boot_image(&st, &headers, &uuid, &version, true).await?;
    st.catalog
        .set_machine_state(
            m.id,
            bams_catalog::MachineState::Syncing,
            None,
            &format!("syncing {} back", image.name),
            None,
        )
        .await?;
    let mut stream = body.into_data_stream();
    // The manifest comes first: read it here, then hand the rest to the blocking writer.
    let mut head = Vec::new();
    let rest;
    let want = loop {
        if head.len() >= 8 {
            let n = u64::from_le_bytes(head[..8].try_into().map_err(|_| ApiError::bad_request("short sync body"))?);
            if n > MAX_MANIFEST as u64 {
                return Err(ApiError::bad_request("the manifest is too large"));
            }
            let want = 8 + n as usize;
            if head.len() >= want {
                rest = bytes::Bytes::from(head.split_off(want));
                break want;
            }
        }
        match stream.next().await {
            Some(Ok(b)) => head.extend_from_slice(&b),
            Some(Err(e)) => return Err(ApiError::bad_request(format!("reading the sync body: {e}"))),
            None => return Err(ApiError::bad_request("the sync body ended inside its manifest")),
        }
    };
    let manifest = head[8..want].to_vec();
    let images = st.images.clone();
    let who = format!("machine:{}", m.name);
    let img = image.clone();
    let rest_of_body = stream.map(|r| r.map_err(std::io::Error::other));
    let v = super::images::with_body_reader(rest, rest_of_body, move |reader| async move {
        images.store_sync(&img, number, &manifest, Box::new(reader), &who).await
    })
    .await?;
    st.images.synced(&m, &image.uuid, &v).await?;
    Ok((StatusCode::CREATED, Json(v)))
}
