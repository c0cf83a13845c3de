use std::process::ExitCode;

use clap::Parser;
use tally_collector::cli::{self, CollectorArgs};

#[derive(Debug, Parser)]
#[command(name = "tally-collector", version, about = cli::ABOUT)]
struct Cli {
    #[command(flatten)]
    args: CollectorArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    cli::run("tally-collector", Cli::parse().args).await
}
