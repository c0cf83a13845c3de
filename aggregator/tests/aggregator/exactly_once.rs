//! Counting once: duplicates, retries, late and invalid events, and the replay of a batch a
//! crash left half-written.

use std::time::Duration;

use chrono::Utc;
use tally_aggregator::batch;
use tally_aggregator::fence::Written;
use tally_aggregator::store::Store;
use tally_testkit::{kafka_config, read_topic};

use crate::helpers::{Harness, differences};
use crate::oracle::{self, Send};

#[tokio::test]
async fn every_distinct_event_is_counted_once_and_the_invalid_are_dead_lettered() {
    let harness = Harness::new(kafka_config(), 3).await;
    let sends = oracle::stream(7, 1_500, 12, Utc::now());
    let distinct = oracle::distinct_events(&sends);
    let running = harness.spawn("solo").await;
    let publisher = harness.publisher();
    harness.send(&publisher, &sends[..700]).await;
    // The rest, including resends of events of the first part, arrive in later batches.
    harness.send(&publisher, &sends[700..]).await;

    let counted = harness.wait_counted(distinct.len() as u64, Duration::from_secs(30)).await;
    assert_eq!(counted, distinct.len() as u64, "every distinct event stored once");
    let differences = differences(&harness.windows().await, &oracle::expected_windows(distinct.iter().copied()));
    assert!(differences.is_empty(), "rollups differ from what was sent:\n{}", differences.join("\n"));

    let invalid = oracle::invalid_count(&sends);
    let dead = read_topic(&harness.kafka, &harness.topics.dead_letter, invalid, Duration::from_secs(20)).await;
    assert_eq!(dead.len(), invalid);
    for message in &dead {
        let reason = &message.headers["tally-dlq-reason"];
        assert!(
            ["malformed", "too_old", "in_future", "key_mismatch"].contains(&reason.as_str()),
            "unexpected reason {reason}"
        );
        assert_eq!(message.headers["tally-dlq-stage"], "aggregator");
        assert!(message.headers["tally-dlq-source"].starts_with(&harness.topics.usage_events));
    }
    let metrics = reqwest_metrics(running.addr).await;
    assert!(metrics.contains("tally_aggregator_events_counted_total"), "{metrics}");
    running.stop().await;
    harness.drop().await;
}

/// A crash after the plan and one of the three inserts: the next instance replays the batch
/// with the same plan and tokens, and the totals come out exact.
#[tokio::test]
async fn a_half_written_batch_is_replayed_exactly() {
    let harness = Harness::new(kafka_config(), 1).await;
    let sends = oracle::stream(11, 400, 5, Utc::now());
    let distinct = oracle::distinct_events(&sends);
    harness.send(&harness.publisher(), &sends).await;

    // What a crashed instance left behind: a plan over offsets 0..=199, its claims and raw events
    // stored, its rollups and checkpoint not.
    let messages = harness.messages(200).await;
    let store = Store::new(harness.ch.client.clone());
    let plan = harness.plan(199, "crashed");
    assert_eq!(store.settle_plan(&plan).await.unwrap(), plan);
    let catalogue = oracle::catalogue();
    let decoded = batch::decode(&plan, &messages, &catalogue);
    store.ensure_partition_tables(0).await.unwrap();
    let counted_before = store.claim(&plan, &batch::claims(&plan, &decoded.events)).await.unwrap().lost;
    assert!(counted_before.is_empty());
    let rows = batch::assemble(&plan, decoded.events, &counted_before, &catalogue);
    let partial = batch::Rows { rollups: Vec::new(), ..rows };
    assert_eq!(store.store_rows(&plan, &partial).await.unwrap(), Written::Stored);
    assert!(harness.counted().await > 0);

    let running = harness.spawn("successor").await;
    let counted = harness.wait_counted(distinct.len() as u64, Duration::from_secs(30)).await;
    assert_eq!(counted, distinct.len() as u64);
    // Let any further (wrong) batch land before comparing.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(harness.counted().await, distinct.len() as u64);
    let differences = differences(&harness.windows().await, &oracle::expected_windows(distinct.iter().copied()));
    assert!(differences.is_empty(), "rollups differ after the replay:\n{}", differences.join("\n"));
    let plans: u64 = harness
        .ch
        .client
        .query("SELECT count() FROM aggregator_batches WHERE first_offset = 0")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(plans, 1, "the crashed instance's plan was kept, not replaced");
    running.stop().await;
    harness.drop().await;
}

#[tokio::test]
async fn current_usage_shows_gauges_and_period_counters() {
    let harness = Harness::new(kafka_config(), 2).await;
    let now = Utc::now();
    let event = |id: &str, metric: &str, value: i64, seconds_ago: i64| {
        Send::Event(tally_schemas::UsageEvent {
            id: tally_schemas::EventId::parse(id).unwrap(),
            tenant_id: tally_schemas::TenantId::parse("acme").unwrap(),
            metric: tally_schemas::MetricName::parse(metric).unwrap(),
            value: tally_schemas::Quantity::from_int(value),
            timestamp: now - chrono::TimeDelta::seconds(seconds_ago),
            source: "test".to_owned(),
            attributes: Default::default(),
        })
    };
    let sends = [
        event("s1", "storage_bytes", 700, 30),
        event("s2", "storage_bytes", 400, 10),
        event("s3", "storage_bytes", 900, 20),
        event("c1", "api_calls", 5, 5),
        event("c2", "api_calls", 6, 4),
        event("c2", "api_calls", 6, 4),
    ];
    let running = harness.spawn("usage").await;
    harness.send(&harness.publisher(), &sends).await;
    harness.wait_counted(5, Duration::from_secs(10)).await;
    let usage = tally_kit::rollups::current_usage(&harness.ch.client, Some("acme"), Utc::now()).await.unwrap();
    let storage = usage.iter().find(|u| u.metric == "storage_bytes").unwrap();
    assert_eq!(storage.latest_value, 400_000_000_000, "latest by event time");
    let calls = usage.iter().find(|u| u.metric == "api_calls").unwrap();
    assert_eq!((calls.period_total, calls.period_events), (11_000_000_000, 2));
    running.stop().await;
    harness.drop().await;
}

async fn reqwest_metrics(addr: std::net::SocketAddr) -> String {
    let response = reqwest::get(format!("http://{addr}/metrics")).await.expect("GET /metrics");
    assert!(response.status().is_success());
    response.text().await.expect("metrics body")
}
