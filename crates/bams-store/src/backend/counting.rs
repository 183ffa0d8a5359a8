//! Request counting: what a run cost in object-store requests and bytes, for the summary line
//! after each command on a remote repository (requests are what S3 bills and throttles).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde::Serialize;

use super::{DynBackend, ObjectInfo, ReadBackend, WriteBackend};
use crate::error::Result;

/// Operations issued to the backend (one per call; a retried call counts once per attempt in
/// the layer below, and a LIST of many pages counts once here).
#[derive(Debug, Default)]
pub struct RequestCounts {
    get: AtomicU64,
    range_get: AtomicU64,
    list: AtomicU64,
    head: AtomicU64,
    put: AtomicU64,
    delete: AtomicU64,
    bytes_down: AtomicU64,
    bytes_up: AtomicU64,
}

/// A plain copy of [`RequestCounts`] for printing and JSON.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct RequestTotals {
    /// Whole-object reads.
    pub get: u64,
    /// Range reads.
    pub range_get: u64,
    /// Listings.
    pub list: u64,
    /// Existence checks.
    pub head: u64,
    /// Uploads.
    pub put: u64,
    /// Deletions.
    pub delete: u64,
    /// Bytes read.
    pub bytes_down: u64,
    /// Bytes written.
    pub bytes_up: u64,
}

impl RequestTotals {
    /// All operations.
    pub fn total(&self) -> u64 {
        self.get + self.range_get + self.list + self.head + self.put + self.delete
    }
}

impl std::fmt::Display for RequestTotals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests (GET {}, range GET {}, LIST {}, HEAD {}, PUT {}, DELETE {}), {} bytes up, {} bytes down",
            self.total(),
            self.get,
            self.range_get,
            self.list,
            self.head,
            self.put,
            self.delete,
            self.bytes_up,
            self.bytes_down
        )
    }
}

impl RequestCounts {
    /// Current totals.
    pub fn totals(&self) -> RequestTotals {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RequestTotals {
            get: l(&self.get),
            range_get: l(&self.range_get),
            list: l(&self.list),
            head: l(&self.head),
            put: l(&self.put),
            delete: l(&self.delete),
            bytes_down: l(&self.bytes_down),
            bytes_up: l(&self.bytes_up),
        }
    }
}

fn bump(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}

/// Counts every call into `inner`.
pub struct CountingBackend {
    inner: DynBackend,
    counts: Arc<RequestCounts>,
}

impl CountingBackend {
    /// Wrap `inner`; read the numbers through the returned counter.
    pub fn new(inner: DynBackend) -> (Self, Arc<RequestCounts>) {
        let counts = Arc::new(RequestCounts::default());
        (Self { inner, counts: counts.clone() }, counts)
    }
}

#[async_trait]
impl ReadBackend for CountingBackend {
    fn location(&self) -> String {
        self.inner.location()
    }
    async fn get(&self, key: &str) -> Result<Bytes> {
        bump(&self.counts.get, 1);
        let b = self.inner.get(key).await?;
        bump(&self.counts.bytes_down, b.len() as u64);
        Ok(b)
    }
    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes> {
        bump(&self.counts.range_get, 1);
        let b = self.inner.get_range(key, offset, len).await?;
        bump(&self.counts.bytes_down, b.len() as u64);
        Ok(b)
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        bump(&self.counts.list, 1);
        self.inner.list(prefix).await
    }
    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        bump(&self.counts.head, 1);
        self.inner.head(key).await
    }
}

#[async_trait]
impl WriteBackend for CountingBackend {
    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        bump(&self.counts.put, 1);
        bump(&self.counts.bytes_up, data.len() as u64);
        self.inner.put(key, data).await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        bump(&self.counts.delete, 1);
        self.inner.delete(key).await
    }
}
