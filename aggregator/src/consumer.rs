//! The consumer loop: polls the usage topic, buffers per partition, hands due batches to the
//! writer (one in flight per partition, partitions in parallel), and follows rebalances.
//!
//! On assignment a partition resumes at its checkpoint in ClickHouse, never at a Kafka offset: the
//! group's committed offsets only report progress (committed after the checkpoint, at most once a
//! second: see `progress`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::batch::Message;
use crate::config::AggregatorSection;
use crate::doze::Doze;
use crate::partitions::{PartitionState, TakenBatch};
use crate::progress::Progress;
use crate::writer::{BatchWriter, Outcome};

/// Partition changes, reported from librdkafka's rebalance callback to the loop.
#[derive(Debug)]
pub enum Assignment {
    Assigned(Vec<i32>),
    Revoked(Vec<i32>),
}

/// Forwards rebalances to the loop; runs inside `recv()`, so the loop sees them in order.
#[derive(Debug)]
pub struct RebalanceForwarder {
    topic: String,
    events: UnboundedSender<Assignment>,
}

impl ClientContext for RebalanceForwarder {}

impl ConsumerContext for RebalanceForwarder {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let _closed = self.events.send(Assignment::Revoked(self.partitions(list)));
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            let _closed = self.events.send(Assignment::Assigned(self.partitions(list)));
        }
    }
}

impl RebalanceForwarder {
    fn partitions(&self, list: &TopicPartitionList) -> Vec<i32> {
        list.elements().iter().filter(|e| e.topic() == self.topic).map(|e| e.partition()).collect()
    }
}

pub type UsageConsumer = StreamConsumer<RebalanceForwarder>;

/// A group member with static membership, subscribed to `topic`.
pub fn subscribe(
    kafka: &tally_kit::config::KafkaConfig,
    section: &AggregatorSection,
    topic: &str,
) -> Result<(Arc<UsageConsumer>, UnboundedReceiver<Assignment>), rdkafka::error::KafkaError> {
    let (events, received) = unbounded_channel();
    let consumer: UsageConsumer = tally_kit::kafka::client_config(kafka)
        .set("group.id", &section.group_id)
        .set("group.instance.id", &section.instance_id)
        .set("session.timeout.ms", section.session_timeout_ms.to_string())
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create_with_context(RebalanceForwarder { topic: topic.to_owned(), events })?;
    consumer.subscribe(&[topic])?;
    Ok((Arc::new(consumer), received))
}

type Finished = (u32, TakenBatch, Outcome);

/// The loop's state: the consumer, the partitions it owns, the batches being stored.
pub struct ConsumerLoop {
    pub consumer: Arc<UsageConsumer>,
    pub assignments: UnboundedReceiver<Assignment>,
    pub writer: Arc<BatchWriter>,
    pub topic: String,
    pub settings: AggregatorSection,
    pub partitions: HashMap<u32, PartitionState>,
    pub generation: u64,
    pub in_flight: JoinSet<Finished>,
    /// Cancelled to abandon batches still retrying (shutdown, revocation).
    pub abandon: CancellationToken,
    pub doze: Doze,
    pub progress: Progress,
}

impl std::fmt::Debug for ConsumerLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerLoop")
            .field("topic", &self.topic)
            .field("partitions", &self.partitions.keys().collect::<Vec<_>>())
            .field("in_flight", &self.in_flight.len())
            .finish_non_exhaustive()
    }
}

impl ConsumerLoop {
    /// Runs until `stopping` is cancelled, then lets in-flight batches finish for up to `drain`.
    pub async fn run(mut self, stopping: CancellationToken, heartbeat: tally_kit::ops::Heartbeat, drain: Duration) {
        let linger = Duration::from_millis(self.settings.linger_ms);
        let mut tick = tokio::time::interval(Duration::from_millis(self.settings.linger_ms.clamp(10, 100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let consumer = Arc::clone(&self.consumer);
        loop {
            heartbeat.beat();
            tokio::select! {
                () = stopping.cancelled() => break,
                received = consumer.recv() => match received {
                    Ok(message) => {
                        self.follow_rebalances().await;
                        self.offer(&message);
                        self.doze.active();
                        if self.doze.dozing {
                            self.wake();
                        }
                    }
                    Err(error) => tracing::warn!(error = %error, "consumer error"),
                },
                Some(finished) = self.in_flight.join_next() => match finished {
                    Ok((partition, batch, outcome)) => {
                        self.doze.active();
                        self.finished(partition, batch, outcome).await;
                    }
                    Err(join) => tracing::error!(error = %join, "a batch task failed"),
                },
                _ = tick.tick() => {}
            }
            self.follow_rebalances().await;
            self.start_due(linger);
            self.commit_progress();
            self.doze_step().await;
        }
        tracing::info!(batches = self.in_flight.len(), "aggregator stopping: finishing batches in flight");
        let finish = async { while self.in_flight.join_next().await.is_some() {} };
        if tokio::time::timeout(drain, finish).await.is_err() {
            tracing::warn!("batches still retrying at shutdown were abandoned; they replay on restart");
            self.abandon.cancel();
            while self.in_flight.join_next().await.is_some() {}
        }
    }

    fn offer(&mut self, message: &rdkafka::message::BorrowedMessage<'_>) {
        let Ok(partition) = u32::try_from(message.partition()) else { return };
        let Some(state) = self.partitions.get_mut(&partition) else { return };
        let owned = Message::of(message, u64::try_from(message.offset()).unwrap_or(0));
        state.offer(owned, Instant::now());
        if !state.paused && state.buffered() >= self.settings.max_buffered_events {
            state.paused = true;
            if !self.set_paused(partition, true)
                && let Some(state) = self.partitions.get_mut(&partition)
            {
                state.paused = false;
            }
        }
    }

    fn start_due(&mut self, linger: Duration) {
        let now = Instant::now();
        for (&partition, state) in &mut self.partitions {
            let Some(batch) = state.take_due(self.settings.max_batch_events, linger, now) else { continue };
            let writer = Arc::clone(&self.writer);
            let topic = self.topic.clone();
            let abandon = state.revoked.clone();
            self.in_flight.spawn(async move {
                let outcome = writer
                    .store(&topic, partition, batch.first_offset, &batch.messages, batch.plan.clone(), &abandon)
                    .await;
                (partition, batch, outcome)
            });
        }
    }

    async fn finished(&mut self, partition: u32, batch: TakenBatch, outcome: Outcome) {
        let Some(state) = self.partitions.get_mut(&partition) else { return };
        if state.generation != batch.generation {
            return;
        }
        match outcome {
            Outcome::Stored(plan) => {
                state.stored(&plan);
                self.progress.stored(partition, plan.next_offset());
            }
            Outcome::Replan(plan) => state.replan(plan, batch.messages, Instant::now()),
            Outcome::AlreadyStored => {
                tracing::info!(partition, "another instance stored this batch; reloading the partition's position");
                if let Some(state) = self.partitions.remove(&partition) {
                    state.revoked.cancel();
                }
                self.assign(vec![partition]).await;
            }
            Outcome::Abandoned => {}
        }
        let drained = self
            .partitions
            .get(&partition)
            .is_some_and(|state| state.paused && state.buffered() < self.settings.max_buffered_events / 2);
        if drained
            && self.set_paused(partition, false)
            && let Some(state) = self.partitions.get_mut(&partition)
        {
            state.paused = false;
        }
    }

    /// Dozes once everything is quiet; while dozing, wakes when a partition has new data.
    async fn doze_step(&mut self) {
        if self.doze.dozing {
            let next: Vec<(i32, i64)> = self
                .partitions
                .iter()
                .map(|(partition, state)| (*partition as i32, i64::try_from(state.expected()).unwrap_or(i64::MAX)))
                .collect();
            if self.doze.new_data(&self.consumer, &self.topic, next).await {
                self.wake();
            }
            return;
        }
        let quiet = self.in_flight.is_empty()
            && !self.partitions.is_empty()
            && self.partitions.values().all(|state| state.buffered() == 0 && !state.paused);
        if self.doze.due(quiet) && self.pause_all(true) {
            tracing::debug!("nothing to consume: dozing");
            self.doze.fall_asleep();
        }
    }

    fn wake(&mut self) {
        self.pause_all(false);
        self.doze.wake();
    }

    /// Pauses or resumes every assigned partition the buffer logic has not paused itself.
    fn pause_all(&self, pause: bool) -> bool {
        let mut list = TopicPartitionList::new();
        for (partition, _) in self.partitions.iter().filter(|(_, state)| !state.paused) {
            list.add_partition(&self.topic, *partition as i32);
        }
        let outcome = if pause { self.consumer.pause(&list) } else { self.consumer.resume(&list) };
        outcome.map_err(|error| tracing::warn!(pause, error = %error, "dozing pause/resume failed")).is_ok()
    }

    async fn follow_rebalances(&mut self) {
        while let Ok(change) = self.assignments.try_recv() {
            // A rebalance resets what is paused: wake, and doze again later if still quiet.
            if self.doze.dozing {
                self.wake();
            }
            self.doze.active();
            match change {
                Assignment::Revoked(partitions) => {
                    for partition in partitions.iter().filter_map(|p| u32::try_from(*p).ok()) {
                        // The batch in flight stops: another instance owns the partition now.
                        if let Some(state) = self.partitions.remove(&partition) {
                            state.revoked.cancel();
                        }
                        self.progress.forget(partition);
                        self.writer.metrics.assigned.with_label_values(&[&partition.to_string()]).set(0);
                    }
                    tracing::info!(?partitions, "partitions revoked");
                }
                Assignment::Assigned(partitions) => {
                    tracing::info!(?partitions, "partitions assigned");
                    self.assign(partitions.iter().filter_map(|p| u32::try_from(*p).ok()).collect()).await;
                }
            }
        }
    }

    /// Loads each partition's checkpoint (and any unfinished plan) and seeks there.
    async fn assign(&mut self, partitions: Vec<u32>) {
        for partition in partitions {
            let Some(position) = self.writer.position(&self.topic, partition, &self.abandon).await else { return };
            if position.pending.is_some() {
                self.writer.metrics.replays.inc();
                tracing::info!(partition, next_offset = position.next_offset, "replaying an unfinished batch");
            }
            self.generation += 1;
            let state = PartitionState::new(
                self.generation,
                position.next_offset,
                position.pending,
                self.abandon.child_token(),
            );
            self.partitions.insert(partition, state);
            self.writer.metrics.assigned.with_label_values(&[&partition.to_string()]).set(1);
            let offset = Offset::Offset(i64::try_from(position.next_offset).unwrap_or(i64::MAX));
            // Best effort: without the seek the partition reads from its committed offset, which
            // is never past the checkpoint, and re-deliveries below the checkpoint are dropped.
            if let Err(error) = self.consumer.seek(&self.topic, partition as i32, offset, Duration::ZERO) {
                tracing::debug!(partition, error = %error, "seek to the checkpoint deferred");
            }
        }
    }

    /// Commits stored progress when due (see [`Progress`]).
    fn commit_progress(&mut self) {
        let Some(due) = self.progress.due(Instant::now()) else { return };
        let mut list = TopicPartitionList::new();
        for (partition, next_offset) in due {
            let offset = Offset::Offset(i64::try_from(next_offset).unwrap_or(i64::MAX));
            if list.add_partition_offset(&self.topic, partition as i32, offset).is_err() {
                return;
            }
        }
        if let Err(error) = self.consumer.commit(&list, rdkafka::consumer::CommitMode::Async) {
            tracing::debug!(error = %error, "progress commit failed (only lag reporting uses it)");
        }
    }

    fn set_paused(&self, partition: u32, pause: bool) -> bool {
        let mut list = TopicPartitionList::new();
        list.add_partition(&self.topic, partition as i32);
        let outcome = if pause { self.consumer.pause(&list) } else { self.consumer.resume(&list) };
        match outcome {
            Ok(()) => {
                tracing::info!(partition, pause, "partition consumption {}", if pause { "paused" } else { "resumed" });
                true
            }
            Err(error) => {
                tracing::warn!(partition, error = %error, "pause/resume failed");
                false
            }
        }
    }
}
