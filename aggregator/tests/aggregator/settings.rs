//! What exactly-once rests on, pinned and verified: deduplication whatever the user's profile
//! says, the tables' dedup windows at startup, and lateness judged once, at ingest's acceptance.

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use tally_aggregator::Aggregator;
use tally_aggregator::batch;
use tally_aggregator::fence::Written;
use tally_aggregator::store::Store;
use tally_kit::producer::Record;
use tally_schemas::{UsageEvent, ValidationContext};
use tally_testkit::{kafka_config, read_topic};
use tokio_util::sync::CancellationToken;

use crate::helpers::Harness;
use crate::oracle;

#[tokio::test]
async fn a_profile_with_insert_deduplicate_off_changes_nothing() {
    let harness = Harness::new(kafka_config(), 1).await;
    let sends = oracle::stream(5, 300, 4, Utc::now());
    harness.send(&harness.publisher(), &sends).await;
    let messages = harness.messages(300).await;
    // As if the server's default profile turned deduplication off and inserts asynchronous.
    let client = harness.ch.client.clone().with_setting("insert_deduplicate", "0").with_setting("async_insert", "1");
    let store = Store::new(client);
    let plan = harness.plan(299, "profile");
    let catalogue = oracle::catalogue();
    let decoded = batch::decode(&plan, &messages, &catalogue);
    let claims = batch::claims(&plan, &decoded.events);
    store.ensure_partition_tables(0).await.unwrap();
    let mut rows = batch::Rows::default();
    // Three attempts at the same batch, none of them checkpointed until the last.
    for _ in 0..3 {
        store.settle_plan(&plan).await.unwrap();
        let counted_before = store.claim(&plan, &claims).await.unwrap().lost;
        assert!(counted_before.is_empty(), "a batch's own earlier claims never count against it");
        rows = batch::assemble(&plan, decoded.events.clone(), &counted_before, &catalogue);
        assert_eq!(store.store_rows(&plan, &rows).await.unwrap(), Written::Stored);
    }
    store.checkpoint(&plan).await.unwrap();
    store.checkpoint(&plan).await.unwrap();
    let count = |table: &'static str| {
        let client = harness.ch.client.clone();
        async move { client.query(&format!("SELECT count() FROM {table}")).fetch_one::<u64>().await.unwrap() }
    };
    assert_eq!(count("usage_event_ids").await, claims.len() as u64, "a replay stored nothing twice");
    assert_eq!(count("usage_events").await, rows.events.len() as u64);
    assert_eq!(count("usage_rollups").await, rows.rollups.len() as u64);
    assert_eq!(count("aggregator_checkpoints").await, 1);
    assert_eq!(count("aggregator_batches").await, 1);
    harness.drop().await;
}

#[tokio::test]
async fn startup_refuses_a_table_without_its_dedup_window() {
    let harness = Harness::new(kafka_config(), 1).await;
    let config = harness.config("strict");
    tally_kit::clickhouse::apply_migrations(&config.clickhouse).await.unwrap();
    harness
        .ch
        .client
        .query("ALTER TABLE usage_rollups_base MODIFY SETTING non_replicated_deduplication_window = 10")
        .execute()
        .await
        .unwrap();
    let refused = Aggregator::build(config, CancellationToken::new()).await;
    let Err(error) = refused else { panic!("startup refuses the table") };
    let message = format!("{error:#}");
    assert!(
        message.contains("usage_rollups_base") && message.contains("non_replicated_deduplication_window = 10"),
        "the message names the table and its setting: {message}"
    );
    let mut lenient = harness.config("lenient");
    lenient.aggregator.min_dedup_window = 10;
    let running = Aggregator::build(lenient, CancellationToken::new()).await;
    assert!(running.is_ok(), "a window at the configured minimum is accepted");
    harness.drop().await;
}

fn event_json(id: &str, age: TimeDelta) -> String {
    let at = (Utc::now() - age).to_rfc3339();
    format!(r#"{{"id":"{id}","tenant_id":"acme","metric":"api_calls","value":"1","timestamp":"{at}","source":"test"}}"#)
}

#[tokio::test]
async fn an_event_ingest_accepted_within_the_window_is_counted_however_long_it_waited() {
    let harness = Harness::new(kafka_config(), 1).await;
    let publisher = harness.publisher();
    let topic = harness.topics.usage_events.clone();
    let catalogue = oracle::catalogue();
    // Accepted an hour ago at 34 d 23 h 10 min old; 35 d 10 min old by the time it is consumed.
    let accepted_at = Utc::now() - TimeDelta::hours(1);
    let age = TimeDelta::days(35) + TimeDelta::minutes(10);
    let text = event_json("waited", age);
    let event = UsageEvent::from_json_str(&text, &ValidationContext::new(&catalogue, accepted_at)).unwrap();
    let acks = publisher.acks();
    publisher.enqueue_usage(&acks, &topic, &event, accepted_at).unwrap();
    // The same age from a producer that is not ingest (no acceptance header): today's rule.
    let foreign = event_json("foreign", age);
    publisher
        .enqueue(&acks, Record { topic: &topic, key: b"acme", payload: foreign.as_bytes(), headers: &[] })
        .unwrap();
    // A forged acceptance far in the past is not believed.
    let forged = event_json("forged", age);
    let ancient = (Utc::now() - TimeDelta::days(30)).timestamp_millis().to_string();
    let headers: [(&str, &[u8]); 1] = [(tally_schemas::topics::HEADER_ACCEPTED_AT, ancient.as_bytes())];
    publisher
        .enqueue(&acks, Record { topic: &topic, key: b"acme", payload: forged.as_bytes(), headers: &headers })
        .unwrap();
    acks.settled().await.into_result().unwrap();

    let running = harness.spawn("judge").await;
    assert_eq!(harness.wait_counted(1, Duration::from_secs(30)).await, 1);
    let dead = read_topic(&harness.kafka, &harness.topics.dead_letter, 2, Duration::from_secs(20)).await;
    let reasons: Vec<&str> = dead.iter().map(|m| m.headers["tally-dlq-reason"].as_str()).collect();
    assert_eq!(reasons, vec!["too_old", "too_old"], "the foreign and the forged ones are judged at decision time");
    let counted: String =
        harness.ch.client.query("SELECT any(event_id) FROM usage_event_ids").fetch_one().await.unwrap();
    assert_eq!(counted, "waited");
    running.stop().await;
    harness.drop().await;
}
