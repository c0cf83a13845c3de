//! Direct mode: produce to the usage topic without going through ingest.
//!
//! The events are written in exactly the form ingest writes them (same key, payload and headers),
//! by the same idempotent, `acks=all` producer. There is no API key check and no tenant registry
//! check in this mode: it is for trusted services inside the platform; the aggregator still
//! validates every message and dead-letters what it cannot count.

use tally_kit::config::{KafkaConfig, ProducerConfig};
use tally_kit::producer::{PublishError, Publisher};
use tally_schemas::Topics;

use crate::worker::Attempt;
use crate::{EmitError, Queued};

#[derive(Debug)]
pub struct KafkaTransport {
    publisher: Publisher,
    topic: String,
}

impl KafkaTransport {
    pub fn new(kafka: &KafkaConfig, topics: &Topics) -> Result<Self, EmitError> {
        let publisher = Publisher::new(kafka, &ProducerConfig::default())
            .map_err(|e| EmitError::Invalid(format!("kafka producer: {e}")))?;
        Ok(Self { publisher, topic: topics.usage_events.clone() })
    }

    pub(crate) async fn send(&self, batch: &[Queued]) -> Attempt {
        let acks = self.publisher.acks();
        let mut refused: Option<PublishError> = None;
        // The aggregator judges each event's age against the time it reached the topic.
        let produced_at = chrono::Utc::now();
        for queued in batch {
            if let Err(error) = self.publisher.enqueue_usage(&acks, &self.topic, &queued.event, produced_at) {
                refused = Some(error);
                break;
            }
        }
        // Whatever was queued settles before the batch is retried, so a retry never races it.
        let failure = acks.settled().await.into_result().err();
        // Resending the whole batch is safe: the aggregator counts each (tenant, id) once.
        match refused.or(failure) {
            None => Attempt::Done(vec![Ok(()); batch.len()]),
            Some(error) => Attempt::Retry { after: None, error: error.to_string() },
        }
    }
}
