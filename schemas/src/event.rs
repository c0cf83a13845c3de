//! The usage event and its validation.
//!
//! Parsing goes through loosely typed JSON first so that every broken rule is reported, each with
//! the field's name as the sender wrote it (CloudEvents senders see `subject`, not `tenant_id`).

use std::borrow::Cow;
use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::catalogue::MetricCatalogue;
use crate::checked::CheckedEvent;
use crate::ids::{EventId, MetricName, TenantId};
use crate::quantity::Quantity;
use crate::rules::{AttributePairs, Candidate, check, validate};
use crate::violation::{EventError, Rule, Violation};

pub const MAX_ATTRIBUTES: usize = 16;
pub const MAX_ATTRIBUTE_KEY_LEN: usize = 64;
pub const MAX_ATTRIBUTE_VALUE_LEN: usize = 256;
pub const MAX_SOURCE_LEN: usize = 256;

/// A validated usage event, as it travels on the usage topic (JSON, value as a string).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageEvent {
    /// Client-chosen idempotency key: the same (tenant, id) is counted once.
    pub id: EventId,
    pub tenant_id: TenantId,
    pub metric: MetricName,
    pub value: Quantity,
    /// When the usage happened (UTC); decides the event's windows.
    pub timestamp: DateTime<Utc>,
    /// The emitting service.
    pub source: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}

/// How late or early an event may be: 35 days back (Stripe's backdating limit), 5 minutes ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatenessWindow {
    pub max_age: TimeDelta,
    pub max_future: TimeDelta,
}

impl Default for LatenessWindow {
    fn default() -> Self {
        Self { max_age: TimeDelta::days(35), max_future: TimeDelta::minutes(5) }
    }
}

/// What validation checks against: the catalogue, the clock and the lateness window.
#[derive(Debug, Clone, Copy)]
pub struct ValidationContext<'a> {
    pub catalogue: &'a MetricCatalogue,
    pub now: DateTime<Utc>,
    pub window: LatenessWindow,
}

impl<'a> ValidationContext<'a> {
    pub fn new(catalogue: &'a MetricCatalogue, now: DateTime<Utc>) -> Self {
        Self { catalogue, now, window: LatenessWindow::default() }
    }
}

/// The names a format gives the event's fields, so violations speak the sender's language.
#[derive(Debug)]
pub(crate) struct FieldNames {
    pub id: &'static str,
    pub tenant_id: &'static str,
    pub metric: &'static str,
    pub value: &'static str,
    pub timestamp: &'static str,
    pub source: &'static str,
    pub attributes: &'static str,
}

pub(crate) const PLAIN_NAMES: FieldNames = FieldNames {
    id: "id",
    tenant_id: "tenant_id",
    metric: "metric",
    value: "value",
    timestamp: "timestamp",
    source: "source",
    attributes: "attributes",
};

/// An event's fields before validation, whatever format they came in.
#[derive(Debug, Default)]
pub(crate) struct RawFields {
    pub id: Option<Value>,
    pub tenant_id: Option<Value>,
    pub metric: Option<Value>,
    pub value: Option<Value>,
    pub timestamp: Option<Value>,
    pub source: Option<Value>,
    pub attributes: Option<Value>,
}

impl UsageEvent {
    /// Parses and validates one plain-JSON event.
    pub fn from_json_slice(bytes: &[u8], ctx: &ValidationContext<'_>) -> Result<Self, EventError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| EventError::Malformed(e.to_string()))?;
        Self::from_json_value(value, ctx)
    }

    /// Validates one plain-JSON event already parsed (an item of a batch).
    pub fn from_json_value(value: Value, ctx: &ValidationContext<'_>) -> Result<Self, EventError> {
        checked_from_value(value, ctx).map(Self::from)
    }

    /// The event's plain-JSON form (what `from_json_slice` reads back).
    pub fn to_json(&self) -> Vec<u8> {
        crate::checked::usage_event_json(self)
    }
}

/// Splits a request body into events: one object, or an array of them.
pub fn json_items(bytes: &[u8]) -> Result<Vec<Value>, EventError> {
    match serde_json::from_slice(bytes) {
        Ok(Value::Array(items)) => Ok(items),
        Ok(object @ Value::Object(_)) => Ok(vec![object]),
        Ok(other) => Err(EventError::Malformed(format!(
            "expected an event object or an array of events, got {}",
            json_type(&other)
        ))),
        Err(e) => Err(EventError::Malformed(e.to_string())),
    }
}

fn plain_fields(object: Map<String, Value>, violations: &mut Vec<Violation>) -> RawFields {
    let mut raw = RawFields::default();
    for (key, value) in object {
        let slot = match key.as_str() {
            "id" => &mut raw.id,
            "tenant_id" => &mut raw.tenant_id,
            "metric" => &mut raw.metric,
            "value" => &mut raw.value,
            "timestamp" => &mut raw.timestamp,
            "source" => &mut raw.source,
            "attributes" => &mut raw.attributes,
            _ => {
                violations.push(Violation::new(
                    key,
                    Rule::UnknownField,
                    "is not an event field; allowed: id, tenant_id, metric, value, timestamp, source, attributes",
                ));
                continue;
            }
        };
        *slot = Some(value);
    }
    raw
}

pub(crate) fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The plain-JSON event with every field of the right type: the fast path, one pass, strings
/// borrowed from the body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TypedPlainEvent<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    tenant_id: Cow<'a, str>,
    #[serde(borrow)]
    metric: Cow<'a, str>,
    value: Quantity,
    #[serde(default, borrow)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(borrow)]
    source: Cow<'a, str>,
    #[serde(default, borrow, deserialize_with = "attribute_pairs")]
    attributes: Option<AttributePairs<'a>>,
}

/// Reads a JSON object of strings as (name, value) pairs, without building a map.
fn attribute_pairs<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<AttributePairs<'de>>, D::Error> {
    struct Pairs;
    impl<'de> serde::de::Visitor<'de> for Pairs {
        type Value = Option<AttributePairs<'de>>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object of string values")
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(4));
            while let Some((key, value)) = map.next_entry::<BorrowedStr<'de>, BorrowedStr<'de>>()? {
                pairs.push((key.0, value.0));
            }
            Ok(Some(pairs))
        }
    }
    deserializer.deserialize_any(Pairs)
}

/// A string borrowed from the input where it has no escapes.
struct BorrowedStr<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for BorrowedStr<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Text;
        impl<'de> serde::de::Visitor<'de> for Text {
            type Value = BorrowedStr<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(BorrowedStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(BorrowedStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(BorrowedStr(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(Text)
    }
}

impl UsageEvent {
    /// Parses and validates one plain-JSON event from text (see [`CheckedEvent::from_json_str`]).
    pub fn from_json_str(text: &str, ctx: &ValidationContext<'_>) -> Result<Self, EventError> {
        CheckedEvent::from_json_str(text, ctx).map(Self::from)
    }
}

impl<'a> CheckedEvent<'a> {
    /// Parses and validates one plain-JSON event from text, borrowing its strings: a typed single
    /// pass when every field has the right type (the common case), the field-by-field path
    /// otherwise, so the errors are as complete either way.
    pub fn from_json_str(text: &'a str, ctx: &ValidationContext<'_>) -> Result<Self, EventError> {
        match serde_json::from_str::<TypedPlainEvent<'a>>(text) {
            Ok(typed) => {
                let candidate = Candidate {
                    id: Some(typed.id),
                    tenant_id: Some(typed.tenant_id),
                    metric: Some(typed.metric),
                    value: Some(typed.value),
                    timestamp_given: typed.timestamp.is_some(),
                    timestamp: typed.timestamp,
                    source: Some(typed.source),
                    attributes: Some(typed.attributes.unwrap_or_default()),
                };
                check(candidate, &PLAIN_NAMES, ctx, Vec::new())
            }
            Err(_) => {
                let value: Value = serde_json::from_str(text).map_err(|e| EventError::Malformed(e.to_string()))?;
                checked_from_value(value, ctx)
            }
        }
    }
}

/// The field-by-field path: every field's type checked on its own, so every error is reported.
fn checked_from_value(value: Value, ctx: &ValidationContext<'_>) -> Result<CheckedEvent<'static>, EventError> {
    let Value::Object(object) = value else {
        return Err(EventError::Malformed(format!("expected a JSON object for an event, got {}", json_type(&value))));
    };
    let mut violations = Vec::new();
    let raw = plain_fields(object, &mut violations);
    validate(raw, &PLAIN_NAMES, ctx, violations)
}
