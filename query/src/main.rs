use std::process::ExitCode;

use tally_query::{QueryConfig, QueryService};

#[tokio::main]
async fn main() -> ExitCode {
    tally_kit::service::main(
        "tally-query",
        "Tally's usage query API: usage per window in any time zone, as JSON or CSV",
        |config: QueryConfig, stopping| async move {
            QueryService::build(config, stopping).await?.run_until_stopped().await
        },
    )
    .await
}
