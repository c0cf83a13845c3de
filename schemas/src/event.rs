//! The usage event and its validation.
//!
//! Parsing goes through loosely typed JSON first so that every broken rule is reported, each with
//! the field's name as the sender wrote it (CloudEvents senders see `subject`, not `tenant_id`).

use std::borrow::Cow;
use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::catalogue::{MetricCatalogue, MetricKind};
use crate::ids::{EventId, MetricName, TenantId};
use crate::quantity::{Quantity, QuantityError};
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
        let Value::Object(object) = value else {
            return Err(EventError::Malformed(format!(
                "expected a JSON object for an event, got {}",
                json_type(&value)
            )));
        };
        let mut violations = Vec::new();
        let raw = plain_fields(object, &mut violations);
        validate(raw, &PLAIN_NAMES, ctx, violations)
    }

    /// The event's plain-JSON form (what `from_json_slice` reads back).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_else(|e| unreachable!("event serializes: {e}"))
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

/// Attribute (name, value) pairs as read, borrowed where possible.
pub(crate) type AttributePairs<'a> = Vec<(Cow<'a, str>, Cow<'a, str>)>;

/// An event whose fields have the right JSON types, before the rules are checked. Strings borrow
/// from the request body where they can.
#[derive(Debug, Default)]
pub(crate) struct Candidate<'a> {
    pub id: Option<Cow<'a, str>>,
    pub tenant_id: Option<Cow<'a, str>>,
    pub metric: Option<Cow<'a, str>>,
    pub value: Option<Quantity>,
    /// `None` with `timestamp_given == false` means "now".
    pub timestamp: Option<Cow<'a, str>>,
    pub timestamp_given: bool,
    pub source: Option<Cow<'a, str>>,
    pub attributes: Option<AttributePairs<'a>>,
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
    /// Parses and validates one plain-JSON event from text: a typed single pass when every field
    /// has the right type (the common case), the field-by-field path otherwise, so the errors are
    /// as complete either way.
    pub fn from_json_str(text: &str, ctx: &ValidationContext<'_>) -> Result<Self, EventError> {
        match serde_json::from_str::<TypedPlainEvent<'_>>(text) {
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
            Err(_) => Self::from_json_slice(text.as_bytes(), ctx),
        }
    }
}

/// Checks every rule on loosely typed fields and builds the event, or returns every violation.
pub(crate) fn validate(
    raw: RawFields,
    names: &FieldNames,
    ctx: &ValidationContext<'_>,
    mut violations: Vec<Violation>,
) -> Result<UsageEvent, EventError> {
    let mut types = TypeCheck { violations: &mut violations };
    let candidate = Candidate {
        id: types.string(names.id, raw.id),
        tenant_id: types.string(names.tenant_id, raw.tenant_id),
        metric: types.string(names.metric, raw.metric),
        value: types.quantity(names.value, raw.value),
        timestamp_given: !matches!(raw.timestamp, None | Some(Value::Null)),
        timestamp: types.optional_string(names.timestamp, raw.timestamp, "an RFC 3339 string"),
        source: types.string(names.source, raw.source),
        attributes: types.attributes(names.attributes, raw.attributes),
    };
    check(candidate, names, ctx, violations)
}

/// The rules, on fields of the right type; a `None` field was already reported.
fn check(
    candidate: Candidate<'_>,
    names: &FieldNames,
    ctx: &ValidationContext<'_>,
    mut violations: Vec<Violation>,
) -> Result<UsageEvent, EventError> {
    let mut v = Rules { violations: &mut violations };
    let id = candidate.id.and_then(|s| v.parsed(names.id, EventId::parse(s)));
    let tenant_id = candidate.tenant_id.and_then(|s| v.parsed(names.tenant_id, TenantId::parse(s)));
    let metric = candidate
        .metric
        .and_then(|s| v.parsed(names.metric, MetricName::parse(s)))
        .and_then(|m| v.known_metric(names.metric, m, ctx.catalogue));
    let value = candidate.value;
    let timestamp = match (&candidate.timestamp, candidate.timestamp_given) {
        (Some(text), _) => v.timestamp(names.timestamp, text, ctx),
        (None, false) => Some(ctx.now),
        (None, true) => None,
    };
    let source = candidate.source.and_then(|s| v.source(names.source, s));
    let attributes = candidate.attributes.and_then(|pairs| v.attributes(names.attributes, pairs));

    if let Some(value) = value.filter(|value| value.is_negative()) {
        v.push(names.value, Rule::OutOfRange, format!("must be 0 or more, got {value}"));
    } else if let (Some((_, def)), Some(value)) = (&metric, value)
        && value > def.max_value()
    {
        v.push(
            names.value,
            Rule::OutOfRange,
            format!("must be at most {} for this metric, got {value}", def.max_value()),
        );
    }
    if let (Some((_, def)), Some(attributes)) = (&metric, &attributes)
        && let (MetricKind::Unique, Some(key)) = (def.kind, &def.distinct_by)
        && !attributes.contains_key(key)
    {
        v.push(
            format!("{}.{key}", names.attributes),
            Rule::Missing,
            "is required: this unique metric counts its distinct values",
        );
    }

    // Report in field order whichever pass found the violation (unknown fields first).
    let rank = |field: &str| {
        let named =
            [names.id, names.tenant_id, names.metric, names.value, names.timestamp, names.source, names.attributes];
        named
            .iter()
            .position(|name| field == *name || field.strip_prefix(name).is_some_and(|rest| rest.starts_with('.')))
    };
    violations.sort_by_key(|violation| rank(&violation.field).map_or(0, |position| position + 1));

    match (id, tenant_id, metric, value, timestamp, source, attributes) {
        (
            Some(id),
            Some(tenant_id),
            Some((metric, _)),
            Some(value),
            Some(timestamp),
            Some(source),
            Some(attributes),
        ) if violations.is_empty() => Ok(UsageEvent { id, tenant_id, metric, value, timestamp, source, attributes }),
        _ => Err(EventError::Invalid(violations)),
    }
}

/// JSON type checks for the field-by-field path.
struct TypeCheck<'v> {
    violations: &'v mut Vec<Violation>,
}

impl TypeCheck<'_> {
    fn push(&mut self, field: impl Into<String>, rule: Rule, message: impl Into<String>) {
        self.violations.push(Violation::new(field, rule, message));
    }

    fn string(&mut self, field: &str, value: Option<Value>) -> Option<Cow<'static, str>> {
        if matches!(value, None | Some(Value::Null)) {
            self.push(field, Rule::Missing, "is required");
            return None;
        }
        self.optional_string(field, value, "a string")
    }

    fn optional_string(&mut self, field: &str, value: Option<Value>, expected: &str) -> Option<Cow<'static, str>> {
        match value {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(Cow::Owned(s)),
            Some(other) => {
                self.push(field, Rule::WrongType, format!("must be {expected}, got {}", json_type(&other)));
                None
            }
        }
    }

    fn quantity(&mut self, field: &str, value: Option<Value>) -> Option<Quantity> {
        let value = match value {
            None | Some(Value::Null) => {
                self.push(field, Rule::Missing, "is required");
                return None;
            }
            Some(value @ (Value::Number(_) | Value::String(_))) => value,
            Some(other) => {
                self.push(
                    field,
                    Rule::WrongType,
                    format!("must be a number or a decimal string, got {}", json_type(&other)),
                );
                return None;
            }
        };
        match Quantity::try_from(&value) {
            Ok(quantity) => Some(quantity),
            Err(e) => {
                let rule = match e {
                    QuantityError::NotANumber => Rule::WrongType,
                    QuantityError::TooManyDecimals | QuantityError::TooManyDigits | QuantityError::ImpreciseFloat => {
                        Rule::Precision
                    }
                };
                self.push(field, rule, e.to_string());
                None
            }
        }
    }

    fn attributes(&mut self, field: &str, value: Option<Value>) -> Option<AttributePairs<'static>> {
        let object = match value {
            None | Some(Value::Null) => return Some(Vec::new()),
            Some(Value::Object(object)) => object,
            Some(other) => {
                self.push(
                    field,
                    Rule::WrongType,
                    format!("must be an object of string values, got {}", json_type(&other)),
                );
                return None;
            }
        };
        let before = self.violations.len();
        let mut pairs = Vec::with_capacity(object.len());
        for (key, value) in object {
            match value {
                Value::String(s) => pairs.push((Cow::Owned(key), Cow::Owned(s))),
                other => {
                    self.push(
                        format!("{field}.{key}"),
                        Rule::WrongType,
                        format!("must be a string, got {}", json_type(&other)),
                    );
                }
            }
        }
        (self.violations.len() == before).then_some(pairs)
    }
}

/// The event rules proper: formats, catalogue, ranges, the lateness window.
struct Rules<'v> {
    violations: &'v mut Vec<Violation>,
}

impl Rules<'_> {
    fn push(&mut self, field: impl Into<String>, rule: Rule, message: impl Into<String>) {
        self.violations.push(Violation::new(field, rule, message));
    }

    fn parsed<T>(&mut self, field: &str, result: Result<T, (Rule, String)>) -> Option<T> {
        result.map_err(|(rule, message)| self.push(field, rule, message)).ok()
    }

    fn known_metric<'c>(
        &mut self,
        field: &str,
        metric: MetricName,
        catalogue: &'c MetricCatalogue,
    ) -> Option<(MetricName, &'c crate::MetricDef)> {
        match catalogue.get(&metric) {
            Some(def) => Some((metric, def)),
            None => {
                let known = catalogue.names().join(", ");
                self.push(
                    field,
                    Rule::UnknownMetric,
                    format!("{metric:?} is not in the metric catalogue; known: {known}"),
                );
                None
            }
        }
    }

    fn timestamp(&mut self, field: &str, text: &str, ctx: &ValidationContext<'_>) -> Option<DateTime<Utc>> {
        let Ok(parsed) = DateTime::parse_from_rfc3339(text) else {
            self.push(field, Rule::Format, format!("{text:?} is not RFC 3339, e.g. \"2026-01-31T12:00:00Z\""));
            return None;
        };
        let timestamp = parsed.with_timezone(&Utc);
        let oldest = ctx.now - ctx.window.max_age;
        let latest = ctx.now + ctx.window.max_future;
        if timestamp < oldest {
            self.push(
                field,
                Rule::TooOld,
                format!(
                    "{text} is older than the lateness window ({} days): must be at or after {oldest:?}",
                    ctx.window.max_age.num_days()
                ),
            );
            None
        } else if timestamp > latest {
            self.push(
                field,
                Rule::InFuture,
                format!(
                    "{text} is more than {} seconds ahead of now: must be at or before {latest:?}",
                    ctx.window.max_future.num_seconds()
                ),
            );
            None
        } else {
            Some(timestamp)
        }
    }

    fn source(&mut self, field: &str, source: Cow<'_, str>) -> Option<String> {
        if source.is_empty() || source.len() > MAX_SOURCE_LEN {
            self.push(field, Rule::Length, format!("must be 1 to {MAX_SOURCE_LEN} bytes, got {}", source.len()));
            None
        } else if source.chars().any(char::is_control) {
            self.push(field, Rule::Charset, "must not contain control characters");
            None
        } else {
            Some(source.into_owned())
        }
    }

    fn attributes(&mut self, field: &str, pairs: AttributePairs<'_>) -> Option<BTreeMap<String, String>> {
        if pairs.len() > MAX_ATTRIBUTES {
            self.push(field, Rule::TooMany, format!("at most {MAX_ATTRIBUTES} attributes, got {}", pairs.len()));
            return None;
        }
        let before = self.violations.len();
        let mut attributes = BTreeMap::new();
        for (key, value) in pairs {
            let key_ok = !key.is_empty()
                && key.len() <= MAX_ATTRIBUTE_KEY_LEN
                && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
            let path = || format!("{field}.{key}");
            if !key_ok {
                self.push(
                    path(),
                    Rule::Charset,
                    format!("attribute names are 1 to {MAX_ATTRIBUTE_KEY_LEN} ASCII letters, digits, '_', '-' or '.'"),
                );
            } else if value.len() > MAX_ATTRIBUTE_VALUE_LEN {
                self.push(
                    path(),
                    Rule::Length,
                    format!("must be at most {MAX_ATTRIBUTE_VALUE_LEN} bytes, got {}", value.len()),
                );
            } else if value.chars().any(char::is_control) {
                self.push(path(), Rule::Charset, "must not contain control characters");
            } else {
                attributes.insert(key.into_owned(), value.into_owned());
            }
        }
        (self.violations.len() == before).then_some(attributes)
    }
}
