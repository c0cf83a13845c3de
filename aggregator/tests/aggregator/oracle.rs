//! The expected rollups, computed independently of the aggregator from what a test sent, and
//! a seeded stream of events with duplicates, late and invalid messages.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Datelike, TimeDelta, TimeZone, Utc};
use tally_schemas::{EventId, MetricCatalogue, MetricName, Quantity, TenantId, UsageEvent};

/// The default catalogue plus a unique metric counting distinct `user_id`s.
pub fn catalogue() -> MetricCatalogue {
    tally_testkit::catalogue_with_unique()
}

/// One window's expected figures.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Window {
    pub events: u64,
    pub total: i128,
    pub max_value: i128,
    /// (timestamp ns, id, value) of the latest event.
    pub latest: (i64, String, i128),
    pub distinct: BTreeSet<String>,
}

/// (granularity, window start seconds, tenant, metric)
pub type WindowKey = (String, u32, String, String);

fn floor(granularity: &str, at: DateTime<Utc>) -> u32 {
    let seconds = at.timestamp();
    let start = match granularity {
        "minute" => seconds - seconds.rem_euclid(60),
        "hour" => seconds - seconds.rem_euclid(3_600),
        "day" => seconds - seconds.rem_euclid(86_400),
        _ => Utc.with_ymd_and_hms(at.year(), at.month(), 1, 0, 0, 0).unwrap().timestamp(),
    };
    u32::try_from(start).unwrap()
}

/// The windows the given distinct events must produce.
pub fn expected_windows<'a>(events: impl IntoIterator<Item = &'a UsageEvent>) -> BTreeMap<WindowKey, Window> {
    let mut windows: BTreeMap<WindowKey, Window> = BTreeMap::new();
    for event in events {
        let at = event.timestamp.timestamp_nanos_opt().unwrap();
        let value = event.value.units();
        for granularity in ["minute", "hour", "day", "month"] {
            let key = (
                granularity.to_owned(),
                floor(granularity, event.timestamp),
                event.tenant_id.to_string(),
                event.metric.to_string(),
            );
            let window = windows.entry(key).or_insert_with(|| Window { max_value: i128::MIN, ..Window::default() });
            window.events += 1;
            window.total += value;
            window.max_value = window.max_value.max(value);
            if (at, event.id.as_str()) > (window.latest.0, window.latest.1.as_str()) {
                window.latest = (at, event.id.to_string(), value);
            }
            if event.metric.as_str() == "distinct_users" {
                window.distinct.insert(event.attributes["user_id"].clone());
            }
        }
    }
    windows
}

/// A small deterministic generator (xorshift64*), so a failing run can be repeated by seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

/// What a test sends: valid events (some sent more than once), and messages that must be
/// dead-lettered.
#[derive(Debug, Clone)]
pub enum Send {
    Event(UsageEvent),
    /// (key, payload) that is not a countable event.
    Invalid(String, Vec<u8>),
}

/// A stream of `count` sends over `tenants` tenants: ~12 % resends of an earlier event, ~8 %
/// late (up to 20 days), ~5 % invalid (garbage, 40 days old, an hour ahead, wrong key).
pub fn stream(seed: u64, count: usize, tenants: usize, now: DateTime<Utc>) -> Vec<Send> {
    let mut rng = Rng::new(seed);
    let mut sends = Vec::with_capacity(count);
    let mut sent: Vec<UsageEvent> = Vec::new();
    let metrics = ["api_calls", "compute_seconds", "storage_bytes", "distinct_users"];
    for n in 0..count {
        let roll = rng.below(100);
        if roll < 12 && !sent.is_empty() {
            let earlier = sent[usize::try_from(rng.below(sent.len() as u64)).unwrap()].clone();
            sends.push(Send::Event(earlier));
            continue;
        }
        let tenant = format!("t{:03}", rng.below(tenants as u64));
        let metric = metrics[usize::try_from(rng.below(4)).unwrap()];
        let age = if roll < 20 {
            TimeDelta::seconds(i64::try_from(rng.below(20 * 86_400)).unwrap())
        } else {
            TimeDelta::milliseconds(i64::try_from(rng.below(120_000)).unwrap())
        };
        let mut event = UsageEvent {
            id: EventId::parse(format!("e{seed}-{n}")).unwrap(),
            tenant_id: TenantId::parse(tenant.clone()).unwrap(),
            metric: MetricName::parse(metric).unwrap(),
            value: Quantity::from_units(i128::from(rng.below(10_000_000_000_000)) + 1),
            timestamp: now - age,
            source: "chaos".to_owned(),
            attributes: BTreeMap::new(),
        };
        if metric == "distinct_users" {
            event.value = Quantity::from_int(1);
            event.attributes.insert("user_id".to_owned(), format!("u{}", rng.below(40)));
        }
        if roll >= 95 {
            let invalid = match roll {
                95 => (tenant, b"{not json".to_vec()),
                96 | 97 => {
                    event.timestamp = now - TimeDelta::days(40);
                    (tenant, event.to_json())
                }
                98 => {
                    event.timestamp = now + TimeDelta::hours(1);
                    (tenant, event.to_json())
                }
                _ => ("someone-else".to_owned(), event.to_json()),
            };
            sends.push(Send::Invalid(invalid.0, invalid.1));
            continue;
        }
        sent.push(event.clone());
        sends.push(Send::Event(event));
    }
    sends
}

/// The distinct events of a stream: what must be counted.
pub fn distinct_events(sends: &[Send]) -> Vec<&UsageEvent> {
    let mut seen = BTreeSet::new();
    sends
        .iter()
        .filter_map(|send| match send {
            Send::Event(event) if seen.insert((event.tenant_id.to_string(), event.id.to_string())) => Some(event),
            _ => None,
        })
        .collect()
}

/// How many sends must be dead-lettered.
pub fn invalid_count(sends: &[Send]) -> usize {
    sends.iter().filter(|send| matches!(send, Send::Invalid(..))).count()
}
