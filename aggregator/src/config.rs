//! The aggregator's configuration: the shared connection sections plus its own `[aggregator]`.

use std::net::SocketAddr;

use serde::Deserialize;
use tally_kit::config::{ClickHouseConfig, KafkaConfig, ProducerConfig, TelemetryConfig};
use tally_schemas::{MetricCatalogue, Topics};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct AggregatorConfig {
    pub aggregator: AggregatorSection,
    pub kafka: KafkaConfig,
    pub clickhouse: ClickHouseConfig,
    /// The dead-letter producer.
    pub producer: ProducerConfig,
    pub topics: Topics,
    /// The metric catalogue events are checked against (the same one ingest uses).
    pub metrics: MetricCatalogue,
    pub telemetry: TelemetryConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AggregatorSection {
    /// `/livez`, `/readyz` and `/metrics`.
    pub listen: SocketAddr,
    /// The consumer group every aggregator instance of a deployment shares.
    pub group_id: String,
    /// This instance's static group membership (`group.instance.id`): a restarted instance with
    /// the same id takes its partitions back at once, without a rebalance. Unique per instance.
    pub instance_id: String,
    /// How long the group waits for a silent instance before handing its partitions to others.
    pub session_timeout_ms: u32,
    /// A partition's batch is stored when it holds this many messages…
    pub max_batch_events: usize,
    /// …or when its oldest message waited this long (bounds the delay to the rollups).
    pub linger_ms: u64,
    /// Messages buffered per partition before its consumption pauses (ClickHouse slow or down).
    pub max_buffered_events: usize,
    /// First and largest wait between attempts to store a batch when ClickHouse or the broker fails.
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// How often consumer lag per partition is measured for `/metrics`.
    pub lag_interval_ms: u64,
    /// Startup refuses a table with a smaller `non_replicated_deduplication_window` (blocks): a
    /// replayed batch must still find the blocks it stored before.
    pub min_dedup_window: u64,
}

impl Default for AggregatorSection {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            group_id: "tally-aggregator".to_owned(),
            instance_id: "aggregator-0".to_owned(),
            session_timeout_ms: 10_000,
            max_batch_events: 50_000,
            linger_ms: 500,
            max_buffered_events: 200_000,
            retry_initial_ms: 100,
            retry_max_ms: 5_000,
            lag_interval_ms: 5_000,
            min_dedup_window: 1_000,
        }
    }
}

impl AggregatorSection {
    /// Refuses settings that cannot work, saying which to fix.
    pub fn check(&self) -> Result<(), String> {
        if self.group_id.trim().is_empty() || self.instance_id.trim().is_empty() {
            return Err("[aggregator] group_id and instance_id must not be empty".to_owned());
        }
        if self.max_batch_events == 0 || self.max_batch_events > 500_000 {
            return Err(format!(
                "[aggregator] max_batch_events = {} must be between 1 and 500000 (a batch is one insert per table)",
                self.max_batch_events
            ));
        }
        if self.max_buffered_events < self.max_batch_events {
            return Err("[aggregator] max_buffered_events must be at least max_batch_events".to_owned());
        }
        if self.retry_initial_ms == 0 || self.retry_max_ms < self.retry_initial_ms {
            return Err("[aggregator] retry_initial_ms must be > 0 and <= retry_max_ms".to_owned());
        }
        Ok(())
    }
}

impl tally_kit::service::ServiceConfig for AggregatorConfig {
    fn telemetry(&self) -> &TelemetryConfig {
        &self.telemetry
    }
}
