//! The aggregator on a ClickHouse cluster, beyond the chaos tests (`chaos.rs` runs those on two
//! shards too): a cluster listed against its servers' own shard order is refused, a shard whose
//! tables lack the dedup window is refused by name, the cluster DDL applies once per node, and a
//! partition's home shard is settled once — by the shard holding its checkpoints, else by
//! partition number — and kept whatever shard count a later instance is configured with, and a
//! shard killed or hung mid-stream loses nothing.

use std::time::Duration;

use tally_aggregator::Aggregator;
use tally_aggregator::shards::Shards;
use tally_kit::config::ClickHouseConfig;
use tally_kit::config::ShardList;
use tally_testkit::cluster::TestCluster;
use tally_testkit::kafka_config;
use tokio_util::sync::CancellationToken;

use crate::helpers::Harness;

fn listing(config: &ClickHouseConfig, order: &[usize]) -> ClickHouseConfig {
    ClickHouseConfig {
        shards: ShardList(order.iter().map(|&i| config.shards.0[i].clone()).collect()),
        ..config.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_out_of_order_missing_or_without_dedup_windows_are_refused() {
    let harness = Harness::on_cluster(kafka_config(), 2, 2).await;
    let config = harness.ch.config.clone();
    tally_kit::shards::verify(&config).await.expect("the listed order is the servers' own");
    assert!(tally_kit::clickhouse::apply_migrations(&config).await.unwrap().is_empty(), "applied once per node");

    let reversed = tally_kit::shards::verify(&listing(&config, &[1, 0])).await.unwrap_err().to_string();
    assert!(
        reversed.contains("shards[0]") && reversed.contains("is shard 2") && reversed.contains("not shard 1"),
        "{reversed}"
    );
    let missing = tally_kit::shards::verify(&listing(&config, &[0])).await.unwrap_err().to_string();
    assert!(missing.contains("lists 1 shard(s)") && missing.contains("has 2"), "{missing}");
    let unnamed = ClickHouseConfig { cluster: "elsewhere".to_owned(), ..config.clone() };
    let unnamed = tally_kit::shards::verify(&unnamed).await.unwrap_err().to_string();
    assert!(unnamed.contains("has 0"), "{unnamed}");

    let mut aggregator = harness.config("ordered");
    aggregator.clickhouse = listing(&config, &[1, 0]);
    let Err(refused) = Aggregator::build(aggregator, CancellationToken::new()).await else { panic!("refused") };
    assert!(format!("{refused:#}").contains("<remote_servers> order"), "{refused:#}");

    // The second shard's base table loses its dedup window: startup names it.
    let second =
        tally_kit::clickhouse::client(&ClickHouseConfig { url: config.shards.0[1][0].clone(), ..config.clone() });
    second
        .query("ALTER TABLE usage_events_base MODIFY SETTING non_replicated_deduplication_window = 10")
        .execute()
        .await
        .unwrap();
    let Err(refused) = Aggregator::build(harness.config("strict"), CancellationToken::new()).await else {
        panic!("refused")
    };
    let message = format!("{refused:#}");
    assert!(message.contains("usage_events_base") && message.contains("ALTER TABLE"), "{message}");
    harness.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_keeps_the_shard_that_holds_it_whatever_later_instances_are_told() {
    let cluster = TestCluster::start(3).await;
    let ch = tally_testkit::TestClickHouse::on_cluster(&cluster).await;
    let topic = "usage";
    // Partition 4 was stored before it had a home (a server grown into a cluster): its
    // checkpoints are on the third shard.
    cluster
        .client(2)
        .query(&format!(
            "INSERT INTO {}.aggregator_checkpoints VALUES ('{topic}', 4, 100, 0, now64(3))",
            ch.config.database
        ))
        .execute()
        .await
        .unwrap();
    let three = Shards::from_config(&ch.config);
    assert_eq!(three.resolve_home(topic, 4, "a").await.unwrap(), 2, "the shard holding its checkpoints");
    assert_eq!(three.resolve_home(topic, 5, "a").await.unwrap(), 2, "5 mod 3");
    // An instance still configured with the first two shards (a rolling change) agrees on both,
    // and on partition 7, settled by the first instance.
    assert_eq!(three.resolve_home(topic, 7, "a").await.unwrap(), 1, "7 mod 3");
    let two = Shards::from_config(&listing(&ch.config, &[0, 1]));
    assert_eq!(two.resolve_home(topic, 7, "b").await.unwrap(), 1);
    assert!(two.resolve_home(topic, 5, "b").await.unwrap_err().to_string().contains("shards may only be appended"));
    // A partition the two-shard instance settles first stays where it put it.
    assert_eq!(two.resolve_home(topic, 8, "b").await.unwrap(), 0, "8 mod 2");
    let later = Shards::from_config(&ch.config);
    assert_eq!(later.resolve_home(topic, 8, "c").await.unwrap(), 0, "not 8 mod 3");
    ch.drop_database().await;
}

/// What a replicated shard creates for a partition table is the base's engine clause under its
/// own Keeper path; unreplicated, the real engine shows that clause makes the same table as a
/// plain copy of the base (columns, index, partitioning, order, TTL, settings).
#[tokio::test]
async fn a_partition_table_from_the_base_clause_equals_a_copy_of_the_base() {
    let ch = tally_testkit::TestClickHouse::create().await;
    for table in tally_schemas::ddl::PARTITION_SCOPED_TABLES {
        let shown = async |sql: String, name: String| {
            ch.client.query(&sql).execute().await.unwrap();
            let create: String = ch.client.query(&format!("SELECT create_table_query FROM system.tables WHERE database = currentDatabase() AND name = '{name}'")).fetch_one().await.unwrap();
            create.replace(&name, "<table>")
        };
        let copy = shown(tally_schemas::ddl::create_partition_table(table, 1), format!("{table}_p1")).await;
        let derived = tally_schemas::cluster::partition_table_with_engine(table, 2);
        let derived = shown(derived, format!("{table}_p2")).await;
        assert_eq!(derived, copy, "{table}");
        assert!(copy.contains("deduplication_window"), "{copy}");
    }
    ch.drop_database().await;
}

/// A shard that dies (SIGKILL, then a restart on its data) and one that hangs (SIGSTOP for a
/// few seconds) while events flow: batches stall and retry — the dedup lookup reads every
/// shard, so no batch is decided without the dead one — and every total is exact afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_killed_or_hung_mid_stream_stalls_batches_and_loses_nothing() {
    let seed = chrono::Utc::now().timestamp_subsec_nanos() as u64 | 1;
    eprintln!("shard outage seed {seed}");
    let mut harness = Harness::on_cluster(kafka_config(), 4, 2).await;
    let sends = crate::oracle::stream(seed, 3_000, 20, chrono::Utc::now());
    let distinct = crate::oracle::distinct_events(&sends);
    let mut aggregator = harness.spawn_process("outage");
    let publisher = harness.publisher();
    harness.send(&publisher, &sends[..1_000]).await;
    let before = crate::oracle::distinct_events(&sends[..1_000]).len() as u64;
    assert_eq!(harness.wait_counted(before, Duration::from_secs(60)).await, before);

    harness.cluster.as_mut().unwrap().kill(1);
    harness.send(&publisher, &sends[1_000..2_000]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(aggregator.try_wait().unwrap().is_none(), "the aggregator waits for the shard, it does not exit");
    harness.cluster.as_mut().unwrap().restart(1).await;

    harness.cluster.as_ref().unwrap().pause(0, true);
    harness.send(&publisher, &sends[2_000..]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    harness.cluster.as_ref().unwrap().pause(0, false);

    let counted = harness.wait_counted(distinct.len() as u64, Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let windows = harness.windows().await;
    aggregator.kill().unwrap();
    aggregator.wait().unwrap();
    assert_eq!((counted, harness.counted().await), (distinct.len() as u64, distinct.len() as u64), "seed {seed}");
    let differences = crate::helpers::differences(&windows, &crate::oracle::expected_windows(distinct.iter().copied()));
    assert!(differences.is_empty(), "seed {seed}: rollups differ:\n{}", differences.join("\n"));
    harness.drop().await;
}
