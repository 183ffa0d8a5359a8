//! Storage backends: where repository objects live.
//!
//! The trait is shaped like an object store (put whole objects, get whole or ranges, list by
//! prefix, delete) so that a local directory, S3 and the BAMS server's repository endpoint all
//! fit it unchanged. Keys are `/`-separated relative paths such as `data/ab/<id>`.
//! Retries, request counting and caching are wrappers around these traits, never inside them.

pub mod counting;
pub mod local;
pub mod rest;
pub mod retry;
pub mod s3;
pub mod throttle;
pub mod trust;

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::Result;

/// One listed object.
#[derive(Debug, Clone)]
pub struct ObjectInfo {
    /// Key relative to the repository root.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification time, when the backend knows it (used for prune grace periods).
    pub modified: Option<SystemTime>,
}

/// Reading half of a backend.
#[async_trait]
pub trait ReadBackend: Send + Sync + 'static {
    /// Human description of where the repository is (for messages).
    fn location(&self) -> String;
    /// Whole object. A missing object is `ErrorKind::NotFound`.
    async fn get(&self, key: &str) -> Result<Bytes>;
    /// `len` bytes from `offset`; a short object is `ErrorKind::Corrupt`.
    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes>;
    /// Every object whose key starts with `prefix`, recursively.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>>;
    /// Size and time of one object, or `None` when absent.
    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>>;
}

/// Writing half. `put` is atomic: readers see the whole object or none of it.
#[async_trait]
pub trait WriteBackend: ReadBackend {
    /// Store an object durably (on return it survives a crash).
    async fn put(&self, key: &str, data: Bytes) -> Result<()>;
    /// Store the content of a local file as an object (the file is left in place). Backends
    /// that can take it without reading it into memory (a local directory: a link or an
    /// in-kernel copy) do; the rest read it whole, so callers bound its size.
    async fn put_file(&self, key: &str, path: &std::path::Path) -> Result<()> {
        let data = tokio::fs::read(path).await.map_err(|e| crate::Error::io(path.display(), e))?;
        self.put(key, Bytes::from(data)).await
    }
    /// Remove an object; removing a missing object is not an error.
    async fn delete(&self, key: &str) -> Result<()>;
    /// A new object to be written piece by piece and named at the end, for backends that
    /// can take one without holding it in memory (a local directory streams packs straight
    /// to disk). `None`: build the object in memory and [`Self::put`] it.
    fn sink(&self) -> Option<Result<Box<dyn ObjectSink>>> {
        None
    }
}

/// An object being written ([`WriteBackend::sink`]); dropped without [`Self::install`], it
/// leaves nothing behind.
pub trait ObjectSink: Send {
    /// Append bytes.
    fn write(&mut self, data: &[u8]) -> Result<()>;
    /// Make everything written the object `key`, durably (on return it survives a crash).
    /// Blocking: call it off the async runtime's worker threads.
    fn install(self: Box<Self>, key: &str) -> Result<()>;
}

/// A range read over the network must return exactly `len` bytes. Fewer means the body was
/// cut short on the way (the object itself may be fine), so it is a Transient error that the
/// retry layer reads again.
pub(crate) fn network_range(key: &str, offset: u64, len: u64, data: Bytes) -> Result<Bytes> {
    if data.len() as u64 != len {
        return Err(crate::Error::new(
            crate::error::ErrorKind::Transient,
            format!("{key}: short read ({} of {len} bytes at {offset})", data.len()),
        ));
    }
    Ok(data)
}

/// How the engine holds a backend.
pub type DynBackend = Arc<dyn WriteBackend>;

/// A backend for a repository location: a local path or `s3://bucket/prefix` (settings from
/// the environment). `bams://` needs a token and is opened by the caller with
/// [`rest::RestBackend`].
pub fn from_location(location: &str) -> Result<DynBackend> {
    if location.starts_with("s3://") {
        let s3: DynBackend = Arc::new(s3::S3Backend::new(location, |k| std::env::var(k).ok())?);
        return Ok(Arc::new(retry::RetryBackend::new(s3, retry::RetryPolicy::from_env()?)));
    }
    if location.contains("://") {
        return Err(crate::Error::invalid(format!(
            "unsupported repository location {location:?}: use a local path, s3://bucket/prefix or bams://host/name"
        )));
    }
    Ok(Arc::new(local::LocalBackend::new(location)))
}
