//! The `setup` and `check` commands.

use std::fmt::Write;
use std::time::{Duration, Instant};

use anyhow::Context;
use tally_kit::config::redact_url;
use tally_kit::kafka::TopicStatus;
use tally_kit::{clickhouse, kafka, postgres};

use crate::AdminConfig;

/// How long setup waits for a broker that is still starting.
const BROKER_WAIT: Duration = Duration::from_secs(60);

pub async fn setup(config: &AdminConfig, platform_tables: bool) -> anyhow::Result<String> {
    let mut report = String::new();
    let pg_url = redact_url(config.postgres.url.expose());

    if postgres::ensure_database(&config.postgres).await? {
        writeln!(report, "postgres   created database at {pg_url}")?;
    }
    if platform_tables {
        postgres::migrate_platform(&config.postgres).await?;
        writeln!(report, "postgres   platform tables (tenant, stripe_customers) up to date")?;
    }
    postgres::migrate_tally(&config.postgres).await?;
    writeln!(report, "postgres   tally schema up to date at {pg_url}")?;

    tally_kit::shards::verify(&config.clickhouse).await?;
    let applied = clickhouse::apply_migrations(&config.clickhouse).await?;
    let at = match config.clickhouse.cluster.as_str() {
        "" => config.clickhouse.url.clone(),
        cluster => format!("every node of cluster {cluster} ({} shards)", config.clickhouse.shards.0.len()),
    };
    writeln!(
        report,
        "clickhouse database {} up to date at {at} (applied now: {})",
        config.clickhouse.database,
        if applied.is_empty() { "none".to_owned() } else { format!("{applied:?}") }
    )?;

    wait_for_broker(config).await?;
    for (topic, status) in kafka::ensure_topics(&config.kafka, &config.topics).await? {
        let status = match status {
            TopicStatus::Created => "created",
            TopicStatus::Existed => "exists",
        };
        writeln!(report, "kafka      topic {topic} {status} on {}", config.kafka.brokers)?;
    }
    Ok(report)
}

async fn wait_for_broker(config: &AdminConfig) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        match kafka::ping(&config.kafka).await {
            Ok(_) => return Ok(()),
            Err(error) if started.elapsed() > BROKER_WAIT => return Err(error).context("waiting for the broker"),
            Err(error) => {
                tracing::info!(%error, "broker not answering yet");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

pub async fn check(config: &AdminConfig) -> anyhow::Result<String> {
    let mut report = String::new();
    let mut failures = 0;
    let kafka = kafka::ping(&config.kafka).await.map(|brokers| format!("{brokers} broker(s)"));
    let clickhouse = clickhouse::ping(&clickhouse::client(&config.clickhouse)).await.map(|()| "ok".to_owned());
    let pool = postgres::pool(&config.postgres)?;
    let pg = sqlx_ping(&pool).await;
    for (name, outcome) in [
        ("kafka", kafka.map_err(|e| e.to_string())),
        ("clickhouse", clickhouse.map_err(|e| e.to_string())),
        ("postgres", pg),
    ] {
        match outcome {
            Ok(detail) => writeln!(report, "{name:<10} ok ({detail})")?,
            Err(error) => {
                failures += 1;
                writeln!(report, "{name:<10} FAILED: {error}")?;
            }
        }
    }
    if failures > 0 {
        anyhow::bail!("{failures} dependency check(s) failed:\n{report}");
    }
    Ok(report)
}

async fn sqlx_ping(pool: &tally_kit::postgres::PgPool) -> Result<String, String> {
    tally_kit::postgres::ping(pool).await.map(|()| "ok".to_owned()).map_err(|e| e.to_string())
}
