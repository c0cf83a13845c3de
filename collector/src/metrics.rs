//! The collector's Prometheus metrics (prefixed `tally_` by the registry); no tenant labels.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::measure::REASONS;

#[derive(Debug, Clone)]
pub struct CollectorMetrics {
    pub sweep_seconds: Histogram,
    /// Tenants measured and emitted.
    pub measured: IntCounter,
    /// Tenants not measured, by reason (every reason present from the start, at 0).
    pub failures: IntCounterVec,
    /// When the last sweep finished (Unix seconds).
    pub last_sweep: IntGauge,
}

impl CollectorMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            sweep_seconds: Histogram::with_opts(
                HistogramOpts::new("collector_sweep_seconds", "Time to measure every tenant once")
                    .buckets(vec![0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0]),
            )?,
            measured: IntCounter::new("collector_tenants_measured_total", "Tenants measured and emitted")?,
            failures: IntCounterVec::new(
                Opts::new("collector_failures_total", "Tenants not measured, by reason"),
                &["reason"],
            )?,
            last_sweep: IntGauge::new("collector_last_sweep_timestamp_seconds", "When the last sweep finished")?,
        };
        for reason in REASONS.iter().chain(crate::sweep::OTHER_REASONS.iter()) {
            metrics.failures.with_label_values(&[reason]);
        }
        registry.register(Box::new(metrics.sweep_seconds.clone()))?;
        registry.register(Box::new(metrics.measured.clone()))?;
        registry.register(Box::new(metrics.failures.clone()))?;
        registry.register(Box::new(metrics.last_sweep.clone()))?;
        Ok(metrics)
    }
}
