//! CloudEvents 1.0 JSON format for usage events (structured mode and batch).
//!
//! | CloudEvents | usage event |
//! |---|---|
//! | `id` | `id` |
//! | `source` | `source` |
//! | `subject` | `tenant_id` |
//! | `type` | `metric` |
//! | `time` (optional) | `timestamp` (defaults to the time of receipt) |
//! | `data.value` | `value` |
//! | `data.attributes` (optional) | `attributes` |
//!
//! `specversion` must be `"1.0"`; `datacontenttype`, when present, must be JSON. Extension
//! attributes are accepted and ignored, as the specification allows.

use serde_json::{Map, Value, json};

use crate::event::{FieldNames, RawFields, UsageEvent, ValidationContext, json_type};
use crate::rules::validate;
use crate::violation::{EventError, Rule, Violation};

/// Content type of one structured-mode event.
pub const CONTENT_TYPE: &str = "application/cloudevents+json";
/// Content type of a batch: a JSON array of structured-mode events.
pub const BATCH_CONTENT_TYPE: &str = "application/cloudevents-batch+json";
pub const SPEC_VERSION: &str = "1.0";

const NAMES: FieldNames = FieldNames {
    id: "id",
    tenant_id: "subject",
    metric: "type",
    value: "data.value",
    timestamp: "time",
    source: "source",
    attributes: "data.attributes",
};

/// Parses and validates one structured-mode CloudEvent.
pub fn from_slice(bytes: &[u8], ctx: &ValidationContext<'_>) -> Result<UsageEvent, EventError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| EventError::Malformed(e.to_string()))?;
    from_value(value, ctx)
}

/// Splits a CloudEvents batch body into its events (a JSON array).
pub fn batch_items(bytes: &[u8]) -> Result<Vec<Value>, EventError> {
    match serde_json::from_slice(bytes) {
        Ok(Value::Array(items)) => Ok(items),
        Ok(other) => Err(EventError::Malformed(format!(
            "a CloudEvents batch is a JSON array of events, got {}",
            json_type(&other)
        ))),
        Err(e) => Err(EventError::Malformed(e.to_string())),
    }
}

/// Validates one structured-mode CloudEvent already parsed (an item of a batch).
pub fn from_value(value: Value, ctx: &ValidationContext<'_>) -> Result<UsageEvent, EventError> {
    let Value::Object(mut object) = value else {
        return Err(EventError::Malformed(format!("expected a CloudEvent object, got {}", json_type(&value))));
    };
    let mut violations = Vec::new();
    match object.remove("specversion") {
        Some(Value::String(v)) if v == SPEC_VERSION => {}
        None | Some(Value::Null) => {
            violations.push(Violation::new("specversion", Rule::Missing, "is required and must be \"1.0\""))
        }
        Some(other) => {
            violations.push(Violation::new("specversion", Rule::Unsupported, format!("must be \"1.0\", got {other}")))
        }
    }
    match object.remove("datacontenttype") {
        None | Some(Value::Null) => {}
        Some(Value::String(t)) if is_json_content_type(&t) => {}
        Some(other) => violations.push(Violation::new(
            "datacontenttype",
            Rule::Unsupported,
            format!("must be application/json (or absent), got {other}"),
        )),
    }
    if object.contains_key("data_base64") {
        violations.push(Violation::new(
            "data_base64",
            Rule::Unsupported,
            "binary data is not accepted; send `data` as a JSON object",
        ));
    }
    let mut raw = RawFields {
        id: object.remove("id"),
        tenant_id: object.remove("subject"),
        metric: object.remove("type"),
        timestamp: object.remove("time"),
        source: object.remove("source"),
        ..RawFields::default()
    };
    match object.remove("data") {
        Some(Value::Object(data)) => read_data(data, &mut raw, &mut violations),
        missing_or_wrong => {
            let (rule, message) = match missing_or_wrong {
                None | Some(Value::Null) => (Rule::Missing, "is required: an object holding `value`".to_owned()),
                Some(other) => (
                    Rule::WrongType,
                    format!("must be an object holding `value` (and optional `attributes`), got {}", json_type(&other)),
                ),
            };
            violations.push(Violation::new("data", rule, message));
            // Reported once, as `data`, rather than again as a missing `data.value`.
            raw.value = Some(Value::from(0));
        }
    }
    validate(raw, &NAMES, ctx, violations).map(UsageEvent::from)
}

fn read_data(mut data: Map<String, Value>, raw: &mut RawFields, violations: &mut Vec<Violation>) {
    raw.value = data.remove("value");
    raw.attributes = data.remove("attributes");
    for key in data.keys() {
        violations.push(Violation::new(
            format!("data.{key}"),
            Rule::UnknownField,
            "is not a usage field; allowed in data: value, attributes",
        ));
    }
}

fn is_json_content_type(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json") || essence.to_ascii_lowercase().ends_with("+json")
}

/// The event as a structured-mode CloudEvent.
pub fn to_value(event: &UsageEvent) -> Value {
    let mut data = Map::new();
    data.insert("value".to_owned(), Value::String(event.value.to_string()));
    if !event.attributes.is_empty() {
        data.insert("attributes".to_owned(), json!(event.attributes));
    }
    json!({
        "specversion": SPEC_VERSION,
        "id": event.id,
        "source": event.source,
        "type": event.metric,
        "subject": event.tenant_id,
        "time": event.timestamp.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        "datacontenttype": "application/json",
        "data": data,
    })
}
