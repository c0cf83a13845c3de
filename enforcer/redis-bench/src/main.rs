//! The enforcer's Redis rate store over HTTP against the `limitador` crate's Redis storages
//! (`AsyncRedisStorage`, exact; `CachedRedisStorage`, batched), each behind the same axum stack,
//! in one run against the same Redis.
//!
//! Needs the local stack (PostgreSQL, Redis on 127.0.0.1:6379). Run:
//! `cargo run --release --manifest-path enforcer/redis-bench/Cargo.toml [-- TENANTS SECONDS CLIENTS]`
//! (defaults 10000 5 32). It is its own workspace because limitador's Redis storage builds only
//! together with its RocksDB storage: tests and lints of the main workspace never compile RocksDB.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use limitador::AsyncRateLimiter;
use limitador::limit::{Context, Expression, Limit, Namespace};
use limitador::storage::AsyncCounterStorage;
use limitador::storage::redis::{AsyncRedisStorage, CachedRedisStorageBuilder};
use serde_json::{Value, json};
use tally_enforcer::config::RateStoreKind;
use tally_enforcer::{Enforcer, EnforcerConfig};
use tally_testkit::TestPostgres;
use tally_testkit::bench::{Driven, arg, drive_checks, peak_rss_mib, seed_tenants, serve_on_loopback, tenant_name};
use tokio_util::sync::CancellationToken;

/// Clients of the lighter run, below saturation, where p99 is read (goal <= 1 ms).
const LIGHT_CLIENTS: usize = 4;

fn tenant(n: usize) -> String {
    tenant_name(n)
}

async fn limitador_server(storage: Box<dyn AsyncCounterStorage>) -> std::net::SocketAddr {
    let limiter = Arc::new(AsyncRateLimiter::new_with_storage(storage));
    limiter.add_limit(Limit::new("tally", 200, 1, [], [Expression::parse("tenant").unwrap()]));
    let router = Router::new()
        .route(
            "/check",
            post(|State(limiter): State<Arc<AsyncRateLimiter>>, axum::Json(body): axum::Json<Value>| async move {
                let tenant = body["tenant_id"].as_str().unwrap_or_default().to_owned();
                let context = Context::from(HashMap::from([("tenant".to_owned(), tenant)]));
                let result =
                    limiter.check_rate_limited_and_update(&Namespace::from("tally"), &context, 1).await.unwrap();
                axum::Json(json!({ "allowed": !result.limited }))
            }),
        )
        .with_state(limiter);
    serve_on_loopback(router).await
}

fn line(name: &str, driven: Driven) {
    println!(
        "    {name:<28} {:>9.0} checks/s  p50 {:.3} ms  p99 {:.3} ms",
        driven.per_second, driven.p50_ms, driven.p99_ms
    );
}

#[tokio::main]
async fn main() {
    let tenants = arg(0, 10_000);
    let seconds = arg(1, 5) as u64;
    let clients = arg(2, 32);
    let redis_url = tally_testkit::redis_url();

    let pg = TestPostgres::create().await;
    // The tenants, and a service key as an API gateway holds (authenticated like every caller).
    let key = seed_tenants(&pg, tenants).await;
    let mut config = EnforcerConfig { postgres: pg.config.clone(), ..EnforcerConfig::default() };
    config.enforcer.listen = "127.0.0.1:0".parse().unwrap();
    config.enforcer.grpc_listen = None;
    config.enforcer.rate.store = RateStoreKind::Redis;
    config.enforcer.rate.redis_url = tally_kit::Secret::new(redis_url.clone());
    config.enforcer.rate.key_prefix = tally_testkit::redis_prefix();
    let stopping = CancellationToken::new();
    let enforcer = Enforcer::build(config, stopping.clone()).await.unwrap();
    let tally_url = format!("http://{}/v1/check/rate", enforcer.local_addr());
    let running = tokio::spawn(enforcer.run_until_stopped());
    // The registry's listener reloads every tenant once it connects: let that pass first.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let exact = limitador_server(Box::new(AsyncRedisStorage::new(&redis_url).await.unwrap())).await;
    let cached = CachedRedisStorageBuilder::new(&redis_url).build().await.unwrap();
    let cached = limitador_server(Box::new(cached)).await;
    let exact_url = format!("http://{exact}/check");
    let cached_url = format!("http://{cached}/check");
    println!(
        "over HTTP on loopback, one Redis, {tenants} tenants, {seconds} s per run (load generator in this process):"
    );
    for load in [LIGHT_CLIENTS, clients] {
        let tally = drive_checks(&tally_url, &key, tenant, tenants, seconds, load).await;
        let lim_exact = drive_checks(&exact_url, &key, tenant, tenants, seconds, load).await;
        let lim_cached = drive_checks(&cached_url, &key, tenant, tenants, seconds, load).await;
        println!("  {load} clients:");
        line("tally (redis store)", tally);
        line("limitador AsyncRedisStorage", lim_exact);
        line("limitador CachedRedisStorage", lim_cached);
        println!(
            "    ratio tally / limitador exact: {:.2} (goal >= 1.0); tally / limitador cached: {:.2}",
            tally.per_second / lim_exact.per_second,
            tally.per_second / lim_cached.per_second
        );
    }
    stopping.cancel();
    running.await.unwrap().unwrap();
    pg.drop_database().await;
    println!("peak RSS of the bench process: {:.0} MiB", peak_rss_mib());
}
