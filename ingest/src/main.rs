use std::process::ExitCode;

// Ingest allocates per event on every request thread, and librdkafka copies every message: with
// the workspace's `override` feature mimalloc serves both, glibc's allocator neither.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    tally_kit::service::main("tally-ingest", tally_ingest::ABOUT, tally_ingest::serve).await
}
