//! Exactly-once Kafka → ClickHouse vs bare consume and bare RowBinary insert, same broker, same
//! ClickHouse, same process.
//!
//! Needs the local stack (`deploy/local/up.sh`). Run:
//! `cargo bench -p tally-aggregator --bench aggregator_throughput [-- EVENTS ROUNDS BATCH]`
//! (defaults 200000 3 50000, the service's default batch). Each round fills a fresh 6-partition
//! topic with EVENTS distinct events over 1,000 tenants, then measures, in turn:
//! * bare consume: a consumer reading every message and copying key and payload (what the
//!   aggregator's consumer does before any processing);
//! * bare insert: the same events as `usage_events` rows, built beforehand, inserted through the
//!   `clickhouse` crate (RowBinary) in inserts of the aggregator's batch size;
//! * naive pipeline: consume, decode and insert the raw rows in batches, at least once (no plan,
//!   dedup, rollups or checkpoint): the floor any Kafka → ClickHouse pipeline pays on this machine;
//! * exactly-once: the aggregator, in this process, from a fresh consumer group until every
//!   event is counted in ClickHouse (plans, dedup lookup, raw + ids + rollup inserts, checkpoints).
//!
//! With `--cluster`, each round instead runs exactly-once twice from the same topic: into one
//! chdb node and into a 2-shard chdb cluster (`clickhouse.cluster`), reporting both rates, their
//! ratio and CPU per event (the shards share the two cores: a ratio, not a speed-up).
//!
//! Reports events/s, the ratio exactly-once / naive pipeline (goal: median ≥ 0.85), the ratio
//! exactly-once / min(consume, insert), CPU microseconds per event of this process, the broker
//! and ClickHouse in the naive and the exactly-once phases (on two shared cores the pipeline
//! competes with its own engines, so CPU per event is the figure to compare), and peak RSS.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use chrono::Utc;
use rdkafka::Message as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use tally_aggregator::batch::{self, Message, Plan};
use tally_aggregator::{Aggregator, AggregatorConfig};
use tally_kit::config::{KafkaConfig, ProducerConfig};
use tally_kit::producer::Publisher;
use tally_schemas::{EventId, MetricCatalogue, MetricName, Quantity, TenantId, Topics, UsageEvent};
use tally_testkit::bench::{CpuMeter, arg, peak_rss_mib, settle, spread};
use tally_testkit::cluster::TestCluster;
use tally_testkit::{TestClickHouse, kafka_config, unique_name};
use tokio_util::sync::CancellationToken;

const TENANTS: usize = 1_000;

// The same allocator as the `tally-aggregator` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn event(round: usize, i: usize, now: chrono::DateTime<Utc>) -> UsageEvent {
    let metric = ["api_calls", "compute_seconds", "storage_bytes"][i % 3];
    UsageEvent {
        id: EventId::parse(format!("r{round}-{i:08}-{:016x}", (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))).unwrap(),
        tenant_id: TenantId::parse(format!("tenant-{:04}", i % TENANTS)).unwrap(),
        metric: MetricName::parse(metric).unwrap(),
        value: Quantity::from_units(1_000_000_000 + i as i128),
        timestamp: now - chrono::TimeDelta::milliseconds((i % 60_000) as i64),
        source: "bench".to_owned(),
        attributes: [("region".to_owned(), "eu-west-1".to_owned())].into(),
    }
}

async fn fill(kafka: &KafkaConfig, topics: &Topics, events: &[UsageEvent]) {
    tally_kit::kafka::ensure_topics(kafka, topics).await.unwrap();
    let publisher = Publisher::new(kafka, &ProducerConfig::default()).unwrap();
    let acks = publisher.acks();
    for event in events {
        while publisher.enqueue_usage(&acks, &topics.usage_events, event, chrono::Utc::now()).is_err() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    assert!(acks.settled().await.is_complete(), "every event acknowledged");
}

/// A fresh 6-partition topic holding round `round`'s `events` distinct events.
async fn round_topic(kafka: &KafkaConfig, round: usize, events: usize) -> (Vec<UsageEvent>, Topics) {
    let now = Utc::now();
    let batch: Vec<UsageEvent> = (0..events).map(|i| event(round, i, now)).collect();
    let topics =
        Topics { usage_events: unique_name("bench-usage"), dead_letter: unique_name("bench-dlq"), ..Topics::default() };
    fill(kafka, &topics, &batch).await;
    (batch, topics)
}

/// Stops a phase's consumer for good without closing it: closing a group consumer blocks against
/// the local broker (see testkit's engine tests), and a consumer left fetching would spin against
/// it (it answers empty fetches at once) through the later phases, charging them its CPU.
fn retire(consumer: StreamConsumer) {
    if let Ok(assignment) = consumer.assignment() {
        let _ = consumer.pause(&assignment);
    }
    std::mem::forget(consumer);
}

async fn bare_consume(kafka: &KafkaConfig, topic: &str, expected: usize) -> f64 {
    let consumer: StreamConsumer = tally_kit::kafka::client_config(kafka)
        .set("group.id", unique_name("bench-bare"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    let started = Instant::now();
    consumer.subscribe(&[topic]).unwrap();
    let mut copied: Vec<Message> = Vec::with_capacity(expected);
    while copied.len() < expected {
        let message = consumer.recv().await.unwrap();
        copied.push(Message::of(&message, message.offset() as u64));
    }
    let rate = expected as f64 / started.elapsed().as_secs_f64();
    retire(consumer);
    rate
}

async fn bare_insert(ch: &TestClickHouse, events: &[UsageEvent], batch_size: usize) -> f64 {
    let catalogue = MetricCatalogue::default();
    let mut batches = Vec::new();
    for (n, chunk) in events.chunks(batch_size).enumerate() {
        let plan = Plan {
            topic: "bench".to_owned(),
            kafka_partition: 0,
            first_offset: (n * batch_size) as u64,
            last_offset: (n * batch_size + chunk.len() - 1) as u64,
            decided_at: Utc::now().timestamp_millis(),
            planned_by: "bench".to_owned(),
        };
        let decoded = batch::Decoded {
            events: chunk.iter().enumerate().map(|(i, e)| ((n * batch_size + i) as u64, e.clone())).collect(),
            ..batch::Decoded::default()
        };
        batches.push(batch::assemble(&plan, decoded.events, &Default::default(), &catalogue).events);
    }
    let started = Instant::now();
    for rows in &batches {
        let mut insert = ch.client.insert::<batch::EventRow>("usage_events_base").await.unwrap();
        for row in rows {
            insert.write(row).await.unwrap();
        }
        insert.end().await.unwrap();
    }
    events.len() as f64 / started.elapsed().as_secs_f64()
}

/// A naive at-least-once pipeline: consume, decode, insert the raw rows in batches (no plan, no
/// dedup, no rollups, no checkpoint). What exactly-once costs on top of merely moving the events.
async fn naive_pipeline(
    kafka: &KafkaConfig,
    topic: &str,
    ch: &TestClickHouse,
    expected: usize,
    batch_size: usize,
) -> (f64, Vec<(&'static str, f64)>) {
    let cpu = CpuMeter::start();
    let consumer: StreamConsumer = tally_kit::kafka::client_config(kafka)
        .set("group.id", unique_name("bench-naive"))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    let catalogue = std::sync::Arc::new(MetricCatalogue::default());
    let started = Instant::now();
    consumer.subscribe(&[topic]).unwrap();
    let mut inserts = Vec::new();
    let (mut buffered, mut received): (Vec<Message>, usize) = (Vec::with_capacity(batch_size), 0);
    while received < expected {
        let message = consumer.recv().await.unwrap();
        buffered.push(Message::of(&message, received as u64));
        received += 1;
        if buffered.len() == batch_size || received == expected {
            let (messages, client, catalogue) = (std::mem::take(&mut buffered), ch.client.clone(), catalogue.clone());
            inserts.push(tokio::spawn(async move {
                let plan = Plan {
                    topic: "naive".to_owned(),
                    kafka_partition: 0,
                    first_offset: messages[0].offset,
                    last_offset: messages[messages.len() - 1].offset,
                    decided_at: Utc::now().timestamp_millis(),
                    planned_by: "bench".to_owned(),
                };
                let decoded = batch::decode(&plan, &messages, &catalogue);
                let rows = batch::assemble(&plan, decoded.events, &Default::default(), &catalogue).events;
                let mut insert = client.insert::<batch::EventRow>("usage_events_base").await.unwrap();
                for row in &rows {
                    insert.write(row).await.unwrap();
                }
                insert.end().await.unwrap();
            }));
        }
    }
    for insert in inserts {
        insert.await.unwrap();
    }
    let rate = expected as f64 / started.elapsed().as_secs_f64();
    let cpu = cpu.per_event(expected);
    retire(consumer);
    (rate, cpu)
}

/// Events the aggregator reports counted (its `/metrics`): polling it costs ClickHouse nothing,
/// so the exactly-once side is not charged for the measurement.
async fn counted_by(http: &reqwest::Client, addr: std::net::SocketAddr) -> u64 {
    let Ok(response) = http.get(format!("http://{addr}/metrics")).send().await else { return 0 };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .find(|line| line.starts_with("tally_aggregator_events_counted_total "))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

async fn exactly_once(
    kafka: &KafkaConfig,
    topics: &Topics,
    ch: &TestClickHouse,
    expected: usize,
    batch_size: usize,
) -> (f64, Vec<(&'static str, f64)>) {
    let mut config = AggregatorConfig {
        kafka: kafka.clone(),
        clickhouse: ch.config.clone(),
        topics: topics.clone(),
        ..AggregatorConfig::default()
    };
    config.aggregator.listen = "127.0.0.1:0".parse().unwrap();
    config.aggregator.group_id = unique_name("bench-aggregator");
    config.aggregator.max_batch_events = batch_size;
    config.aggregator.max_buffered_events = 20 * batch_size;
    config.aggregator.linger_ms = 200;
    let stopping = CancellationToken::new();
    // The DDL on the fresh database is setup, not throughput; joining the group is counted, as
    // it is for bare consume.
    let aggregator = Aggregator::build(config, stopping.clone()).await.unwrap();
    let addr = aggregator.local_addr();
    let http = reqwest::Client::new();
    let cpu = CpuMeter::start();
    let started = Instant::now();
    let running = tokio::spawn(aggregator.run_until_stopped());
    while (counted_by(&http, addr).await as usize) < expected {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rate = expected as f64 / started.elapsed().as_secs_f64();
    let cpu = cpu.per_event(expected);
    stopping.cancel();
    running.await.unwrap().unwrap();
    let stored: u64 = ch.client.query("SELECT count() FROM usage_events").fetch_one().await.unwrap();
    assert_eq!(stored as usize, expected, "every event stored once");
    (rate, cpu)
}

fn cpu_line(cpu: &[(&'static str, f64)]) -> String {
    cpu.iter().map(|(name, us)| format!("{name} {us:.1}")).collect::<Vec<_>>().join(", ")
}

/// `--cluster`: exactly-once into a 2-shard cluster against exactly-once into one node, both
/// chdb servers started alike by testkit, from the same topic in each round.
async fn cluster_rounds(events: usize, rounds: usize, batch_size: usize) {
    let kafka = kafka_config();
    let (one_node, two_shards) = (TestCluster::start(1).await, TestCluster::start(2).await);
    let (mut single, mut sharded, mut single_cpu, mut sharded_cpu) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let (_, topics) = round_topic(&kafka, round, events).await;
        let db = TestClickHouse::create_at(&one_node.urls()[0]).await;
        settle().await;
        let (rate, cpu) = exactly_once(&kafka, &topics, &db, events, batch_size).await;
        single.push(rate);
        single_cpu.push(cpu);
        db.drop_database().await;
        let db = TestClickHouse::on_cluster(&two_shards).await;
        settle().await;
        let (rate, cpu) = exactly_once(&kafka, &topics, &db, events, batch_size).await;
        sharded.push(rate);
        sharded_cpu.push(cpu);
        db.drop_database().await;
        tally_testkit::delete_topics(&kafka, &[&topics.usage_events, &topics.dead_letter]).await;
        println!(
            "round {round}: one node {:>9.0} ev/s, two shards {:>9.0} ev/s",
            single[round - 1],
            sharded[round - 1]
        );
        println!("  CPU µs/event, one node:   {}", cpu_line(&single_cpu[round - 1]));
        println!("  CPU µs/event, two shards: {}", cpu_line(&sharded_cpu[round - 1]));
    }
    let ratios = spread((0..rounds).map(|r| sharded[r] / single[r]).collect());
    let (single, sharded) = (spread(single), spread(sharded));
    println!("events per round {events}, 6 partitions, batches of {batch_size}, {rounds} rounds (min / median / max)");
    println!("exactly-once, one node:   {:.0} / {:.0} / {:.0} events/s", single.0, single.1, single.2);
    println!("exactly-once, two shards: {:.0} / {:.0} / {:.0} events/s", sharded.0, sharded.1, sharded.2);
    println!(
        "ratio two shards / one node: {:.2} / {:.2} / {:.2} (two cores shared by both shards)",
        ratios.0, ratios.1, ratios.2
    );
    println!("CPU µs/event (median), one node:   {}", cpu_line(&median_cpu(&single_cpu)));
    println!("CPU µs/event (median), two shards: {}", cpu_line(&median_cpu(&sharded_cpu)));
}

fn median_cpu(rounds: &[Vec<(&'static str, f64)>]) -> Vec<(&'static str, f64)> {
    (0..rounds[0].len()).map(|i| (rounds[0][i].0, spread(rounds.iter().map(|r| r[i].1).collect()).1)).collect()
}

fn main() {
    let events = arg(0, 200_000);
    let rounds = arg(1, 3);
    let batch_size = arg(2, 50_000);
    if std::env::var_os("RUST_LOG").is_some() {
        let telemetry =
            tally_kit::config::TelemetryConfig { format: tally_kit::config::LogFormat::Text, ..Default::default() };
        tally_kit::telemetry::init(&telemetry);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    if std::env::args().any(|a| a == "--cluster") {
        runtime.block_on(cluster_rounds(events, rounds, batch_size));
        return;
    }
    runtime.block_on(async {
        let kafka = kafka_config();
        let (mut consume, mut insert, mut naive, mut eo) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut naive_cpu, mut eo_cpu) = (Vec::new(), Vec::new());
        for round in 1..=rounds {
            let (batch, topics) = round_topic(&kafka, round, events).await;
            // Every phase starts with the broker and ClickHouse idle (see `settle`).
            settle().await;
            consume.push(bare_consume(&kafka, &topics.usage_events, events).await);
            let bare_db = TestClickHouse::create().await;
            settle().await;
            insert.push(bare_insert(&bare_db, &batch, batch_size).await);
            bare_db.drop_database().await;
            let naive_db = TestClickHouse::create().await;
            settle().await;
            let (rate, cpu) = naive_pipeline(&kafka, &topics.usage_events, &naive_db, events, batch_size).await;
            naive.push(rate);
            naive_cpu.push(cpu);
            naive_db.drop_database().await;
            let db = TestClickHouse::create().await;
            settle().await;
            let (rate, cpu) = exactly_once(&kafka, &topics, &db, events, batch_size).await;
            eo.push(rate);
            eo_cpu.push(cpu);
            db.drop_database().await;
            tally_testkit::delete_topics(&kafka, &[&topics.usage_events, &topics.dead_letter]).await;
            println!(
                "round {round}: bare consume {:>9.0} ev/s, bare insert {:>9.0} ev/s, naive pipeline {:>9.0} ev/s, \
                 exactly-once {:>9.0} ev/s",
                consume[round - 1],
                insert[round - 1],
                naive[round - 1],
                eo[round - 1]
            );
            println!("  CPU µs/event, naive:        {}", cpu_line(&naive_cpu[round - 1]));
            println!("  CPU µs/event, exactly-once: {}", cpu_line(&eo_cpu[round - 1]));
        }
        let ratios: Vec<f64> = (0..rounds).map(|r| eo[r] / consume[r].min(insert[r])).collect();
        let naive_ratios: Vec<f64> = (0..rounds).map(|r| eo[r] / naive[r]).collect();
        let (consume, insert, eo, ratio) = (spread(consume), spread(insert), spread(eo), spread(ratios));
        let (naive, naive_ratio) = (spread(naive), spread(naive_ratios));
        println!(
            "events per round {events}, 6 partitions, batches of {batch_size}, {rounds} rounds (min / median / max)"
        );
        println!("bare consume:          {:.0} / {:.0} / {:.0} events/s", consume.0, consume.1, consume.2);
        println!("bare RowBinary insert: {:.0} / {:.0} / {:.0} events/s", insert.0, insert.1, insert.2);
        println!("naive pipeline:        {:.0} / {:.0} / {:.0} events/s", naive.0, naive.1, naive.2);
        println!("exactly-once:          {:.0} / {:.0} / {:.0} events/s", eo.0, eo.1, eo.2);
        println!("ratio exactly-once / slower baseline: {:.2} / {:.2} / {:.2}", ratio.0, ratio.1, ratio.2);
        println!(
            "ratio exactly-once / naive pipeline: {:.2} / {:.2} / {:.2} (goal: median >= 0.85)",
            naive_ratio.0, naive_ratio.1, naive_ratio.2
        );
        println!("CPU µs/event (median), naive pipeline: {}", cpu_line(&median_cpu(&naive_cpu)));
        println!("CPU µs/event (median), exactly-once:   {}", cpu_line(&median_cpu(&eo_cpu)));
        println!("peak RSS (bench process: aggregator + baselines + the events in memory): {:.0} MiB", peak_rss_mib());
    });
}
