//! Ingest against the real broker and PostgreSQL: one test binary, modules by concern.

#![allow(clippy::unwrap_used)]

mod api;
mod broker_down;
mod client;
mod conformance;
mod helpers;
