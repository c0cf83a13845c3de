use std::process::ExitCode;

use tally_ingest::{Ingest, IngestConfig};

// Ingest allocates per event on every request thread; glibc's allocator is the bottleneck there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    tally_kit::service::main("tally-ingest", "Tally's HTTP ingest service.", |config: IngestConfig, stopping| async move {
        Ingest::build(config, stopping).await?.run_until_stopped().await
    })
    .await
}
