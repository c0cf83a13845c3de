use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tally_billing_sync::{BillingConfig, BillingSync, Mode};

/// Tally's billing-sync: each window's usage totals to the tenants' Stripe customers.
/// Exit codes: 0 every event reached Stripe, 1 some did not (the next run retries them), 2 bad config.
#[derive(Debug, Parser)]
#[command(name = "tally-billing-sync", version)]
struct Cli {
    /// TOML config file; TALLY_<SECTION>__<KEY> environment variables override it.
    #[arg(long, env = "TALLY_CONFIG")]
    config: Option<PathBuf>,
    /// Run once and exit (for cron); without it, run every `[billing] interval_secs`.
    #[arg(long)]
    once: bool,
    /// Print the meter events one run would send (JSON lines) and send nothing.
    #[arg(long, conflicts_with = "once")]
    dry_run: bool,
    /// Compare Tally's totals with Stripe's meter summaries over the last DAYS days and print
    /// every difference (exit 1 if any), e.g. before invoices close.
    #[arg(long, value_name = "DAYS", conflicts_with_all = ["once", "dry_run"])]
    parity: Option<i64>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let mode = match (cli.parity, cli.once, cli.dry_run) {
        (Some(days), _, _) => Mode::Parity(days),
        (None, _, true) => Mode::DryRun,
        (None, true, false) => Mode::Once,
        (None, false, false) => Mode::Daemon,
    };
    tally_kit::service::run("tally-billing-sync", cli.config.as_deref(), |config: BillingConfig, stopping| async move {
        BillingSync::new(config)?.run(mode, stopping).await
    })
    .await
}
