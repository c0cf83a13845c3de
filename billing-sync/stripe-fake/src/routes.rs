//! Request handling, in Stripe's order: authentication, parameters, idempotency (a key in use
//! by a request still running is a 409; a finished one replays its answer when the parameters
//! match), one concurrent meter event per customer and meter, faults, the rate limit, then the
//! endpoint. Every answer carries a `Request-Id`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::Fake;
use crate::endpoints::{Form, dispatch};
use crate::faults::{Fate, Faults};
use crate::objects::error_json;
use crate::store::{Refusal, SavedAnswer};

pub async fn set_faults(State(fake): State<Arc<Fake>>, Json(faults): Json<Faults>) -> Json<Faults> {
    fake.set_faults(faults);
    Json(faults)
}

/// `POST /_fake/clock {"offset_secs": N}`: the fake's clock runs N seconds ahead of the host's
/// (tests of Stripe's time rules, such as the 24-hour cancellation window).
pub async fn set_clock(State(fake): State<Arc<Fake>>, Json(clock): Json<crate::Clock>) -> Json<crate::Clock> {
    fake.set_clock(clock);
    Json(clock)
}

fn refuse(refusal: &Refusal) -> Response {
    let status = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::BAD_REQUEST);
    (status, Json(error_json(refusal.kind, refusal.code, &refusal.message, refusal.param.as_deref()))).into_response()
}

fn api_error(status: StatusCode, kind: &'static str, code: Option<&'static str>, message: &str) -> Response {
    (status, Json(error_json(kind, code, message, None))).into_response()
}

fn rate_limited(message: &str) -> Response {
    api_error(StatusCode::TOO_MANY_REQUESTS, "invalid_request_error", Some("rate_limit"), message)
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

/// Removes its entry from a set of requests in flight when the request ends, however it ends.
struct InFlight<'a, T: std::hash::Hash + Eq> {
    set: &'a Mutex<HashSet<T>>,
    entry: Option<T>,
}

impl<T: std::hash::Hash + Eq> Drop for InFlight<'_, T> {
    fn drop(&mut self) {
        if let Some(entry) = self.entry.take() {
            self.set.lock().unwrap_or_else(PoisonError::into_inner).remove(&entry);
        }
    }
}

/// The parameters as Stripe compares them for a replay: method, path and the sorted pairs.
fn fingerprint(method: &Method, path: &str, pairs: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = pairs.iter().collect();
    sorted.sort();
    let mut hash = Sha256::new();
    hash.update(method.as_str());
    hash.update([0]);
    hash.update(path);
    for (key, value) in sorted {
        hash.update([0]);
        hash.update(key);
        hash.update([1]);
        hash.update(value);
    }
    format!("{:x}", hash.finalize())
}

fn parse(raw: &[u8], what: &str) -> Result<Vec<(String, String)>, Box<Response>> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(raw).map_err(|e| {
        let message = format!("Invalid {what} encoding: {e}");
        Box::new(api_error(StatusCode::BAD_REQUEST, "invalid_request_error", None, &message))
    })
}

pub async fn api(State(fake): State<Arc<Fake>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let mut response = handle(&fake, &method, &uri, &headers, &body).await;
    if let Ok(id) = HeaderValue::from_str(&fake.request_id()) {
        response.headers_mut().insert("request-id", id);
    }
    response
}

async fn handle(fake: &Fake, method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Response {
    let authorized = secret_key(headers).is_some_and(|key| key.starts_with("sk_test_") && key.len() > "sk_test_".len());
    if !authorized {
        return api_error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            None,
            "Invalid API Key provided: send `Authorization: Bearer sk_test_…`.",
        );
    }
    let now = fake.now();
    let pairs = match parse(body, "form") {
        Ok(pairs) => pairs,
        Err(response) => return *response,
    };
    let query: Form = match parse(uri.query().unwrap_or("").as_bytes(), "query") {
        Ok(pairs) => pairs.into_iter().collect(),
        Err(response) => return *response,
    };
    let print = fingerprint(method, uri.path(), &pairs);
    let form: Form = pairs.into_iter().collect();
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let mut _key_in_use = None;
    if *method == Method::POST
        && let Some(key) = &key
    {
        let mut in_flight = fake.idempotency_in_flight.lock().unwrap_or_else(PoisonError::into_inner);
        let saved = fake.lock().idempotency.get(key).cloned();
        if let Some(saved) = saved {
            if saved.fingerprint != print {
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
        if !in_flight.insert(key.clone()) {
            return api_error(
                StatusCode::CONFLICT,
                "idempotency_error",
                Some("idempotency_key_in_use"),
                &format!(
                    "There is currently another in-progress request using this Stripe-Idempotency-Key ('{key}'); retry later."
                ),
            );
        }
        _key_in_use = Some(InFlight { set: &fake.idempotency_in_flight, entry: Some(key.clone()) });
    }
    let mut _metering = None;
    if *method == Method::POST
        && uri.path().trim_end_matches('/') == "/v1/billing/meter_events"
        && let (Some(event_name), Some(customer)) = (form.get("event_name"), meter_customer(fake, &form))
    {
        let slot = (event_name.clone(), customer);
        if !fake.metering_in_flight.lock().unwrap_or_else(PoisonError::into_inner).insert(slot.clone()) {
            return rate_limited("Only one concurrent meter event is allowed per customer and meter; retry later.");
        }
        _metering = Some(InFlight { set: &fake.metering_in_flight, entry: Some(slot) });
    }
    let (fate, delay) = {
        let mut dice = fake.dice.lock().unwrap_or_else(PoisonError::into_inner);
        (dice.fate(), dice.faults.delay_ms)
    };
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    match fate {
        Fate::RateLimited => return rate_limited("Too many requests hit the API too quickly."),
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
        return rate_limited("Too many requests hit the API too quickly.");
    }
    match dispatch(fake, method, uri.path(), &form, &query, now) {
        Ok(value) => {
            if *method != Method::GET {
                fake.touched();
                if let Some(key) = key {
                    fake.lock().idempotency.insert(key, SavedAnswer { fingerprint: print, body: value.clone() });
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

/// The customer a meter event is for, by its meter's customer payload key.
fn meter_customer(fake: &Fake, form: &Form) -> Option<String> {
    let store = fake.lock();
    let meter = store.meter_by_event(form.get("event_name")?)?;
    form.get(&format!("payload[{}]", meter.customer_payload_key)).cloned()
}
