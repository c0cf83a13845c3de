//! billing-sync's command line, shared by `tally-billing-sync` and `tally billing-sync`.
//! Exit codes: 0 every event reached Stripe, 1 some did not (the next run retries them), 2 bad
//! config.

use std::process::ExitCode;

use crate::{BillingConfig, BillingSync, Mode};

/// What the service does, for `--help`.
pub const ABOUT: &str = "Tally's billing-sync: each window's usage totals to the tenants' Stripe customers.";

#[derive(Debug, Clone, clap::Args)]
pub struct BillingArgs {
    #[command(flatten)]
    pub config: tally_kit::service::ConfigArgs,
    /// Run once and exit (for cron); without it, run every `[billing] interval_secs`.
    #[arg(long)]
    pub once: bool,
    /// Print the meter events one run would send (JSON lines) and send nothing.
    #[arg(long, conflicts_with = "once")]
    pub dry_run: bool,
    /// Compare Tally's totals with Stripe's meter summaries over the last DAYS days and print
    /// every difference (exit 1 if any), e.g. before invoices close.
    #[arg(long, value_name = "DAYS", conflicts_with_all = ["once", "dry_run"])]
    pub parity: Option<i64>,
}

impl BillingArgs {
    pub fn mode(&self) -> Mode {
        match (self.parity, self.once, self.dry_run) {
            (Some(days), _, _) => Mode::Parity(days),
            (None, _, true) => Mode::DryRun,
            (None, true, false) => Mode::Once,
            (None, false, false) => Mode::Daemon,
        }
    }
}

/// Runs billing-sync as `args` say, with the process's config, logging and signals.
pub async fn run(name: &str, args: BillingArgs) -> ExitCode {
    let mode = args.mode();
    tally_kit::service::run(name, args.config.config.as_deref(), |config: BillingConfig, stopping| async move {
        BillingSync::new(config)?.run(mode, stopping).await
    })
    .await
}
