use std::process::ExitCode;

use tally_enforcer::{Enforcer, EnforcerConfig};

#[tokio::main]
async fn main() -> ExitCode {
    tally_kit::service::main("tally-enforcer", "Tally's enforcer: user caps, storage caps and per-tenant rate limits.", |config: EnforcerConfig, stopping| async move {
        Enforcer::build(config, stopping).await?.run_until_stopped().await
    })
    .await
}
