//! The UI's static files, embedded in the binary and served under content-hashed names
//! (`/static/bams.1a2b3c4d5e6f.js`), so a browser may cache them for a year and still never
//! runs an old script after an upgrade.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// One embedded file.
pub struct Asset {
    /// Name in the source tree (`bams.js`).
    pub name: &'static str,
    /// Name it is served under, with the first 12 hex digits of its BLAKE3 hash.
    pub hashed: String,
    /// Content type.
    pub content_type: &'static str,
    /// The bytes.
    pub body: &'static [u8],
}

fn asset(name: &'static str, content_type: &'static str, body: &'static [u8]) -> Asset {
    let hash = blake3::hash(body).to_hex();
    let (stem, ext) = name.rsplit_once('.').unwrap_or((name, ""));
    Asset { name, hashed: format!("{stem}.{}.{ext}", &hash[..12]), content_type, body }
}

/// Every embedded file.
pub static ASSETS: LazyLock<Vec<Asset>> = LazyLock::new(|| {
    vec![
        asset("bams.css", "text/css; charset=utf-8", include_bytes!("../../static/bams.css")),
        asset("bams.js", "text/javascript; charset=utf-8", include_bytes!("../../static/bams.js")),
        asset("favicon.svg", "image/svg+xml", include_bytes!("../../static/favicon.svg")),
    ]
});

/// The URL of an embedded file by its source name (`bams.css` → `/static/bams.<hash>.css`).
pub fn url(name: &str) -> String {
    ASSETS.iter().find(|a| a.name == name).map_or_else(String::new, |a| format!("/static/{}", a.hashed))
}

/// `GET /static/{name}`: only hashed names are served, cached as immutable.
pub async fn serve(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.hashed == name) {
        Some(a) => immutable(a),
        None => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}

/// `GET /favicon.ico`: browsers ask for it before reading the page; answer with the icon.
pub async fn favicon() -> Response {
    match ASSETS.iter().find(|a| a.name == "favicon.svg") {
        Some(a) => immutable(a),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

fn immutable(a: &Asset) -> Response {
    let mut r = a.body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(a.content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable"));
    r
}
