//! An upload limit: a wrapper that paces `put`s so the bytes sent stay under a rate (an
//! agent's or a job's bandwidth limit). Objects are sent whole; the wrapper delays the start
//! of each one so that bytes sent / time since the first upload never exceeds the limit. Several
//! wrappers can share one [`Pacer`] (one limit for all of an agent's runs).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::time::Instant;

use super::{DynBackend, ObjectInfo, ReadBackend, WriteBackend};
use crate::error::Result;

/// A rate shared by the uploads that use it.
#[derive(Debug)]
pub struct Pacer {
    bytes_per_sec: u64,
    next_start: Mutex<Option<Instant>>,
    sent: AtomicU64,
    /// Start of the first slot and end of the last: the window the rate applies to.
    window: Mutex<Option<(Instant, Instant)>>,
}

impl Pacer {
    /// At most `bytes_per_sec` (at least 1).
    pub fn new(bytes_per_sec: u64) -> Arc<Self> {
        Arc::new(Self {
            bytes_per_sec: bytes_per_sec.max(1),
            next_start: Mutex::new(None),
            sent: AtomicU64::new(0),
            window: Mutex::new(None),
        })
    }

    /// The rate.
    pub fn bytes_per_sec(&self) -> u64 {
        self.bytes_per_sec
    }

    /// Bytes sent through this pacer so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// The rate achieved while sending: bytes sent over the time from the first slot's start
    /// to the last one's end (what the limit governs; opening the repository before and
    /// finishing after are not part of it).
    pub fn sending_rate(&self) -> Option<f64> {
        let (first, last) = (*self.window.lock().ok()?)?;
        let secs = last.duration_since(first).as_secs_f64();
        (secs > 0.0).then(|| self.sent() as f64 / secs)
    }

    /// Wait for the turn of an object of `n` bytes: its slot is the time it takes at the
    /// rate, and it is sent at the end of its slot, so bytes sent never run ahead of the rate
    /// (not even in a first burst).
    async fn reserve(&self, n: u64) {
        let end = {
            let Ok(mut next) = self.next_start.lock() else { return };
            let now = Instant::now();
            let start = next.map_or(now, |t| t.max(now));
            let end = start + Duration::from_secs_f64(n as f64 / self.bytes_per_sec as f64);
            *next = Some(end);
            if let Ok(mut w) = self.window.lock() {
                *w = Some((w.map_or(start, |(first, _)| first), end));
            }
            end
        };
        tokio::time::sleep_until(end).await;
        self.sent.fetch_add(n, Ordering::Relaxed);
    }
}

/// `inner` with its uploads paced by `pacer`.
pub struct ThrottleBackend {
    inner: DynBackend,
    pacer: Arc<Pacer>,
}

impl ThrottleBackend {
    /// Wrap `inner`.
    pub fn new(inner: DynBackend, pacer: Arc<Pacer>) -> Self {
        Self { inner, pacer }
    }
}

#[async_trait]
impl ReadBackend for ThrottleBackend {
    fn location(&self) -> String {
        self.inner.location()
    }
    async fn get(&self, key: &str) -> Result<Bytes> {
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes> {
        self.inner.get_range(key, offset, len).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.inner.list(prefix).await
    }
    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        self.inner.head(key).await
    }
}

#[async_trait]
impl WriteBackend for ThrottleBackend {
    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        self.pacer.reserve(data.len() as u64).await;
        self.inner.put(key, data).await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(key).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn uploads_never_run_ahead_of_the_rate() {
        let dir = tempfile::tempdir().expect("tmp");
        let inner: DynBackend = Arc::new(super::super::local::LocalBackend::new(dir.path()));
        let pacer = Pacer::new(500 << 10);
        let b = ThrottleBackend::new(inner, pacer.clone());
        let start = Instant::now();
        for i in 0..5 {
            b.put(&format!("data/{i}"), Bytes::from(vec![0u8; 100 << 10])).await.expect("put");
        }
        // Five 100 KiB objects at 500 KiB/s: the last one is sent after a whole second.
        assert!(start.elapsed() >= Duration::from_secs(1), "{:?}", start.elapsed());
        assert_eq!(pacer.sent(), 500 << 10);
    }
}
