//! The query service's configuration: ClickHouse, the platform database (keys, tenants), the
//! metric catalogue, and `[query]` (bounds, and where the enforcer answers limits).

use std::net::SocketAddr;

use serde::Deserialize;
use tally_kit::auth::AuthConfig;
use tally_kit::config::{ClickHouseConfig, PostgresConfig, TelemetryConfig};
use tally_schemas::MetricCatalogue;

/// Other services' sections are tolerated (one file or environment may configure several).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct QueryConfig {
    pub query: QuerySection,
    pub clickhouse: ClickHouseConfig,
    /// API keys and the tenant registry.
    pub postgres: PostgresConfig,
    pub auth: AuthConfig,
    pub metrics: MetricCatalogue,
    pub telemetry: TelemetryConfig,
}

impl tally_kit::service::ServiceConfig for QueryConfig {
    fn telemetry(&self) -> &TelemetryConfig {
        &self.telemetry
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuerySection {
    /// The API, and `/livez`, `/readyz`, `/metrics`, `/openapi.yaml`.
    pub listen: SocketAddr,
    /// Longest `to - from`.
    pub max_range_days: u32,
    /// Most windows one query may span.
    pub max_windows: usize,
    /// Most tenants one `tenant` filter may name.
    pub max_tenants: usize,
    /// Most rows one answer may hold (and the largest `limit`).
    pub max_rows: usize,
    /// ClickHouse's `max_execution_time` for every query.
    pub max_execution_time_secs: u32,
    /// Rows a CSV answer holds in memory; a longer one streams (see [`crate::stream`]).
    pub stream_after_rows: usize,
    /// The enforcer's HTTP address (e.g. `http://enforcer:8082`), which answers
    /// `/v1/tenants/{id}/limits` for the console; unset, the console shows no limits.
    pub enforcer_url: Option<String>,
}

impl Default for QuerySection {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8086)),
            max_range_days: 400,
            max_windows: 50_000,
            max_tenants: 1_000,
            max_rows: 200_000,
            max_execution_time_secs: 10,
            stream_after_rows: 5_000,
            enforcer_url: None,
        }
    }
}
