//! The wire form: the borrowed [`CheckedEvent`] and the owned [`UsageEvent`] write the same bytes,
//! and those bytes are what serde's derived form of the event writes.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use serde_json::json;
use tally_schemas::{
    CheckedEvent, EventId, MetricCatalogue, MetricName, Quantity, TenantId, UsageEvent, ValidationContext,
};

fn event_at(timestamp: DateTime<Utc>, attributes: BTreeMap<String, String>, source: String) -> UsageEvent {
    UsageEvent {
        id: EventId::parse("evt-1").unwrap(),
        tenant_id: TenantId::parse("acme").unwrap(),
        metric: MetricName::parse("api_calls").unwrap(),
        value: Quantity::from_units(1_500_000_000),
        timestamp,
        source,
        attributes,
    }
}

/// Seconds from year -5000 to year 200000, and a fraction of whole ms, µs or ns, or none.
fn arb_time() -> impl Strategy<Value = DateTime<Utc>> {
    let seconds = -220_000_000_000i64..=6_000_000_000_000i64;
    let nanos = prop_oneof![
        Just(0u32),
        (0u32..1000).prop_map(|ms| ms * 1_000_000),
        (0u32..1_000_000).prop_map(|us| us * 1000),
        0u32..1_000_000_000
    ];
    (seconds, nanos).prop_map(|(seconds, nanos)| DateTime::from_timestamp(seconds, nanos).unwrap())
}

proptest! {
    #[test]
    fn the_wire_form_is_serdes_form_of_the_event(
        timestamp in arb_time(),
        attributes in prop::collection::btree_map("[a-z_][a-z0-9_.-]{0,8}", any::<String>(), 0..=4),
        source in any::<String>(),
    ) {
        let event = event_at(timestamp, attributes, source);
        prop_assert_eq!(String::from_utf8(event.to_json()).unwrap(), serde_json::to_string(&event).unwrap());
    }

    #[test]
    fn a_checked_event_writes_what_its_owned_event_writes(
        seconds in -3_000i64..300,
        nanos in 0u32..1_000_000_000,
        attributes in prop::collection::vec(("[a-c]", "[ -~]{0,6}"), 0..=6),
    ) {
        let catalogue = MetricCatalogue::default();
        let now = DateTime::parse_from_rfc3339("2026-11-25T12:00:00Z").unwrap().with_timezone(&Utc);
        let ctx = ValidationContext::new(&catalogue, now);
        let timestamp = (now + chrono::TimeDelta::seconds(seconds) + chrono::TimeDelta::nanoseconds(i64::from(nanos)))
            .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        // Attributes as text, so a repeated name reaches the parser as the sender wrote it.
        let attributes: Vec<String> = attributes.iter().map(|(k, v)| format!("{}:{}", json!(k), json!(v))).collect();
        let text = format!(
            r#"{{"id":"e\u0031","tenant_id":"acme","metric":"api_calls","value":"2.5","timestamp":"{timestamp}","source":"s","attributes":{{{}}}}}"#,
            attributes.join(",")
        );
        let checked = CheckedEvent::from_json_str(&text, &ctx).unwrap();
        let owned = UsageEvent::from(checked.clone());
        prop_assert_eq!(checked.to_json(), owned.to_json());
        // The field-by-field path (through a JSON map) keeps the same attributes.
        prop_assert_eq!(&owned, &UsageEvent::from_json_slice(text.as_bytes(), &ctx).unwrap());
        prop_assert_eq!(UsageEvent::from_json_slice(&checked.to_json(), &ctx).unwrap(), owned);
    }
}

#[test]
fn a_repeated_attribute_keeps_its_last_value() {
    let catalogue = MetricCatalogue::default();
    let ctx = ValidationContext::new(&catalogue, Utc::now());
    let text = r#"{"id":"e","tenant_id":"acme","metric":"api_calls","value":1,"source":"s","attributes":{"b":"1","a":"x","b":"2"}}"#;
    let checked = CheckedEvent::from_json_str(text, &ctx).unwrap();
    let owned = UsageEvent::from(checked);
    assert_eq!(owned.attributes, BTreeMap::from([("a".to_owned(), "x".to_owned()), ("b".to_owned(), "2".to_owned())]));
}

#[test]
fn checked_events_borrow_from_the_text_and_report_its_fields() {
    let catalogue = MetricCatalogue::default();
    let now = Utc::now();
    let ctx = ValidationContext::new(&catalogue, now);
    let text = r#"{"id":"e-7","tenant_id":"acme","metric":"api_calls","value":"3","source":"gw"}"#;
    let checked = CheckedEvent::from_json_str(text, &ctx).unwrap();
    assert_eq!((checked.id(), checked.tenant_id(), checked.metric()), ("e-7", "acme", "api_calls"));
    assert_eq!((checked.value(), checked.timestamp()), (Quantity::from_int(3), now));
    let Err(tally_schemas::EventError::Invalid(found)) = CheckedEvent::from_json_str(
        r#"{"id":"","tenant_id":"acme","metric":"api_calls","value":1,"source":"s"}"#,
        &ctx,
    ) else {
        panic!("an empty id is refused");
    };
    assert_eq!(found[0].field, "id");
}
