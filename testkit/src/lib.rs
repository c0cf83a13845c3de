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
        let config = ClickHouseConfig {
            url: env_or("TALLY_TEST_CLICKHOUSE_URL", "http://127.0.0.1:8123"),
            database: unique_name("tally_test").replace('-', "_"),
            ..ClickHouseConfig::default()
        };
        tally_kit::clickhouse::apply_migrations(&config)
            .await
            .unwrap_or_else(|e| panic!("preparing clickhouse database {}: {e}; {STACK_HINT}", config.database));
        let client = tally_kit::clickhouse::client(&config);
        Self { config, client }
    }

    /// Drops the database (call at the end of a test that passed).
    pub async fn drop_database(self) {
        let statement = format!("DROP DATABASE IF EXISTS {}", self.config.database);
        if let Err(error) = self.client.query(&statement).execute().await {
            panic!("dropping clickhouse database {}: {error}", self.config.database);
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
