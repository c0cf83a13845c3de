//! An idempotent, `acks=all` producer, shared by ingest and the emitter client's direct mode. A
//! message counts as published only when the broker acknowledged it; the queue in front of the
//! broker is bounded and a full queue is reported to the caller, never dropped.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};

use tally_schemas::topics::{self, HEADER_ACCEPTED_AT, HEADER_EVENT_ID, UsageMessage};

use crate::acks::{Acks, DeliveryReports};
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

/// What a refused send means for the caller.
fn refusal(error: KafkaError) -> PublishError {
    match error {
        KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => PublishError::QueueFull,
        error => PublishError::NotAcknowledged(error),
    }
}

/// A message to publish (a Kafka record); `headers` are (name, value) pairs.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    pub topic: &'a str,
    pub key: &'a [u8],
    pub payload: &'a [u8],
    pub headers: &'a [(&'a str, &'a [u8])],
}

type KafkaProducer = ThreadedProducer<DeliveryReports>;

/// A shared producer. After a fatal idempotence error (the broker lost the producer's sequence
/// state, e.g. across a restart) librdkafka refuses every further send; the publisher then
/// replaces its producer, so one broker incident does not refuse sends for ever.
#[derive(Clone)]
pub struct Publisher {
    producer: Arc<RwLock<KafkaProducer>>,
    config: Arc<rdkafka::ClientConfig>,
    /// How long a batch waits for its reports: the message timeout, and then some.
    patience: Duration,
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
        let patience = Duration::from_millis(config.message_timeout_ms) + Duration::from_secs(5);
        let config = producer_config(kafka, config);
        let producer = config.create_with_context(DeliveryReports)?;
        Ok(Self { producer: Arc::new(RwLock::new(producer)), config: Arc::new(config), patience })
    }

    /// A new batch to enqueue messages in.
    pub fn acks(&self) -> Acks {
        Acks::new(self.patience)
    }

    fn current(&self) -> KafkaProducer {
        self.producer.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Replaces `failed` with a new producer if it is still the current one.
    fn replace(&self, failed: KafkaProducer) -> Result<(), KafkaError> {
        let mut current = self.producer.write().unwrap_or_else(PoisonError::into_inner);
        if std::ptr::eq(current.client().native_ptr(), failed.client().native_ptr()) {
            let reason = failed.client().fatal_error().map(|(_, reason)| reason).unwrap_or_default();
            tracing::warn!(reason, "the Kafka producer hit a fatal error; replacing it");
            let old = std::mem::replace(&mut *current, self.config.create_with_context(DeliveryReports)?);
            // The last handle of a producer purges, flushes (up to 500 ms) and joins its thread.
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn_blocking(move || drop((old, failed)))),
                Err(_) => drop((old, failed)),
            }
        }
        Ok(())
    }

    /// Puts one message on the queue as part of `acks`. An error means the message was not
    /// queued (and is not part of `acks`).
    pub fn enqueue(&self, acks: &Acks, record: Record<'_>) -> Result<(), PublishError> {
        let base_record = || {
            let mut owned = OwnedHeaders::new_with_capacity(record.headers.len());
            for (name, value) in record.headers {
                owned = owned.insert(Header { key: name, value: Some(*value) });
            }
            BaseRecord::with_opaque_to(record.topic, acks.token())
                .key(record.key)
                .payload(record.payload)
                .headers(owned)
        };
        let failed = {
            let producer = self.producer.read().unwrap_or_else(PoisonError::into_inner);
            match producer.send(base_record()) {
                Ok(()) => return Ok(()),
                Err((error, rejected)) => {
                    acks.withdraw(rejected.delivery_opaque);
                    let queue_full = matches!(error, KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull));
                    if queue_full || producer.client().fatal_error().is_none() {
                        return Err(refusal(error));
                    }
                    producer.clone()
                }
            }
        };
        self.replace(failed).map_err(PublishError::NotAcknowledged)?;
        self.current().send(base_record()).map_err(|(error, rejected)| {
            acks.withdraw(rejected.delivery_opaque);
            refusal(error)
        })
    }

    /// Puts a usage event on `topic` in its wire form as part of `acks`: JSON payload (see
    /// [`tally_schemas::topics::SCHEMA_VERSION`]), tenant id as key, event id and the instant
    /// it was validated at (`accepted_at`, see [`HEADER_ACCEPTED_AT`]) in headers.
    pub fn enqueue_usage(
        &self,
        acks: &Acks,
        topic: &str,
        event: &impl UsageMessage,
        accepted_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), PublishError> {
        let payload = event.payload();
        let accepted_at = accepted_at.timestamp_millis().to_string();
        let headers: [(&str, &[u8]); 2] =
            [(HEADER_EVENT_ID, event.event_id().as_bytes()), (HEADER_ACCEPTED_AT, accepted_at.as_bytes())];
        let record = Record { topic, key: topics::message_key(event.tenant()), payload: &payload, headers: &headers };
        self.enqueue(acks, record)
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
