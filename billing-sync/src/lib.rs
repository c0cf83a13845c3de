//! Tally's billing-sync: pushes each billing window's usage to the tenants' Stripe customers as
//! whole-number meter events, never twice and never missing one.
//!
//! A run reads the settled windows' totals from the ClickHouse rollups and the ledger
//! (PostgreSQL, `tally.billing_ledger` and `tally.billing_streams`), and for each (tenant,
//! metric) stream sends what Stripe lacks: whole units with the fraction carried (see
//! [`plan`]), corrections both ways, each row written as pending before it is sent with its
//! deterministic identifier and Idempotency-Key, and acknowledged after — so a crash at any
//! point is finished by the next run with the same identifier.

pub mod cli;
pub mod config;
mod daemon;
pub mod ledger;
pub mod metrics;
pub mod parity;
pub mod plan;
pub mod stripe;
pub mod sync;

use std::io::Write as _;
use std::time::Duration;

use anyhow::Context;
use chrono::{TimeDelta, Utc};
use tokio_util::sync::CancellationToken;

pub use crate::config::BillingConfig;
use crate::plan::Policy;
use crate::stripe::StripeClient;
pub use crate::sync::{ConfigError, Planned, Report};

/// How the process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One run, then exit (cron).
    Once,
    /// Print what one run would send, send nothing.
    DryRun,
    /// Run every `[billing] interval_secs` until stopped, serving `/livez`, `/readyz`, `/metrics`.
    Daemon,
    /// Print every difference between Tally, the ledger and Stripe over the last N days.
    Parity(i64),
}

/// Connections for runs.
#[derive(Debug)]
pub struct BillingSync {
    config: BillingConfig,
    pool: tally_kit::postgres::PgPool,
    clickhouse: clickhouse::Client,
    stripe: StripeClient,
}

impl BillingSync {
    pub fn new(config: BillingConfig) -> anyhow::Result<Self> {
        let section = &config.billing;
        if section.meters.is_empty() {
            anyhow::bail!("[billing] meters is empty: map each billable metric to its Stripe meter's event_name");
        }
        for (metric, spec) in &section.meters {
            let name = spec.event_name();
            if name.is_empty() || name.chars().count() > 100 {
                anyhow::bail!("[billing.meters.{metric}] event_name must be 1 to 100 characters (Stripe's limit)");
            }
            if spec.unit().units() <= 0 {
                anyhow::bail!("[billing.meters.{metric}] unit must be above 0, e.g. \"1\" or \"1000\"");
            }
        }
        let stripe = StripeClient::new(
            &section.stripe_url,
            section.stripe_key.clone(),
            Duration::from_millis(section.request_timeout_ms),
            section.max_attempts,
        )
        .context("creating the Stripe client")?;
        Ok(Self {
            pool: tally_kit::postgres::pool(&config.postgres)?,
            clickhouse: tally_kit::clickhouse::client(&config.clickhouse),
            stripe,
            config,
        })
    }

    /// Refuses meters billing-sync cannot bill through: missing, inactive, or not `sum`.
    async fn check_meters(&self) -> anyhow::Result<()> {
        let meters = self.stripe.meters().await.context("listing Stripe's meters")?;
        for (metric, spec) in &self.config.billing.meters {
            let name = spec.event_name();
            match meters.get(name) {
                None => return Err(ConfigError(format!("Stripe has no meter with event_name {name:?} (for metric {metric}): create it with aggregation `sum`")).into()),
                Some(meter) if !meter.active => return Err(ConfigError(format!("Stripe's meter {} ({name}) is not active", meter.id)).into()),
                Some(meter) if !meter.sums => return Err(ConfigError(format!("Stripe's meter {} ({name}) must aggregate with `sum`: billing-sync sends window totals and corrections", meter.id)).into()),
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// One run; with `dry_run` the planned rows are returned and nothing is written or sent.
    pub async fn run_once(&self, dry_run: bool) -> anyhow::Result<(Report, Vec<Planned>)> {
        let settings = &self.config.billing;
        let now = Utc::now();
        let mut report = Report::default();
        let range = sync::range(settings, now);
        let (streams, without_customer) = sync::load(&self.pool, &self.clickhouse, settings, range)
            .await
            .context("loading the run (PostgreSQL ledger and customers, ClickHouse totals)")?;
        report.tenants_without_customer = without_customer;
        self.check_meters().await?;
        let acks = ledger::Acks::start(self.pool.clone());
        let run = sync::Run {
            pool: &self.pool,
            acks: &acks,
            stripe: &self.stripe,
            policy: Policy {
                now,
                cancel_within: TimeDelta::hours(settings.cancel_within_hours),
                refusal_retry: TimeDelta::minutes(settings.refusal_retry_minutes),
            },
            dry_run,
            window_seconds: settings.window.seconds(),
        };
        let planned = run.all(streams, settings.concurrency, &mut report).await;
        let unwritten = acks.finish().await;
        if unwritten > 0 {
            report.failures.entry("(ledger)".to_owned()).or_default().push(format!(
                "{unwritten} acknowledgements not written to PostgreSQL; the next run resends those rows"
            ));
        }
        Ok((report, planned))
    }

    /// The parity report over the last `days` days of settled windows.
    pub async fn parity(&self, days: i64) -> anyhow::Result<parity::Parity> {
        let settings = &self.config.billing;
        let (_, settled) = sync::range(settings, Utc::now());
        let step = settings.window.seconds();
        let start = (settled - days.max(1) * 86_400).div_euclid(step) * step;
        let (streams, _) = sync::load(&self.pool, &self.clickhouse, settings, (start, settled)).await?;
        parity::parity(&self.stripe, settings, &streams, (start, settled)).await
    }

    /// Runs in `mode`; the error says whether anything did not reach Stripe.
    pub async fn run(self, mode: Mode, stopping: CancellationToken) -> anyhow::Result<()> {
        match mode {
            Mode::Parity(days) => {
                let parity = self.parity(days).await?;
                let mut out = std::io::stdout().lock();
                for difference in &parity.differences {
                    writeln!(out, "{}", serde_json::to_string(difference)?)?;
                }
                tracing::info!(differences = parity.differences.len(), days, carried = ?parity.carried, "parity report");
                if parity.differences.is_empty() {
                    return Ok(());
                }
                anyhow::bail!("{} windows differ between Tally, the ledger and Stripe", parity.differences.len());
            }
            Mode::DryRun => {
                let (report, planned) = self.run_once(true).await?;
                let mut out = std::io::stdout().lock();
                for item in &planned {
                    writeln!(out, "{}", serde_json::to_string(item)?)?;
                }
                log(&report);
                Ok(())
            }
            Mode::Once => {
                let (report, _) = self.run_once(false).await?;
                log(&report);
                verdict(&report)
            }
            Mode::Daemon => daemon::run(self, stopping).await,
        }
    }
}

fn log(report: &Report) {
    tracing::info!(
        planned = report.planned,
        sent = report.sent,
        resent = report.resent,
        cancelled = report.cancelled,
        negative_corrections = report.negative_corrections,
        carried_rows = report.carried_rows,
        carried = ?report.carried,
        tenants_without_customer = report.tenants_without_customer,
        refused_windows = report.refused.len(),
        failed_tenants = report.failures.len(),
        oldest_unsynced_lag_secs = report.oldest_unsynced_lag_secs,
        "billing sync run finished"
    );
    for refused in &report.refused {
        tracing::warn!(
            tenant = refused.tenant_id,
            metric = refused.metric,
            window = refused.window_start,
            code = refused.code,
            "window refused by Stripe: fix the cause (e.g. the tenant's stripe_customers row); the next run bills it"
        );
    }
    for (tenant, errors) in &report.failures {
        tracing::error!(tenant, errors = ?errors, "rows did not reach Stripe; the next run retries them");
    }
}

/// A once-run's exit: an error while anything is left for the next run.
fn verdict(report: &Report) -> anyhow::Result<()> {
    if report.unauthorized {
        return Err(ConfigError("Stripe refused [billing] stripe_key (401/403)".to_owned()).into());
    }
    if !report.failures.is_empty() {
        anyhow::bail!("{} tenants have rows that did not reach Stripe", report.failures.len());
    }
    if !report.refused.is_empty() {
        anyhow::bail!("{} windows were refused by Stripe (listed above)", report.refused.len());
    }
    Ok(())
}
