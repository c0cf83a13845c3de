//! The one-pass batch reader against the general path: wherever it reads a body, every event
//! comes out as `CheckedEvent::from_json_str` makes it of the same text.

#![allow(clippy::unwrap_used)]

use chrono::{DateTime, Utc};
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use serde_json::value::RawValue;
use tally_schemas::batch::read_plain_json;
use tally_schemas::{CheckedEvent, MetricCatalogue, ValidationContext};

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-25T12:00:00Z").unwrap().with_timezone(&Utc)
}

/// The general path: split into raw items, each parsed on its own.
fn general<'a>(body: &'a str, ctx: &ValidationContext<'_>) -> Vec<(&'a str, Result<CheckedEvent<'a>, String>)> {
    let items: Vec<&RawValue> = if body.trim_start().starts_with('[') {
        serde_json::from_str(body).unwrap()
    } else {
        vec![serde_json::from_str(body).unwrap()]
    };
    items
        .into_iter()
        .map(|raw| (raw.get(), CheckedEvent::from_json_str(raw.get(), ctx).map_err(|e| e.to_string())))
        .collect()
}

/// Field texts, from plain to awkward: escapes, control characters, wrong types, nulls, numbers
/// of every JSON form, strings that are not numbers.
fn field(name: &'static str) -> impl Strategy<Value = String> {
    let text = prop_oneof![
        24 => "[a-z0-9][a-z0-9_-]{0,10}".prop_map(|s| format!("\"{s}\"")),
        1 => Just("\"a\\u0062c\"".to_owned()),
        1 => Just("\"tab\\there\"".to_owned()),
        1 => Just("\"\"".to_owned()),
        1 => Just("\"é ✓\"".to_owned()),
        1 => Just("7".to_owned()),
        1 => Just("null".to_owned()),
    ];
    let value = prop_oneof![
        12 => (0u64..1_000_000).prop_map(|v| v.to_string()),
        1 => Just("-3".to_owned()),
        1 => Just("-0".to_owned()),
        1 => Just("007".to_owned()),
        1 => Just("2.5".to_owned()),
        1 => Just("1e3".to_owned()),
        1 => Just("18446744073709551616".to_owned()),
        1 => Just("\"12.50\"".to_owned()),
        1 => Just("\"1e3\"".to_owned()),
        1 => Just("true".to_owned()),
    ];
    let metric = prop_oneof![
        4 => Just("\"api_calls\"".to_owned()),
        1 => Just("\"nope\"".to_owned()),
    ];
    let timestamp = prop_oneof![
        3 => Just("\"2026-11-25T11:59:00Z\"".to_owned()),
        3 => Just("\"2026-11-25T11:59:00.123+01:00\"".to_owned()),
        1 => Just("\"2020-01-01T00:00:00Z\"".to_owned()),
        1 => Just("\"yesterday\"".to_owned()),
        1 => Just("null".to_owned()),
        1 => Just("12".to_owned()),
    ];
    let attributes = prop_oneof![
        3 => Just("{}".to_owned()),
        3 => Just("null".to_owned()),
        3 => Just("{\"b\":\"1\",\"a\":\"2\"}".to_owned()),
        3 => Just("{\"a\":\"1\",\"a\":\"2\"}".to_owned()),
        3 => Just("{ \"route\" : \"/v1\" , \"bad key\":\"x\" }".to_owned()),
        1 => Just("{\"a\":1}".to_owned()),
        1 => Just("{\"a\":\"\\n\"}".to_owned()),
        1 => Just("[]".to_owned()),
    ];
    match name {
        "value" => value.boxed(),
        "metric" => metric.boxed(),
        "timestamp" => timestamp.boxed(),
        "attributes" => attributes.boxed(),
        _ => text.boxed(),
    }
}

fn event() -> impl Strategy<Value = String> {
    let names = ["id", "tenant_id", "metric", "value", "timestamp", "source", "attributes"];
    let present = prop::collection::vec(any::<bool>(), names.len());
    let values: Vec<_> = names.iter().map(|name| field(name)).collect();
    let whitespace = prop::sample::select(vec!["", " ", "\n\t", "\r\n "]);
    (present, values, whitespace, prop::bool::weighted(0.05), 0usize..20).prop_map(
        move |(present, values, ws, extra, duplicate)| {
            let mut fields: Vec<String> = names
                .iter()
                .zip(&values)
                .zip(&present)
                // The required fields are there most of the time.
                .filter(|((name, _), present)| {
                    **present || ["id", "tenant_id", "metric", "value", "source"].contains(name)
                })
                .map(|((name, value), _)| format!("{ws}\"{name}\"{ws}:{ws}{value}{ws}"))
                .collect();
            if extra {
                fields.push("\"extra\":1".to_owned());
            }
            if duplicate == 1 {
                fields.push(format!("\"id\":{}", values[0]));
            }
            format!("{{{}}}", fields.join(","))
        },
    )
}

/// Runs the comparison on 2,000 generated bodies and checks that the reader took a fair share
/// of them (a reader that never reads would agree with anything).
#[test]
fn every_event_it_reads_is_what_the_general_path_makes_of_it() {
    let catalogue = MetricCatalogue::default();
    let ctx = ValidationContext::new(&catalogue, now());
    let bodies = (prop::collection::vec(event(), 1..6), any::<bool>(), prop::sample::select(vec!["", " ", "\n"]));
    let mut runner = TestRunner::new(ProptestConfig { cases: 2_000, ..ProptestConfig::default() });
    let read_bodies = AtomicUsize::new(0);
    runner
        .run(&bodies, |(events, as_array, ws)| {
            let body = if as_array || events.len() > 1 {
                format!("{ws}[{ws}{}{ws}]{ws}", events.join(&format!("{ws},{ws}")))
            } else {
                format!("{ws}{}{ws}", events[0])
            };
            if let Some(read) = read_plain_json(&body, &ctx) {
                read_bodies.fetch_add(1, Ordering::Relaxed);
                let read: Vec<_> =
                    read.into_iter().map(|(raw, outcome)| (raw, outcome.map_err(|e| e.to_string()))).collect();
                prop_assert_eq!(read, general(&body, &ctx), "{}", body);
            }
            Ok(())
        })
        .unwrap();
    let read_bodies = read_bodies.into_inner();
    assert!(read_bodies >= 200, "the reader read only {read_bodies} of 2000 bodies");
}

#[test]
fn a_plain_batch_is_read_in_one_pass_and_anything_else_is_left_to_the_general_path() {
    let catalogue = MetricCatalogue::default();
    let ctx = ValidationContext::new(&catalogue, now());
    let plain = r#"[{"id":"e1","tenant_id":"acme","metric":"api_calls","value":2,"source":"s","attributes":{"r":"x"}},
        {"id":"e2","tenant_id":"acme","metric":"nope","value":"1.5","timestamp":null,"source":"s"}]"#;
    let read = read_plain_json(plain, &ctx).expect("a plain batch is read");
    assert_eq!(read.len(), 2);
    assert_eq!(read[0].1.as_ref().unwrap().value(), tally_schemas::Quantity::from_int(2));
    assert!(read[1].1.is_err(), "an unknown metric is refused as on the general path");
    for outside in [
        "[]",
        "[{}]",
        r#"{"id":"e\u0031","tenant_id":"acme","metric":"api_calls","value":1,"source":"s"}"#,
        r#"{"id":"e1","tenant_id":"acme","metric":"api_calls","value":1.5,"source":"s"}"#,
        r#"{"id":"e1","tenant_id":"acme","metric":"api_calls","value":1,"source":"s","x":1}"#,
        r#"[{"id":"e1","tenant_id":"acme","metric":"api_calls","value":1,"source":"s"},]"#,
        r#"{"id":"e1","tenant_id":"acme","metric":"api_calls","value":1,"source":"s"} trailing"#,
    ] {
        assert!(read_plain_json(outside, &ctx).is_none(), "{outside}");
    }
}
