//! User and storage caps: no overshoot under concurrency, on one replica and on two.

use std::time::Duration;

use futures_util::future::join_all;
use serde_json::json;

use crate::helpers::{App, Stores};

async fn wait_for_usage(app: &App, tenant: &str, users: u64) {
    let seen = App::within(Duration::from_secs(5), async || {
        app.get(&format!("/v1/tenants/{tenant}/limits")).await.1["users"]["used"] == users
    })
    .await;
    assert!(seen.is_some(), "the enforcer never saw {users} users for {tenant}");
}

async fn invites(apps: &[&App], tenant: &str, count: usize) -> usize {
    let requests = (0..count).map(|n| {
        let app = apps[n % apps.len()];
        async move { app.post("/v1/check/users", json!({ "tenant_id": tenant })).await.0.as_u16() }
    });
    let statuses = join_all(requests).await;
    assert!(statuses.iter().all(|s| *s == 200 || *s == 403), "{statuses:?}");
    statuses.iter().filter(|s| **s == 200).count()
}

#[tokio::test]
async fn a_hundred_concurrent_invites_at_49_of_50_admit_exactly_one() {
    let stores = Stores::new().await;
    stores.tenant("acme", "STANDARD").await;
    stores.gauge("acme", "active_users", 49).await;
    let app = App::spawn(stores.config()).await;
    wait_for_usage(&app, "acme", 49).await;
    assert_eq!(invites(&[&app], "acme", 100).await, 1);
    let (status, _, answer) = app.post("/v1/check/users", json!({ "tenant_id": "acme" })).await;
    assert_eq!(
        (status.as_u16(), answer["reason"].as_str(), answer["used"].as_u64()),
        (403, Some("user_cap"), Some(50))
    );
    app.stop().await;
    stores.drop().await;
}

#[tokio::test]
async fn two_replicas_together_admit_exactly_one() {
    let stores = Stores::new().await;
    stores.tenant("acme", "STANDARD").await;
    stores.gauge("acme", "active_users", 49).await;
    let first = App::spawn(stores.config()).await;
    let second = App::spawn(stores.config()).await;
    wait_for_usage(&first, "acme", 49).await;
    wait_for_usage(&second, "acme", 49).await;
    assert_eq!(invites(&[&first, &second], "acme", 100).await, 1);
    first.stop().await;
    second.stop().await;
    stores.drop().await;
}

#[tokio::test]
async fn storage_reservations_hold_commit_and_release() {
    let stores = Stores::new().await;
    stores.tenant("acme", "STANDARD").await;
    stores.gauge("acme", "storage_bytes", 7_000_000_000).await;
    let app = App::spawn(stores.config()).await;
    let seen = App::within(Duration::from_secs(5), async || {
        app.get("/v1/tenants/acme/limits").await.1["storage_bytes"]["used"] == 7_000_000_000u64
    })
    .await;
    assert!(seen.is_some());
    let store = |bytes: u64| app.post("/v1/check/storage", json!({ "tenant_id": "acme", "amount": bytes }));
    let (status, _, first) = store(2_000_000_000).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["remaining"], 3_000_000_000u64);
    let (status, _, second) = store(2_000_000_000).await;
    assert_eq!((status.as_u16(), second["reason"].as_str()), (403, Some("storage_cap")));
    assert_eq!(second["used"], 9_000_000_000u64, "usage plus the outstanding hold");

    let id = first["reservation_id"].as_str().unwrap();
    let (status, _, _) = app.post(&format!("/v1/reservations/{id}/release"), json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(store(2_000_000_000).await.0, 200, "the released bytes are free again");
    let (status, _, _) = app.post(&format!("/v1/reservations/{id}/commit"), json!({})).await;
    assert_eq!(status, 404, "a released hold cannot be committed");

    // A committed hold counts until the aggregator reports usage newer than the commit.
    let (_, _, held) = store(500_000_000).await;
    let id = held["reservation_id"].as_str().unwrap();
    assert_eq!(app.post(&format!("/v1/reservations/{id}/commit"), json!({})).await.0, 200);
    assert_eq!(store(600_000_000).await.0, 403, "7 + 2 + 0.5 committed + 0.6 > 10 GB");
    stores.gauge("acme", "storage_bytes", 7_500_000_000).await;
    let seen = App::within(Duration::from_secs(5), async || {
        app.get("/v1/tenants/acme/limits").await.1["storage_bytes"]["used"] == 7_500_000_000u64
    })
    .await;
    assert!(seen.is_some());
    let (status, _, answer) = store(500_000_000).await;
    assert_eq!(status, 200, "once usage reports the committed bytes they count once, not twice: {answer}");
    assert_eq!(answer["used"], 9_500_000_000u64, "7.5 reported + 2 held");
    app.stop().await;
    stores.drop().await;
}
