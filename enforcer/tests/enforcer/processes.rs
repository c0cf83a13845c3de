//! Replicas as real processes, failing the way production fails: a replica whose clock is minutes
//! off (libfaketime), and a replica paused (SIGSTOP) in the middle of its reservations.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::{Value, json};

use crate::helpers::{App, Stores};

/// A `tally-enforcer` process on its own ports; killed on drop.
struct Replica {
    child: Child,
    addr: SocketAddr,
    key: String,
    http: reqwest::Client,
}

fn libfaketime() -> &'static str {
    ["/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1", "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1"]
        .into_iter()
        .find(|path| std::path::Path::new(path).is_file())
        .expect("libfaketime is not installed: apt-get install faketime")
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

impl Replica {
    /// Starts the binary with `stores`' databases (and `extra` settings), under `faketime OFFSET`
    /// when given, and waits until it is ready.
    async fn start(stores: &Stores, extra: &[(&str, String)], faketime: Option<&str>) -> Self {
        let addr = free_addr();
        let mut command = Command::new(env!("CARGO_BIN_EXE_tally-enforcer"));
        command.env_clear();
        // libfaketime preloaded into the enforcer itself (not the `faketime` wrapper, which would
        // leave the enforcer running when the wrapper is killed).
        if let Some(offset) = faketime {
            command.env("LD_PRELOAD", libfaketime()).env("FAKETIME", offset);
        }
        command
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("TALLY_POSTGRES__URL", stores.pg.config.url.expose())
            .env("TALLY_CLICKHOUSE__URL", &stores.ch.config.url)
            .env("TALLY_CLICKHOUSE__DATABASE", &stores.ch.config.database)
            .env("TALLY_ENFORCER__LISTEN", addr.to_string())
            .env("TALLY_ENFORCER__GRPC_LISTEN", free_addr().to_string())
            .env("TALLY_ENFORCER__USAGE_REFRESH_MS", "100")
            .env("TALLY_TELEMETRY__FILTER", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (key, value) in extra {
            command.env(key, value);
        }
        // A process group of its own: dropping the replica kills whatever it (or a preloaded
        // library) started.
        let child = command.process_group(0).spawn().expect("starting tally-enforcer");
        let replica = Self { child, addr, key: stores.admin_key.clone(), http: reqwest::Client::new() };
        let ready = App::within(Duration::from_secs(30), async || {
            let response = replica.http.get(format!("http://{addr}/readyz")).send().await;
            response.is_ok_and(|r| r.status().is_success())
        })
        .await;
        assert!(ready.is_some(), "the enforcer process did not become ready");
        replica
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("http://{}{path}", self.addr))
            .bearer_auth(&self.key)
            .timeout(Duration::from_secs(20))
            .json(&body)
            .send()
            .await;
        match response {
            Ok(response) => (response.status().as_u16(), response.json().await.unwrap_or(Value::Null)),
            Err(error) => (0, json!({ "transport": error.to_string() })),
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([signal, &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.child.id())]).status();
        let _ = self.child.wait();
    }
}

fn redis_settings() -> Vec<(&'static str, String)> {
    vec![
        ("TALLY_ENFORCER__RATE__STORE", "redis".to_owned()),
        ("TALLY_ENFORCER__RATE__REDIS_URL", tally_testkit::redis_url()),
        ("TALLY_ENFORCER__RATE__KEY_PREFIX", tally_testkit::redis_prefix()),
        ("TALLY_ENFORCER__RATE__REDIS_TIMEOUT_MS", "5000".to_owned()),
    ]
}

#[tokio::test]
async fn replicas_with_clocks_minutes_apart_share_one_limit() {
    let stores = Stores::new().await;
    stores.tenant("acme", "STANDARD").await;
    stores.sql("UPDATE tenant SET rate_limit_per_second = 50, rate_limit_burst = 100 WHERE id = 'acme'").await;
    let settings = redis_settings();
    let ahead = Arc::new(Replica::start(&stores, &settings, Some("+300s")).await);
    let behind = Arc::new(Replica::start(&stores, &settings, Some("-180s")).await);
    let admitted = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(5);
    let mut clients = Vec::new();
    for replica in [&ahead, &behind, &ahead, &behind] {
        let (replica, admitted) = (Arc::clone(replica), Arc::clone(&admitted));
        clients.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let (status, answer) = replica.post("/v1/check/rate", json!({ "tenant_id": "acme" })).await;
                assert!(status == 200 || status == 429, "{status}: {answer}");
                assert_eq!(answer["degraded"], false);
                admitted.fetch_add(usize::from(status == 200), Ordering::Relaxed);
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    let bound = 50.0 * started.elapsed().as_secs_f64() + 100.0;
    let admitted = admitted.load(Ordering::Relaxed) as f64;
    assert!(admitted <= bound * 1.01 && admitted >= bound * 0.95, "{admitted} admitted; bound {bound:.0}");
    drop(ahead);
    drop(behind);
    stores.drop().await;
}

#[tokio::test]
async fn a_replica_paused_inside_its_reservations_does_not_stall_the_others() {
    let stores = Stores::new().await;
    stores.tenant("acme", "STANDARD").await;
    stores.sql("UPDATE tenant SET max_users = 1000000 WHERE id = 'acme'").await;
    stores.gauge("acme", "active_users", 0).await;
    let paused = Arc::new(Replica::start(&stores, &[], None).await);
    let other = Replica::start(&stores, &[], None).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Keep the first replica busy reserving, then freeze it with transactions open.
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..16)
        .map(|_| {
            let (replica, stop) = (Arc::clone(&paused), Arc::clone(&stop));
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    replica.post("/v1/check/users", json!({ "tenant_id": "acme" })).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Freeze it until it is caught with a transaction open (the other replica is idle meanwhile).
    let mut caught = false;
    for _ in 0..100 {
        paused.signal("-STOP");
        tokio::time::sleep(Duration::from_millis(20)).await;
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND xact_start IS NOT NULL AND pid <> pg_backend_pid()",
        )
        .fetch_one(&stores.pg.pool)
        .await
        .unwrap();
        if open > 0 {
            caught = true;
            break;
        }
        paused.signal("-CONT");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(caught, "the replica was never frozen inside a transaction");
    let frozen_at = Instant::now();
    // Every request to the other replica is answered, within PostgreSQL's bounds, and it admits
    // again once PostgreSQL has ended the frozen replica's idle transaction (and its lock).
    let mut admitted_after = None;
    while frozen_at.elapsed() < Duration::from_secs(10) {
        let started = Instant::now();
        let answers = join_all((0..10).map(|_| other.post("/v1/check/users", json!({ "tenant_id": "acme" })))).await;
        for (status, answer) in &answers {
            assert!(*status == 200 || *status == 503, "answered, never hung or failed: {status} {answer}");
        }
        assert!(started.elapsed() < Duration::from_secs(5), "answers came within PostgreSQL's bounds");
        if answers.iter().all(|(status, _)| *status == 200) {
            admitted_after = Some(frozen_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let admitted_after = admitted_after.expect("the other replica admits again while the first is frozen");
    eprintln!("the other replica admitted again {admitted_after:?} after the pause");
    paused.signal("-CONT");
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let recovered = App::within(Duration::from_secs(10), async || {
        paused.post("/v1/check/users", json!({ "tenant_id": "acme" })).await.0 == 200
    })
    .await;
    assert!(recovered.is_some(), "the resumed replica reserves again");
    let stuck = stores.idle_in_transaction().await;
    assert_eq!(stuck, 0, "no transaction is left open");
    drop(other);
    drop(paused);
    stores.drop().await;
}
