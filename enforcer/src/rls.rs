//! Envoy's global rate limit service (RLS v3, `envoy.service.ratelimit.v3.RateLimitService`) over
//! gRPC, so Envoy, Istio and other gateways can ask Tally. A request's descriptors name the
//! tenant with the entry key `tenant` (or `tenant_id`); each such descriptor is one rate check
//! of `hits_addend` cells (default 1) against the tenant's quota. Descriptors without a tenant
//! are not Tally's to limit and answer OK.
//!
//! The messages below are the RLS v3 wire format (same field numbers and types as Envoy's
//! `rls.proto`, `ratelimit.proto`, `base.proto` and `google.protobuf.Duration`), written with
//! `prost` so no `protoc` is needed to build.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::task::{Context, Poll};

use std::time::Instant;

use tally_kit::auth::Principal;
use tonic::codegen::{BoxFuture, Service, StdError, http};
use tonic::server::{NamedService, UnaryService};

use crate::access::{Access, Refusal, valid_tenant};
use crate::checks::Checks;
use crate::config::UnknownTenantAnswer;
use crate::decision::Reason;

/// Largest request accepted (a descriptor list is small; nothing larger is read).
const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// The response header naming why a descriptor was not judged by its quota.
pub const REASON_HEADER: &str = "x-tally-reason";

/// The descriptor entry keys that name the tenant.
pub const TENANT_KEYS: [&str; 2] = ["tenant", "tenant_id"];

#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimitRequest {
    #[prost(string, tag = "1")]
    pub domain: String,
    #[prost(message, repeated, tag = "2")]
    pub descriptors: Vec<RateLimitDescriptor>,
    #[prost(uint32, tag = "3")]
    pub hits_addend: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimitDescriptor {
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<DescriptorEntry>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct DescriptorEntry {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `RateLimitResponse.Code`.
pub const CODE_OK: i32 = 1;
pub const CODE_OVER_LIMIT: i32 = 2;
/// `RateLimitResponse.RateLimit.Unit.SECOND`.
pub const UNIT_SECOND: i32 = 1;

#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimitResponse {
    #[prost(int32, tag = "1")]
    pub overall_code: i32,
    #[prost(message, repeated, tag = "2")]
    pub statuses: Vec<DescriptorStatus>,
    #[prost(message, repeated, tag = "3")]
    pub response_headers_to_add: Vec<HeaderValue>,
    /// The body Envoy sends downstream when the answer is not OK.
    #[prost(bytes = "vec", tag = "5")]
    pub raw_body: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct DescriptorStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(message, optional, tag = "2")]
    pub current_limit: Option<RateLimit>,
    #[prost(uint32, tag = "3")]
    pub limit_remaining: u32,
    #[prost(message, optional, tag = "4")]
    pub duration_until_reset: Option<Duration>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimit {
    #[prost(uint32, tag = "1")]
    pub requests_per_unit: u32,
    #[prost(int32, tag = "2")]
    pub unit: i32,
    #[prost(string, tag = "3")]
    pub name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HeaderValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct Duration {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

fn duration_ms(ms: u64) -> Duration {
    Duration { seconds: i64::try_from(ms / 1_000).unwrap_or(i64::MAX), nanos: ((ms % 1_000) * 1_000_000) as i32 }
}

fn add_header(response: &mut RateLimitResponse, key: &str, value: String) {
    if !response.response_headers_to_add.iter().any(|h| h.key == key && h.value == value) {
        response.response_headers_to_add.push(HeaderValue { key: key.to_owned(), value });
    }
}

/// Answers one RLS request from the enforcer's rate checks, for `principal`.
pub async fn should_rate_limit(
    checks: &Checks,
    access: &Access,
    principal: &Principal,
    request: &RateLimitRequest,
) -> Result<RateLimitResponse, Refusal> {
    let tenants: Vec<Option<&str>> = request
        .descriptors
        .iter()
        .map(|d| d.entries.iter().find(|e| TENANT_KEYS.contains(&e.key.as_str())).map(|e| e.value.as_str()))
        .collect();
    // A tenant key may ask about its own tenant only: refuse the whole call before any check.
    for tenant in tenants.iter().flatten() {
        if valid_tenant(tenant).is_ok() && !principal.may_act_for(tenant) {
            let refusal = Refusal::Forbidden(format!("{} may not check tenant {tenant}", principal.describe()));
            access.count(&refusal);
            return Err(refusal);
        }
    }
    let cost = NonZeroU32::new(request.hits_addend).unwrap_or(NonZeroU32::MIN);
    let mut response = RateLimitResponse { overall_code: CODE_OK, ..RateLimitResponse::default() };
    let mut reasons = Vec::new();
    for tenant in tenants {
        let Some(raw) = tenant else {
            response.statuses.push(DescriptorStatus { code: CODE_OK, ..DescriptorStatus::default() });
            continue;
        };
        let Ok(tenant) = valid_tenant(raw) else {
            let code = unknown_code(checks);
            response.statuses.push(DescriptorStatus { code, ..DescriptorStatus::default() });
            reasons.push("invalid_tenant");
            continue;
        };
        let decision = checks.rate(tenant, cost).await;
        let known = decision.reason != Reason::UnknownTenant;
        let code = match (decision.allowed, known) {
            (true, _) => CODE_OK,
            (false, true) => CODE_OVER_LIMIT,
            (false, false) => unknown_code(checks),
        };
        if code != CODE_OK || !known {
            reasons.push(decision.reason.as_str());
        }
        let per_second = match (decision.limit, decision.window_ms) {
            (Some(burst), Some(window_ms)) if window_ms > 0 => {
                u32::try_from(burst * 1_000 / window_ms).unwrap_or(u32::MAX)
            }
            _ => 0,
        };
        response.statuses.push(DescriptorStatus {
            code,
            current_limit: (per_second > 0).then(|| RateLimit {
                requests_per_unit: per_second,
                unit: UNIT_SECOND,
                name: format!("tenant:{tenant}"),
            }),
            limit_remaining: decision.remaining.map_or(0, |r| u32::try_from(r).unwrap_or(u32::MAX)),
            duration_until_reset: decision.retry_after_ms.or(decision.reset_after_ms).map(duration_ms),
        });
        if let Some(retry_ms) = decision.retry_after_ms {
            add_header(&mut response, "retry-after", retry_ms.div_ceil(1_000).max(1).to_string());
        }
    }
    if response.statuses.iter().any(|s| s.code != CODE_OK) {
        response.overall_code = CODE_OVER_LIMIT;
    }
    if !reasons.is_empty() {
        reasons.dedup();
        add_header(&mut response, REASON_HEADER, reasons.join(","));
        if response.overall_code != CODE_OK {
            response.raw_body =
                serde_json::json!({ "error": "request refused by Tally", "reasons": reasons }).to_string().into_bytes();
        }
    }
    Ok(response)
}

fn unknown_code(checks: &Checks) -> i32 {
    match checks.settings.rls_unknown_tenant {
        UnknownTenantAnswer::Deny => CODE_OVER_LIMIT,
        UnknownTenantAnswer::Allow => CODE_OK,
    }
}

/// The gRPC service; serve it with `tonic::transport::Server::builder().add_service(…)`.
#[derive(Debug, Clone)]
pub struct RateLimitServer {
    checks: Arc<Checks>,
    access: Arc<Access>,
}

impl RateLimitServer {
    pub fn new(checks: Arc<Checks>, access: Arc<Access>) -> Self {
        Self { checks, access }
    }
}

/// The index in [`crate::metrics::GRPC_CODES`] of `code` (the codes this service answers with).
fn code_index(code: tonic::Code) -> usize {
    match code {
        tonic::Code::Ok => 0,
        tonic::Code::Unauthenticated => 1,
        tonic::Code::PermissionDenied => 2,
        tonic::Code::InvalidArgument => 3,
        tonic::Code::Unavailable => 4,
        _ => 5,
    }
}

impl NamedService for RateLimitServer {
    const NAME: &'static str = "envoy.service.ratelimit.v3.RateLimitService";
}

const SHOULD_RATE_LIMIT: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

struct ShouldRateLimit {
    checks: Arc<Checks>,
    access: Arc<Access>,
}

impl UnaryService<RateLimitRequest> for ShouldRateLimit {
    type Response = RateLimitResponse;
    type Future = BoxFuture<tonic::Response<RateLimitResponse>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<RateLimitRequest>) -> Self::Future {
        let (checks, access) = (Arc::clone(&self.checks), Arc::clone(&self.access));
        Box::pin(async move {
            let started = Instant::now();
            let authorization = request.metadata().get("authorization").and_then(|v| v.to_str().ok());
            let answer = match access.principal(authorization).await {
                Ok(principal) => {
                    let answer = should_rate_limit(&checks, &access, &principal, request.get_ref()).await;
                    checks.metrics.endpoint_latency.rls.observe(started.elapsed().as_secs_f64());
                    answer.map(tonic::Response::new).map_err(|refusal| refusal.grpc())
                }
                Err(refusal) => Err(refusal.grpc()),
            };
            let code = answer.as_ref().map_or_else(|status| status.code(), |_| tonic::Code::Ok);
            if let Some(histogram) = checks.metrics.should_rate_limit_seconds.get(code_index(code)) {
                histogram.observe(started.elapsed().as_secs_f64());
            }
            answer
        })
    }
}

impl<B> Service<http::Request<B>> for RateLimitServer
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != SHOULD_RATE_LIMIT {
            return Box::pin(async move {
                let mut response = http::Response::new(tonic::body::Body::default());
                let headers = response.headers_mut();
                headers.insert("grpc-status", http::HeaderValue::from(tonic::Code::Unimplemented as i32));
                headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
                Ok(response)
            });
        }
        let method = ShouldRateLimit { checks: Arc::clone(&self.checks), access: Arc::clone(&self.access) };
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default())
                .max_decoding_message_size(MAX_REQUEST_BYTES);
            Ok(grpc.unary(method, request).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_code_observes_the_histogram_labelled_with_its_name() {
        let named = [
            (tonic::Code::Ok, "Ok"),
            (tonic::Code::Unauthenticated, "Unauthenticated"),
            (tonic::Code::PermissionDenied, "PermissionDenied"),
            (tonic::Code::InvalidArgument, "InvalidArgument"),
            (tonic::Code::Unavailable, "Unavailable"),
            (tonic::Code::Internal, "Other"),
        ];
        for (code, name) in named {
            assert_eq!(crate::metrics::GRPC_CODES[code_index(code)], name);
        }
    }
}
