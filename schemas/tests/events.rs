//! Every validation rule, as an emitter would break it, and round-trips through both formats.

#![allow(clippy::unwrap_used)]

use chrono::{DateTime, TimeDelta, Utc};
use proptest::prelude::*;
use serde_json::{Value, json};
use tally_schemas::{EventError, MetricCatalogue, Rule, UsageEvent, ValidationContext, cloudevents};

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-25T12:00:00Z").unwrap().with_timezone(&Utc)
}

fn catalogue() -> MetricCatalogue {
    serde_json::from_value(json!({
        "api_calls": {"kind": "counter", "unit": "calls"},
        "storage_bytes": {"kind": "gauge", "unit": "bytes", "max_value": "1000000000000"},
        "seen_users": {"kind": "unique", "unit": "users", "distinct_by": "user_id"},
    }))
    .unwrap()
}

fn valid() -> Value {
    json!({
        "id": "evt-0001",
        "tenant_id": "acme",
        "metric": "api_calls",
        "value": 3,
        "timestamp": "2026-11-25T11:59:00Z",
        "source": "gateway",
        "attributes": {"region": "eu-west-1"},
    })
}

fn with(field: &str, value: Value) -> Value {
    let mut event = valid();
    event[field] = value;
    event
}

fn without(field: &str) -> Value {
    let mut event = valid();
    event.as_object_mut().unwrap().remove(field);
    event
}

fn violations(event: Value) -> Vec<(String, Rule)> {
    let catalogue = catalogue();
    match UsageEvent::from_json_value(event, &ValidationContext::new(&catalogue, now())) {
        Ok(event) => panic!("expected a rejection, got {event:?}"),
        Err(EventError::Malformed(message)) => panic!("expected violations, got malformed: {message}"),
        Err(EventError::Invalid(violations)) => {
            for v in &violations {
                assert!(!v.message.is_empty(), "{v:?} has no message");
            }
            violations.into_iter().map(|v| (v.field, v.rule)).collect()
        }
    }
}

fn rejects(event: Value, field: &str, rule: Rule) {
    let found = violations(event);
    assert!(found.iter().any(|(f, r)| f == field && *r == rule), "expected `{field}` to break {rule}, got {found:?}");
}

#[test]
fn a_valid_event_is_accepted_with_exact_value() {
    let catalogue = catalogue();
    let event = UsageEvent::from_json_value(with("value", json!("12.345")), &ValidationContext::new(&catalogue, now()))
        .unwrap();
    assert_eq!(event.tenant_id.as_str(), "acme");
    assert_eq!(event.value.to_string(), "12.345");
    assert_eq!(event.attributes["region"], "eu-west-1");
}

#[test]
fn id_rules() {
    rejects(without("id"), "id", Rule::Missing);
    rejects(with("id", json!(42)), "id", Rule::WrongType);
    rejects(with("id", json!("")), "id", Rule::Length);
    rejects(with("id", json!("x".repeat(129))), "id", Rule::Length);
    rejects(with("id", json!("evt 1")), "id", Rule::Charset);
}

#[test]
fn tenant_rules() {
    rejects(without("tenant_id"), "tenant_id", Rule::Missing);
    rejects(with("tenant_id", json!(null)), "tenant_id", Rule::Missing);
    rejects(with("tenant_id", json!("a".repeat(65))), "tenant_id", Rule::Length);
    rejects(with("tenant_id", json!("acme/../other")), "tenant_id", Rule::Charset);
}

#[test]
fn metric_rules() {
    rejects(without("metric"), "metric", Rule::Missing);
    rejects(with("metric", json!("API-Calls")), "metric", Rule::Charset);
    rejects(with("metric", json!("gpu_seconds")), "metric", Rule::UnknownMetric);
}

#[test]
fn value_rules() {
    rejects(without("value"), "value", Rule::Missing);
    rejects(with("value", json!(true)), "value", Rule::WrongType);
    rejects(with("value", json!("twelve")), "value", Rule::WrongType);
    rejects(with("value", json!(-1)), "value", Rule::OutOfRange);
    rejects(with("value", json!("1.0000000001")), "value", Rule::Precision);
    rejects(with("value", json!(0.12345678901234567)), "value", Rule::Precision);
    let mut too_big = with("metric", json!("storage_bytes"));
    too_big["value"] = json!("1000000000001");
    rejects(too_big, "value", Rule::OutOfRange);
    rejects(with("value", json!("10000000000000000000")), "value", Rule::OutOfRange);
}

#[test]
fn timestamp_rules() {
    rejects(with("timestamp", json!("yesterday")), "timestamp", Rule::Format);
    rejects(with("timestamp", json!(1764072000)), "timestamp", Rule::WrongType);
    let too_old = (now() - TimeDelta::days(35) - TimeDelta::seconds(1)).to_rfc3339();
    rejects(with("timestamp", json!(too_old)), "timestamp", Rule::TooOld);
    let too_new = (now() + TimeDelta::minutes(5) + TimeDelta::seconds(1)).to_rfc3339();
    rejects(with("timestamp", json!(too_new)), "timestamp", Rule::InFuture);
}

#[test]
fn timestamp_window_edges_are_inclusive_and_absent_means_now() {
    let catalogue = catalogue();
    let ctx = ValidationContext::new(&catalogue, now());
    for edge in [now() - TimeDelta::days(35), now() + TimeDelta::minutes(5)] {
        assert!(UsageEvent::from_json_value(with("timestamp", json!(edge.to_rfc3339())), &ctx).is_ok());
    }
    let event = UsageEvent::from_json_value(without("timestamp"), &ctx).unwrap();
    assert_eq!(event.timestamp, now());
}

#[test]
fn source_rules() {
    rejects(without("source"), "source", Rule::Missing);
    rejects(with("source", json!("")), "source", Rule::Length);
    rejects(with("source", json!("s".repeat(257))), "source", Rule::Length);
    rejects(with("source", json!("gate\nway")), "source", Rule::Charset);
}

#[test]
fn attribute_rules() {
    rejects(with("attributes", json!(["a"])), "attributes", Rule::WrongType);
    let many: serde_json::Map<String, Value> = (0..17).map(|i| (format!("k{i}"), json!("v"))).collect();
    rejects(with("attributes", Value::Object(many)), "attributes", Rule::TooMany);
    rejects(with("attributes", json!({"bad key": "v"})), "attributes.bad key", Rule::Charset);
    rejects(with("attributes", json!({"k".repeat(65): "v"})), &format!("attributes.{}", "k".repeat(65)), Rule::Charset);
    rejects(with("attributes", json!({"n": 5})), "attributes.n", Rule::WrongType);
    rejects(with("attributes", json!({"long": "v".repeat(257)})), "attributes.long", Rule::Length);
    rejects(with("attributes", json!({"ctl": "a\u{0}b"})), "attributes.ctl", Rule::Charset);
}

#[test]
fn unique_metrics_need_their_attribute() {
    let event = json!({"id": "e1", "tenant_id": "acme", "metric": "seen_users", "value": 1, "source": "app"});
    rejects(event, "attributes.user_id", Rule::Missing);
}

#[test]
fn unknown_fields_are_named() {
    rejects(with("tennant", json!("acme")), "tennant", Rule::UnknownField);
}

#[test]
fn every_violation_is_reported_at_once() {
    let found = violations(json!({"id": "", "tenant_id": 7, "metric": "nope", "value": -2, "source": "s"}));
    let fields: Vec<&str> = found.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(fields, ["id", "tenant_id", "metric", "value"], "{found:?}");
}

#[test]
fn malformed_json_and_non_objects_are_malformed() {
    let catalogue = catalogue();
    let ctx = ValidationContext::new(&catalogue, now());
    assert!(matches!(UsageEvent::from_json_slice(b"{\"id\":", &ctx), Err(EventError::Malformed(_))));
    assert!(matches!(UsageEvent::from_json_value(json!([1]), &ctx), Err(EventError::Malformed(_))));
    assert!(matches!(tally_schemas::event::json_items(b"42"), Err(EventError::Malformed(_))));
    assert_eq!(tally_schemas::event::json_items(b"[{}, {}]").unwrap().len(), 2);
}

#[test]
fn cloudevents_violations_use_cloudevents_names() {
    let catalogue = catalogue();
    let ctx = ValidationContext::new(&catalogue, now());
    let event = json!({
        "specversion": "0.3", "id": "e1", "source": "app", "type": "nope",
        "datacontenttype": "text/xml", "data": {"value": "x", "extra": 1}
    });
    let Err(EventError::Invalid(found)) = cloudevents::from_value(event, &ctx) else {
        panic!("expected violations");
    };
    let found: Vec<(&str, Rule)> = found.iter().map(|v| (v.field.as_str(), v.rule)).collect();
    for expected in [
        ("specversion", Rule::Unsupported),
        ("datacontenttype", Rule::Unsupported),
        ("data.extra", Rule::UnknownField),
        ("subject", Rule::Missing),
        ("type", Rule::UnknownMetric),
        ("data.value", Rule::WrongType),
    ] {
        assert!(found.contains(&expected), "missing {expected:?} in {found:?}");
    }
    let Err(EventError::Invalid(found)) = cloudevents::from_value(
        json!({"specversion": "1.0", "id": "e", "source": "s", "type": "api_calls", "subject": "acme"}),
        &ctx,
    ) else {
        panic!("expected violations");
    };
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!((found[0].field.as_str(), found[0].rule), ("data", Rule::Missing));
    assert!(matches!(cloudevents::batch_items(b"{}"), Err(EventError::Malformed(_))));
}

fn arb_event() -> impl Strategy<Value = UsageEvent> {
    let id = "[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}";
    let tenant = "[A-Za-z0-9][A-Za-z0-9_-]{0,63}";
    let metric = prop::sample::select(vec!["api_calls", "storage_bytes"]);
    let units = 0i128..=1_000_000_000_000i128 * 1_000_000_000;
    let offset_ms = -(35 * 86_400_000i64)..=(5 * 60_000i64);
    let source = "[a-z][a-z0-9 ._/-]{0,40}";
    let attributes = prop::collection::btree_map("[a-z_][a-z0-9_.-]{0,20}", "[ -~]{0,40}", 0..=16);
    (id, tenant, metric, units, offset_ms, source, attributes).prop_map(
        |(id, tenant, metric, units, offset_ms, source, attributes)| UsageEvent {
            id: tally_schemas::EventId::parse(id).unwrap(),
            tenant_id: tally_schemas::TenantId::parse(tenant).unwrap(),
            metric: tally_schemas::MetricName::parse(metric).unwrap(),
            value: tally_schemas::Quantity::from_units(units),
            timestamp: now() + TimeDelta::milliseconds(offset_ms),
            source,
            attributes,
        },
    )
}

proptest! {
    #[test]
    fn valid_events_round_trip_through_plain_json(event in arb_event()) {
        let catalogue = catalogue();
        let ctx = ValidationContext::new(&catalogue, now());
        let back = UsageEvent::from_json_slice(&event.to_json(), &ctx).unwrap();
        prop_assert_eq!(back, event);
    }

    #[test]
    fn the_typed_fast_path_agrees_with_the_field_by_field_path(event in arb_event(), break_it in 0usize..8) {
        let catalogue = catalogue();
        let ctx = ValidationContext::new(&catalogue, now());
        let mut value: Value = serde_json::from_slice(&event.to_json()).unwrap();
        match break_it {
            0 => value["value"] = json!(-1),
            1 => value["metric"] = json!("nope"),
            2 => value["extra"] = json!(1),
            3 => value["timestamp"] = json!(12),
            4 => value["id"] = json!(""),
            _ => {}
        }
        let text = value.to_string();
        let fast = UsageEvent::from_json_str(&text, &ctx);
        let slow = UsageEvent::from_json_slice(text.as_bytes(), &ctx);
        prop_assert_eq!(fast, slow);
    }

    #[test]
    fn valid_events_round_trip_through_cloudevents(event in arb_event()) {
        let catalogue = catalogue();
        let ctx = ValidationContext::new(&catalogue, now());
        let structured = serde_json::to_vec(&cloudevents::to_value(&event)).unwrap();
        let back = cloudevents::from_slice(&structured, &ctx).unwrap();
        prop_assert_eq!(back, event);
    }

    #[test]
    fn quantities_round_trip_through_text(units in any::<i64>()) {
        let q = tally_schemas::Quantity::from_units(i128::from(units));
        prop_assert_eq!(q.to_string().parse::<tally_schemas::Quantity>().unwrap(), q);
    }

    #[test]
    fn arbitrary_json_never_panics_and_errors_name_fields(
        id in prop::option::of(any::<String>()),
        tenant in prop::option::of(any::<String>()),
        value in prop::option::of(any::<f64>()),
        ts in prop::option::of(any::<String>()),
    ) {
        let catalogue = catalogue();
        let ctx = ValidationContext::new(&catalogue, now());
        let event = json!({"id": id, "tenant_id": tenant, "metric": "api_calls", "value": value, "timestamp": ts, "source": "s"});
        if let Err(EventError::Invalid(found)) = UsageEvent::from_json_value(event, &ctx) {
            prop_assert!(!found.is_empty());
            for v in found {
                prop_assert!(["id", "tenant_id", "value", "timestamp"].contains(&v.field.as_str()), "{:?}", v);
            }
        }
    }
}
