//! The query service's `/metrics`. No tenant label (unbounded cardinality).

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

#[derive(Debug, Clone)]
pub struct QueryMetrics {
    /// `tally_query_requests_total{endpoint,method,status}`.
    pub requests: IntCounterVec,
    /// `tally_query_refusals_total{reason}`.
    pub refusals: IntCounterVec,
    /// `tally_query_seconds`: a usage query, request to answer.
    pub seconds: Histogram,
    /// `tally_query_rows_total`: rows answered.
    pub rows: IntCounter,
}

/// Refusal reasons, pre-created at 0 so dashboards see them before the first one.
pub const REFUSAL_REASONS: [&str; 8] = [
    "invalid_parameter",
    "unauthenticated",
    "forbidden",
    "auth_unavailable",
    "store_unavailable",
    "registry_unavailable",
    "enforcer_not_configured",
    "enforcer_unavailable",
];

impl QueryMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new("query_requests_total", "API requests answered, by endpoint, method and status"),
            &["endpoint", "method", "status"],
        )?;
        let refusals =
            IntCounterVec::new(Opts::new("query_refusals_total", "Usage queries refused, by reason"), &["reason"])?;
        let buckets = vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
        let seconds = Histogram::with_opts(
            HistogramOpts::new("query_seconds", "Usage query latency, request to answer").buckets(buckets),
        )?;
        let rows = IntCounter::new("query_rows_total", "Rows answered by usage queries")?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(refusals.clone()))?;
        registry.register(Box::new(seconds.clone()))?;
        registry.register(Box::new(rows.clone()))?;
        for reason in REFUSAL_REASONS {
            refusals.with_label_values(&[reason]);
        }
        Ok(Self { requests, refusals, seconds, rows })
    }
}
