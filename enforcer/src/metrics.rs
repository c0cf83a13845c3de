//! The enforcer's Prometheus metrics (prefixed `tally_` by the registry); no tenant labels.

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// The decision counters, resolved once (a label lookup per check would cost more than the check).
#[derive(Debug, Clone)]
pub struct DecisionCounters {
    /// Indexed by kind (rate, users, storage), then outcome (allowed, denied, degraded).
    counters: [[IntCounter; 3]; 3],
}

impl DecisionCounters {
    fn new(vec: &IntCounterVec) -> Self {
        let row = |kind: &str| ["allowed", "denied", "degraded"].map(|outcome| vec.with_label_values(&[kind, outcome]));
        Self { counters: [row("rate"), row("users"), row("storage")] }
    }

    pub fn get(&self, kind: usize, outcome: usize) -> &IntCounter {
        &self.counters[kind][outcome]
    }
}

/// The HTTP latency histograms by endpoint, resolved once.
#[derive(Debug, Clone)]
pub struct EndpointLatency {
    pub rate: Histogram,
    pub users: Histogram,
    pub storage: Histogram,
    pub combined: Histogram,
    /// Envoy RLS over gRPC.
    pub rls: Histogram,
}

#[derive(Debug, Clone)]
pub struct EnforcerMetrics {
    pub decision_counters: DecisionCounters,
    pub endpoint_latency: EndpointLatency,
    /// Decisions by kind (`rate`, `users`, `storage`) and outcome (`allowed`, `denied`, `degraded`).
    pub decisions: IntCounterVec,
    /// HTTP check latency by endpoint.
    pub latency: HistogramVec,
    /// Seconds since the usage state / tenant registry was last refreshed.
    pub usage_age_seconds: IntGauge,
    pub registry_age_seconds: IntGauge,
    pub tenants_known: IntGauge,
    pub storage_alerts: IntCounter,
    pub tenants_above_storage_alert: IntGauge,
    /// Rate checks the shared store (Redis) failed or did not answer in time.
    pub rate_store_errors: IntCounter,
    /// Requests refused before any check: `unauthenticated`, `forbidden`, `invalid`.
    pub refusals: IntCounterVec,
    /// Bytes the denial audit log holds.
    pub audit_log_bytes: IntGauge,
}

impl EnforcerMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let decisions = IntCounterVec::new(
            Opts::new("enforcer_decisions_total", "Check answers by kind and outcome"),
            &["kind", "outcome"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "enforcer_check_seconds",
                "Time to answer a check (HTTP endpoints, and rls for Envoy's gRPC)",
            )
            .buckets(vec![0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5]),
            &["endpoint"],
        )?;
        let endpoint_latency = EndpointLatency {
            rate: latency.with_label_values(&["rate"]),
            users: latency.with_label_values(&["users"]),
            storage: latency.with_label_values(&["storage"]),
            combined: latency.with_label_values(&["combined"]),
            rls: latency.with_label_values(&["rls"]),
        };
        let refusals = IntCounterVec::new(
            Opts::new("enforcer_refusals_total", "Requests refused before any check, by reason"),
            &["reason"],
        )?;
        for reason in ["unauthenticated", "forbidden", "invalid"] {
            refusals.with_label_values(&[reason]);
        }
        let metrics = Self {
            decision_counters: DecisionCounters::new(&decisions),
            endpoint_latency,
            latency,
            decisions,
            usage_age_seconds: IntGauge::new("enforcer_usage_age_seconds", "Age of the usage state")?,
            registry_age_seconds: IntGauge::new("enforcer_registry_age_seconds", "Age of the tenant registry")?,
            tenants_known: IntGauge::new("enforcer_tenants_known", "Tenants in the registry")?,
            storage_alerts: IntCounter::new("enforcer_storage_alerts_total", "Storage 80 % crossings alerted")?,
            tenants_above_storage_alert: IntGauge::new(
                "enforcer_tenants_above_storage_alert",
                "Tenants at or above 80 % of their storage cap",
            )?,
            rate_store_errors: IntCounter::new(
                "enforcer_rate_store_errors_total",
                "Rate checks the shared store failed or did not answer in time (the failure policy answered)",
            )?,
            refusals,
            audit_log_bytes: IntGauge::new("enforcer_audit_log_bytes", "Bytes held by the denial audit log")?,
        };
        registry.register(Box::new(metrics.decisions.clone()))?;
        registry.register(Box::new(metrics.latency.clone()))?;
        registry.register(Box::new(metrics.usage_age_seconds.clone()))?;
        registry.register(Box::new(metrics.registry_age_seconds.clone()))?;
        registry.register(Box::new(metrics.tenants_known.clone()))?;
        registry.register(Box::new(metrics.storage_alerts.clone()))?;
        registry.register(Box::new(metrics.tenants_above_storage_alert.clone()))?;
        registry.register(Box::new(metrics.rate_store_errors.clone()))?;
        registry.register(Box::new(metrics.refusals.clone()))?;
        registry.register(Box::new(metrics.audit_log_bytes.clone()))?;
        Ok(metrics)
    }
}
