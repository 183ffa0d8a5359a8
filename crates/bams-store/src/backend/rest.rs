//! A repository served by a BAMS server (`bams://host:4848/<name>`): the same object-store
//! operations over HTTPS, authenticated with a bearer token (`BAMS_TOKEN`). The server stores
//! what it receives in its own repository directory; data stays encrypted end to end because
//! only sealed objects travel. `bams+http://` selects plain HTTP for trusted networks and tests.
//!
//! Wire protocol (all under `/api/v1/repo/{name}`): `GET /list?prefix=P` → JSON
//! `[{"key","size","modified_ms"}]`; `GET|HEAD|PUT|DELETE /object?key=K` with `Range: bytes=a-b`
//! for partial reads.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use reqwest::{header, StatusCode};
use serde::Deserialize;

use super::{ObjectInfo, ReadBackend, WriteBackend};
use crate::error::{Error, ErrorKind, Result};

/// Client of a server's repository endpoint.
#[derive(Debug, Clone)]
pub struct RestBackend {
    http: reqwest::Client,
    base: String,
    token: String,
    shown: String,
}

#[derive(Deserialize)]
struct Listed {
    key: String,
    size: u64,
    modified_ms: Option<i64>,
}

impl RestBackend {
    /// Parse `bams://host:port/name` (HTTPS) or `bams+http://host:port/name` and connect
    /// with `token`, trusting server certificates as `trust` says (a private CA or a pinned
    /// certificate for self-signed appliances).
    pub fn new(url: &str, token: &str, trust: &super::trust::Trust) -> Result<Self> {
        let (scheme, rest) = if let Some(r) = url.strip_prefix("bams://") {
            ("https", r)
        } else if let Some(r) = url.strip_prefix("bams+http://") {
            ("http", r)
        } else {
            return Err(Error::invalid(format!("{url:?} is not a bams:// URL")));
        };
        let (host, name) = rest
            .split_once('/')
            .filter(|(h, n)| !h.is_empty() && !n.is_empty() && !n.contains('/'))
            .ok_or_else(|| Error::invalid(format!("{url:?}: expected bams://HOST[:PORT]/REPOSITORY")))?;
        let host = if host.contains(':') { host.to_string() } else { format!("{host}:4848") };
        if token.is_empty() {
            return Err(Error::invalid("a bams:// repository needs a token: set BAMS_TOKEN or BAMS_TOKEN_FILE"));
        }
        let builder = super::trust::client_builder(trust)?.timeout(Duration::from_secs(600)).pool_max_idle_per_host(8);
        let http = builder.build().map_err(|e| Error::new(ErrorKind::Other, format!("HTTP client: {e}")))?;
        Ok(Self {
            http,
            base: format!("{scheme}://{host}/api/v1/repo/{name}"),
            token: token.to_string(),
            shown: url.to_string(),
        })
    }

    fn object(&self, method: reqwest::Method, key: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}/object", self.base)).query(&[("key", key)]).bearer_auth(&self.token)
    }

    async fn send(&self, what: &str, req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let resp = req
            .send()
            .await
            .map_err(|e| Error::new(ErrorKind::Transient, format!("{what} on {}: {e}", self.shown)).with_source(e))?;
        let status = resp.status();
        if status.is_success() || status == StatusCode::NOT_FOUND {
            return Ok(resp);
        }
        let body = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or(body);
        let kind = match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ErrorKind::InvalidInput,
            StatusCode::CONFLICT => ErrorKind::Conflict,
            s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => ErrorKind::Transient,
            _ => ErrorKind::Other,
        };
        Err(Error::new(kind, format!("{what} on {}: server answered {status}: {message}", self.shown)))
    }

    async fn body(&self, key: &str, resp: reqwest::Response) -> Result<Bytes> {
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(Error::not_found(format!("{key} not found on {}", self.shown)));
        }
        resp.bytes()
            .await
            .map_err(|e| Error::new(ErrorKind::Transient, format!("reading {key} from {}: {e}", self.shown)))
    }
}

#[async_trait]
impl ReadBackend for RestBackend {
    fn location(&self) -> String {
        self.shown.clone()
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        let resp = self.send(&format!("GET {key}"), self.object(reqwest::Method::GET, key)).await?;
        self.body(key, resp).await
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let range = format!("bytes={}-{}", offset, offset + len - 1);
        let req = self.object(reqwest::Method::GET, key).header(header::RANGE, range);
        let resp = self.send(&format!("GET {key} range"), req).await?;
        let data = self.body(key, resp).await?;
        super::network_range(key, offset, len, data)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let req = self.http.get(format!("{}/list", self.base)).query(&[("prefix", prefix)]).bearer_auth(&self.token);
        let resp = self.send(&format!("LIST {prefix}"), req).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(Error::not_found(format!("repository {} not found", self.shown)));
        }
        let items: Vec<Listed> = resp
            .json()
            .await
            .map_err(|e| Error::new(ErrorKind::Transient, format!("listing {prefix} on {}: {e}", self.shown)))?;
        Ok(items
            .into_iter()
            .map(|l| ObjectInfo {
                key: l.key,
                size: l.size,
                modified: l
                    .modified_ms
                    .and_then(|ms| u64::try_from(ms).ok())
                    .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms)),
            })
            .collect())
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        let resp = self.send(&format!("HEAD {key}"), self.object(reqwest::Method::HEAD, key)).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let size =
            resp.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        let modified = resp
            .headers()
            .get("x-bams-modified-ms")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms));
        Ok(Some(ObjectInfo { key: key.to_string(), size: size.unwrap_or(0), modified }))
    }
}

#[async_trait]
impl WriteBackend for RestBackend {
    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        let req =
            self.object(reqwest::Method::PUT, key).header(header::CONTENT_TYPE, "application/octet-stream").body(data);
        let resp = self.send(&format!("PUT {key}"), req).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(Error::not_found(format!("repository {} not found", self.shown)));
        }
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.send(&format!("DELETE {key}"), self.object(reqwest::Method::DELETE, key)).await?;
        Ok(())
    }
}
