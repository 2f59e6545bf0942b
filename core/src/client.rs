//! The sans-IO presence client: a state machine that owns no socket, no thread and no clock.
//!
//! A driver feeds it inputs (`handle_*` methods and the commands an application calls) and drains its outputs:
//! [`Client::poll_transport`] (open or close the connection), [`Client::poll_transmit`] (text frames to send),
//! [`Client::poll_event`] (events for the application) and [`Client::poll_timeout`] (when to call
//! [`Client::handle_timeout`]). Time is always an argument. A timeout that fires early or twice is a no-op.
//!
//! The driver contract:
//! - On [`TransportCommand::Open`], drop any current connection (reporting nothing more about it) and open a new
//!   one on the transport it names: a WebSocket offering [`SUBPROTOCOL`](crate::protocol::SUBPROTOCOL), or the
//!   HTTP binding (protocol section 11), whose `POST` carries the first frame (`hello`). Report success with
//!   [`Client::handle_transport_open`] and failure with [`Client::handle_transport_closed`]. On the HTTP binding
//!   there is nothing to open before the first frame: report `handle_transport_open` as soon as the driver is
//!   ready; the first frame [`Client::poll_transmit`] then returns (`hello`) is the body of the opening `POST`,
//!   and a failed `POST`, or an answer that is not an event stream, is `handle_transport_closed`. Pass the event
//!   stream's bytes, as they arrive, to [`Client::handle_stream_bytes`].
//! - On [`TransportCommand::Close`], send what [`Client::poll_transmit`] already returned, then close the
//!   connection and report nothing more about it.
//! - Report every inbound text frame with [`Client::handle_frame`], and any other inbound frame (binary, ping,
//!   pong) with [`Client::handle_inbound_activity`]: every frame is a sign of life.
//! - Report a connection that ends by itself with [`Client::handle_transport_closed`].
//! - After every input, drain `poll_transmit` before `poll_transport`, then `poll_event`, and arm one timer for
//!   `poll_timeout`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::SmallRng;

use crate::backoff::ReconnectPolicy;
use crate::dnd::DndSchedule;
use crate::own_status::{self, Automation, AutomationConfig, Changes, DndState, StatusReason};
use crate::protocol::{
    self, Auto, AutoState, Choice, ClientInfo, ClientMessage, DecodeError, ErrorCode,
    FEATURE_SET_STATUS_AUTO, MAX_FRAME_BYTES, MAX_SUBSCRIPTIONS_PER_SESSION, MAX_USERS_PER_REQUEST,
    PROTOCOL_VERSION, Presence, Privacy, Resume, ServerInfo, ServerMessage, Status,
    ValidationError,
};
use crate::sse::{SseItem, SseParser};
use crate::time::Instant;

/// The shortest heartbeat interval the client accepts from a server, in milliseconds; smaller announced
/// values are raised to it so that a broken server cannot make the client spin.
pub const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(50);

/// The longest pause a `goaway` can impose; longer requests are cut to it.
pub const MAX_GOAWAY_DELAY: Duration = Duration::from_secs(300);

/// Settings of a [`Client`].
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The credential sent in `hello`.
    pub token: String,
    /// Who is connecting, sent in `hello`.
    pub client_info: ClientInfo,
    /// Delays between connection attempts.
    pub reconnect: ReconnectPolicy,
    /// How long an attempt may take from opening the transport to `welcome`. Default 10 s.
    pub connect_timeout: Duration,
    /// How long past the heartbeat interval the client waits for any inbound frame before it declares the link
    /// dead. Default 10 s.
    pub liveness_grace: Duration,
    /// After [`Client::reconnect_now`] while connected (a network-change hint), how long the client waits for
    /// the answer to its probe ping before it declares the link dead. Default 5 s.
    pub probe_timeout: Duration,
    /// The largest inbound frame the client decodes, in bytes; larger frames are ignored and counted.
    /// Default [`MAX_FRAME_BYTES`].
    pub max_inbound_frame_bytes: usize,
    /// Idle detection and app lifecycle policy.
    pub automation: AutomationConfig,
    /// The driver fetches a fresh token before every attempt (a token provider): a `token_expired` error then
    /// means one immediate retry with a new token instead of failing.
    pub refreshable_token: bool,
    /// Which transports to use. Default [`TransportPolicy::Auto`].
    pub transport: TransportPolicy,
    /// With [`TransportPolicy::Auto`]: how many attempts in a row must fail before `welcome` on one transport
    /// before the next attempt uses the other. Default 2 (0 counts as 1).
    pub fallback_after: u32,
    /// With [`TransportPolicy::Auto`], on the HTTP binding after a fallback: the first ceiling of the wait
    /// before WebSocket is tried again; it doubles with each failed try, and the wait is drawn between half
    /// the ceiling and all of it. Default 60 s.
    pub websocket_retry_delay: Duration,
    /// The largest ceiling of that wait. Default 30 min.
    pub websocket_retry_max_delay: Duration,
}

impl ClientConfig {
    /// Default settings with this token.
    pub fn new(token: impl Into<String>) -> Self {
        ClientConfig {
            token: token.into(),
            client_info: ClientInfo::default(),
            reconnect: ReconnectPolicy::default(),
            connect_timeout: Duration::from_secs(10),
            liveness_grace: Duration::from_secs(10),
            probe_timeout: Duration::from_secs(5),
            max_inbound_frame_bytes: MAX_FRAME_BYTES,
            automation: AutomationConfig::default(),
            refreshable_token: false,
            transport: TransportPolicy::Auto,
            fallback_after: 2,
            websocket_retry_delay: Duration::from_secs(60),
            websocket_retry_max_delay: Duration::from_secs(30 * 60),
        }
    }
}

/// A way to carry the protocol between client and server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// A WebSocket (protocol section 1).
    WebSocket,
    /// The HTTP binding: requests up, a Server-Sent Events stream down (protocol section 11).
    Sse,
}

impl Transport {
    /// The name applications see: `websocket` or `sse`.
    pub fn name(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::Sse => "sse",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which transports the client may use (protocol section 11.7).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TransportPolicy {
    /// WebSocket, falling back to the HTTP binding when WebSocket attempts keep failing before `welcome`, and
    /// returning to WebSocket later.
    #[default]
    Auto,
    /// WebSocket only.
    WebSocketOnly,
    /// The HTTP binding only.
    SseOnly,
}

/// What the driver must do with the transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportCommand {
    /// Drop any current connection and open a new one on this transport.
    Open {
        /// The transport to open.
        transport: Transport,
    },
    /// Close the current connection (after sending what was already transmitted).
    Close,
}

/// The connection's state, as shown to applications.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectionState {
    /// Not started: [`Client::connect`] has not been called.
    Idle,
    /// An attempt is under way (opening the transport or waiting for `welcome`).
    Connecting {
        /// The number of this attempt since the client was last connected (1 for the first).
        attempt: u32,
        /// The transport this attempt uses.
        transport: Transport,
    },
    /// A session is up.
    Connected {
        /// The server's id for this session.
        session_id: String,
        /// The transport in use.
        transport: Transport,
    },
    /// Waiting before the next attempt.
    Reconnecting {
        /// The number of the next attempt since the client was last connected.
        attempt: u32,
        /// When the next attempt starts, on the driver's clock.
        retry_at: Instant,
        /// How long the wait is, from the moment the connection was lost.
        delay: Duration,
        /// Why the previous connection or attempt ended.
        reason: String,
    },
    /// Closed by the application.
    Closed,
    /// Stopped by a fatal error; no retry until the application connects again (e.g. with a new token).
    Failed {
        /// The error code.
        code: ErrorCode,
        /// For people.
        message: String,
    },
}

impl ConnectionState {
    /// A short lowercase name of the state: `idle`, `connecting`, `connected`, `reconnecting`, `closed`,
    /// `failed`.
    pub fn name(&self) -> &'static str {
        match self {
            ConnectionState::Idle => "idle",
            ConnectionState::Connecting { .. } => "connecting",
            ConnectionState::Connected { .. } => "connected",
            ConnectionState::Reconnecting { .. } => "reconnecting",
            ConnectionState::Closed => "closed",
            ConnectionState::Failed { .. } => "failed",
        }
    }
}

impl fmt::Display for ConnectionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectionState::Connecting { attempt, transport } => {
                write!(f, "connecting (attempt {attempt}, {transport})")
            }
            ConnectionState::Connected {
                session_id,
                transport,
            } => write!(f, "connected ({session_id}, {transport})"),
            ConnectionState::Reconnecting {
                attempt,
                delay,
                reason,
                ..
            } => write!(
                f,
                "reconnecting: attempt {attempt} in {} ms ({reason})",
                crate::time::duration_millis(*delay)
            ),
            ConnectionState::Failed { code, message } => write!(f, "failed: {code}: {message}"),
            other => f.write_str(other.name()),
        }
    }
}

/// Identifies a query started with [`Client::query`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueryId(pub u64);

/// Why a query did not complete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueryError {
    /// The client is not connected; queries are not queued.
    NotConnected,
    /// The connection was lost or closed before the answer arrived.
    Disconnected,
    /// The request breaks the protocol's rules.
    Invalid(ValidationError),
    /// The server answered with an error.
    Server {
        /// The error code.
        code: ErrorCode,
        /// For people.
        message: String,
    },
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueryError::NotConnected => f.write_str("not connected"),
            QueryError::Disconnected => f.write_str("connection lost before the answer arrived"),
            QueryError::Invalid(e) => write!(f, "invalid query: {e}"),
            QueryError::Server { code, message } => write!(f, "server error {code}: {message}"),
        }
    }
}

impl std::error::Error for QueryError {}

/// Something the application may want to know.
// A presence change carries two records; boxing them would cost an allocation per change and make matching on
// events clumsier for every application, for a size that only matters in bulk.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The connection state changed.
    StateChanged {
        /// The state before.
        previous: ConnectionState,
        /// The state now.
        current: ConnectionState,
    },
    /// A watched user's presence changed (or became known).
    PresenceChanged {
        /// Whose presence.
        user_id: String,
        /// What the client held before; `None` when the user was not known yet.
        previous: Option<Presence>,
        /// The new record.
        current: Presence,
    },
    /// A query completed.
    QueryCompleted {
        /// Which query.
        query_id: QueryId,
        /// The records, one per distinct user, or why not.
        result: Result<Vec<Presence>, QueryError>,
    },
    /// The server reported an error. Fatal errors also move the state to [`ConnectionState::Failed`].
    ServerError {
        /// The error code.
        code: ErrorCode,
        /// For people.
        message: String,
        /// Whether the error stopped the client.
        fatal: bool,
    },
    /// Your effective status changed (see the precedence table in [`own_status`]). It is sent
    /// to the server once, now if connected or in the next `hello`.
    OwnStatusChanged {
        /// What watchers see now.
        effective: Status,
        /// Which rule decided it.
        reason: StatusReason,
    },
    /// No activity for a while: the effective status becomes away at `away_at` unless activity comes first.
    /// Time to ask "still there?".
    IdleWarning {
        /// When the switch to away happens, on the driver's clock.
        away_at: Instant,
    },
    /// Activity arrived after an [`Event::IdleWarning`]: the switch to away is off.
    IdleWarningCancelled,
    /// A subscribed channel's membership became known or changed. Members' presence arrives as
    /// [`Event::PresenceChanged`].
    ChannelMembersChanged {
        /// The channel.
        channel: String,
        /// Who joined (everyone, for the first snapshot).
        joined: Vec<String>,
        /// Who left.
        left: Vec<String>,
    },
    /// Emitted by drivers, never by the core: a slow reader of an event stream missed this many events. The
    /// roster ([`Client::roster`]) is still complete.
    Lagged {
        /// How many events were dropped.
        missed: u64,
    },
}

/// Counters of what the client received and sent, for diagnostics and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Text frames received while a connection was up.
    pub frames_received: u64,
    /// Text frames handed to the driver.
    pub frames_sent: u64,
    /// Frames that were not valid JSON or not a valid known message; ignored.
    pub malformed_frames: u64,
    /// Frames larger than the inbound limit; ignored.
    pub oversized_frames: u64,
    /// Messages of a type this version does not know; ignored.
    pub unknown_frames: u64,
    /// Binary or control frames; ignored but counted as signs of life.
    pub other_frames: u64,
    /// Presence records dropped because the client already held that version or a newer one.
    pub stale_updates: u64,
    /// Valid messages that made no sense in the current state (e.g. a second `welcome`); ignored.
    pub unexpected_messages: u64,
    /// Sessions established (welcomes accepted).
    pub sessions: u64,
}

/// What the client knows about the current session, from `welcome`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    /// The server's id for the session.
    pub session_id: String,
    /// The authenticated user.
    pub user_id: String,
    /// How often the client must send a frame.
    pub heartbeat_interval: Duration,
    /// How long the server keeps a silent session.
    pub session_ttl: Duration,
    /// The largest frame the server accepts, in bytes.
    pub max_frame_bytes: usize,
    /// The server software.
    pub server: ServerInfo,
    /// When the session began (or was resumed), on the driver's clock.
    pub connected_at: Instant,
    /// Whether this connection resumed an earlier session.
    pub resumed: bool,
    /// How long the server keeps the session after a drop.
    pub resume_grace: Duration,
    /// How often the server sends WebSocket pings (`welcome.ping_interval_ms`), if it does. When it pings at
    /// least once per heartbeat interval, the transport's automatic pongs are the client's heartbeat and the
    /// client sends `ping` only to probe a silent link.
    pub server_ping_interval: Option<Duration>,
    /// The transport the session runs on.
    pub transport: Transport,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    Idle,
    /// The transport was requested; `deadline` ends the attempt.
    Opening {
        deadline: Instant,
    },
    /// The transport is open and `hello` sent; waiting for `welcome` until `deadline`.
    Handshaking {
        deadline: Instant,
    },
    Connected,
    /// Waiting to retry at `retry_at`, and not before `not_before` even on a hint (a `goaway`).
    Waiting {
        retry_at: Instant,
        not_before: Instant,
    },
    Closed,
    Failed,
}

#[derive(Clone, Debug)]
struct RosterEntry {
    presence: Presence,
    /// The session (counted by `Client::epoch`) in which this record was last confirmed by the server.
    epoch: u64,
}

/// The sans-IO presence client. See the [module documentation](self) for the driver contract.
pub struct Client {
    config: ClientConfig,
    rng: SmallRng,
    link: Link,
    state: ConnectionState,
    session: Option<SessionInfo>,
    /// Consecutive failures, for the backoff; reset once a connection has been stable.
    failures: u32,
    /// Attempts since the client was last connected, for display.
    attempts_since_connected: u32,
    epoch: u64,
    last_sent: Instant,
    last_received: Instant,
    /// The `last_received` the liveness timer is armed from: never after it, and behind it by less than half
    /// the liveness grace while frames keep coming. A busy link thus moves [`Client::poll_timeout`] once per
    /// half grace period instead of with every frame (every move costs the driver a timer update); the timer
    /// may fire before the link is due, and `handle_timeout` then re-arms it from `last_received`. Half, not a
    /// whole grace: with the server pinging every heartbeat interval, the deadline then always lies at least
    /// half a grace period beyond the next ping (5 s with the default grace), so a driver timer that wakes
    /// less early than that (tokio's timer wheel wakes up to 4.1 s before a deadline between 4 s and 262 s
    /// away) never wakes an idle link.
    liveness_timer_from: Instant,
    probe_deadline: Option<Instant>,
    /// What the application chose with `set_status` (or another device, via `choice`), if anything.
    manual: Option<Status>,
    /// When that choice was made, Unix ms, if the wall clock was known.
    manual_chosen_at: Option<u64>,
    /// What the precedence table makes of `manual` and the automations: what the server is told.
    effective: Status,
    reason: StatusReason,
    automation: Automation,
    /// The choice changed after the last `hello` or `set_status` was sent.
    choice_dirty: bool,
    /// The automatic state last sent to the server.
    sent_auto: Auto,
    /// The automatic state changed after the last `hello` or `set_auto` was sent.
    auto_dirty: bool,
    /// The current server announced [`FEATURE_SET_STATUS_AUTO`]: a `set_status` may carry the automatic state.
    status_carries_auto: bool,
    /// After `rate_limited`: when to send the latest choice and automatic state again.
    resend_at: Option<Instant>,
    /// The session to resume on the next attempt, and until when the server keeps it.
    resumable: Option<(String, Instant)>,
    /// The greatest record version received on the current session.
    max_version_seen: u64,
    /// The users the server has on this session's watch list (what was sent).
    server_subscriptions: BTreeSet<String>,
    /// When the first ping still unanswered was sent.
    ping_outstanding: Option<Instant>,
    /// A `token_expired` was answered with an immediate retry; a second one is fatal.
    token_retry_used: bool,
    /// What this session is looking at.
    focus: Option<String>,
    /// The privacy settings the application last asked for, and whether they still have to be sent.
    privacy_requested: Option<Privacy>,
    privacy_dirty: bool,
    /// The focus changed and still has to be sent.
    focus_dirty: bool,
    /// The privacy settings in force, as the server reported them.
    privacy: Option<Privacy>,
    /// When the chosen message clears itself, on the driver's clock.
    message_expiry: Option<Instant>,
    /// Channels the application subscribed to.
    channel_subscriptions: BTreeSet<String>,
    /// The channels the server has on this session (what was sent).
    server_channels: BTreeSet<String>,
    /// Known members of subscribed channels.
    channel_members: ChannelMembers,
    /// Channels whose snapshot is arriving in parts: the members known before it, and those received so far.
    channel_parts: FewMap<(BTreeSet<String>, BTreeSet<String>)>,
    subscriptions: BTreeSet<String>,
    roster: BTreeMap<String, RosterEntry>,
    /// Queries awaiting their answer, by `ref`, with the parts received so far.
    pending_queries: FewMap<(QueryId, Vec<Presence>)>,
    next_query_id: u64,
    transmit: VecDeque<String>,
    transport: VecDeque<TransportCommand>,
    /// The transport of the current attempt or connection.
    transport_in_use: Transport,
    /// The event stream's parser, on the HTTP binding (new for every attempt).
    stream_parser: Option<SseParser>,
    /// Attempts in a row on `transport_in_use` that ended before `welcome`.
    failed_before_welcome: u32,
    /// The loss being handled never reached the server (see [`Client::handle_transport_unreachable`]).
    server_unreachable: bool,
    /// The last connection loss never reached the server.
    last_loss_unreachable: bool,
    /// On the HTTP binding because WebSocket kept failing (policy `Auto`).
    sse_fallback: bool,
    /// Failed tries to return to WebSocket since the fallback.
    websocket_retries: u32,
    /// When to try WebSocket again, while connected over the HTTP binding after a fallback.
    websocket_retry_at: Option<Instant>,
    /// The current attempt is a try to return to WebSocket: if it fails before `welcome`, the next attempt goes
    /// back to the HTTP binding at once.
    returning_to_websocket: bool,
    events: VecDeque<Event>,
    stats: Stats,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("state", &self.state)
            .field("subscriptions", &self.subscriptions.len())
            .field("roster", &self.roster.len())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client with these settings. `seed` seeds the backoff jitter: drivers pass a random value, tests a
    /// fixed one for reproducible runs.
    pub fn new(config: ClientConfig, seed: u64) -> Self {
        let automation = Automation::new(config.automation.clone());
        Client {
            config,
            rng: SmallRng::seed_from_u64(seed),
            link: Link::Idle,
            state: ConnectionState::Idle,
            session: None,
            failures: 0,
            attempts_since_connected: 0,
            epoch: 0,
            last_sent: Instant::ZERO,
            last_received: Instant::ZERO,
            liveness_timer_from: Instant::ZERO,
            probe_deadline: None,
            manual: None,
            manual_chosen_at: None,
            effective: Status::default(),
            reason: StatusReason::Manual,
            automation,
            choice_dirty: false,
            sent_auto: Auto::default(),
            status_carries_auto: false,
            auto_dirty: false,
            resend_at: None,
            resumable: None,
            max_version_seen: 0,
            server_subscriptions: BTreeSet::new(),
            ping_outstanding: None,
            token_retry_used: false,
            focus: None,
            privacy_requested: None,
            privacy_dirty: false,
            focus_dirty: false,
            privacy: None,
            message_expiry: None,
            channel_subscriptions: BTreeSet::new(),
            server_channels: BTreeSet::new(),
            channel_members: ChannelMembers::default(),
            channel_parts: FewMap::default(),
            subscriptions: BTreeSet::new(),
            roster: BTreeMap::new(),
            pending_queries: FewMap::default(),
            next_query_id: 1,
            transmit: VecDeque::new(),
            transport: VecDeque::new(),
            transport_in_use: Transport::WebSocket,
            stream_parser: None,
            failed_before_welcome: 0,
            server_unreachable: false,
            last_loss_unreachable: false,
            sse_fallback: false,
            websocket_retries: 0,
            websocket_retry_at: None,
            returning_to_websocket: false,
            events: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    // ----- application commands -----

    /// Starts connecting (from idle, closed or failed); does nothing if already connecting or connected.
    pub fn connect(&mut self, now: Instant) {
        self.automation.start(now);
        if matches!(self.link, Link::Idle | Link::Closed | Link::Failed) {
            self.failures = 0;
            self.attempts_since_connected = 0;
            self.start_attempt(now);
        }
    }

    /// Replaces the token used by the next `hello` (e.g. after [`ConnectionState::Failed`] with
    /// `token_expired`). Call [`Client::connect`] afterwards to leave the failed state.
    pub fn set_token(&mut self, token: impl Into<String>) {
        self.config.token = token.into();
    }

    /// Ends the session (`bye` if connected), closes the transport and stops reconnecting.
    pub fn close(&mut self, now: Instant) {
        if matches!(self.link, Link::Closed) {
            return;
        }
        if self.link == Link::Connected {
            self.send(
                ClientMessage::Bye {
                    reason: Some("closed by the application".into()),
                },
                now,
            );
        }
        if !matches!(self.link, Link::Idle | Link::Failed) {
            self.transport.push_back(TransportCommand::Close);
        }
        self.link = Link::Closed;
        self.resumable = None;
        self.end_session(QueryError::Disconnected);
        self.set_state(ConnectionState::Closed);
    }

    /// Sets the status you choose. What watchers see is the effective status: your choice combined with
    /// idle, lifecycle and DND by the precedence table of [`own_status`]. A change of the
    /// effective status is sent now if connected; otherwise once, in the next `hello` (several changes while
    /// offline are sent once, as the latest value). Choosing a status counts as activity.
    pub fn set_status(&mut self, status: Status, now: Instant) -> Result<(), ValidationError> {
        let status = protocol::normalize_status(status);
        protocol::validate_status(&status)?;
        protocol::validate_times(
            &Choice {
                status: status.clone(),
                chosen_at: None,
            },
            self.automation.unix_ms_at(now),
        )?;
        // Choosing a status is activity. The server combines the choice with this session's automatic state
        // (protocol section 6.1): it hears of both together, or that the user is active before it hears the new
        // choice, so that it never combines the new choice with an idle state this very call ends (watchers
        // would see away, then the choice).
        let changes = self.automation.activity(now, now);
        if self.manual.as_ref() != Some(&status) {
            self.message_expiry = status
                .message_expires_at
                .and_then(|at| self.automation.instant_of_unix_ms(at));
            self.manual = Some(status); // Strictly increasing on this device, so that two choices in one millisecond stay in order.
            let previous = self.manual_chosen_at.map_or(0, |t| t.saturating_add(1));
            self.manual_chosen_at = self.automation.unix_ms_at(now).map(|t| t.max(previous));
            self.choice_dirty = true;
        }
        self.send_own_state(now);
        self.apply(
            Changes {
                recompute: true,
                ..changes
            },
            now,
        );
        Ok(())
    }

    /// Sets what this session is looking at (e.g. `"conversation:42"`), or `None`. Watchers see the contexts of
    /// all the user's devices in [`Presence::focus`]. Kept across reconnects.
    pub fn set_focus(
        &mut self,
        context: Option<String>,
        now: Instant,
    ) -> Result<(), ValidationError> {
        if let Some(c) = &context {
            protocol::validate_focus(c)?;
        }
        if self.focus != context {
            self.focus = context;
            self.focus_dirty = true;
            self.send_focus(now);
        }
        Ok(())
    }

    fn send_focus(&mut self, now: Instant) {
        if self.link == Link::Connected && self.resend_at.is_none() && self.focus_dirty {
            self.send(
                ClientMessage::SetFocus {
                    reference: None,
                    context: self.focus.clone(),
                },
                now,
            );
            self.focus_dirty = false;
        }
    }

    /// What this session is looking at.
    pub fn focus(&self) -> Option<&str> {
        self.focus.as_deref()
    }

    /// Asks the server to apply these privacy settings (sent now if connected, else after the next `welcome`).
    pub fn set_privacy(&mut self, privacy: Privacy, now: Instant) {
        self.privacy_requested = Some(privacy);
        self.privacy_dirty = true;
        self.send_privacy(now);
    }

    /// The privacy settings in force, once the server has reported them.
    pub fn privacy(&self) -> Option<Privacy> {
        self.privacy
    }

    fn send_privacy(&mut self, now: Instant) {
        if self.link != Link::Connected || self.resend_at.is_some() || !self.privacy_dirty {
            return;
        }
        if let Some(privacy) = self.privacy_requested {
            self.send(
                ClientMessage::SetPrivacy {
                    reference: None,
                    privacy,
                },
                now,
            );
        }
        self.privacy_dirty = false;
    }

    /// The chosen message's expiry came: clear it here as the server does there (protocol section 7).
    fn expire_message(&mut self, now: Instant) {
        self.message_expiry = None;
        let Some(manual) = self.manual.as_mut() else {
            return;
        };
        let expired_at = manual.message_expires_at.take();
        manual.message = None;
        if let Some(at) = expired_at {
            self.manual_chosen_at = Some(self.manual_chosen_at.map_or(at, |c| c.max(at)));
        }
        self.apply(
            Changes {
                recompute: true,
                ..Changes::default()
            },
            now,
        );
    }

    /// The status you last chose, if any.
    pub fn manual_status(&self) -> Option<&Status> {
        self.manual.as_ref()
    }

    /// The status watchers see (or will see once connected).
    pub fn effective_status(&self) -> &Status {
        &self.effective
    }

    /// Which rule of the precedence table decided the effective status.
    pub fn status_reason(&self) -> StatusReason {
        self.reason
    }

    // ----- automations: activity, lifecycle, wall clock, DND -----

    /// The user did something (mouse, key, MIDI, transport) at `at` (on the driver's clock, clamped to `now`).
    /// Cancels a pending idle warning and, if idle had made the status away, restores it.
    pub fn handle_activity(&mut self, at: Instant, now: Instant) {
        let changes = self.automation.activity(at, now);
        self.apply(changes, now);
    }

    /// Whether activity should reach the core promptly: the client is idle or has warned that it will be.
    /// Drivers that batch activity use this to decide when to wake up for it.
    pub fn wants_activity(&self) -> bool {
        self.automation.wants_activity()
    }

    /// The app went to the background: after [`AutomationConfig::background_away_after`] the status becomes
    /// away (reason `Lifecycle`).
    pub fn app_backgrounded(&mut self, now: Instant) {
        let changes = self.automation.backgrounded(now);
        self.apply(changes, now);
    }

    /// The app came to the foreground: the lifecycle away ends, it counts as activity, and the connection is
    /// checked at once ([`Client::reconnect_now`]).
    pub fn app_foregrounded(&mut self, now: Instant) {
        let changes = self.automation.foregrounded(now);
        self.apply(changes, now);
        self.reconnect_now(now);
    }

    /// Tells the client the wall clock: `unix_ms` (Unix time in milliseconds) is the time at `now`. Needed for
    /// DND schedules. Drivers call it at start and may call it often: it only re-plans when the clock moved by
    /// a second or more against the driver's clock.
    pub fn handle_wall_clock(&mut self, now: Instant, unix_ms: u64) {
        let changes = self.automation.wall_clock(now, unix_ms);
        self.apply(changes, now);
    }

    /// Replaces the DND schedule (`None` removes it). The next transition is computed exactly and armed as one
    /// timer.
    pub fn set_dnd_schedule(&mut self, schedule: Option<DndSchedule>, now: Instant) {
        let changes = self.automation.set_schedule(schedule, now);
        self.apply(changes, now);
    }

    /// The DND schedule, if any.
    pub fn dnd_schedule(&self) -> Option<&DndSchedule> {
        self.automation.schedule()
    }

    /// DND now, until `until` (on the driver's clock), with an optional message (which wins over the
    /// schedule's). A snooze in the past ends any snooze.
    pub fn snooze_dnd(
        &mut self,
        until: Instant,
        message: Option<String>,
        now: Instant,
    ) -> Result<(), ValidationError> {
        let message = message.filter(|m| !m.is_empty());
        if let Some(m) = &message {
            protocol::validate_status(
                &Status::new(crate::Availability::Busy).with_message(m.clone()),
            )?;
        }
        let changes = self.automation.snooze(until, message, now);
        self.apply(changes, now);
        Ok(())
    }

    /// Ends a snooze early (a scheduled window that is on stays on).
    pub fn end_snooze(&mut self, now: Instant) {
        let changes = self.automation.end_snooze();
        self.apply(changes, now);
    }

    /// Whether DND is on, why, until when and when it next starts.
    pub fn dnd_state(&self, now: Instant) -> DndState {
        self.automation.dnd_state(now)
    }

    /// Replaces the idle and lifecycle settings; idleness is judged again from the last activity.
    pub fn set_automation(&mut self, config: AutomationConfig, now: Instant) {
        self.config.automation = config.clone();
        let changes = self.automation.set_config(config, now);
        self.apply(changes, now);
    }

    fn apply(&mut self, changes: Changes, now: Instant) {
        // A cancel and a new warning in one step (settings changed): the warning is the news.
        if changes.warning_cancelled {
            self.events.push_back(Event::IdleWarningCancelled);
        }
        if let Some(away_at) = changes.warning {
            self.events.push_back(Event::IdleWarning { away_at });
        }
        if !changes.recompute {
            return;
        }
        let manual = self.manual.clone().unwrap_or_default();
        let (effective, reason) = own_status::combine(
            &manual,
            self.automation.dnd(),
            self.automation.is_idle(),
            self.automation.is_background_away(),
        );
        self.reason = reason;
        if effective != self.effective {
            self.effective = effective.clone();
            self.events
                .push_back(Event::OwnStatusChanged { effective, reason });
        }
        if self.current_auto() != self.sent_auto {
            self.send_auto(now);
        }
    }

    /// This session's automatic state, as the server is told (protocol section 6.1).
    fn current_auto(&self) -> Auto {
        if let Some(message) = self.automation.dnd() {
            return Auto {
                state: AutoState::Dnd,
                message: message.map(str::to_owned),
            };
        }
        let state = if self.automation.is_idle() {
            AutoState::Idle
        } else if self.automation.is_background_away() {
            AutoState::Background
        } else {
            AutoState::Active
        };
        Auto {
            state,
            message: None,
        }
    }

    /// The choice as sent on the wire, if one was made.
    fn current_choice(&self) -> Option<Choice> {
        self.manual.clone().map(|status| Choice {
            status,
            chosen_at: self.manual_chosen_at,
        })
    }

    /// Tells the server what it has not heard yet of the choice and of this session's automatic state. A server
    /// with [`FEATURE_SET_STATUS_AUTO`] gets both in one `set_status`, so that its watchers see one update; any
    /// other gets the automatic state first (protocol section 7, `set_auto`).
    fn send_own_state(&mut self, now: Instant) {
        if self.auto_unsent() && !(self.choice_dirty && self.status_carries_auto) {
            self.send_auto(now);
        }
        if self.choice_dirty {
            self.send_choice(now);
        }
    }

    /// The server may not hold this session's current automatic state.
    fn auto_unsent(&self) -> bool {
        self.auto_dirty || self.current_auto() != self.sent_auto
    }

    fn send_choice(&mut self, now: Instant) {
        let Some(choice) = self.current_choice() else {
            return;
        };
        if self.link == Link::Connected && self.resend_at.is_none() {
            let carried =
                (self.status_carries_auto && self.auto_unsent()).then(|| self.current_auto());
            self.send(
                ClientMessage::SetStatus {
                    reference: None,
                    choice,
                    auto: carried.clone(),
                },
                now,
            );
            self.choice_dirty = false;
            if let Some(auto) = carried {
                self.sent_auto = auto;
                self.auto_dirty = false;
            }
        } else {
            self.choice_dirty = true;
        }
    }

    fn send_auto(&mut self, now: Instant) {
        let auto = self.current_auto();
        if self.link == Link::Connected && self.resend_at.is_none() {
            self.send(
                ClientMessage::SetAuto {
                    reference: None,
                    auto: auto.clone(),
                },
                now,
            );
            self.sent_auto = auto;
            self.auto_dirty = false;
        } else {
            self.auto_dirty = true;
        }
    }

    /// Adopts the user's choice as the server reports it (made here or on another device).
    fn adopt_choice(&mut self, choice: Choice, now: Instant) {
        // A choice made here that the server has not confirmed yet wins over an older one reported meanwhile.
        let older = match (choice.chosen_at, self.manual_chosen_at) {
            (Some(theirs), Some(ours)) => theirs < ours,
            (None, Some(_)) => true,
            _ => false,
        };
        if self.choice_dirty && older {
            return;
        }
        self.message_expiry = choice
            .status
            .message_expires_at
            .and_then(|at| self.automation.instant_of_unix_ms(at));
        self.manual = Some(choice.status);
        self.manual_chosen_at = choice.chosen_at;
        self.choice_dirty = false;
        self.apply(
            Changes {
                recompute: true,
                ..Changes::default()
            },
            now,
        );
    }

    /// Watches users. The watch list is kept across reconnects; users already watched are skipped.
    pub fn subscribe<I, S>(&mut self, users: I, now: Instant) -> Result<(), ValidationError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut new = Vec::new();
        let mut seen = BTreeSet::new();
        for user in users {
            let user = user.into();
            protocol::validate_user_id(&user)?;
            if !self.subscriptions.contains(&user) && seen.insert(user.clone()) {
                new.push(user);
            }
        }
        let count = self.subscriptions.len() + new.len();
        if count > MAX_SUBSCRIPTIONS_PER_SESSION {
            return Err(ValidationError::TooManySubscriptions { count });
        }
        self.subscriptions.extend(new.iter().cloned());
        if self.link == Link::Connected && !new.is_empty() {
            self.server_subscriptions.extend(new.iter().cloned());
            self.send_user_lists(new, |users| ClientMessage::Subscribe { users }, now);
        }
        Ok(())
    }

    /// Stops watching users and forgets what the client held about them. Unknown ids are ignored.
    pub fn unsubscribe<I, S>(&mut self, users: I, now: Instant)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut removed = Vec::new();
        for user in users {
            if let Some(user) = self.subscriptions.take(user.as_ref()) {
                if !self.watches(&user) {
                    self.roster.remove(&user);
                }
                removed.push(user);
            }
        }
        if self.link == Link::Connected && !removed.is_empty() {
            for user in &removed {
                self.server_subscriptions.remove(user);
            }
            self.send_user_lists(removed, |users| ClientMessage::Unsubscribe { users }, now);
        }
    }

    /// The users being watched directly.
    pub fn subscriptions(&self) -> impl Iterator<Item = &str> {
        self.subscriptions.iter().map(String::as_str)
    }

    /// Watches the members of channels (rooms) as they come and go. Kept across reconnects. The server only
    /// accepts channels the user belongs to (others are refused with `not_a_member`).
    pub fn subscribe_channels<I, S>(
        &mut self,
        channels: I,
        now: Instant,
    ) -> Result<(), ValidationError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut new = Vec::new();
        for channel in channels {
            let channel = channel.into();
            protocol::validate_user_id(&channel)?;
            if !self.channel_subscriptions.contains(&channel) && !new.contains(&channel) {
                new.push(channel);
            }
        }
        let count = self.channel_subscriptions.len() + new.len();
        if count > protocol::MAX_CHANNELS_PER_SESSION {
            return Err(ValidationError::TooManySubscriptions { count });
        }
        self.channel_subscriptions.extend(new.iter().cloned());
        if self.link == Link::Connected && !new.is_empty() {
            self.server_channels.extend(new.iter().cloned());
            self.send(ClientMessage::SubscribeChannels { channels: new }, now);
        }
        Ok(())
    }

    /// Stops watching channels; their members stay in the roster only if watched otherwise.
    pub fn unsubscribe_channels<I, S>(&mut self, channels: I, now: Instant)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut removed = Vec::new();
        for channel in channels {
            if let Some(channel) = self.channel_subscriptions.take(channel.as_ref()) {
                let members = self.channel_members.remove(&channel).unwrap_or_default();
                self.channel_parts.remove(&channel);
                self.forget_unwatched(members);
                removed.push(channel);
            }
        }
        if self.link == Link::Connected && !removed.is_empty() {
            for channel in &removed {
                self.server_channels.remove(channel);
            }
            self.send(
                ClientMessage::UnsubscribeChannels { channels: removed },
                now,
            );
        }
    }

    /// The channels being watched.
    pub fn channel_subscriptions(&self) -> impl Iterator<Item = &str> {
        self.channel_subscriptions.iter().map(String::as_str)
    }

    /// The known members of a subscribed channel.
    pub fn channel_members(&self, channel: &str) -> Option<&BTreeSet<String>> {
        self.channel_members.get(channel)
    }

    /// Whether `user` is watched, directly or through a subscribed channel.
    fn watches(&self, user: &str) -> bool {
        self.subscriptions.contains(user) || self.channel_members.lists(user)
    }

    /// Drops from the roster the users no longer watched for any reason.
    fn forget_unwatched(&mut self, users: impl IntoIterator<Item = String>) {
        for user in users {
            if !self.watches(&user) {
                self.roster.remove(&user);
            }
        }
    }

    fn channel_snapshot(&mut self, channel: String, members: Vec<Presence>, more: bool) {
        if !self.channel_subscriptions.contains(&channel) {
            self.stats.unexpected_messages += 1;
            return;
        }
        if !self.channel_parts.contains_key(&channel) {
            let before = self
                .channel_members
                .get(&channel)
                .cloned()
                .unwrap_or_default();
            self.channel_parts
                .insert(channel.clone(), (before, BTreeSet::new()));
        }
        let Some((_, received)) = self.channel_parts.get_mut(&channel) else {
            return;
        };
        received.extend(members.iter().map(|m| m.user_id.clone()));
        if more {
            // Watch this part's members already (beside those known before), so that their records are kept.
            for member in &members {
                self.channel_members.add(&channel, &member.user_id);
            }
        } else {
            let (before, complete) = self.channel_parts.remove(&channel).unwrap_or_default();
            let joined: Vec<String> = complete.difference(&before).cloned().collect();
            // Left: whoever the channel listed until now (before the snapshot, or joined while it arrived) and the
            // complete list does not.
            let known = self
                .channel_members
                .replace(&channel, complete.clone())
                .unwrap_or_default();
            let left: Vec<String> = known.difference(&complete).cloned().collect();
            self.forget_unwatched(left.clone());
            if !joined.is_empty() || !left.is_empty() {
                self.events.push_back(Event::ChannelMembersChanged {
                    channel,
                    joined,
                    left,
                });
            }
        }
        for record in members {
            self.apply_record(record);
        }
    }

    /// Forgets a channel the server no longer lets this user watch (removed from it, or `not_a_member`).
    fn drop_channel(&mut self, channel: &str) {
        self.channel_subscriptions.remove(channel);
        self.server_channels.remove(channel);
        self.channel_parts.remove(channel);
        if let Some(members) = self.channel_members.remove(channel) {
            let left: Vec<String> = members.iter().cloned().collect();
            self.forget_unwatched(members);
            self.events.push_back(Event::ChannelMembersChanged {
                channel: channel.to_owned(),
                joined: Vec::new(),
                left,
            });
        }
    }

    fn channel_members_changed(
        &mut self,
        channel: String,
        joined: Vec<Presence>,
        left: Vec<String>,
    ) {
        let own = self.session.as_ref().map(|s| s.user_id.clone());
        if own.is_some_and(|me| left.contains(&me)) {
            self.drop_channel(&channel);
            return;
        }
        if self.channel_members.get(&channel).is_none() {
            self.stats.unexpected_messages += 1;
            return;
        }
        // Who left first, then who joined (protocol section 7): a user in both is a member afterwards.
        for user in &left {
            self.channel_members.remove_member(&channel, user);
        }
        for record in &joined {
            self.channel_members.add(&channel, &record.user_id);
        }
        let joined_ids: Vec<String> = joined.iter().map(|r| r.user_id.clone()).collect();
        for record in joined {
            self.apply_record(record);
        }
        self.forget_unwatched(left.clone());
        self.events.push_back(Event::ChannelMembersChanged {
            channel,
            joined: joined_ids,
            left,
        });
    }

    /// Reads users' presence once, without watching them. The answer comes as [`Event::QueryCompleted`].
    /// Queries are not queued: the client must be connected.
    pub fn query<S: AsRef<str>>(
        &mut self,
        users: &[S],
        now: Instant,
    ) -> Result<QueryId, QueryError> {
        protocol::validate_user_list(users).map_err(QueryError::Invalid)?;
        if self.link != Link::Connected {
            return Err(QueryError::NotConnected);
        }
        let query_id = QueryId(self.next_query_id);
        self.next_query_id += 1;
        let reference = format!("q{}", query_id.0);
        let message = ClientMessage::Query {
            reference: reference.clone(),
            users: users.iter().map(|u| u.as_ref().to_owned()).collect(),
        };
        let frame = message.encode();
        if frame.len() > self.outbound_limit() {
            return Err(QueryError::Invalid(ValidationError::TooManyUsers {
                count: users.len(),
            }));
        }
        self.pending_queries
            .insert(reference, (query_id, Vec::new()));
        self.push_frame(frame, now);
        Ok(query_id)
    }

    /// A hint that the network changed or the app came to the foreground. While waiting to reconnect, the next
    /// attempt starts now. While connected, the client probes the link with a ping and declares it dead if
    /// nothing arrives within [`ClientConfig::probe_timeout`].
    pub fn reconnect_now(&mut self, now: Instant) {
        match self.link {
            Link::Waiting { not_before, .. } if now < not_before => {
                // The server asked for a pause (goaway): the hint only skips the jitter on top of it.
                self.link = Link::Waiting {
                    retry_at: not_before,
                    not_before,
                };
            }
            Link::Waiting { .. } => {
                // The network changed: what blocked WebSocket may be gone.
                if self.sse_fallback {
                    // If WebSocket is still blocked, the next attempt goes back to HTTP at once.
                    self.sse_fallback = false;
                    self.failed_before_welcome = 0;
                    self.returning_to_websocket = true;
                }
                self.start_attempt(now)
            }
            Link::Connected if self.probe_deadline.is_none() => {
                self.probe_deadline = Some(now + self.config.probe_timeout);
                self.send_ping(now);
            }
            _ => {}
        }
    }

    // ----- transport inputs -----

    /// The transport requested by [`TransportCommand::Open`] is open: the client sends `hello`.
    pub fn handle_transport_open(&mut self, now: Instant) {
        if let Link::Opening { deadline } = self.link {
            self.last_received = now;
            self.liveness_timer_from = now;
            let auto = self.current_auto();
            let resume = self
                .resumable
                .as_ref()
                .filter(|(_, until)| now < *until)
                .map(|(session_id, _)| Resume {
                    session_id: session_id.clone(),
                    last_version: self.max_version_seen,
                });
            self.choice_dirty = false;
            self.auto_dirty = false;
            self.focus_dirty = false;
            self.sent_auto = auto.clone();
            self.send(
                ClientMessage::Hello {
                    protocol: PROTOCOL_VERSION,
                    token: self.config.token.clone(),
                    client: self.config.client_info.clone(),
                    // Only a choice this device made: a second device must not override the user with a default.
                    status: self.current_choice(),
                    auto: (auto != Auto::default()).then_some(auto),
                    resume,
                    focus: self.focus.clone(),
                },
                now,
            );
            self.link = Link::Handshaking { deadline };
        }
    }

    /// The transport failed to open or was closed by the other side or the network. `reason` is for people.
    pub fn handle_transport_closed(&mut self, reason: &str, now: Instant) {
        if matches!(
            self.link,
            Link::Opening { .. } | Link::Handshaking { .. } | Link::Connected
        ) {
            self.connection_lost(reason.to_owned(), Duration::ZERO, now);
        }
    }

    /// The transport could not reach the server at all: the connection was refused, there is no route to the
    /// host, or the network is down. Like [`Client::handle_transport_closed`], except that it does not count
    /// toward switching to the other transport: the server or the network is down, not this transport blocked
    /// (protocol section 11.7). Drivers that cannot tell (browsers) report every failure as closed.
    pub fn handle_transport_unreachable(&mut self, reason: &str, now: Instant) {
        if matches!(
            self.link,
            Link::Opening { .. } | Link::Handshaking { .. } | Link::Connected
        ) {
            self.server_unreachable = true;
            self.connection_lost(reason.to_owned(), Duration::ZERO, now);
        }
    }

    /// Whether the last lost connection or failed attempt never reached the server (reported with
    /// [`Client::handle_transport_unreachable`]): the server or the network is down.
    pub fn last_loss_unreachable(&self) -> bool {
        self.last_loss_unreachable
    }

    /// An inbound text frame.
    pub fn handle_frame(&mut self, text: &str, now: Instant) {
        if !matches!(self.link, Link::Handshaking { .. } | Link::Connected) {
            self.stats.unexpected_messages += 1;
            return;
        }
        self.note_inbound(now);
        self.stats.frames_received += 1;
        match ServerMessage::decode(text, self.config.max_inbound_frame_bytes) {
            Ok(message) => self.handle_message(message, now),
            Err(DecodeError::TooLarge { size, limit }) => {
                self.stats.oversized_frames += 1;
                tracing::debug!(size, limit, "ignoring oversized frame");
            }
            Err(DecodeError::Malformed(why)) => {
                self.stats.malformed_frames += 1;
                tracing::debug!(%why, "ignoring malformed frame");
            }
        }
    }

    /// Bytes of the HTTP binding's event stream, in chunks of any size (protocol section 11.3): each event is a
    /// frame, each comment a sign of life. A stream that breaks the parser's size limit (4 × the frame limit) is
    /// a lost connection. Ignored on other transports.
    pub fn handle_stream_bytes(&mut self, chunk: &[u8], now: Instant) {
        let Some(parser) = self.stream_parser.as_mut() else {
            return;
        };
        let fed = parser.feed(chunk);
        let mut items = Vec::new();
        while let Some(item) = parser.poll_item() {
            items.push(item);
        }
        for item in items {
            match item {
                SseItem::Event(event) if event.event == "message" => {
                    self.handle_frame(&event.data, now)
                }
                _ => self.handle_inbound_activity(now),
            }
        }
        if let Err(e) = fed {
            self.handle_transport_closed(&e.to_string(), now);
        }
    }

    /// An inbound frame that is not text (binary, WebSocket ping or pong): ignored, but a sign of life.
    pub fn handle_inbound_activity(&mut self, now: Instant) {
        if matches!(self.link, Link::Handshaking { .. } | Link::Connected) {
            self.note_inbound(now);
            self.stats.other_frames += 1;
        }
    }

    /// A timer armed from [`Client::poll_timeout`] fired. Calling it early, late or twice is harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.message_expiry.is_some_and(|at| now >= at) {
            self.expire_message(now);
        }
        let changes = self.automation.handle_timeout(now);
        self.apply(changes, now);
        self.handle_link_timeout(now);
    }

    fn handle_link_timeout(&mut self, now: Instant) {
        match self.link {
            Link::Opening { deadline } | Link::Handshaking { deadline } if now >= deadline => {
                let reason = format!(
                    "no welcome within the connect timeout of {} ms",
                    crate::time::duration_millis(self.config.connect_timeout)
                );
                self.connection_lost(reason, Duration::ZERO, now);
            }
            Link::Connected => {
                let Some(interval) = self.session.as_ref().map(|s| s.heartbeat_interval) else {
                    return;
                };
                // Whatever fired, the liveness timer is armed from the last frame again.
                self.liveness_timer_from = self.last_received;
                if now >= self.liveness_deadline(interval) {
                    if self.ping_outstanding.is_none() {
                        // Silence we may have caused ourselves (a timer that fired late): ask first.
                        self.send_ping(now);
                        return;
                    }
                    let silent = now.saturating_duration_since(self.last_received);
                    let reason = format!(
                        "no frame from the server for {} ms",
                        crate::time::duration_millis(silent)
                    );
                    self.connection_lost(reason, Duration::ZERO, now);
                    return;
                }
                if self.websocket_retry_at.is_some_and(|at| now >= at) {
                    self.websocket_retry_at = None;
                    self.return_to_websocket(now);
                    return;
                }
                if self.heartbeat_due(interval).is_some_and(|due| now >= due) {
                    self.send_ping(now);
                }
                if self.resend_at.is_some_and(|at| now >= at) {
                    self.resend_at = None;
                    self.send_own_state(now);
                    self.send_focus(now);
                    self.send_privacy(now);
                }
            }
            Link::Waiting { retry_at, .. } if now >= retry_at => self.start_attempt(now),
            _ => {}
        }
    }

    // ----- outputs -----

    /// The next text frame to send on the current transport.
    pub fn poll_transmit(&mut self) -> Option<String> {
        self.transmit.pop_front()
    }

    /// Whether outputs wait for the driver: a frame to send, a transport command or an event. A driver that lets
    /// other threads call into the core can wake itself only when such a call left it something to do.
    pub fn has_output(&self) -> bool {
        !self.transmit.is_empty() || !self.transport.is_empty() || !self.events.is_empty()
    }

    /// The next thing the driver must do with the transport.
    pub fn poll_transport(&mut self) -> Option<TransportCommand> {
        self.transport.pop_front()
    }

    /// Whether a transport command waits for the driver. While one does, what the driver learns about the
    /// current transport (it opened, a frame, it closed) concerns a transport the core has given up: drivers
    /// that may learn things out of order (several threads) drop such inputs and apply the commands first.
    pub fn transport_pending(&self) -> bool {
        !self.transport.is_empty()
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When the driver must call [`Client::handle_timeout`] next, if at all: the earliest of the connection's
    /// timer (connect timeout, heartbeat, liveness, retry) and the automations' (idle warning, away, background,
    /// snooze end, next DND transition). One timer, no polling. Inbound frames move it at most once per half
    /// liveness grace period (so a driver that keeps its timer while the deadline stays put updates it rarely);
    /// a timer armed before the latest frames may fire before anything is due, which `handle_timeout` answers by
    /// re-arming. On an idle link pinged by the server every heartbeat interval, it stays at least half a grace
    /// period beyond the next ping.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.link_timeout(),
            self.automation.poll_timeout(),
            self.message_expiry,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn link_timeout(&self) -> Option<Instant> {
        match self.link {
            Link::Opening { deadline } | Link::Handshaking { deadline } => Some(deadline),
            Link::Connected => {
                let interval = self.session.as_ref()?.heartbeat_interval;
                let liveness = self.liveness_deadline_from(self.liveness_timer_from, interval);
                let next = self
                    .heartbeat_due(interval)
                    .map_or(liveness, |due| due.min(liveness));
                let next = self.websocket_retry_at.map_or(next, |at| at.min(next));
                Some(self.resend_at.map_or(next, |at| at.min(next)))
            }
            Link::Waiting { retry_at, .. } => Some(retry_at),
            Link::Idle | Link::Closed | Link::Failed => None,
        }
    }

    /// When the client must send `ping` to keep its session: a heartbeat interval after its last frame, unless
    /// the server pings at least that often (then the transport's pongs keep the session, and the liveness rule
    /// alone decides when to probe).
    fn heartbeat_due(&self, interval: Duration) -> Option<Instant> {
        let server_pings = self
            .session
            .as_ref()
            .and_then(|s| s.server_ping_interval)
            .is_some_and(|every| !every.is_zero() && every <= interval);
        (!server_pings).then(|| self.last_sent + interval)
    }

    // ----- queries -----

    /// The connection state.
    pub fn state(&self) -> &ConnectionState {
        &self.state
    }

    /// The current session, while connected.
    pub fn session(&self) -> Option<&SessionInfo> {
        self.session.as_ref()
    }

    /// Every watched user whose presence is known, in user id order. Records are kept (as last known) while the
    /// client reconnects, and refreshed from the new session's snapshot.
    pub fn roster(&self) -> impl Iterator<Item = &Presence> {
        self.roster.values().map(|e| &e.presence)
    }

    /// The presence of one watched user, if known.
    pub fn presence(&self, user_id: &str) -> Option<&Presence> {
        self.roster.get(user_id).map(|e| &e.presence)
    }

    /// Counters of what was received and sent.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The settings.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    // ----- internals -----

    fn outbound_limit(&self) -> usize {
        self.session
            .as_ref()
            .map_or(MAX_FRAME_BYTES, |s| s.max_frame_bytes)
    }

    /// When the link counts as dead: nothing for interval + grace since the last inbound frame, and our own ping
    /// unanswered for the grace period.
    fn liveness_deadline(&self, interval: Duration) -> Instant {
        self.liveness_deadline_from(self.last_received, interval)
    }

    /// [`Self::liveness_deadline`] as if the last inbound frame had come at `last_received`.
    fn liveness_deadline_from(&self, last_received: Instant, interval: Duration) -> Instant {
        let grace = self.config.liveness_grace;
        let silent_deadline = match self.ping_outstanding {
            Some(sent) => (last_received + interval + grace).max(sent + grace),
            None => last_received + interval + grace,
        };
        self.probe_deadline
            .map_or(silent_deadline, |probe| probe.min(silent_deadline))
    }

    fn note_inbound(&mut self, now: Instant) {
        self.last_received = now;
        if now >= self.liveness_timer_from + self.config.liveness_grace / 2 {
            self.liveness_timer_from = now;
        }
        self.probe_deadline = None;
        self.ping_outstanding = None;
    }

    fn send_ping(&mut self, now: Instant) {
        self.send(ClientMessage::Ping { reference: None }, now);
        self.ping_outstanding.get_or_insert(now);
    }

    fn set_state(&mut self, state: ConnectionState) {
        if self.state != state {
            let previous = std::mem::replace(&mut self.state, state.clone());
            self.events.push_back(Event::StateChanged {
                previous,
                current: state,
            });
        }
    }

    fn send(&mut self, message: ClientMessage, now: Instant) {
        self.push_frame(message.encode(), now);
    }

    fn push_frame(&mut self, frame: String, now: Instant) {
        self.transmit.push_back(frame);
        self.last_sent = now;
        self.stats.frames_sent += 1;
    }

    /// Sends `users` in as many frames as the per-request and frame-size limits require.
    fn send_user_lists(
        &mut self,
        users: Vec<String>,
        make: impl Fn(Vec<String>) -> ClientMessage,
        now: Instant,
    ) {
        // Room for `{"type":"unsubscribe","users":[]}` and some slack.
        let budget = self.outbound_limit().saturating_sub(64);
        let mut chunk = Vec::new();
        let mut size = 0;
        for user in users {
            let encoded = crate::json_text::str_len(&user) + 1;
            if !chunk.is_empty()
                && (chunk.len() == MAX_USERS_PER_REQUEST || size + encoded > budget)
            {
                self.send(make(std::mem::take(&mut chunk)), now);
                size = 0;
            }
            size += encoded;
            chunk.push(user);
        }
        if !chunk.is_empty() {
            self.send(make(chunk), now);
        }
    }

    fn start_attempt(&mut self, now: Instant) {
        self.attempts_since_connected += 1;
        self.transmit.clear();
        self.probe_deadline = None;
        self.ping_outstanding = None;
        self.websocket_retry_at = None;
        let transport = match self.config.transport {
            TransportPolicy::WebSocketOnly => Transport::WebSocket,
            TransportPolicy::SseOnly => Transport::Sse,
            TransportPolicy::Auto if self.sse_fallback => Transport::Sse,
            TransportPolicy::Auto => Transport::WebSocket,
        };
        self.transport_in_use = transport;
        self.transport
            .push_back(TransportCommand::Open { transport });
        self.stream_parser = (transport == Transport::Sse)
            .then(|| SseParser::new(4 * self.config.max_inbound_frame_bytes));
        self.link = Link::Opening {
            deadline: now + self.config.connect_timeout,
        };
        self.set_state(ConnectionState::Connecting {
            attempt: self.attempts_since_connected,
            transport,
        });
    }

    /// The transport in use for the current attempt or connection.
    pub fn transport(&self) -> Transport {
        self.transport_in_use
    }

    /// The `last_version` the next `hello` carries if it resumes a session: what the HTTP binding also sends
    /// as `Last-Event-ID` (protocol section 11.6). `None` when there is nothing to resume or nothing was
    /// received.
    pub fn resume_version(&self) -> Option<u64> {
        self.resumable
            .as_ref()
            .map(|_| self.max_version_seen)
            .filter(|v| *v > 0)
    }

    /// Connected over the HTTP binding after a fallback, and the wait is over: move the session to WebSocket
    /// with a resume (watchers see nothing). When the resume grace could run out while a WebSocket attempt
    /// takes its connect timeout (a proxy that swallows the upgrade), the move would show, so it waits for the
    /// next reconnect instead.
    fn return_to_websocket(&mut self, now: Instant) {
        self.sse_fallback = false;
        self.failed_before_welcome = 0;
        let connect_timeout = self.config.connect_timeout;
        let Some(session) = self
            .session
            .as_ref()
            .filter(|s| s.resume_grace > connect_timeout)
        else {
            return;
        };
        self.resumable = Some((session.session_id.clone(), now + session.resume_grace));
        self.returning_to_websocket = true;
        self.transport.push_back(TransportCommand::Close);
        self.transmit.clear();
        self.end_session(QueryError::Disconnected);
        self.start_attempt(now);
    }

    /// Which transport the attempt after this loss uses (policy `Auto`), and whether it starts at once because
    /// only the transport changed.
    fn choose_transport_after_loss(&mut self, before_welcome: bool, unreachable: bool) -> bool {
        if self.config.transport != TransportPolicy::Auto {
            return false;
        }
        if !before_welcome {
            self.failed_before_welcome = 0;
            return false;
        }
        if std::mem::take(&mut self.returning_to_websocket) {
            // WebSocket is still blocked: back to the HTTP binding now, and wait longer next time.
            self.sse_fallback = true;
            self.websocket_retries = self.websocket_retries.saturating_add(1);
            self.failed_before_welcome = 0;
            return true;
        }
        if unreachable {
            // The server is down or the network is: the other transport would fare no better.
            return false;
        }
        self.failed_before_welcome += 1;
        if self.failed_before_welcome < self.config.fallback_after.max(1) {
            return false;
        }
        self.failed_before_welcome = 0;
        self.sse_fallback = !self.sse_fallback;
        // Falling back to HTTP is worth trying at once; failing on both transports is the network's fault and
        // waits as usual.
        self.sse_fallback
    }

    /// The wait before the next try to return to WebSocket: between half the ceiling and all of it.
    fn websocket_retry_wait(&mut self) -> Duration {
        let policy = ReconnectPolicy {
            base_delay: self.config.websocket_retry_delay,
            max_delay: self
                .config
                .websocket_retry_max_delay
                .max(self.config.websocket_retry_delay),
            stable_after: Duration::ZERO,
        };
        let ceiling = policy.ceiling(self.websocket_retries.saturating_add(1));
        let half = ceiling / 2;
        let half_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
        half + Duration::from_millis(rand::Rng::random_range(&mut self.rng, 0..=half_ms))
    }

    fn end_session(&mut self, query_error: QueryError) {
        self.session = None;
        self.probe_deadline = None;
        for (_, (query_id, _)) in self.pending_queries.take_all() {
            self.events.push_back(Event::QueryCompleted {
                query_id,
                result: Err(query_error.clone()),
            });
        }
    }

    /// The connection or attempt ended; wait `extra_delay` plus a jittered backoff delay, then retry.
    fn connection_lost(&mut self, reason: String, extra_delay: Duration, now: Instant) {
        let before_welcome = matches!(self.link, Link::Opening { .. } | Link::Handshaking { .. });
        let unreachable = std::mem::take(&mut self.server_unreachable);
        self.last_loss_unreachable = unreachable;
        let switch_at_once = self.choose_transport_after_loss(before_welcome, unreachable);
        if self.link == Link::Connected {
            let stable = self.session.as_ref().is_some_and(|s| {
                now.saturating_duration_since(s.connected_at) >= self.config.reconnect.stable_after
            });
            if stable {
                self.failures = 0;
            }
        }
        tracing::debug!(%reason, "connection lost");
        if let Some(session) = self.session.as_ref().filter(|s| !s.resume_grace.is_zero()) {
            self.resumable = Some((session.session_id.clone(), now + session.resume_grace));
        }
        self.transport.push_back(TransportCommand::Close);
        self.transmit.clear();
        self.end_session(QueryError::Disconnected);
        self.failures = self.failures.saturating_add(1);
        let extra_delay = extra_delay.min(MAX_GOAWAY_DELAY);
        let delay = if switch_at_once && extra_delay.is_zero() {
            Duration::ZERO
        } else {
            extra_delay + self.config.reconnect.delay(self.failures, &mut self.rng)
        };
        let retry_at = now + delay;
        self.link = Link::Waiting {
            retry_at,
            not_before: now + extra_delay,
        };
        self.set_state(ConnectionState::Reconnecting {
            attempt: self.attempts_since_connected + 1,
            retry_at,
            delay,
            reason,
        });
    }

    fn fail(&mut self, code: ErrorCode, message: String) {
        self.resumable = None;
        self.transport.push_back(TransportCommand::Close);
        self.transmit.clear();
        self.link = Link::Failed;
        self.end_session(QueryError::Disconnected);
        self.events.push_back(Event::ServerError {
            code: code.clone(),
            message: message.clone(),
            fatal: true,
        });
        self.set_state(ConnectionState::Failed { code, message });
    }

    fn handle_message(&mut self, message: ServerMessage, now: Instant) {
        let connected = self.link == Link::Connected;
        match message {
            ServerMessage::Welcome {
                protocol,
                session_id,
                user_id,
                heartbeat_interval_ms,
                session_ttl_ms,
                max_frame_bytes,
                server,
                resume_grace_ms,
                ping_interval_ms,
                resumed,
                choice,
                features,
            } => {
                if !matches!(self.link, Link::Handshaking { .. }) {
                    self.stats.unexpected_messages += 1;
                    return;
                }
                if protocol != PROTOCOL_VERSION {
                    self.fail(
                        ErrorCode::UnsupportedProtocol,
                        format!("the server speaks protocol {protocol}; this client speaks {PROTOCOL_VERSION}"),
                    );
                    return;
                }
                self.status_carries_auto = features.iter().any(|f| f == FEATURE_SET_STATUS_AUTO);
                self.welcome(
                    SessionInfo {
                        session_id,
                        user_id,
                        heartbeat_interval: Duration::from_millis(heartbeat_interval_ms)
                            .max(MIN_HEARTBEAT_INTERVAL),
                        session_ttl: Duration::from_millis(session_ttl_ms),
                        max_frame_bytes: usize::try_from(max_frame_bytes)
                            .unwrap_or(usize::MAX)
                            .clamp(1_024, MAX_FRAME_BYTES),
                        server,
                        connected_at: now,
                        resumed,
                        resume_grace: Duration::from_millis(resume_grace_ms),
                        server_ping_interval: ping_interval_ms.map(Duration::from_millis),
                        transport: self.transport_in_use,
                    },
                    choice,
                    now,
                );
            }
            ServerMessage::Choice { status } if connected => self.adopt_choice(status, now),
            ServerMessage::Privacy { privacy } if connected => self.privacy = Some(privacy),
            ServerMessage::ChannelSnapshot {
                channel,
                members,
                more,
            } if connected => self.channel_snapshot(channel, members, more),
            ServerMessage::ChannelMembers {
                channel,
                joined,
                left,
            } if connected => self.channel_members_changed(channel, joined, left),
            ServerMessage::Snapshot { users } if connected => {
                for record in users {
                    self.apply_record(record);
                }
            }
            ServerMessage::Presence { user } if connected => self.apply_record(user),
            ServerMessage::QueryResult {
                reference,
                users,
                more,
            } if connected => {
                let Some((query_id, parts)) = self.pending_queries.get_mut(&reference) else {
                    self.stats.unexpected_messages += 1;
                    return;
                };
                parts.extend(users);
                if !more {
                    let query_id = *query_id;
                    if let Some((_, users)) = self.pending_queries.remove(&reference) {
                        self.events.push_back(Event::QueryCompleted {
                            query_id,
                            result: Ok(users),
                        });
                    }
                }
            }
            ServerMessage::Pong { .. } if connected => {}
            ServerMessage::Error {
                code,
                message,
                fatal,
                reference,
                retry_after_ms,
            } => {
                if code == ErrorCode::TokenExpired
                    && self.config.refreshable_token
                    && !self.token_retry_used
                {
                    // The driver fetches a fresh token for every attempt: retry once, at once.
                    self.token_retry_used = true;
                    self.transport.push_back(TransportCommand::Close);
                    self.end_session(QueryError::Disconnected);
                    self.start_attempt(now);
                    return;
                }
                if fatal || code.is_fatal() {
                    self.fail(code, message);
                    return;
                }
                if code == ErrorCode::NotAMember
                    && let Some(channel) = &reference
                {
                    self.drop_channel(channel);
                }
                if code == ErrorCode::RateLimited {
                    // Nothing is lost: the latest choice and automatic state go out again after the delay.
                    let delay =
                        Duration::from_millis(retry_after_ms.unwrap_or(1_000).clamp(10, 60_000));
                    self.resend_at = Some(now + delay);
                    self.choice_dirty |= self.manual.is_some();
                    self.auto_dirty = true;
                    self.focus_dirty = true;
                    self.privacy_dirty |= self.privacy_requested.is_some();
                }
                // A `not_a_member` ref names a channel, not a query.
                let query = reference
                    .as_ref()
                    .filter(|_| code != ErrorCode::NotAMember)
                    .and_then(|r| self.pending_queries.remove(r));
                if let Some((query_id, _)) = query {
                    self.events.push_back(Event::QueryCompleted {
                        query_id,
                        result: Err(QueryError::Server {
                            code: code.clone(),
                            message: message.clone(),
                        }),
                    });
                }
                self.events.push_back(Event::ServerError {
                    code,
                    message,
                    fatal: false,
                });
            }
            ServerMessage::Goaway {
                reconnect_after_ms,
                reason,
            } => {
                // Draining is not a failure of this link: the backoff starts afresh.
                self.failures = 0;
                let reason = format!(
                    "server going away: {}",
                    reason.as_deref().unwrap_or("no reason given")
                );
                self.connection_lost(reason, Duration::from_millis(reconnect_after_ms), now);
            }
            ServerMessage::Unknown => self.stats.unknown_frames += 1,
            ServerMessage::Snapshot { .. }
            | ServerMessage::Presence { .. }
            | ServerMessage::QueryResult { .. }
            | ServerMessage::Choice { .. }
            | ServerMessage::Privacy { .. }
            | ServerMessage::ChannelSnapshot { .. }
            | ServerMessage::ChannelMembers { .. }
            | ServerMessage::Pong { .. } => self.stats.unexpected_messages += 1,
        }
    }

    fn welcome(&mut self, session: SessionInfo, choice: Option<Choice>, now: Instant) {
        let session_id = session.session_id.clone();
        let resumed = session.resumed;
        self.session = Some(session);
        self.resumable = None;
        self.token_retry_used = false;
        if !resumed {
            // A new session: the server knows nothing of this client; records of the old one are replaced.
            self.epoch += 1;
            self.max_version_seen = 0;
            self.server_subscriptions.clear();
        }
        // Channels are subscribed afresh after every welcome, resumed or not: memberships may have changed while
        // the connection was away (a channel the user left is answered with `not_a_member`).
        self.server_channels.clear();
        self.channel_parts.clear();
        self.stats.sessions += 1;
        self.attempts_since_connected = 0;
        self.link = Link::Connected;
        self.failed_before_welcome = 0;
        self.returning_to_websocket = false;
        let transport = self.transport_in_use;
        if transport == Transport::WebSocket {
            self.sse_fallback = false;
            self.websocket_retries = 0;
        } else if self.sse_fallback {
            self.websocket_retry_at = Some(now + self.websocket_retry_wait());
        }
        self.set_state(ConnectionState::Connected {
            session_id,
            transport,
        });
        if let Some(choice) = choice {
            self.adopt_choice(choice, now);
        }
        // Changed during the handshake, after hello had gone out.
        self.send_own_state(now);
        self.send_focus(now);
        self.send_privacy(now);
        // Only the difference from what the server has (all of it for a new session).
        let removed: Vec<String> = self
            .server_subscriptions
            .difference(&self.subscriptions)
            .cloned()
            .collect();
        let added: Vec<String> = self
            .subscriptions
            .difference(&self.server_subscriptions)
            .cloned()
            .collect();
        if !removed.is_empty() {
            self.send_user_lists(removed, |users| ClientMessage::Unsubscribe { users }, now);
        }
        if !added.is_empty() {
            self.send_user_lists(added, |users| ClientMessage::Subscribe { users }, now);
        }
        self.server_subscriptions = self.subscriptions.clone();
        let channels_removed: Vec<String> = self
            .server_channels
            .difference(&self.channel_subscriptions)
            .cloned()
            .collect();
        let channels_added: Vec<String> = self
            .channel_subscriptions
            .difference(&self.server_channels)
            .cloned()
            .collect();
        if !channels_removed.is_empty() {
            self.send(
                ClientMessage::UnsubscribeChannels {
                    channels: channels_removed,
                },
                now,
            );
        }
        if !channels_added.is_empty() {
            self.send(
                ClientMessage::SubscribeChannels {
                    channels: channels_added,
                },
                now,
            );
        }
        self.server_channels = self.channel_subscriptions.clone();
    }

    fn apply_record(&mut self, record: Presence) {
        self.max_version_seen = self.max_version_seen.max(record.version);
        let epoch = self.epoch;
        // The roster holds only watched users (they leave it when no longer watched), so a held record needs no
        // other check: one lookup per update.
        if let Some(entry) = self.roster.get_mut(&record.user_id) {
            if entry.epoch == epoch && record.version <= entry.presence.version {
                self.stats.stale_updates += 1;
                return;
            }
            // Same session and newer, or the first record of a new session (which replaces what was held).
            entry.epoch = epoch;
            if entry.presence.same_content(&record) {
                entry.presence.version = record.version;
            } else {
                let previous = std::mem::replace(&mut entry.presence, record.clone());
                self.events.push_back(Event::PresenceChanged {
                    user_id: record.user_id.clone(),
                    previous: Some(previous),
                    current: record,
                });
            }
            return;
        }
        if !self.watches(&record.user_id) {
            // An answer to a subscription the application has since dropped.
            self.stats.unexpected_messages += 1;
            return;
        }
        self.roster.insert(
            record.user_id.clone(),
            RosterEntry {
                presence: record.clone(),
                epoch,
            },
        );
        self.events.push_back(Event::PresenceChanged {
            user_id: record.user_id.clone(),
            previous: None,
            current: record,
        });
    }
}

/// A map for the few entries in flight at once (channel snapshots arriving in parts, queries awaiting their
/// answer), in insertion order: a linear search over a vector, far less code than a `BTreeMap` per value type
/// (which matters in the browser package).
struct FewMap<V>(Vec<(String, V)>);

impl<V> Default for FewMap<V> {
    fn default() -> Self {
        FewMap(Vec::new())
    }
}

impl<V> FewMap<V> {
    fn position(&self, key: &str) -> Option<usize> {
        self.0.iter().position(|(k, _)| k == key)
    }

    fn contains_key(&self, key: &str) -> bool {
        self.position(key).is_some()
    }

    fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        let i = self.position(key)?;
        self.0.get_mut(i).map(|(_, v)| v)
    }

    /// Sets `key` to `value`, in place if it is there, at the end if not.
    fn insert(&mut self, key: String, value: V) {
        match self.get_mut(&key) {
            Some(slot) => *slot = value,
            None => self.0.push((key, value)),
        }
    }

    fn remove(&mut self, key: &str) -> Option<V> {
        let i = self.position(key)?;
        Some(self.0.remove(i).1)
    }

    fn clear(&mut self) {
        self.0.clear();
    }

    /// Every entry, oldest first, leaving the map empty.
    fn take_all(&mut self) -> Vec<(String, V)> {
        std::mem::take(&mut self.0)
    }
}

/// The known members of each subscribed channel, and for each member the channels that list them, so that "is
/// this user watched through a channel" costs one lookup however many channels there are. (Both maps have the
/// same type, which keeps the browser package small.)
#[derive(Debug, Default)]
struct ChannelMembers {
    by_channel: BTreeMap<String, BTreeSet<String>>,
    /// For every user listed by at least one channel, the channels that list them.
    by_user: BTreeMap<String, BTreeSet<String>>,
}

impl ChannelMembers {
    fn get(&self, channel: &str) -> Option<&BTreeSet<String>> {
        self.by_channel.get(channel)
    }

    /// Whether any channel lists `user`.
    fn lists(&self, user: &str) -> bool {
        self.by_user.contains_key(user)
    }

    /// Adds `user` to `channel`'s members (creating the channel's entry).
    fn add(&mut self, channel: &str, user: &str) {
        Self::link(&mut self.by_channel, channel, user);
        Self::link(&mut self.by_user, user, channel);
    }

    /// Removes `user` from `channel`'s members.
    fn remove_member(&mut self, channel: &str, user: &str) {
        Self::unlink(&mut self.by_channel, channel, user, false);
        Self::unlink(&mut self.by_user, user, channel, true);
    }

    /// Replaces `channel`'s members, returning those it had.
    fn replace(&mut self, channel: &str, members: BTreeSet<String>) -> Option<BTreeSet<String>> {
        let previous = self.remove(channel);
        for user in &members {
            Self::link(&mut self.by_user, user, channel);
        }
        self.by_channel.insert(channel.to_owned(), members);
        previous
    }

    /// Forgets `channel`, returning its members.
    fn remove(&mut self, channel: &str) -> Option<BTreeSet<String>> {
        let members = self.by_channel.remove(channel)?;
        for user in &members {
            Self::unlink(&mut self.by_user, user, channel, true);
        }
        Some(members)
    }

    fn link(map: &mut BTreeMap<String, BTreeSet<String>>, key: &str, value: &str) {
        match map.get_mut(key) {
            Some(set) => {
                set.insert(value.to_owned());
            }
            None => {
                map.insert(key.to_owned(), BTreeSet::from([value.to_owned()]));
            }
        }
    }

    /// Removes `value` from `key`'s set, and the key with its last value if `drop_empty`.
    fn unlink(
        map: &mut BTreeMap<String, BTreeSet<String>>,
        key: &str,
        value: &str,
        drop_empty: bool,
    ) {
        if let Some(set) = map.get_mut(key) {
            set.remove(value);
            if drop_empty && set.is_empty() {
                map.remove(key);
            }
        }
    }
}
