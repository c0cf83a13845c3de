//! A batch: one partition's messages over a planned offset range, turned into the rows to store.
//!
//! Everything here is a pure function of the plan (offsets and decision time), the messages and
//! the ids already counted before the batch, so a replay after a crash builds the very same rows.

use std::collections::HashSet;

use chrono::{DateTime, TimeDelta, Utc};
use clickhouse::Row;
use serde::{Deserialize, Serialize};
use tally_schemas::{MetricCatalogue, UsageEvent, ValidationContext};

use crate::rollup::{RollupRow, rollup};

/// An event older than this, relative to its batch's decision time, counts as late in metrics.
pub const LATE_AFTER: TimeDelta = TimeDelta::minutes(5);

/// How far before its batch's decision time an ingest acceptance is still believed: an event
/// that waited longer in Kafka (or whose header was written by another producer) is judged at
/// the decision time, as events from other producers always are.
pub const ACCEPTANCE_HORIZON: TimeDelta = TimeDelta::days(7);
/// How far after the decision time an acceptance may lie (clocks a few minutes apart).
pub const ACCEPTANCE_SKEW: TimeDelta = TimeDelta::minutes(5);

/// A message as consumed, owned.
#[derive(Debug, Clone)]
pub struct Message {
    pub offset: u64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    /// [`tally_schemas::topics::HEADER_ACCEPTED_AT`], when ingest set it (Unix milliseconds).
    pub accepted_at: Option<i64>,
}

impl Message {
    /// Owns a consumed Kafka message.
    pub fn of(message: &impl rdkafka::message::Message, offset: u64) -> Self {
        use rdkafka::message::Headers as _;
        let accepted_at = message.headers().and_then(|headers| {
            headers
                .iter()
                .find(|h| h.key == tally_schemas::topics::HEADER_ACCEPTED_AT)
                .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse().ok())
        });
        Self {
            offset,
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            accepted_at,
        }
    }

    /// The instant the event's age is judged at: when ingest accepted it, if that lies within
    /// the horizon of the decision time, else the decision time. A pure function of the message
    /// and the plan, so a replay judges the same.
    pub fn judged_at(&self, decided_at: DateTime<Utc>) -> DateTime<Utc> {
        self.accepted_at
            .and_then(DateTime::from_timestamp_millis)
            .filter(|at| *at >= decided_at - ACCEPTANCE_HORIZON && *at <= decided_at + ACCEPTANCE_SKEW)
            .unwrap_or(decided_at)
    }
}

/// Which offsets of which partition a batch covers, and the instant its events were judged at.
/// The first plan stored for (topic, partition, first offset) is the only one ever used.
#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct Plan {
    pub topic: String,
    pub kafka_partition: u32,
    pub first_offset: u64,
    pub last_offset: u64,
    /// Milliseconds since the epoch (`DateTime64(3)`).
    pub decided_at: i64,
    pub planned_by: String,
}

impl Plan {
    /// The insert deduplication token of every table the batch writes.
    pub fn token(&self) -> String {
        format!("{}/{}/{}-{}", self.topic, self.kafka_partition, self.first_offset, self.last_offset)
    }

    /// The token of the plan itself: one per (topic, partition, first offset), so the first plan wins.
    pub fn plan_token(&self) -> String {
        format!("plan/{}/{}/{}", self.topic, self.kafka_partition, self.first_offset)
    }

    pub fn decided_at(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.decided_at).unwrap_or_default()
    }

    pub fn covers(&self, offset: u64) -> bool {
        (self.first_offset..=self.last_offset).contains(&offset)
    }

    /// Where the partition resumes once this batch is stored.
    pub fn next_offset(&self) -> u64 {
        self.last_offset + 1
    }
}

/// A message the aggregator will not count, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub offset: u64,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    pub reason: &'static str,
    pub detail: String,
}

/// The batch's messages read and checked, before cross-batch dedup.
#[derive(Debug, Default)]
pub struct Decoded {
    /// Valid events, first occurrence of each (tenant, id) in the batch, in offset order.
    pub events: Vec<(u64, UsageEvent)>,
    pub dead_letters: Vec<DeadLetter>,
    /// Repeats of an event already earlier in this batch.
    pub duplicates_in_batch: u64,
}

/// Reads and checks the plan's messages (those outside its range are ignored).
pub fn decode(plan: &Plan, messages: &[Message], catalogue: &MetricCatalogue) -> Decoded {
    let decided_at = plan.decided_at();
    let mut decoded = Decoded::default();
    let mut valid: Vec<(u64, UsageEvent)> = Vec::with_capacity(messages.len());
    for message in messages.iter().filter(|m| plan.covers(m.offset)) {
        let key = message.key.as_deref().unwrap_or_default();
        let payload = message.payload.as_deref().unwrap_or_default();
        let refuse = |reason: &'static str, detail: String| DeadLetter {
            offset: message.offset,
            key: key.to_vec(),
            payload: payload.to_vec(),
            reason,
            detail,
        };
        let event = match std::str::from_utf8(payload) {
            Err(error) => Err(refuse("malformed", format!("payload is not UTF-8 JSON: {error}"))),
            Ok(text) => {
                // Lateness is judged once: against the time ingest accepted the event.
                let ctx = ValidationContext::new(catalogue, message.judged_at(decided_at));
                UsageEvent::from_json_str(text, &ctx).map_err(|error| refuse(error.reason_code(), error.to_string()))
            }
        };
        let event = event.and_then(|event| {
            if key == event.tenant_id.as_str().as_bytes() {
                Ok(event)
            } else {
                Err(refuse(
                    "key_mismatch",
                    format!(
                        "message key {:?} is not the event's tenant {:?}: usage events must be keyed by tenant id",
                        String::from_utf8_lossy(key),
                        event.tenant_id.as_str()
                    ),
                ))
            }
        });
        match event {
            Ok(event) => valid.push((message.offset, event)),
            Err(dead_letter) => decoded.dead_letters.push(dead_letter),
        }
    }
    let first_occurrence: Vec<bool> = {
        let mut seen: HashSet<(&str, &str)> = HashSet::with_capacity(valid.len());
        valid.iter().map(|(_, event)| seen.insert((event.tenant_id.as_str(), event.id.as_str()))).collect()
    };
    decoded.duplicates_in_batch = first_occurrence.iter().filter(|first| !**first).count() as u64;
    decoded.events =
        valid.into_iter().zip(first_occurrence).filter_map(|(event, first)| first.then_some(event)).collect();
    decoded
}

/// One row of `usage_events` (the shared contract).
pub use tally_kit::rollups::EventRow;

/// One row of `usage_event_ids`.
#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct IdRow {
    pub tenant_id: String,
    pub event_id: String,
    pub received_at: u32,
    pub kafka_partition: u32,
    pub kafka_offset: u64,
}

/// The batch's claims on its (tenant, id) pairs: one `usage_event_ids` row per decoded event,
/// written before the batch decides what it counts (see [`crate::store::Store::claim`]).
pub fn claims(plan: &Plan, events: &[(u64, UsageEvent)]) -> Vec<IdRow> {
    let received_at = u32::try_from(plan.decided_at().timestamp()).unwrap_or(0);
    events
        .iter()
        .map(|(offset, event)| IdRow {
            tenant_id: event.tenant_id.as_str().to_owned(),
            event_id: event.id.as_str().to_owned(),
            received_at,
            kafka_partition: plan.kafka_partition,
            kafka_offset: *offset,
        })
        .collect()
}

/// Everything a batch stores once its claims are settled.
#[derive(Debug, Default)]
pub struct Rows {
    pub events: Vec<EventRow>,
    pub rollups: Vec<RollupRow>,
    /// Events counted before this batch (client retries).
    pub duplicates_before: u64,
    /// Counted events older than [`LATE_AFTER`] at decision time.
    pub late: u64,
}

/// The rows of a decoded batch's `events`, leaving out the (tenant, id) pairs `counted_before`
/// holds (claimed first by another batch). Takes the events by value: their strings move into the rows instead of being copied.
pub fn assemble(
    plan: &Plan,
    events: Vec<(u64, UsageEvent)>,
    counted_before: &HashSet<(String, String)>,
    catalogue: &MetricCatalogue,
) -> Rows {
    let decided_at = plan.decided_at();
    let mut rows = Rows::default();
    let mut counted: Vec<(u64, UsageEvent)> = Vec::with_capacity(events.len());
    for (offset, event) in events {
        let pair = (event.tenant_id.as_str().to_owned(), event.id.as_str().to_owned());
        if counted_before.contains(&pair) {
            rows.duplicates_before += 1;
            continue;
        }
        if decided_at - event.timestamp > LATE_AFTER {
            rows.late += 1;
        }
        counted.push((offset, event));
    }
    rows.rollups = rollup(counted.iter().map(|(_, event)| event), catalogue);
    rows.events = counted
        .into_iter()
        .map(|(offset, event)| EventRow {
            value: event.value.units(),
            timestamp: event.timestamp.timestamp_nanos_opt().unwrap_or(i64::MAX),
            tenant_id: String::from(event.tenant_id),
            event_id: String::from(event.id),
            metric: String::from(event.metric),
            source: event.source,
            attributes: event.attributes.into_iter().collect(),
            ingested_at: plan.decided_at,
            kafka_partition: plan.kafka_partition,
            kafka_offset: offset,
        })
        .collect();
    rows
}

#[cfg(test)]
#[path = "batch_tests.rs"]
mod tests;
