//! A ClickHouse cluster of the test's own: N chdb-core processes (the local stack's engine), each
//! with its own ports and data directory, and a `<remote_servers>` section naming them all as one
//! shard each, with `{shard}` and `{replica}` macros. chdb cannot replicate (no interserver
//! listener, no `ON CLUSTER`), so each shard has one replica.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clickhouse::Client;

/// The cluster's name in every node's `<remote_servers>`.
pub const CLUSTER: &str = "tally_test";

#[derive(Debug)]
struct Node {
    child: Child,
    http_port: u16,
}

/// Shards on loopback; stopped (and their directories removed) when dropped.
#[derive(Debug)]
pub struct TestCluster {
    nodes: Vec<Node>,
    dir: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .unwrap_or_else(|e| panic!("a free loopback port: {e}"))
}

fn repo() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Python with chdb-core that `up.sh` installs (`TALLY_TEST_CHDB_PYTHON`).
fn chdb_python() -> String {
    std::env::var("TALLY_TEST_CHDB_PYTHON").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_else(|_| "/root".to_owned());
        format!("{home}/.local/share/tally/chdb-26.9.0/bin/python")
    })
}

impl TestCluster {
    /// Starts `shards` nodes and waits until each answers.
    pub async fn start(shards: usize) -> Self {
        let dir = std::env::temp_dir().join(crate::unique_name("tally-cluster"));
        let ports: Vec<(u16, u16)> = (0..shards).map(|_| (free_port(), free_port())).collect();
        let remote: String = ports
            .iter()
            .map(|(_, tcp)| format!("<shard><replica><host>127.0.0.1</host><port>{tcp}</port></replica></shard>"))
            .collect();
        let mut nodes = Vec::new();
        for (index, (http, tcp)) in ports.iter().enumerate() {
            let node_dir = dir.join(format!("shard-{}", index + 1));
            std::fs::create_dir_all(node_dir.join("data")).unwrap_or_else(|e| panic!("{}: {e}", node_dir.display()));
            let config = format!(
                "<clickhouse><listen_host>127.0.0.1</listen_host><http_port>{http}</http_port><tcp_port>{tcp}</tcp_port>\
                 <remote_servers><{CLUSTER}>{remote}</{CLUSTER}></remote_servers>\
                 <macros><cluster>{CLUSTER}</cluster><shard>{:02}</shard><replica>r1</replica></macros></clickhouse>",
                index + 1
            );
            std::fs::write(node_dir.join("config.xml"), config).unwrap_or_else(|e| panic!("config.xml: {e}"));
            let child = Command::new(chdb_python())
                .arg(repo().join("deploy/local/clickhouse_server.py"))
                .arg(&node_dir)
                .arg(node_dir.join("data"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("starting a chdb node ({}): {e}; run deploy/local/up.sh", chdb_python()));
            nodes.push(Node { child, http_port: *http });
        }
        let cluster = Self { nodes, dir };
        let http = reqwest::Client::new();
        for node in &cluster.nodes {
            let started = Instant::now();
            let ping = format!("http://127.0.0.1:{}/ping", node.http_port);
            while !http.get(&ping).send().await.is_ok_and(|answer| answer.status().is_success()) {
                assert!(
                    started.elapsed() < Duration::from_secs(120),
                    "the chdb node on {} did not answer",
                    node.http_port
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        cluster
    }

    /// Each shard's HTTP address, in shard order.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|node| format!("http://127.0.0.1:{}", node.http_port)).collect()
    }

    /// A client of shard `index` (0-based).
    pub fn client(&self, index: usize) -> Client {
        Client::default().with_url(&self.urls()[index])
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
