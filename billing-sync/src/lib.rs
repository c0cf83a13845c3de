//! Tally's billing-sync: pushes each billing window's usage totals to the tenants' Stripe
//! customers as meter events, never twice and never missing one.
//!
//! A run reads the settled windows' totals from the ClickHouse rollups, compares them with the
//! ledger of what Stripe acknowledged (PostgreSQL, `tally.billing_ledger`), and sends only the
//! difference, as meter events whose `identifier` and `Idempotency-Key` are derived from
//! (tenant, metric, window, sequence). The ledger row is written before sending and marked
//! acknowledged after, so a crash at any point is finished by the next run with the same
//! identifier; late events become one more event with the missing difference.

pub mod config;
pub mod ledger;
pub mod stripe;
pub mod sync;

use std::io::Write as _;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use tokio_util::sync::CancellationToken;

pub use crate::config::BillingConfig;
use crate::stripe::StripeClient;
use crate::sync::Report;

/// How the process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One run, then exit (cron).
    Once,
    /// Print what one run would send, send nothing.
    DryRun,
    /// Run every `[billing] interval_secs` until stopped.
    Daemon,
    /// Print every difference between Tally's totals and Stripe's summaries over the last N days.
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

    /// One run; with `dry_run` the planned events are returned and nothing is sent.
    pub async fn run_once(&self, dry_run: bool) -> anyhow::Result<(Report, Vec<sync::Planned>)> {
        let mut report = Report::default();
        let planned = sync::plan(&self.pool, &self.clickhouse, &self.config.billing, Utc::now(), &mut report)
            .await
            .context("planning the run (PostgreSQL ledger and customers, ClickHouse totals)")?;
        if dry_run {
            return Ok((report, planned));
        }
        sync::send(&self.pool, &self.stripe, planned, self.config.billing.concurrency, &mut report).await;
        Ok((report, Vec::new()))
    }

    /// The parity report over the last `days` days of settled windows: every (customer, meter,
    /// window) where Stripe's summary differs from Tally's total.
    pub async fn parity(&self, days: i64) -> anyhow::Result<Vec<sync::Difference>> {
        let (_, end) = sync::range(&self.config.billing, Utc::now());
        let start = end - days.max(1) * 86_400;
        sync::parity(&self.pool, &self.clickhouse, &self.stripe, &self.config.billing, (start, end)).await
    }

    /// Runs in `mode`; the error says whether any tenant's events did not reach Stripe.
    pub async fn run(&self, mode: Mode, stopping: CancellationToken) -> anyhow::Result<()> {
        if let Mode::Parity(days) = mode {
            let differences = self.parity(days).await?;
            let mut out = std::io::stdout().lock();
            for difference in &differences {
                writeln!(out, "{}", serde_json::to_string(difference)?)?;
            }
            tracing::info!(differences = differences.len(), days, "parity report");
            if differences.is_empty() {
                return Ok(());
            }
            anyhow::bail!("{} windows differ between Tally and Stripe", differences.len());
        }
        loop {
            let (report, planned) = self.run_once(mode == Mode::DryRun).await?;
            if mode == Mode::DryRun {
                let mut out = std::io::stdout().lock();
                for item in &planned {
                    writeln!(out, "{}", serde_json::to_string(item)?)?;
                }
            }
            tracing::info!(
                planned = report.planned,
                sent = report.sent,
                resent = report.resent,
                tenants_without_customer = report.tenants_without_customer,
                over_billed_windows = report.over_billed_windows,
                failed_tenants = report.failures.len(),
                oldest_unsynced_lag_secs = report.oldest_unsynced_lag_secs,
                "billing sync run finished"
            );
            for (tenant, errors) in &report.failures {
                tracing::error!(tenant, errors = ?errors, "meter events did not reach Stripe; the next run retries them");
            }
            if mode != Mode::Daemon {
                if report.failures.is_empty() {
                    return Ok(());
                }
                anyhow::bail!("{} tenants have meter events that did not reach Stripe", report.failures.len());
            }
            tokio::select! {
                () = stopping.cancelled() => return Ok(()),
                () = tokio::time::sleep(Duration::from_secs(self.config.billing.interval_secs)) => {}
            }
        }
    }
}
