use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tally_enforcer::{Enforcer, EnforcerConfig};

/// Tally's enforcer: user caps, storage caps and per-tenant rate limits.
#[derive(Debug, Parser)]
#[command(name = "tally-enforcer", version)]
struct Cli {
    /// TOML config file; TALLY_<SECTION>__<KEY> environment variables override it.
    #[arg(long, env = "TALLY_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tally_kit::service::run("tally-enforcer", cli.config.as_deref(), |config: EnforcerConfig, stopping| async move {
        Enforcer::build(config, stopping).await?.run_until_stopped().await
    })
    .await
}
