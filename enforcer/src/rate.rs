//! Per-tenant rate limits on `governor` (GCRA).
//!
//! One governor limiter holds one quota, and tenants differ in quota (tier defaults, overrides).
//! So every tenant's registry entry holds a direct (unkeyed) governor limiter of its own quota,
//! inline: a check is one registry lookup and one atomic update in the same entry, with no
//! second map to search. A reload keeps a tenant's limiter (and its state) while its quota is
//! unchanged; an idle tenant costs its registry entry and nothing more.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, MonotonicClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tally_schemas::tiers::RateQuota;

pub type TenantKey = Box<str>;

// `MonotonicClock` (std's `Instant`) is zero-sized: an idle tenant pays no bytes for a clock.
type Limiter = RateLimiter<NotKeyed, InMemoryState, MonotonicClock, StateInformationMiddleware>;

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

/// One tenant's limiter and the quota it enforces.
#[derive(Debug)]
pub struct TenantRate {
    pub quota: RateQuota,
    limiter: Limiter,
}

impl TenantRate {
    pub fn new(quota: RateQuota, clock: &MonotonicClock) -> Self {
        let governed = Quota::per_second(quota.per_second).allow_burst(quota.burst);
        let limiter =
            RateLimiter::direct_with_clock(governed, clock.clone()).with_middleware::<StateInformationMiddleware>();
        Self { quota, limiter }
    }

    /// Takes `cost` cells if they are free.
    pub fn check(&self, cost: NonZeroU32) -> RateOutcome {
        let outcome = if cost.get() == 1 {
            self.limiter.check().map_err(Some)
        } else {
            match self.limiter.check_n(cost) {
                Ok(inner) => inner.map_err(Some),
                Err(_insufficient) => Err(None),
            }
        };
        match outcome {
            Ok(snapshot) => RateOutcome::Allowed { remaining: snapshot.remaining_burst_capacity() },
            Err(Some(not_until)) => {
                RateOutcome::Limited { retry_after: not_until.wait_time_from(self.limiter.clock().now()) }
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
        let clock = MonotonicClock;
        let limiter = TenantRate::new(quota(10, 5), &clock);
        let one = NonZeroU32::MIN;
        for n in 0..5 {
            assert_eq!(limiter.check(one), RateOutcome::Allowed { remaining: 4 - n });
        }
        let RateOutcome::Limited { retry_after } = limiter.check(one) else { panic!("the 6th is limited") };
        assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_millis(100), "{retry_after:?}");
        let other = TenantRate::new(quota(10, 5), &clock);
        assert_eq!(other.check(one), RateOutcome::Allowed { remaining: 4 }, "tenants do not share cells");
        assert_eq!(other.check(NonZeroU32::new(6).unwrap()), RateOutcome::TooCostly);
    }
}
