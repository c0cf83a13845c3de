//! A sweep of TENANTS tenant databases on the local PostgreSQL by the collector, against the same
//! queries issued one tenant after another (connect, size, users, close) in the same run.
//!
//! Needs the local stack (`deploy/local/up.sh`). Run:
//! `cargo bench -p tally-collector --bench collector_sweep [-- TENANTS CONCURRENCY ROUNDS]`
//! (defaults 1000 16 3). Reports seconds per sweep for both (min / median / max), the ratio
//! (goal ≥ 4 ×), the peak number of collector connections seen in `pg_stat_activity` (bounded by
//! the concurrency), and peak RSS. The collector's figure includes emitting the 2 × TENANTS gauge
//! events to the broker; the baseline's does not.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};
use tally_collector::Collector;
use tally_collector::config::{CollectorConfig, EmitVia};
use tally_schemas::Topics;
use tally_testkit::bench::{arg, peak_rss_mib, process_cpu_seconds, spread};
use tally_testkit::tenant_data::{create_database, drop_database, pool_of, register, url_of};
use tally_testkit::{TestPostgres, kafka_config, unique_name};

/// CPU seconds PostgreSQL's backends have used so far: the postmaster's reaped children (every
/// backend of a closed connection) plus its own, read from `/proc`.
async fn postgres_cpu_seconds(admin: &sqlx::PgPool) -> f64 {
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(admin).await.unwrap();
    let stat = |pid: &str| std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields = |text: String| -> Vec<String> {
        text.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().map(str::to_owned).collect()).unwrap_or_default()
    };
    let postmaster = fields(stat(&backend.to_string())).get(1).cloned().unwrap_or_default();
    let own = fields(stat(&postmaster));
    let ticks = |i: usize| own.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
    (ticks(11) + ticks(12) + ticks(13) + ticks(14)) / 100.0
}

async fn sequential(urls: &[String]) -> f64 {
    let started = Instant::now();
    for url in urls {
        let mut connection = PgConnection::connect(url).await.unwrap();
        let size: i64 =
            sqlx::query_scalar("SELECT pg_database_size(current_database())").fetch_one(&mut connection).await.unwrap();
        let users: i64 =
            sqlx::query_scalar("SELECT count(*) FROM users WHERE active").fetch_one(&mut connection).await.unwrap();
        assert!(size > 0 && users > 0);
        connection.close().await.unwrap();
    }
    started.elapsed().as_secs_f64()
}

/// Samples the collector's connections until `done`; returns the peak.
fn watch_connections(admin_url: String, done: Arc<AtomicI64>) -> tokio::task::JoinHandle<i64> {
    tokio::spawn(async move {
        let pool = pool_of(&admin_url);
        let mut peak = 0;
        while done.load(Ordering::Relaxed) == 0 {
            let open: i64 =
                sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tally-collector'")
                    .fetch_one(&pool)
                    .await
                    .unwrap_or(0);
            peak = peak.max(open);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        pool.close().await;
        peak
    })
}

fn main() {
    let tenants = arg(0, 1_000);
    let concurrency = arg(1, 16);
    let rounds = arg(2, 3);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let registry = TestPostgres::create().await;
        // Every tenant database is a copy of one template: 5 active users, 40 documents.
        let template = unique_name("tally_bench_tpl").replace('-', "_");
        create_database(&template, 5, 2, 40).await;
        let admin = pool_of(&tally_testkit::tenant_data::admin_url());
        let prefix = unique_name("tally_bench").replace('-', "_");
        let mut urls = Vec::with_capacity(tenants);
        let setup = Instant::now();
        for n in 0..tenants {
            let name = format!("{prefix}_{n}");
            sqlx::query(&format!("CREATE DATABASE \"{name}\" TEMPLATE \"{template}\"")).execute(&admin).await.unwrap();
            let url = url_of(&name);
            register(&registry.pool, &format!("bench-{n:04}"), "database", Some(&url), None).await;
            urls.push(url);
        }
        println!("{tenants} tenant databases created in {:.1} s", setup.elapsed().as_secs_f64());
        let topics = Topics {
            usage_events: unique_name("bench-collected"),
            dead_letter: unique_name("bench-collected-dlq"),
            ..Topics::default()
        };
        tally_kit::kafka::ensure_topics(&kafka_config(), &topics).await.unwrap();
        let mut config = CollectorConfig {
            postgres: registry.config.clone(),
            kafka: kafka_config(),
            topics: topics.clone(),
            ..CollectorConfig::default()
        };
        config.collector.emit = EmitVia::Kafka;
        config.collector.concurrency = concurrency;
        let collector = Collector::new(config).unwrap();

        let (mut baseline, mut swept, mut peaks) = (Vec::new(), Vec::new(), Vec::new());
        let per_tenant_ms = |seconds: f64| seconds * 1e3 / tenants as f64;
        for round in 1..=rounds {
            let (pg, me) = (postgres_cpu_seconds(&admin).await, process_cpu_seconds());
            baseline.push(sequential(&urls).await);
            let (pg_mid, me_mid) = (postgres_cpu_seconds(&admin).await, process_cpu_seconds());
            let done = Arc::new(AtomicI64::new(0));
            let watcher = watch_connections(tally_testkit::tenant_data::admin_url(), done.clone());
            let report = collector.sweep().await.unwrap();
            done.store(1, Ordering::Relaxed);
            peaks.push(watcher.await.unwrap());
            assert_eq!((report.measured.len(), report.failures.len()), (tenants, 0));
            swept.push(report.seconds);
            let (pg_end, me_end) = (postgres_cpu_seconds(&admin).await, process_cpu_seconds());
            println!(
                "  CPU ms per tenant: sequential — PostgreSQL {:.2}, bench process {:.2}; collector — PostgreSQL {:.2}, \
                 collector {:.2}",
                per_tenant_ms(pg_mid - pg),
                per_tenant_ms(me_mid - me),
                per_tenant_ms(pg_end - pg_mid),
                per_tenant_ms(me_end - me_mid)
            );
            println!(
                "round {round}: sequential {:.2} s, collector {:.2} s ({:.1} ×), peak connections {}",
                baseline[round - 1],
                swept[round - 1],
                baseline[round - 1] / swept[round - 1],
                peaks[round - 1]
            );
        }
        let ratios: Vec<f64> = baseline.iter().zip(&swept).map(|(b, s)| b / s).collect();
        let (b, s, r) = (spread(baseline), spread(swept), spread(ratios));
        println!("{tenants} tenant databases, concurrency {concurrency}, {rounds} rounds (min / median / max)");
        println!("sequential baseline: {:.2} / {:.2} / {:.2} s per sweep", b.0, b.1, b.2);
        println!("collector sweep:     {:.2} / {:.2} / {:.2} s per sweep", s.0, s.1, s.2);
        println!("speed-up:            {:.1} / {:.1} / {:.1} × (goal >= 4)", r.0, r.1, r.2);
        println!("peak collector connections: {} (concurrency {concurrency})", peaks.iter().max().unwrap());
        println!("peak RSS (bench process: collector + baseline): {:.0} MiB", peak_rss_mib());

        for n in 0..tenants {
            drop_database(&format!("{prefix}_{n}")).await;
        }
        drop_database(&template).await;
        admin.close().await;
        registry.drop_database().await;
        tally_testkit::delete_topics(&kafka_config(), &[&topics.usage_events, &topics.dead_letter]).await;
    });
}
