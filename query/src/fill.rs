//! `fill=zero`: a row for every window of every group, so a chart or a spreadsheet sees the
//! windows in which nothing happened. The groups are those the answer holds, plus those the query
//! names outright: each asked-for metric (per asked-for tenant when grouped by tenant), so a
//! metric with no events in the range still gives its windows.

use std::collections::{BTreeMap, BTreeSet};

use crate::request::UsageQuery;
use crate::sql::UsageRow;

/// A row's group: tenant (empty when not grouped by it), metric, attribute values.
type GroupKey = (String, String, Vec<Option<String>>);

fn key_of(row: &UsageRow) -> GroupKey {
    (row.tenant.clone(), row.metric.clone(), row.groups.clone())
}

/// The empty row of `key` in the window starting at `bucket` (`events == 0`: nothing happened).
fn empty(bucket: u32, (tenant, metric, groups): &GroupKey) -> UsageRow {
    UsageRow {
        bucket,
        tenant: tenant.clone(),
        metric: metric.clone(),
        groups: groups.clone(),
        events: 0,
        value_sum: 0,
        value_max: 0,
        latest_value: 0,
        latest_at: 0,
        distinct_count: 0,
    }
}

/// The groups a query names before any row is seen.
fn named_groups(query: &UsageQuery) -> Vec<GroupKey> {
    if !query.attributes.is_empty() {
        return Vec::new();
    }
    let tenants: Vec<String> = match (&query.tenants, query.by_tenant) {
        (_, false) => vec![String::new()],
        (Some(tenants), true) => tenants.clone(),
        (None, true) => Vec::new(),
    };
    let metrics = query.metrics.iter().map(|(name, _, _)| name);
    metrics.flat_map(|metric| tenants.iter().map(move |tenant| (tenant.clone(), metric.clone(), Vec::new()))).collect()
}

/// The window starts of `query`, as the rows' `bucket`s.
fn buckets(query: &UsageQuery) -> Vec<u32> {
    let starts = &query.boundaries[..query.boundaries.len().saturating_sub(1)];
    starts.iter().map(|at| u32::try_from(at.timestamp()).unwrap_or(0)).collect()
}

/// `rows` (one query's answer) with a zero row for every missing (window, group), in window
/// order, then tenant, metric and group values. `None` when that would be more than `max` rows.
pub fn zero_filled(query: &UsageQuery, rows: Vec<UsageRow>, max: u64) -> Option<Vec<UsageRow>> {
    let mut groups: BTreeSet<GroupKey> = named_groups(query).into_iter().collect();
    groups.extend(rows.iter().map(key_of));
    let buckets = buckets(query);
    if (buckets.len() as u64).saturating_mul(groups.len() as u64) > max {
        return None;
    }
    let mut found: BTreeMap<(u32, GroupKey), UsageRow> =
        rows.into_iter().map(|row| ((row.bucket, key_of(&row)), row)).collect();
    let mut filled = Vec::with_capacity(buckets.len() * groups.len());
    for bucket in buckets {
        for key in &groups {
            let row = found.remove(&(bucket, key.clone())).unwrap_or_else(|| empty(bucket, key));
            filled.push(row);
        }
    }
    Some(filled)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::config::QuerySection;
    use crate::request::{RawRequest, check};

    fn query(query_string: &str) -> UsageQuery {
        let catalogue = tally_schemas::MetricCatalogue::default();
        check(RawRequest::from_query_string(query_string).unwrap(), &catalogue, &QuerySection::default()).unwrap()
    }

    fn row(bucket: u32, tenant: &str, metric: &str, events: u64) -> UsageRow {
        UsageRow { events, value_sum: i128::from(events), ..empty(bucket, &(tenant.into(), metric.into(), Vec::new())) }
    }

    #[test]
    fn every_window_of_every_group_gets_a_row() {
        let q = query("metric=api_calls&from=2026-11-01&to=2026-11-04&window=day&group_by=tenant&tenant=a,b");
        let day = 86_400;
        let start = 1_793_491_200; // 2026-11-01T00:00:00Z
        let rows = vec![row(start + day, "a", "api_calls", 3), row(start + day, "c", "api_calls", 1)];
        let filled = zero_filled(&q, rows, 1_000).unwrap();
        let shape: Vec<(u32, &str, u64)> =
            filled.iter().map(|r| (r.bucket - start, r.tenant.as_str(), r.events)).collect();
        assert_eq!(
            shape,
            [
                (0, "a", 0),
                (0, "b", 0),
                (0, "c", 0),
                (day, "a", 3),
                (day, "b", 0),
                (day, "c", 1),
                (2 * day, "a", 0),
                (2 * day, "b", 0),
                (2 * day, "c", 0)
            ]
        );
        assert!(zero_filled(&q, Vec::new(), 5).is_none(), "6 rows are more than 5");
    }

    #[test]
    fn a_metric_without_events_still_gets_its_windows() {
        let q = query("metric=api_calls,storage_bytes&from=2026-11-01T00:00:00Z&to=2026-11-01T03:00:00Z&window=hour");
        let filled = zero_filled(&q, Vec::new(), 1_000).unwrap();
        assert_eq!(filled.len(), 6);
        assert!(filled.iter().all(|r| r.events == 0 && r.tenant.is_empty()));
    }
}
