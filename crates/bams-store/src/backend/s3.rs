//! A repository in an S3-compatible bucket (`s3://bucket/prefix`) through the `object_store`
//! crate: AWS S3, Ceph RGW, Garage, MinIO, Wasabi. Credentials and region come from the
//! environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
//! `AWS_REGION`/`AWS_DEFAULT_REGION`, or an instance profile); `AWS_ENDPOINT_URL` (or
//! `BAMS_S3_ENDPOINT`) selects a non-AWS server, which is then addressed path-style unless
//! `BAMS_S3_VIRTUAL_HOST=1`.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, PutPayload};

use super::{ObjectInfo, ReadBackend, WriteBackend};
use crate::error::{Error, ErrorKind, Result};

/// S3 backend.
#[derive(Debug, Clone)]
pub struct S3Backend {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    shown: String,
}

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
        let mut b = AmazonS3Builder::new().with_bucket_name(bucket);
        let get = |k: &str| env(k).filter(|v| !v.is_empty());
        if let (Some(id), Some(secret)) = (get("AWS_ACCESS_KEY_ID"), get("AWS_SECRET_ACCESS_KEY")) {
            b = b.with_access_key_id(id).with_secret_access_key(secret);
        }
        if let Some(t) = get("AWS_SESSION_TOKEN") {
            b = b.with_token(t);
        }
        let region = get("AWS_REGION").or_else(|| get("AWS_DEFAULT_REGION")).unwrap_or_else(|| "us-east-1".into());
        b = b.with_region(region);
        if let Some(ep) = get("BAMS_S3_ENDPOINT").or_else(|| get("AWS_ENDPOINT_URL")) {
            b = b
                .with_allow_http(ep.starts_with("http://"))
                .with_virtual_hosted_style_request(get("BAMS_S3_VIRTUAL_HOST").as_deref() == Some("1"))
                .with_endpoint(ep);
        }
        let store = b.build().map_err(|e| Error::invalid(format!("{url}: {e}")))?;
        Ok(Self { store: Arc::new(store), prefix, shown: url.to_string() })
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
            _ => ErrorKind::Transient,
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
        if data.len() as u64 != len {
            return Err(Error::corrupt(format!("{key}: short read ({} of {len} bytes at {offset})", data.len())));
        }
        Ok(data)
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
