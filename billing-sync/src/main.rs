use std::process::ExitCode;

use clap::Parser;
use tally_billing_sync::cli::{self, BillingArgs};

#[derive(Debug, Parser)]
#[command(name = "tally-billing-sync", version, about = cli::ABOUT)]
struct Cli {
    #[command(flatten)]
    args: BillingArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    cli::run("tally-billing-sync", Cli::parse().args).await
}
