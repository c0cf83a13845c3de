//! Kafka clients from config, a broker health check, and topic creation.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use tally_schemas::Topics;

use crate::config::KafkaConfig;

#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    #[error("kafka client for {brokers}: {source}")]
    Client { brokers: String, source: KafkaError },
    #[error(
        "kafka brokers {brokers} did not answer within {timeout_ms} ms: {detail} (is the broker running? check [kafka] brokers)"
    )]
    Unreachable { brokers: String, timeout_ms: u64, detail: String },
    #[error("creating topic {topic}: {code}")]
    CreateTopic { topic: String, code: RDKafkaErrorCode },
}

/// A librdkafka config with the brokers, client id and pass-through properties set.
pub fn client_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &config.brokers).set("client.id", &config.client_id);
    for (key, value) in &config.properties {
        client.set(key, value);
    }
    client
}

/// Asks the cluster for its metadata; returns the number of brokers that answered.
pub async fn ping(config: &KafkaConfig) -> Result<usize, KafkaSetupError> {
    let client_config = client_config(config);
    let brokers = config.brokers.clone();
    let timeout_ms = config.timeout_ms;
    let outcome = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = client_config.create()?;
        let metadata = consumer.fetch_metadata(None, Duration::from_millis(timeout_ms))?;
        Ok::<_, KafkaError>(metadata.brokers().len())
    })
    .await;
    match outcome {
        Ok(Ok(count)) => Ok(count),
        Ok(Err(error)) => Err(KafkaSetupError::Unreachable { brokers, timeout_ms, detail: error.to_string() }),
        Err(join) => Err(KafkaSetupError::Unreachable { brokers, timeout_ms, detail: join.to_string() }),
    }
}

/// Whether a topic was made now or was there already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicStatus {
    Created,
    Existed,
}

/// Creates the configured topics that do not exist yet; existing ones are left as they are.
pub async fn ensure_topics(
    config: &KafkaConfig,
    topics: &Topics,
) -> Result<Vec<(String, TopicStatus)>, KafkaSetupError> {
    let names: Vec<&str> = topics.all().to_vec();
    create_topics(config, &names, topics.partitions, topics.replication_factor).await
}

/// Creates each named topic with `partitions` unless it exists.
pub async fn create_topics(
    config: &KafkaConfig,
    names: &[&str],
    partitions: i32,
    replication_factor: i32,
) -> Result<Vec<(String, TopicStatus)>, KafkaSetupError> {
    let admin: AdminClient<DefaultClientContext> = client_config(config)
        .create()
        .map_err(|source| KafkaSetupError::Client { brokers: config.brokers.clone(), source })?;
    let new_topics: Vec<NewTopic<'_>> =
        names.iter().map(|name| NewTopic::new(name, partitions, TopicReplication::Fixed(replication_factor))).collect();
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_millis(config.timeout_ms)))
        .request_timeout(Some(Duration::from_millis(config.timeout_ms)));
    let results = admin
        .create_topics(&new_topics, &options)
        .await
        .map_err(|source| KafkaSetupError::Client { brokers: config.brokers.clone(), source })?;
    results
        .into_iter()
        .map(|result| match result {
            Ok(topic) => Ok((topic, TopicStatus::Created)),
            Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => Ok((topic, TopicStatus::Existed)),
            Err((topic, code)) => Err(KafkaSetupError::CreateTopic { topic, code }),
        })
        .collect()
}
