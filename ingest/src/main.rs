use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tally_ingest::{Ingest, IngestConfig};

// Ingest allocates per event on every request thread; glibc's allocator is the bottleneck there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tally's HTTP ingest service.
#[derive(Debug, Parser)]
#[command(name = "tally-ingest", version)]
struct Cli {
    /// TOML config file; TALLY_<SECTION>__<KEY> environment variables override it.
    #[arg(long, env = "TALLY_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tally_kit::service::run("tally-ingest", cli.config.as_deref(), |config: IngestConfig, stopping| async move {
        Ingest::build(config, stopping).await?.run_until_stopped().await
    })
    .await
}
