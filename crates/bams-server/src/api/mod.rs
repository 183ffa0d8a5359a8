//! The REST API: every `/api/v1` route is registered through utoipa-axum's `routes!`, so the
//! OpenAPI document is generated from the same handlers the router serves.

pub mod acl;
pub mod agents;
pub mod bacula;
pub mod compat;
pub mod diag;
pub mod disks;
pub mod endpoint;
pub mod images;
pub mod iscsi;
pub mod jobs;
pub mod logs;
pub mod machines;
pub mod notifications;
pub mod pools;
pub mod repos;
pub mod run_stream;
pub mod snapshot_ops;
pub mod snapshots;
pub mod tape;
pub mod tape_media;
pub mod users;

use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "BAMS API", description = "Backup Appliance Management System: REST API (docs/design.md §5)."),
    components(schemas(crate::error::ErrorBody)),
    modifiers(&BearerAuth),
    security(("bearer" = []), ("cookie" = []))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
        let c = doc.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        c.add_security_scheme(
            "cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(crate::auth::SESSION_COOKIE))),
        );
    }
}

/// A channel's items as a stream (it ends when every sender is gone): how blocking readers
/// hand a response body or an event stream to axum.
pub(crate) fn receiver_stream<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
}

/// A download streamed from a channel of chunks, named `filename` (quotes and line breaks
/// replaced) for the browser's save dialog.
pub(crate) fn attachment(
    rx: tokio::sync::mpsc::Receiver<Result<bytes::Bytes, std::io::Error>>,
    content_type: &str,
    filename: &str,
    length: Option<u64>,
) -> axum::response::Response {
    use axum::http::header;
    use axum::response::IntoResponse;
    let name = filename.replace(['"', '\\', '\r', '\n'], "_");
    let mut r = axum::body::Body::from_stream(receiver_stream(rx)).into_response();
    let h = r.headers_mut();
    let mut set = |k: header::HeaderName, v: String| {
        if let Ok(v) = axum::http::HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    };
    set(header::CONTENT_TYPE, content_type.to_string());
    set(header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\""));
    if let Some(n) = length {
        set(header::CONTENT_LENGTH, n.to_string());
    }
    r
}

/// Sends what is written in 1 MiB pieces down a channel (blocking: the reader's pace sets
/// the writer's).
pub(crate) struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Result<bytes::Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    /// A writer into `tx`.
    pub(crate) fn new(tx: tokio::sync::mpsc::Sender<Result<bytes::Bytes, std::io::Error>>) -> Self {
        Self { tx, buf: Vec::with_capacity(1 << 20) }
    }
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= 1 << 20 {
            self.flush()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = bytes::Bytes::from(std::mem::take(&mut self.buf));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| std::io::Error::other("the client went away"))
    }
}

/// A response body that `write` produces on a blocking thread. An error ends the body with
/// that error (logged as `what`), so the client sees a broken download, not a short one.
pub(crate) fn written_body(
    what: &'static str,
    write: impl FnOnce(&mut ChannelWriter) -> std::io::Result<()> + Send + 'static,
) -> tokio::sync::mpsc::Receiver<Result<bytes::Bytes, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::task::spawn_blocking(move || {
        let mut out = ChannelWriter::new(tx.clone());
        if let Err(e) = write(&mut out).and_then(|()| std::io::Write::flush(&mut out)) {
            tracing::warn!("{what} stopped: {e}");
            let _ = tx.blocking_send(Err(e));
        }
    });
    rx
}

/// All documented routes; the repository endpoint accepts objects up to `max_object_bytes`.
pub fn routes(max_object_bytes: usize) -> OpenApiRouter<AppState> {
    let endpoint = OpenApiRouter::new()
        .routes(routes!(endpoint::list_objects))
        .routes(routes!(endpoint::get_object, endpoint::head_object, endpoint::put_object, endpoint::delete_object))
        .layer(axum::extract::DefaultBodyLimit::max(max_object_bytes));
    // Disk images stream through without a size limit (they never sit in memory); a boot's
    // manifest is bounded by its handler.
    let image_uploads = OpenApiRouter::new()
        .routes(routes!(images::list_versions, images::upload_version))
        .routes(routes!(compat::upload))
        .routes(routes!(machines::boot_needed))
        .routes(routes!(machines::boot_sync))
        .layer(axum::extract::DefaultBodyLimit::disable());
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(endpoint)
        .merge(image_uploads)
        .routes(routes!(images::list_images, images::create_image))
        .routes(routes!(images::get_image, images::update_image, images::delete_image))
        .routes(routes!(images::download_version, images::delete_version))
        .routes(routes!(images::version_manifest))
        .routes(routes!(images::version_ranges))
        .routes(routes!(images::list_sets, images::create_set))
        .routes(routes!(images::get_set, images::delete_set))
        .routes(routes!(machines::list_machines, machines::create_machine))
        .routes(routes!(machines::get_machine, machines::update_machine, machines::delete_machine))
        .routes(routes!(machines::accept_machine))
        .routes(routes!(machines::queue_boot, machines::clear_boot))
        .routes(routes!(machines::history))
        .routes(routes!(machines::ipxe_script))
        .routes(routes!(machines::pixiecore))
        .routes(routes!(machines::boot_file))
        .routes(routes!(machines::task))
        .routes(routes!(machines::report))
        .routes(routes!(machines::boot_manifest))
        .routes(routes!(machines::boot_raw))
        .routes(routes!(machines::boot_ranges))
        .routes(routes!(compat::create_user))
        .routes(routes!(compat::create_image))
        .routes(routes!(compat::download))
        .routes(routes!(compat::boot))
        .routes(routes!(compat::machines))
        .routes(routes!(compat::machine))
        .routes(routes!(crate::auth::login))
        .routes(routes!(crate::auth::logout))
        .routes(routes!(crate::auth::me))
        .routes(routes!(crate::auth::totp_setup))
        .routes(routes!(crate::auth::totp_confirm))
        .routes(routes!(crate::auth::totp_disable))
        .routes(routes!(users::list_users, users::create_user))
        .routes(routes!(users::get_user, users::update_user, users::delete_user))
        .routes(routes!(users::list_tokens, users::create_token))
        .routes(routes!(users::revoke_token))
        .routes(routes!(users::list_audit))
        .routes(routes!(acl::list_acl, acl::set_acl))
        .routes(routes!(acl::delete_acl))
        .routes(routes!(acl::list_roles))
        .routes(routes!(acl::my_permissions))
        .routes(routes!(repos::list_repositories, repos::create_repository))
        .routes(routes!(repos::get_repository, repos::delete_repository))
        .routes(routes!(repos::repository_stats))
        .routes(routes!(snapshots::list_snapshots))
        .routes(routes!(snapshots::sync_snapshots))
        .routes(routes!(snapshots::diff_snapshots))
        .routes(routes!(snapshots::browse_tree))
        .routes(routes!(snapshots::download_file))
        .routes(routes!(snapshots::restore_snapshot))
        .routes(routes!(snapshot_ops::archive))
        .routes(routes!(snapshot_ops::search))
        .routes(routes!(snapshot_ops::forget))
        .routes(routes!(jobs::list_jobs, jobs::create_job))
        .routes(routes!(jobs::get_job, jobs::update_job, jobs::delete_job))
        .routes(routes!(jobs::run_job))
        .routes(routes!(pools::list_pools, pools::create_pool))
        .routes(routes!(pools::get_pool, pools::update_pool, pools::delete_pool))
        .routes(routes!(jobs::list_schedules, jobs::create_schedule))
        .routes(routes!(jobs::get_schedule, jobs::update_schedule, jobs::delete_schedule))
        .routes(routes!(jobs::preview_schedule))
        .routes(routes!(jobs::list_runs))
        .routes(routes!(jobs::get_run))
        .routes(routes!(jobs::run_log))
        .routes(routes!(jobs::cancel_run))
        .routes(routes!(jobs::dashboard))
        .routes(routes!(disks::list_disks, disks::create_disk))
        .routes(routes!(disks::get_disk, disks::delete_disk))
        .routes(routes!(bacula::get_config, bacula::post_config))
        .routes(routes!(bacula::status))
        .routes(routes!(bacula::inventory))
        .routes(routes!(bacula::restart))
        .routes(routes!(tape::library))
        .routes(routes!(tape::inventory))
        .routes(routes!(tape::drives))
        .routes(routes!(tape::slots))
        .routes(routes!(tape::load))
        .routes(routes!(tape::unload))
        .routes(routes!(tape::transfer))
        .routes(routes!(agents::list, agents::create))
        .routes(routes!(agents::get))
        .routes(routes!(agents::disable))
        .routes(routes!(agents::enable))
        .routes(routes!(agents::revoke))
        .routes(routes!(agents::enroll))
        .routes(routes!(agents::poll))
        .routes(routes!(agents::events))
        .routes(routes!(agents::finish))
        .routes(routes!(run_stream::stream))
        .routes(routes!(tape_media::list_pools, tape_media::create_pool))
        .routes(routes!(tape_media::get_pool, tape_media::update_pool, tape_media::delete_pool))
        .routes(routes!(tape_media::list_volumes))
        .routes(routes!(tape_media::get_volume, tape_media::update_volume))
        .routes(routes!(tape_media::label))
        .routes(routes!(tape_media::list_sets))
        .routes(routes!(tape_media::get_set))
        .routes(routes!(iscsi::list_targets, iscsi::create_target))
        .routes(routes!(iscsi::get_target, iscsi::update_target, iscsi::delete_target))
        .routes(routes!(iscsi::apply_target))
        .routes(routes!(iscsi::add_lun))
        .routes(routes!(iscsi::delete_lun))
        .routes(routes!(iscsi::sessions))
        .routes(routes!(logs::read_log))
        .routes(routes!(logs::stream_log))
        .routes(routes!(logs::follow_log_events))
        .routes(routes!(run_stream::events))
        .routes(routes!(diag::bundle))
        .routes(routes!(diag::system))
        .routes(routes!(notifications::settings))
        .routes(routes!(notifications::test))
}
