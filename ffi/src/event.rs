//! Events as C sees them: an opaque owned value with accessors.

use std::ffi::{CString, c_char};

use presently_sdk::{Activity, Availability, ConnectionState, Event, Presence, Status};

/// What watchers should show.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresentlyAvailability {
    /// Connected and available.
    Online = 0,
    /// Connected but away.
    Away = 1,
    /// Connected, do not disturb.
    Busy = 2,
    /// Not connected (not something to set).
    Offline = 3,
    /// Appear offline while still seeing others (a choice; watchers see `Offline`).
    Invisible = 4,
}

/// The connection's state.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresentlyConnectionState {
    /// Not started.
    Idle = 0,
    /// An attempt is under way.
    Connecting = 1,
    /// A session is up.
    Connected = 2,
    /// Waiting before the next attempt (`presently_event_retry_in_ms` says how long).
    Reconnecting = 3,
    /// Closed by the application.
    Closed = 4,
    /// Stopped by a fatal error (e.g. a bad token).
    Failed = 5,
}

/// A transport a connection can use.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresentlyTransport {
    /// Not connecting nor connected.
    None = 0,
    /// A WebSocket.
    Websocket = 1,
    /// HTTP + Server-Sent Events (where WebSockets are blocked).
    Sse = 2,
}

/// What an event is about.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresentlyEventKind {
    /// A watched user's presence changed or became known: `user_id`, `availability`, `message`, `activity_*`,
    /// `last_active_ms`.
    PresenceChanged = 0,
    /// The connection state changed: `connection_state`, `message` (a description with the reason, if any),
    /// `retry_in_ms` (RECONNECTING).
    StateChanged = 1,
    /// Your own effective status changed: `availability`, `message`, `activity_*`.
    OwnStatusChanged = 2,
    /// Idle: away soon unless there is activity ("still there?").
    IdleWarning = 3,
    /// Activity came after an idle warning.
    IdleWarningCancelled = 4,
    /// The server reported an error: `error_code`, `message`, `is_fatal`.
    ServerError = 5,
    /// Another kind of event (newer versions may add kinds).
    Other = 6,
    /// One user's record in the answer to `presently_client_query`: `query_id`, then the fields of
    /// PRESENCE_CHANGED. All of a query's records come before its QUERY_COMPLETED.
    QueryResult = 7,
    /// A query finished: `query_id`; on failure `error_code` is set ("disconnected" when the connection dropped
    /// before the answer, "closed", or the server's code) and `message` explains.
    QueryCompleted = 8,
}

/// An event (opaque): read it with the `presently_event_*` accessors. Events from
/// `presently_client_next_event` belong to the caller, who frees them with `presently_event_free`; events passed
/// to an event callback belong to the library and live only during the call.
pub struct PresentlyEvent {
    kind: PresentlyEventKind,
    availability: PresentlyAvailability,
    state: PresentlyConnectionState,
    user_id: Option<CString>,
    message: Option<CString>,
    activity_kind: Option<CString>,
    activity_detail: Option<CString>,
    error_code: Option<CString>,
    last_active_ms: u64,
    retry_in_ms: u64,
    query_id: u64,
    fatal: bool,
}

fn c_string(s: impl Into<String>) -> Option<CString> {
    // Protocol strings hold no control characters; a NUL would only come from a broken peer: drop them.
    CString::new(s.into().replace('\0', "")).ok()
}

/// The C form of an availability.
pub(crate) fn availability(a: Availability) -> PresentlyAvailability {
    match a {
        Availability::Online => PresentlyAvailability::Online,
        Availability::Away => PresentlyAvailability::Away,
        Availability::Busy => PresentlyAvailability::Busy,
        Availability::Offline => PresentlyAvailability::Offline,
        Availability::Invisible => PresentlyAvailability::Invisible,
    }
}

/// The C form of a connection state.
pub(crate) fn connection_state(state: &ConnectionState) -> PresentlyConnectionState {
    match state {
        ConnectionState::Idle => PresentlyConnectionState::Idle,
        ConnectionState::Connecting { .. } => PresentlyConnectionState::Connecting,
        ConnectionState::Connected { .. } => PresentlyConnectionState::Connected,
        ConnectionState::Reconnecting { .. } => PresentlyConnectionState::Reconnecting,
        ConnectionState::Closed => PresentlyConnectionState::Closed,
        ConnectionState::Failed { .. } => PresentlyConnectionState::Failed,
    }
}

impl PresentlyEvent {
    fn new(kind: PresentlyEventKind) -> Self {
        PresentlyEvent {
            kind,
            availability: PresentlyAvailability::Offline,
            state: PresentlyConnectionState::Idle,
            user_id: None,
            message: None,
            activity_kind: None,
            activity_detail: None,
            error_code: None,
            last_active_ms: 0,
            retry_in_ms: 0,
            query_id: 0,
            fatal: false,
        }
    }

    fn with_status(
        mut self,
        a: Availability,
        message: Option<String>,
        activity: Option<Activity>,
    ) -> Self {
        self.availability = availability(a);
        self.message = message.and_then(c_string);
        if let Some(activity) = activity {
            self.activity_kind = c_string(activity.kind);
            self.activity_detail = activity.detail.and_then(c_string);
        }
        self
    }

    /// A user's presence as an event of `kind`.
    pub(crate) fn presence(kind: PresentlyEventKind, presence: Presence) -> Self {
        let mut event = PresentlyEvent::new(kind).with_status(
            presence.availability,
            presence.message,
            presence.activity,
        );
        event.user_id = c_string(presence.user_id);
        event.last_active_ms = presence.last_active_at.unwrap_or(0);
        event
    }

    /// Your own effective status.
    pub(crate) fn own_status(status: Status) -> Self {
        PresentlyEvent::new(PresentlyEventKind::OwnStatusChanged).with_status(
            status.availability,
            status.message,
            status.activity,
        )
    }

    /// The connection's state.
    pub(crate) fn state(current: &ConnectionState) -> Self {
        let mut event = PresentlyEvent::new(PresentlyEventKind::StateChanged);
        event.state = connection_state(current);
        event.message = c_string(current.to_string());
        if let ConnectionState::Reconnecting { delay, .. } = current {
            event.retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        }
        event
    }

    /// A query's record.
    pub(crate) fn query_result(query_id: u64, presence: Presence) -> Self {
        let mut event = PresentlyEvent::presence(PresentlyEventKind::QueryResult, presence);
        event.query_id = query_id;
        event
    }

    /// A query's end: `error` is (code, message) on failure.
    pub(crate) fn query_completed(query_id: u64, error: Option<(String, String)>) -> Self {
        let mut event = PresentlyEvent::new(PresentlyEventKind::QueryCompleted);
        event.query_id = query_id;
        if let Some((code, message)) = error {
            event.error_code = c_string(code);
            event.message = c_string(message);
        }
        event
    }

    /// The C form of an event of the Rust client; `None` for events the C library reports in its own way
    /// (query completions go to the client that asked, as QUERY_RESULT and QUERY_COMPLETED).
    pub(crate) fn from_sdk(event: Event) -> Option<Self> {
        Some(match event {
            Event::PresenceChanged { current, .. } => {
                PresentlyEvent::presence(PresentlyEventKind::PresenceChanged, current)
            }
            Event::OwnStatusChanged { effective, .. } => PresentlyEvent::own_status(effective),
            Event::StateChanged { current, .. } => PresentlyEvent::state(&current),
            Event::IdleWarning { .. } => PresentlyEvent::new(PresentlyEventKind::IdleWarning),
            Event::IdleWarningCancelled => {
                PresentlyEvent::new(PresentlyEventKind::IdleWarningCancelled)
            }
            Event::ServerError {
                code,
                message,
                fatal,
            } => {
                let mut e = PresentlyEvent::new(PresentlyEventKind::ServerError);
                e.error_code = c_string(code.as_str());
                e.message = c_string(message);
                e.fatal = fatal;
                e
            }
            Event::QueryCompleted { .. } => return None,
            _ => PresentlyEvent::new(PresentlyEventKind::Other),
        })
    }
}

/// Frees an event from `presently_client_next_event` (NULL is ignored); the strings it returned become invalid.
/// Never pass an event that an event callback received. Any thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_event_free(event: *mut PresentlyEvent) {
    if !event.is_null() {
        // SAFETY: `event` came from `presently_client_next_event` and is freed once.
        drop(unsafe { Box::from_raw(event) });
    }
}

unsafe fn event_ref<'a>(event: *const PresentlyEvent) -> Option<&'a PresentlyEvent> {
    // SAFETY: a non-NULL `event` is a live event, as documented.
    unsafe { event.as_ref() }
}

fn ptr(s: &Option<CString>) -> *const c_char {
    s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr())
}

/// The event's kind (OTHER for NULL). Any thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_event_kind(event: *const PresentlyEvent) -> PresentlyEventKind {
    // SAFETY: see `event_ref`.
    unsafe { event_ref(event) }.map_or(PresentlyEventKind::Other, |e| e.kind)
}

/// The user the event is about (PRESENCE_CHANGED, QUERY_RESULT), or NULL. Owned by the event.
/// Any thread; never blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_event_user_id(event: *const PresentlyEvent) -> *const c_char {
    // SAFETY: see `event_ref`.
    unsafe { event_ref(event) }.map_or(std::ptr::null(), |e| ptr(&e.user_id))
}

/// The availability (PRESENCE_CHANGED, QUERY_RESULT, OWN_STATUS_CHANGED; OFFLINE otherwise).
/// Any thread; never blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_event_availability(
    event: *const PresentlyEvent,
) -> PresentlyAvailability {
    // SAFETY: see `event_ref`.
    unsafe { event_ref(event) }.map_or(PresentlyAvailability::Offline, |e| e.availability)
}

/// The custom message (status events), the description of the state (STATE_CHANGED) or the error message
/// (SERVER_ERROR, failed QUERY_COMPLETED); NULL if none. Owned by the event.
/// Any thread; never blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_event_message(event: *const PresentlyEvent) -> *const c_char {
    // SAFETY: see `event_ref`.
    unsafe { event_ref(event) }.map_or(std::ptr::null(), |e| ptr(&e.message))
}

/// The activity kind (e.g. "in_studio"), or NULL. Owned by the event.
/// Any thread; never blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_event_activity_kind(
    event: *const PresentlyEvent,
) -> *const c_char {
    // SAFETY: see `event_ref`.
    unsafe { event_ref(event) }.map_or(std::ptr::null(), |e| ptr(&e.activity_kind))
}

/// The activity detail (e.g. "Ableton Live 12"), or NULL. Owned by the event.
/// Any thread; never blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_event_activity_detail(
    event: *const PresentlyEvent,
) -> *const c_char {
    // SAFETY: see `event_ref`.
    unsafe { event_ref(event) }.map_or(std::ptr::null(), |e| ptr(&e.activity_detail))
}

/// When the user was last known to be active, Unix time in milliseconds (PRESENCE_CHANGED, QUERY_RESULT), or 0
/// when unknown or hidden by the user's privacy settings.
/// Any thread; never blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_event_last_active_ms(event: *const PresentlyEvent) -> u64 {
    // SAFETY: see `event_ref`.
    unsafe { event_ref(event) }.map_or(0, |e| e.last_active_ms)
}

/// The connection state (STATE_CHANGED; IDLE otherwise).
/// Any thread; never blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_event_connection_state(
    event: *const PresentlyEvent,
) -> PresentlyConnectionState {
    // SAFETY: see `event_ref`.
    unsafe { event_ref(event) }.map_or(PresentlyConnectionState::Idle, |e| e.state)
}

/// How long, in milliseconds, until the next connection attempt (STATE_CHANGED to RECONNECTING; 0 otherwise).
/// Any thread; never blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_event_retry_in_ms(event: *const PresentlyEvent) -> u64 {
    // SAFETY: see `event_ref`.
    unsafe { event_ref(event) }.map_or(0, |e| e.retry_in_ms)
}

/// The query this answers (QUERY_RESULT, QUERY_COMPLETED; 0 otherwise), as returned by
/// `presently_client_query`.
/// Any thread; never blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_event_query_id(event: *const PresentlyEvent) -> u64 {
    // SAFETY: see `event_ref`.
    unsafe { event_ref(event) }.map_or(0, |e| e.query_id)
}

/// The error code (SERVER_ERROR, e.g. "invalid_token"; failed QUERY_COMPLETED), or NULL. Owned by the event.
/// Any thread; never blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_event_error_code(event: *const PresentlyEvent) -> *const c_char {
    // SAFETY: see `event_ref`.
    unsafe { event_ref(event) }.map_or(std::ptr::null(), |e| ptr(&e.error_code))
}

/// Whether a SERVER_ERROR stopped the client (the state becomes FAILED; e.g. a rejected token). False otherwise.
/// Any thread; never blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_event_is_fatal(event: *const PresentlyEvent) -> bool {
    // SAFETY: see `event_ref`.
    unsafe { event_ref(event) }.is_some_and(|e| e.fatal)
}
