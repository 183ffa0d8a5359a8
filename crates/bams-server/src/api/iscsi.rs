//! iSCSI targets (docs/design.md §5 appliance routes). The catalog holds each target's desired
//! state; `apply` brings the configured backend (tgt, SCST, LIO) to it and answers what it
//! changed; reading a target reports its drift. CHAP secrets are accepted but never returned.

use axum::extract::State;
use axum::http::StatusCode;
use bams_appliance::iscsi::{self, Change, Chap, DesiredTarget, LunSpec, Session, TargetSpec};
use bams_catalog::IscsiRecord;
use serde::{Deserialize, Deserializer, Serialize};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Json, Path, Query};
use crate::state::AppState;

/// CHAP as shown: the user only.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ChapView {
    /// User name initiators log in with.
    pub user: String,
}

/// A target: desired state and how the backend differs from it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TargetView {
    /// Id (tgt's target id).
    pub id: i64,
    /// IQN.
    pub iqn: String,
    /// LUNs.
    pub luns: Vec<LunSpec>,
    /// Allowed initiators (IQNs, addresses, `ALL`); empty = nobody.
    pub initiators: Vec<String>,
    /// CHAP (user only; the secret is never returned).
    pub chap: Option<ChapView>,
    /// Backend: tgt, scst or lio.
    pub backend: String,
    /// Differences between the backend and the desired state (empty = in sync).
    pub drift: Option<Vec<String>>,
    /// Why drift could not be read (backend not running…).
    pub drift_error: Option<String>,
    /// Created.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: String,
    /// Last change of the desired state.
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: String,
}

/// Targets.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TargetList {
    /// By id.
    pub items: Vec<TargetView>,
    /// Always null: the list is complete.
    pub next_cursor: Option<String>,
}

/// A new target.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTarget {
    /// IQN (RFC 3720), e.g. `iqn.2026-11.com.example:images`.
    pub iqn: String,
    /// LUNs.
    #[serde(default)]
    pub luns: Vec<LunSpec>,
    /// Allowed initiators; empty = nobody.
    #[serde(default)]
    pub initiators: Vec<String>,
    /// CHAP.
    #[serde(default)]
    pub chap: Option<Chap>,
}

fn some<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Changes to a target; absent fields stay as they are, `"chap": null` removes CHAP.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetUpdate {
    /// New IQN.
    pub iqn: Option<String>,
    /// New initiator list.
    pub initiators: Option<Vec<String>>,
    /// New CHAP, or null for none.
    #[serde(default, deserialize_with = "some")]
    #[schema(value_type = Option<Chap>)]
    pub chap: Option<Option<Chap>>,
}

/// A LUN to add (`lun` omitted = the first free number).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewLun {
    /// LUN number, 1-255.
    pub lun: Option<u32>,
    /// Backing file or block device.
    pub path: String,
    /// Read-only (default true).
    #[serde(default = "yes")]
    pub readonly: bool,
}

fn yes() -> bool {
    true
}

/// What `apply` did.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ApplyResult {
    /// The differences found and fixed (empty = already in sync).
    pub changes: Vec<Change>,
}

/// Sessions.
#[derive(Serialize, utoipa::ToSchema)]
pub struct SessionList {
    /// Logged-in initiators.
    pub items: Vec<Session>,
    /// Always null: the list is complete.
    pub next_cursor: Option<String>,
}

/// `DELETE` options.
#[derive(Deserialize, utoipa::IntoParams)]
pub struct DeleteTarget {
    /// Disconnect logged-in initiators.
    #[serde(default)]
    pub force: bool,
}

fn spec_of(rec: &IscsiRecord) -> ApiResult<TargetSpec> {
    serde_json::from_value(rec.spec.clone()).map_err(|e| ApiError::internal(format!("target {} spec: {e}", rec.id)))
}

fn desired(rec: &IscsiRecord) -> ApiResult<DesiredTarget> {
    let spec = spec_of(rec)?;
    let chap_changed = iscsi::chap_digest(spec.chap.as_ref()) != rec.applied_chap;
    Ok(DesiredTarget { tid: rec.id, iqn: rec.iqn.clone(), spec, chap_changed })
}

async fn all_desired(st: &AppState) -> ApiResult<Vec<DesiredTarget>> {
    st.catalog.list_iscsi_targets().await?.iter().map(desired).collect()
}

fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default().to_rfc3339()
}

async fn view(st: &AppState, rec: &IscsiRecord, all: &[DesiredTarget]) -> ApiResult<TargetView> {
    let want = desired(rec)?;
    let (drift, drift_error) = match st.iscsi.plan(&want, all).await {
        Ok(changes) => (Some(changes.into_iter().map(|c| c.description).collect()), None),
        Err(e) => (None, Some(e.to_string())),
    };
    Ok(TargetView {
        id: rec.id,
        iqn: rec.iqn.clone(),
        chap: want.spec.chap.as_ref().map(|c| ChapView { user: c.user.clone() }),
        luns: want.spec.luns,
        initiators: want.spec.initiators,
        backend: st.iscsi.name().into(),
        drift,
        drift_error,
        created_at: time(rec.created_at),
        updated_at: time(rec.updated_at),
    })
}

async fn view_one(st: &AppState, rec: &IscsiRecord) -> ApiResult<TargetView> {
    view(st, rec, &all_desired(st).await?).await
}

/// Validate and store a spec, refusing a CHAP user another target has (tgt accounts are global).
async fn store(st: &AppState, id: Option<i64>, iqn: &str, mut spec: TargetSpec) -> ApiResult<IscsiRecord> {
    iscsi::validate_iqn(iqn)?;
    spec.validate(&st.iscsi_policy)?;
    if let Some(c) = &spec.chap {
        for other in st.catalog.list_iscsi_targets().await?.iter().filter(|r| Some(r.id) != id) {
            if spec_of(other)?.chap.is_some_and(|o| o.user == c.user) {
                return Err(ApiError::conflict(format!("CHAP user {} is used by target {}", c.user, other.iqn)));
            }
        }
    }
    let json = serde_json::to_value(&spec).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(match id {
        None => st.catalog.add_iscsi_target(iqn, &json).await?,
        Some(id) => st.catalog.update_iscsi_target(id, iqn, &json).await?,
    })
}

/// Targets with their drift.
#[utoipa::path(get, path = "/api/v1/iscsi/targets", tag = "appliance", responses((status = 200, body = TargetList)))]
pub async fn list_targets(State(st): State<AppState>, _caller: Caller) -> ApiResult<Json<TargetList>> {
    Ok(Json(TargetList { items: list_views(&st).await?, next_cursor: None }))
}

/// Every target as the API shows it (no secrets); also what the diagnostics bundle holds.
pub async fn list_views(st: &AppState) -> ApiResult<Vec<TargetView>> {
    let recs = st.catalog.list_iscsi_targets().await?;
    let all: Vec<DesiredTarget> = recs.iter().map(desired).collect::<ApiResult<_>>()?;
    let mut items = Vec::with_capacity(recs.len());
    for r in &recs {
        items.push(view(st, r, &all).await?);
    }
    Ok(items)
}

/// Define a target (applied with `POST …/apply`).
#[utoipa::path(post, path = "/api/v1/iscsi/targets", tag = "appliance", request_body = NewTarget, responses((status = 201, body = TargetView)))]
pub async fn create_target(
    State(st): State<AppState>,
    _caller: Caller,
    Json(req): Json<NewTarget>,
) -> ApiResult<(StatusCode, Json<TargetView>)> {
    let spec = TargetSpec { luns: req.luns, initiators: req.initiators, chap: req.chap };
    let rec = store(&st, None, &req.iqn, spec).await?;
    Ok((StatusCode::CREATED, Json(view_one(&st, &rec).await?)))
}

/// One target with its drift.
#[utoipa::path(get, path = "/api/v1/iscsi/targets/{id}", tag = "appliance", params(("id" = i64, Path)), responses((status = 200, body = TargetView)))]
pub async fn get_target(
    State(st): State<AppState>,
    _caller: Caller,
    Path(id): Path<i64>,
) -> ApiResult<Json<TargetView>> {
    let rec = st.catalog.get_iscsi_target(id).await?;
    Ok(Json(view_one(&st, &rec).await?))
}

/// Change a target's IQN, initiators or CHAP (apply to take effect).
#[utoipa::path(put, path = "/api/v1/iscsi/targets/{id}", tag = "appliance", params(("id" = i64, Path)), request_body = TargetUpdate, responses((status = 200, body = TargetView)))]
pub async fn update_target(
    State(st): State<AppState>,
    _caller: Caller,
    Path(id): Path<i64>,
    Json(req): Json<TargetUpdate>,
) -> ApiResult<Json<TargetView>> {
    let rec = st.catalog.get_iscsi_target(id).await?;
    let mut spec = spec_of(&rec)?;
    if req.iqn.as_ref().is_some_and(|i| *i != rec.iqn) {
        // A renamed target is a new target to initiators: the old name must go first.
        st.iscsi.remove(&desired(&rec)?, &[], false).await?;
    }
    if let Some(i) = req.initiators {
        spec.initiators = i;
    }
    if let Some(c) = req.chap {
        spec.chap = c;
    }
    let rec = store(&st, Some(id), req.iqn.as_deref().unwrap_or(&rec.iqn), spec).await?;
    Ok(Json(view_one(&st, &rec).await?))
}

/// Remove a target from the backend and the catalog (refused while initiators are logged
/// in, unless `force`).
#[utoipa::path(delete, path = "/api/v1/iscsi/targets/{id}", tag = "appliance", params(("id" = i64, Path), DeleteTarget), responses((status = 204)))]
pub async fn delete_target(
    State(st): State<AppState>,
    _caller: Caller,
    Path(id): Path<i64>,
    Query(q): Query<DeleteTarget>,
) -> ApiResult<StatusCode> {
    let rec = st.catalog.get_iscsi_target(id).await?;
    let remaining: Vec<DesiredTarget> = all_desired(&st).await?.into_iter().filter(|t| t.tid != id).collect();
    st.iscsi.remove(&desired(&rec)?, &remaining, q.force).await?;
    st.catalog.delete_iscsi_target(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Bring the backend to the target's desired state; answers what changed.
#[utoipa::path(post, path = "/api/v1/iscsi/targets/{id}/apply", tag = "appliance", params(("id" = i64, Path)), responses((status = 200, body = ApplyResult)))]
pub async fn apply_target(
    State(st): State<AppState>,
    _caller: Caller,
    Path(id): Path<i64>,
) -> ApiResult<Json<ApplyResult>> {
    let rec = st.catalog.get_iscsi_target(id).await?;
    let want = desired(&rec)?;
    let changes = iscsi::apply(st.iscsi.as_ref(), &want, &all_desired(&st).await?).await?;
    st.catalog.set_iscsi_applied_chap(id, iscsi::chap_digest(want.spec.chap.as_ref()).as_deref()).await?;
    Ok(Json(ApplyResult { changes }))
}

/// Add a LUN (apply to take effect).
#[utoipa::path(post, path = "/api/v1/iscsi/targets/{id}/luns", tag = "appliance", params(("id" = i64, Path)), request_body = NewLun, responses((status = 201, body = TargetView)))]
pub async fn add_lun(
    State(st): State<AppState>,
    _caller: Caller,
    Path(id): Path<i64>,
    Json(req): Json<NewLun>,
) -> ApiResult<(StatusCode, Json<TargetView>)> {
    let rec = st.catalog.get_iscsi_target(id).await?;
    let mut spec = spec_of(&rec)?;
    let lun = match req.lun {
        Some(n) => n,
        None => iscsi::next_lun(&spec)?,
    };
    spec.add_lun(LunSpec { lun, path: req.path, readonly: req.readonly }, &st.iscsi_policy)?;
    let rec = store(&st, Some(id), &rec.iqn, spec).await?;
    Ok((StatusCode::CREATED, Json(view_one(&st, &rec).await?)))
}

/// Remove a LUN (apply to take effect).
#[utoipa::path(delete, path = "/api/v1/iscsi/targets/{id}/luns/{lun}", tag = "appliance", params(("id" = i64, Path), ("lun" = u32, Path)), responses((status = 200, body = TargetView)))]
pub async fn delete_lun(
    State(st): State<AppState>,
    _caller: Caller,
    Path((id, lun)): Path<(i64, u32)>,
) -> ApiResult<Json<TargetView>> {
    let rec = st.catalog.get_iscsi_target(id).await?;
    let mut spec = spec_of(&rec)?;
    let before = spec.luns.len();
    spec.luns.retain(|l| l.lun != lun);
    if spec.luns.len() == before {
        return Err(ApiError::not_found(format!("LUN {lun} of target {id}")));
    }
    let rec = store(&st, Some(id), &rec.iqn, spec).await?;
    Ok(Json(view_one(&st, &rec).await?))
}

/// Initiators logged in now.
#[utoipa::path(get, path = "/api/v1/iscsi/sessions", tag = "appliance", responses((status = 200, body = SessionList)))]
pub async fn sessions(State(st): State<AppState>, _caller: Caller) -> ApiResult<Json<SessionList>> {
    Ok(Json(SessionList { items: st.iscsi.sessions().await?, next_cursor: None }))
}
