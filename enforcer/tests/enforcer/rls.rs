//! Envoy's rate limit service over real gRPC.

use tally_enforcer::rls::{
    CODE_OK, CODE_OVER_LIMIT, DescriptorEntry, REASON_HEADER, RateLimitDescriptor, RateLimitRequest, RateLimitResponse,
};

use crate::helpers::{App, Stores};

async fn ask(app: &App, descriptors: Vec<Vec<(&str, &str)>>) -> RateLimitResponse {
    ask_as(app, Some(&app.key), descriptors).await.unwrap()
}

/// One ShouldRateLimit call with `key` in the `authorization` metadata, as Envoy sends it.
pub async fn ask_as(
    app: &App,
    key: Option<&str>,
    descriptors: Vec<Vec<(&str, &str)>>,
) -> Result<RateLimitResponse, tonic::Status> {
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", app.grpc)).unwrap().connect().await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let request = RateLimitRequest {
        domain: "gateway".to_owned(),
        descriptors: descriptors
            .into_iter()
            .map(|entries| RateLimitDescriptor {
                entries: entries
                    .into_iter()
                    .map(|(key, value)| DescriptorEntry { key: key.to_owned(), value: value.to_owned() })
                    .collect(),
            })
            .collect(),
        hits_addend: 0,
    };
    let mut request = tonic::Request::new(request);
    if let Some(key) = key {
        request.metadata_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
    }
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
    );
    grpc.unary(request, path, tonic_prost::ProstCodec::default()).await.map(tonic::Response::into_inner)
}

#[tokio::test]
async fn envoy_descriptors_naming_a_tenant_are_rate_limited_by_its_quota() {
    let stores = Stores::new().await;
    stores.tenant("acme", "STANDARD").await;
    stores.sql("UPDATE tenant SET rate_limit_per_second = 1, rate_limit_burst = 2 WHERE id = 'acme'").await;
    let app = App::spawn(&stores, stores.config()).await;
    for remaining in [1, 0] {
        let answer = ask(&app, vec![vec![("remote_address", "10.0.0.1"), ("tenant", "acme")]]).await;
        assert_eq!(answer.overall_code, CODE_OK);
        assert_eq!(answer.statuses[0].limit_remaining, remaining);
        assert_eq!(answer.statuses[0].current_limit.as_ref().unwrap().requests_per_unit, 1);
    }
    let answer = ask(&app, vec![vec![("tenant", "acme")], vec![("path", "/health")]]).await;
    assert_eq!(answer.overall_code, CODE_OVER_LIMIT);
    assert_eq!((answer.statuses[0].code, answer.statuses[1].code), (CODE_OVER_LIMIT, CODE_OK));
    let reset = answer.statuses[0].duration_until_reset.unwrap();
    assert!(reset.seconds == 1 || (reset.seconds == 0 && reset.nanos > 0), "{reset:?}");
    assert!(answer.response_headers_to_add.iter().any(|h| h.key == "retry-after" && h.value == "1"));
    let answer = ask(&app, vec![vec![("tenant_id", "nobody")]]).await;
    assert_eq!(answer.overall_code, CODE_OVER_LIMIT, "an unknown tenant is denied, as over HTTP");
    let reason = answer.response_headers_to_add.iter().find(|h| h.key == REASON_HEADER).map(|h| h.value.as_str());
    assert_eq!(reason, Some("unknown_tenant"), "and says why");
    let body: serde_json::Value = serde_json::from_slice(&answer.raw_body).unwrap();
    assert_eq!(body["reasons"][0], "unknown_tenant");
    let answer = ask(&app, vec![vec![("tenant", "")]]).await;
    let reason = answer.response_headers_to_add.iter().find(|h| h.key == REASON_HEADER).map(|h| h.value.as_str());
    assert_eq!((answer.overall_code, reason), (CODE_OVER_LIMIT, Some("invalid_tenant")));
    app.stop().await;

    // Configured to let unknown tenants through: OK, still with the reason.
    let mut config = stores.config();
    config.enforcer.rls_unknown_tenant = tally_enforcer::config::UnknownTenantAnswer::Allow;
    let app = App::spawn(&stores, config).await;
    let answer = ask(&app, vec![vec![("tenant", "nobody")], vec![("tenant", "acme")]]).await;
    assert_eq!((answer.statuses[0].code, answer.statuses[1].code), (CODE_OK, CODE_OK));
    let reason = answer.response_headers_to_add.iter().find(|h| h.key == REASON_HEADER).map(|h| h.value.as_str());
    assert_eq!(reason, Some("unknown_tenant"));
    app.stop().await;
    stores.drop().await;
}
