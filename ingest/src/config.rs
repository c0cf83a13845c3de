//! Ingest's configuration: the shared connection sections plus its own `[http]`, `[producer]`
//! and `[auth]` tables.

use std::net::SocketAddr;

use serde::Deserialize;
pub use tally_kit::auth::AuthConfig;
pub use tally_kit::config::ProducerConfig;
use tally_kit::config::{KafkaConfig, PostgresConfig, TelemetryConfig};
use tally_schemas::{MetricCatalogue, Topics};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct IngestConfig {
    pub http: HttpConfig,
    pub producer: ProducerConfig,
    pub auth: AuthConfig,
    pub kafka: KafkaConfig,
    pub postgres: PostgresConfig,
    pub topics: Topics,
    /// The metric catalogue events are validated against.
    pub metrics: MetricCatalogue,
    pub telemetry: TelemetryConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// API and operations endpoints (`/v1/events`, `/livez`, `/readyz`, `/metrics`).
    pub listen: SocketAddr,
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// Most events in one request; more get 413.
    pub max_batch_events: usize,
    /// What `Retry-After` tells clients when the broker is slow or down.
    pub retry_after_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 16 * 1024 * 1024,
            max_batch_events: 10_000,
            retry_after_secs: 1,
        }
    }
}

impl tally_kit::service::ServiceConfig for IngestConfig {
    fn telemetry(&self) -> &TelemetryConfig {
        &self.telemetry
    }
}
