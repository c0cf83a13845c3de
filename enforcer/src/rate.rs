//! Per-tenant rate limits on `governor` (GCRA).
//!
//! One governor limiter holds one quota, and tenants differ in quota (tier defaults, overrides).
//! So there is one keyed governor limiter per distinct quota ([`Limiters`]), shared by every
//! tenant with that quota, and each tenant's GCRA state is a single atomic ([`RateCell`]) inline
//! in its registry entry. Governor's keyed limiters normally find a key's state in a map of their
//! own; here the key *is* the state ([`InlineCells`]), so a check is one registry lookup and one
//! atomic update in the same map slot. An idle tenant costs 8 bytes of state and a pointer.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::num::{NonZeroU32, NonZeroU64};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use governor::clock::{Clock, QuantaClock};
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::{Quota, RateLimiter};
use tally_schemas::tiers::RateQuota;

pub type TenantKey = Box<str>;

/// One tenant's GCRA state: its theoretical arrival time in nanoseconds after its limiter's start
/// (0 = never checked, as in governor's own `InMemoryState`).
#[derive(Debug, Default)]
pub struct RateCell(AtomicU64);

// Governor asks keys to be `Hash + Eq + Clone`. `InlineCells` never hashes, compares or clones a
// key (the key is the state), so these follow the cell's identity; a clone is a snapshot.
impl PartialEq for RateCell {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for RateCell {}

impl Hash for RateCell {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::ptr::hash(self, state);
    }
}

impl Clone for RateCell {
    fn clone(&self) -> Self {
        Self(AtomicU64::new(self.0.load(Ordering::Acquire)))
    }
}

/// The state store of a quota's limiter: each key carries its own state.
#[derive(Debug, Default)]
pub struct InlineCells;

impl StateStore for InlineCells {
    type Key = RateCell;

    // The same compare-and-swap loop as governor's `InMemoryState`.
    fn measure_and_replace<T, F, E>(&self, cell: &RateCell, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut previous = cell.0.load(Ordering::Acquire);
        let mut decision = f(NonZeroU64::new(previous).map(|n| Nanos::from(n.get())));
        while let Ok((result, next)) = decision {
            match cell.0.compare_exchange_weak(previous, next.into(), Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return Ok(result),
                Err(current) => previous = current,
            }
            decision = f(NonZeroU64::new(previous).map(|n| Nanos::from(n.get())));
        }
        decision.map(|(result, _)| result)
    }
}

// Quanta reads the TSC: std's `Instant::now` costs several times a whole check on some VMs.
type Limiter = RateLimiter<RateCell, InlineCells, QuantaClock, StateInformationMiddleware>;

/// The governor limiter of one quota.
#[derive(Debug)]
pub struct QuotaLimiter {
    pub quota: RateQuota,
    limiter: Limiter,
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

/// The limiters of every quota in use.
#[derive(Debug, Default)]
pub struct Limiters {
    by_quota: Mutex<HashMap<RateQuota, Arc<QuotaLimiter>>>,
}

impl Limiters {
    /// A fresh rate state for a tenant with `quota`, on that quota's shared limiter.
    pub fn tenant(&self, quota: RateQuota) -> TenantRate {
        let mut by_quota = self.by_quota.lock().unwrap_or_else(PoisonError::into_inner);
        let limiter = by_quota.entry(quota).or_insert_with(|| {
            let governed = Quota::per_second(quota.per_second).allow_burst(quota.burst);
            let limiter: Limiter = RateLimiter::new(governed, InlineCells, QuantaClock::default());
            Arc::new(QuotaLimiter { quota, limiter })
        });
        TenantRate { limiter: Arc::clone(limiter), cell: RateCell::default() }
    }

    /// Forgets the limiters no tenant uses any more (after a full reload).
    pub fn prune(&self) {
        self.by_quota
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, limiter| Arc::strong_count(limiter) > 1);
    }

    /// How many distinct quotas are in use.
    pub fn len(&self) -> usize {
        self.by_quota.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One tenant's rate limit: its quota's limiter and its own state.
#[derive(Debug)]
pub struct TenantRate {
    limiter: Arc<QuotaLimiter>,
    cell: RateCell,
}

impl TenantRate {
    pub fn quota(&self) -> RateQuota {
        self.limiter.quota
    }

    /// Takes `cost` cells if they are free.
    pub fn check(&self, cost: NonZeroU32) -> RateOutcome {
        let limiter = &self.limiter.limiter;
        let outcome = if cost.get() == 1 {
            limiter.check_key(&self.cell).map_err(Some)
        } else {
            match limiter.check_key_n(&self.cell, cost) {
                Ok(inner) => inner.map_err(Some),
                Err(_insufficient) => Err(None),
            }
        };
        match outcome {
            Ok(snapshot) => RateOutcome::Allowed { remaining: snapshot.remaining_burst_capacity() },
            Err(Some(not_until)) => {
                RateOutcome::Limited { retry_after: not_until.wait_time_from(limiter.clock().now()) }
            }
            Err(None) => RateOutcome::TooCostly,
        }
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
        let limiters = Limiters::default();
        let limiter = limiters.tenant(quota(10, 5));
        let one = NonZeroU32::MIN;
        for n in 0..5 {
            assert_eq!(limiter.check(one), RateOutcome::Allowed { remaining: 4 - n });
        }
        let RateOutcome::Limited { retry_after } = limiter.check(one) else { panic!("the 6th is limited") };
        assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_millis(100), "{retry_after:?}");
        let other = limiters.tenant(quota(10, 5));
        assert_eq!(other.check(one), RateOutcome::Allowed { remaining: 4 }, "tenants do not share cells");
        assert_eq!(other.check(NonZeroU32::new(6).unwrap()), RateOutcome::TooCostly);
        assert_eq!(limiters.len(), 1, "one limiter per quota");
    }

    #[test]
    fn quotas_get_their_own_limiters_and_unused_ones_are_pruned() {
        let limiters = Limiters::default();
        let fast = limiters.tenant(quota(100, 3));
        let slow = limiters.tenant(quota(1, 1));
        assert_eq!(limiters.len(), 2);
        assert_eq!(fast.check(NonZeroU32::new(3).unwrap()), RateOutcome::Allowed { remaining: 0 });
        assert_eq!(slow.check(NonZeroU32::MIN), RateOutcome::Allowed { remaining: 0 });
        let RateOutcome::Limited { retry_after } = slow.check(NonZeroU32::MIN) else { panic!("slow is limited") };
        assert!(retry_after > Duration::from_millis(900), "one cell per second: {retry_after:?}");
        drop(slow);
        limiters.prune();
        assert_eq!(limiters.len(), 1);
        assert_eq!(fast.quota(), quota(100, 3));
    }
}
