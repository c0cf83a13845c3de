//! The checks: rate (in memory, microseconds), users and storage (reserve → commit / release in
//! PostgreSQL against the aggregator's usage), each with its failure policy.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use chrono::DateTime;
use sqlx::PgPool;
use tally_schemas::tiers::{Limit, Limits};

use crate::audit::{AuditLog, StorageAlerts};
use crate::config::{EnforcerSection, FailurePolicy};
use crate::decision::{Decision, Kind, Reason};
use crate::metrics::EnforcerMetrics;
use crate::rate::RateOutcome;
use crate::registry::{Registry, Status, TenantEntry};
use crate::reservations::{self, Request, Resource};
use crate::usage::UsageCache;

#[derive(Debug)]
pub struct Checks {
    pub registry: Arc<Registry>,
    pub usage: Arc<UsageCache>,
    pub audit: AuditLog,
    pub alerts: StorageAlerts,
    pub pool: PgPool,
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

impl Checks {
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

    /// Counts the decision in metrics and, if it denies, in the audit log.
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
        if !decision.allowed {
            self.audit.record(tenant, decision.kind, decision.reason);
        }
        decision
    }

    /// May `tenant` spend `cost` cells of its rate limit now?
    pub fn rate(&self, tenant: &str, cost: NonZeroU32) -> Decision {
        if self.registry_stale() {
            return self.settle(tenant, self.degraded(Kind::Rate));
        }
        let decision = self.registry.with(tenant, |found| {
            if let Some(denied) = status_denial(Kind::Rate, found.map(|(_, entry)| entry)) {
                return denied;
            }
            let Some((_, entry)) = found else { return Decision::new(Kind::Rate, false, Reason::UnknownTenant) };
            let Some(limiter) = &entry.rate else { return Decision::new(Kind::Rate, true, Reason::Unlimited) };
            let quota = limiter.quota();
            let burst = u64::from(quota.burst.get());
            let per_second = u64::from(quota.per_second.get());
            let (mut decision, remaining) = match limiter.check(cost) {
                RateOutcome::Allowed { remaining } => {
                    (Decision::new(Kind::Rate, true, Reason::Ok), u64::from(remaining))
                }
                RateOutcome::Limited { retry_after } => {
                    let mut denied = Decision::new(Kind::Rate, false, Reason::RateLimited);
                    denied.retry_after_ms = Some(u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX).max(1));
                    (denied, 0)
                }
                RateOutcome::TooCostly => (Decision::new(Kind::Rate, false, Reason::CostAboveBurst), 0),
            };
            decision.limit = Some(burst);
            decision.remaining = Some(remaining);
            decision.used = Some(burst - remaining.min(burst));
            decision.reset_after_ms = Some((burst - remaining.min(burst)) * 1_000 / per_second);
            decision.window_ms = Some(burst * 1_000 / per_second);
            decision
        });
        self.settle(tenant, decision)
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
        let cap = match resource {
            Resource::Users => limits.max_users,
            Resource::Storage => limits.max_storage_bytes,
        };
        let usage_fresh =
            self.usage.age().is_some_and(|age| age <= Duration::from_millis(self.settings.usage_stale_after_ms));
        if !usage_fresh && self.policy(kind) == FailurePolicy::Closed {
            return self.settle(tenant, self.degraded(kind));
        }
        let usage = self.usage.get(tenant);
        let (used, used_at_ns) = match resource {
            Resource::Users => (usage.users, usage.users_at_ns),
            Resource::Storage => (usage.storage_bytes, usage.storage_at_ns),
        };
        let request = Request {
            tenant,
            resource,
            amount,
            cap,
            used,
            used_as_of: DateTime::from_timestamp_nanos(used_at_ns),
            ttl_secs: self.settings.reservation_ttl_secs,
            enforce_cap: usage_fresh,
        };
        let timeout = Duration::from_millis(self.settings.store_timeout_ms);
        let reserved = match tokio::time::timeout(timeout, reservations::reserve(&self.pool, &request)).await {
            Ok(Ok(reserved)) => reserved,
            Ok(Err(error)) => {
                tracing::warn!(tenant, error = %error, "reservation failed; the failure policy answers");
                return self.settle(tenant, self.degraded(kind));
            }
            Err(_elapsed) => return self.settle(tenant, self.degraded(kind)),
        };
        let reason = match (reserved.allowed, cap, resource) {
            (true, Limit::Unlimited, _) => Reason::Unlimited,
            (true, Limit::Capped(_), _) => Reason::Ok,
            (false, _, Resource::Users) => Reason::UserCap,
            (false, _, Resource::Storage) => Reason::StorageCap,
        };
        let mut decision = Decision::new(kind, reserved.allowed, reason);
        decision.limit = limit_value(cap);
        decision.used = Some(reserved.in_use);
        decision.remaining = limit_value(cap).map(|cap| cap.saturating_sub(reserved.in_use));
        decision.reservation_id = reserved.id;
        decision.degraded = !usage_fresh;
        self.settle(tenant, decision)
    }
}
