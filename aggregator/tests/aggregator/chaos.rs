//! Chaos: SIGKILL the aggregator at random moments while a stream with duplicates, late and
//! invalid events flows, restart the broker once, and compare every rollup with the totals
//! computed from what was sent. Seeds are printed so a failure can be replayed.

use std::process::Child;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tally_testkit::TestBroker;
use tokio::sync::RwLock;

use crate::helpers::{Harness, differences, send_all};
use crate::oracle::{self, Rng};

fn kill(mut child: Child) {
    // Child::kill sends SIGKILL.
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
}

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// On a cluster: every Kafka partition's batches — rows, claims, plans, checkpoints — are on
/// one shard, and every shard holds some.
async fn assert_each_partition_on_one_shard(harness: &Harness) {
    if harness.cluster.is_none() {
        return;
    }
    let mut homes = None;
    for table in
        ["usage_events_local", "usage_rollups_local", "usage_event_ids", "aggregator_batches", "aggregator_checkpoints"]
    {
        let by_shard = harness.partitions_by_shard(table).await;
        let mut all: Vec<u32> = by_shard.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, vec![0, 1, 2, 3], "{table}: each partition on exactly one shard: {by_shard:?}");
        assert!(by_shard.iter().all(|partitions| !partitions.is_empty()), "{table}: every shard is used: {by_shard:?}");
        assert_eq!(homes.get_or_insert_with(|| by_shard.clone()), &by_shard, "{table}: the same shard as the rows");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_and_a_broker_restart_change_no_total() {
    sigkills_and_a_broker_restart(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_two_shards_sigkills_and_a_broker_restart_change_no_total() {
    sigkills_and_a_broker_restart(Some(2)).await;
}

async fn sigkills_and_a_broker_restart(shards: Option<usize>) {
    let seed = Utc::now().timestamp_subsec_nanos() as u64 | 1;
    eprintln!("chaos seed {seed} on {shards:?} shards");
    let mut broker = TestBroker::start().await;
    let harness = Harness::on_shards(broker.kafka_config(), 4, shards).await;
    let sends = oracle::stream(seed, 8_000, 40, Utc::now());
    let distinct = oracle::distinct_events(&sends);

    let publisher = harness.publisher();
    let topic = harness.topics.usage_events.clone();
    let stream = sends.clone();
    // The sender pauses while the broker restarts: the local broker loses messages it
    // acknowledged just before its shutdown, which no consumer could count.
    let quiet = Arc::new(RwLock::new(()));
    let sending = Arc::clone(&quiet);
    let sender = tokio::spawn(async move {
        for chunk in stream.chunks(250) {
            let _sending = sending.read().await;
            send_all(&publisher, &topic, chunk).await;
            drop(_sending);
            sleep_ms(150).await;
        }
    });

    let mut rng = Rng::new(seed);
    let kills = 22;
    for round in 0..kills {
        let child = harness.spawn_process("chaos-0");
        sleep_ms(400 + rng.below(1_600)).await;
        kill(child);
        eprintln!("round {round}: killed; {} stored so far", harness.counted().await);
        if round == kills / 2 {
            let _quiet = quiet.write().await;
            broker.stop().await;
            broker.restart().await;
        }
    }
    sender.await.expect("sender");
    eprintln!("all sent; starting the survivor");

    let survivor = harness.spawn_process("chaos-0");
    let counted = harness.wait_counted(distinct.len() as u64, Duration::from_secs(90)).await;
    sleep_ms(1_000).await;
    let counted_later = harness.counted().await;
    let windows = harness.windows().await;
    kill(survivor);
    if counted_later != distinct.len() as u64 {
        eprintln!("{}", harness.explain_missing(&distinct).await);
    }
    assert_eq!((counted, counted_later), (distinct.len() as u64, distinct.len() as u64), "seed {seed}");
    let differences = differences(&windows, &oracle::expected_windows(distinct.iter().copied()));
    assert!(differences.is_empty(), "seed {seed}: rollups differ:\n{}", differences.join("\n"));
    assert_each_partition_on_one_shard(&harness).await;
    harness.drop().await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_partitions_and_one_killed_leaves_exact_totals() {
    two_instances(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_two_shards_two_instances_and_one_killed_leave_exact_totals() {
    two_instances(Some(2)).await;
}

async fn two_instances(shards: Option<usize>) {
    let seed = Utc::now().timestamp_subsec_nanos() as u64 | 1;
    eprintln!("two-instance seed {seed} on {shards:?} shards");
    let harness = Harness::on_shards(tally_testkit::kafka_config(), 4, shards).await;
    let sends = oracle::stream(seed, 4_000, 30, Utc::now());
    let distinct = oracle::distinct_events(&sends);
    let first = harness.spawn_process("pair-1");
    let second = harness.spawn_process("pair-2");
    let publisher = harness.publisher();
    send_all(&publisher, &harness.topics.usage_events, &sends[..2_000]).await;
    sleep_ms(1_500).await;
    kill(first);
    send_all(&publisher, &harness.topics.usage_events, &sends[2_000..]).await;
    sleep_ms(2_000).await;
    let survivor_alone = harness.counted().await;

    // Its replacement (same static member id, as a restarted pod) takes its partitions back at
    // once. (The local broker never expires a killed static member; Kafka would hand its
    // partitions to the survivor after `session_timeout_ms`.)
    let replacement = harness.spawn_process("pair-1");
    let counted = harness.wait_counted(distinct.len() as u64, Duration::from_secs(60)).await;
    sleep_ms(1_000).await;
    let windows = harness.windows().await;
    kill(second);
    kill(replacement);
    assert!(survivor_alone > 0, "the survivor kept storing its own partitions");
    assert_eq!(counted, distinct.len() as u64, "seed {seed}");
    assert_eq!(harness.counted().await, distinct.len() as u64, "seed {seed}");
    let differences = differences(&windows, &oracle::expected_windows(distinct.iter().copied()));
    assert!(differences.is_empty(), "seed {seed}: rollups differ:\n{}", differences.join("\n"));
    assert_each_partition_on_one_shard(&harness).await;
    harness.drop().await;
}
