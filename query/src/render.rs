//! Answer rows as JSON or CSV. Decimals are exact strings; times are RFC 3339 in the query's zone.
//! A counter shows `count` and `sum`, a gauge `count`, `latest`, `latest_at` and `max`, a unique
//! metric `count` and `distinct`; a filled window without events, a gauge's values as null.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};
use tally_schemas::{MetricKind, Quantity};

use crate::request::UsageQuery;
use crate::sql::UsageRow;
use crate::windows;

fn decimal(units: i128) -> String {
    Quantity::from_units(units).to_string()
}

fn kind_of(query: &UsageQuery, metric: &str) -> MetricKind {
    query.metrics.iter().find(|(name, _, _)| name == metric).map_or(MetricKind::Counter, |(_, kind, _)| *kind)
}

fn kind_name(kind: MetricKind) -> &'static str {
    match kind {
        MetricKind::Counter => "counter",
        MetricKind::Gauge => "gauge",
        MetricKind::Unique => "unique",
    }
}

/// The window `[start, end)` of a row.
fn window_of(query: &UsageQuery, bucket: u32) -> (DateTime<Utc>, DateTime<Utc>) {
    let start = DateTime::from_timestamp(i64::from(bucket), 0).unwrap_or(query.from);
    match query.boundaries.binary_search(&start) {
        Ok(index) if index + 1 < query.boundaries.len() => (start, query.boundaries[index + 1]),
        _ => {
            let end = query.window.map_or(query.to, |window| windows::next(window, query.zone, start));
            (start, end)
        }
    }
}

fn latest_at(query: &UsageQuery, nanos: i64) -> String {
    let at = DateTime::from_timestamp_nanos(nanos).with_timezone(&query.zone);
    at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// One row as a JSON object.
pub fn json_row(query: &UsageQuery, row: &UsageRow) -> Value {
    let (start, end) = window_of(query, row.bucket);
    let kind = kind_of(query, &row.metric);
    let mut object = Map::new();
    object.insert("window_start".into(), json!(windows::show(query.zone, start)));
    object.insert("window_end".into(), json!(windows::show(query.zone, end)));
    if query.by_tenant {
        object.insert("tenant_id".into(), json!(row.tenant));
    }
    object.insert("metric".into(), json!(row.metric));
    if !query.attributes.is_empty() {
        let group: Map<String, Value> =
            query.attributes.iter().zip(&row.groups).map(|(key, value)| (key.clone(), json!(value))).collect();
        object.insert("group".into(), Value::Object(group));
    }
    object.insert("kind".into(), json!(kind_name(kind)));
    object.insert("count".into(), json!(row.events));
    match kind {
        MetricKind::Counter => {
            object.insert("sum".into(), json!(decimal(row.value_sum)));
        }
        // A filled window without events has no latest value.
        MetricKind::Gauge if row.events == 0 => {
            object.insert("latest".into(), Value::Null);
            object.insert("latest_at".into(), Value::Null);
            object.insert("max".into(), Value::Null);
        }
        MetricKind::Gauge => {
            object.insert("latest".into(), json!(decimal(row.latest_value)));
            object.insert("latest_at".into(), json!(latest_at(query, row.latest_at)));
            object.insert("max".into(), json!(decimal(row.value_max)));
        }
        MetricKind::Unique => {
            object.insert("distinct".into(), json!(row.distinct_count));
        }
    }
    Value::Object(object)
}

/// The whole JSON answer.
pub fn json_answer(query: &UsageQuery, rows: &[UsageRow]) -> Value {
    json!({
        "from": windows::show(query.zone, query.from),
        "to": windows::show(query.zone, query.to),
        "window": query.window.map(|w| w.as_str()),
        "time_zone": query.zone.name(),
        "source": query.source.map_or("events", |g| g.as_str()),
        "rows": rows.iter().map(|row| json_row(query, row)).collect::<Vec<_>>(),
    })
}

fn csv_field(out: &mut String, value: &str) {
    if value.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&value.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(value);
    }
}

/// The CSV header line.
pub fn csv_header(query: &UsageQuery) -> String {
    let mut columns: Vec<String> = vec!["window_start".into(), "window_end".into()];
    if query.by_tenant {
        columns.push("tenant_id".into());
    }
    columns.push("metric".into());
    columns.extend(query.attributes.iter().cloned());
    columns.extend(["kind", "count", "sum", "latest", "latest_at", "max", "distinct"].map(String::from));
    let mut line = String::new();
    for (index, column) in columns.iter().enumerate() {
        if index > 0 {
            line.push(',');
        }
        csv_field(&mut line, column);
    }
    line.push_str("\r\n");
    line
}

/// Writes CSV rows, remembering the last window's labels: rows come window by window, and
/// formatting two times per row would be most of a row's cost.
#[derive(Debug, Default)]
pub struct CsvRows {
    labels: Option<(u32, String, String)>,
}

impl CsvRows {
    /// One row as a CSV line: the same values as [`json_row`], empty where a kind has none.
    pub fn write(&mut self, query: &UsageQuery, row: &UsageRow, out: &mut String) {
        if self.labels.as_ref().is_none_or(|(bucket, _, _)| *bucket != row.bucket) {
            let (start, end) = window_of(query, row.bucket);
            self.labels = Some((row.bucket, windows::show(query.zone, start), windows::show(query.zone, end)));
        }
        let Some((_, start, end)) = &self.labels else { return };
        let kind = kind_of(query, &row.metric);
        out.push_str(start);
        out.push(',');
        out.push_str(end);
        if query.by_tenant {
            out.push(',');
            csv_field(out, &row.tenant);
        }
        out.push(',');
        csv_field(out, &row.metric);
        for value in &row.groups {
            out.push(',');
            csv_field(out, value.as_deref().unwrap_or_default());
        }
        let _ = write!(out, ",{},{}", kind_name(kind), row.events);
        match kind {
            MetricKind::Counter => {
                let _ = write!(out, ",{},,,,", Quantity::from_units(row.value_sum));
            }
            MetricKind::Gauge if row.events == 0 => out.push_str(",,,,,"),
            MetricKind::Gauge => {
                let (latest, max) = (Quantity::from_units(row.latest_value), Quantity::from_units(row.value_max));
                let _ = write!(out, ",,{latest},{},{max},", latest_at(query, row.latest_at));
            }
            MetricKind::Unique => {
                let _ = write!(out, ",,,,,{}", row.distinct_count);
            }
        }
        out.push_str("\r\n");
    }
}
