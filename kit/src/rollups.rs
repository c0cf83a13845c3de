//! The ClickHouse rollup contract shared by the services: the window sizes, one row of
//! `usage_events` and of `usage_rollups` (see `schemas/clickhouse/0002_aggregator.sql`; the aggregator writes it), and
//! the current-usage read model over it (the enforcer reads it; `aggregator/ANALYSTS.md`,
//! "Current usage").
//!
//! A counted event is visible in current usage as soon as its batch is stored: within the batch
//! linger (`[aggregator] linger_ms`, 500 ms by default) plus one insert. The query reads one row
//! per tenant × metric × month (fewer after merges), so the enforcer can poll it every second.

use chrono::{DateTime, Datelike, TimeZone, Timelike, Utc};
use clickhouse::{Client, Row};
use serde::{Deserialize, Serialize};

/// The window sizes rollups are kept at, in UTC. Other time zones are answered from `minute`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Granularity {
    Minute,
    Hour,
    Day,
    Month,
}

impl Granularity {
    pub const ALL: [Granularity; 4] = [Granularity::Minute, Granularity::Hour, Granularity::Day, Granularity::Month];

    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Minute => "minute",
            Granularity::Hour => "hour",
            Granularity::Day => "day",
            Granularity::Month => "month",
        }
    }

    /// The start of the window holding `at`.
    pub fn window_start(self, at: DateTime<Utc>) -> DateTime<Utc> {
        let naive = at.naive_utc();
        let date = naive.date();
        let floored = match self {
            Granularity::Minute => date.and_hms_opt(naive.hour(), naive.minute(), 0),
            Granularity::Hour => date.and_hms_opt(naive.hour(), 0, 0),
            Granularity::Day => date.and_hms_opt(0, 0, 0),
            Granularity::Month => date.with_day(1).and_then(|first| first.and_hms_opt(0, 0, 0)),
        };
        // Every component above is in range for any valid date, so flooring cannot fail.
        floored.map_or(at, |naive| Utc.from_utc_datetime(&naive))
    }
}

/// One row of `usage_events`: a counted event, once (the aggregator writes it; the query service
/// reads it for attribute group-bys and filters).
#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct EventRow {
    pub tenant_id: String,
    pub event_id: String,
    pub metric: String,
    /// Units of 10⁻⁹.
    pub value: i128,
    /// Nanoseconds since the epoch.
    pub timestamp: i64,
    pub source: String,
    pub attributes: Vec<(String, String)>,
    /// Milliseconds since the epoch.
    pub ingested_at: i64,
    pub kafka_partition: u32,
    pub kafka_offset: u64,
}

/// One row of `usage_rollups` (see `schemas/clickhouse/0002_aggregator.sql`).
#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize)]
pub struct RollupRow {
    pub granularity: &'static str,
    /// Seconds since the epoch (`DateTime('UTC')`).
    pub window_start: u32,
    pub tenant_id: String,
    pub metric: String,
    pub events: u64,
    /// Units of 10⁻⁹ (`Decimal(38, 9)`).
    pub value_sum: i128,
    pub value_max: i128,
    /// (event time in ns, event id, value): the largest is the latest, ties broken by id.
    pub latest: (i64, String, i128),
    pub distinct_values: Vec<String>,
}

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

    #[test]
    fn windows_floor_in_utc() {
        let at: DateTime<Utc> = "2026-03-31T23:59:59.999Z".parse().unwrap();
        assert_eq!(Granularity::Minute.window_start(at).to_rfc3339(), "2026-03-31T23:59:00+00:00");
        assert_eq!(Granularity::Hour.window_start(at).to_rfc3339(), "2026-03-31T23:00:00+00:00");
        assert_eq!(Granularity::Day.window_start(at).to_rfc3339(), "2026-03-31T00:00:00+00:00");
        assert_eq!(Granularity::Month.window_start(at).to_rfc3339(), "2026-03-01T00:00:00+00:00");
    }
}
