//! Glue shared by Tally's services, so that none of them copies it:
//!
//! * [`config`]: layered configuration (defaults → TOML file → `TALLY_SECTION__KEY` environment)
//!   and the connection sections every service uses;
//! * [`telemetry`]: structured logs (JSON or text) through `tracing`;
//! * [`shutdown`]: SIGINT/SIGTERM as a cancellation token;
//! * [`ops`]: the operations endpoints `/livez`, `/readyz` and `/metrics`;
//! * [`kafka`], [`clickhouse`], [`postgres`]: clients, health checks and schema setup, and
//!   [`topology`] and [`shards`], a ClickHouse cluster's nodes and their clients;
//! * [`producer`]: the idempotent, acknowledged Kafka producer, and [`acks`], its acknowledgements;
//! * [`service`]: the shared body of every binary's `main`;
//! * [`tenants`]: the platform's tenant registry behind a short-lived cache ([`cache`]).

pub mod acks;
pub mod auth;
pub mod cache;
pub mod clickhouse;
pub mod config;
pub mod kafka;
pub mod ops;
pub mod postgres;
pub mod producer;
pub mod rollups;
pub mod service;
pub mod shards;
pub mod shutdown;
pub mod telemetry;
pub mod tenants;
pub mod topology;

pub use config::{ConfigError, Secret};
