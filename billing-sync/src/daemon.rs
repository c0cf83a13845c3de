//! Daemon mode: a run every `interval_secs`; a failed run (PostgreSQL, ClickHouse or Stripe
//! unreachable) is logged, counted and retried with backoff, and only a configuration mistake
//! stops the process. `/livez`, `/readyz` and `/metrics` are served on `[billing] listen`.

use std::time::{Duration, Instant};

use tally_kit::ops::{HttpServer, Ops};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::sync::ConfigError;
use crate::{BillingSync, log};

/// Backoff after failed runs: 5 s × 2ⁿ, at most the interval.
fn backoff(failures: u32, interval: Duration) -> Duration {
    Duration::from_secs(5).saturating_mul(1 << failures.min(10)).min(interval)
}

pub async fn run(sync: BillingSync, stopping: CancellationToken) -> anyhow::Result<()> {
    let ops = Ops::new("billing-sync", stopping.clone());
    let metrics = Metrics::register(ops.registry())?;
    let interval = Duration::from_secs(sync.config.billing.interval_secs.max(1));
    // A catch-up run may take long; the heartbeat beats before and after each.
    let heartbeat = ops.heartbeat("sync-loop", interval * 2 + Duration::from_secs(3_600));
    let pool = sync.pool.clone();
    ops.add_check("postgres", move || {
        let pool = pool.clone();
        async move { sqlx::query("SELECT 1").execute(&pool).await.map(drop).map_err(|e| e.to_string()) }
    });
    let clickhouse = sync.clickhouse.clone();
    ops.add_check("clickhouse", move || {
        let clickhouse = clickhouse.clone();
        async move { clickhouse.query("SELECT 1").execute().await.map_err(|e| e.to_string()) }
    });
    let server = HttpServer::bind(sync.config.billing.listen).await?;
    tracing::info!(addr = %server.local_addr(), "billing-sync daemon serving /livez, /readyz, /metrics");
    let serving = tokio::spawn(server.serve(ops.router(), stopping.clone()));
    let mut failures = 0;
    let outcome = loop {
        heartbeat.beat();
        let started = Instant::now();
        let wait = match sync.run_once(false).await {
            Ok((report, _)) => {
                metrics.run_seconds.observe(started.elapsed().as_secs_f64());
                metrics.observe(&report, chrono::Utc::now().timestamp());
                log(&report);
                if report.unauthorized {
                    break Err(anyhow::Error::new(ConfigError(
                        "Stripe refused [billing] stripe_key (401/403)".to_owned(),
                    )));
                }
                failures = 0;
                interval
            }
            Err(error) if error.downcast_ref::<ConfigError>().is_some() => break Err(error),
            Err(error) => {
                metrics.run_failures.inc();
                let wait = backoff(failures, interval);
                failures += 1;
                tracing::error!(
                    error = format!("{error:#}"),
                    retry_in_secs = wait.as_secs(),
                    "billing sync run failed"
                );
                wait
            }
        };
        heartbeat.beat();
        tokio::select! {
            () = stopping.cancelled() => break Ok(()),
            () = tokio::time::sleep(wait) => {}
        }
    };
    stopping.cancel();
    serving.await??;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_interval() {
        let interval = Duration::from_secs(300);
        let waits: Vec<u64> = (0..8).map(|n| backoff(n, interval).as_secs()).collect();
        assert_eq!(waits, vec![5, 10, 20, 40, 80, 160, 300, 300]);
    }
}
