//! Tally's contracts, shared by every service and by the emitter client.
//!
//! * [`event`]: the usage event, parsed from plain JSON and validated rule by rule;
//! * [`checked`]: a validated event still borrowing the request's text, and the wire form;
//! * [`batch`]: a one-pass reader for the common shape of a plain-JSON batch;
//! * [`cloudevents`]: its CloudEvents 1.0 structured and batch mapping;
//! * [`catalogue`]: the metric catalogue (name → kind and unit), loaded from config;
//! * [`tiers`]: tenant tiers, default limits and per-tenant overrides;
//! * [`topics`]: Kafka topic names, message key and headers;
//! * [`ddl`]: the versioned ClickHouse DDL, and [`cluster`] its form on a cluster's nodes; the PostgreSQL migrations live in `migrations/`.

pub mod batch;
pub mod catalogue;
pub mod checked;
pub mod cloudevents;
pub mod cluster;
pub mod ddl;
pub mod event;
pub mod ids;
pub mod quantity;
mod rules;
pub mod tiers;
pub mod topics;
pub mod violation;

pub use catalogue::{MetricCatalogue, MetricDef, MetricKind};
pub use checked::CheckedEvent;
pub use event::{LatenessWindow, UsageEvent, ValidationContext};
pub use ids::{EventId, MetricName, TenantId};
pub use quantity::Quantity;
pub use tiers::{Limit, LimitOverrides, Limits, RateQuota, Tier, TierDefaults};
pub use topics::Topics;
pub use violation::{EventError, Rule, Violation};
