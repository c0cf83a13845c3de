//! Production failures that are not crashes: an instance paused (SIGSTOP) in the middle of its
//! work while a replacement takes over and moves on, then resumed (SIGCONT); a topic whose
//! partition count grows; a producer that partitions keys as Java clients do (murmur2).

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use chrono::Utc;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
use rdkafka::client::DefaultClientContext;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tally_kit::config::ProducerConfig;
use tally_schemas::topics::HEADER_ACCEPTED_AT;
use tally_testkit::kafka_config;

use crate::helpers::{Harness, differences, send_all};
use crate::oracle::{self, Send};

fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill").arg(signal).arg(child.id().to_string()).status().expect("kill");
    assert!(status.success(), "kill {signal}");
}

/// Batches checkpointed so far, per Kafka partition.
async fn checkpoints(harness: &Harness) -> Vec<(u32, u64)> {
    harness
        .ch
        .client
        .query("SELECT kafka_partition, count() FROM aggregator_checkpoints GROUP BY kafka_partition ORDER BY 1")
        .fetch_all()
        .await
        .unwrap()
}

/// Waits until every partition checkpointed `more` batches beyond `since`.
async fn wait_batches(harness: &Harness, since: &[(u32, u64)], more: u64, wait: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < wait {
        let now = checkpoints(harness).await;
        let moved = since
            .iter()
            .all(|(partition, before)| now.iter().any(|(p, after)| p == partition && *after >= before + more));
        if moved && now.len() >= since.len() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

async fn assert_exact(harness: &Harness, sends: &[Send], seed: u64) {
    let distinct = oracle::distinct_events(sends);
    let counted = harness.wait_counted(distinct.len() as u64, Duration::from_secs(90)).await;
    // Let any further (wrong) batch land before comparing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(counted, distinct.len() as u64, "seed {seed}: {}", harness.explain_missing(&distinct).await);
    assert_eq!(harness.counted().await, distinct.len() as u64, "seed {seed}: nothing counted twice");
    let differences = differences(&harness.windows().await, &oracle::expected_windows(distinct.iter().copied()));
    assert!(differences.is_empty(), "seed {seed}: rollups differ:\n{}", differences.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_paused_while_its_replacement_moves_on_changes_no_total() {
    let seed = Utc::now().timestamp_subsec_nanos() as u64 | 1;
    eprintln!("pause seed {seed}");
    let mut harness = Harness::new(kafka_config(), 2).await;
    // Windows of 4 blocks: each replacement below writes far more than that while the paused
    // instance is stopped, so no token of the paused instance's batch is remembered.
    tally_kit::clickhouse::apply_migrations(&harness.ch.config).await.unwrap();
    for table in ["usage_events_base", "usage_rollups_base"] {
        let sql = format!("ALTER TABLE {table} MODIFY SETTING non_replicated_deduplication_window = 4");
        harness.ch.client.query(&sql).execute().await.unwrap();
    }
    harness.min_dedup_window = 4;
    let sends = oracle::stream(seed, 9_000, 30, Utc::now());
    // Traffic throughout, so each pause lands in the middle of storing.
    let feeder = {
        let (publisher, topic, sends) = (harness.publisher(), harness.topics.usage_events.clone(), sends.clone());
        tokio::spawn(async move {
            for chunk in sends.chunks(150) {
                send_all(&publisher, &topic, chunk).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let mut rng = oracle::Rng::new(seed);
    // A replacement takes the paused instance's static member id, as a restarted pod does.
    let mut writer = harness.spawn_process("paused");
    let mut paused = Vec::new();
    for round in 0..3 {
        let at = checkpoints(&harness).await;
        assert!(wait_batches(&harness, &at, 1, Duration::from_secs(30)).await, "round {round}: the writer stores");
        tokio::time::sleep(Duration::from_millis(rng.below(400))).await;
        signal(&writer, "-STOP");
        let stopped_at = checkpoints(&harness).await;
        let replacement = harness.spawn_process("paused");
        let moved = wait_batches(&harness, &stopped_at, 6, Duration::from_secs(60)).await;
        eprintln!("round {round}: paused at {stopped_at:?}; replacement moved on: {moved}");
        assert!(moved, "round {round}: the replacement wrote more blocks than the window per partition");
        signal(&writer, "-CONT");
        // The resumed instance finishes whatever it was doing: every stale write must be refused.
        tokio::time::sleep(Duration::from_secs(3)).await;
        paused.push(std::mem::replace(&mut writer, replacement));
    }
    feeder.await.unwrap();
    assert_exact(&harness, &sends, seed).await;
    for mut child in paused.into_iter().chain([writer]) {
        child.kill().unwrap();
        child.wait().unwrap();
    }
    harness.drop().await;
}

/// A Java-compatible producer: keys hashed with murmur2, as Kafka's default partitioner does.
fn murmur2_producer(harness: &Harness) -> FutureProducer {
    tally_kit::producer::producer_config(&harness.kafka, &ProducerConfig::default())
        .set("partitioner", "murmur2_random")
        .create()
        .unwrap()
}

async fn send_murmur2(producer: &FutureProducer, topic: &str, sends: &[Send]) {
    for send in sends {
        let Send::Event(event) = send else { continue };
        let payload = event.to_json();
        let accepted_at = Utc::now().timestamp_millis().to_string();
        let headers = OwnedHeaders::new().insert(Header { key: HEADER_ACCEPTED_AT, value: Some(&accepted_at) });
        let record = FutureRecord::to(topic).key(event.tenant_id.as_str()).payload(&payload).headers(headers);
        producer.send(record, Duration::from_secs(10)).await.map_err(|(error, _)| error).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_count_change_and_a_murmur2_producer_count_each_event_once() {
    partition_layouts(None).await;
}

/// The same on two shards: partitions 0-4 are homed on alternate shards, so a tenant's events
/// (and the same event sent through both partitioners at once) reach both shards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_two_shards_a_partition_count_change_and_a_murmur2_producer_count_each_event_once() {
    partition_layouts(Some(2)).await;
}

async fn partition_layouts(shards: Option<usize>) {
    let seed = Utc::now().timestamp_subsec_nanos() as u64 | 1;
    eprintln!("layout seed {seed} on {shards:?} shards");
    let mut harness = Harness::on_shards(kafka_config(), 2, shards).await;
    // The running instance notices the partition-count change at librdkafka's next metadata
    // refresh (every 5 minutes by default) and the group rebalances.
    harness.kafka.properties.insert("topic.metadata.refresh.interval.ms".to_owned(), "1000".to_owned());
    let sends = oracle::stream(seed, 3_000, 40, Utc::now());
    let (first, second) = sends.split_at(1_500);
    let running = harness.spawn("layout").await;
    send_all(&harness.publisher(), &harness.topics.usage_events, first).await;
    harness.wait_counted(oracle::distinct_events(first).len() as u64, Duration::from_secs(30)).await;

    // The topic grows from 2 to 5 partitions: a tenant's key now maps elsewhere.
    let admin: AdminClient<DefaultClientContext> = tally_kit::kafka::client_config(&harness.kafka).create().unwrap();
    let grown = admin
        .create_partitions(&[NewPartitions::new(&harness.topics.usage_events, 5)], &AdminOptions::new())
        .await
        .unwrap();
    assert!(grown.iter().all(Result::is_ok), "{grown:?}");
    // Clients retry everything they sent (landing on the new layout), and the rest goes out
    // twice at once: through librdkafka's partitioner and through a murmur2 one.
    let producer = murmur2_producer(&harness);
    let publisher = harness.publisher();
    let topic = harness.topics.usage_events.clone();
    tokio::join!(
        async {
            send_all(&publisher, &topic, first).await;
            send_all(&publisher, &topic, second).await;
        },
        send_murmur2(&producer, &topic, second),
    );
    assert_exact(&harness, &sends, seed).await;
    let (ids, shard) = if shards.is_some() { ("usage_event_ids_all", "_shard_num") } else { ("usage_event_ids", "1") };
    let (spread, across_shards): (u64, u64) = harness
        .ch
        .client
        .query(&format!(
            "SELECT count(), countIf(shards > 1) FROM (SELECT tenant_id, event_id, uniqExact({shard}) AS shards \
             FROM {ids} GROUP BY tenant_id, event_id HAVING uniqExact(kafka_partition) > 1)"
        ))
        .fetch_one()
        .await
        .unwrap();
    assert!(spread > 100, "events arrived on more than one partition: {spread}");
    if shards.is_some() {
        assert!(across_shards > 50, "events arrived on more than one shard: {across_shards}");
    }
    eprintln!("{spread} events on several partitions, {across_shards} of them on several shards");
    running.stop().await;
    harness.drop().await;
}
