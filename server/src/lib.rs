//! # presently-server
//!
//! The reference server for Presently protocol v1 (`docs/protocol.md`): presence in memory or shared by several
//! nodes through Redis ([`ServerConfig::redis`], `docs/cluster.md`), sessions with TTL expiry of silent clients,
//! fan-out to watchers, queries, HS256 token authentication and a graceful shutdown that sends `goaway`.
//!
//! It runs as the `presently-server` binary or in-process:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use presently_server::{ServerConfig, start};
//!
//! let config = ServerConfig::new("127.0.0.1:0".parse()?, b"a secret of at least 16 bytes".to_vec());
//! let server = start(config).await?;
//! println!("listening on ws://{}/v1/ws", server.local_addr());
//! server.shutdown().await;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod auth;
mod cluster;
mod hub;
mod outlet;
mod session;
mod sse;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use presently_core::protocol::{MAX_FRAME_BYTES, SUBPROTOCOL};
use tokio::net::TcpSocket;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use auth::{AuthError, TokenAuthority};
pub use cluster::{RedisConfig, StoreError};

/// The read buffer each WebSocket connection starts with, in bytes (it grows for larger frames).
const READ_BUFFER_BYTES: usize = 2 * 1024;

/// The length of the listening socket's accept queue.
const LISTEN_BACKLOG: u32 = 4_096;
pub use hub::ServerStats;
pub use sse::{CONNECTION_HEADER, SSE_PATH, SSE_SEND_PATH};

/// The path of the WebSocket endpoint.
pub const WS_PATH: &str = "/v1/ws";

/// Settings of a server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// The HS256 secret tokens are signed with (at least 16 bytes).
    pub secret: Vec<u8>,
    /// How often clients must send a frame, announced in `welcome`. Default 15 s.
    pub heartbeat_interval: Duration,
    /// How long a silent session lives, announced in `welcome`; at least twice the heartbeat interval.
    /// Default 45 s.
    pub session_ttl: Duration,
    /// How long a new connection may take to send `hello`. Default 10 s.
    pub hello_timeout: Duration,
    /// The largest message accepted, in bytes. Default 65,536.
    pub max_frame_bytes: usize,
    /// The `reconnect_after_ms` sent in `goaway` when draining. Default 1 s.
    pub goaway_reconnect_after: Duration,
    /// Frames queued to one session before it is dropped as a slow consumer. Default 1,024.
    pub outbound_queue: usize,
    /// How long [`RunningServer::shutdown`] waits for sessions to end after `goaway`. Default 5 s.
    pub drain_timeout: Duration,
    /// How long a session whose connection dropped is kept for a resume, announced in `welcome`. Default 30 s;
    /// zero ends sessions at once.
    pub resume_grace: Duration,
    /// How often to send WebSocket ping control frames; `None` sends none. Default: the heartbeat interval.
    pub ping_interval: Option<Duration>,
    /// Status updates (`set_status`, `set_auto`) one connection may send at once. Default 10.
    pub status_burst: u32,
    /// Status updates per second one connection may sustain. Default 5.
    pub status_per_second: f64,
    /// The bearer token of the admin API (`/v1/admin/...`); `None` turns the admin API off. Default `None`.
    pub admin_token: Option<String>,
    /// Serve the WebSocket endpoint ([`WS_PATH`]). Default `true`.
    pub websocket: bool,
    /// Serve the HTTP binding ([`SSE_PATH`], protocol section 11). Default `true`.
    pub sse: bool,
    /// Share presence with other server nodes through Redis; `None` keeps it in this process's memory.
    /// Default `None`.
    pub redis: Option<RedisConfig>,
    /// How many threads serve connections, each with its own event loop (a single-threaded tokio runtime) and
    /// its own listening socket on the address (`SO_REUSEPORT`: the kernel spreads new connections over them).
    /// A change is written to its watchers by the thread that read it, whichever thread serves them, and no other
    /// thread is woken for it. 0 serves every connection on the tokio runtime that called [`start`]. Unix only
    /// (elsewhere 0 is used). Default 0; the `presently-server` binary uses half the CPUs, at least one
    /// (`--io-threads`).
    pub io_threads: usize,
}

impl ServerConfig {
    /// Default settings for this address and secret.
    pub fn new(listen: SocketAddr, secret: Vec<u8>) -> Self {
        ServerConfig {
            listen,
            secret,
            heartbeat_interval: Duration::from_secs(15),
            session_ttl: Duration::from_secs(45),
            hello_timeout: Duration::from_secs(10),
            max_frame_bytes: MAX_FRAME_BYTES,
            goaway_reconnect_after: Duration::from_secs(1),
            outbound_queue: 1_024,
            drain_timeout: Duration::from_secs(5),
            resume_grace: Duration::from_secs(30),
            ping_interval: Some(Duration::from_secs(15)),
            status_burst: 10,
            status_per_second: 5.0,
            admin_token: None,
            websocket: true,
            sse: true,
            redis: None,
            io_threads: 0,
        }
    }

    /// Heartbeat interval and TTL together (the TTL must be at least twice the interval).
    pub fn with_heartbeat(mut self, interval: Duration, session_ttl: Duration) -> Self {
        self.heartbeat_interval = interval;
        self.session_ttl = session_ttl;
        self.ping_interval = self.ping_interval.map(|_| interval);
        self
    }
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The secret is too short.
    #[error(transparent)]
    Secret(#[from] auth::WeakSecret),
    /// The settings contradict each other or the protocol.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The shared store (Redis) could not be reached.
    #[error("cannot use the shared store: {0}")]
    Store(#[from] StoreError),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

pub(crate) struct Context {
    config: ServerConfig,
    auth: TokenAuthority,
    hub: Arc<hub::Hub>,
    /// The link to the other nodes, when presence is shared through Redis.
    cluster: Option<Arc<cluster::Cluster>>,
    /// Cancelled to drain: sessions send goaway and close.
    drain: CancellationToken,
    /// Cancelled to stop at once, as if the process died.
    kill: CancellationToken,
    tracker: TaskTracker,
    /// The open connections of the HTTP binding.
    sse: sse::Connections,
}

/// Where connections are accepted.
enum Listeners {
    /// On the runtime that started the server.
    Here(tokio::net::TcpListener),
    /// One listener per I/O thread, all on the same address (`SO_REUSEPORT`).
    Threads(Vec<std::net::TcpListener>),
}

/// Binds `listen`: one listener, or `io_threads` listeners sharing the address. Returns them and the bound address.
fn bind(listen: SocketAddr, io_threads: usize) -> Result<(Listeners, SocketAddr), StartError> {
    let bind_error = |source| StartError::Bind {
        addr: listen,
        source,
    };
    let shared = cfg!(unix) && io_threads > 0;
    let open = |at: SocketAddr| -> std::io::Result<tokio::net::TcpListener> {
        let socket = if at.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }?;
        // Restarting on the same port right after a stop must work (connections may linger in TIME_WAIT).
        socket.set_reuseaddr(true)?;
        #[cfg(unix)]
        if shared {
            socket.set_reuseport(true)?;
        }
        socket.bind(at)?;
        // A deep accept queue: after a restart every client of the node comes back within seconds, and a full
        // queue drops their SYNs, which the kernel retries only after 1, 3, 7... seconds (the kernel caps it at
        // somaxconn).
        socket.listen(LISTEN_BACKLOG)
    };
    let first = open(listen).map_err(bind_error)?;
    let addr = first.local_addr().map_err(bind_error)?;
    if !shared {
        return Ok((Listeners::Here(first), addr));
    }
    // The others bind the port the first one got (when `listen` asked for any free port).
    let mut listeners = vec![first.into_std().map_err(bind_error)?];
    for _ in 1..io_threads {
        let listener = open(addr).and_then(|l| l.into_std()).map_err(bind_error)?;
        listeners.push(listener);
    }
    Ok((Listeners::Threads(listeners), addr))
}

/// Accepts and serves connections until the server drains (in-flight requests are finished) or `halt` is
/// cancelled (dropped at once).
async fn serve_until_stopped(
    listener: tokio::net::TcpListener,
    app: Router,
    ctx: Arc<Context>,
    halt: CancellationToken,
) {
    let drain = {
        let (drain, kill) = (ctx.drain.clone(), ctx.kill.clone());
        async move {
            tokio::select! {
                _ = drain.cancelled() => {}
                _ = kill.cancelled() => {}
            }
        }
    };
    // Presence frames are small and latency matters: no Nagle delay on any connection.
    let listener =
        axum::serve::ListenerExt::tap_io(listener, |stream: &mut tokio::net::TcpStream| {
            let _ = stream.set_nodelay(true);
        });
    let serve = axum::serve(listener, app).with_graceful_shutdown(drain);
    tokio::select! {
        served = serve => if let Err(e) = served {
            tracing::error!(error = %e, "server stopped with an error");
        },
        _ = halt.cancelled() => {}
    }
}

/// The body of one I/O thread: its own single-threaded runtime serving the connections its listener accepts.
/// When the server drains, the thread runs until every session has ended; when `halt` is cancelled (the server is
/// killed), it stops at once. Then the runtime is dropped with whatever still runs on it, and `done` is told.
fn serve_on_own_thread(
    listener: std::net::TcpListener,
    app: Router,
    ctx: Arc<Context>,
    halt: CancellationToken,
    done: tokio::sync::oneshot::Sender<()>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot start an I/O thread's runtime");
            ctx.kill.cancel();
            return;
        }
    };
    // This thread's event loop serves its connections alone: it writes its changes to watchers itself.
    hub::write_inline_on_this_thread();
    runtime.block_on(async move {
        match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => serve_until_stopped(listener, app, ctx.clone(), halt.clone()).await,
            Err(e) => {
                tracing::error!(error = %e, "an I/O thread cannot listen");
                ctx.kill.cancel();
            }
        }
        // Draining: the sessions of this thread still say goodbye (goaway, close) on it; killed: they go with it.
        tokio::select! {
            _ = ctx.tracker.wait() => {}
            _ = halt.cancelled() => {}
        }
    });
    drop(runtime);
    let _ = done.send(());
}

/// A server running in this process.
pub struct RunningServer {
    addr: SocketAddr,
    ctx: Arc<Context>,
    serve: JoinHandle<()>,
}

impl std::fmt::Debug for RunningServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningServer")
            .field("addr", &self.addr)
            .finish()
    }
}

/// Binds the address and starts serving on the current tokio runtime.
pub async fn start(config: ServerConfig) -> Result<RunningServer, StartError> {
    let auth = TokenAuthority::new(&config.secret)?;
    if config.session_ttl < config.heartbeat_interval * 2 {
        return Err(StartError::Config(format!(
            "the session TTL ({} ms) must be at least twice the heartbeat interval ({} ms)",
            config.session_ttl.as_millis(),
            config.heartbeat_interval.as_millis()
        )));
    }
    if config.heartbeat_interval.is_zero()
        || config.max_frame_bytes < 1_024
        || config.outbound_queue == 0
    {
        return Err(StartError::Config(
            "heartbeat interval, frame limit (>= 1024 bytes) and outbound queue must be positive"
                .into(),
        ));
    }
    let (listeners, addr) = bind(config.listen, config.io_threads)?;

    let max_frame_bytes = config.max_frame_bytes;
    let resumable = !config.resume_grace.is_zero();
    let hub = Arc::new(hub::Hub::new(max_frame_bytes, resumable));
    let kill = CancellationToken::new();
    let cluster = match &config.redis {
        Some(redis) => {
            if redis.node_ttl < Duration::from_millis(100) {
                return Err(StartError::Config(
                    "the node TTL must be at least 100 ms".into(),
                ));
            }
            Some(cluster::Cluster::start(redis.clone(), hub.clone(), kill.clone()).await?)
        }
        None => None,
    };
    let ctx = Arc::new(Context {
        config,
        auth,
        hub,
        cluster,
        drain: CancellationToken::new(),
        kill,
        tracker: TaskTracker::new(),
        sse: sse::Connections::default(),
    });
    let mut app = Router::new();
    if ctx.config.websocket {
        app = app.route(WS_PATH, get(upgrade));
    }
    if ctx.config.sse {
        // Bodies far above the frame limit are refused unread; above it they get `frame_too_large`.
        let hard_limit = ctx.config.max_frame_bytes.saturating_mul(4);
        app = app
            .route(SSE_PATH, axum::routing::post(sse::open))
            .route(SSE_SEND_PATH, axum::routing::post(sse::send))
            .layer(axum::extract::DefaultBodyLimit::max(hard_limit))
            .layer(sse::cors());
    }
    let app = app
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/v1/admin/users/{user}/contacts",
            get(get_contacts).put(put_contacts),
        )
        .route(
            "/v1/admin/channels/{channel}",
            get(get_channel).put(put_channel),
        )
        .route(
            "/v1/admin/channels/{channel}/members/{user}",
            axum::routing::put(add_member).delete(remove_member),
        )
        .with_state(ctx.clone());
    let serve = match listeners {
        Listeners::Here(listener) => tokio::spawn(serve_until_stopped(
            listener,
            app,
            ctx.clone(),
            ctx.kill.clone(),
        )),
        Listeners::Threads(listeners) => {
            // The threads stop when the server is killed, and also when this task goes with the runtime that
            // started the server (or starting fails half-way), as a server on that runtime would: no listener is
            // left sharing the port with a server started after it.
            let halt = ctx.kill.child_token();
            let halt_when_dropped = halt.clone().drop_guard();
            let mut finished = Vec::with_capacity(listeners.len());
            for (i, listener) in listeners.into_iter().enumerate() {
                let (done, done_rx) = tokio::sync::oneshot::channel::<()>();
                let (app, ctx, halt) = (app.clone(), ctx.clone(), halt.clone());
                std::thread::Builder::new()
                    .name(format!("presently-io-{i}"))
                    .spawn(move || serve_on_own_thread(listener, app, ctx, halt, done))
                    .map_err(|source| StartError::Bind { addr, source })?;
                finished.push(done_rx);
            }
            tokio::spawn(async move {
                let _halt_when_dropped = halt_when_dropped;
                for done in finished {
                    let _ = done.await;
                }
            })
        }
    };
    tracing::info!(%addr, "listening");
    Ok(RunningServer { addr, ctx, serve })
}

async fn upgrade(State(ctx): State<Arc<Context>>, ws: WebSocketUpgrade) -> Response {
    // Messages above the protocol limit are answered with `frame_too_large`; far above it the WebSocket layer
    // drops the connection without reading them whole.
    let hard_limit = ctx.config.max_frame_bytes.saturating_mul(4);
    ws.protocols([SUBPROTOCOL])
        // Presence frames are small: a 2 KiB read buffer that grows for a larger frame, instead of 128 KiB
        // reserved for every connection.
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(hard_limit)
        .max_frame_size(hard_limit)
        .on_upgrade(move |socket| {
            let tracker = ctx.tracker.clone();
            tracker.track_future(session::run_websocket(socket, ctx))
        })
}

/// The body of `PUT /v1/admin/users/{user}/contacts`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ContactList {
    /// The user ids that may see the user under `contacts` visibility.
    pub contacts: Vec<String>,
}

/// Checks the admin bearer token: 404 when the admin API is off, 401 when the token is wrong.
/// An admin API refusal: status and explanation.
type Refusal = (StatusCode, String);

fn admin(ctx: &Context, headers: &HeaderMap) -> Result<(), Refusal> {
    let Some(expected) = ctx.config.admin_token.as_deref() else {
        return Err((
            StatusCode::NOT_FOUND,
            "the admin API is off (no admin token configured)".into(),
        ));
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Compare without leaking the length of a matching prefix through timing.
    let matches = given.is_some_and(|g| {
        g.len() == expected.len()
            && g.bytes()
                .zip(expected.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    });
    if matches {
        Ok(())
    } else {
        Err((
            StatusCode::UNAUTHORIZED,
            "a valid admin bearer token is required".into(),
        ))
    }
}

fn bad_request(message: String) -> Refusal {
    (StatusCode::BAD_REQUEST, message)
}

fn check_users(users: &[String], limit: usize) -> Result<(), Refusal> {
    if users.len() > limit {
        return Err(bad_request(format!("at most {limit} users")));
    }
    users
        .iter()
        .try_for_each(|u| presently_core::protocol::validate_user_id(u))
        .map_err(|e| bad_request(e.to_string()))
}

async fn get_contacts(
    State(ctx): State<Arc<Context>>,
    headers: HeaderMap,
    Path(user): Path<String>,
) -> Response {
    if let Err(refusal) = admin(&ctx, &headers) {
        return refusal.into_response();
    }
    let contacts = match &ctx.cluster {
        Some(cluster) => match cluster.contacts(&user).await {
            Ok(contacts) => contacts,
            Err(e) => return store_unavailable(e),
        },
        None => ctx.hub.contacts(&user),
    };
    Json(ContactList { contacts }).into_response()
}

async fn put_contacts(
    State(ctx): State<Arc<Context>>,
    headers: HeaderMap,
    Path(user): Path<String>,
    Json(list): Json<ContactList>,
) -> Response {
    if let Err(refusal) = admin(&ctx, &headers) {
        return refusal.into_response();
    }
    if let Err(refusal) = check_users(std::slice::from_ref(&user), 1)
        .and_then(|()| check_users(&list.contacts, presently_core::protocol::MAX_CONTACTS))
    {
        return refusal.into_response();
    }
    match set_contacts(&ctx, &user, list.contacts.into_iter().collect()).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => store_unavailable(e),
    }
}

/// The body of `PUT /v1/admin/channels/{channel}`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ChannelMembers {
    /// The channel's members.
    pub members: Vec<String>,
}

async fn get_channel(
    State(ctx): State<Arc<Context>>,
    headers: HeaderMap,
    Path(channel): Path<String>,
) -> Response {
    if let Err(refusal) = admin(&ctx, &headers) {
        return refusal.into_response();
    }
    let members = match &ctx.cluster {
        Some(cluster) => match cluster.channel_members(&channel).await {
            Ok(members) => members,
            Err(e) => return store_unavailable(e),
        },
        None => ctx.hub.channel_members(&channel),
    };
    Json(ChannelMembers { members }).into_response()
}

async fn put_channel(
    State(ctx): State<Arc<Context>>,
    headers: HeaderMap,
    Path(channel): Path<String>,
    Json(body): Json<ChannelMembers>,
) -> Response {
    if let Err(refusal) = admin(&ctx, &headers)
        .and_then(|()| check_users(std::slice::from_ref(&channel), 1))
        .and_then(|()| check_users(&body.members, presently_core::protocol::MAX_CHANNEL_MEMBERS))
    {
        return refusal.into_response();
    }
    match change_channel(
        &ctx,
        &channel,
        cluster::ChannelChange::Set(body.members.into_iter().collect()),
    )
    .await
    {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => store_unavailable(e),
    }
}

/// 503 for an admin request the shared store could not serve.
fn store_unavailable(e: StoreError) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the shared store is unavailable: {e}"),
    )
        .into_response()
}

/// Replaces a user's contacts, in the shared store if there is one.
async fn set_contacts(
    ctx: &Context,
    user: &str,
    contacts: std::collections::BTreeSet<String>,
) -> Result<(), StoreError> {
    match &ctx.cluster {
        Some(cluster) => cluster.set_contacts(user, contacts).await,
        None => {
            ctx.hub.set_contacts(user, contacts);
            Ok(())
        }
    }
}

/// Changes a channel's members, in the shared store if there is one.
async fn change_channel(
    ctx: &Context,
    channel: &str,
    change: cluster::ChannelChange,
) -> Result<(), StoreError> {
    if let Some(cluster) = &ctx.cluster {
        return cluster.change_channel(channel, change).await;
    }
    let limit = presently_core::protocol::MAX_CHANNEL_MEMBERS;
    let mut full = false;
    ctx.hub.update_channel(channel, |members| match change {
        cluster::ChannelChange::Set(members) => members,
        cluster::ChannelChange::Add(user) => {
            let mut members = members.clone();
            if members.len() < limit || members.contains(&user) {
                members.insert(user);
            } else {
                full = true;
            }
            members
        }
        cluster::ChannelChange::Remove(user) => {
            let mut members = members.clone();
            members.remove(&user);
            members
        }
    });
    if full {
        Err(StoreError::ChannelFull)
    } else {
        Ok(())
    }
}

async fn add_member(
    State(ctx): State<Arc<Context>>,
    headers: HeaderMap,
    Path((channel, user)): Path<(String, String)>,
) -> Response {
    change_member(&ctx, &headers, channel, user, true).await
}

async fn remove_member(
    State(ctx): State<Arc<Context>>,
    headers: HeaderMap,
    Path((channel, user)): Path<(String, String)>,
) -> Response {
    change_member(&ctx, &headers, channel, user, false).await
}

async fn change_member(
    ctx: &Context,
    headers: &HeaderMap,
    channel: String,
    user: String,
    add: bool,
) -> Response {
    if let Err(refusal) =
        admin(ctx, headers).and_then(|()| check_users(&[channel.clone(), user.clone()], 2))
    {
        return refusal.into_response();
    }
    let change = if add {
        cluster::ChannelChange::Add(user)
    } else {
        cluster::ChannelChange::Remove(user)
    };
    match change_channel(ctx, &channel, change).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(StoreError::ChannelFull) => bad_request("the channel is full".into()).into_response(),
        Err(e) => store_unavailable(e),
    }
}

impl RunningServer {
    /// Replaces a channel's members (as `PUT /v1/admin/channels/{channel}` does); returns once this node
    /// applied the change (with Redis: once the store has it).
    pub async fn set_channel_members<I, S>(
        &self,
        channel: &str,
        members: I,
    ) -> Result<(), StoreError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let members = members.into_iter().map(Into::into).collect();
        change_channel(&self.ctx, channel, cluster::ChannelChange::Set(members)).await
    }

    /// Replaces a user's contact list (as `PUT /v1/admin/users/{user}/contacts` does); returns once this node
    /// applied the change (with Redis: once the store has it, or with an error if Redis stays away).
    pub async fn set_contacts<I, S>(&self, user_id: &str, contacts: I) -> Result<(), StoreError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        set_contacts(
            &self.ctx,
            user_id,
            contacts.into_iter().map(Into::into).collect(),
        )
        .await
    }

    /// This node's id in the shared store (`None` without Redis).
    pub fn node_id(&self) -> Option<String> {
        self.ctx.cluster.as_ref().map(|c| c.node_id().to_owned())
    }

    /// The address the server listens on (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The WebSocket URL of this server, `ws://ADDR/v1/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}{WS_PATH}", self.addr)
    }

    /// Counters.
    pub fn stats(&self) -> ServerStats {
        self.ctx.hub.stats()
    }

    /// A token for `user_id` signed with this server's secret, valid for `ttl`.
    pub fn mint_token(&self, user_id: &str, ttl: Duration) -> Result<String, AuthError> {
        self.ctx.auth.mint(user_id, ttl)
    }

    /// Drains: stops accepting, sends `goaway` to every session, waits for them to close (at most the drain
    /// timeout), then stops.
    pub async fn shutdown(self) {
        self.ctx.drain.cancel();
        self.ctx.tracker.close();
        if tokio::time::timeout(self.ctx.config.drain_timeout, self.ctx.tracker.wait())
            .await
            .is_err()
        {
            self.ctx.kill.cancel();
            self.ctx.tracker.wait().await;
        }
        if let Some(cluster) = &self.ctx.cluster {
            cluster.shutdown().await;
        }
        let _ = self.serve.await;
    }

    /// Stops at once, as if the process had died: connections are dropped without `goaway` or close frames.
    pub async fn kill(self) {
        self.ctx.kill.cancel();
        self.ctx.tracker.close();
        self.ctx.tracker.wait().await;
        let _ = self.serve.await;
    }
}
