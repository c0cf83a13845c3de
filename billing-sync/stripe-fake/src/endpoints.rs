//! The endpoints: what each does to the store, and what Stripe refuses there.

use std::collections::BTreeMap;

use axum::http::Method;
use serde_json::Value;

use crate::Fake;
use crate::objects::{Customer, Formula, Meter, adjustment_json, list_json, summary_json};
use crate::paging::page;
use crate::store::{Refusal, at_most_100, invalid, missing};

pub type Form = BTreeMap<String, String>;

/// `payload[value]`-style keys with the given prefix, as a map of the inner names.
pub fn nested(form: &Form, prefix: &str) -> BTreeMap<String, String> {
    form.iter()
        .filter_map(|(key, value)| {
            let inner = key.strip_prefix(prefix)?.strip_prefix('[')?.strip_suffix(']')?;
            Some((inner.to_owned(), value.clone()))
        })
        .collect()
}

fn required<'a>(form: &'a Form, key: &str) -> Result<&'a str, Refusal> {
    form.get(key)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| invalid(Some("parameter_missing"), format!("Missing required param: {key}."), Some(key)))
}

fn integer(raw: &str, param: &str) -> Result<i64, Refusal> {
    raw.parse().map_err(|_| invalid(Some("parameter_invalid_integer"), format!("Invalid integer: {raw}"), Some(param)))
}

pub fn dispatch(
    fake: &Fake,
    method: &Method,
    path: &str,
    form: &Form,
    query: &Form,
    now: i64,
) -> Result<Value, Refusal> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        ("POST", ["v1", "customers"]) => {
            let mut store = fake.lock();
            let customer = Customer {
                id: store.next_id("cus"),
                created: now,
                name: form.get("name").cloned(),
                email: form.get("email").cloned(),
                metadata: nested(form, "metadata"),
            };
            store.customers.insert(customer.id.clone(), customer.clone());
            Ok(customer.to_json())
        }
        ("GET", ["v1", "customers", id]) => fake
            .lock()
            .customers
            .get(*id)
            .map(Customer::to_json)
            .ok_or_else(|| missing(format!("No such customer: '{id}'"), Some("id"))),
        ("DELETE", ["v1", "customers", id]) => {
            let deleted = fake.lock().customers.remove(*id);
            deleted
                .map(|c| serde_json::json!({"id": c.id, "object": "customer", "deleted": true}))
                .ok_or_else(|| missing(format!("No such customer: '{id}'"), Some("id")))
        }
        ("POST", ["v1", "billing", "meters"]) => create_meter(fake, form, now),
        ("GET", ["v1", "billing", "meters"]) => {
            // Stripe lists newest first.
            let meters = fake.lock().meters.values().rev().map(Meter::to_json).collect();
            let (data, has_more) = page(meters, query)?;
            Ok(list_json("/v1/billing/meters", data, has_more))
        }
        ("GET", ["v1", "billing", "meters", id]) => fake
            .lock()
            .meters
            .get(*id)
            .map(Meter::to_json)
            .ok_or_else(|| missing(format!("No such billing meter: '{id}'"), Some("id"))),
        ("POST", ["v1", "billing", "meter_events"]) => {
            let event_name = required(form, "event_name")?;
            let timestamp = form.get("timestamp").map(|t| integer(t, "timestamp")).transpose()?;
            let identifier = form.get("identifier").filter(|i| !i.is_empty()).cloned();
            let payload = nested(form, "payload");
            let event = fake.lock().record_event(event_name, payload, identifier, timestamp, now)?;
            Ok(event.to_json())
        }
        ("POST", ["v1", "billing", "meter_event_adjustments"]) => {
            let event_name = required(form, "event_name")?;
            let kind = required(form, "type")?;
            if kind != "cancel" {
                return Err(invalid(None, format!("Invalid type: {kind} (only `cancel` is supported)."), Some("type")));
            }
            let identifier = required(form, "cancel[identifier]")?;
            fake.lock().cancel_event(event_name, identifier, now)?;
            Ok(adjustment_json(event_name, identifier))
        }
        ("GET", ["v1", "billing", "meters", id, "event_summaries"]) => summaries(fake, id, query),
        _ => Err(Refusal {
            status: 404,
            kind: "invalid_request_error",
            code: None,
            message: format!("Unrecognized request URL ({method} {path})."),
            param: None,
        }),
    }
}

fn create_meter(fake: &Fake, form: &Form, now: i64) -> Result<Value, Refusal> {
    let display_name = required(form, "display_name")?.to_owned();
    let event_name = required(form, "event_name")?.to_owned();
    at_most_100(&event_name, "event_name")?;
    let formula = match required(form, "default_aggregation[formula]")? {
        "sum" => Formula::Sum,
        "count" => Formula::Count,
        "last" => Formula::Last,
        other => {
            return Err(invalid(None, format!("Invalid formula: {other}"), Some("default_aggregation[formula]")));
        }
    };
    let mut store = fake.lock();
    if store.meter_by_event(&event_name).is_some() {
        return Err(invalid(
            Some("resource_already_exists"),
            format!("An active meter with event_name {event_name:?} already exists."),
            Some("event_name"),
        ));
    }
    let meter = Meter {
        id: store.next_id("mtr"),
        created: now,
        display_name,
        event_name,
        formula,
        customer_payload_key: form
            .get("customer_mapping[event_payload_key]")
            .cloned()
            .unwrap_or_else(|| "stripe_customer_id".to_owned()),
        value_payload_key: form.get("value_settings[event_payload_key]").cloned().unwrap_or_else(|| "value".to_owned()),
    };
    store.meters.insert(meter.id.clone(), meter.clone());
    Ok(meter.to_json())
}

fn summaries(fake: &Fake, meter_id: &str, query: &Form) -> Result<Value, Refusal> {
    let customer = required(query, "customer")?;
    let start = integer(required(query, "start_time")?, "start_time")?;
    let end = integer(required(query, "end_time")?, "end_time")?;
    let step = match query.get("value_grouping_window").map(String::as_str) {
        None => None,
        Some("hour") => Some(3_600),
        Some("day") => Some(86_400),
        Some(other) => {
            return Err(invalid(
                None,
                format!("Invalid value_grouping_window: {other}"),
                Some("value_grouping_window"),
            ));
        }
    };
    let alignment = step.unwrap_or(60);
    if start % alignment != 0 || end % alignment != 0 || end <= start {
        return Err(invalid(
            None,
            format!("start_time and end_time must be aligned to {alignment} seconds and end_time after start_time."),
            Some("start_time"),
        ));
    }
    let store = fake.lock();
    let meter = store
        .meters
        .get(meter_id)
        .ok_or_else(|| missing(format!("No such billing meter: '{meter_id}'"), Some("id")))?;
    let windows: Vec<(i64, i64)> = match step {
        None => vec![(start, end)],
        Some(step) => {
            (0..).map(|n| start + n * step).take_while(|at| *at < end).map(|at| (at, (at + step).min(end))).collect()
        }
    };
    let data = windows
        .into_iter()
        .filter_map(|(from, to)| {
            let value = store.aggregate(meter, customer, from, to);
            let value = if step.is_none() { Some(value.unwrap_or(0.0)) } else { value };
            value.map(|v| summary_json(&format!("mtrusg_{}_{from}", meter.id), &meter.id, from, to, v))
        })
        .collect();
    let (data, has_more) = page(data, query)?;
    Ok(list_json(&format!("/v1/billing/meters/{meter_id}/event_summaries"), data, has_more))
}
