//! HTTP ingest and the Rust emitter client: validated, tenant-keyed usage events to Kafka.
//!
//! The crate is reserved in the workspace; the service itself is not built yet (see the issue
//! tracker), so it has no binary and does not run in the local pipeline.
