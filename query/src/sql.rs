//! The ClickHouse side of a usage query. The SQL is one of a few fixed texts chosen by the query's
//! shape (window size, rollups or raw events, order); everything a caller sent is bound as a
//! server-side parameter (`{name:Type}`), never written into the SQL.

use clickhouse::{Client, Row};
use serde::Deserialize;
use tally_schemas::MetricKind;

use crate::request::{Column, Order, UsageQuery};
use crate::windows::Window;

/// One answer row as ClickHouse returns it (both sources give the same columns).
#[derive(Debug, Clone, PartialEq, Eq, Row, Deserialize)]
pub struct UsageRow {
    /// Window start, seconds since the epoch.
    pub bucket: u32,
    /// Empty when not grouped by tenant.
    pub tenant: String,
    pub metric: String,
    /// The grouped attributes' values, in `group_by` order (`None`: the event had none).
    pub groups: Vec<Option<String>>,
    pub events: u64,
    /// Units of 10⁻⁹.
    pub value_sum: i128,
    pub value_max: i128,
    pub latest_value: i128,
    /// Nanoseconds since the epoch.
    pub latest_at: i64,
    pub distinct_count: u64,
}

/// The window start of a `DateTime` column `t`, in the zone `{tz}`.
fn bucket(window: Option<Window>) -> &'static str {
    match window {
        None => "{from:UInt32}",
        Some(Window::Minute) => "toUnixTimestamp(toStartOfMinute(t))",
        Some(Window::Hour) => "toUnixTimestamp(toStartOfHour(t, {tz:String}))",
        Some(Window::Day) => "toUnixTimestamp(toStartOfDay(t, {tz:String}))",
        Some(Window::Month) => "toUnixTimestamp(toDateTime(toStartOfMonth(t, {tz:String}), {tz:String}))",
    }
}

fn order_by(order: Order) -> &'static str {
    match order {
        Order::Window => "bucket, tenant, metric, groups",
        Order::Descending(Column::Sum) => "value_sum DESC, bucket, tenant, metric, groups",
        Order::Descending(Column::Count) => "events DESC, bucket, tenant, metric, groups",
        Order::Descending(Column::Max) => "value_max DESC, bucket, tenant, metric, groups",
        Order::Descending(Column::Latest) => "latest_value DESC, bucket, tenant, metric, groups",
        Order::Descending(Column::Distinct) => "distinct_count DESC, bucket, tenant, metric, groups",
        Order::Ascending(Column::Sum) => "value_sum, bucket, tenant, metric, groups",
        Order::Ascending(Column::Count) => "events, bucket, tenant, metric, groups",
        Order::Ascending(Column::Max) => "value_max, bucket, tenant, metric, groups",
        Order::Ascending(Column::Latest) => "latest_value, bucket, tenant, metric, groups",
        Order::Ascending(Column::Distinct) => "distinct_count, bucket, tenant, metric, groups",
    }
}

const TENANT_FILTER: &str = "({all_tenants:Bool} OR tenant_id IN {tenants:Array(String)})";

/// The SQL text for `query` (its parameters are bound by [`statement`]).
pub fn sql(query: &UsageQuery) -> String {
    let bucket = bucket(query.window);
    let order = order_by(query.order);
    match query.source {
        Some(_) => format!(
            "SELECT {bucket} AS bucket, if({{by_tenant:Bool}}, tenant_id, '') AS tenant, toString(metric) AS metric, \
               CAST([], 'Array(Nullable(String))') AS groups, \
               toUInt64(sum(events)) AS events, sum(value_sum) AS value_sum, max(value_max) AS value_max, \
               tupleElement(max(latest), 3) AS latest_value, \
               toUnixTimestamp64Nano(tupleElement(max(latest), 1)) AS latest_at, \
               toUInt64(length(groupUniqArrayArray(distinct_values))) AS distinct_count \
             FROM (SELECT *, window_start AS t FROM usage_rollups \
                   WHERE granularity = {{granularity:String}} \
                     AND window_start >= toDateTime({{from:UInt32}}, 'UTC') AND window_start < toDateTime({{to:UInt32}}, 'UTC') \
                     AND metric IN {{metrics:Array(String)}} AND {TENANT_FILTER}) \
             GROUP BY bucket, tenant, metric ORDER BY {order} LIMIT {{limit:UInt64}}"
        ),
        None => format!(
            "SELECT {bucket} AS bucket, if({{by_tenant:Bool}}, tenant_id, '') AS tenant, toString(metric) AS metric, \
               arrayMap(k -> if(mapContains(attributes, k), attributes[k], NULL), {{group_keys:Array(String)}}) AS groups, \
               count() AS events, sum(value) AS value_sum, max(value) AS value_max, \
               tupleElement(max((timestamp, event_id, value)), 3) AS latest_value, \
               toUnixTimestamp64Nano(tupleElement(max((timestamp, event_id, value)), 1)) AS latest_at, \
               uniqExactIf(attributes[distinct_key], distinct_key != '' AND mapContains(attributes, distinct_key)) AS distinct_count \
             FROM (SELECT *, toDateTime(timestamp, 'UTC') AS t, \
                     transform(toString(metric), {{unique_metrics:Array(String)}}, {{distinct_keys:Array(String)}}, '') AS distinct_key \
                   FROM usage_events \
                   WHERE timestamp >= toDateTime64({{from:UInt32}}, 9, 'UTC') AND timestamp < toDateTime64({{to:UInt32}}, 9, 'UTC') \
                     AND metric IN {{metrics:Array(String)}} AND {TENANT_FILTER} \
                     AND arrayAll((k, vs) -> has(vs, attributes[k]) AND mapContains(attributes, k), \
                                  {{filter_keys:Array(String)}}, {{filter_values:Array(Array(String))}})) \
             GROUP BY bucket, tenant, metric, groups ORDER BY {order} LIMIT {{limit:UInt64}}"
        ),
    }
}

/// `query` as a ClickHouse statement with every parameter bound, fetching at most `rows` rows.
pub fn statement(client: &Client, query: &UsageQuery, rows: u64, max_execution_secs: u32) -> clickhouse::query::Query {
    let seconds = |at: chrono::DateTime<chrono::Utc>| u32::try_from(at.timestamp()).unwrap_or(0);
    let metrics: Vec<&str> = query.metrics.iter().map(|(name, _, _)| name.as_str()).collect();
    let (unique_metrics, distinct_keys): (Vec<&str>, Vec<&str>) = query
        .metrics
        .iter()
        .filter(|(_, kind, _)| *kind == MetricKind::Unique)
        .filter_map(|(name, _, key)| Some((name.as_str(), key.as_deref()?)))
        .unzip();
    let (filter_keys, filter_values): (Vec<&str>, Vec<&Vec<String>>) =
        query.filters.iter().map(|(key, values)| (key.as_str(), values)).unzip();
    let tenants: &[String] = query.tenants.as_deref().unwrap_or_default();
    let mut statement = client
        .query(&sql(query))
        .param("from", seconds(query.from))
        .param("to", seconds(query.to))
        .param("tz", query.zone.name())
        .param("by_tenant", query.by_tenant)
        .param("metrics", metrics)
        .param("all_tenants", query.tenants.is_none())
        .param("tenants", tenants)
        .param("limit", rows)
        .with_setting("max_execution_time", max_execution_secs.to_string())
        .with_setting("readonly", "2");
    statement = match query.source {
        Some(granularity) => statement.param("granularity", granularity.as_str()),
        None => statement
            .param("group_keys", &query.attributes)
            .param("unique_metrics", unique_metrics)
            .param("distinct_keys", distinct_keys)
            .param("filter_keys", filter_keys)
            .param("filter_values", filter_values),
    };
    statement
}

/// Runs `query`, returning at most `rows` rows.
pub async fn fetch(
    client: &Client,
    query: &UsageQuery,
    rows: u64,
    max_execution_secs: u32,
) -> clickhouse::error::Result<Vec<UsageRow>> {
    statement(client, query, rows, max_execution_secs).fetch_all().await
}
