//! billing-sync against the Stripe fake, real PostgreSQL (ledger, customers) and the
//! aggregator's real rollup tables in ClickHouse.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use chrono::Utc;
use serde_json::Value;
use tally_billing_sync::{BillingConfig, BillingSync};
use tally_kit::rollups::RollupRow;
use tally_stripe_fake::{Fake, Faults};
use tally_testkit::{TestClickHouse, TestPostgres};

struct World {
    pg: TestPostgres,
    ch: TestClickHouse,
    stripe: String,
    http: reqwest::Client,
    meters: Vec<(String, String)>,
}

impl World {
    async fn new() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stripe = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(
            async move { axum::serve(listener, tally_stripe_fake::router(Arc::new(Fake::new(0)))).await.unwrap() },
        );
        let mut world = Self {
            pg: TestPostgres::create().await,
            ch: TestClickHouse::create().await,
            stripe,
            http: reqwest::Client::new(),
            meters: Vec::new(),
        };
        for event_name in ["api_calls", "compute_seconds"] {
            world.meter(event_name).await;
        }
        world
    }

    /// A `sum` meter for `event_name`.
    async fn meter(&mut self, event_name: &str) {
        let form = [("display_name", event_name), ("event_name", event_name), ("default_aggregation[formula]", "sum")];
        let meter = self.post("/v1/billing/meters", &form).await;
        self.meters.push((event_name.to_owned(), meter["id"].as_str().unwrap().to_owned()));
    }

    /// A meter event sent to Stripe by someone other than billing-sync.
    async fn stripe_event(&self, customer: &str, event_name: &str, value: i64, timestamp: i64) {
        let (value, timestamp) = (value.to_string(), timestamp.to_string());
        let form = [
            ("event_name", event_name),
            ("payload[stripe_customer_id]", customer),
            ("payload[value]", value.as_str()),
            ("timestamp", timestamp.as_str()),
        ];
        self.post("/v1/billing/meter_events", &form).await;
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> Value {
        let response =
            self.http.post(format!("{}{path}", self.stripe)).bearer_auth("sk_test_t").form(form).send().await.unwrap();
        assert!(response.status().is_success());
        response.json().await.unwrap()
    }

    async fn faults(&self, faults: Faults) {
        self.http.post(format!("{}/_fake/faults", self.stripe)).json(&faults).send().await.unwrap();
    }

    /// A tenant, with a Stripe customer when `billed`; returns the customer id.
    async fn tenant(&self, id: &str, billed: bool) -> Option<String> {
        sqlx::query("INSERT INTO tenant (id, name) VALUES ($1, $1)").bind(id).execute(&self.pg.pool).await.unwrap();
        if !billed {
            return None;
        }
        let customer = self.post("/v1/customers", &[("name", id)]).await["id"].as_str().unwrap().to_owned();
        sqlx::query("INSERT INTO stripe_customers (tenant_id, stripe_customer_id) VALUES ($1, $2)")
            .bind(id)
            .bind(&customer)
            .execute(&self.pg.pool)
            .await
            .unwrap();
        Some(customer)
    }

    /// Usage as the aggregator stores it: an hour rollup partial of `value` for the window.
    async fn usage(&self, tenant: &str, metric: &str, hours_ago: i64, value: i64) {
        self.usage_exact(tenant, metric, hours_ago, &value.to_string()).await;
    }

    /// Usage of an exact decimal amount (e.g. `"0.4"`, or `"-5"` to take some away), written as
    /// the aggregator writes it: one partial in the hour rollup and one in the day's.
    async fn usage_exact(&self, tenant: &str, metric: &str, hours_ago: i64, amount: &str) {
        let units = amount.parse::<tally_schemas::Quantity>().unwrap().units();
        let hour = (Utc::now().timestamp() / 3_600 - hours_ago) * 3_600;
        let mut insert = self.ch.client.insert::<RollupRow>("usage_rollups_base").await.unwrap();
        for (granularity, start) in [("hour", hour), ("day", hour / 86_400 * 86_400)] {
            let row = RollupRow {
                granularity,
                window_start: u32::try_from(start).unwrap(),
                tenant_id: tenant.to_owned(),
                metric: metric.to_owned(),
                events: 1,
                value_sum: units,
                value_max: units,
                latest: (hour * 1_000_000_000, format!("e{amount}"), units),
                distinct_values: Vec::new(),
            };
            insert.write(&row).await.unwrap();
        }
        insert.end().await.unwrap();
    }

    fn config(&self) -> BillingConfig {
        let mut config = BillingConfig {
            postgres: self.pg.config.clone(),
            clickhouse: self.ch.config.clone(),
            ..BillingConfig::default()
        };
        config.billing.stripe_url = self.stripe.clone();
        config.billing.settle_minutes = 0;
        config.billing.max_attempts = 3;
        config.billing.request_timeout_ms = 2_000;
        config
    }

    fn sync(&self) -> BillingSync {
        BillingSync::new(self.config()).unwrap()
    }

    /// What Stripe holds for the customer on the metric's meter over the last seven days.
    async fn stripe_total(&self, customer: &str, metric: &str) -> f64 {
        let meter = &self.meters.iter().find(|(name, _)| name == metric).unwrap().1;
        let end = Utc::now().timestamp() / 3_600 * 3_600 + 3_600;
        let path = format!(
            "/v1/billing/meters/{meter}/event_summaries?customer={customer}&start_time={}&end_time={end}",
            end - 7 * 86_400
        );
        let response = self.http.get(format!("{}{path}", self.stripe)).bearer_auth("sk_test_t").send().await.unwrap();
        let body: Value = response.json().await.unwrap();
        body["data"][0]["aggregated_value"].as_f64().unwrap()
    }

    async fn drop(self) {
        self.pg.drop_database().await;
        self.ch.drop_database().await;
    }
}

#[tokio::test]
async fn totals_reach_the_right_customers_once_and_a_late_event_sends_the_difference() {
    let world = World::new().await;
    let acme = world.tenant("acme", true).await.unwrap();
    let globex = world.tenant("globex", true).await.unwrap();
    world.tenant("unbilled", false).await;
    world.usage("acme", "api_calls", 3, 100).await;
    world.usage("acme", "api_calls", 2, 50).await;
    world.usage("acme", "compute_seconds", 2, 7).await;
    world.usage("globex", "api_calls", 2, 9).await;
    world.usage("unbilled", "api_calls", 2, 1_000).await;
    world.usage("acme", "storage_bytes", 2, 5_000).await;

    let sync = world.sync();
    let (report, _) = sync.run_once(false).await.unwrap();
    assert_eq!((report.planned, report.sent, report.tenants_without_customer), (4, 4, 1), "{report:?}");
    assert!(report.refused.is_empty() && report.carried.values().all(|c| c == "0"), "{report:?}");
    assert!(
        (7_200..3 * 3_600).contains(&report.oldest_unsynced_lag_secs),
        "the 3-hours-ago window ended 2 h ago: {report:?}"
    );
    assert!(report.failures.is_empty());
    assert_eq!(world.stripe_total(&acme, "api_calls").await, 150.0);
    assert_eq!(world.stripe_total(&acme, "compute_seconds").await, 7.0);
    assert_eq!(world.stripe_total(&globex, "api_calls").await, 9.0);

    let (rerun, _) = sync.run_once(false).await.unwrap();
    assert_eq!((rerun.planned, rerun.sent), (0, 0), "a rerun sends nothing new");

    assert_eq!(sync.parity(2).await.unwrap().differences, Vec::new(), "Stripe equals Tally");
    world.usage("acme", "api_calls", 3, 5).await;
    let differences = sync.parity(2).await.unwrap().differences;
    assert_eq!(differences.len(), 1, "{differences:?}");
    let late = &differences[0];
    assert_eq!((late.kind, late.tally.as_str(), late.billed, late.stripe), ("unsynced", "105", 100, 100));
    let (dry, planned) = sync.run_once(true).await.unwrap();
    assert_eq!((dry.planned, planned[0].value, planned[0].seq), (1, 5, 1));
    assert!(planned.iter().all(|p| p.identifier.len() <= 100));
    assert_eq!(world.stripe_total(&acme, "api_calls").await, 150.0, "a dry run sends nothing");
    let (late, _) = sync.run_once(false).await.unwrap();
    assert_eq!(late.sent, 1);
    assert_eq!(world.stripe_total(&acme, "api_calls").await, 155.0, "exactly the missing difference");
    assert_eq!(sync.parity(2).await.unwrap().differences, Vec::new());
    world.drop().await;
}

#[tokio::test]
async fn with_429s_500s_and_lost_answers_stripe_ends_equal_to_tally() {
    let world = World::new().await;
    let mut customers = Vec::new();
    for n in 0..8 {
        let tenant = format!("t{n}");
        customers.push((tenant.clone(), world.tenant(&tenant, true).await.unwrap()));
        for hours_ago in 1..4 {
            world.usage(&tenant, "api_calls", hours_ago, 10 * (n + 1) + hours_ago).await;
        }
    }
    world
        .faults(Faults {
            rate_limit_percent: 25,
            server_error_percent: 15,
            drop_percent: 25,
            seed: 42,
            ..Faults::default()
        })
        .await;
    let sync = world.sync();
    let mut runs = 0;
    loop {
        runs += 1;
        assert!(runs < 20, "the runs never converged");
        // A run whose meter listing fails every attempt fails whole; the next one retries.
        let Ok((report, _)) = sync.run_once(false).await else { continue };
        if report.failures.is_empty() && report.planned == 0 {
            break;
        }
    }
    world.faults(Faults::default()).await;
    for (n, (_, customer)) in customers.iter().enumerate() {
        let expected = (1..4).map(|h| 10 * (n as i64 + 1) + h).sum::<i64>() as f64;
        assert_eq!(
            world.stripe_total(customer, "api_calls").await,
            expected,
            "customer {n}: 0 double-billed, 0 missed"
        );
    }
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM tally.billing_ledger WHERE state = 'pending'")
        .fetch_one(&world.pg.pool)
        .await
        .unwrap();
    assert_eq!(pending, 0);
    world.drop().await;
}

mod chaos;
mod corrections;
mod units;
