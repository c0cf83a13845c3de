//! Consumer lag per partition for `/metrics`: the high watermark minus the group's committed
//! offset (committed only after the batch's checkpoint, so it is stored progress).

use std::sync::Arc;
use std::time::Duration;

use rdkafka::Offset;
use rdkafka::consumer::Consumer;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::consumer::{ConsumerLoop, UsageConsumer};
use crate::metrics::AggregatorMetrics;

const BROKER_TIMEOUT: Duration = Duration::from_secs(2);

/// Measures the lag of the assigned partitions every `interval` until `stopping`.
pub fn spawn(consumer_loop: &ConsumerLoop, interval: Duration, stopping: CancellationToken) -> JoinHandle<()> {
    let consumer = Arc::clone(&consumer_loop.consumer);
    let metrics = consumer_loop.writer.metrics.clone();
    let topic = consumer_loop.topic.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        while !stopping.is_cancelled() {
            tick.tick().await;
            let consumer = Arc::clone(&consumer);
            let metrics = metrics.clone();
            let topic = topic.clone();
            let measured = tokio::task::spawn_blocking(move || measure(&consumer, &topic, &metrics)).await;
            if let Ok(Err(error)) = measured {
                tracing::debug!(error = %error, "measuring consumer lag failed");
            }
        }
    })
}

fn measure(consumer: &UsageConsumer, topic: &str, metrics: &AggregatorMetrics) -> rdkafka::error::KafkaResult<()> {
    let assignment = consumer.assignment()?;
    let committed = consumer.committed_offsets(assignment, BROKER_TIMEOUT)?;
    for element in committed.elements_for_topic(topic) {
        let (_low, high) = consumer.fetch_watermarks(topic, element.partition(), BROKER_TIMEOUT)?;
        let stored = match element.offset() {
            Offset::Offset(offset) => offset,
            _ => 0,
        };
        metrics.lag.with_label_values(&[&element.partition().to_string()]).set((high - stored).max(0));
    }
    Ok(())
}
