//! The HTTP JSON API: one endpoint per check, a combined check, and reservations' commit and
//! release ([`crate::views`] has a tenant's limits and denials). Every handler runs after [`crate::access::authenticate`]
//! and checks the tenant it is asked about against the caller's scope first.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tally_kit::auth::Principal;

use crate::access::{Access, Refusal};
use crate::checks::Checks;
use crate::decision::{Decision, Kind, Reason};
use crate::reservations::{self, Finished, MAX_AMOUNT, Resource};

/// What the handlers share.
#[derive(Debug)]
pub struct ApiState {
    pub checks: Arc<Checks>,
    pub access: Arc<Access>,
}

pub type AppState = Arc<ApiState>;

pub(crate) fn error(status: StatusCode, reason: &str, message: String) -> Response {
    (status, Json(json!({ "error": message, "reason": reason }))).into_response()
}

/// A request the handler cannot take, answered with its status and what to fix.
#[derive(Debug)]
struct BadRequest {
    status: StatusCode,
    message: String,
}

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        error(self.status, "invalid", self.message)
    }
}

fn body<T>(payload: Result<Json<T>, JsonRejection>) -> Result<T, BadRequest> {
    payload.map(|Json(value)| value).map_err(|rejection| BadRequest {
        status: rejection.status(),
        message: format!("{}: send a JSON object as documented in the enforcer API", rejection.body_text()),
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

fn amount_of(requested: Option<u64>, field: &str) -> Result<u64, BadRequest> {
    let refused = |message: String| Err(BadRequest { status: StatusCode::UNPROCESSABLE_ENTITY, message });
    match requested.unwrap_or(1) {
        0 => refused(format!("{field} must be at least 1")),
        n if n > MAX_AMOUNT => refused(format!("{field} must be at most {MAX_AMOUNT}")),
        n => Ok(n),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateCheck {
    pub tenant_id: String,
    /// Cells this request costs (default 1).
    #[serde(default)]
    pub cost: Option<NonZeroU32>,
}

pub async fn check_rate(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    payload: Result<Json<RateCheck>, JsonRejection>,
) -> Response {
    let started = Instant::now();
    let request = match body(payload) {
        Ok(request) => request,
        Err(refused) => return refused.into_response(),
    };
    let tenant = match state.access.act_for(&principal, &request.tenant_id) {
        Ok(tenant) => tenant,
        Err(refusal) => return refusal.into_response(),
    };
    let decision = state.checks.rate(tenant, request.cost.unwrap_or(NonZeroU32::MIN)).await;
    timed(&state.checks.metrics.endpoint_latency.rate, started);
    answer(decision)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapCheck {
    pub tenant_id: String,
    /// Users to add (default 1) or bytes to store.
    pub amount: Option<u64>,
}

async fn reserve(
    state: &ApiState,
    principal: &Principal,
    payload: Result<Json<CapCheck>, JsonRejection>,
    resource: Resource,
) -> Response {
    let started = Instant::now();
    let request = match body(payload) {
        Ok(request) => request,
        Err(refused) => return refused.into_response(),
    };
    let tenant = match state.access.act_for(principal, &request.tenant_id) {
        Ok(tenant) => tenant,
        Err(refusal) => return refusal.into_response(),
    };
    let amount = match amount_of(request.amount, "amount") {
        Ok(amount) => amount,
        Err(refused) => return refused.into_response(),
    };
    let decision = state.checks.reserve(tenant, resource, amount).await;
    let latency = &state.checks.metrics.endpoint_latency;
    timed(if resource == Resource::Users { &latency.users } else { &latency.storage }, started);
    answer(decision)
}

pub async fn check_users(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    payload: Result<Json<CapCheck>, JsonRejection>,
) -> Response {
    reserve(&state, &principal, payload, Resource::Users).await
}

pub async fn check_storage(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    payload: Result<Json<CapCheck>, JsonRejection>,
) -> Response {
    reserve(&state, &principal, payload, Resource::Storage).await
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

/// Every check the request names; allowed only if all are. The caps are decided first and the
/// rate last, only when every cap allowed: a denied request spends no rate cells, and holds taken
/// are released again when the rate denies. A check after a denial is not evaluated (absent).
pub async fn check_all(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    payload: Result<Json<CombinedCheck>, JsonRejection>,
) -> Response {
    let started = Instant::now();
    let request = match body(payload) {
        Ok(request) => request,
        Err(refused) => return refused.into_response(),
    };
    let tenant = match state.access.act_for(&principal, &request.tenant_id) {
        Ok(tenant) => tenant,
        Err(refusal) => return refusal.into_response(),
    };
    if request.rate_cost.is_none() && request.users.is_none() && request.storage_bytes.is_none() {
        let message = "name at least one of rate_cost, users, storage_bytes".to_owned();
        return error(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message);
    }
    let checks = &state.checks;
    let mut decisions = Vec::new();
    for (amount, resource, field) in
        [(request.users, Resource::Users, "users"), (request.storage_bytes, Resource::Storage, "storage_bytes")]
    {
        let Some(requested) = amount else { continue };
        let amount = match amount_of(Some(requested), field) {
            Ok(amount) => amount,
            Err(refused) => return refused.into_response(),
        };
        let decision = checks.reserve(tenant, resource, amount).await;
        let denied = !decision.allowed;
        decisions.push(decision);
        if denied {
            break;
        }
    }
    if let Some(cost) = request.rate_cost
        && decisions.iter().all(|d| d.allowed)
    {
        decisions.push(checks.rate(tenant, cost).await);
    }
    let allowed = decisions.iter().all(|d| d.allowed);
    if !allowed {
        for decision in decisions.iter_mut().filter(|d| d.reservation_id.is_some()) {
            let resource = if decision.kind == Kind::Users { Resource::Users } else { Resource::Storage };
            if let Some(id) = decision.reservation_id.take()
                && let Err(failure) = reservations::release(&checks.pool, &id, tenant, resource).await
            {
                tracing::warn!(tenant, reservation = id, error = %failure, "releasing a hold failed: it expires");
            }
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

/// Which hold a commit or release is about, besides its id.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Finish {
    /// Required with a service or admin key; a tenant key's own tenant otherwise.
    pub tenant_id: Option<String>,
    /// `users` or `storage`, as the reservation's decision said (`kind`).
    pub kind: Resource,
}

enum Step {
    Commit,
    Release,
}

async fn finish(
    state: &ApiState,
    principal: &Principal,
    id: &str,
    payload: Result<Json<Finish>, JsonRejection>,
    step: Step,
) -> Response {
    let request = match body(payload) {
        Ok(request) => request,
        Err(refused) => return refused.into_response(),
    };
    let tenant = match (&request.tenant_id, principal) {
        (Some(tenant), _) => tenant.as_str(),
        (None, Principal::Tenant(own)) => own.as_str(),
        (None, _) => {
            let message = "name the reservation's tenant_id: a service or admin key acts for any tenant".to_owned();
            return Refusal::Invalid(message).into_response();
        }
    };
    let tenant = match state.access.act_for(principal, tenant) {
        Ok(tenant) => tenant,
        Err(refusal) => return refusal.into_response(),
    };
    let not_found = || {
        let message = format!(
            "reservation {id} of tenant {tenant} ({}) is unknown, released or expired: reserve again",
            request.kind.as_str()
        );
        error(StatusCode::NOT_FOUND, "unknown_reservation", message)
    };
    // Reservation ids are UUIDs; anything else cannot be one.
    if id.len() > 64 || uuid::Uuid::parse_str(id).is_err() {
        return not_found();
    }
    let pool = &state.checks.pool;
    let outcome = match step {
        Step::Commit => {
            reservations::commit(pool, id, tenant, request.kind, state.checks.settings.committed_ttl_secs).await
        }
        Step::Release => reservations::release(pool, id, tenant, request.kind).await,
    };
    match (outcome, step) {
        (Ok(Finished::Done), Step::Commit) | (Ok(Finished::Committed), Step::Commit) => {
            Json(json!({ "reservation_id": id, "tenant_id": tenant, "state": "committed" })).into_response()
        }
        (Ok(Finished::Done), Step::Release) => {
            Json(json!({ "reservation_id": id, "tenant_id": tenant, "state": "released" })).into_response()
        }
        (Ok(Finished::Committed), Step::Release) => error(
            StatusCode::CONFLICT,
            "committed",
            format!("reservation {id} is committed: the operation happened, and it counts until usage reports it"),
        ),
        (Ok(Finished::Unknown), _) => not_found(),
        (Err(failure), _) => {
            error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", format!("PostgreSQL failed: {failure}"))
        }
    }
}

pub async fn commit(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    payload: Result<Json<Finish>, JsonRejection>,
) -> Response {
    finish(&state, &principal, &id, payload, Step::Commit).await
}

pub async fn release(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    payload: Result<Json<Finish>, JsonRejection>,
) -> Response {
    finish(&state, &principal, &id, payload, Step::Release).await
}
