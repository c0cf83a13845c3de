//! The body every service binary's `main` shares: load the layered config, start logging, turn
//! SIGINT/SIGTERM into a cancellation token, run, and map the outcome to an exit code.

use std::fmt::Display;
use std::future::Future;
use std::path::Path;
use std::process::ExitCode;

use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::config::TelemetryConfig;

/// A service's configuration names its logging section.
pub trait ServiceConfig: DeserializeOwned {
    fn telemetry(&self) -> &TelemetryConfig;
}

/// Exit code for a configuration that does not load (the process could not start).
pub const EXIT_CONFIG: u8 = 2;

/// `--config FILE` (or `TALLY_CONFIG`): the one flag every service's command line has.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigArgs {
    /// TOML config file; TALLY_<SECTION>__<KEY> environment variables override it.
    #[arg(long, env = "TALLY_CONFIG", value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
}

/// The whole `main` of a service whose only flag is `--config FILE` (or `TALLY_CONFIG`): parses
/// the command line, then [`run`]s.
pub async fn main<C, F, Fut, E>(name: &'static str, about: &'static str, service: F) -> ExitCode
where
    C: ServiceConfig,
    F: FnOnce(C, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    use clap::{Args, FromArgMatches};
    let command = clap::Command::new(name).about(about).version(env!("CARGO_PKG_VERSION"));
    let matches = ConfigArgs::augment_args(command).get_matches();
    let args = ConfigArgs::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    run(name, args.config.as_deref(), service).await
}

/// Loads `C` from `config_file` and the environment, then runs `service` until it returns.
pub async fn run<C, F, Fut, E>(name: &str, config_file: Option<&Path>, service: F) -> ExitCode
where
    C: ServiceConfig,
    F: FnOnce(C, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    let config: C = match crate::config::load_from_process(config_file) {
        Ok(config) => config,
        Err(error) => {
            // Logging is set up from the very config that failed to load.
            #[allow(clippy::print_stderr)]
            {
                eprintln!("{name}: {error}");
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    crate::telemetry::init(config.telemetry());
    let stopping = crate::shutdown::on_signal();
    match service(config, stopping).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "{name} failed");
            ExitCode::FAILURE
        }
    }
}
