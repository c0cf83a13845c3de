//! `tally-admin`: what an operator runs against Tally's dependencies.
//!
//! * `setup`: creates the PostgreSQL database if missing, applies Tally's migrations (and, with
//!   `--platform-tables`, the platform tables' shape for local use), applies the ClickHouse DDL,
//!   and creates the Kafka topics. Idempotent.
//! * `check`: asks each dependency for an answer and reports which ones fail.
//! * `api-key create|revoke|list`: the emitters' API keys (stored hashed in `tally.api_keys`).

mod keys;
mod setup;

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde::Deserialize;
use tally_kit::config::{ClickHouseConfig, KafkaConfig, PostgresConfig, TelemetryConfig};
use tally_schemas::Topics;

#[derive(Debug, Parser)]
#[command(name = "tally-admin", version, about = "Set up and check Tally's dependencies")]
pub struct Cli {
    /// TOML config file; TALLY_<SECTION>__<KEY> environment variables override it.
    #[arg(long, global = true, env = "TALLY_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply migrations and DDL and create topics (safe to run again).
    Setup {
        /// Also create the platform's `tenant` and `stripe_customers` tables (local stack, tests).
        #[arg(long)]
        platform_tables: bool,
    },
    /// Check that Kafka, ClickHouse and PostgreSQL answer.
    Check,
    /// Create, revoke or list the API keys emitters authenticate with.
    #[command(subcommand, name = "api-key")]
    ApiKey(keys::KeyCommand),
}

/// The sections `tally-admin` reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct AdminConfig {
    pub kafka: KafkaConfig,
    pub clickhouse: ClickHouseConfig,
    pub postgres: PostgresConfig,
    pub topics: Topics,
    pub telemetry: TelemetryConfig,
}

/// Runs the command; the exit code is 0 on success, 1 when a step failed, 2 on bad config.
pub async fn run(cli: Cli) -> ExitCode {
    let env: HashMap<String, String> = std::env::vars().collect();
    let config: AdminConfig = match tally_kit::config::load(cli.config.as_deref(), &env) {
        Ok(config) => config,
        Err(error) => {
            let _ = writeln!(std::io::stderr(), "tally-admin: {error}");
            return ExitCode::from(2);
        }
    };
    tally_kit::telemetry::init(&TelemetryConfig {
        format: tally_kit::config::LogFormat::Text,
        filter: "warn".to_owned(),
    });
    let outcome = match cli.command {
        Command::Setup { platform_tables } => setup::setup(&config, platform_tables).await,
        Command::Check => setup::check(&config).await,
        Command::ApiKey(command) => keys::run(&config, command).await,
    };
    match outcome {
        Ok(report) => {
            let _ = write!(std::io::stdout(), "{report}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            let _ = writeln!(std::io::stderr(), "tally-admin: {error:#}");
            ExitCode::from(1)
        }
    }
}
