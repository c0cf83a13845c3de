//! The enforcer's rate check against a bare `governor` check and the `limitador` crate, in
//! process and over HTTP, with memory per tenant, all in one run.
//!
//! Needs the local stack (PostgreSQL) for the HTTP part. Run:
//! `cargo bench -p tally-enforcer --bench enforcer_checks [-- TENANTS CHECKS SECONDS CLIENTS]`
//! (defaults 1000000 2000000 5 32).
//! * In process, one thread, TENANTS tenants with STANDARD limits (100/s, burst 200), CHECKS checks
//!   on tenants in a fixed pseudo-random order: Tally's `Checks::rate` (registry lookup + the
//!   quota's keyed governor limiter on the tenant's inline state), a bare keyed `governor`
//!   limiter with the same quota (asked with the same tenant id strings, every tenant's state
//!   created before the clock starts, as Tally's registry is), and `limitador` (in-memory, one
//!   limit of 200 per second keyed by tenant). `TALLY_BENCH_SIDE=in-process` stops here.
//! * Memory: bytes allocated per tenant in the registry and limiter, counted by the allocator,
//!   idle (registered, never checked) and after every tenant was checked.
//! * Over HTTP on loopback: 4, then CLIENTS concurrent clients in this process for SECONDS against the
//!   enforcer (TENANTS tenants loaded from PostgreSQL) and against `limitador` behind the same
//!   axum stack; checks/s and p50/p99 latency.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::alloc::System;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use governor::{DefaultKeyedRateLimiter, Quota};
use limitador::limit::{Context, Expression, Limit, Namespace};
use serde_json::{Value, json};
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use tally_enforcer::checks::Checks;
use tally_enforcer::{Enforcer, EnforcerConfig};
use tally_schemas::Tier;
use tally_testkit::TestPostgres;
use tally_testkit::bench::{arg, drive_checks, peak_rss_mib, seed_tenants, serve_on_loopback, tenant_name};
use tokio_util::sync::CancellationToken;

// Counts allocated bytes, to measure memory per tenant exactly.
#[global_allocator]
static ALLOCATOR: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn live() -> isize {
    let stats = ALLOCATOR.stats();
    stats.bytes_allocated as isize - stats.bytes_deallocated as isize
}

/// Clients of the lighter HTTP run, where latency (p99 goal <= 1 ms) is read.
const LIGHT_CLIENTS: usize = 4;

fn tenant(n: usize) -> String {
    tenant_name(n)
}

/// A fixed pseudo-random walk over the tenants (no allocation while measuring).
fn order(tenants: usize, checks: usize) -> Vec<usize> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..checks)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % tenants as u64) as usize
        })
        .collect()
}

fn ns_per(started: Instant, checks: usize) -> f64 {
    started.elapsed().as_nanos() as f64 / checks as f64
}

fn checks_without_database(tenants: usize) -> (Arc<Checks>, isize) {
    let config = EnforcerConfig::default();
    let before = live();
    let registry = Arc::new(tally_enforcer::registry::Registry::new(config.tiers));
    for n in 0..tenants {
        registry.insert_active(&tenant(n), Tier::Standard);
    }
    let registry_bytes = live() - before;
    let checks = Checks::new(
        registry,
        tally_kit::postgres::pool(&config.postgres).unwrap(),
        None,
        config.enforcer.clone(),
        tally_enforcer::metrics::EnforcerMetrics::register(&prometheus::Registry::new()).unwrap(),
    );
    (Arc::new(checks), registry_bytes)
}

fn in_process(tenants: usize, checks_count: usize) {
    let walk = order(tenants, checks_count);
    let names: Vec<String> = (0..tenants).map(tenant).collect();
    let one = NonZeroU32::MIN;

    let (checks, registry_bytes) = checks_without_database(tenants);
    let before_state = live();
    let started = Instant::now();
    let mut allowed = 0usize;
    for &n in &walk {
        allowed += usize::from(checks.rate_in_memory(&names[n], one).allowed);
    }
    let tally_ns = ns_per(started, checks_count);
    let state_bytes = live() - before_state;

    // Asked with the same tenant id strings as Tally, and like Tally's registry holding its own
    // copy of every tenant's key before the clock starts (one untimed check each).
    let quota = Quota::per_second(NonZeroU32::new(100).unwrap()).allow_burst(NonZeroU32::new(200).unwrap());
    let bare: DefaultKeyedRateLimiter<String> = DefaultKeyedRateLimiter::dashmap(quota);
    for name in &names {
        let _ = bare.check_key(name);
    }
    let started = Instant::now();
    let mut bare_allowed = 0usize;
    for &n in &walk {
        bare_allowed += usize::from(bare.check_key(&names[n]).is_ok());
    }
    let governor_ns = ns_per(started, checks_count);

    let limitador = limitador::RateLimiter::new(tenants as u64);
    let namespace = Namespace::from("tally");
    let variable = Expression::parse("tenant").unwrap();
    limitador.add_limit(Limit::new("tally", 200, 1, [], [variable]));
    let limitador_checks = checks_count.min(500_000);
    let started = Instant::now();
    for &n in &walk[..limitador_checks] {
        let context = Context::from(HashMap::from([("tenant".to_owned(), names[n].clone())]));
        let _ = limitador.check_rate_limited_and_update(&namespace, &context, 1).unwrap();
    }
    let limitador_ns = ns_per(started, limitador_checks);

    println!("in process, {tenants} tenants, {checks_count} checks ({limitador_checks} for limitador), one thread:");
    println!("  tally rate check  {tally_ns:>8.1} ns/check  (allowed {allowed})");
    println!("  bare governor     {governor_ns:>8.1} ns/check  (allowed {bare_allowed})");
    println!("  limitador         {limitador_ns:>8.1} ns/check");
    println!(
        "  ratio tally / governor {:.2} (goal <= 1.5), limitador / tally {:.1}x",
        tally_ns / governor_ns,
        limitador_ns / tally_ns
    );
    println!(
        "  memory per tenant (heap, counted by the allocator): {:.0} B idle (registry entry with its limiter), \
         {:.0} B more once it has been checked (goal <= 300 idle)",
        registry_bytes as f64 / tenants as f64,
        state_bytes as f64 / tenants as f64
    );
}

async fn limitador_server(tenants: usize) -> std::net::SocketAddr {
    let limiter = Arc::new(limitador::RateLimiter::new(tenants as u64));
    limiter.add_limit(Limit::new("tally", 200, 1, [], [Expression::parse("tenant").unwrap()]));
    let router = Router::new()
        .route(
            "/check",
            post(
                |State(limiter): State<Arc<limitador::RateLimiter>>, axum::Json(body): axum::Json<Value>| async move {
                    let tenant = body["tenant_id"].as_str().unwrap_or_default().to_owned();
                    let context = Context::from(HashMap::from([("tenant".to_owned(), tenant)]));
                    let result = limiter.check_rate_limited_and_update(&Namespace::from("tally"), &context, 1).unwrap();
                    axum::Json(json!({ "allowed": !result.limited }))
                },
            ),
        )
        .with_state(limiter);
    serve_on_loopback(router).await
}

async fn over_http(tenants: usize, seconds: u64, clients: usize) {
    let pg = TestPostgres::create().await;
    // The tenants, and a service key as an API gateway holds (authenticated like every caller).
    let key = seed_tenants(&pg, tenants).await;
    let mut config = EnforcerConfig { postgres: pg.config.clone(), ..EnforcerConfig::default() };
    config.enforcer.listen = "127.0.0.1:0".parse().unwrap();
    config.enforcer.grpc_listen = None;
    config.telemetry.filter = "warn".to_owned();
    let stopping = CancellationToken::new();
    let enforcer = Enforcer::build(config, stopping.clone()).await.unwrap();
    let addr = enforcer.local_addr();
    let running = tokio::spawn(enforcer.run_until_stopped());
    // The registry's listener reloads every tenant once it connects: let that pass first.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let limitador = limitador_server(tenants).await;
    let tally_url = format!("http://{addr}/v1/check/rate");
    let limitador_url = format!("http://{limitador}/check");
    println!("over HTTP on loopback, {tenants} tenants, {seconds} s per run (load generator in this process):");
    for load in [LIGHT_CLIENTS, clients] {
        let tally = drive_checks(&tally_url, &key, tenant, tenants, seconds, load).await;
        let lim = drive_checks(&limitador_url, &key, tenant, tenants, seconds, load).await;
        let (tally_rate, tally_p50, tally_p99) = (tally.per_second, tally.p50_ms, tally.p99_ms);
        let (lim_rate, lim_p50, lim_p99) = (lim.per_second, lim.p50_ms, lim.p99_ms);
        println!("  {load} clients:");
        println!("    tally      {tally_rate:>9.0} checks/s  p50 {tally_p50:.3} ms  p99 {tally_p99:.3} ms");
        println!("    limitador  {lim_rate:>9.0} checks/s  p50 {lim_p50:.3} ms  p99 {lim_p99:.3} ms");
        println!("    ratio tally / limitador checks/s: {:.2}", tally_rate / lim_rate);
    }
    stopping.cancel();
    running.await.unwrap().unwrap();
    pg.drop_database().await;
}

fn main() {
    let tenants = arg(0, 1_000_000);
    let checks = arg(1, 2_000_000);
    let seconds = arg(2, 5) as u64;
    let clients = arg(3, 32);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    {
        // The checks hold a (lazy, unused here) PostgreSQL pool, which needs a runtime.
        let _entered = runtime.enter();
        in_process(tenants, checks);
    }
    if std::env::var("TALLY_BENCH_SIDE").as_deref() != Ok("in-process") {
        runtime.block_on(over_http(tenants, seconds, clients));
    }
    println!("peak RSS of the bench process: {:.0} MiB", peak_rss_mib());
}
