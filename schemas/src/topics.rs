//! Kafka topics, message keys and headers.

use serde::{Deserialize, Serialize};

use crate::checked::CheckedEvent;
use crate::event::UsageEvent;

/// Header carrying the event id, so consumers can dedup without parsing the payload.
pub const HEADER_EVENT_ID: &str = "tally-event-id";
/// Header set by ingest: when Tally accepted the event (Unix milliseconds, decimal). The
/// aggregator judges the event's age against it, so an event ingest answered 202 for is never
/// refused later for waiting in Kafka, nor for a clock a few minutes off between hosts.
pub const HEADER_ACCEPTED_AT: &str = "tally-accepted-at";
/// Header on a dead-lettered message: the machine-readable reason (`unknown_metric`, …).
pub const HEADER_DLQ_REASON: &str = "tally-dlq-reason";
/// Header on a dead-lettered message: the human-readable detail.
pub const HEADER_DLQ_DETAIL: &str = "tally-dlq-detail";
/// Header on a dead-lettered message: which Tally service refused it.
pub const HEADER_DLQ_STAGE: &str = "tally-dlq-stage";
/// Header on a dead-lettered message the aggregator refused: `topic/partition/offset` it came from
/// (a replayed batch dead-letters again; equal sources are the same message).
pub const HEADER_DLQ_SOURCE: &str = "tally-dlq-source";
/// The usage topic's payload: JSON of [`crate::UsageEvent`], version 1. A future version will be
/// told apart by a header; version 1 carries none.
pub const SCHEMA_VERSION: &str = "usage-event/1";

/// Topic names and the shape to create them with (`[topics]` in config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Topics {
    /// Validated usage events, keyed by tenant id.
    pub usage_events: String,
    /// Refused events with their reason in headers.
    pub dead_letter: String,
    /// Partitions for new topics; the usage topic's partition count bounds aggregator parallelism.
    pub partitions: i32,
    pub replication_factor: i32,
}

impl Default for Topics {
    fn default() -> Self {
        Self {
            usage_events: "usage-events".to_owned(),
            dead_letter: "usage-events-dlq".to_owned(),
            partitions: 6,
            replication_factor: 1,
        }
    }
}

impl Topics {
    pub fn all(&self) -> [&str; 2] {
        [&self.usage_events, &self.dead_letter]
    }
}

/// The Kafka message key of a tenant's events: every event of a tenant lands on one partition,
/// in order.
pub fn message_key(tenant: &str) -> &[u8] {
    tenant.as_bytes()
}

/// A validated event as the usage topic carries it: keyed by [`message_key`], its id in
/// [`HEADER_EVENT_ID`], its wire form ([`SCHEMA_VERSION`]) as payload.
pub trait UsageMessage {
    fn tenant(&self) -> &str;
    fn event_id(&self) -> &str;
    fn payload(&self) -> Vec<u8>;
}

impl UsageMessage for UsageEvent {
    fn tenant(&self) -> &str {
        self.tenant_id.as_str()
    }
    fn event_id(&self) -> &str {
        self.id.as_str()
    }
    fn payload(&self) -> Vec<u8> {
        self.to_json()
    }
}

impl UsageMessage for CheckedEvent<'_> {
    fn tenant(&self) -> &str {
        self.tenant_id()
    }
    fn event_id(&self) -> &str {
        self.id()
    }
    fn payload(&self) -> Vec<u8> {
        self.to_json()
    }
}
