//! Tally's usage collector: measures each tenant's storage bytes and active users in the
//! platform's tenant databases (a database, a schema or shared rows per tenant, as the registry
//! records it) and emits them as gauge events, so the enforcer's caps and the 80 % storage alert
//! work without app code.
//!
//! `/livez`, `/readyz` and `/metrics` are served on `[collector] listen` in daemon mode.

pub mod cli;
pub mod config;
pub mod measure;
pub mod metrics;
pub mod registry;
pub mod sweep;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tally_client::{ClientConfig, Emitter};
use tally_kit::ops::{HttpServer, Ops};
use tokio_util::sync::CancellationToken;

pub use crate::config::CollectorConfig;
use crate::config::EmitVia;
use crate::measure::Measurer;
use crate::metrics::CollectorMetrics;
use crate::sweep::Report;

/// How the collector runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One sweep, then exit (cron).
    Once,
    /// A sweep every `interval_secs`, with the operations endpoints.
    Daemon,
}

/// A configured collector: the registry pool, the measurer, the emitter.
#[derive(Debug)]
pub struct Collector {
    pub config: CollectorConfig,
    registry: sqlx::PgPool,
    measurer: Measurer,
    emitter: Emitter,
}

impl Collector {
    pub fn new(config: CollectorConfig) -> anyhow::Result<Self> {
        let registry = tally_kit::postgres::pool(&config.postgres).context("[postgres] url")?;
        let measurer = Measurer::new(Arc::new(config.collector.clone()));
        let section = &config.collector;
        let client = ClientConfig::new(&section.ingest_url, section.ingest_api_key.expose());
        let emitter = match section.emit {
            EmitVia::Kafka => Emitter::kafka(client, &config.kafka, &config.topics).context("[kafka] producer")?,
            EmitVia::Http => {
                anyhow::ensure!(
                    !section.ingest_api_key.expose().is_empty(),
                    "[collector] emit = \"http\" needs ingest_api_key (a service key from tally-admin api-key create --service)"
                );
                Emitter::http(client).context("[collector] ingest_url")?
            }
        };
        Ok(Self { config, registry, measurer, emitter })
    }

    /// One sweep, now.
    pub async fn sweep(&self) -> anyhow::Result<Report> {
        sweep::sweep(&self.registry, &self.measurer, &self.emitter, &self.config.collector, chrono::Utc::now())
            .await
            .context("reading the tenant registry")
    }

    pub async fn run(self, mode: Mode, stopping: CancellationToken) -> anyhow::Result<()> {
        match mode {
            Mode::Once => {
                let report = self.sweep().await?;
                log(&report);
                self.emitter.close().await;
                anyhow::ensure!(report.failures.is_empty(), "{} tenants not measured", report.failures.len());
                Ok(())
            }
            Mode::Daemon => self.daemon(stopping).await,
        }
    }

    async fn daemon(self, stopping: CancellationToken) -> anyhow::Result<()> {
        let ops = Ops::new("collector", stopping.clone());
        let metrics = CollectorMetrics::register(ops.registry())?;
        let interval = Duration::from_secs(self.config.collector.interval_secs.max(1));
        let heartbeat = ops.heartbeat("sweep-loop", interval * 3);
        let pool = self.registry.clone();
        ops.add_check("postgres", move || {
            let pool = pool.clone();
            async move { tally_kit::postgres::ping(&pool).await.map_err(|e| e.to_string()) }
        });
        let server = HttpServer::bind(self.config.collector.listen).await?;
        tracing::info!(addr = %server.local_addr(), "collector serving /livez, /readyz, /metrics");
        let serving = tokio::spawn(server.serve(ops.router(), stopping.clone()));
        loop {
            heartbeat.beat();
            match self.sweep().await {
                Ok(report) => {
                    metrics.sweep_seconds.observe(report.seconds);
                    metrics.measured.inc_by(report.measured.len() as u64);
                    for (_, reason, _) in &report.failures {
                        metrics.failures.with_label_values(&[reason]).inc();
                    }
                    metrics.last_sweep.set(chrono::Utc::now().timestamp());
                    log(&report);
                }
                Err(error) => tracing::error!(error = format!("{error:#}"), "sweep failed; retrying next interval"),
            }
            heartbeat.beat();
            tokio::select! {
                () = stopping.cancelled() => break,
                () = tokio::time::sleep(interval) => {}
            }
        }
        self.emitter.close().await;
        serving.await??;
        Ok(())
    }
}

fn log(report: &Report) {
    tracing::info!(
        measured = report.measured.len(),
        failures = report.failures.len(),
        seconds = report.seconds,
        "sweep finished"
    );
}
