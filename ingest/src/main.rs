use std::process::ExitCode;

use tally_ingest::{Ingest, IngestConfig};

// Ingest allocates per event on every request thread, and librdkafka copies every message: with
// the workspace's `override` feature mimalloc serves both, glibc's allocator neither.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    tally_kit::service::main("tally-ingest", "Tally's HTTP ingest service.", |config: IngestConfig, stopping| async move {
        Ingest::build(config, stopping).await?.run_until_stopped().await
    })
    .await
}
