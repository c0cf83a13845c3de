use std::process::ExitCode;

use clap::Parser;

// Ingest and the aggregator allocate per event, and librdkafka copies every message: with the
// workspace's `override` feature mimalloc serves both, glibc's allocator neither.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    tally::run(tally::Cli::parse()).await
}
