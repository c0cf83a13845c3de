//! Request handling: authentication, faults, rate limit, idempotency, then the endpoint.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::Fake;
use crate::faults::{Fate, Faults};
use crate::objects::{Customer, Formula, Meter, error_json, list_json, summary_json};
use crate::store::{Refusal, SavedAnswer, invalid, missing};

pub async fn set_faults(State(fake): State<Arc<Fake>>, Json(faults): Json<Faults>) -> Json<Faults> {
    fake.set_faults(faults);
    Json(faults)
}

fn refuse(refusal: &Refusal) -> Response {
    let status = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::BAD_REQUEST);
    (status, Json(error_json(refusal.kind, refusal.code, &refusal.message, refusal.param.as_deref()))).into_response()
}

fn api_error(status: StatusCode, kind: &'static str, code: Option<&'static str>, message: &str) -> Response {
    (status, Json(error_json(kind, code, message, None))).into_response()
}

type Form = BTreeMap<String, String>;

/// `payload[value]`-style keys with the given prefix, as a map of the inner names.
fn nested(form: &Form, prefix: &str) -> BTreeMap<String, String> {
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

/// The API key, sent as Stripe takes it: `Bearer <key>` or HTTP basic with the key as user name.
fn secret_key(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("authorization")?.to_str().ok()?;
    if let Some(key) = value.strip_prefix("Bearer ") {
        return Some(key.to_owned());
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(value.strip_prefix("Basic ")?).ok()?;
    let user = String::from_utf8(decoded).ok()?;
    Some(user.split(':').next().unwrap_or_default().to_owned())
}

pub async fn api(State(fake): State<Arc<Fake>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let authorized =
        secret_key(&headers).is_some_and(|key| key.starts_with("sk_test_") && key.len() > "sk_test_".len());
    if !authorized {
        return api_error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            None,
            "Invalid API Key provided: send `Authorization: Bearer sk_test_…`.",
        );
    }
    let now = chrono::Utc::now().timestamp();
    let (fate, delay) = {
        let mut dice = fake.dice.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        (dice.fate(), dice.faults.delay_ms)
    };
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    match fate {
        Fate::RateLimited => {
            return api_error(
                StatusCode::TOO_MANY_REQUESTS,
                "invalid_request_error",
                Some("rate_limit"),
                "Too many requests hit the API too quickly.",
            );
        }
        Fate::ServerError => {
            return api_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "api_error",
                None,
                "Something went wrong on Stripe's end.",
            );
        }
        Fate::Delayed(wait) => tokio::time::sleep(wait).await,
        Fate::Normal | Fate::AnswerLost => {}
    }
    if fake.over_rate(now) {
        return api_error(
            StatusCode::TOO_MANY_REQUESTS,
            "invalid_request_error",
            Some("rate_limit"),
            "Too many requests hit the API too quickly.",
        );
    }
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let fingerprint = {
        let mut hash = Sha256::new();
        hash.update(method.as_str());
        hash.update(uri.path());
        hash.update(&body);
        format!("{:x}", hash.finalize())
    };
    if method == Method::POST
        && let Some(key) = &key
    {
        let saved = fake.lock().idempotency.get(key).cloned();
        if let Some(saved) = saved {
            if saved.fingerprint != fingerprint {
                return api_error(
                    StatusCode::BAD_REQUEST,
                    "idempotency_error",
                    None,
                    &format!(
                        "Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '{key}'."
                    ),
                );
            }
            return (StatusCode::OK, [("idempotent-replayed", "true")], Json(saved.body)).into_response();
        }
    }
    let form: Form =
        serde_urlencoded::from_bytes::<Vec<(String, String)>>(&body).unwrap_or_default().into_iter().collect();
    let query: Form = serde_urlencoded::from_str::<Vec<(String, String)>>(uri.query().unwrap_or(""))
        .unwrap_or_default()
        .into_iter()
        .collect();
    let answer = dispatch(&fake, &method, uri.path(), &form, &query, now);
    match answer {
        Ok(value) => {
            if method == Method::POST {
                fake.touched();
                if let Some(key) = key {
                    fake.lock().idempotency.insert(key, SavedAnswer { fingerprint, body: value.clone() });
                }
            }
            if fate == Fate::AnswerLost {
                return (StatusCode::BAD_GATEWAY, "upstream connection lost").into_response();
            }
            Json(value).into_response()
        }
        Err(refusal) => refuse(&refusal),
    }
}

fn dispatch(fake: &Fake, method: &Method, path: &str, form: &Form, query: &Form, now: i64) -> Result<Value, Refusal> {
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
        ("POST", ["v1", "billing", "meters"]) => create_meter(fake, form, now),
        ("GET", ["v1", "billing", "meters"]) => {
            let meters = fake.lock().meters.values().map(Meter::to_json).collect();
            Ok(list_json("/v1/billing/meters", meters))
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
    let mut windows: HashMap<i64, i64> = HashMap::new();
    match step {
        None => {
            windows.insert(start, end);
        }
        Some(step) => {
            let mut at = start;
            while at < end {
                windows.insert(at, (at + step).min(end));
                at += step;
            }
        }
    }
    let mut starts: Vec<i64> = windows.keys().copied().collect();
    starts.sort_unstable();
    let data = starts
        .into_iter()
        .filter_map(|from| {
            let to = windows[&from];
            let value = store.aggregate(meter, customer, from, to);
            let value = if step.is_none() { Some(value.unwrap_or(0.0)) } else { value };
            value.map(|v| summary_json(&format!("mtrusg_{}_{from}", meter.id), &meter.id, from, to, v))
        })
        .collect();
    Ok(list_json(&format!("/v1/billing/meters/{meter_id}/event_summaries"), data))
}
