//! A Kafka-protocol broker of a test's own, for tests that stop and restart it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tally_kit::config::KafkaConfig;

/// A `noida-db` broker on a free port with its own data directory; stopped on drop.
#[derive(Debug)]
pub struct TestBroker {
    pub port: u16,
    data_dir: PathBuf,
    child: Option<Child>,
}

fn noida_binary() -> PathBuf {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    let installed = cargo_home.join("bin").join("noida-db");
    if installed.is_file() { installed } else { PathBuf::from("noida-db") }
}

pub(crate) fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("local addr").port()
}

impl TestBroker {
    pub async fn start() -> Self {
        let data_dir = std::env::temp_dir().join(crate::unique_name("tally-broker"));
        std::fs::create_dir_all(&data_dir).expect("broker data dir");
        let mut broker = Self { port: free_port(), data_dir, child: None };
        broker.restart().await;
        broker
    }

    pub fn kafka_config(&self) -> KafkaConfig {
        KafkaConfig {
            brokers: format!("127.0.0.1:{}", self.port),
            client_id: "tally-test".to_owned(),
            ..KafkaConfig::default()
        }
    }

    /// Starts the broker (again) on the same port and data, and waits until it answers.
    pub async fn restart(&mut self) {
        let child = Command::new(noida_binary())
            .args(["start", "--only", "kafka", "--kafka-port", &self.port.to_string(), "--data-dir"])
            .arg(&self.data_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting noida-db: {e}; run deploy/local/up.sh to install it"));
        self.child = Some(child);
        let started = Instant::now();
        while tally_kit::kafka::ping(&KafkaConfig { timeout_ms: 1_000, ..self.kafka_config() }).await.is_err() {
            assert!(started.elapsed() < Duration::from_secs(30), "test broker on port {} did not start", self.port);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops the broker gracefully (SIGTERM: it saves its data) and waits for it to exit.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let pid = child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let started = Instant::now();
        while child.try_wait().ok().flatten().is_none() {
            if started.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}
