//! User and storage caps: no overshoot under concurrency, on one replica and on two.

use std::time::Duration;

use futures_util::future::join_all;
use serde_json::json;

use crate::helpers::{App, Stores};

async fn wait_for_usage(app: &App, tenant: &str, users: u64) {
    let seen = App::within(Duration::from_secs(5), async || {
        let limits = app.get(&format!("/v1/tenants/{tenant}/limits")).await.1;
        limits["users"]["used"] == users && !limits["usage_age_ms"].is_null()
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
    let app = App::spawn(&stores, stores.config()).await;
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
    let first = App::spawn(&stores, stores.config()).await;
    let second = App::spawn(&stores, stores.config()).await;
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
    let app = App::spawn(&stores, stores.config()).await;
    let seen = App::within(Duration::from_secs(5), async || {
        app.get("/v1/tenants/acme/limits").await.1["storage_bytes"]["used"] == 7_000_000_000u64
    })
    .await;
    assert!(seen.is_some());
    let store = |bytes: u64| app.post("/v1/check/storage", json!({ "tenant_id": "acme", "amount": bytes }));
    let (status, _, first) = store(2_000_000_000).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["remaining"], 1_000_000_000u64, "remaining counts the hold just taken");
    assert_eq!(first["used"], 9_000_000_000u64);
    let (status, _, second) = store(2_000_000_000).await;
    assert_eq!((status.as_u16(), second["reason"].as_str()), (403, Some("storage_cap")));
    assert_eq!(second["used"], 9_000_000_000u64, "usage plus the outstanding hold");

    let id = first["reservation_id"].as_str().unwrap();
    let (status, _, _) =
        app.post(&format!("/v1/reservations/{id}/release"), json!({ "tenant_id": "acme", "kind": "storage" })).await;
    assert_eq!(status, 200);
    assert_eq!(store(2_000_000_000).await.0, 200, "the released bytes are free again");
    let (status, _, _) =
        app.post(&format!("/v1/reservations/{id}/commit"), json!({ "tenant_id": "acme", "kind": "storage" })).await;
    assert_eq!(status, 404, "a released hold cannot be committed");

    // A committed hold counts until the aggregator reports usage newer than the commit.
    let (_, _, held) = store(500_000_000).await;
    let id = held["reservation_id"].as_str().unwrap();
    let finish = json!({ "tenant_id": "acme", "kind": "storage" });
    assert_eq!(app.post(&format!("/v1/reservations/{id}/commit"), finish.clone()).await.0, 200);
    assert_eq!(app.post(&format!("/v1/reservations/{id}/commit"), finish.clone()).await.0, 200, "commit again: no-op");
    let (status, _, refused) = app.post(&format!("/v1/reservations/{id}/release"), finish).await;
    assert_eq!(
        (status.as_u16(), refused["reason"].as_str()),
        (409, Some("committed")),
        "a committed hold is not released"
    );
    assert_eq!(store(600_000_000).await.0, 403, "7 + 2 + 0.5 committed + 0.6 > 10 GB");
    stores.gauge("acme", "storage_bytes", 7_500_000_000).await;
    let seen = App::within(Duration::from_secs(5), async || {
        app.get("/v1/tenants/acme/limits").await.1["storage_bytes"]["reported"] == 7_500_000_000u64
    })
    .await;
    assert!(seen.is_some());
    let (status, _, answer) = store(500_000_000).await;
    assert_eq!(status, 200, "once usage reports the committed bytes they count once, not twice: {answer}");
    assert_eq!(answer["used"], 10_000_000_000u64, "7.5 reported + 2 held + the 0.5 just taken");
    app.stop().await;
    stores.drop().await;
}

#[tokio::test]
async fn two_hundred_invites_across_two_replicas_are_all_answered_and_admit_exactly_the_cap() {
    let stores = Stores::new().await;
    stores.tenant("acme", "STANDARD").await;
    stores.gauge("acme", "active_users", 0).await;
    let mut config = stores.config();
    // The production default: waits are bounded by PostgreSQL's lock and statement timeouts.
    config.enforcer.store_timeout_ms = 500;
    let first = App::spawn(&stores, config.clone()).await;
    let second = App::spawn(&stores, config).await;
    wait_for_usage(&first, "acme", 0).await;
    wait_for_usage(&second, "acme", 0).await;
    for round in 0..2 {
        let requests = (0..200).map(|n| {
            let app = if n % 2 == 0 { &first } else { &second };
            async move { app.post("/v1/check/users", json!({ "tenant_id": "acme" })).await }
        });
        let answers = join_all(requests).await;
        let admitted = answers.iter().filter(|(s, _, _)| *s == 200).count();
        let denied = answers.iter().filter(|(s, _, a)| *s == 403 && a["reason"] == "user_cap").count();
        let expected = if round == 0 { 50 } else { 0 };
        let others: Vec<_> = answers
            .iter()
            .filter(|(s, _, _)| *s != 200 && *s != 403)
            .map(|(s, _, a)| (s.as_u16(), a.clone()))
            .take(3)
            .collect();
        assert!(others.is_empty(), "round {round}: {others:?}");
        assert_eq!((admitted, denied), (expected, 200 - expected), "round {round}: every request answered, none 503");
    }
    // No connection went back to the pool inside a transaction, and none is left open in one.
    let stuck = stores.idle_in_transaction().await;
    assert_eq!(stuck, 0);
    let (_, limits) = first.get("/v1/tenants/acme/limits").await;
    assert_eq!((limits["users"]["used"].as_u64(), limits["users"]["held"].as_u64()), (Some(50), Some(50)), "{limits}");
    first.stop().await;
    second.stop().await;
    stores.drop().await;
}

#[tokio::test]
async fn a_combined_check_denied_by_a_cap_spends_no_rate_cells() {
    let stores = Stores::new().await;
    stores.tenant("acme", "STANDARD").await;
    stores
        .sql("UPDATE tenant SET max_users = 1, rate_limit_per_second = 1, rate_limit_burst = 3 WHERE id = 'acme'")
        .await;
    stores.gauge("acme", "active_users", 1).await;
    let app = App::spawn(&stores, stores.config()).await;
    wait_for_usage(&app, "acme", 1).await;
    for _ in 0..5 {
        let (status, _, answer) =
            app.post("/v1/check", json!({ "tenant_id": "acme", "rate_cost": 1, "users": 1 })).await;
        assert_eq!(status, 403, "{answer}");
        assert_eq!(answer["decisions"].as_array().unwrap().len(), 1, "the rate is not evaluated after a denial");
    }
    let (status, _, answer) = app.rate("acme").await;
    assert_eq!((status.as_u16(), answer["remaining"].as_u64()), (200, Some(2)), "the whole burst was still there");
    // Storage allowed, rate denied: the storage hold is given back.
    let (_, _, answer) =
        app.post("/v1/check", json!({ "tenant_id": "acme", "rate_cost": 3, "storage_bytes": 10 })).await;
    assert_eq!(answer["allowed"], false, "{answer}");
    let (_, limits) = app.get("/v1/tenants/acme/limits").await;
    assert_eq!(limits["storage_bytes"]["held"], 0, "{limits}");
    app.stop().await;
    stores.drop().await;
}

#[tokio::test]
async fn a_storage_crossing_alerts_once_across_replicas_and_restarts() {
    let stores = Stores::new().await;
    stores.tenant("acme", "STANDARD").await;
    stores.sql("UPDATE tenant SET max_storage_bytes = 1000 WHERE id = 'acme'").await;
    stores.gauge("acme", "storage_bytes", 100).await;
    let alerts = |apps: &[&App]| apps.iter().map(|a| a.checks.metrics.storage_alerts.get()).sum::<u64>();
    let first = App::spawn(&stores, stores.config()).await;
    let second = App::spawn(&stores, stores.config()).await;
    stores.gauge("acme", "storage_bytes", 850).await;
    let fired = App::within(Duration::from_secs(5), async || alerts(&[&first, &second]) == 1).await;
    assert!(fired.is_some(), "one of the replicas alerts");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(alerts(&[&first, &second]), 1, "and only one, once");
    let by_second = alerts(&[&second]);
    second.stop().await;
    let restarted = App::spawn(&stores, stores.config()).await;
    let alerts = |apps: &[&App]| alerts(apps) + by_second;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(alerts(&[&first, &restarted]), 1, "a restart does not alert the same crossing again");
    // Back below, then above again: a new crossing, alerted once.
    stores.gauge("acme", "storage_bytes", 100).await;
    let cleared = App::within(Duration::from_secs(5), async || {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM tally.storage_alerts")
            .fetch_one(&stores.pg.pool)
            .await
            .unwrap()
            == 0
    })
    .await;
    assert!(cleared.is_some(), "falling below clears the standing alert");
    stores.gauge("acme", "storage_bytes", 900).await;
    let fired = App::within(Duration::from_secs(5), async || alerts(&[&first, &restarted]) == 2).await;
    assert!(fired.is_some(), "the second crossing alerts");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(alerts(&[&first, &restarted]), 2);
    first.stop().await;
    restarted.stop().await;
    stores.drop().await;
}
