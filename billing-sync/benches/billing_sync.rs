//! One billing-sync run for TENANTS tenants × 3 metrics (one hour window each) against the Stripe
//! fake in this process: wall time and meter events per second, then the rerun (nothing to send).
//!
//! Needs the local stack (PostgreSQL, ClickHouse). Run:
//! `cargo bench -p tally-billing-sync --bench billing_sync [-- TENANTS CONCURRENCY]` (defaults 10000 32).

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use futures_util::StreamExt;
use tally_billing_sync::config::MeterSpec;
use tally_billing_sync::{BillingConfig, BillingSync};
use tally_kit::rollups::RollupRow;
use tally_stripe_fake::Fake;
use tally_testkit::bench::{arg, peak_rss_mib};
use tally_testkit::{TestClickHouse, TestPostgres};

const METRICS: [&str; 3] = ["api_calls", "compute_seconds", "egress_bytes"];

fn main() {
    let tenants = arg(0, 10_000);
    let concurrency = arg(1, 32);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stripe = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(
            async move { axum::serve(listener, tally_stripe_fake::router(Arc::new(Fake::new(0)))).await.unwrap() },
        );
        let http = reqwest::Client::new();
        let post = |path: String, form: Vec<(&'static str, String)>| {
            let http = http.clone();
            let url = format!("{stripe}{path}");
            async move {
                let response = http.post(url).bearer_auth("sk_test_bench").form(&form).send().await.unwrap();
                response.json::<serde_json::Value>().await.unwrap()
            }
        };
        for metric in METRICS {
            post(
                "/v1/billing/meters".to_owned(),
                vec![
                    ("display_name", metric.to_owned()),
                    ("event_name", metric.to_owned()),
                    ("default_aggregation[formula]", "sum".to_owned()),
                ],
            )
            .await;
        }
        let pg = TestPostgres::create().await;
        let ch = TestClickHouse::create().await;
        sqlx::query("INSERT INTO tenant (id, name) SELECT 'tenant-' || g, 'bench' FROM generate_series(0, $1 - 1) g")
            .bind(tenants as i64)
            .execute(&pg.pool)
            .await
            .unwrap();
        let customers: Vec<(usize, String)> = futures_util::stream::iter(0..tenants)
            .map(|n| {
                let created = post("/v1/customers".to_owned(), vec![("name", format!("tenant-{n}"))]);
                async move { (n, created.await["id"].as_str().unwrap().to_owned()) }
            })
            .buffer_unordered(32)
            .collect()
            .await;
        for chunk in customers.chunks(5_000) {
            let ids: Vec<String> = chunk.iter().map(|(n, _)| format!("tenant-{n}")).collect();
            let customers: Vec<String> = chunk.iter().map(|(_, c)| c.clone()).collect();
            sqlx::query("INSERT INTO stripe_customers SELECT * FROM unnest($1::text[], $2::text[])")
                .bind(&ids)
                .bind(&customers)
                .execute(&pg.pool)
                .await
                .unwrap();
        }
        let hour = (Utc::now().timestamp() / 3_600 - 1) * 3_600;
        let mut insert = ch.client.insert::<RollupRow>("usage_rollups_base").await.unwrap();
        for n in 0..tenants {
            for metric in METRICS {
                let value = (n as i128 % 1_000 + 1) * 1_000_000_000;
                let row = RollupRow {
                    granularity: "hour",
                    window_start: u32::try_from(hour).unwrap(),
                    tenant_id: format!("tenant-{n}"),
                    metric: metric.to_owned(),
                    events: 1,
                    value_sum: value,
                    value_max: value,
                    latest: (hour * 1_000_000_000, String::new(), value),
                    distinct_values: Vec::new(),
                };
                insert.write(&row).await.unwrap();
            }
        }
        insert.end().await.unwrap();

        let mut config =
            BillingConfig { postgres: pg.config.clone(), clickhouse: ch.config.clone(), ..BillingConfig::default() };
        config.billing.stripe_url = stripe.clone();
        config.billing.concurrency = concurrency;
        config.billing.settle_minutes = 0;
        config.billing.meters = METRICS.iter().map(|m| ((*m).to_owned(), MeterSpec::Name((*m).to_owned()))).collect();
        config.postgres.max_connections = u32::try_from(concurrency).unwrap() + 2;
        let sync = BillingSync::new(config).unwrap();
        let started = Instant::now();
        let (report, _) = sync.run_once(false).await.unwrap();
        let wall = started.elapsed();
        assert!(report.failures.is_empty(), "{:?}", report.failures.iter().next());
        let started = Instant::now();
        let (rerun, _) = sync.run_once(false).await.unwrap();
        let rerun_wall = started.elapsed();
        println!("{tenants} tenants x 3 metrics, concurrency {concurrency}, against the Stripe fake in this process:");
        println!(
            "  first run: {} meter events in {:.2} s = {:.0} requests/s (ledger write + POST each, acknowledgements batched)",
            report.sent,
            wall.as_secs_f64(),
            report.sent as f64 / wall.as_secs_f64()
        );
        println!("  rerun: {} to send, {:.2} s (plan only)", rerun.planned, rerun_wall.as_secs_f64());
        println!("  peak RSS of the bench process (fake + sync): {:.0} MiB", peak_rss_mib());
        pg.drop_database().await;
        ch.drop_database().await;
    });
}
