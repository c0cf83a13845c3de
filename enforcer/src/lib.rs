//! Tally's enforcer: answers "may tenant T make this call / add a user / store N more bytes?".
//!
//! * Limits come from the platform database (tier defaults, per-tenant overrides, status), held
//!   in memory and kept current by `NOTIFY` (a change applies within a second) and reloads.
//! * Rate limits are GCRA: in memory with `governor` (one keyed limiter per distinct quota), or in
//!   Redis shared by every replica (one Lua script per check).
//! * User and storage caps are reserve → commit / release in PostgreSQL, serialized per tenant
//!   with an advisory lock and decided in groups, against the aggregator's current usage
//!   (ClickHouse), so no number of concurrent requests or replicas overshoots a cap.
//! * Stale data or a failed store follows a per-check fail-open / fail-closed policy.
//! * Every check endpoint is authenticated and tenant-scoped ([`access`]).

pub mod access;
pub mod api;
pub mod audit;
pub mod checks;
pub mod config;
pub mod decision;
pub mod holds;
pub mod metrics;
pub mod rate;
pub mod rate_redis;
pub mod registry;
pub mod reservations;
pub mod rls;
pub mod tasks;
pub mod usage;
pub mod views;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use tally_kit::auth::Authenticator;
use tally_kit::ops::{HttpServer, Ops};
use tokio_util::sync::CancellationToken;

use crate::access::Access;
use crate::api::ApiState;
use crate::checks::Checks;
pub use crate::config::EnforcerConfig;
use crate::config::{AuthMode, RateStoreKind};
use crate::metrics::EnforcerMetrics;
use crate::rate_redis::RedisRate;
use crate::registry::Registry;

/// The metric names whose latest values are the user count and the stored bytes.
pub const USERS_METRIC: &str = "active_users";
pub const STORAGE_METRIC: &str = "storage_bytes";

/// A loaded, bound, ready-to-run enforcer.
#[derive(Debug)]
pub struct Enforcer {
    server: HttpServer,
    grpc: Option<tokio::net::TcpListener>,
    router: Router,
    checks: Arc<Checks>,
    access: Arc<Access>,
    clickhouse: clickhouse::Client,
    stopping: CancellationToken,
}

impl Enforcer {
    /// Loads the tenant registry, binds the listener (port 0 picks one).
    pub async fn build(config: EnforcerConfig, stopping: CancellationToken) -> anyhow::Result<Self> {
        let ops = Ops::new("enforcer", stopping.clone());
        let metrics = EnforcerMetrics::register(ops.registry()).context("registering metrics")?;
        let pool = tally_kit::postgres::pool(&config.postgres)?;
        let registry = Arc::new(Registry::new(config.tiers));
        let loaded = registry.load_all(&pool).await.context("loading the tenant registry from PostgreSQL")?;
        tracing::info!(tenants = loaded, "tenant registry loaded");
        let section = config.enforcer.clone();
        let authenticator = match section.auth {
            AuthMode::Keys => {
                let authenticator = Authenticator::new(pool.clone(), &config.auth).map_err(anyhow::Error::msg)?;
                tracing::info!(jwt = config.auth.jwt.is_enabled(), "callers authenticate with API keys");
                Some(authenticator)
            }
            AuthMode::None => {
                tracing::warn!("[enforcer] auth = \"none\": NO AUTHENTICATION, every caller may act for every tenant");
                None
            }
        };
        let shared_rate = match section.rate.store {
            RateStoreKind::Memory => {
                tracing::info!("rate limits in memory: each replica limits on its own");
                None
            }
            RateStoreKind::Redis => {
                let redis = RedisRate::connect(&section.rate).await.map_err(anyhow::Error::msg)?;
                // Not a readiness check: with Redis away every replica would leave the load
                // balancer, while `policy.rate` says what rate checks answer meanwhile.
                match redis.ping().await {
                    Ok(()) => tracing::info!("rate limits in Redis, shared by every replica"),
                    Err(error) => {
                        tracing::warn!(error, "Redis does not answer yet: rate checks follow policy.rate until it does")
                    }
                }
                Some(redis)
            }
        };
        let access = Arc::new(Access::new(authenticator, metrics.clone()));
        let checks = Arc::new(Checks::new(registry, pool.clone(), shared_rate, section.clone(), metrics));
        let standing = checks.alerts.load(&pool).await.context("reading standing storage alerts")?;
        tracing::debug!(standing, "standing storage alerts loaded");
        let clickhouse = tally_kit::clickhouse::client(&config.clickhouse);
        ops.check_clickhouse(clickhouse.clone());
        ops.check_postgres(pool);
        let router = Router::new()
            .route("/v1/check", post(api::check_all))
            .route("/v1/check/rate", post(api::check_rate))
            .route("/v1/check/users", post(api::check_users))
            .route("/v1/check/storage", post(api::check_storage))
            .route("/v1/reservations/{id}/commit", post(api::commit))
            .route("/v1/reservations/{id}/release", post(api::release))
            .route("/v1/tenants/{id}/limits", get(views::tenant_limits))
            .route("/v1/tenants/{id}/denials", get(views::tenant_denials))
            .layer(axum::middleware::from_fn_with_state(Arc::clone(&access), access::authenticate))
            .layer(DefaultBodyLimit::max(section.max_body_bytes))
            .with_state(Arc::new(ApiState { checks: Arc::clone(&checks), access: Arc::clone(&access) }))
            .merge(ops.router());
        let server = HttpServer::bind(section.listen).await?;
        let grpc = match section.grpc_listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the RLS gRPC listener on {addr} ([enforcer] grpc_listen)"))?,
            ),
            None => None,
        };
        Ok(Self { server, grpc, router, checks, access, clickhouse, stopping })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Where Envoy's rate limit service (gRPC) listens, if it is served.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc.as_ref().and_then(|listener| listener.local_addr().ok())
    }

    /// The checks, for in-process use (the HTTP API calls the same).
    pub fn checks(&self) -> Arc<Checks> {
        Arc::clone(&self.checks)
    }

    /// Serves and keeps registry and usage current until the stopping token is cancelled.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Self { server, grpc, router, checks, access, clickhouse, stopping } = self;
        tracing::info!(addr = %server.local_addr(), "enforcer listening");
        let reload = Duration::from_millis(checks.settings.registry_reload_ms);
        let background = [
            tokio::spawn(Arc::clone(&checks.registry).keep_current(checks.pool.clone(), reload, stopping.clone())),
            tokio::spawn(tasks::refresh_usage(
                Arc::clone(&checks),
                clickhouse,
                reqwest::Client::new(),
                stopping.clone(),
            )),
            tokio::spawn(tasks::housekeeping(Arc::clone(&checks), stopping.clone())),
        ];
        let rls = grpc.map(|listener| {
            tracing::info!(addr = ?listener.local_addr().ok(), "Envoy rate limit service (gRPC) listening");
            let service = rls::RateLimitServer::new(Arc::clone(&checks), access);
            let stopping = stopping.clone();
            tokio::spawn(async move {
                let incoming = tonic::transport::server::TcpIncoming::from(listener);
                tonic::transport::Server::builder()
                    .serve_with_incoming_shutdown(service, incoming, stopping.cancelled_owned())
                    .await
            })
        });
        server.serve(router, stopping).await.context("serving HTTP")?;
        if let Some(rls) = rls {
            rls.await.context("the RLS task")?.context("serving RLS gRPC")?;
        }
        for task in background {
            task.abort();
        }
        tracing::info!("enforcer stopped");
        Ok(())
    }
}

/// What the service does, for `--help`.
pub const ABOUT: &str = "Tally's enforcer: user caps, storage caps and per-tenant rate limits.";

/// Builds and runs the service until `stopping` is cancelled (what `tally-*` and `tally <role>`
/// run).
pub async fn serve(config: EnforcerConfig, stopping: CancellationToken) -> anyhow::Result<()> {
    Enforcer::build(config, stopping).await?.run_until_stopped().await
}
