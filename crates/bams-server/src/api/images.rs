//! Bare-metal images over HTTP: images, their versions (streamed up and down, byte ranges
//! for the delta flash, the chunk manifest), and image sets. Who may do what: anyone with
//! `Images.Audit` sees the catalogue; owners with `Images.Own` manage their own images;
//! `Images.Read` downloads and `Images.Modify` manages anyone's (see [`require_image`]).

use std::io::Read;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bams_catalog::{BootEntry, Image, ImageChange, ImageKind, ImageSet, ImageVersion};
use bams_images::{CreateImage, VersionData};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Json, Path, Query};
use crate::policy::Privs;
use crate::state::AppState;

/// What a caller wants to do with an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    /// Download it, boot it.
    Read,
    /// Change it, upload or delete versions.
    Write,
}

/// The ACL path of an image.
pub(crate) fn image_path(uuid: &str) -> String {
    format!("/images/{uuid}")
}

/// Refuse unless the caller may `need` the image: its owner holding `Images.Own`, or anyone
/// holding `Images.Read` (to read) or `Images.Modify` on it.
pub(crate) fn require_image(caller: &Caller, image: &Image, need: Need) -> ApiResult<()> {
    let privs = caller.privs_at(&image_path(&image.uuid));
    let owner = caller.is_self(image.owner_id) && privs.any_of(Privs::IMAGES_OWN);
    let ok = owner
        || match need {
            Need::Read => privs.any_of(Privs::IMAGES_READ.union(Privs::IMAGES_MODIFY)),
            Need::Write => privs.any_of(Privs::IMAGES_MODIFY),
        };
    if ok {
        Ok(())
    } else {
        let what = if need == Need::Read { "read" } else { "change" };
        Err(ApiError::forbidden(format!("you may not {what} image {} (owned by {})", image.uuid, image.owner)))
    }
}

/// May the caller see images at all (`Images.Audit` somewhere)?
fn may_see(caller: &Caller, image: &Image) -> bool {
    caller.privs_at(&image_path(&image.uuid)).any_of(Privs::IMAGES_AUDIT) || caller.is_self(image.owner_id)
}

/// An image by UUID from a path parameter (a malformed UUID is simply not found).
pub(crate) async fn image_by_uuid(st: &AppState, raw: &str) -> ApiResult<Image> {
    let uuid = bams_images::names::check_uuid(raw)?;
    Ok(st.catalog.get_image(&uuid).await?)
}

/// A version in a path: a number ≥ 1 or `latest`.
pub(crate) fn version_param(raw: &str) -> ApiResult<Option<i64>> {
    if raw == "latest" {
        return Ok(None);
    }
    match raw.parse::<i64>() {
        Ok(n) if (1..=i64::from(u32::MAX)).contains(&n) => Ok(Some(n)),
        _ => {
            Err(ApiError::bad_request(format!("version {raw:?} must be a number from 1 or \"latest\""))
                .at_field("version"))
        }
    }
}

/// Filter for the image list.
#[derive(Deserialize, utoipa::IntoParams)]
pub struct ImageFilter {
    /// Only this owner's images (user name).
    pub owner: Option<String>,
}

/// List images.
#[utoipa::path(get, path = "/api/v1/images", tag = "images", params(ImageFilter), responses((status = 200, body = [Image])))]
pub async fn list_images(
    State(st): State<AppState>,
    caller: Caller,
    Query(f): Query<ImageFilter>,
) -> ApiResult<Json<Vec<Image>>> {
    let owner = match &f.owner {
        Some(name) => Some(st.catalog.get_user_by_name(name).await?.id),
        None => None,
    };
    let images = st.catalog.list_images(owner).await?;
    Ok(Json(images.into_iter().filter(|i| may_see(&caller, i)).collect()))
}

/// A new image as the API takes it.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct NewImageBody {
    /// The image.
    #[serde(flatten)]
    pub image: CreateImage,
}

/// Owner of a new image: the caller, or (with `Images.Modify`) the user named.
#[derive(Deserialize, utoipa::IntoParams)]
pub struct OwnerParam {
    /// Create it for this user (administrators).
    pub owner: Option<String>,
}

/// Create an image; its version 1 is an empty sparse disk of `size` bytes (default 6 GiB).
#[utoipa::path(post, path = "/api/v1/images", tag = "images", params(OwnerParam), request_body = CreateImage, responses((status = 201, body = Image), (status = 400, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
pub async fn create_image(
    State(st): State<AppState>,
    caller: Caller,
    Query(o): Query<OwnerParam>,
    Json(req): Json<CreateImage>,
) -> ApiResult<(StatusCode, Json<Image>)> {
    let owner = owner_for(&st, &caller, o.owner.as_deref()).await?;
    let image = st.images.create_image(&req, owner, &caller.user.username).await.map_err(name_field)?;
    Ok((StatusCode::CREATED, Json(image)))
}

/// The user id a new image or set belongs to.
pub(crate) async fn owner_for(st: &AppState, caller: &Caller, name: Option<&str>) -> ApiResult<i64> {
    match name {
        Some(n) if n != caller.user.username => {
            let user = st.catalog.get_user_by_name(n).await?;
            caller.require_on(Privs::IMAGES_MODIFY, "/images")?;
            Ok(user.id)
        }
        _ => {
            if caller.user.id < 0 {
                return Err(ApiError::bad_request(
                    "a local socket caller owns nothing: name the owner with ?owner=USER",
                ));
            }
            caller.require_on(Privs::IMAGES_OWN.union(Privs::IMAGES_MODIFY), "/images")?;
            Ok(caller.user.id)
        }
    }
}

fn name_field(e: bams_images::ImageError) -> ApiError {
    let conflict = matches!(e, bams_images::ImageError::Catalog(bams_catalog::CatalogError::Conflict(_)));
    let msg = e.to_string();
    let err = ApiError::from(e);
    if conflict || msg.contains("image name") {
        err.at_field("name")
    } else if msg.contains("disk") {
        err.at_field("disk")
    } else if msg.contains("size") {
        err.at_field("size")
    } else {
        err
    }
}

/// One image.
#[utoipa::path(get, path = "/api/v1/images/{uuid}", tag = "images", params(("uuid" = String, Path)), responses((status = 200, body = Image)))]
pub async fn get_image(State(st): State<AppState>, caller: Caller, Path(uuid): Path<String>) -> ApiResult<Json<Image>> {
    let image = image_by_uuid(&st, &uuid).await?;
    if !may_see(&caller, &image) {
        return Err(ApiError::not_found(format!("image {uuid} not found")));
    }
    Ok(Json(image))
}

/// Changes to an image.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImagePatch {
    /// New name.
    pub name: Option<String>,
    /// New kind.
    pub kind: Option<ImageKind>,
    /// New target device.
    pub disk: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// Temporal images: seconds from now until their versions are forgotten.
    pub expires_in_secs: Option<u64>,
    /// Give it to another user (administrators).
    pub owner: Option<String>,
}

/// Change an image's name, kind, disk, description, expiry or owner.
#[utoipa::path(patch, path = "/api/v1/images/{uuid}", tag = "images", params(("uuid" = String, Path)), request_body = ImagePatch, responses((status = 200, body = Image)))]
pub async fn update_image(
    State(st): State<AppState>,
    caller: Caller,
    Path(uuid): Path<String>,
    Json(p): Json<ImagePatch>,
) -> ApiResult<Json<Image>> {
    let image = image_by_uuid(&st, &uuid).await?;
    require_image(&caller, &image, Need::Write)?;
    if let Some(n) = &p.name {
        bams_images::names::check_name("image", n).map_err(|e| ApiError::from(e).at_field("name"))?;
    }
    if let Some(d) = &p.disk {
        bams_images::names::check_disk(d).map_err(|e| ApiError::from(e).at_field("disk"))?;
    }
    if p.description.as_ref().is_some_and(|d| d.len() > 4096) {
        return Err(ApiError::bad_request("description is longer than 4096 bytes").at_field("description"));
    }
    let owner_id = match &p.owner {
        Some(o) => Some(owner_for(&st, &caller, Some(o)).await?),
        None => None,
    };
    let kind = p.kind.unwrap_or(image.kind);
    let expires_at = match (kind, p.expires_in_secs) {
        (ImageKind::Temporal, Some(s)) => Some(Some(
            bams_catalog::now_ms().saturating_add(i64::try_from(s.min(1 << 40)).unwrap_or(0).saturating_mul(1000)),
        )),
        (ImageKind::Temporal, None) if image.expires_at.is_none() => {
            return Err(ApiError::bad_request("a temporal image needs expires_in_secs").at_field("expires_in_secs"))
        }
        (ImageKind::Temporal, None) => None,
        (_, Some(_)) => return Err(ApiError::bad_request("only temporal images expire").at_field("expires_in_secs")),
        (_, None) => Some(None),
    };
    let change =
        ImageChange { name: p.name, kind: p.kind, disk: p.disk, description: p.description, expires_at, owner_id };
    Ok(Json(st.catalog.update_image(&image.uuid, &change).await.map_err(|e| ApiError::from(e).at_field("name"))?))
}

/// Delete an image and all its versions (refused while a machine has it queued).
#[utoipa::path(delete, path = "/api/v1/images/{uuid}", tag = "images", params(("uuid" = String, Path)), responses((status = 204)))]
pub async fn delete_image(
    State(st): State<AppState>,
    caller: Caller,
    Path(uuid): Path<String>,
) -> ApiResult<StatusCode> {
    let image = image_by_uuid(&st, &uuid).await?;
    require_image(&caller, &image, Need::Write)?;
    st.images.delete_image(&image).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// An image's versions.
#[utoipa::path(get, path = "/api/v1/images/{uuid}/versions", tag = "images", params(("uuid" = String, Path)), responses((status = 200, body = [ImageVersion])))]
pub async fn list_versions(
    State(st): State<AppState>,
    caller: Caller,
    Path(uuid): Path<String>,
) -> ApiResult<Json<Vec<ImageVersion>>> {
    let image = image_by_uuid(&st, &uuid).await?;
    if !may_see(&caller, &image) {
        return Err(ApiError::not_found(format!("image {uuid} not found")));
    }
    Ok(Json(st.catalog.list_image_versions(image.id).await?))
}

/// Upload a whole disk as the next version: the raw bytes as the request body, streamed
/// into the repository (only chunks it lacks are stored). An upload cut short stores
/// nothing.
#[utoipa::path(post, path = "/api/v1/images/{uuid}/versions", tag = "images", params(("uuid" = String, Path)), request_body(content = Vec<u8>, content_type = "application/octet-stream"), responses((status = 201, body = ImageVersion), (status = 400, body = crate::error::ErrorBody)))]
pub async fn upload_version(
    State(st): State<AppState>,
    caller: Caller,
    Path(uuid): Path<String>,
    body: Body,
) -> ApiResult<(StatusCode, Json<ImageVersion>)> {
    let image = image_by_uuid(&st, &uuid).await?;
    require_image(&caller, &image, Need::Write)?;
    let stream = body.into_data_stream().map(|r| r.map_err(std::io::Error::other));
    let v = upload_stream(&st, image, stream, &caller.user.username).await?;
    Ok((StatusCode::CREATED, Json(v)))
}

/// Store a stream of byte chunks as an image's next version.
pub(crate) async fn upload_stream(
    st: &AppState,
    image: Image,
    stream: impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Unpin,
    who: &str,
) -> ApiResult<ImageVersion> {
    let images = st.images.clone();
    let who = who.to_string();
    with_body_reader(bytes::Bytes::new(), stream, move |reader| async move {
        images.upload(&image, Box::new(reader), &who).await
    })
    .await
}

/// Run `consume` (a task that reads on a blocking thread) over a reader of `first`, then the
/// stream's chunks, handed over through a small channel so memory stays at a few chunks. A
/// stream error fails the reader's read (a truncated upload).
pub(crate) async fn with_body_reader<T, F>(
    first: bytes::Bytes,
    mut stream: impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Unpin,
    consume: impl FnOnce(ChannelReader) -> F,
) -> ApiResult<T>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T, bams_images::ImageError>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(8);
    let task = tokio::spawn(consume(ChannelReader { rx, cur: first }));
    while let Some(item) = stream.next().await {
        let failed = item.is_err();
        if tx.send(item).await.is_err() || failed {
            break;
        }
    }
    drop(tx);
    Ok(task.await??)
}

/// A blocking reader over a channel of byte chunks; an error item fails the read (a
/// truncated upload), the end of the channel is the end of the data.
pub(crate) struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>,
    cur: bytes::Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        let _ = self.cur.split_to(n);
        Ok(n)
    }
}

/// Download a version's raw disk (`latest` or a number). Honours one `Range: bytes=a-b`
/// (206), which the delta flash uses to fetch only the chunks a disk lacks.
#[utoipa::path(get, path = "/api/v1/images/{uuid}/versions/{version}", tag = "images", params(("uuid" = String, Path), ("version" = String, Path)), responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>), (status = 206, content_type = "application/octet-stream", body = Vec<u8>)))]
pub async fn download_version(
    State(st): State<AppState>,
    caller: Caller,
    Path((uuid, version)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let image = image_by_uuid(&st, &uuid).await?;
    require_image(&caller, &image, Need::Read)?;
    let data = st.images.open_version(&image, version_param(&version)?).await?;
    Ok(stream_version(data, &image.uuid, &headers))
}

/// A version's raw bytes as a response, whole or the one range asked for.
pub(crate) fn stream_version(data: VersionData, uuid: &str, headers: &HeaderMap) -> Response {
    let size = data.size();
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).map(|r| parse_range(r, size));
    let (start, end, status) = match range {
        None => (0, size, StatusCode::OK),
        Some(Some((a, b))) => (a, b, StatusCode::PARTIAL_CONTENT),
        Some(None) => {
            let mut r =
                ApiError::new(StatusCode::RANGE_NOT_SATISFIABLE, "bad_range", format!("the image has {size} bytes"))
                    .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return r;
        }
    };
    let name = format!("{uuid}-{}.img", data.version.number);
    let rx = super::written_body("image download", move |out| {
        data.write_range(start, end, out).map(drop).map_err(|e| std::io::Error::other(e.to_string()))
    });
    let mut r = super::attachment(rx, "application/octet-stream", &name, Some(end - start));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", end - 1)) {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    r
}

/// `bytes=a-b`, `bytes=a-` or `bytes=-n` against `size` → `start..end`; `None` when it
/// cannot be satisfied or is not one range.
fn parse_range(raw: &str, size: u64) -> Option<(u64, u64)> {
    let spec = raw.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            (size.saturating_sub(n), size)
        }
        (a, "") => (a.parse().ok()?, size),
        (a, b) => (a.parse().ok()?, b.parse::<u64>().ok()?.saturating_add(1).min(size)),
    };
    (start < end && start < size).then_some((start, end))
}

/// Byte ranges of a version, for the delta flash.
#[derive(Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RangesRequest {
    /// `[start, end)` pairs within the image, at most 4096.
    pub ranges: Vec<(u64, u64)>,
}

/// The most ranges one request may ask for.
const MAX_RANGES: usize = 4096;

/// The bytes of many ranges of a version, back to back, as one stream.
pub(crate) fn stream_ranges(data: VersionData, req: RangesRequest) -> ApiResult<Response> {
    if req.ranges.is_empty() || req.ranges.len() > MAX_RANGES {
        return Err(ApiError::bad_request(format!("ask for 1 to {MAX_RANGES} ranges")).at_field("ranges"));
    }
    let size = data.size();
    let mut total = 0u64;
    for (a, b) in &req.ranges {
        if a >= b || *b > size {
            return Err(ApiError::bad_request(format!("range {a}..{b} is not within the image's {size} bytes"))
                .at_field("ranges"));
        }
        total += b - a;
    }
    let rx = super::written_body("image ranges", move |out| {
        data.write_ranges(&req.ranges, out).map(drop).map_err(|e| std::io::Error::other(e.to_string()))
    });
    let mut r = axum::body::Body::from_stream(super::receiver_stream(rx)).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    if let Ok(v) = HeaderValue::from_str(&total.to_string()) {
        r.headers_mut().insert(header::CONTENT_LENGTH, v);
    }
    Ok(r)
}

/// Many byte ranges of a version in one answer, back to back: how `bams flash` fetches the
/// runs of chunks a disk lacks (a read, though a POST: the list can be long).
#[utoipa::path(post, path = "/api/v1/images/{uuid}/versions/{version}/ranges", tag = "images", params(("uuid" = String, Path), ("version" = String, Path)), request_body = RangesRequest, responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>)))]
pub async fn version_ranges(
    State(st): State<AppState>,
    caller: Caller,
    Path((uuid, version)): Path<(String, String)>,
    Json(req): Json<RangesRequest>,
) -> ApiResult<Response> {
    let image = image_by_uuid(&st, &uuid).await?;
    require_image(&caller, &image, Need::Read)?;
    stream_ranges(st.images.open_version(&image, version_param(&version)?).await?, req)
}

/// A version's chunk manifest (binary: `BAMSIMG1`, chunk count, then each chunk's length and
/// unkeyed BLAKE3), for flashing with ranges.
#[utoipa::path(get, path = "/api/v1/images/{uuid}/versions/{version}/manifest", tag = "images", params(("uuid" = String, Path), ("version" = String, Path)), responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>)))]
pub async fn version_manifest(
    State(st): State<AppState>,
    caller: Caller,
    Path((uuid, version)): Path<(String, String)>,
) -> ApiResult<Response> {
    let image = image_by_uuid(&st, &uuid).await?;
    require_image(&caller, &image, Need::Read)?;
    let data = st.images.open_version(&image, version_param(&version)?).await?;
    Ok(manifest_response(&data))
}

/// The manifest of an opened version, with its version number in `X-Bams-Version`.
pub(crate) fn manifest_response(data: &VersionData) -> Response {
    let mut r = ([(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"))], data.manifest_bytes())
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&data.version.number.to_string()) {
        r.headers_mut().insert("x-bams-version", v);
    }
    r
}

/// Delete a version (its data goes at the image repository's next prune).
#[utoipa::path(delete, path = "/api/v1/images/{uuid}/versions/{version}", tag = "images", params(("uuid" = String, Path), ("version" = i64, Path)), responses((status = 204)))]
pub async fn delete_version(
    State(st): State<AppState>,
    caller: Caller,
    Path((uuid, version)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let image = image_by_uuid(&st, &uuid).await?;
    require_image(&caller, &image, Need::Write)?;
    let number =
        version_param(&version)?.ok_or_else(|| ApiError::bad_request("name the version to delete by number"))?;
    st.images.delete_version(&image, number).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// One disk of a set or boot: an object, or the text `UUID@VERSION` with `+update` to sync it
/// back (what a form's lines send).
#[derive(Deserialize, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum EntrySpec {
    /// `{"image", "version", "update"}`.
    Entry(BootEntry),
    /// `UUID@VERSION[+update]`.
    Text(String),
}

impl EntrySpec {
    fn entry(self) -> ApiResult<BootEntry> {
        match self {
            Self::Entry(e) => Ok(e),
            Self::Text(t) => {
                let (spec, update) = match t.trim().strip_suffix("+update") {
                    Some(s) => (s, true),
                    None => (t.trim(), false),
                };
                let (image, version) = spec
                    .split_once('@')
                    .ok_or_else(|| ApiError::bad_request(format!("{t:?}: write UUID@VERSION")).at_field("entries"))?;
                let version = version_param(version).map_err(|e| e.at_field("entries"))?.ok_or_else(|| {
                    ApiError::bad_request(format!("{t:?}: name the version by number")).at_field("entries")
                })?;
                Ok(BootEntry { image: image.to_string(), version, update })
            }
        }
    }
}

/// Entries from their specs.
pub(crate) fn entries(specs: Vec<EntrySpec>) -> ApiResult<Vec<BootEntry>> {
    specs.into_iter().map(EntrySpec::entry).collect()
}

/// A new image set.
#[derive(Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewImageSet {
    /// Unique name.
    pub name: String,
    /// The disks: image, version, whether to sync it back.
    pub entries: Vec<EntrySpec>,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Owner (administrators may name another user).
    #[serde(default)]
    pub owner: Option<String>,
}

/// Image sets.
#[utoipa::path(get, path = "/api/v1/image-sets", tag = "images", responses((status = 200, body = [ImageSet])))]
pub async fn list_sets(State(st): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<ImageSet>>> {
    let sets = st.catalog.list_image_sets(None).await?;
    Ok(Json(
        sets.into_iter()
            .filter(|s| caller.is_self(s.owner_id) || caller.privs_at("/images").any_of(Privs::IMAGES_AUDIT))
            .collect(),
    ))
}

/// Make an image set: a frozen list of (image, version, update). The caller must be able to
/// read every image in it.
#[utoipa::path(post, path = "/api/v1/image-sets", tag = "images", request_body = NewImageSet, responses((status = 201, body = ImageSet), (status = 400, body = crate::error::ErrorBody)))]
pub async fn create_set(
    State(st): State<AppState>,
    caller: Caller,
    Json(req): Json<NewImageSet>,
) -> ApiResult<(StatusCode, Json<ImageSet>)> {
    let owner = owner_for(&st, &caller, req.owner.as_deref()).await?;
    let list = entries(req.entries)?;
    for image in st.images.check_entries(&list).await.map_err(|e| ApiError::from(e).at_field("entries"))? {
        require_image(&caller, &image, Need::Read)?;
    }
    let set = st
        .images
        .create_set(&req.name, owner, &list, &req.description)
        .await
        .map_err(|e| ApiError::from(e).at_field("name"))?;
    Ok((StatusCode::CREATED, Json(set)))
}

/// One image set (by id or name).
#[utoipa::path(get, path = "/api/v1/image-sets/{id}", tag = "images", params(("id" = String, Path)), responses((status = 200, body = ImageSet)))]
pub async fn get_set(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<ImageSet>> {
    let set = st.catalog.get_image_set(&id).await?;
    if !(caller.is_self(set.owner_id) || caller.privs_at("/images").any_of(Privs::IMAGES_AUDIT)) {
        return Err(ApiError::not_found(format!("image set {id} not found")));
    }
    Ok(Json(set))
}

/// Delete an image set (machines keep what they were queued with).
#[utoipa::path(delete, path = "/api/v1/image-sets/{id}", tag = "images", params(("id" = String, Path)), responses((status = 204)))]
pub async fn delete_set(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let set = st.catalog.get_image_set(&id).await?;
    let own = caller.is_self(set.owner_id) && caller.privs_at("/images").any_of(Privs::IMAGES_OWN);
    if !own {
        caller.require_on(Privs::IMAGES_MODIFY, "/images")?;
    }
    st.catalog.delete_image_set(set.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges_are_parsed_against_the_size() {
        assert_eq!(parse_range("bytes=0-99", 1000), Some((0, 100)));
        assert_eq!(parse_range("bytes=900-", 1000), Some((900, 1000)));
        assert_eq!(parse_range("bytes=-100", 1000), Some((900, 1000)));
        assert_eq!(parse_range("bytes=990-5000", 1000), Some((990, 1000)));
        for bad in [
            "bytes=1000-",
            "bytes=5-2",
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=a-b",
            "bytes=-",
            "bytes=18446744073709551615-",
        ] {
            assert_eq!(parse_range(bad, 1000), None, "{bad}");
        }
    }
}
