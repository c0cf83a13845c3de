//! Ingest's Prometheus metrics (prefixed `tally_` by the registry). No tenant labels: tenant
//! cardinality is unbounded.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// The statuses `/v1/events` answers (see `ingest/openapi.yaml`).
pub const ANSWERED_STATUSES: [&str; 9] = ["202", "400", "401", "403", "413", "415", "422", "429", "503"];

#[derive(Debug, Clone)]
pub struct IngestMetrics {
    pub requests: IntCounterVec,
    pub accepted: IntCounter,
    pub rejected: IntCounterVec,
    pub publish_seconds: Histogram,
    pub queue_depth: IntGauge,
    pub dead_letter_failures: IntCounter,
}

impl IngestMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            requests: IntCounterVec::new(
                Opts::new("ingest_requests_total", "Event requests answered, by HTTP status"),
                &["status"],
            )?,
            accepted: IntCounter::new("ingest_events_accepted_total", "Events acknowledged by the broker")?,
            rejected: IntCounterVec::new(
                Opts::new("ingest_events_rejected_total", "Events refused, by reason (first broken rule)"),
                &["reason"],
            )?,
            publish_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "ingest_publish_seconds",
                    "Time from enqueue to broker acknowledgement of a request's events",
                )
                .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            )?,
            queue_depth: IntGauge::new("ingest_producer_queue_depth", "Messages waiting for broker acknowledgement")?,
            dead_letter_failures: IntCounter::new(
                "ingest_dead_letter_failures_total",
                "Refused events that could not be written to the dead-letter topic",
            )?,
        };
        registry.register(Box::new(metrics.requests.clone()))?;
        registry.register(Box::new(metrics.accepted.clone()))?;
        registry.register(Box::new(metrics.rejected.clone()))?;
        registry.register(Box::new(metrics.publish_seconds.clone()))?;
        registry.register(Box::new(metrics.queue_depth.clone()))?;
        registry.register(Box::new(metrics.dead_letter_failures.clone()))?;
        // Every documented status and refusal reason at 0, so alerts and dashboards see them
        // before the first.
        for status in ANSWERED_STATUSES {
            metrics.requests.with_label_values(&[status]);
        }
        for reason in tally_schemas::EventError::reason_codes().chain(["tenant_not_accepted"]) {
            metrics.rejected.with_label_values(&[reason]);
        }
        Ok(metrics)
    }
}
