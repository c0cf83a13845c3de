//! Helpers the benchmarks share: positional arguments, spreads of per-round figures, peak RSS,
//! CPU time.

/// Positional argument `index` (flags skipped) parsed, or `default`.
pub fn arg(index: usize, default: usize) -> usize {
    std::env::args().skip(1).filter(|a| !a.starts_with("--")).nth(index).and_then(|a| a.parse().ok()).unwrap_or(default)
}

/// The process's peak resident set (VmHWM), in MiB.
pub fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// CPU time (user and system) the process has used so far, in seconds; 10 ms resolution
/// (Linux counts it in ticks of 1/100 s).
pub fn process_cpu_seconds() -> f64 {
    cpu_seconds_of("self")
}

/// CPU time (user and system, all threads) process `pid` (a number, or `self`) has used so far,
/// in seconds; NaN when it cannot be read.
pub fn cpu_seconds_of(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (in parentheses, which may hold spaces): utime and stime
    // are the 12th and 13th.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |index: usize| fields.get(index).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
    (ticks(11) + ticks(12)) / 100.0
}

/// The local stack's engine processes, found by command line: the Kafka-protocol broker and
/// ClickHouse (see `deploy/local/up.sh`).
pub fn engine_pids() -> Vec<(&'static str, String)> {
    let patterns = [("broker", "noida-db start"), ("clickhouse", "clickhouse_server.py")];
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        for (name, pattern) in patterns {
            if cmdline.contains(pattern) {
                found.push((name, pid.clone()));
            }
        }
    }
    found.sort();
    found
}

/// CPU time used by this process and by the stack's engines over a phase.
#[derive(Debug, Clone)]
pub struct CpuMeter {
    started: Vec<(&'static str, String, f64)>,
}

impl CpuMeter {
    pub fn start() -> Self {
        let mut processes = vec![("this process", "self".to_owned())];
        processes.extend(engine_pids());
        Self {
            started: processes
                .into_iter()
                .map(|(name, pid)| {
                    let at = cpu_seconds_of(&pid);
                    (name, pid, at)
                })
                .collect(),
        }
    }

    /// CPU microseconds per event of each process since [`CpuMeter::start`], and their sum.
    pub fn per_event(&self, events: usize) -> Vec<(&'static str, f64)> {
        let mut shares: Vec<(&'static str, f64)> = self
            .started
            .iter()
            .map(|(name, pid, at)| (*name, (cpu_seconds_of(pid) - at) * 1e6 / events as f64))
            .collect();
        let total = shares.iter().map(|(_, us)| us).sum();
        shares.push(("total", total));
        shares
    }
}

/// (min, median, max) of per-round figures.
pub fn spread(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    (values[0], values[values.len() / 2], values[values.len() - 1])
}

/// Waits for the local broker to finish persisting what the last phase wrote: it saves its whole
/// state after changes, on one core, and each measured phase should start with it idle.
pub async fn settle() {
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
}

/// What [`drive_checks`] measured: checks per second and latency quantiles in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Driven {
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// `clients` concurrent HTTP clients POST `{"tenant_id": tenant(n)}` to `url` for `seconds`, each
/// walking the tenants in its own order, with `key` as a bearer token.
pub async fn drive_checks(
    url: &str,
    key: &str,
    tenant: fn(usize) -> String,
    tenants: usize,
    seconds: u64,
    clients: usize,
) -> Driven {
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (http, url, key) = (http.clone(), url.to_owned(), key.to_owned());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut n = c * 7_919;
                while std::time::Instant::now() < deadline {
                    n = (n + 104_729) % tenants;
                    let body = serde_json::json!({ "tenant_id": tenant(n) });
                    let started = std::time::Instant::now();
                    let response = http.post(&url).bearer_auth(&key).json(&body).send().await.expect("a check");
                    let _ = response.bytes().await.expect("its answer");
                    latencies.push(started.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("a client"));
    }
    all.sort();
    let pick = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)].as_secs_f64() * 1_000.0;
    Driven { per_second: all.len() as f64 / seconds as f64, p50_ms: pick(0.5), p99_ms: pick(0.99) }
}

/// `tenants` active STANDARD tenants `tenant-0000000` … in the platform registry of `pg`, and a
/// service key for them (as an API gateway holds); returns the key's token.
pub async fn seed_tenants(pg: &crate::TestPostgres, tenants: usize) -> String {
    sqlx::query(
        "INSERT INTO tenant (id, name) SELECT 'tenant-' || lpad(g::text, 7, '0'), 'bench' FROM generate_series(0, $1 - 1) g",
    )
    .bind(i64::try_from(tenants).expect("a tenant count"))
    .execute(&pg.pool)
    .await
    .expect("inserting the bench tenants");
    tally_kit::auth::create_key(&pg.pool, tally_kit::auth::Scope::Service, None, "bench").await.expect("a key").token
}

/// The name [`seed_tenants`] gave tenant `n`.
pub fn tenant_name(n: usize) -> String {
    format!("tenant-{n:07}")
}

/// Serves `router` on a free loopback port (a baseline behind the same HTTP stack as Tally's).
pub async fn serve_on_loopback(router: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
    let addr = listener.local_addr().expect("its address");
    tokio::spawn(async move { axum::serve(listener, router).await.expect("serving") });
    addr
}
