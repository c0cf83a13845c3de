use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    tally_kit::service::main("tally-enforcer", tally_enforcer::ABOUT, tally_enforcer::serve).await
}
