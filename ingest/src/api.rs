//! `POST /v1/events`: authenticate, check, publish, and answer only once the broker has every
//! accepted event.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use tally_kit::producer::{PublishError, Publisher, Record};
use tally_kit::tenants::TenantDirectory;
use tally_schemas::topics::{HEADER_DLQ_DETAIL, HEADER_DLQ_REASON, HEADER_DLQ_STAGE};
use tally_schemas::{EventError, MetricCatalogue, Rule, Topics, ValidationContext, Violation};
use tokio_util::sync::CancellationToken;

use crate::config::HttpConfig;
use crate::error::ApiError;
use crate::intake::{self, Format, Item};
use crate::metrics::IngestMetrics;
use tally_kit::auth::{Authenticator, Principal};

#[derive(Debug, Clone)]
pub struct AppState {
    pub keys: Authenticator,
    pub tenants: TenantDirectory,
    pub publisher: Publisher,
    pub catalogue: Arc<MetricCatalogue>,
    pub topics: Arc<Topics>,
    pub http: Arc<HttpConfig>,
    pub retry_after_secs: u64,
    pub metrics: IngestMetrics,
    pub stopping: CancellationToken,
}

pub async fn post_events(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let outcome = handle(&state, &headers, body).await;
    let response = match outcome {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };
    state.metrics.requests.with_label_values(&[response.status().as_str()]).inc();
    state.metrics.queue_depth.set(i64::from(state.publisher.queue_depth()));
    response
}

async fn handle(state: &AppState, headers: &HeaderMap, body: Body) -> Result<Response, ApiError> {
    if state.stopping.is_cancelled() {
        return Err(ApiError::Unavailable {
            message: "ingest is shutting down".to_owned(),
            retry_after_secs: state.retry_after_secs,
            results: None,
        });
    }
    let header_str = |name| headers.get(name).and_then(|v: &axum::http::HeaderValue| v.to_str().ok());
    let principal = state.keys.authenticate(header_str(header::AUTHORIZATION)).await?;
    let binary_mode = crate::binary_mode::is_binary(headers);
    let format =
        if binary_mode { Format::CloudEvent } else { Format::from_content_type(header_str(header::CONTENT_TYPE))? };
    let max = state.http.max_body_bytes;
    let mut bytes = axum::body::to_bytes(body, max)
        .await
        .map_err(|_| ApiError::TooLarge(format!("the body is larger than {max} bytes: split the batch")))?;
    if binary_mode {
        bytes = crate::binary_mode::to_structured(headers, &bytes)?.into();
    }
    let ctx = ValidationContext::new(&state.catalogue, Utc::now());
    let mut items = intake::read(&bytes, format, state.http.max_batch_events, &principal, &ctx)?;
    check_tenants(state, &principal, &mut items).await?;
    publish(state, items, ctx.now).await
}

/// Refuses events of tenants that are unknown or not active. A tenant key whose own tenant is
/// not active is refused as a whole.
async fn check_tenants(state: &AppState, principal: &Principal, items: &mut [Item<'_>]) -> Result<(), ApiError> {
    let unavailable = |e: sqlx::Error| ApiError::Unavailable {
        message: format!("the tenant registry did not answer: {e}"),
        retry_after_secs: state.retry_after_secs,
        results: None,
    };
    if let Principal::Tenant(own) = principal {
        match state.tenants.lookup(own.as_str()).await.map_err(unavailable)? {
            Some(record) if record.is_active() => return Ok(()),
            Some(record) => {
                return Err(ApiError::Forbidden(format!(
                    "tenant \"{}\" is {}: it may not send usage",
                    own.as_str(),
                    record.status
                )));
            }
            None => {
                return Err(ApiError::Forbidden(format!("tenant \"{}\" is not in the tenant registry", own.as_str())));
            }
        }
    }
    // One registry answer per distinct tenant of the request; one map lookup per event.
    let mut verdicts: HashMap<String, Option<Violation>> = HashMap::new();
    for item in items.iter_mut() {
        let Ok(event) = &item.outcome else { continue };
        let tenant = event.tenant_id();
        let refusal = match verdicts.get(tenant) {
            Some(verdict) => verdict.clone(),
            None => {
                let verdict = match state.tenants.lookup(tenant).await.map_err(unavailable)? {
                    Some(record) if record.is_active() => None,
                    Some(record) => Some(Violation::new(
                        "tenant_id",
                        Rule::Unsupported,
                        format!("tenant {tenant:?} is {}: it may not send usage", record.status),
                    )),
                    None => Some(Violation::new(
                        "tenant_id",
                        Rule::Unsupported,
                        format!("tenant {tenant:?} is not in the tenant registry"),
                    )),
                };
                verdicts.insert(tenant.to_owned(), verdict.clone());
                verdict
            }
        };
        if let Some(violation) = refusal {
            item.outcome = Err(EventError::Invalid(vec![violation]));
        }
    }
    Ok(())
}

/// What became of one event, for the answer.
#[derive(Debug, Serialize)]
struct EventResult<'a> {
    index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<ErrorDetail<'a>>,
}

#[derive(Debug, Serialize)]
struct ErrorDetail<'a> {
    field: &'a str,
    rule: &'static str,
    message: &'a str,
}

fn event_result<'a>(index: usize, item: &'a Item<'_>, status: &'static str) -> EventResult<'a> {
    match &item.outcome {
        Ok(event) => EventResult { index, id: Some(event.id()), status, reason: None, errors: Vec::new() },
        Err(error) => {
            let errors = match error {
                EventError::Malformed(message) => vec![ErrorDetail { field: "", rule: "malformed", message }],
                EventError::Invalid(violations) => violations
                    .iter()
                    .map(|v| ErrorDetail { field: &v.field, rule: v.rule.code(), message: &v.message })
                    .collect(),
            };
            EventResult { index, id: None, status: "rejected", reason: Some(reason(error)), errors }
        }
    }
}

#[derive(Debug, Serialize)]
struct BatchAnswer<'a> {
    accepted: usize,
    rejected: usize,
    rejected_by_reason: BTreeMap<&'static str, usize>,
    results: Vec<EventResult<'a>>,
}

fn reason(error: &EventError) -> &'static str {
    match error.violations().first() {
        Some(v) if v.field == "tenant_id" && v.rule == Rule::Unsupported => "tenant_not_accepted",
        _ => error.reason_code(),
    }
}

/// `accepted_at`: the instant the events were validated at, carried to the aggregator.
async fn publish(state: &AppState, items: Vec<Item<'_>>, accepted_at: DateTime<Utc>) -> Result<Response, ApiError> {
    let started = Instant::now();
    let (accepted, dead_letters) = (state.publisher.acks(), state.publisher.acks());
    let mut published = vec![false; items.len()];
    let mut overloaded = false;
    let mut refused = None;
    for (index, item) in items.iter().enumerate() {
        match &item.outcome {
            Ok(event) => match state.publisher.enqueue_usage(&accepted, &state.topics.usage_events, event, accepted_at)
            {
                Ok(()) => published[index] = true,
                Err(PublishError::QueueFull) => {
                    overloaded = true;
                    break;
                }
                Err(PublishError::NotAcknowledged(error)) => {
                    refused = Some(error);
                    break;
                }
            },
            Err(error) => {
                let reason = reason(error);
                state.metrics.rejected.with_label_values(&[reason]).inc();
                let detail = error.to_string();
                let headers: [(&str, &[u8]); 3] = [
                    (HEADER_DLQ_REASON, reason.as_bytes()),
                    (HEADER_DLQ_DETAIL, detail.as_bytes()),
                    (HEADER_DLQ_STAGE, b"ingest"),
                ];
                let key = item.tenant().unwrap_or_default().as_bytes();
                let record =
                    Record { topic: &state.topics.dead_letter, key, payload: item.raw.as_bytes(), headers: &headers };
                if let Err(error) = state.publisher.enqueue(&dead_letters, record) {
                    state.metrics.dead_letter_failures.inc();
                    tracing::warn!(%error, reason, "refused event not dead-lettered");
                }
            }
        }
    }

    // Every queued message settles before the answer, also when the request fails part-way.
    let settlement = accepted.settled().await;
    if !settlement.is_complete() {
        for (item, published) in items.iter().zip(published.iter_mut()) {
            if let Ok(event) = &item.outcome
                && settlement.may_have_lost(event.tenant_id().as_bytes(), event.id())
            {
                *published = false;
            }
        }
    }
    let mut failure = settlement.into_result().err();
    let dead_lettered = dead_letters.settled().await;
    if !dead_lettered.is_complete() {
        let lost = dead_lettered.failures.len() + dead_lettered.unreported;
        state.metrics.dead_letter_failures.inc_by(lost as u64);
        let error = dead_lettered.into_result().err().map(|e| e.to_string()).unwrap_or_default();
        tracing::warn!(lost, error, "refused events not dead-lettered");
    }
    if let Some(error) = refused {
        failure.get_or_insert(PublishError::NotAcknowledged(error));
    }
    state.metrics.publish_seconds.observe(started.elapsed().as_secs_f64());
    let published_count = published.iter().filter(|p| **p).count();
    state.metrics.accepted.inc_by(published_count as u64);

    let results: Vec<EventResult<'_>> = items
        .iter()
        .enumerate()
        .map(|(index, item)| match (&item.outcome, published[index]) {
            (Ok(_), true) => event_result(index, item, "accepted"),
            (Ok(_), false) => event_result(index, item, "not_published"),
            (Err(_), _) => event_result(index, item, "rejected"),
        })
        .collect();
    let as_json = |results: &[EventResult<'_>]| serde_json::to_value(results).unwrap_or(Value::Null);
    if overloaded {
        return Err(ApiError::Overloaded {
            retry_after_secs: state.retry_after_secs,
            results: Some(as_json(&results)),
        });
    }
    if let Some(error) = failure {
        return Err(unavailable(
            state,
            format!("the broker did not acknowledge every event: {error}"),
            Some(as_json(&results)),
        ));
    }
    let rejected = items.iter().filter(|item| item.outcome.is_err()).count();
    let status = if published_count == 0 { StatusCode::UNPROCESSABLE_ENTITY } else { StatusCode::ACCEPTED };
    let mut rejected_by_reason: BTreeMap<&'static str, usize> = BTreeMap::new();
    for item in &items {
        if let Err(error) = &item.outcome {
            *rejected_by_reason.entry(reason(error)).or_default() += 1;
        }
    }
    let answer = BatchAnswer { accepted: published_count, rejected, rejected_by_reason, results };
    // Sized up front: an answer runs to about 50 bytes an event, and growing it by doubling
    // would copy it several times.
    let mut body = Vec::with_capacity(128 + 64 * items.len());
    serde_json::to_writer(&mut body, &answer).unwrap_or_else(|e| unreachable!("the answer serialises: {e}"));
    Ok((status, [(header::CONTENT_TYPE, "application/json")], body).into_response())
}

fn unavailable(state: &AppState, message: String, results: Option<Value>) -> ApiError {
    ApiError::Unavailable { message, retry_after_secs: state.retry_after_secs, results }
}
