//! `tally dev`: every role in one process. Each role reads its own sections of the one config
//! (file and environment) and listens on its own configured port, exactly as it would alone; the
//! process has one log, one signal handler and one shutdown: a role that fails stops the others,
//! and the process exits 1 naming it.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use tally_kit::config::{ConfigError, TelemetryConfig};
use tally_kit::service::{ConfigArgs, EXIT_CONFIG};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The roles `tally dev` runs, in start order.
pub const ROLES: [&str; 6] = ["ingest", "aggregator", "enforcer", "query", "collector", "billing-sync"];

#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Leave a role out (repeat for more), e.g. `--skip billing-sync` without a Stripe key.
    #[arg(long, value_name = "ROLE", value_parser = clap::builder::PossibleValuesParser::new(ROLES))]
    pub skip: Vec<String>,
}

/// The telemetry section alone, to start logging once for every role.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct Telemetry {
    telemetry: TelemetryConfig,
}

type RoleFuture = std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// Loads one role's config (the sections it reads) and returns it ready to run.
fn prepare(role: &str, file: Option<&Path>, stopping: CancellationToken) -> Result<RoleFuture, ConfigError> {
    use tally_kit::config::load_from_process as load;
    Ok(match role {
        "ingest" => Box::pin(tally_ingest::serve(load(file)?, stopping)),
        "aggregator" => Box::pin(tally_aggregator::serve(load(file)?, stopping)),
        "enforcer" => Box::pin(tally_enforcer::serve(load(file)?, stopping)),
        "query" => Box::pin(tally_query::serve(load(file)?, stopping)),
        "collector" => {
            let config = load(file)?;
            Box::pin(async move {
                tally_collector::Collector::new(config)?.run(tally_collector::Mode::Daemon, stopping).await
            })
        }
        "billing-sync" => {
            let config = load(file)?;
            Box::pin(async move {
                tally_billing_sync::BillingSync::new(config)?.run(tally_billing_sync::Mode::Daemon, stopping).await
            })
        }
        other => return Err(ConfigError::Invalid(format!("no role {other:?}; the roles are {}", ROLES.join(", ")))),
    })
}

/// Runs every role not skipped until a signal, or until one of them fails.
pub async fn run(args: DevArgs) -> ExitCode {
    let file = args.config.config.as_deref();
    let roles: Vec<&'static str> = ROLES.into_iter().filter(|role| !args.skip.iter().any(|s| s == role)).collect();
    let stopping = CancellationToken::new();
    let mut prepared = Vec::new();
    let loaded =
        tally_kit::config::load_from_process::<Telemetry>(file).map_err(|e| ("telemetry", e)).and_then(|telemetry| {
            for role in &roles {
                let future = prepare(role, file, stopping.child_token()).map_err(|e| (*role, e))?;
                prepared.push((*role, future));
            }
            Ok(telemetry)
        });
    match loaded {
        Ok(telemetry) => tally_kit::telemetry::init(&telemetry.telemetry),
        Err((part, error)) => {
            // Logging is set up from the very config that failed to load.
            #[allow(clippy::print_stderr)]
            {
                eprintln!("tally dev: {part}: {error}");
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    }
    let signal = tally_kit::shutdown::on_signal();
    let mut running = JoinSet::new();
    for (role, future) in prepared {
        running.spawn(async move { (role, future.await.with_context(|| format!("{role} failed"))) });
    }
    tracing::info!(roles = ?roles, "tally dev: every role running in one process");
    let mut failed = false;
    loop {
        tokio::select! {
            () = signal.cancelled(), if !stopping.is_cancelled() => {
                tracing::info!("tally dev: stopping every role");
                stopping.cancel();
            }
            ended = running.join_next() => match ended {
                None => break,
                Some(Ok((role, Ok(())))) => {
                    tracing::info!(role, "tally dev: role stopped");
                    stopping.cancel();
                }
                Some(Ok((role, Err(error)))) => {
                    tracing::error!(role, error = format!("{error:#}"), "tally dev: a role failed; stopping the others");
                    failed = true;
                    stopping.cancel();
                }
                Some(Err(panicked)) => {
                    tracing::error!(error = %panicked, "tally dev: a role panicked; stopping the others");
                    failed = true;
                    stopping.cancel();
                }
            },
        }
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
