//! Presently for iOS and Android (and Python): UniFFI bindings over the Rust client.
//!
//! The bindings add no logic. A [`PresenceClient`] is built from a [`PresenceConfig`] record; its methods are the
//! Rust client's, its events reach a foreign [`PresenceListener`] through [`PresenceClient::observe`], and every
//! failure is one [`PresenceError`]. The client runs on the library's own thread (a tokio runtime started with
//! the first client), so the app's threads never block on the network and no async runtime is needed on the
//! foreign side beyond what `connect`, `close` and `query` (async functions) use.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use presently_sdk as sdk;

uniffi::setup_scaffolding!("presently");

// ----- errors -----

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
pub enum PresenceError {
    /// An argument breaks the rules (a URL that is not ws:// or wss://, too long a message, an unknown
    /// timezone, ...); `message` says which.
    #[error("invalid argument: {detail}")]
    InvalidArgument {
        /// What is wrong.
        detail: String,
    },
    /// The call needs a connection and there is none (queries are not queued).
    #[error("not connected")]
    NotConnected,
    /// The first connection attempt failed; the client keeps retrying in the background.
    #[error("could not connect: {reason} (retrying in the background)")]
    Unreachable {
        /// Why the attempt failed.
        reason: String,
    },
    /// The server refused the client (e.g. a bad token); it does not retry until `connect` is called again.
    #[error("rejected by the server: {code}: {detail}")]
    Rejected {
        /// The protocol's error code, e.g. `invalid_token`.
        code: String,
        /// The server's explanation.
        detail: String,
    },
    /// The client was closed.
    #[error("the client is closed")]
    Closed,
    /// A query failed (the connection dropped before the answer, or the server refused it).
    #[error("query failed: {detail}")]
    QueryFailed {
        /// Why.
        detail: String,
    },
    /// The library could not start its thread.
    #[error("internal error: {detail}")]
    Internal {
        /// Why.
        detail: String,
    },
}

impl From<sdk::Error> for PresenceError {
    fn from(e: sdk::Error) -> Self {
        match e {
            sdk::Error::InvalidUrl { .. } | sdk::Error::InvalidInput(_) => {
                PresenceError::InvalidArgument {
                    detail: e.to_string(),
                }
            }
            sdk::Error::NotConnected => PresenceError::NotConnected,
            sdk::Error::Unreachable { reason } => PresenceError::Unreachable { reason },
            sdk::Error::Rejected { code, message } => PresenceError::Rejected {
                code: code.as_str().to_owned(),
                detail: message,
            },
            sdk::Error::Closed => PresenceError::Closed,
            sdk::Error::Query(q) => PresenceError::QueryFailed {
                detail: q.to_string(),
            },
            other => PresenceError::Internal {
                detail: other.to_string(),
            },
        }
    }
}

impl From<sdk::ScheduleError> for PresenceError {
    fn from(e: sdk::ScheduleError) -> Self {
        PresenceError::InvalidArgument {
            detail: e.to_string(),
        }
    }
}

/// What a listener or token provider implemented in the app reports when it throws.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
pub enum CallbackError {
    /// The app's code failed; `message` says why.
    #[error("{reason}")]
    Failed {
        /// Why.
        reason: String,
    },
}

impl From<uniffi::UnexpectedUniFFICallbackError> for CallbackError {
    fn from(e: uniffi::UnexpectedUniFFICallbackError) -> Self {
        CallbackError::Failed { reason: e.reason }
    }
}

// ----- records and enums -----

/// What watchers see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum Availability {
    /// Connected and available.
    Online,
    /// Connected but away.
    Away,
    /// Connected, do not disturb.
    Busy,
    /// Not connected (not something to set).
    Offline,
    /// Appear offline while still seeing others (a choice; watchers see `Offline`).
    Invisible,
}

impl From<sdk::Availability> for Availability {
    fn from(a: sdk::Availability) -> Self {
        match a {
            sdk::Availability::Online => Availability::Online,
            sdk::Availability::Away => Availability::Away,
            sdk::Availability::Busy => Availability::Busy,
            sdk::Availability::Offline => Availability::Offline,
            sdk::Availability::Invisible => Availability::Invisible,
        }
    }
}

/// What a user is doing, e.g. kind `in_studio` with detail `Ableton Live 12`.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Activity {
    /// A short machine-readable kind (`in_studio`, `in_call`, ...).
    pub kind: String,
    /// Free text for people, if any.
    #[uniffi(default = None)]
    pub detail: Option<String>,
}

impl From<sdk::Activity> for Activity {
    fn from(a: sdk::Activity) -> Self {
        Activity {
            kind: a.kind,
            detail: a.detail,
        }
    }
}

/// A watched (or queried) user's presence.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct UserPresence {
    /// Whose presence.
    pub user_id: String,
    /// What to show.
    pub availability: Availability,
    /// The custom message, if any.
    pub message: Option<String>,
    /// What the user is doing, if shared.
    pub activity: Option<Activity>,
    /// When the user was last active, Unix time in milliseconds (`None` when unknown or hidden).
    pub last_active_at_ms: Option<u64>,
    /// When the current availability began, Unix time in milliseconds.
    pub since_ms: Option<u64>,
}

impl From<sdk::Presence> for UserPresence {
    fn from(p: sdk::Presence) -> Self {
        UserPresence {
            user_id: p.user_id,
            availability: p.availability.into(),
            message: p.message,
            activity: p.activity.map(Into::into),
            last_active_at_ms: p.last_active_at,
            since_ms: p.since,
        }
    }
}

/// Which rule decided your own effective status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum StatusReason {
    /// What you chose.
    Manual,
    /// No activity for the idle timeout.
    Idle,
    /// A DND window or snooze.
    Dnd,
    /// The app has been in the background.
    Lifecycle,
}

/// Your own effective status: what watchers see, and why.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct OwnStatus {
    /// What watchers see.
    pub availability: Availability,
    /// The custom message shown, if any.
    pub message: Option<String>,
    /// The activity shown, if any.
    pub activity: Option<Activity>,
    /// Which rule decided it.
    pub reason: StatusReason,
}

fn own_status(status: sdk::Status, reason: sdk::StatusReason) -> OwnStatus {
    OwnStatus {
        availability: status.availability.into(),
        message: status.message,
        activity: status.activity.map(Into::into),
        reason: match reason {
            sdk::StatusReason::Manual => StatusReason::Manual,
            sdk::StatusReason::Idle => StatusReason::Idle,
            sdk::StatusReason::Dnd => StatusReason::Dnd,
            sdk::StatusReason::Lifecycle => StatusReason::Lifecycle,
        },
    }
}

/// A transport a connection can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum Transport {
    /// A WebSocket.
    WebSocket,
    /// HTTP + Server-Sent Events, where WebSockets are blocked.
    Sse,
}

impl From<sdk::Transport> for Transport {
    fn from(t: sdk::Transport) -> Self {
        match t {
            sdk::Transport::WebSocket => Transport::WebSocket,
            sdk::Transport::Sse => Transport::Sse,
        }
    }
}

/// Which transports a client may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum TransportPolicy {
    /// WebSocket, falling back to HTTP + Server-Sent Events when WebSocket attempts keep failing before the
    /// server's welcome, and returning to WebSocket later without a change others can see.
    Auto,
    /// WebSocket only.
    WebSocketOnly,
    /// HTTP + Server-Sent Events only.
    SseOnly,
}

/// The connection's state.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum ConnectionState {
    /// Not started.
    Idle,
    /// An attempt is under way.
    Connecting {
        /// The attempt's number since the client was last connected.
        attempt: u32,
        /// The transport this attempt uses.
        transport: Transport,
    },
    /// A session is up.
    Connected {
        /// The server's session id.
        session_id: String,
        /// The transport in use.
        transport: Transport,
    },
    /// Waiting before the next attempt.
    Reconnecting {
        /// The next attempt's number.
        attempt: u32,
        /// How long the wait is, in milliseconds, from when the connection was lost.
        retry_in_ms: u64,
        /// Why the previous connection or attempt ended.
        reason: String,
    },
    /// Closed by the app.
    Closed,
    /// Stopped by a fatal error (e.g. a bad token).
    Failed {
        /// The protocol's error code.
        code: String,
        /// The server's explanation.
        message: String,
    },
}

impl From<sdk::ConnectionState> for ConnectionState {
    fn from(s: sdk::ConnectionState) -> Self {
        match s {
            sdk::ConnectionState::Idle => ConnectionState::Idle,
            sdk::ConnectionState::Connecting { attempt, transport } => {
                ConnectionState::Connecting {
                    attempt,
                    transport: transport.into(),
                }
            }
            sdk::ConnectionState::Connected {
                session_id,
                transport,
            } => ConnectionState::Connected {
                session_id,
                transport: transport.into(),
            },
            sdk::ConnectionState::Reconnecting {
                attempt,
                delay,
                reason,
                ..
            } => ConnectionState::Reconnecting {
                attempt,
                retry_in_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                reason,
            },
            sdk::ConnectionState::Closed => ConnectionState::Closed,
            sdk::ConnectionState::Failed { code, message } => ConnectionState::Failed {
                code: code.as_str().to_owned(),
                message,
            },
        }
    }
}

/// One weekly quiet window in the schedule's timezone.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct DndWindow {
    /// Day names or three-letter abbreviations separated by commas, or `weekdays`, `weekend`, `daily`.
    pub days: String,
    /// Local start time, 24-hour `HH:MM`.
    pub start: String,
    /// Local end time, 24-hour `HH:MM`; before the start means the window runs past midnight.
    pub end: String,
}

/// A weekly do-not-disturb schedule, correct across DST changes and midnight.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct DndSchedule {
    /// An IANA timezone name, e.g. `Europe/Berlin`.
    pub timezone: String,
    /// The quiet windows (at least one).
    pub windows: Vec<DndWindow>,
    /// The custom message shown while quiet hours are on, if any.
    #[uniffi(default = None)]
    pub message: Option<String>,
}

impl DndSchedule {
    fn to_sdk(&self) -> Result<sdk::DndSchedule, PresenceError> {
        let windows = self
            .windows
            .iter()
            .map(|w| sdk::DndWindow::parse(&w.days, &w.start, &w.end))
            .collect::<Result<Vec<_>, _>>()?;
        let schedule = sdk::DndSchedule::new(&self.timezone, windows)?;
        Ok(match &self.message {
            Some(message) => schedule.with_message(message.clone())?,
            None => schedule,
        })
    }
}

/// How a [`PresenceClient`] is set up. Durations are in milliseconds; `None` keeps the default.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct PresenceConfig {
    /// The server, `wss://…/v1/ws` (or `ws://` for development).
    pub url: String,
    /// A fixed token (for the reference server, an HS256 JWT from your backend). Leave it out when a
    /// [`TokenProvider`] is given.
    #[uniffi(default = None)]
    pub token: Option<String>,
    /// Your app's name, version and platform, sent to the server for logs and support.
    #[uniffi(default = None)]
    pub app_name: Option<String>,
    /// Your app's version.
    #[uniffi(default = None)]
    pub app_version: Option<String>,
    /// The platform, e.g. `ios` or `android`.
    #[uniffi(default = None)]
    pub platform: Option<String>,
    /// Away after this long without `record_activity`; 0 turns idle detection off. Default 300000 (5 minutes).
    #[uniffi(default = None)]
    pub idle_timeout_ms: Option<u64>,
    /// `on_idle_warning` this long before going away; 0 for none (the default).
    #[uniffi(default = None)]
    pub idle_warning_ms: Option<u64>,
    /// Away this long after `app_backgrounded`; 0 leaves the status alone. Default 60000.
    #[uniffi(default = None)]
    pub background_away_ms: Option<u64>,
    /// The first reconnect delay's ceiling (full jitter, doubling per failure). Default 2000.
    #[uniffi(default = None)]
    pub reconnect_base_delay_ms: Option<u64>,
    /// The largest reconnect delay's ceiling. Default 30000.
    #[uniffi(default = None)]
    pub reconnect_max_delay_ms: Option<u64>,
    /// A weekly do-not-disturb schedule from the start.
    #[uniffi(default = None)]
    pub dnd: Option<DndSchedule>,
    /// Which transports to use. Default `Auto`.
    #[uniffi(default = None)]
    pub transport: Option<TransportPolicy>,
    /// With `Auto`: how many attempts in a row must fail before the server's welcome before the client switches
    /// transport. Default 2.
    #[uniffi(default = None)]
    pub fallback_after: Option<u32>,
}

/// Milliseconds as an optional duration: 0 means off.
fn millis_or_off(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

// ----- foreign traits -----

/// Gives a fresh token before every connection attempt (short-lived tokens refresh by themselves; an expired
/// token means one immediate retry with a new one). Called on a library thread of its own, so it may block, e.g.
/// on an HTTP request, for up to the connect timeout (10 s).
#[uniffi::export(with_foreign)]
pub trait TokenProvider: Send + Sync {
    /// A token; throw when none is available now (the attempt fails and is retried with backoff).
    fn fetch_token(&self) -> Result<String, CallbackError>;
}

/// Receives a client's events (see [`PresenceClient::observe`]). Calls come one at a time, in order, on a
/// library thread of the observation: hop to your UI thread yourself. A method that throws is logged (through
/// `tracing`) and delivery goes on.
#[uniffi::export(with_foreign)]
pub trait PresenceListener: Send + Sync {
    /// The connection state changed (delivered first with the current state).
    fn on_state_changed(&self, state: ConnectionState) -> Result<(), CallbackError>;
    /// A watched user's presence changed or became known (delivered first for every user known now).
    fn on_presence_changed(&self, presence: UserPresence) -> Result<(), CallbackError>;
    /// Your own effective status changed (delivered first with the current one).
    fn on_own_status_changed(&self, status: OwnStatus) -> Result<(), CallbackError>;
    /// No activity for a while: away in `away_in_ms` milliseconds unless there is activity ("still there?").
    fn on_idle_warning(&self, away_in_ms: u64) -> Result<(), CallbackError>;
    /// Activity came after an idle warning: staying put.
    fn on_idle_warning_cancelled(&self) -> Result<(), CallbackError>;
    /// The server reported an error (`code` is the protocol's, e.g. `rate_limited`); `fatal` errors stop the
    /// client (the state becomes `Failed`).
    fn on_error(&self, code: String, message: String, fatal: bool) -> Result<(), CallbackError>;
}

// ----- the library's thread -----

/// The runtime every client runs on: one worker thread, started by the first client, for the process's life.
fn runtime() -> Result<&'static tokio::runtime::Runtime, PresenceError> {
    static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("presently")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|message| PresenceError::Internal {
            detail: format!("cannot start the library's thread: {message}"),
        })
}

/// Runs `f` (a call into the app's listener), logging instead of stopping if it throws (or panics).
fn guarded(what: &str, f: impl FnOnce() -> Result<(), CallbackError>) {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("the listener's {what} threw ({e}); delivery goes on"),
        Err(_) => tracing::warn!("the listener's {what} panicked; delivery goes on"),
    }
}

// ----- the client -----

/// A presence client: connects, keeps your status right and watches others. Thread-safe; share it freely.
#[derive(uniffi::Object)]
pub struct PresenceClient {
    client: sdk::Client,
    runtime: tokio::runtime::Handle,
    /// How long before going away the idle warning comes, in milliseconds.
    idle_warning_ms: u64,
}

impl PresenceClient {
    fn build(
        config: PresenceConfig,
        provider: Option<Arc<dyn TokenProvider>>,
    ) -> Result<Arc<Self>, PresenceError> {
        let runtime = runtime()?.handle().clone();
        let mut builder = sdk::Client::builder(config.url.clone());
        match (config.token, provider) {
            (_, Some(provider)) => {
                builder = builder.token_provider(move || {
                    let provider = provider.clone();
                    async move {
                        let fetched = tokio::task::spawn_blocking(move || {
                            catch_unwind(AssertUnwindSafe(|| provider.fetch_token()))
                        })
                        .await;
                        match fetched {
                            Ok(Ok(Ok(token))) => Ok(token),
                            Ok(Ok(Err(e))) => Err(format!("the token provider threw: {e}")),
                            Ok(Err(_)) => Err("the token provider panicked".to_owned()),
                            Err(e) => Err(format!("the token provider did not return: {e}")),
                        }
                    }
                });
            }
            (Some(token), None) => builder = builder.token(token),
            (None, None) => {
                return Err(PresenceError::InvalidArgument {
                    detail: "give a token or a token provider".into(),
                });
            }
        }
        if config.app_name.is_some() || config.app_version.is_some() || config.platform.is_some() {
            let default = sdk::ClientInfo::default();
            builder = builder.client_info(sdk::ClientInfo::new(
                config.app_name.unwrap_or(default.name),
                config.app_version.unwrap_or(default.version),
                config.platform.unwrap_or(default.platform),
            ));
        }
        if let Some(ms) = config.idle_timeout_ms {
            builder = builder.idle_timeout(millis_or_off(ms));
        }
        if let Some(ms) = config.idle_warning_ms {
            builder = builder.idle_warning(millis_or_off(ms));
        }
        if let Some(ms) = config.background_away_ms {
            builder = builder.background_away_after(millis_or_off(ms));
        }
        if config.reconnect_base_delay_ms.is_some() || config.reconnect_max_delay_ms.is_some() {
            let default = sdk::ReconnectPolicy::default();
            let base = config
                .reconnect_base_delay_ms
                .map_or(default.base_delay, Duration::from_millis);
            let max = config
                .reconnect_max_delay_ms
                .map_or(default.max_delay, Duration::from_millis);
            if base.is_zero() || base > max {
                return Err(PresenceError::InvalidArgument {
                    detail: format!(
                        "reconnect delays must satisfy 1 <= base ({} ms) <= max ({} ms)",
                        base.as_millis(),
                        max.as_millis()
                    ),
                });
            }
            builder = builder.reconnect_policy(sdk::ReconnectPolicy {
                base_delay: base,
                max_delay: max,
                ..default
            });
        }
        if let Some(dnd) = &config.dnd {
            builder = builder.dnd_schedule(dnd.to_sdk()?);
        }
        if let Some(attempts) = config.fallback_after {
            builder = builder.fallback_after(attempts);
        }
        if let Some(policy) = config.transport {
            builder = builder.transport(match policy {
                TransportPolicy::Auto => sdk::TransportPolicy::Auto,
                TransportPolicy::WebSocketOnly => sdk::TransportPolicy::WebSocketOnly,
                TransportPolicy::SseOnly => sdk::TransportPolicy::SseOnly,
            });
        }
        let client = {
            let _context = runtime.enter();
            builder.build()?
        };
        Ok(Arc::new(PresenceClient {
            client,
            runtime,
            idle_warning_ms: config.idle_warning_ms.unwrap_or(0),
        }))
    }

    /// Runs `f` on the library's runtime and waits for it without blocking the caller's executor.
    async fn on_runtime<T: Send + 'static>(
        &self,
        f: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, PresenceError> {
        self.runtime
            .spawn(f)
            .await
            .map_err(|e| PresenceError::Internal {
                detail: e.to_string(),
            })
    }
}

#[uniffi::export]
impl PresenceClient {
    /// A client with the settings of `config` (which must hold a token). It does not connect until `connect`.
    #[uniffi::constructor]
    pub fn new(config: PresenceConfig) -> Result<Arc<Self>, PresenceError> {
        PresenceClient::build(config, None)
    }

    /// A client that asks `provider` for a token before every connection attempt (`config.token` is ignored).
    #[uniffi::constructor]
    pub fn with_token_provider(
        config: PresenceConfig,
        provider: Arc<dyn TokenProvider>,
    ) -> Result<Arc<Self>, PresenceError> {
        PresenceClient::build(config, Some(provider))
    }

    /// Connects and returns once connected; from then on the client reconnects by itself with jittered backoff
    /// and re-asserts your status and subscriptions. Throws `Unreachable` if the first attempt failed (retrying
    /// goes on in the background) or `Rejected` on a fatal error such as a bad token.
    pub async fn connect(&self) -> Result<(), PresenceError> {
        let client = self.client.clone();
        self.on_runtime(async move { client.connect().await })
            .await??;
        Ok(())
    }

    /// Says goodbye to the server and stops (watchers see you offline at once). Connect again to resume.
    pub async fn close(&self) {
        let client = self.client.clone();
        let _ = self.on_runtime(async move { client.close().await }).await;
    }

    /// Sets your status (not `Offline`; `Invisible` appears offline to others). `message` is at most 200
    /// characters. Kept across reconnects; idle, background and DND rules may override it for a while.
    pub fn set_status(
        &self,
        availability: Availability,
        message: Option<String>,
        activity: Option<Activity>,
    ) -> Result<(), PresenceError> {
        let availability = match availability {
            Availability::Online => sdk::Availability::Online,
            Availability::Away => sdk::Availability::Away,
            Availability::Busy => sdk::Availability::Busy,
            Availability::Invisible => sdk::Availability::Invisible,
            Availability::Offline => {
                return Err(PresenceError::InvalidArgument {
                    detail: "Offline cannot be set: use Invisible to appear offline, or close the client"
                        .into(),
                });
            }
        };
        let mut status = sdk::Status::new(availability);
        status.message = message;
        status.activity = activity.map(|a| sdk::Activity {
            kind: a.kind,
            detail: a.detail,
        });
        Ok(self.client.set_status(status)?)
    }

    /// Watches users; kept across reconnects. Their presence arrives through `on_presence_changed`.
    pub fn subscribe(&self, users: Vec<String>) -> Result<(), PresenceError> {
        Ok(self.client.subscribe(users)?)
    }

    /// Stops watching users.
    pub fn unsubscribe(&self, users: Vec<String>) {
        self.client.unsubscribe(users);
    }

    /// Asks the server once for users' presence without watching them (one record per distinct user). Throws
    /// `NotConnected` when there is no connection.
    pub async fn query(&self, users: Vec<String>) -> Result<Vec<UserPresence>, PresenceError> {
        let client = self.client.clone();
        let records = self
            .on_runtime(async move { client.query(&users).await })
            .await??;
        Ok(records.into_iter().map(Into::into).collect())
    }

    /// The user did something (touch, key, scroll). Cheap enough to call on every input event: wait-free, no
    /// lock, no allocation.
    pub fn record_activity(&self) {
        self.client.record_activity();
    }

    /// Replaces the weekly do-not-disturb schedule (`None` removes it).
    pub fn set_dnd_schedule(&self, schedule: Option<DndSchedule>) -> Result<(), PresenceError> {
        let schedule = schedule.as_ref().map(DndSchedule::to_sdk).transpose()?;
        self.client.set_dnd_schedule(schedule);
        Ok(())
    }

    /// Do not disturb now, for `duration_ms` milliseconds, with an optional message.
    pub fn snooze_dnd(
        &self,
        duration_ms: u64,
        message: Option<String>,
    ) -> Result<(), PresenceError> {
        if duration_ms == 0 {
            return Err(PresenceError::InvalidArgument {
                detail: "duration_ms is 0".into(),
            });
        }
        Ok(self
            .client
            .snooze_dnd_for(Duration::from_millis(duration_ms), message)?)
    }

    /// Ends a snooze early.
    pub fn end_snooze(&self) {
        self.client.end_snooze();
    }

    /// The app went to the background (iOS `sceneDidEnterBackground`, Android `onStop`): away after the
    /// configured delay; the connection stays while the OS lets it.
    pub fn app_backgrounded(&self) {
        self.client.app_backgrounded();
    }

    /// The app came to the foreground: back from background away, and an immediate reconnect attempt if the
    /// client was waiting to reconnect (or a probe of the link if it seems connected).
    pub fn app_foregrounded(&self) {
        self.client.app_foregrounded();
    }

    /// The network changed (Wi-Fi ↔ cellular, back online): retry at once if waiting, or probe the link.
    pub fn network_changed(&self) {
        self.client.network_changed();
    }

    /// The connection's current state.
    pub fn state(&self) -> ConnectionState {
        self.client.state().into()
    }

    /// Your own effective status now.
    pub fn own_status(&self) -> OwnStatus {
        own_status(self.client.effective_status(), self.client.status_reason())
    }

    /// Every watched user whose presence is known, by user id.
    pub fn roster(&self) -> Vec<UserPresence> {
        self.client.roster().into_iter().map(Into::into).collect()
    }

    /// Starts delivering events to `listener`: first the current state, your own status and every watched user
    /// known now, then every change, in order. Delivery stops when the returned handle is cancelled or dropped
    /// (keep it!). Each observation has its own delivery thread, so a slow listener never holds up the
    /// connection.
    pub fn observe(&self, listener: Arc<dyn PresenceListener>) -> Arc<ObservationHandle> {
        let stop = Arc::new(tokio::sync::Notify::new());
        let stopped = Arc::new(AtomicBool::new(false));
        let client = self.client.clone();
        let runtime = self.runtime.clone();
        let idle_warning_ms = self.idle_warning_ms;
        // Subscribe before reading the current state, so that nothing falls in between.
        let mut events = client.events();
        let (stop_rx, stopped_rx) = (stop.clone(), stopped.clone());
        let task = self.runtime.spawn_blocking(move || {
            // The task may start after the handle was already cancelled or dropped (a busy machine): no call
            // starts once `stopped` is set.
            let live = || !stopped_rx.load(Ordering::Acquire);
            let deliver_current = |listener: &dyn PresenceListener| {
                if !live() {
                    return;
                }
                let state = client.state().into();
                guarded("on_state_changed", || listener.on_state_changed(state));
                let status = own_status(client.effective_status(), client.status_reason());
                if !live() {
                    return;
                }
                guarded("on_own_status_changed", || {
                    listener.on_own_status_changed(status)
                });
                for presence in client.roster() {
                    if !live() {
                        return;
                    }
                    let presence = presence.into();
                    guarded("on_presence_changed", || {
                        listener.on_presence_changed(presence)
                    });
                }
            };
            deliver_current(listener.as_ref());
            loop {
                let next = runtime.block_on(async {
                    tokio::select! {
                        _ = stop_rx.notified() => None,
                        event = events.next() => event,
                    }
                });
                let Some(event) = next else { break };
                if !live() {
                    break;
                }
                deliver(listener.as_ref(), event, idle_warning_ms, &deliver_current);
            }
        });
        Arc::new(ObservationHandle {
            stop,
            stopped,
            task: Mutex::new(Some(task)),
        })
    }
}

/// Hands one event to the listener.
fn deliver(
    listener: &dyn PresenceListener,
    event: sdk::Event,
    idle_warning_ms: u64,
    deliver_current: &dyn Fn(&dyn PresenceListener),
) {
    match event {
        sdk::Event::StateChanged { current, .. } => {
            guarded("on_state_changed", || {
                listener.on_state_changed(current.into())
            });
        }
        sdk::Event::PresenceChanged { current, .. } => {
            guarded("on_presence_changed", || {
                listener.on_presence_changed(current.into())
            });
        }
        sdk::Event::OwnStatusChanged { effective, reason } => {
            guarded("on_own_status_changed", || {
                listener.on_own_status_changed(own_status(effective, reason))
            });
        }
        sdk::Event::IdleWarning { .. } => {
            // The warning comes exactly the configured lead before away.
            guarded("on_idle_warning", || {
                listener.on_idle_warning(idle_warning_ms)
            });
        }
        sdk::Event::IdleWarningCancelled => {
            guarded("on_idle_warning_cancelled", || {
                listener.on_idle_warning_cancelled()
            });
        }
        sdk::Event::ServerError {
            code,
            message,
            fatal,
        } => {
            guarded("on_error", || {
                listener.on_error(code.as_str().to_owned(), message, fatal)
            });
        }
        // A slow listener missed events: hand it the whole current picture again.
        sdk::Event::Lagged { .. } => deliver_current(listener),
        _ => {}
    }
}

/// Keeps an observation going; cancel it, or drop it, to stop delivery.
#[derive(uniffi::Object)]
pub struct ObservationHandle {
    stop: Arc<tokio::sync::Notify>,
    stopped: Arc<AtomicBool>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

#[uniffi::export]
impl ObservationHandle {
    /// Stops delivery: no listener call starts after this returns (one under way may finish).
    pub fn cancel(&self) {
        self.stopped.store(true, Ordering::Release);
        self.stop.notify_one();
        self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// Whether delivery was stopped.
    pub fn is_cancelled(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }
}

impl Drop for ObservationHandle {
    fn drop(&mut self) {
        self.cancel();
    }
}
