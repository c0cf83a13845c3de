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
    let config: IngestConfig = match tally_kit::config::load_from_process(cli.config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            // Logging is set up from the very config that failed to load.
            #[allow(clippy::print_stderr)]
            {
                eprintln!("tally-ingest: {error}");
            }
            return ExitCode::from(2);
        }
    };
    tally_kit::telemetry::init(&config.telemetry);
    let stopping = tally_kit::shutdown::on_signal();
    let outcome = async { Ingest::build(config, stopping).await?.run_until_stopped().await }.await;
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "tally-ingest failed");
            ExitCode::FAILURE
        }
    }
}
