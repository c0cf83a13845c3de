use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    tally_kit::service::main("tally-query", tally_query::ABOUT, tally_query::serve).await
}
