//! An aggregator with its own topics, consumer group and ClickHouse database, run in this
//! process or as a child process (for SIGKILL), and the queries tests compare totals with.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clickhouse::Row;
use serde::Deserialize;
use tally_aggregator::{Aggregator, AggregatorConfig};
use tally_kit::config::{KafkaConfig, ProducerConfig};
use tally_kit::producer::{Publisher, Record};
use tally_schemas::Topics;
use tally_testkit::cluster::TestCluster;
use tally_testkit::{TestClickHouse, unique_name};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::oracle::{self, Send, Window, WindowKey};

pub struct Harness {
    pub kafka: KafkaConfig,
    pub topics: Topics,
    pub ch: TestClickHouse,
    pub group: String,
    /// `[aggregator] min_dedup_window` of every instance (tests that shrink the tables' windows
    /// lower it).
    pub min_dedup_window: u64,
    /// The ClickHouse cluster `ch` lives on, when the test runs on one (stopped when dropped).
    pub cluster: Option<TestCluster>,
}

impl Harness {
    pub async fn new(kafka: KafkaConfig, partitions: i32) -> Self {
        Self::with_clickhouse(kafka, partitions, None).await
    }

    /// A harness whose ClickHouse is a cluster of `shards` shards of the test's own.
    pub async fn on_cluster(kafka: KafkaConfig, partitions: i32, shards: usize) -> Self {
        Self::with_clickhouse(kafka, partitions, Some(TestCluster::start(shards).await)).await
    }

    /// [`Harness::on_cluster`] for `Some(shards)`, the stack's ClickHouse server for `None`.
    pub async fn on_shards(kafka: KafkaConfig, partitions: i32, shards: Option<usize>) -> Self {
        match shards {
            Some(shards) => Self::on_cluster(kafka, partitions, shards).await,
            None => Self::new(kafka, partitions).await,
        }
    }

    async fn with_clickhouse(kafka: KafkaConfig, partitions: i32, cluster: Option<TestCluster>) -> Self {
        let telemetry = tally_kit::config::TelemetryConfig {
            format: tally_kit::config::LogFormat::Text,
            filter: "warn".to_owned(),
        };
        tally_kit::telemetry::init(&telemetry);
        let topics = Topics {
            usage_events: unique_name("usage"),
            dead_letter: unique_name("dlq"),
            partitions,
            replication_factor: 1,
        };
        tally_kit::kafka::ensure_topics(&kafka, &topics).await.expect("topics");
        let min_dedup_window = AggregatorConfig::default().aggregator.min_dedup_window;
        let ch = match &cluster {
            Some(cluster) => TestClickHouse::on_cluster(cluster).await,
            None => TestClickHouse::create().await,
        };
        Self { kafka, topics, ch, group: unique_name("aggregators"), min_dedup_window, cluster }
    }

    /// The configuration of instance `instance`.
    pub fn config(&self, instance: &str) -> AggregatorConfig {
        let mut config = AggregatorConfig {
            kafka: self.kafka.clone(),
            clickhouse: self.ch.config.clone(),
            topics: self.topics.clone(),
            metrics: oracle::catalogue(),
            ..AggregatorConfig::default()
        };
        let section = &mut config.aggregator;
        section.listen = "127.0.0.1:0".parse().unwrap();
        section.group_id = self.group.clone();
        section.instance_id = instance.to_owned();
        section.session_timeout_ms = 6_000;
        section.linger_ms = 100;
        section.max_batch_events = 500;
        section.retry_initial_ms = 50;
        section.retry_max_ms = 1_000;
        section.lag_interval_ms = 1_000;
        section.min_dedup_window = self.min_dedup_window;
        config
    }

    /// Runs an instance in this process.
    pub async fn spawn(&self, instance: &str) -> Running {
        let stopping = CancellationToken::new();
        let aggregator = Aggregator::build(self.config(instance), stopping.clone()).await.expect("aggregator builds");
        let addr = aggregator.local_addr();
        Running { stopping, task: tokio::spawn(aggregator.run_until_stopped()), addr }
    }

    /// Runs an instance as a child process, configured by a TOML file.
    pub fn spawn_process(&self, instance: &str) -> Child {
        let config = self.config(instance);
        let s = &config.aggregator;
        let toml = format!(
            r#"[kafka]
brokers = "{brokers}"
[clickhouse]
url = "{url}"
database = "{database}"
cluster = "{cluster}"
shards = [{shards}]
[topics]
usage_events = "{usage}"
dead_letter = "{dlq}"
partitions = {partitions}
[metrics.api_calls]
kind = "counter"
unit = "calls"
[metrics.compute_seconds]
kind = "counter"
unit = "seconds"
[metrics.storage_bytes]
kind = "gauge"
unit = "bytes"
[metrics.active_users]
kind = "gauge"
unit = "users"
[metrics.distinct_users]
kind = "unique"
unit = "users"
distinct_by = "user_id"
[aggregator]
listen = "127.0.0.1:0"
group_id = "{group}"
instance_id = "{instance}"
session_timeout_ms = {session}
linger_ms = {linger}
max_batch_events = {max_batch}
retry_initial_ms = {retry_initial}
retry_max_ms = {retry_max}
min_dedup_window = {min_dedup_window}
[telemetry]
filter = "warn"
format = "text"
"#,
            brokers = self.kafka.brokers,
            url = self.ch.config.url,
            database = self.ch.config.database,
            cluster = self.ch.config.cluster,
            shards =
                self.ch.config.shards.0.iter().map(|r| format!("\"{}\"", r.join(","))).collect::<Vec<_>>().join(", "),
            usage = self.topics.usage_events,
            dlq = self.topics.dead_letter,
            partitions = self.topics.partitions,
            group = s.group_id,
            session = s.session_timeout_ms,
            linger = s.linger_ms,
            max_batch = s.max_batch_events,
            retry_initial = s.retry_initial_ms,
            retry_max = s.retry_max_ms,
            min_dedup_window = s.min_dedup_window,
        );
        let path = std::env::temp_dir().join(format!("{}-{instance}.toml", self.group));
        std::fs::write(&path, toml).expect("writing the aggregator's config");
        let mut command = Command::new(env!("CARGO_BIN_EXE_tally-aggregator"));
        // The file alone configures the child: the stack's TALLY_* variables would override it.
        for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("TALLY_")) {
            command.env_remove(name);
        }
        command
            .arg("--config")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting tally-aggregator")
    }

    pub fn publisher(&self) -> Publisher {
        Publisher::new(&self.kafka, &ProducerConfig::default()).expect("producer")
    }

    pub async fn send(&self, publisher: &Publisher, sends: &[Send]) {
        send_all(publisher, &self.topics.usage_events, sends).await;
    }

    /// The first `count` messages of partition 0 of the usage topic, as the consumer loop owns them.
    pub async fn messages(&self, count: usize) -> Vec<tally_aggregator::batch::Message> {
        tally_testkit::read_topic(&self.kafka, &self.topics.usage_events, count, Duration::from_secs(20))
            .await
            .into_iter()
            .enumerate()
            .map(|(offset, m)| tally_aggregator::batch::Message {
                offset: offset as u64,
                key: m.key.map(String::into_bytes),
                payload: Some(m.payload),
                accepted_at: None,
            })
            .collect()
    }

    /// A plan over offsets `0..=last` of partition 0, decided now by `planned_by`.
    pub fn plan(&self, last: u64, planned_by: &str) -> tally_aggregator::batch::Plan {
        tally_aggregator::batch::Plan {
            topic: self.topics.usage_events.clone(),
            kafka_partition: 0,
            first_offset: 0,
            last_offset: last,
            decided_at: chrono::Utc::now().timestamp_millis(),
            planned_by: planned_by.to_owned(),
        }
    }

    pub async fn counted(&self) -> u64 {
        self.ch.client.query("SELECT count() FROM usage_events").fetch_one().await.expect("count")
    }

    /// Waits until `expected` events are stored (or `wait` passes) and returns the count.
    pub async fn wait_counted(&self, expected: u64, wait: Duration) -> u64 {
        let started = Instant::now();
        loop {
            let counted = self.counted().await;
            if counted >= expected || started.elapsed() > wait {
                return counted;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Every window as the analysts' view reports it.
    pub async fn windows(&self) -> BTreeMap<WindowKey, Window> {
        let rows: Vec<WindowRow> = self
            .ch
            .client
            .query(
                "SELECT granularity, toUInt32(window_start) AS window_start, tenant_id, metric, events, total, \
                 max_value, (toUnixTimestamp64Nano(latest_at), '', latest_value) AS latest, distinct_count \
                 FROM usage_windows",
            )
            .fetch_all()
            .await
            .expect("windows");
        rows.into_iter()
            .map(|row| {
                let key = (row.granularity, row.window_start, row.tenant_id, row.metric);
                let window = Window {
                    events: row.events,
                    total: row.total,
                    max_value: row.max_value,
                    latest: row.latest,
                    distinct: (0..row.distinct_count).map(|n| n.to_string()).collect(),
                };
                (key, window)
            })
            .collect()
    }

    /// For a failed count: which distinct events are not stored, and whether the broker still
    /// holds them (an event the broker lost after acknowledging it cannot be counted by anyone).
    pub async fn explain_missing(&self, distinct: &[&tally_schemas::UsageEvent]) -> String {
        #[derive(Debug, Row, Deserialize)]
        struct Stored {
            tenant_id: String,
            event_id: String,
        }
        let stored: Vec<Stored> =
            self.ch.client.query("SELECT tenant_id, event_id FROM usage_events").fetch_all().await.expect("ids");
        let stored: std::collections::HashSet<(String, String)> =
            stored.into_iter().map(|s| (s.tenant_id, s.event_id)).collect();
        let size = usize::try_from(tally_testkit::topic_size(&self.kafka, &self.topics.usage_events).await).unwrap();
        let topic =
            tally_testkit::read_topic(&self.kafka, &self.topics.usage_events, size, Duration::from_secs(30)).await;
        let mut report = Vec::new();
        for event in distinct {
            if stored.contains(&(event.tenant_id.to_string(), event.id.to_string())) {
                continue;
            }
            let needle = format!("\"id\":\"{}\"", event.id);
            let copies = topic.iter().filter(|m| String::from_utf8_lossy(&m.payload).contains(&needle)).count();
            report.push(format!("not stored: {}/{} ({copies} copies on the topic)", event.tenant_id, event.id));
        }
        report.join("\n")
    }

    /// On a cluster: for each shard, the Kafka partitions whose rows it holds in `table` (a
    /// shard-local table; a Merge table's partition is read off the name of the table holding
    /// the row).
    pub async fn partitions_by_shard(&self, table: &str) -> Vec<Vec<u32>> {
        let partition =
            if table.ends_with("_local") { "toUInt32(extract(_table, '_p([0-9]+)$'))" } else { "kafka_partition" };
        let mut by_shard = Vec::new();
        for node in tally_kit::topology::nodes(&self.ch.config) {
            let config = tally_kit::config::ClickHouseConfig { url: node.url, ..self.ch.config.clone() };
            let partitions: Vec<u32> = tally_kit::clickhouse::client(&config)
                .query(&format!("SELECT DISTINCT {partition} AS p FROM {table} ORDER BY p"))
                .fetch_all()
                .await
                .expect("a shard's partitions");
            by_shard.push(partitions);
        }
        by_shard
    }

    pub async fn drop(self) {
        self.ch.drop_database().await;
    }
}

/// Sends every message and waits for the broker's acknowledgements; a send the broker did not
/// acknowledge is sent again, as a client would (the same event id).
pub async fn send_all(publisher: &Publisher, topic: &str, sends: &[Send]) {
    for send in sends {
        loop {
            let pending = match send {
                Send::Event(event) => {
                    let acks = publisher.acks();
                    publisher.enqueue_usage(&acks, topic, event, chrono::Utc::now()).map(|()| acks)
                }
                Send::Invalid(key, payload) => {
                    let acks = publisher.acks();
                    publisher
                        .enqueue(&acks, Record { topic, key: key.as_bytes(), payload, headers: &[] })
                        .map(|()| acks)
                }
            };
            match pending {
                Ok(acks) => match acks.settled().await.into_result() {
                    Ok(()) => break,
                    Err(error) => eprintln!("send not acknowledged: {error}"),
                },
                Err(error) => eprintln!("send refused: {error}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[derive(Debug, Row, Deserialize)]
struct WindowRow {
    granularity: String,
    window_start: u32,
    tenant_id: String,
    metric: String,
    events: u64,
    total: i128,
    max_value: i128,
    latest: (i64, String, i128),
    distinct_count: u64,
}

/// Compares what ClickHouse holds with the oracle: the ids of latest events are not kept in the
/// view, and unique metrics compare by count. Returns the differences, empty when exact.
pub fn differences(actual: &BTreeMap<WindowKey, Window>, expected: &BTreeMap<WindowKey, Window>) -> Vec<String> {
    let mut differences = Vec::new();
    for (key, want) in expected {
        let Some(got) = actual.get(key) else {
            differences.push(format!("missing window {key:?}"));
            continue;
        };
        let want_shape = (want.events, want.total, want.max_value, want.latest.0, want.latest.2, want.distinct.len());
        let got_shape = (got.events, got.total, got.max_value, got.latest.0, got.latest.2, got.distinct.len());
        if want_shape != got_shape {
            differences.push(format!("{key:?}: expected {want_shape:?}, stored {got_shape:?}"));
        }
    }
    for key in actual.keys().filter(|key| !expected.contains_key(*key)) {
        differences.push(format!("unexpected window {key:?}"));
    }
    differences
}

pub struct Running {
    pub stopping: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
    pub addr: std::net::SocketAddr,
}

impl Running {
    pub async fn stop(self) {
        self.stopping.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("aggregator stops within 30 s")
            .expect("task")
            .expect("aggregator ran cleanly");
    }
}
