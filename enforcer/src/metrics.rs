//! The enforcer's Prometheus metrics (prefixed `tally_` by the registry). The one tenant label is
//! [`StorageAlertSeries`]'s, bounded by `[enforcer] alert_series_max`.

use std::sync::{Arc, Mutex, PoisonError};

use prometheus::{
    GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

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

/// `tally_enforcer_tenant_storage_percent{tenant}`: a series for each tenant at or above its
/// storage alert line (80 % of its cap), the most used first, at most `max` of them, and none for
/// a tenant below the line; `tally_enforcer_storage_alert_series_dropped` counts the tenants above
/// the line left without one because of `max`. So an alert can name the tenant while the label
/// set stays bounded however many tenants there are.
#[derive(Debug, Clone)]
pub struct StorageAlertSeries {
    percent: GaugeVec,
    dropped: IntGauge,
    shown: Arc<Mutex<Vec<String>>>,
}

impl StorageAlertSeries {
    /// Shows `above` (tenant, percent of its cap), the `max` most used.
    pub fn publish(&self, mut above: Vec<(String, f64)>, max: usize) {
        above.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let dropped = above.len().saturating_sub(max);
        above.truncate(max);
        let mut shown = self.shown.lock().unwrap_or_else(PoisonError::into_inner);
        for tenant in shown.iter().filter(|tenant| !above.iter().any(|(t, _)| t == *tenant)) {
            let _ = self.percent.remove_label_values(&[tenant]);
        }
        for (tenant, percent) in &above {
            self.percent.with_label_values(&[tenant]).set(*percent);
        }
        *shown = above.into_iter().map(|(tenant, _)| tenant).collect();
        self.dropped.set(i64::try_from(dropped).unwrap_or(i64::MAX));
    }
}

/// `tally_enforcer_grpc_seconds{method,code}`: every gRPC call, authentication included.
pub const GRPC_CODES: [&str; 6] =
    ["Ok", "Unauthenticated", "PermissionDenied", "InvalidArgument", "Unavailable", "Other"];

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
    pub storage_alert_series: StorageAlertSeries,
    /// gRPC call latency by method and status code.
    pub grpc_seconds: HistogramVec,
    /// `ShouldRateLimit`'s histograms, one per [`GRPC_CODES`] entry, resolved once (a label
    /// lookup per call would cost more than the check).
    pub should_rate_limit_seconds: Vec<Histogram>,
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
        for reason in ["unauthenticated", "forbidden", "invalid", "auth_unavailable"] {
            refusals.with_label_values(&[reason]);
        }
        let mut metrics = Self {
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
            storage_alert_series: StorageAlertSeries {
                percent: GaugeVec::new(
                    Opts::new(
                        "enforcer_tenant_storage_percent",
                        "Storage in % of the cap, for the tenants at or above the alert line (at most alert_series_max)",
                    ),
                    &["tenant"],
                )?,
                dropped: IntGauge::new(
                    "enforcer_storage_alert_series_dropped",
                    "Tenants at or above the storage alert line without a series (past alert_series_max)",
                )?,
                shown: Arc::default(),
            },
            grpc_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "enforcer_grpc_seconds",
                    "gRPC call latency (authentication included), by method and code",
                )
                .buckets(vec![
                    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5,
                ]),
                &["method", "code"],
            )?,
            should_rate_limit_seconds: Vec::new(),
        };
        metrics.should_rate_limit_seconds =
            GRPC_CODES.iter().map(|code| metrics.grpc_seconds.with_label_values(&["ShouldRateLimit", code])).collect();
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
        registry.register(Box::new(metrics.storage_alert_series.percent.clone()))?;
        registry.register(Box::new(metrics.storage_alert_series.dropped.clone()))?;
        registry.register(Box::new(metrics.grpc_seconds.clone()))?;
        Ok(metrics)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn storage_alert_series_show_the_most_used_tenants_only() {
        let registry = Registry::new();
        let metrics = EnforcerMetrics::register(&registry).unwrap();
        let series = &metrics.storage_alert_series;
        let shown = || -> Vec<(String, f64)> {
            let mut shown: Vec<(String, f64)> = registry
                .gather()
                .iter()
                .filter(|family| family.name() == "enforcer_tenant_storage_percent")
                .flat_map(|family| family.get_metric().to_vec())
                .map(|m| (m.get_label()[0].value().to_owned(), m.get_gauge().get_value()))
                .collect();
            shown.sort_by(|a, b| a.0.cmp(&b.0));
            shown
        };
        series.publish(vec![("a".into(), 81.0), ("b".into(), 95.0), ("c".into(), 88.0)], 2);
        assert_eq!(shown(), [("b".to_owned(), 95.0), ("c".to_owned(), 88.0)]);
        assert_eq!(series.dropped.get(), 1);
        // c drops below the line: its series goes, a takes its place.
        series.publish(vec![("a".into(), 81.0), ("b".into(), 96.0)], 2);
        assert_eq!(shown(), [("a".to_owned(), 81.0), ("b".to_owned(), 96.0)]);
        series.publish(Vec::new(), 2);
        assert!(shown().is_empty());
        assert_eq!(series.dropped.get(), 0);
    }
}
