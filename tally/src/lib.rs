//! `tally <role>`: every Tally role from one binary (the container image's entrypoint), with the
//! same config format (`--config FILE`, `TALLY_<SECTION>__<KEY>`), and `tally dev`: every role in
//! one process, for a laptop or a small installation. The per-service binaries (`tally-ingest`, …)
//! stay: they are what the tests and the local stack start one by one, and each is this same
//! library call with one role.

pub mod dev;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tally_kit::service::{self, ConfigArgs};

#[derive(Debug, Parser)]
#[command(
    name = "tally",
    version,
    about = "Tally: usage metering and limits enforcement for multi-tenant SaaS platforms"
)]
pub struct Cli {
    #[command(subcommand)]
    pub role: Role,
}

#[derive(Debug, Subcommand)]
pub enum Role {
    #[command(about = tally_ingest::ABOUT)]
    Ingest(ConfigArgs),
    #[command(about = tally_aggregator::ABOUT)]
    Aggregator(ConfigArgs),
    #[command(about = tally_enforcer::ABOUT)]
    Enforcer(ConfigArgs),
    #[command(about = tally_query::ABOUT)]
    Query(ConfigArgs),
    #[command(about = tally_billing_sync::cli::ABOUT)]
    BillingSync(tally_billing_sync::cli::BillingArgs),
    #[command(about = tally_collector::cli::ABOUT)]
    Collector(tally_collector::cli::CollectorArgs),
    /// Set up and check Tally's dependencies, manage API keys (as `tally-admin`).
    Admin(tally_admin::Cli),
    /// Every role in one process: ingest, aggregator, enforcer, query, collector and billing-sync
    /// (each on its own configured port), sharing one config, one log and one shutdown.
    Dev(dev::DevArgs),
    /// GET an operations endpoint (e.g. http://127.0.0.1:8080/readyz) and exit 0 if it answers
    /// 2xx: a container health check that needs no curl in the image.
    Probe {
        /// The URL to ask.
        url: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 3)]
        timeout_secs: u64,
    },
}

/// Runs `cli`'s role until it ends or the process is asked to stop.
pub async fn run(cli: Cli) -> ExitCode {
    match cli.role {
        Role::Ingest(args) => service::run("tally ingest", args.config.as_deref(), tally_ingest::serve).await,
        Role::Aggregator(args) => {
            service::run("tally aggregator", args.config.as_deref(), tally_aggregator::serve).await
        }
        Role::Enforcer(args) => service::run("tally enforcer", args.config.as_deref(), tally_enforcer::serve).await,
        Role::Query(args) => service::run("tally query", args.config.as_deref(), tally_query::serve).await,
        Role::BillingSync(args) => tally_billing_sync::cli::run("tally billing-sync", args).await,
        Role::Collector(args) => tally_collector::cli::run("tally collector", args).await,
        Role::Admin(cli) => tally_admin::run(cli).await,
        Role::Dev(args) => dev::run(args).await,
        Role::Probe { url, timeout_secs } => probe(&url, timeout_secs).await,
    }
}

#[allow(clippy::print_stderr)] // a probe's answer is for the container runtime's log, not tracing
async fn probe(url: &str, timeout_secs: u64) -> ExitCode {
    let client = match reqwest::Client::builder().timeout(std::time::Duration::from_secs(timeout_secs)).build() {
        Ok(client) => client,
        Err(error) => {
            eprintln!("tally probe: {error}");
            return ExitCode::FAILURE;
        }
    };
    match client.get(url).send().await {
        Ok(answer) if answer.status().is_success() => ExitCode::SUCCESS,
        Ok(answer) => {
            eprintln!("tally probe: {url} answered {}", answer.status());
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("tally probe: {url}: {error}");
            ExitCode::FAILURE
        }
    }
}
