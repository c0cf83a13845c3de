//! Usage query latency through the API against the very same queries sent straight to
//! ClickHouse (the service's own SQL and parameters, rows decoded by the `clickhouse` crate), in
//! one process on one stack.
//!
//! `cargo bench -p tally-query --bench query_latency [-- EVENTS TENANTS ROUNDS]` (stack up;
//! defaults 10,000,000 events over 1,000 tenants in November 2026, 40 rounds per query).

#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

use std::time::{Duration, Instant};

use tally_kit::auth::{self, Scope};
use tally_query::request::{self, RawRequest};
use tally_query::{QueryConfig, QueryService, sql};
use tally_testkit::{TestClickHouse, TestPostgres};
use tokio_util::sync::CancellationToken;

fn arg(index: usize, default: u64) -> u64 {
    std::env::args().skip(1).filter(|a| !a.starts_with('-')).nth(index).and_then(|a| a.parse().ok()).unwrap_or(default)
}

async fn load(ch: &TestClickHouse, events: u64, tenants: u64) {
    let started = Instant::now();
    let seconds = 30 * 86_400;
    ch.client
        .query(
            "INSERT INTO usage_events_base (tenant_id, event_id, metric, value, timestamp, source, attributes, ingested_at, kafka_partition, kafka_offset) \
             SELECT concat('t-', toString(number % ?)), toString(number), \
                    if(number % 4 = 0, 'compute_seconds', 'api_calls'), toDecimal128(number % 10 + 1, 9), \
                    toDateTime64('2026-11-01 00:00:00', 9, 'UTC') + toIntervalSecond((number * 7919) % ?), 'bench', \
                    map('region', ['eu', 'us', 'ap'][number % 3 + 1]), now64(3), 0, number \
             FROM numbers(?) SETTINGS async_insert = 0",
        )
        .bind(tenants)
        .bind(seconds)
        .bind(events)
        .execute()
        .await
        .unwrap();
    for (granularity, start) in [
        ("minute", "toStartOfMinute(timestamp)"),
        ("hour", "toStartOfHour(timestamp)"),
        ("day", "toStartOfDay(timestamp)"),
        ("month", "toDateTime(toStartOfMonth(timestamp), 'UTC')"),
    ] {
        let statement = format!(
            "INSERT INTO usage_rollups_base SELECT '{granularity}', {start} AS w, tenant_id, metric, count(), sum(value), max(value), \
                max((timestamp, event_id, value)), CAST([], 'Array(String)') \
             FROM usage_events_base GROUP BY w, tenant_id, metric SETTINGS async_insert = 0"
        );
        ch.client.query(&statement).execute().await.unwrap();
    }
    ch.client.query("OPTIMIZE TABLE usage_rollups_base FINAL").execute().await.unwrap();
    eprintln!(
        "loaded {events} events over {tenants} tenants and their rollups in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

fn percentile(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort();
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[index].as_secs_f64() * 1_000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (events, tenants, rounds) = (arg(0, 10_000_000), arg(1, 1_000), arg(2, 40));
    let (ch, pg) = (TestClickHouse::create().await, TestPostgres::create().await);
    load(&ch, events, tenants).await;
    let key = auth::create_key(&pg.pool, Scope::Analyst, None, "bench").await.unwrap().token;
    let mut config =
        QueryConfig { clickhouse: ch.config.clone(), postgres: pg.config.clone(), ..QueryConfig::default() };
    config.query.listen = "127.0.0.1:0".parse().unwrap();
    let stopping = CancellationToken::new();
    let service = QueryService::build(config.clone(), stopping.clone()).await.unwrap();
    let base = format!("http://{}", service.local_addr());
    tokio::spawn(service.run_until_stopped());
    let http = reqwest::Client::new();
    let direct = tally_kit::clickhouse::client(&ch.config);

    let queries = [
        (
            "a month of hourly windows, one tenant",
            "metric=api_calls&tenant=t-42&window=hour&from=2026-11-01T00:00:00Z&to=2026-12-01T00:00:00Z",
        ),
        (
            "top 100 tenants by api_calls, the month",
            "metric=api_calls&group_by=tenant&order_by=-sum&limit=100&from=2026-11-01T00:00:00Z&to=2026-12-01T00:00:00Z",
        ),
        (
            "one day by region (raw events)",
            "metric=api_calls&group_by=region&window=day&from=2026-11-15T00:00:00Z&to=2026-11-16T00:00:00Z",
        ),
        (
            "the month per day per tenant, CSV (streamed)",
            "metric=api_calls&group_by=tenant&window=day&from=2026-11-01&to=2026-12-01&format=csv",
        ),
    ];
    println!("| query | rows | API p50 / p99 ms | direct p50 / p99 ms | API / direct (p50) |");
    println!("|---|---|---|---|---|");
    for (name, params) in queries {
        let query =
            request::check(RawRequest::from_query_string(params).unwrap(), &config.metrics, &config.query).unwrap();
        let (mut through_api, mut straight) = (Vec::new(), Vec::new());
        let mut rows = 0;
        for round in 0..rounds + 3 {
            let started = Instant::now();
            let answer = http.get(format!("{base}/v1/usage?{params}")).bearer_auth(&key).send().await.unwrap();
            assert!(answer.status().is_success());
            let body = answer.bytes().await.unwrap();
            let api = started.elapsed();
            let started = Instant::now();
            let fetched = sql::fetch(&direct, &query, query.limit, 10).await.unwrap();
            let bare = started.elapsed();
            rows = fetched.len();
            assert!(!body.is_empty());
            // The first rounds warm caches and connections on both sides.
            if round >= 3 {
                through_api.push(api);
                straight.push(bare);
            }
        }
        let (api50, api99) = (percentile(&mut through_api, 0.5), percentile(&mut through_api, 0.99));
        let (bare50, bare99) = (percentile(&mut straight, 0.5), percentile(&mut straight, 0.99));
        println!("| {name} | {rows} | {api50:.2} / {api99:.2} | {bare50:.2} / {bare99:.2} | {:.2} |", api50 / bare50);
    }
    stopping.cancel();
    ch.drop_database().await;
    pg.drop_database().await;
}
