//! Nothing a caller sends can hold memory: tenant ids are checked at the edge, bodies and gRPC
//! messages are bounded, the audit log keeps only registered tenants in fixed-size entries, and
//! reservation arithmetic cannot overflow.

use futures_util::future::join_all;
use serde_json::json;
use tally_kit::auth::Scope;

use crate::helpers::{App, Stores};
use crate::rls::ask_as;

#[tokio::test]
async fn huge_and_foreign_tenant_ids_are_refused_and_leave_the_audit_log_as_it_was() {
    let stores = Stores::new().await;
    stores.tenant("acme", "STANDARD").await;
    stores.sql("UPDATE tenant SET rate_limit_per_second = 1, rate_limit_burst = 1 WHERE id = 'acme'").await;
    let app = App::spawn(&stores, stores.config()).await;
    // A few denials of a registered tenant fill part of the log.
    for _ in 0..3 {
        app.rate("acme").await;
    }
    let before = app.checks.audit.bytes();
    assert!(before > 0 && app.checks.audit.for_tenant("acme", 10).len() == 2);

    let megabyte = "a".repeat(1 << 20);
    let (status, _, _) = app.post("/v1/check/rate", json!({ "tenant_id": megabyte })).await;
    assert_eq!(status, 413, "a body above [enforcer] max_body_bytes is refused unread");
    let long = "a".repeat(60_000);
    let (status, _, answer) = app.post("/v1/check/users", json!({ "tenant_id": long })).await;
    assert_eq!((status.as_u16(), answer["reason"].as_str()), (400, Some("invalid")));
    assert!(answer["error"].as_str().unwrap().contains("is not a tenant id"), "{answer}");
    let grpc = ask_as(&app, Some(&app.key), vec![vec![("tenant", megabyte.as_str())]]).await;
    assert!(grpc.is_err(), "a gRPC message above 64 KiB is refused");

    // 10,000 calls for tenants that are not there, malformed or far too long.
    for round in 0..100 {
        let calls = (0..100).map(|n| {
            let tenant = match n % 4 {
                0 => format!("nobody-{round}-{n}"),
                1 => format!("bad tenant {n}"),
                2 => "b".repeat(65),
                _ => long.clone(),
            };
            let app = &app;
            async move { app.post("/v1/check/rate", json!({ "tenant_id": tenant })).await.0.as_u16() }
        });
        let statuses = join_all(calls).await;
        assert!(statuses.iter().all(|s| *s == 400 || *s == 403), "{statuses:?}");
    }
    assert_eq!(app.checks.audit.bytes(), before, "the audit log holds no stranger's denial");
    assert_eq!(app.checks.audit.for_tenant("acme", 10).len(), 2);
    assert_eq!(app.checks.registry.len(), 1);
    let (status, _) = app.get(&format!("/v1/tenants/{}/limits", "c".repeat(65))).await;
    assert_eq!(status, 400, "path tenant ids are checked too");
    app.stop().await;
    stores.drop().await;
}

#[tokio::test]
async fn holds_near_the_bigint_limit_do_not_break_an_unlimited_tenant() {
    let stores = Stores::new().await;
    stores.tenant("bigco", "ENTERPRISE").await;
    let app = App::spawn(&stores, stores.config()).await;
    let key = stores.key(Scope::Tenant, Some("bigco")).await;
    app.usage_read().await;
    let huge = i64::MAX as u64 - 1;
    for _ in 0..2 {
        let (status, _, answer) =
            app.post_as(Some(&key), "/v1/check/storage", json!({ "tenant_id": "bigco", "amount": huge })).await;
        assert_eq!((status.as_u16(), answer["reason"].as_str()), (200, Some("unlimited")), "{answer}");
    }
    let (status, _, answer) =
        app.post_as(Some(&key), "/v1/check/storage", json!({ "tenant_id": "bigco", "amount": 5 })).await;
    assert_eq!(status, 200, "the sum of holds saturates instead of overflowing: {answer}");
    assert!(answer["used"].as_u64().unwrap() >= i64::MAX as u64, "in use saturates: {answer}");
    let (status, limits) = app.get_as(Some(&key), "/v1/tenants/bigco/limits").await;
    assert_eq!((status.as_u16(), limits["holds_unavailable"].as_bool()), (200, Some(false)), "{limits}");
    let (status, _, answer) =
        app.post_as(Some(&key), "/v1/check/storage", json!({ "tenant_id": "bigco", "amount": u64::MAX })).await;
    assert_eq!(status, 422, "an amount above a BIGINT is refused with what to send: {answer}");
    app.stop().await;
    stores.drop().await;
}
