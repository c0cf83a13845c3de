//! The enforcer against real PostgreSQL (the platform registry, reservations) and the
//! aggregator's real usage tables in ClickHouse.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod abuse;
mod access;
mod caps;
mod helpers;
mod limits;
mod processes;
mod rls;
mod shared_rate;
