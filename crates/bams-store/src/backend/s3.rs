//! A repository in an S3-compatible bucket (`s3://bucket/prefix`) through the `object_store`
//! crate: AWS S3, Ceph RGW, Garage, MinIO, Wasabi.
//!
//! Settings, first found wins:
//! - credentials: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`, else the
//!   profile `AWS_PROFILE` (or `default`) of `AWS_SHARED_CREDENTIALS_FILE` (`~/.aws/credentials`),
//!   else the instance profile (EC2/ECS metadata, handled by object_store);
//! - region: `AWS_REGION`, `AWS_DEFAULT_REGION`, the profile's `region` in `AWS_CONFIG_FILE`
//!   (`~/.aws/config`), else `us-east-1`;
//! - endpoint: `BAMS_S3_ENDPOINT`, `AWS_ENDPOINT_URL`, the profile's `endpoint_url`; a custom
//!   endpoint is addressed path-style unless `BAMS_S3_VIRTUAL_HOST=1`;
//! - `BAMS_S3_TIMEOUT_SECS` (default 60) bounds one request, `BAMS_S3_CONNECTIONS` (default
//!   16) the idle connections kept per host, `BAMS_S3_MULTIPART_MIB` (default 100) the size
//!   above which objects are uploaded in 16 MiB parts.
//!
//! object_store's own retries are off: [`super::retry::RetryBackend`] is the one bounded retry
//! layer, so an operator sees one policy and one error naming the object.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjPath;
use object_store::{ClientOptions, ObjectStore, PutPayload, RetryConfig, WriteMultipart};

use super::{ObjectInfo, ReadBackend, WriteBackend};
use crate::error::{Error, ErrorKind, Result};

/// S3 backend.
#[derive(Debug, Clone)]
pub struct S3Backend {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    shown: String,
    multipart_threshold: usize,
}

/// Multipart part size: large enough that a 5 GiB object needs few requests, small enough to
/// retry cheaply.
const PART_SIZE: usize = 16 * 1024 * 1024;

impl S3Backend {
    /// Open `s3://bucket[/prefix]` with settings from `env` (normally `std::env::var`).
    pub fn new(url: &str, env: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let rest = url.strip_prefix("s3://").ok_or_else(|| Error::invalid(format!("{url:?} is not an s3:// URL")))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::invalid(format!("{url:?}: no bucket name")));
        }
        let prefix = prefix.trim_matches('/').to_string();
        if prefix.split('/').any(|c| c == ".." || c == ".") {
            return Err(Error::invalid(format!("{url:?}: prefix must not contain . or ..")));
        }
        let get = |k: &str| env(k).filter(|v| !v.is_empty());
        let profile = AwsProfile::load(&get);
        let mut b = AmazonS3Builder::new().with_bucket_name(bucket);
        let number = |k: &str, default: f64| -> Result<f64> {
            match get(k) {
                None => Ok(default),
                Some(v) => v
                    .parse::<f64>()
                    .ok()
                    .filter(|n| *n > 0.0)
                    .ok_or_else(|| Error::invalid(format!("{k}={v:?}: expected a positive number"))),
            }
        };
        let timeout = Duration::from_secs_f64(number("BAMS_S3_TIMEOUT_SECS", 60.0)?);
        let connections = number("BAMS_S3_CONNECTIONS", 16.0)? as usize;
        let multipart_threshold = (number("BAMS_S3_MULTIPART_MIB", 100.0)? * 1024.0 * 1024.0) as usize;
        let client = ClientOptions::new()
            .with_timeout(timeout)
            .with_connect_timeout(timeout.min(Duration::from_secs(10)))
            .with_pool_max_idle_per_host(connections);
        let retry = RetryConfig { max_retries: 0, ..RetryConfig::default() };
        // Client options first: they replace the whole set, including `allow_http` below.
        b = b.with_client_options(client).with_retry(retry);
        let key_pair = match (get("AWS_ACCESS_KEY_ID"), get("AWS_SECRET_ACCESS_KEY")) {
            (Some(id), Some(secret)) => Some((id, secret, get("AWS_SESSION_TOKEN"))),
            _ => profile.credentials(),
        };
        if let Some((id, secret, token)) = key_pair {
            b = b.with_access_key_id(id).with_secret_access_key(secret);
            if let Some(t) = token {
                b = b.with_token(t);
            }
        }
        let region = get("AWS_REGION")
            .or_else(|| get("AWS_DEFAULT_REGION"))
            .or_else(|| profile.config.get("region").cloned())
            .unwrap_or_else(|| "us-east-1".into());
        b = b.with_region(region);
        let endpoint = get("BAMS_S3_ENDPOINT")
            .or_else(|| get("AWS_ENDPOINT_URL"))
            .or_else(|| profile.config.get("endpoint_url").cloned());
        if let Some(ep) = endpoint {
            b = b
                .with_allow_http(ep.starts_with("http://"))
                .with_virtual_hosted_style_request(get("BAMS_S3_VIRTUAL_HOST").as_deref() == Some("1"))
                .with_endpoint(ep);
        }
        let store = b.build().map_err(|e| Error::invalid(format!("{url}: {e}")))?;
        Ok(Self { store: Arc::new(store), prefix, shown: url.to_string(), multipart_threshold })
    }

    fn path(&self, key: &str) -> Result<ObjPath> {
        if key.is_empty() || key.starts_with('/') || key.split('/').any(|c| c == ".." || c == "." || c.is_empty()) {
            return Err(Error::invalid(format!("invalid object key {key:?}")));
        }
        let full = if self.prefix.is_empty() { key.to_string() } else { format!("{}/{key}", self.prefix) };
        ObjPath::parse(&full).map_err(|e| Error::invalid(format!("object key {key:?}: {e}")))
    }

    fn err(&self, what: &str, key: &str, e: object_store::Error) -> Error {
        let kind = match &e {
            object_store::Error::NotFound { .. } => ErrorKind::NotFound,
            object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. } => ErrorKind::Conflict,
            object_store::Error::InvalidPath { .. } | object_store::Error::NotSupported { .. } => {
                ErrorKind::InvalidInput
            }
            other => match http_status(other) {
                // A missing bucket, denied access, a bad request: retrying cannot help.
                Some(code) if (400..500).contains(&code) && code != 408 && code != 429 => {
                    if code == 404 {
                        ErrorKind::NotFound
                    } else {
                        ErrorKind::InvalidInput
                    }
                }
                _ => ErrorKind::Transient,
            },
        };
        Error::new(kind, format!("{what} {key} on {}: {e}", self.shown))
    }
}

#[async_trait]
impl ReadBackend for S3Backend {
    fn location(&self) -> String {
        self.shown.clone()
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        let p = self.path(key)?;
        let r = self.store.get(&p).await.map_err(|e| self.err("GET", key, e))?;
        r.bytes().await.map_err(|e| self.err("GET", key, e))
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let p = self.path(key)?;
        let data =
            self.store.get_range(&p, offset..offset + len).await.map_err(|e| self.err("GET range of", key, e))?;
        super::network_range(key, offset, len, data)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let full = match (self.prefix.is_empty(), prefix.trim_matches('/')) {
            (true, p) => p.to_string(),
            (false, "") => self.prefix.clone(),
            (false, p) => format!("{}/{p}", self.prefix),
        };
        let base = if full.is_empty() { None } else { Some(ObjPath::from(full.as_str())) };
        let strip = if self.prefix.is_empty() { String::new() } else { format!("{}/", self.prefix) };
        let items: Vec<object_store::ObjectMeta> =
            self.store.list(base.as_ref()).try_collect().await.map_err(|e| self.err("LIST", prefix, e))?;
        Ok(items
            .into_iter()
            .filter_map(|m| {
                let key = m.location.as_ref().strip_prefix(strip.as_str())?.to_string();
                key.starts_with(prefix).then(|| ObjectInfo {
                    key,
                    size: m.size,
                    modified: Some(m.last_modified.into()),
                })
            })
            .collect())
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        let p = self.path(key)?;
        match self.store.head(&p).await {
            Ok(m) => {
                Ok(Some(ObjectInfo { key: key.to_string(), size: m.size, modified: Some(m.last_modified.into()) }))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err("HEAD", key, e)),
        }
    }
}

#[async_trait]
impl WriteBackend for S3Backend {
    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        let p = self.path(key)?;
        if data.len() > self.multipart_threshold {
            // Parts are uploaded concurrently by object_store; the object appears only when the
            // upload completes, so readers still see all or nothing.
            let upload = self.store.put_multipart(&p).await.map_err(|e| self.err("start multipart PUT", key, e))?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
            writer.put(data);
            return match writer.finish().await {
                Ok(_) => Ok(()),
                Err(e) => Err(self.err("multipart PUT", key, e)),
            };
        }
        self.store.put(&p, PutPayload::from_bytes(data)).await.map_err(|e| self.err("PUT", key, e))?;
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let p = self.path(key)?;
        match self.store.delete(&p).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err("DELETE", key, e)),
        }
    }
}

/// The HTTP status in an object_store error, if the server answered at all. object_store does
/// not export its retry error type, so the status is read from the error chain's text, whose
/// format ("… status code: 404 Not Found …") it documents and tests.
fn http_status(e: &object_store::Error) -> Option<u16> {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = source {
        let text = err.to_string();
        if let Some(rest) = text.split("status code: ").nth(1) {
            return rest.get(..3).and_then(|c| c.parse().ok());
        }
        source = err.source();
    }
    None
}

/// The `AWS_PROFILE` sections of the shared credentials and config files.
#[derive(Debug, Default)]
struct AwsProfile {
    credentials: HashMap<String, String>,
    config: HashMap<String, String>,
}

impl AwsProfile {
    fn load(get: &dyn Fn(&str) -> Option<String>) -> Self {
        let home = get("HOME").unwrap_or_default();
        let profile = get("AWS_PROFILE").unwrap_or_else(|| "default".into());
        let read = |var: &str, default: &str| {
            let path = get(var).unwrap_or_else(|| format!("{home}/.aws/{default}"));
            std::fs::read_to_string(path).unwrap_or_default()
        };
        let config_section = if profile == "default" { profile.clone() } else { format!("profile {profile}") };
        Self {
            credentials: ini_section(&read("AWS_SHARED_CREDENTIALS_FILE", "credentials"), &profile),
            config: ini_section(&read("AWS_CONFIG_FILE", "config"), &config_section),
        }
    }

    fn credentials(&self) -> Option<(String, String, Option<String>)> {
        let c = &self.credentials;
        Some((
            c.get("aws_access_key_id")?.clone(),
            c.get("aws_secret_access_key")?.clone(),
            c.get("aws_session_token").cloned(),
        ))
    }
}

/// `key = value` pairs of one `[section]` of an INI file (the AWS shared file format).
fn ini_section(text: &str, section: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut inside = false;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.trim() == section;
            continue;
        }
        if inside {
            if let Some((k, v)) = line.split_once('=') {
                out.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_come_from_the_shared_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let creds = dir.path().join("credentials");
        let config = dir.path().join("config");
        std::fs::write(&creds, "[default]\naws_access_key_id = D\naws_secret_access_key = DS\n[backup]\naws_access_key_id=B\naws_secret_access_key=BS\n").expect("write");
        std::fs::write(&config, "[default]\nregion = eu-west-1\n[profile backup]\nregion = eu-central-1\nendpoint_url = http://127.0.0.1:9\n").expect("write");
        let env = |profile: &'static str| {
            let (c, f) = (creds.display().to_string(), config.display().to_string());
            move |k: &str| match k {
                "AWS_SHARED_CREDENTIALS_FILE" => Some(c.clone()),
                "AWS_CONFIG_FILE" => Some(f.clone()),
                "AWS_PROFILE" => Some(profile.to_string()),
                _ => None,
            }
        };
        let d = AwsProfile::load(&env("default"));
        assert_eq!(d.credentials().map(|c| c.0), Some("D".into()));
        assert_eq!(d.config.get("region").map(String::as_str), Some("eu-west-1"));
        let b = AwsProfile::load(&env("backup"));
        assert_eq!(b.credentials().map(|c| (c.0, c.1)), Some(("B".into(), "BS".into())));
        assert_eq!(b.config.get("endpoint_url").map(String::as_str), Some("http://127.0.0.1:9"));
        assert!(S3Backend::new("s3://bucket/p", env("backup")).is_ok());
        assert!(
            S3Backend::new("s3://bucket/p", |k: &str| (k == "BAMS_S3_TIMEOUT_SECS").then(|| "soon".into())).is_err()
        );
    }
}
