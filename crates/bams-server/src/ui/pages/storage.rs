//! Storage, the appliance's own areas: disk repositories, the tape library (a picture of its
//! slots and drives, media pools, volumes, tape sets), iSCSI targets, and the Bacula storage
//! daemon. Each page reads through the API's handlers (same checks) and acts through the
//! API's routes.

use askama::Template;
use axum::extract::{Query, State};
use axum::response::Response;
use serde_json::Value;

use crate::error::ApiResult;
use crate::policy::Privs;
use crate::state::AppState;
use crate::ui::fmt::{bytes, meter_class};
use crate::ui::{render, respond, Ctx, Frame};

/// A table read from the API's JSON: rows of cells picked by key paths (`a.b`).
pub struct Table {
    /// Column headings.
    pub heads: Vec<&'static str>,
    /// Cells.
    pub rows: Vec<Vec<String>>,
}

/// The text of `v` at `path` (`policy.retention_days`): strings bare, arrays joined,
/// nothing for null.
fn cell(v: &Value, path: &str) -> String {
    let mut cur = v;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        cur = &cur[part];
    }
    match cur {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(a) => {
            a.iter().map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string)).collect::<Vec<_>>().join(", ")
        }
        other => other.to_string(),
    }
}

fn table(items: &[Value], cols: &[(&'static str, &str)]) -> Table {
    Table {
        heads: cols.iter().map(|(h, _)| *h).collect(),
        rows: items.iter().map(|it| cols.iter().map(|(_, k)| cell(it, k)).collect()).collect(),
    }
}

fn items<T: serde::Serialize>(list: &T) -> Vec<Value> {
    serde_json::to_value(list).ok().and_then(|v| v["items"].as_array().cloned()).unwrap_or_default()
}

/// A disk repository as the page shows it.
pub struct DiskRow {
    id: i64,
    name: String,
    kind: String,
    path: String,
    source: String,
    health: String,
    used: String,
    total: String,
    meter: &'static str,
    percent: u64,
    used_by: String,
}

#[derive(Template)]
#[template(path = "disks.html")]
struct DisksPage {
    frame: Frame,
    disks: Vec<DiskRow>,
    may_modify: bool,
    devices: String,
}

/// `GET /storage/disks`.
pub async fn disks(State(st): State<AppState>, ctx: Ctx) -> Response {
    let build = async {
        let list = crate::api::disks::list_disks(State(st.clone()), ctx.caller.clone()).await?.0;
        let disks = list
            .items
            .iter()
            .map(|d| {
                let (used, total) = d.disk.capacity.as_ref().map_or((0, 0), |c| (c.used_bytes, c.total_bytes));
                let names = |v: &[Value]| v.iter().filter_map(|x| x["name"].as_str()).collect::<Vec<_>>().join(", ");
                let mut used_by = String::new();
                if !d.used_by.repositories.is_empty() {
                    used_by = format!("repositories {}", names(&d.used_by.repositories));
                }
                if !d.used_by.jobs.is_empty() {
                    used_by.push_str(&format!("; jobs {}", names(&d.used_by.jobs)));
                }
                DiskRow {
                    id: d.disk.record.id,
                    name: d.disk.record.name.clone(),
                    kind: d.disk.record.kind.clone(),
                    path: d.disk.record.path.clone(),
                    source: d.disk.record.source.clone().unwrap_or_default(),
                    health: d.disk.health.clone(),
                    used: bytes(used as i64),
                    total: bytes(total as i64),
                    meter: meter_class(used as i64, total as i64),
                    percent: (used * 100).checked_div(total).unwrap_or(0),
                    used_by,
                }
            })
            .collect();
        ApiResult::Ok(DisksPage {
            frame: ctx.frame("Disk repositories"),
            disks,
            may_modify: ctx.may(Privs::SYS_MODIFY, "/appliance/disks"),
            devices: st.config.disk_devices.join(", "),
        })
    };
    respond(build.await)
}

/// One cell of the library picture.
pub struct SlotCell {
    number: u32,
    full: bool,
    barcode: String,
    mail: bool,
    cleaning: bool,
}

/// A drive in the picture.
pub struct DriveCell {
    id: u32,
    device: String,
    loaded: Option<String>,
    status: String,
}

#[derive(Template)]
#[template(path = "tape.html")]
struct TapePage {
    frame: Frame,
    configured: bool,
    error: String,
    kind: String,
    changer: String,
    slots: Vec<SlotCell>,
    drives: Vec<DriveCell>,
    pools: Table,
    volumes: Table,
    sets: Table,
    may_operate: bool,
    may_modify: bool,
    first_full: u32,
    first_empty: u32,
    pool_names: Vec<String>,
}

/// `GET /storage/tape`.
pub async fn tape(State(st): State<AppState>, ctx: Ctx) -> Response {
    let mut page = TapePage {
        frame: ctx.frame("Tape library"),
        configured: st.tape.is_some(),
        error: String::new(),
        kind: String::new(),
        changer: String::new(),
        slots: Vec::new(),
        drives: Vec::new(),
        pools: table(&[], &[]),
        volumes: table(&[], &[]),
        sets: table(&[], &[]),
        may_operate: ctx.may(Privs::SYS_OPERATE, "/appliance/tape"),
        may_modify: ctx.may(Privs::SYS_MODIFY, "/appliance/tape"),
        first_full: 0,
        first_empty: 0,
        pool_names: Vec::new(),
    };
    if let Some(changer) = st.tape.clone() {
        // One element status (a `mtx status` on a real library) serves drives and slots.
        match changer.status().await {
            Ok(lib) => {
                page.kind = lib.kind;
                page.changer = lib.changer;
                page.first_full = lib.slots.iter().find(|s| s.full && !s.cleaning).map_or(0, |s| s.number);
                page.first_empty = lib.slots.iter().find(|s| !s.full && !s.import_export).map_or(0, |s| s.number);
                page.slots = lib
                    .slots
                    .into_iter()
                    .map(|s| SlotCell {
                        number: s.number,
                        full: s.full,
                        barcode: s.barcode.unwrap_or_default(),
                        mail: s.import_export,
                        cleaning: s.cleaning,
                    })
                    .collect();
                page.drives = crate::api::tape::drive_views(changer.as_ref(), lib.drives)
                    .await
                    .into_iter()
                    .map(|d| DriveCell {
                        id: d.drive.id,
                        device: d.drive.device.clone().unwrap_or_default(),
                        loaded: d
                            .drive
                            .loaded
                            .as_ref()
                            .map(|l| l.barcode.clone().unwrap_or_else(|| "(no barcode)".into())),
                        status: d
                            .status
                            .as_ref()
                            .and_then(|s| serde_json::to_value(s).ok())
                            .map(|v| {
                                ["state", "file_number", "block_number"]
                                    .iter()
                                    .filter_map(|k| {
                                        v.get(*k).filter(|x| !x.is_null()).map(|x| format!("{k} {}", cell(x, "")))
                                    })
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            })
                            .or(d.status_error.clone())
                            .unwrap_or_default(),
                    })
                    .collect();
            }
            Err(e) => page.error = crate::error::ApiError::from(e).message,
        }
        if let Ok(p) = crate::api::tape_media::list_pools(State(st.clone()), ctx.caller.clone()).await {
            page.pool_names = p.0.items.iter().map(|v| v.name.clone()).collect();
            page.pools = table(
                &items(&p.0),
                &[
                    ("Pool", "name"),
                    ("Keep (days)", "retention_days"),
                    ("Max volumes", "max_volumes"),
                    ("Volumes", "volumes"),
                    ("Recyclable", "recyclable_volumes"),
                    ("Sets", "sets"),
                    ("Bytes", "bytes"),
                ],
            );
        }
        let no_filter = crate::api::tape_media::PoolFilter { pool: None };
        if let Ok(v) =
            crate::api::tape_media::list_volumes(State(st.clone()), ctx.caller.clone(), Query(no_filter)).await
        {
            page.volumes = table(
                &items(&v.0),
                &[
                    ("Barcode", "barcode"),
                    ("Pool", "pool"),
                    ("Status", "status"),
                    ("Labeled", "labeled_at"),
                    ("Last written", "last_written"),
                    ("Bytes", "bytes"),
                    ("Kept until", "retained_until"),
                    ("Recyclable", "recyclable"),
                ],
            );
        }
        let no_filter = crate::api::tape_media::PoolFilter { pool: None };
        if let Ok(s) = crate::api::tape_media::list_sets(State(st.clone()), ctx.caller.clone(), Query(no_filter)).await
        {
            page.sets = table(
                &items(&s.0),
                &[
                    ("Set", "set_id"),
                    ("Pool", "pool"),
                    ("Volumes", "volumes"),
                    ("Snapshots", "snapshots"),
                    ("Bytes", "bytes"),
                    ("Written", "written_at"),
                    ("Complete", "complete"),
                ],
            );
        }
    }
    render(&page)
}

/// An iSCSI target as the page shows it.
pub struct TargetRow {
    id: i64,
    iqn: String,
    luns: Vec<(u32, String, bool)>,
    initiators: String,
    initiator_list: Vec<String>,
    chap_user: String,
    drift: Vec<String>,
    drift_error: String,
}

#[derive(Template)]
#[template(path = "iscsi.html")]
struct IscsiPage {
    frame: Frame,
    targets: Vec<TargetRow>,
    sessions: Table,
    sessions_error: String,
    may_modify: bool,
}

/// `GET /storage/iscsi`.
pub async fn iscsi(State(st): State<AppState>, ctx: Ctx) -> Response {
    let build = async {
        let targets = crate::api::iscsi::list_views(&st)
            .await?
            .into_iter()
            .map(|t| TargetRow {
                id: t.id,
                iqn: t.iqn,
                luns: t.luns.into_iter().map(|l| (l.lun, l.path, l.readonly)).collect(),
                initiators: t.initiators.join(", "),
                initiator_list: t.initiators.clone(),
                chap_user: t.chap.map(|c| c.user).unwrap_or_default(),
                drift: t.drift.unwrap_or_default(),
                drift_error: t.drift_error.unwrap_or_default(),
            })
            .collect();
        let (sessions, sessions_error) = match crate::api::iscsi::sessions(State(st.clone()), ctx.caller.clone()).await
        {
            Ok(s) => (
                table(&items(&s.0), &[("Target", "target"), ("Initiator", "initiator"), ("Address", "address")]),
                String::new(),
            ),
            Err(e) => (table(&[], &[]), e.message),
        };
        ApiResult::Ok(IscsiPage {
            frame: ctx.frame("iSCSI targets"),
            targets,
            sessions,
            sessions_error,
            may_modify: ctx.may(Privs::SYS_MODIFY, "/appliance/iscsi"),
        })
    };
    respond(build.await)
}

/// One line of a diff: `+`, `-` or ` `, and the text.
pub struct DiffLine {
    sign: char,
    text: String,
}

#[derive(Template)]
#[template(path = "bacula.html")]
struct BaculaPage {
    frame: Frame,
    installed: bool,
    version: String,
    service: String,
    config_path: String,
    devices: String,
    has_config: bool,
    diff: Vec<DiffLine>,
    error: String,
    may_operate: bool,
    may_modify: bool,
}

/// `GET /storage/bacula`.
pub async fn bacula(State(st): State<AppState>, ctx: Ctx) -> Response {
    let build = async {
        let status = crate::api::bacula::status(State(st.clone()), ctx.caller.clone()).await?.0;
        let (has_config, diff, error) =
            match crate::api::bacula::get_config(State(st.clone()), ctx.caller.clone()).await {
                Ok(c) => {
                    let c = c.0;
                    let installed = c.content.clone().unwrap_or_default();
                    let diff = similar::TextDiff::from_lines(&installed, &c.generated)
                        .iter_all_changes()
                        .map(|ch| DiffLine {
                            sign: match ch.tag() {
                                similar::ChangeTag::Delete => '-',
                                similar::ChangeTag::Insert => '+',
                                similar::ChangeTag::Equal => ' ',
                            },
                            text: ch.value().trim_end_matches('\n').to_string(),
                        })
                        .collect();
                    (c.content.is_some(), diff, String::new())
                }
                Err(e) => (false, Vec::new(), e.message),
            };
        ApiResult::Ok(BaculaPage {
            frame: ctx.frame("Bacula storage daemon"),
            installed: status.installed,
            version: status.version.unwrap_or_default(),
            service: status.service,
            config_path: status.config_path,
            devices: status.devices.join(", "),
            has_config,
            diff,
            error,
            may_operate: ctx.may(Privs::SYS_OPERATE, "/appliance/bacula"),
            may_modify: ctx.may(Privs::SYS_MODIFY, "/appliance/bacula"),
        })
    };
    respond(build.await)
}
