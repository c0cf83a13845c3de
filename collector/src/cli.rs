//! The collector's command line, shared by `tally-collector` and `tally collector`.
//! Exit codes (`--once`): 0 every tenant measured, 1 some were not, 2 bad config.

use std::process::ExitCode;

use crate::{Collector, CollectorConfig, Mode};

/// What the service does, for `--help`.
pub const ABOUT: &str = "Tally's usage collector: each tenant's storage bytes and active users, measured in the \
     platform's tenant databases and emitted as gauge events.";

#[derive(Debug, Clone, clap::Args)]
pub struct CollectorArgs {
    #[command(flatten)]
    pub config: tally_kit::service::ConfigArgs,
    /// One sweep, then exit (for cron); without it, a sweep every `[collector] interval_secs`.
    #[arg(long)]
    pub once: bool,
}

/// Runs the collector as `args` say, with the process's config, logging and signals.
pub async fn run(name: &str, args: CollectorArgs) -> ExitCode {
    let mode = if args.once { Mode::Once } else { Mode::Daemon };
    tally_kit::service::run(name, args.config.config.as_deref(), |config: CollectorConfig, stopping| async move {
        Collector::new(config)?.run(mode, stopping).await
    })
    .await
}
