//! The checks: rate (in memory, or in Redis shared by every replica), users and storage (reserve
//! → commit / release in PostgreSQL against the aggregator's usage), each with its failure policy.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use chrono::DateTime;
use sqlx::PgPool;
use tally_schemas::tiers::{Limit, Limits, RateQuota};

use crate::audit::{AuditLog, StorageAlerts};
use crate::config::{EnforcerSection, FailurePolicy};
use crate::decision::{Decision, Kind, Reason};
use crate::holds::Holds;
use crate::metrics::EnforcerMetrics;
use crate::rate::RateOutcome;
use crate::rate_redis::RedisRate;
use crate::registry::{Registry, Status, TenantEntry};
use crate::reservations::{self, Bounds, Judged, Resource};
use crate::usage::UsageCache;

#[derive(Debug)]
pub struct Checks {
    pub registry: Arc<Registry>,
    pub usage: Arc<UsageCache>,
    pub audit: AuditLog,
    pub alerts: StorageAlerts,
    pub pool: PgPool,
    pub holds: Arc<Holds>,
    /// `None`: rate state in this process (`[enforcer.rate] store = "memory"`).
    pub shared_rate: Option<RedisRate>,
    pub settings: EnforcerSection,
    pub metrics: EnforcerMetrics,
}

fn limit_value(limit: Limit) -> Option<u64> {
    match limit {
        Limit::Unlimited => None,
        Limit::Capped(cap) => Some(cap),
    }
}

fn status_denial(kind: Kind, entry: Option<&TenantEntry>) -> Option<Decision> {
    let reason = match entry.map(|e| e.status) {
        None => Reason::UnknownTenant,
        Some(Status::Suspended) => Reason::TenantSuspended,
        Some(Status::Deleted) => Reason::TenantDeleted,
        Some(Status::Active) => return None,
    };
    Some(Decision::new(kind, false, reason))
}

/// What a rate check needs from the registry: a denial, no limit, or the tenant's quota.
enum RateGate {
    Decided(Decision),
    Quota(RateQuota),
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A rate decision with its limit fields; `full_after` when the store says when the bucket is full.
fn rate_decision(quota: RateQuota, outcome: RateOutcome, full_after: Option<Duration>) -> Decision {
    let burst = u64::from(quota.burst.get());
    let per_second = u64::from(quota.per_second.get());
    let (mut decision, remaining) = match outcome {
        RateOutcome::Allowed { remaining } => (Decision::new(Kind::Rate, true, Reason::Ok), u64::from(remaining)),
        RateOutcome::Limited { retry_after } => {
            let mut denied = Decision::new(Kind::Rate, false, Reason::RateLimited);
            denied.retry_after_ms = Some(millis(retry_after).max(1));
            (denied, 0)
        }
        RateOutcome::TooCostly => (Decision::new(Kind::Rate, false, Reason::CostAboveBurst), 0),
    };
    let taken = burst - remaining.min(burst);
    decision.limit = Some(burst);
    decision.remaining = Some(remaining);
    decision.used = Some(taken);
    decision.reset_after_ms = Some(full_after.map_or(taken * 1_000 / per_second, millis));
    decision.window_ms = Some(burst * 1_000 / per_second);
    decision
}

impl Checks {
    /// Checks over `registry`, with the reservation queues and the rate store they need.
    pub fn new(
        registry: Arc<Registry>,
        pool: PgPool,
        shared_rate: Option<RedisRate>,
        settings: EnforcerSection,
        metrics: EnforcerMetrics,
    ) -> Self {
        let bounds = Bounds { ttl_secs: settings.reservation_ttl_secs, timeout_ms: settings.store_timeout_ms };
        Self {
            registry,
            usage: Arc::new(UsageCache::new(crate::USERS_METRIC, crate::STORAGE_METRIC)),
            audit: AuditLog::new(settings.audit_capacity),
            alerts: StorageAlerts::default(),
            holds: Holds::new(pool.clone(), bounds),
            pool,
            shared_rate,
            settings,
            metrics,
        }
    }

    fn policy(&self, kind: Kind) -> FailurePolicy {
        match kind {
            Kind::Rate => self.settings.policy.rate,
            Kind::Users => self.settings.policy.users,
            Kind::Storage => self.settings.policy.storage,
        }
    }

    fn degraded(&self, kind: Kind) -> Decision {
        let allowed = self.policy(kind) == FailurePolicy::Open;
        let mut decision = Decision::new(kind, allowed, if allowed { Reason::Ok } else { Reason::Unavailable });
        decision.degraded = true;
        decision
    }

    fn registry_stale(&self) -> bool {
        !self.registry.is_fresh()
    }

    /// Counts the decision in metrics and, if it denies a registered tenant, in the audit log.
    fn settle(&self, tenant: &str, decision: Decision) -> Decision {
        let outcome = match (decision.allowed, decision.degraded) {
            (true, false) => 0,
            (false, false) => 1,
            (_, true) => 2,
        };
        let kind = match decision.kind {
            Kind::Rate => 0,
            Kind::Users => 1,
            Kind::Storage => 2,
        };
        self.metrics.decision_counters.get(kind, outcome).inc();
        if !decision.allowed && decision.reason != Reason::UnknownTenant {
            self.audit.record(tenant, decision.kind, decision.reason);
        }
        decision
    }

    fn rate_gate(&self, tenant: &str) -> RateGate {
        self.registry.with(tenant, |found| {
            if let Some(denied) = status_denial(Kind::Rate, found.map(|(_, entry)| entry)) {
                return RateGate::Decided(denied);
            }
            match found.and_then(|(_, entry)| entry.rate.as_ref()) {
                Some(rate) => RateGate::Quota(rate.quota()),
                None => RateGate::Decided(Decision::new(Kind::Rate, true, Reason::Unlimited)),
            }
        })
    }

    /// May `tenant` spend `cost` cells of its rate limit now? Answered by the configured store.
    pub async fn rate(&self, tenant: &str, cost: NonZeroU32) -> Decision {
        let Some(shared) = &self.shared_rate else { return self.rate_in_memory(tenant, cost) };
        if self.registry_stale() {
            return self.settle(tenant, self.degraded(Kind::Rate));
        }
        let quota = match self.rate_gate(tenant) {
            RateGate::Decided(decision) => return self.settle(tenant, decision),
            RateGate::Quota(quota) => quota,
        };
        if cost > quota.burst {
            return self.settle(tenant, rate_decision(quota, RateOutcome::TooCostly, None));
        }
        let decision = match shared.check(tenant, quota, cost.get()).await {
            Ok(answer) => rate_decision(quota, answer.outcome, Some(answer.full_after)),
            Err(error) => {
                self.metrics.rate_store_errors.inc();
                tracing::debug!(tenant, error = %error, "the shared rate store failed; the failure policy answers");
                self.degraded(Kind::Rate)
            }
        };
        self.settle(tenant, decision)
    }

    /// The rate check on this process's own state (the `memory` store): one registry lookup and
    /// one atomic update.
    pub fn rate_in_memory(&self, tenant: &str, cost: NonZeroU32) -> Decision {
        if self.registry_stale() {
            return self.settle(tenant, self.degraded(Kind::Rate));
        }
        let decision = self.registry.with(tenant, |found| {
            if let Some(denied) = status_denial(Kind::Rate, found.map(|(_, entry)| entry)) {
                return denied;
            }
            let Some((_, entry)) = found else { return Decision::new(Kind::Rate, false, Reason::UnknownTenant) };
            let Some(limiter) = &entry.rate else { return Decision::new(Kind::Rate, true, Reason::Unlimited) };
            rate_decision(limiter.quota(), limiter.check(cost), None)
        });
        self.settle(tenant, decision)
    }

    fn usage_fresh(&self) -> bool {
        self.usage.age().is_some_and(|age| age <= Duration::from_millis(self.settings.usage_stale_after_ms))
    }

    /// The cap and reported usage of `resource` for `tenant`: the judgement a reservation needs.
    fn judged(&self, tenant: &str, resource: Resource, limits: &Limits) -> Judged {
        let usage = self.usage.get(tenant);
        let (cap, used, used_at_ns) = match resource {
            Resource::Users => (limits.max_users, usage.users, usage.users_at_ns),
            Resource::Storage => (limits.max_storage_bytes, usage.storage_bytes, usage.storage_at_ns),
        };
        Judged { cap, used, used_as_of: DateTime::from_timestamp_nanos(used_at_ns), enforce_cap: self.usage_fresh() }
    }

    /// Reports plus outstanding holds of `resource`, for views (`None` if PostgreSQL failed).
    pub async fn in_use(&self, tenant: &str, resource: Resource, limits: &Limits) -> Option<u64> {
        let judged = self.judged(tenant, resource, limits);
        match reservations::outstanding(&self.pool, tenant, resource, judged.used_as_of).await {
            Ok(held) => Some(judged.used.saturating_add(held)),
            Err(error) => {
                tracing::warn!(tenant, error = %error, "reading outstanding holds failed");
                None
            }
        }
    }

    /// Reserves `amount` users or bytes for `tenant` if its cap admits them.
    pub async fn reserve(&self, tenant: &str, resource: Resource, amount: u64) -> Decision {
        let kind = match resource {
            Resource::Users => Kind::Users,
            Resource::Storage => Kind::Storage,
        };
        if self.registry_stale() {
            return self.settle(tenant, self.degraded(kind));
        }
        let found: Result<Limits, Box<Decision>> =
            self.registry.with(tenant, |found| match status_denial(kind, found.map(|(_, entry)| entry)) {
                Some(denied) => Err(Box::new(denied)),
                None => found
                    .map(|(_, entry)| *entry.limits)
                    .ok_or_else(|| Box::new(Decision::new(kind, false, Reason::UnknownTenant))),
            });
        let limits = match found {
            Ok(limits) => limits,
            Err(denied) => return self.settle(tenant, *denied),
        };
        let judged = self.judged(tenant, resource, &limits);
        if !judged.enforce_cap && self.policy(kind) == FailurePolicy::Closed {
            return self.settle(tenant, self.degraded(kind));
        }
        let reserved = match self.holds.reserve(tenant, resource, amount, judged).await {
            Ok(reserved) => reserved,
            Err(error) => {
                tracing::warn!(tenant, error, "reservation failed; the failure policy answers");
                return self.settle(tenant, self.degraded(kind));
            }
        };
        let reason = match (reserved.allowed, judged.cap, resource) {
            (true, Limit::Unlimited, _) => Reason::Unlimited,
            (true, Limit::Capped(_), _) => Reason::Ok,
            (false, _, Resource::Users) => Reason::UserCap,
            (false, _, Resource::Storage) => Reason::StorageCap,
        };
        // An admitted hold is in use from now on: `used` and `remaining` include it.
        let in_use = if reserved.allowed { reserved.in_use.saturating_add(amount) } else { reserved.in_use };
        let mut decision = Decision::new(kind, reserved.allowed, reason);
        decision.limit = limit_value(judged.cap);
        decision.used = Some(in_use);
        decision.remaining = limit_value(judged.cap).map(|cap| cap.saturating_sub(in_use));
        decision.reservation_id = reserved.id;
        decision.degraded = !judged.enforce_cap;
        self.settle(tenant, decision)
    }
}
