//! The HTTP JSON API: one endpoint per check, a combined check, reservations, and a tenant's
//! limits with usage and its recent denials.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tally_schemas::tiers::{Limit, RateLimit};

use crate::checks::Checks;
use crate::decision::{Decision, Kind, Reason};
use crate::reservations::{self, Resource};

pub type AppState = Arc<Checks>;

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

fn body<T>(payload: Result<Json<T>, JsonRejection>) -> Result<T, Box<Response>> {
    payload.map(|Json(value)| value).map_err(|rejection| {
        Box::new(error(
            rejection.status(),
            format!("{}: send a JSON object as documented in the enforcer API", rejection.body_text()),
        ))
    })
}

fn status_of(decision: &Decision) -> StatusCode {
    match (decision.allowed, decision.reason) {
        (true, _) => StatusCode::OK,
        (false, Reason::RateLimited | Reason::CostAboveBurst) => StatusCode::TOO_MANY_REQUESTS,
        (false, Reason::Unavailable) => StatusCode::SERVICE_UNAVAILABLE,
        (false, _) => StatusCode::FORBIDDEN,
    }
}

/// `Retry-After` and the IETF `RateLimit-Policy` / `RateLimit` fields of a rate decision.
fn rate_headers(decision: &Decision, headers: &mut HeaderMap) {
    if let Some(retry_ms) = decision.retry_after_ms {
        headers.insert("retry-after", HeaderValue::from(retry_ms.div_ceil(1_000).max(1)));
    }
    if let (Some(limit), Some(remaining), Some(reset_ms), Some(window_ms)) =
        (decision.limit, decision.remaining, decision.reset_after_ms, decision.window_ms)
    {
        let policy = format!("\"tenant\";q={limit};w={}", window_ms.div_ceil(1_000).max(1));
        let state = format!("\"tenant\";r={remaining};t={}", reset_ms.div_ceil(1_000));
        if let (Ok(policy), Ok(state)) = (HeaderValue::from_str(&policy), HeaderValue::from_str(&state)) {
            headers.insert("ratelimit-policy", policy);
            headers.insert("ratelimit", state);
        }
    }
}

fn answer(decision: Decision) -> Response {
    let mut headers = HeaderMap::new();
    if decision.kind == Kind::Rate {
        rate_headers(&decision, &mut headers);
    }
    (status_of(&decision), headers, Json(decision)).into_response()
}

fn timed(histogram: &prometheus::Histogram, started: Instant) {
    histogram.observe(started.elapsed().as_secs_f64());
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateCheck {
    pub tenant_id: String,
    /// Cells this request costs (default 1).
    #[serde(default)]
    pub cost: Option<NonZeroU32>,
}

pub async fn check_rate(State(checks): State<AppState>, payload: Result<Json<RateCheck>, JsonRejection>) -> Response {
    let started = Instant::now();
    let request = match body(payload) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    let decision = checks.rate(&request.tenant_id, request.cost.unwrap_or(NonZeroU32::MIN));
    timed(&checks.metrics.endpoint_latency.rate, started);
    answer(decision)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapCheck {
    pub tenant_id: String,
    /// Users to add (default 1) or bytes to store.
    pub amount: Option<u64>,
}

async fn reserve(checks: &Checks, request: CapCheck, resource: Resource) -> Response {
    let started = Instant::now();
    let amount = request.amount.unwrap_or(1);
    if amount == 0 {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "amount must be at least 1".to_owned());
    }
    let decision = checks.reserve(&request.tenant_id, resource, amount).await;
    let latency = &checks.metrics.endpoint_latency;
    timed(if resource == Resource::Users { &latency.users } else { &latency.storage }, started);
    answer(decision)
}

pub async fn check_users(State(checks): State<AppState>, payload: Result<Json<CapCheck>, JsonRejection>) -> Response {
    match body(payload) {
        Ok(request) => reserve(&checks, request, Resource::Users).await,
        Err(response) => *response,
    }
}

pub async fn check_storage(State(checks): State<AppState>, payload: Result<Json<CapCheck>, JsonRejection>) -> Response {
    match body(payload) {
        Ok(request) => reserve(&checks, request, Resource::Storage).await,
        Err(response) => *response,
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CombinedCheck {
    pub tenant_id: String,
    pub rate_cost: Option<NonZeroU32>,
    pub users: Option<u64>,
    pub storage_bytes: Option<u64>,
}

#[derive(Debug, Serialize)]
struct CombinedAnswer {
    allowed: bool,
    decisions: Vec<Decision>,
}

/// Every check the request names; allowed only if all are. Holds taken for users or storage
/// are released again when another check denies.
pub async fn check_all(
    State(checks): State<AppState>,
    payload: Result<Json<CombinedCheck>, JsonRejection>,
) -> Response {
    let started = Instant::now();
    let request = match body(payload) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    let mut decisions = Vec::new();
    if let Some(cost) = request.rate_cost {
        decisions.push(checks.rate(&request.tenant_id, cost));
    }
    for (amount, resource) in [(request.users, Resource::Users), (request.storage_bytes, Resource::Storage)] {
        if let Some(amount) = amount.filter(|a| *a > 0) {
            decisions.push(checks.reserve(&request.tenant_id, resource, amount).await);
        }
    }
    if decisions.is_empty() {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "name at least one of rate_cost, users, storage_bytes".to_owned(),
        );
    }
    let allowed = decisions.iter().all(|d| d.allowed);
    if !allowed {
        for id in decisions.iter_mut().filter_map(|d| d.reservation_id.take()) {
            let _released = reservations::release(&checks.pool, &id).await;
        }
    }
    timed(&checks.metrics.endpoint_latency.combined, started);
    let mut headers = HeaderMap::new();
    if let Some(rate) = decisions.iter().find(|d| d.kind == Kind::Rate) {
        rate_headers(rate, &mut headers);
    }
    let status = decisions.iter().find(|d| !d.allowed).map_or(StatusCode::OK, status_of);
    (status, headers, Json(CombinedAnswer { allowed, decisions })).into_response()
}

pub async fn commit(State(checks): State<AppState>, Path(id): Path<String>) -> Response {
    match reservations::commit(&checks.pool, &id, checks.settings.committed_ttl_secs).await {
        Ok(true) => Json(json!({ "reservation_id": id, "state": "committed" })).into_response(),
        Ok(false) => {
            error(StatusCode::NOT_FOUND, format!("reservation {id} is unknown, released or expired: reserve again"))
        }
        Err(failure) => error(StatusCode::SERVICE_UNAVAILABLE, format!("committing failed: {failure}")),
    }
}

pub async fn release(State(checks): State<AppState>, Path(id): Path<String>) -> Response {
    match reservations::release(&checks.pool, &id).await {
        Ok(true) => Json(json!({ "reservation_id": id, "state": "released" })).into_response(),
        Ok(false) => error(StatusCode::NOT_FOUND, format!("reservation {id} is unknown, released or expired")),
        Err(failure) => error(StatusCode::SERVICE_UNAVAILABLE, format!("releasing failed: {failure}")),
    }
}

fn cap_view(limit: Limit, used: u64) -> serde_json::Value {
    match limit {
        Limit::Unlimited => json!({ "limit": null, "used": used, "percent": null }),
        Limit::Capped(cap) => json!({
            "limit": cap,
            "used": used,
            "remaining": cap.saturating_sub(used),
            "percent": if cap == 0 { 100.0 } else { used as f64 * 100.0 / cap as f64 },
        }),
    }
}

/// A tenant's status, tier, limits, current usage and percentages.
pub async fn tenant_limits(State(checks): State<AppState>, Path(tenant): Path<String>) -> Response {
    let usage = checks.usage.get(&tenant);
    let view = checks.registry.with(&tenant, |found| {
        found.map(|(_, entry)| {
            let rate = match entry.limits.rate {
                RateLimit::Unlimited => json!(null),
                RateLimit::Quota(quota) => json!({ "per_second": quota.per_second, "burst": quota.burst }),
            };
            json!({
                "tenant_id": tenant,
                "status": entry.status,
                "tier": entry.tier,
                "users": cap_view(entry.limits.max_users, usage.users),
                "storage_bytes": cap_view(entry.limits.max_storage_bytes, usage.storage_bytes),
                "storage_alert_bytes": entry.limits.storage_alert_bytes(),
                "rate_limit": rate,
                "usage_age_ms": checks.usage.age().map(|age| age.as_millis() as u64),
            })
        })
    });
    match view {
        Some(view) => Json(view).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("tenant {tenant:?} is not in the platform's registry")),
    }
}

pub async fn tenant_denials(State(checks): State<AppState>, Path(tenant): Path<String>) -> Response {
    Json(json!({ "tenant_id": tenant, "denials": checks.audit.for_tenant(&tenant, 100) })).into_response()
}
