//! An enforcer on port 0 with its own PostgreSQL and ClickHouse databases.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::sync::Arc;
use tally_kit::auth::{self, Scope};
use tally_kit::rollups::RollupRow;

use tally_enforcer::checks::Checks;
use tally_enforcer::{Enforcer, EnforcerConfig};
use tally_schemas::TenantId;
use tally_testkit::{TestClickHouse, TestPostgres};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct Stores {
    pub pg: TestPostgres,
    pub ch: TestClickHouse,
    /// An admin key, which the apps' helpers send unless told otherwise.
    pub admin_key: String,
}

impl Stores {
    pub async fn new() -> Self {
        let pg = TestPostgres::create().await;
        let admin_key = auth::create_key(&pg.pool, Scope::Admin, None, "test admin").await.unwrap().token;
        Self { pg, ch: TestClickHouse::create().await, admin_key }
    }

    /// A new key of `scope` (a tenant key for `tenant`).
    pub async fn key(&self, scope: Scope, tenant: Option<&str>) -> String {
        let tenant = tenant.map(|t| TenantId::parse(t).unwrap());
        auth::create_key(&self.pg.pool, scope, tenant.as_ref(), "test").await.unwrap().token
    }

    /// An enforcer's config on these stores (the apps' helpers send the admin key).
    pub fn config(&self) -> EnforcerConfig {
        let mut config = EnforcerConfig {
            postgres: self.pg.config.clone(),
            clickhouse: self.ch.config.clone(),
            ..EnforcerConfig::default()
        };
        config.enforcer.listen = "127.0.0.1:0".parse().unwrap();
        config.enforcer.grpc_listen = Some("127.0.0.1:0".parse().unwrap());
        config.enforcer.usage_refresh_ms = 100;
        config.enforcer.store_timeout_ms = 5_000;
        config
    }

    pub async fn tenant(&self, id: &str, tier: &str) {
        sqlx::query("INSERT INTO tenant (id, name, tier) VALUES ($1, $1, $2)")
            .bind(id)
            .bind(tier)
            .execute(&self.pg.pool)
            .await
            .unwrap();
    }

    /// Sessions of this test's database sitting idle inside a transaction.
    pub async fn idle_in_transaction(&self) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state LIKE 'idle in transaction%'",
        )
        .fetch_one(&self.pg.pool)
        .await
        .unwrap()
    }

    pub async fn sql(&self, statement: &str) {
        sqlx::query(statement).execute(&self.pg.pool).await.unwrap();
    }

    /// Reports a gauge for the tenant the way the aggregator stores it (a month rollup row).
    pub async fn gauge(&self, tenant: &str, metric: &str, value: u64) {
        let now = chrono::Utc::now();
        let month = tally_kit::rollups::Granularity::Month.window_start(now);
        let row = RollupRow {
            granularity: "month",
            window_start: u32::try_from(month.timestamp()).unwrap(),
            tenant_id: tenant.to_owned(),
            metric: metric.to_owned(),
            events: 1,
            value_sum: i128::from(value) * 1_000_000_000,
            value_max: i128::from(value) * 1_000_000_000,
            latest: (now.timestamp_nanos_opt().unwrap(), uuid_like(), i128::from(value) * 1_000_000_000),
            distinct_values: Vec::new(),
        };
        let mut insert = self.ch.client.insert::<RollupRow>("usage_rollups_base").await.unwrap();
        insert.write(&row).await.unwrap();
        insert.end().await.unwrap();
    }

    pub async fn drop(self) {
        self.pg.drop_database().await;
        self.ch.drop_database().await;
    }
}

fn uuid_like() -> String {
    tally_testkit::unique_name("event")
}

pub struct App {
    pub addr: SocketAddr,
    pub grpc: SocketAddr,
    pub stopping: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
    pub http: reqwest::Client,
    pub checks: Arc<Checks>,
    /// Sent by `post`, `get` and `rate`.
    pub key: String,
}

impl App {
    pub async fn spawn(stores: &Stores, config: EnforcerConfig) -> Self {
        let stopping = CancellationToken::new();
        let enforcer = Enforcer::build(config, stopping.clone()).await.unwrap();
        let addr = enforcer.local_addr();
        let grpc = enforcer.grpc_addr().unwrap();
        let checks = enforcer.checks();
        let task = tokio::spawn(enforcer.run_until_stopped());
        Self { addr, grpc, stopping, task, http: reqwest::Client::new(), checks, key: stores.admin_key.clone() }
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        self.post_as(Some(&self.key), path, body).await
    }

    /// POSTs with `key` (`None`: no `Authorization` at all).
    pub async fn post_as(
        &self,
        key: Option<&str>,
        path: &str,
        body: Value,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut request = self.http.post(format!("http://{}{path}", self.addr)).json(&body);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.unwrap();
        let (status, headers) = (response.status(), response.headers().clone());
        (status, headers, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.get_as(Some(&self.key), path).await
    }

    pub async fn get_as(&self, key: Option<&str>, path: &str) -> (StatusCode, Value) {
        let mut request = self.http.get(format!("http://{}{path}", self.addr));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.unwrap();
        (response.status(), response.json().await.unwrap_or(Value::Null))
    }

    pub async fn rate(&self, tenant: &str) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        self.post("/v1/check/rate", json!({ "tenant_id": tenant })).await
    }

    /// Waits until the enforcer has read usage from ClickHouse once (reservations fail closed
    /// before that).
    pub async fn usage_read(&self) {
        let read = Self::within(Duration::from_secs(10), async || self.checks.usage.age().is_some()).await;
        assert!(read.is_some(), "the enforcer never read usage");
    }

    /// Polls `probe` until it returns true; the time it took, or `None` after `limit`.
    pub async fn within(limit: Duration, mut probe: impl AsyncFnMut() -> bool) -> Option<Duration> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if probe().await {
                return Some(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    pub async fn stop(self) {
        self.stopping.cancel();
        self.task.await.unwrap().unwrap();
    }
}
