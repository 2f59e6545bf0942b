//! Helpers for the end-to-end tests: an in-process server, clients, event-driven waits and a TCP proxy that
//! can freeze its connections (a half-open link).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use presently::{Client, ClientInfo, ReconnectPolicy};
use presently_server::{RunningServer, ServerConfig};
use tokio::time::Instant;

pub mod cluster;
pub mod fault_proxy;
mod proxy;
#[allow(unused_imports)]
pub use proxy::FreezableProxy;

pub const SECRET: &[u8] = b"end-to-end test secret, 32 bytes";
/// Short timings so the suite runs in seconds: the server asks for a frame every 200 ms and drops silent
/// sessions after 600 ms; clients declare a link dead after 200 + 300 ms of silence.
pub const HEARTBEAT: Duration = Duration::from_millis(200);
pub const TTL: Duration = Duration::from_millis(600);
pub const GRACE: Duration = Duration::from_millis(300);
/// How long a test waits for something that should happen, before it fails with a description.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// The first port [`reserved_addr`] hands out, and how many it can hand out: a range just below Linux's
/// default ephemeral range (32768–60999, `net.ipv4.ip_local_port_range`).
const RESERVED_PORTS: std::ops::Range<u32> = 20_000..32_000;

/// A loopback address for something a test will stop and start again on the same port (a server, Redis).
///
/// A port from `bind(0)` comes from the kernel's ephemeral range, so while a test has its server down, any
/// test running beside it can be handed the same port for its own listener or outgoing connection — and
/// the restarted server then fails to bind, or the test talks to a stranger. These ports lie below that
/// range, and each is handed out once per test process (starting at an offset from the process id, so two
/// test processes side by side rarely meet); a port something else already holds is skipped.
pub fn reserved_addr() -> SocketAddr {
    use std::sync::atomic::{AtomicU32, Ordering};
    static HANDED_OUT: AtomicU32 = AtomicU32::new(0);
    let count = RESERVED_PORTS.end - RESERVED_PORTS.start;
    let offset = std::process::id().wrapping_mul(7_919) % count;
    loop {
        let n = HANDED_OUT.fetch_add(1, Ordering::Relaxed);
        assert!(n < count, "all {count} reserved test ports are handed out");
        let port = (RESERVED_PORTS.start + (offset + n) % count) as u16;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if std::net::TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
}

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

/// A connected client for `user` against `url` that goes idle (away) after `idle_timeout` without activity, with
/// no "still there?" warning.
pub async fn idle_prone_client(url: &str, token: &str, idle_timeout: Duration) -> Client {
    let client = Client::builder(url)
        .token(token)
        .idle_timeout(Some(idle_timeout))
        .idle_warning(None)
        .build()
        .expect("client");
    client.connect().await.expect("connects");
    client
}

/// Drops the events already heard, until none has come for `quiet`.
pub async fn settle(events: &mut presently::EventStream, quiet: Duration) {
    while tokio::time::timeout(quiet, events.next()).await.is_ok() {}
}

/// The (availability, message) of every presence change `events` hears within `window` from now.
pub async fn presence_changes_within(
    events: &mut presently::EventStream,
    window: Duration,
) -> Vec<(presently::Availability, Option<String>)> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + window;
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, events.next()).await {
        if let presently::Event::PresenceChanged { current, .. } = event {
            seen.push((current.availability, current.message));
        }
    }
    seen
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

/// Waits for the client's next move to `Reconnecting` and returns its reason. Reads the event stream, which
/// keeps every transition, rather than the state watch, which keeps only the latest: on a busy machine the
/// client may already be connected again before the test looks.
pub async fn next_reconnecting_reason(events: &mut presently::EventStream) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(presently::Event::StateChanged {
                current: presently::ConnectionState::Reconnecting { reason, .. },
                ..
            })) => return reason,
            Ok(Some(_)) => {}
            Ok(None) => panic!("event stream ended while waiting for a reconnect"),
            Err(_) => panic!("timed out waiting for the client to start reconnecting"),
        }
    }
}
