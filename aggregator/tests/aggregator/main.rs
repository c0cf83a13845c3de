//! Aggregator integration tests against the local stack's broker and ClickHouse.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod chaos;
mod cluster;
mod exactly_once;
mod fencing;
mod helpers;
mod oracle;
mod settings;
mod stalls;
