//! The server's presence state: users, their sessions and who watches whom, with fan-out of changes.
//!
//! Everything happens under one lock, held only for map updates and non-blocking queue pushes, so that the
//! order in which frames are queued to a session is the order of the changes: a snapshot queued while
//! subscribing always precedes the updates that follow it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use presently_core::protocol::{ErrorCode, MAX_SUBSCRIPTIONS_PER_SESSION, ServerMessage};
use presently_core::{Availability, Presence, Status};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What a session's writer sends next.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// A text frame (shared between all the watchers it fans out to).
    Frame(Arc<str>),
    /// Close the connection with this WebSocket close code and reason.
    Close(u16, &'static str),
}

/// Lets the hub stop a session from outside (slow consumer) with a reason the session reports.
#[derive(Debug, Default)]
pub(crate) struct SessionControl {
    token: CancellationToken,
    reason: OnceLock<ErrorCode>,
}

impl SessionControl {
    pub(crate) fn stop(&self, reason: ErrorCode) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }

    pub(crate) async fn stopped(&self) {
        self.token.cancelled().await;
    }

    pub(crate) fn reason(&self) -> Option<&ErrorCode> {
        self.reason.get()
    }
}

#[derive(Debug)]
struct UserState {
    status: Status,
    online_sessions: Vec<u64>,
    watchers: HashSet<u64>,
    last_active_at: Option<u64>,
    since: Option<u64>,
    version: u64,
}

impl UserState {
    fn new() -> Self {
        UserState {
            status: Status::default(),
            online_sessions: Vec::new(),
            watchers: HashSet::new(),
            last_active_at: None,
            since: None,
            version: 0,
        }
    }

    fn record(&self, user_id: &str) -> Presence {
        if self.online_sessions.is_empty() {
            Presence {
                user_id: user_id.to_owned(),
                availability: Availability::Offline,
                message: None,
                activity: None,
                last_active_at: self.last_active_at,
                since: self.since,
                version: self.version,
            }
        } else {
            Presence {
                user_id: user_id.to_owned(),
                availability: self.status.availability,
                message: self.status.message.clone(),
                activity: self.status.activity.clone(),
                last_active_at: self.last_active_at,
                since: self.since,
                version: self.version,
            }
        }
    }

    /// The next version: strictly greater than the last one and than every version issued before a restart
    /// (protocol section 3.1).
    fn bump(&mut self, now_micros: u64) {
        self.version = (self.version + 1).max(now_micros);
    }

    fn forgettable(&self) -> bool {
        self.version == 0 && self.online_sessions.is_empty() && self.watchers.is_empty()
    }
}

#[derive(Debug)]
struct SessionState {
    user_id: String,
    tx: mpsc::Sender<Outbound>,
    control: Arc<SessionControl>,
    watching: HashSet<String>,
}

#[derive(Debug, Default)]
struct HubState {
    users: HashMap<String, UserState>,
    sessions: HashMap<u64, SessionState>,
    next_session: u64,
}

/// Counters for tests, the demo and operators.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// WebSocket connections accepted since start.
    pub connections_accepted: u64,
    /// Sessions established (valid hello) since start.
    pub sessions_started: u64,
    /// Sessions up now.
    pub sessions_active: u64,
    /// Users with at least one session now.
    pub users_online: u64,
    /// Sessions stopped because their outbound queue overflowed.
    pub slow_consumers: u64,
}

/// The presence state of one server.
#[derive(Debug, Default)]
pub(crate) struct Hub {
    state: Mutex<HubState>,
    pub(crate) connections_accepted: AtomicU64,
    sessions_started: AtomicU64,
    slow_consumers: AtomicU64,
}

/// Unix time in milliseconds.
pub(crate) fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

impl Hub {
    fn lock(&self) -> MutexGuard<'_, HubState> {
        // A panic while holding the lock leaves consistent maps behind (every update is a few inserts), so a
        // poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a new session of `user_id` with its initial status; returns the session's number.
    pub(crate) fn join(
        &self,
        user_id: &str,
        status: Option<Status>,
        tx: mpsc::Sender<Outbound>,
        control: Arc<SessionControl>,
    ) -> u64 {
        let mut state = self.lock();
        state.next_session += 1;
        let session_id = state.next_session;
        state.sessions.insert(
            session_id,
            SessionState {
                user_id: user_id.to_owned(),
                tx,
                control,
                watching: HashSet::new(),
            },
        );
        self.sessions_started.fetch_add(1, Ordering::Relaxed);
        let now = unix_millis();
        let user = state
            .users
            .entry(user_id.to_owned())
            .or_insert_with(UserState::new);
        let before = (!user.online_sessions.is_empty()).then(|| user.record(user_id));
        user.online_sessions.push(session_id);
        match (&before, status) {
            // The user comes online with the status this session brings, or plain online.
            (None, status) => user.status = status.unwrap_or_default(),
            // Explicit choices are user-wide: the latest one wins.
            (Some(_), Some(status)) => user.status = status,
            // Another device without an explicit status leaves the user's status alone.
            (Some(_), None) => {}
        }
        user.last_active_at = Some(now);
        let availability = user.record(user_id).availability;
        if before
            .as_ref()
            .is_none_or(|b| b.availability != availability)
        {
            user.since = Some(now);
        }
        user.bump(unix_micros());
        Self::broadcast(&state, user_id, &self.slow_consumers);
        session_id
    }

    /// Applies a validated `set_status` from a session.
    pub(crate) fn set_status(&self, session_id: u64, status: Status) {
        let mut state = self.lock();
        let Some(user_id) = state.sessions.get(&session_id).map(|s| s.user_id.clone()) else {
            return;
        };
        let Some(user) = state.users.get_mut(&user_id) else {
            return;
        };
        if user.status == status {
            return;
        }
        let now = unix_millis();
        if user.status.availability != status.availability {
            user.since = Some(now);
        }
        user.status = status;
        user.last_active_at = Some(now);
        user.bump(unix_micros());
        Self::broadcast(&state, &user_id, &self.slow_consumers);
    }

    /// Adds users to a session's watch list and queues the snapshot. Returns the error to report if the
    /// session's limit cut the list short.
    pub(crate) fn subscribe(&self, session_id: u64, users: Vec<String>) -> Option<ErrorCode> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let session = state.sessions.get_mut(&session_id)?;
        let mut listed = HashSet::new();
        let mut records = Vec::new();
        let mut cut_short = None;
        for user_id in users {
            if !listed.insert(user_id.clone()) {
                continue;
            }
            if !session.watching.contains(&user_id) {
                if session.watching.len() >= MAX_SUBSCRIPTIONS_PER_SESSION {
                    cut_short = Some(ErrorCode::TooManySubscriptions);
                    continue;
                }
                session.watching.insert(user_id.clone());
            }
            let user = state
                .users
                .entry(user_id.clone())
                .or_insert_with(UserState::new);
            user.watchers.insert(session_id);
            records.push(user.record(&user_id));
        }
        let frame: Arc<str> = ServerMessage::Snapshot { users: records }.encode().into();
        let tx = session.tx.clone();
        let control = session.control.clone();
        Self::push_to(&tx, &control, frame, &self.slow_consumers);
        cut_short
    }

    /// Removes users from a session's watch list.
    pub(crate) fn unsubscribe(&self, session_id: u64, users: &[String]) {
        let mut guard = self.lock();
        let state = &mut *guard;
        let Some(session) = state.sessions.get_mut(&session_id) else {
            return;
        };
        for user_id in users {
            if session.watching.remove(user_id)
                && let Some(user) = state.users.get_mut(user_id)
            {
                user.watchers.remove(&session_id);
                if user.forgettable() {
                    state.users.remove(user_id);
                }
            }
        }
    }

    /// The current records of `users`, one per distinct user in the order first listed.
    pub(crate) fn query(&self, users: &[String]) -> Vec<Presence> {
        let state = self.lock();
        let mut listed = HashSet::new();
        users
            .iter()
            .filter(|u| listed.insert(u.as_str()))
            .map(|u| {
                state
                    .users
                    .get(u)
                    .map_or_else(|| Presence::unknown(u.as_str()), |user| user.record(u))
            })
            .collect()
    }

    /// Ends a session. If it was the user's last, the user goes offline with `last_inbound_at` (Unix ms, when
    /// the session's last frame arrived) as their last active time.
    pub(crate) fn leave(&self, session_id: u64, last_inbound_at: u64) {
        let mut guard = self.lock();
        let state = &mut *guard;
        let Some(session) = state.sessions.remove(&session_id) else {
            return;
        };
        for watched in &session.watching {
            if let Some(user) = state.users.get_mut(watched) {
                user.watchers.remove(&session_id);
                if user.forgettable() {
                    state.users.remove(watched);
                }
            }
        }
        let Some(user) = state.users.get_mut(&session.user_id) else {
            return;
        };
        user.online_sessions.retain(|s| *s != session_id);
        if user.online_sessions.is_empty() {
            let now = unix_millis();
            user.since = Some(now);
            user.last_active_at = Some(user.last_active_at.unwrap_or(0).max(last_inbound_at));
            user.status = Status::default();
            user.bump(unix_micros());
            Self::broadcast(state, &session.user_id, &self.slow_consumers);
        }
    }

    /// Counters.
    pub(crate) fn stats(&self) -> ServerStats {
        let state = self.lock();
        ServerStats {
            connections_accepted: self.connections_accepted.load(Ordering::Relaxed),
            sessions_started: self.sessions_started.load(Ordering::Relaxed),
            sessions_active: state.sessions.len() as u64,
            users_online: state
                .users
                .values()
                .filter(|u| !u.online_sessions.is_empty())
                .count() as u64,
            slow_consumers: self.slow_consumers.load(Ordering::Relaxed),
        }
    }

    /// Queues the user's current record to every watcher, encoding it once.
    fn broadcast(state: &HubState, user_id: &str, slow_consumers: &AtomicU64) {
        let Some(user) = state.users.get(user_id) else {
            return;
        };
        if user.watchers.is_empty() {
            return;
        }
        let frame: Arc<str> = ServerMessage::Presence {
            user: user.record(user_id),
        }
        .encode()
        .into();
        for watcher in &user.watchers {
            if let Some(session) = state.sessions.get(watcher) {
                Self::push_to(&session.tx, &session.control, frame.clone(), slow_consumers);
            }
        }
    }

    /// Queues a frame to a session without waiting (see [`Hub::push_to`]).
    pub(crate) fn push(
        &self,
        tx: &mpsc::Sender<Outbound>,
        control: &SessionControl,
        frame: Arc<str>,
    ) {
        Self::push_to(tx, control, frame, &self.slow_consumers);
    }

    /// Queues a frame without waiting; a full queue stops the session as a slow consumer rather than buffering
    /// without bound or holding the lock.
    fn push_to(
        tx: &mpsc::Sender<Outbound>,
        control: &SessionControl,
        frame: Arc<str>,
        slow_consumers: &AtomicU64,
    ) {
        if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(Outbound::Frame(frame)) {
            if control.reason().is_none() {
                slow_consumers.fetch_add(1, Ordering::Relaxed);
            }
            control.stop(ErrorCode::SlowConsumer);
        }
    }
}
