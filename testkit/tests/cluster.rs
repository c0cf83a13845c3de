//! The test cluster (`testkit::cluster`): two chdb processes form a 2-shard cluster. A
//! `Distributed` table over local MergeTree tables takes foreground inserts sharded by tenant (a
//! tenant's rows on exactly one shard), reads every shard's rows (`_shard_num`), each node knows
//! its own `{shard}` macro, and insert-token dedup works per node.

#![allow(clippy::unwrap_used)]

use tally_testkit::cluster::{CLUSTER, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shards_take_sharded_inserts_read_as_one_and_dedup_per_node() {
    let cluster = TestCluster::start(2).await;
    for shard in 0..2 {
        let client = cluster.client(shard);
        for statement in [
            "CREATE DATABASE IF NOT EXISTS t".to_owned(),
            "CREATE TABLE t.events_local (tenant String, id String, n UInt64) ENGINE = MergeTree ORDER BY (tenant, id) \
             SETTINGS non_replicated_deduplication_window = 100"
                .to_owned(),
            format!("CREATE TABLE t.events AS t.events_local ENGINE = Distributed({CLUSTER}, t, events_local, cityHash64(tenant))"),
        ] {
            client.query(&statement).execute().await.unwrap();
        }
        let macro_shard: String = client.query("SELECT getMacro('shard')").fetch_one().await.unwrap();
        assert_eq!(macro_shard, format!("{:02}", shard + 1));
    }
    let first = cluster.client(0);
    first
        .query(
            "INSERT INTO t.events SELECT concat('tenant-', toString(number % 10)), toString(number), 1 FROM numbers(1000) \
             SETTINGS insert_distributed_sync = 1, async_insert = 0",
        )
        .execute()
        .await
        .unwrap();
    let mut local_total = 0;
    for shard in 0..2 {
        let client = cluster.client(shard);
        let through_distributed: u64 = client.query("SELECT count() FROM t.events").fetch_one().await.unwrap();
        assert_eq!(through_distributed, 1000, "shard {shard} reads every shard's rows");
        let local: u64 = client.query("SELECT count() FROM t.events_local").fetch_one().await.unwrap();
        assert!(local > 0, "shard {shard} holds some tenants");
        local_total += local;
    }
    assert_eq!(local_total, 1000, "every row on exactly one shard");
    let spread: Vec<(String, u64)> = first
        .query("SELECT tenant, uniqExact(_shard_num) FROM t.events GROUP BY tenant ORDER BY tenant")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(spread.len(), 10);
    assert!(spread.iter().all(|(_, shards)| *shards == 1), "a tenant's rows live together: {spread:?}");

    // The same insert token twice on one node stores the rows once.
    let second = cluster.client(1);
    let before: u64 = second.query("SELECT count() FROM t.events_local").fetch_one().await.unwrap();
    for _ in 0..2 {
        second
            .query("INSERT INTO t.events_local VALUES ('tenant-x', 'a', 1), ('tenant-x', 'b', 1)")
            .with_setting("insert_deduplication_token", "batch-1")
            .with_setting("async_insert", "0")
            .execute()
            .await
            .unwrap();
    }
    let after: u64 = second.query("SELECT count() FROM t.events_local").fetch_one().await.unwrap();
    assert_eq!(after - before, 2);
}
