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
    dir: PathBuf,
}

fn spawn(node_dir: &std::path::Path) -> Child {
    Command::new(chdb_python())
        .arg(repo().join("deploy/local/clickhouse_server.py"))
        .arg(node_dir)
        .arg(node_dir.join("data"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting a chdb node ({}): {e}; run deploy/local/up.sh", chdb_python()))
}

async fn wait_answering(http_port: u16) {
    let http = reqwest::Client::new();
    let started = Instant::now();
    let ping = format!("http://127.0.0.1:{http_port}/ping");
    while !http.get(&ping).send().await.is_ok_and(|answer| answer.status().is_success()) {
        assert!(started.elapsed() < Duration::from_secs(120), "the chdb node on {http_port} did not answer");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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
            let child = spawn(&node_dir);
            nodes.push(Node { child, http_port: *http, dir: node_dir });
        }
        let cluster = Self { nodes, dir };
        for node in &cluster.nodes {
            wait_answering(node.http_port).await;
        }
        cluster
    }

    /// SIGKILLs shard `index`'s server (its data stays on disk).
    pub fn kill(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        node.child.kill().unwrap_or_else(|e| panic!("SIGKILL shard {index}: {e}"));
        node.child.wait().unwrap_or_else(|e| panic!("reaping shard {index}: {e}"));
    }

    /// Starts shard `index`'s server again on its ports and data, and waits until it answers.
    pub async fn restart(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        node.child = spawn(&node.dir);
        wait_answering(node.http_port).await;
    }

    /// SIGSTOPs (`true`) or SIGCONTs (`false`) shard `index`'s server: a server that hangs.
    pub fn pause(&self, index: usize, paused: bool) {
        let signal = if paused { "-STOP" } else { "-CONT" };
        let status = Command::new("kill").arg(signal).arg(self.nodes[index].child.id().to_string()).status();
        assert!(status.is_ok_and(|s| s.success()), "kill {signal} shard {index}");
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
