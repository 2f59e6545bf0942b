//! Load harnesses for Presently, run against the reference server in a child process on loopback:
//!
//! - `fanout`: N connected clients, each watching the K users after it; status changes at a steady rate; the
//!   latency from `set_status` to each watcher's event (p50, p99, max), server memory per connection and
//!   client memory per instance. The Socket.IO peer (bench/socketio/load.js) runs the same scenario and prints
//!   the same JSON fields, so that `scripts/bench` can set them side by side.
//! - `idle`: one connected, idle client: wakeups of its thread per minute and bytes on the wire per hour.
//! - `storm`: N connected clients, the server killed and restarted: time until all are back, and how their
//!   attempts spread (the largest share of attempts in any 100 ms window).
//! - `floor`: the fan-out scenario's traffic between two minimal processes (16-byte frames over epoll, no
//!   WebSocket, no JSON): what this machine itself costs, below any SDK or peer.
//! - `bare`: the fan-out scenario against the same server with bare WebSocket clients instead of the SDK's
//!   (bare.rs): what the SDK's client adds on top of the stack it is built on.
//! - `cluster`: the fan-out scenario on several server nodes sharing presence through a `redis-server` child
//!   process, each client on node `i % nodes`: latency within a node and across nodes, and the status changes
//!   per second the cluster carried.
//!
//! Each prints one line of JSON on stdout.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use futures_util::StreamExt;
use presently::{Availability, Client, ClientInfo, ConnectionState, Event, Status};
use presently_server::TokenAuthority;
use rand::seq::SliceRandom;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

mod bare;
mod floor;

/// The secret the harness gives its server and signs tokens with.
const SECRET: &[u8] = b"presently load harness secret, 32";

#[derive(Parser)]
#[command(about = "Load harnesses for Presently (each prints one line of JSON)")]
struct Cli {
    /// Threads that run the harness's clients. One by default, like the Node peer's load generator, so that
    /// on a small machine the two load generators take the same share of the cores the servers also need.
    #[arg(long, global = true, default_value_t = 1)]
    client_threads: usize,
    /// How the SDK's clients hand the harness their events: to a listener (`Client::set_event_listener`, as
    /// the Node peer's `socket.on`), or through a stream read by a task per client (`Client::events`).
    #[arg(long, global = true, value_enum, default_value_t = Delivery::Listener)]
    events: Delivery,
    #[command(subcommand)]
    command: Harness,
}

/// How the SDK's clients hand the harness their events (`--events`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Delivery {
    /// `Client::set_event_listener`: called on each client's driver.
    Listener,
    /// `Client::events`: a stream per client, read by a task of its own.
    Stream,
}

/// The delivery chosen on the command line (`--events`).
static DELIVERY: std::sync::OnceLock<Delivery> = std::sync::OnceLock::new();

/// The fan-out scenario, shared by `fanout` and its `floor`.
#[derive(clap::Args)]
struct Scenario {
    /// Connected clients.
    #[arg(long, default_value_t = 1_000)]
    clients: usize,
    /// Users each client watches (the K after it, wrapping around).
    #[arg(long, default_value_t = 5)]
    watch: usize,
    /// Status changes per second, across all clients.
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// Seconds of steady changes.
    #[arg(long, default_value_t = 20)]
    duration: u64,
}

#[derive(Subcommand)]
enum Harness {
    /// Fan-out latency and memory with N clients each watching K others.
    Fanout(Scenario),
    /// The fan-out scenario on several nodes sharing presence through Redis.
    Cluster {
        /// Server nodes (clients are spread over them round-robin).
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        /// Connected clients.
        #[arg(long, default_value_t = 1_000)]
        clients: usize,
        /// Users each client watches (the K after it, wrapping around: half of them on another node).
        #[arg(long, default_value_t = 4)]
        watch: usize,
        /// Status changes per second, across all clients.
        #[arg(long, default_value_t = 1_000)]
        rate: u64,
        /// Seconds of steady changes.
        #[arg(long, default_value_t = 10)]
        duration: u64,
    },
    /// The cost of one connected, idle client.
    Idle {
        /// Seconds to measure.
        #[arg(long, default_value_t = 120)]
        seconds: u64,
    },
    /// The floor of the fan-out scenario on this machine: the same traffic carried by two minimal processes
    /// (fixed 16-byte frames over epoll, no WebSocket, no JSON).
    Floor(Scenario),
    /// The relay process of `floor` (started by it).
    #[command(hide = true)]
    FloorRelay {
        /// Connections to expect.
        #[arg(long)]
        clients: usize,
        /// Watchers of each user.
        #[arg(long)]
        watch: usize,
    },
    /// The fan-out scenario against the same server with bare WebSocket clients instead of the SDK (see
    /// `bare.rs`): what the SDK's client adds on top of its WebSocket stack.
    Bare(Scenario),
    /// Kill and restart the server under N connected clients.
    Storm {
        /// Connected clients.
        #[arg(long, default_value_t = 5_000)]
        clients: usize,
        /// How long the server stays down, in milliseconds.
        #[arg(long, default_value_t = 1_000)]
        down_ms: u64,
    },
}

fn main() {
    let cli = Cli::parse();
    let _ = DELIVERY.set(cli.events);
    // The floor's two processes run without tokio: nothing but the frames' own system calls.
    let floor_result = match cli.command {
        Harness::Floor(Scenario {
            clients,
            watch,
            rate,
            duration,
        }) => Some(floor::floor(clients, watch, rate, duration)),
        Harness::FloorRelay { clients, watch } => {
            Some(floor::relay(clients, watch).map(|()| serde_json::Value::Null))
        }
        _ => None,
    };
    if let Some(result) = floor_result {
        report(result);
        return;
    }
    let runtime = if cli.client_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("bench-main")
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.client_threads)
            .enable_all()
            .thread_name("bench-main")
            .build()
    }
    .expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Harness::Fanout(Scenario {
                clients,
                watch,
                rate,
                duration,
            }) => fanout(clients, watch, rate, duration).await,
            Harness::Cluster {
                nodes,
                clients,
                watch,
                rate,
                duration,
            } => cluster(nodes, clients, watch, rate, duration).await,
            Harness::Idle { seconds } => idle(seconds).await,
            Harness::Storm { clients, down_ms } => storm(clients, down_ms).await,
            Harness::Bare(Scenario {
                clients,
                watch,
                rate,
                duration,
            }) => bare::bare(clients, watch, rate, duration).await,
            Harness::Floor(_) | Harness::FloorRelay { .. } => {
                Err("the floor runs without the runtime".into())
            }
        }
    });
    report(result);
}

/// Prints a harness's JSON report (nothing for `null`), or its error and exits with status 1.
fn report(result: Result<serde_json::Value>) {
    match result {
        Ok(serde_json::Value::Null) => {}
        Ok(report) => println!("{report}"),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}

type Result<T> = std::result::Result<T, String>;

/// The reference server in a child process.
struct ServerProcess {
    child: Child,
    port: u16,
}

impl ServerProcess {
    /// Starts `presently-server` on 127.0.0.1:`port` and waits until it listens.
    async fn start(port: u16) -> Result<Self> {
        Self::start_with(port, &[]).await
    }

    /// Starts `presently-server` on 127.0.0.1:`port` with extra arguments and waits until it listens.
    async fn start_with(port: u16, args: &[String]) -> Result<Self> {
        let binary = server_binary();
        let mut child = Command::new(&binary)
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(args)
            .env("PRESENTLY_SECRET", String::from_utf8_lossy(SECRET).as_ref())
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let listening = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("listening on") {
                    return true;
                }
                eprintln!("server: {line}");
            }
            false
        })
        .await;
        if listening != Ok(true) {
            return Err(format!("{} did not start listening", binary.display()));
        }
        // Keep reading its log so that it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(ServerProcess { child, port })
    }

    fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/v1/ws", self.port)
    }

    /// Resident memory of the server process, in bytes.
    fn rss(&self) -> u64 {
        self.child
            .id()
            .map_or(0, |pid| rss_of(&format!("/proc/{pid}/status")))
    }

    /// Kills the server at once (SIGKILL: no goodbye to anyone).
    async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

/// `presently-server` beside this binary (both are built by the same cargo command), or `PRESENTLY_SERVER_BIN`.
fn server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("PRESENTLY_SERVER_BIN") {
        return PathBuf::from(path);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("presently-server")))
        .unwrap_or_else(|| PathBuf::from("presently-server"))
}

/// A free loopback port (bound and released).
async fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}

/// `VmRSS` of a `/proc/.../status` file, in bytes.
fn rss_of(status_file: &str) -> u64 {
    std::fs::read_to_string(status_file)
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn own_rss() -> u64 {
    rss_of("/proc/self/status")
}

fn tokens() -> Result<TokenAuthority> {
    TokenAuthority::new(SECRET).map_err(|e| e.to_string())
}

fn user(i: usize) -> String {
    format!("u{i}")
}

fn client(url: &str, authority: &TokenAuthority, user: &str) -> Result<Client> {
    let token = authority
        .mint(user, Duration::from_secs(24 * 3_600))
        .map_err(|e| e.to_string())?;
    Client::builder(url)
        .token(token)
        .client_info(ClientInfo::new("presently-bench", "1", "linux"))
        // The harness measures the connection and the fan-out, not idle detection.
        .idle_timeout(None)
        .build()
        .map_err(|e| e.to_string())
}

/// Connects `count` clients for users u0.. in batches of 200.
async fn connect_all(url: &str, authority: &TokenAuthority, count: usize) -> Result<Vec<Client>> {
    let mut clients = Vec::with_capacity(count);
    for start in (0..count).step_by(200) {
        let batch: Vec<Client> = (start..(start + 200).min(count))
            .map(|i| client(url, authority, &user(i)))
            .collect::<Result<_>>()?;
        let connected = futures_util::future::join_all(batch.iter().map(|c| c.connect())).await;
        for (i, outcome) in connected.into_iter().enumerate() {
            outcome.map_err(|e| format!("client {} did not connect: {e}", start + i))?;
        }
        clients.extend(batch);
    }
    Ok(clients)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The user whose change `event` reports and its latency in µs, if it is a change made by the harness: its
/// message carries the instant it was made, in ns since `origin`.
fn latency(event: &Event, origin: Instant) -> Option<(&str, u64)> {
    let Event::PresenceChanged { current, .. } = event else {
        return None;
    };
    let sent = current
        .message
        .as_deref()?
        .strip_prefix('t')?
        .parse::<u64>()
        .ok()?;
    let now = origin.elapsed().as_nanos() as u64;
    Some((&current.user_id, now.saturating_sub(sent) / 1_000))
}

/// Client `i` subscribes to the `watch` users after it (wrapping around) and hands every harness change it hears
/// of to `record` as (its index, the user who changed, latency in µs); returns once every client holds its
/// records (the snapshots are in, within 120 s), with the count of changes heard so far and from then on.
async fn watch_and_measure(
    clients: &[Client],
    watch: usize,
    origin: Instant,
    record: impl Fn(usize, &str, u64) + Send + Sync + 'static,
) -> Result<Arc<AtomicU64>> {
    let record = Arc::new(record);
    let received = Arc::new(AtomicU64::new(0));
    let count = clients.len();
    let delivery = DELIVERY.get().copied().unwrap_or(Delivery::Listener);
    for (i, client) in clients.iter().enumerate() {
        let (record, received) = (record.clone(), received.clone());
        let hear = move |event: &Event| {
            if let Some((changed, micros)) = latency(event, origin) {
                record(i, changed, micros);
                received.fetch_add(1, Ordering::Relaxed);
            }
        };
        match delivery {
            Delivery::Listener => client.set_event_listener(hear),
            Delivery::Stream => {
                let mut events = client.events();
                tokio::spawn(async move {
                    while let Some(event) = events.next().await {
                        hear(&event);
                    }
                });
            }
        }
        client
            .subscribe((1..=watch).map(|k| user((i + k) % count)))
            .map_err(|e| e.to_string())?;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while !clients.iter().all(|c| c.roster().len() >= watch) {
        if Instant::now() > deadline {
            return Err("snapshots did not arrive within 120 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(received)
}

/// Makes `total` status changes at `rate` a second, change `k` at `k / rate` seconds from now, the clients taking
/// turns in a random order; each change carries the instant it was made (ns since `origin`) as its message.
/// Sleeps until the next one is due, so that the load generator is idle between changes. Returns how many it
/// made.
///
/// Runs as a task of its own rather than in the runtime's main future: a main future that yields is woken through
/// the I/O driver (an eventfd write, then one more turn of `epoll_wait`), work that the load generator would do
/// between a change leaving it and the change's frames coming back. A task that yields just goes to the back of
/// the run queue.
async fn steady_changes(clients: &[Client], rate: u64, total: u64, origin: Instant) -> Result<u64> {
    let clients = clients.to_vec();
    tokio::spawn(async move { make_changes(&clients, rate, total, origin).await })
        .await
        .map_err(|e| format!("the task making changes failed: {e}"))?
}

/// The body of [`steady_changes`].
async fn make_changes(clients: &[Client], rate: u64, total: u64, origin: Instant) -> Result<u64> {
    paced_changes(clients.len(), rate, total, origin, |k, who, stamp| {
        let availability = if k.is_multiple_of(2) {
            Availability::Busy
        } else {
            Availability::Away
        };
        clients[who]
            .set_status(Status::new(availability).with_message(format!("t{stamp}")))
            .map_err(|e| e.to_string())
    })
    .await
}

/// The schedule of the fan-out's changes: change `k` (from 0 to `total`) at `k / rate` seconds from now, made by
/// `change(k, client, stamp)`, the `clients` taking turns in a shuffled order; `stamp` is the instant it is made,
/// in ns since `origin`. Sleeps until the next change is due, so that the load generator is idle between
/// changes. Says on stderr when the first change is due. Returns how many it made.
pub(crate) async fn paced_changes(
    clients: usize,
    rate: u64,
    total: u64,
    origin: Instant,
    mut change: impl FnMut(u64, usize, u64) -> Result<()>,
) -> Result<u64> {
    // Clients take turns in a shuffled order, so that no one changes faster than `rate / clients` a second: a
    // client over the server's status rate limit would have its intermediate changes superseded (protocol
    // section 7, rate limit), which would count as lost here.
    let mut order: Vec<usize> = (0..clients).collect();
    order.shuffle(&mut rand::rng());
    // On stderr, for tools that measure the steady phase alone (`scripts/cost-per-change`).
    eprintln!("steady phase: {total} changes at {rate} a second");
    let started = tokio::time::Instant::now();
    let mut sent = 0u64;
    while sent < total {
        tokio::time::sleep_until(started + Duration::from_secs_f64(sent as f64 / rate as f64))
            .await;
        let due = ((started.elapsed().as_secs_f64() * rate as f64) as u64 + 1).min(total);
        while sent < due {
            let who = order[(sent % order.len() as u64) as usize];
            change(sent, who, origin.elapsed().as_nanos() as u64)?;
            sent += 1;
        }
        // Let the clients' tasks send before this task re-arms its timer: the harness's own timer syscall must
        // not count in the latency.
        tokio::task::yield_now().await;
    }
    Ok(sent)
}

async fn fanout(count: usize, watch: usize, rate: u64, duration: u64) -> Result<serde_json::Value> {
    if watch == 0 || watch >= count {
        return Err("--watch must be at least 1 and less than --clients".into());
    }
    let authority = tokens()?;
    let server = ServerProcess::start(free_port().await?).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let server_rss_before = server.rss();
    let own_rss_before = own_rss();
    let origin = Instant::now();

    let connect_started = Instant::now();
    let clients = connect_all(&server.url(), &authority, count).await?;
    let latencies = Arc::new(Mutex::new(Vec::<u64>::with_capacity(
        (rate * duration) as usize * watch,
    )));
    let received = {
        let latencies = latencies.clone();
        watch_and_measure(&clients, watch, origin, move |_, _, micros| {
            if let Ok(mut all) = latencies.lock() {
                all.push(micros);
            }
        })
        .await?
    };
    let connect_s = connect_started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let server_rss_connected = server.rss();
    let own_rss_connected = own_rss();

    // Steady changes, each at its due instant.
    let total = rate * duration;
    let sent = steady_changes(&clients, rate, total, origin).await?;
    let expected = total * watch as u64;
    let deadline = Instant::now() + Duration::from_secs(5);
    while received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut all = latencies.lock().map_err(|_| "poisoned")?.clone();
    all.sort_unstable();
    let report = json!({
        "peer": "presently",
        "events": format!("{:?}", DELIVERY.get().copied().unwrap_or(Delivery::Listener)).to_lowercase(),
        "clients": count,
        "watch": watch,
        "rate": rate,
        "duration_s": duration,
        "connect_s": (connect_s * 1000.0).round() / 1000.0,
        "changes": sent,
        "expected": expected,
        "received": received.load(Ordering::Relaxed),
        "p50_us": percentile(&all, 50.0),
        "p99_us": percentile(&all, 99.0),
        "max_us": all.last().copied().unwrap_or(0),
        "server_rss_per_connection_bytes": server_rss_connected.saturating_sub(server_rss_before) / count as u64,
        "client_rss_per_instance_bytes": own_rss_connected.saturating_sub(own_rss_before) / count as u64,
    });
    for client in &clients {
        client.close().await;
    }
    server.kill().await;
    Ok(report)
}

/// A `redis-server` child process on loopback, without persistence.
struct RedisProcess {
    child: Child,
    port: u16,
}

impl RedisProcess {
    async fn start() -> Result<Self> {
        let port = free_port().await?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                format!("cannot start redis-server (install Debian's redis-server): {e}")
            })?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            if Instant::now() > deadline {
                return Err("redis-server did not start".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(RedisProcess { child, port })
    }

    fn rss(&self) -> u64 {
        self.child
            .id()
            .map_or(0, |pid| rss_of(&format!("/proc/{pid}/status")))
    }
}

async fn cluster(
    nodes: usize,
    count: usize,
    watch: usize,
    rate: u64,
    duration: u64,
) -> Result<serde_json::Value> {
    if nodes < 2 || watch == 0 || watch >= count {
        return Err(
            "--nodes must be at least 2, --watch at least 1 and less than --clients".into(),
        );
    }
    let authority = tokens()?;
    let redis = RedisProcess::start().await?;
    let args = vec![
        "--redis".to_owned(),
        format!("redis://127.0.0.1:{}", redis.port),
    ];
    let mut servers = Vec::new();
    for _ in 0..nodes {
        servers.push(ServerProcess::start_with(free_port().await?, &args).await?);
    }
    // Client i connects to node i % nodes.
    let mut clients: Vec<Option<Client>> = (0..count).map(|_| None).collect();
    for (n, server) in servers.iter().enumerate() {
        let mine: Vec<usize> = (n..count).step_by(nodes).collect();
        for batch in mine.chunks(200) {
            let built: Vec<Client> = batch
                .iter()
                .map(|&i| client(&server.url(), &authority, &user(i)))
                .collect::<Result<_>>()?;
            let connected = futures_util::future::join_all(built.iter().map(|c| c.connect())).await;
            for outcome in connected {
                outcome.map_err(|e| format!("a client did not connect: {e}"))?;
            }
            for (&i, c) in batch.iter().zip(built) {
                clients[i] = Some(c);
            }
        }
    }
    let clients: Vec<Client> = clients.into_iter().flatten().collect();
    let origin = Instant::now();
    // Latencies of watchers on the node of the user who changed, and on another node.
    let same = Arc::new(Mutex::new(Vec::<u64>::new()));
    let across = Arc::new(Mutex::new(Vec::<u64>::new()));
    let received = {
        let (same, across) = (same.clone(), across.clone());
        watch_and_measure(&clients, watch, origin, move |i, changed, micros| {
            let Some(j) = changed
                .strip_prefix('u')
                .and_then(|n| n.parse::<usize>().ok())
            else {
                return;
            };
            let bucket = if j % nodes == i % nodes {
                &same
            } else {
                &across
            };
            if let Ok(mut all) = bucket.lock() {
                all.push(micros);
            }
        })
        .await?
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    let total = rate * duration;
    let started = Instant::now();
    let sent = steady_changes(&clients, rate, total, origin).await?;
    let sending_s = started.elapsed().as_secs_f64();
    let expected = total * watch as u64;
    let deadline = Instant::now() + Duration::from_secs(10);
    while received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delivered_s = started.elapsed().as_secs_f64();
    let sorted = |v: &Arc<Mutex<Vec<u64>>>| -> Result<Vec<u64>> {
        let mut all = v.lock().map_err(|_| "poisoned")?.clone();
        all.sort_unstable();
        Ok(all)
    };
    let (same, across) = (sorted(&same)?, sorted(&across)?);
    let received = received.load(Ordering::Relaxed);
    let report = json!({
        "harness": "cluster",
        "nodes": nodes,
        "clients": count,
        "watch": watch,
        "rate": rate,
        "duration_s": duration,
        "changes": sent,
        "changes_per_s": (sent as f64 / sending_s).round(),
        "expected": expected,
        "received": received,
        "deliveries_per_s": (received as f64 / delivered_s).round(),
        "same_node": { "count": same.len(), "p50_us": percentile(&same, 50.0), "p99_us": percentile(&same, 99.0), "max_us": same.last().copied().unwrap_or(0) },
        "across_nodes": { "count": across.len(), "p50_us": percentile(&across, 50.0), "p99_us": percentile(&across, 99.0), "max_us": across.last().copied().unwrap_or(0) },
        "server_rss_bytes": servers.iter().map(ServerProcess::rss).collect::<Vec<_>>(),
        "redis_rss_bytes": redis.rss(),
    });
    for client in &clients {
        client.close().await;
    }
    for server in servers {
        server.kill().await;
    }
    Ok(report)
}

/// A loopback TCP proxy that counts the bytes it forwards each way.
struct CountingProxy {
    port: u16,
    to_server: Arc<AtomicU64>,
    to_client: Arc<AtomicU64>,
}

impl CountingProxy {
    async fn start(target_port: u16) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let to_server = Arc::new(AtomicU64::new(0));
        let to_client = Arc::new(AtomicU64::new(0));
        let (up, down) = (to_server.clone(), to_client.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = TcpStream::connect(("127.0.0.1", target_port)).await else {
                    continue;
                };
                let (client_read, client_write) = inbound.into_split();
                let (server_read, server_write) = outbound.into_split();
                tokio::spawn(pump(client_read, server_write, up.clone()));
                tokio::spawn(pump(server_read, client_write, down.clone()));
            }
        });
        Ok(CountingProxy {
            port,
            to_server,
            to_client,
        })
    }

    fn bytes(&self) -> (u64, u64) {
        (
            self.to_server.load(Ordering::Relaxed),
            self.to_client.load(Ordering::Relaxed),
        )
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    count: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
    let _ = to.shutdown().await;
}

/// Voluntary context switches so far of every thread of this process named `name`, by thread id: each is the
/// thread going to sleep, to be woken later (involuntary switches are preemptions by other work, not wakeups).
fn switches_of_threads(name: &str) -> Vec<(String, u64)> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .filter_map(|task| {
            let task = task.ok()?;
            let status = std::fs::read_to_string(task.path().join("status")).ok()?;
            let comm = status.lines().find_map(|l| l.strip_prefix("Name:"))?.trim();
            if comm != name {
                return None;
            }
            let switches: u64 = status
                .lines()
                .filter(|l| l.starts_with("voluntary_ctxt_switches:"))
                .filter_map(|l| l.split(':').nth(1)?.trim().parse::<u64>().ok())
                .sum();
            Some((task.file_name().to_string_lossy().into_owned(), switches))
        })
        .collect()
}

async fn idle(seconds: u64) -> Result<serde_json::Value> {
    const THREAD: &str = "presently-idle";
    let authority = tokens()?;
    let server = ServerProcess::start(free_port().await?).await?;
    let proxy = CountingProxy::start(server.port).await?;
    let url = format!("ws://127.0.0.1:{}/v1/ws", proxy.port);
    let (connected_tx, connected_rx) = tokio::sync::oneshot::channel::<Result<()>>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    // The client lives on a runtime of its own, one thread named THREAD, so that its wakeups can be counted.
    let client_thread = std::thread::Builder::new()
        .name(THREAD.into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_name(THREAD)
                .build()
                .expect("client runtime");
            runtime.block_on(async move {
                let client = match client(&url, &authority, "idler") {
                    Ok(client) => client,
                    Err(e) => {
                        let _ = connected_tx.send(Err(e));
                        return;
                    }
                };
                let outcome = client.connect().await.map_err(|e| e.to_string());
                let _ = connected_tx.send(outcome);
                let _ = stop_rx.await;
                client.close().await;
            });
        })
        .map_err(|e| e.to_string())?;
    connected_rx.await.map_err(|_| "client thread ended")??;
    // Let the connection settle (snapshot, first timers) before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = switches_of_threads(THREAD);
    let bytes_before = proxy.bytes();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let elapsed = started.elapsed().as_secs_f64();
    let after = switches_of_threads(THREAD);
    let bytes_after = proxy.bytes();
    let _ = stop_tx.send(());
    let _ = client_thread.join();
    server.kill().await;

    let wakeups: u64 = after
        .iter()
        .filter_map(|(tid, n)| {
            let (_, was) = before.iter().find(|(t, _)| t == tid)?;
            Some(n.saturating_sub(*was))
        })
        .sum();
    let up = bytes_after.0 - bytes_before.0;
    let down = bytes_after.1 - bytes_before.1;
    let per_hour = |bytes: u64| (bytes as f64 * 3_600.0 / elapsed).round() as u64;
    let heartbeat_s = 15.0;
    Ok(json!({
        "harness": "idle",
        "seconds": (elapsed * 10.0).round() / 10.0,
        "client_threads": after.len(),
        "wakeups": wakeups,
        "wakeups_per_minute": (wakeups as f64 * 60.0 / elapsed * 10.0).round() / 10.0,
        "heartbeat_interval_s": heartbeat_s,
        "heartbeats_per_minute": 60.0 / heartbeat_s,
        "bytes_to_server_per_hour": per_hour(up),
        "bytes_to_client_per_hour": per_hour(down),
        "bytes_per_hour": per_hour(up + down),
    }))
}

async fn storm(count: usize, down_ms: u64) -> Result<serde_json::Value> {
    let authority = tokens()?;
    let port = free_port().await?;
    let server = ServerProcess::start(port).await?;
    let clients = connect_all(&server.url(), &authority, count).await?;
    let origin = Instant::now();
    // Every attempt (a move to Connecting) and every arrival (Connected), per client, in µs since `origin`.
    let attempts = Arc::new(Mutex::new(vec![Vec::<u64>::new(); count]));
    let arrivals = Arc::new(Mutex::new(vec![Vec::<u64>::new(); count]));
    // Why attempts failed, with how often.
    let reasons = Arc::new(Mutex::new(std::collections::BTreeMap::<String, u64>::new()));
    for (i, client) in clients.iter().enumerate() {
        let mut events = client.events();
        let (attempts, arrivals, reasons) = (attempts.clone(), arrivals.clone(), reasons.clone());
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                let Event::StateChanged { current, .. } = event else {
                    continue;
                };
                let at = origin.elapsed().as_micros() as u64;
                let log = match current {
                    ConnectionState::Connecting { .. } => &attempts,
                    ConnectionState::Connected { .. } => &arrivals,
                    ConnectionState::Reconnecting { reason, .. } => {
                        // Reasons name addresses and ports: keep the words before them.
                        let kind: String = reason
                            .split(|c: char| c.is_ascii_digit())
                            .next()
                            .unwrap_or("")
                            .to_owned();
                        if let Ok(mut reasons) = reasons.lock() {
                            *reasons.entry(kind).or_insert(0) += 1;
                        }
                        continue;
                    }
                    _ => continue,
                };
                if let Ok(mut log) = log.lock() {
                    log[i].push(at);
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed_at = origin.elapsed().as_micros() as u64;
    server.kill().await;
    tokio::time::sleep(Duration::from_millis(down_ms)).await;
    let server = ServerProcess::start(port).await?;
    let restarted_at = origin.elapsed().as_micros() as u64;
    let deadline = Instant::now() + Duration::from_secs(300);
    while !clients
        .iter()
        .all(|c| matches!(c.state(), ConnectionState::Connected { .. }))
    {
        if Instant::now() > deadline {
            return Err("not every client came back within 300 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let attempts = attempts.lock().map_err(|_| "poisoned")?.clone();
    let arrivals = arrivals.lock().map_err(|_| "poisoned")?.clone();

    let after_kill = |log: &Vec<u64>| {
        log.iter()
            .copied()
            .filter(|t| *t >= killed_at)
            .collect::<Vec<_>>()
    };
    let all_attempts: Vec<u64> = attempts.iter().flat_map(after_kill).collect();
    let first_attempts: Vec<u64> = attempts
        .iter()
        .filter_map(|log| after_kill(log).first().copied())
        .collect();
    let mut back: Vec<u64> = arrivals
        .iter()
        .filter_map(|log| after_kill(log).last().map(|t| t - killed_at))
        .collect();
    back.sort_unstable();
    // The largest share of attempts that fell in any 100 ms window (sliding, at every attempt's start).
    let max_window_share = |times: &[u64]| {
        let mut sorted = times.to_vec();
        sorted.sort_unstable();
        let mut best = 0usize;
        let mut end = 0usize;
        for start in 0..sorted.len() {
            while end < sorted.len() && sorted[end] < sorted[start] + 100_000 {
                end += 1;
            }
            best = best.max(end - start);
        }
        if sorted.is_empty() {
            0.0
        } else {
            best as f64 / sorted.len() as f64
        }
    };
    let round3 = |x: f64| (x * 1000.0).round() / 1000.0;
    // How the first attempts spread: a count per 100 ms after the kill (uniform jitter gives a flat histogram).
    let mut first_per_100ms = Vec::<usize>::new();
    for t in &first_attempts {
        let bucket = ((t - killed_at) / 100_000) as usize;
        if first_per_100ms.len() <= bucket {
            first_per_100ms.resize(bucket + 1, 0);
        }
        first_per_100ms[bucket] += 1;
    }
    let report = json!({
        "harness": "storm",
        "clients": count,
        "down_ms": down_ms,
        "restarted_after_ms": (restarted_at - killed_at) / 1_000,
        "all_back_s": round3(back.last().copied().unwrap_or(0) as f64 / 1e6),
        "back_p50_s": round3(percentile(&back, 50.0) as f64 / 1e6),
        "back_p99_s": round3(percentile(&back, 99.0) as f64 / 1e6),
        "clients_back": back.len(),
        "attempts": all_attempts.len(),
        "max_share_of_attempts_in_100ms": round3(max_window_share(&all_attempts)),
        "max_share_of_first_attempts_in_100ms": round3(max_window_share(&first_attempts)),
        "first_attempts_per_100ms": first_per_100ms,
        "reconnect_reasons": reasons.lock().map_err(|_| "poisoned")?.clone(),
    });
    for client in &clients {
        client.close().await;
    }
    server.kill().await;
    Ok(report)
}
