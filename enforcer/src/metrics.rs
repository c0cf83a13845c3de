//! The enforcer's Prometheus metrics (prefixed `tally_` by the registry); no tenant labels.

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

#[derive(Debug, Clone)]
pub struct EnforcerMetrics {
    /// Decisions by kind (`rate`, `users`, `storage`) and outcome (`allowed`, `denied`, `degraded`).
    pub decisions: IntCounterVec,
    /// HTTP check latency by endpoint.
    pub latency: HistogramVec,
    /// Seconds since the usage state / tenant registry was last refreshed.
    pub usage_age_seconds: IntGauge,
    pub registry_age_seconds: IntGauge,
    pub tenants_known: IntGauge,
    /// Tenants with live rate-limit state.
    pub tenants_tracked: IntGauge,
    pub storage_alerts: IntCounter,
    pub tenants_above_storage_alert: IntGauge,
}

impl EnforcerMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            decisions: IntCounterVec::new(
                Opts::new("enforcer_decisions_total", "Check answers by kind and outcome"),
                &["kind", "outcome"],
            )?,
            latency: HistogramVec::new(
                HistogramOpts::new("enforcer_check_seconds", "Time to answer a check over HTTP").buckets(vec![
                    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5,
                ]),
                &["endpoint"],
            )?,
            usage_age_seconds: IntGauge::new("enforcer_usage_age_seconds", "Age of the usage state")?,
            registry_age_seconds: IntGauge::new("enforcer_registry_age_seconds", "Age of the tenant registry")?,
            tenants_known: IntGauge::new("enforcer_tenants_known", "Tenants in the registry")?,
            tenants_tracked: IntGauge::new("enforcer_tenants_tracked", "Tenants with live rate-limit state")?,
            storage_alerts: IntCounter::new("enforcer_storage_alerts_total", "Storage 80 % crossings alerted")?,
            tenants_above_storage_alert: IntGauge::new(
                "enforcer_tenants_above_storage_alert",
                "Tenants at or above 80 % of their storage cap",
            )?,
        };
        registry.register(Box::new(metrics.decisions.clone()))?;
        registry.register(Box::new(metrics.latency.clone()))?;
        registry.register(Box::new(metrics.usage_age_seconds.clone()))?;
        registry.register(Box::new(metrics.registry_age_seconds.clone()))?;
        registry.register(Box::new(metrics.tenants_known.clone()))?;
        registry.register(Box::new(metrics.tenants_tracked.clone()))?;
        registry.register(Box::new(metrics.storage_alerts.clone()))?;
        registry.register(Box::new(metrics.tenants_above_storage_alert.clone()))?;
        Ok(metrics)
    }
}
