//! The background loop: gather a batch, send it until it is answered, resolve each delivery.

use std::time::Duration;

use tokio::sync::mpsc;

use crate::{ClientConfig, EmitError, Queued};

#[derive(Debug)]
pub enum Transport {
    Http(crate::http::HttpTransport),
    #[cfg(feature = "kafka")]
    Kafka(crate::kafka::KafkaTransport),
}

/// What one attempt at sending a batch came to.
#[derive(Debug)]
pub(crate) enum Attempt {
    /// Every event has its final outcome, in batch order.
    Done(Vec<Result<(), EmitError>>),
    /// Worth retrying (overload, outage); wait at least this long.
    Retry { after: Option<Duration>, error: String },
    /// Retrying would not help; every event fails with this.
    Fatal(EmitError),
}

pub async fn run(config: ClientConfig, transport: Transport, mut queue: mpsc::Receiver<Queued>) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + config.linger;
        while batch.len() < config.max_batch_events {
            match tokio::time::timeout_at(deadline, queue.recv()).await {
                Ok(Some(next)) => batch.push(next),
                Ok(None) | Err(_) => break,
            }
        }
        let outcomes = send_with_retries(&config, &transport, &batch).await;
        for (queued, outcome) in batch.into_iter().zip(outcomes) {
            let _ = queued.done.send(outcome);
        }
    }
}

async fn send_with_retries(
    config: &ClientConfig,
    transport: &Transport,
    batch: &[Queued],
) -> Vec<Result<(), EmitError>> {
    let mut backoff = config.initial_backoff;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let attempt = match transport {
            Transport::Http(http) => http.send(batch).await,
            #[cfg(feature = "kafka")]
            Transport::Kafka(kafka) => kafka.send(batch).await,
        };
        match attempt {
            Attempt::Done(outcomes) => return outcomes,
            Attempt::Fatal(error) => return vec![Err(error); batch.len()],
            Attempt::Retry { after, error } => {
                if attempts >= config.max_attempts {
                    return vec![Err(EmitError::GaveUp { attempts, last_error: error }); batch.len()];
                }
                tracing::debug!(attempts, %error, "batch not stored yet; retrying with the same ids");
                tokio::time::sleep(after.unwrap_or(backoff).max(backoff)).await;
                backoff = (backoff * 2).min(config.max_backoff);
            }
        }
    }
}
