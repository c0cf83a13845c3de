//! Stores one batch exactly once: settle its plan, read and check its messages, leave out what
//! was counted before, write rows under the batch's token, dead-letter the refused, checkpoint.
//! Every step is idempotent, so any failure is answered by running the whole procedure again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tally_kit::producer::{Publisher, Record};
use tally_schemas::MetricCatalogue;
use tally_schemas::topics::{HEADER_DLQ_DETAIL, HEADER_DLQ_REASON, HEADER_DLQ_SOURCE, HEADER_DLQ_STAGE};
use tokio_util::sync::CancellationToken;

use crate::batch::{self, DeadLetter, Message, Plan};
use crate::fence::Written;
use crate::metrics::AggregatorMetrics;
use crate::store::{PlanNotVisible, Position, Store};

/// How a batch ended.
#[derive(Debug)]
pub enum Outcome {
    /// Stored and checkpointed; the partition resumes at `plan.next_offset()`.
    Stored(Plan),
    /// A plan for this first offset already existed with other bounds (a replay, or another
    /// writer): nothing was written; the batch must be run again with that plan.
    Replan(Plan),
    /// The partition had already moved past this batch (another writer stored it).
    AlreadyStored,
    /// Shutdown or revocation came first; nothing of this attempt needs undoing.
    Abandoned,
}

/// Backoff between attempts.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub initial: Duration,
    pub max: Duration,
}

#[derive(Debug)]
pub struct BatchWriter {
    pub store: Store,
    pub publisher: Publisher,
    pub dead_letter_topic: String,
    pub catalogue: Arc<MetricCatalogue>,
    pub metrics: AggregatorMetrics,
    pub instance_id: String,
    pub retry: Retry,
}

#[derive(Debug, thiserror::Error)]
enum StoreError {
    #[error("clickhouse ({stage}): {source}")]
    ClickHouse { stage: &'static str, source: clickhouse::error::Error },
    #[error("dead-letter topic: {0}")]
    DeadLetter(String),
    #[error("clickhouse ({stage}): {message}")]
    Behind { stage: &'static str, message: String },
}

impl StoreError {
    fn stage(&self) -> &'static str {
        match self {
            StoreError::ClickHouse { stage, .. } | StoreError::Behind { stage, .. } => stage,
            StoreError::DeadLetter(_) => "dead_letter",
        }
    }
}

fn at(stage: &'static str) -> impl FnOnce(clickhouse::error::Error) -> StoreError {
    move |source| StoreError::ClickHouse { stage, source }
}

impl BatchWriter {
    /// Stores the batch of `topic`/`partition` starting at `first_offset`: with `known` when a plan
    /// exists (then `messages` must reach its last offset), else planned over all of `messages`.
    /// Retries until it succeeds or `abandon` is cancelled.
    pub async fn store(
        &self,
        topic: &str,
        partition: u32,
        first_offset: u64,
        messages: &[Message],
        known: Option<Plan>,
        abandon: &CancellationToken,
    ) -> Outcome {
        // Proposed once: every retry proposes the same plan, so the first stored copy matches it.
        let proposal = match (&known, messages.last()) {
            (Some(_), _) => None,
            (None, None) => return Outcome::Abandoned,
            (None, Some(last)) => Some(Plan {
                topic: topic.to_owned(),
                kafka_partition: partition,
                first_offset,
                last_offset: last.offset,
                decided_at: chrono::Utc::now().timestamp_millis(),
                planned_by: self.instance_id.clone(),
            }),
        };
        let mut wait = self.retry.initial;
        loop {
            let started = Instant::now();
            match self.attempt(messages, known.as_ref(), proposal.as_ref(), abandon).await {
                Ok(outcome) => {
                    self.metrics.store_seconds.observe(started.elapsed().as_secs_f64());
                    return outcome;
                }
                Err(error) => {
                    self.store.failed(partition);
                    self.metrics.store_failures.with_label_values(&[error.stage()]).inc();
                    tracing::warn!(
                        topic,
                        partition,
                        first_offset,
                        error = %error,
                        retry_in_ms = wait.as_millis() as u64,
                        "storing a batch failed; retrying (consumption of this partition waits)"
                    );
                }
            }
            tokio::select! {
                () = abandon.cancelled() => return Outcome::Abandoned,
                () = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(self.retry.max);
        }
    }

    /// The partition's stored position, retried with backoff until ClickHouse answers; `None`
    /// when `abandon` is cancelled first.
    /// Settles the partition's home shard and creates its tables there first if this process
    /// has not yet.
    pub async fn position(&self, topic: &str, partition: u32, abandon: &CancellationToken) -> Option<Position> {
        let mut wait = self.retry.initial;
        loop {
            match self.store.position(topic, partition, &self.instance_id).await {
                Ok(position) => return Some(position),
                Err(error) => {
                    self.store.failed(partition);
                    self.metrics.store_failures.with_label_values(&["position"]).inc();
                    tracing::warn!(topic, partition, error = %error, "reading the partition's checkpoint failed; retrying");
                }
            }
            tokio::select! {
                () = abandon.cancelled() => return None,
                () = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(self.retry.max);
        }
    }

    async fn attempt(
        &self,
        messages: &[Message],
        known: Option<&Plan>,
        proposal: Option<&Plan>,
        abandon: &CancellationToken,
    ) -> Result<Outcome, StoreError> {
        let partition = known.or(proposal).map_or(0, |plan| plan.kafka_partition);
        self.store.ready(partition).await.map_err(at("replica_sync"))?;
        let plan = match (known, proposal) {
            (Some(plan), _) => plan.clone(),
            (None, Some(proposal)) => {
                let settled = self.store.settle_plan(proposal).await.map_err(|error| match error {
                    PlanNotVisible::Query(source) => StoreError::ClickHouse { stage: "plan", source },
                    behind @ PlanNotVisible::Behind { .. } => {
                        StoreError::Behind { stage: "plan", message: behind.to_string() }
                    }
                })?;
                if &settled != proposal {
                    return Ok(Outcome::Replan(settled));
                }
                settled
            }
            (None, None) => return Ok(Outcome::Abandoned),
        };
        let started = Instant::now();
        let decoded = batch::decode(&plan, messages, &self.catalogue);
        let decoded_at = started.elapsed();
        let claims = batch::claims(&plan, &decoded.events);
        let claimed = self.store.claim(&plan, &claims).await.map_err(at("dedup_lookup"))?;
        if claimed.across_shards > 0 {
            tracing::warn!(
                partition = plan.kafka_partition,
                pairs = claimed.across_shards,
                "events claimed on more than one ClickHouse shard (a tenant whose partitions live on different shards: \
                 a partition-count change or another producer's partitioner); the claim stored first counts them"
            );
        }
        let counted_before = claimed.lost;
        let looked_up_at = started.elapsed();
        let rows = batch::assemble(&plan, decoded.events, &counted_before, &self.catalogue);
        if abandon.is_cancelled() {
            return Ok(Outcome::Abandoned);
        }
        // The rows are written only while the plan is still the partition's next batch, judged by
        // the server when it holds them all (see `fence`): a writer that stalled while another
        // instance stored this batch is refused here instead of storing it a second time.
        if self.store.store_rows(&plan, &rows).await.map_err(at("insert"))? == Written::Fenced {
            self.metrics.fenced.inc();
            tracing::warn!(
                partition = plan.kafka_partition,
                first_offset = plan.first_offset,
                "the partition moved past this batch while it was being stored (another instance stored it); \
                 nothing written, reloading the partition"
            );
            return Ok(Outcome::AlreadyStored);
        }
        let inserted_at = started.elapsed();
        self.dead_letter(&plan, &decoded.dead_letters).await?;
        self.store.checkpoint(&plan).await.map_err(at("checkpoint"))?;
        tracing::debug!(
            partition = plan.kafka_partition,
            first_offset = plan.first_offset,
            events = rows.events.len(),
            decode_ms = decoded_at.as_millis() as u64,
            lookup_ms = (looked_up_at - decoded_at).as_millis() as u64,
            insert_ms = (inserted_at - looked_up_at).as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "batch stored"
        );

        let metrics = &self.metrics;
        metrics.counted.inc_by(rows.events.len() as u64);
        metrics.duplicates.with_label_values(&["in_batch"]).inc_by(decoded.duplicates_in_batch);
        metrics.duplicates.with_label_values(&["earlier"]).inc_by(rows.duplicates_before);
        metrics.late.inc_by(rows.late);
        metrics.batch_messages.observe(messages.iter().filter(|m| plan.covers(m.offset)).count() as f64);
        for dead_letter in &decoded.dead_letters {
            metrics.dead_lettered.with_label_values(&[dead_letter.reason]).inc();
        }
        Ok(Outcome::Stored(plan))
    }

    /// Publishes the refused messages with their reason; waits for the broker's acknowledgement
    /// (a replay publishes them again: the source header tells copies apart).
    async fn dead_letter(&self, plan: &Plan, dead_letters: &[DeadLetter]) -> Result<(), StoreError> {
        let acks = self.publisher.acks();
        for dead_letter in dead_letters {
            let source = format!("{}/{}/{}", plan.topic, plan.kafka_partition, dead_letter.offset);
            let headers: [(&str, &[u8]); 4] = [
                (HEADER_DLQ_REASON, dead_letter.reason.as_bytes()),
                (HEADER_DLQ_DETAIL, dead_letter.detail.as_bytes()),
                (HEADER_DLQ_STAGE, b"aggregator"),
                (HEADER_DLQ_SOURCE, source.as_bytes()),
            ];
            let record = Record {
                topic: &self.dead_letter_topic,
                key: &dead_letter.key,
                payload: &dead_letter.payload,
                headers: &headers,
            };
            if let Err(error) = self.publisher.enqueue(&acks, record) {
                // Whatever was queued is still acknowledged before the batch is retried.
                acks.settled().await;
                return Err(StoreError::DeadLetter(error.to_string()));
            }
        }
        acks.settled().await.into_result().map_err(|e| StoreError::DeadLetter(e.to_string()))
    }
}
