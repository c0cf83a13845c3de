//! Who may ask the enforcer what: every check endpoint, HTTP and gRPC, needs credentials
//! (`[auth]`: API keys with a scope, or the platform's JWTs), and a tenant id is checked at the edge,
//! before any state is touched, so nothing a stranger sends is kept.
//!
//! * a tenant key (or a JWT's tenant claim) checks, reserves, commits, releases and reads only its
//!   own tenant;
//! * a service key (API gateway, Envoy) checks, reserves, commits and releases for any tenant;
//! * reading a tenant's limits and denials needs that tenant's key or an admin key.
//!
//! `[enforcer] auth = "none"` turns this off (every caller is an admin), only when said.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tally_kit::auth::{AuthError, Authenticator, Principal};
use tally_schemas::TenantId;

use crate::metrics::EnforcerMetrics;

/// The enforcer's authentication: `None` when `auth = "none"`.
#[derive(Debug, Clone)]
pub struct Access {
    authenticator: Option<Authenticator>,
    metrics: EnforcerMetrics,
}

/// A refusal before any check, as the HTTP answer and the gRPC status say it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Unauthenticated(String),
    Unavailable(String),
    Forbidden(String),
    Invalid(String),
}

impl Refusal {
    fn code(&self) -> &'static str {
        match self {
            Refusal::Unauthenticated(_) => "unauthenticated",
            Refusal::Unavailable(_) => "auth_unavailable",
            Refusal::Forbidden(_) => "forbidden",
            Refusal::Invalid(_) => "invalid",
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Refusal::Unauthenticated(m) | Refusal::Unavailable(m) | Refusal::Forbidden(m) | Refusal::Invalid(m) => m,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Refusal::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Forbidden(_) => StatusCode::FORBIDDEN,
            Refusal::Invalid(_) => StatusCode::BAD_REQUEST,
        }
    }

    pub fn grpc(&self) -> tonic::Status {
        match self {
            Refusal::Unauthenticated(m) => tonic::Status::unauthenticated(m.clone()),
            Refusal::Unavailable(m) => tonic::Status::unavailable(m.clone()),
            Refusal::Forbidden(m) => tonic::Status::permission_denied(m.clone()),
            Refusal::Invalid(m) => tonic::Status::invalid_argument(m.clone()),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut headers = HeaderMap::new();
        if matches!(self, Refusal::Unauthenticated(_)) {
            headers.insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer realm=\"tally\""));
        }
        (self.status(), headers, axum::Json(json!({ "error": self.message(), "reason": self.code() }))).into_response()
    }
}

/// Checks a tenant id from a request before anything else reads it.
pub fn valid_tenant(raw: &str) -> Result<&str, Refusal> {
    match TenantId::check(raw) {
        Ok(()) => Ok(raw),
        Err((_, rule)) => {
            let shown: String = raw.chars().take(64).collect();
            let more = if raw.len() > shown.len() { "…" } else { "" };
            Err(Refusal::Invalid(format!("tenant_id {shown:?}{more} is not a tenant id: {rule}")))
        }
    }
}

impl Access {
    pub fn new(authenticator: Option<Authenticator>, metrics: EnforcerMetrics) -> Self {
        Self { authenticator, metrics }
    }

    /// The caller behind an `Authorization` value.
    pub async fn principal(&self, authorization: Option<&str>) -> Result<Principal, Refusal> {
        let Some(authenticator) = &self.authenticator else { return Ok(Principal::Admin) };
        authenticator.authenticate(authorization).await.map_err(|error| {
            let refusal = match error {
                AuthError::Unavailable(_) => Refusal::Unavailable(error.to_string()),
                AuthError::Missing | AuthError::Invalid => Refusal::Unauthenticated(error.to_string()),
            };
            self.count(&refusal);
            refusal
        })
    }

    /// Counts a refusal in `tally_enforcer_refusals_total`.
    pub fn count(&self, refusal: &Refusal) {
        let reason = match refusal {
            Refusal::Unauthenticated(_) | Refusal::Unavailable(_) => "unauthenticated",
            Refusal::Forbidden(_) => "forbidden",
            Refusal::Invalid(_) => "invalid",
        };
        self.metrics.refusals.with_label_values(&[reason]).inc();
    }

    /// `tenant`, if `principal` may act for it (check, reserve, commit, release).
    pub fn act_for<'a>(&self, principal: &Principal, tenant: &'a str) -> Result<&'a str, Refusal> {
        let checked = valid_tenant(tenant).and_then(|tenant| {
            if principal.may_act_for(tenant) {
                Ok(tenant)
            } else {
                Err(Refusal::Forbidden(format!("{} may not act for tenant {tenant}", principal.describe())))
            }
        });
        checked.inspect_err(|refusal| self.count(refusal))
    }

    /// `tenant`, if `principal` may read its limits and denials.
    pub fn read_for<'a>(&self, principal: &Principal, tenant: &'a str) -> Result<&'a str, Refusal> {
        let checked = valid_tenant(tenant).and_then(|tenant| {
            if principal.may_read(tenant) {
                Ok(tenant)
            } else {
                Err(Refusal::Forbidden(format!(
                    "{} may not read tenant {tenant}: use that tenant's key, an analyst key or an admin key",
                    principal.describe()
                )))
            }
        });
        checked.inspect_err(|refusal| self.count(refusal))
    }
}

/// Axum middleware: authenticates before the body is read and hands the principal on.
pub async fn authenticate(State(access): State<Arc<Access>>, mut request: Request, next: Next) -> Response {
    let authorization = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    match access.principal(authorization).await {
        Ok(principal) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(refusal) => refusal.into_response(),
    }
}
