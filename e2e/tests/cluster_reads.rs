//! The same usage stream stored twice — by an aggregator on one ClickHouse server and by one on a
//! 2-shard cluster — reads the same through every reader: the enforcer's current usage (the
//! read model it refreshes from), billing-sync's totals per window and stream, and the query
//! service's answers, all through the cluster's Distributed tables.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use tally_aggregator::{Aggregator, AggregatorConfig};
use tally_billing_sync::BillingConfig;
use tally_kit::config::ProducerConfig;
use tally_kit::producer::Publisher;
use tally_schemas::{EventId, MetricName, Quantity, TenantId, Topics, UsageEvent};
use tally_testkit::cluster::TestCluster;
use tally_testkit::{TestClickHouse, TestPostgres, kafka_config, unique_name};
use tokio_util::sync::CancellationToken;

const EVENTS: u64 = 3_000;

/// Tenants t00..t19; counters this month and last, storage gauges, a few events sent twice.
fn events() -> Vec<UsageEvent> {
    let now = Utc::now();
    let metrics = ["api_calls", "compute_seconds", "storage_bytes"];
    (0..EVENTS)
        .map(|n| UsageEvent {
            id: EventId::parse(format!("e{n}")).unwrap(),
            tenant_id: TenantId::parse(format!("t{:02}", n % 20)).unwrap(),
            metric: MetricName::parse(metrics[(n % 3) as usize]).unwrap(),
            value: Quantity::from_units(i128::from(n * 7_919 % 1_000_003) * 1_000_000),
            timestamp: now - TimeDelta::minutes((n * 37 % (30 * 24 * 60)) as i64),
            source: "cluster-e2e".to_owned(),
            attributes: BTreeMap::new(),
        })
        .collect()
}

async fn aggregator(topics: &Topics, ch: &TestClickHouse, group: &str) -> CancellationToken {
    let mut config = AggregatorConfig {
        kafka: kafka_config(),
        clickhouse: ch.config.clone(),
        topics: topics.clone(),
        ..AggregatorConfig::default()
    };
    config.aggregator.listen = "127.0.0.1:0".parse().unwrap();
    config.aggregator.group_id = group.to_owned();
    config.aggregator.instance_id = unique_name("agg");
    config.aggregator.linger_ms = 100;
    let stopping = CancellationToken::new();
    let aggregator = Aggregator::build(config, stopping.clone()).await.unwrap();
    tokio::spawn(aggregator.run_until_stopped());
    stopping
}

async fn wait_counted(ch: &TestClickHouse, expected: u64) -> u64 {
    let started = Instant::now();
    loop {
        let counted: u64 = ch.client.query("SELECT count() FROM usage_events").fetch_one().await.unwrap();
        if counted >= expected || started.elapsed() > Duration::from_secs(90) {
            return counted;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// billing-sync's view of the last 35 days: every stream's windows and totals.
async fn billed(pg: &TestPostgres, ch: &TestClickHouse) -> Vec<String> {
    let settings = BillingConfig::default().billing;
    let now = Utc::now().timestamp();
    let (streams, _) =
        tally_billing_sync::sync::load(&pg.pool, &ch.client, &settings, (now - 35 * 86_400, now)).await.unwrap();
    let mut shown: Vec<String> = streams.iter().map(|s| format!("{:?} {:?}", s.key, s.windows)).collect();
    shown.sort();
    shown
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_see_the_same_totals_on_two_shards_as_on_one_server() {
    let topics = Topics {
        usage_events: unique_name("cluster-usage"),
        dead_letter: unique_name("cluster-dlq"),
        partitions: 4,
        ..Topics::default()
    };
    tally_kit::kafka::ensure_topics(&kafka_config(), &topics).await.unwrap();
    let cluster = TestCluster::start(2).await;
    let (single, sharded) = (TestClickHouse::create().await, TestClickHouse::on_cluster(&cluster).await);
    let stops = [
        aggregator(&topics, &single, &unique_name("single")).await,
        aggregator(&topics, &sharded, &unique_name("sharded")).await,
    ];

    let publisher = Publisher::new(&kafka_config(), &ProducerConfig::default()).unwrap();
    let events = events();
    let acks = publisher.acks();
    for event in events.iter().chain(events.iter().step_by(10)) {
        publisher.enqueue_usage(&acks, &topics.usage_events, event, Utc::now()).unwrap();
    }
    acks.settled().await.into_result().unwrap();
    assert_eq!((wait_counted(&single, EVENTS).await, wait_counted(&sharded, EVENTS).await), (EVENTS, EVENTS));

    // Both shards hold rows; the cluster's reads cover them all.
    for index in 0..2 {
        let local: u64 = cluster
            .client(index)
            .query(&format!("SELECT count() FROM {}.usage_events_local", sharded.config.database))
            .fetch_one()
            .await
            .unwrap();
        assert!(local > 0 && local < EVENTS, "shard {index} holds {local} of {EVENTS}");
    }

    let now = Utc::now();
    let usage_single = tally_kit::rollups::current_usage(&single.client, None, now).await.unwrap();
    let usage_sharded = tally_kit::rollups::current_usage(&sharded.client, None, now).await.unwrap();
    assert_eq!(usage_single.len(), 60, "20 tenants x 3 metrics");
    assert_eq!(format!("{usage_sharded:?}"), format!("{usage_single:?}"), "the enforcer's read model");
    let one = tally_kit::rollups::current_usage(&sharded.client, Some("t07"), now).await.unwrap();
    assert_eq!(one.len(), 3);

    let pg = TestPostgres::create().await;
    for tenant in 0..20 {
        sqlx::query("INSERT INTO tenant (id, name) VALUES ($1, $1)")
            .bind(format!("t{tenant:02}"))
            .execute(&pg.pool)
            .await
            .unwrap();
        sqlx::query("INSERT INTO stripe_customers (tenant_id, stripe_customer_id) VALUES ($1, $2)")
            .bind(format!("t{tenant:02}"))
            .bind(format!("cus_{tenant:02}"))
            .execute(&pg.pool)
            .await
            .unwrap();
    }
    let (billed_single, billed_sharded) = (billed(&pg, &single).await, billed(&pg, &sharded).await);
    assert_eq!(billed_single.len(), 40, "20 tenants x 2 billed metrics");
    assert_eq!(billed_sharded, billed_single, "billing-sync's totals");

    let windows = "SELECT granularity, toString(window_start), tenant_id, metric, events, toString(total), \
                   toString(max_value), toString(latest_value) FROM usage_windows ORDER BY 1, 2, 3, 4 FORMAT TSV";
    let (a, b) = (
        single.client.query(windows).fetch_bytes("TSV").unwrap().collect().await.unwrap(),
        sharded.client.query(windows).fetch_bytes("TSV").unwrap().collect().await.unwrap(),
    );
    assert!(!a.is_empty());
    assert_eq!(b, a, "the analysts' usage_windows view");

    for stop in stops {
        stop.cancel();
    }
    pg.drop_database().await;
    single.drop_database().await;
    sharded.drop_database().await;
}
