//! Tally's aggregator: consumes the usage topic and stores every accepted event exactly once in
//! ClickHouse — the raw event, its id in the dedup index, and its minute/hour/day/month rollups —
//! at any crash point. `DESIGN.md` beside this crate gives the argument; `ANALYSTS.md` the tables.
//!
//! `/livez`, `/readyz` and `/metrics` are served on `[aggregator] listen`.

pub mod batch;
pub mod config;
pub mod consumer;
pub mod doze;
pub mod fence;
pub mod lag;
pub mod metrics;
pub mod partitions;
pub mod progress;
pub mod rollup;
pub mod rowbinary;
pub mod shards;
pub mod store;
pub mod verify;
pub mod writer;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::Consumer as _;
use tally_kit::ops::{HttpServer, Ops};
use tally_kit::producer::Publisher;
use tokio_util::sync::CancellationToken;

pub use crate::config::AggregatorConfig;
use crate::consumer::ConsumerLoop;
use crate::metrics::AggregatorMetrics;
use crate::shards::Shards;
use crate::store::Store;
use crate::writer::{BatchWriter, Retry};

/// How long shutdown waits for batches being stored before abandoning them (they replay).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for the consumer to close before exiting without it.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A connected, ready-to-run aggregator instance.
#[derive(Debug)]
pub struct Aggregator {
    server: HttpServer,
    ops: Ops,
    consumer_loop: ConsumerLoop,
    publisher: Publisher,
    stopping: CancellationToken,
    lag_interval: Duration,
}

impl Aggregator {
    /// Applies the ClickHouse DDL, creates missing topics, joins the consumer group and binds the
    /// operations listener (port 0 picks one).
    pub async fn build(config: AggregatorConfig, stopping: CancellationToken) -> anyhow::Result<Self> {
        config.aggregator.check().map_err(anyhow::Error::msg)?;
        tally_kit::clickhouse::apply_migrations(&config.clickhouse).await.context("applying the ClickHouse DDL")?;
        tally_kit::kafka::ensure_topics(&config.kafka, &config.topics).await.context("creating the topics")?;
        let ops = Ops::new("aggregator", stopping.clone());
        let metrics = AggregatorMetrics::register(ops.registry()).context("registering metrics")?;
        let publisher = Publisher::new(&config.kafka, &config.producer).context("creating the dead-letter producer")?;
        tally_kit::shards::verify(&config.clickhouse).await.context("checking the ClickHouse cluster")?;
        let layout = config.clickhouse.layout().map_err(anyhow::Error::msg)?;
        let store = Store::on_shards(Shards::from_config(&config.clickhouse), layout);
        store.verify_tables(config.aggregator.min_dedup_window).await?;
        let section = config.aggregator.clone();
        let writer = Arc::new(BatchWriter {
            store: store.clone(),
            publisher: publisher.clone(),
            dead_letter_topic: config.topics.dead_letter.clone(),
            catalogue: Arc::new(config.metrics.clone()),
            metrics,
            instance_id: section.instance_id.clone(),
            retry: Retry {
                initial: Duration::from_millis(section.retry_initial_ms),
                max: Duration::from_millis(section.retry_max_ms),
            },
        });
        let topic = config.topics.usage_events.clone();
        let (consumer, assignments) =
            consumer::subscribe(&config.kafka, &section, &topic).context("joining the consumer group")?;
        // Every node: a shard that is down stalls the partitions homed on it.
        let nodes: Arc<Vec<clickhouse::Client>> = Arc::new(store.shards().nodes().cloned().collect());
        ops.add_check("clickhouse", move || {
            let nodes = Arc::clone(&nodes);
            async move {
                for node in nodes.iter() {
                    tally_kit::clickhouse::ping(node).await.map_err(|e| e.to_string())?;
                }
                Ok(())
            }
        });
        let kafka = config.kafka.clone();
        ops.add_check("kafka", move || {
            let kafka = kafka.clone();
            async move { tally_kit::kafka::ping(&kafka).await.map(drop).map_err(|e| e.to_string()) }
        });
        let consumer_loop = ConsumerLoop {
            consumer,
            assignments,
            writer,
            topic,
            settings: section.clone(),
            partitions: HashMap::new(),
            generation: 0,
            in_flight: tokio::task::JoinSet::new(),
            abandon: CancellationToken::new(),
            doze: doze::Doze::default(),
            progress: progress::Progress::default(),
        };
        let server = HttpServer::bind(section.listen).await?;
        Ok(Self {
            server,
            ops,
            consumer_loop,
            publisher,
            stopping,
            lag_interval: Duration::from_millis(section.lag_interval_ms),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Consumes until the stopping token is cancelled, then finishes (or abandons) the batches
    /// being stored and leaves.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Self { server, ops, consumer_loop, publisher, stopping, lag_interval } = self;
        tracing::info!(addr = %server.local_addr(), topic = %consumer_loop.topic, "aggregator running");
        let http = tokio::spawn(server.serve(ops.router(), stopping.clone()));
        let heartbeat = ops.heartbeat("consumer-loop", Duration::from_secs(30));
        let lag = lag::spawn(&consumer_loop, lag_interval, stopping.clone());
        let consumer = Arc::clone(&consumer_loop.consumer);
        consumer_loop.run(stopping, heartbeat, DRAIN_TIMEOUT).await;
        lag.abort();
        publisher.flush(Duration::from_secs(5)).await.context("flushing the dead-letter producer")?;
        close(consumer).await;
        http.await.context("the operations server task")?.context("serving operations HTTP")?;
        tracing::info!("aggregator stopped");
        Ok(())
    }
}

/// Closes the consumer on a thread of its own: a broker that never answers the close must not
/// keep the process alive. Static membership lets the next instance with this id take over.
async fn close(consumer: Arc<consumer::UsageConsumer>) {
    let (done, closed) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        consumer.unsubscribe();
        drop(consumer);
        let _receiver_gone = done.send(());
    });
    if tokio::time::timeout(CLOSE_TIMEOUT, closed).await.is_err() {
        tracing::warn!("the consumer did not close in time; exiting without it");
    }
}

/// What the service does, for `--help`.
pub const ABOUT: &str = "Tally's aggregator: exactly-once rollups of usage events from Kafka into ClickHouse.";

/// Builds and runs the service until `stopping` is cancelled (what `tally-*` and `tally <role>`
/// run).
pub async fn serve(config: AggregatorConfig, stopping: CancellationToken) -> anyhow::Result<()> {
    Aggregator::build(config, stopping).await?.run_until_stopped().await
}
