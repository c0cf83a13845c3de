//! The query tests' world: raw events around both 2026 New York DST changes in ClickHouse (and
//! the rollups computed from them here), tenants and keys in PostgreSQL, a query service.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, Utc};
use serde_json::Value;
use tally_kit::auth::{self, Scope};
use tally_kit::rollups::{EventRow, Granularity, RollupRow};
use tally_query::{QueryConfig, QueryService};
use tally_schemas::TenantId;
use tally_testkit::{TestClickHouse, TestPostgres, catalogue_with_unique};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct Event {
    pub tenant: &'static str,
    pub id: String,
    pub metric: &'static str,
    pub units: i128,
    pub at: DateTime<Utc>,
    pub region: Option<&'static str>,
    pub user: String,
}

/// Events every 13 minutes around both 2026 New York DST changes, rotating tenant, metric,
/// region and user; values with fractions.
pub fn events() -> Vec<Event> {
    let mut events = Vec::new();
    for (start, end) in
        [("2026-03-06T00:00:00Z", "2026-03-11T00:00:00Z"), ("2026-10-30T00:00:00Z", "2026-11-04T00:00:00Z")]
    {
        let (mut at, end): (DateTime<Utc>, DateTime<Utc>) = (start.parse().unwrap(), end.parse().unwrap());
        while at < end {
            let n = events.len();
            events.push(Event {
                tenant: ["acme", "globex"][n % 2],
                id: format!("e-{n}"),
                metric: ["api_calls", "storage_bytes", "distinct_users"][(n / 2) % 3],
                units: i128::try_from(n % 17 + 1).unwrap() * 250_000_000,
                at: at + Duration::seconds(i64::try_from(n % 50).unwrap()),
                region: [Some("eu"), Some("us"), None][(n / 6) % 3],
                user: format!("u{}", n % 7),
            });
            at += Duration::minutes(13);
        }
    }
    events
}

pub fn rollups(events: &[Event]) -> Vec<RollupRow> {
    type Key = (Granularity, DateTime<Utc>, &'static str, &'static str);
    type Partial = (u64, i128, i128, (i64, String, i128), BTreeSet<String>);
    let mut windows: BTreeMap<Key, Partial> = BTreeMap::new();
    for e in events {
        for g in Granularity::ALL {
            let latest = (e.at.timestamp_nanos_opt().unwrap(), e.id.clone(), e.units);
            let w = windows.entry((g, g.window_start(e.at), e.tenant, e.metric)).or_insert((
                0,
                0,
                e.units,
                latest.clone(),
                BTreeSet::new(),
            ));
            w.0 += 1;
            w.1 += e.units;
            w.2 = w.2.max(e.units);
            if (latest.0, &latest.1) > (w.3.0, &w.3.1) {
                w.3 = latest;
            }
            if e.metric == "distinct_users" {
                w.4.insert(e.user.clone());
            }
        }
    }
    windows
        .into_iter()
        .map(|((g, start, tenant, metric), (events, sum, max, latest, distinct))| RollupRow {
            granularity: g.as_str(),
            window_start: u32::try_from(start.timestamp()).unwrap(),
            tenant_id: tenant.to_owned(),
            metric: metric.to_owned(),
            events,
            value_sum: sum,
            value_max: max,
            latest,
            distinct_values: distinct.into_iter().collect(),
        })
        .collect()
}

pub struct World {
    pub ch: TestClickHouse,
    pub pg: TestPostgres,
    pub base: String,
    pub analyst: String,
    pub acme: String,
    pub service: String,
    pub http: reqwest::Client,
    pub stopping: CancellationToken,
    pub events: Vec<Event>,
}

impl World {
    pub async fn create() -> Self {
        Self::create_with(|_| {}).await
    }

    /// The world with the query service's configuration changed by `tweak`.
    pub async fn create_with(tweak: impl FnOnce(&mut QueryConfig)) -> Self {
        Self::build(None, tweak).await
    }

    /// The world on a ClickHouse cluster: each tenant's rows on a shard of their own (acme on
    /// the first, globex on the last), read by the service through the Distributed tables.
    pub async fn on_cluster(cluster: &tally_testkit::cluster::TestCluster) -> Self {
        Self::build(Some(cluster), |_| {}).await
    }

    async fn build(
        cluster: Option<&tally_testkit::cluster::TestCluster>,
        tweak: impl FnOnce(&mut QueryConfig),
    ) -> Self {
        let ch = match cluster {
            Some(cluster) => TestClickHouse::on_cluster(cluster).await,
            None => TestClickHouse::create().await,
        };
        let pg = TestPostgres::create().await;
        let events = events();
        let shards = tally_kit::shards::clients(&ch.config);
        let shard_of = |tenant: &str| if tenant == "acme" { 0 } else { shards.len() - 1 };
        for (shard, replicas) in shards.iter().enumerate() {
            store_shard(&replicas[0], events.iter().filter(|e| shard_of(e.tenant) == shard)).await;
        }
        for tenant in ["acme", "globex"] {
            sqlx::query("INSERT INTO tenant (id, name) VALUES ($1, $1)").bind(tenant).execute(&pg.pool).await.unwrap();
        }
        let key = async |scope, tenant: Option<&str>| {
            let tenant = tenant.map(|t| TenantId::parse(t).unwrap());
            auth::create_key(&pg.pool, scope, tenant.as_ref(), "test").await.unwrap().token
        };
        let (analyst, acme, service) =
            (key(Scope::Analyst, None).await, key(Scope::Tenant, Some("acme")).await, key(Scope::Service, None).await);
        let mut config = QueryConfig {
            clickhouse: ch.config.clone(),
            postgres: pg.config.clone(),
            metrics: catalogue_with_unique(),
            ..QueryConfig::default()
        };
        config.query.listen = "127.0.0.1:0".parse().unwrap();
        tweak(&mut config);
        let stopping = CancellationToken::new();
        let service_handle = QueryService::build(config, stopping.clone()).await.unwrap();
        let base = format!("http://{}", service_handle.local_addr());
        tokio::spawn(service_handle.run_until_stopped());
        Self { ch, pg, base, analyst, acme, service, http: reqwest::Client::new(), stopping, events }
    }

    pub async fn get(&self, key: Option<&str>, params: &[(&str, &str)]) -> (u16, String) {
        let query = form_urlencoded::Serializer::new(String::new()).extend_pairs(params).finish();
        let mut request = self.http.get(format!("{}/v1/usage?{query}", self.base));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let answer = request.send().await.unwrap();
        (answer.status().as_u16(), answer.text().await.unwrap())
    }

    pub async fn rows(&self, params: &[(&str, &str)]) -> Vec<Value> {
        let (status, body) = self.get(Some(&self.analyst), params).await;
        assert_eq!(status, 200, "{params:?}: {body}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        answer["rows"].as_array().unwrap().clone()
    }

    pub async fn drop(self) {
        self.stopping.cancel();
        self.ch.drop_database().await;
        self.pg.drop_database().await;
    }
}

/// Stores `events` (raw and rolled up) in the base tables of the node `client` reaches.
async fn store_shard<'a>(client: &clickhouse::Client, events: impl Iterator<Item = &'a Event>) {
    let events: Vec<Event> = events.cloned().collect();
    let mut insert = client.insert::<EventRow>("usage_events_base").await.unwrap();
    for (offset, e) in events.iter().enumerate() {
        let mut attributes = vec![("user_id".to_owned(), e.user.clone())];
        attributes.extend(e.region.map(|r| ("region".to_owned(), r.to_owned())));
        let row = EventRow {
            tenant_id: e.tenant.to_owned(),
            event_id: e.id.clone(),
            metric: e.metric.to_owned(),
            value: e.units,
            timestamp: e.at.timestamp_nanos_opt().unwrap(),
            source: "test".to_owned(),
            attributes,
            ingested_at: e.at.timestamp_millis(),
            kafka_partition: 0,
            kafka_offset: offset as u64,
        };
        insert.write(&row).await.unwrap();
    }
    insert.end().await.unwrap();
    let mut insert = client.insert::<RollupRow>("usage_rollups_base").await.unwrap();
    for row in rollups(&events) {
        insert.write(&row).await.unwrap();
    }
    insert.end().await.unwrap();
}
