//! The web UI: server-rendered pages (askama templates, escaped by default) on top of the
//! same catalog, director and checks as the REST API, plus one small script
//! (`static/bams.js`) for actions, live logs and lazy trees.
//!
//! Every page is a GET that goes through the same auth middleware and policy table as the API
//! (each page route has its rule in [`crate::policy::POLICY`]); actions are the API's own
//! routes, called by the script with the session's CSRF token, and a button is rendered only
//! when the caller holds the privilege of the route it calls ([`Ctx::may`]). A request with
//! `X-Bams-Fragment: 1` gets the page's content without the frame: the script uses it for
//! refreshes and the Cockpit plugin for every page.

pub mod assets;
pub mod fmt;
pub mod pages;

use askama::Template;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::policy::Privs;
use crate::state::AppState;

/// Every page route, as registered (each has one rule in the policy table).
pub const ROUTES: &[&str] = &[
    "/",
    "/login",
    "/favicon.ico",
    "/static/{name}",
    "/dashboard",
    "/jobs",
    "/jobs/new",
    "/jobs/{id}",
    "/jobs/{id}/edit",
    "/runs",
    "/runs/{id}",
    "/runs/{id}/log.txt",
    "/snapshots",
    "/snapshots/{id}",
    "/snapshots/{id}/browse",
    "/snapshots/{id}/diff",
    "/snapshots/find",
    "/repositories",
    "/agents",
    "/bare-metal/images",
    "/bare-metal/images/{uuid}",
    "/bare-metal/machines",
    "/bare-metal/machines/{id}",
    "/logs",
    "/storage/disks",
    "/storage/tape",
    "/storage/iscsi",
    "/storage/bacula",
    "/admin/users",
    "/admin/permissions",
    "/account",
    "/admin/tokens",
    "/admin/audit",
    "/admin/notifications",
];

/// The page routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/dashboard") }))
        .route("/login", get(pages::login))
        .route("/favicon.ico", get(assets::favicon))
        .route("/static/{name}", get(assets::serve))
        .route("/dashboard", get(pages::dashboard::page))
        .route("/jobs", get(pages::jobs::list))
        .route("/jobs/new", get(pages::jobs::new))
        .route("/jobs/{id}", get(pages::jobs::show))
        .route("/jobs/{id}/edit", get(pages::jobs::edit))
        .route("/runs", get(pages::runs::list))
        .route("/runs/{id}", get(pages::runs::show))
        .route("/runs/{id}/log.txt", get(pages::runs::log_text))
        .route("/snapshots", get(pages::snapshots::list))
        .route("/snapshots/{id}", get(pages::snapshots::show))
        .route("/snapshots/{id}/browse", get(pages::snapshots::browse))
        .route("/snapshots/{id}/diff", get(pages::snapshots::diff))
        .route("/snapshots/find", get(pages::snapshots::find))
        .route("/repositories", get(pages::repositories::list))
        .route("/agents", get(pages::agents::list))
        .route("/bare-metal/images", get(pages::images::list))
        .route("/bare-metal/images/{uuid}", get(pages::images::show))
        .route("/bare-metal/machines", get(pages::images::machines))
        .route("/bare-metal/machines/{id}", get(pages::images::machine))
        .route("/logs", get(pages::logs::page))
        .route("/storage/disks", get(pages::storage::disks))
        .route("/storage/tape", get(pages::storage::tape))
        .route("/storage/iscsi", get(pages::storage::iscsi))
        .route("/storage/bacula", get(pages::storage::bacula))
        .route("/admin/users", get(pages::admin::users))
        .route("/admin/permissions", get(pages::admin::permissions))
        .route("/account", get(pages::admin::account))
        .route("/admin/tokens", get(pages::admin::tokens))
        .route("/admin/audit", get(pages::admin::audit))
        .route("/admin/notifications", get(pages::admin::notifications))
}

/// Headers every answer carries: no inline script or style, nothing from another origin, no
/// framing (Cockpit loads its own copy of the script, not this server in a frame).
pub async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
             font-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

/// A browser asking for a page (not the API, not a fragment for the script).
pub fn wants_page(method: &Method, path: &str, headers: &HeaderMap) -> bool {
    (method == Method::GET || method == Method::HEAD)
        && !path.starts_with("/api/")
        && path != "/metrics"
        && headers.get("x-bams-fragment").is_none()
        && headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/html"))
}

/// A refused page request: to the login page (and back here after it), or a page saying why.
pub fn refusal(e: ApiError, uri: &Uri) -> Response {
    if e.status == StatusCode::UNAUTHORIZED {
        let here = uri.path_and_query().map_or("/dashboard", |p| p.as_str());
        let next: String = url_encode(here);
        return Redirect::to(&format!("/login?next={next}")).into_response();
    }
    error_page(e.status, &e.message)
}

/// A whole page for an error, outside the frame (no user is known here).
pub fn error_page(status: StatusCode, message: &str) -> Response {
    let t = pages::ErrorPage {
        title: status.canonical_reason().unwrap_or("Error").to_string(),
        message: message.to_string(),
        css: assets::url("bams.css"),
        favicon: assets::url("favicon.svg"),
    };
    let mut r = render(&t);
    *r.status_mut() = status;
    r
}

/// Percent-encode everything but unreserved characters and `/`.
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Render a template into an HTML answer (a template bug is a 500, never a panic).
pub fn render<T: Template>(t: &T) -> Response {
    match t.render() {
        Ok(html) => {
            let mut r = html.into_response();
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
            r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(e) => {
            tracing::error!(error = %e, "a page template failed");
            ApiError::internal("the page could not be rendered").into_response()
        }
    }
}

/// A built page, or the error that kept it from being built.
pub fn respond<T: Template>(page: crate::error::ApiResult<T>) -> Response {
    match page {
        Ok(p) => render(&p),
        Err(e) => e.into_response(),
    }
}

/// The link to the next page of a list: `path?cursor=…` with the filters that are set.
pub fn next_page(path: &str, cursor: &str, filters: &[(&str, String)]) -> String {
    let mut params = vec![format!("cursor={}", url_encode(cursor))];
    params.extend(filters.iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| format!("{k}={}", url_encode(v))));
    format!("{path}?{}", params.join("&"))
}

/// One entry of the navigation.
pub struct NavItem {
    /// Path.
    pub href: &'static str,
    /// Text.
    pub label: &'static str,
    /// The heading it sits under.
    pub group: &'static str,
    /// This is the page being shown.
    pub current: bool,
}

/// What every page knows: who is looking, what they may do, and how to draw the frame.
pub struct Ctx {
    /// The caller.
    pub caller: Caller,
    /// Content only, without the frame.
    pub fragment: bool,
    /// Time of the request (ms), so every "ago" on a page agrees.
    pub now: i64,
    /// The request's path, for the navigation.
    pub path: String,
}

impl<S: Send + Sync> FromRequestParts<S> for Ctx {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, state).await?;
        Ok(Self {
            caller,
            fragment: parts.headers.get("x-bams-fragment").is_some(),
            now: bams_catalog::now_ms(),
            path: parts.uri.path().to_string(),
        })
    }
}

const NAV: &[(&str, &str, &str, Privs, &str)] = &[
    ("/dashboard", "Dashboard", "Overview", Privs::NONE, "/"),
    ("/jobs", "Jobs", "Backups", Privs::JOBS_AUDIT, "/jobs"),
    ("/runs", "Runs", "Backups", Privs::JOBS_AUDIT, "/jobs"),
    ("/snapshots", "Snapshots", "Backups", Privs::DATASTORE_AUDIT, "/repositories"),
    ("/repositories", "Repositories & pools", "Backups", Privs::DATASTORE_AUDIT, "/repositories"),
    ("/agents", "Agents", "Backups", Privs::AGENTS_AUDIT, "/agents"),
    ("/bare-metal/images", "Images", "Bare metal", Privs::IMAGES_AUDIT, "/images"),
    ("/bare-metal/machines", "Machines", "Bare metal", Privs::IMAGES_AUDIT, "/machines"),
    ("/storage/disks", "Disk repositories", "Appliance", Privs::SYS_AUDIT, "/appliance/disks"),
    ("/storage/tape", "Tape library", "Appliance", Privs::SYS_AUDIT, "/appliance/tape"),
    ("/storage/iscsi", "iSCSI targets", "Appliance", Privs::SYS_AUDIT, "/appliance/iscsi"),
    ("/storage/bacula", "Bacula", "Appliance", Privs::SYS_AUDIT, "/appliance/bacula"),
    ("/logs", "Logs", "Appliance", Privs::SYS_AUDIT, "/appliance/logs"),
    ("/admin/users", "Users", "Administration", Privs::SYS_ADMIN, "/system"),
    ("/admin/permissions", "Permissions", "Administration", Privs::SYS_ADMIN, "/system"),
    ("/admin/tokens", "API tokens", "Administration", Privs::NONE, "/"),
    ("/account", "Your account", "Administration", Privs::NONE, "/"),
    ("/admin/audit", "Audit log", "Administration", Privs::SYS_ADMIN, "/system"),
    ("/admin/notifications", "Notifications", "Administration", Privs::SYS_ADMIN, "/system"),
];

impl Ctx {
    /// Holds any of `privs` on `path`.
    pub fn may(&self, privs: Privs, path: &str) -> bool {
        self.caller.privs_at(path).any_of(privs)
    }

    /// Holds any of `privs` on some repository or pool (lists filter per item).
    pub fn may_somewhere(&self, privs: Privs) -> bool {
        self.caller.grants.anywhere_below("/repositories", privs) || self.caller.grants.anywhere_below("/pools", privs)
    }

    /// The frame of a page titled `title`.
    pub fn frame(&self, title: impl Into<String>) -> Frame {
        let nav = NAV
            .iter()
            .filter(|(_, _, _, privs, on)| {
                privs.is_none()
                    || if *on == "/repositories" { self.may_somewhere(*privs) } else { self.may(*privs, on) }
            })
            .map(|(href, label, group, _, _)| NavItem {
                href,
                label,
                group,
                current: self.path == *href || self.path.starts_with(&format!("{href}/")),
            })
            .collect();
        Frame {
            title: title.into(),
            fragment: self.fragment,
            user: self.caller.user.username.clone(),
            role: self.caller.user.role.as_str().to_string(),
            csrf: self.caller.csrf.clone().unwrap_or_default(),
            css: assets::url("bams.css"),
            js: assets::url("bams.js"),
            favicon: assets::url("favicon.svg"),
            nav,
        }
    }
}

/// The frame around a page's content (the layout template's data).
pub struct Frame {
    /// Page title (also the `<h1>`).
    pub title: String,
    /// Render only the content.
    pub fragment: bool,
    /// Who is logged in.
    pub user: String,
    /// Their role.
    pub role: String,
    /// CSRF token for the script's actions.
    pub csrf: String,
    /// Stylesheet URL.
    pub css: String,
    /// Script URL.
    pub js: String,
    /// Icon URL.
    pub favicon: String,
    /// Navigation entries the caller may see.
    pub nav: Vec<NavItem>,
}

impl Frame {
    /// Whether a navigation group heading goes before entry `i`.
    pub fn group_starts(&self, i: &usize) -> bool {
        *i == 0 || self.nav.get(i - 1).map(|n| n.group) != self.nav.get(*i).map(|n| n.group)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A frame for rendering templates in unit tests, with a hostile user name.
    pub(crate) fn frame() -> Frame {
        Frame {
            title: "<b>title</b>".into(),
            fragment: false,
            user: "<script>alert(1)</script>".into(),
            role: "admin".into(),
            csrf: "\"><script>".into(),
            css: "/static/a.css".into(),
            js: "/static/a.js".into(),
            favicon: "/static/f.svg".into(),
            nav: Vec::new(),
        }
    }

    #[test]
    fn the_frame_escapes_what_it_shows() {
        let t = pages::ErrorPage {
            title: "<img src=x onerror=alert(1)>".into(),
            message: "\"'<>&".into(),
            css: String::new(),
            favicon: String::new(),
        };
        let html = t.render().expect("render");
        assert!(!html.contains("<img src=x"), "{html}");
        assert!(html.contains("&#60;img src=x onerror=alert(1)&#62;"), "{html}");
        assert!(html.contains("&#34;&#39;&#60;&#62;&#38;"), "{html}");
    }

    #[test]
    fn next_page_links_keep_the_filters_that_are_set() {
        let link = next_page("/runs", "12:a b", &[("job", "3".into()), ("status", String::new()), ("q", "x&y".into())]);
        assert_eq!(link, "/runs?cursor=12%3Aa%20b&job=3&q=x%26y");
    }

    #[test]
    fn refused_pages_send_people_to_the_login_page_and_back() {
        let uri: Uri = "/runs?job=3&status=failed".parse().expect("uri");
        let r = refusal(ApiError::unauthorized("no"), &uri);
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let to = r.headers().get(header::LOCATION).and_then(|v| v.to_str().ok()).unwrap_or_default();
        assert_eq!(to, "/login?next=/runs%3Fjob%3D3%26status%3Dfailed");
        let r = refusal(ApiError::forbidden("not yours"), &uri);
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
    }
}
