//! A small read-through cache with a time-to-live, for registry lookups on hot paths.
//!
//! Entries older than the TTL are fetched again; once the map holds `sweep_at` entries, expired
//! ones are dropped, so memory stays bounded under key churn.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::RwLock;

const DEFAULT_SWEEP_AT: usize = 100_000;

#[derive(Debug)]
pub struct TtlCache<V> {
    ttl: Duration,
    sweep_at: usize,
    entries: Arc<RwLock<HashMap<String, (Instant, V)>>>,
}

impl<V> Clone for TtlCache<V> {
    fn clone(&self) -> Self {
        Self { ttl: self.ttl, sweep_at: self.sweep_at, entries: self.entries.clone() }
    }
}

impl<V: Clone> TtlCache<V> {
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, sweep_at: DEFAULT_SWEEP_AT, entries: Arc::default() }
    }

    /// The cached value for `key`, or `fetch`'s answer (cached on success).
    pub async fn get_or_fetch<E, F, Fut>(&self, key: &str, fetch: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        if let Some((fetched, value)) = self.entries.read().await.get(key)
            && fetched.elapsed() < self.ttl
        {
            return Ok(value.clone());
        }
        let value = fetch().await?;
        let mut entries = self.entries.write().await;
        if entries.len() >= self.sweep_at {
            let ttl = self.ttl;
            entries.retain(|_, (fetched, _)| fetched.elapsed() < ttl);
        }
        entries.insert(key.to_owned(), (Instant::now(), value.clone()));
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn fetches_once_per_ttl_and_not_on_error() {
        let cache: TtlCache<u32> = TtlCache::new(Duration::from_millis(50));
        let calls = AtomicUsize::new(0);
        let fetch = || async {
            calls.fetch_add(1, Ordering::Relaxed);
            Ok::<_, ()>(7)
        };
        assert_eq!(cache.get_or_fetch("a", fetch).await, Ok(7));
        assert_eq!(cache.get_or_fetch("a", fetch).await, Ok(7));
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(cache.get_or_fetch("a", fetch).await, Ok(7));
        assert_eq!(calls.load(Ordering::Relaxed), 2);
        assert_eq!(cache.get_or_fetch("b", || async { Err::<u32, _>("down") }).await, Err("down"));
        assert_eq!(cache.get_or_fetch("b", fetch).await, Ok(7), "errors are not cached");
    }

    #[tokio::test]
    async fn expired_entries_are_swept() {
        let mut cache: TtlCache<u8> = TtlCache::new(Duration::from_millis(10));
        cache.sweep_at = 3;
        for key in ["a", "b", "c"] {
            cache.get_or_fetch(key, || async { Ok::<_, ()>(1) }).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        cache.get_or_fetch("d", || async { Ok::<_, ()>(1) }).await.unwrap();
        assert_eq!(cache.entries.read().await.len(), 1);
    }
}
