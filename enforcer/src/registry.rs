//! The tenant registry in memory: status, tier and resolved limits of every tenant, loaded from
//! the platform database, kept current by `NOTIFY tally_tenant_changed` (a trigger Tally's
//! migration puts on `tenant`) and a periodic full reload.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tally_schemas::tiers::{Limit, LimitOverrides, Limits, RateLimit, RateQuota, Tier, TierDefaults};
use tokio_util::sync::CancellationToken;

use crate::rate::{Limiters, TenantKey, TenantRate};

/// The notification channel the registry listens on.
pub const CHANNEL: &str = "tally_tenant_changed";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Active,
    Suspended,
    Deleted,
}

/// One tenant as the checks need it.
#[derive(Debug)]
pub struct TenantEntry {
    pub status: Status,
    pub tier: Tier,
    /// Boxed: only reservations and views read it, and a small map slot keeps the rate check's
    /// lookup to fewer cache lines at a million tenants.
    pub limits: Box<Limits>,
    /// The tenant's rate state on its quota's limiter; `None` when its rate is unlimited.
    pub rate: Option<TenantRate>,
}

type Row = (String, String, String, Option<i64>, Option<i64>, Option<i32>, Option<i32>);

const SELECT: &str = "SELECT id, status, tier, max_users, max_storage_bytes, rate_limit_per_second, rate_limit_burst \
                      FROM tenant";

#[derive(Debug)]
pub struct Registry {
    tenants: RwLock<HashMap<TenantKey, TenantEntry>>,
    limiters: Limiters,
    tiers: TierDefaults,
    started: Instant,
    /// Milliseconds after `started` of the last full load or notification-backed update.
    synced_ms: AtomicU64,
    /// Whether the last sync is recent enough to trust (kept by [`Registry::judge_freshness`],
    /// so the hot path reads a flag instead of the clock).
    fresh: AtomicBool,
}

fn overrides(row: &Row) -> Result<LimitOverrides, String> {
    let rate = match (row.5, row.6) {
        (None, _) => None,
        (Some(-1), _) => Some(RateLimit::Unlimited),
        (Some(per_second), burst) => {
            let per_second = u32::try_from(per_second).ok().and_then(NonZeroU32::new);
            let burst = burst.and_then(|b| u32::try_from(b).ok()).and_then(NonZeroU32::new).or(per_second);
            match (per_second, burst) {
                (Some(per_second), Some(burst)) => Some(RateLimit::Quota(RateQuota::new(per_second, burst))),
                // A zero rate admits nothing: the same as a cap of zero.
                _ => Some(RateLimit::Quota(RateQuota::new(NonZeroU32::MIN, NonZeroU32::MIN))),
            }
        }
    };
    Ok(LimitOverrides {
        max_users: row.3.map(Limit::from_db).transpose()?,
        max_storage_bytes: row.4.map(Limit::from_db).transpose()?,
        rate,
    })
}

impl Registry {
    pub fn new(tiers: TierDefaults) -> Self {
        Self {
            tenants: RwLock::new(HashMap::new()),
            limiters: Limiters::default(),
            tiers,
            started: Instant::now(),
            synced_ms: AtomicU64::new(u64::MAX),
            fresh: AtomicBool::new(false),
        }
    }

    fn entry(&self, row: &Row) -> Result<TenantEntry, String> {
        let status = match row.1.as_str() {
            "active" => Status::Active,
            "suspended" => Status::Suspended,
            _ => Status::Deleted,
        };
        let tier: Tier = row.2.parse()?;
        Ok(self.make_entry(status, tier, self.tiers.resolve(tier, &overrides(row)?)))
    }

    fn make_entry(&self, status: Status, tier: Tier, limits: Limits) -> TenantEntry {
        let rate = match limits.rate {
            RateLimit::Quota(quota) => Some(self.limiters.tenant(quota)),
            RateLimit::Unlimited => None,
        };
        TenantEntry { status, tier, limits: Box::new(limits), rate }
    }

    /// Puts `entry` in `tenants`, keeping the old entry's rate state if the quota did not
    /// change, so a reload does not refill anyone's bucket.
    fn put(
        tenants: &mut HashMap<TenantKey, TenantEntry>,
        previous: Option<TenantEntry>,
        key: TenantKey,
        mut entry: TenantEntry,
    ) {
        if let Some(previous) = previous
            && previous.limits.rate == entry.limits.rate
        {
            entry.rate = previous.rate;
        }
        tenants.insert(key, entry);
    }

    /// Puts an active tenant of `tier` with the tier's limits in the registry (embedding the
    /// enforcer without the platform database, e.g. in benchmarks; the next reload replaces it).
    pub fn insert_active(&self, tenant: &str, tier: Tier) {
        let entry = self.make_entry(Status::Active, tier, self.tiers.resolve(tier, &LimitOverrides::default()));
        let mut tenants = self.tenants.write().unwrap_or_else(PoisonError::into_inner);
        let previous = tenants.remove(tenant);
        Self::put(&mut tenants, previous, TenantKey::from(tenant), entry);
        drop(tenants);
        self.mark_synced();
    }

    /// Runs `check` on the tenant's entry (`None` for an unknown tenant) under the read lock:
    /// the hot path clones nothing.
    pub fn with<R>(&self, tenant: &str, check: impl FnOnce(Option<(&TenantKey, &TenantEntry)>) -> R) -> R {
        let tenants = self.tenants.read().unwrap_or_else(PoisonError::into_inner);
        check(tenants.get_key_value(tenant))
    }

    pub fn len(&self) -> usize {
        self.tenants.read().unwrap_or_else(PoisonError::into_inner).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Time since the registry last synced with PostgreSQL; `None` before the first load.
    pub fn age(&self) -> Option<Duration> {
        let synced = self.synced_ms.load(Ordering::Relaxed);
        (synced != u64::MAX).then(|| self.started.elapsed().saturating_sub(Duration::from_millis(synced)))
    }

    fn mark_synced(&self) {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.synced_ms.store(now, Ordering::Relaxed);
        self.fresh.store(true, Ordering::Relaxed);
    }

    /// Whether the registry is recent enough to answer from.
    pub fn is_fresh(&self) -> bool {
        self.fresh.load(Ordering::Relaxed)
    }

    /// Marks the registry stale once its last sync is older than `stale_after`.
    pub fn judge_freshness(&self, stale_after: Duration) {
        self.fresh.store(self.age().is_some_and(|age| age <= stale_after), Ordering::Relaxed);
    }

    /// Replaces the whole registry with the database's.
    pub async fn load_all(&self, pool: &PgPool) -> Result<usize, sqlx::Error> {
        let rows: Vec<Row> = sqlx::query_as(SELECT).fetch_all(pool).await?;
        let mut fresh = Vec::with_capacity(rows.len());
        for row in &rows {
            match self.entry(row) {
                Ok(entry) => fresh.push((TenantKey::from(row.0.as_str()), entry)),
                Err(error) => tracing::warn!(tenant = row.0, error, "tenant row skipped: its limits are invalid"),
            }
        }
        let count = fresh.len();
        let mut tenants = self.tenants.write().unwrap_or_else(PoisonError::into_inner);
        let mut previous = std::mem::take(&mut *tenants);
        tenants.reserve(count);
        for (key, entry) in fresh {
            let old = previous.remove(&key);
            Self::put(&mut tenants, old, key, entry);
        }
        drop(tenants);
        drop(previous);
        self.limiters.prune();
        self.mark_synced();
        Ok(count)
    }

    /// Reloads one tenant (after a notification).
    pub async fn load_one(&self, pool: &PgPool, tenant: &str) -> Result<(), sqlx::Error> {
        let row: Option<Row> =
            sqlx::query_as(&format!("{SELECT} WHERE id = $1")).bind(tenant).fetch_optional(pool).await?;
        let entry = row.as_ref().map(|row| self.entry(row));
        let mut tenants = self.tenants.write().unwrap_or_else(PoisonError::into_inner);
        match entry {
            Some(Ok(entry)) => {
                let previous = tenants.remove(tenant);
                Self::put(&mut tenants, previous, TenantKey::from(tenant), entry);
            }
            Some(Err(error)) => tracing::warn!(tenant, error, "tenant row ignored: its limits are invalid"),
            None => {
                tenants.remove(tenant);
            }
        }
        Ok(())
    }

    /// Follows change notifications and reloads everything every `reload`, until `stopping`.
    /// A lost listener connection is re-established, with a full reload to cover the gap.
    pub async fn keep_current(self: Arc<Self>, pool: PgPool, reload: Duration, stopping: CancellationToken) {
        let mut tick = tokio::time::interval(reload);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut listener: Option<PgListener> = None;
        while !stopping.is_cancelled() {
            if listener.is_none() {
                listener = match PgListener::connect_with(&pool).await {
                    Ok(mut connected) => match connected.listen(CHANNEL).await {
                        Ok(()) => Some(connected),
                        Err(error) => {
                            tracing::warn!(error = %error, "LISTEN failed; retrying");
                            None
                        }
                    },
                    Err(error) => {
                        tracing::warn!(error = %error, "connecting the registry listener failed; retrying");
                        None
                    }
                };
                if listener.is_some() {
                    self.reload(&pool).await;
                }
            }
            let Some(active) = listener.as_mut() else {
                tokio::select! {
                    () = stopping.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            };
            tokio::select! {
                () = stopping.cancelled() => return,
                _ = tick.tick() => self.reload(&pool).await,
                notification = active.try_recv() => match notification {
                    Ok(Some(notification)) => {
                        let tenant = notification.payload().to_owned();
                        match self.load_one(&pool, &tenant).await {
                            Ok(()) => self.mark_synced(),
                            Err(error) => tracing::warn!(tenant, error = %error, "reloading a changed tenant failed"),
                        }
                    }
                    // The connection dropped: notifications may have been missed.
                    Ok(None) => self.reload(&pool).await,
                    Err(error) => {
                        tracing::warn!(error = %error, "the registry listener failed; reconnecting");
                        listener = None;
                    }
                },
            }
        }
    }

    async fn reload(&self, pool: &PgPool) {
        match self.load_all(pool).await {
            Ok(count) => tracing::debug!(tenants = count, "tenant registry reloaded"),
            Err(error) => tracing::warn!(error = %error, "reloading the tenant registry failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate::RateOutcome;

    fn take_burst(registry: &Registry, tenant: &str) -> RateOutcome {
        registry.with(tenant, |found| {
            let rate = found.and_then(|(_, entry)| entry.rate.as_ref()).expect("a rate-limited tenant");
            rate.check(NonZeroU32::new(rate.quota().burst.get()).unwrap_or(NonZeroU32::MIN))
        })
    }

    fn one_cell(registry: &Registry, tenant: &str) -> RateOutcome {
        registry.with(tenant, |found| found.and_then(|(_, entry)| entry.rate.as_ref()).unwrap().check(NonZeroU32::MIN))
    }

    #[test]
    fn an_update_keeps_the_rate_state_while_the_quota_is_unchanged() {
        let registry = Registry::new(TierDefaults::default());
        registry.insert_active("acme", Tier::Standard);
        assert_eq!(take_burst(&registry, "acme"), RateOutcome::Allowed { remaining: 0 });
        registry.insert_active("acme", Tier::Standard);
        assert!(matches!(one_cell(&registry, "acme"), RateOutcome::Limited { .. }), "same quota: still spent");
        registry.insert_active("acme", Tier::Premium);
        assert!(
            matches!(one_cell(&registry, "acme"), RateOutcome::Allowed { .. }),
            "a new quota starts with a full bucket"
        );
        assert_eq!(registry.limiters.len(), 2, "one limiter per quota in use until a full reload prunes");
    }
}
