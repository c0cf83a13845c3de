//! A faithful fake of the part of Stripe's API Tally calls, for tests and the local stack (no
//! machine here can reach Stripe): `Authorization: Bearer sk_test_…`, form-encoded bodies,
//! Stripe's error object, `Idempotency-Key` replay (same answer; another request with the same
//! key is a 400 `idempotency_error`), 429 `rate_limit` past `rate_limit_per_second`, and
//!
//! * `POST /v1/customers`, `GET /v1/customers/{id}`;
//! * `POST /v1/billing/meters`, `GET /v1/billing/meters`, `GET /v1/billing/meters/{id}`;
//! * `POST /v1/billing/meter_events` (dedup on `identifier`; `timestamp` within the past 35 days
//!   and at most 5 minutes ahead; the meter's customer and value payload keys);
//! * `GET /v1/billing/meters/{id}/event_summaries?customer=&start_time=&end_time=[&value_grouping_window=hour|day]`.
//!
//! `POST /_fake/faults` (JSON [`Faults`]) injects 429s, 500s, timeouts and lost answers;
//! `GET /_fake/health` answers 200 once the fake listens.
//! State lives in memory, saved to a file every second when one is configured.

pub mod faults;
pub mod objects;
mod routes;
pub mod store;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use tokio_util::sync::CancellationToken;

use crate::faults::Dice;
pub use crate::faults::Faults;
use crate::store::Store;

/// The fake's shared state.
#[derive(Debug, Default)]
pub struct Fake {
    pub store: Mutex<Store>,
    pub dice: Mutex<Dice>,
    dirty: AtomicBool,
    /// Requests allowed per second before 429s (0: no limit).
    pub rate_limit_per_second: u32,
    window: Mutex<(i64, u32)>,
}

impl Fake {
    pub fn new(rate_limit_per_second: u32) -> Self {
        Self { rate_limit_per_second, ..Self::default() }
    }

    /// Loads a state file written by [`Fake::save`] (a missing file is an empty store).
    pub fn load(path: &std::path::Path, rate_limit_per_second: u32) -> anyhow::Result<Self> {
        let fake = Self::new(rate_limit_per_second);
        match std::fs::read(path) {
            Ok(bytes) => {
                let store: Store = serde_json::from_slice(&bytes)
                    .map_err(|e| anyhow::anyhow!("state file {} is not the fake's JSON: {e}", path.display()))?;
                *fake.lock() = store;
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(anyhow::anyhow!("reading state file {}: {error}", path.display())),
        }
        Ok(fake)
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn set_faults(&self, faults: Faults) {
        self.dice.lock().unwrap_or_else(PoisonError::into_inner).set(faults);
    }

    fn touched(&self) {
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Whether this request is over the per-second limit.
    fn over_rate(&self, now: i64) -> bool {
        if self.rate_limit_per_second == 0 {
            return false;
        }
        let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        if window.0 != now {
            *window = (now, 0);
        }
        window.1 += 1;
        window.1 > self.rate_limit_per_second
    }

    /// Writes the state to `path` (through a temporary file) if it changed.
    pub async fn save(self: &Arc<Self>, path: &std::path::Path) -> anyhow::Result<()> {
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        let bytes = serde_json::to_vec(&*self.lock())?;
        let temporary = path.with_extension("tmp");
        tokio::fs::write(&temporary, bytes).await?;
        tokio::fs::rename(&temporary, path).await?;
        Ok(())
    }
}

/// The fake's routes over `fake`.
pub fn router(fake: Arc<Fake>) -> Router {
    Router::new()
        .route("/_fake/faults", post(routes::set_faults))
        .route("/_fake/health", axum::routing::get(|| async { "ok" }))
        .fallback(routes::api)
        .with_state(fake)
}

/// Saves the state every second until `stopping`, and once more at the end.
pub async fn keep_saved(fake: Arc<Fake>, path: PathBuf, stopping: CancellationToken) {
    loop {
        let stop = tokio::select! {
            () = stopping.cancelled() => true,
            () = tokio::time::sleep(Duration::from_secs(1)) => false,
        };
        if let Err(error) = fake.save(&path).await {
            tracing::warn!(error = %error, path = %path.display(), "saving the fake's state failed");
        }
        if stop {
            return;
        }
    }
}
