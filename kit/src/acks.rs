//! Broker acknowledgements of messages sent together, gathered by the producer's delivery
//! callback.
//!
//! rdkafka's `FutureProducer` gives every message a oneshot channel and a future, and the caller
//! then awaits them one by one. Ingest publishes a batch per request and answers once the broker
//! has every message: one shared counter per batch, settled by the delivery callback, does the
//! same with no channel per message and one wake-up per batch.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rdkafka::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryResult, ProducerContext};
use tokio::sync::Notify;

use crate::producer::PublishError;

/// The outcome of every message enqueued with it; see [`crate::producer::Publisher::enqueue`].
#[derive(Debug, Default)]
pub struct Acks {
    state: Arc<AckState>,
}

#[derive(Debug, Default)]
struct AckState {
    /// Messages handed to the producer whose delivery report has not come yet.
    outstanding: AtomicUsize,
    /// Messages the broker did not take, by the caller's index.
    failures: Mutex<Vec<(usize, KafkaError)>>,
    settled: Notify,
}

impl Acks {
    pub fn new() -> Self {
        Self::default()
    }

    /// The token travelling with message `index` through librdkafka.
    pub(crate) fn token(&self, index: usize) -> Box<Ack> {
        self.state.outstanding.fetch_add(1, Ordering::AcqRel);
        Box::new(Ack { state: Arc::clone(&self.state), index, failure: Some(KafkaError::Canceled) })
    }

    /// Waits until every enqueued message is acknowledged or given up on (after at most the
    /// producer's `message.timeout.ms`); returns the failed ones by index.
    pub async fn settled(self) -> Vec<(usize, PublishError)> {
        loop {
            // Registered before the check, so a report settling the last message in between
            // still wakes this task.
            let settled = self.state.settled.notified();
            if self.state.outstanding.load(Ordering::Acquire) == 0 {
                break;
            }
            settled.await;
        }
        let mut failures = self.state.failures.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::take(&mut *failures).into_iter().map(|(index, e)| (index, PublishError::NotAcknowledged(e))).collect()
    }
}

/// One message's part of an [`Acks`]. It settles the message when dropped: as delivered if the
/// delivery callback said so, as failed otherwise, also if librdkafka drops it without a report.
#[derive(Debug)]
pub(crate) struct Ack {
    state: Arc<AckState>,
    index: usize,
    failure: Option<KafkaError>,
}

impl Ack {
    /// The message never reached the producer's queue: the caller has the error, nothing to settle.
    pub(crate) fn withdraw(mut self) {
        self.failure = None;
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        if let Some(error) = self.failure.take() {
            self.state.failures.lock().unwrap_or_else(PoisonError::into_inner).push((self.index, error));
        }
        if self.state.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.state.settled.notify_one();
        }
    }
}

/// The producer's context: routes each delivery report to its message's [`Ack`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct DeliveryReports;

impl ClientContext for DeliveryReports {}

impl ProducerContext for DeliveryReports {
    type DeliveryOpaque = Box<Ack>;

    fn delivery(&self, result: &DeliveryResult<'_>, mut ack: Box<Ack>) {
        ack.failure = result.as_ref().err().map(|(error, _message)| error.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn settles_once_every_token_is_dropped_and_names_the_failures() {
        let acks = Acks::new();
        let (mut delivered, failed, lost, withdrawn) = (acks.token(0), acks.token(1), acks.token(2), acks.token(3));
        delivered.failure = None;
        withdrawn.withdraw();
        drop(delivered);
        let mut failed = failed;
        failed.failure = Some(KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::MessageTimedOut));
        drop(failed);
        let waiting = tokio::spawn(acks.settled());
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "one message is still out");
        drop(lost);
        let mut failures: Vec<usize> = waiting.await.unwrap().into_iter().map(|(index, _)| index).collect();
        failures.sort_unstable();
        assert_eq!(failures, vec![1, 2], "the timed-out and the dropped message failed");
    }

    #[tokio::test]
    async fn an_empty_batch_is_settled_at_once() {
        assert!(Acks::new().settled().await.is_empty());
    }
}
