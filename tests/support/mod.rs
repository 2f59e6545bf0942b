//! Helpers for the end-to-end tests: an in-process server, clients, event-driven waits and a TCP proxy that
//! can freeze its connections (a half-open link).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use presently::{Client, ClientInfo, ReconnectPolicy};
use presently_server::{RunningServer, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

pub const SECRET: &[u8] = b"end-to-end test secret, 32 bytes";
/// Short timings so the suite runs in seconds: the server asks for a frame every 200 ms and drops silent
/// sessions after 600 ms; clients declare a link dead after 200 + 300 ms of silence.
pub const HEARTBEAT: Duration = Duration::from_millis(200);
pub const TTL: Duration = Duration::from_millis(600);
pub const GRACE: Duration = Duration::from_millis(300);
/// How long a test waits for something that should happen, before it fails with a description.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub fn server_config(listen: SocketAddr) -> ServerConfig {
    let mut config = ServerConfig::new(listen, SECRET.to_vec()).with_heartbeat(HEARTBEAT, TTL);
    config.goaway_reconnect_after = Duration::from_millis(100);
    config.drain_timeout = Duration::from_secs(2);
    config
}

pub async fn start_server() -> RunningServer {
    start_server_at("127.0.0.1:0".parse().unwrap()).await
}

pub async fn start_server_at(addr: SocketAddr) -> RunningServer {
    presently_server::start(server_config(addr))
        .await
        .expect("server starts")
}

pub fn token(server: &RunningServer, user: &str) -> String {
    server
        .mint_token(user, Duration::from_secs(3_600))
        .expect("token")
}

/// A client for `user` against `url` with the test timings and a fast backoff.
pub fn client_for(url: &str, token: &str, name: &str) -> Client {
    Client::builder(url)
        .token(token)
        .client_info(ClientInfo::new(name, "test", "linux"))
        .liveness_grace(GRACE)
        .connect_timeout(Duration::from_secs(2))
        .reconnect_policy(ReconnectPolicy {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(500),
            stable_after: Duration::from_secs(5),
        })
        .build()
        .expect("client builds")
}

pub async fn connected_client(server: &RunningServer, user: &str) -> Client {
    let client = client_for(&server.ws_url(), &token(server, user), user);
    client.connect().await.expect("connects");
    client
}

/// Waits (driven by the client's events, no polling) until `ready` holds, or fails the test saying what was
/// awaited and what the client held.
pub async fn until(client: &Client, what: &str, ready: impl Fn(&Client) -> bool) {
    let mut events = client.events();
    let deadline = Instant::now() + PATIENCE;
    loop {
        if ready(client) {
            return;
        }
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("event stream ended while waiting for {what}"),
            Err(_) => panic!(
                "timed out waiting for {what}; state {:?}, roster {:#?}",
                client.state(),
                client.roster()
            ),
        }
    }
}

pub fn is_connected(client: &Client) -> bool {
    matches!(client.state(), presently::ConnectionState::Connected { .. })
}

/// A TCP proxy whose existing connections can be frozen: bytes stop flowing both ways but nothing is closed,
/// exactly like a link that went half-open. Connections made after a freeze flow normally.
pub struct FreezableProxy {
    pub addr: SocketAddr,
    frozen_before: watch::Sender<u64>,
    next_connection: Arc<AtomicU64>,
}

impl FreezableProxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (frozen_before, frozen_rx) = watch::channel(0u64);
        let next_connection = Arc::new(AtomicU64::new(1));
        let counter = next_connection.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let id = counter.fetch_add(1, Ordering::SeqCst);
                let Ok(outbound) = TcpStream::connect(target).await else {
                    continue;
                };
                let (ri, wi) = inbound.into_split();
                let (ro, wo) = outbound.into_split();
                tokio::spawn(pump(ri, wo, id, frozen_rx.clone()));
                tokio::spawn(pump(ro, wi, id, frozen_rx.clone()));
            }
        });
        FreezableProxy {
            addr,
            frozen_before,
            next_connection,
        }
    }

    /// Freezes every connection open now.
    pub fn freeze(&self) {
        let upto = self.next_connection.load(Ordering::SeqCst);
        self.frozen_before.send_replace(upto);
    }

    pub fn connections(&self) -> u64 {
        self.next_connection.load(Ordering::SeqCst) - 1
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    id: u64,
    mut frozen_before: watch::Receiver<u64>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if id < *frozen_before.borrow() {
            // Half-open: hold both sockets open and move nothing, for ever.
            let _keep = (from, to);
            std::future::pending::<()>().await;
            return;
        }
        tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => { let _ = to.shutdown().await; return; }
                Ok(n) => if to.write_all(&buf[..n]).await.is_err() { return },
            },
            _ = frozen_before.changed() => {}
        }
    }
}
