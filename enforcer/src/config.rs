//! The enforcer's configuration: the shared connection sections, the tier defaults, and its own
//! `[enforcer]` section.

use std::net::SocketAddr;

use serde::Deserialize;
use tally_kit::auth::AuthConfig;
use tally_kit::config::{ClickHouseConfig, PostgresConfig, Secret, TelemetryConfig};
use tally_schemas::TierDefaults;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct EnforcerConfig {
    pub enforcer: EnforcerSection,
    pub postgres: PostgresConfig,
    /// Where the aggregator's usage state is read.
    pub clickhouse: ClickHouseConfig,
    pub tiers: TierDefaults,
    /// API keys and JWTs (`[auth]`, shared with the other services).
    pub auth: AuthConfig,
    pub telemetry: TelemetryConfig,
}

/// How callers are authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// API keys (`tally-admin api-key create`) and, where `[auth.jwt]` is set, the platform's JWTs.
    #[default]
    Keys,
    /// No authentication at all: every caller may do everything. Only when said explicitly.
    None,
}

/// Where rate-limit state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateStoreKind {
    /// In this process: fastest, but each replica limits on its own (N replicas admit N × the rate).
    #[default]
    Memory,
    /// In Redis (or Valkey, or a Redis Cluster): one limit across every replica.
    Redis,
}

/// `[enforcer.rate]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateStoreConfig {
    pub store: RateStoreKind,
    /// `redis://host:port/db` (or `rediss://`); with several, comma-separated, a Redis Cluster.
    pub redis_url: Secret,
    /// Prefix of every key the enforcer writes (one per tenant and quota).
    pub key_prefix: String,
    /// Bound on one check's round trip to Redis; past it the check follows `policy.rate`.
    pub redis_timeout_ms: u64,
}

impl Default for RateStoreConfig {
    fn default() -> Self {
        Self {
            store: RateStoreKind::Memory,
            redis_url: Secret::new("redis://127.0.0.1:6379"),
            key_prefix: "tally:rate:".to_owned(),
            redis_timeout_ms: 50,
        }
    }
}

/// What Envoy's rate limit service answers for a descriptor whose tenant is unknown or invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownTenantAnswer {
    /// OVER_LIMIT (Envoy answers 429), with the reason in `x-tally-reason`.
    #[default]
    Deny,
    /// OK: the gateway lets the request through to the service, which refuses an unknown tenant.
    Allow,
}

/// What a check answers when the data it needs is stale or its store does not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// Allow, and say so in the answer (`degraded`).
    Open,
    /// Deny with reason `unavailable`.
    Closed,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policies {
    pub rate: FailurePolicy,
    pub users: FailurePolicy,
    pub storage: FailurePolicy,
}

impl Default for Policies {
    fn default() -> Self {
        Self { rate: FailurePolicy::Open, users: FailurePolicy::Closed, storage: FailurePolicy::Closed }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnforcerSection {
    /// The check API and `/livez`, `/readyz`, `/metrics`.
    pub listen: SocketAddr,
    /// Envoy's rate limit service (RLS v3 gRPC); unset to serve none.
    pub grpc_listen: Option<SocketAddr>,
    /// `keys` (API keys and JWTs) or `none`.
    pub auth: AuthMode,
    pub rate: RateStoreConfig,
    /// RLS: the answer for a descriptor naming an unknown or invalid tenant.
    pub rls_unknown_tenant: UnknownTenantAnswer,
    /// How often current usage is read from ClickHouse.
    pub usage_refresh_ms: u64,
    /// Usage older than this is stale: user and storage checks follow their failure policy.
    pub usage_stale_after_ms: u64,
    /// A full reload of the tenant registry, besides the change notifications.
    pub registry_reload_ms: u64,
    /// The registry is stale when neither a reload nor the notification listener worked for this long.
    pub registry_stale_after_ms: u64,
    /// Bound on a reservation's PostgreSQL transaction, enforced by PostgreSQL itself
    /// (`lock_timeout`, `statement_timeout`, `idle_in_transaction_session_timeout`); past it the
    /// check follows its failure policy.
    pub store_timeout_ms: u64,
    /// A reservation not committed or released within this is dropped.
    pub reservation_ttl_secs: u64,
    /// A committed reservation keeps counting until usage reports it, at most this long.
    pub committed_ttl_secs: u64,
    /// How often expired reservations are purged and the gauges updated.
    pub housekeeping_ms: u64,
    pub policy: Policies,
    /// Where storage alerts are POSTed (JSON); empty: alerts show only in logs and metrics.
    pub alert_webhook: String,
    /// Most tenants with a `tally_enforcer_tenant_storage_percent{tenant}` series (those at or
    /// above the alert line, the most used first).
    pub alert_series_max: usize,
    /// Denials kept for `GET /v1/tenants/{id}/denials` (known tenants only, all together; oldest
    /// dropped). Each takes a fixed number of bytes, so the log's size is bounded by this.
    pub audit_capacity: usize,
    /// Largest request body accepted (413 past it).
    pub max_body_bytes: usize,
}

impl Default for EnforcerSection {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8082)),
            grpc_listen: Some(SocketAddr::from(([127, 0, 0, 1], 8083))),
            auth: AuthMode::Keys,
            rate: RateStoreConfig::default(),
            rls_unknown_tenant: UnknownTenantAnswer::Deny,
            usage_refresh_ms: 1_000,
            usage_stale_after_ms: 15_000,
            registry_reload_ms: 60_000,
            registry_stale_after_ms: 120_000,
            store_timeout_ms: 500,
            reservation_ttl_secs: 300,
            committed_ttl_secs: 3_600,
            housekeeping_ms: 5_000,
            policy: Policies::default(),
            alert_webhook: String::new(),
            alert_series_max: 100,
            audit_capacity: 100_000,
            max_body_bytes: 64 * 1024,
        }
    }
}

impl tally_kit::service::ServiceConfig for EnforcerConfig {
    fn telemetry(&self) -> &TelemetryConfig {
        &self.telemetry
    }
}
