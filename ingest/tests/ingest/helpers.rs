//! A running ingest on port 0 with its own topics and database, tenants and keys.

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tally_ingest::Ingest;
use tally_ingest::config::{IngestConfig, ProducerConfig};
use tally_kit::auth;
use tally_kit::config::KafkaConfig;
use tally_schemas::{TenantId, Topics};
use tally_testkit::{Message, TestPostgres, read_topic, topic_size, unique_name};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct TestApp {
    pub addr: SocketAddr,
    pub kafka: KafkaConfig,
    pub topics: Topics,
    pub pg: TestPostgres,
    /// A key of tenant `acme`.
    pub acme_key: String,
    pub admin_key: String,
    pub stopping: CancellationToken,
    pub running: JoinHandle<anyhow::Result<()>>,
    /// The configuration the app runs with (port 0 as configured).
    pub config: IngestConfig,
    http: reqwest::Client,
}

pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
    pub retry_after: Option<String>,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(tally_testkit::kafka_config(), ProducerConfig::default(), |_| {}).await
    }

    pub async fn spawn_with(
        kafka: KafkaConfig,
        producer: ProducerConfig,
        adjust: impl FnOnce(&mut IngestConfig),
    ) -> Self {
        let pg = TestPostgres::create().await;
        sqlx::query(
            "INSERT INTO tenant (id, name, status, tier) VALUES \
             ('acme', 'Acme', 'active', 'STANDARD'), ('globex', 'Globex', 'active', 'PREMIUM'), \
             ('frozen', 'Frozen', 'suspended', 'STANDARD')",
        )
        .execute(&pg.pool)
        .await
        .unwrap();
        let acme_key = auth::create_key(&pg.pool, auth::Scope::Tenant, Some(&TenantId::parse("acme").unwrap()), "test")
            .await
            .unwrap()
            .token;
        let admin_key = auth::create_key(&pg.pool, auth::Scope::Admin, None, "test admin").await.unwrap().token;
        let topics = Topics {
            usage_events: unique_name("usage"),
            dead_letter: unique_name("dlq"),
            partitions: 3,
            replication_factor: 1,
        };
        tally_kit::kafka::ensure_topics(&kafka, &topics).await.unwrap();
        let mut config = IngestConfig {
            kafka: kafka.clone(),
            postgres: pg.config.clone(),
            topics: topics.clone(),
            producer,
            ..IngestConfig::default()
        };
        config.http.listen = "127.0.0.1:0".parse().unwrap();
        config.auth.cache_ttl_ms = 0;
        adjust(&mut config);
        let stopping = CancellationToken::new();
        let ingest = Ingest::build(config.clone(), stopping.clone()).await.unwrap();
        let addr = ingest.local_addr();
        let running = tokio::spawn(ingest.run_until_stopped());
        Self { addr, kafka, topics, pg, acme_key, admin_key, stopping, running, config, http: reqwest::Client::new() }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn post(&self, key: Option<&str>, content_type: &str, body: impl Into<reqwest::Body>) -> Answer {
        self.post_with(key, &[("content-type", content_type)], body).await
    }

    /// A POST with the given headers (e.g. a CloudEvent's `ce-*` attributes in binary mode).
    pub async fn post_with(
        &self,
        key: Option<&str>,
        headers: &[(&str, &str)],
        body: impl Into<reqwest::Body>,
    ) -> Answer {
        let mut request = self.http.post(self.url("/v1/events")).body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.timeout(Duration::from_secs(60)).send().await.unwrap();
        let status = response.status();
        let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
        let body = response.json().await.unwrap_or(Value::Null);
        Answer { status, body, retry_after }
    }

    pub async fn post_json(&self, key: &str, body: &Value) -> Answer {
        self.post(Some(key), "application/json", serde_json::to_vec(body).unwrap()).await
    }

    pub async fn usage(&self, expected: usize) -> Vec<Message> {
        read_topic(&self.kafka, &self.topics.usage_events, expected, Duration::from_secs(15)).await
    }

    pub async fn dead_letters(&self, expected: usize) -> Vec<Message> {
        read_topic(&self.kafka, &self.topics.dead_letter, expected, Duration::from_secs(15)).await
    }

    pub async fn topics_usage_size(&self) -> i64 {
        topic_size(&self.kafka, &self.topics.usage_events).await
    }

    /// Messages on the usage and dead-letter topics together.
    pub async fn published(&self) -> i64 {
        topic_size(&self.kafka, &self.topics.usage_events).await
            + topic_size(&self.kafka, &self.topics.dead_letter).await
    }

    pub async fn stop(self) {
        self.stopping.cancel();
        self.running.await.unwrap().unwrap();
        self.pg.drop_database().await;
    }
}

pub fn event(id: &str, tenant: &str) -> Value {
    serde_json::json!({
        "id": id,
        "tenant_id": tenant,
        "metric": "api_calls",
        "value": 1,
        "source": "test",
    })
}

/// The event ids of usage messages, sorted.
pub fn event_ids(messages: &[Message]) -> Vec<String> {
    let catalogue = tally_schemas::MetricCatalogue::default();
    let ctx = tally_schemas::ValidationContext::new(&catalogue, chrono::Utc::now());
    let mut ids: Vec<String> = messages
        .iter()
        .map(|m| tally_schemas::UsageEvent::from_json_slice(&m.payload, &ctx).unwrap().id.to_string())
        .collect();
    ids.sort();
    ids
}
