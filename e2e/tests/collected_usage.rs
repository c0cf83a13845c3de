//! The collector's measurements flow through the whole pipeline: collector → usage topic →
//! aggregator → ClickHouse → enforcer. Thirty tenants across the three isolation models; the
//! enforcer's `/limits` shows what PostgreSQL reported, a tenant grown past 80 % of its storage cap
//! alerts once, a tenant at its user cap is refused the next user.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tally_aggregator::{Aggregator, AggregatorConfig};
use tally_collector::Collector;
use tally_collector::config::{CollectorConfig, EmitVia, SharedTable};
use tally_enforcer::{Enforcer, EnforcerConfig};
use tally_kit::Secret;
use tally_kit::auth::{self, Scope};
use tally_schemas::Topics;
use tally_testkit::tenant_data::{TenantWorld, grow, pool_of, url_of};
use tally_testkit::{TestClickHouse, kafka_config, unique_name};
use tokio_util::sync::CancellationToken;

async fn limits(http: &reqwest::Client, enforcer: std::net::SocketAddr, key: &str, tenant: &str) -> Value {
    let url = format!("http://{enforcer}/v1/tenants/{tenant}/limits");
    http.get(url).bearer_auth(key).send().await.unwrap().json().await.unwrap()
}

async fn until(limit: Duration, mut probe: impl AsyncFnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if probe().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// Waits for the next sample slot (interval 1 s), so the next sweep's events are new samples.
async fn next_slot() {
    tokio::time::sleep(Duration::from_millis(1_100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measured_storage_and_users_reach_the_enforcers_caps_and_alert() {
    let world = TenantWorld::create().await;
    let ch = TestClickHouse::create().await;
    let topics = Topics {
        usage_events: unique_name("e2e-usage"),
        dead_letter: unique_name("e2e-dlq"),
        partitions: 2,
        ..Topics::default()
    };
    tally_kit::kafka::ensure_topics(&kafka_config(), &topics).await.unwrap();
    let registry = &world.registry.pool;
    // db-0: a storage cap half again its current size (67 %); schema-0: a cap of its 2 users.
    let own_pool = pool_of(&url_of(&world.own[0]));
    let size: i64 =
        sqlx::query_scalar("SELECT pg_database_size(current_database())").fetch_one(&own_pool).await.unwrap();
    sqlx::query("UPDATE tenant SET max_storage_bytes = $1 WHERE id = 'db-0'")
        .bind(size * 3 / 2)
        .execute(registry)
        .await
        .unwrap();
    sqlx::query("UPDATE tenant SET max_users = 2 WHERE id = 'schema-0'").execute(registry).await.unwrap();

    let stopping = CancellationToken::new();
    let mut aggregator_config = AggregatorConfig {
        kafka: kafka_config(),
        clickhouse: ch.config.clone(),
        topics: topics.clone(),
        ..AggregatorConfig::default()
    };
    aggregator_config.aggregator.listen = "127.0.0.1:0".parse().unwrap();
    aggregator_config.aggregator.group_id = unique_name("e2e-aggregators");
    aggregator_config.aggregator.instance_id = "e2e".to_owned();
    aggregator_config.aggregator.linger_ms = 100;
    let aggregator = Aggregator::build(aggregator_config, stopping.clone()).await.unwrap();
    let aggregating = tokio::spawn(aggregator.run_until_stopped());

    let mut enforcer_config = EnforcerConfig {
        postgres: world.registry.config.clone(),
        clickhouse: ch.config.clone(),
        ..EnforcerConfig::default()
    };
    enforcer_config.enforcer.listen = "127.0.0.1:0".parse().unwrap();
    enforcer_config.enforcer.grpc_listen = None;
    enforcer_config.enforcer.usage_refresh_ms = 100;
    let enforcer = Enforcer::build(enforcer_config, stopping.clone()).await.unwrap();
    let (enforcer_addr, checks) = (enforcer.local_addr(), enforcer.checks());
    let enforcing = tokio::spawn(enforcer.run_until_stopped());
    let key = auth::create_key(registry, Scope::Admin, None, "e2e").await.unwrap().token;
    let http = reqwest::Client::new();

    let mut config = CollectorConfig {
        postgres: world.registry.config.clone(),
        kafka: kafka_config(),
        topics: topics.clone(),
        ..CollectorConfig::default()
    };
    config.collector.emit = EmitVia::Kafka;
    config.collector.interval_secs = 1;
    config.collector.shared_database_url = Secret::new(world.shared_url.clone());
    config.collector.shared_tables =
        vec![SharedTable { table: "public.documents".to_owned(), tenant_column: "tenant_id".to_owned() }];
    let collector = Collector::new(config).unwrap();

    // One sweep: every tenant's bytes and users reach the enforcer as PostgreSQL reported them.
    let report = collector.sweep().await.unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(report.measured.len(), 30);
    let measured: BTreeMap<String, (i64, i64)> =
        report.measured.iter().map(|(t, m)| (t.clone(), (m.storage_bytes, m.active_users))).collect();
    assert_eq!(measured["db-0"].0, size, "db-0 as pg_database_size reports it");
    for (tenant, (bytes, users)) in &measured {
        let seen = until(Duration::from_secs(30), async || {
            let view = limits(&http, enforcer_addr, &key, tenant).await;
            view["storage_bytes"]["reported"] == *bytes && view["users"]["reported"] == *users
        })
        .await;
        assert!(seen, "{tenant}: the enforcer shows {bytes} bytes and {users} users");
    }
    let usage = tally_kit::rollups::current_usage(&ch.client, None, chrono::Utc::now()).await.unwrap();
    for row in usage.iter().filter(|row| row.metric == "storage_bytes") {
        assert_eq!(row.latest_value / 1_000_000_000, i128::from(measured[&row.tenant_id].0), "{}", row.tenant_id);
    }
    assert_eq!(checks.metrics.storage_alerts.get(), 0, "db-0 stands at 67 % of its cap");

    // At its user cap, schema-0 is refused the next user; schema-1 (7 of 50) is not.
    let invite = async |tenant: &str| {
        let url = format!("http://{enforcer_addr}/v1/check/users");
        let answer = http.post(url).bearer_auth(&key).json(&json!({ "tenant_id": tenant })).send().await.unwrap();
        (answer.status().as_u16(), answer.json::<Value>().await.unwrap())
    };
    let (status, answer) = invite("schema-0").await;
    assert_eq!((status, answer["reason"].as_str()), (403, Some("user_cap")), "{answer}");
    assert_eq!(invite("schema-1").await.0, 200);

    // db-0 grows past 80 % of its cap: the next sweep's sample alerts, once.
    grow(&own_pool, "public", 3_000).await;
    own_pool.close().await;
    next_slot().await;
    collector.sweep().await.unwrap();
    let alerted = until(Duration::from_secs(15), async || checks.metrics.storage_alerts.get() == 1).await;
    assert!(alerted, "the crossing alerts");
    next_slot().await;
    collector.sweep().await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(checks.metrics.storage_alerts.get(), 1, "once, however many samples stand above the line");
    let view = limits(&http, enforcer_addr, &key, "db-0").await;
    assert!(view["storage_bytes"]["percent"].as_f64().unwrap() > 80.0, "{view}");

    stopping.cancel();
    aggregating.await.unwrap().unwrap();
    enforcing.await.unwrap().unwrap();
    world.drop().await;
    ch.drop_database().await;
    tally_testkit::delete_topics(&kafka_config(), &[&topics.usage_events, &topics.dead_letter]).await;
}
