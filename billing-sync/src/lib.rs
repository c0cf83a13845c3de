//! Pushes each period's usage totals to the tenants' Stripe customers.
//!
//! The crate is reserved in the workspace; the service itself is not built yet (see the issue
//! tracker), so it has no binary and does not run in the local pipeline.
