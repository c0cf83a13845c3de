//! Tally's emitter client for app services.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tally_client::EmitError> {
//! use tally_client::{ClientConfig, Emitter, event};
//! let emitter = Emitter::http(ClientConfig::new("http://127.0.0.1:8080", "tly_…"))?;
//! let delivery = emitter.emit(event("req-42", "acme", "api_calls", 1, "gateway")?).await?;
//! delivery.acknowledged().await?; // stored by the broker, counted exactly once
//! emitter.close().await;
//! # Ok(()) }
//! ```
//!
//! * **Batching**: events are sent in batches of up to `max_batch_events`, or after `linger`.
//! * **Retries**: 429, 5xx and network failures are retried with backoff (honouring
//!   `Retry-After`) with the same event ids, so a retry never counts twice.
//! * **Backpressure**: at most `buffer_events` wait; `emit` waits for room, `try_emit` refuses.
//! * **Direct to Kafka** (feature `kafka`): [`Emitter::kafka`] produces to the usage topic itself.
//! * **Reading usage back**: [`query::UsageClient`] asks `tally-query`'s `/v1/usage`.

mod http;
#[cfg(feature = "kafka")]
mod kafka;
pub mod query;
mod worker;

use std::time::Duration;

use tally_schemas::{EventId, MetricName, Quantity, TenantId, UsageEvent};
use tokio::sync::{mpsc, oneshot};

pub use crate::worker::Transport;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmitError {
    #[error("the event is invalid: {0}")]
    Invalid(String),
    #[error("the emitter's buffer is full")]
    Full,
    #[error("the emitter is closed")]
    Closed,
    #[error("ingest refused the event ({reason}): {message}")]
    Rejected { reason: String, message: String },
    #[error("ingest refused the request ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("gave up after {attempts} attempts: {last_error}")]
    GaveUp { attempts: u32, last_error: String },
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Ingest's base URL, e.g. `http://ingest:8080`.
    pub endpoint: String,
    pub api_key: String,
    pub max_batch_events: usize,
    pub linger: Duration,
    pub buffer_events: usize,
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub request_timeout: Duration,
}

impl ClientConfig {
    pub fn new(endpoint: impl Into<String>, api_key: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            api_key: api_key.into(),
            max_batch_events: 500,
            linger: Duration::from_millis(20),
            buffer_events: 10_000,
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// Builds a checked event stamped now.
pub fn event(
    id: &str,
    tenant: &str,
    metric: &str,
    value: impl Into<Quantity>,
    source: &str,
) -> Result<UsageEvent, EmitError> {
    fn invalid(field: &'static str) -> impl Fn((tally_schemas::Rule, String)) -> EmitError {
        move |(_, message)| EmitError::Invalid(format!("{field}: {message}"))
    }
    Ok(UsageEvent {
        id: EventId::parse(id).map_err(invalid("id"))?,
        tenant_id: TenantId::parse(tenant).map_err(invalid("tenant_id"))?,
        metric: MetricName::parse(metric).map_err(invalid("metric"))?,
        value: value.into(),
        timestamp: chrono::Utc::now(),
        source: source.to_owned(),
        attributes: Default::default(),
    })
}

/// The outcome of one emitted event.
#[derive(Debug)]
pub struct Delivery(oneshot::Receiver<Result<(), EmitError>>);

impl Delivery {
    /// Resolves once the event is stored by the broker, or definitively refused.
    pub async fn acknowledged(self) -> Result<(), EmitError> {
        self.0.await.unwrap_or(Err(EmitError::Closed))
    }
}

pub(crate) struct Queued {
    pub event: UsageEvent,
    pub done: oneshot::Sender<Result<(), EmitError>>,
}

/// A handle to the background sender; cheap to clone.
#[derive(Debug, Clone)]
pub struct Emitter {
    queue: mpsc::Sender<Queued>,
    worker: std::sync::Arc<tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl Emitter {
    /// An emitter that posts batches to ingest over HTTP.
    pub fn http(config: ClientConfig) -> Result<Self, EmitError> {
        let transport = http::HttpTransport::new(&config)?;
        Ok(Self::start(config, Transport::Http(transport)))
    }

    /// An emitter that produces straight to the usage topic (idempotent, `acks=all`).
    #[cfg(feature = "kafka")]
    pub fn kafka(
        config: ClientConfig,
        kafka: &tally_kit::config::KafkaConfig,
        topics: &tally_schemas::Topics,
    ) -> Result<Self, EmitError> {
        let transport = kafka::KafkaTransport::new(kafka, topics)?;
        Ok(Self::start(config, Transport::Kafka(transport)))
    }

    fn start(config: ClientConfig, transport: Transport) -> Self {
        let (queue, receiver) = mpsc::channel(config.buffer_events.max(1));
        let worker = tokio::spawn(worker::run(config, transport, receiver));
        Self { queue, worker: std::sync::Arc::new(tokio::sync::Mutex::new(Some(worker))) }
    }

    /// Queues an event, waiting while the buffer is full.
    pub async fn emit(&self, event: UsageEvent) -> Result<Delivery, EmitError> {
        let (done, outcome) = oneshot::channel();
        self.queue.send(Queued { event, done }).await.map_err(|_| EmitError::Closed)?;
        Ok(Delivery(outcome))
    }

    /// Queues an event if there is room, without waiting.
    pub fn try_emit(&self, event: UsageEvent) -> Result<Delivery, EmitError> {
        let (done, outcome) = oneshot::channel();
        self.queue.try_send(Queued { event, done }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => EmitError::Full,
            mpsc::error::TrySendError::Closed(_) => EmitError::Closed,
        })?;
        Ok(Delivery(outcome))
    }

    /// Sends what is queued and stops; deliveries still resolve.
    pub async fn close(self) {
        let worker = self.worker.lock().await.take();
        drop(self.queue);
        if let Some(worker) = worker {
            let _ = worker.await;
        }
    }
}
