//! Tape library (docs/design.md §5 appliance routes): element status, drives, slots, inventory,
//! load and unload. The changer is the configured one (`tape.library`: the built-in virtual
//! library by default, or a real one through mtx); a robot that fails answers 502 with what
//! mtx printed, and the operator mistakes (slot empty, drive full) answer 409 before it moves.

use std::sync::Arc;

use axum::extract::State;
use bams_appliance::tape::{self, Changer, DriveStatus, Library, Slot, Source};
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Json, Path};
use crate::state::AppState;

fn changer(st: &AppState) -> ApiResult<Arc<dyn Changer>> {
    st.tape.clone().ok_or_else(|| ApiError::not_found("tape library (tape.library is none in the config)"))
}

/// A drive with its element state and what the drive itself reports.
#[derive(Serialize, utoipa::ToSchema)]
pub struct DriveView {
    /// Element state.
    #[serde(flatten)]
    pub drive: tape::Drive,
    /// `mt status` (or the virtual drive); `null` when it could not be read.
    pub status: Option<DriveStatus>,
    /// Why the status could not be read.
    pub status_error: Option<String>,
}

/// Drives.
#[derive(Serialize, utoipa::ToSchema)]
pub struct DriveList {
    /// By element number.
    pub items: Vec<DriveView>,
    /// Always null: the list is complete.
    pub next_cursor: Option<String>,
}

/// Slots.
#[derive(Serialize, utoipa::ToSchema)]
pub struct SlotList {
    /// Storage then import/export slots, by element number.
    pub items: Vec<Slot>,
    /// Always null: the list is complete.
    pub next_cursor: Option<String>,
}

/// What to load: a slot number or a barcode (exactly one).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoadRequest {
    /// Source slot.
    pub slot: Option<u32>,
    /// Or the cartridge's barcode.
    pub barcode: Option<String>,
}

/// Where to unload to (default: the cartridge's home slot, else the first empty slot).
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UnloadRequest {
    /// Target slot.
    pub slot: Option<u32>,
}

/// A slot-to-slot move.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferRequest {
    /// Source slot.
    pub from: u32,
    /// Target slot (empty).
    pub to: u32,
}

/// Move a cartridge between slots (e.g. from the mail slot into storage, or out to it).
#[utoipa::path(post, path = "/api/v1/tape/transfer", tag = "appliance", request_body = TransferRequest, responses((status = 200, body = Library)))]
pub async fn transfer(
    State(st): State<AppState>,
    _caller: Caller,
    Json(req): Json<TransferRequest>,
) -> ApiResult<Json<Library>> {
    Ok(Json(tape::transfer(changer(&st)?.as_ref(), req.from, req.to).await?))
}

/// Changer element status: drives, slots, barcodes, loaded media.
#[utoipa::path(get, path = "/api/v1/tape/library", tag = "appliance", responses((status = 200, body = Library)))]
pub async fn library(State(st): State<AppState>, _caller: Caller) -> ApiResult<Json<Library>> {
    Ok(Json(changer(&st)?.status().await?))
}

/// Rescan barcodes (mtx `inventory`) and return the new element status.
#[utoipa::path(post, path = "/api/v1/tape/inventory", tag = "appliance", responses((status = 200, body = Library)))]
pub async fn inventory(State(st): State<AppState>, _caller: Caller) -> ApiResult<Json<Library>> {
    Ok(Json(changer(&st)?.inventory().await?))
}

/// Drives, each with its own status.
#[utoipa::path(get, path = "/api/v1/tape/drives", tag = "appliance", responses((status = 200, body = DriveList)))]
pub async fn drives(State(st): State<AppState>, _caller: Caller) -> ApiResult<Json<DriveList>> {
    let changer = changer(&st)?;
    let lib = changer.status().await?;
    Ok(Json(DriveList { items: drive_views(changer.as_ref(), lib.drives).await, next_cursor: None }))
}

/// Each drive of an element status with what the drive itself reports.
pub(crate) async fn drive_views(changer: &dyn Changer, drives: Vec<tape::Drive>) -> Vec<DriveView> {
    let mut items = Vec::with_capacity(drives.len());
    for drive in drives {
        let (status, status_error) = match changer.drive_status(drive.id).await {
            Ok(s) => (Some(s), None),
            Err(e) => (None, Some(e.to_string())),
        };
        items.push(DriveView { drive, status, status_error });
    }
    items
}

/// Slots with their cartridges.
#[utoipa::path(get, path = "/api/v1/tape/slots", tag = "appliance", responses((status = 200, body = SlotList)))]
pub async fn slots(State(st): State<AppState>, _caller: Caller) -> ApiResult<Json<SlotList>> {
    Ok(Json(SlotList { items: changer(&st)?.status().await?.slots, next_cursor: None }))
}

/// Load a cartridge (by slot or barcode) into a drive.
#[utoipa::path(post, path = "/api/v1/tape/drives/{id}/load", tag = "appliance", params(("id" = u32, Path)), request_body = LoadRequest, responses((status = 200, body = Library)))]
pub async fn load(
    State(st): State<AppState>,
    _caller: Caller,
    Path(id): Path<u32>,
    Json(req): Json<LoadRequest>,
) -> ApiResult<Json<Library>> {
    let source = match (req.slot, req.barcode) {
        (Some(n), None) => Source::Slot(n),
        (None, Some(b)) => Source::Barcode(b),
        _ => return Err(ApiError::bad_request("give exactly one of slot and barcode")),
    };
    Ok(Json(tape::load(changer(&st)?.as_ref(), id, &source).await?))
}

/// Unload a drive into a slot (default: the cartridge's home slot).
#[utoipa::path(post, path = "/api/v1/tape/drives/{id}/unload", tag = "appliance", params(("id" = u32, Path)), request_body = UnloadRequest, responses((status = 200, body = Library)))]
pub async fn unload(
    State(st): State<AppState>,
    _caller: Caller,
    Path(id): Path<u32>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Library>> {
    // The body is optional: an empty one means "back to its home slot".
    let req: UnloadRequest = if body.iter().all(u8::is_ascii_whitespace) {
        UnloadRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("invalid body: {e}")))?
    };
    let to = req.slot;
    Ok(Json(tape::unload(changer(&st)?.as_ref(), id, to).await?))
}
