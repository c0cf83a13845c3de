//! Current usage, as the enforcer reads it: each tenant's latest gauge values (storage bytes,
//! active users) and its current-period counter totals, from the month rollups.
//!
//! A counted event is visible here as soon as its batch is stored: within the batch linger
//! (`[aggregator] linger_ms`, 500 ms by default) plus one insert. The query reads one row per
//! tenant × metric × month (fewer after merges), so the enforcer can poll it every second.

use chrono::{DateTime, Datelike, TimeZone, Utc};
use clickhouse::{Client, Row};
use serde::Deserialize;

/// One tenant's usage of one metric.
#[derive(Debug, Clone, PartialEq, Eq, Row, Deserialize)]
pub struct CurrentUsage {
    pub tenant_id: String,
    pub metric: String,
    /// Gauges: the value of the latest event by event time, in units of 10⁻⁹.
    pub latest_value: i128,
    /// The time of that latest event, in nanoseconds since the epoch.
    pub latest_at: i64,
    /// Counters: the sum since the start of the current UTC month, in units of 10⁻⁹.
    pub period_total: i128,
    /// Events counted since the start of the current UTC month.
    pub period_events: u64,
    /// Unique metrics: distinct values since the start of the current UTC month.
    pub period_distinct: u64,
}

/// The first instant of `now`'s UTC calendar month: the period counters are totalled over.
pub fn period_start(now: DateTime<Utc>) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0).single().unwrap_or(now)
}

const CURRENT_USAGE: &str = "SELECT tenant_id, metric, \
       tupleElement(max(latest), 3) AS latest_value, \
       toUnixTimestamp64Nano(tupleElement(max(latest), 1)) AS latest_at, \
       sumIf(value_sum, window_start >= toDateTime(?, 'UTC')) AS period_total, \
       sumIf(events, window_start >= toDateTime(?, 'UTC')) AS period_events, \
       length(groupUniqArrayArrayIf(distinct_values, window_start >= toDateTime(?, 'UTC'))) AS period_distinct \
     FROM usage_rollups WHERE granularity = 'month'";

/// Every tenant's current usage (or one tenant's, with `tenant`).
pub async fn current_usage(
    client: &Client,
    tenant: Option<&str>,
    now: DateTime<Utc>,
) -> clickhouse::error::Result<Vec<CurrentUsage>> {
    let start = period_start(now).timestamp();
    let sql = match tenant {
        Some(_) => format!("{CURRENT_USAGE} AND tenant_id = ? GROUP BY tenant_id, metric ORDER BY tenant_id, metric"),
        None => format!("{CURRENT_USAGE} GROUP BY tenant_id, metric ORDER BY tenant_id, metric"),
    };
    let mut query = client.query(&sql).bind(start).bind(start).bind(start);
    if let Some(tenant) = tenant {
        query = query.bind(tenant);
    }
    query.fetch_all().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_period_is_the_utc_calendar_month() {
        let now: DateTime<Utc> = "2026-11-26T13:45:00Z".parse().unwrap();
        assert_eq!(period_start(now).to_rfc3339(), "2026-11-01T00:00:00+00:00");
    }
}
