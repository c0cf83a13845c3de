//! billing-sync's configuration: the shared connection sections and `[billing]`.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Deserialize;
use tally_kit::Secret;
use tally_kit::config::{ClickHouseConfig, PostgresConfig, TelemetryConfig};
use tally_schemas::Quantity;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
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

    pub fn parse(granularity: &str) -> Option<Self> {
        match granularity {
            "hour" => Some(Window::Hour),
            "day" => Some(Window::Day),
            _ => None,
        }
    }
}

/// How one billable metric is billed: the Stripe meter's `event_name` and the billing unit.
/// Written as a table `{ event_name = "…", unit = "1000" }`, or as the event name alone (unit 1).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum MeterSpec {
    Name(String),
    Full {
        event_name: String,
        /// Tally's amount per whole unit sent to Stripe (Stripe takes whole numbers only), e.g.
        /// `"1000"` to bill per thousand API calls or `"0.001"` to bill milliseconds of seconds.
        #[serde(default = "one")]
        unit: Quantity,
    },
}

fn one() -> Quantity {
    Quantity::from_int(1)
}

impl MeterSpec {
    pub fn event_name(&self) -> &str {
        match self {
            MeterSpec::Name(name) | MeterSpec::Full { event_name: name, .. } => name,
        }
    }

    pub fn unit(&self) -> Quantity {
        match self {
            MeterSpec::Name(_) => one(),
            MeterSpec::Full { unit, .. } => *unit,
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
    /// Attempts per Stripe request on 409, 429, 5xx, timeouts and lost answers (backoff with
    /// jitter) before the event is left for the next run.
    pub max_attempts: u32,
    pub request_timeout_ms: u64,
    /// Billable metric → its Stripe meter and billing unit.
    pub meters: BTreeMap<String, MeterSpec>,
    /// Daemon mode: seconds between runs.
    pub interval_secs: u64,
    /// Daemon mode: `/livez`, `/readyz` and `/metrics` (port 0 picks one).
    pub listen: SocketAddr,
    /// A window Stripe refused is tried again after this long, or at once when the tenant's
    /// Stripe customer changed.
    pub refusal_retry_minutes: i64,
    /// Over-billing is corrected by cancelling events Stripe received less than this long ago
    /// (Stripe cancels within 24 h; the margin covers clock drift), else by a negative event.
    pub cancel_within_hours: i64,
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
                ("api_calls".to_owned(), MeterSpec::Name("api_calls".to_owned())),
                ("compute_seconds".to_owned(), MeterSpec::Name("compute_seconds".to_owned())),
            ]),
            interval_secs: 300,
            listen: SocketAddr::from(([127, 0, 0, 1], 8084)),
            refusal_retry_minutes: 60,
            cancel_within_hours: 23,
        }
    }
}
