//! The bare-metal seed's control-server routes, served beside the native API so the seed's
//! scripts keep working against `bams server` (same port, same auth: a token or a session).
//! Field names match case-insensitively, as the original's JSON decoder did; answers use the
//! original's names (`UUID`, `Name`, `Versions`, …) and the upload answers the text
//! `Successfully uploaded image: <version>`.

use axum::extract::{Multipart, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bams_catalog::{BootEntry, Image, ImageVersion, Role, User};
use bams_images::CreateImage;
use serde::Serialize;
use serde_json::{Map, Value};

use super::images::{image_by_uuid, owner_for, require_image, upload_stream, version_param, Need};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Json, Path};
use crate::policy::Privs;
use crate::state::AppState;

/// A JSON object's field by name, whatever its case.
fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v)
}

fn object(v: &Value) -> ApiResult<&Map<String, Value>> {
    v.as_object().ok_or_else(|| ApiError::bad_request("the body must be a JSON object"))
}

fn text(obj: &Map<String, Value>, name: &str) -> ApiResult<Option<String>> {
    match field(obj, name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::bad_request(format!("{name} must be a string")).at_field(name)),
    }
}

/// A user as the seed answered it.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct SeedUser {
    /// Numeric id.
    #[serde(rename = "ID")]
    pub id: i64,
    /// Name.
    pub name: String,
    /// E-mail address.
    pub email: Option<String>,
    /// Role.
    pub role: String,
}

impl From<User> for SeedUser {
    fn from(u: User) -> Self {
        Self { id: u.id, name: u.username, email: u.email, role: u.role.to_string() }
    }
}

/// Create a user (`{"name", "email", "role"}`; role `user` by default). The user has no
/// password: it owns images; an administrator sets a password for it to log in.
#[utoipa::path(post, path = "/user", tag = "compat", request_body = Object, responses((status = 201, body = SeedUser), (status = 409, body = crate::error::ErrorBody)))]
pub async fn create_user(
    State(st): State<AppState>,
    Json(body): Json<Value>,
) -> ApiResult<(StatusCode, Json<SeedUser>)> {
    let obj = object(&body)?;
    let name = text(obj, "name")?.ok_or_else(|| ApiError::bad_request("name is required").at_field("name"))?;
    let email = text(obj, "email")?;
    let role: Role = match text(obj, "role")?.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("") | Some("user") => Role::User,
        Some(r) => r.parse().map_err(|e| ApiError::from(e).at_field("role"))?,
    };
    let user = st.catalog.create_user_without_password(&name, email.as_deref(), role).await?;
    Ok((StatusCode::CREATED, Json(user.into())))
}

/// An image as the seed answered it.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct SeedImage {
    /// UUID.
    #[serde(rename = "UUID")]
    pub uuid: String,
    /// Name.
    pub name: String,
    /// Owner's name.
    pub owner: String,
    /// The seed's disk UUID.
    #[serde(rename = "DiskUUID")]
    pub disk_uuid: Option<String>,
    /// Kind.
    #[serde(rename = "Type")]
    pub kind: String,
    /// Target device.
    pub disk: String,
    /// Versions, oldest first.
    pub versions: Vec<SeedVersion>,
}

/// A version as the seed answered it.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct SeedVersion {
    /// Number.
    pub version: i64,
    /// Bytes.
    pub size: i64,
    /// When (RFC 3339).
    pub created_at: String,
}

fn seed_image(image: Image, versions: Vec<ImageVersion>) -> SeedImage {
    SeedImage {
        uuid: image.uuid,
        name: image.name,
        owner: image.owner,
        disk_uuid: image.disk_uuid,
        kind: image.kind.as_str().into(),
        disk: image.disk,
        versions: versions
            .into_iter()
            .map(|v| SeedVersion {
                version: v.number,
                size: v.size,
                created_at: bams_catalog::time_ms::rfc3339(v.created_at),
            })
            .collect(),
    }
}

/// Create an image for user `name` (`{"name", "DiskUUID"}`, optional `size`, `type`,
/// `disk`): version 1 is an empty sparse disk.
#[utoipa::path(post, path = "/user/{name}/image", tag = "compat", params(("name" = String, Path)), request_body = Object, responses((status = 201, body = SeedImage)))]
pub async fn create_image(
    State(st): State<AppState>,
    caller: Caller,
    Path(owner): Path<String>,
    Json(body): Json<Value>,
) -> ApiResult<(StatusCode, Json<SeedImage>)> {
    let obj = object(&body)?;
    let owner_id = owner_for(&st, &caller, Some(&owner)).await?;
    let size = match field(obj, "size") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or_else(|| ApiError::bad_request("size must be a positive number of bytes").at_field("size"))?,
        ),
    };
    let kind = match text(obj, "type")?.or(text(obj, "kind")?) {
        Some(k) => Some(k.parse().map_err(|e| ApiError::from(e).at_field("type"))?),
        None => None,
    };
    let req = CreateImage {
        name: text(obj, "name")?.ok_or_else(|| ApiError::bad_request("name is required").at_field("name"))?,
        kind,
        disk: text(obj, "disk")?,
        size,
        description: text(obj, "description")?.unwrap_or_default(),
        expires_in_secs: field(obj, "expires_in_secs").and_then(Value::as_u64),
        disk_uuid: text(obj, "DiskUUID")?,
    };
    let image = st.images.create_image(&req, owner_id, &caller.user.username).await?;
    let versions = st.catalog.list_image_versions(image.id).await?;
    Ok((StatusCode::CREATED, Json(seed_image(image, versions))))
}

/// Download a version (`latest` or a number) as `<uuid>-<version>.img`.
#[utoipa::path(get, path = "/image/{uuid}/{version}", tag = "compat", params(("uuid" = String, Path), ("version" = String, Path)), responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>)))]
pub async fn download(
    State(st): State<AppState>,
    caller: Caller,
    Path((uuid, version)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    super::images::download_version(State(st), caller, Path((uuid, version)), headers).await
}

/// Upload a new version as the multipart part `file`; answers `Successfully uploaded image:
/// <version>` (the seed's scripts read the fourth word).
#[utoipa::path(post, path = "/image/{uuid}", tag = "compat", params(("uuid" = String, Path)), request_body(content = Vec<u8>, content_type = "multipart/form-data"), responses((status = 200, content_type = "text/plain", body = String)))]
pub async fn upload(
    State(st): State<AppState>,
    caller: Caller,
    Path(uuid): Path<String>,
    mut form: Multipart,
) -> ApiResult<String> {
    let image = image_by_uuid(&st, &uuid).await?;
    require_image(&caller, &image, Need::Write)?;
    loop {
        let part = form.next_field().await.map_err(|e| ApiError::bad_request(format!("reading the form: {e}")))?;
        let Some(part) = part else {
            return Err(ApiError::bad_request("the form has no part named file").at_field("file"));
        };
        if part.name() != Some("file") {
            continue;
        }
        let stream = Box::pin(futures_util::StreamExt::map(part, |r| r.map_err(std::io::Error::other)));
        let v = upload_stream(&st, image, stream, &caller.user.username).await?;
        return Ok(format!("Successfully uploaded image: {}", v.number));
    }
}

/// Queue a boot of one image on the machine with this MAC (`{"Version", "ImageUUID",
/// "update"}`; `Version` a number or `latest`). An administrator may name a MAC not seen
/// yet: the machine is added, accepted.
#[utoipa::path(post, path = "/machine/{mac}/boot", tag = "compat", params(("mac" = String, Path)), request_body = Object, responses((status = 200, body = bams_catalog::Machine)))]
pub async fn boot(
    State(st): State<AppState>,
    caller: Caller,
    Path(mac): Path<String>,
    Json(body): Json<Value>,
) -> ApiResult<Json<bams_catalog::Machine>> {
    let obj = object(&body)?;
    let mac = bams_images::names::normalize_mac(&mac)?;
    let uuid =
        text(obj, "ImageUUID")?.ok_or_else(|| ApiError::bad_request("ImageUUID is required").at_field("ImageUUID"))?;
    let image = image_by_uuid(&st, &uuid).await?;
    let version = match field(obj, "Version") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => version_param(s)?,
        Some(Value::Number(n)) => version_param(&n.to_string())?,
        Some(_) => return Err(ApiError::bad_request("Version must be a number or \"latest\"").at_field("Version")),
    };
    let version = match version {
        Some(v) => v,
        None => image.latest.ok_or_else(|| ApiError::not_found(format!("a version of image {}", image.uuid)))?,
    };
    let update = match field(obj, "update") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::bad_request("update must be true or false").at_field("update")),
    };
    let machine = match st.catalog.machine_by_mac(&mac).await? {
        Some(m) => m,
        None => {
            caller.require_on(Privs::MACHINES_MODIFY, "/machines").map_err(|_| {
                ApiError::not_found(format!(
                    "machine {mac} (it registers itself at its first network boot, then an administrator accepts it)"
                ))
            })?;
            st.catalog.register_machine(&format!("mac-{}", mac.replace(':', "")), &mac, "x86_64", true).await?
        }
    };
    let entries = vec![BootEntry { image: image.uuid, version, update }];
    Ok(Json(super::machines::queue(&st, &caller, &machine, None, entries).await?))
}

/// Machines.
#[utoipa::path(get, path = "/machines", tag = "compat", responses((status = 200, body = [bams_catalog::Machine])))]
pub async fn machines(State(st): State<AppState>) -> ApiResult<Json<Vec<bams_catalog::Machine>>> {
    Ok(Json(st.catalog.list_machines().await?))
}

/// One machine by MAC address.
#[utoipa::path(get, path = "/machine/{mac}", tag = "compat", params(("mac" = String, Path)), responses((status = 200, body = bams_catalog::Machine)))]
pub async fn machine(State(st): State<AppState>, Path(mac): Path<String>) -> ApiResult<Json<bams_catalog::Machine>> {
    Ok(Json(super::machines::machine(&st, &mac).await?))
}
