//! An idempotent, `acks=all` producer, shared by ingest and the emitter client's direct mode. A
//! message counts as published only when the broker acknowledged it; the queue in front of the
//! broker is bounded and a full queue is reported to the caller, never dropped.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

use tally_schemas::UsageEvent;
use tally_schemas::topics::{self, HEADER_EVENT_ID};

use crate::config::{KafkaConfig, ProducerConfig};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The local queue is full: the broker is slower than the intake.
    #[error("the producer queue is full")]
    QueueFull,
    /// The broker did not take the message (down, timed out, refused).
    #[error("the broker did not acknowledge the message: {0}")]
    NotAcknowledged(KafkaError),
}

/// A message on its way: resolves when the broker acknowledged it or gave up.
pub struct Pending(DeliveryFuture);

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pending")
    }
}

impl Pending {
    pub async fn acknowledged(self) -> Result<(), PublishError> {
        match self.0.await {
            Ok(Ok(_delivery)) => Ok(()),
            Ok(Err((error, _message))) => Err(PublishError::NotAcknowledged(error)),
            Err(_canceled) => Err(PublishError::NotAcknowledged(KafkaError::Canceled)),
        }
    }
}

/// A shared producer. After a fatal idempotence error (the broker lost the producer's sequence
/// state, e.g. across a restart) librdkafka refuses every further send; the publisher then
/// replaces its producer, so one broker incident does not refuse sends for ever.
#[derive(Clone)]
pub struct Publisher {
    producer: Arc<RwLock<FutureProducer>>,
    config: Arc<rdkafka::ClientConfig>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").finish_non_exhaustive()
    }
}

/// The librdkafka settings of Tally's producer: idempotent, `acks=all`, bounded queue.
pub fn producer_config(kafka: &KafkaConfig, config: &ProducerConfig) -> rdkafka::ClientConfig {
    let mut client = crate::kafka::client_config(kafka);
    client
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", config.message_timeout_ms.to_string())
        .set("queue.buffering.max.messages", config.max_queue_messages.to_string())
        .set("linger.ms", config.linger_ms.to_string())
        .set("compression.type", &config.compression);
    client
}

impl Publisher {
    pub fn new(kafka: &KafkaConfig, config: &ProducerConfig) -> Result<Self, KafkaError> {
        let config = producer_config(kafka, config);
        Ok(Self { producer: Arc::new(RwLock::new(config.create()?)), config: Arc::new(config) })
    }

    fn current(&self) -> FutureProducer {
        self.producer.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Replaces `failed` with a new producer if it is still the current one.
    fn replace(&self, failed: &FutureProducer) -> Result<(), KafkaError> {
        let mut current = self.producer.write().unwrap_or_else(PoisonError::into_inner);
        if std::ptr::eq(current.client().native_ptr(), failed.client().native_ptr()) {
            let reason = failed.client().fatal_error().map(|(_, reason)| reason).unwrap_or_default();
            tracing::warn!(reason, "the Kafka producer hit a fatal error; replacing it");
            *current = self.config.create()?;
        }
        Ok(())
    }

    /// Puts one message on the queue; `headers` are (name, value) pairs.
    pub fn enqueue(
        &self,
        topic: &str,
        key: &[u8],
        payload: &[u8],
        headers: &[(&str, &[u8])],
    ) -> Result<Pending, PublishError> {
        let record = || {
            let mut owned = OwnedHeaders::new_with_capacity(headers.len());
            for (name, value) in headers {
                owned = owned.insert(Header { key: name, value: Some(*value) });
            }
            FutureRecord::to(topic).key(key).payload(payload).headers(owned)
        };
        let failed = {
            let producer = self.producer.read().unwrap_or_else(PoisonError::into_inner);
            match producer.send_result(record()) {
                Ok(delivery) => return Ok(Pending(delivery)),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    return Err(PublishError::QueueFull);
                }
                Err((error, _)) if producer.client().fatal_error().is_none() => {
                    return Err(PublishError::NotAcknowledged(error));
                }
                Err(_fatal) => producer.clone(),
            }
        };
        self.replace(&failed).map_err(PublishError::NotAcknowledged)?;
        match self.current().send_result(record()) {
            Ok(delivery) => Ok(Pending(delivery)),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => Err(PublishError::QueueFull),
            Err((error, _)) => Err(PublishError::NotAcknowledged(error)),
        }
    }

    /// Puts a usage event on `topic` in its wire form: JSON payload (see
    /// [`tally_schemas::topics::SCHEMA_VERSION`]), tenant id as key, event id in a header.
    pub fn enqueue_usage(&self, topic: &str, event: &UsageEvent) -> Result<Pending, PublishError> {
        let payload = event.to_json();
        let headers: [(&str, &[u8]); 1] = [(HEADER_EVENT_ID, event.id.as_str().as_bytes())];
        self.enqueue(topic, topics::message_key(&event.tenant_id), &payload, &headers)
    }

    /// Messages not yet acknowledged by the broker.
    pub fn queue_depth(&self) -> i32 {
        self.current().in_flight_count()
    }

    /// Asks the broker for metadata: `/readyz`'s broker check.
    pub async fn ping(&self, timeout: Duration) -> Result<(), String> {
        let producer = self.current();
        tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, timeout).map(drop))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    /// Waits for every queued message to be acknowledged (shutdown).
    pub async fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        let producer = self.current();
        tokio::task::spawn_blocking(move || producer.flush(timeout)).await.map_err(|_| KafkaError::Canceled)?
    }
}
