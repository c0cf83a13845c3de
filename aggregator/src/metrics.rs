//! The aggregator's Prometheus metrics (prefixed `tally_` by the registry). Partition labels are
//! bounded by the topic's partition count; there are no tenant labels.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

#[derive(Debug, Clone)]
pub struct AggregatorMetrics {
    /// Events stored and counted.
    pub counted: IntCounter,
    /// Events not counted because their (tenant, id) was counted already: `in_batch` or `earlier`.
    pub duplicates: IntCounterVec,
    /// Counted events that arrived more than five minutes after their timestamp.
    pub late: IntCounter,
    /// Messages dead-lettered, by reason.
    pub dead_lettered: IntCounterVec,
    pub batch_messages: Histogram,
    /// Seconds to store a batch (plan, lookup, inserts, checkpoint), by outcome.
    pub store_seconds: Histogram,
    /// Failed attempts to store a batch, by stage; each is retried.
    pub store_failures: IntCounterVec,
    /// Messages behind the partition's high watermark, by partition.
    pub lag: IntGaugeVec,
    /// Partitions this instance owns (1) or not (absent).
    pub assigned: IntGaugeVec,
    /// Plans found unfinished on assignment and replayed.
    pub replays: IntCounter,
    /// Batch inserts the server refused because the partition had moved past the batch (a stale
    /// writer: paused, or cut off while another instance took over).
    pub fenced: IntCounter,
}

/// `aggregator_duplicates_total{scope}`.
pub const DUPLICATE_SCOPES: [&str; 2] = ["in_batch", "earlier"];
/// Dead-letter reasons of the aggregator's own, besides the event rules' codes.
pub const DEAD_LETTER_REASONS: [&str; 1] = ["key_mismatch"];
/// `aggregator_store_failures_total{stage}`: where storing a batch can fail.
pub const STORE_STAGES: [&str; 7] =
    ["plan", "dedup_lookup", "insert", "checkpoint", "dead_letter", "position", "replica_sync"];

fn seconds(name: &str, help: &str) -> Result<Histogram, prometheus::Error> {
    Histogram::with_opts(
        HistogramOpts::new(name, help)
            .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
    )
}

impl AggregatorMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            counted: IntCounter::new("aggregator_events_counted_total", "Events stored and counted")?,
            duplicates: IntCounterVec::new(
                Opts::new("aggregator_duplicates_total", "Events not counted again: their (tenant, id) was counted"),
                &["scope"],
            )?,
            late: IntCounter::new("aggregator_late_events_total", "Counted events older than five minutes on arrival")?,
            dead_lettered: IntCounterVec::new(
                Opts::new("aggregator_dead_lettered_total", "Messages sent to the dead-letter topic, by reason"),
                &["reason"],
            )?,
            batch_messages: Histogram::with_opts(
                HistogramOpts::new("aggregator_batch_messages", "Messages per stored batch")
                    .buckets(prometheus::exponential_buckets(1.0, 4.0, 10)?),
            )?,
            store_seconds: seconds("aggregator_store_seconds", "Time to store one batch in ClickHouse")?,
            store_failures: IntCounterVec::new(
                Opts::new("aggregator_store_failures_total", "Failed attempts to store a batch (retried), by stage"),
                &["stage"],
            )?,
            lag: IntGaugeVec::new(
                Opts::new("aggregator_consumer_lag", "Messages not yet stored, by partition"),
                &["partition"],
            )?,
            assigned: IntGaugeVec::new(
                Opts::new("aggregator_partitions_assigned", "Partitions this instance consumes"),
                &["partition"],
            )?,
            replays: IntCounter::new(
                "aggregator_replays_total",
                "Unfinished batches found on assignment and replayed",
            )?,
            fenced: IntCounter::new(
                "aggregator_fenced_batches_total",
                "Batch inserts refused because another instance had stored the batch (a stale writer)",
            )?,
        };
        registry.register(Box::new(metrics.counted.clone()))?;
        registry.register(Box::new(metrics.duplicates.clone()))?;
        registry.register(Box::new(metrics.late.clone()))?;
        registry.register(Box::new(metrics.dead_lettered.clone()))?;
        registry.register(Box::new(metrics.batch_messages.clone()))?;
        registry.register(Box::new(metrics.store_seconds.clone()))?;
        registry.register(Box::new(metrics.store_failures.clone()))?;
        registry.register(Box::new(metrics.lag.clone()))?;
        registry.register(Box::new(metrics.assigned.clone()))?;
        registry.register(Box::new(metrics.replays.clone()))?;
        registry.register(Box::new(metrics.fenced.clone()))?;
        // Every known label value at 0, so dashboards and alerts see the series before the first.
        for scope in DUPLICATE_SCOPES {
            metrics.duplicates.with_label_values(&[scope]);
        }
        for reason in tally_schemas::EventError::reason_codes().chain(DEAD_LETTER_REASONS) {
            metrics.dead_lettered.with_label_values(&[reason]);
        }
        for stage in STORE_STAGES {
            metrics.store_failures.with_label_values(&[stage]);
        }
        Ok(metrics)
    }
}
