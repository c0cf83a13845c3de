use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tally_aggregator::{Aggregator, AggregatorConfig};

/// Tally's aggregator: exactly-once rollups of usage events from Kafka into ClickHouse.
#[derive(Debug, Parser)]
#[command(name = "tally-aggregator", version)]
struct Cli {
    /// TOML config file; TALLY_<SECTION>__<KEY> environment variables override it.
    #[arg(long, env = "TALLY_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tally_kit::service::run(
        "tally-aggregator",
        cli.config.as_deref(),
        |config: AggregatorConfig, stopping| async move {
            Aggregator::build(config, stopping).await?.run_until_stopped().await
        },
    )
    .await
}
