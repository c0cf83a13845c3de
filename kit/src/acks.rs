//! Broker acknowledgements of messages sent together, gathered by the producer's delivery
//! callback.
//!
//! rdkafka's `FutureProducer` gives every message a oneshot channel and a future, and the caller
//! then awaits them one by one. Ingest publishes a batch per request and answers once the broker
//! has every message: a batch's messages all carry one shared handle instead, which the
//! delivery callback counts down; the batch wakes once. Nothing is allocated per message, and
//! the handle's memory stays with the batch (a per-message allocation would be freed by the
//! callback's thread, which costs more than the count itself).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use tally_schemas::topics::HEADER_EVENT_ID;
use tokio::sync::Notify;

use crate::producer::PublishError;

/// The messages of one batch on their way; see [`crate::producer::Publisher::enqueue`].
#[derive(Debug)]
pub struct Acks {
    state: Arc<AckState>,
    /// Messages handed to the producer; touched by the batch's owner only.
    enqueued: AtomicUsize,
    /// How long [`Acks::settled`] waits for the last report before counting the rest as lost.
    patience: Duration,
}

#[derive(Debug)]
pub(crate) struct AckState {
    reported: AtomicUsize,
    /// `enqueued` once the owner waits for the reports; until then a count no report reaches.
    expected: AtomicUsize,
    failures: Mutex<Vec<Failure>>,
    all_reported: Notify,
}

/// A message the broker did not take.
#[derive(Debug)]
pub struct Failure {
    pub key: Option<Vec<u8>>,
    /// The message's event id header, if it had one.
    pub event_id: Option<String>,
    pub error: KafkaError,
}

/// What became of a batch's messages.
#[derive(Debug)]
pub struct Settlement {
    pub failures: Vec<Failure>,
    /// Messages without a report when patience ran out: they may or may not be stored.
    pub unreported: usize,
}

impl Acks {
    /// `patience`: at least the producer's `message.timeout.ms`, after which librdkafka reports
    /// every message it still holds as failed.
    pub fn new(patience: Duration) -> Self {
        let state = AckState {
            reported: AtomicUsize::new(0),
            expected: AtomicUsize::new(usize::MAX),
            failures: Mutex::new(Vec::new()),
            all_reported: Notify::new(),
        };
        Self { state: Arc::new(state), enqueued: AtomicUsize::new(0), patience }
    }

    /// The handle travelling with one more message through librdkafka.
    pub(crate) fn token(&self) -> Arc<AckState> {
        self.enqueued.fetch_add(1, Ordering::Relaxed);
        Arc::clone(&self.state)
    }

    /// The message of `token` never reached the producer's queue: the caller has the error.
    pub(crate) fn withdraw(&self, token: Arc<AckState>) {
        drop(token);
        self.enqueued.fetch_sub(1, Ordering::Relaxed);
    }

    /// Waits until every enqueued message is acknowledged or given up on.
    pub async fn settled(self) -> Settlement {
        let expected = self.enqueued.load(Ordering::Relaxed);
        // SeqCst pairs with the callback's: either it sees `expected` and wakes us, or we see
        // its count.
        self.state.expected.store(expected, Ordering::SeqCst);
        let all_reported = async {
            loop {
                let woken = self.state.all_reported.notified();
                if self.state.reported.load(Ordering::SeqCst) >= expected {
                    break;
                }
                woken.await;
            }
        };
        let in_time = tokio::time::timeout(self.patience, all_reported).await.is_ok();
        let unreported = if in_time { 0 } else { expected.saturating_sub(self.state.reported.load(Ordering::SeqCst)) };
        let failures = std::mem::take(&mut *self.state.failures.lock().unwrap_or_else(PoisonError::into_inner));
        Settlement { failures, unreported }
    }
}

impl AckState {
    fn report(&self, failure: Option<Failure>) {
        if let Some(failure) = failure {
            self.failures.lock().unwrap_or_else(PoisonError::into_inner).push(failure);
        }
        let reported = self.reported.fetch_add(1, Ordering::SeqCst) + 1;
        if reported == self.expected.load(Ordering::SeqCst) {
            self.all_reported.notify_one();
        }
    }
}

impl Settlement {
    /// Every message is stored.
    pub fn is_complete(&self) -> bool {
        self.failures.is_empty() && self.unreported == 0
    }

    /// Whether the message with this key and event id may not be stored.
    pub fn may_have_lost(&self, key: &[u8], event_id: &str) -> bool {
        self.unreported > 0
            || self.failures.iter().any(|f| f.key.as_deref() == Some(key) && f.event_id.as_deref() == Some(event_id))
    }

    /// `Ok` when every message is stored, else the first failure.
    pub fn into_result(self) -> Result<(), PublishError> {
        match self.failures.into_iter().next() {
            Some(failure) => Err(PublishError::NotAcknowledged(failure.error)),
            None if self.unreported > 0 => {
                Err(PublishError::NotAcknowledged(KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut)))
            }
            None => Ok(()),
        }
    }
}

/// The producer's context: counts each delivery report into its batch's [`AckState`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct DeliveryReports;

impl ClientContext for DeliveryReports {}

impl ProducerContext for DeliveryReports {
    type DeliveryOpaque = Arc<AckState>;

    fn delivery(&self, result: &DeliveryResult<'_>, state: Arc<AckState>) {
        state.report(result.as_ref().err().map(|(error, message)| failure(error, message)));
    }
}

fn failure(error: &KafkaError, message: &BorrowedMessage<'_>) -> Failure {
    let event_id = message.headers().and_then(|headers| {
        headers
            .iter()
            .find(|header| header.key == HEADER_EVENT_ID)
            .and_then(|header| header.value)
            .and_then(|value| std::str::from_utf8(value).ok())
            .map(str::to_owned)
    });
    Failure { key: message.key().map(<[u8]>::to_vec), event_id, error: error.clone() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lost(event_id: &str) -> Option<Failure> {
        let error = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        Some(Failure { key: Some(b"acme".to_vec()), event_id: Some(event_id.to_owned()), error })
    }

    #[tokio::test]
    async fn settles_once_every_message_is_reported_and_names_the_failures() {
        let acks = Acks::new(Duration::from_secs(30));
        let tokens: Vec<_> = (0..4).map(|_| acks.token()).collect();
        let mut tokens = tokens.into_iter();
        acks.withdraw(tokens.next().unwrap());
        tokens.next().unwrap().report(None);
        tokens.next().unwrap().report(lost("e2"));
        let last = tokens.next().unwrap();
        let waiting = tokio::spawn(acks.settled());
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "one message is still out");
        last.report(None);
        let settlement = waiting.await.unwrap();
        assert_eq!((settlement.failures.len(), settlement.unreported), (1, 0));
        assert!(settlement.may_have_lost(b"acme", "e2"));
        assert!(!settlement.may_have_lost(b"acme", "e3"));
        assert!(!settlement.is_complete());
        assert!(settlement.into_result().is_err());
    }

    #[tokio::test]
    async fn reports_before_the_wait_count_too() {
        let acks = Acks::new(Duration::from_secs(30));
        for token in [acks.token(), acks.token()] {
            token.report(None);
        }
        let settlement = acks.settled().await;
        assert!(settlement.is_complete());
        assert!(Acks::new(Duration::from_secs(1)).settled().await.into_result().is_ok(), "nothing sent");
    }

    #[tokio::test]
    async fn messages_never_reported_count_as_maybe_lost_after_the_patience() {
        let acks = Acks::new(Duration::from_millis(50));
        let (reported, _never) = (acks.token(), acks.token());
        reported.report(None);
        let settlement = acks.settled().await;
        assert_eq!(settlement.unreported, 1);
        assert!(settlement.may_have_lost(b"any", "id"));
    }
}
