//! Stale writers and racing partitions: a writer that lost its partition (paused, cut off) cannot
//! store a batch twice however many blocks went in meanwhile, and a (tenant, id) that two
//! partitions carry at once is counted by exactly one batch.

use std::collections::HashSet;

use bytes::Bytes;
use chrono::Utc;
use tally_aggregator::batch::{self, Plan, Rows};
use tally_aggregator::fence::{self, Written};
use tally_aggregator::rowbinary::encode_all;
use tally_aggregator::store::Store;
use tally_kit::rollups::RollupRow;
use tally_schemas::{EventId, MetricName, Quantity, TenantId, UsageEvent};
use tally_testkit::kafka_config;

use crate::helpers::Harness;
use crate::oracle;

async fn count(harness: &Harness, table: &str) -> u64 {
    harness.ch.client.query(&format!("SELECT count() FROM {table}")).fetch_one().await.unwrap()
}

async fn shrink_windows(harness: &Harness, partition: u32, window: u32) {
    for table in ["usage_events", "usage_rollups"] {
        let sql =
            format!("ALTER TABLE {table}_p{partition} MODIFY SETTING non_replicated_deduplication_window = {window}");
        harness.ch.client.query(&sql).execute().await.unwrap();
    }
}

/// Plans, claims, stores and checkpoints one batch as a writer would; returns its rows.
async fn store_batch(store: &Store, plan: &Plan, messages: &[batch::Message]) -> Rows {
    let catalogue = oracle::catalogue();
    assert_eq!(&store.settle_plan(plan).await.unwrap(), plan);
    let decoded = batch::decode(plan, messages, &catalogue);
    let counted_before = store.claim(plan, &batch::claims(plan, &decoded.events)).await.unwrap().lost;
    let rows = batch::assemble(plan, decoded.events, &counted_before, &catalogue);
    assert_eq!(store.store_rows(plan, &rows).await.unwrap(), Written::Stored);
    store.checkpoint(plan).await.unwrap();
    rows
}

#[tokio::test]
async fn a_stale_insert_is_refused_after_its_tokens_are_forgotten() {
    let harness = Harness::new(kafka_config(), 1).await;
    harness.send(&harness.publisher(), &oracle::stream(31, 300, 5, Utc::now())).await;
    let messages = harness.messages(300).await;
    let store = Store::new(harness.ch.client.clone());
    store.ensure_partition_tables(0).await.unwrap();
    shrink_windows(&harness, 0, 1).await;
    let first = harness.plan(149, "stale");
    let second = Plan { first_offset: 150, last_offset: 299, ..first.clone() };
    let first_rows = store_batch(&store, &first, &messages).await;
    let second_rows = store_batch(&store, &second, &messages).await;
    let stored = (count(&harness, "usage_events").await, count(&harness, "usage_rollups").await);
    assert_eq!(stored.0, (first_rows.events.len() + second_rows.events.len()) as u64);
    // What the fenced statement stored is what was encoded, field for field.
    let back: Vec<batch::EventRow> = harness
        .ch
        .client
        .query("SELECT ?fields FROM usage_events_p0 WHERE kafka_offset <= 149 ORDER BY kafka_offset")
        .fetch_all()
        .await
        .unwrap();
    let mut sent = first_rows.events.clone();
    sent.sort_by_key(|row| row.kafka_offset);
    assert_eq!(back, sent);

    // The premise: with a window of one block, the tokens alone no longer stop a repeat.
    harness.ch.client.query("CREATE TABLE scratch AS usage_rollups_p0").execute().await.unwrap();
    for (plan, rows) in [(&first, &first_rows), (&second, &second_rows), (&first, &first_rows)] {
        let client = harness.ch.client.clone().with_setting("insert_deduplication_token", plan.token());
        let mut insert = client.insert::<RollupRow>("scratch").await.unwrap();
        for row in &rows.rollups {
            insert.write(row).await.unwrap();
        }
        insert.end().await.unwrap();
    }
    let scratch = count(&harness, "scratch").await;
    assert_eq!(scratch, (2 * first_rows.rollups.len() + second_rows.rollups.len()) as u64, "the token was forgotten");

    // The writer that stalled after planning the first batch resumes: the fence refuses it.
    assert_eq!(store.store_rows(&first, &first_rows).await.unwrap(), Written::Fenced);
    let after = (count(&harness, "usage_events").await, count(&harness, "usage_rollups").await);
    assert_eq!(after, stored, "nothing of the stale batch was stored again");
    harness.drop().await;
}

#[tokio::test]
async fn a_writer_paused_half_way_through_its_rows_is_judged_after_the_pause() {
    let harness = Harness::new(kafka_config(), 1).await;
    harness.send(&harness.publisher(), &oracle::stream(32, 400, 5, Utc::now())).await;
    let messages = harness.messages(400).await;
    let store = Store::new(harness.ch.client.clone());
    store.ensure_partition_tables(0).await.unwrap();
    let plan = harness.plan(399, "paused");
    let catalogue = oracle::catalogue();
    store.settle_plan(&plan).await.unwrap();
    let decoded = batch::decode(&plan, &messages, &catalogue);
    let counted_before = store.claim(&plan, &batch::claims(&plan, &decoded.events)).await.unwrap().lost;
    let rows = batch::assemble(&plan, decoded.events, &counted_before, &catalogue);

    // Half the rows go out; then the writer "stalls" while another instance stores the batch.
    let body = encode_all(&rows.events);
    let mut insert = fence::begin::<batch::EventRow>(&harness.ch.client, "usage_events_p0", &plan, body.len());
    let half = body.len() / 2;
    insert.send(Bytes::copy_from_slice(&body[..half])).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let other = Store::new(harness.ch.client.clone());
    assert_eq!(other.store_rows(&plan, &rows).await.unwrap(), Written::Stored);
    other.checkpoint(&plan).await.unwrap();
    // Resumed: the rest of the rows, then the answer.
    insert.send(Bytes::copy_from_slice(&body[half..])).await.unwrap();
    assert_eq!(fence::outcome(insert.end().await).unwrap(), Written::Fenced);
    assert_eq!(count(&harness, "usage_events").await, rows.events.len() as u64);
    harness.drop().await;
}

fn event(tenant: &str, id: &str) -> UsageEvent {
    UsageEvent {
        id: EventId::parse(id).unwrap(),
        tenant_id: TenantId::parse(tenant).unwrap(),
        metric: MetricName::parse("api_calls").unwrap(),
        value: Quantity::from_int(1),
        timestamp: Utc::now(),
        source: "test".to_owned(),
        attributes: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_on_two_partitions_at_once_is_counted_by_exactly_one_batch() {
    let harness = Harness::new(kafka_config(), 2).await;
    let store = Store::new(harness.ch.client.clone());
    let plan = |partition: u32, round: u64| Plan {
        topic: harness.topics.usage_events.clone(),
        kafka_partition: partition,
        first_offset: round * 100,
        last_offset: round * 100 + 99,
        decided_at: Utc::now().timestamp_millis(),
        planned_by: "race".to_owned(),
    };
    for round in 0..10 {
        // The same 100 pairs in a batch of each partition (a producer with another partitioner,
        // or a partition-count change), claimed at the same moment.
        let events: Vec<(u64, UsageEvent)> =
            (0..100).map(|n| (round * 100 + n, event(&format!("t{}", n % 7), &format!("r{round}-{n}")))).collect();
        let (on_0, on_1) = (plan(0, round), plan(1, round));
        let (claims_0, claims_1) = (batch::claims(&on_0, &events), batch::claims(&on_1, &events));
        let (lost_0, lost_1) = tokio::join!(store.claim(&on_0, &claims_0), store.claim(&on_1, &claims_1));
        let (lost_0, lost_1) = (lost_0.unwrap().lost, lost_1.unwrap().lost);
        for (_, event) in &events {
            let pair = (event.tenant_id.to_string(), event.id.to_string());
            assert!(lost_0.contains(&pair) != lost_1.contains(&pair), "round {round}: {pair:?} has one winner");
        }
        // A replay of either batch, later, decides as its first attempt did.
        let again: (HashSet<_>, HashSet<_>) =
            (store.claim(&on_0, &claims_0).await.unwrap().lost, store.claim(&on_1, &claims_1).await.unwrap().lost);
        assert_eq!(again, (lost_0, lost_1), "round {round}: replays decide the same");
    }
    harness.drop().await;
}
