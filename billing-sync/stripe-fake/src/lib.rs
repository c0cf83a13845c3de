//! A faithful fake of the part of Stripe's API Tally calls, for tests and the local stack (no
//! machine here can reach Stripe), following Stripe's documented rules:
//!
//! * `Authorization: Bearer sk_test_…`, form-encoded bodies, Stripe's error object, a
//!   `Request-Id` on every answer;
//! * `Idempotency-Key`: a finished request's answer is replayed when the parameters match
//!   (compared as parameters, in any order), another request with the key is a 400
//!   `idempotency_error`, and a request while one with the same key runs is a 409
//!   `idempotency_key_in_use`;
//! * 429 `rate_limit` past `rate_limit_per_second`, and for a second concurrent meter event of
//!   one customer on one meter;
//! * lists page with `limit` (1–100, default 10), `starting_after` / `ending_before`, `has_more`;
//! * `POST /v1/customers`, `GET|DELETE /v1/customers/{id}`;
//! * `POST /v1/billing/meters` (`event_name` ≤ 100 characters), `GET /v1/billing/meters`,
//!   `GET /v1/billing/meters/{id}`;
//! * `POST /v1/billing/meter_events`: whole-number values of at most 15 significant digits,
//!   `identifier` and `event_name` ≤ 100 characters, dedup on `identifier`, `timestamp` within
//!   the past 35 days and at most 5 minutes ahead;
//! * `POST /v1/billing/meter_event_adjustments` (`type=cancel`, `cancel[identifier]`): only
//!   within 24 hours of the fake receiving the event;
//! * `GET /v1/billing/meters/{id}/event_summaries?customer=&start_time=&end_time=[&value_grouping_window=hour|day]`.
//!
//! `POST /_fake/faults` (JSON [`Faults`]) injects 429s, 500s, timeouts and lost answers;
//! `POST /_fake/clock` (JSON [`Clock`]) moves the fake's clock; `GET /_fake/health` answers
//! 200 once the fake listens.
//! State lives in memory, saved to a file every second when one is configured.

mod endpoints;
pub mod faults;
pub mod objects;
mod paging;
mod routes;
pub mod store;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
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
    clock_offset_secs: AtomicI64,
    requests: AtomicU64,
    idempotency_in_flight: Mutex<HashSet<String>>,
    /// (event_name, customer) of meter events being handled.
    metering_in_flight: Mutex<HashSet<(String, String)>>,
}

/// The fake's clock, relative to the host's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Clock {
    pub offset_secs: i64,
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

    pub fn set_clock(&self, clock: Clock) {
        self.clock_offset_secs.store(clock.offset_secs, Ordering::Relaxed);
    }

    /// The fake's time in Unix seconds.
    pub fn now(&self) -> i64 {
        chrono::Utc::now().timestamp() + self.clock_offset_secs.load(Ordering::Relaxed)
    }

    fn request_id(&self) -> String {
        let n = self.requests.fetch_add(1, Ordering::Relaxed);
        format!("req_{:014}{:x}", n, self.now())
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
        .route("/_fake/clock", post(routes::set_clock))
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
