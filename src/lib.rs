//! # presently
//!
//! Presence for every app — who is online, away or busy — and your own user's status kept right. This crate is
//! the Rust SDK: an async client on tokio that drives the sans-IO core ([`presently_core`], re-exported here)
//! over a WebSocket (`wss://` through rustls by default).
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use presently::{Activity, Availability, Client, Event, Status};
//!
//! # async fn demo() -> Result<(), presently::Error> {
//! let client = Client::builder("wss://presence.example.com/v1/ws")
//!     .token("<token from your backend>")
//!     .build()?;
//! let mut events = client.events();
//! client.connect().await?;
//! client.set_status(
//!     Status::new(Availability::Busy)
//!         .with_message("Mixing the EP")
//!         .with_activity(Activity::new("in_studio", "Ableton Live 12")),
//! )?;
//! client.subscribe(["bob", "carol"])?;
//! while let Some(event) = events.next().await {
//!     if let Event::PresenceChanged { user_id, current, .. } = event {
//!         println!("{user_id} is {}", current.availability);
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! Instead of (or beside) streams, [`Client::set_event_listener`] hands each event to a function as it
//! happens, on the client's own task, with no buffer in between.
//!
//! The client reconnects by itself with jittered backoff, detects half-open links with its heartbeat and, after
//! every reconnect, re-asserts the status you set and every subscription. See `docs/protocol.md` for the wire
//! contract.
#![warn(missing_docs)]

mod driver;
mod sse;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::Stream;
use tokio::sync::{Notify, broadcast, oneshot, watch};

pub use presently_core;
pub use presently_core::protocol::{self, ValidationError};
pub use presently_core::{
    Activity, AutomationConfig, Availability, ClientConfig, ClientInfo, ConnectionState, DaySet,
    DndSchedule, DndSource, DndState, DndWindow, ErrorCode, Event, LocalTime, Presence, Privacy,
    QueryError, QueryId, ReconnectPolicy, ScheduleError, ServerInfo, SessionInfo, Stats, Status,
    StatusReason, Transport, TransportPolicy, Visibility,
};

/// What can go wrong when using the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The URL is not a `ws://` or `wss://` URL.
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An argument breaks the protocol's rules (too long a message, an invalid user id, ...).
    #[error("invalid input: {0}")]
    InvalidInput(#[from] ValidationError),
    /// [`ClientBuilder::build`] was called outside a tokio runtime.
    #[error("no tokio runtime: build the client from within a tokio runtime")]
    NoRuntime,
    /// The operation needs a connection and there is none.
    #[error("not connected")]
    NotConnected,
    /// The first connection attempt failed. The client keeps retrying in the background (see
    /// [`Client::state`]) until [`Client::close`].
    #[error("could not connect: {reason} (retrying in the background)")]
    Unreachable {
        /// Why the attempt failed.
        reason: String,
    },
    /// The server refused the client with a fatal error (e.g. a bad token). The client does not retry until
    /// [`Client::connect`] is called again, typically after [`Client::set_token`].
    #[error("rejected by the server: {code}: {message}")]
    Rejected {
        /// The error code.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// The client was closed.
    #[error("the client is closed")]
    Closed,
    /// A query failed.
    #[error("query failed: {0}")]
    Query(QueryError),
}

/// The largest message the client reads whole, in bytes. Messages above the protocol's 64 KiB limit but below
/// this are read and ignored by the core (counted in [`Stats::oversized_frames`]); larger ones end the
/// connection, which then reconnects.
const HARD_INBOUND_LIMIT: usize = 4 * protocol::MAX_FRAME_BYTES;

/// A source of wall-clock time (normally [`SystemTime::now`]).
pub type WallClock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// Fetches a token before every connection attempt (see [`ClientBuilder::token_provider`]).
pub type TokenProvider =
    Arc<dyn Fn() -> futures_util::future::BoxFuture<'static, Result<String, String>> + Send + Sync>;

/// Where [`Client::record_activity`] leaves its mark: written by any thread without locks, read by the driver.
pub(crate) struct ActivityCell {
    /// A TSC-based clock where the hardware has one: reading it is an instruction, not a syscall.
    clock: quanta::Clock,
    /// `clock.raw()` when the driver's clock started.
    origin_raw: u64,
    /// `clock.raw()` at the latest activity; 0 before any.
    last_raw: AtomicU64,
    /// Raw ticks in a millisecond: readings closer than this to the stored one are not stored, so that many
    /// threads calling at once mostly read a shared cache line instead of fighting over it.
    ticks_per_ms: u64,
    /// Set by the driver while the core wants activity promptly (idle, or warned).
    wanted: AtomicBool,
    /// Set by the first activity that woke the driver while wanted; cleared by the driver.
    wake_requested: AtomicBool,
}

impl ActivityCell {
    fn new(clock: quanta::Clock) -> Self {
        // The clock scales ticks linearly: measure the scale on a large span.
        const SPAN: u64 = 1 << 40;
        let nanos = clock.delta_as_nanos(0, SPAN).max(1);
        let ticks_per_ms = u64::try_from(u128::from(SPAN) * 1_000_000 / u128::from(nanos))
            .unwrap_or(1)
            .max(1);
        ActivityCell {
            origin_raw: clock.raw(),
            clock,
            last_raw: AtomicU64::new(0),
            ticks_per_ms,
            wanted: AtomicBool::new(false),
            wake_requested: AtomicBool::new(false),
        }
    }

    /// Milliseconds of this clock from the origin to a raw reading.
    fn elapsed_ms(&self, raw: u64) -> i64 {
        i64::try_from(self.clock.delta(self.origin_raw, raw).as_millis()).unwrap_or(i64::MAX)
    }

    /// The latest raw reading (0 before any activity).
    pub(crate) fn last_raw(&self) -> u64 {
        self.last_raw.load(Ordering::Relaxed)
    }

    /// Publishes whether the core wants activity promptly, and re-arms the wake-up.
    pub(crate) fn set_wanted(&self, wanted: bool) {
        self.wanted.store(wanted, Ordering::Relaxed);
        self.wake_requested.store(false, Ordering::Relaxed);
    }
}

/// State shared by the client handles and the driver task.
pub(crate) struct Shared {
    inner: Mutex<Inner>,
    origin: std::time::Instant,
    pub(crate) activity: ActivityCell,
    wall_clock: WallClock,
    /// Wakes the driver after a command changed the core.
    wake: Notify,
    /// Events, shared by every stream (each slot of the channel holds a pointer, not an event: a client keeps
    /// `event_capacity` slots), made when the first stream is asked for: a client whose events go to a
    /// listener only keeps no slots at all.
    events: OnceLock<broadcast::Sender<Arc<Event>>>,
    /// How many events the channel buffers, once made.
    event_capacity: usize,
    state: watch::Sender<ConnectionState>,
    /// How many connections still have a writer flushing; `close()` waits for 0.
    open_writers: watch::Sender<usize>,
}

pub(crate) struct Inner {
    core: presently_core::Client,
    queries: HashMap<QueryId, oneshot::Sender<Result<Vec<Presence>, QueryError>>>,
    shutdown: bool,
    /// The host activity reading (the activity cell's raw clock) the core has seen last.
    pub(crate) activity_fed: u64,
    /// The event listener set with [`Client::set_event_listener`], if any.
    listener: Option<EventListener>,
    /// The listener changed since the driver last took a copy of it.
    listener_changed: bool,
}

/// A function that is handed every event on the client's driver (see [`Client::set_event_listener`]).
pub(crate) type EventListener = Arc<dyn Fn(&Event) + Send + Sync>;

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding the lock; if something did, the core is still consistent between calls.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The driver's clock, in the core's units.
    pub(crate) fn now(&self) -> presently_core::Instant {
        presently_core::Instant::from_millis(
            u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX),
        )
    }

    /// The tokio instant of a core instant, for timers.
    pub(crate) fn deadline(&self, at: presently_core::Instant) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.origin + Duration::from_millis(at.as_millis()))
    }

    /// The wall clock as Unix milliseconds.
    pub(crate) fn unix_ms(&self) -> u64 {
        (self.wall_clock)()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// Hands the latest host activity and the wall clock to the core, as of `now`.
    pub(crate) fn feed(&self, inner: &mut Inner, now: presently_core::Instant) {
        let core = &mut inner.core;
        core.handle_wall_clock(now, self.unix_ms());
        let raw = self.activity.last_raw();
        if raw != 0 && raw != inner.activity_fed {
            inner.activity_fed = raw;
            // The activity clock and the driver's clock may drift apart over days: re-anchor on every use.
            let activity = &self.activity;
            let skew = i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
                - activity.elapsed_ms(activity.clock.raw());
            let at = activity.elapsed_ms(raw).saturating_add(skew).max(0);
            core.handle_activity(presently_core::Instant::from_millis(at as u64), now);
        }
    }

    /// Runs `f` on the core and wakes the driver to act on its outputs. The core first gets the wall clock and
    /// the host activity as they are now, so that `f` never decides on stale ones (a DND window judged on the
    /// time of the driver's last wake-up, an idle user who has just moved the mouse), which watchers would see
    /// as a flip and a flip back.
    fn with_core<R>(
        &self,
        f: impl FnOnce(&mut presently_core::Client, presently_core::Instant) -> R,
    ) -> R {
        self.with_inner(|inner, now| f(&mut inner.core, now))
    }

    /// [`Shared::with_core`] for operations that also keep state beside the core (a query's reply channel).
    fn with_inner<R>(&self, f: impl FnOnce(&mut Inner, presently_core::Instant) -> R) -> R {
        let now = self.now();
        let result = {
            let mut inner = self.lock();
            self.feed(&mut inner, now);
            f(&mut inner, now)
        };
        self.wake.notify_one();
        result
    }

    /// Reads from the core as of now, like [`Shared::with_core`], but wakes the driver only when the fresh wall
    /// clock or activity left it something to do (an event, a frame, an earlier deadline; a later one only
    /// makes the armed timer fire early, which the core takes as a no-op): a host that polls the status from a
    /// UI timer costs no wake-ups.
    fn read_core<R>(
        &self,
        f: impl FnOnce(&mut presently_core::Client, presently_core::Instant) -> R,
    ) -> R {
        let now = self.now();
        let (result, changed) = {
            let mut inner = self.lock();
            let deadline = inner.core.poll_timeout();
            self.feed(&mut inner, now);
            let result = f(&mut inner.core, now);
            let earlier = match (inner.core.poll_timeout(), deadline) {
                (Some(next), Some(armed)) => next < armed,
                (next, armed) => next.is_some() && armed.is_none(),
            };
            let changed = inner.core.has_output() || earlier;
            (result, changed)
        };
        if changed {
            self.wake.notify_one();
        }
        result
    }
}

/// The answer to a query sent with [`Client::send_query`]: resolves to the users' presence, or to
/// [`Error::Query`] when the server refused the query or the connection dropped first, or to [`Error::Closed`]
/// when the client was dropped.
#[must_use = "the query is sent either way; drop the answer only if you do not need it"]
pub struct QueryAnswer {
    answer: oneshot::Receiver<Result<Vec<Presence>, QueryError>>,
}

impl Future for QueryAnswer {
    type Output = Result<Vec<Presence>, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.answer)
            .poll(cx)
            .map(|received| match received {
                Ok(result) => result.map_err(Error::Query),
                Err(_) => Err(Error::Closed),
            })
    }
}

/// Settings for a [`Client`]; from [`Client::builder`].
#[derive(Clone)]
pub struct ClientBuilder {
    url: String,
    config: ClientConfig,
    event_capacity: usize,
    dnd_schedule: Option<DndSchedule>,
    wall_clock: Option<WallClock>,
    token_provider: Option<TokenProvider>,
    #[cfg(feature = "rustls")]
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for WallClockDebug<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "custom" } else { "system" })
    }
}

struct WallClockDebug<'a>(&'a Option<WallClock>);

impl ClientBuilder {
    /// Away after this long without [`Client::record_activity`]; `None` turns idle detection off. Default
    /// 5 minutes.
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.config.automation.idle_timeout = timeout;
        self
    }

    /// Emit [`Event::IdleWarning`] this long before going away (to ask "still there?"). Default none.
    pub fn idle_warning(mut self, lead: Option<Duration>) -> Self {
        self.config.automation.idle_warning = lead;
        self
    }

    /// Away after this long in the background ([`Client::app_backgrounded`]); `None` leaves the status alone.
    /// Default 60 s.
    pub fn background_away_after(mut self, after: Option<Duration>) -> Self {
        self.config.automation.background_away_after = after;
        self
    }

    /// A DND schedule from the start.
    pub fn dnd_schedule(mut self, schedule: DndSchedule) -> Self {
        self.dnd_schedule = Some(schedule);
        self
    }

    /// A wall clock other than the system's (for tests and demos that need "22:00" to come soon).
    pub fn wall_clock(mut self, clock: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        self.wall_clock = Some(Arc::new(clock));
        self
    }

    /// Asks `provider` for a token before every connection attempt, so that short-lived tokens refresh by
    /// themselves; a `token_expired` answer then means one immediate retry with a new token. A provider that
    /// fails counts as a failed attempt (retried with backoff).
    pub fn token_provider<F, Fut>(mut self, provider: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<String, String>> + Send + 'static,
    {
        self.token_provider = Some(Arc::new(move || Box::pin(provider())));
        self.config.refreshable_token = true;
        self
    }

    /// The credential sent in `hello` (for the reference server, an HS256 JWT from your backend).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.config.token = token.into();
        self
    }

    /// Name, version and platform of your application, sent in `hello`.
    pub fn client_info(mut self, info: ClientInfo) -> Self {
        self.config.client_info = info;
        self
    }

    /// Delays between connection attempts (default: 2 s base, 30 s cap, reset after 30 s up).
    pub fn reconnect_policy(mut self, policy: ReconnectPolicy) -> Self {
        self.config.reconnect = policy;
        self
    }

    /// Which transports to use (default [`TransportPolicy::Auto`]: WebSocket, falling back to HTTP with
    /// Server-Sent Events when WebSocket attempts keep failing before `welcome`, and returning to WebSocket
    /// later without a change watchers can see). The connection state says which one is in use.
    pub fn transport(mut self, policy: TransportPolicy) -> Self {
        self.config.transport = policy;
        self
    }

    /// With [`TransportPolicy::Auto`]: how many attempts in a row must fail before `welcome` before the
    /// client switches transport (default 2).
    pub fn fallback_after(mut self, attempts: u32) -> Self {
        self.config.fallback_after = attempts;
        self
    }

    /// With [`TransportPolicy::Auto`], on HTTP after a fallback: the first ceiling of the wait before
    /// WebSocket is tried again (the wait is drawn between half of it and all of it, and the ceiling doubles
    /// with each failed try up to `max_delay`). Defaults 60 s and 30 min.
    pub fn websocket_retry(mut self, delay: Duration, max_delay: Duration) -> Self {
        self.config.websocket_retry_delay = delay;
        self.config.websocket_retry_max_delay = max_delay;
        self
    }

    /// How long one attempt may take to reach `welcome` (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// How long past the server's heartbeat interval the client waits for any frame before it declares the
    /// link dead and reconnects (default 10 s).
    pub fn liveness_grace(mut self, grace: Duration) -> Self {
        self.config.liveness_grace = grace;
        self
    }

    /// After [`Client::reconnect_now`] while connected, how long the probe ping may go unanswered before
    /// the link is declared dead (default 5 s).
    pub fn probe_timeout(mut self, timeout: Duration) -> Self {
        self.config.probe_timeout = timeout;
        self
    }

    /// How many events an [`EventStream`] buffers before a slow reader starts missing them (default 1,024;
    /// it then receives [`Event::Lagged`]). The buffer (a pointer per event) is made with the first stream; a
    /// client whose events go to a listener only ([`Client::set_event_listener`]) has none.
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity.clamp(1, 1 << 16);
        self
    }

    /// A rustls configuration for `wss://` (e.g. with your own root certificates). By default the client
    /// trusts the webpki root certificates.
    #[cfg(feature = "rustls")]
    pub fn tls_config(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// Checks the settings and starts the client's driver task on the current tokio runtime. The client does
    /// not connect until [`Client::connect`].
    pub fn build(self) -> Result<Client, Error> {
        let invalid = |reason: &str| Error::InvalidUrl {
            url: self.url.clone(),
            reason: reason.to_owned(),
        };
        let url = url::Url::parse(&self.url).map_err(|e| invalid(&e.to_string()))?;
        let secure = match url.scheme() {
            "wss" => true,
            "ws" => false,
            other => {
                return Err(invalid(&format!(
                    "the scheme must be ws or wss, not {other}"
                )));
            }
        };
        if url.host_str().is_none_or(str::is_empty) {
            return Err(invalid("the URL has no host"));
        }
        protocol::validate_client_info(&self.config.client_info)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let tls = if secure {
            #[cfg(feature = "rustls")]
            {
                Some(match self.tls {
                    Some(config) => config,
                    None => driver::default_tls_config()
                        .map_err(|e| invalid(&format!("cannot set up TLS: {e}")))?,
                })
            }
            #[cfg(not(feature = "rustls"))]
            {
                return Err(invalid(
                    "wss:// needs the `rustls` feature of the presently crate",
                ));
            }
        } else {
            None
        };
        let http_urls = protocol::http_binding_urls(url.as_str())
            .ok_or_else(|| invalid("no HTTP binding URL can be derived from it"))?;
        // One HTTP client per connection of the HTTP binding: its pool dies with the connection, so that a
        // new connection never reuses a socket of a link that went dead.
        let http: driver::HttpClientFactory = {
            // reqwest always gets a rustls configuration (even for http://): it has no crypto provider of its
            // own to fall back on.
            #[cfg(feature = "rustls")]
            let tls = match &tls {
                Some(config) => config.clone(),
                None => driver::default_tls_config()
                    .map_err(|e| invalid(&format!("cannot set up TLS: {e}")))?,
            };
            Arc::new(move || {
                let builder = reqwest::Client::builder().http1_only().tcp_nodelay(true);
                #[cfg(feature = "rustls")]
                let builder = builder.tls_backend_preconfigured((*tls).clone());
                builder
                    .build()
                    .map_err(|e| format!("cannot set up the HTTP client: {e}"))
            })
        };
        let (state, _) = watch::channel(ConnectionState::Idle);
        let (open_writers, _) = watch::channel(0);
        let activity = ActivityCell::new(quanta::Clock::new());
        let origin = std::time::Instant::now();
        let wall_clock = self.wall_clock.unwrap_or_else(|| Arc::new(SystemTime::now));
        let mut core = presently_core::Client::new(self.config, rand::random());
        let unix_now = wall_clock()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        core.handle_wall_clock(presently_core::Instant::ZERO, unix_now);
        // Creating the client is the app starting: idle time counts from here, connected or not.
        core.handle_activity(presently_core::Instant::ZERO, presently_core::Instant::ZERO);
        if self.dnd_schedule.is_some() {
            core.set_dnd_schedule(self.dnd_schedule, presently_core::Instant::ZERO);
        }
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                core,
                queries: HashMap::new(),
                shutdown: false,
                activity_fed: 0,
                listener: None,
                listener_changed: false,
            }),
            origin,
            activity,
            wall_clock,
            wake: Notify::new(),
            events: OnceLock::new(),
            event_capacity: self.event_capacity,
            state,
            open_writers,
        });
        runtime.spawn(driver::run(
            shared.clone(),
            driver::Target {
                url: url.to_string(),
                http,
                http_urls,
                tls,
                token_provider: self.token_provider,
            },
        ));
        Ok(Client {
            handle: Arc::new(Handle { shared }),
        })
    }
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("url", &self.url)
            .field("client_info", &self.config.client_info)
            .field("automation", &self.config.automation)
            .field("dnd_schedule", &self.dnd_schedule)
            .field("wall_clock", &WallClockDebug(&self.wall_clock))
            .field("token_provider", &self.token_provider.is_some())
            .finish_non_exhaustive()
    }
}

/// Stops the driver when the last [`Client`] clone is dropped.
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_one();
    }
}

/// A presence client. Cheap to clone: clones share one connection. Dropping the last clone closes it.
#[derive(Clone)]
pub struct Client {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("state", &self.state())
            .finish()
    }
}

impl Client {
    /// Starts configuring a client for a server URL such as `wss://presence.example.com/v1/ws`.
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            url: url.into(),
            config: ClientConfig::new(""),
            event_capacity: 1_024,
            dnd_schedule: None,
            wall_clock: None,
            token_provider: None,
            #[cfg(feature = "rustls")]
            tls: None,
        }
    }

    fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    /// Connects and waits for the outcome of the first attempt: `Ok` once connected; [`Error::Rejected`]
    /// on a fatal error (no retry); [`Error::Unreachable`] if the attempt failed, in which case the client
    /// keeps retrying in the background with backoff. Returns at once if already connected.
    pub async fn connect(&self) -> Result<(), Error> {
        let mut states = self.shared().state.subscribe();
        let (state, policy) = self.shared().with_core(|core, now| {
            core.connect(now);
            (core.state().clone(), core.config().transport)
        });
        if let ConnectionState::Connected { .. } = state {
            return Ok(());
        }
        // With the automatic policy, a failure counts only once the HTTP binding has been tried too, or when
        // nothing answered at the server's address (which HTTP would not change).
        let mut tried_http = policy != TransportPolicy::Auto;
        loop {
            if states.changed().await.is_err() {
                return Err(Error::Closed);
            }
            let state = states.borrow_and_update().clone();
            match state {
                ConnectionState::Connected { .. } => return Ok(()),
                ConnectionState::Failed { code, message } => {
                    return Err(Error::Rejected { code, message });
                }
                ConnectionState::Reconnecting { reason, .. }
                    if tried_http || self.shared().lock().core.last_loss_unreachable() =>
                {
                    return Err(Error::Unreachable { reason });
                }
                ConnectionState::Connecting {
                    transport: Transport::Sse,
                    ..
                } => tried_http = true,
                ConnectionState::Reconnecting { .. }
                | ConnectionState::Idle
                | ConnectionState::Connecting { .. } => {}
                ConnectionState::Closed => return Err(Error::Closed),
            }
        }
    }

    /// Replaces the token for the next connection (e.g. after `token_expired`); call [`Client::connect`] to
    /// leave the failed state.
    pub fn set_token(&self, token: impl Into<String>) {
        self.shared().with_core(|core, _| core.set_token(token));
    }

    /// Sets your own status. Sent now if connected; otherwise remembered and sent once on the next
    /// connection. Invalid input (too long a message, `Offline`, ...) is refused here.
    pub fn set_status(&self, status: Status) -> Result<(), Error> {
        Ok(self
            .shared()
            .with_core(|core, now| core.set_status(status, now))?)
    }

    /// The host saw the user do something: a mouse move, a key press, a MIDI event, transport play. Call it as
    /// often as you like, from any thread, including a real-time audio thread: it reads a TSC-based clock (an
    /// instruction where the CPU has an invariant TSC, the OS monotonic clock otherwise, never a syscall on
    /// Linux, macOS or Windows), stores it in an atomic (at most once a millisecond) and returns. It never
    /// locks, allocates or waits. Only
    /// while the user is idle (or has been warned) does the first call after that hand a wake-up to the
    /// client's own thread, once, so that the status is restored at once.
    #[inline]
    pub fn record_activity(&self) {
        let cell = &self.handle.shared.activity;
        let now = cell.clock.raw();
        // Millisecond resolution is plenty for idle timeouts measured in minutes.
        if now.saturating_sub(cell.last_raw.load(Ordering::Relaxed)) >= cell.ticks_per_ms {
            cell.last_raw.store(now, Ordering::Relaxed);
        }
        if cell.wanted.load(Ordering::Relaxed) && !cell.wake_requested.swap(true, Ordering::Relaxed)
        {
            self.handle.shared.wake.notify_one();
        }
    }

    /// The app went to the background (away after [`ClientBuilder::background_away_after`]).
    pub fn app_backgrounded(&self) {
        self.shared()
            .with_core(|core, now| core.app_backgrounded(now));
    }

    /// The app came to the foreground: restores a lifecycle away, counts as activity and checks the link.
    pub fn app_foregrounded(&self) {
        self.shared()
            .with_core(|core, now| core.app_foregrounded(now));
    }

    /// The network changed (Wi-Fi to cellular, VPN up...): retry now if waiting, or probe the link.
    pub fn network_changed(&self) {
        self.reconnect_now();
    }

    /// Replaces the DND schedule (`None` removes it).
    pub fn set_dnd_schedule(&self, schedule: Option<DndSchedule>) {
        self.shared()
            .with_core(|core, now| core.set_dnd_schedule(schedule, now));
    }

    /// DND now, for `duration`, with an optional message shown while it lasts.
    pub fn snooze_dnd_for(&self, duration: Duration, message: Option<String>) -> Result<(), Error> {
        Ok(self
            .shared()
            .with_core(|core, now| core.snooze_dnd(now + duration, message, now))?)
    }

    /// DND now, until `until` (wall-clock time), with an optional message.
    pub fn snooze_dnd_until(
        &self,
        until: SystemTime,
        message: Option<String>,
    ) -> Result<(), Error> {
        let wall_now = (self.shared().wall_clock)();
        let duration = until.duration_since(wall_now).unwrap_or(Duration::ZERO);
        self.snooze_dnd_for(duration, message)
    }

    /// Ends a snooze early.
    pub fn end_snooze(&self) {
        self.shared().with_core(|core, now| core.end_snooze(now));
    }

    /// Whether DND is on, why, until when and when it next starts (Unix milliseconds).
    pub fn dnd_state(&self) -> DndState {
        self.shared().read_core(|core, now| core.dnd_state(now))
    }

    /// Replaces the idle and lifecycle settings.
    pub fn set_automation(&self, config: AutomationConfig) {
        self.shared()
            .with_core(|core, now| core.set_automation(config, now));
    }

    /// The status watchers see: your choice combined with idle, lifecycle and DND.
    pub fn effective_status(&self) -> Status {
        self.shared()
            .read_core(|core, _| core.effective_status().clone())
    }

    /// Which rule decided the effective status.
    pub fn status_reason(&self) -> StatusReason {
        self.shared().read_core(|core, _| core.status_reason())
    }

    /// Publishes what this device is looking at (e.g. `"conversation:42"`), or `None`; watchers see it in
    /// [`Presence::focus`] and can tell "online and in our conversation" from "online". Kept across reconnects.
    pub fn set_focus(&self, context: Option<String>) -> Result<(), Error> {
        Ok(self
            .shared()
            .with_core(|core, now| core.set_focus(context, now))?)
    }

    /// Asks the server to apply these privacy settings (who may see you, whether to hide your last seen).
    /// To appear offline while still seeing others, choose [`Availability::Invisible`] with
    /// [`Client::set_status`].
    pub fn set_privacy(&self, privacy: Privacy) {
        self.shared()
            .with_core(|core, now| core.set_privacy(privacy, now));
    }

    /// The privacy settings in force, once the server has reported them.
    pub fn privacy(&self) -> Option<Privacy> {
        self.shared().lock().core.privacy()
    }

    /// Watches users; kept across reconnects. Their presence arrives as [`Event::PresenceChanged`] and in
    /// [`Client::roster`].
    pub fn subscribe<I, S>(&self, users: I) -> Result<(), Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Ok(self
            .shared()
            .with_core(|core, now| core.subscribe(users, now))?)
    }

    /// Watches the members of channels (rooms) as they come and go; kept across reconnects. Membership arrives
    /// as [`Event::ChannelMembersChanged`], members' presence in [`Client::roster`] and
    /// [`Event::PresenceChanged`]. The server accepts only channels the user belongs to.
    pub fn subscribe_channels<I, S>(&self, channels: I) -> Result<(), Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Ok(self
            .shared()
            .with_core(|core, now| core.subscribe_channels(channels, now))?)
    }

    /// Stops watching channels.
    pub fn unsubscribe_channels<I, S>(&self, channels: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.shared()
            .with_core(|core, now| core.unsubscribe_channels(channels, now));
    }

    /// The known members of a subscribed channel, sorted.
    pub fn channel_members(&self, channel: &str) -> Option<Vec<String>> {
        self.shared()
            .lock()
            .core
            .channel_members(channel)
            .map(|m| m.iter().cloned().collect())
    }

    /// Stops watching users.
    pub fn unsubscribe<I, S>(&self, users: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.shared()
            .with_core(|core, now| core.unsubscribe(users, now));
    }

    /// Reads users' presence once without watching them. Needs a connection.
    pub async fn query<S: AsRef<str>>(&self, users: &[S]) -> Result<Vec<Presence>, Error> {
        self.send_query(users)?.await
    }

    /// Sends a query now, without waiting: fails at once when not connected or when an id is invalid, and
    /// otherwise returns the answer to await. The query is under way whether or not the answer is ever
    /// awaited, and an answer that arrives before it is awaited is kept for it (for callers that must learn
    /// synchronously that a query started, such as the C library).
    pub fn send_query<S: AsRef<str>>(&self, users: &[S]) -> Result<QueryAnswer, Error> {
        let (tx, rx) = oneshot::channel();
        self.shared().with_inner(|inner, now| {
            let query_id = inner.core.query(users, now).map_err(|e| match e {
                QueryError::NotConnected => Error::NotConnected,
                QueryError::Invalid(v) => Error::InvalidInput(v),
                other => Error::Query(other),
            })?;
            inner.queries.insert(query_id, tx);
            Ok(QueryAnswer { answer: rx })
        })
    }

    /// A hint that the network changed or the app came to the foreground: retry now if waiting, or probe the
    /// link if connected.
    pub fn reconnect_now(&self) {
        self.shared().with_core(|core, now| core.reconnect_now(now));
    }

    /// A stream of events from now on: presence changes, connection state changes and server errors. Each
    /// call makes an independent stream, which buffers up to the builder's `event_capacity` events for a
    /// reader that is busy meanwhile (see [`EventStream`]).
    pub fn events(&self) -> EventStream {
        let shared = self.shared();
        let sender = shared
            .events
            .get_or_init(|| broadcast::channel(shared.event_capacity).0);
        EventStream {
            inner: tokio_stream::wrappers::BroadcastStream::new(sender.subscribe()),
        }
    }

    /// Hands every event from now on to `listener`, as it happens: the same events as [`Client::events`], on
    /// the task that drives the connection, in order, one call at a time, with no buffer and no task between
    /// the connection and your code (the cheapest way to hear of changes; an app with thousands of clients in
    /// one process hears of them sooner). Replaces the listener set before, if any; streams from
    /// [`Client::events`] go on as before.
    ///
    /// The listener runs inside the client's runtime and holds up the connection while it runs: keep it short
    /// and never block in it (hand slow work to a task or a channel of your own). It may call the client's
    /// methods. A listener that panics is reported through `tracing` and keeps being called. A listener that
    /// holds a clone of its own client keeps that client, and its connection, alive until the listener is
    /// removed ([`Client::remove_event_listener`]).
    pub fn set_event_listener(&self, listener: impl Fn(&Event) + Send + Sync + 'static) {
        self.replace_event_listener(Some(Arc::new(listener)));
    }

    /// Removes the listener set with [`Client::set_event_listener`]. It may still be handed the events the
    /// driver is handing out at this moment, and none after them.
    pub fn remove_event_listener(&self) {
        self.replace_event_listener(None);
    }

    /// Puts `listener` in place of the current one and wakes the driver to take it (and let go of the old one).
    fn replace_event_listener(&self, listener: Option<EventListener>) {
        let replaced = {
            let mut inner = self.shared().lock();
            inner.listener_changed = true;
            std::mem::replace(&mut inner.listener, listener)
        };
        // Dropped out of the lock: it may hold a client handle.
        drop(replaced);
        self.shared().wake.notify_one();
    }

    /// The connection state now.
    pub fn state(&self) -> ConnectionState {
        self.shared().lock().core.state().clone()
    }

    /// A receiver that is told of every connection state the driver publishes (for `select!` loops and UI
    /// bindings).
    pub fn state_changes(&self) -> watch::Receiver<ConnectionState> {
        self.shared().state.subscribe()
    }

    /// Every watched user whose presence is known, in user id order.
    pub fn roster(&self) -> Vec<Presence> {
        self.shared().lock().core.roster().cloned().collect()
    }

    /// The presence of one watched user, if known.
    pub fn presence(&self, user_id: &str) -> Option<Presence> {
        self.shared().lock().core.presence(user_id).cloned()
    }

    /// The status you last chose, if any.
    pub fn manual_status(&self) -> Option<Status> {
        self.shared().lock().core.manual_status().cloned()
    }

    /// The current session, while connected.
    pub fn session(&self) -> Option<SessionInfo> {
        self.shared().lock().core.session().cloned()
    }

    /// Counters of frames received and ignored.
    pub fn stats(&self) -> Stats {
        self.shared().lock().core.stats().clone()
    }

    /// Sends `bye`, closes the connection and stops reconnecting; waits (at most 2 s) until the connection is
    /// closed. [`Client::connect`] may be called again afterwards.
    pub async fn close(&self) {
        let mut writers = self.shared().open_writers.subscribe();
        self.shared().with_core(|core, now| core.close(now));
        let _ = tokio::time::timeout(Duration::from_secs(2), writers.wait_for(|n| *n == 0)).await;
    }
}

/// A stream of [`Event`]s from [`Client::events`]. A reader that falls more than the event capacity behind
/// receives [`Event::Lagged`] and then continues with the newest events.
pub struct EventStream {
    inner: tokio_stream::wrappers::BroadcastStream<Arc<Event>>,
}

impl Stream for EventStream {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Event>> {
        use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(event))) => Poll::Ready(Some(Arc::unwrap_or_clone(event))),
            Poll::Ready(Some(Err(BroadcastStreamRecvError::Lagged(missed)))) => {
                Poll::Ready(Some(Event::Lagged { missed }))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}
