//! The server's presence state: users, their sessions (attached to a connection or waiting to be resumed), who
//! watches whom, privacy, and fan-out of changes.
//!
//! Everything happens under one lock, held only for map updates and non-blocking queue pushes, so that the
//! order in which frames are queued to a session is the order of the changes: a welcome precedes everything
//! else, and a snapshot queued while subscribing precedes the updates that follow it. The frames queued under
//! the lock are written once it is released (see [`write_soon`]), so that no socket is written and no task woken
//! under the lock: on an I/O thread by the task that released it (a change goes out to its watchers from the
//! task that read it, within one poll), on a multi-threaded runtime by the watchers' writer tasks.
//!
//! Privacy (protocol section 7, "What a watcher may see") is enforced here, in one place: every record that
//! leaves the hub is made for its watcher by [`view_of`] and [`record_for`], and a watcher receives a frame only
//! when the record made for it changes.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use presently_core::protocol::{
    Auto, AutoState, Choice, ErrorCode, MAX_CHANNELS_PER_SESSION, MAX_FRAME_BYTES,
    MAX_SUBSCRIPTIONS_PER_SESSION, Privacy, ServerMessage, Visibility, split_records,
};
use presently_core::{Activity, Availability, Presence, Status};

use crate::cluster::{Job, Op, StoreLink};
use crate::outlet::{Outlet, Refused};
use crate::session::{Frame, ToClient};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// Lets the hub stop a connection from outside (slow consumer, taken over by a resume) with a reason.
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

/// The code with which a connection taken over by a resume is stopped.
pub(crate) fn replaced() -> ErrorCode {
    ErrorCode::Other("session_replaced".into())
}

/// A connection attached to a session.
#[derive(Debug, Clone)]
pub(crate) struct Conn {
    /// Where its frames go.
    pub(crate) outlet: Arc<Outlet>,
    pub(crate) control: Arc<SessionControl>,
}

/// What the user's presence is, before privacy: the aggregate of their sessions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Shown {
    availability: Availability,
    message: Option<String>,
    activity: Option<Activity>,
    focus: Vec<String>,
}

impl Default for Shown {
    fn default() -> Self {
        Shown::offline()
    }
}

impl Shown {
    fn offline() -> Self {
        Shown {
            availability: Availability::Offline,
            message: None,
            activity: None,
            focus: Vec::new(),
        }
    }
}

/// Which record a watcher gets of a user (protocol section 7, "What a watcher may see").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum View {
    /// The user watching themselves: everything.
    Own,
    /// An allowed watcher of a visible user.
    Full,
    /// An allowed watcher of an invisible user: offline since the user became invisible.
    Invisible,
    /// A watcher the user's visibility excludes: a user who is never online.
    Denied,
}

impl View {
    /// How many views there are: `view as usize` is below it.
    const COUNT: usize = View::Denied as usize + 1;
}

/// What a user's presence is made of that is the same on every server node: the user-wide choice, the
/// aggregate shown to watchers with its times, privacy and contacts. With a store shared by several nodes
/// (`cluster`), this is what the store holds per user; each node keeps a replica of the users it serves.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Canonical {
    /// The user-wide explicit choice and when it was made (Unix ms).
    #[serde(default)]
    pub(crate) choice: Option<(Status, u64)>,
    #[serde(default)]
    pub(crate) shown: Shown,
    #[serde(default)]
    pub(crate) last_active_at: Option<u64>,
    #[serde(default)]
    pub(crate) since: Option<u64>,
    /// While the user is invisible: the `since` and `last_active_at` watchers keep seeing (those of the moment
    /// the user vanished, or of their last real offline if they were offline already).
    #[serde(default)]
    pub(crate) invisible_since: Option<u64>,
    #[serde(default)]
    pub(crate) invisible_last_active: Option<u64>,
    /// Whether the user was ever seen (a never-seen user's record has nulls).
    #[serde(default)]
    pub(crate) seen: bool,
    #[serde(default)]
    pub(crate) privacy: Privacy,
    /// Sorted, so that equal lists encode equally.
    #[serde(default)]
    pub(crate) contacts: BTreeSet<String>,
}

/// What one session contributes to its user's presence (protocol section 6.1): its automatic state and focus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Contribution {
    pub(crate) auto: Auto,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) focus: Option<String>,
}

#[derive(Debug)]
struct UserState {
    canon: Canonical,
    /// The sessions of the user on this node.
    sessions: Vec<u64>,
    /// The sessions on this node that watch the user, each with the last record it was sent of the user. Kept
    /// here rather than with the session, so that a fan-out finds what each watcher holds beside the watcher.
    watchers: HashMap<u64, Sent>,
    /// The choice (by its time) whose message-expiry timer is running.
    expiry_scheduled: Option<u64>,
    /// With a shared store: the store's revision of `canon` (0 until loaded).
    rev: u64,
    /// With a shared store: the sweep round in which the replica was last needed.
    touched: u64,
    /// With a shared store: whether `canon` was read from the store (or came from it) at least once.
    loaded: bool,
}

impl UserState {
    fn new() -> Self {
        UserState {
            canon: Canonical::default(),
            sessions: Vec::new(),
            watchers: HashMap::new(),
            expiry_scheduled: None,
            rev: 0,
            touched: 0,
            loaded: false,
        }
    }

    /// Not needed on this node: no session here, not watched from here.
    fn unused(&self) -> bool {
        self.sessions.is_empty() && self.watchers.is_empty()
    }

    /// Nothing worth keeping: never seen, unwatched, default privacy, no contacts.
    fn forgettable(&self) -> bool {
        !self.canon.seen
            && self.sessions.is_empty()
            && self.watchers.is_empty()
            && self.canon.privacy == Privacy::default()
            && self.canon.contacts.is_empty()
    }
}

/// The view `watcher` gets of `user_id`.
fn view_of(canon: &Canonical, user_id: &str, watcher: &str) -> View {
    if watcher == user_id {
        return View::Own;
    }
    let allowed = match canon.privacy.visibility {
        Visibility::Everyone => true,
        Visibility::Contacts => canon.contacts.contains(watcher),
        Visibility::Nobody => false,
    };
    if !allowed {
        View::Denied
    } else if canon.shown.availability == Availability::Invisible {
        View::Invisible
    } else {
        View::Full
    }
}

/// The record of `user_id` for a view.
fn record_for(canon: &Canonical, user_id: &str, view: View, version: u64) -> Presence {
    let blank = Presence {
        version,
        ..Presence::unknown(user_id)
    };
    if !canon.seen {
        return blank;
    }
    let last_seen = |at: Option<u64>| {
        if canon.privacy.hide_last_seen {
            None
        } else {
            at
        }
    };
    match view {
        View::Denied => blank,
        View::Invisible => Presence {
            last_active_at: last_seen(canon.invisible_last_active),
            // For someone offline, `since` is their last seen too.
            since: last_seen(canon.invisible_since),
            ..blank
        },
        View::Own | View::Full => Presence {
            user_id: user_id.to_owned(),
            availability: canon.shown.availability,
            message: canon.shown.message.clone(),
            activity: canon.shown.activity.clone(),
            last_active_at: if view == View::Own {
                canon.last_active_at
            } else {
                last_seen(canon.last_active_at)
            },
            since: if view == View::Full && canon.shown.availability == Availability::Offline {
                last_seen(canon.since)
            } else {
                canon.since
            },
            version,
            focus: canon.shown.focus.clone(),
        },
    }
}

#[derive(Debug)]
struct SessionState {
    public_id: String,
    user_id: String,
    /// The attached connection; `None` while waiting to be resumed.
    conn: Option<Conn>,
    /// Bumped on every attach, so that a stale connection's end does not detach a resumed session.
    generation: u64,
    auto: Auto,
    focus: Option<String>,
    /// Watched users: the users subscribed to directly and the members of subscribed channels. What was last
    /// sent to this session of each is kept with the user (`UserState::watchers`).
    watching: HashSet<String>,
    /// Users subscribed to directly.
    direct: HashSet<String>,
    /// Channels subscribed to.
    channels: HashSet<String>,
}

/// A channel: its members (from the admin API) and the sessions subscribed to it.
#[derive(Debug, Default)]
struct ChannelState {
    members: BTreeSet<String>,
    subscribers: HashSet<u64>,
    /// With a shared store: the store's revision of `members`, and whether they were read from it.
    rev: u64,
    loaded: bool,
    /// With a shared store, while the members are being read: the newest revision announced meanwhile.
    announced: u64,
}

/// The last record a session was sent about a user.
#[derive(Debug, Clone)]
struct Sent {
    version: u64,
    /// Without its version (0). Shared by the watchers that were sent the same record in one fan-out.
    record: Arc<Presence>,
}

/// What one fan-out made for one view of the user (see [`Hub::fan_out`]).
struct Made {
    /// The record for the view, without its version.
    record: Arc<Presence>,
    /// The last record a watcher was found to hold, and whether it had the same content as `record`: watchers
    /// sent the same record before share it, so it is compared once. Held, so that its address cannot be reused
    /// by another record during the fan-out.
    compared: Option<(Arc<Presence>, bool)>,
    /// The `presence` frame of `record`, made when the first watcher that gets it is attached.
    frame: Option<Frame>,
}

impl Made {
    /// Whether a watcher holding `sent` already has this record's content.
    fn unchanged_from(&mut self, sent: &Arc<Presence>) -> bool {
        if Arc::ptr_eq(sent, &self.record) {
            return true;
        }
        match &self.compared {
            Some((seen, same)) if Arc::ptr_eq(seen, sent) => *same,
            _ => {
                let same = sent.same_content(&self.record);
                self.compared = Some((sent.clone(), same));
                same
            }
        }
    }
}

/// The user's current choice's message expiry, as (choice time, expiry), if it has one and no timer runs for it
/// yet; marks the timer as started, so that the caller starts the one timer.
fn claim_message_expiry(state: &mut HubState, user_id: &str) -> Option<(u64, u64)> {
    let user = state.users.get_mut(user_id)?;
    let (status, chosen_at) = user.canon.choice.as_ref()?;
    let (chosen_at, expires_at) = (*chosen_at, status.message_expires_at?);
    if user.expiry_scheduled == Some(chosen_at) {
        return None;
    }
    user.expiry_scheduled = Some(chosen_at);
    Some((chosen_at, expires_at))
}

/// Advances the server-wide version counter `clock` (see [`HubState::stamp`]) and returns the new version.
fn next_stamp(clock: &mut u64) -> u64 {
    *clock = (*clock + 1).max(unix_micros());
    *clock
}

#[derive(Debug, Default)]
struct HubState {
    users: HashMap<String, UserState>,
    sessions: HashMap<u64, SessionState>,
    by_public_id: HashMap<String, u64>,
    channels: HashMap<String, ChannelState>,
    next_session: u64,
    /// The server-wide version counter (protocol section 3.1).
    clock: u64,
    /// Whether a shared store holds the canonical presence: replicas of users are then dropped by
    /// [`Hub::sweep`], not as soon as they are unused.
    shared: bool,
    /// Counts [`Hub::sweep`] calls.
    sweep_round: u64,
}

impl HubState {
    /// The next version: strictly greater than every version issued before, here or before a restart.
    fn stamp(&mut self) -> u64 {
        next_stamp(&mut self.clock)
    }

    /// Whether session `key` watches `user` for any reason: directly or through a channel.
    fn watched_by(&self, key: u64, user: &str) -> bool {
        let Some(session) = self.sessions.get(&key) else {
            return false;
        };
        session.direct.contains(user)
            || session.channels.iter().any(|c| {
                self.channels
                    .get(c)
                    .is_some_and(|ch| ch.members.contains(user))
            })
    }

    /// Makes session `key` watch `user` and returns the record made for it, stamped `stamp`.
    fn watch(&mut self, key: u64, user: &str, stamp: u64) -> Option<Presence> {
        let watcher_user = self.sessions.get(&key)?.user_id.clone();
        let state = self
            .users
            .entry(user.to_owned())
            .or_insert_with(UserState::new);
        let record = record_for(
            &state.canon,
            user,
            view_of(&state.canon, user, &watcher_user),
            0,
        );
        state.watchers.insert(
            key,
            Sent {
                version: stamp,
                record: Arc::new(record.clone()),
            },
        );
        let session = self.sessions.get_mut(&key)?;
        session.watching.insert(user.to_owned());
        Some(Presence {
            version: stamp,
            ..record
        })
    }

    /// Stops session `key` watching `user` unless another subscription still covers the user.
    fn unwatch_if_unused(&mut self, key: u64, user: &str) {
        if self.watched_by(key, user) {
            return;
        }
        if let Some(session) = self.sessions.get_mut(&key) {
            session.watching.remove(user);
        }
        let shared = self.shared;
        if let Some(state) = self.users.get_mut(user) {
            state.watchers.remove(&key);
            if !shared && state.forgettable() {
                self.users.remove(user);
            }
        }
    }

    /// The record `watcher_user` gets of `user_id` now (without its version).
    fn view_record(&self, user_id: &str, watcher_user: &str) -> Presence {
        match self.users.get(user_id) {
            Some(user) => record_for(
                &user.canon,
                user_id,
                view_of(&user.canon, user_id, watcher_user),
                0,
            ),
            None => Presence::unknown(user_id),
        }
    }
}

/// Counters for tests, the demo and operators.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// WebSocket connections accepted since start.
    pub connections_accepted: u64,
    /// Sessions established (new, not resumed) since start.
    pub sessions_started: u64,
    /// Sessions resumed since start.
    pub sessions_resumed: u64,
    /// Sessions that exist now (attached or waiting to be resumed).
    pub sessions_active: u64,
    /// Sessions waiting to be resumed now.
    pub sessions_detached: u64,
    /// Users with at least one session now.
    pub users_online: u64,
    /// Connections stopped because their outbound queue overflowed.
    pub slow_consumers: u64,
}

/// The user's session as the hub hands it to a connection.
#[derive(Debug, Clone)]
pub(crate) struct Attached {
    pub(crate) key: u64,
    pub(crate) generation: u64,
    pub(crate) public_id: String,
    pub(crate) resumed: bool,
}

/// What a `hello` brings to a session besides credentials.
#[derive(Debug, Clone, Default)]
pub(crate) struct Intro {
    pub(crate) choice: Option<Choice>,
    pub(crate) auto: Option<Auto>,
    pub(crate) focus: Option<String>,
}

/// The presence state of one server.
#[derive(Debug)]
pub(crate) struct Hub {
    state: Mutex<HubState>,
    /// The largest frame sent to clients; snapshots are split to fit.
    max_frame_bytes: usize,
    /// Whether dropped sessions are kept for a resume (a resume grace is configured).
    resumable: bool,
    pub(crate) connections_accepted: AtomicU64,
    sessions_started: AtomicU64,
    sessions_resumed: AtomicU64,
    slow_consumers: AtomicU64,
    /// With a shared store: where changes to users' canonical presence go (see `cluster`). Unset: this node
    /// is the store.
    store: OnceLock<StoreLink>,
}

/// The most focus contexts a record carries.
const MAX_FOCUS_CONTEXTS: usize = 16;

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

/// Builds the `welcome` frame once the session's public id, resumption and the user's choice are known.
pub(crate) type WelcomeBuilder<'a> = &'a dyn Fn(&str, bool, Option<Choice>) -> Frame;

impl Default for Hub {
    fn default() -> Self {
        Hub::new(MAX_FRAME_BYTES, true)
    }
}

impl Hub {
    pub(crate) fn new(max_frame_bytes: usize, resumable: bool) -> Self {
        Hub {
            state: Mutex::default(),
            max_frame_bytes,
            resumable,
            connections_accepted: AtomicU64::default(),
            sessions_started: AtomicU64::default(),
            sessions_resumed: AtomicU64::default(),
            slow_consumers: AtomicU64::default(),
            store: OnceLock::new(),
        }
    }

    /// Hands changes of canonical presence to a shared store from now on (see `cluster`).
    pub(crate) fn use_store(&self, link: StoreLink) {
        self.lock().shared = true;
        let _ = self.store.set(link);
    }

    /// Makes room for replicas of `users` about to be read from the shared store, so that changes announced
    /// while the read is under way are kept (the read then only wins if it is newer).
    pub(crate) fn prepare_users(&self, users: &[String]) {
        let mut guard = self.lock();
        let state = &mut *guard;
        let round = state.sweep_round;
        for user in users {
            state
                .users
                .entry(user.clone())
                .or_insert_with(UserState::new)
                .touched = round;
        }
    }

    /// Notes that `channel`'s members are about to be read from the shared store; returns nothing.
    pub(crate) fn prepare_channel(&self, channel: &str) {
        self.lock().channels.entry(channel.to_owned()).or_default();
    }

    /// A change of `channel` to revision `rev` was announced while this node does not hold its members: noted,
    /// so that a read under way that is older is made again. Returns whether the channel is being read.
    pub(crate) fn announce_channel(&self, channel: &str, rev: u64) -> bool {
        match self.lock().channels.get_mut(channel) {
            Some(c) if !c.loaded => {
                c.announced = c.announced.max(rev);
                true
            }
            _ => false,
        }
    }

    /// The newest revision of `channel` announced while it was being read.
    pub(crate) fn channel_announced(&self, channel: &str) -> u64 {
        self.lock().channels.get(channel).map_or(0, |c| c.announced)
    }

    /// Of `users`, those whose canonical presence this node has not read from the shared store.
    pub(crate) fn unloaded_users(&self, users: &[String]) -> Vec<String> {
        let state = self.lock();
        let mut listed = HashSet::new();
        users
            .iter()
            .filter(|u| listed.insert(u.as_str()))
            .filter(|u| !state.users.get(u.as_str()).is_some_and(|s| s.loaded))
            .cloned()
            .collect()
    }

    /// What the user's sessions on this node contribute to their presence.
    pub(crate) fn contribution(&self, user_id: &str) -> Vec<Contribution> {
        let state = self.lock();
        state
            .users
            .get(user_id)
            .map(|user| contributions_of(&state, user))
            .unwrap_or_default()
    }

    /// Adopts revision `rev` of a user's canonical presence from the shared store, if it is newer than the
    /// replica's, and tells this node's sessions what changed: watchers their new record, the user's own
    /// sessions their choice and privacy. `load` creates the replica if there is none (otherwise a user this
    /// node does not serve is ignored). Returns the message expiry to schedule, as (choice time, expiry), when
    /// the user has a session here and an expiring message no timer runs for yet.
    pub(crate) fn apply_user(
        &self,
        user_id: &str,
        rev: u64,
        canon: Canonical,
        load: bool,
    ) -> Option<(u64, u64)> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let round = state.sweep_round;
        let user = if load {
            state
                .users
                .entry(user_id.to_owned())
                .or_insert_with(UserState::new)
        } else {
            state.users.get_mut(user_id)?
        };
        if load {
            user.touched = round;
        }
        if user.loaded && rev <= user.rev {
            return None;
        }
        user.loaded = true;
        user.rev = rev;
        let mut canon = canon;
        if !user.sessions.is_empty() && canon.choice.is_none() {
            // The store ends a choice only when the user has no session anywhere; with sessions here, that
            // means other nodes took this one for dead. Keep the choice, which this node writes back.
            canon.choice.clone_from(&user.canon.choice);
        }
        if user.canon == canon {
            return None;
        }
        let before = std::mem::replace(&mut user.canon, canon);
        let privacy = user.canon.privacy;
        let local = !user.sessions.is_empty();
        if before.privacy != privacy {
            let frame = privacy_frame(privacy);
            for session in user.sessions.iter().filter_map(|k| state.sessions.get(k)) {
                if let Some(conn) = &session.conn {
                    self.push(conn, frame.clone());
                }
            }
        }
        if before.choice != state.users.get(user_id)?.canon.choice {
            self.send_choice(state, user_id, None);
        }
        self.fan_out(state, user_id);
        if !local {
            return None;
        }
        claim_message_expiry(state, user_id)
    }

    /// The replicas of this node, to rebuild a shared store that lost them: each user's canonical presence, and
    /// whether the user has a session here.
    pub(crate) fn replicas(&self) -> Vec<(String, Canonical, bool)> {
        let state = self.lock();
        state
            .users
            .iter()
            .filter(|(_, u)| u.loaded)
            .map(|(id, u)| (id.clone(), u.canon.clone(), !u.sessions.is_empty()))
            .collect()
    }

    /// The users and channels this node keeps replicas of.
    pub(crate) fn replicated(&self) -> (Vec<String>, Vec<String>) {
        let state = self.lock();
        (
            state.users.keys().cloned().collect(),
            state
                .channels
                .iter()
                .filter(|(_, c)| c.loaded)
                .map(|(id, _)| id.clone())
                .collect(),
        )
    }

    /// Drops the replicas of users this node has not needed since the previous sweep.
    pub(crate) fn sweep(&self) {
        let mut state = self.lock();
        let round = state.sweep_round;
        state
            .users
            .retain(|_, u| !u.unused() || u.touched + 1 >= round);
        state.sweep_round += 1;
    }

    /// The store's revision of this node's replica of `channel` (0 if none).
    pub(crate) fn channel_rev(&self, channel: &str) -> u64 {
        self.lock().channels.get(channel).map_or(0, |c| c.rev)
    }

    /// This node's replica of `channel`: its revision and members.
    pub(crate) fn channel_replica(&self, channel: &str) -> (u64, Vec<String>) {
        let state = self.lock();
        state.channels.get(channel).map_or((0, Vec::new()), |c| {
            (c.rev, c.members.iter().cloned().collect())
        })
    }

    /// Whether this node holds the members of `channel` as the shared store has them.
    pub(crate) fn channel_loaded(&self, channel: &str) -> bool {
        self.lock().channels.get(channel).is_some_and(|c| c.loaded)
    }

    /// Adopts a change of a channel's members from the shared store: `joined` and `left`, from revision `prev`
    /// to `rev`. Returns `false` (and changes nothing) if the replica is not at `prev`, so that the caller reads
    /// the whole list instead. Unknown channels and older revisions are ignored.
    pub(crate) fn apply_channel_change(
        &self,
        channel: &str,
        prev: u64,
        rev: u64,
        joined: &[String],
        left: &[String],
    ) -> bool {
        {
            let state = self.lock();
            match state.channels.get(channel) {
                Some(c) if c.loaded && c.rev == prev => {}
                Some(c) if c.loaded && c.rev >= rev => return true,
                Some(_) => return false,
                None => return true,
            }
        }
        self.update_channel_at(channel, Some(rev), |members| {
            let mut members = members.clone();
            for user in left {
                members.remove(user);
            }
            members.extend(joined.iter().cloned());
            members
        });
        true
    }

    /// Adopts a channel's whole member list at revision `rev` from the shared store.
    pub(crate) fn apply_channel_members(&self, channel: &str, rev: u64, members: BTreeSet<String>) {
        self.update_channel_at(channel, Some(rev), |_| members);
    }

    /// Whether a shared store holds the canonical presence.
    pub(crate) fn shared(&self) -> bool {
        self.store.get().is_some()
    }

    /// Sends the shared store a change of `user_id`'s canonical presence; `false` without a shared store.
    fn to_store(&self, user_id: &str, ops: Vec<Op>) -> bool {
        match self.store.get() {
            Some(link) => {
                link.send(Job {
                    user: user_id.to_owned(),
                    ops,
                    done: None,
                });
                true
            }
            None => false,
        }
    }

    fn lock(&self) -> HubGuard<'_> {
        HubGuard {
            _writes: DeferredWrites::begin(),
            // A panic while holding the lock leaves consistent maps behind (every update is a few inserts), so a
            // poisoned lock is still usable.
            state: self
                .state
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        }
    }

    /// Queues `records` as one or more `snapshot` frames that each fit the frame limit.
    fn push_snapshot(&self, conn: &Conn, records: Vec<Presence>) {
        for frame in split_records(records, self.max_frame_bytes, |users, _| {
            ServerMessage::Snapshot { users }
        }) {
            self.push(conn, frame.into());
        }
    }

    /// Starts a new session of `user_id`, queues its `welcome`, and applies what its `hello` brought.
    pub(crate) fn join(
        &self,
        user_id: &str,
        intro: Intro,
        conn: Conn,
        welcome: WelcomeBuilder<'_>,
    ) -> Attached {
        let mut guard = self.lock();
        let state = &mut *guard;
        state.next_session += 1;
        let key = state.next_session;
        let public_id = format!("s_{:016x}{:08x}", rand::random::<u64>(), key);
        state.sessions.insert(
            key,
            SessionState {
                public_id: public_id.clone(),
                user_id: user_id.to_owned(),
                conn: Some(conn.clone()),
                generation: 1,
                auto: intro.auto.unwrap_or_default(),
                focus: intro.focus,
                watching: HashSet::new(),
                direct: HashSet::new(),
                channels: HashSet::new(),
            },
        );
        state.by_public_id.insert(public_id.clone(), key);
        self.sessions_started.fetch_add(1, Ordering::Relaxed);
        let user = state
            .users
            .entry(user_id.to_owned())
            .or_insert_with(UserState::new);
        user.sessions.push(key);
        user.touched = state.sweep_round;
        if self.shared() {
            // The store applies the choice; the welcome states what is known here now, and a `choice` frame
            // follows if the store's differs.
            let current = current_choice(&user.canon);
            self.push(&conn, welcome(&public_id, false, current));
            self.push(&conn, privacy_frame(user.canon.privacy));
            let mut ops: Vec<Op> = intro.choice.into_iter().map(Op::Choice).collect();
            ops.push(Op::Active(unix_millis()));
            self.to_store(user_id, ops);
        } else {
            let choice_changed = intro
                .choice
                .is_some_and(|c| apply_choice(&mut user.canon, c));
            let current = current_choice(&user.canon);
            self.push(&conn, welcome(&public_id, false, current));
            self.push(&conn, privacy_frame(user.canon.privacy));
            if choice_changed {
                // This session's welcome carries the choice already.
                self.send_choice(state, user_id, Some(key));
            }
            self.refresh(state, user_id, Some(unix_millis()), false);
        }
        Attached {
            key,
            generation: 1,
            public_id,
            resumed: false,
        }
    }

    /// Reattaches a session waiting to be resumed (or still attached to a connection the server has not seen
    /// die), queues `welcome` and the snapshot of what changed after `last_version`. `None` if the session
    /// cannot be resumed.
    pub(crate) fn resume(
        &self,
        user_id: &str,
        public_id: &str,
        last_version: u64,
        intro: Intro,
        conn: Conn,
        welcome: WelcomeBuilder<'_>,
    ) -> Option<Attached> {
        if !self.resumable {
            return None;
        }
        let mut guard = self.lock();
        let state = &mut *guard;
        let key = *state.by_public_id.get(public_id)?;
        let session = state.sessions.get_mut(&key)?;
        if session.user_id != user_id {
            return None;
        }
        if let Some(old) = session.conn.take() {
            old.control.stop(replaced());
        }
        session.generation += 1;
        session.conn = Some(conn.clone());
        let generation = session.generation;
        // The hello states the session's whole automatic state and focus: absent means active and none.
        session.auto = intro.auto.unwrap_or_default();
        session.focus = intro.focus;
        let watched: Vec<String> = session.watching.iter().cloned().collect();
        self.sessions_resumed.fetch_add(1, Ordering::Relaxed);
        let shared = self.shared();
        let choice_changed = match state.users.get_mut(user_id) {
            Some(user) if !shared => intro
                .choice
                .clone()
                .is_some_and(|c| apply_choice(&mut user.canon, c)),
            _ => false,
        };
        let user = state.users.get(user_id);
        let current = user.and_then(|u| current_choice(&u.canon));
        let privacy = user.map(|u| u.canon.privacy).unwrap_or_default();
        self.push(&conn, welcome(public_id, true, current));
        self.push(&conn, privacy_frame(privacy));
        // What changed while the connection was away: every watched user whose last record sent to this session
        // is newer than what the client saw.
        let stamp = state.stamp();
        let mut records = Vec::new();
        for watched_user in watched {
            let sent_version = state
                .users
                .get(&watched_user)
                .and_then(|u| u.watchers.get(&key))
                .map_or(0, |sent| sent.version);
            if sent_version > last_version {
                let record = state.view_record(&watched_user, user_id);
                records.push(Presence {
                    version: stamp,
                    ..record.clone()
                });
                if let Some(user) = state.users.get_mut(&watched_user) {
                    user.watchers.insert(
                        key,
                        Sent {
                            version: stamp,
                            record: Arc::new(record),
                        },
                    );
                }
            }
        }
        self.push_snapshot(&conn, records);
        if shared {
            let mut ops: Vec<Op> = intro.choice.into_iter().map(Op::Choice).collect();
            ops.push(Op::Sessions);
            self.to_store(user_id, ops);
        } else {
            if choice_changed {
                // This session's welcome carries the choice already.
                self.send_choice(state, user_id, Some(key));
            }
            self.refresh(state, user_id, None, false);
        }
        Some(Attached {
            key,
            generation,
            public_id: public_id.to_owned(),
            resumed: true,
        })
    }

    /// The connection of generation `generation` ended without `bye`: keep the session for a resume. Returns
    /// `false` if the session was already resumed on another connection or is gone.
    pub(crate) fn detach(&self, key: u64, generation: u64) -> bool {
        let mut state = self.lock();
        match state.sessions.get_mut(&key) {
            Some(session) if session.generation == generation => {
                session.conn = None;
                true
            }
            _ => false,
        }
    }

    /// The resume grace of a detached session ran out: end it, unless it was resumed meanwhile.
    pub(crate) fn expire(&self, key: u64, generation: u64, last_inbound_at: u64) {
        let mut guard = self.lock();
        let detached = guard
            .sessions
            .get(&key)
            .is_some_and(|s| s.generation == generation && s.conn.is_none());
        if detached {
            self.leave_locked(&mut guard, key, last_inbound_at);
        }
    }

    /// Applies a validated explicit choice from a session.
    /// Applies a validated choice from a session and, when the `set_status` carried one, the session's automatic
    /// state with it: watchers get one update for both (protocol section 7, `set_status`).
    pub(crate) fn set_choice(&self, key: u64, choice: Choice, auto: Option<Auto>) {
        let mut guard = self.lock();
        let state = &mut *guard;
        let Some(session) = state.sessions.get_mut(&key) else {
            return;
        };
        let user_id = session.user_id.clone();
        let auto_changed = match auto {
            Some(auto) if session.auto != auto => {
                session.auto = auto;
                true
            }
            _ => false,
        };
        // The store reads this node's sessions (their automatic states) when it applies the change.
        if self.shared()
            && self.to_store(
                &user_id,
                vec![Op::Choice(choice.clone()), Op::Active(unix_millis())],
            )
        {
            return;
        }
        let Some(user) = state.users.get_mut(&user_id) else {
            return;
        };
        // What `apply_choice` may amend: a missing time, and a message whose expiry has passed.
        let (timed, expiry) = (choice.chosen_at.is_some(), choice.status.message_expires_at);
        let chosen = apply_choice(&mut user.canon, choice);
        if chosen {
            // The session that made the choice holds it already, unless the server amended it: protocol
            // section 7, `choice`.
            let as_made = timed
                && user
                    .canon
                    .choice
                    .as_ref()
                    .is_some_and(|(status, _)| status.message_expires_at == expiry);
            self.send_choice(state, &user_id, as_made.then_some(key));
        }
        if chosen || auto_changed {
            self.refresh(state, &user_id, Some(unix_millis()), false);
        }
    }

    /// The user's current choice's message expiry, as (choice time, expiry), if it has one and no timer runs for
    /// it yet; the caller starts the one timer.
    pub(crate) fn message_expiry(&self, user_id: &str) -> Option<(u64, u64)> {
        claim_message_expiry(&mut self.lock(), user_id)
    }

    /// The message of the choice made at `chosen_at` expired: clear it, if that choice still holds.
    pub(crate) fn expire_message(&self, user_id: &str, chosen_at: u64) {
        if self.to_store(user_id, vec![Op::ExpireMessage(chosen_at)]) {
            return;
        }
        let mut guard = self.lock();
        let state = &mut *guard;
        let Some(user) = state.users.get_mut(user_id) else {
            return;
        };
        if !expire_message(&mut user.canon, chosen_at) {
            return;
        }
        self.send_choice(state, user_id, None);
        self.refresh(state, user_id, None, false);
    }

    /// Applies a validated automatic state from a session.
    pub(crate) fn set_auto(&self, key: u64, auto: Auto) {
        let mut guard = self.lock();
        let state = &mut *guard;
        let Some(session) = state.sessions.get_mut(&key) else {
            return;
        };
        if session.auto == auto {
            return;
        }
        let active = auto.state == AutoState::Active;
        session.auto = auto;
        let user_id = session.user_id.clone();
        let active_at = active.then(unix_millis);
        if self.to_store(&user_id, vec![active_at.map_or(Op::Sessions, Op::Active)]) {
            return;
        }
        self.refresh(state, &user_id, active_at, false);
    }

    /// Applies a validated focus context from a session.
    pub(crate) fn set_focus(&self, key: u64, focus: Option<String>) {
        let mut guard = self.lock();
        let state = &mut *guard;
        let Some(session) = state.sessions.get_mut(&key) else {
            return;
        };
        if session.focus == focus {
            return;
        }
        session.focus = focus;
        let user_id = session.user_id.clone();
        if self.to_store(&user_id, vec![Op::Active(unix_millis())]) {
            return;
        }
        self.refresh(state, &user_id, Some(unix_millis()), false);
    }

    /// Applies a user's privacy settings (from one of their sessions) and tells all their sessions.
    pub(crate) fn set_privacy(&self, key: u64, privacy: Privacy) {
        let mut guard = self.lock();
        let state = &mut *guard;
        let Some(user_id) = state.sessions.get(&key).map(|s| s.user_id.clone()) else {
            return;
        };
        if self.to_store(&user_id, vec![Op::Privacy(privacy)]) {
            return;
        }
        let Some(user) = state.users.get_mut(&user_id) else {
            return;
        };
        user.canon.privacy = privacy;
        let frame = privacy_frame(privacy);
        for session in user.sessions.iter().filter_map(|k| state.sessions.get(k)) {
            if let Some(conn) = &session.conn {
                self.push(conn, frame.clone());
            }
        }
        self.refresh(state, &user_id, None, true);
    }

    /// Replaces a user's contact list (admin API): who may see them under `contacts` visibility.
    pub(crate) fn set_contacts(&self, user_id: &str, contacts: BTreeSet<String>) {
        let mut guard = self.lock();
        let state = &mut *guard;
        let user = state
            .users
            .entry(user_id.to_owned())
            .or_insert_with(UserState::new);
        user.canon.contacts = contacts;
        self.refresh(state, user_id, None, true);
        if !state.shared && state.users.get(user_id).is_some_and(UserState::forgettable) {
            state.users.remove(user_id);
        }
    }

    /// A user's contact list, sorted.
    pub(crate) fn contacts(&self, user_id: &str) -> Vec<String> {
        let state = self.lock();
        let mut contacts: Vec<String> = state
            .users
            .get(user_id)
            .map(|u| u.canon.contacts.iter().cloned().collect())
            .unwrap_or_default();
        contacts.sort();
        contacts
    }

    /// Adds users to a session's watch list and queues the snapshot. Returns the error to report if the
    /// session's limit cut the list short.
    pub(crate) fn subscribe(&self, key: u64, users: Vec<String>) -> Option<ErrorCode> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let stamp = state.stamp();
        let mut listed = HashSet::new();
        let mut records = Vec::new();
        let mut cut_short = None;
        for user_id in users {
            if !listed.insert(user_id.clone()) {
                continue;
            }
            let session = state.sessions.get_mut(&key)?;
            if !session.watching.contains(&user_id)
                && session.watching.len() >= MAX_SUBSCRIPTIONS_PER_SESSION
            {
                cut_short = Some(ErrorCode::TooManySubscriptions);
                continue;
            }
            session.direct.insert(user_id.clone());
            records.extend(state.watch(key, &user_id, stamp));
        }
        if let Some(conn) = state.sessions.get(&key).and_then(|s| s.conn.clone()) {
            self.push_snapshot(&conn, records);
        }
        cut_short
    }

    /// Removes users from a session's watch list (a user still covered by a subscribed channel stays watched).
    pub(crate) fn unsubscribe(&self, key: u64, users: &[String]) {
        let mut guard = self.lock();
        let state = &mut *guard;
        for user_id in users {
            let removed = state
                .sessions
                .get_mut(&key)
                .is_some_and(|s| s.direct.remove(user_id));
            if removed {
                state.unwatch_if_unused(key, user_id);
            }
        }
    }

    /// Subscribes a session to channels its user belongs to; returns the channels refused and why.
    pub(crate) fn subscribe_channels(
        &self,
        key: u64,
        channels: Vec<String>,
    ) -> Vec<(String, ErrorCode)> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let mut refused = Vec::new();
        let Some((user_id, conn)) = state
            .sessions
            .get(&key)
            .map(|s| (s.user_id.clone(), s.conn.clone()))
        else {
            return refused;
        };
        for channel in channels {
            let member = state
                .channels
                .get(&channel)
                .is_some_and(|c| c.members.contains(&user_id));
            if !member {
                refused.push((channel, ErrorCode::NotAMember));
                continue;
            }
            let Some(session) = state.sessions.get_mut(&key) else {
                break;
            };
            if !session.channels.contains(&channel)
                && session.channels.len() >= MAX_CHANNELS_PER_SESSION
            {
                refused.push((channel, ErrorCode::TooManySubscriptions));
                continue;
            }
            session.channels.insert(channel.clone());
            if let Some(c) = state.channels.get_mut(&channel) {
                c.subscribers.insert(key);
            }
            if let Some(conn) = &conn {
                self.send_channel_snapshot(state, key, &channel, conn);
            }
        }
        refused
    }

    /// Unsubscribes a session from channels; members no longer covered by any subscription stop being watched.
    pub(crate) fn unsubscribe_channels(&self, key: u64, channels: &[String]) {
        let mut guard = self.lock();
        let state = &mut *guard;
        for channel in channels {
            let removed = state
                .sessions
                .get_mut(&key)
                .is_some_and(|s| s.channels.remove(channel));
            if !removed {
                continue;
            }
            let members: Vec<String> = match state.channels.get_mut(channel) {
                Some(c) => {
                    c.subscribers.remove(&key);
                    c.members.iter().cloned().collect()
                }
                None => Vec::new(),
            };
            for member in members {
                state.unwatch_if_unused(key, &member);
            }
        }
    }

    /// Changes a channel's members atomically (`change` gets the current members and returns the new ones) and
    /// tells its subscribers who joined and who left.
    pub(crate) fn update_channel(
        &self,
        channel: &str,
        change: impl FnOnce(&BTreeSet<String>) -> BTreeSet<String>,
    ) {
        self.update_channel_at(channel, None, change);
    }

    /// [`Hub::update_channel`]; with a shared store, `rev` is the store's revision of the result.
    fn update_channel_at(
        &self,
        channel: &str,
        rev: Option<u64>,
        change: impl FnOnce(&BTreeSet<String>) -> BTreeSet<String>,
    ) {
        let mut guard = self.lock();
        let state = &mut *guard;
        let entry = state.channels.entry(channel.to_owned()).or_default();
        if let Some(rev) = rev {
            if entry.loaded && rev < entry.rev {
                // An older snapshot than what this node has applied already.
                return;
            }
            entry.rev = rev;
            entry.loaded = true;
        }
        let members = change(&entry.members);
        let joined: Vec<String> = members.difference(&entry.members).cloned().collect();
        let left: Vec<String> = entry.members.difference(&members).cloned().collect();
        entry.members = members;
        let subscribers: Vec<u64> = entry.subscribers.iter().copied().collect();
        if joined.is_empty() && left.is_empty() {
            return;
        }
        let stamp = state.stamp();
        for key in subscribers {
            let records: Vec<Presence> = joined
                .iter()
                .filter_map(|u| state.watch(key, u, stamp))
                .collect();
            for user in &left {
                state.unwatch_if_unused(key, user);
            }
            let Some(session) = state.sessions.get_mut(&key) else {
                continue;
            };
            let conn = session.conn.clone();
            // A subscriber who is no longer a member loses the subscription, after hearing that it left.
            let own_left = left.contains(&session.user_id);
            if own_left {
                session.channels.remove(channel);
            }
            if let Some(conn) = conn {
                // Who left (in parts of a few hundred ids), then who joined (records split to fit the limit).
                for part in left.chunks(400) {
                    let frame = ServerMessage::ChannelMembers {
                        channel: channel.to_owned(),
                        joined: Vec::new(),
                        left: part.to_vec(),
                    };
                    self.push(&conn, frame.encode().into());
                }
                if !records.is_empty() {
                    for frame in split_records(records, self.max_frame_bytes, |joined, _| {
                        ServerMessage::ChannelMembers {
                            channel: channel.to_owned(),
                            joined,
                            left: Vec::new(),
                        }
                    }) {
                        self.push(&conn, frame.into());
                    }
                }
            }
            if own_left {
                if let Some(c) = state.channels.get_mut(channel) {
                    c.subscribers.remove(&key);
                }
                let members: Vec<String> = state
                    .channels
                    .get(channel)
                    .map(|c| c.members.iter().cloned().collect())
                    .unwrap_or_default();
                for member in members {
                    state.unwatch_if_unused(key, &member);
                }
            }
        }
        if state
            .channels
            .get(channel)
            .is_some_and(|c| c.members.is_empty() && c.subscribers.is_empty())
        {
            state.channels.remove(channel);
        }
    }

    /// A channel's members, sorted.
    pub(crate) fn channel_members(&self, channel: &str) -> Vec<String> {
        let state = self.lock();
        state
            .channels
            .get(channel)
            .map(|c| c.members.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Queues the members of `channel` as `channel_snapshot` frames for session `key`, watching them all.
    fn send_channel_snapshot(&self, state: &mut HubState, key: u64, channel: &str, conn: &Conn) {
        let members: Vec<String> = state
            .channels
            .get(channel)
            .map(|c| c.members.iter().cloned().collect())
            .unwrap_or_default();
        let stamp = state.stamp();
        let records: Vec<Presence> = members
            .iter()
            .filter_map(|m| state.watch(key, m, stamp))
            .collect();
        for frame in split_records(records, self.max_frame_bytes, |members, more| {
            ServerMessage::ChannelSnapshot {
                channel: channel.to_owned(),
                members,
                more,
            }
        }) {
            self.push(conn, frame.into());
        }
    }

    /// The records `users` as the session's user may see them, one per distinct user in the order first listed.
    pub(crate) fn query(&self, key: u64, users: &[String]) -> Vec<Presence> {
        let mut state = self.lock();
        let stamp = state.stamp();
        let Some(watcher_user) = state.sessions.get(&key).map(|s| s.user_id.clone()) else {
            return Vec::new();
        };
        let mut listed = HashSet::new();
        users
            .iter()
            .filter(|u| listed.insert(u.as_str()))
            .map(|u| Presence {
                version: stamp,
                ..state.view_record(u, &watcher_user)
            })
            .collect()
    }

    /// Ends a session. If it was the user's last, the user goes offline with `last_inbound_at` (Unix ms, when
    /// the session's last frame arrived) as their last active time.
    /// Only the connection of generation `generation` may end it (an older, taken-over connection may not).
    pub(crate) fn leave(&self, key: u64, generation: u64, last_inbound_at: u64) {
        let mut guard = self.lock();
        if guard
            .sessions
            .get(&key)
            .is_some_and(|s| s.generation == generation)
        {
            self.leave_locked(&mut guard, key, last_inbound_at);
        }
    }

    fn leave_locked(&self, state: &mut HubState, key: u64, last_inbound_at: u64) {
        let Some(session) = state.sessions.remove(&key) else {
            return;
        };
        state.by_public_id.remove(&session.public_id);
        for channel in &session.channels {
            if let Some(c) = state.channels.get_mut(channel) {
                c.subscribers.remove(&key);
            }
        }
        for watched in &session.watching {
            if let Some(user) = state.users.get_mut(watched) {
                user.watchers.remove(&key);
                if !state.shared && user.forgettable() {
                    state.users.remove(watched);
                }
            }
        }
        let Some(user) = state.users.get_mut(&session.user_id) else {
            return;
        };
        user.sessions.retain(|s| *s != key);
        if self.to_store(&session.user_id, vec![Op::Left(last_inbound_at)]) {
            return;
        }
        if user.sessions.is_empty() {
            end_of_sessions(&mut user.canon, last_inbound_at);
        }
        self.refresh(state, &session.user_id, None, false);
    }

    /// Counters.
    pub(crate) fn stats(&self) -> ServerStats {
        let state = self.lock();
        ServerStats {
            connections_accepted: self.connections_accepted.load(Ordering::Relaxed),
            sessions_started: self.sessions_started.load(Ordering::Relaxed),
            sessions_resumed: self.sessions_resumed.load(Ordering::Relaxed),
            sessions_active: state.sessions.len() as u64,
            sessions_detached: state.sessions.values().filter(|s| s.conn.is_none()).count() as u64,
            users_online: state
                .users
                .values()
                .filter(|u| !u.sessions.is_empty())
                .count() as u64,
            slow_consumers: self.slow_consumers.load(Ordering::Relaxed),
        }
    }

    /// Recomputes the user's presence (protocol section 6.1) from the sessions on this node and sends every
    /// watcher whose view of it changed the new record. `active_at` is the Unix ms at which the user was active,
    /// if the cause says so; `views` is set when who-sees-what may have changed (privacy, contacts) although the
    /// presence did not. With a shared store the store's node does this instead (see `cluster`).
    fn refresh(&self, state: &mut HubState, user_id: &str, active_at: Option<u64>, views: bool) {
        let Some(user) = state.users.get(user_id) else {
            return;
        };
        let contributions = contributions_of(state, user);
        let Some(user) = state.users.get_mut(user_id) else {
            return;
        };
        let changed = recompute(&mut user.canon, &contributions, active_at, unix_millis());
        if changed || views {
            self.fan_out(state, user_id);
        }
    }

    /// Sends each watcher of the user the record made for it, if it differs from the last one it was sent.
    /// Changes a watcher may not see therefore produce no frame for it at all.
    ///
    /// Watchers with the same view of the user share one record and one frame, each made once, when first
    /// needed; a watcher's last-sent record is then that shared record, so the next change compares against it
    /// once per view rather than once per watcher.
    fn fan_out(&self, state: &mut HubState, user_id: &str) {
        let HubState {
            users,
            sessions,
            clock,
            ..
        } = state;
        let Some(UserState {
            canon, watchers, ..
        }) = users.get_mut(user_id)
        else {
            return;
        };
        // Per view (`view as usize`): the record made for it and, once a watcher needs it, its frame.
        let mut made: [Option<Made>; View::COUNT] = Default::default();
        // The version of this change: taken once, when the first watcher gets a frame.
        let mut stamp = None;
        for (watcher, sent) in watchers.iter_mut() {
            let Some(session) = sessions.get(watcher) else {
                continue;
            };
            let view = view_of(canon, user_id, &session.user_id);
            let made = made[view as usize].get_or_insert_with(|| Made {
                record: Arc::new(record_for(canon, user_id, view, 0)),
                compared: None,
                frame: None,
            });
            if made.unchanged_from(&sent.record) {
                continue;
            }
            let stamp = *stamp.get_or_insert_with(|| next_stamp(clock));
            // Noted even while detached: a resume then knows this record was missed.
            sent.version = stamp;
            sent.record = made.record.clone();
            if let Some(conn) = &session.conn {
                let frame = made.frame.get_or_insert_with(|| {
                    ServerMessage::Presence {
                        user: Presence {
                            version: stamp,
                            ..Presence::clone(&made.record)
                        },
                    }
                    .encode()
                    .into()
                });
                self.push(conn, frame.clone());
            }
        }
    }

    /// Tells every attached session of the user its current choice, except `holder`: a session that holds it
    /// already (it made it and the server took it as made, or its welcome carries it). Protocol section 7,
    /// `choice`.
    fn send_choice(&self, state: &HubState, user_id: &str, holder: Option<u64>) {
        let Some(user) = state.users.get(user_id) else {
            return;
        };
        let mut told = user
            .sessions
            .iter()
            .filter(|key| Some(**key) != holder)
            .filter_map(|key| state.sessions.get(key).and_then(|s| s.conn.as_ref()))
            .peekable();
        if told.peek().is_none() {
            return;
        }
        let Some(choice) = current_choice(&user.canon) else {
            return;
        };
        let frame: Frame = ServerMessage::Choice { status: choice }.encode().into();
        for conn in told {
            self.push(conn, frame.clone());
        }
    }

    /// Queues a frame without waiting and has it written (see [`write_soon`]); a full queue stops the
    /// connection as a slow consumer rather than buffering without bound or holding the lock. A closed queue (a
    /// connection that just ended) is ignored.
    pub(crate) fn push(&self, conn: &Conn, frame: Frame) {
        match conn.outlet.queue(ToClient::Text(frame)) {
            Ok(()) => write_soon(&conn.outlet),
            Err(Refused::Closed) => {}
            Err(Refused::Full) => {
                if conn.control.reason().is_none() {
                    self.slow_consumers.fetch_add(1, Ordering::Relaxed);
                }
                conn.control.stop(ErrorCode::SlowConsumer);
            }
        }
    }
}

/// The hub's state, locked; once the lock is released, the frames queued under it are written (see
/// [`write_soon`]).
struct HubGuard<'a> {
    // Fields drop in order: the lock is released before the writes.
    state: MutexGuard<'a, HubState>,
    _writes: DeferredWrites,
}

impl std::ops::Deref for HubGuard<'_> {
    type Target = HubState;
    fn deref(&self) -> &HubState {
        &self.state
    }
}

impl std::ops::DerefMut for HubGuard<'_> {
    fn deref_mut(&mut self) -> &mut HubState {
        &mut self.state
    }
}

/// How many connections one release of the hub's lock writes to from the releasing task; the writer tasks of
/// the others are woken instead, so that a change with a large audience is written by several threads and does
/// not hold one task for long.
const INLINE_WRITES_PER_RELEASE: usize = 64;

thread_local! {
    /// How many hub locks this thread holds (0 or 1: the lock is not reentrant).
    static LOCKS_HELD: Cell<usize> = const { Cell::new(0) };
    /// The connections given frames while this thread held the hub's lock, in the order they were first given
    /// one.
    static DEFERRED: RefCell<Vec<Arc<Outlet>>> = const { RefCell::new(Vec::new()) };
    /// The connection whose request this thread is carrying out (see [`on_behalf_of`]), by address.
    static REQUESTER: Cell<usize> = const { Cell::new(0) };
    /// Whether this thread writes frames to sockets itself (see [`write_inline_on_this_thread`]).
    static WRITES_INLINE: Cell<bool> = const { Cell::new(false) };
}

/// Makes this thread write the frames it queues to connections itself, instead of waking their writer tasks.
/// For threads that run their own event loop (`ServerConfig::io_threads`): the frames of a change go out within
/// the one poll that read it and no other thread is woken for them. On a multi-threaded runtime the writer tasks,
/// spread over its workers, write in parallel, which does better under load.
pub(crate) fn write_inline_on_this_thread() {
    WRITES_INLINE.set(true);
}

/// Writes what was queued to `outlet` from this thread, or has its writer task do it.
fn flush(outlet: &Outlet, inline: bool) {
    if inline && WRITES_INLINE.get() && !std::thread::panicking() {
        outlet.write_now();
    } else {
        outlet.wake_writer();
    }
}

/// Runs `request`, made by the connection of `outlet`: frames that it queues to that connection (its answer, the
/// echo of a change to the user's own sessions) are written after those to every other connection, so that a
/// change reaches its watchers first.
pub(crate) fn on_behalf_of<R>(outlet: &Arc<Outlet>, request: impl FnOnce() -> R) -> R {
    struct Restore(usize);
    impl Drop for Restore {
        fn drop(&mut self) {
            REQUESTER.set(self.0);
        }
    }
    let _restore = Restore(REQUESTER.replace(address(outlet)));
    request()
}

fn address(outlet: &Arc<Outlet>) -> usize {
    Arc::as_ptr(outlet) as usize
}

/// Has what was just queued to `outlet` written (see [`flush`]): at once when this thread does not hold the hub's
/// lock; otherwise as soon as it releases it, so that no socket is written and no task woken under the lock.
pub(crate) fn write_soon(outlet: &Arc<Outlet>) {
    if LOCKS_HELD.get() == 0 {
        flush(outlet, true);
        return;
    }
    DEFERRED.with_borrow_mut(|deferred| {
        if !deferred
            .last()
            .is_some_and(|last| Arc::ptr_eq(last, outlet))
        {
            deferred.push(outlet.clone());
        }
    });
}

/// Counts a hub lock held by this thread; when the last is released, writes what was queued under it.
struct DeferredWrites(());

impl DeferredWrites {
    fn begin() -> Self {
        LOCKS_HELD.set(LOCKS_HELD.get() + 1);
        DeferredWrites(())
    }
}

impl Drop for DeferredWrites {
    fn drop(&mut self) {
        let held = LOCKS_HELD.get().saturating_sub(1);
        LOCKS_HELD.set(held);
        if held > 0 {
            return;
        }
        let mut outlets = DEFERRED.take();
        let requester = REQUESTER.get();
        let others = outlets.iter().filter(|o| address(o) != requester);
        let requesters = outlets.iter().filter(|o| address(o) == requester);
        for (i, outlet) in others.chain(requesters).enumerate() {
            flush(outlet, i < INLINE_WRITES_PER_RELEASE);
        }
        // Keep the allocation for the next release.
        outlets.clear();
        DEFERRED.with_borrow_mut(|deferred| {
            if deferred.is_empty() {
                *deferred = outlets;
            }
        });
    }
}

fn privacy_frame(privacy: Privacy) -> Frame {
    ServerMessage::Privacy { privacy }.encode().into()
}

/// Clears the message of the choice made at `chosen_at`, if that choice still holds and has an expiring
/// message. Returns whether it cleared it.
pub(crate) fn expire_message(canon: &mut Canonical, chosen_at: u64) -> bool {
    let Some((status, at)) = canon.choice.as_mut() else {
        return false;
    };
    if *at != chosen_at || status.message_expires_at.is_none() {
        return false;
    }
    let expired_at = status.message_expires_at.take().unwrap_or(chosen_at);
    status.message = None;
    *at = (*at).max(expired_at);
    true
}

fn current_choice(canon: &Canonical) -> Option<Choice> {
    canon.choice.as_ref().map(|(status, at)| Choice {
        status: status.clone(),
        chosen_at: Some(*at),
    })
}

/// Adopts `choice` as the user's if it is newer than the current one (protocol section 6.1). A choice without
/// a time is timed at its receipt, after the current one. A message whose expiry has passed is dropped.
pub(crate) fn apply_choice(canon: &mut Canonical, mut choice: Choice) -> bool {
    let now = unix_millis();
    let current = canon.choice.as_ref().map(|(_, at)| *at);
    let chosen_at = choice
        .chosen_at
        .unwrap_or_else(|| now.max(current.map_or(0, |c| c.saturating_add(1))));
    if current.is_some_and(|c| chosen_at <= c) {
        return false;
    }
    if choice.status.message_expires_at.is_some_and(|at| at <= now) {
        choice.status.message = None;
        choice.status.message_expires_at = None;
    }
    canon.choice = Some((choice.status, chosen_at));
    true
}

/// The contributions of the user's sessions on this node.
fn contributions_of(state: &HubState, user: &UserState) -> Vec<Contribution> {
    user.sessions
        .iter()
        .filter_map(|k| state.sessions.get(k))
        .map(|s| Contribution {
            auto: s.auto.clone(),
            focus: s.focus.clone(),
        })
        .collect()
}

/// Recomputes what a user shows (protocol section 6.1) from their choice and the contributions of all their
/// sessions (on every node), and the times that go with it: `since` moves when the availability does,
/// `last_active_at` to `active_at` when given. `now` is Unix ms. Returns whether the shown presence changed.
pub(crate) fn recompute(
    canon: &mut Canonical,
    contributions: &[Contribution],
    active_at: Option<u64>,
    now: u64,
) -> bool {
    let shown = if contributions.is_empty() {
        Shown::offline()
    } else {
        aggregate(canon.choice.as_ref().map(|(s, _)| s), contributions)
    };
    let (previous_since, previous_last_active) = (canon.since, canon.last_active_at);
    if let Some(at) = active_at {
        canon.last_active_at = Some(at);
    }
    let changed = !canon.seen || shown != canon.shown;
    if changed {
        let was = canon.shown.availability;
        if shown.availability == Availability::Invisible && was != Availability::Invisible {
            if !canon.seen || was == Availability::Offline {
                // Connecting invisibly: watchers keep exactly the offline record they had.
                canon.invisible_since = previous_since;
                canon.invisible_last_active = previous_last_active;
            } else {
                canon.invisible_since = Some(now);
                canon.invisible_last_active = Some(now);
            }
        }
        if was == Availability::Invisible && shown.availability == Availability::Offline {
            // An invisible user who leaves was already offline for watchers: nothing may move.
            canon.since = canon.invisible_since;
            canon.last_active_at = canon.invisible_last_active;
        } else if !canon.seen || shown.availability != was {
            canon.since = Some(now);
        }
        if shown.availability != Availability::Invisible {
            canon.invisible_since = None;
            canon.invisible_last_active = None;
        }
        if canon.last_active_at.is_none() {
            canon.last_active_at = Some(now);
        }
        canon.seen = true;
        canon.shown = shown;
    }
    changed
}

/// The user's last session ended (on every node) at `last_inbound_at` (Unix ms, when its last frame arrived):
/// the choice lasts only while the user has a session.
pub(crate) fn end_of_sessions(canon: &mut Canonical, last_inbound_at: u64) {
    canon.choice = None;
    canon.last_active_at = Some(canon.last_active_at.unwrap_or(0).max(last_inbound_at));
}

/// The precedence of protocol section 6.1: the user-wide choice and the sessions' automatic states, and the
/// focus contexts of all sessions.
fn aggregate(choice: Option<&Status>, sessions: &[Contribution]) -> Shown {
    let choice = choice.cloned().unwrap_or_default();
    // At most MAX_FOCUS_CONTEXTS, so that a record always fits in a frame however many devices a user has.
    let focus: Vec<String> = sessions
        .iter()
        .filter_map(|s| s.focus.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .take(MAX_FOCUS_CONTEXTS)
        .collect();
    let shown = |availability, message: Option<String>| Shown {
        availability,
        message,
        activity: choice.activity.clone(),
        focus: focus.clone(),
    };
    let autos: Vec<&Auto> = sessions.iter().map(|s| &s.auto).collect();
    if matches!(
        choice.availability,
        Availability::Invisible | Availability::Busy
    ) {
        return shown(choice.availability, choice.message.clone());
    }
    if let Some(dnd) = autos.iter().find(|a| a.state == AutoState::Dnd) {
        return shown(
            Availability::Busy,
            dnd.message.clone().or_else(|| choice.message.clone()),
        );
    }
    if choice.availability == Availability::Away {
        return shown(Availability::Away, choice.message.clone());
    }
    if autos.iter().any(|a| a.state == AutoState::Active) {
        return shown(choice.availability, choice.message.clone());
    }
    shown(Availability::Away, choice.message.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auto(state: AutoState) -> Auto {
        Auto {
            state,
            message: None,
        }
    }

    fn aggregate_autos(choice: Option<&Status>, autos: &[&Auto]) -> Shown {
        let sessions: Vec<Contribution> = autos
            .iter()
            .map(|a| Contribution {
                auto: (*a).clone(),
                focus: None,
            })
            .collect();
        aggregate(choice, &sessions)
    }

    #[test]
    fn aggregation_rules() {
        use AutoState::*;
        let online = Status::new(Availability::Online).with_message("hi");
        let busy = Status::new(Availability::Busy);
        let away = Status::new(Availability::Away);
        let dnd = Auto {
            state: Dnd,
            message: Some("quiet".into()),
        };
        let a = |s: &Shown| s.availability;
        // An idle plugin and an active phone show online.
        assert_eq!(
            a(&aggregate_autos(
                Some(&online),
                &[&auto(Idle), &auto(Active)]
            )),
            Availability::Online
        );
        // Busy chosen anywhere shows busy, whatever the sessions do.
        assert_eq!(
            a(&aggregate_autos(
                Some(&busy),
                &[&auto(Idle), &auto(Background)]
            )),
            Availability::Busy
        );
        // One session in DND makes the user busy with its message.
        let shown = aggregate_autos(Some(&online), &[&auto(Active), &dnd]);
        assert_eq!(
            (shown.availability, shown.message.as_deref()),
            (Availability::Busy, Some("quiet"))
        );
        // Away chosen beats activity; every session idle or in the background is away.
        assert_eq!(
            a(&aggregate_autos(Some(&away), &[&auto(Active)])),
            Availability::Away
        );
        assert_eq!(
            a(&aggregate_autos(
                Some(&online),
                &[&auto(Idle), &auto(Background)]
            )),
            Availability::Away
        );
        // No choice at all: online while a session is active.
        assert_eq!(
            a(&aggregate_autos(None, &[&auto(Active)])),
            Availability::Online
        );
    }

    #[test]
    fn only_newer_choices_win() {
        let mut user = Canonical::default();
        let choice = |availability, at| Choice {
            status: Status::new(availability),
            chosen_at: Some(at),
        };
        assert!(apply_choice(&mut user, choice(Availability::Busy, 100)));
        assert!(
            !apply_choice(&mut user, choice(Availability::Online, 90)),
            "an older choice from a reconnecting device"
        );
        assert!(
            !apply_choice(&mut user, choice(Availability::Online, 100)),
            "not later"
        );
        assert!(apply_choice(&mut user, choice(Availability::Away, 101)));
        assert!(
            apply_choice(
                &mut user,
                Choice {
                    status: Status::new(Availability::Online),
                    chosen_at: None
                }
            ),
            "untimed choices are timed at receipt, after the current one"
        );
    }
}
