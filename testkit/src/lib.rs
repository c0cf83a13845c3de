//! Test support: every test gets its own Kafka topic and consumer group, its own ClickHouse
//! database and its own PostgreSQL database, on the local stack (`deploy/local/up.sh`).
//!
//! Where the stack listens comes from the environment, with the local stack's defaults:
//! `TALLY_TEST_KAFKA_BROKERS` (127.0.0.1:9092), `TALLY_TEST_CLICKHOUSE_URL`
//! (http://127.0.0.1:8123) and `TALLY_TEST_POSTGRES_URL` (a URL whose database is the one to
//! connect to for creating test databases; default postgres://postgres:postgres@127.0.0.1:5432/postgres).
//!
//! Helpers panic with a message saying how to start the stack: they are for tests only.

#![allow(clippy::missing_panics_doc)]

pub mod bench;
mod broker;
pub mod browser;
pub mod cluster;
mod redis;
pub mod schemathesis;
pub mod stripe;
pub mod tenant_data;

pub use broker::TestBroker;
pub use redis::{TestRedis, TestRedisCluster, redis_prefix, redis_url};

use clickhouse::Client;
use tally_kit::Secret;
use tally_kit::config::{ClickHouseConfig, KafkaConfig, PostgresConfig};
use tally_kit::postgres::PgPool;

const STACK_HINT: &str = "is the local stack up? run deploy/local/up.sh";

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_owned())
}

/// A name no other test uses: `prefix-<12 hex digits>`.
pub fn unique_name(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &id[..12])
}

/// The broker of the local stack.
pub fn kafka_config() -> KafkaConfig {
    KafkaConfig {
        brokers: env_or("TALLY_TEST_KAFKA_BROKERS", "127.0.0.1:9092"),
        client_id: "tally-test".to_owned(),
        ..KafkaConfig::default()
    }
}

/// Every message of `topic` from the beginning, read without a consumer group; stops at
/// `expected` messages (0: read until `wait` passes) or when `wait` passes.
pub async fn read_topic(kafka: &KafkaConfig, topic: &str, expected: usize, wait: std::time::Duration) -> Vec<Message> {
    use rdkafka::Message as _;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::Headers;

    let consumer: StreamConsumer = tally_kit::kafka::client_config(kafka)
        .set("group.id", unique_name("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    let metadata = consumer.fetch_metadata(Some(topic), std::time::Duration::from_secs(10)).expect("metadata");
    let mut assignment = rdkafka::TopicPartitionList::new();
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        assignment.add_partition_offset(topic, partition.id(), rdkafka::Offset::Beginning).expect("offset");
    }
    consumer.assign(&assignment).expect("assign");
    let mut messages = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while messages.len() < expected || expected == 0 {
        let Ok(next) = tokio::time::timeout_at(deadline, consumer.recv()).await else { break };
        // A transient client error (a connection dropped under load) is retried until the deadline.
        let message = match next {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(%error, topic, "reading the topic: retrying");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let headers = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (h.key.to_owned(), h.value.map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default())
                    })
                    .collect()
            })
            .unwrap_or_default();
        messages.push(Message {
            key: message.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            partition: message.partition(),
            headers,
        });
    }
    // The reader never joined its group (it assigns partitions itself), but librdkafka's close
    // still blocks against the local broker (see tests/engines.rs); process exit releases it.
    std::mem::forget(consumer);
    messages
}

/// A message read back by [`read_topic`].
#[derive(Debug, Clone)]
pub struct Message {
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub partition: i32,
    pub headers: std::collections::BTreeMap<String, String>,
}

/// Total messages in a topic (sum of high watermarks).
pub async fn topic_size(kafka: &KafkaConfig, topic: &str) -> i64 {
    let config = tally_kit::kafka::client_config(kafka);
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer = config.create().expect("consumer");
        let timeout = std::time::Duration::from_secs(10);
        let metadata = consumer.fetch_metadata(Some(&topic), timeout).expect("metadata");
        metadata
            .topics()
            .iter()
            .flat_map(|t| t.partitions())
            .map(|p| consumer.fetch_watermarks(&topic, p.id(), timeout).expect("watermarks").1)
            .sum()
    })
    .await
    .expect("watermarks task")
}

/// Deletes topics a test or benchmark made, so the local broker does not carry (and keep
/// persisting) their data into later runs. Failures are logged, not fatal.
pub async fn delete_topics(kafka: &KafkaConfig, names: &[&str]) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = match tally_kit::kafka::client_config(kafka).create() {
        Ok(admin) => admin,
        Err(error) => return tracing::warn!(?names, %error, "deleting topics failed"),
    };
    let options = AdminOptions::new().operation_timeout(Some(std::time::Duration::from_secs(10)));
    match admin.delete_topics(names, &options).await {
        Ok(results) => {
            for result in results {
                if let Err((topic, code)) = result {
                    tracing::warn!(topic, %code, "deleting a topic failed");
                }
            }
        }
        Err(error) => tracing::warn!(?names, %error, "deleting topics failed"),
    }
}

/// A topic and a consumer group of the test's own.
#[derive(Debug, Clone)]
pub struct TestTopic {
    pub kafka: KafkaConfig,
    pub topic: String,
    pub group: String,
}

impl TestTopic {
    pub async fn create(partitions: i32) -> Self {
        let kafka = kafka_config();
        let topic = unique_name("test-topic");
        tally_kit::kafka::create_topics(&kafka, &[&topic], partitions, 1)
            .await
            .unwrap_or_else(|e| panic!("creating topic {topic}: {e}; {STACK_HINT}"));
        Self { kafka, topic, group: unique_name("test-group") }
    }
}

/// A ClickHouse database of the test's own, with Tally's DDL applied.
#[derive(Debug, Clone)]
pub struct TestClickHouse {
    pub config: ClickHouseConfig,
    pub client: Client,
}

impl TestClickHouse {
    pub async fn create() -> Self {
        Self::create_at(&env_or("TALLY_TEST_CLICKHOUSE_URL", "http://127.0.0.1:8123")).await
    }

    /// A database of the test's own on the server at `url` (one node of a [`cluster::TestCluster`]
    /// used as a single server, say).
    pub async fn create_at(url: &str) -> Self {
        let config = ClickHouseConfig {
            url: url.to_owned(),
            database: unique_name("tally_test").replace('-', "_"),
            ..ClickHouseConfig::default()
        };
        Self::prepared(config).await
    }

    async fn prepared(config: ClickHouseConfig) -> Self {
        tally_kit::clickhouse::apply_migrations(&config)
            .await
            .unwrap_or_else(|e| panic!("preparing clickhouse database {}: {e}; {STACK_HINT}", config.database));
        let client = tally_kit::clickhouse::client(&config);
        Self { config, client }
    }

    /// A database of the test's own on every node of `cluster`, with Tally's cluster DDL applied
    /// (`[clickhouse] cluster` and `shards` set); `client` reads through the first shard.
    pub async fn on_cluster(cluster: &cluster::TestCluster) -> Self {
        let urls = cluster.urls();
        let config = ClickHouseConfig {
            url: urls[0].clone(),
            database: unique_name("tally_test").replace('-', "_"),
            cluster: cluster::CLUSTER.to_owned(),
            shards: tally_kit::config::ShardList(urls.into_iter().map(|url| vec![url]).collect()),
            ..ClickHouseConfig::default()
        };
        Self::prepared(config).await
    }

    /// Drops the database on every node (call at the end of a test that passed).
    pub async fn drop_database(self) {
        let statement = format!("DROP DATABASE IF EXISTS {}", self.config.database);
        for node in tally_kit::topology::nodes(&self.config) {
            let config = ClickHouseConfig { url: node.url, ..self.config.clone() };
            if let Err(error) = tally_kit::clickhouse::client(&config).query(&statement).execute().await {
                panic!("dropping clickhouse database {} on {}: {error}", self.config.database, config.url);
            }
        }
    }
}

/// The database test databases are created from.
fn admin_postgres_url() -> String {
    env_or("TALLY_TEST_POSTGRES_URL", "postgres://postgres:postgres@127.0.0.1:5432/postgres")
}

/// A PostgreSQL database of the test's own, with the platform tables and Tally's schema migrated.
#[derive(Debug, Clone)]
pub struct TestPostgres {
    pub config: PostgresConfig,
    pub pool: PgPool,
    pub database: String,
}

impl TestPostgres {
    pub async fn create() -> Self {
        let admin_url = admin_postgres_url();
        let database = unique_name("tally_test").replace('-', "_");
        let (base, _) =
            admin_url.rsplit_once('/').unwrap_or_else(|| panic!("TALLY_TEST_POSTGRES_URL {admin_url} has no database"));
        let config = PostgresConfig { url: Secret::new(format!("{base}/{database}")), ..PostgresConfig::default() };
        let prepare = async {
            tally_kit::postgres::ensure_database(&config).await?;
            tally_kit::postgres::migrate_platform(&config).await?;
            tally_kit::postgres::migrate_tally(&config).await
        };
        prepare.await.unwrap_or_else(|e| panic!("preparing postgres database {database}: {e}; {STACK_HINT}"));
        let pool = tally_kit::postgres::pool(&config).unwrap_or_else(|e| panic!("{e}"));
        Self { config, pool, database }
    }

    /// Closes the pool and drops the database (call at the end of a test that passed).
    pub async fn drop_database(self) {
        self.pool.close().await;
        let admin =
            PostgresConfig { url: Secret::new(admin_postgres_url()), max_connections: 1, ..PostgresConfig::default() };
        let pool = tally_kit::postgres::pool(&admin).unwrap_or_else(|e| panic!("{e}"));
        let statement = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.database);
        if let Err(error) = sqlx::query(&statement).execute(&pool).await {
            panic!("dropping postgres database {}: {error}", self.database);
        }
    }
}

/// The default metric catalogue plus `distinct_users`, a unique metric counting distinct
/// `user_id` attributes (the catalogue tests with every metric kind use).
pub fn catalogue_with_unique() -> tally_schemas::MetricCatalogue {
    use tally_schemas::{MetricCatalogue, MetricDef, MetricKind};
    let mut raw: std::collections::BTreeMap<String, MetricDef> = MetricCatalogue::default().into();
    let def = MetricDef {
        kind: MetricKind::Unique,
        unit: "users".to_owned(),
        description: String::new(),
        distinct_by: Some("user_id".to_owned()),
        max_value: None,
    };
    raw.insert("distinct_users".to_owned(), def);
    MetricCatalogue::try_from(raw).unwrap_or_else(|e| panic!("the test catalogue is valid: {e}"))
}
