use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tally_stripe_fake::{Fake, keep_saved, router};

/// A faithful fake of the Stripe API endpoints Tally calls, for tests and the local stack.
#[derive(Debug, Parser)]
#[command(name = "tally-stripe-fake", version)]
struct Cli {
    #[arg(long, env = "TALLY_STRIPE_FAKE_LISTEN", default_value = "127.0.0.1:12111")]
    listen: SocketAddr,
    /// Keep the state in this JSON file (saved every second and on shutdown).
    #[arg(long, env = "TALLY_STRIPE_FAKE_STATE")]
    state_file: Option<PathBuf>,
    /// Requests per second before 429 `rate_limit` (0: no limit; Stripe's test mode allows 25).
    #[arg(long, env = "TALLY_STRIPE_FAKE_RATE_LIMIT", default_value_t = 0)]
    rate_limit_per_second: u32,
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let stopping = tally_kit::shutdown::on_signal();
    let fake = Arc::new(match &cli.state_file {
        Some(path) => Fake::load(path, cli.rate_limit_per_second)?,
        None => Fake::new(cli.rate_limit_per_second),
    });
    let saver = cli.state_file.clone().map(|path| tokio::spawn(keep_saved(Arc::clone(&fake), path, stopping.clone())));
    let listener =
        tokio::net::TcpListener::bind(cli.listen).await.with_context(|| format!("binding {}", cli.listen))?;
    tracing::info!(addr = %cli.listen, "stripe fake listening");
    axum::serve(listener, router(fake)).with_graceful_shutdown(stopping.cancelled_owned()).await?;
    if let Some(saver) = saver {
        saver.await.context("the state saver")?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tally_kit::telemetry::init(&tally_kit::config::TelemetryConfig::default());
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "tally-stripe-fake failed");
            ExitCode::FAILURE
        }
    }
}
