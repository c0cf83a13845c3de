use std::process::ExitCode;

use tally_aggregator::{Aggregator, AggregatorConfig};

// Decoding a batch allocates per event (strings, attributes); glibc's allocator is a bottleneck
// there. The workspace's `override` feature has mimalloc serve librdkafka's C allocations too.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    tally_kit::service::main(
        "tally-aggregator",
        "Tally's aggregator: exactly-once rollups of usage events from Kafka into ClickHouse.",
        |config: AggregatorConfig, stopping| async move {
            Aggregator::build(config, stopping).await?.run_until_stopped().await
        },
    )
    .await
}
