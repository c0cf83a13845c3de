//! Collector tests against the local stack's PostgreSQL and broker: tenants in databases of their
//! own, in schemas, and in shared tables, with real tables and data of different sizes.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::time::Duration;

use tally_collector::config::{CollectorConfig, EmitVia, SharedTable};
use tally_collector::{Collector, sweep};
use tally_kit::Secret;
use tally_schemas::{Topics, UsageEvent};
use tally_testkit::tenant_data::{
    TenantWorld, create_database, drop_database, pool_of, register, silent_server, url_of,
};
use tally_testkit::{TestPostgres, kafka_config, read_topic, unique_name};

struct World {
    tenants: TenantWorld,
    topics: Topics,
    config: CollectorConfig,
}

impl World {
    async fn create() -> Self {
        let tenants = TenantWorld::create().await;
        let (topics, config) = emitting_to("collected", &tenants.registry).await;
        let config = for_world(&tenants, config);
        Self { tenants, topics, config }
    }

    async fn events(&self, expected: usize) -> BTreeMap<(String, String), UsageEvent> {
        let messages = read_topic(&kafka_config(), &self.topics.usage_events, expected, Duration::from_secs(30)).await;
        messages
            .into_iter()
            .map(|m| {
                let event: UsageEvent = serde_json::from_slice(&m.payload).unwrap();
                ((event.tenant_id.to_string(), event.metric.to_string()), event)
            })
            .collect()
    }

    async fn drop(self) {
        self.tenants.drop().await;
        tally_testkit::delete_topics(&kafka_config(), &[&self.topics.usage_events, &self.topics.dead_letter]).await;
    }
}

/// Fresh topics (`prefix`…) and a collector config reading `registry` and emitting to them.
async fn emitting_to(prefix: &str, registry: &TestPostgres) -> (Topics, CollectorConfig) {
    let topics = Topics {
        usage_events: unique_name(prefix),
        dead_letter: unique_name(&format!("{prefix}-dlq")),
        partitions: 2,
        ..Topics::default()
    };
    tally_kit::kafka::ensure_topics(&kafka_config(), &topics).await.unwrap();
    let config = CollectorConfig {
        postgres: registry.config.clone(),
        kafka: kafka_config(),
        topics: topics.clone(),
        ..CollectorConfig::default()
    };
    (topics, config)
}

/// The collector's config for a tenant world: the shared database and its shared table.
fn for_world(tenants: &TenantWorld, mut config: CollectorConfig) -> CollectorConfig {
    let section = &mut config.collector;
    section.emit = EmitVia::Kafka;
    section.shared_database_url = Secret::new(tenants.shared_url.clone());
    section.shared_tables =
        vec![SharedTable { table: "public.documents".to_owned(), tenant_column: "tenant_id".to_owned() }];
    section.concurrency = 8;
    section.connect_timeout_ms = 1_000;
    section.statement_timeout_ms = 2_000;
    config
}

async fn scalar(url: &str, sql: &str) -> i64 {
    let pool = pool_of(url);
    let value: i64 = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
    pool.close().await;
    value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sweep_measures_every_model_as_postgresql_reports_it() {
    let world = World::create().await;
    // A tenant whose server accepts connections and never answers, and one whose database was
    // dropped after it was registered.
    let (silent, _held) = silent_server().await;
    register(
        &world.tenants.registry.pool,
        "hanging",
        "database",
        Some(&format!("postgres://u:secret@{silent}/x")),
        None,
    )
    .await;
    let gone = unique_name("tally_gone").replace('-', "_");
    let gone_url = create_database(&gone, 1, 0, 10).await;
    register(&world.tenants.registry.pool, "gone", "database", Some(&gone_url), None).await;
    drop_database(&gone).await;

    let collector = Collector::new(world.config.clone()).unwrap();
    let slot_before = sweep::slot(chrono::Utc::now(), world.config.collector.interval_secs);
    let report = collector.sweep().await.unwrap();
    let slot_after = sweep::slot(chrono::Utc::now(), world.config.collector.interval_secs);
    let failures: BTreeMap<&str, &str> = report.failures.iter().map(|(t, r, _)| (t.as_str(), *r)).collect();
    assert_eq!(failures, BTreeMap::from([("gone", "missing_database"), ("hanging", "connect_timeout")]));
    assert_eq!(report.measured.len(), 30, "every other tenant is measured");
    assert!(report.failures.iter().all(|(_, _, detail)| !detail.contains("secret")), "no password in reports");

    let events = world.events(60).await;
    assert_eq!(events.len(), 60);
    let value = |tenant: &str, metric: &str| -> i64 {
        let event = &events[&(tenant.to_owned(), metric.to_owned())];
        i64::try_from(event.value.units() / 1_000_000_000).unwrap()
    };
    for (n, name) in world.tenants.own.iter().enumerate() {
        let tenant = format!("db-{n}");
        let url = url_of(name);
        let size = scalar(&url, "SELECT pg_database_size(current_database())").await;
        assert_eq!(value(&tenant, "storage_bytes"), size, "{tenant}: pg_database_size");
        assert_eq!(value(&tenant, "active_users"), n as i64 + 1, "{tenant}: active users");
    }
    let shared_url = world.tenants.shared_url.clone();
    for n in 0..10 {
        let tenant = format!("schema-{n}");
        let size = scalar(
            &shared_url,
            &format!(
                "SELECT sum(pg_total_relation_size(c.oid))::bigint FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace \
                 WHERE s.nspname = 'tenant_{n}' AND c.relkind = 'r'"
            ),
        )
        .await;
        assert_eq!(value(&tenant, "storage_bytes"), size, "{tenant}: the schema's relations");
        assert_eq!(value(&tenant, "active_users"), 5 * n + 2, "{tenant}: active users");
    }
    let table = scalar(&shared_url, "SELECT pg_total_relation_size('public.documents')").await;
    let all_rows: i64 = (0..10).map(|n| 100 * (n + 1)).sum();
    for n in 0..10 {
        let tenant = format!("shared-{n}");
        let share = (table as f64 * (100 * (n + 1)) as f64 / all_rows as f64).round() as i64;
        assert_eq!(value(&tenant, "storage_bytes"), share, "{tenant}: its share of the shared table");
        assert_eq!(value(&tenant, "active_users"), n + 3, "{tenant}: active users");
    }
    // Every id is deterministic per metric and sample slot: a rerun in the slot sends the same.
    for ((_, metric), event) in &events {
        let ids = [sweep::event_id(metric, slot_before), sweep::event_id(metric, slot_after)];
        assert!(ids.iter().any(|id| id == event.id.as_str()), "{} follows the slot", event.id.as_str());
        assert_eq!(event.source, sweep::SOURCE);
    }
    world.drop().await;
}

/// A read-only monitoring role measures a tenant database (and can change nothing in it).
#[tokio::test]
async fn a_read_only_monitoring_role_measures_what_the_owner_sees() {
    let registry = TestPostgres::create().await;
    let name = unique_name("tally_monitored").replace('-', "_");
    let url = create_database(&name, 4, 1, 50).await;
    register(&registry.pool, "monitored", "database", Some(&url), None).await;
    let role = unique_name("tally_monitor").replace('-', "_");
    let tenant_pool = pool_of(&url);
    for statement in [
        format!("CREATE ROLE {role} LOGIN PASSWORD 'monitor-secret'"),
        format!("GRANT CONNECT ON DATABASE \"{name}\" TO {role}"),
        format!("GRANT USAGE ON SCHEMA public TO {role}"),
        format!("GRANT SELECT ON public.users TO {role}"),
    ] {
        sqlx::query(&statement).execute(&tenant_pool).await.unwrap();
    }
    let (topics, mut config) = emitting_to("monitored", &registry).await;
    config.collector.monitor_user = role.clone();
    config.collector.monitor_password = Secret::new("monitor-secret");
    let report = Collector::new(config).unwrap().sweep().await.unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    let size = scalar(&url, "SELECT pg_database_size(current_database())").await;
    let measured = &report.measured[0].1;
    assert_eq!((measured.storage_bytes, measured.active_users), (size, 4));
    // The role reads; it cannot write.
    let (_, server_and_database) = url.split_once('@').unwrap();
    let monitor_url = format!("postgres://{role}:monitor-secret@{server_and_database}");
    let monitor = pool_of(&monitor_url);
    let refused = sqlx::query("INSERT INTO users (email, active) VALUES ('x', true)").execute(&monitor).await;
    assert!(refused.is_err(), "the monitoring role is read-only");
    monitor.close().await;
    tenant_pool.close().await;
    drop_database(&name).await;
    sqlx::query(&format!("DROP ROLE {role}")).execute(&registry.pool).await.unwrap();
    registry.drop_database().await;
    tally_testkit::delete_topics(&kafka_config(), &[&topics.usage_events, &topics.dead_letter]).await;
}

/// A database dropped while the sweep runs (after the registry was read, before its turn) is
/// reported, and the tenant after it is measured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_dropped_mid_sweep_is_reported_and_the_rest_measured() {
    let registry = TestPostgres::create().await;
    // Measured one at a time in id order: `a-hanging` holds the sweep for its connect timeout.
    let (silent, _held) = silent_server().await;
    register(&registry.pool, "a-hanging", "database", Some(&format!("postgres://u:p@{silent}/x")), None).await;
    let (gone, kept) = (unique_name("tally_dropped").replace('-', "_"), unique_name("tally_kept").replace('-', "_"));
    let gone_url = create_database(&gone, 1, 0, 5).await;
    let kept_url = create_database(&kept, 2, 0, 5).await;
    register(&registry.pool, "b-dropped", "database", Some(&gone_url), None).await;
    register(&registry.pool, "c-kept", "database", Some(&kept_url), None).await;
    let (topics, mut config) = emitting_to("dropped", &registry).await;
    config.collector.concurrency = 1;
    config.collector.connect_timeout_ms = 2_000;
    let collector = Collector::new(config).unwrap();
    // Spawned, as a service runtime would: the sweep is `Send`.
    let sweeping = tokio::spawn(async move { collector.sweep().await.unwrap() });
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop_database(&gone).await;
    let report = sweeping.await.unwrap();
    let failures: BTreeMap<&str, &str> = report.failures.iter().map(|(t, r, _)| (t.as_str(), *r)).collect();
    assert_eq!(failures, BTreeMap::from([("a-hanging", "connect_timeout"), ("b-dropped", "missing_database")]));
    assert_eq!(
        report.measured.iter().map(|(t, m)| (t.as_str(), m.active_users)).collect::<Vec<_>>(),
        vec![("c-kept", 2)]
    );
    drop_database(&kept).await;
    registry.drop_database().await;
    tally_testkit::delete_topics(&kafka_config(), &[&topics.usage_events, &topics.dead_letter]).await;
}
