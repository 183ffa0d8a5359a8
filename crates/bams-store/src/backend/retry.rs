//! Retries for network backends: transient failures (5xx, SlowDown, timeouts, resets, short
//! bodies) are retried with exponential backoff and full jitter, up to a bound; when it gives
//! up, the error names the operation, the object and the last cause.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rand::Rng;

use super::{DynBackend, ObjectInfo, ReadBackend, WriteBackend};
use crate::error::{Error, ErrorKind, Result};

/// How often and how long to retry.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in total (1 = no retry).
    pub attempts: u32,
    /// First backoff; doubled each time.
    pub base: Duration,
    /// Longest single backoff.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { attempts: 8, base: Duration::from_millis(200), max_delay: Duration::from_secs(20) }
    }
}

impl RetryPolicy {
    /// The default policy, adjusted by `BAMS_RETRY_ATTEMPTS`, `BAMS_RETRY_BASE_MS` and
    /// `BAMS_RETRY_MAX_MS` (tests and impatient operators shorten it; flaky links lengthen it).
    pub fn from_env() -> Result<Self> {
        let mut p = Self::default();
        let read = |k: &str| -> Result<Option<u64>> {
            match std::env::var(k) {
                Err(_) => Ok(None),
                Ok(v) => v
                    .parse::<u64>()
                    .map(Some)
                    .map_err(|_| Error::invalid(format!("{k}={v:?}: expected a whole number"))),
            }
        };
        if let Some(n) = read("BAMS_RETRY_ATTEMPTS")? {
            p.attempts = u32::try_from(n.clamp(1, 100)).unwrap_or(100);
        }
        if let Some(ms) = read("BAMS_RETRY_BASE_MS")? {
            p.base = Duration::from_millis(ms);
        }
        if let Some(ms) = read("BAMS_RETRY_MAX_MS")? {
            p.max_delay = Duration::from_millis(ms);
        }
        Ok(p)
    }
}

/// A backend that retries its inner backend's transient failures.
pub struct RetryBackend {
    inner: DynBackend,
    policy: RetryPolicy,
}

impl RetryBackend {
    /// Wrap `inner`.
    pub fn new(inner: DynBackend, policy: RetryPolicy) -> Self {
        Self { inner, policy }
    }

    fn retryable(e: &Error) -> bool {
        // Backends report 5xx, SlowDown, timeouts, resets and bodies cut short as Transient.
        e.kind() == ErrorKind::Transient
    }

    async fn run<T, F, Fut>(&self, what: &str, key: &str, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut + Send,
        Fut: std::future::Future<Output = Result<T>> + Send,
        T: Send,
    {
        let mut attempt = 1;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) if Self::retryable(&e) && attempt < self.policy.attempts => {
                    let cap = self.policy.base.saturating_mul(1 << (attempt - 1).min(16)).min(self.policy.max_delay);
                    let delay = rand::thread_rng().gen_range(Duration::ZERO..=cap);
                    tracing::debug!(what, key, attempt, error = %e, ?delay, "retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) if Self::retryable(&e) => {
                    return Err(Error::new(
                        e.kind(),
                        format!(
                            "{what} {key} on {} failed after {attempt} attempts; last error: {e}",
                            self.inner.location()
                        ),
                    ));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[async_trait]
impl ReadBackend for RetryBackend {
    fn location(&self) -> String {
        self.inner.location()
    }
    async fn get(&self, key: &str) -> Result<Bytes> {
        self.run("GET", key, || self.inner.get(key)).await
    }
    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes> {
        self.run("GET range of", key, || self.inner.get_range(key, offset, len)).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.run("LIST", prefix, || self.inner.list(prefix)).await
    }
    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        self.run("HEAD", key, || self.inner.head(key)).await
    }
}

#[async_trait]
impl WriteBackend for RetryBackend {
    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        // Bytes clones are cheap (reference counted); every attempt sends the whole object.
        self.run("PUT", key, || self.inner.put(key, data.clone())).await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.run("DELETE", key, || self.inner.delete(key)).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use super::*;

    /// Fails the first `fail` calls of every operation with `kind`, then delegates.
    struct Flaky {
        inner: DynBackend,
        fail: u32,
        kind: ErrorKind,
        calls: AtomicU32,
    }

    impl Flaky {
        fn trip(&self) -> Result<()> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            if n < self.fail {
                return Err(Error::new(self.kind, format!("injected failure {n}")));
            }
            Ok(())
        }
    }

    #[async_trait]
    impl ReadBackend for Flaky {
        fn location(&self) -> String {
            "flaky".into()
        }
        async fn get(&self, key: &str) -> Result<Bytes> {
            self.trip()?;
            self.inner.get(key).await
        }
        async fn get_range(&self, key: &str, o: u64, l: u64) -> Result<Bytes> {
            self.trip()?;
            self.inner.get_range(key, o, l).await
        }
        async fn list(&self, p: &str) -> Result<Vec<ObjectInfo>> {
            self.trip()?;
            self.inner.list(p).await
        }
        async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
            self.trip()?;
            self.inner.head(key).await
        }
    }

    #[async_trait]
    impl WriteBackend for Flaky {
        async fn put(&self, key: &str, data: Bytes) -> Result<()> {
            self.trip()?;
            self.inner.put(key, data).await
        }
        async fn delete(&self, key: &str) -> Result<()> {
            self.trip()?;
            self.inner.delete(key).await
        }
    }

    fn setup(fail: u32, kind: ErrorKind) -> (tempfile::TempDir, Arc<Flaky>, RetryBackend) {
        let dir = tempfile::tempdir().expect("tempdir");
        let local: DynBackend = Arc::new(super::super::local::LocalBackend::new(dir.path()));
        let flaky = Arc::new(Flaky { inner: local, fail, kind, calls: AtomicU32::new(0) });
        let policy = RetryPolicy { attempts: 4, base: Duration::from_millis(1), max_delay: Duration::from_millis(5) };
        let retry = RetryBackend::new(flaky.clone(), policy);
        (dir, flaky, retry)
    }

    #[tokio::test]
    async fn transient_failures_are_retried_within_the_bound() {
        let (_d, flaky, retry) = setup(3, ErrorKind::Transient);
        retry.put("data/aa/x", Bytes::from_static(b"hello")).await.expect("put after 3 failures");
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 4);
        assert_eq!(retry.get("data/aa/x").await.expect("get").as_ref(), b"hello");
    }

    #[tokio::test]
    async fn giving_up_names_the_object_and_the_last_cause() {
        let (_d, flaky, retry) = setup(100, ErrorKind::Transient);
        let e = retry.get("index/abc").await.expect_err("must give up");
        let msg = e.to_string();
        assert!(
            msg.contains("index/abc") && msg.contains("after 4 attempts") && msg.contains("injected failure 3"),
            "{msg}"
        );
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn permanent_errors_are_not_retried() {
        let (_d, flaky, retry) = setup(100, ErrorKind::InvalidInput);
        assert!(retry.head("config").await.is_err());
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 1);
    }
}
