//! Current usage per tenant, read from the aggregator's rollups every `usage_refresh_ms` (see
//! `aggregator/ANALYSTS.md`, "Current usage"). Checks read it from memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use clickhouse::Client;

/// Units of 10⁻⁹ per whole unit (users, bytes).
const UNITS: i128 = 1_000_000_000;

/// The figures the cap checks need, for one tenant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TenantUsage {
    pub users: u64,
    /// Event time (ns) of the latest user-count report: reservations committed after it still count.
    pub users_at_ns: i64,
    pub storage_bytes: u64,
    pub storage_at_ns: i64,
}

#[derive(Debug)]
pub struct UsageCache {
    by_tenant: RwLock<HashMap<String, TenantUsage>>,
    started: Instant,
    refreshed_ms: AtomicU64,
    users_metric: String,
    storage_metric: String,
}

fn whole(units: i128) -> u64 {
    u64::try_from((units / UNITS).max(0)).unwrap_or(u64::MAX)
}

impl UsageCache {
    pub fn new(users_metric: &str, storage_metric: &str) -> Self {
        Self {
            by_tenant: RwLock::new(HashMap::new()),
            started: Instant::now(),
            refreshed_ms: AtomicU64::new(u64::MAX),
            users_metric: users_metric.to_owned(),
            storage_metric: storage_metric.to_owned(),
        }
    }

    /// The tenant's usage; a tenant that never reported uses nothing.
    pub fn get(&self, tenant: &str) -> TenantUsage {
        self.by_tenant.read().unwrap_or_else(PoisonError::into_inner).get(tenant).copied().unwrap_or_default()
    }

    /// Every tenant's usage (for alerting).
    pub fn snapshot(&self) -> HashMap<String, TenantUsage> {
        self.by_tenant.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Time since the last successful refresh; `None` before the first.
    pub fn age(&self) -> Option<Duration> {
        let refreshed = self.refreshed_ms.load(Ordering::Relaxed);
        (refreshed != u64::MAX).then(|| self.started.elapsed().saturating_sub(Duration::from_millis(refreshed)))
    }

    /// Reads every tenant's current usage from ClickHouse.
    pub async fn refresh(&self, client: &Client) -> clickhouse::error::Result<usize> {
        let rows = tally_kit::rollups::current_usage(client, None, Utc::now()).await?;
        let mut by_tenant: HashMap<String, TenantUsage> = HashMap::new();
        for row in rows {
            let usage = by_tenant.entry(row.tenant_id).or_default();
            if row.metric == self.users_metric {
                usage.users = whole(row.latest_value);
                usage.users_at_ns = row.latest_at;
            } else if row.metric == self.storage_metric {
                usage.storage_bytes = whole(row.latest_value);
                usage.storage_at_ns = row.latest_at;
            }
        }
        let tenants = by_tenant.len();
        *self.by_tenant.write().unwrap_or_else(PoisonError::into_inner) = by_tenant;
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.refreshed_ms.store(now, Ordering::Relaxed);
        Ok(tenants)
    }
}
