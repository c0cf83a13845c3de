//! The local stack's engines are the real ones: Kafka protocol with consumer groups and committed
//! offsets through rdkafka, ClickHouse RowBinary and insert deduplication through `clickhouse`,
//! PostgreSQL migrations through sqlx.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tally_kit::rollups::EventRow;
use tally_testkit::{TestClickHouse, TestPostgres, TestTopic, unique_name};

fn producer(topic: &TestTopic) -> FutureProducer {
    tally_kit::kafka::client_config(&topic.kafka)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "15000")
        .create()
        .expect("producer")
}

fn consumer_config(topic: &TestTopic) -> rdkafka::ClientConfig {
    let mut config = tally_kit::kafka::client_config(&topic.kafka);
    config
        .set("group.id", &topic.group)
        .set("group.instance.id", unique_name("member"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false");
    config
}

/// A group member subscribed to the topic.
fn subscriber(topic: &TestTopic) -> StreamConsumer {
    let consumer: StreamConsumer = consumer_config(topic).create().expect("consumer");
    consumer.subscribe(&[&topic.topic]).expect("subscribe");
    consumer
}

async fn produce(producer: &FutureProducer, topic: &TestTopic, range: std::ops::Range<usize>) {
    for i in range {
        let tenant = format!("tenant-{}", i % 5);
        let payload = format!("event-{i}");
        producer
            .send(FutureRecord::to(&topic.topic).key(&tenant).payload(&payload), Duration::from_secs(10))
            .await
            .map_err(|(error, _)| error)
            .expect("broker acknowledged");
    }
}

/// Reads `count` messages, committing each when `commit`; returns (key, partition, payload).
async fn consume(consumer: &StreamConsumer, count: usize, commit: bool) -> Vec<(String, i32, String)> {
    let mut seen = Vec::new();
    while seen.len() < count {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} messages arrived", seen.len()))
            .expect("message");
        let key = String::from_utf8(message.key().expect("key").to_vec()).expect("utf-8 key");
        let payload = String::from_utf8(message.payload().expect("payload").to_vec()).expect("utf-8");
        seen.push((key, message.partition(), payload));
        if commit {
            consumer.commit_message(&message, CommitMode::Sync).expect("commit");
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_keys_partition_by_tenant_and_groups_resume_from_committed_offsets() {
    let topic = TestTopic::create(3).await;
    let producer = producer(&topic);
    produce(&producer, &topic, 0..30).await;

    let first = subscriber(&topic);
    let seen = consume(&first, 30, true).await;
    let mut payloads: Vec<&str> = seen.iter().map(|(_, _, p)| p.as_str()).collect();
    payloads.sort_unstable();
    let mut expected: Vec<String> = (0..30).map(|i| format!("event-{i}")).collect();
    expected.sort_unstable();
    assert_eq!(payloads, expected);
    let mut partition_of: HashMap<&str, i32> = HashMap::new();
    for (key, partition, _) in &seen {
        let first_seen = *partition_of.entry(key).or_insert(*partition);
        assert_eq!(first_seen, *partition, "tenant {key} spread over partitions");
    }
    let committed = first.committed(Duration::from_secs(10)).expect("committed offsets");
    let total: i64 = committed.elements().iter().filter_map(|e| e.offset().to_raw()).sum();
    assert_eq!(total, 30, "committed offsets cover every message: {committed:?}");

    // A fresh consumer of the same group, given every partition, starts from the group's
    // committed offsets: it sees only what was produced after the commits.
    produce(&producer, &topic, 30..35).await;
    let second: StreamConsumer = consumer_config(&topic).create().expect("consumer");
    let mut assignment = rdkafka::TopicPartitionList::new();
    for partition in 0..3 {
        assignment.add_partition(&topic.topic, partition);
    }
    second.assign(&assignment).expect("assign");
    let resumed = consume(&second, 5, false).await;
    let mut payloads: Vec<&str> = resumed.iter().map(|(_, _, p)| p.as_str()).collect();
    payloads.sort_unstable();
    assert_eq!(payloads, ["event-30", "event-31", "event-32", "event-33", "event-34"]);
    let extra = tokio::time::timeout(Duration::from_secs(2), second.recv()).await;
    assert!(extra.is_err(), "nothing before the committed offsets is delivered again");
    // Closing a group member blocks in librdkafka's consumer close against the local broker;
    // the process exit releases both consumers instead.
    std::mem::forget(first);
    std::mem::forget(second);
}

fn rows(offsets: std::ops::Range<u64>) -> Vec<EventRow> {
    offsets
        .map(|offset| EventRow {
            tenant_id: "acme".to_owned(),
            event_id: format!("evt-{offset}"),
            metric: "compute_seconds".to_owned(),
            value: 100_000_000, // 0.1 in units of 10⁻⁹
            timestamp: 1_764_072_000_000_000_000 + i64::try_from(offset).unwrap(),
            source: "test".to_owned(),
            attributes: vec![("region".to_owned(), "eu".to_owned())],
            ingested_at: 1_764_072_000_000,
            kafka_partition: 0,
            kafka_offset: offset,
        })
        .collect()
}

async fn insert(client: &clickhouse::Client, rows: &[EventRow]) {
    insert_into(client, "usage_events_base", rows).await;
}

async fn insert_into(client: &clickhouse::Client, table: &str, rows: &[EventRow]) {
    let mut insert = client.insert::<EventRow>(table).await.expect("insert");
    for row in rows {
        insert.write(row).await.expect("write row");
    }
    insert.end().await.expect("insert acknowledged");
}

#[tokio::test]
async fn clickhouse_rowbinary_round_trips_sums_exactly_and_dedups_tokens() {
    let ch = TestClickHouse::create().await;
    let applied_again = tally_kit::clickhouse::apply_migrations(&ch.config).await.expect("re-apply");
    assert!(applied_again.is_empty(), "DDL applies once: {applied_again:?}");

    let batch = rows(0..10);
    insert(&ch.client, &batch).await;
    let back: Vec<EventRow> =
        ch.client.query("SELECT ?fields FROM usage_events ORDER BY kafka_offset").fetch_all().await.expect("select");
    assert_eq!(back, batch);
    let sum: i128 = ch.client.query("SELECT sum(value) FROM usage_events").fetch_one().await.expect("sum");
    assert_eq!(sum, 1_000_000_000, "ten times 0.1 is exactly 1");

    let tokened = ch.client.clone().with_setting("insert_deduplication_token", "p0-10-19");
    let next = rows(10..20);
    insert(&tokened, &next).await;
    insert(&tokened, &next).await;
    let count: u64 = ch.client.query("SELECT count() FROM usage_events").fetch_one().await.expect("count");
    assert_eq!(count, 20, "the repeated insert with the same token was dropped");
    ch.drop_database().await;
}

#[derive(Debug, sqlx::FromRow)]
struct TenantRow {
    id: String,
    tier: String,
    max_users: Option<i64>,
    stripe_customer_id: Option<String>,
}

#[tokio::test]
async fn postgres_migrations_create_platform_and_tally_schemas() {
    let pg = TestPostgres::create().await;
    tally_kit::postgres::migrate_platform(&pg.config).await.expect("platform migrations are idempotent");
    tally_kit::postgres::migrate_tally(&pg.config).await.expect("tally migrations are idempotent");

    sqlx::query("INSERT INTO tenant (id, name, tier, max_users) VALUES ('acme', 'Acme', 'PREMIUM', 75), ('solo', 'Solo', 'STANDARD', NULL)")
        .execute(&pg.pool)
        .await
        .expect("insert tenants");
    sqlx::query("INSERT INTO stripe_customers (tenant_id, stripe_customer_id) VALUES ('acme', 'cus_NffrFeUfNV2Hib')")
        .execute(&pg.pool)
        .await
        .expect("insert customer");
    let tenants: Vec<TenantRow> = sqlx::query_as(
        "SELECT t.id, t.tier, t.max_users, s.stripe_customer_id FROM tenant t LEFT JOIN stripe_customers s ON s.tenant_id = t.id ORDER BY t.id",
    )
    .fetch_all(&pg.pool)
    .await
    .expect("select");
    let by_id: BTreeMap<&str, &TenantRow> = tenants.iter().map(|t| (t.id.as_str(), t)).collect();
    assert_eq!(by_id["acme"].tier, "PREMIUM");
    assert_eq!(by_id["acme"].max_users, Some(75));
    assert_eq!(by_id["acme"].stripe_customer_id.as_deref(), Some("cus_NffrFeUfNV2Hib"));
    assert_eq!(by_id["solo"].stripe_customer_id, None);

    let bad_tier = sqlx::query("INSERT INTO tenant (id, name, tier) VALUES ('x', 'X', 'GOLD')").execute(&pg.pool).await;
    assert!(bad_tier.is_err(), "unknown tiers are refused by the schema");
    let bad_limit =
        sqlx::query("INSERT INTO tenant (id, name, max_users) VALUES ('y', 'Y', -5)").execute(&pg.pool).await;
    assert!(bad_limit.is_err(), "limits below -1 are refused");

    let tally_tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_schema || '.' || table_name FROM information_schema.tables WHERE table_name = 'api_keys'",
    )
    .fetch_all(&pg.pool)
    .await
    .expect("catalog");
    assert_eq!(tally_tables, ["tally.api_keys"], "Tally's tables live in its own schema");
    pg.drop_database().await;
}

#[tokio::test]
async fn upgrading_to_partition_scoped_tables_keeps_every_row_readable() {
    let config = tally_kit::config::ClickHouseConfig {
        url: std::env::var("TALLY_TEST_CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".to_owned()),
        database: tally_testkit::unique_name("tally_upgrade").replace('-', "_"),
        ..Default::default()
    };
    // A database of the release before migration 3, holding rows.
    assert_eq!(tally_kit::clickhouse::apply_migrations_through(&config, 2).await.expect("old DDL"), vec![1, 2]);
    let client = tally_kit::clickhouse::client(&config);
    insert_into(&client, "usage_events", &rows(0..5)).await;
    let events_before: u64 = client.query("SELECT count() FROM usage_events").fetch_one().await.expect("count");
    assert_eq!(events_before, 5);
    // Half-way through the upgrade: the first rename done, then a crash.
    client.query("RENAME TABLE usage_events TO usage_events_base").execute().await.expect("rename");
    assert_eq!(tally_kit::clickhouse::apply_migrations(&config).await.expect("upgrade"), vec![3, 4]);
    let engine: String = client
        .query("SELECT engine FROM system.tables WHERE database = currentDatabase() AND name = 'usage_events'")
        .fetch_one()
        .await
        .expect("engine");
    assert_eq!(engine, "Merge");
    let back: Vec<EventRow> =
        client.query("SELECT ?fields FROM usage_events ORDER BY kafka_offset").fetch_all().await.expect("select");
    assert_eq!(back, rows(0..5), "the rows written before the upgrade read through the Merge table");
    // A partition table created afterwards is read alongside.
    client.query(&tally_schemas::ddl::create_partition_table("usage_events", 3)).execute().await.expect("create");
    insert_into(&client, "usage_events_p3", &rows(5..8)).await;
    let events_after: u64 = client.query("SELECT count() FROM usage_events").fetch_one().await.expect("count");
    assert_eq!(events_after, 8);
    assert!(tally_kit::clickhouse::apply_migrations(&config).await.expect("again").is_empty());
    client.query(&format!("DROP DATABASE {}", config.database)).execute().await.expect("drop");
}
