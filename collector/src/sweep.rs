//! One sweep: every measurable tenant measured, at most `concurrency` at once and each within its
//! own time budget (a tenant database that is down or slow delays no other), then each
//! measurement emitted as two gauge events (`storage_bytes`, `active_users`).
//!
//! An event's id is `collector-<metric>-<slot>`, the slot being the sweep's start rounded down to
//! the interval: a retried or rerun sweep within the slot sends the same ids, which Tally counts
//! once per tenant (the dedup key is (tenant, id)).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::stream::{self, StreamExt};
use sqlx::PgPool;
use tally_client::{EmitError, Emitter};
use tally_schemas::{EventId, MetricName, Quantity, TenantId, UsageEvent};

use crate::config::CollectorSection;
use crate::measure::{Failure, Measurement, Measurer};
use crate::registry::{self, Isolation, Tenant};

/// Failure reasons besides the measurement's own (see [`crate::measure::REASONS`]).
pub const OTHER_REASONS: [&str; 4] = ["no_database_url", "no_schema_name", "unknown_isolation_model", "emit"];

/// The gauges one measurement becomes.
pub const STORAGE_METRIC: &str = "storage_bytes";
pub const USERS_METRIC: &str = "active_users";
/// The `source` of the emitted events.
pub const SOURCE: &str = "tally-collector";

/// What a sweep did.
#[derive(Debug, Default)]
pub struct Report {
    pub measured: Vec<(String, Measurement)>,
    /// (tenant, reason, detail), for every tenant not measured or not emitted.
    pub failures: Vec<(String, &'static str, String)>,
    pub seconds: f64,
}

/// The sample slot of `at`: the start of its interval, in Unix seconds.
pub fn slot(at: DateTime<Utc>, interval_secs: u64) -> i64 {
    let interval = i64::try_from(interval_secs.max(1)).unwrap_or(i64::MAX);
    at.timestamp().div_euclid(interval) * interval
}

/// The id of `metric`'s sample in `slot`.
pub fn event_id(metric: &str, slot: i64) -> String {
    format!("collector-{metric}-{slot}")
}

fn gauge(tenant: &str, metric: &str, value: i64, slot: i64, at: DateTime<Utc>) -> Result<UsageEvent, EmitError> {
    let invalid = |(_, message): (tally_schemas::Rule, String)| EmitError::Invalid(message);
    Ok(UsageEvent {
        id: EventId::parse(event_id(metric, slot)).map_err(invalid)?,
        tenant_id: TenantId::parse(tenant).map_err(invalid)?,
        metric: MetricName::parse(metric).map_err(invalid)?,
        value: Quantity::from_int(value),
        timestamp: at,
        source: SOURCE.to_owned(),
        attributes: Default::default(),
    })
}

/// Measures every active tenant of the registry once and emits what was measured.
pub async fn sweep(
    registry_pool: &PgPool,
    measurer: &Measurer,
    emitter: &Emitter,
    section: &CollectorSection,
    now: DateTime<Utc>,
) -> Result<Report, sqlx::Error> {
    let started = Instant::now();
    let (tenants, unmeasurable) = registry::load(registry_pool, section.shared_database_url.expose()).await?;
    let mut report = Report::default();
    for skipped in unmeasurable {
        report.failures.push((skipped.id, skipped.reason, "the registry row does not say where its data is".into()));
    }
    let mut shares: HashMap<String, Result<HashMap<String, i64>, Failure>> = HashMap::new();
    for tenant in &tenants {
        if let Isolation::Shared { url } = &tenant.isolation
            && !shares.contains_key(url)
        {
            shares.insert(url.clone(), measurer.shared_shares(url).await);
        }
    }
    let budget = Duration::from_millis(section.connect_timeout_ms + 2 * section.statement_timeout_ms + 1_000);
    // Each tenant's future owns what it uses, so the sweep is `Send` and can be spawned.
    let shares = Arc::new(shares);
    let measurements: Vec<_> = tenants
        .into_iter()
        .map(|tenant| {
            let (measurer, shares) = (measurer.clone(), Arc::clone(&shares));
            async move {
                let shared = match &tenant.isolation {
                    Isolation::Shared { url } => match shares.get(url) {
                        Some(Ok(by_tenant)) => Some(by_tenant.get(&tenant.id).copied().unwrap_or(0)),
                        Some(Err(failure)) => return (tenant, Err(failure.clone())),
                        None => None,
                    },
                    _ => None,
                };
                let outcome = match tokio::time::timeout(budget, measurer.measure(&tenant, shared)).await {
                    Ok(outcome) => outcome,
                    Err(_) => Err(Failure { reason: "timeout", detail: format!("not measured within {budget:?}") }),
                };
                (tenant, outcome)
            }
        })
        .collect();
    let outcomes: Vec<(Tenant, Result<Measurement, Failure>)> =
        stream::iter(measurements).buffer_unordered(section.concurrency.max(1)).collect().await;

    let slot = slot(now, section.interval_secs);
    let mut deliveries = Vec::new();
    for (tenant, outcome) in outcomes {
        match outcome {
            Ok(measurement) => {
                let events = [
                    gauge(&tenant.id, STORAGE_METRIC, measurement.storage_bytes, slot, now),
                    gauge(&tenant.id, USERS_METRIC, measurement.active_users, slot, now),
                ];
                let mut sent = Vec::new();
                for event in events {
                    match event {
                        Ok(event) => sent.push(emitter.emit(event).await),
                        Err(error) => sent.push(Err(error)),
                    }
                }
                deliveries.push((tenant, measurement, sent));
            }
            Err(failure) => {
                tracing::warn!(
                    tenant = tenant.id,
                    model = tenant.isolation.model(),
                    reason = failure.reason,
                    detail = failure.detail,
                    "tenant not measured"
                );
                report.failures.push((tenant.id, failure.reason, failure.detail));
            }
        }
    }
    for (tenant, measurement, sent) in deliveries {
        let mut emitted = Ok(());
        for delivery in sent {
            let acknowledged = match delivery {
                Ok(delivery) => delivery.acknowledged().await,
                Err(error) => Err(error),
            };
            if let Err(error) = acknowledged {
                emitted = Err(error);
            }
        }
        match emitted {
            Ok(()) => report.measured.push((tenant.id, measurement)),
            Err(error) => {
                tracing::warn!(tenant = tenant.id, error = %error, "measurement not emitted");
                report.failures.push((tenant.id, "emit", error.to_string()));
            }
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_the_same_within_a_slot_and_differ_across() {
        let at: DateTime<Utc> = "2026-12-02T10:07:30Z".parse().unwrap();
        let later: DateTime<Utc> = "2026-12-02T10:09:59Z".parse().unwrap();
        let next: DateTime<Utc> = "2026-12-02T10:10:00Z".parse().unwrap();
        assert_eq!(slot(at, 300), slot(later, 300));
        assert_ne!(slot(at, 300), slot(next, 300));
        assert_eq!(event_id("storage_bytes", slot(at, 300)), format!("collector-storage_bytes-{}", slot(at, 300)));
        let event = gauge("acme", STORAGE_METRIC, 42, slot(at, 300), at).unwrap();
        assert_eq!((event.value, event.source.as_str()), (Quantity::from_int(42), SOURCE));
    }
}
