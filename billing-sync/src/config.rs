//! billing-sync's configuration: the shared connection sections and `[billing]`.

use std::collections::BTreeMap;

use serde::Deserialize;
use tally_kit::Secret;
use tally_kit::config::{ClickHouseConfig, PostgresConfig, TelemetryConfig};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct BillingConfig {
    pub billing: BillingSection,
    pub postgres: PostgresConfig,
    pub clickhouse: ClickHouseConfig,
    pub telemetry: TelemetryConfig,
}

impl tally_kit::service::ServiceConfig for BillingConfig {
    fn telemetry(&self) -> &TelemetryConfig {
        &self.telemetry
    }
}

/// The billing window: each window's total is one meter event (plus corrections).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Window {
    Hour,
    Day,
}

impl Window {
    pub fn seconds(self) -> i64 {
        match self {
            Window::Hour => 3_600,
            Window::Day => 86_400,
        }
    }

    /// The rollup granularity the totals are read from.
    pub fn granularity(self) -> &'static str {
        match self {
            Window::Hour => "hour",
            Window::Day => "day",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BillingSection {
    /// Stripe's API base URL (the local stack's fake by default).
    pub stripe_url: String,
    pub stripe_key: Secret,
    pub window: Window,
    /// Windows this far back are synced (Stripe takes meter events up to 35 days old).
    pub lookback_days: i64,
    /// A window is synced once it closed this long ago; events later still become corrections.
    pub settle_minutes: i64,
    /// Meter events in flight at once.
    pub concurrency: usize,
    /// Attempts per meter event on 429, 5xx, timeouts and lost answers (backoff with jitter).
    pub max_attempts: u32,
    pub request_timeout_ms: u64,
    /// Billable metric → the Stripe meter's `event_name`.
    pub meters: BTreeMap<String, String>,
    /// Daemon mode: seconds between runs.
    pub interval_secs: u64,
}

impl Default for BillingSection {
    fn default() -> Self {
        Self {
            stripe_url: "http://127.0.0.1:12111".to_owned(),
            stripe_key: Secret::new("sk_test_local"),
            window: Window::Hour,
            lookback_days: 34,
            settle_minutes: 5,
            concurrency: 8,
            max_attempts: 8,
            request_timeout_ms: 10_000,
            meters: BTreeMap::from([
                ("api_calls".to_owned(), "api_calls".to_owned()),
                ("compute_seconds".to_owned(), "compute_seconds".to_owned()),
            ]),
            interval_secs: 300,
        }
    }
}
