//! The operations endpoints every service serves:
//!
//! * `/livez`: 200 while every registered loop has beaten its heartbeat recently;
//! * `/readyz`: 200 when every dependency check passes (each bounded by a timeout), else 503
//!   with the failing checks named; 503 once shutdown has begun;
//! * `/metrics`: Prometheus text format, from the service's own registry plus process metrics.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::{Encoder, Registry, TextEncoder};
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
type CheckFn = Arc<dyn Fn() -> CheckFuture + Send + Sync>;

/// A loop's proof of life: it calls [`Heartbeat::beat`] each turn.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    started: Instant,
    last_beat_ms: Arc<AtomicU64>,
}

impl Heartbeat {
    pub fn beat(&self) {
        let elapsed = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_beat_ms.store(elapsed, Ordering::Relaxed);
    }

    fn silent_for(&self) -> Duration {
        let now = self.started.elapsed();
        now.saturating_sub(Duration::from_millis(self.last_beat_ms.load(Ordering::Relaxed)))
    }
}

/// What a service registers: its metrics, its dependencies' checks and its loops' heartbeats.
#[derive(Clone)]
pub struct Ops {
    inner: Arc<OpsInner>,
}

struct OpsInner {
    service: &'static str,
    registry: Registry,
    process: Registry,
    checks: std::sync::Mutex<Vec<(&'static str, CheckFn)>>,
    heartbeats: std::sync::Mutex<Vec<(&'static str, Duration, Heartbeat)>>,
    stopping: CancellationToken,
}

impl std::fmt::Debug for Ops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ops").field("service", &self.inner.service).finish_non_exhaustive()
    }
}

impl Ops {
    /// `stopping` turns `/readyz` to 503 as soon as shutdown begins.
    pub fn new(service: &'static str, stopping: CancellationToken) -> Self {
        let registry = Registry::new_custom(Some("tally".to_owned()), None)
            .unwrap_or_else(|e| unreachable!("static prefix is valid: {e}"));
        // The process's own metrics keep their standard names (`process_cpu_seconds_total`, …),
        // which stock dashboards and alerts look for: a registry without the prefix.
        let process = Registry::new();
        #[cfg(target_os = "linux")]
        {
            let collector = prometheus::process_collector::ProcessCollector::for_self();
            if let Err(error) = process.register(Box::new(collector)) {
                tracing::warn!(%error, "process metrics unavailable");
            }
        }
        Self {
            inner: Arc::new(OpsInner {
                service,
                registry,
                process,
                checks: std::sync::Mutex::default(),
                heartbeats: std::sync::Mutex::default(),
                stopping,
            }),
        }
    }

    /// The registry the service's metrics register in (names get the `tally_` prefix).
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// Adds a readiness check for a dependency.
    pub fn add_check<F, Fut>(&self, name: &'static str, check: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let check: CheckFn = Arc::new(move || Box::pin(check()));
        lock(&self.inner.checks).push((name, check));
    }

    /// Readiness needs ClickHouse to answer `SELECT 1`.
    pub fn check_clickhouse(&self, client: clickhouse::Client) {
        self.add_check("clickhouse", move || {
            let client = client.clone();
            async move { crate::clickhouse::ping(&client).await.map_err(|e| e.to_string()) }
        });
    }

    /// Readiness needs PostgreSQL to answer.
    pub fn check_postgres(&self, pool: sqlx::PgPool) {
        self.add_check("postgres", move || {
            let pool = pool.clone();
            async move { crate::postgres::ping(&pool).await.map_err(|e| e.to_string()) }
        });
    }

    /// A heartbeat for a loop; `/livez` fails when it is silent for longer than `max_silence`.
    pub fn heartbeat(&self, name: &'static str, max_silence: Duration) -> Heartbeat {
        let heartbeat = Heartbeat { started: Instant::now(), last_beat_ms: Arc::new(AtomicU64::new(0)) };
        lock(&self.inner.heartbeats).push((name, max_silence, heartbeat.clone()));
        heartbeat
    }

    /// The three endpoints, to merge into a service's router or serve alone.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/livez", get(livez))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .with_state(self.clone())
    }

    async fn readiness(&self) -> (bool, Value) {
        if self.inner.stopping.is_cancelled() {
            return (false, json!({"status": "stopping", "service": self.inner.service}));
        }
        let checks: Vec<(&'static str, CheckFn)> = lock(&self.inner.checks).clone();
        let results = futures_join(checks.into_iter().map(|(name, check)| async move {
            let outcome = match tokio::time::timeout(CHECK_TIMEOUT, check()).await {
                Ok(result) => result,
                Err(_) => Err(format!("no answer within {} ms", CHECK_TIMEOUT.as_millis())),
            };
            (name, outcome)
        }))
        .await;
        let ready = results.iter().all(|(_, outcome)| outcome.is_ok());
        let detail: Map<String, Value> = results
            .into_iter()
            .map(|(name, outcome)| (name.to_owned(), Value::String(outcome.err().unwrap_or_else(|| "ok".to_owned()))))
            .collect();
        let status = if ready { "ready" } else { "not_ready" };
        (ready, json!({"status": status, "service": self.inner.service, "checks": detail}))
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs futures concurrently and collects their outputs in order.
async fn futures_join<F: Future + Send + 'static>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut outputs = Vec::with_capacity(handles.len());
    for handle in handles {
        if let Ok(output) = handle.await {
            outputs.push(output);
        }
    }
    outputs
}

async fn livez(State(ops): State<Ops>) -> Response {
    let stale: Vec<String> = lock(&ops.inner.heartbeats)
        .iter()
        .filter(|(_, max_silence, heartbeat)| heartbeat.silent_for() > *max_silence)
        .map(|(name, _, heartbeat)| format!("{name} silent for {} ms", heartbeat.silent_for().as_millis()))
        .collect();
    if stale.is_empty() {
        (StatusCode::OK, axum::Json(json!({"status": "alive", "service": ops.inner.service}))).into_response()
    } else {
        let body = json!({"status": "stalled", "service": ops.inner.service, "stalled": stale});
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
    }
}

async fn readyz(State(ops): State<Ops>) -> Response {
    let (ready, body) = ops.readiness().await;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(ops): State<Ops>) -> Response {
    let mut buffer = Vec::new();
    let encoder = TextEncoder::new();
    let mut families = ops.inner.registry.gather();
    families.extend(ops.inner.process.gather());
    match encoder.encode(&families, &mut buffer) {
        Ok(()) => ([(header::CONTENT_TYPE, encoder.format_type().to_owned())], buffer).into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

/// Binds `addr` (port 0 picks a free port) and serves `router` until `shutdown` is cancelled.
#[derive(Debug)]
pub struct HttpServer {
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl HttpServer {
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot listen on {addr}: {e} (is the port taken? change the listen address)"),
            )
        })?;
        let local_addr = listener.local_addr()?;
        Ok(Self { listener, local_addr })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown`; in-flight requests finish before this returns.
    pub async fn serve(self, router: Router, shutdown: CancellationToken) -> std::io::Result<()> {
        axum::serve(self.listener, router).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
    }
}
