//! The tenants a key may look at (`GET /v1/tenants`, for the console's picker) and a tenant's
//! limits with current use (`GET /v1/tenants/{id}/limits`), which the enforcer answers: the query
//! service checks the caller first, then asks the enforcer with the caller's own credentials, so
//! the enforcer's own scoping applies too.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tally_kit::auth::Principal;
use tally_kit::tenants::{self, TenantSummary};
use tally_schemas::TenantId;

use crate::api::{Refusal, Service};
use crate::request::BadParameter;

/// Where the enforcer answers, and the client that asks it.
#[derive(Debug, Clone)]
pub struct EnforcerLink {
    base: String,
    http: reqwest::Client,
}

impl EnforcerLink {
    /// `base`: the enforcer's HTTP address, e.g. `http://enforcer:8082`.
    pub fn new(base: &str) -> anyhow::Result<Self> {
        let base = base.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            anyhow::bail!("[query] enforcer_url {base:?}: an http:// or https:// address, e.g. http://127.0.0.1:8082");
        }
        let http = reqwest::Client::builder().timeout(Duration::from_secs(3)).build()?;
        Ok(Self { base: base.to_owned(), http })
    }
}

const MAX_LISTED: i64 = 1_000;

fn list_parameters(query: &str) -> Result<(Option<String>, Option<String>, i64), BadParameter> {
    let (mut after, mut search, mut limit) = (None, None, 100);
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        let bad = |message: String| BadParameter { parameter: key.to_string(), message };
        match key.as_ref() {
            "after" => {
                TenantId::check(&value).map_err(|(_, rule)| bad(format!("{value:?} is not a tenant id: {rule}")))?;
                after = Some(value.into_owned());
            }
            "search" if value.len() > 200 => return Err(bad("at most 200 bytes".to_owned())),
            "search" if value.chars().any(char::is_control) => {
                return Err(bad("control characters cannot appear in a tenant's id or name".to_owned()));
            }
            "search" => search = Some(value.into_owned()).filter(|s| !s.is_empty()),
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LISTED).contains(n))
                    .ok_or_else(|| bad(format!("{value:?}: a whole number from 1 to {MAX_LISTED}")))?;
            }
            _ => return Err(bad("unknown parameter; known: after, search, limit".to_owned())),
        }
    }
    Ok((after, search, limit))
}

fn registry_unavailable(error: &sqlx::Error) -> Refusal {
    tracing::warn!(%error, "reading the tenant registry failed");
    Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "registry_unavailable", "the tenant registry did not answer")
}

async fn listed(service: &Service, principal: &Principal, query: &str) -> Result<Response, Refusal> {
    let (after, search, limit) = list_parameters(query)?;
    let page: Vec<TenantSummary> = match principal {
        Principal::Analyst | Principal::Admin => {
            tenants::list(&service.registry, after.as_deref(), search.as_deref(), limit + 1)
                .await
                .map_err(|e| registry_unavailable(&e))?
        }
        Principal::Tenant(own) => {
            let own = tenants::summary(&service.registry, own.as_str()).await.map_err(|e| registry_unavailable(&e))?;
            own.into_iter().filter(|t| after.as_deref().is_none_or(|after| t.id.as_str() > after)).collect()
        }
        Principal::Service => {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "a service key lists no tenants: use an analyst key, an admin key or the tenant's key",
            ));
        }
    };
    let more = page.len() as i64 > limit;
    let page: Vec<TenantSummary> = page.into_iter().take(usize::try_from(limit).unwrap_or(0)).collect();
    let next_after = if more { page.last().map(|t| t.id.clone()) } else { None };
    let scope = match principal {
        Principal::Tenant(_) => "tenant",
        Principal::Analyst => "analyst",
        _ => "admin",
    };
    Ok(Json(json!({ "scope": scope, "tenants": page, "next_after": next_after })).into_response())
}

/// `GET /v1/tenants?after=&search=&limit=`: a tenant key sees its own tenant, an analyst or admin
/// key every tenant, a page at a time in id order.
pub async fn list_tenants(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let result = match service.principal(&headers).await {
        Ok(principal) => listed(&service, &principal, query.as_deref().unwrap_or_default()).await,
        Err(refusal) => Err(refusal),
    };
    service.finish_other("tenants", result)
}

async fn limits_of(service: &Service, headers: &HeaderMap, tenant: &str) -> Result<Response, Refusal> {
    let principal = service.principal(headers).await?;
    TenantId::check(tenant).map_err(|(_, rule)| BadParameter {
        parameter: "id".to_owned(),
        message: format!("{tenant:?} is not a tenant id: {rule}"),
    })?;
    if !principal.may_read(tenant) {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("{} may not read tenant {tenant}: use that tenant's key or an analyst key", principal.describe()),
        ));
    }
    let Some(link) = &service.enforcer else {
        return Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "enforcer_not_configured",
            "this query service has no [query] enforcer_url: limits come from the enforcer",
        ));
    };
    let url = format!("{}/v1/tenants/{tenant}/limits", link.base);
    let mut request = link.http.get(url);
    if let Some(authorization) = headers.get(header::AUTHORIZATION) {
        request = request.header(header::AUTHORIZATION, authorization);
    }
    let unavailable = |error: reqwest::Error| {
        tracing::warn!(%error, "asking the enforcer for a tenant's limits failed");
        Refusal::new(StatusCode::BAD_GATEWAY, "enforcer_unavailable", format!("the enforcer did not answer: {error}"))
    };
    let answer = request.send().await.map_err(unavailable)?;
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let body = answer.bytes().await.map_err(unavailable)?;
    let json = HeaderValue::from_static("application/json");
    Ok((status, [(header::CONTENT_TYPE, json)], Body::from(body)).into_response())
}

/// `GET /v1/tenants/{id}/limits`: the enforcer's view of the tenant's limits and current use.
pub async fn tenant_limits(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> Response {
    let result = limits_of(&service, &headers, &tenant).await;
    service.finish_other("limits", result)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn list_parameters_are_checked_by_name() {
        assert_eq!(list_parameters("").unwrap(), (None, None, 100));
        assert_eq!(
            list_parameters("after=acme&search=glo&limit=5").unwrap(),
            (Some("acme".into()), Some("glo".into()), 5)
        );
        assert_eq!(list_parameters("limit=0").unwrap_err().parameter, "limit");
        assert_eq!(list_parameters("limit=1001").unwrap_err().parameter, "limit");
        assert_eq!(list_parameters("tier=PREMIUM").unwrap_err().parameter, "tier");
        assert_eq!(list_parameters("after=%00x").unwrap_err().parameter, "after");
        assert_eq!(list_parameters("search=a%00b").unwrap_err().parameter, "search");
    }

    #[test]
    fn an_enforcer_url_must_be_http() {
        assert!(EnforcerLink::new("http://127.0.0.1:8082/").is_ok());
        assert!(EnforcerLink::new("127.0.0.1:8082").is_err());
    }
}
