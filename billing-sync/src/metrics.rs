//! billing-sync's metrics (`tally_billing_*`), served on `/metrics` in daemon mode.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::sync::Report;

/// Stripe's error codes for a meter event it will not take (a missing customer or meter, a value
/// or identifier it does not accept), pre-created at 0 in `tally_billing_refusals_total{code}`.
pub const STRIPE_REFUSAL_CODES: [&str; 5] = [
    "resource_missing",
    "parameter_invalid_integer",
    "parameter_invalid_string_length",
    "parameter_missing",
    "parameter_unknown",
];

#[derive(Debug, Clone)]
pub struct Metrics {
    pub last_success: IntGauge,
    pub oldest_unsynced: IntGauge,
    pub refused_windows: IntGauge,
    pub tenants_without_customer: IntGauge,
    pub rows: IntCounterVec,
    pub refusals: IntCounterVec,
    pub run_failures: IntCounter,
    pub run_seconds: Histogram,
}

impl Metrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            last_success: IntGauge::new(
                "billing_last_success_timestamp_seconds",
                "Unix time of the last run in which every row reached Stripe",
            )?,
            oldest_unsynced: IntGauge::new(
                "billing_oldest_unsynced_window_seconds",
                "Seconds since the end of the oldest window the last run had to send something for",
            )?,
            refused_windows: IntGauge::new(
                "billing_refused_windows",
                "Windows Stripe refused and that wait for their cause to be fixed",
            )?,
            tenants_without_customer: IntGauge::new(
                "billing_tenants_without_customer",
                "Tenants with billable usage but no row in stripe_customers",
            )?,
            rows: IntCounterVec::new(
                Opts::new("billing_rows_total", "Ledger rows that reached Stripe, by kind"),
                &["kind"],
            )?,
            refusals: IntCounterVec::new(
                Opts::new("billing_refusals_total", "Rows Stripe refused for good, by Stripe's error code"),
                &["code"],
            )?,
            run_failures: IntCounter::new(
                "billing_run_failures_total",
                "Runs that failed before sending (PostgreSQL, ClickHouse or Stripe unreachable)",
            )?,
            run_seconds: Histogram::with_opts(
                HistogramOpts::new("billing_run_seconds", "Duration of one sync run")
                    .buckets(vec![0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 1_800.0]),
            )?,
        };
        registry.register(Box::new(metrics.last_success.clone()))?;
        registry.register(Box::new(metrics.oldest_unsynced.clone()))?;
        registry.register(Box::new(metrics.refused_windows.clone()))?;
        registry.register(Box::new(metrics.tenants_without_customer.clone()))?;
        registry.register(Box::new(metrics.rows.clone()))?;
        registry.register(Box::new(metrics.refusals.clone()))?;
        registry.register(Box::new(metrics.run_failures.clone()))?;
        registry.register(Box::new(metrics.run_seconds.clone()))?;
        // Present from the start, so dashboards show 0 rather than "no data".
        for kind in ["event", "resent", "cancel", "negative"] {
            metrics.rows.with_label_values(&[kind]);
        }
        // The codes Stripe refuses meter events with (other codes appear when they happen).
        for code in STRIPE_REFUSAL_CODES {
            metrics.refusals.with_label_values(&[code]);
        }
        Ok(metrics)
    }

    pub fn observe(&self, report: &Report, now: i64) {
        self.oldest_unsynced.set(report.oldest_unsynced_lag_secs);
        self.refused_windows.set(i64::try_from(report.refused.len()).unwrap_or(i64::MAX));
        self.tenants_without_customer.set(i64::try_from(report.tenants_without_customer).unwrap_or(i64::MAX));
        let add = |kind: &str, n: usize| self.rows.with_label_values(&[kind]).inc_by(n as u64);
        add("event", report.sent - report.negative_corrections);
        add("negative", report.negative_corrections);
        add("resent", report.resent);
        add("cancel", report.cancelled);
        for refused in report.refused.iter().filter(|r| r.this_run) {
            self.refusals.with_label_values(&[refused.code.as_str()]).inc();
        }
        if report.failures.is_empty() && !report.unauthorized {
            self.last_success.set(now);
        }
    }
}
