//! Tally's usage query service: `GET`/`POST /v1/usage` answers usage per window (minute, hour,
//! day, month or one total) in any IANA time zone, per tenant, metric and event attribute, as JSON
//! or CSV, exactly, from the rollups (or the raw events when grouping or filtering by attribute).
//! See `query/openapi.yaml` (served at `/openapi.yaml`) and the README's "Query" section.

pub mod api;
pub mod config;
pub mod console;
pub mod fill;
pub mod metrics;
pub mod render;
pub mod request;
pub mod sql;
pub mod stream;
pub mod tenants;
pub mod windows;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::header;
use axum::routing::get;
use tally_kit::auth::Authenticator;
use tally_kit::ops::{HttpServer, Ops};
use tokio_util::sync::CancellationToken;

pub use crate::config::QueryConfig;
use crate::metrics::QueryMetrics;

/// The OpenAPI document of the API.
pub const OPENAPI: &str = include_str!("../openapi.yaml");

/// A bound, ready query service.
#[derive(Debug)]
pub struct QueryService {
    server: HttpServer,
    router: Router,
    stopping: CancellationToken,
}

impl QueryService {
    pub async fn build(config: QueryConfig, stopping: CancellationToken) -> anyhow::Result<Self> {
        let ops = Ops::new("query", stopping.clone());
        let metrics = QueryMetrics::register(ops.registry()).context("registering metrics")?;
        let pool = tally_kit::postgres::pool(&config.postgres).context("[postgres] url")?;
        let authenticator = Authenticator::new(pool.clone(), &config.auth).map_err(anyhow::Error::msg)?;
        let clickhouse = tally_kit::clickhouse::client(&config.clickhouse);
        ops.check_clickhouse(clickhouse.clone());
        ops.check_postgres(pool.clone());
        let enforcer = config.query.enforcer_url.as_deref().map(tenants::EnforcerLink::new).transpose()?;
        let service = Arc::new(api::Service {
            clickhouse,
            registry: pool,
            enforcer,
            authenticator,
            catalogue: config.metrics,
            bounds: config.query.clone(),
            metrics,
        });
        let router = Router::new()
            .route("/v1/usage", get(api::get_usage).post(api::post_usage))
            .route("/v1/metrics", get(api::metrics_catalogue))
            .route("/v1/tenants", get(tenants::list_tenants))
            .route("/v1/tenants/{id}/limits", get(tenants::tenant_limits))
            .layer(DefaultBodyLimit::max(64 * 1024))
            .with_state(service)
            .route("/openapi.yaml", get(|| async { ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI) }))
            .merge(console::router())
            .merge(ops.router());
        let server = HttpServer::bind(config.query.listen)
            .await
            .with_context(|| format!("binding {} ([query] listen)", config.query.listen))?;
        Ok(Self { server, router, stopping })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Serves until `stopping` is cancelled, then finishes in-flight requests.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        tracing::info!(addr = %self.server.local_addr(), "query service listening");
        self.server.serve(self.router, self.stopping).await.context("serving the query API")
    }
}

/// What the service does, for `--help`.
pub const ABOUT: &str = "Tally's usage query API and console: usage per window in any time zone, as JSON or CSV.";

/// Builds and runs the service until `stopping` is cancelled (what `tally-*` and `tally <role>`
/// run).
pub async fn serve(config: QueryConfig, stopping: CancellationToken) -> anyhow::Result<()> {
    QueryService::build(config, stopping).await?.run_until_stopped().await
}
