//! The event rules, shared by every input format and both parsing paths: JSON type checks for
//! the field-by-field path, then formats, catalogue, ranges and the lateness window.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::catalogue::{MetricCatalogue, MetricKind};
use crate::checked::{CheckedEvent, has_attribute, normalise_attributes};
use crate::event::{
    FieldNames, MAX_ATTRIBUTE_KEY_LEN, MAX_ATTRIBUTE_VALUE_LEN, MAX_ATTRIBUTES, MAX_SOURCE_LEN, RawFields,
    ValidationContext, json_type,
};
use crate::ids::{EventId, MetricName, TenantId};
use crate::quantity::{Quantity, QuantityError};
use crate::violation::{EventError, Rule, Violation};

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

/// Checks every rule on loosely typed fields and builds the event, or returns every violation.
pub(crate) fn validate(
    raw: RawFields,
    names: &FieldNames,
    ctx: &ValidationContext<'_>,
    mut violations: Vec<Violation>,
) -> Result<CheckedEvent<'static>, EventError> {
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
pub(crate) fn check<'a>(
    candidate: Candidate<'a>,
    names: &FieldNames,
    ctx: &ValidationContext<'_>,
    mut violations: Vec<Violation>,
) -> Result<CheckedEvent<'a>, EventError> {
    let mut v = Rules { violations: &mut violations };
    let id = candidate.id.and_then(|s| v.formatted(names.id, s, EventId::check));
    let tenant_id = candidate.tenant_id.and_then(|s| v.formatted(names.tenant_id, s, TenantId::check));
    let metric = candidate
        .metric
        .and_then(|s| v.formatted(names.metric, s, MetricName::check))
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
        && !has_attribute(attributes, key)
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
        ) if violations.is_empty() => Ok(CheckedEvent { id, tenant_id, metric, value, timestamp, source, attributes }),
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

    fn formatted<'a>(
        &mut self,
        field: &str,
        text: Cow<'a, str>,
        check: fn(&str) -> Result<(), (Rule, String)>,
    ) -> Option<Cow<'a, str>> {
        check(&text).map_err(|(rule, message)| self.push(field, rule, message)).ok().map(|()| text)
    }

    fn known_metric<'a, 'c>(
        &mut self,
        field: &str,
        metric: Cow<'a, str>,
        catalogue: &'c MetricCatalogue,
    ) -> Option<(Cow<'a, str>, &'c crate::MetricDef)> {
        match catalogue.lookup(&metric) {
            Some((_, def)) => Some((metric, def)),
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

    fn source<'a>(&mut self, field: &str, source: Cow<'a, str>) -> Option<Cow<'a, str>> {
        if source.is_empty() || source.len() > MAX_SOURCE_LEN {
            self.push(field, Rule::Length, format!("must be 1 to {MAX_SOURCE_LEN} bytes, got {}", source.len()));
            None
        } else if has_control(&source) {
            self.push(field, Rule::Charset, "must not contain control characters");
            None
        } else {
            Some(source)
        }
    }

    fn attributes<'a>(&mut self, field: &str, pairs: AttributePairs<'a>) -> Option<AttributePairs<'a>> {
        if pairs.len() > MAX_ATTRIBUTES {
            self.push(field, Rule::TooMany, format!("at most {MAX_ATTRIBUTES} attributes, got {}", pairs.len()));
            return None;
        }
        let before = self.violations.len();
        for (key, value) in &pairs {
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
            } else if has_control(value) {
                self.push(path(), Rule::Charset, "must not contain control characters");
            }
        }
        (self.violations.len() == before).then(|| normalise_attributes(pairs))
    }
}

/// Whether `text` holds a control character (`char::is_control`), without decoding ASCII text.
fn has_control(text: &str) -> bool {
    if text.is_ascii() { text.bytes().any(|b| b < 0x20 || b == 0x7f) } else { text.chars().any(char::is_control) }
}

#[cfg(test)]
mod tests {
    use super::has_control;

    #[test]
    fn control_characters_are_found_in_ascii_and_beyond() {
        for text in ["a\u{0}b", "tab\t", "del\u{7f}", "c1 \u{85}", "é\n"] {
            assert!(has_control(text), "{text:?}");
        }
        for text in ["", "plain ascii ~", "é ü 日本", "\u{a0}"] {
            assert!(!has_control(text), "{text:?}");
        }
    }
}
