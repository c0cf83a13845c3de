use std::process::ExitCode;

// Decoding a batch allocates per event (strings, attributes); glibc's allocator is a bottleneck
// there. The workspace's `override` feature has mimalloc serve librdkafka's C allocations too.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    tally_kit::service::main("tally-aggregator", tally_aggregator::ABOUT, tally_aggregator::serve).await
}
