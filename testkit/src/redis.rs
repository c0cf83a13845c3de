//! Redis for tests: the stack's server with a key prefix of the test's own, or a server of the
//! test's own (for tests that pause, stop and restart it).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The stack's Redis (`TALLY_TEST_REDIS_URL`, default redis://127.0.0.1:6379).
pub fn redis_url() -> String {
    crate::env_or("TALLY_TEST_REDIS_URL", "redis://127.0.0.1:6379")
}

/// A key prefix no other test uses.
pub fn redis_prefix() -> String {
    format!("{}:", crate::unique_name("tally-test"))
}

/// A `redis-server` on a free port that keeps nothing on disk; stopped on drop.
#[derive(Debug)]
pub struct TestRedis {
    pub port: u16,
    child: Option<Child>,
}

impl TestRedis {
    pub async fn start() -> Self {
        let mut redis = Self { port: crate::broker::free_port(), child: None };
        redis.restart().await;
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on the same port and waits until it accepts connections.
    pub async fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting redis-server (apt-get install redis-server)");
        self.child = Some(child);
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(10), "redis-server did not start on {}", self.port);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill").args([signal, &child.id().to_string()]).status().expect("kill");
            assert!(status.success(), "kill {signal} redis-server");
        }
    }

    /// SIGSTOP: the server is there but answers nothing.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`Self::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// SIGKILL, and waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.resume();
        self.kill();
    }
}

/// A three-node Redis Cluster (masters only) of the test's own; stopped on drop.
#[derive(Debug)]
pub struct TestRedisCluster {
    nodes: Vec<Child>,
    ports: Vec<u16>,
    dir: std::path::PathBuf,
}

impl TestRedisCluster {
    pub async fn start() -> Self {
        let dir = std::env::temp_dir().join(crate::unique_name("tally-redis-cluster"));
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let ports: Vec<u16> = (0..3).map(|_| crate::broker::free_port()).collect();
        let nodes = ports
            .iter()
            .map(|port| {
                Command::new("redis-server")
                    .current_dir(&dir)
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                    .args(["--cluster-enabled", "yes", "--cluster-config-file", &format!("nodes-{port}.conf")])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("starting redis-server")
            })
            .collect();
        let cluster = Self { nodes, ports, dir };
        let started = Instant::now();
        for port in &cluster.ports {
            while std::net::TcpStream::connect(("127.0.0.1", *port)).is_err() {
                assert!(started.elapsed() < Duration::from_secs(10), "redis-server did not start on {port}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let addresses: Vec<String> = cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(created.status.success(), "creating the cluster: {created:?}");
        while !cluster.is_ok() {
            assert!(started.elapsed() < Duration::from_secs(30), "the cluster never reached cluster_state:ok");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        cluster
    }

    /// Every node reports the cluster healthy and all agree on who serves which slots.
    fn is_ok(&self) -> bool {
        let healthy = self.ports.iter().all(|port| {
            Command::new("redis-cli")
                .args(["-p", &port.to_string(), "cluster", "info"])
                .output()
                .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("cluster_state:ok"))
        });
        healthy
            && Command::new("redis-cli")
                .args(["--cluster", "check", &format!("127.0.0.1:{}", self.ports[0])])
                .output()
                .is_ok_and(|out| {
                    String::from_utf8_lossy(&out.stdout).contains("All nodes agree about slots configuration")
                })
    }

    /// How many keys each node holds now.
    pub fn keys_per_node(&self) -> Vec<u64> {
        self.ports
            .iter()
            .map(|port| {
                let out =
                    Command::new("redis-cli").args(["-p", &port.to_string(), "dbsize"]).output().expect("redis-cli");
                String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
            })
            .collect()
    }

    /// The nodes' URLs, comma-separated, as `[enforcer.rate] redis_url` takes a cluster.
    pub fn urls(&self) -> String {
        self.ports.iter().map(|p| format!("redis://127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
    }
}

impl Drop for TestRedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
