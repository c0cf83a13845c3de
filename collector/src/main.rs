use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tally_collector::{Collector, CollectorConfig, Mode};

/// Tally's usage collector: each tenant's storage bytes and active users, measured in the
/// platform's tenant databases and emitted as gauge events.
/// Exit codes (`--once`): 0 every tenant measured, 1 some were not, 2 bad config.
#[derive(Debug, Parser)]
#[command(name = "tally-collector", version)]
struct Cli {
    /// TOML config file; TALLY_<SECTION>__<KEY> environment variables override it.
    #[arg(long, env = "TALLY_CONFIG")]
    config: Option<PathBuf>,
    /// One sweep, then exit (for cron); without it, a sweep every `[collector] interval_secs`.
    #[arg(long)]
    once: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let mode = if cli.once { Mode::Once } else { Mode::Daemon };
    tally_kit::service::run("tally-collector", cli.config.as_deref(), |config: CollectorConfig, stopping| async move {
        Collector::new(config)?.run(mode, stopping).await
    })
    .await
}
