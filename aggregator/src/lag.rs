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
            match measured {
                Ok(Ok(partitions)) => tracing::trace!(partitions, "consumer lag measured"),
                Ok(Err(error)) => tracing::debug!(error = %error, "measuring consumer lag failed"),
                Err(join) => tracing::debug!(error = %join, "the lag measurement task failed"),
            }
        }
    })
}

fn measure(consumer: &UsageConsumer, topic: &str, metrics: &AggregatorMetrics) -> rdkafka::error::KafkaResult<usize> {
    let assignment = consumer.assignment()?;
    let committed = consumer.committed_offsets(assignment, BROKER_TIMEOUT)?;
    let elements = committed.elements_for_topic(topic);
    for element in &elements {
        let (_low, high) = consumer.fetch_watermarks(topic, element.partition(), BROKER_TIMEOUT)?;
        let stored = match element.offset() {
            Offset::Offset(offset) => offset,
            _ => 0,
        };
        metrics.lag.with_label_values(&[&element.partition().to_string()]).set((high - stored).max(0));
    }
    Ok(elements.len())
}
