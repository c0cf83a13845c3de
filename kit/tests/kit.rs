//! Configuration layering and the operations endpoints.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use serde::Deserialize;
use tally_kit::config::{ClickHouseConfig, KafkaConfig, PostgresConfig, load, redact_url};
use tally_kit::ops::{HttpServer, Ops};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TestConfig {
    kafka: KafkaConfig,
    clickhouse: ClickHouseConfig,
    postgres: PostgresConfig,
}

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn file(contents: &str) -> tempfile_path::TempFile {
    tempfile_path::TempFile::new(contents)
}

mod tempfile_path {
    use std::path::PathBuf;

    /// A file under the target directory, removed on drop.
    pub struct TempFile(pub PathBuf);

    impl TempFile {
        pub fn new(contents: &str) -> Self {
            let path = std::env::temp_dir().join(format!("tally-config-{}.toml", uuid_like()));
            std::fs::write(&path, contents).expect("write config file");
            Self(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn uuid_like() -> String {
        use std::time::{SystemTime, UNIX_EPOCH};
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        format!("{nanos}-{}", std::process::id())
    }
}

#[test]
fn defaults_then_file_then_environment() {
    let config: TestConfig = load(None, &HashMap::new()).unwrap();
    assert_eq!(config.kafka.brokers, "127.0.0.1:9092");
    assert_eq!(config.postgres.max_connections, 10);

    let toml = file("[kafka]\nbrokers = \"file:9092\"\nclient_id = \"from-file\"\n[postgres]\nmax_connections = 3\n");
    let config: TestConfig = load(Some(&toml.0), &HashMap::new()).unwrap();
    assert_eq!(config.kafka.brokers, "file:9092");
    assert_eq!(config.postgres.max_connections, 3);

    let overrides = env(&[
        ("TALLY_KAFKA__BROKERS", "env:9092"),
        ("TALLY_POSTGRES__MAX_CONNECTIONS", "7"),
        ("TALLY_KAFKA_PORT", "19092"),
        ("UNRELATED", "x"),
    ]);
    let config: TestConfig = load(Some(&toml.0), &overrides).unwrap();
    assert_eq!(config.kafka.brokers, "env:9092", "environment beats the file");
    assert_eq!(config.kafka.client_id, "from-file", "the file beats defaults");
    assert_eq!(config.postgres.max_connections, 7);
}

#[test]
fn bad_values_and_unknown_keys_are_named() {
    let error = load::<TestConfig>(None, &env(&[("TALLY_POSTGRES__MAX_CONNECTIONS", "many")])).unwrap_err();
    assert!(error.to_string().contains("max_connections"), "{error}");

    let toml = file("[kafka]\nbrokers = \"a:1\"\nbrokerz = \"typo\"\n");
    let error = load::<TestConfig>(Some(&toml.0), &HashMap::new()).unwrap_err();
    assert!(error.to_string().contains("brokerz"), "{error}");

    let error = load::<TestConfig>(Some(std::path::Path::new("/nonexistent/tally.toml")), &HashMap::new()).unwrap_err();
    assert!(error.to_string().contains("/nonexistent/tally.toml"), "{error}");

    let typo = file("[kafak]\nbrokers = \"a:1\"\n");
    let error = load::<TestConfig>(Some(&typo.0), &HashMap::new()).unwrap_err();
    assert!(error.to_string().contains("kafak"), "{error}");
    let other_service: TestConfig = load(None, &env(&[("TALLY_HTTP__LISTEN", "127.0.0.1:1")])).unwrap();
    assert_eq!(other_service.kafka.brokers, "127.0.0.1:9092", "another service's section is tolerated");

    let broken = file("[kafka\n");
    let error = load::<TestConfig>(Some(&broken.0), &HashMap::new()).unwrap_err();
    assert!(error.to_string().contains(&broken.0.display().to_string()), "{error}");
}

#[test]
fn secrets_never_print() {
    let config: TestConfig = load(
        None,
        &env(&[("TALLY_CLICKHOUSE__PASSWORD", "hunter2"), ("TALLY_POSTGRES__URL", "postgres://u:hunter2@h/db")]),
    )
    .unwrap();
    assert_eq!(config.clickhouse.password.expose(), "hunter2");
    let shown = format!("{config:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert_eq!(redact_url(config.postgres.url.expose()), "postgres://u:***@h/db");
    let mut sink = Vec::new();
    writeln!(sink, "{:?}", config.postgres).unwrap();
    assert!(!String::from_utf8(sink).unwrap().contains("hunter2"));
}

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn ops_endpoints_report_liveness_readiness_and_metrics() {
    let stopping = CancellationToken::new();
    let ops = Ops::new("test", stopping.clone());
    let healthy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = healthy.clone();
    ops.add_check("database", move || {
        let ok = flag.load(std::sync::atomic::Ordering::Relaxed);
        async move { if ok { Ok(()) } else { Err("connection refused".to_owned()) } }
    });
    let counter = prometheus::IntCounter::new("test_events_total", "events seen").unwrap();
    ops.registry().register(Box::new(counter.clone())).unwrap();
    counter.inc_by(3);
    let heartbeat = ops.heartbeat("worker", Duration::from_millis(200));
    heartbeat.beat();

    let server = HttpServer::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = server.local_addr();
    let shutdown = CancellationToken::new();
    let serving = tokio::spawn(server.serve(ops.router(), shutdown.clone()));

    assert_eq!(get(addr, "/livez").await.0, 200);
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("tally_test_events_total 3"), "{body}");

    healthy.store(false, std::sync::atomic::Ordering::Relaxed);
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("connection refused"), "{body}");

    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = get(addr, "/livez").await;
    assert_eq!(status, 503, "a silent loop fails liveness");
    assert!(body.contains("worker"), "{body}");
    heartbeat.beat();
    assert_eq!(get(addr, "/livez").await.0, 200);

    healthy.store(true, std::sync::atomic::Ordering::Relaxed);
    stopping.cancel();
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 503, "not ready once stopping");
    assert!(body.contains("stopping"), "{body}");

    shutdown.cancel();
    serving.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_taken_port_is_a_clear_error() {
    let first = HttpServer::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let error = HttpServer::bind(first.local_addr()).await.unwrap_err();
    assert!(error.to_string().contains("cannot listen on"), "{error}");
}
