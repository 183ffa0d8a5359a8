//! Bare-metal images and machines: the image catalogue with versions (upload, download,
//! delete), image sets, and machines with their state, queued boot and history. Every action
//! is an API route of `api::images` / `api::machines`, drawn only when the caller may use it.

use askama::Template;
use axum::extract::{Path, State};
use axum::response::Response;
use bams_catalog::{BootPlan, Image, ImageKind, Machine};

use crate::api::images::{image_by_uuid, require_image, Need};
use crate::error::{ApiError, ApiResult};
use crate::policy::Privs;
use crate::state::AppState;
use crate::ui::fmt::{bytes, When};
use crate::ui::{respond, Ctx, Frame};

/// An image as the list shows it.
pub struct ImageRow {
    uuid: String,
    name: String,
    owner: String,
    kind: &'static str,
    disk: String,
    size: String,
    versions: i64,
    latest: String,
    expires: When,
}

/// An image set as the list shows it.
pub struct SetRow {
    id: i64,
    name: String,
    owner: String,
    entries: Vec<String>,
    may_delete: bool,
}

#[derive(Template)]
#[template(path = "images.html")]
struct ImagesPage {
    frame: Frame,
    images: Vec<ImageRow>,
    sets: Vec<SetRow>,
    may_create: bool,
    kinds: Vec<&'static str>,
}

const KINDS: [ImageKind; 5] =
    [ImageKind::System, ImageKind::Boot, ImageKind::UserData, ImageKind::Temporal, ImageKind::Base];

fn image_row(i: &Image, now: i64) -> ImageRow {
    ImageRow {
        uuid: i.uuid.clone(),
        name: i.name.clone(),
        owner: i.owner.clone(),
        kind: i.kind.as_str(),
        disk: i.disk.clone(),
        size: bytes(i.size),
        versions: i.versions,
        latest: i.latest.map(|v| v.to_string()).unwrap_or_default(),
        expires: When::maybe(i.expires_at, now),
    }
}

/// Image names by UUID for showing entries.
fn entry_text(images: &[Image], e: &bams_catalog::BootEntry) -> String {
    let name = images.iter().find(|i| i.uuid == e.image).map_or_else(|| e.image.clone(), |i| i.name.clone());
    format!("{name} v{}{}", e.version, if e.update { " (sync back)" } else { "" })
}

fn may_own(ctx: &Ctx) -> bool {
    ctx.may(Privs::IMAGES_OWN.union(Privs::IMAGES_MODIFY), "/images") && ctx.caller.user.id > 0
}

/// `GET /images`.
pub async fn list(State(st): State<AppState>, ctx: Ctx) -> Response {
    let build = async {
        let images = st.catalog.list_images(None).await?;
        let sets = st
            .catalog
            .list_image_sets(None)
            .await?
            .into_iter()
            .map(|s| SetRow {
                id: s.id,
                may_delete: (ctx.caller.is_self(s.owner_id) && ctx.may(Privs::IMAGES_OWN, "/images"))
                    || ctx.may(Privs::IMAGES_MODIFY, "/images"),
                entries: s.entries.iter().map(|e| entry_text(&images, e)).collect(),
                name: s.name,
                owner: s.owner,
            })
            .collect();
        ApiResult::Ok(ImagesPage {
            frame: ctx.frame("Images"),
            images: images.iter().map(|i| image_row(i, ctx.now)).collect(),
            sets,
            may_create: may_own(&ctx),
            kinds: KINDS.iter().map(|k| k.as_str()).collect(),
        })
    };
    respond(build.await)
}

/// A version row.
pub struct VersionRow {
    number: i64,
    size: String,
    added: String,
    sent: String,
    source: String,
    by: String,
    when: When,
}

#[derive(Template)]
#[template(path = "image.html")]
struct ImagePage {
    frame: Frame,
    image: ImageRow,
    description: String,
    disk_uuid: String,
    versions: Vec<VersionRow>,
    may_read: bool,
    may_write: bool,
    may_boot: bool,
    machines: Vec<(i64, String)>,
}

/// `GET /images/{uuid}`.
pub async fn show(State(st): State<AppState>, ctx: Ctx, Path(uuid): Path<String>) -> Response {
    let build = async {
        let image = image_by_uuid(&st, &uuid).await?;
        let versions = st
            .catalog
            .list_image_versions(image.id)
            .await?
            .into_iter()
            .rev()
            .map(|v| VersionRow {
                number: v.number,
                size: bytes(v.size),
                added: bytes(v.bytes_added),
                sent: bytes(v.bytes_sent),
                source: v.source,
                by: v.created_by,
                when: When::at(v.created_at, ctx.now),
            })
            .collect();
        let may_read = require_image(&ctx.caller, &image, Need::Read).is_ok();
        let may_boot = may_read && ctx.may(Privs::MACHINES_OPERATE, "/machines");
        let machines = if may_boot {
            st.catalog.list_machines().await?.into_iter().filter(|m| m.managed).map(|m| (m.id, m.name)).collect()
        } else {
            Vec::new()
        };
        ApiResult::Ok(ImagePage {
            frame: ctx.frame(format!("Image {}", image.name)),
            description: image.description.clone(),
            disk_uuid: image.disk_uuid.clone().unwrap_or_default(),
            may_read,
            may_write: require_image(&ctx.caller, &image, Need::Write).is_ok(),
            may_boot,
            machines,
            image: image_row(&image, ctx.now),
            versions,
        })
    };
    respond(build.await)
}

/// A machine as the list shows it.
pub struct MachineRow {
    id: i64,
    name: String,
    macs: String,
    state: &'static str,
    error: String,
    managed: bool,
    current: Vec<String>,
    next: Vec<String>,
    last_seen: When,
}

fn plan_text(images: &[Image], plan: &Option<BootPlan>) -> Vec<String> {
    plan.as_ref().map(|p| p.entries.iter().map(|e| entry_text(images, e)).collect()).unwrap_or_default()
}

fn machine_row(m: Machine, images: &[Image], now: i64) -> MachineRow {
    MachineRow {
        id: m.id,
        macs: m.macs.join(", "),
        state: m.state.as_str(),
        error: m.error.unwrap_or_default(),
        managed: m.managed,
        current: plan_text(images, &m.current),
        next: plan_text(images, &m.next),
        last_seen: When::maybe(m.last_seen, now),
        name: m.name,
    }
}

#[derive(Template)]
#[template(path = "machines.html")]
struct MachinesPage {
    frame: Frame,
    machines: Vec<MachineRow>,
    may_modify: bool,
    may_operate: bool,
    sets: Vec<String>,
}

/// `GET /machines`.
pub async fn machines(State(st): State<AppState>, ctx: Ctx) -> Response {
    let build = async {
        let images = st.catalog.list_images(None).await?;
        let machines =
            st.catalog.list_machines().await?.into_iter().map(|m| machine_row(m, &images, ctx.now)).collect();
        ApiResult::Ok(MachinesPage {
            frame: ctx.frame("Machines"),
            machines,
            may_modify: ctx.may(Privs::MACHINES_MODIFY, "/machines"),
            may_operate: ctx.may(Privs::MACHINES_OPERATE, "/machines"),
            sets: st.catalog.list_image_sets(None).await?.into_iter().map(|s| s.name).collect(),
        })
    };
    respond(build.await)
}

/// A history line.
pub struct EventRow {
    when: When,
    state: &'static str,
    message: String,
    details: String,
}

#[derive(Template)]
#[template(path = "machine.html")]
struct MachinePage {
    frame: Frame,
    machine: MachineRow,
    arch: String,
    after_flash: String,
    events: Vec<EventRow>,
    may_modify: bool,
    may_operate: bool,
    sets: Vec<String>,
}

/// `GET /machines/{id}`.
pub async fn machine(State(st): State<AppState>, ctx: Ctx, Path(id): Path<i64>) -> Response {
    let build = async {
        let m = st.catalog.get_machine(id).await.map_err(ApiError::from)?;
        let images = st.catalog.list_images(None).await?;
        let events = st
            .catalog
            .machine_events(id, 200)
            .await?
            .into_iter()
            .map(|e| EventRow {
                when: When::at(e.time, ctx.now),
                state: e.state.as_str(),
                message: e.message,
                details: e.details.map(|d| flash_summary(&d)).unwrap_or_default(),
            })
            .collect();
        ApiResult::Ok(MachinePage {
            frame: ctx.frame(format!("Machine {}", m.name)),
            arch: m.arch.clone(),
            after_flash: m.after_flash.clone(),
            machine: machine_row(m, &images, ctx.now),
            events,
            may_modify: ctx.may(Privs::MACHINES_MODIFY, "/machines"),
            may_operate: ctx.may(Privs::MACHINES_OPERATE, "/machines"),
            sets: st.catalog.list_image_sets(None).await?.into_iter().map(|s| s.name).collect(),
        })
    };
    respond(build.await)
}

/// A flash report in words: what was read, fetched and how long it took.
fn flash_summary(d: &serde_json::Value) -> String {
    let mut parts = Vec::new();
    for f in d["flashed"].as_array().into_iter().flatten() {
        let r = &f["report"];
        parts.push(format!(
            "flashed v{} onto {}: {} fetched of {} in {:.1} s",
            f["version"],
            f["device"].as_str().unwrap_or("?"),
            bytes(r["bytes_fetched"].as_i64().unwrap_or(0)),
            bytes(r["bytes_total"].as_i64().unwrap_or(0)),
            f["seconds"].as_f64().unwrap_or(0.0)
        ));
    }
    for s in d["synced"].as_array().into_iter().flatten() {
        parts.push(format!("synced back as v{}: {} sent", s["version"], bytes(s["bytes_sent"].as_i64().unwrap_or(0))));
    }
    if parts.is_empty() {
        if let Some(n) = d["bytes_sent"].as_i64() {
            parts.push(format!("{} sent, {} new", bytes(n), bytes(d["bytes_added"].as_i64().unwrap_or(0))));
        }
    }
    parts.join("; ")
}
