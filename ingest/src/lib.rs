//! Tally's HTTP ingest service.
//!
//! `POST /v1/events` takes one event or a batch (plain JSON, CloudEvents structured or batch),
//! authenticates the tenant's API key, validates every event, publishes the valid ones to the
//! usage topic keyed by tenant id and the refused ones to the dead-letter topic with their reason,
//! and answers 202 only once the broker acknowledged every accepted event. The same port serves
//! `/livez`, `/readyz`, `/metrics` and `/openapi.yaml`.

pub mod api;
mod binary_mode;
pub mod config;
pub mod error;
pub mod intake;
pub mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::http::header;
use axum::routing::{get, post};
use tally_kit::ops::{HttpServer, Ops};
use tally_kit::producer::Publisher;
use tally_kit::tenants::TenantDirectory;
use tokio_util::sync::CancellationToken;

use crate::api::AppState;
pub use crate::config::IngestConfig;
use crate::metrics::IngestMetrics;
use tally_kit::auth::Authenticator;

/// The OpenAPI 3.1 document of the ingest API.
pub const OPENAPI: &str = include_str!("../openapi.yaml");

/// A bound, ready-to-run ingest service.
#[derive(Debug)]
pub struct Ingest {
    server: HttpServer,
    router: Router,
    state: AppState,
    flush_timeout: Duration,
}

impl Ingest {
    /// Connects the producer and the registry, and binds the listener (port 0 picks one).
    pub async fn build(config: IngestConfig, stopping: CancellationToken) -> anyhow::Result<Self> {
        let ops = Ops::new("ingest", stopping.clone());
        let metrics = IngestMetrics::register(ops.registry()).context("registering metrics")?;
        let publisher = Publisher::new(&config.kafka, &config.producer).context("creating the Kafka producer")?;
        let pool = tally_kit::postgres::pool(&config.postgres)?;
        let ttl = Duration::from_millis(config.auth.cache_ttl_ms);
        let state = AppState {
            keys: Authenticator::new(pool.clone(), &config.auth).map_err(anyhow::Error::msg)?,
            tenants: TenantDirectory::new(pool.clone(), ttl),
            publisher: publisher.clone(),
            catalogue: Arc::new(config.metrics.clone()),
            topics: Arc::new(config.topics.clone()),
            http: Arc::new(config.http.clone()),
            retry_after_secs: config.http.retry_after_secs,
            metrics,
            stopping,
        };
        let broker = publisher.clone();
        let timeout = Duration::from_millis(config.kafka.timeout_ms.min(2_000));
        ops.add_check("kafka", move || {
            let broker = broker.clone();
            async move { broker.ping(timeout).await }
        });
        ops.add_check("postgres", move || {
            let pool = pool.clone();
            async move { tally_kit::postgres::ping(&pool).await.map_err(|e| e.to_string()) }
        });
        spawn_queue_gauge(&state, &ops);
        let router = Router::new()
            .route("/v1/events", post(api::post_events))
            .route("/openapi.yaml", get(|| async { ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI) }))
            .with_state(state.clone())
            .merge(ops.router());
        let server = HttpServer::bind(config.http.listen).await?;
        Ok(Self { server, router, state, flush_timeout: Duration::from_millis(config.producer.flush_timeout_ms) })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Serves until the stopping token is cancelled: then refuses new requests, lets in-flight
    /// ones finish, and flushes the producer.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        tracing::info!(addr = %self.local_addr(), "ingest listening");
        let stopping = self.state.stopping.clone();
        self.server.serve(self.router, stopping).await.context("serving HTTP")?;
        tracing::info!(in_flight = self.state.publisher.queue_depth(), "ingest stopping: flushing the producer");
        self.state.publisher.flush(self.flush_timeout).await.context("flushing the producer on shutdown")?;
        tracing::info!("ingest stopped");
        Ok(())
    }
}

/// Keeps the queue-depth gauge current between requests; its heartbeat backs `/livez`.
fn spawn_queue_gauge(state: &AppState, ops: &Ops) {
    let heartbeat = ops.heartbeat("queue-gauge", Duration::from_secs(10));
    let state = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        while !state.stopping.is_cancelled() {
            tick.tick().await;
            state.metrics.queue_depth.set(i64::from(state.publisher.queue_depth()));
            heartbeat.beat();
        }
    });
}

/// What the service does, for `--help`.
pub const ABOUT: &str = "Tally's HTTP ingest service: usage events in, to Kafka.";

/// Builds and runs the service until `stopping` is cancelled (what `tally-*` and `tally <role>`
/// run).
pub async fn serve(config: IngestConfig, stopping: CancellationToken) -> anyhow::Result<()> {
    Ingest::build(config, stopping).await?.run_until_stopped().await
}
