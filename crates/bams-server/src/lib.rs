//! `bams server`: the REST API (OpenAPI at `/api/v1/openapi.json`), authentication and roles,
//! audit, metrics, and the director that runs scheduled jobs — over an SQLite or PostgreSQL
//! catalog (docs/design.md §1, §5, §6, §8).

pub mod api;
pub mod auth;
pub mod config;
pub mod error;
pub mod local_socket;
pub mod metrics;
pub mod policy;
pub mod state;
pub mod system;
pub mod tape_job;
pub mod totp;
pub mod ui;

use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bams_catalog::{Catalog, Role};
use bams_director::{Director, DirectorOptions, RepoPool};
use tracing::{info, warn};

pub use config::Config;
use error::ApiError;
use state::AppState;

/// Build the HTTP application for `state`, and the OpenAPI document it serves.
pub fn app(state: AppState) -> (Router, utoipa::openapi::OpenApi) {
    let (api, doc) = api::routes(state.config.max_object_bytes).split_for_parts();
    let doc_json = Arc::new(serde_json::to_value(&doc).unwrap_or_default());
    let router = api
        .route("/api/v1/openapi.json", get(move |_c: auth::Caller| async move { axum::Json((*doc_json).clone()) }))
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .merge(ui::routes())
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth::middleware))
        .route_layer(axum::middleware::from_fn(metrics::track));
    let idle = Duration::from_secs(state.config.body_idle_timeout_secs.max(1));
    let router = harden(router, state.config.max_body_bytes, idle).with_state(state);
    (router, doc)
}

/// What every response path gets: JSON 404/405, a body size limit, and panics turned into a
/// 500 JSON error (the process keeps serving).
fn harden<S: Clone + Send + Sync + 'static>(router: Router<S>, max_body: usize, body_idle: Duration) -> Router<S> {
    router
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this route")
        })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(body_idle, body_idle_timeout))
        // An oversized body is refused unread, so the connection cannot carry another request:
        // say so, or a client reusing it from its pool sees the next request fail mid-way.
        .layer(axum::middleware::map_response(|mut r: Response| async move {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                r.headers_mut().insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
            }
            r
        }))
        .layer(axum::middleware::map_response(ui::security_headers))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_: Box<dyn std::any::Any + Send>| {
            tracing::error!("a request handler panicked");
            ApiError::internal("the server hit a bug handling this request; it has been logged").into_response()
        }))
}

/// A request body that stops arriving for `body_idle_timeout_secs` ends with an error, so a
/// client cannot hold a request (and its handler) open by sending nothing.
async fn body_idle_timeout(
    State(idle): State<Duration>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use futures_util::StreamExt;
    let (parts, body) = req.into_parts();
    let stream = futures_util::stream::unfold(Some(body.into_data_stream()), move |state| async move {
        let mut s = state?;
        match tokio::time::timeout(idle, s.next()).await {
            Ok(Some(item)) => Some((item.map_err(std::io::Error::other), Some(s))),
            Ok(None) => None,
            Err(_) => Some((Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "request body stalled")), None)),
        }
    });
    next.run(axum::extract::Request::from_parts(parts, axum::body::Body::from_stream(stream))).await
}

async fn healthz(State(st): State<AppState>) -> Response {
    match st.catalog.count_users().await {
        Ok(_) => axum::Json(serde_json::json!({"status": "ok"})).into_response(),
        Err(e) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()).into_response(),
    }
}

async fn metrics_text(State(st): State<AppState>, _caller: auth::Caller) -> Result<String, ApiError> {
    Ok(st.metrics.as_ref().map(|h| h.render()).unwrap_or_default())
}

/// Set up tracing for the server: `text` or `json`, level from `BAMS_LOG` (default info).
pub fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BAMS_LOG").unwrap_or_else(|_| "info".into());
    // Colours only for a person at a terminal: never escape codes in files or the journal.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colour);
    let _ = if format == "json" { builder.json().try_init() } else { builder.try_init() };
}

/// Create `admin` with a random password on first start; the password goes to a 0600 file
/// whose path (never the password) is logged.
async fn first_admin(catalog: &Catalog, data_dir: &std::path::Path) -> Result<()> {
    if catalog.count_users().await? > 0 {
        return Ok(());
    }
    use rand::Rng;
    let password: String =
        rand::thread_rng().sample_iter(&rand::distributions::Alphanumeric).take(24).map(char::from).collect();
    let path = data_dir.join("initial-admin-password");
    bams_appliance::files::write_private(&path, format!("{password}\n").as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    catalog.create_user("admin", &password, Role::Admin).await?;
    info!(file = %path.display(), "created user admin; its initial password is in this file (mode 0600)");
    Ok(())
}

/// Everything a running server consists of, for tests and the binary.
pub struct Server {
    /// Shared state.
    pub state: AppState,
    /// The HTTP application.
    pub router: Router,
}

/// Open the catalog, prepare the data dir, the default repository and the director.
pub async fn prepare(config: Config) -> Result<Server> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let catalog = Catalog::open(&config.catalog).await.context("opening the catalog")?;
    first_admin(&catalog, &config.data_dir).await?;
    let repos = Arc::new(RepoPool::new(catalog.clone(), &config.data_dir));
    let default = repos.ensure_default(&config.repository).await.context("preparing the default repository")?;
    for root in &config.restore_roots {
        let _ = std::fs::DirBuilder::new().recursive(true).mode(0o700).create(root);
    }
    let director = Director::new(
        repos.clone(),
        DirectorOptions {
            server_id: config.server_id.clone(),
            max_concurrent: config.max_concurrent_jobs,
            max_concurrent_per_repository: config.max_concurrent_per_repository,
            tick: Duration::from_secs_f64(config.scheduler_interval_secs),
            run_missed: config.run_missed,
            agent_silence: Duration::from_secs(config.agent_heartbeat_timeout_secs.max(1)),
            agent_wait: Duration::from_secs(config.agent_wait_secs.max(1)),
            server_silence: Duration::from_secs(config.server_heartbeat_timeout_secs.max(1))
                .max(Duration::try_from_secs_f64(config.scheduler_interval_secs * 3.0).unwrap_or(Duration::MAX)),
            notifications: config.notifications.clone(),
        },
    );
    let runner: Arc<dyn bams_appliance::runner::CommandRunner> = Arc::new(bams_appliance::runner::SystemRunner);
    let tape = config.tape.open(&config.data_dir, runner.clone()).context("opening the tape library")?;
    let (tape_media, tape_jobs) = match &tape {
        Some(changer) => {
            let media = bams_appliance::tape::media::MediaDb::open(&config.tape.media_dir(&config.data_dir))
                .context("opening the tape media database")?;
            let library = if config.tape.library == "virtual" {
                let vtl = bams_appliance::tape::vtl::VirtualLibrary::open_or_create(
                    &config.tape.media_dir(&config.data_dir),
                    &config.tape.virtual_library,
                )
                .context("opening the virtual tape library")?;
                tape_job::JobLibrary::Virtual(vtl)
            } else {
                tape_job::JobLibrary::Changer {
                    changer: changer.clone(),
                    drives: config.tape.drives.len() as u32,
                    open: bams_appliance::tape::drives::st_opener(),
                }
            };
            let jobs = Arc::new(tape_job::TapeJobs::new(library, media.clone()));
            director.register(bams_catalog::JobKind::Tape, jobs.clone());
            (Some(media), Some(jobs))
        }
        None => (None, None),
    };
    let iscsi = config.iscsi.open(runner.clone()).context("iSCSI backend")?;
    let iscsi_policy = config.iscsi.policy(&config.data_dir, &config.disk_devices);
    let disks = Arc::new(bams_appliance::diskrepo::DiskRepositories::new(
        catalog.clone(),
        runner,
        &config.data_dir,
        config.disk_devices.clone(),
    ));
    // Filesystems made by BAMS are mounted again after a reboot or restart.
    for w in disks.remount_all().await {
        warn!("{w}");
    }
    let log_followers = Arc::new(tokio::sync::Semaphore::new(config.logs.max_stream_clients));
    let images = Arc::new(bams_images::ImageService::new(
        catalog.clone(),
        repos.clone(),
        config.images.clone(),
        config.data_dir.clone(),
    ));
    let state = AppState {
        config: Arc::new(config),
        catalog,
        repos,
        director,
        disks,
        tape,
        tape_media,
        tape_jobs,
        iscsi,
        iscsi_policy: Arc::new(iscsi_policy),
        log_followers,
        system_report: Arc::default(),
        limiter: Arc::new(auth::LoginLimiter::default()),
        auth_cache: Arc::new(auth::AuthCache::default()),
        images,
        metrics: metrics::install(),
    };
    if let Err(e) = state.repos.refresh_snapshots(default.id).await {
        warn!(error = %e, "could not refresh the snapshot cache of the default repository");
    }
    let (router, _) = app(state.clone());
    Ok(Server { state, router })
}

/// A client has `header_timeout` to send a request's headers: a connection that trickles
/// them in (slowloris) is closed instead of holding a task forever.
fn limit_connections(
    b: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    header_timeout: Duration,
) {
    b.http1().timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(header_timeout);
    b.http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(60))
        .keep_alive_timeout(Duration::from_secs(20))
        .max_concurrent_streams(256);
}

/// Hourly: drop expired and revoked sessions, and audit entries past `audit_retention_days`.
async fn housekeeping(st: AppState) {
    loop {
        match st.catalog.purge_sessions().await {
            Ok(n) if n > 0 => info!(sessions = n, "purged expired sessions"),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "could not purge expired sessions"),
        }
        let days = st.config.audit_retention_days;
        if days > 0 {
            let before = bams_catalog::now_ms() - i64::try_from(days).unwrap_or(i64::MAX / 86_400_000) * 86_400_000;
            match st.catalog.purge_audit(before).await {
                Ok(n) if n > 0 => info!(entries = n, days, "purged old audit entries"),
                Ok(_) => {}
                Err(e) => warn!(error = %e, "could not purge the audit log"),
            }
        }
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

/// Temporal images past their expiry lose their versions (checked every
/// `images.expire_every_secs`).
async fn expire_images(st: AppState) {
    let every = Duration::from_secs(st.config.images.expire_every_secs.max(1));
    loop {
        tokio::time::sleep(every).await;
        match st.images.expire().await {
            Ok(n) if n > 0 => info!(versions = n, "forgot the versions of expired temporal images"),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "could not expire temporal images"),
        }
    }
}

/// Every `index_consolidate_every_secs`: merge the small index files of each repository the
/// catalog knows (agents' own included) once they reach `index_consolidate_min_files`, so
/// repositories written by many agents keep opening fast. Safe beside running backups (a
/// shared lock); a repository that cannot be opened or merged now is tried next time.
async fn consolidate_indexes(st: AppState) {
    let every = st.config.index_consolidate_every_secs;
    if every == 0 {
        return;
    }
    let opts = bams_store::consolidate::ConsolidateOptions {
        min_files: st.config.index_consolidate_min_files.max(2),
        ..Default::default()
    };
    loop {
        tokio::time::sleep(Duration::from_secs(every)).await;
        let repos = match st.catalog.list_repositories().await {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "index consolidation: cannot list repositories");
                continue;
            }
        };
        for rec in repos {
            let repo = match st.director.repos().get(rec.id).await {
                Ok(r) => r,
                Err(e) => {
                    warn!(repository = %rec.name, error = %e, "index consolidation: cannot open the repository");
                    continue;
                }
            };
            let opts = opts.clone();
            let done = tokio::task::spawn_blocking(move || bams_store::consolidate::consolidate(&repo, &opts)).await;
            match done {
                Ok(Ok(r)) if r.files_merged > 0 => info!(
                    repository = %rec.name,
                    merged = r.files_merged,
                    written = r.files_written,
                    files = r.files_after,
                    "merged small index files"
                ),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => warn!(repository = %rec.name, error = %e, "index consolidation failed"),
                Err(e) => warn!(repository = %rec.name, error = %e, "index consolidation crashed"),
            }
        }
    }
}

/// Every agent keeps a long poll open: lift the soft open-file limit (often 1,024 outside
/// systemd, which sets 65,536 in bams.service) to the hard one, so a thousand agents do not
/// run the server out of descriptors.
fn raise_open_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                Ok(()) => info!(from = soft, to = hard, "raised the open file limit"),
                Err(e) => warn!(error = %e, soft, "could not raise the open file limit"),
            }
        }
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

/// Run the server until SIGTERM/SIGINT, then shut down gracefully: stop accepting, let
/// requests and running jobs finish (or checkpoint) within `shutdown_timeout_secs`.
pub async fn serve(config: Config) -> Result<()> {
    raise_open_file_limit();
    let addr = config.listen_addr()?;
    let tls = config.tls.clone();
    let server = prepare(config).await?;
    let director = server.state.director.clone();
    let timeout = Duration::from_secs(server.state.config.shutdown_timeout_secs);
    let server_header_timeout = server.state.config.header_timeout_secs;
    // The local socket is bound before anything runs: a path taken by another file stops the
    // start with the reason.
    let socket = match &server.state.config.socket {
        Some(path) => Some(local_socket::bind(path)?),
        None => None,
    };
    let loop_handle = director.start().await?;
    let housekeeping = tokio::spawn(housekeeping(server.state.clone()));
    let expiry = tokio::spawn(expire_images(server.state.clone()));
    let consolidation = tokio::spawn(consolidate_indexes(server.state.clone()));
    let (stop_socket, socket_stopped) = tokio::sync::oneshot::channel::<()>();
    let socket_task = socket.map(|socket| {
        let router = server.router.clone();
        let roles = server.state.config.socket_roles.clone();
        tokio::spawn(socket.serve(router, roles, async move {
            let _ = socket_stopped.await;
        }))
    });
    let app = server.router.into_make_service_with_connect_info::<SocketAddr>();
    let header_timeout = Duration::from_secs(server_header_timeout.max(1));
    let handle = axum_server::Handle::new();
    let h = handle.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_socket.send(());
        h.graceful_shutdown(Some(timeout));
    });
    // Bind before announcing, so "listening" is only printed once the port is ours.
    let listener = std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    listener.set_nonblocking(true).context("configuring the listening socket")?;
    let bound = listener.local_addr().context("reading the bound address")?;
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let rustls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .with_context(|| format!("loading TLS certificate {} and key {}", cert.display(), key.display()))?;
            let mut server = axum_server::from_tcp_rustls(listener, rustls);
            limit_connections(server.http_builder(), header_timeout);
            println!("bams server listening on https://{bound} (TLS on)");
            server.handle(handle).serve(app).await.context("serving HTTPS")?;
        }
        _ => {
            let mut server = axum_server::from_tcp(listener);
            limit_connections(server.http_builder(), header_timeout);
            println!("bams server listening on http://{bound} (TLS off)");
            server.handle(handle).serve(app).await.context("serving HTTP")?;
        }
    }
    if let Some(task) = socket_task {
        // Ends the accept loop and removes the socket file.
        let _ = task.await;
    }
    info!("no longer accepting requests; waiting for running jobs");
    director.shutdown(timeout).await;
    loop_handle.abort();
    housekeeping.abort();
    expiry.abort();
    consolidation.abort();
    server.state.catalog.close().await;
    info!("server stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    #[tokio::test]
    async fn panics_become_json_500_and_unknown_routes_json_404() {
        #[allow(clippy::panic)]
        async fn boom() -> &'static str {
            panic!("handler bug")
        }
        // A body that stops arriving ends the request instead of holding it open.
        let echo = harden(
            Router::new().route("/echo", axum::routing::post(|b: String| async move { b })),
            1024,
            Duration::from_millis(200),
        );
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(1);
        tx.send(Ok(bytes::Bytes::from_static(b"first part"))).await.expect("send");
        let stalled = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|i| (i, rx)) });
        let started = std::time::Instant::now();
        let resp = echo
            .oneshot(Request::post("/echo").body(Body::from_stream(stalled)).expect("request"))
            .await
            .expect("response");
        assert!(resp.status().is_client_error(), "{}", resp.status());
        assert!(started.elapsed() < Duration::from_secs(5), "the stalled body was waited on");
        drop(tx);
        let app = harden(Router::new().route("/boom", get(boom)), 1024, Duration::from_secs(60));
        let resp =
            app.clone().oneshot(Request::get("/boom").body(Body::empty()).expect("request")).await.expect("response");
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(resp.into_body(), 4096).await.expect("body");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON error body");
        assert_eq!(v["error"]["code"], "internal");
        let resp =
            app.clone().oneshot(Request::get("/nope").body(Body::empty()).expect("request")).await.expect("response");
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        let resp = app.oneshot(Request::post("/boom").body(Body::empty()).expect("request")).await.expect("response");
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    }
}
