//! Limits from the platform database, applied live; rate limits; stale data.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{App, Stores};

#[tokio::test]
async fn a_tier_change_applies_within_a_second_and_a_suspension_denies() {
    let stores = Stores::new().await;
    stores.tenant("acme", "STANDARD").await;
    let app = App::spawn(&stores, stores.config()).await;
    let (status, limits) = app.get("/v1/tenants/acme/limits").await;
    assert_eq!(status, 200);
    assert_eq!(limits["users"]["limit"], 50);
    assert_eq!(limits["storage_bytes"]["limit"], 10_000_000_000u64);

    stores.sql("UPDATE tenant SET tier = 'PREMIUM' WHERE id = 'acme'").await;
    let took = App::within(Duration::from_secs(1), async || {
        app.get("/v1/tenants/acme/limits").await.1["users"]["limit"] == 200
    })
    .await;
    assert!(took.is_some(), "the tier change was not applied within 1 s");

    stores.sql("UPDATE tenant SET max_users = 7 WHERE id = 'acme'").await;
    let took =
        App::within(Duration::from_secs(1), async || app.get("/v1/tenants/acme/limits").await.1["users"]["limit"] == 7)
            .await;
    assert!(took.is_some(), "the override was not applied within 1 s");

    stores.sql("UPDATE tenant SET status = 'suspended' WHERE id = 'acme'").await;
    let took =
        App::within(Duration::from_secs(1), async || app.rate("acme").await.2["reason"] == "tenant_suspended").await;
    assert!(took.is_some(), "the suspension was not applied within 1 s");
    let (status, _, answer) = app.post("/v1/check/users", json!({ "tenant_id": "acme" })).await;
    assert_eq!((status.as_u16(), answer["reason"].as_str()), (403, Some("tenant_suspended")));

    let (status, _, answer) = app.rate("nobody").await;
    assert_eq!((status.as_u16(), answer["reason"].as_str()), (403, Some("unknown_tenant")));
    let (_, denials) = app.get("/v1/tenants/acme/denials").await;
    assert!(denials["denials"].as_array().unwrap().iter().any(|d| d["reason"] == "tenant_suspended"));
    app.stop().await;
    stores.drop().await;
}

#[tokio::test]
async fn a_rate_limit_admits_the_burst_then_denies_with_a_correct_retry_after() {
    let stores = Stores::new().await;
    stores.tenant("acme", "STANDARD").await;
    stores.sql("UPDATE tenant SET rate_limit_per_second = 5, rate_limit_burst = 10 WHERE id = 'acme'").await;
    let app = App::spawn(&stores, stores.config()).await;
    for n in 0..10 {
        let (status, headers, answer) = app.rate("acme").await;
        assert_eq!(status, 200, "request {n} is within the burst: {answer}");
        assert_eq!(headers["ratelimit-policy"], "\"tenant\";q=10;w=2");
        assert_eq!(answer["remaining"], 9 - n);
    }
    let (status, headers, answer) = app.rate("acme").await;
    assert_eq!(status, 429);
    assert_eq!(answer["reason"], "rate_limited");
    let retry_ms = answer["retry_after_ms"].as_u64().unwrap();
    assert!((100..=200).contains(&retry_ms), "one cell every 200 ms: {retry_ms}");
    assert_eq!(headers["retry-after"], "1");
    assert!(headers["ratelimit"].to_str().unwrap().starts_with("\"tenant\";r=0;"));
    tokio::time::sleep(Duration::from_millis(retry_ms + 5)).await;
    assert_eq!(app.rate("acme").await.0, 200, "allowed again after retry-after");
    assert_eq!(app.rate("acme").await.0, 429, "and only one cell came back");

    let (status, _, answer) = app.post("/v1/check/rate", json!({ "tenant_id": "acme", "cost": 11 })).await;
    assert_eq!((status.as_u16(), answer["reason"].as_str()), (429, Some("cost_above_burst")));
    let (status, _, _) = app.post("/v1/check/rate", json!({ "tenant": "acme" })).await;
    assert_eq!(status, 422, "an unknown field is refused");
    app.stop().await;
    stores.drop().await;
}

#[tokio::test]
async fn stale_usage_follows_the_policy_of_each_check() {
    let stores = Stores::new().await;
    stores.tenant("acme", "STANDARD").await;
    let mut config = stores.config();
    // Usage can never be read: ClickHouse is not there.
    config.clickhouse.url = "http://127.0.0.1:9".to_owned();
    config.enforcer.usage_stale_after_ms = 300;
    config.enforcer.policy.storage = tally_enforcer::config::FailurePolicy::Open;
    let app = App::spawn(&stores, config).await;
    let (status, _, answer) = app.post("/v1/check/users", json!({ "tenant_id": "acme" })).await;
    assert_eq!(status, 503, "users fail closed by default: {answer}");
    assert_eq!((answer["reason"].as_str(), answer["degraded"].as_bool()), (Some("unavailable"), Some(true)));
    let (status, _, answer) = app.post("/v1/check/storage", json!({ "tenant_id": "acme", "amount": 5 })).await;
    assert_eq!(status, 200, "storage is configured to fail open: {answer}");
    assert_eq!(answer["degraded"], true);
    let (status, _, answer) = app.rate("acme").await;
    assert_eq!((status.as_u16(), answer["degraded"].as_bool()), (200, Some(false)), "rate needs no usage");
    app.stop().await;
    stores.drop().await;
}
