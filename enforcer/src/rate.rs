//! Per-tenant rate limits on `governor` (GCRA).
//!
//! One governor limiter holds one quota, and tenants differ in quota (tier defaults, overrides).
//! So there is one keyed limiter per distinct quota, shared by every tenant with that quota; a
//! tenant's registry entry points straight at its limiter, so a check is one registry lookup plus
//! one governor check. Idle tenants' state is reclaimed by `reclaim` (`retain_recent`).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use tally_schemas::tiers::RateQuota;

pub type TenantKey = Arc<str>;

type Limiter = RateLimiter<TenantKey, DefaultKeyedStateStore<TenantKey>, DefaultClock, StateInformationMiddleware>;

/// A keyed limiter for every tenant sharing one quota.
#[derive(Debug)]
pub struct QuotaLimiter {
    pub quota: RateQuota,
    limiter: Limiter,
    clock: DefaultClock,
}

/// A rate check's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateOutcome {
    /// Allowed; this many more cells are free right now.
    Allowed { remaining: u32 },
    /// Denied; the request could pass after this wait.
    Limited { retry_after: Duration },
    /// The cost is above the burst: it can never pass.
    TooCostly,
}

impl QuotaLimiter {
    fn new(quota: RateQuota) -> Self {
        let governed = Quota::per_second(quota.per_second).allow_burst(quota.burst);
        let limiter = RateLimiter::dashmap(governed).with_middleware::<StateInformationMiddleware>();
        Self { quota, limiter, clock: DefaultClock::default() }
    }

    /// Takes `cost` cells for `tenant` if they are free.
    pub fn check(&self, tenant: &TenantKey, cost: NonZeroU32) -> RateOutcome {
        let outcome = if cost.get() == 1 {
            self.limiter.check_key(tenant).map_err(Some)
        } else {
            match self.limiter.check_key_n(tenant, cost) {
                Ok(inner) => inner.map_err(Some),
                Err(_insufficient) => Err(None),
            }
        };
        match outcome {
            Ok(snapshot) => RateOutcome::Allowed { remaining: snapshot.remaining_burst_capacity() },
            Err(Some(not_until)) => RateOutcome::Limited { retry_after: not_until.wait_time_from(self.clock.now()) },
            Err(None) => RateOutcome::TooCostly,
        }
    }

    /// Tenants with live state in this limiter.
    pub fn tracked(&self) -> usize {
        self.limiter.len()
    }
}

/// The limiters by quota; a new quota gets its limiter on first use.
#[derive(Debug, Default)]
pub struct RateLimiters {
    by_quota: Mutex<HashMap<RateQuota, Arc<QuotaLimiter>>>,
}

impl RateLimiters {
    pub fn for_quota(&self, quota: RateQuota) -> Arc<QuotaLimiter> {
        let mut by_quota = self.by_quota.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(by_quota.entry(quota).or_insert_with(|| Arc::new(QuotaLimiter::new(quota))))
    }

    /// Drops the state of tenants whose limiter would be full again (idle long enough), and
    /// limiters no tenant uses any more. Returns the tenants still tracked.
    pub fn reclaim(&self) -> usize {
        let mut by_quota = self.by_quota.lock().unwrap_or_else(PoisonError::into_inner);
        by_quota.retain(|_, limiter| Arc::strong_count(limiter) > 1 || limiter.tracked() > 0);
        let mut tracked = 0;
        for limiter in by_quota.values() {
            limiter.limiter.retain_recent();
            limiter.limiter.shrink_to_fit();
            tracked += limiter.tracked();
        }
        tracked
    }

    /// (quota, tenants tracked) per limiter.
    pub fn tracked(&self) -> usize {
        let by_quota = self.by_quota.lock().unwrap_or_else(PoisonError::into_inner);
        by_quota.values().map(|limiter| limiter.tracked()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(per_second: u32, burst: u32) -> RateQuota {
        RateQuota::new(NonZeroU32::new(per_second).unwrap(), NonZeroU32::new(burst).unwrap())
    }

    #[test]
    fn the_burst_passes_then_the_rate_with_a_retry_after() {
        let limiters = RateLimiters::default();
        let limiter = limiters.for_quota(quota(10, 5));
        let tenant: TenantKey = Arc::from("acme");
        let one = NonZeroU32::MIN;
        for _ in 0..5 {
            assert!(matches!(limiter.check(&tenant, one), RateOutcome::Allowed { .. }));
        }
        let RateOutcome::Limited { retry_after } = limiter.check(&tenant, one) else { panic!("the 6th is limited") };
        assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_millis(100), "{retry_after:?}");
        let other: TenantKey = Arc::from("globex");
        assert_eq!(limiter.check(&other, one), RateOutcome::Allowed { remaining: 4 }, "tenants do not share cells");
        assert_eq!(limiter.check(&other, NonZeroU32::new(6).unwrap()), RateOutcome::TooCostly);
    }

    #[test]
    fn tenants_with_one_quota_share_a_limiter() {
        let limiters = RateLimiters::default();
        assert!(Arc::ptr_eq(&limiters.for_quota(quota(10, 5)), &limiters.for_quota(quota(10, 5))));
        assert!(!Arc::ptr_eq(&limiters.for_quota(quota(10, 5)), &limiters.for_quota(quota(10, 6))));
    }
}
