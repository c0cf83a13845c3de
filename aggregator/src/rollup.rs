//! Rollups: per tenant × metric × window partial aggregates of a batch's counted events.
//!
//! Every column combines exactly across batches (sum, max, max of a tuple, union of sets), so the
//! rollup rows of many batches add up to the same totals as one pass over all their events.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
pub use tally_kit::rollups::{Granularity, RollupRow};
use tally_schemas::{MetricCatalogue, MetricKind, UsageEvent};

#[derive(Debug)]
struct Partial {
    events: u64,
    sum: i128,
    max: i128,
    latest: (i64, String, i128),
    distinct: BTreeSet<String>,
}

type WindowKey<'a> = (Granularity, DateTime<Utc>, &'a str, &'a str);

/// The rollup rows of a set of counted events, in a deterministic order.
pub fn rollup<'a>(events: impl IntoIterator<Item = &'a UsageEvent>, catalogue: &MetricCatalogue) -> Vec<RollupRow> {
    let mut windows: BTreeMap<WindowKey<'a>, Partial> = BTreeMap::new();
    for event in events {
        let value = event.value.units();
        let at = event.timestamp.timestamp_nanos_opt().unwrap_or(i64::MAX);
        let distinct_value = catalogue.get(&event.metric).and_then(|def| match def.kind {
            MetricKind::Unique => def.distinct_by.as_ref().and_then(|key| event.attributes.get(key)),
            MetricKind::Counter | MetricKind::Gauge => None,
        });
        for granularity in Granularity::ALL {
            let key = (
                granularity,
                granularity.window_start(event.timestamp),
                event.tenant_id.as_str(),
                event.metric.as_str(),
            );
            let partial = windows.entry(key).or_insert_with(|| Partial {
                events: 0,
                sum: 0,
                max: value,
                latest: (at, event.id.as_str().to_owned(), value),
                distinct: BTreeSet::new(),
            });
            partial.events += 1;
            partial.sum += value;
            partial.max = partial.max.max(value);
            if (at, event.id.as_str()) > (partial.latest.0, partial.latest.1.as_str()) {
                partial.latest = (at, event.id.as_str().to_owned(), value);
            }
            if let Some(distinct_value) = distinct_value {
                partial.distinct.insert(distinct_value.clone());
            }
        }
    }
    windows
        .into_iter()
        .map(|((granularity, start, tenant, metric), partial)| RollupRow {
            granularity: granularity.as_str(),
            window_start: u32::try_from(start.timestamp()).unwrap_or(0),
            tenant_id: tenant.to_owned(),
            metric: metric.to_owned(),
            events: partial.events,
            value_sum: partial.sum,
            value_max: partial.max,
            latest: partial.latest,
            distinct_values: partial.distinct.into_iter().collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_schemas::{EventId, MetricName, Quantity, TenantId};

    fn catalogue() -> MetricCatalogue {
        tally_testkit::catalogue_with_unique()
    }

    fn event(id: &str, metric: &str, value: i64, at: &str, user: Option<&str>) -> UsageEvent {
        UsageEvent {
            id: EventId::parse(id).unwrap(),
            tenant_id: TenantId::parse("acme").unwrap(),
            metric: MetricName::parse(metric).unwrap(),
            value: Quantity::from_int(value),
            timestamp: at.parse().unwrap(),
            source: "test".to_owned(),
            attributes: user.map(|u| [("user_id".to_owned(), u.to_owned())].into()).unwrap_or_default(),
        }
    }

    #[test]
    fn counters_sum_gauges_keep_latest_and_max_uniques_collect() {
        let catalogue = catalogue();
        let events = [
            event("a", "api_calls", 2, "2026-11-01T10:00:05Z", None),
            event("b", "api_calls", 3, "2026-11-01T10:00:50Z", None),
            event("c", "api_calls", 7, "2026-11-01T10:01:00Z", None),
            event("d", "storage_bytes", 900, "2026-11-01T10:00:30Z", None),
            event("e", "storage_bytes", 500, "2026-11-01T10:00:40Z", None),
            event("f", "distinct_users", 1, "2026-11-01T10:00:01Z", Some("u1")),
            event("g", "distinct_users", 1, "2026-11-01T10:00:02Z", Some("u1")),
            event("h", "distinct_users", 1, "2026-11-01T10:00:03Z", Some("u2")),
        ];
        let rows = rollup(&events, &catalogue);
        let find = |granularity: &str, metric: &str| -> Vec<&RollupRow> {
            rows.iter().filter(|r| r.granularity == granularity && r.metric == metric).collect()
        };
        let minutes = find("minute", "api_calls");
        assert_eq!(minutes.len(), 2);
        assert_eq!((minutes[0].events, minutes[0].value_sum), (2, 5_000_000_000));
        let hour = find("hour", "api_calls");
        assert_eq!((hour[0].events, hour[0].value_sum), (3, 12_000_000_000));
        let storage = find("day", "storage_bytes");
        assert_eq!(storage[0].value_max, 900_000_000_000);
        assert_eq!(storage[0].latest.2, 500_000_000_000, "the latest by event time, not by arrival");
        let users = find("month", "distinct_users");
        assert_eq!(users[0].distinct_values, vec!["u1".to_owned(), "u2".to_owned()]);
        assert_eq!(rows.len(), 4 + 3 * 3, "api_calls spans two minutes; every metric one hour, day and month");
    }

    #[test]
    fn order_of_events_does_not_change_the_rows() {
        let catalogue = catalogue();
        let mut events = vec![
            event("x", "storage_bytes", 1, "2026-11-01T10:00:00Z", None),
            event("y", "storage_bytes", 2, "2026-11-01T10:00:00Z", None),
        ];
        let forward = rollup(&events, &catalogue);
        events.reverse();
        assert_eq!(forward, rollup(&events, &catalogue));
        assert_eq!(forward[0].latest.1, "y", "equal times: the larger id is the latest");
    }
}
