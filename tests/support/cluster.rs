//! Several server nodes sharing presence through a real `redis-server` on loopback, and a round-robin TCP load
//! balancer in front of them (no sticky sessions).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use presently_server::{RedisConfig, RunningServer};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use super::server_config;

/// How long a node counts as alive after its last heartbeat to Redis, in the cluster tests.
pub const NODE_TTL: Duration = Duration::from_secs(1);

/// A `redis-server` child process on a loopback port, without persistence: a restart loses everything, as
/// a crashed Redis without AOF would.
pub struct Redis {
    port: u16,
    child: Option<Child>,
}

impl Redis {
    /// Starts `redis-server` on a port of its own ([`super::reserved_addr`]). Fails the test when it is not installed (`scripts/test` installs
    /// it from Debian's packages).
    pub async fn start() -> Redis {
        let port = super::reserved_addr().port();
        let mut redis = Redis { port, child: None };
        redis.spawn().await;
        redis
    }

    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("redis-server runs (install Debian's redis-server package: scripts/test does)");
        let pid = child.id();
        self.child = Some(child);
        // Ready when the Redis answering on the port is this child, not merely when something accepts there.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "redis-server on port {} exited ({status}): is the port taken?",
                    self.port
                );
            }
            let info = self.cli(&["INFO", "server"]);
            let serving = info
                .lines()
                .filter_map(|line| line.trim().strip_prefix("process_id:"))
                .any(|id| id.parse() == Ok(pid));
            if serving {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server (process {pid}) did not answer on port {} within 10 s; it said: {info:?}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The address Redis listens on.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The URL nodes connect to.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills Redis (SIGKILL: its data is gone) and starts an empty one on the same port.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// Kills Redis and leaves it down.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts Redis again after [`Redis::kill`] (empty).
    pub async fn start_again(&mut self) {
        self.spawn().await;
    }

    /// Runs a command through `redis-cli` and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .arg("-p")
            .arg(self.port.to_string())
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts a server node at `addr` (port 0: any) sharing presence through `redis`.
pub async fn start_node_at(redis: &Redis, addr: SocketAddr) -> RunningServer {
    start_node_at_url(&redis.url(), addr).await
}

/// Starts a server node on a free port sharing presence through the Redis at `url`.
pub async fn start_node_with_url(url: &str) -> RunningServer {
    start_node_at_url(url, "127.0.0.1:0".parse().unwrap()).await
}

async fn start_node_at_url(url: &str, addr: SocketAddr) -> RunningServer {
    let mut config = server_config(addr);
    let mut shared = RedisConfig::new(url);
    shared.node_ttl = NODE_TTL;
    config.redis = Some(shared);
    presently_server::start(config).await.expect("node starts")
}

/// Starts a server node on a free port sharing presence through `redis`.
pub async fn start_node(redis: &Redis) -> RunningServer {
    start_node_at(redis, "127.0.0.1:0".parse().unwrap()).await
}

/// A round-robin TCP load balancer: each new connection goes to the next node that accepts it.
pub struct LoadBalancer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl LoadBalancer {
    /// Listens on a free port in front of `nodes`.
    pub async fn start(nodes: Vec<SocketAddr>) -> LoadBalancer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let next = Arc::new(Mutex::new(0usize));
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let _ = inbound.set_nodelay(true);
                let (nodes, next) = (nodes.clone(), next.clone());
                tokio::spawn(async move {
                    // The first connection goes to the first node, the next to the second, and so on.
                    let start = {
                        let mut next = next.lock().unwrap();
                        *next += 1;
                        *next - 1
                    };
                    for i in 0..nodes.len() {
                        let node = nodes[(start + i) % nodes.len()];
                        if let Ok(mut outbound) = TcpStream::connect(node).await {
                            let _ = outbound.set_nodelay(true);
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            return;
                        }
                    }
                });
            }
        });
        LoadBalancer { addr, task }
    }

    /// The WebSocket URL through the balancer.
    pub fn ws_url(&self) -> String {
        format!("ws://{}{}", self.addr, presently_server::WS_PATH)
    }
}

impl Drop for LoadBalancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
