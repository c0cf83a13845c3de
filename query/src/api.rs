//! The HTTP API: `GET`/`POST /v1/usage`, `GET /v1/metrics` (the tenant endpoints are in
//! [`crate::tenants`]). Every request needs a key: a tenant
//! key (or a JWT's tenant claim) reads only its own tenant, an analyst or admin key every tenant,
//! a service key none.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tally_kit::auth::{AuthError, Authenticator, Principal};
use tally_schemas::MetricCatalogue;

use crate::config::QuerySection;
use crate::metrics::QueryMetrics;
use crate::request::{self, BadParameter, Format, RawRequest, UsageQuery};
use crate::sql;
use crate::stream::{self, Fetched};
use crate::tenants::EnforcerLink;
use crate::{fill, render};

/// What every handler shares.
#[derive(Debug)]
pub struct Service {
    pub clickhouse: clickhouse::Client,
    /// The platform's tenant registry.
    pub registry: sqlx::PgPool,
    /// `None`: no `[query] enforcer_url`, so no limits.
    pub enforcer: Option<EnforcerLink>,
    pub authenticator: Authenticator,
    pub catalogue: MetricCatalogue,
    pub bounds: QuerySection,
    pub metrics: QueryMetrics,
}

/// A refusal, as JSON with the reason and (for a 400) the parameter to fix.
#[derive(Debug)]
pub struct Refusal {
    status: StatusCode,
    reason: &'static str,
    message: String,
    parameter: Option<String>,
}

impl Refusal {
    pub(crate) fn new(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self { status, reason, message: message.into(), parameter: None }
    }
}

impl From<BadParameter> for Refusal {
    fn from(bad: BadParameter) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            reason: "invalid_parameter",
            message: bad.to_string(),
            parameter: Some(bad.parameter),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut headers = HeaderMap::new();
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer realm=\"tally\""));
        }
        let body = json!({ "error": self.message, "reason": self.reason, "parameter": self.parameter });
        (self.status, headers, Json(body)).into_response()
    }
}

impl Service {
    pub(crate) async fn principal(&self, headers: &HeaderMap) -> Result<Principal, Refusal> {
        let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        self.authenticator.authenticate(authorization).await.map_err(|error| match error {
            AuthError::Unavailable(_) => {
                Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "auth_unavailable", error.to_string())
            }
            AuthError::Missing | AuthError::Invalid => {
                Refusal::new(StatusCode::UNAUTHORIZED, "unauthenticated", error.to_string())
            }
        })
    }
}

/// Narrows `query` to what `principal` may read: a tenant key's query is its own tenant's.
pub fn scope(principal: &Principal, query: &mut UsageQuery) -> Result<(), Refusal> {
    match principal {
        Principal::Analyst | Principal::Admin => Ok(()),
        Principal::Service => Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "a service key reads no tenant's usage: use an analyst key, an admin key or the tenant's key",
        )),
        Principal::Tenant(own) => match &query.tenants {
            None => {
                query.tenants = Some(vec![own.as_str().to_owned()]);
                Ok(())
            }
            Some(tenants) => match tenants.iter().find(|tenant| tenant.as_str() != own.as_str()) {
                None => Ok(()),
                Some(other) => Err(Refusal::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    format!(
                        "{} may not read tenant {other}: use that tenant's key or an analyst key",
                        principal.describe()
                    ),
                )),
            },
        },
    }
}

fn wants_csv(query: &UsageQuery, headers: &HeaderMap) -> bool {
    match query.format {
        Some(format) => format == Format::Csv,
        None => headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|accept| accept.split(',').any(|part| part.trim().starts_with("text/csv"))),
    }
}

fn store_unavailable(error: clickhouse::error::Error) -> Refusal {
    tracing::warn!(error = %error, "usage query failed");
    Refusal::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        format!("the usage store did not answer: {error}"),
    )
}

fn csv_response(body: Body) -> Response {
    let disposition = "attachment; filename=\"usage.csv\"";
    ([(header::CONTENT_TYPE, "text/csv; charset=utf-8"), (header::CONTENT_DISPOSITION, disposition)], body)
        .into_response()
}

async fn answer(
    service: &Service,
    headers: &HeaderMap,
    raw: Result<RawRequest, BadParameter>,
) -> Result<Response, Refusal> {
    let principal = service.principal(headers).await?;
    let mut query = request::check(raw?, &service.catalogue, &service.bounds)?;
    scope(&principal, &mut query)?;
    // Past the service's bound a query is refused rather than cut short; an asked-for limit cuts.
    let fetch = if query.limit_given { query.limit } else { query.limit + 1 };
    let seconds = service.bounds.max_execution_time_secs;
    let csv = wants_csv(&query, headers);
    let mut rows = if csv && !query.fill_zero {
        let hold = service.bounds.stream_after_rows;
        match stream::fetch(&service.clickhouse, &query, fetch, seconds, hold).await.map_err(store_unavailable)? {
            Fetched::Whole(rows) => rows,
            Fetched::Streaming(head, cursor) => {
                let bound = (!query.limit_given).then_some(query.limit);
                let body = stream::csv_body(query, &head, cursor, bound, service.metrics.rows.clone());
                return Ok(csv_response(body));
            }
        }
    } else {
        sql::fetch(&service.clickhouse, &query, fetch, seconds).await.map_err(store_unavailable)?
    };
    if query.fill_zero {
        rows = fill::zero_filled(&query, rows, service.bounds.max_rows as u64).ok_or_else(|| BadParameter {
            parameter: "fill".to_owned(),
            message: format!(
                "every window of every group is more than {} rows: narrow the range or the tenants, or a coarser window",
                service.bounds.max_rows
            ),
        })?;
    }
    if !query.limit_given && rows.len() as u64 > query.limit {
        return Err(BadParameter {
            parameter: "limit".to_owned(),
            message: format!(
                "the answer has more than {} rows: narrow the range or the tenants, use a coarser window, or set a limit",
                query.limit
            ),
        }
        .into());
    }
    rows.truncate(usize::try_from(query.limit).unwrap_or(usize::MAX));
    service.metrics.rows.inc_by(rows.len() as u64);
    if csv {
        let mut body = render::csv_header(&query);
        let mut writer = render::CsvRows::default();
        for row in &rows {
            writer.write(&query, row, &mut body);
        }
        return Ok(csv_response(Body::from(body)));
    }
    Ok(Json(render::json_answer(&query, &rows)).into_response())
}

impl Service {
    /// Counts the answer (or the refusal) of a `GET` to `endpoint`.
    pub(crate) fn finish_other(&self, endpoint: &'static str, result: Result<Response, Refusal>) -> Response {
        self.finish(endpoint, "GET", result)
    }

    fn finish(&self, endpoint: &'static str, method: &'static str, result: Result<Response, Refusal>) -> Response {
        let response = result.unwrap_or_else(|refusal| {
            self.metrics.refusals.with_label_values(&[refusal.reason]).inc();
            refusal.into_response()
        });
        self.metrics.requests.with_label_values(&[endpoint, method, response.status().as_str()]).inc();
        response
    }
}

fn finish(service: &Service, started: Instant, method: &'static str, result: Result<Response, Refusal>) -> Response {
    let response = service.finish("usage", method, result);
    service.metrics.seconds.observe(started.elapsed().as_secs_f64());
    response
}

/// `GET /v1/usage?…`
pub async fn get_usage(State(service): State<Arc<Service>>, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    let started = Instant::now();
    let raw = RawRequest::from_query_string(query.as_deref().unwrap_or_default());
    let result = answer(&service, &headers, raw).await;
    finish(&service, started, "GET", result)
}

/// `POST /v1/usage` with the same fields as a JSON object.
pub async fn post_usage(State(service): State<Arc<Service>>, headers: HeaderMap, body: Bytes) -> Response {
    let started = Instant::now();
    let raw = serde_json::from_slice::<RawRequest>(&body).map_err(|error| BadParameter {
        parameter: "body".to_owned(),
        message: format!("not a usage query object: {error}"),
    });
    let result = answer(&service, &headers, raw).await;
    finish(&service, started, "POST", result)
}

/// `GET /v1/metrics`: the metric catalogue (name, kind, unit, description).
pub async fn metrics_catalogue(State(service): State<Arc<Service>>, headers: HeaderMap) -> Response {
    let result = service.principal(&headers).await.map(|_| {
        let metrics: Vec<_> = service
            .catalogue
            .iter()
            .map(|(name, def)| json!({ "name": name.as_str(), "kind": def.kind, "unit": def.unit, "description": def.description }))
            .collect();
        Json(json!({ "metrics": metrics })).into_response()
    });
    service.finish_other("metrics", result)
}
