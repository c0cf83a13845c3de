//! The query service on a 2-shard ClickHouse cluster (acme's rows on one shard, globex's on the
//! other) answers every query byte for byte as on one server: rollups and raw events, every
//! window, zones, grouping, filters, CSV, a tenant key's view and the tenant listing.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod world;

use tally_testkit::cluster::TestCluster;
use world::World;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_on_two_shards_equal_one_server() {
    let cluster = TestCluster::start(2).await;
    let (single, sharded) = (World::create().await, World::on_cluster(&cluster).await);
    let ranges = [
        ("minute", "2026-11-01T04:00:00Z", "2026-11-01T08:00:00Z"),
        ("hour", "2026-10-31", "2026-11-03"),
        ("day", "2026-03-06", "2026-03-11"),
        ("month", "2026-03-01", "2026-12-01"),
        ("none", "2026-03-07", "2026-11-02"),
    ];
    let mut queries: Vec<Vec<(&str, &str)>> = Vec::new();
    for (window, from, to) in ranges {
        for zone in ["UTC", "America/New_York"] {
            let base = vec![("from", from), ("to", to), ("window", window), ("time_zone", zone)];
            queries.push(base.clone());
            queries.push([base.clone(), vec![("group_by", "tenant")]].concat());
            queries.push([base.clone(), vec![("group_by", "region"), ("filter[region]", "eu")]].concat());
            queries.push([base, vec![("group_by", "tenant"), ("format", "csv"), ("fill", "zero")]].concat());
        }
    }
    let mut rows_seen = 0;
    for params in &queries {
        let (want, got) =
            (single.get(Some(&single.analyst), params).await, sharded.get(Some(&sharded.analyst), params).await);
        assert_eq!(want.0, 200, "{params:?}: {}", want.1);
        assert_eq!(got, want, "{params:?}");
        rows_seen += want.1.lines().count();
    }
    assert!(rows_seen > 100, "the queries return rows ({rows_seen} lines)");
    // A tenant key reads its own tenant only, on either layout.
    let own = [("from", "2026-03-01"), ("to", "2026-12-01"), ("window", "month"), ("group_by", "tenant")];
    assert_eq!(sharded.get(Some(&sharded.acme), &own).await, single.get(Some(&single.acme), &own).await);
    let tenants = |world: &World| {
        let request = world.http.get(format!("{}/v1/tenants", world.base)).bearer_auth(&world.analyst);
        async move { request.send().await.unwrap().text().await.unwrap() }
    };
    assert_eq!(tenants(&sharded).await, tenants(&single).await);
    eprintln!("{} queries equal on both layouts", queries.len());
    single.drop().await;
    sharded.drop().await;
}
