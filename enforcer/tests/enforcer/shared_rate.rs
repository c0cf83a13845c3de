//! Rate limits in Redis, shared by every replica: three replicas admit one tenant's limit once,
//! not three times; a paused or stopped Redis makes checks follow `policy.rate`, and they recover.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tally_enforcer::EnforcerConfig;
use tally_enforcer::config::{FailurePolicy, RateStoreKind};
use tally_kit::Secret;
use tally_testkit::{TestRedis, TestRedisCluster, redis_prefix, redis_url};

use crate::helpers::{App, Stores};

fn redis_config(stores: &Stores, url: &str) -> EnforcerConfig {
    let mut config = stores.config();
    config.enforcer.rate.store = RateStoreKind::Redis;
    config.enforcer.rate.redis_url = Secret::new(url);
    config.enforcer.rate.key_prefix = redis_prefix();
    config
}

#[tokio::test]
async fn three_replicas_sharing_redis_admit_the_limit_once() {
    let stores = Stores::new().await;
    stores.tenant("acme", "STANDARD").await;
    stores.sql("UPDATE tenant SET rate_limit_per_second = 100, rate_limit_burst = 200 WHERE id = 'acme'").await;
    let mut config = redis_config(&stores, &redis_url());
    // This test is about the shared limit, not a slow Redis: on a loaded test machine a check can
    // take longer than the production default, and a degraded answer would not be Redis's.
    config.enforcer.rate.redis_timeout_ms = 5_000;
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(Arc::new(App::spawn(&stores, config.clone()).await));
    }
    let admitted = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(10);
    // Three clients, one per replica, each with a few requests in flight, for 10 s.
    let mut clients = Vec::new();
    for replica in &replicas {
        for _ in 0..4 {
            let (replica, admitted, sent) = (Arc::clone(replica), Arc::clone(&admitted), Arc::clone(&sent));
            clients.push(tokio::spawn(async move {
                while Instant::now() < deadline {
                    let (status, _, answer) = replica.rate("acme").await;
                    sent.fetch_add(1, Ordering::Relaxed);
                    match status.as_u16() {
                        200 => {
                            assert_eq!(answer["degraded"], false, "{answer}");
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                        429 => assert_eq!(answer["reason"], "rate_limited"),
                        other => panic!("unexpected {other}: {answer}"),
                    }
                }
            }));
        }
    }
    for client in clients {
        client.await.unwrap();
    }
    let seconds = started.elapsed().as_secs_f64();
    let admitted = admitted.load(Ordering::Relaxed) as f64;
    let bound = 100.0 * seconds + 200.0;
    eprintln!(
        "three replicas: {admitted} admitted of {} in {seconds:.2} s; bound {bound:.0}",
        sent.load(Ordering::Relaxed)
    );
    assert!(sent.load(Ordering::Relaxed) as f64 > bound * 1.5, "the clients must ask for more than the limit");
    assert!(admitted <= bound * 1.01, "{admitted} admitted above rate × seconds + burst = {bound:.0} (+1 %)");
    assert!(admitted >= bound * 0.95, "{admitted} admitted below 95 % of {bound:.0}");
    for replica in replicas {
        Arc::into_inner(replica).unwrap().stop().await;
    }
    stores.drop().await;
}

async fn wait_for(app: &App, mut expect: impl FnMut(u16, &serde_json::Value) -> bool, what: &str) {
    let ok = App::within(Duration::from_secs(10), async || {
        let (status, _, answer) = app.rate("acme").await;
        expect(status.as_u16(), &answer)
    })
    .await;
    assert!(ok.is_some(), "{what}");
}

#[tokio::test]
async fn redis_paused_or_stopped_follows_the_policy_and_recovers() {
    let stores = Stores::new().await;
    stores.tenant("acme", "STANDARD").await;
    let mut redis = TestRedis::start().await;
    for policy in [FailurePolicy::Open, FailurePolicy::Closed] {
        let mut config = redis_config(&stores, &redis.url());
        config.enforcer.policy.rate = policy;
        let app = App::spawn(&stores, config).await;
        let (status, _, answer) = app.rate("acme").await;
        assert_eq!((status.as_u16(), answer["degraded"].as_bool()), (200, Some(false)), "{answer}");
        let degraded = |status: u16, answer: &serde_json::Value| {
            let expected = if policy == FailurePolicy::Open { 200 } else { 503 };
            status == expected && answer["degraded"] == true
        };
        let healthy = |status: u16, answer: &serde_json::Value| status == 200 && answer["degraded"] == false;

        redis.pause();
        wait_for(&app, degraded, "a paused Redis: the policy answers").await;
        let (_, _, answer) = app.post("/v1/check/rate", json!({ "tenant_id": "acme" })).await;
        assert_eq!(answer["degraded"], true, "{answer}");
        redis.resume();
        wait_for(&app, healthy, "resumed: checks go back to Redis").await;

        redis.kill();
        wait_for(&app, degraded, "a stopped Redis: the policy answers").await;
        redis.restart().await;
        wait_for(&app, healthy, "restarted: checks go back to Redis by themselves").await;
        let metrics = app.http.get(format!("http://{}/metrics", app.addr)).send().await.unwrap().text().await.unwrap();
        assert!(metrics.contains("tally_enforcer_rate_store_errors_total"), "the failures are counted");
        app.stop().await;
    }
    stores.drop().await;
}

#[tokio::test]
async fn a_redis_cluster_holds_each_tenants_limit_across_replicas() {
    let stores = Stores::new().await;
    // Nine tenants: their keys all hashing to one node of three is a 1-in-6,500 chance.
    let tenants = ["acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "tyrell", "cyberdyne"];
    for tenant in tenants {
        stores.tenant(tenant, "STANDARD").await;
        stores
            .sql(&format!("UPDATE tenant SET rate_limit_per_second = 10, rate_limit_burst = 20 WHERE id = '{tenant}'"))
            .await;
    }
    let cluster = TestRedisCluster::start().await;
    let mut config = redis_config(&stores, &cluster.urls());
    config.enforcer.rate.redis_timeout_ms = 5_000;
    let first = App::spawn(&stores, config.clone()).await;
    let second = App::spawn(&stores, config).await;
    let started = Instant::now();
    let mut admitted = std::collections::HashMap::new();
    while started.elapsed() < Duration::from_secs(3) {
        for (n, tenant) in tenants.iter().enumerate() {
            let app = if n % 2 == 0 { &first } else { &second };
            for replica in [app, if n % 2 == 0 { &second } else { &first }] {
                let (status, _, answer) = replica.rate(tenant).await;
                assert!(status == 200 || status == 429, "{status}: {answer}");
                assert_eq!(answer["degraded"], false, "{answer}");
                *admitted.entry(*tenant).or_insert(0u32) += u32::from(status == 200);
            }
        }
    }
    let bound = 10.0 * started.elapsed().as_secs_f64() + 20.0;
    let spread = cluster.keys_per_node();
    assert!(
        spread.iter().filter(|keys| **keys > 0).count() >= 2,
        "the tenants' keys live on several nodes: {spread:?}"
    );
    for (tenant, count) in &admitted {
        let count = f64::from(*count);
        assert!(count <= bound * 1.01 && count >= 20.0, "{tenant}: {count} admitted, bound {bound:.0}");
    }
    first.stop().await;
    second.stop().await;
    drop(cluster);
    stores.drop().await;
}
